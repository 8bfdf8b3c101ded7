//! Contract section 4: immediate retries, the delayed ladder, Retry-After.

use std::time::{Duration, Instant};

use identity_link_worker::broker::headers;
use mos_sim::Faults;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_ladder_ends_in_retries_exhausted() {
    let mut app = TestApp::spawn_with(
        faulty(always(503)),
        &[
            ("LINKER_IMMEDIATE_RETRIES", "1"),
            ("LINKER_RETRY_DELAYS", "200ms,400ms"),
            // Keep the circuit out of this test.
            ("LINKER_CIRCUIT_FAILURE_THRESHOLD", "1000"),
        ],
    )
    .await;
    let started = Instant::now();
    app.publish_pair("user.logged_in", "a-ladder", "u-ladder")
        .await;
    // Two delayed retries, then the dead letter: three outcomes in all.
    app.wait_settled(3).await;
    let elapsed = started.elapsed();
    app.stop_worker().await;
    assert_eq!(app.outcome("retried"), 2);
    assert_eq!(app.outcome("dead_lettered"), 1);
    assert_eq!(app.worker.retries_delayed(), 2);
    assert_eq!(
        app.worker.retries_immediate(),
        3,
        "one immediate retry per delivery"
    );
    // 3 deliveries x (1 call + 1 immediate retry).
    assert_eq!(app.requests(), 6);
    assert!(
        elapsed >= Duration::from_millis(600),
        "went through both delays: {elapsed:?}"
    );
    for retry in &app.topology.retry_queues {
        assert_eq!(app.depth(&retry.name).await, 0, "{} drained", retry.name);
    }
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(reason(&dead[0]).as_deref(), Some("retries_exhausted"));
    assert_eq!(header_u32(&dead[0], headers::ATTEMPTS), Some(2));
    assert_eq!(
        header(&dead[0], headers::ORIGINAL_ROUTING_KEY).as_deref(),
        Some("user.logged_in")
    );
    assert_eq!(
        header(&dead[0], headers::ORIGINAL_EXCHANGE).as_deref(),
        Some(app.exchange())
    );
    assert!(header(&dead[0], headers::ERROR).unwrap().contains("503"));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_retry_that_then_succeeds_is_linked() {
    // 4 failures: the first delivery's call and 3 immediate retries, then success.
    let app = TestApp::spawn_with(faulty(statuses(&[500, 502, 504, 408])), &[]).await;
    app.publish_pair("user.signed_up", "a-later", "u-later")
        .await;
    app.wait_settled(2).await;
    assert_eq!(app.outcome("retried"), 1);
    assert_eq!(app.outcome("linked"), 1);
    assert_eq!(app.sim.stats().creates, 1);
    app.finish().await;
}

/// A 429 pauses every call of the process for its `Retry-After`: the
/// other visitors' calls wait too (no request reaches the endpoint during the
/// pause), then all go through; no retry is spent, nothing is delayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_pauses_every_call_and_spends_no_retry() {
    let faults = Faults {
        retry_after_secs: 2,
        ..statuses(&[429])
    };
    let app = TestApp::spawn_with(faulty(faults), &[]).await;
    let started = Instant::now();
    app.publish_pair("user.logged_in", "a-ra", "u-ra").await;
    wait_for("the 429", Duration::from_secs(5), || async {
        app.sim.stats().requests >= 1
    })
    .await;
    // Twenty other visitors arrive during the pause.
    app.publish_pairs("user.logged_in", "ra-others", 20).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        app.sim.stats().requests,
        1,
        "no call while the rate limit's pause holds"
    );
    app.wait_settled(21).await;
    let elapsed = started.elapsed();
    assert_eq!(app.outcome("linked"), 21);
    assert_eq!(app.sim.stats().links, 21);
    assert_eq!(
        app.worker.retries_immediate(),
        0,
        "a rate limit spends no retry"
    );
    assert_eq!(app.worker.retries_delayed(), 0);
    assert!(
        elapsed >= Duration::from_millis(1900),
        "waited {elapsed:?}, expected about 2 s"
    );
    let text = app.metrics_text().await;
    assert!(
        text.contains("identity_linker_rate_limited_total 1\n"),
        "{text}"
    );
    assert!(text.contains("identity_linker_circuit_open 0"), "{text}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_transient() {
    let faults = Faults {
        drop: 2,
        ..Faults::default()
    };
    let app = TestApp::spawn_with(faulty(faults), &[]).await;
    app.publish_pair("user.logged_in", "a-drop", "u-drop").await;
    app.wait_settled(1).await;
    assert_eq!(app.outcome("linked"), 1);
    assert_eq!(app.worker.retries_immediate(), 2);
    assert!(
        app.metrics_text()
            .await
            .contains(r#"identity_linker_api_requests_total{status="error"} 2"#)
    );
    app.finish().await;
}
