//! The command line (docs/interface.md, "Command line").

mod check_config;
#[cfg(feature = "demo")]
pub mod demo;
mod dlq;
mod publish;

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
        #[arg(long, default_value = "http://127.0.0.1:9464/healthz")]
        url: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Count dead letters, by reason.
    Stats,
    /// Show dead letters without removing them.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Move dead letters back to their original exchange and routing key, attempts reset.
    Replay {
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Only messages dead-lettered for this reason (e.g. retries_exhausted).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Exit status for a configuration error.
pub const EXIT_CONFIG: u8 = 2;

fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("configuration error: {error}");
    ExitCode::from(EXIT_CONFIG)
}

pub async fn main(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run().await,
        Command::CheckConfig => match Config::from_env() {
            Ok(config) => check_config::run(&config).await,
            Err(error) => config_error(&error),
        },
        Command::Dlq { command } => match ToolConfig::from_env() {
            Ok(config) => {
                let _logs = telemetry::init(config.ops.log_format, config.ops.log_identifiers);
                match command {
                    DlqCommand::Stats => dlq::stats(&config).await,
                    DlqCommand::List { limit } => dlq::list(&config, limit).await,
                    DlqCommand::Replay { limit, reason } => {
                        dlq::replay(&config, limit, reason).await
                    }
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
        Command::Healthcheck { url } => healthcheck(&url).await,
    }
}

async fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    // Kept to the end of `run`: its drop is the final, bounded flush of the logs.
    let _logs = telemetry::init(config.ops.log_format, config.ops.log_identifiers);
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
