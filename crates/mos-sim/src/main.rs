//! mos-sim: runs the MonetizationOS "Link Identities" simulator as a
//! standalone server (docker-compose, the benchmark, manual tests), and
//! `mos-sim healthcheck` for its container (distroless: no shell, no curl).

mod healthcheck;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};
use mos_sim::{Capacity, Faults, MosSim, RateFault, RateLimit, SimConfig};
use tracing_subscriber::EnvFilter;

/// Simulated MonetizationOS Link Identities endpoint with fault injection.
///
/// GET /healthz is always served. Control routes (no auth), only with
/// --control: GET /_sim/stats, GET /_sim/links, GET|PUT|DELETE /_sim/faults,
/// PUT /_sim/key, POST /_sim/reset, GET /_sim/healthz.
///
/// Per link request: --rate-limit (429 at once), then --capacity (503 at
/// once past --capacity-hard-limit, extra latency past --capacity), then
/// --latency/--jitter, --statuses, --fail-rate, --drop/--drop-rate, the key.
///
/// The link route is POST /api/v1/envs/{env}/endpoints/link-identities (any
/// env id). Point the worker at it with the full URL, path included, e.g.
/// with the default --addr:
/// LINKER_MOS_ENDPOINT_URL=http://127.0.0.1:8080/api/v1/envs/sim/endpoints/link-identities
/// (the start-up line prints it for the address actually bound).
#[derive(Parser)]
#[command(name = "mos-sim", version)]
// One of the two, never both: the usage line and the error name both.
#[command(group(
    clap::ArgGroup::new("secret_key")
        .args(["key", "key_file"])
        .required(true)
))]
// A subcommand needs no key: `mos-sim healthcheck` runs in the sim's own
// container, beside whatever MOS_SIM_* the server reads.
#[command(subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand)]
enum Command {
    /// GET the simulator's /healthz (for container HEALTHCHECKs); exit 0 on 200, else 1.
    Healthcheck {
        /// What to GET (http:// only); default: /healthz on the port of --addr / MOS_SIM_ADDR.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(clap::Args)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "MOS_SIM_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,

    /// Accepted secret key (sent by clients as `X-MOS-Key: Bearer <key>`).
    #[arg(long, env = "MOS_SIM_KEY", hide_env_values = true)]
    key: Option<String>,

    /// File holding the secret key (surrounding whitespace is ignored).
    #[arg(long, env = "MOS_SIM_KEY_FILE")]
    key_file: Option<PathBuf>,

    /// Pause between the "already linked?" check and the create (the race window).
    #[arg(long, env = "MOS_SIM_PAUSE", default_value = "5ms", value_parser = humantime::parse_duration)]
    pause: Duration,

    /// Answer {"message":"Success"} without `outcome`, like the original recipe.
    #[arg(
        long,
        env = "MOS_SIM_PLAIN",
        action = clap::ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    plain: bool,

    /// Added delay per request.
    #[arg(long, env = "MOS_SIM_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,

    /// Random extra delay per request, up to this much.
    #[arg(long, env = "MOS_SIM_JITTER", default_value = "0s", value_parser = humantime::parse_duration)]
    jitter: Duration,

    /// Status codes answered to the first requests, in order (e.g. 503,503,429).
    #[arg(long, env = "MOS_SIM_STATUSES", value_delimiter = ',')]
    statuses: Vec<u16>,

    /// Fail this share of requests with a status, as STATUS:PROBABILITY (e.g. 503:0.1).
    #[arg(long, env = "MOS_SIM_FAIL_RATE", value_parser = parse_fail_rate)]
    fail_rate: Option<RateFault>,

    /// Close the connection without a response for this many requests.
    #[arg(long, env = "MOS_SIM_DROP", default_value_t = 0)]
    drop: u64,

    /// Close the connection without a response with this probability (0.0..=1.0).
    #[arg(long, env = "MOS_SIM_DROP_RATE", default_value_t = 0.0)]
    drop_rate: f64,

    /// Retry-After seconds sent with injected 429 answers (--statuses, --fail-rate).
    #[arg(long, env = "MOS_SIM_RETRY_AFTER", default_value_t = 1)]
    retry_after: u64,

    /// Token-bucket rate limit over all link requests, per second (fractions allowed).
    ///
    /// The bucket holds --rate-limit-burst tokens, starts full and refills
    /// continuously at this rate; each request takes one. A request that finds
    /// none is answered 429 {"message":"Too Many Requests"} at once (before the
    /// latency and the key) with Retry-After: max(1, ceil((1 - tokens) /
    /// rate)), whole seconds. Over t seconds at most burst + rate * t pass.
    #[arg(long, env = "MOS_SIM_RATE_LIMIT")]
    rate_limit: Option<f64>,

    /// Size of the rate limit's bucket: how many requests pass at once. Default: ceil(--rate-limit), at least 1.
    #[arg(long, env = "MOS_SIM_RATE_LIMIT_BURST", requires = "rate_limit")]
    rate_limit_burst: Option<u32>,

    /// Backend capacity: requests in flight served with the normal latency.
    ///
    /// With n link requests in flight at a request's arrival (itself included),
    /// its delay is latency + jitter + max(0, n - capacity) *
    /// --capacity-extra-latency; past --capacity-hard-limit it is answered 503
    /// {"message":"Service Unavailable"} at once.
    #[arg(long, env = "MOS_SIM_CAPACITY")]
    capacity: Option<u32>,

    /// Delay added per request in flight beyond --capacity.
    ///
    /// Default: --latency / --capacity, a backend serving --capacity at a time:
    /// throughput then stays flat at capacity / latency however many callers
    /// there are, and only latency grows. More makes throughput fall.
    #[arg(long, env = "MOS_SIM_CAPACITY_EXTRA_LATENCY", requires = "capacity", value_parser = humantime::parse_duration)]
    capacity_extra_latency: Option<Duration>,

    /// More than this many link requests in flight: 503 at once. Default: no hard limit.
    #[arg(long, env = "MOS_SIM_CAPACITY_HARD_LIMIT", requires = "capacity")]
    capacity_hard_limit: Option<u32>,

    /// Retry-After seconds sent with the capacity's 503s. Default: no Retry-After.
    #[arg(long, env = "MOS_SIM_CAPACITY_RETRY_AFTER", requires = "capacity")]
    capacity_retry_after: Option<u64>,

    /// Serve the /_sim/* control routes (no auth: anyone who reaches the port
    /// can read the links, change faults and the key, reset). Off: /_sim/* is 404.
    #[arg(
        long,
        env = "MOS_SIM_CONTROL",
        action = clap::ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    control: bool,
}

fn parse_fail_rate(s: &str) -> Result<RateFault, String> {
    let (status, probability) = s
        .split_once(':')
        .ok_or_else(|| format!("expected STATUS:PROBABILITY, got {s:?}"))?;
    let status = status
        .trim()
        .parse()
        .map_err(|e| format!("bad status {status:?}: {e}"))?;
    let probability = probability
        .trim()
        .parse()
        .map_err(|e| format!("bad probability {probability:?}: {e}"))?;
    Ok(RateFault {
        status,
        probability,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Args {
    fn into_config(self) -> Result<SimConfig, String> {
        let secret_key = match (self.key, &self.key_file) {
            (Some(key), _) => key,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => return Err("--key or --key-file is required".to_owned()),
        };
        if secret_key.is_empty() {
            return Err("the secret key must not be empty".to_owned());
        }
        let rate_limit = self.rate_limit.map(|per_second| RateLimit {
            per_second,
            // `as` saturates, and NaN gives 0 (refused by `validate` anyway).
            burst: self
                .rate_limit_burst
                .unwrap_or((per_second.ceil() as u32).max(1)),
        });
        let capacity = self.capacity.map(|max_in_flight| Capacity {
            max_in_flight,
            latency_per_extra_ms: match self.capacity_extra_latency {
                Some(extra) => extra.as_secs_f64() * 1000.0,
                None => self.latency.as_secs_f64() * 1000.0 / f64::from(max_in_flight.max(1)),
            },
            hard_limit: self.capacity_hard_limit.unwrap_or(u32::MAX),
            retry_after_secs: self.capacity_retry_after,
        });
        let faults = Faults {
            latency_ms: millis(self.latency),
            jitter_ms: millis(self.jitter),
            statuses: self.statuses,
            rate: self.fail_rate,
            drop: self.drop,
            drop_rate: self.drop_rate,
            retry_after_secs: self.retry_after,
            retry_after_http_date: false,
            refuse: None,
            rate_limit,
            capacity,
        };
        faults.validate()?;
        Ok(SimConfig {
            secret_key,
            pause: self.pause,
            plain_success: self.plain,
            faults,
            control_routes: self.control,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr so stdout carries only the "listening" line;
    // colours only on a terminal and without NO_COLOR (no-color.org).
    let colours = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colours)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let cli = Cli::parse();
    if let Some(Command::Healthcheck { url }) = cli.command {
        let url = url.unwrap_or_else(|| healthcheck::default_url(cli.args.addr));
        return healthcheck::run(&url).await;
    }
    let args = cli.args;
    let addr = args.addr;
    let control = args.control;
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mos-sim: {e}");
            return ExitCode::from(2);
        }
    };
    // SimConfig's Debug redacts the key.
    tracing::info!(?config, "mos-sim starting");

    let sim = match MosSim::start(addr, config).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("mos-sim: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One line, the URL the worker needs whole: the path is easy to miss.
    println!(
        "mos-sim listening on http://{}; point the worker at it: LINKER_MOS_ENDPOINT_URL={}",
        sim.addr(),
        sim.endpoint_url()
    );
    if !control {
        tracing::info!(
            "control routes off (/_sim/* answers 404); --control or MOS_SIM_CONTROL=1 serves them"
        );
    }

    if let Err(e) = shutdown_signal().await {
        tracing::error!(error = %e, "cannot wait for signals, shutting down");
    }
    tracing::info!("mos-sim shutting down");
    sim.shutdown().await;
    tracing::info!("mos-sim stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("mos-sim").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn control_routes_are_off_unless_asked_for() {
        let config = |args: &[&str]| parse(args).args.into_config().unwrap();
        assert!(!config(&["--key", "k"]).control_routes);
        assert!(config(&["--key", "k", "--control"]).control_routes);
    }

    #[test]
    fn rate_limit_and_capacity_flags() {
        let faults = |args: &[&str]| {
            let args = ["--key", "k"]
                .iter()
                .chain(args)
                .copied()
                .collect::<Vec<_>>();
            parse(&args).args.into_config().map(|c| c.faults)
        };
        let set = faults(&[
            "--rate-limit",
            "200",
            "--rate-limit-burst",
            "20",
            "--latency",
            "10ms",
            "--capacity",
            "64",
            "--capacity-extra-latency",
            "500us",
            "--capacity-hard-limit",
            "256",
            "--capacity-retry-after",
            "3",
        ])
        .unwrap();
        assert_eq!(
            set.rate_limit,
            Some(RateLimit {
                per_second: 200.0,
                burst: 20
            })
        );
        assert_eq!(
            set.capacity,
            Some(Capacity {
                max_in_flight: 64,
                latency_per_extra_ms: 0.5,
                hard_limit: 256,
                retry_after_secs: Some(3),
            })
        );

        // Defaults: one second's worth of burst; extra latency that keeps
        // throughput flat; no hard limit; no Retry-After.
        let defaults = faults(&[
            "--rate-limit",
            "2.5",
            "--latency",
            "40ms",
            "--capacity",
            "8",
        ])
        .unwrap();
        assert_eq!(defaults.rate_limit.unwrap().burst, 3);
        let cap = defaults.capacity.unwrap();
        assert_eq!(cap.latency_per_extra_ms, 5.0);
        assert_eq!(cap.hard_limit, u32::MAX);
        assert_eq!(cap.retry_after_secs, None);
        let none = faults(&[]).unwrap();
        assert_eq!((none.rate_limit, none.capacity), (None, None));

        for bad in [
            &["--rate-limit", "0"][..],
            &["--rate-limit", "5", "--rate-limit-burst", "0"],
            &["--capacity", "8", "--capacity-hard-limit", "4"],
            &["--capacity", "0"],
        ] {
            assert!(faults(bad).is_err(), "{bad:?}");
        }
        // The details need their main flag.
        for orphan in [
            &["--key", "k", "--rate-limit-burst", "5"][..],
            &["--key", "k", "--capacity-hard-limit", "5"],
        ] {
            let args = std::iter::once("mos-sim").chain(orphan.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{orphan:?}");
        }

        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for text in [
            "--rate-limit-burst",
            "--capacity-hard-limit",
            "Retry-After: max(1",
        ] {
            assert!(help.contains(text), "{text} missing from --help");
        }
    }

    #[test]
    fn healthcheck_needs_no_key() {
        let cli = parse(&["--addr", "0.0.0.0:8081", "healthcheck"]);
        assert!(matches!(
            cli.command,
            Some(Command::Healthcheck { url: None })
        ));
        assert_eq!(
            healthcheck::default_url(cli.args.addr),
            "http://127.0.0.1:8081/healthz"
        );
        let cli = parse(&["healthcheck", "--url", "http://sim:1/healthz"]);
        assert!(matches!(
            cli.command,
            Some(Command::Healthcheck { url: Some(u) }) if u == "http://sim:1/healthz"
        ));
        // The server itself still needs a key.
        assert!(Cli::try_parse_from(["mos-sim"]).is_err());
    }

    #[test]
    fn help_gives_the_whole_endpoint_url() {
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        let url = format!(
            "LINKER_MOS_ENDPOINT_URL=http://127.0.0.1:8080{}",
            mos_sim::ENDPOINT_PATH
        );
        assert!(help.contains(&url), "{url} missing from --help:\n{help}");
    }

    #[test]
    fn one_of_key_and_key_file_and_not_both() {
        let error = Cli::try_parse_from(["mos-sim"])
            .err()
            .map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.contains("--key <KEY>") && error.contains("--key-file"),
            "{error}"
        );
        assert!(Cli::try_parse_from(["mos-sim", "--key", "k", "--key-file", "/f"]).is_err());
        assert!(Cli::try_parse_from(["mos-sim", "--key-file", "/f"]).is_ok());
    }
}
