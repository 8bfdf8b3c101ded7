//! Test harness: a worker built in process with a private topology (random
//! names), a private mos-sim on port 0, and a test-side broker connection.
//! A missing broker fails the test loudly; nothing is skipped. The shared
//! pieces are in `testkit`; what is here is this suite's own.

use std::net::SocketAddr;
use std::time::Duration;

use identity_link_worker::broker::headers;
use identity_link_worker::broker::publisher::Publisher;
use identity_link_worker::broker::topology::Topology;
use lapin::message::Delivery;
use lapin::types::ShortString;
use lapin::{BasicProperties, Connection};
use mos_sim::{Faults, MosSim, RateFault, SimConfig};
use testkit::names::{Vars, private_vars};
use testkit::worker::{InProcess, Private};

pub use testkit::broker::{amqp_url, broker, depth};
pub use testkit::names::with;
pub use testkit::wait::wait_for;

pub const KEY: &str = "test-secret-key-3f9a";

/// A private mos-sim on port 0.
pub async fn start_sim(config: SimConfig) -> MosSim {
    testkit::sim::start(config).await
}

/// The simulator configuration every test starts from: it accepts [`KEY`].
pub fn sim_config() -> SimConfig {
    SimConfig {
        secret_key: KEY.into(),
        ..SimConfig::default()
    }
}

/// [`sim_config`] with `faults`.
pub fn faulty(faults: Faults) -> SimConfig {
    SimConfig {
        faults,
        ..sim_config()
    }
}

/// The target answers these statuses, one per call, then succeeds.
pub fn statuses(statuses: &[u16]) -> Faults {
    Faults {
        statuses: statuses.to_vec(),
        ..Faults::default()
    }
}

/// The target answers `status` to every call.
pub fn always(status: u16) -> Faults {
    Faults {
        rate: Some(RateFault {
            status,
            probability: 1.0,
        }),
        ..Faults::default()
    }
}

/// Variables on top of the test defaults (fast retry ladder, port 0, private names).
pub fn base_vars(sim: &MosSim) -> Vars {
    with(
        private_vars("test", &amqp_url(), &sim.endpoint_url(), KEY),
        &[
            ("LINKER_HTTP_ADDR", "127.0.0.1:0"),
            ("LINKER_RETRY_DELAYS", "200ms,400ms"),
            ("LINKER_CIRCUIT_PROBE_INTERVAL", "300ms"),
            ("LINKER_SHUTDOWN_GRACE", "5s"),
        ],
    )
}

pub struct TestApp {
    pub sim: MosSim,
    pub private: Private,
    /// The running worker and its metrics.
    pub worker: InProcess,
    pub ops: SocketAddr,
    pub topology: Topology,
    pub connection: Connection,
    pub publisher: Publisher,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(sim_config(), &[]).await
    }

    pub async fn spawn_with(sim_config: SimConfig, overrides: &[(&str, &str)]) -> Self {
        let sim = start_sim(sim_config).await;
        let private = Private::from_vars(with(base_vars(&sim), overrides));
        Self::start(sim, private).await
    }

    /// Starts the worker for `private` and waits until it is ready.
    pub async fn start(sim: MosSim, private: Private) -> Self {
        let connection = broker().await;
        let worker = InProcess::start(&private).await;
        let publisher = testkit::broker::publisher(&connection).await;
        let test = Self {
            sim,
            ops: worker.ops,
            topology: worker.topology.clone(),
            private,
            worker,
            connection,
            publisher,
        };
        test.wait_ready().await;
        test
    }

    /// The exchange the worker consumes from.
    pub fn exchange(&self) -> &str {
        self.private.exchange()
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
            .publish(self.exchange(), routing_key, body, properties)
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

    /// `n` distinct pairs `a-{name}-{i}` / `u-{name}-{i}`.
    pub async fn publish_pairs(&self, routing_key: &str, name: &str, n: usize) {
        for i in 0..n {
            self.publish_pair(
                routing_key,
                &format!("a-{name}-{i}"),
                &format!("u-{name}-{i}"),
            )
            .await;
        }
    }

    /// Waits until at least `n` messages have a final or retry outcome.
    pub async fn wait_settled(&self, n: u64) {
        wait_for(
            &format!("{n} messages to settle"),
            Duration::from_secs(30),
            || async { self.worker.settled() >= n },
        )
        .await;
    }

    /// Publishes each of `bodies`.
    pub async fn publish_each(&self, routing_key: &str, bodies: impl IntoIterator<Item = &[u8]>) {
        for body in bodies {
            self.publish(routing_key, body).await;
        }
    }

    /// Waits until `n` messages settled, stops the worker, and checks that
    /// every message was acked: nothing is left in (or returned to) the
    /// work queue.
    pub async fn settle_and_stop(&mut self, n: u64) {
        self.wait_settled(n).await;
        self.stop_worker().await;
        assert_eq!(self.depth(&self.topology.queue).await, 0, "all acked");
    }

    /// Waits until the circuit is open.
    pub async fn wait_circuit_open(&self, limit: Duration) {
        wait_for("the circuit to open", limit, || async {
            self.worker.circuit_open() == 1
        })
        .await;
    }

    /// Calls the simulator has answered.
    pub fn requests(&self) -> u64 {
        self.sim.stats().requests
    }

    pub fn outcome(&self, name: &str) -> u64 {
        self.worker.outcome(name)
    }

    pub async fn depth(&self, queue: &str) -> u32 {
        depth(&self.connection, queue).await
    }

    /// Takes every dead letter out of the dead-letter queue (acked).
    pub async fn take_dead_letters(&self) -> Vec<Delivery> {
        testkit::broker::take_all(&self.connection, &self.topology.dead_letter).await
    }

    /// Stops the worker (graceful) and waits for it.
    pub async fn stop_worker(&mut self) {
        self.worker.stop().await;
    }

    /// Stops the worker and deletes the private topology.
    pub async fn finish(mut self) {
        self.stop_worker().await;
        self.private
            .delete(&self.connection)
            .await
            .expect("delete the private topology");
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// Declares `private`'s topology and queues `bodies` on its exchange
/// (`user.logged_in`, persistent, confirmed), for a worker started after.
pub async fn queue_before_start(
    connection: &Connection,
    private: &Private,
    bodies: impl IntoIterator<Item = Vec<u8>>,
) {
    private
        .declare(connection)
        .await
        .expect("declare the topology");
    let publisher = testkit::broker::publisher(connection).await;
    for body in bodies {
        publisher
            .publish(
                private.exchange(),
                "user.logged_in",
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("queued before the worker starts");
    }
}

/// `n` distinct pairs `a-{name}-{i}` / `u-{name}-{i}` as event bodies.
pub fn pair_bodies(name: &str, n: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(move |i| {
        serde_json::json!({"anonymousId": format!("a-{name}-{i}"), "userId": format!("u-{name}-{i}")})
            .to_string()
            .into_bytes()
    })
}

pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    headers::get_str(&delivery.properties, name)
}

/// A numeric header; `None` when it is missing, so a test that expects
/// `Some(0)` fails on a dead letter without the header.
pub fn header_u32(delivery: &Delivery, name: &str) -> Option<u32> {
    headers::get_u32(&delivery.properties, name)
}

/// The dead letter's `x-linker-reason`.
pub fn reason(delivery: &Delivery) -> Option<String> {
    header(delivery, headers::REASON)
}
