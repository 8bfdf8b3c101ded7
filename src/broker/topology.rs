//! Every exchange and queue the worker uses, all named from `LINKER_QUEUE`
//! and `LINKER_EXCHANGE`, declared idempotently (or only checked).

use std::num::NonZeroU16;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::BrokerConfig;
use crate::domain::{RetryLadder, delay_label};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryQueue {
    pub name: String,
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub struct Topology {
    /// The auth service's topic exchange.
    pub exchange: String,
    pub routing_keys: Vec<String>,
    /// The work queue (quorum).
    pub queue: String,
    /// `<queue>.dead`, fanout exchange and quorum queue of the same name.
    pub dead_letter: String,
    /// `<queue>.retry.<delay>`, one per step of the ladder.
    pub retry_queues: Vec<RetryQueue>,
    /// `<queue>.partition.<i>`, quorum queues with a single active consumer;
    /// empty in direct mode (`LINKER_PARTITIONS=0`).
    pub partitions: Vec<String>,
    pub delivery_limit: u32,
    /// `x-quorum-initial-group-size`; `None` leaves it to the broker (every node).
    pub quorum_group_size: Option<u16>,
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// The arguments every quorum queue of the worker's shares.
fn quorum(group_size: Option<u16>) -> Vec<(&'static str, AMQPValue)> {
    let mut arguments = vec![("x-queue-type", text("quorum"))];
    if let Some(size) = group_size {
        arguments.push((
            "x-quorum-initial-group-size",
            AMQPValue::LongInt(i32::from(size)),
        ));
    }
    arguments
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn retry_queue_name(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}", delay_label(delay))
}

/// AMQP 0-9-1 topic matching of a binding pattern against a routing key.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| go(rest, &key[skip..])),
            Some((&word, rest)) => key
                .split_first()
                .is_some_and(|(first, tail)| (word == "*" || word == *first) && go(rest, tail)),
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    go(&pattern, &key)
}

impl Topology {
    /// Every name derives from the broker section; one retry queue per step of the ladder.
    pub fn new(broker: &BrokerConfig, ladder: &RetryLadder) -> Self {
        Self {
            exchange: broker.exchange.clone(),
            routing_keys: broker.routing_keys.clone(),
            queue: broker.queue.clone(),
            dead_letter: format!("{}.dead", broker.queue),
            retry_queues: ladder
                .delays()
                .iter()
                .map(|delay| RetryQueue {
                    name: retry_queue_name(&broker.queue, *delay),
                    delay: *delay,
                })
                .collect(),
            partitions: (0..broker.partitions.map_or(0, |p| p.get()))
                .map(|i| format!("{}.partition.{i}", broker.queue))
                .collect(),
            delivery_limit: broker.delivery_limit.get(),
            quorum_group_size: broker.quorum_initial_group_size.map(NonZeroU16::get),
        }
    }

    /// The partition queue of index `partition` (below the partition count).
    pub fn partition_queue(&self, partition: u16) -> Option<&str> {
        self.partitions
            .get(usize::from(partition))
            .map(String::as_str)
    }

    /// Every queue the worker declares, the work queue first.
    pub fn queues(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.queue.as_str())
            .chain(std::iter::once(self.dead_letter.as_str()))
            .chain(self.retry_queues.iter().map(|r| r.name.as_str()))
            .chain(self.partitions.iter().map(String::as_str))
    }

    /// Whether a message published to the exchange with this routing key
    /// reaches the work queue: one of the bindings matches it, by the topic
    /// exchange's rules (`*` one word, `#` zero or more).
    pub fn binds(&self, routing_key: &str) -> bool {
        self.routing_keys
            .iter()
            .any(|pattern| topic_matches(pattern, routing_key))
    }

    /// The queue of the ladder step with this delay.
    pub fn retry_queue_name(&self, delay: Duration) -> String {
        retry_queue_name(&self.queue, delay)
    }

    /// Work queue: quorum, poison messages dead-lettered at-least-once, and
    /// one active consumer at a time: the events of one visitor leave it in
    /// publish order, to be routed (or, in direct mode, linked) by one replica.
    pub fn work_queue_arguments(&self) -> FieldTable {
        let mut arguments = quorum(self.quorum_group_size);
        arguments.extend([
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            ),
            ("x-dead-letter-exchange", text(&self.dead_letter)),
            ("x-dead-letter-strategy", text("at-least-once")),
            // at-least-once dead-lettering requires reject-publish.
            ("x-overflow", text("reject-publish")),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ]);
        table(&arguments)
    }

    /// Retry queue: quorum too, so the way back into the work queue is also
    /// at-least-once; the TTL expiry dead-letters into the work queue.
    pub fn retry_queue_arguments(&self, delay: Duration) -> FieldTable {
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let mut arguments = quorum(self.quorum_group_size);
        arguments.extend([
            ("x-message-ttl", AMQPValue::LongLongInt(ttl)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&self.queue)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]);
        table(&arguments)
    }

    /// Partition queue: the same arguments as the work queue; each has its
    /// own single active consumer, so partitions spread over the replicas.
    pub fn partition_queue_arguments(&self) -> FieldTable {
        self.work_queue_arguments()
    }

    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        table(&quorum(self.quorum_group_size))
    }

    /// Declares everything; idempotent, and fails if an existing queue has
    /// other arguments (PRECONDITION_FAILED), which is what an operator wants to know.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        for (exchange, kind) in [
            (&self.exchange, ExchangeKind::Topic),
            (&self.dead_letter, ExchangeKind::Fanout),
        ] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    kind,
                    durable_exchange,
                    FieldTable::default(),
                )
                .await?;
        }
        channel
            .queue_declare(
                self.dead_letter.as_str().into(),
                durable_queue,
                self.dead_letter_queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter.as_str().into(),
                self.dead_letter.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable_queue,
                self.work_queue_arguments(),
            )
            .await?;
        for key in &self.routing_keys {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for retry in &self.retry_queues {
            channel
                .queue_declare(
                    retry.name.as_str().into(),
                    durable_queue,
                    self.retry_queue_arguments(retry.delay),
                )
                .await?;
        }
        for partition in &self.partitions {
            channel
                .queue_declare(
                    partition.as_str().into(),
                    durable_queue,
                    self.partition_queue_arguments(),
                )
                .await?;
        }
        Ok(())
    }

    /// With `LINKER_DECLARE_TOPOLOGY=false`: only check that everything exists.
    /// A failed passive declare closes its channel, so each check gets its own.
    pub async fn verify(&self, connection: &Connection) -> Result<(), String> {
        let passive_queue = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let passive_exchange = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let mut missing = Vec::new();
        for (name, kind) in [
            (self.exchange.as_str(), Some(ExchangeKind::Topic)),
            (self.dead_letter.as_str(), Some(ExchangeKind::Fanout)),
        ] {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            if let Some(kind) = kind
                && let Err(e) = channel
                    .exchange_declare(name.into(), kind, passive_exchange, FieldTable::default())
                    .await
            {
                missing.push(format!("exchange {name:?} ({e})"));
                continue;
            }
            let _ = channel.close(200, "ok".into()).await;
        }
        for name in self.queues() {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            match channel
                .queue_declare(name.into(), passive_queue, FieldTable::default())
                .await
            {
                Ok(_) => {
                    let _ = channel.close(200, "ok".into()).await;
                }
                Err(e) => missing.push(format!("queue {name:?} ({e})")),
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("the broker lacks: {}", missing.join(", ")))
        }
    }

    /// Removes everything this topology declared (tests and the demo).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        for queue in self.queues() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [&self.exchange, &self.dead_letter] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn routing_keys_match_like_a_topic_exchange() {
        for (pattern, key, matches) in [
            ("user.logged_in", "user.logged_in", true),
            ("user.logged_in", "user.signed_up", false),
            ("user.*", "user.logged_in", true),
            ("user.*", "user.a.b", false),
            ("user.#", "user", true),
            ("user.#", "user.a.b", true),
            ("#", "anything.at.all", true),
            ("#.in", "user.logged.in", true),
            ("*.in", "in", false),
            ("user.logged_in", "user.logged_in.extra", false),
        ] {
            assert_eq!(topic_matches(pattern, key), matches, "{pattern} ~ {key}");
        }
    }

    #[test]
    fn every_quorum_queue_gets_the_group_size_when_set() {
        use crate::config::Config;
        use lapin::types::AMQPValue;
        let config = |size: &str| {
            let mut vars = vec![
                (
                    "LINKER_MOS_ENDPOINT_URL".to_owned(),
                    "http://127.0.0.1:1/x".to_owned(),
                ),
                ("LINKER_MOS_SECRET_KEY".to_owned(), "k".to_owned()),
            ];
            if !size.is_empty() {
                vars.push((
                    "LINKER_QUORUM_INITIAL_GROUP_SIZE".to_owned(),
                    size.to_owned(),
                ));
            }
            Config::from_vars(vars).unwrap()
        };
        let size = |table: lapin::types::FieldTable| {
            table
                .inner()
                .get(&lapin::types::ShortString::from(
                    "x-quorum-initial-group-size",
                ))
                .cloned()
        };
        let set = config("3");
        let topology = super::Topology::new(&set.broker, &set.retry.ladder);
        let delay = topology.retry_queues[0].delay;
        for table in [
            topology.work_queue_arguments(),
            topology.partition_queue_arguments(),
            topology.retry_queue_arguments(delay),
            topology.dead_letter_queue_arguments(),
        ] {
            assert_eq!(size(table), Some(AMQPValue::LongInt(3)));
        }
        let unset = config("");
        let topology = super::Topology::new(&unset.broker, &unset.retry.ladder);
        assert_eq!(size(topology.work_queue_arguments()), None);
    }
}
