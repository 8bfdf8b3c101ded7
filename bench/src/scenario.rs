//! One run of one scenario: private topology, pre-fill, start the consumer
//! under test as a child process, time it, check nothing was lost, clean up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lapin::Connection;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use identity_link_worker::broker::topology::Topology;
use mos_sim::SimStats;
use testkit::broker::{try_connect, try_depth as depth};
use testkit::names::{private_vars, with};
use testkit::scrape::Scrape;
use testkit::wait::wait_until;
use testkit::worker::Private;

use crate::bare::BareReport;
use crate::fill::{make_events, prefill};
use crate::procs::{self, Proc};
use crate::stats;

pub const SIM_KEY: &str = "bench-secret-key";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Minimal lapin consumer that only acks, one ack per delivery.
    Bare,
    /// The same with one `multiple` ack per 32 deliveries (a reference, not a target).
    BareBatched,
    /// Worker, every event a new pair, target answers at once.
    Instant,
    /// Worker, every event a new pair, target answers after a fixed latency.
    Latency,
    /// Worker, each pair seen `repeat` times.
    Repeated,
    /// Worker, instant target, a large backlog.
    Large,
    /// Worker, instant target, direct mode (`LINKER_PARTITIONS=0`): no routing step.
    Direct,
    /// Worker run as `Scenario::replicas` processes (distinct `LINKER_REPLICA_ID`s)
    /// against one mos-sim with a fixed latency, on the RabbitMQ 4.0 broker.
    Replicas,
    /// Worker (default configuration), instant mos-sim behind a token-bucket
    /// rate limit (`Scenario::rate_limit`, default burst): 429s, pauses, pacing.
    RateLimit,
    /// Worker against mos-sim's capacity model (`Scenario::capacity` calls in
    /// flight at `latency_ms`, more wait longer, past the hard limit 503):
    /// the adaptive limit (`Scenario::concurrency` None) or a fixed one.
    Capacity,
}

impl Kind {
    pub fn is_bare(self) -> bool {
        matches!(self, Kind::Bare | Kind::BareBatched)
    }

    /// The issue-12 scenarios: 429s and retries are expected and reported,
    /// not a failure (a dead letter or a lost message still is).
    pub fn is_flow(self) -> bool {
        matches!(self, Kind::RateLimit | Kind::Capacity)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub kind: Kind,
    pub name: String,
    pub events: usize,
    /// How many times each (anonymous, user) pair occurs.
    pub repeat: usize,
    /// mos-sim added latency per request.
    pub latency_ms: u64,
    pub runs: usize,
    /// Worker processes (1 for every kind but `Replicas`).
    pub replicas: usize,
    /// The broker of this scenario (`--amqp-url`, or `--amqp-url-4` for `Replicas`).
    pub amqp_url: String,
    /// mos-sim `--rate-limit` (requests per second; burst: its default, ceil(rate)).
    pub rate_limit: Option<f64>,
    /// mos-sim `--capacity` (calls in flight served at `latency_ms`).
    pub capacity: Option<u32>,
    /// mos-sim `--capacity-hard-limit` (503 past it).
    pub capacity_hard_limit: Option<u32>,
    /// `LINKER_CONCURRENCY` of this scenario; None: `--concurrency`.
    pub concurrency: Option<usize>,
    /// Another worker binary (`--before-bin`: an earlier commit's build) for
    /// this scenario; None: the worker under test.
    pub worker_bin: Option<PathBuf>,
}

impl Scenario {
    /// mos-sim's default burst for `--rate-limit`.
    pub fn rate_limit_burst(&self) -> Option<u32> {
        self.rate_limit.map(|r| (r.ceil() as u32).max(1))
    }
}

/// `LINKER_REPLICA_ID`s of the replica scenarios, in start order. Their
/// rendezvous split of the 16 default partitions is 5/6/5, the most even
/// three ids can get (see [`partition_split`]); `a`, `b`, `c` split 5/4/7.
pub const REPLICA_IDS: [&str; 3] = ["x", "y", "z"];

/// The replica ids of a run of `replicas` workers.
pub fn replica_ids(replicas: usize) -> Vec<String> {
    (0..replicas)
        .map(|i| {
            REPLICA_IDS
                .get(i)
                .map_or_else(|| format!("r{i}"), |id| (*id).to_owned())
        })
        .collect()
}

/// How many of `partitions` each replica wins by rendezvous hashing (the
/// worker's own `consumer_priority`, highest wins), in the order of `ids`.
pub fn partition_split(ids: &[String], partitions: u16) -> Vec<usize> {
    let mut counts = vec![0; ids.len()];
    for partition in 0..partitions {
        let winner = (0..ids.len()).max_by_key(|&i| {
            identity_link_worker::broker::partitions::consumer_priority(&ids[i], partition)
        });
        if let Some(i) = winner {
            counts[i] += 1;
        }
    }
    counts
}

/// What every run shares.
pub struct Bench {
    pub worker_bin: PathBuf,
    pub sim_bin: PathBuf,
    pub self_bin: PathBuf,
    pub log_dir: PathBuf,
    pub concurrency: usize,
    pub prefetch: u16,
    pub bare_mode: String,
    pub worker_env: Vec<(String, String)>,
    /// A run fails if no message settles for this long.
    pub stall_limit: Duration,
    pub http: reqwest::Client,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Seconds since the window started.
    pub t: f64,
    /// Messages settled since the window started.
    pub messages: u64,
    /// Resident set size of the consumer process (replicas: their sum), MiB.
    pub rss_mib: f64,
}

/// One worker process of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaResult {
    pub replica_id: String,
    /// Partitions this id wins by rendezvous hashing among the run's ids.
    pub partitions_expected: usize,
    /// `/readyz` `partitions_active` at the end: partitions that delivered to it.
    pub partitions_active: Option<Vec<u16>>,
    /// Messages it settled in the window.
    pub window_messages: u64,
    /// Seconds from the window start until it settled its last message.
    pub done_secs: f64,
    pub peak_rss_mib: f64,
    pub cpu_secs: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub run: usize,
    pub events: u64,
    pub prefill_secs: f64,
    /// Waiting for the broker to go idle after the pre-fill.
    pub settle_secs: f64,
    /// Messages settled inside the measurement window.
    pub window_messages: u64,
    pub window_secs: f64,
    pub msg_per_s: f64,
    /// Delivery-to-ack, from the histogram (worker's own, or the same buckets for bare), ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Exact means over the window (worker: from the histograms' _sum/_count), ms.
    pub mean_ms: Option<f64>,
    pub api_call_mean_ms: Option<f64>,
    /// Bare only: exact quantiles of every sample, ms.
    pub exact_p50_ms: Option<f64>,
    pub exact_p99_ms: Option<f64>,
    /// VmHWM of the consumer process at the end of the run, MiB (replicas:
    /// the sum of theirs, what the deployment holds).
    pub peak_rss_mib: f64,
    /// The consumer's CPU in the window (replicas: summed).
    pub cpu_secs: f64,
    pub cpu_s_per_1k: f64,
    pub sim_cpu_secs: f64,
    pub broker_cpu_secs: f64,
    pub harness_cpu_secs: f64,
    /// Average busy cores of the whole machine during the window.
    pub machine_busy_cores: f64,
    /// CPU (cores, averaged over the window) used by processes that are not
    /// part of the run: other builds and tests on the machine.
    pub other_busy_cores: f64,
    pub api_calls: u64,
    pub calls_per_event: f64,
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub sim: Option<SimStats>,
    pub timeline: Vec<Sample>,
    /// Replica scenarios: every worker process.
    pub replicas: Vec<ReplicaResult>,
    /// Replica scenarios: msg/s from the window start until the first replica
    /// settled its last message (all replicas busy; the rest of the window is
    /// the replicas with more partitions finishing alone).
    pub all_busy_msg_per_s: Option<f64>,
    /// Rate-limit and capacity scenarios: what the worker's flow control did.
    pub flow: Option<FlowResult>,
}

/// The worker's flow-control metrics at the end of a run (whole process
/// lifetime: a pause can begin before the window opens), and the lowest
/// `identity_linker_concurrency_limit` any scrape saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlowResult {
    /// Seconds from the window start until the last message settled (= window_secs).
    pub drain_secs: f64,
    /// Messages settled before the window opened.
    pub settled_before_window: u64,
    /// `identity_linker_rate_limited_total`.
    pub rate_limited: u64,
    /// `identity_linker_rate_limit_paused_seconds_total`.
    pub paused_secs: f64,
    /// `identity_linker_retries_total{kind="immediate"}` / `{kind="delayed"}`.
    pub retries_immediate: u64,
    pub retries_delayed: u64,
    /// `identity_linker_dead_lettered_total`, all reasons.
    pub dead_lettered: u64,
    pub concurrency_limit_min: Option<f64>,
    pub concurrency_limit_end: Option<f64>,
}

/// Sum of the samples of metric `name` (exact series name) whose labels
/// include `label="value"` (if given), from a Prometheus / OpenMetrics text.
pub fn metric(text: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        if let Some((k, v)) = label
            && !labels.contains(&format!("{k}=\"{v}\""))
        {
            continue;
        }
        if let Ok(value) = value.parse::<f64>() {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// The run's private names and worker variables, and where its mos-sim listens.
struct Names {
    private: Private,
    sim_port: u16,
}

fn names(bench: &Bench, scenario: &Scenario, sim_port: u16) -> Result<Names, String> {
    let sim_url = format!("http://127.0.0.1:{sim_port}{}", mos_sim::ENDPOINT_PATH);
    let concurrency = scenario.concurrency.unwrap_or(bench.concurrency);
    let vars = with(
        private_vars("bench", &scenario.amqp_url, &sim_url, SIM_KEY),
        &[
            ("LINKER_CONCURRENCY", &concurrency.to_string()),
            ("LINKER_PREFETCH", &bench.prefetch.to_string()),
        ],
    );
    Ok(Names {
        private: Private::new(vars)?,
        sim_port,
    })
}

/// Waits (at most 20 s) until the broker has used under 5 % of a core over
/// the last 300 ms, twice in a row.
async fn wait_for_quiet_broker(broker: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet = 0;
    let busy = || {
        broker
            .iter()
            .filter_map(|p| procs::cpu_seconds(*p))
            .sum::<f64>()
    };
    while quiet < 2 && Instant::now() < deadline {
        let before = busy();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if (busy() - before) / 0.3 < 0.05 {
            quiet += 1;
        } else {
            quiet = 0;
        }
    }
}

async fn get_ok(http: &reqwest::Client, url: &str) -> bool {
    matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
}

struct Cpu {
    /// Per consumer process (the replicas of a run).
    consumer: Vec<f64>,
    sim: f64,
    /// Per broker pid: short-lived beam.smp processes (rabbitmqctl run by
    /// others) must not make the difference negative.
    broker: Vec<(u32, f64)>,
    harness: f64,
    busy: f64,
}

fn cpu_now(consumers: &[u32], sim: Option<u32>, broker: &[u32]) -> Cpu {
    Cpu {
        consumer: consumers
            .iter()
            .map(|pid| procs::cpu_seconds(*pid).unwrap_or(0.0))
            .collect(),
        sim: sim.and_then(procs::cpu_seconds).unwrap_or(0.0),
        broker: broker
            .iter()
            .filter_map(|pid| Some((*pid, procs::cpu_seconds(*pid)?)))
            .collect(),
        harness: procs::cpu_seconds(std::process::id()).unwrap_or(0.0),
        busy: procs::machine_cpu().0,
    }
}

/// Runs one scenario once. Cleans up (children, queues) whatever happens.
pub async fn run_once(bench: &Bench, scenario: &Scenario, run: usize) -> Result<RunResult, String> {
    let connection = try_connect(&scenario.amqp_url, "bench harness").await?;
    let names = names(bench, scenario, testkit::process::free_port())?;
    let topology = &names.private.topology;
    names.private.declare(&connection).await?;

    let mut sim = None;
    let result = async {
        if !scenario.kind.is_bare() {
            sim = Some(start_sim(bench, scenario, run, names.sim_port).await?);
        }
        measure(
            bench,
            scenario,
            run,
            &connection,
            &names,
            topology,
            sim.as_ref(),
        )
        .await
    }
    .await;

    if let Some(sim) = sim {
        sim.stop(Duration::from_secs(10)).await;
    }
    if let Err(e) = names.private.delete(&connection).await {
        eprintln!("bench: could not delete the private topology: {e}");
    }
    let _ = connection.close(200, "bench done".into()).await;
    result
}

async fn start_sim(
    bench: &Bench,
    scenario: &Scenario,
    run: usize,
    port: u16,
) -> Result<Proc, String> {
    let mut args = vec![
        "--addr".to_owned(),
        format!("127.0.0.1:{port}"),
        "--key".to_owned(),
        SIM_KEY.to_owned(),
        "--pause".to_owned(),
        "0ms".to_owned(),
        "--latency".to_owned(),
        format!("{}ms", scenario.latency_ms),
        // The run reads its counters from /_sim/stats.
        "--control".to_owned(),
    ];
    if let Some(rate) = scenario.rate_limit {
        args.extend(["--rate-limit".to_owned(), rate.to_string()]);
    }
    if let Some(capacity) = scenario.capacity {
        args.extend(["--capacity".to_owned(), capacity.to_string()]);
    }
    if let Some(hard) = scenario.capacity_hard_limit {
        args.extend(["--capacity-hard-limit".to_owned(), hard.to_string()]);
    }
    let log = bench
        .log_dir
        .join(format!("{}-{run}-mos-sim.log", scenario.name));
    let env = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
    let mut sim = Proc::spawn("mos-sim", &bench.sim_bin, &args, &env, log, false)?;
    let health = format!("http://127.0.0.1:{port}/healthz");
    if !wait_until(Duration::from_secs(20), || get_ok(&bench.http, &health)).await {
        let exited = sim.exited();
        sim.stop(Duration::from_secs(2)).await;
        return Err(format!("mos-sim did not become healthy ({exited:?})"));
    }
    Ok(sim)
}

async fn measure(
    bench: &Bench,
    scenario: &Scenario,
    run: usize,
    connection: &Connection,
    names: &Names,
    topology: &Topology,
    sim: Option<&Proc>,
) -> Result<RunResult, String> {
    let n = scenario.events as u64;
    // Pre-fill before the consumer starts: the run measures draining a backlog.
    let seed = 0x5eed_0000 + run as u64 * 7919 + scenario.kind as u64;
    let events = make_events(scenario.events, scenario.repeat.max(1), seed);
    let distinct_pairs = scenario.events.div_ceil(scenario.repeat.max(1)) as u64;
    let prefill_time = prefill(connection, &topology.exchange, &events, 4).await?;
    drop(events);
    let ready_depth = depth(connection, &topology.queue).await?;
    if u64::from(ready_depth) != n {
        return Err(format!(
            "after pre-fill the queue holds {ready_depth} messages, expected {n}"
        ));
    }
    let broker = procs::broker_pids();
    // The broker keeps working after a pre-fill (and after the previous
    // run's queues were deleted): writing segments, compacting its logs.
    // Start only once it is idle, or runs measure each other's leftovers.
    let settle_started = Instant::now();
    wait_for_quiet_broker(&broker).await;
    let settle_secs = settle_started.elapsed().as_secs_f64();
    let mut result = RunResult {
        scenario: scenario.name.clone(),
        run,
        events: n,
        prefill_secs: prefill_time.as_secs_f64(),
        settle_secs,
        ..RunResult::default()
    };
    let sim_pid = sim.map(|s| s.pid);
    if scenario.kind.is_bare() {
        measure_bare(bench, scenario, run, topology, &broker, &mut result).await?;
    } else {
        measure_worker(bench, scenario, run, names, sim_pid, &broker, &mut result).await?;
        let sim_stats = testkit::sim::remote_stats(&bench.http, names.sim_port).await?;
        result.api_calls = sim_stats.requests;
        result.calls_per_event = sim_stats.requests as f64 / n as f64;
        // Nothing lost, nothing linked twice.
        if sim_stats.links != distinct_pairs {
            return Err(format!(
                "mos-sim holds {} links, expected {distinct_pairs} (one per pair)",
                sim_stats.links
            ));
        }
        if sim_stats.duplicates != 0 {
            return Err(format!(
                "mos-sim saw {} duplicate creates",
                sim_stats.duplicates
            ));
        }
        let linked = result.outcomes.get("linked").copied().unwrap_or(0)
            + result.outcomes.get("already_linked").copied().unwrap_or(0);
        if sim_stats.creates != distinct_pairs {
            return Err(format!(
                "mos-sim created {} links, expected {distinct_pairs}",
                sim_stats.creates
            ));
        }
        if linked != n {
            return Err(format!(
                "{linked} of {n} messages were linked; outcomes {:?}",
                result.outcomes
            ));
        }
        result.sim = Some(sim_stats);
    }
    // The backlog is gone and nothing went to a retry or dead-letter queue.
    for queue in topology.queues() {
        let left = depth(connection, queue).await?;
        if left != 0 {
            return Err(format!("{left} messages left in {queue}"));
        }
    }
    Ok(result)
}

/// The worker processes of one run, each with its ops port and log.
struct Replica {
    id: Option<String>,
    proc: Proc,
    readyz: String,
    metrics: String,
    log: PathBuf,
}

/// Starts `scenario.replicas` worker processes at once (one is the usual
/// worker run; only the replica scenarios set `LINKER_REPLICA_ID`).
fn spawn_replicas(
    bench: &Bench,
    scenario: &Scenario,
    run: usize,
    names: &Names,
) -> Result<Vec<Replica>, String> {
    let ids: Vec<Option<String>> = if scenario.kind == Kind::Replicas {
        replica_ids(scenario.replicas)
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; scenario.replicas.max(1)]
    };
    let mut replicas = Vec::new();
    for id in ids {
        let ops_port = testkit::process::free_port();
        let mut env = names.private.vars.clone();
        env.push(("LINKER_HTTP_ADDR".into(), format!("127.0.0.1:{ops_port}")));
        if let Some(id) = &id {
            env.push(("LINKER_REPLICA_ID".into(), id.clone()));
        }
        env.extend(bench.worker_env.iter().cloned());
        if scenario.kind == Kind::Direct {
            env.push(("LINKER_PARTITIONS".into(), "0".into()));
        }
        let log = bench.log_dir.join(match &id {
            Some(id) => format!("{}-{run}-worker-{id}.log", scenario.name),
            None => format!("{}-{run}-worker.log", scenario.name),
        });
        let proc = Proc::spawn(
            "identity-link-worker",
            scenario.worker_bin.as_ref().unwrap_or(&bench.worker_bin),
            &["run".to_owned()],
            &env,
            log.clone(),
            false,
        )?;
        replicas.push(Replica {
            id,
            proc,
            readyz: format!("http://127.0.0.1:{ops_port}/readyz"),
            metrics: format!("http://127.0.0.1:{ops_port}/metrics"),
            log,
        });
    }
    Ok(replicas)
}

/// Sums scrapes of several replicas (counters, histogram buckets, sums).
fn merge(scrapes: Vec<Scrape>) -> Scrape {
    let mut iter = scrapes.into_iter();
    let Some(mut total) = iter.next() else {
        return Scrape::default();
    };
    for s in iter {
        for (k, v) in s.outcomes {
            *total.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in s.dead_lettered {
            *total.dead_lettered.entry(k).or_default() += v;
        }
        for (k, v) in s.skipped {
            *total.skipped.entry(k).or_default() += v;
        }
        // The same binary: the same bucket bounds, in the same order.
        for (bucket, (_, count)) in total.duration_buckets.iter_mut().zip(&s.duration_buckets) {
            bucket.1 += count;
        }
        total.in_flight += s.in_flight;
        total.api_requests += s.api_requests;
        total.api_duration.0 += s.api_duration.0;
        total.api_duration.1 += s.api_duration.1;
        total.message_duration.0 += s.message_duration.0;
        total.message_duration.1 += s.message_duration.1;
        total.cache_hits += s.cache_hits;
        total.retries += s.retries;
    }
    total
}

/// One scrape of every replica, summed, and each replica's settled count;
/// timed at the middle of the (concurrent) requests.
async fn scrape_all(
    http: &reqwest::Client,
    replicas: &[Replica],
) -> Result<(Scrape, Vec<u64>, Instant), String> {
    let before = Instant::now();
    let scrapes = futures_util::future::try_join_all(
        replicas
            .iter()
            .map(|r| testkit::scrape::fetch(http, &r.metrics)),
    )
    .await?;
    let after = Instant::now();
    let settled = scrapes.iter().map(Scrape::settled).collect();
    Ok((merge(scrapes), settled, before + (after - before) / 2))
}

/// `/readyz`'s `partitions_active` of one replica (None if absent).
async fn partitions_active(http: &reqwest::Client, url: &str) -> Option<Vec<u16>> {
    let body: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
    serde_json::from_value(body.get("partitions_active")?.clone()).ok()
}

async fn measure_worker(
    bench: &Bench,
    scenario: &Scenario,
    run: usize,
    names: &Names,
    sim_pid: Option<u32>,
    broker: &[u32],
    result: &mut RunResult,
) -> Result<(), String> {
    let n = result.events;
    let mut replicas = spawn_replicas(bench, scenario, run, names)?;
    let pids: Vec<u32> = replicas.iter().map(|r| r.proc.pid).collect();
    let rss_sum = |pids: &[u32]| pids.iter().filter_map(|p| procs::rss_mib(*p)).sum::<f64>();
    let outcome = async {
        // Started together; the window opens once every replica is ready.
        for replica in &mut replicas {
            let ready = wait_until(Duration::from_secs(60), || {
                get_ok(&bench.http, &replica.readyz)
            })
            .await;
            if !ready {
                return Err(format!(
                    "the worker did not become ready within 60 s ({:?}); see {}",
                    replica.proc.exited(),
                    replica.log.display()
                ));
            }
        }
        // Window start: the first scrape after ready (messages already
        // settled by then are left out of the rate).
        let (start, start_each, t0) = scrape_all(&bench.http, &replicas).await?;
        let cpu0 = cpu_now(&pids, sim_pid, broker);
        let m0 = start.settled();
        let mut last = (m0, Instant::now());
        let mut next_sample = Instant::now();
        // Every scrape: (time, total settled, settled per replica).
        let mut history: Vec<(Instant, u64, Vec<u64>)> = Vec::new();
        let flow_kind = scenario.kind.is_flow();
        let mut limit_min: Option<f64> = None;
        let (end, end_each, t1) = loop {
            let (now, each, t) = scrape_all(&bench.http, &replicas).await?;
            let mut settled = now.settled();
            if flow_kind {
                // A delayed retry is not a final outcome: its message comes back.
                settled -= now.outcome("retried");
                if let Some(l) = metric(&now.text, "identity_linker_concurrency_limit", None) {
                    limit_min = Some(limit_min.map_or(l, |m: f64| m.min(l)));
                }
            }
            history.push((t, settled, each.clone()));
            if Instant::now() >= next_sample {
                result.timeline.push(Sample {
                    t: (t - t0).as_secs_f64(),
                    messages: settled - m0,
                    rss_mib: rss_sum(&pids),
                });
                next_sample += Duration::from_millis(250);
            }
            if settled >= n {
                break (now, each, t);
            }
            if settled != last.0 {
                last = (settled, Instant::now());
            } else if last.1.elapsed() > bench.stall_limit {
                return Err(format!(
                    "stalled: {settled} of {n} settled, no progress for {:?}; outcomes {:?}",
                    bench.stall_limit, now.outcomes
                ));
            }
            for replica in &mut replicas {
                if let Some(status) = replica.proc.exited() {
                    return Err(format!("the worker exited during the run: {status}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let cpu1 = cpu_now(&pids, sim_pid, broker);
        result.peak_rss_mib = pids.iter().filter_map(|p| procs::peak_rss_mib(*p)).sum();
        result.timeline.push(Sample {
            t: (t1 - t0).as_secs_f64(),
            messages: end.settled() - m0,
            rss_mib: rss_sum(&pids),
        });
        fill_window(result, n - m0, t1 - t0, &cpu0, &cpu1);
        if scenario.kind == Kind::Replicas {
            let ids: Vec<String> = replicas.iter().filter_map(|r| r.id.clone()).collect();
            let partitions = u16::try_from(names.private.topology.partitions.len()).unwrap_or(0);
            let split = partition_split(&ids, partitions);
            // When each replica settled its last message.
            let done: Vec<Instant> = (0..replicas.len())
                .map(|i| {
                    history
                        .iter()
                        .find(|(_, _, each)| each[i] >= end_each[i])
                        .map_or(t1, |h| h.0)
                })
                .collect();
            for (i, replica) in replicas.iter().enumerate() {
                result.replicas.push(ReplicaResult {
                    replica_id: replica.id.clone().unwrap_or_default(),
                    partitions_expected: split.get(i).copied().unwrap_or(0),
                    partitions_active: partitions_active(&bench.http, &replica.readyz).await,
                    window_messages: end_each[i] - start_each[i],
                    done_secs: (done[i] - t0).as_secs_f64(),
                    peak_rss_mib: procs::peak_rss_mib(replica.proc.pid).unwrap_or(0.0),
                    cpu_secs: cpu1.consumer[i] - cpu0.consumer[i],
                });
            }
            // All busy: until the first replica ran out of messages.
            if let Some(first) = done.iter().min() {
                let settled = history.iter().find(|h| h.0 == *first).map_or(n, |h| h.1);
                let secs = (*first - t0).as_secs_f64();
                if secs > 0.0 {
                    result.all_busy_msg_per_s = Some((settled - m0) as f64 / secs);
                }
            }
        }
        let buckets = stats::bucket_delta(&end.duration_buckets, &start.duration_buckets);
        result.p50_ms = stats::histogram_quantile(0.5, &buckets).unwrap_or(0.0) * 1e3;
        result.p99_ms = stats::histogram_quantile(0.99, &buckets).unwrap_or(0.0) * 1e3;
        result.mean_ms =
            stats::window_mean(end.message_duration, start.message_duration).map(|m| m * 1e3);
        result.api_call_mean_ms =
            stats::window_mean(end.api_duration, start.api_duration).map(|m| m * 1e3);
        result.outcomes = end.outcomes.clone();
        if flow_kind {
            let text = &end.text;
            let count = |name: &str, label| metric(text, name, label).unwrap_or(0.0);
            let flow = FlowResult {
                drain_secs: result.window_secs,
                settled_before_window: m0,
                rate_limited: count("identity_linker_rate_limited_total", None) as u64,
                paused_secs: count("identity_linker_rate_limit_paused_seconds_total", None),
                retries_immediate: count(
                    "identity_linker_retries_total",
                    Some(("kind", "immediate")),
                ) as u64,
                retries_delayed: count("identity_linker_retries_total", Some(("kind", "delayed")))
                    as u64,
                dead_lettered: count("identity_linker_dead_lettered_total", None) as u64,
                concurrency_limit_min: limit_min,
                concurrency_limit_end: metric(text, "identity_linker_concurrency_limit", None),
            };
            result.flow = Some(flow.clone());
            // Retries (immediate or delayed) are reported, not a failure; a
            // message that did not end linked is.
            if end.outcome("dead_lettered") + end.outcome("skipped") != 0 {
                return Err(format!(
                    "unexpected outcomes: {:?}; dead letters {:?}; flow {flow:?}",
                    end.outcomes, end.dead_lettered
                ));
            }
            let linked = end.settled() - end.outcome("retried");
            if linked != n {
                return Err(format!(
                    "{linked} linked, expected {n}; outcomes {:?}",
                    end.outcomes
                ));
            }
            return Ok(());
        }
        if end.outcome("dead_lettered") + end.outcome("retried") + end.outcome("skipped") != 0 {
            return Err(format!("unexpected outcomes: {:?}", end.outcomes));
        }
        if end.settled() != n {
            // More than n: some were settled twice (redelivered after a lost session).
            return Err(format!(
                "{} settled, expected {n}; outcomes {:?}",
                end.settled(),
                end.outcomes
            ));
        }
        if end.retries != 0 {
            return Err(format!("{} retries during the run", end.retries));
        }
        Ok(())
    }
    .await;
    // Every replica gets SIGTERM and must exit 0; the first problem is reported.
    let mut outcome = outcome;
    for replica in replicas {
        let code = replica.proc.stop(Duration::from_secs(30)).await;
        let log = replica.log;
        outcome = exited_0(outcome, code, |code| {
            format!(
                "the worker exited with {code:?} on SIGTERM; see {}",
                log.display()
            )
        });
    }
    outcome
}

/// The measurement's own error first; else the consumer must have exited 0.
fn exited_0(
    outcome: Result<(), String>,
    code: Option<i32>,
    describe: impl FnOnce(Option<i32>) -> String,
) -> Result<(), String> {
    outcome?;
    if code != Some(0) {
        return Err(describe(code));
    }
    Ok(())
}

fn fill_window(result: &mut RunResult, messages: u64, window: Duration, cpu0: &Cpu, cpu1: &Cpu) {
    let secs = window.as_secs_f64().max(1e-9);
    result.window_messages = messages;
    result.window_secs = secs;
    result.msg_per_s = messages as f64 / secs;
    result.cpu_secs = cpu1.consumer.iter().sum::<f64>() - cpu0.consumer.iter().sum::<f64>();
    result.cpu_s_per_1k = result.cpu_secs / (messages.max(1) as f64 / 1000.0);
    result.sim_cpu_secs = cpu1.sim - cpu0.sim;
    result.broker_cpu_secs = cpu1
        .broker
        .iter()
        .filter_map(|(pid, end)| {
            let start = cpu0.broker.iter().find(|(p, _)| p == pid)?.1;
            Some(end - start)
        })
        .sum();
    result.harness_cpu_secs = cpu1.harness - cpu0.harness;
    let busy = cpu1.busy - cpu0.busy;
    result.machine_busy_cores = busy / secs;
    let ours =
        result.cpu_secs + result.sim_cpu_secs + result.broker_cpu_secs + result.harness_cpu_secs;
    result.other_busy_cores = ((busy - ours) / secs).max(0.0);
}

async fn next_line(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
    limit: Duration,
) -> Result<(Instant, String), String> {
    tokio::time::timeout(limit, rx.recv())
        .await
        .map_err(|_| format!("bare consumer silent for {limit:?}"))?
        .ok_or_else(|| "bare consumer exited early".to_owned())
}

async fn measure_bare(
    bench: &Bench,
    scenario: &Scenario,
    run: usize,
    topology: &Topology,
    broker: &[u32],
    result: &mut RunResult,
) -> Result<(), String> {
    let n = result.events;
    let args = vec![
        "__bare-consumer".to_owned(),
        scenario.amqp_url.clone(),
        topology.queue.clone(),
        n.to_string(),
        bench.prefetch.to_string(),
        if scenario.kind == Kind::BareBatched {
            "multiple".to_owned()
        } else {
            bench.bare_mode.clone()
        },
    ];
    let log = bench
        .log_dir
        .join(format!("{}-{run}-bare.log", scenario.name));
    let mut bare = Proc::spawn("bare consumer", &bench.self_bin, &args, &[], log, true)?;
    let stdout = bare.child.stdout.take().ok_or("no stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let outcome = async {
        let (t0, line) = next_line(&mut rx, bench.stall_limit).await?;
        if line != "ready" {
            return Err(format!("bare consumer said {line:?}"));
        }
        let cpu0 = cpu_now(&[bare.pid], None, broker);
        let mut last_progress = (0u64, Instant::now());
        let (t1, report) = loop {
            let (t, line) = next_line(&mut rx, bench.stall_limit).await?;
            if let Some(count) = line.strip_prefix("progress ") {
                let count: u64 = count.parse().unwrap_or(0);
                result.timeline.push(Sample {
                    t: (t - t0).as_secs_f64(),
                    messages: count,
                    rss_mib: procs::rss_mib(bare.pid).unwrap_or(0.0),
                });
                if count != last_progress.0 {
                    last_progress = (count, Instant::now());
                } else if last_progress.1.elapsed() > bench.stall_limit {
                    return Err(format!("bare consumer stalled at {count} of {n}"));
                }
            } else if let Some(json) = line.strip_prefix("done ") {
                let report: BareReport =
                    serde_json::from_str(json).map_err(|e| format!("bare report: {e}"))?;
                break (t, report);
            }
        };
        let cpu1 = cpu_now(&[bare.pid], None, broker);
        result.peak_rss_mib = procs::peak_rss_mib(bare.pid).unwrap_or(0.0);
        result.timeline.push(Sample {
            t: (t1 - t0).as_secs_f64(),
            messages: report.acked,
            rss_mib: procs::rss_mib(bare.pid).unwrap_or(0.0),
        });
        fill_window(result, report.acked, t1 - t0, &cpu0, &cpu1);
        let buckets: Vec<(f64, u64)> = stats::worker_duration_bounds()
            .into_iter()
            .chain(std::iter::once(f64::INFINITY))
            .zip(report.cumulative.iter().copied())
            .collect();
        result.p50_ms = stats::histogram_quantile(0.5, &buckets).unwrap_or(0.0) * 1e3;
        result.p99_ms = stats::histogram_quantile(0.99, &buckets).unwrap_or(0.0) * 1e3;
        result.exact_p50_ms = Some(report.exact_p50 * 1e3);
        result.exact_p99_ms = Some(report.exact_p99 * 1e3);
        result.outcomes.insert("acked".into(), report.acked);
        if report.acked != n {
            return Err(format!("bare consumer acked {} of {n}", report.acked));
        }
        Ok(())
    }
    .await;
    let code = bare.finish(Duration::from_secs(10)).await;
    exited_0(outcome, code, |code| {
        format!("the bare consumer exited with {code:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_the_series_with_the_label() {
        let text = "# TYPE identity_linker_retries counter\n\
            identity_linker_retries_total{kind=\"immediate\"} 3\n\
            identity_linker_retries_total{kind=\"delayed\"} 2\n\
            identity_linker_rate_limit_paused_seconds_total 1.5\n\
            identity_linker_concurrency_limit 117\n\
            identity_linker_concurrency_limit_other 1\n\
            # EOF\n";
        let delayed = Some(("kind", "delayed"));
        assert_eq!(
            metric(text, "identity_linker_retries_total", delayed),
            Some(2.0)
        );
        assert_eq!(
            metric(text, "identity_linker_retries_total", None),
            Some(5.0)
        );
        assert_eq!(
            metric(
                text,
                "identity_linker_rate_limit_paused_seconds_total",
                None
            ),
            Some(1.5)
        );
        assert_eq!(
            metric(text, "identity_linker_concurrency_limit", None),
            Some(117.0)
        );
        assert_eq!(
            metric(text, "identity_linker_rate_limited_total", None),
            None
        );
    }
}
