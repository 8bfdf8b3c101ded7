//! What every fault scenario shares: a private topology and mos-sim, the
//! worker as a child process (logs to files, `RUST_LOG=trace`), a producer
//! that survives broker faults, a `/readyz` recorder, a ledger that knows what
//! should become of each event and counts what did, the secret scan, and the
//! one-line summary.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use identity_link_worker::broker::connection::{connect, open_confirm_channel};
use identity_link_worker::broker::publisher::Publisher;
use identity_link_worker::broker::topology::Topology;
use identity_link_worker::config::{AmqpUrl, Config, DEFAULT_AMQP_URL};
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use mos_sim::{MosSim, SimConfig};
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_identity-link-worker");

pub fn amqp_url() -> String {
    std::env::var("LINKER_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

pub fn random_hex(n: usize) -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    s.truncate(n);
    s
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The scenario: names, secret, mos-sim, log directory, cleanup.

/// One scenario's private world. The secret key and the identifier tag are
/// random and distinctive, so the secret scan cannot be fooled by chance.
pub struct Scenario {
    pub name: &'static str,
    pub key: String,
    /// Appears in every identifier this scenario generates (and nowhere else).
    pub tag: String,
    pub sim: MosSim,
    pub vars: Vec<(String, String)>,
    pub config: Config,
    pub topology: Topology,
    pub ops: SocketAddr,
    pub logs: LogDir,
    cleaned: bool,
}

impl Scenario {
    /// mos-sim on port 0 with the scenario's key, worker variables with
    /// private names, a fixed operations port (reused across restarts),
    /// `RUST_LOG=trace` and JSON logs; `overrides` on top. The topology is
    /// declared here, so events can be queued before any worker runs.
    pub async fn new(name: &'static str, sim: SimConfig, overrides: &[(&str, &str)]) -> Self {
        let key = format!("flt-key-{}", random_hex(20));
        let tag = format!("t{}", random_hex(10));
        let sim = MosSim::start(
            "127.0.0.1:0".parse().unwrap(),
            SimConfig {
                secret_key: key.clone(),
                ..sim
            },
        )
        .await
        .unwrap();
        let suffix = random_hex(10);
        let ops = free_port();
        let mut vars: Vec<(String, String)> = vec![
            ("LINKER_AMQP_URL".into(), amqp_url()),
            ("LINKER_QUEUE".into(), format!("faults-{suffix}")),
            (
                "LINKER_EXCHANGE".into(),
                format!("faults-{suffix}.auth.events"),
            ),
            ("LINKER_MOS_ENDPOINT_URL".into(), sim.endpoint_url()),
            ("LINKER_MOS_SECRET_KEY".into(), key.clone()),
            ("LINKER_HTTP_ADDR".into(), ops.to_string()),
            ("LINKER_RETRY_DELAYS".into(), "1s,2s".into()),
            ("LINKER_CIRCUIT_PROBE_INTERVAL".into(), "1s".into()),
            ("LINKER_SHUTDOWN_GRACE".into(), "5s".into()),
            ("LINKER_LOG_FORMAT".into(), "json".into()),
            ("RUST_LOG".into(), "trace".into()),
        ];
        for (name, value) in overrides {
            vars.retain(|(k, _)| k != name);
            vars.push(((*name).to_owned(), (*value).to_owned()));
        }
        let config = Config::from_vars(vars.clone()).expect("scenario configuration");
        let topology = Topology::new(&config.broker, &config.retry.ladder);
        let connection = broker().await;
        topology
            .declare(&connection.create_channel().await.unwrap())
            .await
            .expect("declare the scenario's topology");
        let _ = connection.close(200, "declared".into()).await;
        Self {
            name,
            key,
            tag,
            sim,
            vars,
            config,
            topology,
            ops,
            logs: LogDir::new(name),
            cleaned: false,
        }
    }

    pub fn spawn_worker(&self, label: &str) -> Worker {
        Worker::spawn(&self.vars, &self.logs, label, self.ops)
    }

    pub fn spawn_worker_with(&self, label: &str, overrides: &[(&str, &str)]) -> Worker {
        let mut vars = self.vars.clone();
        for (name, value) in overrides {
            vars.retain(|(k, _)| k != name);
            vars.push(((*name).to_owned(), (*value).to_owned()));
        }
        Worker::spawn(&vars, &self.logs, label, self.ops)
    }

    /// Every queue the worker owns: work queue, retry queues, dead letters.
    pub fn queues(&self) -> Vec<String> {
        std::iter::once(self.topology.queue.clone())
            .chain(self.topology.retry_queues.iter().map(|r| r.name.clone()))
            .chain(std::iter::once(self.topology.dead_letter.clone()))
            .collect()
    }

    /// Ready + unacked of every queue of the scenario, from the broker itself.
    pub async fn queue_counts(&self) -> BTreeMap<String, (u64, u64)> {
        let all = list_queues().await;
        self.queues()
            .into_iter()
            .map(|q| {
                let counts = all.get(&q).copied().unwrap_or((0, 0));
                (q, counts)
            })
            .collect()
    }

    /// Messages still in the work queue or a retry queue (ready, by passive declare).
    pub async fn backlog(&self, connection: &Connection) -> u64 {
        let mut total = 0;
        for q in std::iter::once(&self.topology.queue)
            .chain(self.topology.retry_queues.iter().map(|r| &r.name))
        {
            total += u64::from(depth(connection, q).await);
        }
        total
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
        let connection = broker().await;
        let channel = connection.create_channel().await.unwrap();
        let _ = self.topology.delete(&channel).await;
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
        for q in self.queues() {
            let _ = Command::new("rabbitmqctl")
                .args(["-q", "delete_queue", &q])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
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

// ---------------------------------------------------------------------------
// The worker as a child process.

pub struct Worker {
    child: Child,
    pub pid: u32,
    pub ops: SocketAddr,
    pub label: String,
    exited: Option<ExitStatus>,
}

pub fn command(vars: &[(String, String)]) -> Command {
    let mut command = Command::new(BIN);
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command.stdin(Stdio::null());
    command
}

impl Worker {
    /// Output goes to files, never pipes: trace output is large and a full
    /// pipe would block the worker.
    pub fn spawn(vars: &[(String, String)], logs: &LogDir, label: &str, ops: SocketAddr) -> Self {
        let out = File::create(logs.file(&format!("{label}.stdout.log"))).unwrap();
        let err = File::create(logs.file(&format!("{label}.stderr.log"))).unwrap();
        let child = command(vars)
            .arg("run")
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the worker");
        Self {
            pid: child.id(),
            child,
            ops,
            label: label.to_owned(),
            exited: None,
        }
    }

    /// SIGKILL: no cleanup, no acks, no channel close.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    pub fn sigterm(&self) {
        signal(self.pid, "TERM");
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not exit within {limit:?}",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub async fn stop(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let asked = Instant::now();
        self.sigterm();
        let status = self.wait_exit(limit).await;
        (status, asked.elapsed())
    }

    /// Peak resident set size (VmHWM), in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/<pid>/status of a running worker");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let client = http_client();
        let url = format!("http://{}/readyz", self.ops);
        wait_for(
            &format!("worker {} to be ready", self.label),
            limit,
            || {
                let client = client.clone();
                let url = url.clone();
                async move {
                    matches!(client.get(&url).send().await, Ok(r) if r.status().as_u16() == 200)
                }
            },
        )
        .await;
    }

    pub async fn metrics(&self) -> Option<Scrape> {
        scrape(self.ops).await
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// /metrics

/// The few series the scenarios read, summed over labels.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub outcomes: BTreeMap<String, u64>,
    pub dead_lettered: BTreeMap<String, u64>,
    pub skipped: BTreeMap<String, u64>,
    pub in_flight: i64,
    pub circuit_open: i64,
    pub broker_connected: i64,
    pub text: String,
}

impl Scrape {
    pub fn outcome(&self, name: &str) -> u64 {
        self.outcomes.get(name).copied().unwrap_or(0)
    }
    pub fn settled(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

pub async fn scrape(ops: SocketAddr) -> Option<Scrape> {
    let text = http_client()
        .get(format!("http://{ops}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(parse_metrics(text))
}

fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

pub fn parse_metrics(text: String) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let add = |map: &mut BTreeMap<String, u64>, key: Option<&str>| {
            if let Some(key) = key {
                *map.entry(key.to_owned()).or_default() += value as u64;
            }
        };
        if series.starts_with("identity_linker_messages_total{") {
            add(&mut s.outcomes, label(series, "outcome"));
        } else if series.starts_with("identity_linker_dead_lettered_total{") {
            add(&mut s.dead_lettered, label(series, "reason"));
        } else if series.starts_with("identity_linker_skipped_total{") {
            add(&mut s.skipped, label(series, "reason"));
        } else if series == "identity_linker_in_flight" {
            s.in_flight = value as i64;
        } else if series == "identity_linker_circuit_open" {
            s.circuit_open = value as i64;
        } else if series == "identity_linker_broker_connected" {
            s.broker_connected = value as i64;
        }
    }
    s.text = text;
    s
}

// ---------------------------------------------------------------------------
// /readyz, recorded.

#[derive(Debug, Clone)]
pub struct Transition {
    pub at: Instant,
    /// 0 when the worker did not answer at all.
    pub status: u16,
    pub reason: String,
}

/// Polls `/readyz` every 5 ms and keeps every change of answer.
pub struct ReadyRecorder {
    transitions: Arc<Mutex<Vec<Transition>>>,
    stop: CancellationToken,
}

impl ReadyRecorder {
    pub fn start(ops: SocketAddr) -> Self {
        let transitions = Arc::new(Mutex::new(Vec::<Transition>::new()));
        let stop = CancellationToken::new();
        let (t, s) = (transitions.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(1000))
                .build()
                .unwrap();
            let url = format!("http://{ops}/readyz");
            while !s.is_cancelled() {
                let (status, reason) = match client.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        let reason = body["reason"].as_str().unwrap_or("").to_owned();
                        (status, reason)
                    }
                    Err(_) => (0, "no answer".to_owned()),
                };
                {
                    let mut t = t.lock().unwrap();
                    let changed = t
                        .last()
                        .is_none_or(|l| l.status != status || l.reason != reason);
                    if changed {
                        t.push(Transition {
                            at: Instant::now(),
                            status,
                            reason,
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self { transitions, stop }
    }

    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions.lock().unwrap().clone()
    }

    /// The answers as `+seconds status reason` relative to `origin`, for notes.
    pub fn timeline(&self, origin: Instant) -> String {
        self.transitions()
            .iter()
            .map(|t| {
                let at = t.at.saturating_duration_since(origin).as_secs_f64();
                format!("+{at:.2}s {} {}", t.status, t.reason)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Times readiness went from 200 to anything else.
    pub fn downs(&self) -> usize {
        self.transitions()
            .windows(2)
            .filter(|w| w[0].status == 200 && w[1].status != 200)
            .count()
    }

    /// Times readiness came back to 200 after being down.
    pub fn ups(&self) -> usize {
        self.transitions()
            .windows(2)
            .filter(|w| w[0].status != 200 && w[1].status == 200)
            .count()
    }

    /// First moment at or after `t` when `/readyz` answered 200.
    pub fn ready_at_or_after(&self, t: Instant) -> Option<Instant> {
        let all = self.transitions();
        // Ready at t already (last transition before t was a 200 and none since)?
        let mut ready_since: Option<Instant> = None;
        for tr in &all {
            if tr.at <= t {
                ready_since = (tr.status == 200).then_some(t);
            } else if tr.status == 200 {
                return Some(ready_since.unwrap_or(tr.at));
            } else {
                if ready_since.is_some() {
                    return ready_since;
                }
                ready_since = None;
            }
        }
        ready_since
    }

    /// The first not-ready answer at or after `t`, and its reason.
    pub fn first_down_after(&self, t: Instant) -> Option<Transition> {
        self.transitions()
            .into_iter()
            .find(|tr| tr.at >= t && tr.status != 200)
    }

    /// Reasons seen while not ready, with how often each started.
    pub fn reasons(&self) -> BTreeMap<String, usize> {
        let mut reasons = BTreeMap::new();
        for tr in self.transitions() {
            if tr.status != 200 {
                *reasons.entry(tr.reason).or_default() += 1;
            }
        }
        reasons
    }
}

impl Drop for ReadyRecorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------
// The broker.

pub async fn broker() -> Connection {
    match connect(&AmqpUrl::new(amqp_url()), "identity-link-worker faults").await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "RabbitMQ is required for the fault suite and is not reachable: {error}. \
             Run `bash scripts/ensure-rabbitmq`."
        ),
    }
}

/// Connects, retrying for up to `limit` (the broker may be restarting).
pub async fn broker_within(limit: Duration) -> Connection {
    let deadline = Instant::now() + limit;
    loop {
        match connect(&AmqpUrl::new(amqp_url()), "identity-link-worker faults").await {
            Ok(connection) => return connection,
            Err(error) => {
                assert!(Instant::now() < deadline, "broker unreachable: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub async fn depth(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "ok".into()).await;
    declared.message_count()
}

pub async fn rabbitmqctl(args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("rabbitmqctl {args:?} timed out"))
    .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `(ready, unacked)` per queue, from `rabbitmqctl list_queues`.
pub async fn list_queues() -> HashMap<String, (u64, u64)> {
    let out = rabbitmqctl(&[
        "-q",
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "--formatter",
        "json",
    ])
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    rows.iter()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_owned(),
                (
                    r["messages_ready"].as_u64().unwrap_or(0),
                    r["messages_unacknowledged"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect()
}

/// Restarts the broker's application if a test stops it and then fails:
/// the broker is always left running.
pub struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "start_app"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "await_startup", "--timeout", "110"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------
// Events and the ledger.

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expect {
    /// The pair must be linked (created once, maybe confirmed more often).
    Link { anonymous: String, user: String },
    /// Acked without a call, for this reason; never linked.
    Skip(&'static str),
    /// In the dead-letter queue with this `x-linker-reason`.
    Dead(&'static str),
}

#[derive(Debug, Clone)]
pub struct Event {
    pub routing_key: &'static str,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub expect: Expect,
}

impl Event {
    pub fn pair(routing_key: &'static str, anonymous: &str, user: &str) -> Self {
        let body = serde_json::json!({"anonymousId": anonymous, "userId": user});
        Self {
            routing_key,
            body: body.to_string().into_bytes(),
            message_id: Some(uuid::Uuid::new_v4().to_string()),
            expect: Expect::Link {
                anonymous: anonymous.to_owned(),
                user: user.to_owned(),
            },
        }
    }

    pub fn properties(&self) -> BasicProperties {
        let p = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        match &self.message_id {
            Some(id) => p.with_message_id(ShortString::from(id.clone())),
            None => p,
        }
    }
}

/// The mix used under load: mostly new pairs, some repeated logins of pairs
/// already sent (no second link allowed), and some events to skip.
pub fn mixed_load(tag: &str, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let event = match i % 20 {
            // 5 % repeats of an earlier pair (a login after the sign-up).
            7 if i >= 20 => {
                let j = i - 13;
                Event::pair(
                    "user.logged_in",
                    &format!("a.{tag}.{j}"),
                    &format!("u.{tag}.{j}"),
                )
            }
            // 5 % placeholders from a buggy client: skipped, never linked.
            11 => Event {
                expect: Expect::Skip("blocked_identifier"),
                ..Event::pair("user.logged_in", "undefined", &format!("u.{tag}.{i}"))
            },
            // 5 % without an anonymous identifier.
            13 => Event {
                routing_key: "user.signed_up",
                body: serde_json::json!({"userId": format!("u.{tag}.{i}")})
                    .to_string()
                    .into_bytes(),
                message_id: Some(uuid::Uuid::new_v4().to_string()),
                expect: Expect::Skip("no_anonymous_identifier"),
            },
            k => Event::pair(
                if k % 2 == 0 {
                    "user.signed_up"
                } else {
                    "user.logged_in"
                },
                &format!("a.{tag}.{i}"),
                &format!("u.{tag}.{i}"),
            ),
        };
        events.push(event);
    }
    events
}

/// What became of the events, from the simulator's store and the
/// dead-letter queue (the only places an outcome is durable).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub sent: usize,
    /// Events expected to link whose pair is linked.
    pub linked: usize,
    /// Events expected to be skipped (none of them linked).
    pub skipped: usize,
    /// Messages in the dead-letter queue.
    pub dead_lettered: usize,
    /// Events whose expected outcome is not there (pair not linked, dead
    /// letter missing), with nothing left in any queue.
    pub lost: usize,
    /// Second links of a pair already linked (mos-sim `duplicates`).
    pub duplicates: u64,
    /// Links the scenario never asked for (a skipped event linked, a wrong pair).
    pub unexpected_links: usize,
    /// Link calls that found the pair already linked, or repeated it.
    pub repeated_calls: u64,
}

pub fn tally(events: &[Event], sim: &MosSim, dead: &BTreeMap<String, usize>) -> Tally {
    let links = sim.links();
    let mut per_pair: HashMap<(String, String), usize> = HashMap::new();
    for l in &links {
        *per_pair
            .entry((l.anonymous_identifier.clone(), l.user_identifier.clone()))
            .or_default() += 1;
    }
    let expected: HashSet<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.expect {
            Expect::Link { anonymous, user } => Some((anonymous.clone(), user.clone())),
            _ => None,
        })
        .collect();
    let mut t = Tally {
        sent: events.len(),
        ..Tally::default()
    };
    let mut want_dead: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events {
        match &e.expect {
            Expect::Link { anonymous, user } => {
                if per_pair.contains_key(&(anonymous.clone(), user.clone())) {
                    t.linked += 1;
                } else {
                    t.lost += 1;
                }
            }
            Expect::Skip(_) => t.skipped += 1,
            Expect::Dead(reason) => *want_dead.entry(reason).or_default() += 1,
        }
    }
    for (reason, want) in want_dead {
        let got = dead.get(reason).copied().unwrap_or(0);
        t.lost += want.saturating_sub(got);
    }
    t.dead_lettered = dead.values().sum();
    t.unexpected_links = per_pair.keys().filter(|p| !expected.contains(*p)).count();
    let stats = sim.stats();
    t.duplicates = stats.duplicates;
    // Each pair needs one create; every other 2xx call was a repeat.
    t.repeated_calls = stats.status(200).saturating_sub(stats.creates);
    t
}

/// Publishes with confirms and survives broker faults: on any error it
/// reconnects and publishes what was not confirmed again (a message whose
/// confirm was lost is then queued twice, which the worker must absorb).
pub struct Producer {
    exchange: String,
    current: Option<(Connection, Publisher)>,
    pub republished: usize,
}

impl Producer {
    pub fn new(scenario: &Scenario) -> Self {
        Self {
            exchange: scenario.config.broker.exchange.clone(),
            current: None,
            republished: 0,
        }
    }

    async fn publisher(&mut self) -> Publisher {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some((connection, publisher)) = &self.current {
                if connection.status().connected() {
                    return publisher.clone();
                }
                self.current = None;
            }
            if let Ok(connection) = connect(
                &AmqpUrl::new(amqp_url()),
                "identity-link-worker faults producer",
            )
            .await
                && let Ok(channel) = open_confirm_channel(&connection).await
            {
                self.current = Some((connection, Publisher::new(channel)));
                continue;
            }
            assert!(Instant::now() < deadline, "producer: broker unreachable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn send(&mut self, events: &[Event]) {
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let deadline = Instant::now() + Duration::from_secs(240);
        while !pending.is_empty() {
            let publisher = self.publisher().await;
            let exchange = self.exchange.as_str();
            let results: Vec<(usize, Result<(), String>)> = futures_util::stream::iter(pending)
                .map(|i| {
                    let publisher = publisher.clone();
                    let e = &events[i];
                    async move {
                        let result = tokio::time::timeout(
                            Duration::from_secs(10),
                            publisher.publish(exchange, e.routing_key, &e.body, e.properties()),
                        )
                        .await;
                        let result = match result {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(error)) => Err(error.to_string()),
                            Err(_) => Err("confirm timed out".to_owned()),
                        };
                        (i, result)
                    }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            let failed: Vec<(usize, String)> = results
                .into_iter()
                .filter_map(|(i, r)| r.err().map(|e| (i, e)))
                .collect();
            if let Some((_, error)) = failed.first() {
                assert!(
                    Instant::now() < deadline,
                    "producer: could not publish: {error}"
                );
                self.republished += failed.len();
                if let Some((connection, _)) = self.current.take() {
                    let _ = connection.close(200, "republishing".into()).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            pending = failed.into_iter().map(|(i, _)| i).collect();
        }
    }

    /// `events` in chunks of `chunk`, one chunk per `every`.
    pub async fn send_paced(&mut self, events: &[Event], chunk: usize, every: Duration) {
        let mut tick = tokio::time::interval(every);
        for part in events.chunks(chunk) {
            tick.tick().await;
            self.send(part).await;
        }
    }

    pub async fn close(mut self) {
        if let Some((connection, _)) = self.current.take() {
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

/// Dead letters by `x-linker-reason` (or the broker's own reason), counted
/// with the worker's own `dlq stats` code.
pub async fn dead_letters(scenario: &Scenario) -> BTreeMap<String, usize> {
    let connection = broker_within(Duration::from_secs(60)).await;
    let stats = identity_link_worker::broker::dlq::stats(&connection, &scenario.topology)
        .await
        .expect("dlq stats");
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(
        stats.scanned, stats.messages as usize,
        "every dead letter was looked at"
    );
    stats.by_reason
}

/// Waits until every expected link exists and nothing is left in the work
/// and retry queues; returns when that first held.
pub async fn wait_drained(scenario: &Scenario, events: &[Event], limit: Duration) -> Instant {
    let expected: HashSet<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.expect {
            Expect::Link { anonymous, user } => Some((anonymous.clone(), user.clone())),
            _ => None,
        })
        .collect();
    let connection = broker_within(Duration::from_secs(60)).await;
    let deadline = Instant::now() + limit;
    // Passive declares count ready messages exactly, but not those a worker
    // holds; so the condition must also hold for a while, with nothing in
    // flight at the worker, before it counts.
    const STABLE: Duration = Duration::from_millis(1500);
    let mut since: Option<Instant> = None;
    loop {
        let stats = scenario.sim.stats();
        let mut drained = false;
        if stats.links as usize >= expected.len() {
            let linked: HashSet<(String, String)> = scenario
                .sim
                .links()
                .into_iter()
                .map(|l| (l.anonymous_identifier, l.user_identifier))
                .collect();
            drained = expected.is_subset(&linked)
                && scenario.backlog(&connection).await == 0
                && scrape(scenario.ops).await.is_none_or(|m| m.in_flight == 0);
        }
        if drained {
            let first = *since.get_or_insert_with(Instant::now);
            if first.elapsed() >= STABLE {
                let _ = connection.close(200, "done".into()).await;
                return first;
            }
        } else {
            since = None;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not drained after {limit:?}: {} of {} pairs linked, backlog {}",
            scenario.name,
            stats.links,
            expected.len(),
            scenario.backlog(&connection).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After the last worker exited: nothing unacked anywhere (the broker's own
/// count, which for quorum queues is refreshed every few seconds, must reach
/// 0) and, exactly (passive declare), nothing ready but in the dead-letter
/// queue. Returns the ready count per queue.
pub async fn settle_after_exit(scenario: &Scenario) -> BTreeMap<String, u32> {
    // The broker hands back a closed connection's deliveries asynchronously.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut counts = scenario.queue_counts().await;
    while counts.values().any(|(_, unacked)| *unacked > 0) {
        assert!(
            Instant::now() < deadline,
            "unacked after the worker exited: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        counts = scenario.queue_counts().await;
    }
    let connection = broker().await;
    let mut ready = BTreeMap::new();
    for queue in scenario.queues() {
        let n = depth(&connection, &queue).await;
        ready.insert(queue, n);
    }
    let _ = connection.close(200, "done".into()).await;
    ready
}

pub async fn assert_queues_empty(scenario: &Scenario) {
    for (queue, ready) in settle_after_exit(scenario).await {
        if queue != scenario.topology.dead_letter && ready > 0 {
            let left = peek(&queue, 5).await;
            panic!("{queue}: {ready} messages left, e.g. {left:#?}");
        }
    }
}

/// Up to `n` messages of `queue`, described (they stay in the queue).
pub async fn peek(queue: &str, n: usize) -> Vec<String> {
    use lapin::options::BasicGetOptions;
    let connection = broker().await;
    let channel = connection.create_channel().await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let Ok(Some(m)) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
        else {
            break;
        };
        let d = m.delivery;
        out.push(format!(
            "rk={} redelivered={} headers={:?} body={}",
            d.routing_key,
            d.redelivered,
            d.properties.headers(),
            String::from_utf8_lossy(&d.data[..d.data.len().min(200)])
        ));
    }
    let _ = connection.close(200, "peeked".into()).await;
    out
}

// ---------------------------------------------------------------------------
// The secret scan.

#[derive(Debug, Default)]
pub struct ScanReport {
    pub files: usize,
    pub bytes: u64,
    pub hits: BTreeMap<String, usize>,
}

impl ScanReport {
    pub fn describe(&self) -> String {
        format!(
            "{} files, {:.1} MiB scanned, hits {:?}",
            self.files,
            self.bytes as f64 / 1048576.0,
            self.hits
        )
    }
}

/// Counts each needle in each file, reading in chunks (trace logs are big).
pub fn scan(files: &[PathBuf], needles: &[&str]) -> ScanReport {
    let mut report = ScanReport::default();
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(0);
    for path in files {
        let Ok(mut file) = File::open(path) else {
            continue;
        };
        report.files += 1;
        let mut carry: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = file.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            report.bytes += n as u64;
            let mut window = std::mem::take(&mut carry);
            let carried = window.len();
            window.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&window);
            for needle in needles {
                // Count only matches that end past the carried part (no double count).
                let count = text
                    .match_indices(needle)
                    .filter(|(i, _)| i + needle.len() > carried)
                    .count();
                *report.hits.entry((*needle).to_owned()).or_default() += count;
            }
            let keep = overlap.saturating_sub(1).min(window.len());
            carry = window[window.len() - keep..].to_vec();
        }
    }
    report
}

// ---------------------------------------------------------------------------
// The summary line.

pub struct Summary<'a> {
    pub scenario: &'a str,
    pub load: String,
    pub faults: String,
    pub tally: &'a Tally,
    pub recovery: String,
}

pub const SUMMARY_HEADER: &str = "scenario | load | faults injected | sent | linked | dead-lettered | lost | duplicate links | recovery time";

impl Summary<'_> {
    /// Printed to the real stderr (not captured by the test harness) and
    /// appended to `target/tmp/faults-summary.txt`.
    pub fn print(&self) {
        let t = self.tally;
        let line = format!(
            "{} | {} | {} | {} | {} | {} | {} | {} | {}",
            self.scenario,
            self.load,
            self.faults,
            t.sent,
            t.linked,
            t.dead_lettered,
            t.lost,
            t.duplicates,
            self.recovery
        );
        let mut stderr = std::io::stderr();
        let _ = writeln!(stderr, "\nFAULTS {SUMMARY_HEADER}\nFAULTS {line}");
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-summary.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Extra detail under the summary line (real stderr, uncaptured).
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "  {text}");
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
