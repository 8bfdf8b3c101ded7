//! Several broker nodes in `LINKER_AMQP_URL`: a dead node is passed over,
//! every node refusing says why, `check-config` checks each node. (The
//! cluster itself, node loss and TLS are in `tests/faults/cluster.rs`.)

use std::time::Duration;

use identity_link_worker::config::AmqpUrl;
use testkit::worker::{InProcess, Private};

use crate::helpers::*;

/// Nothing listens on port 1 of the loopback: a connection is refused at once.
const DEAD_NODE: &str = "amqp://guest:hunter2@127.0.0.1:1/%2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_in_the_list_is_passed_over() {
    let live = testkit::broker::amqp_url();
    let list = format!("{DEAD_NODE},{live}");
    let app = TestApp::spawn_with(sim_config(), &[("LINKER_AMQP_URL", &list)]).await;
    app.publish_pairs("user.logged_in", "nodes", 20).await;
    app.wait_settled(20).await;
    assert_eq!(app.sim.stats().links, 20);
    let text = app.metrics_text().await;
    let live_node = AmqpUrl::new(live.as_str()).node();
    assert!(
        text.contains(&format!(
            "identity_linker_broker_node{{node=\"{live_node}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("identity_linker_broker_node{node=\"127.0.0.1:1\"} 0"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_node_refuses_readyz_names_each_and_it_keeps_trying() {
    let sim = start_sim(sim_config()).await;
    let list = format!("{DEAD_NODE},amqp://guest:hunter2@127.0.0.1:2/%2f");
    let private = Private::from_vars(with(base_vars(&sim), &[("LINKER_AMQP_URL", &list)]));
    let mut worker = InProcess::start(&private).await;
    let url = format!("http://{}/readyz", worker.ops);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body: serde_json::Value = match reqwest::get(&url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        if body["detail"].is_string() {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /readyz detail: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["reason"], "broker_disconnected");
    let detail = body["detail"].as_str().unwrap_or_default();
    for node in ["127.0.0.1:1", "127.0.0.1:2"] {
        assert!(detail.contains(node), "{detail}");
    }
    assert!(!detail.contains("hunter2"), "{detail}");
    // Backoff between rounds: a few rounds in 2 s, not thousands.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = reqwest::get(format!("http://{}/metrics", worker.ops))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("text");
    let failures: u64 = text
        .lines()
        .filter(|l| l.starts_with("identity_linker_broker_connect_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        (4..=60).contains(&failures),
        "both nodes tried in each round, with backoff between rounds: {failures}"
    );
    worker.stop().await;
}
