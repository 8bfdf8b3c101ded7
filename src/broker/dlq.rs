//! The dead-letter tools: `dlq stats | list | replay`.
//!
//! Messages are read with `basic.get` and held unacked while we look, so the
//! queue is never changed by looking; closing the channel puts back what we
//! did not take (a quorum queue applies those returns asynchronously, so each
//! command waits until they show again). A replay publishes the copy to
//! `LINKER_EXCHANGE` with its original routing key, waits for the broker's
//! confirm, and only then acks (removes) the dead letter: a crash in between
//! leaves a duplicate, never a loss. The recorded route is never trusted as
//! a destination: a message the broker dead-lettered itself still carries
//! whatever headers its producer set, so a replay publishes nowhere but
//! `LINKER_EXCHANGE`, and only with a routing key `LINKER_ROUTING_KEYS` binds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{Channel, Connection};
use serde::Serialize;

use super::connection::{open_confirm_channel, queue_depth};
use super::headers;
use super::publisher::{PublishError, Publisher};
use super::topology::Topology;
use crate::domain::DeadLetterReason;

/// `dlq stats` looks at no more than this many messages to count reasons.
pub const STATS_SCAN_LIMIT: usize = 100_000;

/// How long a command waits for the messages it looked at to show again.
const PUT_BACK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    pub reason: String,
    pub error: Option<String>,
    pub attempts: u32,
    pub original_exchange: Option<String>,
    pub original_routing_key: Option<String>,
    pub failed_at: Option<String>,
    pub message_id: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct DlqStats {
    pub queue: String,
    pub messages: u32,
    pub scanned: usize,
    pub by_reason: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ReplayReport {
    /// Moved back (a dry run: would be moved back).
    pub replayed: usize,
    /// The dead-letter queue's depth afterwards, as the broker reports it
    /// (not what this replay looked at and left: it may have looked at few).
    pub left: usize,
    /// What moved (a dry run: would move), in queue order.
    pub moves: Vec<ReplayMove>,
    /// Left in place, and why: no route, or a route the worker does not consume.
    pub refused: Vec<String>,
    /// Replayed to `LINKER_EXCHANGE` although another exchange was recorded.
    pub rerouted: Vec<String>,
    pub failed: Vec<String>,
}

/// One dead letter a replay moves back.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayMove {
    pub reason: String,
    pub routing_key: String,
    pub message_id: Option<String>,
}

/// Every reason a dead letter can carry, as `--reason` accepts it: the
/// worker's own (`x-linker-reason`), the broker's delivery limit, and
/// `unknown` for a message with neither.
pub fn reasons() -> Vec<&'static str> {
    DeadLetterReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain([headers::DELIVERY_LIMIT_REASON, UNKNOWN_REASON])
        .collect()
}

/// The reason shown for a dead letter that records none.
const UNKNOWN_REASON: &str = "unknown";

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("{0}")]
    Publish(#[from] PublishError),
}

fn reason_of(props: &lapin::BasicProperties) -> String {
    headers::get_str(props, headers::REASON)
        .or_else(|| {
            headers::x_death_reason(props).map(|r| {
                if r == "delivery_limit" {
                    headers::DELIVERY_LIMIT_REASON.to_owned()
                } else {
                    r
                }
            })
        })
        .unwrap_or_else(|| UNKNOWN_REASON.to_owned())
}

fn view(delivery: &lapin::message::Delivery) -> DeadLetterView {
    let props = &delivery.properties;
    let body = String::from_utf8_lossy(&delivery.data);
    let body = headers::truncate(&body, 2048).to_owned();
    DeadLetterView {
        reason: reason_of(props),
        error: headers::get_str(props, headers::ERROR),
        attempts: headers::get_u32(props, headers::ATTEMPTS).unwrap_or(0),
        original_exchange: headers::get_str(props, headers::ORIGINAL_EXCHANGE),
        original_routing_key: headers::get_str(props, headers::ORIGINAL_ROUTING_KEY),
        failed_at: headers::get_str(props, headers::FAILED_AT),
        message_id: props.message_id().as_ref().map(|s| s.as_str().to_owned()),
        body,
    }
}

/// Reads up to `limit` messages without removing them; they go back when
/// the returned channel is closed.
/// Also returns the queue's depth before looking.
async fn browse(
    connection: &Connection,
    queue: &str,
    limit: usize,
) -> Result<(Channel, Vec<lapin::message::Delivery>, u32), lapin::Error> {
    let channel = connection.create_channel().await?;
    let mut seen = Vec::new();
    let depth = queue_depth(&channel, queue).await?;
    while seen.len() < limit.min(depth as usize) {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(message) => seen.push(message.delivery),
            None => break,
        }
    }
    Ok((channel, seen, depth))
}

/// Closes the browsing channel, which hands back what was held unacked, and
/// waits (bounded) until the queue holds `expected` messages again: a quorum
/// queue applies returns asynchronously, and without this a `dlq stats` right
/// after a `dlq list` would count, and look at, fewer messages than there are.
async fn put_back(connection: &Connection, channel: Channel, queue: &str, expected: u32) {
    let _ = channel.close(200, "dlq done".into()).await;
    let Ok(check) = connection.create_channel().await else {
        return;
    };
    let deadline = Instant::now() + PUT_BACK_WAIT;
    while Instant::now() < deadline {
        match queue_depth(&check, queue).await {
            Ok(n) if n < expected => tokio::time::sleep(Duration::from_millis(20)).await,
            // Back (or the queue is gone, which closed the channel): done.
            _ => break,
        }
    }
    let _ = check.close(200, "dlq done".into()).await;
}

pub async fn stats(connection: &Connection, topology: &Topology) -> Result<DlqStats, DlqError> {
    let (channel, seen, messages) =
        browse(connection, &topology.dead_letter, STATS_SCAN_LIMIT).await?;
    let mut stats = DlqStats {
        queue: topology.dead_letter.clone(),
        messages,
        scanned: seen.len(),
        ..DlqStats::default()
    };
    for delivery in &seen {
        *stats
            .by_reason
            .entry(reason_of(&delivery.properties))
            .or_default() += 1;
    }
    put_back(connection, channel, &topology.dead_letter, messages).await;
    Ok(stats)
}

pub async fn list(
    connection: &Connection,
    topology: &Topology,
    limit: usize,
) -> Result<Vec<DeadLetterView>, DlqError> {
    let (channel, seen, depth) = browse(connection, &topology.dead_letter, limit).await?;
    let views = seen.iter().map(view).collect();
    put_back(connection, channel, &topology.dead_letter, depth).await;
    Ok(views)
}

/// Moves up to `limit` dead letters (of `reason`, if given) back to their
/// original exchange and routing key, with the attempts reset.
pub async fn replay(
    connection: &Connection,
    topology: &Topology,
    limit: usize,
    reason: Option<&str>,
) -> Result<ReplayReport, DlqError> {
    replay_or_plan(connection, topology, limit, reason, false).await
}

/// What [`replay`] would move, with the same choices, moving nothing.
pub async fn dry_run(
    connection: &Connection,
    topology: &Topology,
    limit: usize,
    reason: Option<&str>,
) -> Result<ReplayReport, DlqError> {
    replay_or_plan(connection, topology, limit, reason, true).await
}

async fn replay_or_plan(
    connection: &Connection,
    topology: &Topology,
    limit: usize,
    reason: Option<&str>,
    dry_run: bool,
) -> Result<ReplayReport, DlqError> {
    let publisher = if dry_run {
        None
    } else {
        Some(Publisher::new(open_confirm_channel(connection).await?))
    };
    // Scan everything when filtering by reason: matches may be anywhere.
    let scan = if reason.is_some() {
        STATS_SCAN_LIMIT
    } else {
        limit
    };
    let (channel, seen, depth) = browse(connection, &topology.dead_letter, scan).await?;
    let mut report = ReplayReport::default();
    for delivery in seen {
        let props = &delivery.properties;
        let recorded_reason = reason_of(props);
        let wanted = report.replayed < limit && reason.is_none_or(|r| recorded_reason == r);
        if !wanted {
            continue;
        }
        let route = match (
            headers::get_str(props, headers::ORIGINAL_EXCHANGE),
            headers::get_str(props, headers::ORIGINAL_ROUTING_KEY),
        ) {
            (Some(exchange), Some(routing_key)) => Some((exchange, routing_key)),
            // Dead-lettered by the broker itself (delivery limit): use x-death.
            _ => headers::x_death_route(props),
        };
        let id = props.message_id().as_ref().map_or_else(
            || "(no message_id)".to_owned(),
            |id| format!("{:?}", id.as_str()),
        );
        let Some((recorded_exchange, routing_key)) = route else {
            report.refused.push(format!(
                "message {id}: no original routing key recorded; left in place"
            ));
            continue;
        };
        if !topology.binds(&routing_key) {
            report.refused.push(format!(
                "message {id}: original routing key {routing_key:?} is not bound by LINKER_ROUTING_KEYS {:?}; left in place",
                topology.routing_keys
            ));
            continue;
        }
        if recorded_exchange != topology.exchange {
            report.rerouted.push(format!(
                "message {id}: recorded exchange {recorded_exchange:?} ignored; replayed to LINKER_EXCHANGE {:?}",
                topology.exchange
            ));
        }
        let planned = ReplayMove {
            reason: recorded_reason,
            routing_key: routing_key.clone(),
            message_id: props.message_id().as_ref().map(|id| id.as_str().to_owned()),
        };
        let Some(publisher) = &publisher else {
            report.replayed += 1;
            report.moves.push(planned);
            continue;
        };
        // As a producer would publish it: the worker strips these on arrival
        // from LINKER_EXCHANGE anyway; taken out here so the copy says so too.
        let cleaned =
            headers::with_headers(&headers::from_producer(props), &[], &["x-delivery-count"]);
        match publisher
            .publish(&topology.exchange, &routing_key, &delivery.data, cleaned)
            .await
        {
            Ok(()) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                report.replayed += 1;
                report.moves.push(planned);
            }
            Err(error) => report.failed.push(error.to_string()),
        }
    }
    let removed = if dry_run { 0 } else { report.replayed };
    let expected = depth.saturating_sub(u32::try_from(removed).unwrap_or(u32::MAX));
    put_back(connection, channel, &topology.dead_letter, expected).await;
    if let Some(publisher) = publisher {
        let _ = publisher
            .channel()
            .close(200, "dlq replay done".into())
            .await;
    }
    // What is really there now: this replay may have looked at fewer than
    // the queue holds (`limit`), and dead letters may arrive meanwhile.
    let check = connection.create_channel().await?;
    report.left = queue_depth(&check, &topology.dead_letter).await? as usize;
    let _ = check.close(200, "dlq replay done".into()).await;
    Ok(report)
}
