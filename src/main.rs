use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = identity_link_worker::cli::Cli::parse();
    // Run the application on the runtime's worker threads rather than on the
    // main thread inside `block_on`: the consumer loop then hands deliveries
    // to tasks without waking a third thread (see BENCHMARKS.md).
    match tokio::spawn(identity_link_worker::cli::main(cli)).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("identity-link-worker: {error}");
            ExitCode::FAILURE
        }
    }
}
