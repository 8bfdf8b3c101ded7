//! The per-message decision: `prepare` (parse, and decide what needs no
//! call) then `finish` (route to the visitor's partition, or link). No broker
//! here (its unit tests run it against an in-process mos-sim); the consumer
//! turns the outcome into a settlement, and `ops::record` logs and counts it.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{EventConfig, RetryConfig};
use crate::domain::{
    AnonymousId, DeadLetterReason, EventMeta, LinkEvent, LinkResult, Outcome, ParsedEvent,
    Rejection, RetryLadder, SkipReason, parse_event, partition_of,
};
use crate::link::{Circuit, Linker, policy};
use crate::ops::telemetry::{RateLimit, ident, untrusted, untrusted_opt};

/// At most one blocklist warning per this long: a producer that sends a
/// placeholder on every event must not turn each one into a log line (the
/// skipped counter still counts every one).
const BLOCKED_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What the handler needs to know about one delivery.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    /// The event type: the original routing key.
    pub event_type: &'a str,
    pub message_id: Option<&'a str>,
    /// Delayed attempts so far (`x-linker-attempts`).
    pub attempts: u32,
    /// Times handed back so far (`x-linker-hand-backs`).
    pub hand_backs: u32,
}

/// What a consumer does with the events that need a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Consuming the work queue in partitioned mode: route them to their
    /// visitor's partition (no call here).
    Route(NonZeroU16),
    /// Consuming a partition, or the work queue in direct mode: link them.
    Link,
}

pub struct Handler {
    events: EventConfig,
    ladder: RetryLadder,
    max_hand_backs: u32,
    linker: Arc<Linker>,
    circuit: Arc<Circuit>,
    blocked_warning: RateLimit,
}

/// A parsed delivery: decided already, or a pair still to link.
pub struct Prepared {
    pub event_id: Option<String>,
    pub occurred_at: Option<SystemTime>,
    pub attempts: u32,
    pub hand_backs: u32,
    pub next: Next,
}

pub enum Next {
    Decided(Outcome),
    Link(LinkEvent),
}

/// The outcome plus what parsing learned, for logs and metrics.
pub struct Handled {
    pub outcome: Outcome,
    pub event_id: Option<String>,
    pub occurred_at: Option<SystemTime>,
}

impl Prepared {
    /// The visitor whose events must keep their order, if the event needs a call.
    pub fn visitor(&self) -> Option<&AnonymousId> {
        match &self.next {
            Next::Link(event) => Some(&event.anonymous),
            Next::Decided(_) => None,
        }
    }
}

impl Handler {
    pub fn new(
        events: EventConfig,
        retry: RetryConfig,
        linker: Arc<Linker>,
        circuit: Arc<Circuit>,
    ) -> Self {
        Self {
            events,
            ladder: retry.ladder,
            max_hand_backs: retry.max_hand_backs.get(),
            linker,
            circuit,
            blocked_warning: RateLimit::new(BLOCKED_WARNING_INTERVAL),
        }
    }

    /// Parses and decides what needs no call. Synchronous, so the consumer
    /// can do it in delivery order and keep each visitor's events in order.
    pub fn prepare(&self, message: Inbound<'_>) -> Prepared {
        let meta = EventMeta {
            message_id: message.message_id.map(str::to_owned),
        };
        // Before any parsing: a parsed body costs many times its size.
        if message.body.len() > self.events.max_body_bytes {
            return Prepared {
                event_id: meta.message_id.filter(|id| !id.is_empty()),
                occurred_at: None,
                attempts: message.attempts,
                hand_backs: message.hand_backs,
                next: Next::Decided(Outcome::DeadLetter {
                    reason: DeadLetterReason::BodyTooLarge,
                    error: format!(
                        "body is {} bytes, over LINKER_MAX_BODY_BYTES ({}); not parsed",
                        message.body.len(),
                        self.events.max_body_bytes
                    ),
                }),
            };
        }
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
        let next = match result {
            Err(Rejection::Skip(reason)) => {
                if reason == SkipReason::BlockedIdentifier
                    && let Some(suppressed) = self.blocked_warning.allow()
                {
                    tracing::warn!(
                        event_id = untrusted_opt(event_id.as_deref()),
                        event_type = %untrusted(message.event_type),
                        suppressed,
                        "skipped an event whose identifier is on the blocklist; the producer sends a placeholder as an identifier \
                         (one such line per 10 s at most; `suppressed`: those not logged since the last)"
                    );
                }
                Next::Decided(Outcome::Skipped(reason))
            }
            Err(Rejection::DeadLetter { reason, error }) => {
                Next::Decided(Outcome::DeadLetter { reason, error })
            }
            Ok(event) => Next::Link(event),
        };
        Prepared {
            event_id,
            occurred_at,
            attempts: message.attempts,
            hand_backs: message.hand_backs,
            next,
        }
    }

    /// Finishes a prepared delivery in this consumer's role.
    pub async fn finish(&self, prepared: Prepared, role: Role) -> Handled {
        let Prepared {
            event_id,
            occurred_at,
            attempts,
            hand_backs,
            next,
        } = prepared;
        let outcome = match next {
            Next::Decided(outcome) => outcome,
            Next::Link(event) => self.link(event, event_id.as_deref(), attempts, role).await,
        };
        let outcome = policy::cap_hand_backs(outcome, hand_backs, self.max_hand_backs);
        Handled {
            outcome,
            event_id,
            occurred_at,
        }
    }

    /// [`Handler::prepare`] then [`Handler::finish`] as a linking consumer.
    pub async fn handle(&self, message: Inbound<'_>) -> Handled {
        let prepared = self.prepare(message);
        self.finish(prepared, Role::Link).await
    }

    async fn link(
        &self,
        event: LinkEvent,
        event_id: Option<&str>,
        attempts: u32,
        role: Role,
    ) -> Outcome {
        if self.linker.known_linked(&event) {
            return Outcome::Linked(LinkResult::AlreadyLinked);
        }
        if let Role::Route(partitions) = role {
            return Outcome::Route {
                partition: partition_of(&event.anonymous, partitions),
            };
        }
        if self.circuit.is_open() {
            return Outcome::HandBack {
                error: "circuit open".to_owned(),
            };
        }
        let request_id = event_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        tracing::debug!(
            event_id = %untrusted(&request_id),
            anonymous = %ident(event.anonymous.as_str()),
            user = %ident(event.user.as_str()),
            "linking"
        );
        match self.linker.link(&event, &request_id).await {
            Ok(result) => Outcome::Linked(result),
            Err(error) => {
                policy::after_failure(error, self.circuit.is_open(), &self.ladder, attempts)
            }
        }
    }
}

#[cfg(test)]
mod tests;
