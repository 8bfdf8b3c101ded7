//! Scenarios 2 and 3: the broker connection is cut, and the broker is
//! restarted, while events are being published and consumed.

use std::time::{Duration, Instant};

use mos_sim::SimConfig;
use tokio::task::JoinHandle;

use crate::harness::*;

const TOTAL: usize = 6_000;

/// A 20 ms target latency.
fn sim() -> SimConfig {
    testkit::sim::latency(20)
}

/// A scenario under way: its worker ready, [`TOTAL`] events being
/// published (the task yields how many the producer had to publish again).
async fn start(
    name: &'static str,
) -> (
    Scenario,
    Vec<Event>,
    ReadyRecorder,
    Worker,
    JoinHandle<usize>,
) {
    let scenario = Scenario::new(name, sim(), &[]).await;
    let events = mixed_load(&scenario.tag, TOTAL);
    let ready = ReadyRecorder::start(scenario.ops);
    let worker = scenario.spawn_worker("worker");
    worker.wait_ready(Duration::from_secs(30)).await;
    let producing = produce_paced(&scenario, &events);
    (scenario, events, ready, worker, producing)
}

/// What readiness did, and what the producer and the worker repeated.
fn note_readiness(ready: &ReadyRecorder, republished: usize, t: &Tally, scan: &ScanReport) {
    note(&format!(
        "readiness downs {} ups {} reasons {:?}; producer republished {republished}; repeated link calls {}; {}",
        ready.downs(),
        ready.ups(),
        ready.reasons(),
        t.repeated_calls,
        scan.describe()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_connection_cut_repeatedly_recovers_by_itself() {
    let (scenario, events, ready, mut worker, producing) = start("s02-connection-cut").await;

    let cuts = 3;
    let mut recoveries = Vec::new();
    for cut in 1..=cuts {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        wait_for("ready before the cut", Duration::from_secs(30), || async {
            ready.ready_at_or_after(Instant::now()).is_some()
        })
        .await;
        let links = scenario.sim.stats().links;
        let asked = Instant::now();
        rabbitmqctl(&["-q", "close_all_connections", "fault test"]).await;
        // Readiness must go down, then come back without help.
        wait_for("readiness to go down", Duration::from_secs(10), || async {
            ready.first_down_after(asked).is_some()
        })
        .await;
        let down = ready.first_down_after(asked).unwrap();
        wait_for(
            "readiness to come back",
            Duration::from_secs(60),
            || async { ready.ready_at_or_after(down.at).is_some() },
        )
        .await;
        let up = ready.ready_at_or_after(down.at).unwrap();
        recoveries.push(up.duration_since(down.at));
        note(&format!(
            "cut #{cut} at {links} links: not ready ({}) for {}",
            down.reason,
            secs(up.duration_since(down.at))
        ));
    }
    let republished = producing.await.unwrap();
    let End { tally: t, scan, .. } =
        drain_and_tally(&scenario, &events, &mut worker, Duration::from_secs(120)).await;
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    Summary {
        scenario: "2 connection cut",
        load: format!(
            "{TOTAL} events published at ~1000/s during the cuts ({} to skip), 20 ms target latency",
            t.skipped
        ),
        faults: format!("{cuts} x rabbitmqctl close_all_connections"),
        tally: &t,
        recovery: format!("not ready for <= {} per cut", secs(worst)),
    }
    .print();
    note_readiness(&ready, republished, &t, &scan);
    assert!(ready.downs() >= cuts, "readiness went down at each cut");
    assert!(ready.ups() >= cuts, "and came back each time");
    // Runs show 0.14 to 0.80 s; reconnect backoff is capped at 5 s.
    assert_within("not ready after a cut", worst, Duration::from_secs(15));
    t.assert_clean();
    scenario.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_broker_restart_recovers_by_itself() {
    let _guard = BrokerGuard;
    let (scenario, events, ready, mut worker, producing) = start("s03-broker-restart").await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let links = scenario.sim.stats().links;
    let stopping = Instant::now();
    rabbitmqctl(&["-q", "stop_app"]).await;
    let stopped = Instant::now();
    wait_for("readiness to go down", Duration::from_secs(10), || async {
        ready.first_down_after(stopping).is_some()
    })
    .await;
    let down = ready.first_down_after(stopping).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        ready.ready_at_or_after(Instant::now()).is_none(),
        "not ready while the broker is down"
    );
    rabbitmqctl(&["-q", "start_app"]).await;
    rabbitmqctl(&["-q", "await_startup", "--timeout", "110"]).await;
    let started = Instant::now();
    note(&format!(
        "stop_app at {links} links took {}; broker down {}; not ready ({}) since the stop",
        secs(stopped.duration_since(stopping)),
        secs(started.duration_since(stopping)),
        down.reason
    ));
    wait_for(
        "readiness to come back",
        Duration::from_secs(90),
        || async { ready.ready_at_or_after(started).is_some() },
    )
    .await;
    let up = ready.ready_at_or_after(started).unwrap();
    let republished = producing.await.unwrap();
    let End { tally: t, scan, .. } =
        drain_and_tally(&scenario, &events, &mut worker, Duration::from_secs(120)).await;
    Summary {
        scenario: "3 broker restart",
        load: format!(
            "{TOTAL} events published at ~1000/s across the restart ({} to skip), 20 ms target latency",
            t.skipped
        ),
        faults: format!(
            "rabbitmqctl stop_app, {} down, start_app + await_startup",
            secs(started.duration_since(stopping))
        ),
        tally: &t,
        recovery: format!(
            "broker up to ready {}",
            secs(up.duration_since(started))
        ),
    }
    .print();
    note_readiness(&ready, republished, &t, &scan);
    note(&format!("readiness: {}", ready.timeline(stopping)));
    assert!(ready.downs() >= 1 && ready.ups() >= 1);
    // Runs show 2.8 s (quorum queues elect their leaders first); backoff is capped at 5 s.
    assert_within(
        "ready after the broker is back",
        up.duration_since(started),
        Duration::from_secs(30),
    );
    t.assert_clean();
    scenario.cleanup().await;
}
