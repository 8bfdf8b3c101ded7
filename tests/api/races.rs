//! Contract section 3: the worker's half of check-then-create.

use std::time::Duration;

use mos_sim::SimConfig;

use crate::helpers::*;

fn slow_sim() -> SimConfig {
    // A wide race window in the simulator: concurrent calls WOULD duplicate.
    SimConfig {
        secret_key: KEY.into(),
        pause: Duration::from_millis(50),
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_copies_of_one_pair_make_one_link() {
    let app = TestApp::spawn_with(slow_sim(), &[("LINKER_CONCURRENCY", "128")]).await;
    for _ in 0..50 {
        app.publish_pair("user.logged_in", "a-race", "u-race").await;
    }
    app.wait_settled(50).await;
    let stats = app.sim.stats();
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(app.outcome("linked"), 1);
    assert_eq!(app.outcome("already_linked"), 49);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_and_login_back_to_back_make_one_create_each() {
    let app = TestApp::spawn_with(slow_sim(), &[("LINKER_CONCURRENCY", "128")]).await;
    let users = 200;
    for i in 0..users {
        app.publish_pair("user.signed_up", &format!("a-su-{i}"), &format!("u-su-{i}"))
            .await;
        app.publish_pair("user.logged_in", &format!("a-su-{i}"), &format!("u-su-{i}"))
            .await;
    }
    app.wait_settled(2 * users).await;
    let stats = app.sim.stats();
    assert_eq!(stats.creates, users);
    assert_eq!(stats.duplicates, 0);
    assert_eq!(
        stats.requests, users,
        "the second event of each pair made no call"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_visitor_two_users_are_both_linked_one_after_the_other() {
    let app = TestApp::spawn_with(slow_sim(), &[]).await;
    for _ in 0..5 {
        app.publish_pair("user.logged_in", "a-shared", "u-first")
            .await;
        app.publish_pair("user.logged_in", "a-shared", "u-second")
            .await;
    }
    app.wait_settled(10).await;
    let stats = app.sim.stats();
    assert_eq!(stats.creates, 2);
    assert_eq!(stats.duplicates, 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_login_makes_no_request() {
    let app = TestApp::spawn().await;
    app.publish_pair("user.logged_in", "a-again", "u-again")
        .await;
    app.wait_settled(1).await;
    assert_eq!(app.requests(), 1);
    for _ in 0..5 {
        app.publish_pair("user.logged_in", "a-again", "u-again")
            .await;
    }
    app.wait_settled(6).await;
    assert_eq!(app.requests(), 1, "answered from the linked cache");
    assert_eq!(app.worker.linked_cache_hits(), 5);
    assert_eq!(app.outcome("already_linked"), 5);
    app.finish().await;
}
