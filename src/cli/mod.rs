//! The command line (docs/interface.md, "Command line").

mod check_config;
#[cfg(feature = "demo")]
pub mod demo;
mod dlq;
mod publish;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::app::{Application, StartError};
use crate::config::{Config, ConfigError, ToolConfig};
use crate::ops::{shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "identity-link-worker",
    version,
    about = "Links anonymous and authenticated identities in MonetizationOS from RabbitMQ auth events",
    long_about = "Links anonymous and authenticated identities in MonetizationOS from RabbitMQ auth events.\n\
                  Configuration comes from LINKER_* environment variables; see the README."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker (the default).
    #[command(after_help = crate::config::variables_help())]
    Run,
    /// Validate the configuration and reach the broker and the endpoint (no link is created).
    CheckConfig,
    /// Inspect and replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Publish one event (confirmed), to try the pipeline by hand.
    Publish {
        /// Routing key / event type, e.g. user.logged_in or user.signed_up.
        #[arg(long, default_value = "user.logged_in")]
        event: String,
        /// The anonymous identifier.
        #[arg(long)]
        anonymous: String,
        /// The user identifier.
        #[arg(long)]
        user: String,
        /// AMQP message_id (default: a new UUID).
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Run a self-contained demo on the local broker with an in-process simulator.
    #[cfg(feature = "demo")]
    Demo {
        /// How many distinct users sign up in the demo.
        #[arg(long, default_value_t = 25)]
        users: usize,
    },
    /// GET the worker's /healthz (for container HEALTHCHECKs); exit 0 if 200.
    Healthcheck {
        /// What to GET. Default: /healthz on LINKER_HTTP_ADDR (default
        /// 0.0.0.0:9464), a wildcard address probed on loopback.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Count dead letters, by reason.
    Stats,
    /// Show dead letters without removing them.
    List {
        /// Show at most this many (oldest first).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Move dead letters back to their original exchange and routing key, attempts reset.
    Replay {
        /// Replay at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Only messages dead-lettered for this reason. Default: any reason.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::broker::dlq::reasons()))]
        reason: Option<String>,
        /// Show what would be replayed (reason, routing key, message id); move nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Exit status for a configuration error.
pub const EXIT_CONFIG: u8 = 2;

/// The error, then a note for each unknown `LINKER_*` variable: a typo
/// (`LINKER_MOS_ENDPIONT_URL`) is the likeliest cause of a "required" one.
fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("configuration error: {error}");
    for note in crate::config::unknown_notes(std::env::vars()) {
        eprintln!("  note: {note}");
    }
    ExitCode::from(EXIT_CONFIG)
}

pub async fn main(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run().await,
        // RUST_LOG too: the worker would refuse it at start.
        Command::CheckConfig => match Config::from_env().and_then(|c| {
            telemetry::filter(telemetry::DEFAULT_FILTER)?;
            Ok(c)
        }) {
            Ok(config) => check_config::run(&config).await,
            Err(error) => config_error(&error),
        },
        Command::Dlq { command } => match ToolConfig::from_env() {
            Ok(config) => {
                let _logs = match telemetry::init(config.ops.log_format, config.ops.log_identifiers)
                {
                    Ok(logs) => logs,
                    Err(error) => return config_error(&error),
                };
                match command {
                    DlqCommand::Stats => dlq::stats(&config).await,
                    DlqCommand::List { limit } => dlq::list(&config, limit).await,
                    DlqCommand::Replay {
                        limit,
                        reason,
                        dry_run,
                    } => dlq::replay(&config, limit, reason, dry_run).await,
                }
            }
            Err(error) => config_error(&error),
        },
        Command::Publish {
            event,
            anonymous,
            user,
            message_id,
        } => match ToolConfig::from_env() {
            Ok(config) => publish::run(&config.broker, &event, &anonymous, &user, message_id).await,
            Err(error) => config_error(&error),
        },
        #[cfg(feature = "demo")]
        Command::Demo { users } => demo::run(users).await,
        Command::Healthcheck { url: Some(url) } => healthcheck(&url).await,
        Command::Healthcheck { url: None } => match ToolConfig::from_env() {
            Ok(config) => healthcheck(&healthz_url(config.ops.http_addr)).await,
            Err(error) => config_error(&error),
        },
    }
}

async fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    // Kept to the end of `run`: its drop is the final, bounded flush of the logs.
    let _logs = match telemetry::init(config.ops.log_format, config.ops.log_identifiers) {
        Ok(logs) => logs,
        Err(error) => return config_error(&error),
    };
    crate::config::warn_unknown(std::env::vars());
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error @ StartError::Bind { .. }) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => {
            eprintln!("cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    shutdown::cancel_on_signal(stop.clone());
    app.run_until_stopped(stop).await;
    ExitCode::SUCCESS
}

/// `/healthz` where the worker listens; a wildcard bind is probed on
/// loopback (the probe runs in the worker's own container).
fn healthz_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, addr.port()))
}

async fn healthcheck(url: &str) -> ExitCode {
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("healthcheck: {error}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("healthcheck: {url} answered {}", response.status());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("healthcheck: {url}: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::healthz_url;

    #[test]
    fn the_healthcheck_probes_loopback_for_a_wildcard_bind() {
        let url = |addr: &str| healthz_url(addr.parse().unwrap());
        assert_eq!(url("0.0.0.0:9464"), "http://127.0.0.1:9464/healthz");
        assert_eq!(url("[::]:8000"), "http://[::1]:8000/healthz");
        assert_eq!(url("10.0.0.7:9000"), "http://10.0.0.7:9000/healthz");
    }
}
