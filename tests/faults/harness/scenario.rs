//! The scenario: names, secret, mos-sim, log directory, cleanup.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use identity_link_worker::broker::topology::Topology;
use lapin::Connection;
use mos_sim::{MosSim, SimConfig};
use testkit::names::{Vars, private_vars, random_hex, with};
use testkit::worker::Private;

use super::{ScanReport, Worker, broker_at, list_queues_via, private, scan};

/// One scenario's private world. The secret key and the identifier tag are
/// random and distinctive, so the secret scan cannot be fooled by chance.
pub struct Scenario {
    pub name: &'static str,
    pub key: String,
    /// Appears in every identifier this scenario generates (and nowhere else).
    pub tag: String,
    pub sim: MosSim,
    pub vars: Vars,
    pub topology: Topology,
    pub ops: SocketAddr,
    pub logs: LogDir,
    /// The broker this scenario's workers and producers use (a cluster's
    /// nodes as a comma-separated list).
    pub amqp_url: String,
    /// The rabbitmqctl command line that reaches that broker (empty: none).
    pub ctl: Vec<String>,
    private: Private,
    cleaned: bool,
}

impl Scenario {
    /// mos-sim on port 0 with the scenario's key, worker variables with
    /// private names, a fixed operations port (reused across restarts),
    /// `RUST_LOG=trace` and JSON logs; `overrides` on top. The topology is
    /// declared here, so events can be queued before any worker runs. On the
    /// private node ([`private`]).
    pub async fn new(name: &'static str, sim: SimConfig, overrides: &[(&str, &str)]) -> Self {
        Self::on_broker(&private().amqp_url, name, sim, overrides).await
    }

    /// [`Scenario::new`] on the broker at `amqp_url`. Only the private node
    /// comes with a rabbitmqctl ([`Scenario::ctl`]); on another broker the
    /// caller sets it if it needs one.
    pub async fn on_broker(
        amqp_url: &str,
        name: &'static str,
        sim: SimConfig,
        overrides: &[(&str, &str)],
    ) -> Self {
        let key = format!("flt-key-{}", random_hex(20));
        let tag = format!("t{}", random_hex(10));
        let sim = testkit::sim::start_with_key(&key, sim).await;
        let ops = testkit::process::free_addr();
        let vars = with(
            private_vars("faults", amqp_url, &sim.endpoint_url(), &key),
            &[
                ("LINKER_HTTP_ADDR", ops.to_string().as_str()),
                ("LINKER_RETRY_DELAYS", "1s,2s"),
                ("LINKER_CIRCUIT_PROBE_INTERVAL", "1s"),
                ("LINKER_SHUTDOWN_GRACE", "5s"),
                ("LINKER_LOG_FORMAT", "json"),
                ("RUST_LOG", "trace"),
            ],
        );
        let private = Private::from_vars(with(vars, overrides));
        let connection = broker_at(amqp_url).await;
        private
            .declare(&connection)
            .await
            .expect("declare the scenario's topology");
        let _ = connection.close(200, "declared".into()).await;
        Self {
            name,
            key,
            tag,
            sim,
            vars: private.vars.clone(),
            topology: private.topology.clone(),
            ops,
            logs: LogDir::new(name),
            amqp_url: amqp_url.to_owned(),
            ctl: if amqp_url == super::private().amqp_url {
                super::private().ctl()
            } else {
                Vec::new()
            },
            private,
            cleaned: false,
        }
    }

    /// The exchange events are published to.
    pub fn exchange(&self) -> &str {
        self.private.exchange()
    }

    pub fn spawn_worker(&self, label: &str) -> Worker {
        Worker::spawn(&self.vars, &self.logs, label, self.ops)
    }

    pub fn spawn_worker_with(&self, label: &str, overrides: &[(&str, &str)]) -> Worker {
        Worker::spawn(
            &with(self.vars.clone(), overrides),
            &self.logs,
            label,
            self.ops,
        )
    }

    /// Every queue the worker owns: work queue, retry queues, dead letters, partitions.
    pub fn queues(&self) -> Vec<String> {
        self.topology.queues().map(str::to_owned).collect()
    }

    /// A connection to the scenario's broker.
    pub async fn connect(&self) -> Connection {
        broker_at(&self.amqp_url).await
    }

    /// Ready + unacked of every queue of the scenario, from the broker itself.
    pub async fn queue_counts(&self) -> BTreeMap<String, (u64, u64)> {
        assert!(
            !self.ctl.is_empty(),
            "{}: no rabbitmqctl for the broker at {}",
            self.name,
            self.amqp_url
        );
        let ctl: Vec<&str> = self.ctl.iter().map(String::as_str).collect();
        let all = list_queues_via(&ctl).await;
        self.queues()
            .into_iter()
            .map(|q| {
                let counts = all.get(&q).copied().unwrap_or((0, 0));
                (q, counts)
            })
            .collect()
    }

    /// Messages still in the work queue, a partition or a retry queue (ready, by passive declare).
    pub async fn backlog(&self, connection: &Connection) -> u64 {
        let retry = self.topology.retry_queues.iter().map(|r| r.name.as_str());
        testkit::broker::backlog(connection, self.private.event_queues().chain(retry)).await
    }

    /// Scans every output file of the scenario (workers and CLI runs) for
    /// the secret key and for plain identifiers; panics on a hit.
    pub fn assert_no_secret_in_output(&self) -> ScanReport {
        let report = scan(&self.logs.files(), &[&self.key, &self.tag]);
        assert_eq!(
            report.hits.get(self.key.as_str()).copied().unwrap_or(0),
            0,
            "{}: the secret key appeared in the output ({})",
            self.name,
            report.describe()
        );
        assert_eq!(
            report.hits.get(self.tag.as_str()).copied().unwrap_or(0),
            0,
            "{}: a plain identifier appeared in the output ({})",
            self.name,
            report.describe()
        );
        report
    }

    /// Deletes the scenario's queues and exchanges (also done on panic by Drop).
    pub async fn cleanup(mut self) {
        let connection = self.connect().await;
        let _ = self.private.delete(&connection).await;
        let _ = connection.close(200, "cleanup".into()).await;
        self.cleaned = true;
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // FAULTS_KEEP=1 leaves a failed scenario's queues for inspection.
        if self.cleaned || std::env::var_os("FAULTS_KEEP").is_some() {
            return;
        }
        // A failed test: remove the queues so a rerun starts clean; logs stay.
        // (Only on the private node: a cluster's may be paused, with no answer.)
        if self.amqp_url != private().amqp_url {
            return;
        }
        let ctl = private().ctl();
        for q in self.queues() {
            let _ = Command::new(&ctl[0])
                .args(&ctl[1..])
                .args(["-q", "delete_queue", &q])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Where a scenario's child processes write; kept when the test fails.
pub struct LogDir {
    pub path: PathBuf,
}

impl LogDir {
    pub fn new(name: &str) -> Self {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("faults-logs")
            .join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
