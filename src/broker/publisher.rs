//! Publishing with publisher confirms: a message is acked only once its copy
//! is confirmed by the broker, so a crash can repeat work, never lose it.

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish failed: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message (nack) for {exchange:?}/{routing_key:?}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error("no queue is bound for {exchange:?}/{routing_key:?} (returned as unroutable)")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// `channel` must be in confirm mode.
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `mandatory` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            // Only if confirm mode was not enabled, which `connection` always does.
            Confirmation::NotRequested => Ok(()),
        }
    }
}
