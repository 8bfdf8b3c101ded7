//! The handler's decisions, without a broker: a real `Handler` with a real
//! link client against an in-process mos-sim (the simulator of the endpoint).

use std::time::Duration;

use mos_sim::{Faults, MosSim, SimConfig};

use super::*;
use crate::config::Config;
use crate::domain::DeadLetterReason;
use crate::link::{Flow, LinkClient, LinkedCache};
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::ops::telemetry::LogCapture;

const KEY: &str = "handler-test-key";

struct Fixture {
    sim: MosSim,
    handler: Handler,
    circuit: Arc<Circuit>,
}

/// A handler wired as the application wires it; a two-step retry ladder.
async fn fixture(faults: Faults) -> Fixture {
    let sim = MosSim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            secret_key: KEY.into(),
            faults,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let config = Config::from_vars([
        ("LINKER_MOS_ENDPOINT_URL".to_owned(), sim.endpoint_url()),
        ("LINKER_MOS_SECRET_KEY".to_owned(), KEY.to_owned()),
        ("LINKER_RETRY_DELAYS".to_owned(), "1s,2s".to_owned()),
        // No in-process retries: each test sees exactly the sim's answer.
        ("LINKER_IMMEDIATE_RETRIES".to_owned(), "0".to_owned()),
    ])
    .unwrap();
    let metrics = Arc::new(Metrics::new(&config.broker.routing_keys));
    let circuit = Arc::new(Circuit::new(
        config.retry.circuit_failure_threshold,
        metrics.clone(),
        Arc::new(Readiness::new(metrics.clone())),
    ));
    let linker = Arc::new(Linker::new(
        LinkClient::new(&config.link, metrics.clone()).unwrap(),
        Flow::new(config.link.concurrency.get(), None, metrics.clone()),
        LinkedCache::new(config.link.linked_cache_size, config.link.linked_cache_ttl),
        circuit.clone(),
        metrics,
        config.retry.immediate_retries,
    ));
    let handler = Handler::new(config.events, config.retry, linker, circuit.clone());
    Fixture {
        sim,
        handler,
        circuit,
    }
}

fn pair(anonymous: &str, user: &str) -> Vec<u8> {
    serde_json::json!({"eventId": "e-1", "anonymousId": anonymous, "userId": user})
        .to_string()
        .into_bytes()
}

impl Fixture {
    async fn handle(&self, body: &[u8], attempts: u32) -> Outcome {
        self.handler
            .handle(Inbound {
                body,
                event_type: "user.logged_in",
                message_id: None,
                attempts,
                hand_backs: 0,
            })
            .await
            .outcome
    }
}

#[tokio::test]
async fn bad_input_is_decided_without_a_call() {
    let f = fixture(Faults::default()).await;
    assert!(matches!(
        f.handle(b"not json", 0).await,
        Outcome::DeadLetter {
            reason: DeadLetterReason::Malformed,
            ..
        }
    ));
    assert!(matches!(
        f.handle(br#"{"anonymousId":"a-1"}"#, 0).await,
        Outcome::DeadLetter {
            reason: DeadLetterReason::MissingUserIdentifier,
            ..
        }
    ));
    assert_eq!(
        f.handle(&pair("undefined", "u-1"), 0).await,
        Outcome::Skipped(SkipReason::BlockedIdentifier)
    );
    assert_eq!(
        f.handle(&pair("same", "same"), 0).await,
        Outcome::Skipped(SkipReason::SameIdentifier)
    );
    assert_eq!(f.sim.stats().requests, 0);
}

#[tokio::test]
async fn a_pair_is_linked_once_then_known() {
    let f = fixture(Faults::default()).await;
    assert_eq!(
        f.handle(&pair("a-1", "u-1"), 0).await,
        Outcome::Linked(LinkResult::Linked)
    );
    // The linked cache answers: no second request.
    assert_eq!(
        f.handle(&pair("a-1", "u-1"), 0).await,
        Outcome::Linked(LinkResult::AlreadyLinked)
    );
    let stats = f.sim.stats();
    assert_eq!((stats.requests, stats.creates), (1, 1));
}

#[tokio::test]
async fn a_transient_failure_takes_the_next_step_until_the_ladder_ends() {
    let f = fixture(Faults {
        statuses: vec![503, 503],
        ..Faults::default()
    })
    .await;
    match f.handle(&pair("a-2", "u-2"), 1).await {
        Outcome::Retry { step, error } => {
            assert_eq!((step.attempt, step.delay), (2, Duration::from_secs(2)));
            assert!(error.contains("503"), "{error}");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(matches!(
        f.handle(&pair("a-3", "u-3"), 2).await,
        Outcome::DeadLetter {
            reason: DeadLetterReason::RetriesExhausted,
            ..
        }
    ));
}

#[tokio::test]
async fn a_rejection_is_dead_lettered() {
    let f = fixture(Faults {
        statuses: vec![422],
        ..Faults::default()
    })
    .await;
    assert!(matches!(
        f.handle(&pair("a-4", "u-4"), 0).await,
        Outcome::DeadLetter {
            reason: DeadLetterReason::Rejected,
            ..
        }
    ));
    assert!(!f.circuit.is_open(), "a 4xx shows the target up");
}

#[tokio::test]
async fn a_refused_key_hands_back_and_opens_the_circuit() {
    let f = fixture(Faults::default()).await;
    f.sim.set_key("another-key");
    assert!(matches!(
        f.handle(&pair("a-5", "u-5"), 0).await,
        Outcome::HandBack { .. }
    ));
    assert!(f.circuit.is_open());
    // While open, nothing is called: the next message is handed back as it is.
    let before = f.sim.stats().requests;
    assert!(matches!(
        f.handle(&pair("a-6", "u-6"), 0).await,
        Outcome::HandBack { .. }
    ));
    assert_eq!(f.sim.stats().requests, before);
}

#[tokio::test]
async fn a_flood_of_blocklisted_events_logs_one_escaped_warning() {
    let f = fixture(Faults::default()).await;
    let logs = LogCapture::default();
    let body = pair("undefined", "u-1");
    tracing::subscriber::with_default(logs.subscriber(tracing::Level::WARN), || {
        for _ in 0..50 {
            let prepared = f.handler.prepare(Inbound {
                body: &body,
                event_type: "user.logged_in\r\nforged",
                message_id: Some("m-1\n2030-01-01T00:00:00Z  WARN forged line"),
                attempts: 0,
                hand_backs: 0,
            });
            assert!(matches!(
                prepared.next,
                Next::Decided(Outcome::Skipped(SkipReason::BlockedIdentifier))
            ));
        }
    });
    let text = logs.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one warning for 50 events: {text}");
    assert!(lines[0].contains("blocklist"), "{text}");
    assert!(
        lines[0].contains(r"event_id=m-1\n2030-01-01T00:00:00Z  WARN forged line"),
        "{text}"
    );
    assert!(
        lines[0].contains(r"event_type=user.logged_in\r\nforged"),
        "{text}"
    );
    assert!(lines[0].contains("suppressed=0"), "{text}");
}
