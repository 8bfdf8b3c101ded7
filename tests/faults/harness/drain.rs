//! The end of a scenario: waiting until the queues are drained, checking
//! that nothing is left behind, and the shared drain-stop-tally-scan sequence.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use testkit::scrape::Scrape;

use super::{
    Event, ScanReport, Scenario, Tally, Worker, dead_letters, depth, expected_links, scrape, tally,
};

/// Waits until every expected link exists and nothing is left in the work
/// and retry queues; returns when that first held.
pub async fn wait_drained(scenario: &Scenario, events: &[Event], limit: Duration) -> Instant {
    let expected = expected_links(events);
    let connection =
        testkit::broker::broker_within_at(&scenario.amqp_url, Duration::from_secs(60)).await;
    let deadline = Instant::now() + limit;
    // Passive declares count ready messages exactly, but not those a worker
    // holds; so the condition must also hold for a while, with nothing in
    // flight at the worker, before it counts.
    const STABLE: Duration = Duration::from_millis(1500);
    let mut since: Option<Instant> = None;
    loop {
        let stats = scenario.sim.stats();
        let mut drained = false;
        if stats.links as usize >= expected.len() {
            let linked: HashSet<(String, String)> = scenario
                .sim
                .links()
                .into_iter()
                .map(|l| (l.anonymous_identifier, l.user_identifier))
                .collect();
            drained = expected.is_subset(&linked)
                && scenario.backlog(&connection).await == 0
                && scrape(scenario.ops).await.is_none_or(|m| m.in_flight == 0);
        }
        if drained {
            let first = *since.get_or_insert_with(Instant::now);
            if first.elapsed() >= STABLE {
                let _ = connection.close(200, "done".into()).await;
                return first;
            }
        } else {
            since = None;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not drained after {limit:?}: {} of {} pairs linked, backlog {}",
            scenario.name,
            stats.links,
            expected.len(),
            scenario.backlog(&connection).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After the last worker exited: nothing unacked anywhere (the broker's own
/// count, which for quorum queues is refreshed every few seconds, must reach
/// 0) and, exactly (passive declare), nothing ready but in the dead-letter
/// queue. Returns the ready count per queue.
pub async fn settle_after_exit(scenario: &Scenario) -> BTreeMap<String, u32> {
    // The broker hands back a closed connection's deliveries asynchronously.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut counts = scenario.queue_counts().await;
    while counts.values().any(|(_, unacked)| *unacked > 0) {
        assert!(
            Instant::now() < deadline,
            "unacked after the worker exited: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        counts = scenario.queue_counts().await;
    }
    let connection = scenario.connect().await;
    let mut ready = BTreeMap::new();
    for queue in scenario.queues() {
        let n = depth(&connection, &queue).await;
        ready.insert(queue, n);
    }
    let _ = connection.close(200, "done".into()).await;
    ready
}

pub async fn assert_queues_empty(scenario: &Scenario) {
    for (queue, ready) in settle_after_exit(scenario).await {
        if queue != scenario.topology.dead_letter && ready > 0 {
            let left = peek(scenario, &queue, 5).await;
            panic!("{queue}: {ready} messages left, e.g. {left:#?}");
        }
    }
}

/// Up to `n` messages of `queue`, described (they stay in the queue).
pub async fn peek(scenario: &Scenario, queue: &str, n: usize) -> Vec<String> {
    let connection = scenario.connect().await;
    let seen = testkit::broker::peek(&connection, queue, n).await;
    let _ = connection.close(200, "peeked".into()).await;
    seen.iter()
        .map(|d| {
            format!(
                "rk={} redelivered={} headers={:?} body={}",
                d.routing_key,
                d.redelivered,
                d.properties.headers(),
                String::from_utf8_lossy(&d.data[..d.data.len().min(200)])
            )
        })
        .collect()
}

/// How a scenario ended, from [`drain_and_tally`].
pub struct End {
    /// When everything expected was first linked and the queues drained.
    pub drained: Instant,
    /// The worker's metrics just before it was stopped.
    pub metrics: Option<Scrape>,
    pub tally: Tally,
    pub scan: ScanReport,
}

/// The end most scenarios share: waits (up to `limit`) until `events` are
/// drained, stops `worker` (it must exit 0), checks that nothing is left in
/// any queue but the dead letters, tallies, and scans the output.
pub async fn drain_and_tally(
    scenario: &Scenario,
    events: &[Event],
    worker: &mut Worker,
    limit: Duration,
) -> End {
    let drained = wait_drained(scenario, events, limit).await;
    let metrics = worker.metrics().await;
    let (status, _) = worker.stop(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "the worker exits 0 on SIGTERM");
    assert_queues_empty(scenario).await;
    let dead = dead_letters(scenario).await;
    let tally = tally(events, &scenario.sim, &dead);
    let scan = scenario.assert_no_secret_in_output();
    End {
        drained,
        metrics,
        tally,
        scan,
    }
}

impl Tally {
    /// Nothing lost, nothing linked twice or unasked, nothing dead-lettered.
    pub fn assert_clean(&self) {
        assert_eq!(self.lost, 0, "events lost");
        assert_eq!(self.duplicates, 0, "a pair was linked twice");
        assert_eq!(self.unexpected_links, 0, "a skipped event was linked");
        assert_eq!(self.dead_lettered, 0, "dead letters");
    }
}
