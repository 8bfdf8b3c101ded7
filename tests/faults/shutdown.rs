//! Scenario 9: SIGTERM under load. The worker stops taking deliveries,
//! finishes what it can within the grace period, hands back the rest by
//! closing its channel, and exits 0; nothing stays unacked, a second worker
//! finishes the remainder, nothing is lost.

use std::time::{Duration, Instant};

use mos_sim::{Faults, SimConfig};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_sigterm_under_load_exits_0_and_hands_back_the_rest() {
    let total = 3_000;
    let grace = Duration::from_secs(2);
    let scenario = Scenario::new(
        "s09-graceful-shutdown",
        SimConfig {
            // Calls take 0.1 to 6.1 s: many cannot finish within the grace.
            faults: Faults {
                latency_ms: 100,
                jitter_ms: 6_000,
                ..Faults::default()
            },
            ..SimConfig::default()
        },
        &[
            ("LINKER_CONCURRENCY", "64"),
            ("LINKER_SHUTDOWN_GRACE", "2s"),
            ("LINKER_HTTP_TIMEOUT", "10s"),
        ],
    )
    .await;
    let events = mixed_load(&scenario.tag, total);
    let mut producer = Producer::new(&scenario);
    producer.send(&events).await;
    producer.close().await;

    let mut first = scenario.spawn_worker("first");
    wait_for("the worker to be busy", Duration::from_secs(60), || async {
        scenario.sim.stats().links >= 300
    })
    .await;
    let in_flight = first.metrics().await.map(|m| m.in_flight).unwrap_or(-1);
    let (status, took) = first.stop(grace + Duration::from_secs(10)).await;
    let links_at_exit = scenario.sim.stats().links;
    assert_eq!(status.code(), Some(0), "graceful exit");
    assert!(
        took <= grace + Duration::from_secs(1),
        "exit took {took:?} with a {grace:?} grace"
    );

    // Nothing unacked: what the first worker did not finish is ready again.
    let ready = u64::from(settle_after_exit(&scenario).await[&scenario.topology.queue]);
    assert!(ready > 0, "stopped mid-load");
    // Every acked event was finished: total - ready acked, each linked or skipped.
    let skipped = events
        .iter()
        .filter(|e| matches!(e.expect, Expect::Skip(_)))
        .count() as u64;
    assert!(
        total as u64 - ready <= links_at_exit + skipped + /* repeats */ total as u64 / 20,
        "acked {} but only {links_at_exit} linked",
        total as u64 - ready
    );
    let log = std::fs::read_to_string(scenario.logs.file("first.stderr.log")).unwrap();
    let handed_back = log.contains("shutdown grace elapsed");
    note(&format!(
        "SIGTERM with {in_flight} in flight: exit 0 after {} (grace {}); {ready} ready, 0 unacked after exit; grace elapsed with calls still running: {handed_back}",
        secs(took),
        secs(grace)
    ));

    // A second worker finishes the rest.
    scenario.sim.set_faults(Faults::default());
    let restarted = Instant::now();
    let mut second = scenario.spawn_worker("second");
    let End {
        drained,
        tally: t,
        scan,
        ..
    } = drain_and_tally(&scenario, &events, &mut second, Duration::from_secs(120)).await;
    Summary {
        scenario: "9 graceful shutdown",
        load: format!(
            "{total} events ({} to skip), target latency 0.1-6.1 s, concurrency 64",
            t.skipped
        ),
        faults: format!(
            "SIGTERM mid-load ({in_flight} in flight), grace {}",
            secs(grace)
        ),
        tally: &t,
        recovery: format!(
            "exit 0 in {}; {ready} handed back, finished by a 2nd worker in {}",
            secs(took),
            secs(drained.duration_since(restarted))
        ),
    }
    .print();
    note(&format!(
        "repeated link calls {}; {}",
        t.repeated_calls,
        scan.describe()
    ));
    t.assert_clean();
    // Runs show 0.37 s for the second worker.
    assert_within(
        "the second worker finishing what was handed back",
        drained.duration_since(restarted),
        Duration::from_secs(30),
    );
    scenario.cleanup().await;
}
