//! The consume loop of one broker session: one consumer per source queue (the
//! work queue, and in partitioned mode every partition queue, each with a
//! single active consumer across all replicas), deliveries parsed in
//! delivery order and handed to their own tasks, which settle them
//! (`settle.rs`). While the circuit is open no deliveries are taken at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acks::AckBatcher;
use super::connection::BrokerSession;
use super::headers;
use super::partitions::{PartitionActivity, consumer_priority};
use super::settle::{InHand, Pipeline, Route, SessionContext, Source, settle};
use super::turns::Turns;
use crate::handler::{Inbound, Role};
use crate::link::{Admission, Circuit, Flow};
use crate::ops::readiness::Readiness;

pub enum SessionEnd {
    Stopped,
    Lost(String),
}

/// What the consume loop of one session needs.
pub struct Consumer<'a> {
    pub session: &'a BrokerSession,
    pub pipeline: &'a Arc<Pipeline>,
    pub circuit: &'a Circuit,
    pub readiness: &'a Readiness,
    /// Admits the events to link (the flow controller's limit).
    pub flow: &'a Arc<Flow>,
    pub tasks: &'a TaskTracker,
    pub stop: &'a CancellationToken,
    /// This replica's id, which weighs its claim on each partition.
    pub replica_id: &'a str,
    pub activity: &'a PartitionActivity,
}

/// The queues this replica consumes, and each consumer's role.
pub fn sources(pipeline: &Pipeline) -> Vec<Source> {
    let topology = &pipeline.topology;
    let partitions = u16::try_from(topology.partitions.len())
        .ok()
        .and_then(std::num::NonZeroU16::new);
    let work = Source {
        queue: topology.queue.clone(),
        role: partitions.map_or(Role::Link, Role::Route),
        partition: None,
    };
    std::iter::once(work)
        .chain((0u16..).zip(&topology.partitions).map(|(i, queue)| Source {
            queue: queue.clone(),
            role: Role::Link,
            partition: Some(i),
        }))
        .collect()
}

type Deliveries = SelectAll<BoxStream<'static, (usize, lapin::Result<Delivery>)>>;

/// The delivery tag of a channel's first delivery (AMQP 0-9-1: tags are
/// per channel, from 1, consecutive over every consumer of the channel).
const FIRST_DELIVERY_TAG: u64 = 1;

/// Hands deliveries of one session to their tasks. The session context
/// starts at the first delivery.
struct Dispatch<'a> {
    consumer: &'a Consumer<'a>,
    sources: Arc<[Source]>,
    context: Option<Arc<SessionContext>>,
    turns: Arc<Turns>,
}

impl Dispatch<'_> {
    fn spawn(&mut self, source: usize, mut delivery: Delivery, admission: Option<Admission>) {
        let received = Instant::now();
        let Consumer {
            session,
            pipeline,
            tasks,
            activity,
            ..
        } = self.consumer;
        let context = self
            .context
            .get_or_insert_with(|| {
                Arc::new(SessionContext {
                    pipeline: Arc::clone(pipeline),
                    publisher: session.publisher.clone(),
                    broken: session.broken.clone(),
                    abort: session.abort.clone(),
                    // Tags of a channel start at 1 and run across all its
                    // consumers. The first delivery *seen* is not always tag 1:
                    // the consumers' streams are polled in any order, and a
                    // batcher started above 1 would ack tag 1 twice (once by a
                    // `multiple` ack, once alone), which closes the channel.
                    acks: AckBatcher::start(session.consume.clone(), FIRST_DELIVERY_TAG),
                })
            })
            .clone();
        if let Some(partition) = self.sources[source].partition {
            activity.delivered(partition);
        }
        // Headers are the worker's own only when the worker wrote them: what
        // comes from the producers' exchange has ours taken out, here, before
        // anything reads them or copies them on.
        if delivery.exchange.as_str() == pipeline.topology.exchange {
            delivery.properties = headers::from_producer(&delivery.properties);
        }
        let props = &delivery.properties;
        let (exchange, routing_key) = headers::original_route(
            props,
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
        );
        let route = Route {
            exchange,
            routing_key,
        };
        // Parsed here, in delivery order, so each visitor's turn is taken in order.
        let prepared = pipeline.handler.prepare(Inbound {
            body: &delivery.data,
            event_type: &route.routing_key,
            message_id: props.message_id().as_ref().map(|s| s.as_str()),
            attempts: headers::get_u32(props, headers::ATTEMPTS).unwrap_or(0),
            hand_backs: headers::get_u32(props, headers::HAND_BACKS).unwrap_or(0),
        });
        let turn = self.turns.take(prepared.visitor());
        let sources = Arc::clone(&self.sources);
        let in_hand = InHand {
            delivery,
            route,
            prepared,
            turn,
            received,
            admission,
        };
        tasks.spawn(async move { settle(&context, &sources[source], in_hand).await });
    }
}

/// The session's consumers, kept registered until its deliveries are let go
/// and the channel is closed. Dropping a lapin consumer sends `basic.cancel`,
/// and with a single active consumer a cancel hands the queue to another
/// replica at once, while this one may still work its deliveries (the
/// overlap spring-amqp #2482 describes). Drop it after `BrokerSession::close`.
#[derive(Default)]
pub struct Held {
    _consumers: Option<Deliveries>,
}

impl Consumer<'_> {
    /// Consumes until `stop`, or until the connection is lost; the consumers
    /// come back with the end, to be dropped once the session is closed.
    pub async fn run(&self) -> (SessionEnd, Held) {
        let mut held = Held::default();
        let end = self.consume_until_end(&mut held).await;
        (end, held)
    }

    async fn consume_until_end(&self, held: &mut Held) -> SessionEnd {
        let sources: Arc<[Source]> = sources(self.pipeline).into();
        let mut circuit_state = self.circuit.subscribe();
        let mut dispatch = Dispatch {
            consumer: self,
            sources: Arc::clone(&sources),
            context: None,
            turns: Arc::default(),
        };
        loop {
            if *circuit_state.borrow_and_update() {
                self.readiness.set_consuming(false);
                if let Some(end) = self.wait_for_circuit(&mut circuit_state).await {
                    return end;
                }
            }
            let (tags, deliveries) = match self.consume(&sources).await {
                Ok(consuming) => consuming,
                Err(error) => return SessionEnd::Lost(format!("cannot start consuming: {error}")),
            };
            // Replaces the previous (cancelled) consumers of a paused session.
            let deliveries = held._consumers.insert(deliveries);
            self.readiness.set_consuming(true);
            tracing::info!(
                queue = %self.pipeline.topology.queue,
                partitions = self.pipeline.topology.partitions.len(),
                "consuming"
            );
            let paused = match self
                .take(deliveries, &mut dispatch, &mut circuit_state)
                .await
            {
                Ok(paused) => paused,
                Err(end) => {
                    self.readiness.set_consuming(false);
                    return end;
                }
            };
            self.readiness.set_consuming(false);
            if !paused {
                // Stopping: no basic.cancel (see `Held`); the channel is closed
                // once the deliveries in hand are done (or let go), and the
                // broker requeues what was prefetched.
                return SessionEnd::Stopped;
            }
            // The circuit opened: calls still running must end before another
            // replica may take our partitions, so wait for them, then cancel.
            self.wait_idle().await;
            for tag in &tags {
                if let Err(error) = self
                    .session
                    .consume
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await
                {
                    return SessionEnd::Lost(format!("cannot cancel the consumer: {error}"));
                }
            }
            // Deliveries already pushed to us before the cancel: settle them (they
            // are handed back, as the circuit is open) so none waits on consumer_timeout.
            loop {
                match tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await {
                    Ok(Some((source, Ok(delivery)))) => dispatch.spawn(source, delivery, None),
                    Ok(Some((_, Err(error)))) => {
                        return SessionEnd::Lost(format!("delivery stream failed: {error}"));
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            tracing::warn!("consumption paused while the circuit is open");
        }
    }

    /// One consumer per source; partition consumers claim with their priority.
    async fn consume(&self, sources: &[Source]) -> lapin::Result<(Vec<String>, Deliveries)> {
        let mut tags = Vec::with_capacity(sources.len());
        let mut deliveries = SelectAll::new();
        for (index, source) in sources.iter().enumerate() {
            let tag = format!("identity-link-worker-{}", uuid::Uuid::new_v4());
            let mut arguments = FieldTable::default();
            if let Some(partition) = source.partition {
                arguments.insert(
                    ShortString::from("x-priority"),
                    AMQPValue::LongInt(consumer_priority(self.replica_id, partition)),
                );
            }
            let consumer = self
                .session
                .consume
                .basic_consume(
                    source.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    arguments,
                )
                .await?;
            tags.push(tag);
            deliveries.push(consumer.map(move |delivery| (index, delivery)).boxed());
        }
        Ok((tags, deliveries))
    }

    /// Takes deliveries until stopped (`Ok(false)`), paused by the circuit
    /// (`Ok(true)`) or the session ends.
    async fn take(
        &self,
        deliveries: &mut Deliveries,
        dispatch: &mut Dispatch<'_>,
        circuit_state: &mut watch::Receiver<bool>,
    ) -> Result<bool, SessionEnd> {
        let session = self.session;
        // A broken publishing channel (e.g. a channel error from a deleted
        // exchange) would make every settle fail; reconnect and redeclare instead.
        let mut health = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(false),
                _ = async { circuit_state.wait_for(|open| *open).await.map(|_| ()) } => return Ok(true),
                _ = session.broken.cancelled() => {
                    return Err(SessionEnd::Lost("a confirmed copy could not be published".into()));
                }
                _ = health.tick() => {
                    if !session.publisher.channel().status().connected() || !session.consume.status().connected() {
                        return Err(SessionEnd::Lost("a broker channel was closed".into()));
                    }
                    self.activity.refresh();
                }
                next = deliveries.next() => match next {
                    Some((source, Ok(delivery))) => {
                        // Routing to a partition makes no call: bounded by the
                        // prefetch alone, it must not take the calls' room.
                        let admission = match dispatch.sources[source].role {
                            Role::Route(_) => None,
                            Role::Link => tokio::select! {
                                _ = self.stop.cancelled() => return Ok(false),
                                admission = self.flow.admit() => Some(admission),
                            },
                        };
                        dispatch.spawn(source, delivery, admission);
                    }
                    Some((_, Err(error))) => {
                        return Err(SessionEnd::Lost(format!("delivery stream failed: {error}")));
                    }
                    None => {
                        return Err(SessionEnd::Lost("the broker cancelled the consumer (queue deleted?)".into()));
                    }
                },
            }
        }
    }

    /// Until no delivery of this process is being worked (the calls in
    /// flight when the circuit opened have ended), or the stop.
    async fn wait_idle(&self) {
        while !self.tasks.is_empty() && !self.stop.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// While the circuit is open: `None` once it closes, else how the session ended.
    async fn wait_for_circuit(
        &self,
        circuit_state: &mut watch::Receiver<bool>,
    ) -> Option<SessionEnd> {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Some(SessionEnd::Stopped),
                changed = circuit_state.changed() => {
                    if changed.is_err() || !*circuit_state.borrow_and_update() { return None; }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !self.session.connection.status().connected() {
                        return Some(SessionEnd::Lost("connection closed while the circuit was open".into()));
                    }
                }
            }
        }
    }
}
