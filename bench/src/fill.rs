//! Events like the auth service sends, and pre-filling the private queue with
//! them (through the topic exchange, persistent, publisher-confirmed).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, Connection};

use identity_link_worker::broker::connection::open_confirm_channel;

/// Deterministic, fast pseudo-random numbers (xorshift64*), so every run of a
/// scenario sees the same mix and order without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// One event: routing key, message id and JSON body.
pub struct Event {
    pub routing_key: &'static str,
    pub id: String,
    pub body: Vec<u8>,
}

/// `events` events over `events / repeat` distinct (anonymous, user) pairs,
/// each pair seen `repeat` times, in shuffled order. `repeat = 1`: every
/// event a new pair.
pub fn make_events(events: usize, repeat: usize, seed: u64) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    let pairs = events.div_ceil(repeat.max(1));
    let pair_ids: Vec<(String, String)> = (0..pairs)
        .map(|_| {
            (
                format!("anon_{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
                format!("usr_{:012x}", rng.next_u64() >> 16),
            )
        })
        .collect();
    let mut order: Vec<usize> = (0..events).map(|i| i % pairs).collect();
    // Fisher-Yates.
    for i in (1..order.len()).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut seen = vec![false; pairs];
    order
        .into_iter()
        .map(|p| {
            let (anonymous, user) = &pair_ids[p];
            // The first sighting of a pair is its sign-up, later ones are logins.
            let routing_key = if std::mem::replace(&mut seen[p], true) {
                "user.logged_in"
            } else {
                "user.signed_up"
            };
            let id = uuid::Uuid::new_v4().to_string();
            let body = format!(
                r#"{{"eventId":"{id}","type":"{routing_key}","occurredAt":"{now}","anonymousId":"{anonymous}","userId":"{user}"}}"#
            );
            Event {
                routing_key,
                id,
                body: body.into_bytes(),
            }
        })
        .collect()
}

/// Publishes every event to `exchange` on `lanes` confirm channels, at most
/// `window` unconfirmed per channel; fails unless every one is confirmed
/// (acked and routed).
pub async fn prefill(
    connection: &Connection,
    exchange: &str,
    events: &[Event],
    lanes: usize,
) -> Result<Duration, String> {
    const WINDOW: usize = 1024;
    let started = Instant::now();
    let chunk = events.len().div_ceil(lanes.max(1)).max(1);
    let mut tasks = Vec::new();
    for part in events.chunks(chunk) {
        let channel = open_confirm_channel(connection)
            .await
            .map_err(|e| format!("prefill channel: {e}"))?;
        // The tasks need owned data: copy this lane's events.
        let part: Vec<(&'static str, String, Vec<u8>)> = part
            .iter()
            .map(|e| (e.routing_key, e.id.clone(), e.body.clone()))
            .collect();
        let exchange = exchange.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut pending = VecDeque::with_capacity(WINDOW);
            for (routing_key, id, body) in part {
                let properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type(ShortString::from("application/json"))
                    .with_message_id(ShortString::from(id));
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        properties,
                    )
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                pending.push_back(confirm);
                if pending.len() >= WINDOW
                    && let Some(confirm) = pending.pop_front()
                {
                    check(confirm.await)?;
                }
            }
            for confirm in pending {
                check(confirm.await)?;
            }
            let _ = channel.close(200, "prefilled".into()).await;
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("prefill task: {e}"))??;
    }
    Ok(started.elapsed())
}

fn check(confirmation: lapin::Result<Confirmation>) -> Result<(), String> {
    match confirmation {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err("a prefill message was unroutable".into()),
        Ok(Confirmation::Nack(_)) => Err("the broker nacked a prefill message".into()),
        Ok(Confirmation::NotRequested) => Err("confirms were not enabled".into()),
        Err(e) => Err(format!("confirm: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_pairs() {
        let events = make_events(100, 10, 7);
        assert_eq!(events.len(), 100);
        let bodies: std::collections::HashSet<String> = events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
                format!("{}|{}", v["anonymousId"], v["userId"])
            })
            .collect();
        assert_eq!(bodies.len(), 10);
        assert_eq!(
            events
                .iter()
                .filter(|e| e.routing_key == "user.signed_up")
                .count(),
            10
        );
    }
}
