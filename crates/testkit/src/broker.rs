//! The test side of the broker: connections that fail loudly, queue depths,
//! taking and peeking at messages.

use std::time::{Duration, Instant};

use identity_link_worker::broker::connection::{connect_to, open_confirm_channel, queue_depth};
use identity_link_worker::broker::publisher::Publisher;
use identity_link_worker::config::{AmqpUrl, BrokerTls};
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};

/// The worker's default broker URL (local RabbitMQ, guest).
pub use identity_link_worker::config::DEFAULT_AMQP_URL;

/// The second broker (RabbitMQ 4.0, `scripts/ensure-rabbitmq4`): `RABBITMQ4_URL`,
/// default `amqp://guest:guest@127.0.0.1:5673/%2f`.
pub fn second_amqp_url() -> String {
    std::env::var("RABBITMQ4_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5673/%2f".to_owned())
}

/// The broker the parallel, non-disruptive tests use: `LINKER_AMQP_URL`, else
/// the worker's default (the machine's RabbitMQ on 5672, possibly the user's).
pub fn amqp_url() -> String {
    std::env::var("LINKER_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// The management API of [`amqp_url`]'s broker (no trailing `/api`):
/// `RABBITMQ_MANAGEMENT_URL`, default `http://127.0.0.1:15672`.
pub fn management_url() -> String {
    std::env::var("RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The management API of [`second_amqp_url`]'s broker (RabbitMQ 4.0):
/// `RABBITMQ4_MANAGEMENT_URL`, default `http://127.0.0.1:15673`.
pub fn second_management_url() -> String {
    std::env::var("RABBITMQ4_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15673".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The private broker node of `scripts/rabbitmq-private`, which the tests
/// that cut or restart their broker use instead of [`amqp_url`]'s.
#[derive(Clone, Debug)]
pub struct PrivateNode {
    /// `RABBITMQ_PRIVATE_NODE`, for `rabbitmqctl -n`.
    pub node: String,
    /// `RABBITMQ_PRIVATE_URL`.
    pub amqp_url: String,
    /// `RABBITMQ_PRIVATE_MANAGEMENT_URL` (no trailing `/api`).
    pub management_url: String,
}

impl PrivateNode {
    /// From the variables `scripts/rabbitmq-private env` exports. Missing
    /// ones, or ones that name the shared broker, fail the run: these tests
    /// never fall back to the machine's broker, nor skip.
    pub fn from_env() -> Self {
        let get = |key: &str| match std::env::var(key) {
            Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
            _ => panic!(
                "{key} is not set: the tests that cut or restart their broker run on a \
                 private node only, never on the broker on 5672. Start it with \
                 `bash scripts/rabbitmq-private up && eval \"$(bash scripts/rabbitmq-private env)\"` \
                 (scripts/test does this)."
            ),
        };
        let private = Self {
            node: get("RABBITMQ_PRIVATE_NODE"),
            amqp_url: get("RABBITMQ_PRIVATE_URL"),
            management_url: get("RABBITMQ_PRIVATE_MANAGEMENT_URL")
                .trim_end_matches('/')
                .to_owned(),
        };
        let shared = [amqp_url(), DEFAULT_AMQP_URL.to_owned()];
        assert!(
            !shared.contains(&private.amqp_url)
                && private.node != "rabbit@localhost"
                && private.management_url != management_url(),
            "RABBITMQ_PRIVATE_* name the shared broker ({}, {}); the private node must be \
             another one (scripts/rabbitmq-private)",
            AmqpUrl::new(&private.amqp_url).redacted(),
            private.node
        );
        private
    }

    /// The rabbitmqctl command line that reaches this node and no other.
    pub fn ctl(&self) -> Vec<String> {
        vec!["rabbitmqctl".to_owned(), "-n".to_owned(), self.node.clone()]
    }
}

/// Connects to `url` (or the first node of a comma-separated list that
/// answers); the error as text (the benchmark reports it).
pub async fn try_connect(url: &str, name: &str) -> Result<Connection, String> {
    let mut failures = Vec::new();
    for node in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match connect_to(&AmqpUrl::new(node), &BrokerTls::default(), name).await {
            Ok(connection) => return Ok(connection),
            Err(error) => failures.push(error.to_string()),
        }
    }
    Err(failures.join("; "))
}

/// A connection to [`amqp_url`]. A missing broker fails the run with a
/// clear message: these tests are never skipped.
pub async fn broker() -> Connection {
    broker_at(&amqp_url()).await
}

/// [`broker`] at another URL (the second broker of the partition tests).
pub async fn broker_at(url: &str) -> Connection {
    match try_connect(url, "identity-link-worker tests").await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "RabbitMQ is required for these tests and is not reachable at {}: {error}. \
             Start it with `bash scripts/ensure-rabbitmq` (and `bash scripts/ensure-rabbitmq4` \
             for the second broker); scripts/test does this.",
            AmqpUrl::new(url).redacted()
        ),
    }
}

/// Connects, retrying for up to `limit` (the broker may be restarting).
pub async fn broker_within(limit: Duration) -> Connection {
    broker_within_at(&amqp_url(), limit).await
}

/// [`broker_within`] at another URL.
pub async fn broker_within_at(url: &str, limit: Duration) -> Connection {
    let deadline = Instant::now() + limit;
    loop {
        match try_connect(url, "identity-link-worker tests").await {
            Ok(connection) => return connection,
            Err(error) => {
                assert!(Instant::now() < deadline, "broker unreachable: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Ready messages in `queue` (passive declare: exact, but not counting
/// those a consumer holds unacked).
pub async fn try_depth(connection: &Connection, queue: &str) -> Result<u32, String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("queue {queue}: {e}"))?;
    let ready = queue_depth(&channel, queue)
        .await
        .map_err(|e| format!("queue {queue}: {e}"))?;
    let _ = channel.close(200, "ok".into()).await;
    Ok(ready)
}

/// Ready messages over several queues (the work queue and its partitions).
pub async fn backlog<'a>(
    connection: &Connection,
    queues: impl IntoIterator<Item = &'a str>,
) -> u64 {
    let mut total = 0;
    for queue in queues {
        total += u64::from(depth(connection, queue).await);
    }
    total
}

/// [`try_depth`]; a missing queue fails the test.
pub async fn depth(connection: &Connection, queue: &str) -> u32 {
    try_depth(connection, queue)
        .await
        .unwrap_or_else(|e| panic!("depth of {e}"))
}

/// Takes every message out of `queue` (each acked, so removed).
pub async fn take_all(connection: &Connection, queue: &str) -> Vec<Delivery> {
    let channel = connection.create_channel().await.expect("a channel");
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
    {
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack a taken message");
        out.push(message.delivery);
    }
    let _ = channel.close(200, "taken".into()).await;
    out
}

/// Up to `n` messages of `queue`, looked at and put back (unacked, then
/// the channel is closed): the queue keeps them.
pub async fn peek(connection: &Connection, queue: &str, n: usize) -> Vec<Delivery> {
    let channel = connection.create_channel().await.expect("a channel");
    let mut out = Vec::new();
    while out.len() < n {
        let Ok(Some(message)) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
        else {
            break;
        };
        out.push(message.delivery);
    }
    let _ = channel.close(200, "peeked".into()).await;
    out
}

/// A publisher with confirms on a channel of its own.
pub async fn publisher(connection: &Connection) -> Publisher {
    Publisher::new(
        open_confirm_channel(connection)
            .await
            .expect("a confirm channel"),
    )
}
