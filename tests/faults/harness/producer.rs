//! Publishing that survives broker faults.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use identity_link_worker::broker::connection::open_confirm_channel;
use identity_link_worker::broker::publisher::Publisher;
use lapin::Connection;
use testkit::broker::try_connect;

use super::{Event, Scenario};

/// Publishes with confirms and survives broker faults: on any error it
/// reconnects and publishes what was not confirmed again (a message whose
/// confirm was lost is then queued twice, which the worker must absorb).
pub struct Producer {
    exchange: String,
    amqp_url: String,
    current: Option<(Connection, Publisher)>,
    pub republished: usize,
}

impl Producer {
    pub fn new(scenario: &Scenario) -> Self {
        Self {
            exchange: scenario.exchange().to_owned(),
            amqp_url: scenario.amqp_url.clone(),
            current: None,
            republished: 0,
        }
    }

    async fn publisher(&mut self) -> Publisher {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some((connection, publisher)) = &self.current {
                if connection.status().connected() {
                    return publisher.clone();
                }
                self.current = None;
            }
            if let Ok(connection) =
                try_connect(&self.amqp_url, "identity-link-worker faults producer").await
                && let Ok(channel) = open_confirm_channel(&connection).await
            {
                self.current = Some((connection, Publisher::new(channel)));
                continue;
            }
            assert!(Instant::now() < deadline, "producer: broker unreachable");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn send(&mut self, events: &[Event]) {
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let deadline = Instant::now() + Duration::from_secs(240);
        while !pending.is_empty() {
            let publisher = self.publisher().await;
            let exchange = self.exchange.as_str();
            let results: Vec<(usize, Result<(), String>)> = futures_util::stream::iter(pending)
                .map(|i| {
                    let publisher = publisher.clone();
                    let e = &events[i];
                    async move {
                        let result = tokio::time::timeout(
                            Duration::from_secs(10),
                            publisher.publish(exchange, e.routing_key, &e.body, e.properties()),
                        )
                        .await;
                        let result = match result {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(error)) => Err(error.to_string()),
                            Err(_) => Err("confirm timed out".to_owned()),
                        };
                        (i, result)
                    }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            let failed: Vec<(usize, String)> = results
                .into_iter()
                .filter_map(|(i, r)| r.err().map(|e| (i, e)))
                .collect();
            if let Some((_, error)) = failed.first() {
                assert!(
                    Instant::now() < deadline,
                    "producer: could not publish: {error}"
                );
                self.republished += failed.len();
                if let Some((connection, _)) = self.current.take() {
                    let _ = connection.close(200, "republishing".into()).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            pending = failed.into_iter().map(|(i, _)| i).collect();
        }
    }

    /// `events` in chunks of `chunk`, one chunk per `every`.
    pub async fn send_paced(&mut self, events: &[Event], chunk: usize, every: Duration) {
        let mut tick = tokio::time::interval(every);
        for part in events.chunks(chunk) {
            tick.tick().await;
            self.send(part).await;
        }
    }

    pub async fn close(mut self) {
        if let Some((connection, _)) = self.current.take() {
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

/// Publishes `events` in the background, 100 every 100 ms (about 1 000/s);
/// the task yields how many the producer had to publish again.
pub fn produce_paced(scenario: &Scenario, events: &[Event]) -> tokio::task::JoinHandle<usize> {
    let mut producer = Producer::new(scenario);
    let events = events.to_vec();
    tokio::spawn(async move {
        producer
            .send_paced(&events, 100, Duration::from_millis(100))
            .await;
        let republished = producer.republished;
        producer.close().await;
        republished
    })
}
