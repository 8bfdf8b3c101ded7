//! Contract section 8: every metric name, with the right counts after a known mix.

use crate::helpers::*;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("series {series} not found in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_every_contract_name_with_the_right_counts() {
    let app = TestApp::spawn().await;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for i in 0..3 {
        let body = serde_json::json!({"anonymousId": format!("a-m{i}"), "userId": format!("u-m{i}"), "occurredAt": now});
        app.publish("user.signed_up", body.to_string().as_bytes())
            .await;
    }
    app.wait_settled(3).await;
    app.publish_pair("user.logged_in", "a-m0", "u-m0").await; // cache hit
    app.publish_pair("user.logged_in", "undefined", "u-m9")
        .await; // blocked
    app.publish("user.logged_in", b"nope").await; // malformed
    app.wait_settled(6).await;

    let text = app.metrics_text().await;
    let expect = [
        (
            r#"identity_linker_messages_total{event_type="user.signed_up",outcome="linked"}"#,
            3.0,
        ),
        (
            r#"identity_linker_messages_total{event_type="user.logged_in",outcome="already_linked"}"#,
            1.0,
        ),
        (
            r#"identity_linker_messages_total{event_type="user.logged_in",outcome="skipped"}"#,
            1.0,
        ),
        (
            r#"identity_linker_messages_total{event_type="user.logged_in",outcome="dead_lettered"}"#,
            1.0,
        ),
        (
            r#"identity_linker_messages_total{event_type="user.logged_in",outcome="retried"}"#,
            0.0,
        ),
        (
            r#"identity_linker_dead_lettered_total{reason="malformed"}"#,
            1.0,
        ),
        (
            r#"identity_linker_dead_lettered_total{reason="rejected"}"#,
            0.0,
        ),
        (
            r#"identity_linker_skipped_total{reason="blocked_identifier"}"#,
            1.0,
        ),
        (
            r#"identity_linker_skipped_total{reason="same_identifier"}"#,
            0.0,
        ),
        (r#"identity_linker_retries_total{kind="immediate"}"#, 0.0),
        (r#"identity_linker_retries_total{kind="delayed"}"#, 0.0),
        (r#"identity_linker_api_requests_total{status="200"}"#, 3.0),
        ("identity_linker_api_request_duration_seconds_count", 3.0),
        ("identity_linker_message_duration_seconds_count", 6.0),
        ("identity_linker_event_age_seconds_count", 3.0),
        ("identity_linker_linked_cache_hits_total", 1.0),
        ("identity_linker_in_flight", 0.0),
        ("identity_linker_broker_connected", 1.0),
        ("identity_linker_circuit_open", 0.0),
        (
            &format!(
                r#"identity_linker_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(value(&text, series), want, "{series}");
    }
    // Event age is measured from occurredAt: a few seconds at most here.
    assert!(value(&text, "identity_linker_event_age_seconds_sum") < 30.0);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let mut app = TestApp::spawn().await;
    let health = reqwest::get(format!("http://{}/healthz", app.ops))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(app.readyz().await.0, 200);
    app.stop_worker().await;
    assert_eq!(
        app.readyz().await.0,
        0,
        "the HTTP server stops with the worker"
    );
    app.finish().await;
}
