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
use mos_sim::{Faults, MosSim, RateFault, SimConfig};
use tracing_subscriber::EnvFilter;

/// Simulated MonetizationOS Link Identities endpoint with fault injection.
///
/// GET /healthz is always served. Control routes (no auth), only with
/// --control: GET /_sim/stats, GET /_sim/links, GET|PUT|DELETE /_sim/faults,
/// PUT /_sim/key, POST /_sim/reset, GET /_sim/healthz.
#[derive(Parser)]
#[command(name = "mos-sim", version)]
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
    #[arg(
        long,
        env = "MOS_SIM_KEY",
        hide_env_values = true,
        required_unless_present = "key_file",
        conflicts_with = "key_file"
    )]
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

    /// Retry-After seconds sent with 429 answers.
    #[arg(long, env = "MOS_SIM_RETRY_AFTER", default_value_t = 1)]
    retry_after: u64,

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
    // Logs go to stderr so stdout carries only the "listening" line.
    let stderr = std::io::stderr();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(stderr.is_terminal())
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
    println!("mos-sim listening on http://{}", sim.addr());
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
}
