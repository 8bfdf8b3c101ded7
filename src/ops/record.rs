//! A settled message is one event: its log line and its metrics are written
//! here, together, and nowhere else.

use std::time::{Instant, SystemTime};

use super::metrics::Metrics;
use super::telemetry::{untrusted, untrusted_opt};
use crate::domain::Outcome;

/// What is known about a message once it is settled.
pub struct Settled<'a> {
    pub outcome: &'a Outcome,
    /// The original routing key (a metric label only if it is a configured key).
    pub event_type: &'a str,
    pub event_id: Option<&'a str>,
    pub occurred_at: Option<SystemTime>,
    /// When the delivery arrived.
    pub received: Instant,
}

pub fn record(metrics: &Metrics, settled: &Settled<'_>) {
    let Settled {
        outcome,
        event_type,
        event_id,
        ..
    } = *settled;
    let Some(label) = outcome.label() else {
        // Not an outcome: the message comes again, from the queue or its partition.
        match outcome {
            Outcome::Route { partition } => {
                metrics.routed.inc();
                tracing::trace!(
                    event_id = untrusted_opt(event_id),
                    event_type = %untrusted(event_type),
                    partition,
                    "routed"
                );
            }
            _ => {
                metrics.handed_back.inc();
            }
        }
        return;
    };
    metrics.count_message(event_type, label);
    metrics
        .message_duration
        .observe(settled.received.elapsed().as_secs_f64());
    if let Some(at) = settled.occurred_at
        && let Ok(age) = SystemTime::now().duration_since(at)
    {
        metrics.event_age.observe(age.as_secs_f64());
    }
    // From here on the event type is its metric label: a configured routing key or `other`.
    let event_type = metrics.event_type_label(event_type);
    let event_id = untrusted_opt(event_id);
    match outcome {
        Outcome::Skipped(reason) => {
            metrics.count_skip(*reason);
            tracing::debug!(event_id, event_type, reason = reason.as_str(), "skipped");
        }
        Outcome::DeadLetter { reason, error } => {
            metrics.count_dead_letter(*reason);
            tracing::warn!(
                event_id,
                event_type,
                reason = reason.as_str(),
                error = %untrusted(error),
                "dead-lettered"
            );
        }
        Outcome::Retry { error, step } => {
            metrics.retries_delayed.inc();
            tracing::info!(
                event_id,
                event_type,
                attempt = step.attempt,
                delay = %super::telemetry::duration(step.delay),
                error = %untrusted(error),
                "link failed; retrying later"
            );
        }
        Outcome::Linked(result) => {
            tracing::debug!(event_id, event_type, ?result, "linked");
        }
        Outcome::HandBack { .. } | Outcome::Route { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeadLetterReason, LinkResult, OutcomeLabel};

    #[test]
    fn one_record_counts_the_outcome_and_its_reason() {
        let metrics = Metrics::new(&["user.logged_in".into()]);
        let settle = |outcome: &Outcome, event_type: &str| {
            record(
                &metrics,
                &Settled {
                    outcome,
                    event_type,
                    event_id: None,
                    occurred_at: None,
                    received: Instant::now(),
                },
            )
        };
        settle(&Outcome::Linked(LinkResult::Linked), "user.logged_in");
        settle(
            &Outcome::DeadLetter {
                reason: DeadLetterReason::Malformed,
                error: "not JSON".into(),
            },
            "something.else",
        );
        settle(
            &Outcome::HandBack {
                error: "open".into(),
            },
            "user.logged_in",
        );
        assert_eq!(metrics.outcome_total(OutcomeLabel::Linked), 1);
        assert_eq!(metrics.outcome_total(OutcomeLabel::DeadLettered), 1);
        assert_eq!(metrics.settled_total(), 2);
        assert_eq!(metrics.handed_back.get(), 1);
        let text = metrics.encode();
        assert!(text.contains(r#"identity_linker_dead_lettered_total{reason="malformed"} 1"#));
        assert!(text.contains(r#"event_type="other",outcome="dead_lettered"} 1"#));
    }

    #[test]
    fn producer_strings_cannot_forge_a_log_line() {
        let metrics = Metrics::new(&["user.logged_in".into()]);
        let logs = crate::ops::telemetry::LogCapture::default();
        tracing::subscriber::with_default(logs.subscriber(tracing::Level::TRACE), || {
            record(
                &metrics,
                &Settled {
                    outcome: &Outcome::DeadLetter {
                        reason: DeadLetterReason::Rejected,
                        error: "HTTP 400: bad\n2030-01-01T00:00:00Z  INFO linked".into(),
                    },
                    event_type: "user.logged_in",
                    event_id: Some("e-1\r\n\u{1b}[2Jforged"),
                    occurred_at: None,
                    received: Instant::now(),
                },
            );
        });
        let text = logs.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r"event_id=e-1\r\n\u{1b}[2Jforged"), "{text}");
        assert!(
            text.contains(r"error=HTTP 400: bad\n2030-01-01T00:00:00Z  INFO linked"),
            "{text}"
        );
    }
}
