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

/// `total` deliveries in hand at most, over `consumers` consumers; one each
/// at the least (only a total below the consumer count exceeds itself).
pub fn per_consumer_prefetch(total: std::num::NonZeroU16, consumers: usize) -> u16 {
    let consumers = u16::try_from(consumers.max(1)).unwrap_or(u16::MAX);
    (total.get() / consumers).max(1)
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
        // RabbitMQ applies a channel's prefetch to each of its consumers, and
        // quorum queues refuse a channel-wide one: split LINKER_PREFETCH over
        // the consumers (work queue + partitions), so it bounds what this
        // replica holds in all, and so its memory (README "Hostile input").
        consume
            .basic_qos(
                per_consumer_prefetch(broker.prefetch, topology.partitions.len() + 1),
                BasicQosOptions::default(),
            )
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::per_consumer_prefetch;

    #[test]
    fn the_prefetch_is_a_total_over_every_consumer() {
        let total = |n| NonZeroU16::new(n).unwrap();
        assert_eq!(per_consumer_prefetch(total(256), 1), 256);
        // Work queue + 16 partitions: 15 each, 255 in all.
        assert_eq!(per_consumer_prefetch(total(256), 17), 15);
        assert_eq!(per_consumer_prefetch(total(4), 17), 1);
        assert_eq!(per_consumer_prefetch(total(1), 0), 1);
    }
}
