//! broker-canary: proves that `scripts/test` left the shared broker alone.
//!
//! The suites may use the machine's broker (`LINKER_AMQP_URL`, default
//! 127.0.0.1:5672, possibly the user's own) only for parallel tests with
//! their own names; whatever cuts or restarts a broker must do it to a node
//! of its own. `scripts/test` starts this before the suites and stops it
//! (SIGTERM) after them. It holds one AMQP connection to the shared broker and
//! reads the node's uptime from the management API (`RABBITMQ_MANAGEMENT_URL`,
//! default http://127.0.0.1:15672); at the end it reports whether the
//! connection survived and the uptime went on without a reset, and exits 1 if
//! not.
//!
//! Usage: `broker-canary READY_FILE` (the file is written once it watches).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use identity_link_worker::broker::connection::connect_to;
use identity_link_worker::config::{AmqpUrl, BrokerTls};
use serde_json::Value;
use testkit::broker::{amqp_url, management_url};
use tokio::signal::unix::{SignalKind, signal};

/// Uptime may lag the wall clock by a little (sampling, a loaded machine);
/// a restart loses far more, unless it happened right at the start, which
/// the connection check catches.
const UPTIME_SLACK: Duration = Duration::from_secs(30);

async fn get(client: &reqwest::Client, path: &str) -> Result<Value, String> {
    let url = format!("{}/api{path}", management_url());
    let response = client
        .get(&url)
        .basic_auth("guest", Some("guest"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    response.json().await.map_err(|e| format!("{url}: {e}"))
}

/// The node behind the management API and its uptime.
async fn node_uptime(client: &reqwest::Client) -> Result<(String, Duration), String> {
    let overview = get(client, "/overview").await?;
    let node = overview["node"]
        .as_str()
        .ok_or("/api/overview has no node")?
        .to_owned();
    let info = get(client, &format!("/nodes/{node}")).await?;
    let ms = info["uptime"]
        .as_u64()
        .ok_or_else(|| format!("/api/nodes/{node} has no uptime"))?;
    Ok((node, Duration::from_millis(ms)))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("broker-canary: {message}");
    ExitCode::from(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(ready_file) = std::env::args().nth(1) else {
        return fail("usage: broker-canary READY_FILE");
    };
    let url = AmqpUrl::new(amqp_url());
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return fail("cannot handle SIGTERM");
    };
    let client = reqwest::Client::new();
    let connection = match connect_to(
        &url,
        &BrokerTls::default(),
        "identity-link-worker broker-canary",
    )
    .await
    {
        Ok(connection) => connection,
        Err(e) => return fail(&format!("cannot connect to {}: {e}", url.redacted())),
    };
    let (node, before) = match node_uptime(&client).await {
        Ok(v) => v,
        Err(e) => return fail(&format!("the management API: {e}")),
    };
    let started = Instant::now();
    if let Err(e) = std::fs::write(&ready_file, format!("{node}\n")) {
        return fail(&format!("cannot write {ready_file}: {e}"));
    }
    eprintln!(
        "broker-canary: watching {} ({node}, up {} s)",
        url.redacted(),
        before.as_secs()
    );
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let watched = started.elapsed();

    let mut disturbed = Vec::new();
    // The connection is open only if the broker never closed it: a channel
    // opened on it now proves it still works both ways.
    if !connection.status().connected() {
        disturbed.push("the canary's connection was closed".to_owned());
    } else {
        match tokio::time::timeout(Duration::from_secs(10), connection.create_channel()).await {
            Ok(Ok(channel)) => {
                let _ = channel.close(200, "canary".into()).await;
            }
            Ok(Err(e)) => disturbed.push(format!("the canary's connection failed: {e}")),
            Err(_) => disturbed.push("the canary's connection did not answer in 10 s".to_owned()),
        }
    }
    match node_uptime(&client).await {
        Ok((now_node, after)) if now_node != node => {
            disturbed.push(format!(
                "the management API now answers as {now_node}, was {node} (uptime {} s)",
                after.as_secs()
            ));
        }
        Ok((_, after)) if after + UPTIME_SLACK < before + watched => disturbed.push(format!(
            "{node} restarted: uptime {} s, was {} s {} s ago",
            after.as_secs(),
            before.as_secs(),
            watched.as_secs()
        )),
        Ok(_) => {}
        Err(e) => disturbed.push(format!("the management API: {e}")),
    }
    let _ = connection.close(200, "canary done".into()).await;
    if disturbed.is_empty() {
        println!(
            "broker-canary: {} ({node}) was not disturbed: one connection open for {} s, no restart",
            url.redacted(),
            watched.as_secs()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "broker-canary: the shared broker {} ({node}) WAS DISTURBED during the tests: {}",
            url.redacted(),
            disturbed.join("; ")
        );
        ExitCode::FAILURE
    }
}
