//! The three-node RabbitMQ cluster of `scripts/rabbitmq-cluster`: start it,
//! kill, stop and start its nodes, run rabbitmqctl on one.

use std::collections::HashMap;

/// The script, from the repository (the tests run in its root).
pub const CLUSTER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster");

/// The nodes, by their short names.
pub const NODES: [&str; 3] = ["c1", "c2", "c3"];

/// What `rabbitmq-cluster env` prints.
pub struct Cluster {
    /// The three nodes' AMQP URLs, comma-separated (`LINKER_AMQP_URL`).
    pub urls: String,
    /// The same over TLS (`amqps://localhost:569x`).
    pub tls_urls: Vec<String>,
    pub ca_file: String,
    pub other_ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
}

async fn script(args: &[&str]) -> String {
    super::ctl(&["bash", CLUSTER_SCRIPT], args).await
}

impl Cluster {
    /// Starts the cluster if it is not up (a no-op check when it is), and
    /// every node that is down: a scenario that failed half-way leaves none
    /// stopped for the next.
    pub async fn up() -> Self {
        script(&["up"]).await;
        let env: HashMap<String, String> = script(&["env"])
            .await
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        let get = |key: &str| {
            env.get(key)
                .cloned()
                .unwrap_or_else(|| panic!("rabbitmq-cluster env: no {key}"))
        };
        Self {
            urls: get("RABBITMQ_CLUSTER_URLS"),
            tls_urls: get("RABBITMQ_CLUSTER_TLS_URLS")
                .split(',')
                .map(str::to_owned)
                .collect(),
            ca_file: get("RABBITMQ_CLUSTER_CA_FILE"),
            other_ca_file: get("RABBITMQ_CLUSTER_OTHER_CA_FILE"),
            client_cert_file: get("RABBITMQ_CLUSTER_CLIENT_CERT_FILE"),
            client_key_file: get("RABBITMQ_CLUSTER_CLIENT_KEY_FILE"),
        }
    }

    /// SIGKILL of the node's Erlang VM.
    pub async fn kill(node: &str) {
        script(&["kill", node]).await;
    }

    /// A clean stop of the whole node.
    pub async fn stop(node: &str) {
        script(&["stop", node]).await;
    }

    /// Starts the nodes (together: a node that was not the last of its
    /// peers to go waits for them while it boots); returns once they run
    /// and take connections.
    pub async fn start(nodes: &[&str]) {
        let mut args = vec!["start"];
        args.extend_from_slice(nodes);
        script(&args).await;
    }

    /// The rabbitmqctl command line for `node`.
    pub fn ctl(node: &str) -> Vec<String> {
        ["bash", CLUSTER_SCRIPT, "ctl", node]
            .map(str::to_owned)
            .to_vec()
    }

    /// The node (short name) behind `host:port`, by its AMQP or TLS port.
    pub fn node_of(address: &str) -> Option<&'static str> {
        let port: u16 = address.rsplit(':').next()?.parse().ok()?;
        match port {
            5681 | 5691 => Some("c1"),
            5682 | 5692 => Some("c2"),
            5683 | 5693 => Some("c3"),
            _ => None,
        }
    }
}

/// The node a worker's session is on, from its `identity_linker_broker_node`.
pub fn connected_node(metrics_text: &str) -> Option<&'static str> {
    metrics_text.lines().find_map(|line| {
        let rest = line.strip_prefix("identity_linker_broker_node{node=\"")?;
        let (address, value) = rest.split_once("\"}")?;
        (value.trim() == "1").then(|| Cluster::node_of(address))?
    })
}
