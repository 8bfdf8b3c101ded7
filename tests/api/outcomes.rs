//! Contract section 2: every case with its exact outcome, ack and headers.

use std::collections::BTreeMap;

use identity_link_worker::broker::headers;
use lapin::BasicProperties;
use lapin::types::ShortString;
use mos_sim::SimConfig;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_body_is_dead_lettered_with_all_headers_and_the_original_kept() {
    let mut app = TestApp::spawn().await;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from("evt-malformed-1"))
        .with_content_type(ShortString::from("application/json"));
    app.publish_raw("user.logged_in", b"{not json", properties)
        .await;
    app.settle_and_stop(1).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.data, b"{not json", "body is kept");
    assert_eq!(
        letter.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("evt-malformed-1")
    );
    assert_eq!(
        letter
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(reason(letter).as_deref(), Some("malformed"));
    let error = header(letter, headers::ERROR).unwrap();
    assert!(error.contains("not valid JSON"), "{error}");
    assert_eq!(header_u32(letter, headers::ATTEMPTS), Some(0));
    assert_eq!(
        header(letter, headers::ORIGINAL_EXCHANGE).as_deref(),
        Some(app.exchange())
    );
    assert_eq!(
        header(letter, headers::ORIGINAL_ROUTING_KEY).as_deref(),
        Some("user.logged_in")
    );
    let failed_at = header(letter, headers::FAILED_AT).unwrap();
    time::OffsetDateTime::parse(&failed_at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("x-linker-failed-at {failed_at:?} is not RFC 3339: {e}"));
    assert!(failed_at.ends_with('Z'), "UTC: {failed_at}");
    assert_eq!(app.requests(), 0, "no call for a malformed message");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dead_letter_reason_for_bad_input() {
    let mut app = TestApp::spawn().await;
    let long = "x".repeat(513);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\xff\xfe\xfd".to_vec(), "malformed"),
        (b"[1,2,3]".to_vec(), "malformed"),
        (b"\"just a string\"".to_vec(), "malformed"),
        (
            br#"{"anonymousId":"a-1"}"#.to_vec(),
            "missing_user_identifier",
        ),
        (
            br#"{"anonymousId":"a-2","userId":null}"#.to_vec(),
            "missing_user_identifier",
        ),
        (
            format!(r#"{{"anonymousId":"{long}","userId":"u-3"}}"#).into_bytes(),
            "invalid_identifier",
        ),
        (
            br#"{"anonymousId":"a-4","userId":"u\u0007-4"}"#.to_vec(),
            "invalid_identifier",
        ),
        (
            br#"{"anonymousId":"a-5","userId":"   "}"#.to_vec(),
            "invalid_identifier",
        ),
        (
            br#"{"anonymousId":"a-6","userId":["u"]}"#.to_vec(),
            "invalid_identifier",
        ),
        (
            br#"{"anonymousId":66,"userId":"u-6"}"#.to_vec(),
            "invalid_identifier",
        ),
        (
            br#"{"anonymousId":"a-7","userId":1.5}"#.to_vec(),
            "invalid_identifier",
        ),
    ];
    app.publish_each(
        "user.signed_up",
        cases.iter().map(|(body, _)| body.as_slice()),
    )
    .await;
    app.settle_and_stop(cases.len() as u64).await;
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for (_, reason) in &cases {
        *want.entry((*reason).to_owned()).or_default() += 1;
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for letter in app.take_dead_letters().await {
        *got.entry(reason(&letter).unwrap()).or_default() += 1;
        assert!(header(&letter, headers::ERROR).is_some_and(|e| !e.is_empty() && e.len() <= 1024));
    }
    assert_eq!(got, want);
    assert_eq!(app.outcome("dead_lettered"), cases.len() as u64);
    assert_eq!(app.requests(), 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skips_are_acked_without_a_call() {
    let mut app = TestApp::spawn().await;
    let cases: [(&[u8], &str); 8] = [
        (br#"{"userId":"u-1"}"#, "no_anonymous_identifier"),
        (
            br#"{"anonymousId":null,"userId":"u-2"}"#,
            "no_anonymous_identifier",
        ),
        (
            br#"{"anonymousId":"","userId":"u-3"}"#,
            "no_anonymous_identifier",
        ),
        (
            br#"{"anonymousId":" \t ","userId":"u-4"}"#,
            "no_anonymous_identifier",
        ),
        (
            br#"{"anonymousId":"undefined","userId":"u-5"}"#,
            "blocked_identifier",
        ),
        (
            br#"{"anonymousId":" [object Object] ","userId":"u-6"}"#,
            "blocked_identifier",
        ),
        (
            br#"{"anonymousId":"a-7","userId":"NULL"}"#,
            "blocked_identifier",
        ),
        (
            br#"{"anonymousId":"same-8","userId":"same-8"}"#,
            "same_identifier",
        ),
    ];
    app.publish_each("user.logged_in", cases.iter().map(|(body, _)| *body))
        .await;
    app.settle_and_stop(cases.len() as u64).await;
    assert_eq!(app.depth(&app.topology.dead_letter).await, 0);
    assert_eq!(app.outcome("skipped"), cases.len() as u64);
    let skips: BTreeMap<&str, u64> = app.worker.skips().into_iter().collect();
    assert_eq!(skips["no_anonymous_identifier"], 4);
    assert_eq!(skips["blocked_identifier"], 3);
    assert_eq!(skips["same_identifier"], 1);
    assert_eq!(app.requests(), 0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_and_already_linked_follow_the_endpoint() {
    let app = TestApp::spawn().await;
    // Linked earlier by someone else: the endpoint answers already_linked.
    let response = reqwest::Client::new()
        .post(app.sim.endpoint_url())
        .header("X-MOS-Key", format!("Bearer {KEY}"))
        .json(&serde_json::json!({"anonymousIdentifier":"a-old","userIdentifier":"u-old"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.publish_pair("user.logged_in", "a-old", "u-old").await;
    app.publish_pair("user.signed_up", "a-new", "u-new").await;
    app.wait_settled(2).await;
    assert_eq!(app.outcome("linked"), 1);
    assert_eq!(app.outcome("already_linked"), 1);
    let stats = app.sim.stats();
    assert_eq!((stats.creates, stats.duplicates), (2, 0));
    let links = app.sim.links();
    assert!(
        links
            .iter()
            .any(|l| l.anonymous_identifier == "a-new" && l.user_identifier == "u-new")
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_success_body_of_the_recipe_counts_as_linked() {
    let sim = SimConfig {
        plain_success: true,
        ..sim_config()
    };
    let app = TestApp::spawn_with(sim, &[]).await;
    app.publish_pair("user.logged_in", "a-plain", "u-plain")
        .await;
    app.wait_settled(1).await;
    assert_eq!(app.outcome("linked"), 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rejection_is_dead_lettered_as_rejected() {
    let mut app = TestApp::spawn_with(faulty(statuses(&[422])), &[]).await;
    app.publish_pair("user.logged_in", "a-rej", "u-rej").await;
    app.wait_settled(1).await;
    app.stop_worker().await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(reason(&dead[0]).as_deref(), Some("rejected"));
    assert!(header(&dead[0], headers::ERROR).unwrap().contains("422"));
    assert_eq!(app.requests(), 1, "a permanent rejection is not retried");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_are_found_by_every_default_pointer_shape() {
    let app = TestApp::spawn().await;
    let bodies: [&[u8]; 5] = [
        br#"{"anonymousIdentifier":"p-a1","userIdentifier":"p-u1"}"#,
        br#"{"anonymous_id":"p-a2","user_id":"p-u2"}"#,
        br#"{"data":{"anonymousId":"p-a3","userId":"p-u3"}}"#,
        br#"{"context":{"anonymousId":"p-a4"},"user":{"id":"p-u4"}}"#,
        br#"{"anonymousId":"p-a5","user":{"id":5005}}"#,
    ];
    app.publish_each("user.signed_up", bodies).await;
    app.wait_settled(5).await;
    let mut pairs: Vec<(String, String)> = app
        .sim
        .links()
        .into_iter()
        .map(|l| (l.anonymous_identifier, l.user_identifier))
        .collect();
    pairs.sort();
    let want: Vec<(String, String)> = [
        ("p-a1", "p-u1"),
        ("p-a2", "p-u2"),
        ("p-a3", "p-u3"),
        ("p-a4", "p-u4"),
        ("p-a5", "5005"),
    ]
    .iter()
    .map(|(a, u)| ((*a).to_owned(), (*u).to_owned()))
    .collect();
    assert_eq!(pairs, want);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_dead_letter_exchange_is_redeclared_and_nothing_is_lost() {
    use lapin::options::ExchangeDeleteOptions;
    let mut app = TestApp::spawn().await;
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .exchange_delete(
            app.topology.dead_letter.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    app.publish("user.logged_in", b"not json either").await;
    // The dead-letter publish fails, the message goes back, the worker
    // reconnects, declares the topology again, and the second try lands.
    app.settle_and_stop(1).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(reason(&dead[0]).as_deref(), Some("malformed"));
    app.finish().await;
}
