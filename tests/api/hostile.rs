//! Hostile input and hostile producers: one refused identifier, big bodies,
//! forged `x-linker-*` headers and forged replay routes can neither stop,
//! bloat nor steer the worker (README "Hostile input").

use std::process::Stdio;
use std::time::{Duration, Instant};

use identity_link_worker::broker::{dlq, headers};
use lapin::BasicProperties;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use mos_sim::{Faults, RefuseFault};
use testkit::process::{signal, spawn_logged, vm_hwm_kib, wait_exit};
use testkit::worker::Private;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_identity-link-worker");

fn forged(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert(ShortString::from(*name), value.clone());
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(uuid::Uuid::new_v4().to_string()))
        .with_headers(table)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// A WAF in front of the endpoint answers 403 to one visitor's identifier.
/// That is one request refused, not the key: the message is dead-lettered
/// `rejected` with the status, and every other visitor is linked meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_identifier_does_not_stop_the_other_visitors() {
    let waf = Faults {
        refuse: Some(RefuseFault {
            contains: "<script".into(),
            status: 403,
        }),
        ..Faults::default()
    };
    let app = TestApp::spawn_with(faulty(waf), &[]).await;
    // The refused one first, so that on a paused worker nobody behind it goes.
    app.publish_pair("user.logged_in", "<script>alert(1)</script>", "u-waf")
        .await;
    let started = Instant::now();
    app.publish_pairs("user.logged_in", "waf-other", 200).await;
    wait_for(
        "the 200 other visitors to be linked",
        Duration::from_secs(30),
        || async { app.sim.stats().links == 200 },
    )
    .await;
    eprintln!(
        "200 other visitors linked {:.2} s after publishing began, one refused 403",
        started.elapsed().as_secs_f64()
    );
    app.wait_settled(201).await;
    assert_eq!(app.outcome("dead_lettered"), 1);
    let stats = app.sim.stats();
    assert_eq!(stats.status(403), 1, "the refused request is made once");
    assert_eq!(
        stats.status(400),
        1,
        "one request without identifiers proved the key"
    );
    assert_eq!(app.worker.circuit_open(), 0);
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(reason(&dead[0]).as_deref(), Some("rejected"));
    let error = header(&dead[0], headers::ERROR).unwrap_or_default();
    assert!(error.starts_with("HTTP 403"), "{error}");
    assert!(error.contains("this request only"), "{error}");
    app.finish().await;
}

/// A producer's `x-linker-attempts: 99` must not skip the retry ladder, and
/// its `x-linker-original-exchange` must not become the recorded origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_set_by_a_producer_are_not_the_workers() {
    // Four 503s: the first call and its three in-process retries.
    let mut app = TestApp::spawn_with(faulty(statuses(&[503, 503, 503, 503])), &[]).await;
    let body = serde_json::json!({"anonymousId": "a-forged", "userId": "u-forged"}).to_string();
    let forged_headers = [
        (headers::ATTEMPTS, headers::int(99)),
        (headers::HAND_BACKS, headers::int(99)),
        (headers::ORIGINAL_EXCHANGE, text("somewhere-else")),
        (headers::ORIGINAL_ROUTING_KEY, text("user.logged_in")),
    ];
    app.publish_raw("user.logged_in", body.as_bytes(), forged(&forged_headers))
        .await;
    app.wait_settled(2).await;
    assert_eq!(app.outcome("retried"), 1, "the ladder starts at step 1");
    assert_eq!(app.outcome("linked"), 1);
    assert_eq!(app.outcome("dead_lettered"), 0);

    // A rejected one: its dead letter records where it really came from.
    app.sim.set_faults(statuses(&[422]));
    let body = serde_json::json!({"anonymousId": "a-forged-2", "userId": "u-forged-2"}).to_string();
    app.publish_raw("user.logged_in", body.as_bytes(), forged(&forged_headers))
        .await;
    app.settle_and_stop(3).await;
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(reason(&dead[0]).as_deref(), Some("rejected"));
    assert_eq!(
        header(&dead[0], headers::ORIGINAL_EXCHANGE).as_deref(),
        Some(app.exchange())
    );
    assert_eq!(header_u32(&dead[0], headers::ATTEMPTS), Some(0));
    assert_eq!(header_u32(&dead[0], headers::HAND_BACKS), None);
    app.finish().await;
}

/// A dead letter the broker moved itself keeps whatever its producer set:
/// a replay publishes only to `LINKER_EXCHANGE`, only with a bound routing
/// key, and says what it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_publishes_only_to_the_workers_exchange() {
    let app = TestApp::spawn().await;
    let channel = app.connection.create_channel().await.unwrap();
    let elsewhere = format!("{}.elsewhere", app.topology.queue);
    channel
        .exchange_declare(
            elsewhere.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            elsewhere.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            elsewhere.as_str().into(),
            elsewhere.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dead_letter = |anonymous: &str, routing_key: &str| {
        let body = serde_json::json!({"anonymousId": anonymous, "userId": "u-replay"}).to_string();
        let properties = forged(&[
            (headers::REASON, text("rejected")),
            (headers::ORIGINAL_EXCHANGE, text(&elsewhere)),
            (headers::ORIGINAL_ROUTING_KEY, text(routing_key)),
        ]);
        (body, properties)
    };
    for (anonymous, routing_key) in [
        ("a-replay-1", "user.logged_in"),
        ("a-replay-2", "admin.reset"),
    ] {
        let (body, properties) = dead_letter(anonymous, routing_key);
        app.publisher
            .publish(
                &app.topology.dead_letter,
                routing_key,
                body.as_bytes(),
                properties,
            )
            .await
            .unwrap();
    }
    let report = dlq::replay(&app.connection, &app.topology, 10, None)
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    assert_eq!(report.left, 1);
    assert_eq!(report.refused.len(), 1, "{:?}", report.refused);
    assert!(
        report.refused[0].contains("admin.reset"),
        "{:?}",
        report.refused
    );
    assert_eq!(report.rerouted.len(), 1, "{:?}", report.rerouted);
    assert_eq!(
        app.depth(&elsewhere).await,
        0,
        "nothing reached the recorded exchange"
    );
    app.wait_settled(1).await;
    assert_eq!(app.sim.stats().links, 1, "replayed into LINKER_EXCHANGE");
    assert_eq!(
        app.depth(&app.topology.dead_letter).await,
        1,
        "the refused one stays"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_dead_lettered_unparsed() {
    let mut app = TestApp::spawn_with(sim_config(), &[("LINKER_MAX_BODY_BYTES", "4096")]).await;
    let big =
        serde_json::json!({"anonymousId": "a-big", "userId": "u-big", "pad": "p".repeat(5000)})
            .to_string();
    app.publish("user.logged_in", big.as_bytes()).await;
    app.publish_pair("user.logged_in", "a-small", "u-small")
        .await;
    app.wait_settled(2).await;
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"identity_linker_dead_lettered_total{reason="body_too_large"} 1"#),
        "{metrics}"
    );
    app.settle_and_stop(2).await;
    assert_eq!(app.sim.stats().links, 1, "the small one only");
    let dead = app.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(reason(&dead[0]).as_deref(), Some("body_too_large"));
    assert_eq!(dead[0].data, big.as_bytes(), "the body is kept");
    let error = header(&dead[0], headers::ERROR).unwrap_or_default();
    assert!(error.contains("LINKER_MAX_BODY_BYTES"), "{error}");
    app.finish().await;
}

/// Four 12 MiB bodies, the real binary with the default configuration: its
/// peak RSS stays within the base Deployment's 128 Mi limit (it went to
/// 436 MiB when bodies were parsed whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_do_not_bloat_the_worker() {
    const LIMIT_MIB: u64 = 128;
    let sim = start_sim(sim_config()).await;
    let vars = base_vars(&sim);
    let private = Private::from_vars(vars.clone());
    let connection = broker().await;
    let padding = "p".repeat(12 << 20);
    let huge = (0..4).map(|i| {
        serde_json::json!({"anonymousId": format!("a-huge-{i}"), "userId": "u-huge", "pad": padding})
            .to_string()
            .into_bytes()
    });
    queue_before_start(&connection, &private, huge).await;
    drop(padding);
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_logged(
        testkit::process::command(BIN, &vars)
            .arg("run")
            .stdin(Stdio::null()),
        dir.path(),
        "worker",
    );
    let pid = child.id();
    let mut peak_kib = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
        if depth(&connection, &private.topology.dead_letter).await == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the four bodies were not dead-lettered in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
    signal(pid, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15), "the worker").await;
    assert_eq!(status.code(), Some(0));
    let left = testkit::broker::backlog(&connection, private.event_queues()).await;
    assert_eq!(left, 0, "every body settled");
    let dead = testkit::broker::take_all(&connection, &private.topology.dead_letter).await;
    assert!(
        dead.iter()
            .all(|d| reason(d).as_deref() == Some("body_too_large")),
        "all four dead-lettered body_too_large"
    );
    eprintln!("peak RSS with four 12 MiB bodies: {} MiB", peak_kib / 1024);
    assert!(
        peak_kib / 1024 < LIMIT_MIB,
        "peak RSS {} MiB, over the Deployment's {LIMIT_MIB} Mi",
        peak_kib / 1024
    );
    assert_eq!(sim.stats().requests, 0, "no call for an unparsed body");
    private.delete(&connection).await.unwrap();
}

/// A hand-back costs no retry step, so it has a bound of its own: a message
/// that has been handed back `LINKER_MAX_HAND_BACKS` times is dead-lettered
/// the next time, and cannot hold its queue however often the circuit opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_handed_back_too_often_is_dead_lettered() {
    let refusing = mos_sim::SimConfig {
        secret_key: "another-key".into(),
        ..mos_sim::SimConfig::default()
    };
    let app = TestApp::spawn_with(refusing, &[("LINKER_MAX_HAND_BACKS", "2")]).await;
    let body = serde_json::json!({"anonymousId": "a-held", "userId": "u-held"}).to_string();
    // As the worker's own hand-back would have left it: through the default
    // exchange (the producers' exchange would have the header stripped).
    let properties = forged(&[
        (headers::HAND_BACKS, headers::int(2)),
        (headers::ORIGINAL_EXCHANGE, text(app.exchange())),
        (headers::ORIGINAL_ROUTING_KEY, text("user.logged_in")),
    ]);
    app.publisher
        .publish("", &app.topology.queue, body.as_bytes(), properties)
        .await
        .unwrap();
    wait_for("the dead letter", Duration::from_secs(15), || async {
        app.depth(&app.topology.dead_letter).await == 1
    })
    .await;
    assert_eq!(app.worker.circuit_open(), 1, "the key is refused for all");
    let dead = app.take_dead_letters().await;
    assert_eq!(reason(&dead[0]).as_deref(), Some("hand_backs_exhausted"));
    let error = header(&dead[0], headers::ERROR).unwrap_or_default();
    assert!(error.contains("handed back 2 times"), "{error}");
    app.finish().await;
}

/// The same with a content-dependent 5xx and a circuit that trips on it: the
/// probe proves the endpoint (not the pair), so the circuit closes again, the
/// other visitors are linked, and the bad message ends in the dead-letter
/// queue (its ladder or its hand-backs used up), never holding the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_dependent_5xx_does_not_stop_the_other_visitors() {
    let faults = Faults {
        refuse: Some(RefuseFault {
            contains: "poison-visitor".into(),
            status: 503,
        }),
        ..Faults::default()
    };
    let app = TestApp::spawn_with(
        faulty(faults),
        &[
            ("LINKER_CIRCUIT_FAILURE_THRESHOLD", "3"),
            ("LINKER_IMMEDIATE_RETRIES", "3"),
        ],
    )
    .await;
    app.publish_pair("user.logged_in", "poison-visitor", "u-poison")
        .await;
    // Its first delivery alone trips the circuit (4 failed calls, threshold 3).
    app.wait_circuit_open(Duration::from_secs(10)).await;
    let started = Instant::now();
    app.publish_pairs("user.logged_in", "poison-other", 200)
        .await;
    wait_for(
        "the 200 other visitors to be linked",
        Duration::from_secs(30),
        || async { app.sim.stats().links == 200 },
    )
    .await;
    eprintln!(
        "200 other visitors linked {:.2} s after publishing began, one answered 503 every time",
        started.elapsed().as_secs_f64()
    );
    wait_for(
        "the poison message's dead letter",
        Duration::from_secs(30),
        || async { app.depth(&app.topology.dead_letter).await == 1 },
    )
    .await;
    let dead = app.take_dead_letters().await;
    let why = reason(&dead[0]).unwrap_or_default();
    assert!(
        why == "retries_exhausted" || why == "hand_backs_exhausted",
        "{why}"
    );
    eprintln!("the poison message was dead-lettered {why}");
    app.finish().await;
}
