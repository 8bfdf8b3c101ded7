//! Configuration: every `LINKER_*` variable, parsed once into typed sections
//! (broker, events, link, retry, operations); each component is built from
//! its own section. A bad value is a [`ConfigError`] that names the variable;
//! the CLI turns it into exit status 2.

mod secret;
mod values;
mod variables;

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use self::secret::{AmqpUrl, SecretKey};
pub use self::values::parse_duration;
use self::values::{
    amqp_urls, at_least_one, body_limit, boolean, broker_tls, duration, endpoint_url, list, name,
    non_zero, number, optional_count, optional_rate, parsed, partitions, pointers,
    positive_duration, replica_id, retry_ladder, secret_key,
};
pub use self::variables::{
    VARIABLES, Variable, help as variables_help, unknown_notes, warn_unknown,
};
pub use crate::domain::delay_label;
use crate::domain::{Blocklist, JsonPointers, RetryLadder};

/// A configuration problem, always tied to one variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self {
            variable,
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How identifiers appear in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierLogging {
    Hashed,
    Plain,
}

/// The worker's settings, by component. Field docs name the variable and its default.
#[derive(Debug, Clone)]
pub struct Config {
    pub broker: BrokerConfig,
    pub events: EventConfig,
    pub link: LinkConfig,
    pub retry: RetryConfig,
    pub ops: OpsConfig,
}

/// Where messages come from: the broker, its topology, how many at once.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `LINKER_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`: one
    /// node, or several nodes of one cluster separated by commas (never empty).
    pub amqp_urls: Vec<AmqpUrl>,
    /// `LINKER_AMQP_CA_FILE`, `LINKER_AMQP_CLIENT_CERT_FILE`, `LINKER_AMQP_CLIENT_KEY_FILE`.
    pub tls: BrokerTls,
    /// `LINKER_QUORUM_INITIAL_GROUP_SIZE`, default the broker's (every node):
    /// `x-quorum-initial-group-size` of each quorum queue the worker declares.
    pub quorum_initial_group_size: Option<NonZeroU16>,
    /// `LINKER_EXCHANGE`, default `auth.events`.
    pub exchange: String,
    /// `LINKER_ROUTING_KEYS`, default `user.signed_up,user.logged_in`.
    pub routing_keys: Vec<String>,
    /// `LINKER_QUEUE`, default `identity-linker`.
    pub queue: String,
    /// `LINKER_DECLARE_TOPOLOGY`, default true.
    pub declare_topology: bool,
    /// `LINKER_DELIVERY_LIMIT`, default 20 (`x-delivery-limit` of the work queue).
    pub delivery_limit: NonZeroU32,
    /// `LINKER_PREFETCH`, default 256.
    pub prefetch: NonZeroU16,
    /// `LINKER_PARTITIONS`, default 16: partition queues by visitor, each with
    /// a single active consumer; `None` (0) consumes the work queue directly.
    pub partitions: Option<NonZeroU16>,
    /// `LINKER_REPLICA_ID`, default the host name (the pod's name), else random:
    /// weighs this replica's claim on each partition.
    pub replica_id: String,
}

/// Files for `amqps://` URLs, read again at each connection (so a rotated
/// certificate is used from the next reconnect). Without a CA file the
/// system's trust store verifies the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerTls {
    /// PEM certificates that may sign the broker's certificate, added to the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain and PKCS#8 PEM key of the worker's client
    /// certificate (mutual TLS; with `?auth_mechanism=external`, the login).
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// How an event's body becomes a pair of identifiers.
#[derive(Debug, Clone)]
pub struct EventConfig {
    /// `LINKER_ANONYMOUS_ID_POINTERS`.
    pub anonymous_id_pointers: JsonPointers,
    /// `LINKER_USER_ID_POINTERS`.
    pub user_id_pointers: JsonPointers,
    /// `LINKER_BLOCKED_IDENTIFIERS`.
    pub blocklist: Blocklist,
    /// `LINKER_MAX_BODY_BYTES`, default 65536: a larger body is dead-lettered
    /// `body_too_large` without being parsed.
    pub max_body_bytes: usize,
}

/// The link call and the worker's half of check-then-create.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `LINKER_MOS_ENDPOINT_URL` (required).
    pub endpoint_url: reqwest::Url,
    /// `LINKER_MOS_SECRET_KEY` or the content of `LINKER_MOS_SECRET_KEY_FILE`.
    pub secret_key: SecretKey,
    /// `LINKER_HTTP_TIMEOUT`, default 5s.
    pub http_timeout: Duration,
    /// `LINKER_CONCURRENCY`, default 128: the ceiling of the adaptive limit
    /// on link calls in flight, and of the messages in hand that follow it.
    pub concurrency: NonZeroUsize,
    /// `LINKER_MAX_REQUESTS_PER_SECOND`, default unset: a fixed pace of link
    /// calls, per process.
    pub max_requests_per_second: Option<NonZeroU32>,
    /// `LINKER_LINKED_CACHE_TTL`, default 10m.
    pub linked_cache_ttl: Duration,
    /// `LINKER_LINKED_CACHE_SIZE`, default 100000 (0 turns the cache off).
    pub linked_cache_size: usize,
}

/// What happens after a failed call: retries, the delay ladder, the circuit.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// `LINKER_IMMEDIATE_RETRIES`, default 3.
    pub immediate_retries: usize,
    /// `LINKER_RETRY_DELAYS`, default `10s,1m,5m,15m,1h`.
    pub ladder: RetryLadder,
    /// `LINKER_CIRCUIT_PROBE_INTERVAL`, default 30s.
    pub circuit_probe_interval: Duration,
    /// `LINKER_CIRCUIT_FAILURE_THRESHOLD`, default 20.
    pub circuit_failure_threshold: NonZeroU32,
    /// `LINKER_MAX_HAND_BACKS`, default 10: a message handed back this many
    /// times (the circuit was open each time) is dead-lettered `hand_backs_exhausted`.
    pub max_hand_backs: NonZeroU32,
}

/// Running the process: operations port, logs, shutdown.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// `LINKER_HTTP_ADDR`, default `0.0.0.0:9464`.
    pub http_addr: SocketAddr,
    /// `LINKER_LOG_FORMAT`, default text.
    pub log_format: LogFormat,
    /// `LINKER_LOG_IDENTIFIERS`, default hashed.
    pub log_identifiers: IdentifierLogging,
    /// `LINKER_SHUTDOWN_GRACE`, default 20s.
    pub shutdown_grace: Duration,
}

/// What the broker-only tools (`dlq`, `publish`) need: no endpoint, no key.
#[derive(Debug, Clone)]
pub struct ToolConfig {
    pub broker: BrokerConfig,
    pub retry: RetryConfig,
    pub ops: OpsConfig,
}

// Compile-time constants: `unwrap` here is checked by the compiler, never at run time.
const DEFAULT_PREFETCH: NonZeroU16 = NonZeroU16::new(256).unwrap();
const DEFAULT_DELIVERY_LIMIT: NonZeroU32 = NonZeroU32::new(20).unwrap();
const DEFAULT_CONCURRENCY: NonZeroUsize = NonZeroUsize::new(128).unwrap();
const DEFAULT_CIRCUIT_FAILURE_THRESHOLD: NonZeroU32 = NonZeroU32::new(20).unwrap();
const DEFAULT_MAX_HAND_BACKS: NonZeroU32 = NonZeroU32::new(10).unwrap();
pub const DEFAULT_MAX_BODY_BYTES: usize = 65536;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_ANONYMOUS_ID_POINTERS: &str = "/anonymousIdentifier,/anonymousId,/anonymous_id,/data/anonymousIdentifier,/data/anonymousId,/data/anonymous_id,/context/anonymousId";
pub const DEFAULT_USER_ID_POINTERS: &str =
    "/userIdentifier,/userId,/user_id,/data/userIdentifier,/data/userId,/data/user_id,/user/id";
pub const DEFAULT_BLOCKED_IDENTIFIERS: &str =
    "anonymous,guest,null,undefined,none,nil,nan,0,-1,[object object],true,false";

/// The raw environment as envy reads it: every value a string, so each
/// conversion can name its own variable in the error.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    amqp_url: Option<String>,
    amqp_ca_file: Option<String>,
    amqp_client_cert_file: Option<String>,
    amqp_client_key_file: Option<String>,
    quorum_initial_group_size: Option<String>,
    exchange: Option<String>,
    routing_keys: Option<String>,
    queue: Option<String>,
    declare_topology: Option<String>,
    delivery_limit: Option<String>,
    anonymous_id_pointers: Option<String>,
    user_id_pointers: Option<String>,
    blocked_identifiers: Option<String>,
    max_body_bytes: Option<String>,
    max_hand_backs: Option<String>,
    mos_endpoint_url: Option<String>,
    mos_secret_key: Option<String>,
    mos_secret_key_file: Option<String>,
    http_timeout: Option<String>,
    linked_cache_ttl: Option<String>,
    linked_cache_size: Option<String>,
    immediate_retries: Option<String>,
    retry_delays: Option<String>,
    circuit_probe_interval: Option<String>,
    circuit_failure_threshold: Option<String>,
    http_addr: Option<String>,
    prefetch: Option<String>,
    partitions: Option<String>,
    replica_id: Option<String>,
    concurrency: Option<String>,
    max_requests_per_second: Option<String>,
    log_format: Option<String>,
    log_identifiers: Option<String>,
    shutdown_grace: Option<String>,
}

impl RawEnv {
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        envy::prefixed("LINKER_")
            .from_iter(vars)
            .map_err(|e| ConfigError::new("LINKER_*", e.to_string()))
    }
}

impl Config {
    /// Reads `LINKER_*` from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the configuration from any set of variables (tests use this).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw = RawEnv::from_vars(vars)?;
        // Sections in the order their variables were checked before the split,
        // so the first error reported for a bad environment stays the same.
        let broker_names = BrokerNames::from_raw(&raw)?;
        let link_identity = (
            endpoint_url(raw.mos_endpoint_url.clone())?,
            secret_key(raw.mos_secret_key.clone(), raw.mos_secret_key_file.clone())?,
        );
        let ladder = retry_ladder(raw.retry_delays.as_deref())?;
        let link = LinkConfig::from_raw(&raw, link_identity)?;
        let broker = BrokerConfig::from_raw(&raw, broker_names)?;
        let retry = RetryConfig::from_raw(&raw, ladder)?;
        let events = EventConfig::from_raw(&raw)?;
        let ops = OpsConfig::from_raw(&raw)?;
        Ok(Self {
            broker,
            events,
            link,
            retry,
            ops,
        })
    }
}

impl ToolConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw = RawEnv::from_vars(vars)?;
        let names = BrokerNames::from_raw(&raw)?;
        let ladder = retry_ladder(raw.retry_delays.as_deref())?;
        Ok(Self {
            broker: BrokerConfig::from_raw(&raw, names)?,
            retry: RetryConfig::from_raw(&raw, ladder)?,
            ops: OpsConfig::from_raw(&raw)?,
        })
    }
}

/// The names every derived queue name starts from.
struct BrokerNames {
    queue: String,
    exchange: String,
    routing_keys: Vec<String>,
}

impl BrokerNames {
    fn from_raw(raw: &RawEnv) -> Result<Self, ConfigError> {
        Ok(Self {
            queue: name("LINKER_QUEUE", raw.queue.clone(), "identity-linker")?,
            exchange: name("LINKER_EXCHANGE", raw.exchange.clone(), "auth.events")?,
            routing_keys: list(
                "LINKER_ROUTING_KEYS",
                raw.routing_keys.as_deref(),
                "user.signed_up,user.logged_in",
            )?,
        })
    }
}

impl BrokerConfig {
    fn from_raw(raw: &RawEnv, names: BrokerNames) -> Result<Self, ConfigError> {
        let config = Self {
            prefetch: non_zero(
                "LINKER_PREFETCH",
                raw.prefetch.clone(),
                DEFAULT_PREFETCH,
                "must be at least 1 (0 would mean unlimited deliveries in memory)",
            )?,
            delivery_limit: at_least_one(
                "LINKER_DELIVERY_LIMIT",
                raw.delivery_limit.clone(),
                DEFAULT_DELIVERY_LIMIT,
            )?,
            amqp_urls: amqp_urls(raw.amqp_url.clone())?,
            tls: broker_tls(
                raw.amqp_ca_file.clone(),
                raw.amqp_client_cert_file.clone(),
                raw.amqp_client_key_file.clone(),
            )?,
            quorum_initial_group_size: optional_count(
                "LINKER_QUORUM_INITIAL_GROUP_SIZE",
                raw.quorum_initial_group_size.clone(),
            )?,
            exchange: names.exchange,
            routing_keys: names.routing_keys,
            queue: names.queue,
            declare_topology: boolean(
                "LINKER_DECLARE_TOPOLOGY",
                raw.declare_topology.clone(),
                true,
            )?,
            partitions: partitions(raw.partitions.clone())?,
            replica_id: replica_id(raw.replica_id.clone()),
        };
        // TLS files with no amqps:// node would be silently unused.
        if config.tls != BrokerTls::default() && !config.amqp_urls.iter().any(AmqpUrl::is_tls) {
            let variable = if config.tls.ca_file.is_some() {
                "LINKER_AMQP_CA_FILE"
            } else {
                "LINKER_AMQP_CLIENT_CERT_FILE"
            };
            return Err(ConfigError::new(
                variable,
                "is set, but no LINKER_AMQP_URL is amqps:// (the file would not be used)",
            ));
        }
        Ok(config)
    }
}

impl LinkConfig {
    fn from_raw(
        raw: &RawEnv,
        (endpoint_url, secret_key): (reqwest::Url, SecretKey),
    ) -> Result<Self, ConfigError> {
        let concurrency = at_least_one(
            "LINKER_CONCURRENCY",
            raw.concurrency.clone(),
            DEFAULT_CONCURRENCY,
        )?;
        Ok(Self {
            endpoint_url,
            secret_key,
            concurrency,
            max_requests_per_second: optional_rate(raw.max_requests_per_second.clone())?,
            linked_cache_size: number(
                "LINKER_LINKED_CACHE_SIZE",
                raw.linked_cache_size.clone(),
                100_000,
            )?,
            http_timeout: positive_duration("LINKER_HTTP_TIMEOUT", raw.http_timeout.clone(), "5s")?,
            linked_cache_ttl: duration(
                "LINKER_LINKED_CACHE_TTL",
                raw.linked_cache_ttl.clone(),
                "10m",
            )?,
        })
    }
}

impl RetryConfig {
    fn from_raw(raw: &RawEnv, ladder: RetryLadder) -> Result<Self, ConfigError> {
        Ok(Self {
            circuit_failure_threshold: at_least_one(
                "LINKER_CIRCUIT_FAILURE_THRESHOLD",
                raw.circuit_failure_threshold.clone(),
                DEFAULT_CIRCUIT_FAILURE_THRESHOLD,
            )?,
            circuit_probe_interval: positive_duration(
                "LINKER_CIRCUIT_PROBE_INTERVAL",
                raw.circuit_probe_interval.clone(),
                "30s",
            )?,
            immediate_retries: number(
                "LINKER_IMMEDIATE_RETRIES",
                raw.immediate_retries.clone(),
                3,
            )?,
            max_hand_backs: at_least_one(
                "LINKER_MAX_HAND_BACKS",
                raw.max_hand_backs.clone(),
                DEFAULT_MAX_HAND_BACKS,
            )?,
            ladder,
        })
    }
}

impl EventConfig {
    fn from_raw(raw: &RawEnv) -> Result<Self, ConfigError> {
        Ok(Self {
            anonymous_id_pointers: pointers(
                "LINKER_ANONYMOUS_ID_POINTERS",
                raw.anonymous_id_pointers.as_deref(),
                DEFAULT_ANONYMOUS_ID_POINTERS,
            )?,
            user_id_pointers: pointers(
                "LINKER_USER_ID_POINTERS",
                raw.user_id_pointers.as_deref(),
                DEFAULT_USER_ID_POINTERS,
            )?,
            blocklist: Blocklist::new(
                raw.blocked_identifiers
                    .as_deref()
                    .unwrap_or(DEFAULT_BLOCKED_IDENTIFIERS)
                    .split(','),
            ),
            max_body_bytes: body_limit(raw.max_body_bytes.clone())?,
        })
    }
}

impl OpsConfig {
    fn from_raw(raw: &RawEnv) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: parsed("LINKER_HTTP_ADDR", raw.http_addr.clone(), "0.0.0.0:9464")?,
            log_format: match raw.log_format.as_deref().map(str::trim) {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError::new(
                        "LINKER_LOG_FORMAT",
                        format!("expected `text` or `json`, got `{other}`"),
                    ));
                }
            },
            log_identifiers: match raw.log_identifiers.as_deref().map(str::trim) {
                None | Some("hashed") => IdentifierLogging::Hashed,
                Some("plain") => IdentifierLogging::Plain,
                Some(other) => {
                    return Err(ConfigError::new(
                        "LINKER_LOG_IDENTIFIERS",
                        format!("expected `hashed` or `plain`, got `{other}`"),
                    ));
                }
            },
            shutdown_grace: duration("LINKER_SHUTDOWN_GRACE", raw.shutdown_grace.clone(), "20s")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut all = vec![
            (
                "LINKER_MOS_ENDPOINT_URL".to_owned(),
                "http://127.0.0.1:1/x".to_owned(),
            ),
            ("LINKER_MOS_SECRET_KEY".to_owned(), "k".to_owned()),
        ];
        for (k, v) in pairs {
            all.retain(|(name, _)| name != k);
            if !v.is_empty() || !k.starts_with("LINKER_MOS") {
                all.push(((*k).to_owned(), (*v).to_owned()));
            }
        }
        all
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(config.broker.queue, "identity-linker");
        assert_eq!(config.broker.exchange, "auth.events");
        assert_eq!(
            config.broker.routing_keys,
            ["user.signed_up", "user.logged_in"]
        );
        assert_eq!(config.broker.prefetch.get(), 256);
        assert_eq!(config.link.concurrency.get(), 128);
        assert_eq!(config.broker.delivery_limit.get(), 20);
        assert_eq!(config.retry.immediate_retries, 3);
        assert_eq!(config.link.http_timeout, Duration::from_secs(5));
        assert_eq!(config.link.linked_cache_ttl, Duration::from_secs(600));
        assert_eq!(config.link.linked_cache_size, 100_000);
        assert_eq!(config.retry.circuit_failure_threshold.get(), 20);
        assert_eq!(config.retry.circuit_probe_interval, Duration::from_secs(30));
        assert_eq!(config.ops.shutdown_grace, Duration::from_secs(20));
        assert_eq!(config.ops.http_addr.to_string(), "0.0.0.0:9464");
        let labels: Vec<String> = config
            .retry
            .ladder
            .delays()
            .iter()
            .map(|d| delay_label(*d))
            .collect();
        assert_eq!(labels, ["10s", "1m", "5m", "15m", "1h"]);
        assert!(config.broker.declare_topology);
    }

    #[test]
    fn errors_name_the_variable() {
        let cases = [
            ("LINKER_PREFETCH", "lots"),
            ("LINKER_CONCURRENCY", "0"),
            ("LINKER_RETRY_DELAYS", "10s,soon"),
            ("LINKER_HTTP_TIMEOUT", "5 parsecs"),
            ("LINKER_LOG_FORMAT", "xml"),
            ("LINKER_DECLARE_TOPOLOGY", "maybe"),
            ("LINKER_AMQP_URL", "http://x"),
            ("LINKER_HTTP_ADDR", "nowhere"),
            ("LINKER_USER_ID_POINTERS", "userId"),
            ("LINKER_MOS_ENDPOINT_URL", "not a url"),
        ];
        for (var, value) in cases {
            let err = Config::from_vars(vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.variable, var, "{var}={value} gave {err}");
        }
    }

    #[test]
    fn secret_is_required_exactly_once() {
        let missing = Config::from_vars(vars(&[("LINKER_MOS_SECRET_KEY", "")])).unwrap_err();
        assert_eq!(missing.variable, "LINKER_MOS_SECRET_KEY");
        let both =
            Config::from_vars(vars(&[("LINKER_MOS_SECRET_KEY_FILE", "/tmp/x")])).unwrap_err();
        assert!(both.problem.contains("not both"));
    }

    #[test]
    fn an_empty_key_file_names_the_file_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, " \n").unwrap();
        let mut all = vars(&[]);
        all.retain(|(k, _)| k != "LINKER_MOS_SECRET_KEY");
        all.push((
            "LINKER_MOS_SECRET_KEY_FILE".into(),
            path.to_string_lossy().into_owned(),
        ));
        let err = Config::from_vars(all).unwrap_err();
        assert_eq!(err.variable, "LINKER_MOS_SECRET_KEY_FILE");
        assert!(err.problem.starts_with("is empty ("), "{err}");
    }

    #[test]
    fn secret_is_read_from_file_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut all = vars(&[]);
        all.retain(|(k, _)| k != "LINKER_MOS_SECRET_KEY");
        all.push((
            "LINKER_MOS_SECRET_KEY_FILE".into(),
            path.to_string_lossy().into_owned(),
        ));
        let config = Config::from_vars(all).unwrap();
        assert_eq!(config.link.secret_key.expose(), "s3cret");
        assert_eq!(
            config.link.secret_key.variable(),
            "LINKER_MOS_SECRET_KEY_FILE"
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        // Re-read as the file is now: rotated, then emptied (kept out).
        std::fs::write(&path, "n3w\n").unwrap();
        let reread = config.link.secret_key.reread().unwrap().unwrap();
        assert_eq!(reread.expose(), "n3w");
        std::fs::write(&path, "").unwrap();
        assert!(config.link.secret_key.reread().unwrap().is_err());
    }

    #[test]
    fn amqp_password_is_redacted() {
        let url = AmqpUrl::new("amqp://user:hunter2@rabbit:5672/%2f");
        assert_eq!(url.redacted(), "amqp://user:***@rabbit:5672/%2f");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
    }

    #[test]
    fn several_broker_nodes_are_listed_in_order() {
        let config = Config::from_vars(vars(&[(
            "LINKER_AMQP_URL",
            "amqp://u:p%2Cw@rabbit-0:5672/%2f, amqps://u:pw@rabbit-1/%2f,amqp://u:pw@rabbit-2:5673/%2f",
        )]))
        .unwrap();
        let nodes: Vec<String> = config.broker.amqp_urls.iter().map(AmqpUrl::node).collect();
        assert_eq!(nodes, ["rabbit-0:5672", "rabbit-1:5671", "rabbit-2:5673"]);
        assert!(config.broker.amqp_urls[1].is_tls());
        assert_eq!(
            Config::from_vars(vars(&[])).unwrap().broker.amqp_urls.len(),
            1
        );
    }

    #[test]
    fn a_bad_node_list_names_the_variable_and_hides_passwords() {
        for (list, problem) in [
            (
                "amqp://u:hunter2@a/%2f,http://u:hunter2@b/",
                "must start with",
            ),
            (
                "amqp://u:hunter2@a:5672/%2f,amqp://v:hunter2@a/%2f",
                "twice",
            ),
            (" , ", "at least one"),
        ] {
            let err = Config::from_vars(vars(&[("LINKER_AMQP_URL", list)])).unwrap_err();
            assert_eq!(err.variable, "LINKER_AMQP_URL", "{list}");
            assert!(err.problem.contains(problem), "{list}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn tls_files_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let ca = ca.to_string_lossy().into_owned();
        let tls = ("LINKER_AMQP_URL", "amqps://u:p@rabbit/%2f");

        let config = Config::from_vars(vars(&[tls, ("LINKER_AMQP_CA_FILE", &ca)])).unwrap();
        assert_eq!(
            config.broker.tls.ca_file.as_deref(),
            Some(std::path::Path::new(&ca))
        );

        for (pairs, variable) in [
            (
                vec![tls, ("LINKER_AMQP_CA_FILE", "/nonexistent/ca.pem")],
                "LINKER_AMQP_CA_FILE",
            ),
            (
                vec![tls, ("LINKER_AMQP_CA_FILE", &*not_pem.to_string_lossy())],
                "LINKER_AMQP_CA_FILE",
            ),
            (
                vec![tls, ("LINKER_AMQP_CLIENT_CERT_FILE", ca.as_str())],
                "LINKER_AMQP_CLIENT_KEY_FILE",
            ),
            // A CA file with no amqps:// node would be silently unused.
            (
                vec![("LINKER_AMQP_CA_FILE", ca.as_str())],
                "LINKER_AMQP_CA_FILE",
            ),
        ] {
            let err = Config::from_vars(vars(&pairs)).unwrap_err();
            assert_eq!(err.variable, variable, "{pairs:?}: {err}");
        }
    }

    #[test]
    fn the_quorum_group_size_is_the_brokers_unless_set() {
        let unset = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(unset.broker.quorum_initial_group_size, None);
        let set = Config::from_vars(vars(&[("LINKER_QUORUM_INITIAL_GROUP_SIZE", "3")])).unwrap();
        assert_eq!(
            set.broker.quorum_initial_group_size.map(NonZeroU16::get),
            Some(3)
        );
        let zero =
            Config::from_vars(vars(&[("LINKER_QUORUM_INITIAL_GROUP_SIZE", "0")])).unwrap_err();
        assert_eq!(zero.variable, "LINKER_QUORUM_INITIAL_GROUP_SIZE");
    }
}
