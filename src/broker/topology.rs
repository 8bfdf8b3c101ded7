//! Every exchange and queue the worker uses, all named from `LINKER_QUEUE`
//! and `LINKER_EXCHANGE`, declared idempotently (or only checked).

use std::fmt;
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

/// One exchange, queue or binding of the topology, as `check-config` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyObject {
    Exchange(String),
    Queue(String),
    /// `queue` bound to `exchange` with the binding key `key` (empty for a fanout).
    Binding {
        exchange: String,
        queue: String,
        key: String,
    },
}

impl fmt::Display for TopologyObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyObject::Exchange(name) => write!(f, "exchange {name}"),
            TopologyObject::Queue(name) => write!(f, "queue {name}"),
            TopologyObject::Binding {
                exchange,
                queue,
                key,
            } if key.is_empty() => write!(f, "binding {exchange} -> {queue}"),
            TopologyObject::Binding {
                exchange,
                queue,
                key,
            } => write!(f, "binding {exchange} -> {queue} (key {key})"),
        }
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
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
    pub async fn verify(&self, connection: &Connection) -> Result<(), String> {
        let missing = self.missing(connection).await.map_err(|e| e.to_string())?;
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        Err(format!("the broker lacks: {}", names.join(", ")))
    }

    /// Every exchange, queue and binding of the topology, in the order
    /// [`Topology::declare`] creates them (exchanges, queues, bindings).
    pub fn objects(&self) -> Vec<TopologyObject> {
        let exchanges = [&self.exchange, &self.dead_letter]
            .into_iter()
            .map(|name| TopologyObject::Exchange(name.clone()));
        let queues = self
            .queues()
            .map(|name| TopologyObject::Queue(name.to_owned()));
        let dead_letter_binding = TopologyObject::Binding {
            exchange: self.dead_letter.clone(),
            queue: self.dead_letter.clone(),
            key: String::new(),
        };
        let work_bindings = self.routing_keys.iter().map(|key| TopologyObject::Binding {
            exchange: self.exchange.clone(),
            queue: self.queue.clone(),
            key: key.clone(),
        });
        exchanges
            .chain(queues)
            .chain(std::iter::once(dead_letter_binding))
            .chain(work_bindings)
            .collect()
    }

    /// What is missing, given which exchanges and queues `exists`. AMQP
    /// 0-9-1 cannot look a binding up, so a binding is listed when one of
    /// its ends is missing (then it cannot exist) and assumed otherwise.
    pub fn missing_given(&self, exists: impl Fn(&TopologyObject) -> bool) -> Vec<TopologyObject> {
        self.objects()
            .into_iter()
            .filter(|object| match object {
                TopologyObject::Binding {
                    exchange, queue, ..
                } => {
                    !exists(&TopologyObject::Exchange(exchange.clone()))
                        || !exists(&TopologyObject::Queue(queue.clone()))
                }
                other => !exists(other),
            })
            .collect()
    }

    /// The objects the broker lacks (empty: all there), by passive declares.
    /// A failed passive declare closes its channel, so each check gets its
    /// own; an error other than NOT_FOUND (access refused, a lost
    /// connection) is returned, not reported as a missing object.
    pub async fn missing(&self, connection: &Connection) -> lapin::Result<Vec<TopologyObject>> {
        let mut absent = Vec::new();
        for object in self.objects() {
            let channel = match &object {
                TopologyObject::Binding { .. } => continue,
                _ => connection.create_channel().await?,
            };
            let found = match &object {
                // A passive declare checks the name only, not the kind.
                TopologyObject::Exchange(name) => {
                    channel
                        .exchange_declare(
                            name.as_str().into(),
                            ExchangeKind::Topic,
                            ExchangeDeclareOptions {
                                passive: true,
                                ..ExchangeDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                }
                TopologyObject::Queue(name) => channel
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(drop),
                TopologyObject::Binding { .. } => Ok(()),
            };
            match found {
                Ok(()) => {
                    let _ = channel.close(200, "ok".into()).await;
                }
                Err(error) if is_not_found(&error) => absent.push(object),
                Err(error) => return Err(error),
            }
        }
        Ok(self.missing_given(|object| !absent.contains(object)))
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
    use super::{TopologyObject, topic_matches};

    fn topology(vars: &[(&str, &str)]) -> super::Topology {
        let mut all = vec![
            (
                "LINKER_MOS_ENDPOINT_URL".to_owned(),
                "http://127.0.0.1:1/x".to_owned(),
            ),
            ("LINKER_MOS_SECRET_KEY".to_owned(), "k".to_owned()),
        ];
        all.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let config = crate::config::Config::from_vars(all).unwrap();
        super::Topology::new(&config.broker, &config.retry.ladder)
    }

    #[test]
    fn what_is_missing_is_listed_one_object_each() {
        let topology = topology(&[
            ("LINKER_QUEUE", "q"),
            ("LINKER_EXCHANGE", "ex"),
            ("LINKER_ROUTING_KEYS", "user.a,user.b"),
            ("LINKER_RETRY_DELAYS", "10s,1m"),
            ("LINKER_PARTITIONS", "0"),
        ]);
        assert!(topology.missing_given(|_| true).is_empty(), "all there");
        let shown = |missing: Vec<TopologyObject>| {
            missing.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        // One retry queue gone: that queue alone.
        let retry = TopologyObject::Queue("q.retry.10s".into());
        assert_eq!(
            shown(topology.missing_given(|o| *o != retry)),
            ["queue q.retry.10s"]
        );
        // The work queue gone: it and each of its bindings.
        let work = TopologyObject::Queue("q".into());
        assert_eq!(
            shown(topology.missing_given(|o| *o != work)),
            [
                "queue q",
                "binding ex -> q (key user.a)",
                "binding ex -> q (key user.b)"
            ]
        );
        // Nothing there: every object, exchanges first.
        assert_eq!(
            shown(topology.missing_given(|_| false)),
            [
                "exchange ex",
                "exchange q.dead",
                "queue q",
                "queue q.dead",
                "queue q.retry.10s",
                "queue q.retry.1m",
                "binding q.dead -> q.dead",
                "binding ex -> q (key user.a)",
                "binding ex -> q (key user.b)",
            ]
        );
    }

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
