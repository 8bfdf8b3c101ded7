//! Rate limits and adaptive concurrency against mos-sim's token bucket and
//! capacity model (`src/link/flow.rs`). The pause itself is in
//! `retries::a_rate_limit_pauses_every_call_and_spends_no_retry`.

use std::time::Duration;

use mos_sim::{Capacity, Faults, RateLimit};

use testkit::worker::Private;

use crate::helpers::*;

/// The gauge `identity_linker_concurrency_limit` of the worker.
async fn concurrency_limit(app: &TestApp) -> u64 {
    app.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("identity_linker_concurrency_limit "))
        .and_then(|v| v.trim().parse().ok())
        .expect("identity_linker_concurrency_limit is exported")
}

/// A burst of logins against an endpoint allowing 100 calls a second: all
/// linked, none dead-lettered, none sent to a retry queue, and most calls
/// not refused (the worker paces itself after the first limits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_burst_is_linked_without_dead_letters_or_delays() {
    let faults = Faults {
        rate_limit: Some(RateLimit {
            per_second: 100.0,
            burst: 10,
        }),
        ..Faults::default()
    };
    let mut app = TestApp::spawn_with(faulty(faults), &[]).await;
    let events = 300;
    for body in pair_bodies("burst", events) {
        app.publish("user.logged_in", &body).await;
    }
    wait_for("every event linked", Duration::from_secs(60), || async {
        app.sim.stats().links as usize >= events
    })
    .await;
    app.wait_settled(events as u64).await;
    let stats = app.sim.stats();
    let text = app.metrics_text().await;
    app.stop_worker().await;
    assert_eq!(app.outcome("linked"), events as u64);
    assert_eq!(app.outcome("dead_lettered"), 0);
    assert_eq!(app.worker.retries_delayed(), 0, "no delayed retry");
    assert_eq!(app.worker.retries_immediate(), 0, "no retry spent");
    assert!(stats.rate_limited > 0, "the limit was met: {stats:?}");
    // Without the pause and the pace, each of 128 concurrent callers honours
    // its own Retry-After and about as many calls are refused as pass.
    assert!(
        stats.rate_limited * 4 < stats.requests,
        "most calls pass: {} of {} refused",
        stats.rate_limited,
        stats.requests
    );
    assert!(text.contains("identity_linker_circuit_open 0"), "{text}");
    app.finish().await;
}

/// An endpoint that becomes overloaded (latency growing past 4 calls in
/// flight): the limit falls below the ceiling, then grows back once the
/// endpoint is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_falls_under_overload_and_recovers() {
    let overloaded = Faults {
        latency_ms: 10,
        capacity: Some(Capacity {
            max_in_flight: 4,
            // 70 ms at 16 in flight, 35 ms at 9: within twice the unloaded
            // latency only up to 6, so the limit falls even on a loaded
            // machine whose pipeline keeps fewer calls in flight than it allows.
            latency_per_extra_ms: 5.0,
            hard_limit: 10_000,
            retry_after_secs: None,
        }),
        ..Faults::default()
    };
    // A backlog queued first, so the calls fill what the limit allows; the
    // endpoint is healthy at first (the limit learns its latency), then
    // overloaded, then healthy again.
    let healthy = Faults {
        latency_ms: 10,
        ..Faults::default()
    };
    let sim = start_sim(faulty(healthy.clone())).await;
    let private = Private::from_vars(with(base_vars(&sim), &[("LINKER_CONCURRENCY", "16")]));
    let connection = broker().await;
    let events = 9000;
    queue_before_start(&connection, &private, pair_bodies("overload", events)).await;
    let mut app = TestApp::start(sim, private).await;
    wait_for(
        "calls at the healthy latency",
        Duration::from_secs(30),
        || async { app.worker.settled() >= 300 },
    )
    .await;
    app.sim.set_faults(overloaded);
    wait_for("the limit to fall", Duration::from_secs(30), || async {
        concurrency_limit(&app).await <= 10
    })
    .await;
    // Healthy again: the limit grows back while the backlog uses it.
    app.sim.set_faults(healthy);
    // It grows only while calls fill it: a ceiling of 16 is one this
    // machine's pipeline fills (at 64 it keeps about 20 calls in flight).
    wait_for(
        "the limit to grow back",
        // +1 per round trip, and only while the pipeline fills the limit:
        // slow on a loaded machine, so a generous bound.
        Duration::from_secs(120),
        || async { concurrency_limit(&app).await >= 14 },
    )
    .await;
    app.wait_settled(events as u64).await;
    app.stop_worker().await;
    assert_eq!(app.outcome("linked"), events as u64);
    assert_eq!(app.outcome("dead_lettered"), 0);
    assert_eq!(app.sim.stats().links, events as u64);
    app.finish().await;
}
