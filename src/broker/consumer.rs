//! The consume loop: take deliveries (bounded by prefetch and a semaphore)
//! and hand each to its own task, which settles it (`settle.rs`). While the
//! circuit is open no deliveries are taken at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acks::AckBatcher;
use super::connection::BrokerSession;
use super::settle::{Pipeline, SessionContext, settle};
use crate::link::Circuit;
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
    /// Slots of `LINKER_CONCURRENCY`.
    pub permits: &'a Arc<Semaphore>,
    pub tasks: &'a TaskTracker,
    pub stop: &'a CancellationToken,
}

/// Hands deliveries of one session to their tasks. The session context
/// starts at the first delivery: its tag is where the channel's tags begin,
/// which the ack batcher needs.
struct Dispatch<'a> {
    consumer: &'a Consumer<'a>,
    context: Option<Arc<SessionContext>>,
}

impl Dispatch<'_> {
    fn spawn(&mut self, delivery: Delivery, permit: Option<OwnedSemaphorePermit>) {
        let received = Instant::now();
        let Consumer {
            session,
            pipeline,
            tasks,
            ..
        } = self.consumer;
        let context = self
            .context
            .get_or_insert_with(|| {
                Arc::new(SessionContext {
                    pipeline: Arc::clone(pipeline),
                    publisher: session.publisher.clone(),
                    broken: session.broken.clone(),
                    acks: AckBatcher::start(session.consume.clone(), delivery.delivery_tag),
                })
            })
            .clone();
        tasks.spawn(async move { settle(&context, delivery, received, permit).await });
    }
}

impl Consumer<'_> {
    /// Consumes until `stop`, or until the connection is lost.
    pub async fn run(&self) -> SessionEnd {
        let Consumer {
            session,
            pipeline,
            readiness,
            stop,
            ..
        } = self;
        let mut circuit_state = self.circuit.subscribe();
        let mut dispatch = Dispatch {
            consumer: self,
            context: None,
        };
        loop {
            if *circuit_state.borrow_and_update() {
                readiness.set_consuming(false);
                if let Some(end) = self.wait_for_circuit(&mut circuit_state).await {
                    return end;
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
                            let permit = tokio::select! {
                                _ = stop.cancelled() => break false,
                                permit = self.permits.clone().acquire_owned() => match permit {
                                    Ok(permit) => permit,
                                    Err(_) => break false,
                                },
                            };
                            dispatch.spawn(delivery, Some(permit));
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
                    Ok(Some(Ok(delivery))) => dispatch.spawn(delivery, None),
                    Ok(Some(Err(error))) => {
                        return SessionEnd::Lost(format!("delivery stream failed: {error}"));
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            tracing::warn!("consumption paused while the circuit is open");
        }
    }

    /// While the circuit is open: `None` once it closes, else how the session ended.
    async fn wait_for_circuit(
        &self,
        circuit_state: &mut tokio::sync::watch::Receiver<bool>,
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
