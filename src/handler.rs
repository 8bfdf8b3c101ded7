//! The per-message decision: `handle(message) -> Outcome`. No broker here, so
//! tests call it directly; the consumer loop only acks, publishes and counts.

use std::sync::Arc;

use crate::config::Config;
use crate::domain::{
    Blocklist, DeadLetterReason, EventMeta, JsonPointers, Outcome, ParsedEvent, Rejection,
    SkipReason, parse_event,
};
use crate::link::{CallError, Linker};
use crate::ops::circuit::Circuit;
use crate::ops::telemetry::ident;

/// What the handler needs to know about one delivery.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    /// The event type: the original routing key.
    pub event_type: &'a str,
    pub message_id: Option<&'a str>,
    /// Delayed attempts so far (`x-linker-attempts`).
    pub attempts: u32,
}

pub struct Handler {
    anonymous_pointers: JsonPointers,
    user_pointers: JsonPointers,
    blocklist: Blocklist,
    /// Number of delayed retry steps (the ladder's length).
    retry_steps: u32,
    linker: Arc<Linker>,
    circuit: Arc<Circuit>,
}

/// The outcome plus what parsing learned, for logs and metrics.
pub struct Handled {
    pub outcome: Outcome,
    pub event_id: Option<String>,
    pub occurred_at: Option<std::time::SystemTime>,
}

impl Handler {
    pub fn new(config: &Config, linker: Arc<Linker>, circuit: Arc<Circuit>) -> Self {
        Self {
            anonymous_pointers: config.anonymous_id_pointers.clone(),
            user_pointers: config.user_id_pointers.clone(),
            blocklist: config.blocklist.clone(),
            retry_steps: u32::try_from(config.retry_delays.len()).unwrap_or(u32::MAX),
            linker,
            circuit,
        }
    }

    pub async fn handle(&self, message: Inbound<'_>) -> Handled {
        let meta = EventMeta {
            message_id: message.message_id.map(str::to_owned),
        };
        let ParsedEvent {
            event_id,
            occurred_at,
            result,
        } = parse_event(
            message.body,
            &meta,
            &self.anonymous_pointers,
            &self.user_pointers,
            &self.blocklist,
        );
        let outcome = match result {
            Err(Rejection::Skip(reason)) => {
                if reason == SkipReason::BlockedIdentifier {
                    tracing::warn!(
                        event_id = event_id.as_deref(),
                        event_type = message.event_type,
                        "skipped an event whose identifier is on the blocklist; the producer sends a placeholder as an identifier"
                    );
                }
                Outcome::Skipped(reason)
            }
            Err(Rejection::DeadLetter { reason, error }) => Outcome::DeadLetter { reason, error },
            Ok(event) => {
                if self.linker.known_linked(&event) {
                    Outcome::Linked(crate::domain::LinkResult::AlreadyLinked)
                } else if self.circuit.is_open() {
                    Outcome::HandBack {
                        error: "circuit open".to_owned(),
                    }
                } else {
                    let request_id = event_id
                        .clone()
                        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                    tracing::debug!(
                        event_id = %request_id,
                        anonymous = %ident(event.anonymous.as_str()),
                        user = %ident(event.user.as_str()),
                        "linking"
                    );
                    match self.linker.link(&event, &request_id).await {
                        Ok(result) => Outcome::Linked(result),
                        Err(error) => self.on_failure(error, message.attempts),
                    }
                }
            }
        };
        Handled {
            outcome,
            event_id,
            occurred_at,
        }
    }

    fn on_failure(&self, error: CallError, attempts: u32) -> Outcome {
        match error {
            CallError::Permanent { message, .. } => Outcome::DeadLetter {
                reason: DeadLetterReason::Rejected,
                error: message,
            },
            CallError::Unauthorized { message, .. } => Outcome::HandBack { error: message },
            CallError::Transient { message, .. } => {
                if self.circuit.is_open() {
                    // An outage must not burn the message's retry ladder.
                    Outcome::HandBack { error: message }
                } else if attempts >= self.retry_steps {
                    Outcome::DeadLetter {
                        reason: DeadLetterReason::RetriesExhausted,
                        error: message,
                    }
                } else {
                    Outcome::Retry { error: message }
                }
            }
        }
    }
}
