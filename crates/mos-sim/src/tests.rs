//! Simulator tests over real HTTP on ephemeral ports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{IntoUrl, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;

const KEY: &str = "test-key";

/// A config accepting [`KEY`], otherwise the defaults; tests override fields
/// with `..keyed_config()`.
fn keyed_config() -> SimConfig {
    SimConfig {
        secret_key: KEY.to_owned(),
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> MosSim {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    MosSim::start(addr, config).await.unwrap()
}

async fn start_default() -> MosSim {
    start(keyed_config()).await
}

/// A default sim that serves the `/_sim/*` control routes.
async fn start_controlled() -> MosSim {
    start(SimConfig {
        control_routes: true,
        ..keyed_config()
    })
    .await
}

/// A default sim whose faults are then replaced at run time through
/// [`MosSim::set_faults`] (not through the config).
async fn start_then_set_faults(faults: Faults) -> MosSim {
    let sim = start_default().await;
    sim.set_faults(faults);
    sim
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A POST to `url` with `X-MOS-Key: {key_header}`, or without the header.
fn post_with_key_header(
    http: &reqwest::Client,
    url: impl IntoUrl,
    key_header: Option<&str>,
) -> RequestBuilder {
    let req = http.post(url);
    match key_header {
        Some(value) => req.header("X-MOS-Key", value),
        None => req,
    }
}

/// Links `anon` to `user` through `url`; the transport result is left to the
/// caller (dropped and refused connections are what some tests check).
async fn post_link(
    http: &reqwest::Client,
    url: impl IntoUrl,
    key_header: Option<&str>,
    anon: &str,
    user: &str,
) -> reqwest::Result<Response> {
    post_with_key_header(http, url, key_header)
        .json(&json!({ "anonymousIdentifier": anon, "userIdentifier": user }))
        .send()
        .await
}

async fn link_with_key(
    http: &reqwest::Client,
    sim: &MosSim,
    key: &str,
    anon: &str,
    user: &str,
) -> reqwest::Result<Response> {
    post_link(http, sim.endpoint_url(), Some(&bearer(key)), anon, user).await
}

/// Status of linking `a` to `u` with `key`.
async fn status_with_key(http: &reqwest::Client, sim: &MosSim, key: &str) -> StatusCode {
    link_with_key(http, sim, key, "a", "u")
        .await
        .unwrap()
        .status()
}

async fn status_and_json(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn link(http: &reqwest::Client, sim: &MosSim, anon: &str, user: &str) -> (StatusCode, Value) {
    status_and_json(link_with_key(http, sim, KEY, anon, user).await.unwrap()).await
}

async fn post_raw(http: &reqwest::Client, sim: &MosSim, body: &'static str) -> (StatusCode, Value) {
    let resp = post_with_key_header(http, sim.endpoint_url(), Some(&bearer(KEY)))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    status_and_json(resp).await
}

fn control_url(sim: &MosSim, path: &str) -> String {
    format!("{}/_sim/{path}", sim.base_url())
}

/// Sends a control request; those always get an answer.
async fn send(req: RequestBuilder) -> Response {
    req.send().await.unwrap()
}

async fn get_json<T: DeserializeOwned>(http: &reqwest::Client, url: String) -> T {
    send(http.get(url)).await.json().await.unwrap()
}

async fn put_faults(http: &reqwest::Client, sim: &MosSim, faults: Value) -> Response {
    send(http.put(control_url(sim, "faults")).json(&faults)).await
}

/// Asserts each counter named in `expected`, a subset of the JSON of
/// `GET /_sim/stats`; under `"statuses"` each code is checked through
/// [`SimStats::status`], so a count of 0 matches an absent code.
#[track_caller]
fn assert_stats(stats: &SimStats, expected: Value) {
    let expected = expected
        .as_object()
        .expect("expected counters as an object");
    assert!(!expected.is_empty(), "no counter to check");
    let actual = serde_json::to_value(stats).unwrap();
    for (name, want) in expected {
        if name == "statuses" {
            for (code, want) in want.as_object().expect("statuses as an object") {
                let code: u16 = code.parse().expect("status code");
                assert_eq!(
                    stats.status(code),
                    want.as_u64().expect("count"),
                    "status {code} in {stats:?}"
                );
            }
        } else {
            assert!(actual.get(name).is_some(), "no counter {name:?}");
            assert_eq!(actual[name], *want, "{name} in {stats:?}");
        }
    }
}

#[tokio::test]
async fn created_then_already_linked() {
    let sim = start_default().await;
    let http = client();

    let (status, body) = link(&http, &sim, "anon-1", "user-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"message": "Success", "outcome": "created"}));

    let (status, body) = link(&http, &sim, "anon-1", "user-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"message": "Success", "outcome": "already_linked"})
    );

    // Same anonymous id, another user: a new link.
    let (_, body) = link(&http, &sim, "anon-1", "user-2").await;
    assert_eq!(body["outcome"], "created");

    assert_stats(
        &sim.stats(),
        json!({"requests": 3, "creates": 2, "already_linked": 1, "duplicates": 0,
               "links": 2, "statuses": {"200": 3}}),
    );

    let links = sim.links();
    assert_eq!(links.len(), 2);
    assert_eq!(links[0].anonymous_identifier, "anon-1");
    assert_eq!(links[0].user_identifier, "user-1");
    assert_eq!(links[0].link_type, "copy_once");
    assert_eq!(links[0].reason, "conversion");
    assert!(
        time::OffsetDateTime::parse(
            &links[0].created_at,
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn any_environment_id_is_routed() {
    let sim = start_default().await;
    let url = format!(
        "{}/api/v1/envs/env_123/endpoints/link-identities",
        sim.base_url()
    );
    let resp = post_link(&client(), url, Some(&bearer(KEY)), "a", "u")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn plain_mode_omits_outcome() {
    let sim = start(SimConfig {
        plain_success: true,
        ..keyed_config()
    })
    .await;
    let http = client();
    for _ in 0..2 {
        let (status, body) = link(&http, &sim, "a", "u").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"message": "Success"}));
    }
    assert_stats(&sim.stats(), json!({"creates": 1, "already_linked": 1}));
}

#[tokio::test]
async fn missing_empty_or_non_string_fields_are_400() {
    let sim = start_default().await;
    let http = client();
    let required = json!({"message": "'anonymousIdentifier' and 'userIdentifier' are required"});
    for body in [
        r#"{"anonymousIdentifier":"a"}"#,
        r#"{"userIdentifier":"u"}"#,
        r#"{"anonymousIdentifier":"","userIdentifier":"u"}"#,
        r#"{"anonymousIdentifier":"a","userIdentifier":42}"#,
        r#"{"anonymousIdentifier":null,"userIdentifier":"u"}"#,
        r#"[]"#,
    ] {
        let (status, resp) = post_raw(&http, &sim, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(resp, required, "{body}");
    }
    let (status, resp) = post_raw(&http, &sim, "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(resp["message"].as_str().unwrap().contains("Invalid JSON"));

    assert_stats(&sim.stats(), json!({"links": 0, "statuses": {"400": 7}}));
}

#[tokio::test]
async fn wrong_missing_and_changed_key_are_401() {
    let sim = start_controlled().await;
    let http = client();
    let unauthorized = json!({"message": "Unauthorized"});

    let resp = link_with_key(&http, &sim, "wrong", "a", "u").await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.json::<Value>().await.unwrap(), unauthorized);

    // No key at all, then the key without the Bearer scheme.
    for key_header in [None, Some(KEY)] {
        let resp = post_link(&http, sim.endpoint_url(), key_header, "a", "u")
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{key_header:?}");
    }

    // Revocation through the Rust API, then recovery.
    sim.set_key("rotated");
    assert_eq!(status_with_key(&http, &sim, KEY).await, 401);
    sim.set_key(KEY);
    assert_eq!(link(&http, &sim, "a", "u").await.0, StatusCode::OK);

    // Revocation through the control route.
    let resp = send(
        http.put(control_url(&sim, "key"))
            .json(&json!({"key": "rotated-again"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(status_with_key(&http, &sim, KEY).await, 401);
    assert_eq!(
        status_with_key(&http, &sim, "rotated-again").await,
        StatusCode::OK
    );

    assert_stats(&sim.stats(), json!({"links": 1, "statuses": {"401": 5}}));
}

#[tokio::test]
async fn status_sequence_is_consumed_in_order() {
    let sim = start(SimConfig {
        faults: Faults {
            statuses: vec![503, 503, 429, 500],
            retry_after_secs: 7,
            ..Faults::default()
        },
        ..keyed_config()
    })
    .await;
    let http = client();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let resp = link_with_key(&http, &sim, KEY, "a", "u").await.unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = resp.json().await.unwrap();
        if status == 429 {
            assert_eq!(retry_after.as_deref(), Some("7"));
            assert_eq!(body, json!({"message": "Too Many Requests"}));
        } else {
            assert_eq!(retry_after, None);
        }
        seen.push(status);
    }
    assert_eq!(seen, [503, 503, 429, 500, 200]);

    assert_stats(
        &sim.stats(),
        json!({"requests": 5, "creates": 1, "statuses": {"503": 2, "429": 1, "500": 1}}),
    );
    assert!(sim.faults().statuses.is_empty());
}

#[tokio::test]
async fn faults_apply_before_auth() {
    let sim = start_then_set_faults(Faults {
        statuses: vec![502],
        ..Faults::default()
    })
    .await;
    assert_eq!(
        status_with_key(&client(), &sim, "wrong").await,
        StatusCode::BAD_GATEWAY
    );
}

/// A firewall-like refusal of one identifier: after the key, on the body;
/// a request without it (or without identifiers) is answered as usual.
#[tokio::test]
async fn refuse_answers_requests_whose_body_contains_the_text() {
    let sim = start_then_set_faults(Faults {
        refuse: Some(crate::RefuseFault {
            contains: "<script".into(),
            status: 403,
        }),
        ..Faults::default()
    })
    .await;
    let http = client();
    let (status, _) = link(&http, &sim, "<script>x</script>", "u").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(link(&http, &sim, "a", "u").await.0, StatusCode::OK);
    assert_eq!(post_raw(&http, &sim, "{}").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        status_with_key(&http, &sim, "wrong").await,
        StatusCode::UNAUTHORIZED,
        "the key is checked first"
    );
    assert!(
        Faults {
            refuse: Some(crate::RefuseFault {
                contains: String::new(),
                status: 403
            }),
            ..Faults::default()
        }
        .validate()
        .is_err()
    );
}

#[tokio::test]
async fn retry_after_as_http_date_and_rate_fault() {
    let sim = start_then_set_faults(Faults {
        rate: Some(RateFault {
            status: 429,
            probability: 1.0,
        }),
        retry_after_secs: 30,
        retry_after_http_date: true,
        ..Faults::default()
    })
    .await;
    let http = client();
    for _ in 0..3 {
        let resp = link_with_key(&http, &sim, KEY, "a", "u").await.unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let value = resp.headers()["retry-after"].to_str().unwrap().to_owned();
        let at = httpdate::parse_http_date(&value).unwrap();
        assert!(at > std::time::SystemTime::now());
    }
    sim.set_faults(Faults {
        rate: Some(RateFault {
            status: 503,
            probability: 0.0,
        }),
        ..Faults::default()
    });
    assert_eq!(link(&http, &sim, "a", "u").await.0, StatusCode::OK);
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let sim = start_then_set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(link(&client(), &sim, "a", "u").await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn drop_closes_the_connection_without_a_response() {
    let sim = start_then_set_faults(Faults {
        drop: 2,
        ..Faults::default()
    })
    .await;
    let http = client();
    for _ in 0..2 {
        let err = link_with_key(&http, &sim, KEY, "a", "u")
            .await
            .expect_err("a dropped connection must not yield a response");
        assert!(err.status().is_none(), "{err:?}");
        assert!(!err.is_timeout(), "{err:?}");
        assert!(err.is_request() || err.is_connect(), "{err:?}");
    }
    // Drops are used up: back to normal.
    assert_eq!(link(&http, &sim, "a", "u").await.0, StatusCode::OK);

    let stats = sim.stats();
    assert_stats(&stats, json!({"requests": 3, "links": 1}));
    assert_eq!(stats.statuses.values().sum::<u64>(), 1);
    // A dropped request stops counting as in flight once its connection is gone.
    wait_for_in_flight(&sim, 0).await;
}

#[tokio::test]
async fn concurrent_identical_requests_create_duplicates() {
    let sim = start(SimConfig {
        pause: Duration::from_millis(20),
        ..keyed_config()
    })
    .await;
    let http = client();
    let requests = (0..50).map(|_| link(&http, &sim, "anon-race", "user-race"));
    let results = futures_util::future::join_all(requests).await;
    assert!(results.iter().all(|(status, _)| *status == StatusCode::OK));

    let stats = sim.stats();
    assert_stats(&stats, json!({"requests": 50}));
    assert!(stats.duplicates > 0, "{stats:?}");
    assert_eq!(stats.creates + stats.already_linked, 50);
    assert_eq!(stats.links, stats.creates);
    assert_eq!(stats.duplicates, stats.creates - 1);
    assert_eq!(sim.links().len() as u64, stats.creates);
}

#[tokio::test]
async fn zero_pause_works_sequentially() {
    let sim = start_default().await;
    sim.set_pause(Duration::ZERO);
    let http = client();
    assert_eq!(link(&http, &sim, "a", "u").await.1["outcome"], "created");
    assert_eq!(
        link(&http, &sim, "a", "u").await.1["outcome"],
        "already_linked"
    );
}

#[tokio::test]
async fn control_routes() {
    let sim = start_controlled().await;
    let http = client();
    let url = |path| control_url(&sim, path);

    for health in [url("healthz"), format!("{}/healthz", sim.base_url())] {
        assert_eq!(send(http.get(health)).await.status(), StatusCode::OK);
    }

    // PUT replaces faults; omitted fields take defaults.
    let resp = put_faults(&http, &sim, json!({"statuses": [504], "drop": 0})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let faults: Faults = resp.json().await.unwrap();
    assert_eq!(faults.statuses, [504]);
    assert_eq!(faults.retry_after_secs, 1);

    // Rejected: a success code, and an unknown field.
    for bad in [json!({"statuses": [200]}), json!({"statusez": [503]})] {
        let resp = put_faults(&http, &sim, bad.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    let got: Faults = get_json(&http, url("faults")).await;
    assert_eq!(got.statuses, [504]);

    assert_eq!(
        link(&http, &sim, "a", "u").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(link(&http, &sim, "a", "u").await.0, StatusCode::OK);

    let resp = send(http.delete(url("faults"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sim.faults(), Faults::default());

    let stats: Value = get_json(&http, url("stats")).await;
    assert_eq!(
        stats,
        json!({"requests": 2, "creates": 1, "duplicates": 0, "already_linked": 0,
               "rate_limited": 0, "overloaded": 0, "in_flight": 0, "max_in_flight_seen": 1,
               "links": 1, "statuses": {"200": 1, "504": 1}})
    );

    let links: Value = get_json(&http, url("links")).await;
    assert_eq!(links[0]["anonymousIdentifier"], "a");
    assert_eq!(links[0]["userIdentifier"], "u");
    assert_eq!(links[0]["type"], "copy_once");
    assert_eq!(links[0]["reason"], "conversion");
    assert!(links[0]["createdAt"].is_string());

    let resp = send(http.post(url("reset"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sim.stats(), SimStats::default());
}

#[tokio::test]
async fn control_routes_are_404_unless_asked_for() {
    let sim = start_default().await;
    let http = client();
    let url = |path| control_url(&sim, path);
    sim.set_faults(Faults {
        statuses: vec![503],
        ..Faults::default()
    });
    let requests = [
        http.get(url("stats")),
        http.get(url("links")),
        http.get(url("faults")),
        http.put(url("faults")).json(&json!({})),
        http.delete(url("faults")),
        http.put(url("key")).json(&json!({"key": "taken-over"})),
        http.post(url("reset")),
        http.get(url("healthz")),
    ];
    for req in requests {
        let resp = send(req).await;
        let what = format!("{} {}", resp.url().path(), resp.status());
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{what}");
    }
    // None of them acted: the fault and the key are still in place.
    assert_eq!(sim.faults().statuses, [503]);
    assert_eq!(link(&http, &sim, "a", "u").await.0, 503);
    assert_eq!(link(&http, &sim, "a", "u").await.0, StatusCode::OK);
    // The health route stays, for container healthchecks.
    let resp = send(http.get(format!("{}/healthz", sim.base_url()))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn reset_clears_store_counters_and_faults_but_keeps_key() {
    let sim = start_default().await;
    let http = client();
    link(&http, &sim, "a", "u").await;
    link(&http, &sim, "a", "u").await;
    sim.set_faults(Faults {
        statuses: vec![503],
        ..Faults::default()
    });
    sim.set_key("other");

    sim.reset();
    assert_eq!(sim.stats(), SimStats::default());
    assert!(sim.links().is_empty());
    assert_eq!(sim.faults(), Faults::default());

    // Key kept; no fault left; the link is gone so it is created again.
    assert_eq!(status_with_key(&http, &sim, KEY).await, 401);
    let resp = link_with_key(&http, &sim, "other", "a", "u").await.unwrap();
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "created");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let sim = start_default().await;
    let url = sim.endpoint_url();
    let http = client();
    assert_eq!(link(&http, &sim, "a", "u").await.0, StatusCode::OK);
    sim.shutdown().await;
    // A fresh client, so no pooled connection is reused.
    let err = post_link(&client(), url, Some(&bearer(KEY)), "a", "u")
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[test]
fn config_debug_hides_the_key() {
    let config = SimConfig {
        secret_key: "super-secret".to_owned(),
        ..SimConfig::default()
    };
    assert!(!format!("{config:?}").contains("super-secret"));
    assert_eq!(config.pause, Duration::from_millis(5));
    assert_eq!(SimConfig::default().secret_key, "sim-secret-key");
    assert!(
        !SimConfig::default().control_routes,
        "control routes are opt-in"
    );
}

#[test]
fn faults_serde_defaults() {
    let faults: Faults = serde_json::from_str("{}").unwrap();
    assert_eq!(faults, Faults::default());
    assert_eq!(faults.retry_after_secs, 1);
    assert!(
        Faults {
            drop_rate: 1.5,
            ..Faults::default()
        }
        .validate()
        .is_err()
    );
}

/// Polls the stats until `in_flight` is `n` (at most 5 s).
async fn wait_for_in_flight(sim: &MosSim, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats().in_flight != n {
        assert!(
            Instant::now() < deadline,
            "in_flight never reached {n}: {:?}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One link request's status, `Retry-After` (if any) and body.
async fn link_answer(
    http: &reqwest::Client,
    sim: &MosSim,
    anon: &str,
) -> (u16, Option<String>, Value) {
    let resp = link_with_key(http, sim, KEY, anon, "u").await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, resp.json().await.unwrap())
}

/// Sends `n` link requests at once; returns how many got 200 and how long
/// the burst took. Everything else must be the limiter's 429.
async fn rate_limited_burst(http: &reqwest::Client, sim: &MosSim, n: usize) -> (u64, Duration) {
    let started = Instant::now();
    let answers =
        (0..n).map(|i| async move { link_answer(http, sim, &format!("burst-{i}")).await });
    let answers = futures_util::future::join_all(answers).await;
    let elapsed = started.elapsed();
    let mut ok = 0;
    for (status, retry_after, body) in answers {
        match status {
            200 => ok += 1,
            429 => {
                let secs: u64 = retry_after.expect("Retry-After on a 429").parse().unwrap();
                assert!(secs >= 1, "Retry-After {secs}");
                assert_eq!(body, json!({"message": "Too Many Requests"}));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, elapsed)
}

/// What a token bucket can let through over `elapsed`: `burst + rate × t`,
/// plus one for rounding.
fn bucket_bound(burst: u32, per_second: f64, elapsed: Duration) -> u64 {
    (f64::from(burst) + per_second * elapsed.as_secs_f64()).floor() as u64 + 1
}

#[tokio::test]
async fn rate_limit_passes_a_burst_then_the_refill_rate() {
    let (per_second, burst) = (50.0, 10);
    let sim = start(SimConfig {
        faults: Faults {
            rate_limit: Some(RateLimit { per_second, burst }),
            ..Faults::default()
        },
        ..keyed_config()
    })
    .await;
    let http = client();
    const N: usize = 60;

    // A full bucket: `burst` pass at once (plus what trickles in meanwhile).
    let (first, elapsed) = rate_limited_burst(&http, &sim, N).await;
    assert!(first >= u64::from(burst), "{first} passed");
    assert!(
        first <= bucket_bound(burst, per_second, elapsed),
        "{first} in {elapsed:?}"
    );

    // A second idle: the bucket refills to `burst`, not to 50.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (second, elapsed) = rate_limited_burst(&http, &sim, N).await;
    assert!(second >= u64::from(burst), "{second} passed");
    assert!(
        second <= bucket_bound(burst, per_second, elapsed),
        "{second} in {elapsed:?}"
    );

    // The bucket is empty now: over the next second about `per_second` pass.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1);
    let workers = (0..4).map(|w| {
        let http = &http;
        let sim = &sim;
        async move {
            let (mut ok, mut sent) = (0u64, 0u64);
            while Instant::now() < deadline {
                let (status, _, _) = link_answer(http, sim, &format!("steady-{w}")).await;
                sent += 1;
                ok += u64::from(status == 200);
            }
            (ok, sent)
        }
    });
    let results = futures_util::future::join_all(workers).await;
    let elapsed = started.elapsed();
    let steady: u64 = results.iter().map(|(ok, _)| ok).sum();
    let steady_sent: u64 = results.iter().map(|(_, sent)| sent).sum();
    assert!(
        steady >= 25,
        "{steady} of {steady_sent} passed in {elapsed:?}"
    );
    assert!(
        steady <= bucket_bound(burst, per_second, elapsed),
        "{steady} of {steady_sent} passed in {elapsed:?}"
    );

    let stats = sim.stats();
    let passed = first + second + steady;
    let sent = 2 * N as u64 + steady_sent;
    assert_stats(
        &stats,
        json!({"requests": sent, "rate_limited": sent - passed, "overloaded": 0,
               "statuses": {"200": passed, "429": sent - passed}}),
    );
}

/// The limiter sits in front of the latency, and its `Retry-After` is the
/// wait for the next token rounded up to whole seconds.
#[tokio::test]
async fn rate_limit_answers_at_once_with_the_wait_for_the_next_token() {
    // One token every 5 s.
    let limit = Some(RateLimit {
        per_second: 0.2,
        burst: 1,
    });
    let sim = start_then_set_faults(Faults {
        rate_limit: limit,
        ..Faults::default()
    })
    .await;
    let http = client();
    assert_eq!(link_answer(&http, &sim, "a").await.0, 200);
    let (status, retry_after, body) = link_answer(&http, &sim, "a").await;
    assert_eq!(status, 429);
    // ceil(5 s - the few ms since the token was taken): 5.
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(body, json!({"message": "Too Many Requests"}));

    // Setting the faults again refills the bucket; the latency delays the
    // admitted request only.
    sim.set_faults(Faults {
        latency_ms: 1_000,
        rate_limit: limit,
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(link_answer(&http, &sim, "a").await.0, 200);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let started = Instant::now();
    assert_eq!(link_answer(&http, &sim, "a").await.0, 429);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "429 after {took:?}");

    assert_stats(
        &sim.stats(),
        json!({"requests": 4, "rate_limited": 2, "max_in_flight_seen": 1,
               "statuses": {"200": 2, "429": 2}}),
    );
}

#[tokio::test]
async fn capacity_slows_past_max_in_flight_and_refuses_past_hard_limit() {
    const BASE_MS: u64 = 500;
    const EXTRA_MS: u64 = 100;
    let sim = start(SimConfig {
        faults: Faults {
            latency_ms: BASE_MS,
            capacity: Some(Capacity {
                max_in_flight: 4,
                latency_per_extra_ms: EXTRA_MS as f64,
                hard_limit: 8,
                retry_after_secs: Some(2),
            }),
            ..Faults::default()
        },
        ..keyed_config()
    })
    .await;
    let http = client();

    let timed = |i: usize| {
        let (http, sim) = (&http, &sim);
        async move {
            let started = Instant::now();
            let (status, _) = link(http, sim, &format!("cap-{i}"), "u").await;
            (status, started.elapsed())
        }
    };
    let eight = futures_util::future::join_all((0..8).map(timed));
    let ninth = async {
        wait_for_in_flight(&sim, 8).await;
        let started = Instant::now();
        let answer = link_answer(&http, &sim, "cap-9").await;
        (answer, started.elapsed())
    };
    let (mut eight, ((status, retry_after, body), ninth_took)) = tokio::join!(eight, ninth);

    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("2"));
    assert_eq!(body, json!({"message": "Service Unavailable"}));
    assert!(
        ninth_took < Duration::from_millis(BASE_MS),
        "503 after {ninth_took:?}"
    );

    // Arrivals 1-4 wait BASE_MS, 5-8 one to four EXTRA_MS more.
    assert!(
        eight.iter().all(|(status, _)| *status == StatusCode::OK),
        "{eight:?}"
    );
    eight.sort_by_key(|(_, took)| *took);
    let ms = |d: Duration| d.as_millis() as u64;
    let (fastest, slowest) = (ms(eight[0].1), ms(eight[7].1));
    assert!(fastest >= BASE_MS, "{eight:?}");
    assert!(slowest >= BASE_MS + 4 * EXTRA_MS, "{eight:?}");
    assert!(slowest - fastest >= 2 * EXTRA_MS, "{eight:?}");
    let slowed = eight
        .iter()
        .filter(|(_, took)| ms(*took) >= BASE_MS + EXTRA_MS)
        .count();
    assert!(slowed >= 4, "{eight:?}");

    assert_stats(
        &sim.stats(),
        json!({"requests": 9, "overloaded": 1, "rate_limited": 0, "in_flight": 0,
               "max_in_flight_seen": 9, "creates": 8, "statuses": {"200": 8, "503": 1}}),
    );
    // A reset restarts the peak from what is in flight (nothing).
    sim.reset();
    assert_stats(
        &sim.stats(),
        json!({"max_in_flight_seen": 0, "overloaded": 0}),
    );
}

#[tokio::test]
async fn rate_limit_and_capacity_over_put_faults() {
    let sim = start_controlled().await;
    let http = client();
    let set = json!({
        "rate_limit": {"per_second": 50.0, "burst": 10},
        "capacity": {"max_in_flight": 4, "latency_per_extra_ms": 12.5, "hard_limit": 8,
                     "retry_after_secs": 2},
    });
    let resp = put_faults(&http, &sim, set.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed: Value = resp.json().await.unwrap();
    let got: Value = get_json(&http, control_url(&sim, "faults")).await;
    for faults in [&echoed, &got] {
        assert_eq!(faults["rate_limit"], set["rate_limit"]);
        assert_eq!(faults["capacity"], set["capacity"]);
    }
    let parsed: Faults = serde_json::from_value(got).unwrap();
    assert_eq!(
        (parsed.rate_limit, parsed.capacity),
        (
            Some(RateLimit {
                per_second: 50.0,
                burst: 10
            }),
            Some(Capacity {
                max_in_flight: 4,
                latency_per_extra_ms: 12.5,
                hard_limit: 8,
                retry_after_secs: Some(2),
            })
        )
    );
    assert_eq!(sim.faults(), parsed);

    // Refused, with the field named; the faults in place stay.
    for (bad, field) in [
        (
            json!({"rate_limit": {"per_second": 0, "burst": 10}}),
            "rate_limit.per_second",
        ),
        (
            json!({"rate_limit": {"per_second": -5, "burst": 10}}),
            "rate_limit.per_second",
        ),
        (
            json!({"rate_limit": {"per_second": 5, "burst": 0}}),
            "rate_limit.burst",
        ),
        (json!({"rate_limit": {"per_second": 5}}), "burst"),
        (
            json!({"rate_limit": {"per_second": 5, "burst": 1, "bursts": 2}}),
            "bursts",
        ),
        (
            json!({"capacity": {"max_in_flight": 4, "latency_per_extra_ms": 1, "hard_limit": 3}}),
            "capacity.hard_limit",
        ),
        (
            json!({"capacity": {"max_in_flight": 0, "latency_per_extra_ms": 1, "hard_limit": 3}}),
            "capacity.max_in_flight",
        ),
        (
            json!({"capacity": {"max_in_flight": 1, "latency_per_extra_ms": -1, "hard_limit": 3}}),
            "capacity.latency_per_extra_ms",
        ),
    ] {
        let resp = put_faults(&http, &sim, bad.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let text = resp.json::<Value>().await.unwrap()["message"].to_string();
        assert!(text.contains(field), "{bad}: {text}");
    }
    assert_eq!(sim.faults(), parsed);

    // Set over HTTP, in effect: one in flight at a time, 503 without
    // Retry-After when none is configured.
    let one = json!({"latency_ms": 300,
                     "capacity": {"max_in_flight": 1, "latency_per_extra_ms": 0, "hard_limit": 1}});
    let resp = put_faults(&http, &sim, one).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got: Faults = resp.json().await.unwrap();
    assert_eq!(got.capacity.unwrap().retry_after_secs, None);
    let (first, second) = tokio::join!(link(&http, &sim, "a", "u"), async {
        wait_for_in_flight(&sim, 1).await;
        link_answer(&http, &sim, "b").await
    });
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!((second.0, second.1), (503, None));
    assert_stats(
        &sim.stats(),
        json!({"overloaded": 1, "max_in_flight_seen": 2}),
    );
}

#[test]
fn rate_limit_and_capacity_validate_and_sanitize() {
    let limit = |per_second, burst| Faults {
        rate_limit: Some(RateLimit { per_second, burst }),
        ..Faults::default()
    };
    let capacity = |max_in_flight, latency_per_extra_ms, hard_limit| Faults {
        capacity: Some(Capacity {
            max_in_flight,
            latency_per_extra_ms,
            hard_limit,
            retry_after_secs: None,
        }),
        ..Faults::default()
    };
    assert_eq!(limit(50.0, 10).validate(), Ok(()));
    assert_eq!(capacity(4, 0.0, 4).validate(), Ok(()));
    for (faults, field) in [
        (limit(0.0, 10), "rate_limit.per_second"),
        (limit(-1.0, 10), "rate_limit.per_second"),
        (limit(f64::NAN, 10), "rate_limit.per_second"),
        (limit(f64::INFINITY, 10), "rate_limit.per_second"),
        (limit(5.0, 0), "rate_limit.burst"),
        (capacity(0, 1.0, 8), "capacity.max_in_flight"),
        (capacity(4, 1.0, 3), "capacity.hard_limit"),
        (capacity(4, -1.0, 8), "capacity.latency_per_extra_ms"),
        (capacity(4, f64::NAN, 8), "capacity.latency_per_extra_ms"),
    ] {
        let err = faults.validate().expect_err(field);
        assert!(err.contains(field), "{field}: {err}");
    }

    // The in-process path clamps instead.
    let clamped = |faults: Faults| faults.sanitized();
    assert_eq!(
        clamped(limit(-1.0, 0)).rate_limit,
        Some(RateLimit {
            per_second: 0.001,
            burst: 1
        })
    );
    assert_eq!(
        clamped(limit(f64::NAN, 3)).rate_limit.unwrap().per_second,
        0.001
    );
    assert_eq!(
        clamped(limit(f64::INFINITY, 3))
            .rate_limit
            .unwrap()
            .per_second,
        1e9
    );
    assert_eq!(
        clamped(capacity(0, f64::NAN, 0)).capacity,
        Some(Capacity {
            max_in_flight: 1,
            latency_per_extra_ms: 0.0,
            hard_limit: 1,
            retry_after_secs: None,
        })
    );
    assert_eq!(
        clamped(capacity(8, -3.0, 2)).capacity.unwrap().hard_limit,
        8
    );
    for faults in [
        limit(-1.0, 0),
        capacity(0, f64::NAN, 0),
        capacity(8, f64::INFINITY, 2),
    ] {
        let faults = clamped(faults);
        assert_eq!(faults.validate(), Ok(()), "{faults:?}");
    }
}
