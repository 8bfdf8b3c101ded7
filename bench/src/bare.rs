//! The "bare" consumer: the least a consumer of this queue can do. It runs as
//! a child process (the bench binary re-executed with `__bare-consumer`), on
//! the same tokio runtime flavour as the worker, with the same prefetch, and
//! acks every delivery individually (straight on the channel, as the worker
//! does). Acks are pipelined
//! (not awaited one by one) so the figure is the broker's limit, not lapin's
//! round trip per ack.
//!
//! Protocol on stdout: `ready` once consuming, `progress <acked>` every 250 ms,
//! then `done <json>` with the delivery-to-ack samples summarised.

use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use testkit::broker::try_connect;

use crate::stats;

#[derive(serde::Serialize, serde::Deserialize, Debug, Default, Clone)]
pub struct BareReport {
    pub acked: u64,
    /// Delivery-to-ack quantiles from every sample, seconds.
    pub exact_p50: f64,
    pub exact_p99: f64,
    /// The same samples in the worker's histogram buckets: cumulative counts
    /// for `stats::worker_duration_bounds()`, then +Inf.
    pub cumulative: Vec<u64>,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Entry point of the child: `bench __bare-consumer URL QUEUE N PREFETCH MODE`
/// (MODE: `pipelined`, `sequential`, or `multiple` for comparison).
pub async fn child_main(args: &[String]) -> std::process::ExitCode {
    let [url, queue, n, prefetch, mode] = args else {
        eprintln!(
            "usage: bench __bare-consumer URL QUEUE N PREFETCH pipelined|sequential|multiple"
        );
        return std::process::ExitCode::from(2);
    };
    let n: u64 = n.parse().unwrap_or(0);
    let prefetch: u16 = prefetch.parse().unwrap_or(256);
    match run(url, queue, n, prefetch, mode).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare consumer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, queue: &str, n: u64, prefetch: u16, mode: &str) -> Result<(), String> {
    let sequential = mode == "sequential";
    // `multiple`: one ack with multiple=true per 32 deliveries (for comparison only).
    let batch = if mode == "multiple" { 32 } else { 1 };
    let mut waiting: Vec<Instant> = Vec::new();
    let connection = try_connect(url, "bench bare consumer").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench-bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    say("ready");
    let mut samples: Vec<f64> = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut pending = FuturesUnordered::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut acked = 0u64;
    while acked < n {
        tokio::select! {
            _ = ticker.tick() => say(&format!("progress {acked}")),
            Some(done) = pending.next(), if !pending.is_empty() => {
                let elapsed: Result<f64, String> = done;
                samples.push(elapsed?);
                acked += 1;
            }
            next = consumer.next() => {
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(format!("delivery stream failed: {e}")),
                    None => return Err("consumer cancelled".into()),
                };
                let received = Instant::now();
                if batch > 1 {
                    waiting.push(received);
                    if waiting.len() < batch && acked + (waiting.len() as u64) < n {
                        continue;
                    }
                    delivery
                        .acker
                        .ack(BasicAckOptions { multiple: true })
                        .await
                        .map_err(|e| format!("ack failed: {e}"))?;
                    for t in waiting.drain(..) {
                        samples.push(t.elapsed().as_secs_f64());
                        acked += 1;
                    }
                    continue;
                }
                // Straight on the channel, as the worker does (no hop through
                // lapin's internal RPC task that `Acker::ack` takes).
                let channel = channel.clone();
                let ack = async move {
                    channel
                        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                        .await
                        .map_err(|e| format!("ack failed: {e}"))?;
                    Ok(received.elapsed().as_secs_f64())
                };
                if sequential {
                    samples.push(ack.await?);
                    acked += 1;
                } else {
                    pending.push(ack);
                }
            }
        }
    }
    // Report before closing, so the harness's clock stops at the last ack.
    // Then give the broker a moment: a RabbitMQ 3.10 quorum queue hands
    // back messages whose acks were still in flight when the channel closed.
    samples.sort_by(f64::total_cmp);
    let report = BareReport {
        acked,
        exact_p50: stats::exact_quantile(0.5, &samples).unwrap_or(0.0),
        exact_p99: stats::exact_quantile(0.99, &samples).unwrap_or(0.0),
        cumulative: stats::bucketize(&samples, &stats::worker_duration_bounds())
            .into_iter()
            .map(|(_, n)| n)
            .collect(),
    };
    say(&format!(
        "done {}",
        serde_json::to_string(&report).unwrap_or_default()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
