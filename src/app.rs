//! Build, then run: `Application::build` parses nothing and binds the
//! operations port (port 0 works in tests); `run_until_stopped` connects,
//! consumes, reconnects with backoff, and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::connection::{BrokerSession, NodeOrder};
use crate::broker::consumer::{Consumer, SessionEnd};
use crate::broker::partitions::PartitionActivity;
use crate::broker::settle::Pipeline;
use crate::broker::topology::Topology;
use crate::config::{AmqpUrl, Config};
use crate::handler::Handler;
use crate::link::{Circuit, Flow, LinkClient, LinkedCache, Linker, probe_loop};
use crate::ops::http;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;

/// Reconnect backoff: from 200 ms, doubling, capped at 5 s, with jitter.
/// The cap bounds how long the worker stays idle once the broker is back
/// (the fault suite measured 10.8 s after a 15 s broker restart with a
/// 30 s cap); an attempt every 5 s per replica costs the broker nothing.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How long aborted deliveries get to let go before the channel is closed.
const LET_GO_WAIT: Duration = Duration::from_secs(2);
/// A session that ran this long resets the reconnect backoff.
const SESSION_HEALTHY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on LINKER_HTTP_ADDR {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Client(String),
    /// A broker older than `broker::version::MINIMUM`.
    #[error("{0}")]
    Broker(String),
}

pub struct Application {
    config: Config,
    metrics: Arc<Metrics>,
    circuit: Arc<Circuit>,
    readiness: Arc<Readiness>,
    linker: Arc<Linker>,
    pipeline: Arc<Pipeline>,
    activity: Arc<PartitionActivity>,
    listener: TcpListener,
    ops_addr: SocketAddr,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new(&config.broker.routing_keys));
        let readiness = Arc::new(Readiness::new(metrics.clone()));
        let circuit = Arc::new(Circuit::new(
            config.retry.circuit_failure_threshold,
            metrics.clone(),
            readiness.clone(),
        ));
        let client = LinkClient::new(&config.link, metrics.clone()).map_err(StartError::Client)?;
        crate::broker::connection::check_versions(&config.broker)
            .await
            .map_err(StartError::Broker)?;
        let flow = Flow::new(
            config.link.concurrency.get(),
            config.link.max_requests_per_second,
            metrics.clone(),
        );
        let linker = Arc::new(Linker::new(
            client,
            flow,
            LinkedCache::new(config.link.linked_cache_size, config.link.linked_cache_ttl),
            circuit.clone(),
            metrics.clone(),
            config.retry.immediate_retries,
        ));
        let pipeline = Arc::new(Pipeline {
            handler: Handler::new(
                config.events.clone(),
                config.retry.clone(),
                linker.clone(),
                circuit.clone(),
            ),
            topology: Topology::new(&config.broker, &config.retry.ladder),
            metrics: metrics.clone(),
            oversized_copies: tokio::sync::Semaphore::new(1),
        });
        let activity = Arc::new(PartitionActivity::new(
            pipeline.topology.partitions.len(),
            metrics.clone(),
            readiness.clone(),
        ));
        let addr = config.ops.http_addr;
        let bind_error = |source| StartError::Bind { addr, source };
        let listener = http::bind(addr).await.map_err(bind_error)?;
        let ops_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            config,
            metrics,
            circuit,
            readiness,
            linker,
            pipeline,
            activity,
            listener,
            ops_addr,
        })
    }

    /// The bound operations address (useful with port 0).
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn topology(&self) -> &Topology {
        &self.pipeline.topology
    }

    /// Runs until `stop` is cancelled; then stops taking deliveries, lets
    /// in-flight work finish within the grace period, closes the broker
    /// connection cleanly and returns.
    pub async fn run_until_stopped(self, stop: CancellationToken) {
        let http_stop = CancellationToken::new();
        let http_task = tokio::spawn(http::serve(
            self.listener,
            http::router(self.metrics.clone(), self.readiness.clone()),
            http_stop.clone(),
        ));
        let probe_task = tokio::spawn(probe_loop(
            self.circuit.clone(),
            self.linker.endpoint_check(),
            self.config.retry.circuit_probe_interval,
            stop.clone(),
        ));
        let tasks = TaskTracker::new();
        let mut backoff = RECONNECT_MIN;
        let broker = &self.config.broker;
        let nodes: Vec<String> = broker.amqp_urls.iter().map(AmqpUrl::node).collect();
        self.metrics
            .list_broker_nodes(nodes.iter().map(String::as_str));
        let mut order = NodeOrder::shuffled(nodes.len());
        let mut sessions_opened = 0_u64;
        // One grace period for the whole shutdown, however many drains it takes.
        let mut shutdown_deadline: Option<Instant> = None;
        tracing::info!(
            broker = %ListedNodes(&broker.amqp_urls),
            queue = %self.config.broker.queue,
            ops = %self.ops_addr,
            "identity-link-worker starting"
        );
        while !stop.is_cancelled() {
            let opened = tokio::select! {
                _ = stop.cancelled() => break,
                opened = BrokerSession::open(broker, &self.pipeline.topology, &order, &self.metrics) => opened,
            };
            let session = match opened {
                Ok(session) => session,
                Err(error) => {
                    self.readiness.set_connected(false);
                    self.readiness.set_broker_problem(Some(error.to_string()));
                    // Every node refused: only now the backoff.
                    tracing::error!(%error, retry_in = %crate::ops::telemetry::duration(backoff), "broker session failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(jittered(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            self.readiness.set_broker_problem(None);
            self.readiness.set_connected(true);
            self.metrics.set_broker_node(Some(&nodes[session.node]));
            if sessions_opened > 0 {
                self.metrics.broker_reconnects.inc();
            }
            sessions_opened += 1;
            tracing::info!(broker = %broker.amqp_urls[session.node], "connected to the broker");
            let session_started = std::time::Instant::now();
            let consumer = Consumer {
                session: &session,
                pipeline: &self.pipeline,
                circuit: &self.circuit,
                readiness: &self.readiness,
                flow: self.linker.flow(),
                tasks: &tasks,
                stop: &stop,
                replica_id: &self.config.broker.replica_id,
                activity: &self.activity,
            };
            let (end, held) = consumer.run().await;
            match end {
                SessionEnd::Stopped => {
                    self.readiness.set_stopping();
                    let deadline = Instant::now() + self.config.ops.shutdown_grace;
                    shutdown_deadline = Some(deadline);
                    drain(&tasks, deadline).await;
                    let_go(&session, &tasks).await;
                    session.close().await;
                    // Only now: dropping the consumers would cancel them.
                    drop(held);
                    self.readiness.set_connected(false);
                    break;
                }
                SessionEnd::Lost(reason) => {
                    self.readiness.set_connected(false);
                    self.metrics.set_broker_node(None);
                    // The next round starts with the next node: a lost node is tried last.
                    order.moved_past(session.node);
                    // A session that ran a while fails over at once; one that
                    // fails again soon after starting keeps the backoff
                    // growing, so a persistent fault cannot spin.
                    let wait = if session_started.elapsed() > SESSION_HEALTHY_AFTER {
                        backoff = RECONNECT_MIN;
                        Duration::ZERO
                    } else {
                        jittered(backoff)
                    };
                    tracing::warn!(%reason, retry_in = %crate::ops::telemetry::duration(wait), "broker session lost; reconnecting");
                    // Let go of what is left (the broker redelivers it, maybe to
                    // another replica, so no call of ours may still be running), then close.
                    let_go(&session, &tasks).await;
                    session.close().await;
                    drop(held);
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                    }
                }
            }
        }
        self.readiness.set_stopping();
        // Stopped while (re)connecting: tasks of a lost session may still run.
        let deadline =
            shutdown_deadline.unwrap_or_else(|| Instant::now() + self.config.ops.shutdown_grace);
        drain(&tasks, deadline).await;
        probe_task.abort();
        http_stop.cancel();
        let _ = http_task.await;
        tracing::info!("identity-link-worker stopped");
    }
}

/// The nodes of `LINKER_AMQP_URL`, redacted, for the start-up line.
struct ListedNodes<'a>(&'a [AmqpUrl]);

impl std::fmt::Display for ListedNodes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.0.iter().map(AmqpUrl::redacted).collect();
        f.write_str(&shown.join(","))
    }
}

/// Between half and all of `delay`, so replicas that lost the broker
/// together do not reconnect in lockstep.
fn jittered(delay: Duration) -> Duration {
    let half = u64::try_from(delay.as_nanos() / 2).unwrap_or(u64::MAX);
    Duration::from_nanos(half.saturating_add(rand::random_range(0..=half)))
}

/// Aborts the session's deliveries still in hand: a task waiting on the
/// endpoint stops waiting and leaves its delivery unacked. Returns once they
/// are gone (they end at their next await), bounded in case one does not.
async fn let_go(session: &BrokerSession, tasks: &TaskTracker) {
    session.abort.cancel();
    let _ = tokio::time::timeout(LET_GO_WAIT, async {
        while !tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Waits for in-flight messages until `deadline` (the grace period from the
/// stop). What is still running after that is left unacked: closing the
/// channel hands it back to the broker.
async fn drain(tasks: &TaskTracker, deadline: Instant) {
    tasks.close();
    let in_flight = tasks.len();
    if in_flight == 0 || Instant::now() >= deadline {
        return;
    }
    let grace = deadline.saturating_duration_since(Instant::now());
    tracing::info!(in_flight, grace = %crate::ops::telemetry::duration(grace), "waiting for in-flight messages");
    if tokio::time::timeout_at(deadline, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            still_running = tasks.len(),
            "shutdown grace elapsed; unfinished messages are handed back to the broker"
        );
    }
}
