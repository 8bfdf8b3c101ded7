//! Benchmark harness for identity-link-worker (issue 3, BENCHMARKS.md).
//!
//! `cargo run --release --bin bench -- [options]`: against the local RabbitMQ
//! and mos-sim, pre-fills a private queue with realistic events, then drains
//! it with (1) a bare lapin consumer that only acks and (2) the worker, run as
//! a child process (`target/release/identity-link-worker run`), in several
//! scenarios, and as 1 or N replicas (`replicas-N`: N worker processes with
//! distinct `LINKER_REPLICA_ID`s against a 100 ms mos-sim on the RabbitMQ 4.0
//! broker); prints a table, writes JSON and a PNG chart. `--smoke` is the
//! quick CI variant (no timing assertions; fails if a run does not complete
//! or loses a message).

mod bare;
mod chart;
mod fill;
mod procs;
mod report;
mod scenario;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use scenario::{Bench, Kind, Scenario};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Throughput, latency, memory and API calls of identity-link-worker against the local RabbitMQ and mos-sim"
)]
struct Args {
    /// Events pre-filled per run.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Runs per scenario (median and min–max are reported). Rounds are
    /// interleaved: run 1 of every scenario, then run 2, ...
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Scenarios to run, comma list of bare,bare-batched,instant,direct,latency,repeated,
    /// replicas-1,replicas-3 (any replicas-N up to 16; large is added by --large),
    /// ratelimit-200,ratelimit-500 (any ratelimit-R: mos-sim --rate-limit R, default burst),
    /// capacity (adaptive limit), capacity-fixed-16 (any capacity-fixed-C: LINKER_CONCURRENCY=C).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bare,bare-batched,instant,direct,latency,repeated,replicas-1,replicas-3,ratelimit-200,ratelimit-500,capacity,capacity-fixed-16,capacity-fixed-24"
    )]
    scenarios: Vec<String>,
    /// Quick CI check: --events 2000 --runs 1, results to target/bench-smoke/.
    #[arg(long)]
    smoke: bool,
    /// Also drain a large backlog (--large-events) once, to show throughput and memory stay flat.
    #[arg(long)]
    large: bool,
    #[arg(long, default_value_t = 1_000_000)]
    large_events: usize,
    #[arg(long, default_value_t = 1)]
    large_runs: usize,
    /// Latency of mos-sim in the latency scenario, ms.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Events pre-filled per run of the replicas-N scenarios (--smoke: at most 2000).
    #[arg(long, default_value_t = 20_000)]
    replica_events: usize,
    /// Latency of mos-sim in the replicas-N scenarios, ms.
    #[arg(long, default_value_t = 100)]
    replica_latency_ms: u64,
    /// Broker of the replicas-N scenarios: RabbitMQ 4.0 (`scripts/ensure-rabbitmq4`), which
    /// hands each partition to its highest-priority consumer. Default: RABBITMQ4_URL, else
    /// amqp://guest:guest@127.0.0.1:5673/%2f.
    #[arg(long, hide_env_values = true)]
    amqp_url_4: Option<String>,
    /// Events pre-filled per run of the ratelimit-R scenarios (--smoke: at most 1000).
    #[arg(long, default_value_t = 20_000)]
    rate_events: usize,
    /// Events pre-filled per run of the capacity scenarios (--smoke: at most 2000).
    #[arg(long, default_value_t = 50_000)]
    capacity_events: usize,
    /// mos-sim --capacity of the capacity scenarios: calls in flight served at --capacity-latency-ms.
    /// 16 at 10 ms = 1 600/s, below what two cores drain at 20 ms (about
    /// 2 500/s), so that the endpoint, not the machine, is the limit.
    #[arg(long, default_value_t = 16)]
    capacity: u32,
    /// mos-sim --latency of the capacity scenarios, ms (capacity / latency = the throughput capacity).
    #[arg(long, default_value_t = 10)]
    capacity_latency_ms: u64,
    /// mos-sim --capacity-hard-limit of the capacity scenarios (503 past it).
    /// Above the default ceiling (128): the scenario measures the latency
    /// signal, not a storm of 503s.
    #[arg(long, default_value_t = 192)]
    capacity_hard_limit: u32,
    /// How often each pair occurs in the repeated-logins scenario.
    #[arg(long, default_value_t = 10)]
    repeat: usize,
    /// LINKER_CONCURRENCY for the worker.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// LINKER_PREFETCH for the worker, and the bare consumer's prefetch.
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
    /// How the bare consumer acks: pipelined (default) or sequential (await each ack).
    #[arg(long, default_value = "pipelined")]
    bare_mode: String,
    #[arg(long, env = "LINKER_AMQP_URL", default_value = testkit::broker::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// JSON results (default bench/results/latest.json; with --smoke target/bench-smoke/smoke.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// PNG chart (default: throughput.png beside --out).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Worker binary (default: target/release/identity-link-worker, built first).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// A worker binary built from an earlier commit: the instant and 20 ms
    /// scenarios run with it too, in the same rounds ("… (before)"), so the
    /// report compares the two side by side.
    #[arg(long)]
    before_bin: Option<PathBuf>,
    /// mos-sim binary (default: target/release/mos-sim, built first).
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// Do not run `cargo build --release` for the worker and mos-sim first.
    #[arg(long)]
    no_build: bool,
    /// A run fails when no message settles for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
    /// Extra environment for the worker process only, NAME=VALUE (repeatable), for experiments.
    #[arg(long = "worker-env", value_name = "NAME=VALUE")]
    worker_env: Vec<String>,
    /// Free text stored in the JSON (e.g. which optimisation is being measured).
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    kernel: String,
    rabbitmq: String,
    /// The broker of the replicas-N scenarios (management API on 15673).
    rabbitmq_4: String,
    load_before: String,
    load_after: String,
}

#[derive(Serialize)]
struct Output<'a> {
    label: &'a str,
    started_at: String,
    command: String,
    machine: Machine,
    events: usize,
    runs: usize,
    concurrency: usize,
    prefetch: u16,
    latency_ms: u64,
    replica_events: usize,
    replica_latency_ms: u64,
    rate_events: usize,
    capacity_events: usize,
    capacity: u32,
    capacity_latency_ms: u64,
    capacity_hard_limit: u32,
    bare_mode: &'a str,
    bare_runs_in: &'static str,
    summaries: &'a [report::Summary],
    targets: &'a [report::Target],
}

fn machine(rabbitmq: String, rabbitmq_4: String) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        rabbitmq,
        rabbitmq_4,
        load_before: procs::load_average(),
        load_after: String::new(),
    }
}

async fn rabbitmq_version(management_port: u16) -> String {
    // The management API (enabled by scripts/ensure-rabbitmq), else rabbitmqctl.
    let overview = async {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{management_port}/api/overview"))
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(format!(
            "RabbitMQ {} on Erlang {}",
            v["rabbitmq_version"].as_str()?,
            v["erlang_version"].as_str().unwrap_or("?")
        ))
    };
    if let Some(version) = overview.await {
        return version;
    }
    if management_port != 15672 {
        return "RabbitMQ (version unknown)".into();
    }
    std::process::Command::new("rabbitmqctl")
        .args(["-q", "version"])
        .output()
        .ok()
        .map(|o| format!("RabbitMQ {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| "RabbitMQ (version unknown)".into())
}

fn build(root: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench: building the worker and mos-sim (release)");
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "identity-link-worker",
            "-p",
            "mos-sim",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build failed: {status}"))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("__bare-consumer") {
        return bare::child_main(&argv[2..]).await;
    }
    let mut args = Args::parse();
    match run(&mut args, &argv).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &mut Args, argv: &[String]) -> Result<bool, String> {
    // The workspace root: the bench crate is one folder below it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    if args.smoke {
        args.events = args.events.min(2000);
        args.runs = 1;
        args.large_events = args.large_events.min(20_000);
        args.replica_events = args.replica_events.min(2000);
        args.rate_events = args.rate_events.min(1000);
        args.capacity_events = args.capacity_events.min(2000);
    }
    if args.events == 0
        || args.runs == 0
        || args.replica_events == 0
        || args.rate_events == 0
        || args.capacity_events == 0
    {
        return Err(
            "--events, --replica-events, --rate-events, --capacity-events and --runs must be at least 1"
                .into(),
        );
    }
    if args.capacity == 0 || args.capacity_hard_limit < args.capacity {
        return Err(
            "--capacity must be at least 1 and --capacity-hard-limit at least --capacity".into(),
        );
    }
    let out = args.out.clone().unwrap_or_else(|| {
        if args.smoke {
            root.join("target/bench-smoke/smoke.json")
        } else {
            root.join("bench/results/latest.json")
        }
    });
    let chart_path = args
        .chart
        .clone()
        .unwrap_or_else(|| out.with_file_name("throughput.png"));
    let self_bin = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let bin_dir = self_bin
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target/release"));
    if !args.no_build && (args.worker_bin.is_none() || args.sim_bin.is_none()) {
        build(&root)?;
    }
    let log_dir = root.join("target/bench-logs");
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let amqp_url_4 = args
        .amqp_url_4
        .clone()
        .unwrap_or_else(testkit::broker::second_amqp_url);
    let bench = Bench {
        worker_bin: args
            .worker_bin
            .clone()
            .unwrap_or_else(|| bin_dir.join("identity-link-worker")),
        sim_bin: args
            .sim_bin
            .clone()
            .unwrap_or_else(|| bin_dir.join("mos-sim")),
        self_bin,
        log_dir,
        concurrency: args.concurrency,
        prefetch: args.prefetch,
        bare_mode: args.bare_mode.clone(),
        worker_env: args
            .worker_env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| format!("--worker-env wants NAME=VALUE, got {kv:?}"))
            })
            .collect::<Result<_, _>>()?,
        stall_limit: Duration::from_secs(args.stall_secs),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?,
    };
    for bin in [&bench.worker_bin, &bench.sim_bin] {
        if !bin.exists() {
            return Err(format!("{} does not exist", bin.display()));
        }
    }

    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        if let Some(count) = name.strip_prefix("replicas-") {
            let replicas: usize = count
                .parse()
                .ok()
                .filter(|r| (1..=16).contains(r))
                .ok_or_else(|| format!("{name:?}: replicas-N wants N from 1 to 16"))?;
            scenarios.push(Scenario {
                kind: Kind::Replicas,
                name: format!(
                    "{replicas} replica{}, {} ms, 4.0",
                    if replicas == 1 { "" } else { "s" },
                    args.replica_latency_ms
                ),
                events: args.replica_events,
                repeat: 1,
                latency_ms: args.replica_latency_ms,
                runs: args.runs,
                replicas,
                amqp_url: amqp_url_4.clone(),
                rate_limit: None,
                capacity: None,
                capacity_hard_limit: None,
                concurrency: None,
                worker_bin: None,
            });
            continue;
        }
        if let Some(rate) = name.strip_prefix("ratelimit-") {
            let rate: f64 = rate
                .parse()
                .ok()
                .filter(|r: &f64| r.is_finite() && *r > 0.0)
                .ok_or_else(|| format!("{name:?}: ratelimit-R wants a rate above 0"))?;
            scenarios.push(Scenario {
                kind: Kind::RateLimit,
                name: format!("worker, rate limit {rate} per s"),
                events: args.rate_events,
                repeat: 1,
                latency_ms: 0,
                runs: args.runs,
                replicas: 1,
                amqp_url: args.amqp_url.clone(),
                rate_limit: Some(rate),
                capacity: None,
                capacity_hard_limit: None,
                concurrency: None,
                worker_bin: None,
            });
            continue;
        }
        let fixed = match name.as_str() {
            "capacity" => Some(None),
            other => match other.strip_prefix("capacity-fixed-") {
                Some(c) => Some(Some(
                    c.parse::<usize>()
                        .ok()
                        .filter(|c| *c > 0)
                        .ok_or_else(|| format!("{name:?}: capacity-fixed-C wants C above 0"))?,
                )),
                None => None,
            },
        };
        if let Some(fixed) = fixed {
            scenarios.push(Scenario {
                kind: Kind::Capacity,
                name: format!(
                    "worker, capacity {} at {} ms, {}",
                    args.capacity,
                    args.capacity_latency_ms,
                    match fixed {
                        None => format!("adaptive (ceiling {})", args.concurrency),
                        Some(c) => format!("fixed {c}"),
                    }
                ),
                events: args.capacity_events,
                repeat: 1,
                latency_ms: args.capacity_latency_ms,
                runs: args.runs,
                replicas: 1,
                amqp_url: args.amqp_url.clone(),
                rate_limit: None,
                capacity: Some(args.capacity),
                capacity_hard_limit: Some(args.capacity_hard_limit),
                concurrency: fixed,
                worker_bin: None,
            });
            continue;
        }
        let (kind, repeat, latency_ms, label) = match name.as_str() {
            "bare" => (Kind::Bare, 1, 0, "bare".to_owned()),
            "bare-batched" => (Kind::BareBatched, 1, 0, "bare, batched acks".to_owned()),
            "instant" => (Kind::Instant, 1, 0, "worker, instant".to_owned()),
            "direct" => (Kind::Direct, 1, 0, "worker, instant, direct".to_owned()),
            "latency" => (
                Kind::Latency,
                1,
                args.latency_ms,
                format!("worker, {} ms", args.latency_ms),
            ),
            "repeated" => (
                Kind::Repeated,
                args.repeat,
                0,
                format!("repeated x{}", args.repeat),
            ),
            other => return Err(format!("unknown scenario {other:?}")),
        };
        scenarios.push(Scenario {
            kind,
            name: label,
            events: args.events,
            repeat,
            latency_ms,
            runs: args.runs,
            replicas: 1,
            amqp_url: args.amqp_url.clone(),
            rate_limit: None,
            capacity: None,
            capacity_hard_limit: None,
            concurrency: None,
            worker_bin: None,
        });
    }
    if let Some(before) = &args.before_bin {
        if !before.exists() {
            return Err(format!("--before-bin {} does not exist", before.display()));
        }
        let twins: Vec<Scenario> = scenarios
            .iter()
            .filter(|s| matches!(s.kind, Kind::Instant | Kind::Latency))
            .map(|s| Scenario {
                name: format!("{} (before)", s.name),
                worker_bin: Some(before.clone()),
                ..s.clone()
            })
            .collect();
        scenarios.extend(twins);
    }
    if args.large {
        scenarios.push(Scenario {
            kind: Kind::Large,
            name: "large backlog".into(),
            events: args.large_events,
            repeat: 1,
            latency_ms: 0,
            runs: args.large_runs,
            replicas: 1,
            amqp_url: args.amqp_url.clone(),
            rate_limit: None,
            capacity: None,
            capacity_hard_limit: None,
            concurrency: None,
            worker_bin: None,
        });
    }

    let rabbitmq_4 = if scenarios.iter().any(|s| s.kind == Kind::Replicas) {
        rabbitmq_version(15673).await
    } else {
        String::new()
    };
    let mut machine = machine(rabbitmq_version(15672).await, rabbitmq_4);
    eprintln!(
        "bench: {} events x {} runs; machine {} ({} cores), {}; load {}",
        args.events, args.runs, machine.cpu, machine.cores, machine.rabbitmq, machine.load_before
    );
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();

    let mut results = Vec::new();
    let rounds = scenarios.iter().map(|s| s.runs).max().unwrap_or(0);
    for round in 1..=rounds {
        for (index, scenario) in scenarios.iter().enumerate() {
            if round > scenario.runs {
                continue;
            }
            eprint!(
                "bench: {} run {round}/{} ({} events)... ",
                scenario.name, scenario.runs, scenario.events
            );
            let result = scenario::run_once(&bench, scenario, round).await;
            match &result {
                Ok(r) => eprintln!(
                    "{:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms, RSS {:.1} MiB, {:.3} CPU s/1k, {:.3} calls/event, other load {:.2} cores",
                    r.msg_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.peak_rss_mib,
                    r.cpu_s_per_1k,
                    r.calls_per_event,
                    r.other_busy_cores
                ),
                Err(e) => eprintln!("FAILED: {e}"),
            }
            results.push((index, result));
        }
    }
    machine.load_after = procs::load_average();

    let summaries = report::summarise(&scenarios, &results, args.concurrency);
    let targets = report::targets(&summaries);
    println!("\n{}", report::table(&summaries));
    let flow = report::flow_table(&summaries);
    if !flow.is_empty() {
        println!("{flow}");
    }
    println!("{}", report::targets_table(&targets));
    println!("{}", report::cpu_table(&summaries));
    let output = Output {
        label: &args.label,
        started_at,
        command: argv.join(" "),
        machine,
        events: args.events,
        runs: args.runs,
        concurrency: args.concurrency,
        prefetch: args.prefetch,
        latency_ms: args.latency_ms,
        replica_events: args.replica_events,
        replica_latency_ms: args.replica_latency_ms,
        rate_events: args.rate_events,
        capacity_events: args.capacity_events,
        capacity: args.capacity,
        capacity_latency_ms: args.capacity_latency_ms,
        capacity_hard_limit: args.capacity_hard_limit,
        bare_mode: &args.bare_mode,
        bare_runs_in: "a child process (the bench binary re-executed), like the worker",
        summaries: &summaries,
        targets: &targets,
    };
    let json = serde_json::to_string_pretty(&output).map_err(|e| e.to_string())?;
    std::fs::write(&out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("bench: results written to {}", out.display());
    let title = format!(
        "identity-link-worker drain rate, {} events per run, {} cores{}",
        args.events,
        output.machine.cores,
        if args.smoke { " (smoke)" } else { "" }
    );
    match chart::draw(&chart_path, &summaries, &title) {
        Ok(()) => eprintln!("bench: chart written to {}", chart_path.display()),
        Err(e) => eprintln!("bench: {e}"),
    }
    let failed: usize = summaries.iter().map(|s| s.failures.len()).sum();
    if failed > 0 {
        eprintln!("bench: {failed} run(s) failed");
    }
    Ok(failed == 0)
}
