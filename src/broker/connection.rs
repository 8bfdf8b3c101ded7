//! One broker session: a connection, a consuming channel with prefetch, and
//! a publishing channel in confirm mode.

use lapin::options::{BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties};

use super::publisher::Publisher;
use super::topology::Topology;
use crate::config::{AmqpUrl, BrokerConfig};

pub struct BrokerSession {
    pub connection: Connection,
    pub consume: Channel,
    pub publisher: Publisher,
    /// Set when this session can no longer settle messages; it is then replaced.
    pub broken: tokio_util::sync::CancellationToken,
    /// Set when the deliveries still in hand must be let go (see `SessionContext::abort`).
    pub abort: tokio_util::sync::CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect { url: String, source: lapin::Error },
    #[error("broker channel setup failed: {0}")]
    Channel(lapin::Error),
    #[error("declaring the topology failed: {0}")]
    Declare(lapin::Error),
    #[error("LINKER_DECLARE_TOPOLOGY=false and {0}")]
    Verify(String),
}

pub async fn connect(url: &AmqpUrl, name: &str) -> Result<Connection, SessionError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    Connection::connect(url.expose(), properties)
        .await
        .map_err(|source| SessionError::Connect {
            url: url.redacted(),
            source,
        })
}

impl BrokerSession {
    pub async fn open(broker: &BrokerConfig, topology: &Topology) -> Result<Self, SessionError> {
        let connection = connect(&broker.amqp_url, "identity-link-worker").await?;
        if broker.declare_topology {
            let channel = connection
                .create_channel()
                .await
                .map_err(SessionError::Channel)?;
            topology
                .declare(&channel)
                .await
                .map_err(SessionError::Declare)?;
            let _ = channel.close(200, "topology declared".into()).await;
        } else {
            topology
                .verify(&connection)
                .await
                .map_err(SessionError::Verify)?;
        }
        let consume = connection
            .create_channel()
            .await
            .map_err(SessionError::Channel)?;
        // Per consumer: RabbitMQ applies a channel's prefetch to each of its
        // consumers, and quorum queues refuse a channel-wide one. Splitting it
        // over the partitions was tried and cost 3 replicas two thirds of
        // their throughput (each is active on a few partitions only), so the
        // memory bound is stated per consumer instead (README "Hostile input").
        consume
            .basic_qos(broker.prefetch.get(), BasicQosOptions::default())
            .await
            .map_err(SessionError::Channel)?;
        let publish = open_confirm_channel(&connection)
            .await
            .map_err(SessionError::Channel)?;
        Ok(Self {
            connection,
            consume,
            publisher: Publisher::new(publish),
            broken: tokio_util::sync::CancellationToken::new(),
            abort: tokio_util::sync::CancellationToken::new(),
        })
    }

    pub async fn close(&self) {
        let _ = self.consume.close(200, "shutting down".into()).await;
        let _ = self
            .publisher
            .channel()
            .close(200, "shutting down".into())
            .await;
        let _ = self.connection.close(200, "shutting down".into()).await;
    }
}

pub async fn open_confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Messages ready in `queue` (a passive declare: fails if it does not exist).
pub async fn queue_depth(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}
