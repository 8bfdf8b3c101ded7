//! Scenarios 14 to 18, and TLS: a three-node RabbitMQ 3.10 cluster
//! (`scripts/rabbitmq-cluster`, quorum queues on all three nodes,
//! `pause_minority`), the worker given all three nodes in `LINKER_AMQP_URL`,
//! events published throughout by a producer that republishes what was not
//! confirmed, mos-sim with its 20 ms check-then-create window.
//!
//! `scripts/test` starts the cluster, runs these (`cargo test --test faults
//! cluster::`) and takes it down again; each test also runs alone, since
//! `Cluster::up` starts what is not running.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use identity_link_worker::broker::topology::Topology;
use testkit::names::with;

use crate::harness::*;

/// Events per scenario, published at about 1 000/s: long enough to span
/// the fault and the recovery.
const TOTAL: usize = 4_000;

/// The scenario on the cluster: its topology declared, rabbitmqctl through c1.
/// `FAULTS_CLUSTER_ONE_URL=1` gives the worker only c1's URL, as before the
/// node list: for measuring what the list changes.
async fn on_cluster(cluster: &Cluster, name: &'static str) -> Scenario {
    let one_url = std::env::var_os("FAULTS_CLUSTER_ONE_URL").is_some();
    let urls = if one_url {
        cluster.urls.split(',').next().unwrap_or_default()
    } else {
        cluster.urls.as_str()
    };
    let mut scenario = Scenario::on_broker(
        urls,
        name,
        testkit::sim::race_window(),
        &[("RUST_LOG", "debug,lapin=info")],
    )
    .await;
    scenario.ctl = Cluster::ctl("c1");
    scenario
}

/// The node `worker`'s session is on now (waits for one).
async fn node_of(worker: &Worker) -> &'static str {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(node) = worker.metrics().await.and_then(|m| connected_node(&m.text)) {
            return node;
        }
        assert!(Instant::now() < deadline, "{}: on no node", worker.label);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of every series of counter `name` in `worker`'s `/metrics`.
async fn counter(worker: &Worker, name: &str) -> u64 {
    worker
        .metrics()
        .await
        .map(|m| {
            m.text
                .lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// What a fault is given: the worker's node, the scenario's queues, the
/// worker's operations address.
struct Before {
    node: &'static str,
    topology: Topology,
    ops: std::net::SocketAddr,
}

/// One worker under load while `fault` runs; then drained, tallied, and the
/// summary printed. `fault` returns what it did, for the summary.
async fn one_worker_under<F, Fut>(name: &'static str, title: &str, fault: F)
where
    F: FnOnce(Before) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let cluster = Cluster::up().await;
    let scenario = on_cluster(&cluster, name).await;
    let events = mixed_load(&scenario.tag, TOTAL);
    let ready = ReadyRecorder::start(scenario.ops);
    let mut worker = scenario.spawn_worker("worker");
    worker.wait_ready(Duration::from_secs(60)).await;
    let producing = produce_paced(&scenario, &events);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = node_of(&worker).await;
    let began = Instant::now();
    let what = fault(Before {
        node: before,
        topology: scenario.topology.clone(),
        ops: worker.ops,
    })
    .await;
    let restored = Instant::now();
    wait_for("ready after the fault", Duration::from_secs(90), || async {
        ready.ready_at_or_after(Instant::now()).is_some()
    })
    .await;
    let unready = ready.unready_between(began, Instant::now());
    let after = node_of(&worker).await;
    let sessions = counter(&worker, "identity_linker_broker_reconnects_total").await;
    let republished = producing.await.expect("the producer");
    let End { tally: t, scan, .. } =
        drain_and_tally(&scenario, &events, &mut worker, Duration::from_secs(180)).await;
    Summary {
        scenario: title,
        load: format!(
            "{TOTAL} events at ~1000/s across the fault ({} to skip), 1 worker, 3 nodes, sim window 20 ms",
            t.skipped
        ),
        faults: what,
        tally: &t,
        recovery: format!(
            "not ready {} in all (fault to last node back {}); on {before} before, {after} after",
            secs(unready),
            secs(restored.duration_since(began))
        ),
    }
    .print();
    note(&format!(
        "readiness: {}; reconnects {sessions}; producer republished {republished}; repeated link calls {}; {}",
        ready.timeline(began),
        t.repeated_calls,
        scan.describe()
    ));
    t.assert_clean();
    scenario.cleanup().await;
}

/// 14: SIGKILL of the node the worker is connected to. With the node list
/// the worker fails over to another node at once; before, it waited for
/// that node to come back (12 s down: unready for all 12 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_the_connected_node_is_killed() {
    one_worker_under(
        "s14-cluster-kill-connected",
        "14 cluster: connected node killed",
        |Before { node, .. }| async move {
            Cluster::kill(node).await;
            let killed = Instant::now();
            tokio::time::sleep(Duration::from_secs(12)).await;
            Cluster::start(&[node]).await;
            format!(
                "SIGKILL {node} (the worker's node), restarted after 12 s (back after {})",
                secs(killed.elapsed())
            )
        },
    )
    .await;
}

/// 15: the node leading the work queue (and so its single active consumer's
/// deliveries) is stopped cleanly; a new leader is elected among the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_the_work_queues_leader_is_stopped() {
    one_worker_under(
        "s15-cluster-stop-leader",
        "15 cluster: work queue leader stopped",
        |Before {
            node: worker_node,
            topology,
            ..
        }| async move {
            let leaders = leaders_of(&topology).await;
            let work_leader = leaders.work.clone();
            Cluster::stop(&work_leader).await;
            let stopped = Instant::now();
            tokio::time::sleep(Duration::from_secs(5)).await;
            let moved = leaders_of(&topology).await;
            Cluster::start(&[&work_leader]).await;
            format!(
                "stop {work_leader} (leader of the work queue and of {} of {} partitions; worker on {worker_node}), \
                 started after 5 s (back after {}); leaders then: work {}, partitions {:?}",
                leaders.partitions_led_by(&work_leader),
                leaders.partitions.len(),
                secs(stopped.elapsed()),
                moved.work,
                moved.partition_count_by_node()
            )
        },
    )
    .await;
}

/// 16: every node restarted, one after the other, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_rolling_restart() {
    one_worker_under(
        "s16-cluster-rolling-restart",
        "16 cluster: rolling restart",
        |Before {
             node: worker_node, ..
         }| async move {
            let mut took = Vec::new();
            for node in NODES {
                let at = Instant::now();
                Cluster::stop(node).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                Cluster::start(&[node]).await;
                took.push(format!("{node} {}", secs(at.elapsed())));
            }
            format!(
                "stop + start of c1, c2, c3 in turn (worker first on {worker_node}): {}",
                took.join(", ")
            )
        },
    )
    .await;
}

/// 17: two nodes killed, so no queue has a majority and the third node
/// pauses itself: the worker is not ready, and comes back by itself once a
/// majority is. (Both are started together: a killed node that was not the
/// last of the cluster to go waits for its peers while it boots.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_quorum_lost_then_back() {
    one_worker_under(
        "s17-cluster-quorum-lost",
        "17 cluster: two nodes down (no quorum)",
        |Before {
            node: worker_node,
            ops,
            ..
        }| async move {
            // The worker's node and one other: the one left is in a minority
            // and pauses itself (pause_minority).
            let other = NODES
                .iter()
                .copied()
                .find(|n| *n != worker_node)
                .unwrap_or("c2");
            Cluster::kill(worker_node).await;
            Cluster::kill(other).await;
            let killed = Instant::now();
            tokio::time::sleep(Duration::from_secs(10)).await;
            // Nothing can be confirmed now: the worker must not be ready,
            // nor hold a delivery it could not settle.
            let during = scrape(ops).await.expect("the worker answers /metrics");
            let answer = http_client()
                .get(format!("http://{ops}/readyz"))
                .send()
                .await
                .map(|r| r.status().as_u16());
            assert_eq!(during.in_flight, 0, "nothing held while the quorum is lost");
            assert_eq!(during.broker_connected, 0, "no session on a minority");
            assert!(matches!(answer, Ok(503)), "not ready: {answer:?}");
            Cluster::start(&[worker_node, other]).await;
            format!(
                "SIGKILL {worker_node} (the worker's) and {other}; both started after 10 s (majority back after {})",
                secs(killed.elapsed())
            )
        },
    )
    .await;
}

/// 18: three replicas of the default configuration (16 partitions by
/// visitor) on the cluster, each with its own node order; one node killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_three_replicas_while_a_node_dies() {
    let cluster = Cluster::up().await;
    let scenario = on_cluster(&cluster, "s18-cluster-replicas").await;
    let events = mixed_load(&scenario.tag, TOTAL);
    let mut replicas: Vec<Worker> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let ops = testkit::process::free_addr();
            let vars = with(
                scenario.vars.clone(),
                &[
                    ("LINKER_REPLICA_ID", id),
                    ("LINKER_HTTP_ADDR", ops.to_string().as_str()),
                ],
            );
            Worker::spawn(&vars, &scenario.logs, &format!("replica-{id}"), ops)
        })
        .collect();
    for r in &replicas {
        r.wait_ready(Duration::from_secs(60)).await;
    }
    let mut spread = BTreeMap::new();
    for r in &replicas {
        *spread.entry(node_of(r).await).or_insert(0) += 1;
    }
    let producing = produce_paced(&scenario, &events);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The node of replica a: at least one replica must fail over.
    let victim = node_of(&replicas[0]).await;
    let began = Instant::now();
    Cluster::kill(victim).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    Cluster::start(&[victim]).await;
    let restored = began.elapsed();
    let republished = producing.await.expect("the producer");
    wait_drained(&scenario, &events, Duration::from_secs(180)).await;
    let mut exits = Vec::new();
    for r in &mut replicas {
        let (status, _) = r.stop(Duration::from_secs(30)).await;
        exits.push(status.code());
    }
    assert_queues_empty(&scenario).await;
    let dead = dead_letters(&scenario).await;
    let t = tally(&events, &scenario.sim, &dead);
    let scan = scenario.assert_no_secret_in_output();
    Summary {
        scenario: "18 cluster: 3 replicas, a node killed",
        load: format!(
            "{TOTAL} events at ~1000/s ({} to skip), 3 replicas x 16 partitions, sim window 20 ms",
            t.skipped
        ),
        faults: format!(
            "SIGKILL {victim} (replica a's node), restarted after 10 s (back after {})",
            secs(restored)
        ),
        tally: &t,
        recovery: format!("replicas per node at start {spread:?}"),
    }
    .print();
    note(&format!(
        "producer republished {republished}; repeated link calls {}; exits {exits:?}; {}",
        t.repeated_calls,
        scan.describe()
    ));
    assert!(
        exits.iter().all(|c| *c == Some(0)),
        "every replica exits 0: {exits:?}"
    );
    t.assert_clean();
    scenario.cleanup().await;
}

/// Who leads the work queue and the partition queues of a scenario.
struct Leaders {
    work: String,
    partitions: BTreeMap<String, String>,
}

impl Leaders {
    fn partitions_led_by(&self, node: &str) -> usize {
        self.partitions.values().filter(|n| *n == node).count()
    }
    fn partition_count_by_node(&self) -> BTreeMap<String, usize> {
        let mut by = BTreeMap::new();
        for node in self.partitions.values() {
            *by.entry(node.clone()).or_insert(0) += 1;
        }
        by
    }
}

async fn leaders_of(topology: &Topology) -> Leaders {
    // Any running node answers for the cluster.
    let mut out = String::new();
    for node in NODES {
        let ctl = Cluster::ctl(node);
        let program: Vec<&str> = ctl.iter().map(String::as_str).collect();
        if let Ok(Ok(o)) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(program[0])
                .args(&program[1..])
                .args(["-q", "list_queues", "name", "leader", "--formatter", "json"])
                .output(),
        )
        .await
            && o.status.success()
        {
            out = String::from_utf8_lossy(&o.stdout).into_owned();
            break;
        }
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    let short = |v: &serde_json::Value| {
        v.as_str()
            .unwrap_or("?")
            .split('@')
            .next()
            .unwrap_or("?")
            .to_owned()
    };
    let mut work = String::new();
    let mut partitions = BTreeMap::new();
    for row in &rows {
        let name = row["name"].as_str().unwrap_or_default();
        if topology.partitions.iter().any(|p| p == name) {
            partitions.insert(name.to_owned(), short(&row["leader"]));
        } else if name == topology.queue {
            work = short(&row["leader"]);
        }
    }
    assert!(!work.is_empty(), "the work queue is listed: {out}");
    Leaders { work, partitions }
}

/// The events a TLS test publishes (plain AMQP, through the cluster) and
/// waits for.
async fn linked_over(scenario: &Scenario, worker: &mut Worker, users: usize) -> Tally {
    let events = mixed_load(&scenario.tag, users);
    let mut producer = Producer::new(scenario);
    producer.send(&events).await;
    producer.close().await;
    let End { tally: t, .. } =
        drain_and_tally(scenario, &events, worker, Duration::from_secs(60)).await;
    t
}

/// TLS with the CA given: connects and links; with a CA that did not sign
/// the broker's certificate (or none): not ready, `/readyz` and the log say
/// why and which variable to set, and it keeps trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_the_broker_is_verified_against_the_given_ca() {
    let cluster = Cluster::up().await;
    let scenario = on_cluster(&cluster, "tls-ca").await;
    let tls_url = cluster.tls_urls[0].clone();

    // A CA that did not sign the broker's certificate.
    let mut untrusted = scenario.spawn_worker_with(
        "untrusted",
        &[
            ("LINKER_AMQP_URL", &tls_url),
            ("LINKER_AMQP_CA_FILE", &cluster.other_ca_file),
        ],
    );
    let detail = wait_for_unready_detail(&untrusted, Duration::from_secs(20)).await;
    assert!(
        detail.contains("UnknownIssuer") && detail.contains("LINKER_AMQP_CA_FILE"),
        "/readyz says why: {detail}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures = counter(&untrusted, "identity_linker_broker_connect_failures_total").await;
    assert!(
        failures >= 2,
        "it keeps trying, counted ({failures} failures)"
    );
    untrusted.stop(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(scenario.logs.file("untrusted.stderr.log"))
        .expect("the worker's log");
    assert!(
        log.contains("UnknownIssuer") && log.contains("LINKER_AMQP_CA_FILE"),
        "the log says why"
    );

    // The right CA.
    let mut trusted = scenario.spawn_worker_with(
        "trusted",
        &[
            ("LINKER_AMQP_URL", &tls_url),
            ("LINKER_AMQP_CA_FILE", &cluster.ca_file),
        ],
    );
    trusted.wait_ready(Duration::from_secs(30)).await;
    let t = linked_over(&scenario, &mut trusted, 200).await;
    note(&format!(
        "TLS: untrusted CA -> not ready, detail {detail:?}, {failures} connect failures in 3 s; \
         given CA -> ready, {} of {} linked",
        t.linked, t.sent
    ));
    t.assert_clean();
    scenario.cleanup().await;
}

/// A client certificate with `auth_mechanism=external`: the broker logs the
/// worker in as the certificate's common name, with no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_a_client_certificate_logs_in_with_external() {
    let cluster = Cluster::up().await;
    let scenario = on_cluster(&cluster, "tls-external").await;
    // No user or password in the URL: the certificate is the login.
    let url = cluster.tls_urls[1]
        .replacen("guest:guest@", "", 1)
        .replace("/%2f", "/%2f?auth_mechanism=external");
    let mut worker = scenario.spawn_worker_with(
        "external",
        &[
            ("LINKER_AMQP_URL", &url),
            ("LINKER_AMQP_CA_FILE", &cluster.ca_file),
            ("LINKER_AMQP_CLIENT_CERT_FILE", &cluster.client_cert_file),
            ("LINKER_AMQP_CLIENT_KEY_FILE", &cluster.client_key_file),
        ],
    );
    worker.wait_ready(Duration::from_secs(30)).await;
    let ctl = Cluster::ctl("c2");
    let program: Vec<&str> = ctl.iter().map(String::as_str).collect();
    let connections = crate::harness::ctl(
        &program,
        &["-q", "list_connections", "user", "auth_mechanism", "ssl"],
    )
    .await;
    assert!(
        connections
            .lines()
            .any(|l| l.contains("identity-link-worker") && l.contains("EXTERNAL")),
        "the worker is logged in by its certificate: {connections}"
    );
    let t = linked_over(&scenario, &mut worker, 100).await;
    note(&format!(
        "EXTERNAL: logged in as identity-link-worker over TLS; {} of {} linked",
        t.linked, t.sent
    ));
    t.assert_clean();
    scenario.cleanup().await;
}

async fn wait_for_unready_detail(worker: &Worker, limit: Duration) -> String {
    let client = http_client();
    let url = format!("http://{}/readyz", worker.ops);
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(response) = client.get(&url).send().await {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert_ne!(body["ready"], true, "ready with a CA that cannot verify");
            if let Some(detail) = body["detail"].as_str() {
                assert_eq!(body["reason"], "broker_disconnected");
                return detail.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no /readyz detail after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
