//! Settling one delivery: the handler's outcome becomes one [`Settlement`]
//! (an ack, or a confirmed copy to a target and then an ack), computed in
//! [`Settlement::of`] and carried out by [`settle`], the one publish path.

use std::sync::Arc;
use std::time::Instant;

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;

use super::acks::AckBatcher;
use super::headers;
use super::publisher::Publisher;
use super::topology::Topology;
use super::turns::Turn;
use crate::domain::{DeadLetterReason, Outcome};
use crate::handler::{Handler, Prepared, Role};
use crate::link::Admission;
use crate::ops::metrics::Metrics;
use crate::ops::record::{self, Settled};

/// What every delivery task of the process shares.
pub struct Pipeline {
    pub handler: Handler,
    pub topology: Topology,
    pub metrics: Arc<Metrics>,
    /// One copy of an over-limit body at a time: publishing copies the body
    /// into frames, so concurrent copies of big bodies would add up.
    pub oversized_copies: tokio::sync::Semaphore,
}

/// What every delivery task of one broker session shares.
pub struct SessionContext {
    pub pipeline: Arc<Pipeline>,
    pub publisher: Publisher,
    /// Cancelled when a confirmed copy fails: the session is then replaced.
    pub broken: CancellationToken,
    /// Cancelled when the session's deliveries must be let go at once (the
    /// session is lost, or the shutdown grace is over): a task still waiting
    /// on the endpoint stops waiting and leaves its delivery unacked, so no
    /// call of this process overlaps one of the replica that takes over.
    pub abort: CancellationToken,
    pub acks: AckBatcher,
}

/// The queue a delivery came from, and what its consumer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub queue: String,
    pub role: Role,
    /// The partition index, for a partition queue.
    pub partition: Option<u16>,
}

/// Where the message first came from: its exchange and routing key (the
/// event type), kept in headers across retries and hand-backs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub exchange: String,
    pub routing_key: String,
}

/// What a delivery had been through before this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SoFar {
    /// Delayed attempts (`x-linker-attempts`).
    pub attempts: u32,
    /// Hand-backs (`x-linker-hand-backs`).
    pub hand_backs: u32,
}

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    Ack,
    /// Publish a copy (body and properties kept, these headers set), wait
    /// for the broker's confirm, then ack.
    CopyThenAck {
        exchange: String,
        routing_key: String,
        headers: Vec<(&'static str, AMQPValue)>,
    },
}

impl Settlement {
    /// The settlement of `outcome` for a delivery from `route` that had had
    /// `so_far` delayed attempts and hand-backs, consumed from the queue `source`.
    pub fn of(
        outcome: &Outcome,
        route: &Route,
        so_far: SoFar,
        topology: &Topology,
        source: &str,
    ) -> Self {
        let SoFar {
            attempts,
            hand_backs,
        } = so_far;
        let origin = || {
            [
                (headers::ORIGINAL_EXCHANGE, headers::text(&route.exchange)),
                (
                    headers::ORIGINAL_ROUTING_KEY,
                    headers::text(&route.routing_key),
                ),
            ]
        };
        let error_header = |error: &str| {
            (
                headers::ERROR,
                headers::text(headers::truncate(error, headers::MAX_ERROR_BYTES)),
            )
        };
        match outcome {
            Outcome::Linked(_) | Outcome::Skipped(_) => Settlement::Ack,
            Outcome::Retry { error, step } => Settlement::CopyThenAck {
                exchange: String::new(),
                routing_key: topology.retry_queue_name(step.delay),
                headers: [(headers::ATTEMPTS, headers::int(step.attempt))]
                    .into_iter()
                    .chain(origin())
                    .chain([error_header(error)])
                    .collect(),
            },
            Outcome::DeadLetter { reason, error } => Settlement::CopyThenAck {
                exchange: topology.dead_letter.clone(),
                routing_key: route.routing_key.clone(),
                headers: [
                    (headers::REASON, headers::text(reason.as_str())),
                    error_header(error),
                    (headers::ATTEMPTS, headers::int(attempts)),
                ]
                .into_iter()
                .chain(origin())
                .chain([(headers::FAILED_AT, headers::text(&now_rfc3339()))])
                .collect(),
            },
            // Back to the queue it came from: a partition keeps its visitors' order.
            Outcome::HandBack { .. } => Settlement::CopyThenAck {
                exchange: String::new(),
                routing_key: source.to_owned(),
                headers: origin()
                    .into_iter()
                    .chain([(headers::HAND_BACKS, headers::int(hand_backs + 1))])
                    .collect(),
            },
            Outcome::Route { partition } => Settlement::CopyThenAck {
                exchange: String::new(),
                // The handler computes the index modulo the same partition count.
                routing_key: topology
                    .partition_queue(*partition)
                    .unwrap_or(&topology.queue)
                    .to_owned(),
                headers: origin().into_iter().collect(),
            },
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One delivery in hand: parsed in the consume loop, in delivery order.
pub struct InHand {
    pub delivery: Delivery,
    pub route: Route,
    pub prepared: Prepared,
    /// Its place in its visitor's line.
    pub turn: Turn,
    pub received: Instant,
    /// Its place among the events in hand (`link::flow`; none for routing,
    /// which makes no call).
    pub admission: Option<Admission>,
}

/// Finishes one delivery and settles it. Every path ends in an ack, or in the
/// delivery left unacked on a session that is then closed (the broker
/// requeues it): when a confirmed copy cannot be made, the broker side is not
/// healthy, and a nack would only redeliver it at once, again and again.
///
/// The admission is given back once the outcome is durable, before the ack is
/// written: the ack needs no slot. So is the visitor's turn: the next event
/// of the visitor may go once this one's copy is confirmed.
pub async fn settle(ctx: &SessionContext, source: &Source, in_hand: InHand) {
    let InHand {
        delivery,
        route,
        prepared,
        mut turn,
        received,
        admission,
    } = in_hand;
    let pipeline = &ctx.pipeline;
    pipeline.metrics.in_flight.inc();
    let so_far = SoFar {
        attempts: prepared.attempts,
        hand_backs: prepared.hand_backs,
    };
    let finished = tokio::select! {
        biased;
        _ = ctx.abort.cancelled() => None,
        handled = async {
            turn.wait().await;
            pipeline.handler.finish(prepared, source.role).await
        } => Some(handled),
    };
    let Some(handled) = finished else {
        // Left unacked: the broker hands it to whoever consumes next.
        pipeline.metrics.in_flight.dec();
        return;
    };
    let event_id = handled.event_id.as_deref();
    let settlement = Settlement::of(
        &handled.outcome,
        &route,
        so_far,
        &pipeline.topology,
        &source.queue,
    );
    if let Settlement::CopyThenAck {
        exchange,
        routing_key,
        headers,
    } = &settlement
    {
        let properties = headers::with_headers(&delivery.properties, headers, &[]);
        let _one_at_a_time = match &handled.outcome {
            Outcome::DeadLetter {
                reason: DeadLetterReason::BodyTooLarge,
                ..
            } => pipeline.oversized_copies.acquire().await.ok(),
            _ => None,
        };
        if let Err(error) = ctx
            .publisher
            .publish(exchange, routing_key, &delivery.data, properties)
            .await
        {
            tracing::warn!(
                event_id,
                %error,
                "could not make the message's copy durable; reconnecting, the broker will redeliver it"
            );
            ctx.broken.cancel();
            pipeline.metrics.in_flight.dec();
            return;
        }
    }
    drop(turn);
    drop(admission);
    if let Err(error) = ctx.acks.ack(delivery.delivery_tag).await {
        // The channel died: the broker will redeliver; handling is idempotent.
        tracing::debug!(event_id, %error, "ack failed; the broker will redeliver");
    }
    record::record(
        &pipeline.metrics,
        &Settled {
            outcome: &handled.outcome,
            event_type: &route.routing_key,
            event_id,
            occurred_at: handled.occurred_at,
            received,
        },
    );
    pipeline.metrics.in_flight.dec();
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;
    use crate::config::BrokerConfig;
    use crate::domain::{DeadLetterReason, LinkResult, RetryLadder, RetryStep, SkipReason};

    fn topology() -> Topology {
        let broker = BrokerConfig {
            amqp_urls: vec![crate::config::AmqpUrl::new("amqp://localhost")],
            tls: crate::config::BrokerTls::default(),
            quorum_initial_group_size: None,
            exchange: "auth.events".into(),
            routing_keys: vec!["user.logged_in".into()],
            queue: "q".into(),
            declare_topology: true,
            delivery_limit: NonZeroU32::new(20).unwrap(),
            prefetch: std::num::NonZeroU16::new(1).unwrap(),
            partitions: std::num::NonZeroU16::new(4),
            replica_id: "r-1".into(),
        };
        Topology::new(&broker, &RetryLadder::new(vec![Duration::from_secs(10)]))
    }

    fn route() -> Route {
        Route {
            exchange: "auth.events".into(),
            routing_key: "user.logged_in".into(),
        }
    }

    fn so_far(attempts: u32, hand_backs: u32) -> SoFar {
        SoFar {
            attempts,
            hand_backs,
        }
    }

    fn names(settlement: &Settlement) -> (String, String, Vec<&'static str>) {
        match settlement {
            Settlement::Ack => panic!("expected a copy"),
            Settlement::CopyThenAck {
                exchange,
                routing_key,
                headers,
            } => (
                exchange.clone(),
                routing_key.clone(),
                headers.iter().map(|(name, _)| *name).collect(),
            ),
        }
    }

    #[test]
    fn final_outcomes_are_plain_acks() {
        for outcome in [
            Outcome::Linked(LinkResult::Linked),
            Outcome::Linked(LinkResult::AlreadyLinked),
            Outcome::Skipped(SkipReason::SameIdentifier),
        ] {
            assert_eq!(
                Settlement::of(&outcome, &route(), SoFar::default(), &topology(), "q"),
                Settlement::Ack
            );
        }
    }

    #[test]
    fn a_retry_goes_to_its_step_queue_with_the_next_attempt() {
        let outcome = Outcome::Retry {
            error: "HTTP 503".into(),
            step: RetryStep {
                attempt: 1,
                delay: Duration::from_secs(10),
            },
        };
        let settlement = Settlement::of(&outcome, &route(), SoFar::default(), &topology(), "q");
        let (exchange, routing_key, headers) = names(&settlement);
        assert_eq!(
            (exchange.as_str(), routing_key.as_str()),
            ("", "q.retry.10s")
        );
        assert_eq!(
            headers,
            [
                headers::ATTEMPTS,
                headers::ORIGINAL_EXCHANGE,
                headers::ORIGINAL_ROUTING_KEY,
                headers::ERROR
            ]
        );
    }

    #[test]
    fn a_dead_letter_carries_every_header_and_keeps_the_event_type() {
        let outcome = Outcome::DeadLetter {
            reason: DeadLetterReason::Malformed,
            error: "x".repeat(5000),
        };
        let settlement = Settlement::of(&outcome, &route(), so_far(2, 0), &topology(), "q");
        let (exchange, routing_key, names) = names(&settlement);
        assert_eq!(
            (exchange.as_str(), routing_key.as_str()),
            ("q.dead", "user.logged_in")
        );
        assert_eq!(
            names,
            [
                headers::REASON,
                headers::ERROR,
                headers::ATTEMPTS,
                headers::ORIGINAL_EXCHANGE,
                headers::ORIGINAL_ROUTING_KEY,
                headers::FAILED_AT
            ]
        );
        let Settlement::CopyThenAck { headers: set, .. } = settlement else {
            unreachable!()
        };
        let AMQPValue::LongString(error) = &set[1].1 else {
            panic!("error header is text")
        };
        assert_eq!(error.as_bytes().len(), headers::MAX_ERROR_BYTES);
    }

    #[test]
    fn a_hand_back_returns_to_its_queue_counting_the_hand_back() {
        let outcome = Outcome::HandBack {
            error: "circuit open".into(),
        };
        let settlement = Settlement::of(
            &outcome,
            &route(),
            so_far(3, 4),
            &topology(),
            "q.partition.2",
        );
        let (exchange, routing_key, names) = names(&settlement);
        assert_eq!(
            (exchange.as_str(), routing_key.as_str()),
            ("", "q.partition.2")
        );
        assert_eq!(
            names,
            [
                headers::ORIGINAL_EXCHANGE,
                headers::ORIGINAL_ROUTING_KEY,
                headers::HAND_BACKS
            ]
        );
        let Settlement::CopyThenAck { headers: set, .. } = settlement else {
            unreachable!()
        };
        assert_eq!(set[2].1, headers::int(5));
    }

    #[test]
    fn a_routed_event_goes_to_its_partition_with_its_origin() {
        let outcome = Outcome::Route { partition: 3 };
        let (exchange, routing_key, names) = names(&Settlement::of(
            &outcome,
            &route(),
            so_far(1, 0),
            &topology(),
            "q",
        ));
        assert_eq!(
            (exchange.as_str(), routing_key.as_str()),
            ("", "q.partition.3")
        );
        assert_eq!(
            names,
            [headers::ORIGINAL_EXCHANGE, headers::ORIGINAL_ROUTING_KEY]
        );
    }
}
