//! The per-message decision: `handle(message) -> Outcome`. No broker here
//! (its unit tests below run it against an in-process mos-sim); the consumer
//! turns the outcome into a settlement, and `ops::record` logs and counts it.

use std::sync::Arc;

use crate::config::EventConfig;
use crate::domain::{
    EventMeta, LinkResult, Outcome, ParsedEvent, Rejection, RetryLadder, SkipReason, parse_event,
};
use crate::link::{Circuit, Linker, policy};
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
    events: EventConfig,
    ladder: RetryLadder,
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
    pub fn new(
        events: EventConfig,
        ladder: RetryLadder,
        linker: Arc<Linker>,
        circuit: Arc<Circuit>,
    ) -> Self {
        Self {
            events,
            ladder,
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
            &self.events.anonymous_id_pointers,
            &self.events.user_id_pointers,
            &self.events.blocklist,
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
                    Outcome::Linked(LinkResult::AlreadyLinked)
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
                        Err(error) => policy::after_failure(
                            error,
                            self.circuit.is_open(),
                            &self.ladder,
                            message.attempts,
                        ),
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
}

#[cfg(test)]
mod tests;
