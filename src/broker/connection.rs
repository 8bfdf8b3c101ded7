//! One broker session: a connection, a consuming channel with prefetch, and
//! a publishing channel in confirm mode.

use lapin::options::{BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties, DefaultConnectionBuilder};
use std::path::Path;
use std::time::Duration;

use super::publisher::Publisher;
use super::topology::Topology;
use super::version;
use crate::config::{AmqpUrl, BrokerConfig, BrokerTls};
use crate::ops::metrics::Metrics;

pub struct BrokerSession {
    pub connection: Connection,
    pub consume: Channel,
    pub publisher: Publisher,
    /// Index in `LINKER_AMQP_URL`'s list of the node this session is on.
    pub node: usize,
    /// Set when this session can no longer settle messages; it is then replaced.
    pub broken: tokio_util::sync::CancellationToken,
    /// Set when the deliveries still in hand must be let go (see `SessionContext::abort`).
    pub abort: tokio_util::sync::CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to the broker at {url}: {source}{}", hint(source))]
    Connect { url: String, source: lapin::Error },
    #[error("cannot connect to the broker at {url}: no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { url: String },
    /// lapin would only say it could not parse what came back.
    #[error(
        "cannot connect to the broker at {url}: {node} answered, but not as an AMQP broker ({saw}); check the port in LINKER_AMQP_URL (5672 for amqp://, 5671 for amqps://)"
    )]
    NotAmqp {
        url: String,
        node: String,
        saw: String,
    },
    #[error("{variable}: cannot read {path}: {problem}")]
    TlsFile {
        variable: &'static str,
        path: String,
        problem: String,
    },
    #[error("broker channel setup failed: {0}")]
    Channel(lapin::Error),
    #[error("declaring the topology failed: {0}")]
    Declare(lapin::Error),
    #[error("LINKER_DECLARE_TOPOLOGY=false and {0}")]
    Verify(String),
    #[error("no broker node took the session: {}", .0.join("; "))]
    EveryNode(Vec<String>),
}

/// What an operator needs to know about a TLS failure, which lapin reports
/// only in rustls's words.
fn hint(error: &lapin::Error) -> &'static str {
    let text = error.to_string();
    if text.contains("UnknownIssuer") {
        " (the broker's certificate is signed by a CA this worker does not trust: \
         set LINKER_AMQP_CA_FILE to that CA's PEM file)"
    } else if text.contains("NotValidForName") {
        " (the broker's certificate does not name the URL's host: use a host it was issued for)"
    } else if text.contains("certificate") {
        " (TLS: check LINKER_AMQP_CA_FILE and the client certificate variables)"
    } else if matches!(error.kind(), lapin::ErrorKind::IOError(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    {
        " (nothing listens on that port: check the host and port in LINKER_AMQP_URL, or whether the broker is up)"
    } else {
        ""
    }
}

/// How long one node gets to answer: a node that is down refuses at once,
/// one cut off by the network would otherwise hold up the whole round.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The order this process tries the broker's nodes in. Shuffled once per
/// process, so the replicas' connections spread over a cluster; after a
/// session ends, the node after the one it used comes first, so a lost node
/// is tried last.
#[derive(Debug, Clone)]
pub struct NodeOrder {
    order: Vec<usize>,
    /// Position in `order` where the next round starts.
    next: usize,
}

impl NodeOrder {
    pub fn shuffled(nodes: usize) -> Self {
        let mut order: Vec<usize> = (0..nodes).collect();
        // Fisher-Yates.
        for i in (1..order.len()).rev() {
            order.swap(i, rand::random_range(0..=i));
        }
        Self { order, next: 0 }
    }

    /// The nodes as listed (the one-shot tools: the first URL first).
    pub fn as_listed(nodes: usize) -> Self {
        Self {
            order: (0..nodes).collect(),
            next: 0,
        }
    }

    /// Every node once, from where the last round left off.
    pub fn round(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.order.len();
        (0..n).map(move |i| self.order[(self.next + i) % n])
    }

    /// A session on `node` ended: the next round starts after it.
    pub fn moved_past(&mut self, node: usize) {
        if let Some(position) = self.order.iter().position(|&n| n == node) {
            self.next = (position + 1) % self.order.len();
        }
    }
}

fn read_tls_file(variable: &'static str, path: &Path) -> Result<Vec<u8>, SessionError> {
    std::fs::read(path).map_err(|e| SessionError::TlsFile {
        variable,
        path: path.display().to_string(),
        problem: e.to_string(),
    })
}

/// The TLS settings of an `amqps://` connection, from the files as they are now.
fn tls_config(tls: &BrokerTls) -> Result<OwnedTLSConfig, SessionError> {
    let cert_chain = match &tls.ca_file {
        Some(path) => {
            Some(String::from_utf8_lossy(&read_tls_file("LINKER_AMQP_CA_FILE", path)?).into_owned())
        }
        None => None,
    };
    let identity = match &tls.client_identity {
        Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
            pem: read_tls_file("LINKER_AMQP_CLIENT_CERT_FILE", cert)?,
            key: read_tls_file("LINKER_AMQP_CLIENT_KEY_FILE", key)?,
        }),
        None => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// One connection to one node, bounded by [`CONNECT_TIMEOUT`].
pub async fn connect_to(
    url: &AmqpUrl,
    tls: &BrokerTls,
    name: &str,
) -> Result<Connection, SessionError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    let tls = if url.is_tls() {
        tls_config(tls)?
    } else {
        OwnedTLSConfig::default()
    };
    let connect_error = |source| SessionError::Connect {
        url: url.redacted(),
        source,
    };
    let builder = DefaultConnectionBuilder::new()
        .map_err(connect_error)?
        .with_uri_str(url.expose().to_owned())
        .with_properties(properties)
        .with_tls_config(tls);
    match tokio::time::timeout(CONNECT_TIMEOUT, builder.connect()).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(explained(url, connect_error(source)).await),
        Err(_) => Err(explained(
            url,
            SessionError::ConnectTimeout {
                url: url.redacted(),
            },
        )
        .await),
    }
}

/// A failed connection, explained when the port holds something other than
/// a broker (looked at only after a failure: a working session costs nothing).
async fn explained(url: &AmqpUrl, error: SessionError) -> SessionError {
    if url.is_tls() {
        return error;
    }
    let node = url.node();
    match version::look(&node).await {
        version::Look::NotAmqp(saw) => SessionError::NotAmqp {
            url: url.redacted(),
            node,
            saw,
        },
        _ => error,
    }
}

/// At start: each `amqp://` node that answers is a recent enough broker.
/// `Err` is the one line to print. Nodes that do not answer are left to
/// the session, which reports them; `amqps://` nodes are not looked at
/// (the look is plain TCP).
pub async fn check_versions(broker: &BrokerConfig) -> Result<(), String> {
    for url in broker.amqp_urls.iter().filter(|u| !u.is_tls()) {
        let node = url.node();
        if let version::Look::Amqp(hello) = version::look(&node).await {
            hello.check(&node)?;
        }
    }
    Ok(())
}

/// A connection to the first listed node that takes one (the one-shot
/// tools: `dlq`, `publish`, `check-config`, `demo`).
pub async fn connect(broker: &BrokerConfig, name: &str) -> Result<Connection, SessionError> {
    let mut failures = Vec::new();
    for node in NodeOrder::as_listed(broker.amqp_urls.len()).round() {
        match connect_to(&broker.amqp_urls[node], &broker.tls, name).await {
            Ok(connection) => return Ok(connection),
            Err(error) => failures.push(error),
        }
    }
    Err(one_or_every(failures))
}

/// A single node's error as it is; several as one line naming each.
fn one_or_every(mut failures: Vec<SessionError>) -> SessionError {
    if failures.len() == 1
        && let Some(only) = failures.pop()
    {
        return only;
    }
    SessionError::EveryNode(failures.iter().map(ToString::to_string).collect())
}

impl BrokerSession {
    /// A session on the first node of `order`'s round that takes one: each
    /// node is tried once, at once after the one before fails, so a lost node
    /// costs no backoff while another is up. Fails only when every node did.
    pub async fn open(
        broker: &BrokerConfig,
        topology: &Topology,
        order: &NodeOrder,
        metrics: &Metrics,
    ) -> Result<Self, SessionError> {
        let mut failures = Vec::new();
        for node in order.round() {
            match Self::open_on(broker, topology, node).await {
                Ok(session) => {
                    if !failures.is_empty() {
                        let passed_over = one_or_every(failures);
                        tracing::warn!(error = %passed_over, "failed over past broker nodes that did not take the session");
                    }
                    return Ok(session);
                }
                Err(error) => {
                    metrics.count_connect_failure(&broker.amqp_urls[node].node());
                    failures.push(error);
                }
            }
        }
        Err(one_or_every(failures))
    }

    async fn open_on(
        broker: &BrokerConfig,
        topology: &Topology,
        node: usize,
    ) -> Result<Self, SessionError> {
        let connection =
            connect_to(&broker.amqp_urls[node], &broker.tls, "identity-link-worker").await?;
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
            node,
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
    use super::*;

    #[test]
    fn a_refused_connection_says_nothing_listens() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(refused)));
        assert!(hint(&error).contains("nothing listens on that port"));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let error = lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(reset)));
        assert_eq!(hint(&error), "");
    }

    #[test]
    fn every_round_tries_each_node_once() {
        for nodes in 1..=5 {
            let order = NodeOrder::shuffled(nodes);
            let mut round: Vec<usize> = order.round().collect();
            round.sort_unstable();
            assert_eq!(round, (0..nodes).collect::<Vec<_>>());
        }
    }

    #[test]
    fn after_a_session_ends_its_node_is_tried_last() {
        let mut order = NodeOrder::as_listed(3);
        assert_eq!(order.round().collect::<Vec<_>>(), [0, 1, 2]);
        order.moved_past(0);
        assert_eq!(order.round().collect::<Vec<_>>(), [1, 2, 0]);
        order.moved_past(2);
        assert_eq!(order.round().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn replicas_start_on_different_nodes() {
        // Over many processes, each node comes first about a third of the time.
        let mut first = [0_u32; 3];
        for _ in 0..3000 {
            if let Some(node) = NodeOrder::shuffled(3).round().next() {
                first[node] += 1;
            }
        }
        assert!(first.iter().all(|&n| (800..1200).contains(&n)), "{first:?}");
    }
}
