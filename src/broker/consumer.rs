//! The consumer loop: take deliveries (bounded by prefetch and a semaphore),
//! hand each to the handler in its own task, then settle it: ack, or publish a
//! confirmed copy (retry / dead-letter / hand-back) and then ack.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::BrokerSession;
use super::headers;
use super::publisher::{PublishError, Publisher};
use super::topology::Topology;
use crate::domain::{DeadLetterReason, Outcome};
use crate::handler::{Handler, Inbound};
use crate::ops::circuit::Circuit;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;

/// What every delivery task shares.
pub struct Pipeline {
    pub handler: Handler,
    pub topology: Topology,
    pub metrics: Arc<Metrics>,
    pub circuit: Arc<Circuit>,
}

pub enum SessionEnd {
    Stopped,
    Lost(String),
}

/// Consumes until `stop`, or until the connection is lost.
pub async fn run_session(
    session: &BrokerSession,
    pipeline: &Arc<Pipeline>,
    readiness: &Readiness,
    permits: &Arc<Semaphore>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> SessionEnd {
    let mut circuit_state = pipeline.circuit.subscribe();
    loop {
        // While the circuit is open, take no deliveries at all.
        let open = *circuit_state.borrow_and_update();
        if open {
            readiness.set_consuming(false);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return SessionEnd::Stopped,
                    changed = circuit_state.changed() => {
                        if changed.is_err() || !*circuit_state.borrow_and_update() { break; }
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if !session.connection.status().connected() {
                            return SessionEnd::Lost("connection closed while the circuit was open".into());
                        }
                    }
                }
            }
        }
        let tag = format!("identity-link-worker-{}", uuid::Uuid::new_v4());
        let mut consumer = match session
            .consume
            .basic_consume(
                pipeline.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(error) => return SessionEnd::Lost(format!("cannot start consuming: {error}")),
        };
        readiness.set_consuming(true);
        tracing::info!(queue = %pipeline.topology.queue, "consuming");

        // A broken publishing channel (e.g. a channel error from a deleted
        // exchange) would make every settle fail; reconnect and redeclare instead.
        let mut health = tokio::time::interval(Duration::from_secs(1));
        // Cancelled by a delivery task whose confirmed copy failed.
        let broken = session.broken.clone();
        let paused = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break false,
                _ = async { circuit_state.wait_for(|open| *open).await.map(|_| ()) } => break true,
                _ = broken.cancelled() => {
                    readiness.set_consuming(false);
                    return SessionEnd::Lost("a confirmed copy could not be published".into());
                }
                _ = health.tick() => {
                    if !session.publisher.channel().status().connected() || !session.consume.status().connected() {
                        readiness.set_consuming(false);
                        return SessionEnd::Lost("a broker channel was closed".into());
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let received = Instant::now();
                        let permit = tokio::select! {
                            _ = stop.cancelled() => break false,
                            permit = permits.clone().acquire_owned() => match permit {
                                Ok(permit) => permit,
                                Err(_) => break false,
                            },
                        };
                        let pipeline = pipeline.clone();
                        let publisher = session.publisher.clone();
                        let broken = session.broken.clone();
                        tasks.spawn(async move {
                            process(&pipeline, &publisher, &broken, delivery, received).await;
                            drop(permit);
                        });
                    }
                    Some(Err(error)) => {
                        readiness.set_consuming(false);
                        return SessionEnd::Lost(format!("delivery stream failed: {error}"));
                    }
                    None => {
                        readiness.set_consuming(false);
                        return SessionEnd::Lost("the broker cancelled the consumer (queue deleted?)".into());
                    }
                },
            }
        };
        readiness.set_consuming(false);
        if let Err(error) = session
            .consume
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            return SessionEnd::Lost(format!("cannot cancel the consumer: {error}"));
        }
        if !paused {
            return SessionEnd::Stopped;
        }
        // Deliveries already pushed to us before the cancel: settle them (they
        // are handed back, as the circuit is open) so none waits on consumer_timeout.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    let received = Instant::now();
                    let pipeline = pipeline.clone();
                    let publisher = session.publisher.clone();
                    let broken = session.broken.clone();
                    tasks.spawn(async move {
                        process(&pipeline, &publisher, &broken, delivery, received).await
                    });
                }
                Ok(Some(Err(error))) => {
                    return SessionEnd::Lost(format!("delivery stream failed: {error}"));
                }
                Ok(None) | Err(_) => break,
            }
        }
        tracing::warn!("consumption paused while the circuit is open");
    }
}

/// Handles one delivery and settles it. Every path ends in an ack, or in the
/// delivery left unacked on a session that is then closed (the broker
/// requeues it): when a confirmed copy cannot be made, the broker side is not
/// healthy, and a nack would only redeliver it at once, again and again.
pub async fn process(
    pipeline: &Pipeline,
    publisher: &Publisher,
    session_broken: &CancellationToken,
    delivery: Delivery,
    received: Instant,
) {
    let metrics = &pipeline.metrics;
    metrics.in_flight.inc();
    let props = &delivery.properties;
    let (exchange, routing_key) = headers::original_route(
        props,
        delivery.exchange.as_str(),
        delivery.routing_key.as_str(),
    );
    let attempts = headers::get_u32(props, headers::ATTEMPTS);
    let handled = pipeline
        .handler
        .handle(Inbound {
            body: &delivery.data,
            event_type: &routing_key,
            message_id: props.message_id().as_ref().map(|s| s.as_str()),
            attempts,
        })
        .await;
    let event_id = handled.event_id.as_deref();
    let mut outcome = handled.outcome;
    // Past the last step of the ladder a retry becomes a dead letter (the
    // handler already decides so; this keeps the two from ever disagreeing).
    if let Outcome::Retry { error } = &outcome
        && pipeline.topology.retry_queue(attempts).is_none()
    {
        outcome = Outcome::DeadLetter {
            reason: DeadLetterReason::RetriesExhausted,
            error: error.clone(),
        };
    }
    let copy = match &outcome {
        Outcome::Linked(_) | Outcome::Skipped(_) => Ok(()),
        Outcome::Retry { error } => match pipeline.topology.retry_queue(attempts) {
            None => Ok(()), // converted to a dead letter above
            Some(step) => {
                let properties = headers::with_headers(
                    props,
                    &[
                        (headers::ATTEMPTS, headers::int(attempts + 1)),
                        (headers::ORIGINAL_EXCHANGE, headers::text(&exchange)),
                        (headers::ORIGINAL_ROUTING_KEY, headers::text(&routing_key)),
                        (
                            headers::ERROR,
                            headers::text(headers::truncate(error, headers::MAX_ERROR_BYTES)),
                        ),
                    ],
                    &[],
                );
                publisher
                    .publish("", &step.name, &delivery.data, properties)
                    .await
            }
        },
        Outcome::DeadLetter { reason, error } => {
            dead_letter(
                pipeline,
                publisher,
                &delivery,
                *reason,
                error,
                attempts,
                &exchange,
                &routing_key,
            )
            .await
        }
        Outcome::HandBack { .. } => {
            let properties = headers::with_headers(
                props,
                &[
                    (headers::ORIGINAL_EXCHANGE, headers::text(&exchange)),
                    (headers::ORIGINAL_ROUTING_KEY, headers::text(&routing_key)),
                ],
                &[],
            );
            publisher
                .publish("", &pipeline.topology.queue, &delivery.data, properties)
                .await
        }
    };
    if let Err(error) = copy {
        tracing::warn!(
            event_id,
            %error,
            "could not make the message's copy durable; reconnecting, the broker will redeliver it"
        );
        session_broken.cancel();
        metrics.in_flight.dec();
        return;
    }
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel died: the broker will redeliver; handling is idempotent.
        tracing::debug!(event_id, %error, "ack failed; the broker will redeliver");
    }
    record(
        pipeline,
        &outcome,
        &routing_key,
        event_id,
        attempts,
        handled.occurred_at,
        received,
    );
    metrics.in_flight.dec();
}

#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    pipeline: &Pipeline,
    publisher: &Publisher,
    delivery: &Delivery,
    reason: DeadLetterReason,
    error: &str,
    attempts: u32,
    exchange: &str,
    routing_key: &str,
) -> Result<(), PublishError> {
    let failed_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let properties = headers::with_headers(
        &delivery.properties,
        &[
            (headers::REASON, headers::text(reason.as_str())),
            (
                headers::ERROR,
                headers::text(headers::truncate(error, headers::MAX_ERROR_BYTES)),
            ),
            (headers::ATTEMPTS, headers::int(attempts)),
            (headers::ORIGINAL_EXCHANGE, headers::text(exchange)),
            (headers::ORIGINAL_ROUTING_KEY, headers::text(routing_key)),
            (headers::FAILED_AT, headers::text(&failed_at)),
        ],
        &[],
    );
    publisher
        .publish(
            &pipeline.topology.dead_letter,
            routing_key,
            &delivery.data,
            properties,
        )
        .await
}

fn record(
    pipeline: &Pipeline,
    outcome: &Outcome,
    routing_key: &str,
    event_id: Option<&str>,
    attempts: u32,
    occurred_at: Option<SystemTime>,
    received: Instant,
) {
    let metrics = &pipeline.metrics;
    let Some(label) = outcome.metric_label() else {
        metrics.handed_back.inc();
        return;
    };
    metrics.count_message(routing_key, label);
    metrics
        .message_duration
        .observe(received.elapsed().as_secs_f64());
    if let Some(at) = occurred_at
        && let Ok(age) = SystemTime::now().duration_since(at)
    {
        metrics.event_age.observe(age.as_secs_f64());
    }
    let event_type = metrics.event_type_label(routing_key);
    match outcome {
        Outcome::Skipped(reason) => {
            metrics.count_skip(*reason);
            tracing::debug!(event_id, event_type, reason = reason.as_str(), "skipped");
        }
        Outcome::DeadLetter { reason, error } => {
            metrics.count_dead_letter(*reason);
            tracing::warn!(event_id, event_type, reason = reason.as_str(), %error, "dead-lettered");
        }
        Outcome::Retry { error } => {
            metrics.retries_delayed.inc();
            let delay = pipeline.topology.retry_queue(attempts).map(|q| q.delay);
            tracing::info!(event_id, event_type, attempt = attempts + 1, ?delay, %error, "link failed; retrying later");
        }
        Outcome::Linked(result) => {
            tracing::debug!(event_id, event_type, ?result, "linked");
        }
        Outcome::HandBack { .. } => {}
    }
}
