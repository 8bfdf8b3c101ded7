//! Contract sections 6 and 9: dead letters can be inspected and replayed.

use identity_link_worker::broker::dlq;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_messages_start_with_attempts_reset() {
    let app = TestApp::spawn_with(faulty(statuses(&[400])), &[]).await;
    app.publish_pair("user.logged_in", "a-reset", "u-reset")
        .await;
    app.wait_settled(1).await;
    // Make the replayed copy fail transiently once so we can see its attempts header.
    app.sim.set_faults(statuses(&[503, 503, 503, 503]));
    let report = dlq::replay(&app.connection, &app.topology, 10, None)
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    app.wait_settled(3).await; // dead letter, retried, linked
    assert_eq!(app.outcome("retried"), 1);
    assert_eq!(app.outcome("linked"), 1);
    app.finish().await;
}
