//! Scenario 1: the worker is SIGKILLed in the middle of a backlog and restarted.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_worker_killed_mid_load_loses_nothing_and_links_once() {
    let total = 5_000;
    let scenario = Scenario::new("s01-worker-killed", testkit::sim::latency(50), &[]).await;
    let events = mixed_load(&scenario.tag, total);
    let mut producer = Producer::new(&scenario);
    producer.send(&events).await;
    producer.close().await;

    let ready = ReadyRecorder::start(scenario.ops);
    let mut worker = scenario.spawn_worker("worker-1");
    let mut kills = 0;
    let mut recoveries = Vec::new();
    // Two kills, at about a third and two thirds of the way.
    for (round, at) in [(2, total / 3), (3, 2 * total / 3)] {
        wait_for(
            "the worker to get through part of the backlog",
            Duration::from_secs(120),
            || async { scenario.sim.stats().creates as usize >= at * 85 / 100 },
        )
        .await;
        let in_flight = worker.metrics().await.map_or(-1, |m| m.in_flight);
        let links = scenario.sim.stats().links;
        worker.kill();
        kills += 1;
        note(&format!(
            "SIGKILL #{kills} at {links} links, {in_flight} messages in flight"
        ));
        let restarted = Instant::now();
        worker = scenario.spawn_worker(&format!("worker-{round}"));
        worker.wait_ready(Duration::from_secs(30)).await;
        recoveries.push(
            ready
                .ready_at_or_after(restarted)
                .unwrap_or_else(Instant::now)
                .duration_since(restarted),
        );
    }
    let End { tally: t, scan, .. } =
        drain_and_tally(&scenario, &events, &mut worker, Duration::from_secs(180)).await;
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    Summary {
        scenario: "1 worker killed",
        load: format!(
            "{total} events ({} to link, {} to skip), 50 ms target latency",
            total - t.skipped,
            t.skipped
        ),
        faults: format!("{kills} x SIGKILL + restart"),
        tally: &t,
        recovery: format!("restart to ready <= {}", secs(worst)),
    }
    .print();
    note(&format!(
        "repeated link calls (allowed): {}; secret scan: {}",
        t.repeated_calls,
        scan.describe()
    ));
    t.assert_clean();
    assert_eq!(t.linked + t.skipped, total);
    // Runs show 0.03 s; a restart that takes seconds is a hang, not a slow machine.
    assert_within("restart to ready", worst, Duration::from_secs(10));
    scenario.cleanup().await;
}
