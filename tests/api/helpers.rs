//! Test harness: a worker built in process with a private topology (random
//! names), a private mos-sim on port 0, and a test-side broker connection.
//! A missing broker fails the test loudly; nothing is skipped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use identity_link_worker::app::Application;
use identity_link_worker::broker::connection::{connect, open_confirm_channel};
use identity_link_worker::broker::publisher::Publisher;
use identity_link_worker::broker::topology::Topology;
use identity_link_worker::config::{AmqpUrl, Config, DEFAULT_AMQP_URL};
use identity_link_worker::ops::metrics::Metrics;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use mos_sim::{MosSim, SimConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const KEY: &str = "test-secret-key-3f9a";

pub fn amqp_url() -> String {
    std::env::var("LINKER_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

pub async fn broker() -> Connection {
    match connect(&AmqpUrl::new(amqp_url()), "identity-link-worker tests").await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "RabbitMQ is required for these tests and is not reachable: {error}. \
             Start it with `rabbitmq-server -detached` (scripts/test does this)."
        ),
    }
}

/// A private mos-sim on port 0.
pub async fn start_sim(config: SimConfig) -> MosSim {
    MosSim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

/// The simulator configuration every test starts from: it accepts [`KEY`].
pub fn sim_config() -> SimConfig {
    SimConfig {
        secret_key: KEY.into(),
        ..SimConfig::default()
    }
}

pub struct TestApp {
    pub sim: MosSim,
    pub config: Config,
    pub ops: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub topology: Topology,
    pub connection: Connection,
    pub publisher: Publisher,
    stop: CancellationToken,
    worker: Option<JoinHandle<()>>,
}

/// Variables on top of the test defaults (fast retry ladder, port 0, private names).
pub fn base_vars(sim: &MosSim) -> Vec<(String, String)> {
    let suffix = suffix();
    vec![
        ("LINKER_AMQP_URL".into(), amqp_url()),
        ("LINKER_QUEUE".into(), format!("test-{suffix}")),
        (
            "LINKER_EXCHANGE".into(),
            format!("test-{suffix}.auth.events"),
        ),
        ("LINKER_MOS_ENDPOINT_URL".into(), sim.endpoint_url()),
        ("LINKER_MOS_SECRET_KEY".into(), KEY.into()),
        ("LINKER_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("LINKER_RETRY_DELAYS".into(), "200ms,400ms".into()),
        ("LINKER_CIRCUIT_PROBE_INTERVAL".into(), "300ms".into()),
        ("LINKER_SHUTDOWN_GRACE".into(), "5s".into()),
    ]
}

pub fn with(mut vars: Vec<(String, String)>, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    for (name, value) in overrides {
        vars.retain(|(k, _)| k != name);
        vars.push(((*name).to_owned(), (*value).to_owned()));
    }
    vars
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(
            SimConfig {
                secret_key: KEY.into(),
                ..SimConfig::default()
            },
            &[],
        )
        .await
    }

    pub async fn spawn_with(sim_config: SimConfig, overrides: &[(&str, &str)]) -> Self {
        let sim = start_sim(sim_config).await;
        let vars = with(base_vars(&sim), overrides);
        let config = Config::from_vars(vars).expect("test configuration");
        Self::start(sim, config).await
    }

    pub async fn start(sim: MosSim, config: Config) -> Self {
        // Logs appear with a failing test's output (RUST_LOG=debug for more).
        identity_link_worker::ops::telemetry::init_with_default(
            identity_link_worker::config::LogFormat::Text,
            identity_link_worker::config::IdentifierLogging::Hashed,
            "warn",
        );
        let connection = broker().await;
        let app = Application::build(config.clone())
            .await
            .expect("worker builds");
        let ops = app.ops_addr();
        let metrics = app.metrics();
        let topology = app.topology().clone();
        let stop = CancellationToken::new();
        let worker = tokio::spawn(app.run_until_stopped(stop.clone()));
        let publisher = Publisher::new(open_confirm_channel(&connection).await.unwrap());
        let test = Self {
            sim,
            config,
            ops,
            metrics,
            topology,
            connection,
            publisher,
            stop,
            worker: Some(worker),
        };
        test.wait_ready().await;
        test
    }

    pub async fn wait_ready(&self) {
        wait_for(
            "the worker to be ready",
            Duration::from_secs(20),
            || async { self.readyz().await.0 == 200 },
        )
        .await;
    }

    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        match reqwest::get(format!("http://{}/readyz", self.ops)).await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or_default())
            }
            Err(_) => (0, serde_json::Value::Null),
        }
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        self.publisher
            .publish(&self.config.broker.exchange, routing_key, body, properties)
            .await
            .expect("test publish confirmed");
    }

    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(uuid::Uuid::new_v4().to_string()));
        self.publish_raw(routing_key, body, properties).await;
    }

    pub async fn publish_pair(&self, routing_key: &str, anonymous: &str, user: &str) {
        let body = serde_json::json!({"anonymousId": anonymous, "userId": user}).to_string();
        self.publish(routing_key, body.as_bytes()).await;
    }

    /// Waits until at least `n` messages have a final or retry outcome.
    pub async fn wait_settled(&self, n: u64) {
        let metrics = self.metrics.clone();
        wait_for(
            &format!("{n} messages to settle"),
            Duration::from_secs(30),
            || {
                let metrics = metrics.clone();
                async move { metrics.settled_total() >= n }
            },
        )
        .await;
    }

    pub fn outcome(&self, name: &str) -> u64 {
        self.metrics
            .outcome_totals()
            .into_iter()
            .find(|(o, _)| *o == name)
            .map_or(0, |(_, n)| n)
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        queue_depth(&self.connection, queue).await
    }

    /// Takes every dead letter out of the dead-letter queue (acked).
    pub async fn take_dead_letters(&self) -> Vec<lapin::message::Delivery> {
        take_all(&self.connection, &self.topology.dead_letter).await
    }

    /// Stops the worker (graceful) and waits for it.
    pub async fn stop_worker(&mut self) {
        self.stop.cancel();
        if let Some(worker) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(30), worker)
                .await
                .expect("worker stops within 30 s")
                .expect("worker task did not panic");
        }
    }

    /// Stops the worker and deletes the private topology.
    pub async fn finish(mut self) {
        self.stop_worker().await;
        let channel = self.connection.create_channel().await.unwrap();
        self.topology.delete(&channel).await.unwrap();
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

pub async fn queue_depth(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "ok".into()).await;
    declared.message_count()
}

pub async fn take_all(connection: &Connection, queue: &str) -> Vec<lapin::message::Delivery> {
    let channel = connection.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        out.push(message.delivery);
    }
    let _ = channel.close(200, "ok".into()).await;
    out
}

pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    identity_link_worker::broker::headers::get_str(&delivery.properties, name)
}

pub fn header_u32(delivery: &lapin::message::Delivery, name: &str) -> u32 {
    identity_link_worker::broker::headers::get_u32(&delivery.properties, name)
}
