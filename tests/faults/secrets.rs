//! Scenario 10: the secret key never appears in any output, and identifiers
//! appear only hashed. Every other scenario already runs its workers with
//! `RUST_LOG=trace` and scans their output; this one drives every path that
//! writes an error (transient statuses, dropped connections, a refused key,
//! a rejection, malformed input) in both log formats, against mos-sim and
//! against a hostile endpoint that echoes the key back in its answers, and
//! also checks the CLI, `/metrics` and the dead-letter headers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use identity_link_worker::broker::headers;
use mos_sim::{Faults, SimConfig};
use serde_json::{Value, json};

use testkit::names::{with, without};

use crate::harness::*;

#[derive(Default)]
struct Hostile {
    flaky: AtomicU32,
    refused: AtomicU32,
}

/// Answers with the caller's own key in the body and in a header.
async fn hostile(State(state): State<Arc<Hostile>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers
        .get("x-mos-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let value: Value = serde_json::from_slice(&body).unwrap_or_default();
    let anonymous = value["anonymousIdentifier"].as_str().unwrap_or("");
    let echo = json!({"message": format!("you sent X-MOS-Key: {key}")}).to_string();
    let status = if anonymous.contains("reject") {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if anonymous.contains("flaky") && state.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if (anonymous.contains("refuse") || anonymous.is_empty())
        && state.refused.fetch_add(1, Ordering::SeqCst) < 2
    {
        // The key refused for a while, for every request: the pair's call and
        // the request without identifiers that confirms the refusal.
        StatusCode::UNAUTHORIZED
    } else {
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"message":"Success","outcome":"created"}"#,
        )
            .into_response();
    };
    (
        status,
        [
            ("content-type", "application/json".to_owned()),
            ("x-echo", key),
        ],
        echo,
    )
        .into_response()
}

fn pair(tag: &str, name: &str) -> Event {
    Event::pair(
        "user.logged_in",
        &format!("a.{tag}.{name}"),
        &format!("u.{tag}.{name}"),
    )
}

/// Sends `batch`, and keeps it in `sent` for the tally.
async fn send(producer: &mut Producer, sent: &mut Vec<Event>, mut batch: Vec<Event>) {
    producer.send(&batch).await;
    sent.append(&mut batch);
}

fn cli(scenario: &Scenario, label: &str, vars: &[(String, String)], args: &[&str]) -> String {
    let output = command(vars).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(scenario.logs.file(&format!("{label}.cli.log")), &text).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_the_secret_never_appears_and_identifiers_are_hashed() {
    let scenario = Scenario::new("s10-secrets", SimConfig::default(), &[]).await;
    let tag = scenario.tag.clone();
    let mut producer = Producer::new(&scenario);
    let mut sent: Vec<Event> = Vec::new();

    // Phase A: mos-sim, text logs at trace, every error path in turn.
    let mut worker = scenario.spawn_worker_with("a-text", &[("LINKER_LOG_FORMAT", "text")]);
    worker.wait_ready(Duration::from_secs(30)).await;
    let batch: Vec<Event> = (0..3).map(|i| pair(&tag, &format!("ok{i}"))).collect();
    send(&mut producer, &mut sent, batch).await;
    wait_for("3 links", Duration::from_secs(20), || async {
        scenario.sim.stats().links == 3
    })
    .await;
    scenario.sim.set_faults(Faults {
        statuses: vec![503, 429, 500],
        drop: 2,
        ..Faults::default()
    });
    send(&mut producer, &mut sent, vec![pair(&tag, "transient")]).await;
    wait_for(
        "the transient one to link",
        Duration::from_secs(30),
        || async { scenario.sim.stats().links == 4 },
    )
    .await;
    scenario.sim.set_key(&format!("rotated-{}", random_hex(6)));
    send(&mut producer, &mut sent, vec![pair(&tag, "refused")]).await;
    wait_for(
        "probes with the refused key",
        Duration::from_secs(20),
        || async { scenario.sim.stats().status(401) >= 3 },
    )
    .await;
    scenario.sim.set_key(&scenario.key);
    // Let the probe close the circuit first, so the 422 goes to the new event.
    wait_for(
        "the refused one to link",
        Duration::from_secs(20),
        || async {
            scenario.sim.stats().links == 5
                && worker.metrics().await.is_some_and(|m| m.circuit_open == 0)
        },
    )
    .await;
    scenario.sim.set_faults(Faults {
        statuses: vec![422],
        ..Faults::default()
    });
    let batch = vec![
        Event {
            expect: Expect::Dead("rejected"),
            ..pair(&tag, "rejected")
        },
        Event {
            body: format!(r#"{{"anonymousId":"a.{tag}.bad","userId":"#).into_bytes(),
            expect: Expect::Dead("malformed"),
            ..pair(&tag, "malformed")
        },
        Event {
            body: format!(r#"{{"anonymousId":"a.{tag}.x\u0001","userId":"u"}}"#).into_bytes(),
            expect: Expect::Dead("invalid_identifier"),
            ..pair(&tag, "invalid")
        },
    ];
    send(&mut producer, &mut sent, batch).await;
    wait_for("phase A to settle", Duration::from_secs(30), || async {
        scenario.sim.stats().links == 5
            && worker
                .metrics()
                .await
                .is_some_and(|m| m.outcome("dead_lettered") == 3 && m.in_flight == 0)
    })
    .await;
    let metrics_a = worker.metrics().await.unwrap().text;
    let (status, _) = worker.stop(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));

    // Phase B: an endpoint that echoes the key in every error (JSON logs).
    let state = Arc::new(Hostile::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hostile_url = format!(
        "http://{}/api/v1/envs/hostile/endpoints/link-identities",
        listener.local_addr().unwrap()
    );
    let router = Router::new().fallback(hostile).with_state(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let mut worker = scenario.spawn_worker_with(
        "b-json-hostile",
        &[("LINKER_MOS_ENDPOINT_URL", hostile_url.as_str())],
    );
    worker.wait_ready(Duration::from_secs(30)).await;
    let batch = vec![
        Event {
            expect: Expect::Dead("rejected"),
            ..pair(&tag, "reject")
        },
        pair(&tag, "flaky"),
        pair(&tag, "refuse"),
    ];
    send(&mut producer, &mut sent, batch).await;
    wait_for("phase B to settle", Duration::from_secs(30), || async {
        worker.metrics().await.is_some_and(|m| {
            m.outcome("dead_lettered") == 1
                && m.outcome("linked") + m.outcome("already_linked") == 2
                && m.in_flight == 0
        })
    })
    .await;
    let metrics_b = worker.metrics().await.unwrap().text;
    let (status, _) = worker.stop(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    server.abort();
    producer.close().await;

    // The CLI, which prints configuration, reachability and dead letters.
    let mut cli_out = String::new();
    cli_out += &cli(&scenario, "check-config", &scenario.vars, &["check-config"]);
    assert!(cli_out.contains("key accepted"), "{cli_out}");
    cli_out += &cli(&scenario, "dlq-stats", &scenario.vars, &["dlq", "stats"]);
    cli_out += &cli(&scenario, "dlq-list", &scenario.vars, &["dlq", "list"]);
    let key_file = scenario.logs.path.join("key.secret");
    std::fs::write(&key_file, format!("{}\n", scenario.key)).unwrap();
    let wrong = with(
        without(scenario.vars.clone(), "LINKER_MOS_SECRET_KEY"),
        &[(
            "LINKER_MOS_SECRET_KEY_FILE",
            key_file.display().to_string().as_str(),
        )],
    );
    scenario.sim.set_key("yet-another-key");
    let refused = cli(&scenario, "check-config-refused", &wrong, &["check-config"]);
    assert!(refused.contains("KEY REFUSED"), "{refused}");
    scenario.sim.set_key(&scenario.key);
    std::fs::remove_file(&key_file).unwrap();

    // The dead letters' headers.
    let connection = broker().await;
    let mut errors = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for letter in testkit::broker::take_all(&connection, &scenario.topology.dead_letter).await {
        let props = &letter.properties;
        *reasons
            .entry(headers::get_str(props, headers::REASON).unwrap_or_default())
            .or_default() += 1;
        errors.push(headers::get_str(props, headers::ERROR).unwrap_or_default());
        assert!(
            !format!("{props:?}").contains(&scenario.key),
            "the key is in a dead letter's properties"
        );
    }
    let _ = connection.close(200, "done".into()).await;
    let echoed = errors
        .iter()
        .find(|e| e.contains("you sent X-MOS-Key"))
        .expect("the hostile 422 is in x-linker-error")
        .clone();
    assert!(echoed.contains("[redacted]"), "{echoed}");

    // Scan: workers for the key and plain identifiers, CLI output and
    // /metrics for the key (`dlq list` shows bodies, which hold identifiers).
    let files = scenario.logs.files();
    let (cli_files, worker_files): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|p| p.to_string_lossy().ends_with(".cli.log"));
    let workers = scan(&worker_files, &[&scenario.key, &tag]);
    let clis = scan(&cli_files, &[&scenario.key]);
    for (what, report) in [("worker output", &workers), ("CLI output", &clis)] {
        assert_eq!(
            report.hits.get(scenario.key.as_str()).copied().unwrap_or(0),
            0,
            "the key is in the {what}: {}",
            report.describe()
        );
    }
    assert_eq!(
        workers.hits.get(tag.as_str()).copied().unwrap_or(0),
        0,
        "a plain identifier is in the worker output: {}",
        workers.describe()
    );
    assert!(!metrics_a.contains(&scenario.key) && !metrics_b.contains(&scenario.key));
    let trace_lines = std::fs::read_to_string(scenario.logs.file("b-json-hostile.stderr.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"TRACE\""))
        .count();
    assert!(
        trace_lines > 100,
        "trace output was produced ({trace_lines} lines)"
    );

    // Control: with LINKER_LOG_IDENTIFIERS=plain the identifiers do show, so
    // the scan above would have seen them.
    let control = LogDir::new("s10-secrets-control");
    let plain = with(
        scenario.vars.clone(),
        &[("LINKER_LOG_IDENTIFIERS", "plain")],
    );
    let mut worker = Worker::spawn(&plain, &control, "plain", scenario.ops);
    worker.wait_ready(Duration::from_secs(30)).await;
    let mut producer = Producer::new(&scenario);
    send(&mut producer, &mut sent, vec![pair(&tag, "plain")]).await;
    producer.close().await;
    wait_for("the plain one to link", Duration::from_secs(20), || async {
        scenario.sim.stats().links == 6
    })
    .await;
    let (status, _) = worker.stop(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    let shown = scan(&control.files(), &[&tag, &scenario.key]);
    assert!(
        shown.hits[tag.as_str()] > 0,
        "plain identifiers are logged when configured"
    );
    assert_eq!(shown.hits[scenario.key.as_str()], 0);
    assert_queues_empty(&scenario).await;

    let mut dead = BTreeMap::new();
    for (reason, n) in &reasons {
        dead.insert(reason.clone(), *n);
    }
    // Phase B's three events went to the hostile endpoint, not mos-sim.
    let for_sim: Vec<Event> = sent
        .iter()
        .filter(|e| {
            !matches!(&e.expect, Expect::Link { anonymous, .. }
                if anonymous.ends_with(".flaky") || anonymous.ends_with(".refuse"))
        })
        .cloned()
        .collect();
    let mut t = tally(&for_sim, &scenario.sim, &dead);
    t.sent = sent.len();
    t.linked += 2; // flaky and refuse, linked by the hostile endpoint
    Summary {
        scenario: "10 secrets",
        load: format!(
            "{} events through every error path; + all scenarios above at trace",
            sent.len()
        ),
        faults: "RUST_LOG=trace, text + json; 503/429/500/drops/401/422; an endpoint echoing the key; CLI"
            .to_owned(),
        tally: &t,
        recovery: format!(
            "key found 0 times, plain identifiers 0 times in {:.1} MiB",
            (workers.bytes + clis.bytes) as f64 / 1048576.0
        ),
    }
    .print();
    note(&format!(
        "worker output {}; CLI output {}; dead letters {reasons:?}; echoed error scrubbed: {echoed}",
        workers.describe(),
        clis.describe()
    ));
    assert_eq!(t.lost, 0);
    assert_eq!(t.duplicates, 0);
    assert_eq!(t.dead_lettered, 4);
    scenario.cleanup().await;
}
