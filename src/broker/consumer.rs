//! The consumer loop: take deliveries (bounded by prefetch and a semaphore),
//! hand each to the handler in its own task, then settle it: ack, or publish a
//! confirmed copy (retry / dead-letter / hand-back) and then ack.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
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
    // Started at the first delivery (its tag is where the channel's tags begin).
    let mut acks: Option<AckBatcher> = None;
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
                        let acks = acks
                            .get_or_insert_with(|| AckBatcher::start(session.consume.clone(), delivery.delivery_tag))
                            .clone();
                        tasks.spawn(async move {
                            process(&pipeline, &publisher, &broken, &acks, delivery, received, Some(permit)).await;
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
                    let acks = acks
                        .get_or_insert_with(|| {
                            AckBatcher::start(session.consume.clone(), delivery.delivery_tag)
                        })
                        .clone();
                    tasks.spawn(async move {
                        process(
                            &pipeline, &publisher, &broken, &acks, delivery, received, None,
                        )
                        .await
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
///
/// `permit` (a slot of `LINKER_CONCURRENCY`) is given back once the outcome
/// is durable, before the ack is written: the ack needs no slot.
#[allow(clippy::too_many_arguments)]
async fn process(
    pipeline: &Pipeline,
    publisher: &Publisher,
    session_broken: &CancellationToken,
    acks: &AckBatcher,
    delivery: Delivery,
    received: Instant,
    permit: Option<OwnedSemaphorePermit>,
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
    drop(permit);
    if let Err(error) = acks.ack(delivery.delivery_tag).await {
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

/// How long a settled delivery may wait for the ones delivered before it, so
/// that one `basic.ack` with `multiple` covers them all. Past that it is acked
/// on its own. See BENCHMARKS.md ("coalesced acks").
const ACK_COALESCE_WAIT: Duration = Duration::from_millis(2);
/// A settled prefix shorter than this waits up to [`ACK_LINGER`] for more:
/// fewer, larger acks cost the broker much less per message.
const ACK_BATCH: usize = 64;
const ACK_LINGER: Duration = Duration::from_micros(1000);

struct AckRequest {
    tag: u64,
    done: oneshot::Sender<Result<(), String>>,
}

/// Acks of one consuming channel, coalesced.
///
/// RabbitMQ's cost per ack (above all for quorum queues: one settle command
/// in the Raft log per `basic.ack`) dominates the broker's work per message.
/// Delivery tags of a channel are consecutive, so when every delivery from
/// the lowest unsettled tag up to `T` has been settled, one `basic.ack`
/// with `multiple=true` and tag `T` acks exactly those: a delivery that is
/// still being handled, or deliberately left unacked (its copy failed), is
/// never covered, because the prefix stops at it. Deliveries settled above
/// such a gap are acked one by one after [`ACK_COALESCE_WAIT`]. A task's
/// `ack` returns once its ack frame is written, as with a plain ack, so
/// shutdown drains acks with the tasks.
#[derive(Clone)]
pub struct AckBatcher {
    tx: mpsc::UnboundedSender<AckRequest>,
}

impl AckBatcher {
    /// `first_tag`: the channel's first delivery tag seen by this consumer.
    pub fn start(channel: Channel, first_tag: u64) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(ack_loop(
            move |tag, multiple| {
                let channel = channel.clone();
                async move { send_ack(&channel, tag, multiple).await }
            },
            first_tag,
            rx,
        ));
        Self { tx }
    }

    /// Acks the delivery `tag`; returns once the ack (alone or with others) is written.
    pub async fn ack(&self, tag: u64) -> Result<(), String> {
        let (done, written) = oneshot::channel();
        self.tx
            .send(AckRequest { tag, done })
            .map_err(|_| "the ack batcher stopped".to_owned())?;
        written
            .await
            .unwrap_or_else(|_| Err("the ack batcher stopped".to_owned()))
    }
}

async fn send_ack(channel: &Channel, tag: u64, multiple: bool) -> Result<(), String> {
    channel
        .basic_ack(tag, BasicAckOptions { multiple })
        .await
        .map_err(|e| e.to_string())
}

/// Runs until every [`AckBatcher`] handle is dropped and every ack is written.
/// `send(tag, multiple)` writes one `basic.ack`.
async fn ack_loop<F, Fut>(send: F, first_tag: u64, mut rx: mpsc::UnboundedReceiver<AckRequest>)
where
    F: Fn(u64, bool) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    // Lowest tag not known to be settled.
    let mut low = first_tag;
    // Settled by the handler, ack not written yet, with when it arrived.
    type Done = oneshot::Sender<Result<(), String>>;
    let mut waiting: BTreeMap<u64, (tokio::time::Instant, Done)> = BTreeMap::new();
    // When each waiting tag arrived (oldest first); entries acked meanwhile are skipped.
    let mut arrivals: VecDeque<(tokio::time::Instant, u64)> = VecDeque::new();
    // Above `low`, already acked on their own.
    let mut acked_alone: BTreeSet<u64> = BTreeSet::new();
    let mut open = true;
    // When a short settled prefix is to be acked anyway.
    let mut linger_until: Option<tokio::time::Instant> = None;
    while open || !waiting.is_empty() {
        let due = arrivals
            .front()
            .map(|(at, _)| *at + ACK_COALESCE_WAIT)
            .into_iter()
            .chain(linger_until)
            .min();
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            request = rx.recv(), if open => match request {
                Some(AckRequest { tag, done }) => {
                    let now = tokio::time::Instant::now();
                    arrivals.push_back((now, tag));
                    waiting.insert(tag, (now, done));
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() => {}
        }
        // Everything that queued up meanwhile joins this batch.
        while let Ok(AckRequest { tag, done }) = rx.try_recv() {
            let now = tokio::time::Instant::now();
            arrivals.push_back((now, tag));
            waiting.insert(tag, (now, done));
        }
        // The settled prefix: one ack with `multiple`, once it is long enough
        // or its oldest delivery has lingered long enough.
        let mut end = low;
        let mut count = 0;
        let mut oldest: Option<tokio::time::Instant> = None;
        loop {
            if let Some((at, _)) = waiting.get(&end) {
                count += 1;
                oldest = Some(oldest.map_or(*at, |o: tokio::time::Instant| o.min(*at)));
            } else if !acked_alone.contains(&end) {
                break;
            }
            end += 1;
        }
        let now = tokio::time::Instant::now();
        let ready = !open || count >= ACK_BATCH || oldest.is_some_and(|at| at + ACK_LINGER <= now);
        linger_until = match oldest {
            Some(at) if !ready => Some(at + ACK_LINGER),
            _ => None,
        };
        let mut top = None;
        let mut covered = Vec::new();
        while ready && low < end {
            if let Some((_, done)) = waiting.remove(&low) {
                top = Some(low);
                covered.push(done);
            } else {
                acked_alone.remove(&low);
            }
            low += 1;
        }
        if let Some(tag) = top {
            let written = send(tag, true).await;
            for done in covered {
                let _ = done.send(written.clone());
            }
        }
        // Past the wait (or at the end): one by one, written together.
        let now = tokio::time::Instant::now();
        let mut alone = Vec::new();
        while let Some(&(at, tag)) = arrivals.front() {
            if !waiting.contains_key(&tag) {
                arrivals.pop_front();
                continue;
            }
            if open && at + ACK_COALESCE_WAIT > now {
                break;
            }
            arrivals.pop_front();
            if let Some((_, done)) = waiting.remove(&tag) {
                acked_alone.insert(tag);
                alone.push((done, send(tag, false)));
            }
        }
        if !alone.is_empty() {
            let (dones, writes): (Vec<_>, Vec<_>) = alone.into_iter().unzip();
            let results = futures_util::future::join_all(writes).await;
            for (done, written) in dones.into_iter().zip(results) {
                let _ = done.send(written);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<(u64, bool)>>>;

    fn batcher() -> (AckBatcher, Log, tokio::task::JoinHandle<()>) {
        let log: Log = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = log.clone();
        let task = tokio::spawn(ack_loop(
            move |tag, multiple| {
                sent.lock().unwrap().push((tag, multiple));
                async { Ok(()) }
            },
            1,
            rx,
        ));
        (AckBatcher { tx }, log, task)
    }

    /// Which tags a sequence of basic.ack frames acknowledges, as the broker sees it.
    fn acked(log: &[(u64, bool)], delivered: u64) -> Vec<u64> {
        let mut outstanding: BTreeSet<u64> = (1..=delivered).collect();
        let mut out = Vec::new();
        for &(tag, multiple) in log {
            assert!(outstanding.contains(&tag), "ack of unknown tag {tag}");
            if multiple {
                let covered: Vec<u64> = outstanding.range(..=tag).copied().collect();
                for t in covered {
                    outstanding.remove(&t);
                    out.push(t);
                }
            } else {
                outstanding.remove(&tag);
                out.push(tag);
            }
        }
        out.sort_unstable();
        out
    }

    #[tokio::test]
    async fn a_settled_prefix_is_one_ack() {
        let (acks, log, task) = batcher();
        let mut waits = Vec::new();
        for tag in [3, 1, 2, 4] {
            let acks = acks.clone();
            waits.push(tokio::spawn(async move { acks.ack(tag).await }));
            tokio::task::yield_now().await;
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        drop(acks);
        task.await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(acked(&log, 4), vec![1, 2, 3, 4]);
        assert!(log.len() < 4, "expected coalesced acks, got {log:?}");
    }

    #[tokio::test]
    async fn an_unsettled_delivery_is_never_covered() {
        let (acks, log, task) = batcher();
        // Tag 2 is still being handled (or left unacked on purpose): 1 and 3..=5 settle.
        let mut waits = Vec::new();
        for tag in [1, 3, 4, 5] {
            let acks = acks.clone();
            waits.push(tokio::spawn(async move { acks.ack(tag).await }));
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let sent = log.lock().unwrap().clone();
        assert_eq!(acked(&sent, 5), vec![1, 3, 4, 5]);
        // 2 settles late: acked alone; nothing is acked twice.
        acks.ack(2).await.unwrap();
        // Then 6: the prefix has moved past the tags acked alone.
        acks.ack(6).await.unwrap();
        drop(acks);
        task.await.unwrap();
        let log = log.lock().unwrap().clone();
        assert_eq!(acked(&log, 6), vec![1, 2, 3, 4, 5, 6]);
    }
}
