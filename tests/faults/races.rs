//! Scenario 8: races. mos-sim's check-then-create has a real 20 ms window
//! (concurrent identical calls WOULD create duplicates); the worker must make
//! exactly one link per pair anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mos_sim::SimConfig;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_concurrent_copies_and_back_to_back_events_link_once() {
    let copies = 100;
    let users = 1_000;
    let scenario = Scenario::new(
        "s08-races",
        SimConfig {
            pause: Duration::from_millis(20),
            ..SimConfig::default()
        },
        &[("LINKER_CONCURRENCY", "128"), ("LINKER_PREFETCH", "256")],
    )
    .await;
    let tag = scenario.tag.clone();
    let mut events: Vec<Event> = (0..copies)
        .map(|_| {
            Event::pair(
                "user.logged_in",
                &format!("a.{tag}.race"),
                &format!("u.{tag}.race"),
            )
        })
        .collect();
    for i in 0..users {
        let (a, u) = (format!("a.{tag}.{i}"), format!("u.{tag}.{i}"));
        events.push(Event::pair("user.signed_up", &a, &u));
        events.push(Event::pair("user.logged_in", &a, &u));
    }
    // Queued before the worker starts, so they are delivered together.
    let mut producer = Producer::new(&scenario);
    producer.send(&events).await;
    producer.close().await;

    let started = Instant::now();
    let mut worker = scenario.spawn_worker("worker");
    let end = drain_and_tally(&scenario, &events, &mut worker, Duration::from_secs(120)).await;
    let (drained, t, scan) = (end.drained, end.tally, end.scan);
    let metrics = end.metrics.expect("metrics");
    // Runs show 0.42 s.
    assert_within(
        "settling the races",
        drained.duration_since(started),
        Duration::from_secs(30),
    );
    let stats = scenario.sim.stats();
    let mut per_pair: HashMap<(String, String), usize> = HashMap::new();
    for link in scenario.sim.links() {
        *per_pair
            .entry((link.anonymous_identifier, link.user_identifier))
            .or_default() += 1;
    }
    let worst = per_pair.values().max().copied().unwrap_or(0);
    Summary {
        scenario: "8 races",
        load: format!(
            "{copies} copies of one pair + {users} users x (signed_up, logged_in) back to back; sim pause 20 ms"
        ),
        faults: "concurrent identical events (prefetch 256, concurrency 128)".to_owned(),
        tally: &t,
        recovery: format!("all settled in {}", secs(drained.duration_since(started))),
    }
    .print();
    note(&format!(
        "mos-sim: {} calls, {} creates, {} already_linked, {} duplicates; linked-cache hits and shared results: {} already_linked outcomes; {}",
        stats.requests,
        stats.creates,
        stats.already_linked,
        stats.duplicates,
        metrics.outcome("already_linked"),
        scan.describe()
    ));
    assert_eq!(
        stats.creates,
        users as u64 + 1,
        "exactly one create per pair"
    );
    assert_eq!(stats.duplicates, 0);
    assert_eq!(worst, 1, "no pair has two links");
    assert_eq!(per_pair.len(), users + 1);
    assert_eq!(t.lost, 0);
    assert_eq!(t.dead_lettered, 0);
    assert_eq!(
        metrics.outcome("linked") + metrics.outcome("already_linked"),
        events.len() as u64
    );
    scenario.cleanup().await;
}
