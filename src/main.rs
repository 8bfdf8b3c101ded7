use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    identity_link_worker::cli::main(identity_link_worker::cli::Cli::parse()).await
}
