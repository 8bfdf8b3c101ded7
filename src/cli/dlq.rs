//! `dlq stats | list | replay`.

use std::process::ExitCode;

use crate::broker::connection::connect;
use crate::broker::dlq;
use crate::broker::topology::Topology;
use crate::config::ToolConfig;
use crate::ops::telemetry::escaped;

async fn with_connection<F, Fut>(config: &ToolConfig, work: F) -> ExitCode
where
    F: FnOnce(lapin::Connection, Topology) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let topology = Topology::new(&config.broker, &config.retry.ladder);
    let connection = match connect(&config.broker, "identity-link-worker dlq").await {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("dlq: {error}");
            return ExitCode::FAILURE;
        }
    };
    match work(connection, topology).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dlq: {error}");
            ExitCode::FAILURE
        }
    }
}

pub async fn stats(config: &ToolConfig) -> ExitCode {
    with_connection(config, |connection, topology| async move {
        let stats = dlq::stats(&connection, &topology)
            .await
            .map_err(|e| e.to_string())?;
        let _ = connection.close(200, "done".into()).await;
        println!(
            "dead-letter queue {}: {} message(s)",
            stats.queue, stats.messages
        );
        for (reason, count) in &stats.by_reason {
            // Reasons come from message headers: escaped, one line each.
            println!("  {:<26} {count}", escaped(reason).to_string());
        }
        if stats.scanned < stats.messages as usize {
            println!(
                "  (reasons counted over the first {} messages)",
                stats.scanned
            );
        }
        Ok(())
    })
    .await
}

pub async fn list(config: &ToolConfig, limit: usize) -> ExitCode {
    with_connection(config, |connection, topology| async move {
        let views = dlq::list(&connection, &topology, limit)
            .await
            .map_err(|e| e.to_string())?;
        let _ = connection.close(200, "done".into()).await;
        for view in &views {
            println!(
                "{}",
                serde_json::to_string(view).map_err(|e| e.to_string())?
            );
        }
        eprintln!("{} message(s) shown", views.len());
        Ok(())
    })
    .await
}

pub async fn replay(
    config: &ToolConfig,
    limit: usize,
    reason: Option<String>,
    dry_run: bool,
) -> ExitCode {
    with_connection(config, |connection, topology| async move {
        let report = if dry_run {
            dlq::dry_run(&connection, &topology, limit, reason.as_deref()).await
        } else {
            dlq::replay(&connection, &topology, limit, reason.as_deref()).await
        }
        .map_err(|e| e.to_string())?;
        let _ = connection.close(200, "done".into()).await;
        if dry_run {
            println!(
                "dry run: would replay {} message(s); nothing moved, {} in {}",
                report.replayed, report.left, topology.dead_letter
            );
            // Header values come from producers: escaped, one line each.
            for planned in &report.moves {
                println!(
                    "  would replay: reason {} routing key {} message id {}",
                    escaped(&planned.reason),
                    escaped(&planned.routing_key),
                    planned
                        .message_id
                        .as_deref()
                        .map_or_else(|| "(none)".to_owned(), |id| escaped(id).to_string()),
                );
            }
        } else {
            println!(
                "replayed {} message(s); {} left in {}",
                report.replayed, report.left, topology.dead_letter
            );
        }
        for rerouted in &report.rerouted {
            println!("  rerouted: {rerouted}");
        }
        for refused in &report.refused {
            println!("  refused: {refused}");
        }
        for failure in &report.failed {
            println!("  not replayed: {}", escaped(failure));
        }
        if report.failed.is_empty() && report.refused.is_empty() {
            Ok(())
        } else {
            Err("some messages were not replayed".into())
        }
    })
    .await
}
