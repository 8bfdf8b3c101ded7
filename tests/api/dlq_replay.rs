//! Contract sections 6 and 9: dead letters can be inspected and replayed.

use std::time::Duration;

use identity_link_worker::broker::{dlq, headers};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_dead_letters_back_and_they_then_link() {
    let app = TestApp::spawn_with(faulty(statuses(&[422, 422, 422])), &[]).await;
    app.publish_pairs("user.signed_up", "replay", 3).await;
    app.publish("user.logged_in", b"not json").await;
    app.wait_settled(4).await;
    assert_eq!(app.outcome("dead_lettered"), 4);

    let stats = dlq::stats(&app.connection, &app.topology).await.unwrap();
    assert_eq!(stats.messages, 4);
    assert_eq!(stats.by_reason.get("rejected"), Some(&3));
    assert_eq!(stats.by_reason.get("malformed"), Some(&1));
    // Looking changes nothing.
    let listed = dlq::list(&app.connection, &app.topology, 10).await.unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(app.depth(&app.topology.dead_letter).await, 4);

    // The endpoint is fixed; replay only the rejected ones.
    let report = dlq::replay(&app.connection, &app.topology, 100, Some("rejected"))
        .await
        .unwrap();
    assert_eq!(report.replayed, 3);
    assert_eq!(report.left, 1);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    app.wait_settled(7).await;
    assert_eq!(app.outcome("linked"), 3);
    assert_eq!(app.sim.stats().links, 3);
    let left = app.take_dead_letters().await;
    assert_eq!(left.len(), 1, "only the malformed one stays");
    assert_eq!(left[0].data, b"not json");
    app.finish().await;
}

/// A two-step ladder, no in-process retry, a target that always fails: a
/// message takes three deliveries (two `retried`, then `retries_exhausted`
/// with `x-linker-attempts` 2), one call each.
const RESET_LADDER: &[(&str, &str)] = &[
    ("LINKER_IMMEDIATE_RETRIES", "0"),
    ("LINKER_RETRY_DELAYS", "200ms,400ms"),
    // Keep the circuit out of this test: it would hand messages back instead.
    ("LINKER_CIRCUIT_FAILURE_THRESHOLD", "1000"),
];
const STEPS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_messages_start_with_attempts_reset() {
    let app = TestApp::spawn_with(faulty(always(503)), RESET_LADDER).await;
    app.publish_pair("user.logged_in", "a-reset", "u-reset")
        .await;
    app.wait_settled(u64::from(STEPS) + 1).await;
    assert_eq!(app.outcome("retried"), u64::from(STEPS));
    assert_eq!(app.outcome("dead_lettered"), 1);
    assert_eq!(app.requests(), u64::from(STEPS) + 1);
    // The dead letter used the whole ladder: its attempts are not 0 (a
    // missing header would read 0 here too).
    let listed = dlq::list(&app.connection, &app.topology, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reason, "retries_exhausted");
    assert_eq!(listed[0].attempts, STEPS);

    // Replayed while the target still fails. A copy that kept its attempts
    // would be dead-lettered at its first failure; one that starts again at
    // 0 goes through the whole ladder again.
    let report = dlq::replay(&app.connection, &app.topology, 10, None)
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    wait_for(
        "the replayed message to be dead-lettered again",
        Duration::from_secs(30),
        || async { app.outcome("dead_lettered") == 2 },
    )
    .await;
    assert_eq!(
        app.outcome("retried"),
        2 * u64::from(STEPS),
        "the replayed message went through both steps again"
    );
    assert_eq!(app.requests(), 2 * (u64::from(STEPS) + 1));
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1, "the replay removed the first dead letter");
    assert_eq!(reason(&dead[0]).as_deref(), Some("retries_exhausted"));
    assert_eq!(header_u32(&dead[0], headers::ATTEMPTS), Some(STEPS));
    app.finish().await;
}
