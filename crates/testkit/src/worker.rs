//! The worker's library API, in one place: its configuration, topology,
//! application and metrics. The suites and the benchmark reach these
//! types only through this module, so when the library changes shape only
//! this file needs adapting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use identity_link_worker::app::Application;
use identity_link_worker::broker::topology::Topology;
use identity_link_worker::config::{Config, IdentifierLogging, LogFormat};
use identity_link_worker::ops::metrics::Metrics;
use lapin::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::names::Vars;

/// A worker configuration read from variables, and the private topology it
/// names.
#[derive(Clone)]
pub struct Private {
    pub vars: Vars,
    config: Config,
    pub topology: Topology,
}

impl Private {
    /// Reads `vars` as the worker would; the error names the variable.
    pub fn new(vars: Vars) -> Result<Self, String> {
        let config = Config::from_vars(vars.clone()).map_err(|e| e.to_string())?;
        let topology = Topology::new(&config.broker, &config.retry.ladder);
        Ok(Self {
            vars,
            config,
            topology,
        })
    }

    /// [`Private::new`], for tests: a bad variable fails the test.
    pub fn from_vars(vars: Vars) -> Self {
        Self::new(vars).unwrap_or_else(|e| panic!("test configuration: {e}"))
    }

    /// The exchange events are published to.
    pub fn exchange(&self) -> &str {
        &self.config.broker.exchange
    }

    /// The work queue.
    pub fn queue(&self) -> &str {
        &self.config.broker.queue
    }

    /// Where events wait for a call: the work queue and every partition queue.
    pub fn event_queues(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.queue()).chain(self.topology.partitions.iter().map(String::as_str))
    }

    /// Declares the topology, so events can be queued before a worker runs.
    pub async fn declare(&self, connection: &Connection) -> Result<(), String> {
        let channel = channel(connection).await?;
        let declared = self.topology.declare(&channel).await;
        let _ = channel.close(200, "declared".into()).await;
        declared.map_err(|e| format!("declare {}: {e}", self.queue()))
    }

    /// Deletes the topology (queues and exchanges).
    pub async fn delete(&self, connection: &Connection) -> Result<(), String> {
        let channel = channel(connection).await?;
        let deleted = self.topology.delete(&channel).await;
        let _ = channel.close(200, "deleted".into()).await;
        deleted.map_err(|e| format!("delete {}: {e}", self.queue()))
    }
}

async fn channel(connection: &Connection) -> Result<lapin::Channel, String> {
    connection
        .create_channel()
        .await
        .map_err(|e| format!("open a channel: {e}"))
}

/// The worker built and run inside the test process (its metrics can be
/// read directly), stopped through its cancellation token.
pub struct InProcess {
    pub ops: SocketAddr,
    pub topology: Topology,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Builds the worker for `private` and starts it (not waiting for
    /// readiness). Its logs appear with a failing test's output
    /// (`RUST_LOG=debug` for more).
    pub async fn start(private: &Private) -> Self {
        // Many workers share the test process's one subscriber: its log
        // writer lives as long as the process.
        identity_link_worker::ops::telemetry::init_with_default(
            LogFormat::Text,
            IdentifierLogging::Hashed,
            "warn",
        )
        .expect("RUST_LOG is a valid filter")
        .keep_for_process();
        let app = Application::build(private.config.clone())
            .await
            .expect("worker builds");
        let ops = app.ops_addr();
        let metrics = app.metrics();
        let topology = app.topology().clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Self {
            ops,
            topology,
            metrics,
            stop,
            task: Some(task),
        }
    }

    /// Graceful stop, and waits (30 s at most) for the worker to finish.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("worker stops within 30 s")
                .expect("worker task did not panic");
        }
    }

    /// Messages with any outcome.
    pub fn settled(&self) -> u64 {
        self.metrics.settled_total()
    }

    /// Messages with outcome `name`, over all event types.
    pub fn outcome(&self, name: &str) -> u64 {
        self.metrics
            .outcome_totals()
            .into_iter()
            .find(|(o, _)| *o == name)
            .map_or(0, |(_, n)| n)
    }

    /// Skipped messages by reason.
    pub fn skips(&self) -> Vec<(&'static str, u64)> {
        self.metrics.skip_totals()
    }

    pub fn circuit_open(&self) -> i64 {
        self.metrics.circuit_open.get()
    }

    pub fn retries_delayed(&self) -> u64 {
        self.metrics.retries_delayed.get()
    }

    pub fn retries_immediate(&self) -> u64 {
        self.metrics.retries_immediate.get()
    }

    pub fn linked_cache_hits(&self) -> u64 {
        self.metrics.linked_cache_hits.get()
    }
}
