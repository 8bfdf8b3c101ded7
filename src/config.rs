//! Configuration: every `LINKER_*` variable of the contract, parsed once into
//! typed settings. A bad value is a [`ConfigError`] that names the variable;
//! `main` turns it into exit status 2.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{Blocklist, JsonPointers};

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

/// The MonetizationOS secret key. Debug never shows it and there is no
/// Display: the only way out is [`SecretKey::expose`], used for the header.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// The broker URL; it usually carries a password, so Debug/Display redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// `amqp://user:***@host:port/vhost`, for logs and `check-config`.
    pub fn redacted(&self) -> String {
        redact_userinfo(&self.0)
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &rest[at..])
        }
        None => url.to_owned(),
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

/// The worker's settings. Field docs name the variable and its default.
#[derive(Debug, Clone)]
pub struct Config {
    /// `LINKER_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: AmqpUrl,
    /// `LINKER_EXCHANGE`, default `auth.events`.
    pub exchange: String,
    /// `LINKER_ROUTING_KEYS`, default `user.signed_up,user.logged_in`.
    pub routing_keys: Vec<String>,
    /// `LINKER_QUEUE`, default `identity-linker`.
    pub queue: String,
    /// `LINKER_DECLARE_TOPOLOGY`, default true.
    pub declare_topology: bool,
    /// `LINKER_DELIVERY_LIMIT`, default 20 (`x-delivery-limit` of the work queue).
    pub delivery_limit: u32,
    /// `LINKER_ANONYMOUS_ID_POINTERS`.
    pub anonymous_id_pointers: JsonPointers,
    /// `LINKER_USER_ID_POINTERS`.
    pub user_id_pointers: JsonPointers,
    /// `LINKER_BLOCKED_IDENTIFIERS`.
    pub blocklist: Blocklist,
    /// `LINKER_MOS_ENDPOINT_URL` (required).
    pub endpoint_url: reqwest::Url,
    /// `LINKER_MOS_SECRET_KEY` or the content of `LINKER_MOS_SECRET_KEY_FILE`.
    pub secret_key: SecretKey,
    /// `LINKER_HTTP_TIMEOUT`, default 5s.
    pub http_timeout: Duration,
    /// `LINKER_LINKED_CACHE_TTL`, default 10m.
    pub linked_cache_ttl: Duration,
    /// `LINKER_LINKED_CACHE_SIZE`, default 100000.
    pub linked_cache_size: usize,
    /// `LINKER_IMMEDIATE_RETRIES`, default 3.
    pub immediate_retries: usize,
    /// `LINKER_RETRY_DELAYS`, default `10s,1m,5m,15m,1h`.
    pub retry_delays: Vec<Duration>,
    /// `LINKER_CIRCUIT_PROBE_INTERVAL`, default 30s.
    pub circuit_probe_interval: Duration,
    /// `LINKER_CIRCUIT_FAILURE_THRESHOLD`, default 20.
    pub circuit_failure_threshold: u32,
    /// `LINKER_HTTP_ADDR`, default `0.0.0.0:9464`.
    pub http_addr: SocketAddr,
    /// `LINKER_PREFETCH`, default 256.
    pub prefetch: u16,
    /// `LINKER_CONCURRENCY`, default 128.
    pub concurrency: usize,
    /// `LINKER_LOG_FORMAT`, default text.
    pub log_format: LogFormat,
    /// `LINKER_LOG_IDENTIFIERS`, default hashed.
    pub log_identifiers: IdentifierLogging,
    /// `LINKER_SHUTDOWN_GRACE`, default 20s.
    pub shutdown_grace: Duration,
}

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_ANONYMOUS_ID_POINTERS: &str = "/anonymousIdentifier,/anonymousId,/anonymous_id,/data/anonymousIdentifier,/data/anonymousId,/data/anonymous_id,/context/anonymousId";
pub const DEFAULT_USER_ID_POINTERS: &str =
    "/userIdentifier,/userId,/user_id,/data/userIdentifier,/data/userId,/data/user_id,/user/id";
pub const DEFAULT_BLOCKED_IDENTIFIERS: &str =
    "anonymous,guest,null,undefined,none,nil,nan,0,-1,[object object],true,false";

/// The raw environment as envy reads it: every value a string, so each
/// conversion below can name its own variable in the error.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    amqp_url: Option<String>,
    exchange: Option<String>,
    routing_keys: Option<String>,
    queue: Option<String>,
    declare_topology: Option<String>,
    delivery_limit: Option<String>,
    anonymous_id_pointers: Option<String>,
    user_id_pointers: Option<String>,
    blocked_identifiers: Option<String>,
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
    concurrency: Option<String>,
    log_format: Option<String>,
    log_identifiers: Option<String>,
    shutdown_grace: Option<String>,
}

impl Config {
    /// Reads `LINKER_*` from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// For the broker-only tools (`dlq`, `publish`): the endpoint and key are
    /// not used there, so they are not required.
    pub fn from_env_for_broker_tools() -> Result<Self, ConfigError> {
        let mut vars: Vec<(String, String)> = std::env::vars().collect();
        let has = |vars: &[(String, String)], name: &str| {
            vars.iter().any(|(k, v)| k == name && !v.is_empty())
        };
        if !has(&vars, "LINKER_MOS_ENDPOINT_URL") {
            vars.push((
                "LINKER_MOS_ENDPOINT_URL".into(),
                "http://endpoint-not-used.invalid/".into(),
            ));
        }
        if !has(&vars, "LINKER_MOS_SECRET_KEY") && !has(&vars, "LINKER_MOS_SECRET_KEY_FILE") {
            vars.push(("LINKER_MOS_SECRET_KEY".into(), "not-used".into()));
        }
        Self::from_vars(vars)
    }

    /// Reads the configuration from any set of variables (tests use this).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let raw: RawEnv = envy::prefixed("LINKER_")
            .from_iter(vars)
            .map_err(|e| ConfigError::new("LINKER_*", e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawEnv) -> Result<Self, ConfigError> {
        let queue = name("LINKER_QUEUE", raw.queue, "identity-linker")?;
        let exchange = name("LINKER_EXCHANGE", raw.exchange, "auth.events")?;
        let routing_keys = list(
            "LINKER_ROUTING_KEYS",
            raw.routing_keys.as_deref(),
            "user.signed_up,user.logged_in",
        )?;
        let endpoint_url = endpoint_url(raw.mos_endpoint_url)?;
        let secret_key = secret_key(raw.mos_secret_key, raw.mos_secret_key_file)?;
        let retry_delays = retry_delays(raw.retry_delays.as_deref())?;
        let concurrency: usize = number("LINKER_CONCURRENCY", raw.concurrency, 128)?;
        if concurrency == 0 {
            return Err(ConfigError::new("LINKER_CONCURRENCY", "must be at least 1"));
        }
        let prefetch: u16 = number("LINKER_PREFETCH", raw.prefetch, 256)?;
        if prefetch == 0 {
            return Err(ConfigError::new(
                "LINKER_PREFETCH",
                "must be at least 1 (0 would mean unlimited deliveries in memory)",
            ));
        }
        let delivery_limit: u32 = number("LINKER_DELIVERY_LIMIT", raw.delivery_limit, 20)?;
        if delivery_limit == 0 {
            return Err(ConfigError::new(
                "LINKER_DELIVERY_LIMIT",
                "must be at least 1",
            ));
        }
        let circuit_failure_threshold: u32 = number(
            "LINKER_CIRCUIT_FAILURE_THRESHOLD",
            raw.circuit_failure_threshold,
            20,
        )?;
        if circuit_failure_threshold == 0 {
            return Err(ConfigError::new(
                "LINKER_CIRCUIT_FAILURE_THRESHOLD",
                "must be at least 1",
            ));
        }
        let linked_cache_size = number("LINKER_LINKED_CACHE_SIZE", raw.linked_cache_size, 100_000)?;
        let http_timeout = duration("LINKER_HTTP_TIMEOUT", raw.http_timeout, "5s")?;
        if http_timeout.is_zero() {
            return Err(ConfigError::new(
                "LINKER_HTTP_TIMEOUT",
                "must be above zero",
            ));
        }
        let circuit_probe_interval = duration(
            "LINKER_CIRCUIT_PROBE_INTERVAL",
            raw.circuit_probe_interval,
            "30s",
        )?;
        if circuit_probe_interval.is_zero() {
            return Err(ConfigError::new(
                "LINKER_CIRCUIT_PROBE_INTERVAL",
                "must be above zero",
            ));
        }
        Ok(Self {
            amqp_url: AmqpUrl::new(amqp_url(raw.amqp_url)?),
            exchange,
            routing_keys,
            queue,
            declare_topology: boolean("LINKER_DECLARE_TOPOLOGY", raw.declare_topology, true)?,
            delivery_limit,
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
            endpoint_url,
            secret_key,
            http_timeout,
            linked_cache_ttl: duration("LINKER_LINKED_CACHE_TTL", raw.linked_cache_ttl, "10m")?,
            linked_cache_size,
            immediate_retries: number("LINKER_IMMEDIATE_RETRIES", raw.immediate_retries, 3)?,
            retry_delays,
            circuit_probe_interval,
            circuit_failure_threshold,
            http_addr: parsed("LINKER_HTTP_ADDR", raw.http_addr, "0.0.0.0:9464")?,
            prefetch,
            concurrency,
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
            shutdown_grace: duration("LINKER_SHUTDOWN_GRACE", raw.shutdown_grace, "20s")?,
        })
    }
}

fn amqp_url(value: Option<String>) -> Result<String, ConfigError> {
    let url = value.unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
    let url = url.trim().to_owned();
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(ConfigError::new(
            "LINKER_AMQP_URL",
            format!(
                "must start with amqp:// or amqps:// (got `{}`)",
                redact_userinfo(&url)
            ),
        ));
    }
    if url.parse::<lapin::uri::AMQPUri>().is_err() {
        return Err(ConfigError::new(
            "LINKER_AMQP_URL",
            format!("not a valid AMQP URI: `{}`", redact_userinfo(&url)),
        ));
    }
    Ok(url)
}

fn endpoint_url(value: Option<String>) -> Result<reqwest::Url, ConfigError> {
    const VAR: &str = "LINKER_MOS_ENDPOINT_URL";
    let text = value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ConfigError::new(VAR, "is required (the Link Identities endpoint URL)"))?;
    let url = reqwest::Url::parse(&text)
        .map_err(|e| ConfigError::new(VAR, format!("not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(VAR, "must be an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            VAR,
            "must not carry credentials; the key goes in LINKER_MOS_SECRET_KEY",
        ));
    }
    Ok(url)
}

fn secret_key(inline: Option<String>, file: Option<String>) -> Result<SecretKey, ConfigError> {
    let key = match (
        inline.filter(|v| !v.is_empty()),
        file.filter(|v| !v.is_empty()),
    ) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "LINKER_MOS_SECRET_KEY",
                "set either LINKER_MOS_SECRET_KEY or LINKER_MOS_SECRET_KEY_FILE, not both",
            ));
        }
        (None, None) => {
            return Err(ConfigError::new(
                "LINKER_MOS_SECRET_KEY",
                "is required (or LINKER_MOS_SECRET_KEY_FILE with the path of a file holding it)",
            ));
        }
        (Some(key), None) => key,
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(
                    "LINKER_MOS_SECRET_KEY_FILE",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
        }
    };
    // Mounted secrets usually end with a newline.
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(ConfigError::new("LINKER_MOS_SECRET_KEY", "is empty"));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(ConfigError::new(
            "LINKER_MOS_SECRET_KEY",
            "contains control characters",
        ));
    }
    Ok(SecretKey::new(key))
}

fn name(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<String, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    let value = value.trim();
    if value.is_empty() {
        return Err(ConfigError::new(variable, "must not be empty"));
    }
    // Derived names (`<queue>.retry.1h`) must stay within AMQP's 255-byte short strings.
    if value.len() > 200 {
        return Err(ConfigError::new(variable, "must be at most 200 bytes"));
    }
    Ok(value.to_owned())
}

fn list(
    variable: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<Vec<String>, ConfigError> {
    let items: Vec<String> = value
        .unwrap_or(default)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.is_empty() {
        return Err(ConfigError::new(variable, "must list at least one value"));
    }
    Ok(items)
}

fn pointers(
    variable: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<JsonPointers, ConfigError> {
    let items = list(variable, value, default)?;
    JsonPointers::parse(&items).map_err(|e| ConfigError::new(variable, e))
}

fn number<T: std::str::FromStr>(
    variable: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(variable, format!("`{v}` is not a valid number: {e}"))),
    }
}

fn parsed<T: std::str::FromStr>(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    let text = value.unwrap_or_else(|| default.to_owned());
    text.trim()
        .parse()
        .map_err(|e| ConfigError::new(variable, format!("`{text}` is not valid: {e}")))
}

fn boolean(
    variable: &'static str,
    value: Option<String>,
    default: bool,
) -> Result<bool, ConfigError> {
    match value.as_deref().map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) => match v.as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(
                variable,
                format!("`{v}` is not a boolean (true/false)"),
            )),
        },
    }
}

fn duration(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    parse_duration(&text).map_err(|e| ConfigError::new(variable, e))
}

/// `250ms`, `10s`, `5m`, `1h` (humantime syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "`{}` is not a duration like 250ms, 10s, 5m, 1h: {e}",
            text.trim()
        )
    })
}

fn retry_delays(value: Option<&str>) -> Result<Vec<Duration>, ConfigError> {
    const VAR: &str = "LINKER_RETRY_DELAYS";
    let items = list(VAR, value, "10s,1m,5m,15m,1h")?;
    let mut delays = Vec::with_capacity(items.len());
    for item in &items {
        let delay = parse_duration(item).map_err(|e| ConfigError::new(VAR, e))?;
        if delay < Duration::from_millis(1) {
            return Err(ConfigError::new(
                VAR,
                format!("`{item}` must be at least 1ms"),
            ));
        }
        // x-message-ttl is a 32-bit number of milliseconds.
        if delay.as_millis() > u128::from(u32::MAX) {
            return Err(ConfigError::new(VAR, format!("`{item}` is too long")));
        }
        if delays.contains(&delay) {
            return Err(ConfigError::new(
                VAR,
                format!("`{item}` appears twice; each step needs its own queue"),
            ));
        }
        delays.push(delay);
    }
    Ok(delays)
}

/// Canonical short form of a delay for queue names: `250ms`, `10s`, `1m`, `1h`.
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
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
    fn defaults_follow_the_contract() {
        let config = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(config.queue, "identity-linker");
        assert_eq!(config.exchange, "auth.events");
        assert_eq!(config.routing_keys, ["user.signed_up", "user.logged_in"]);
        assert_eq!(config.prefetch, 256);
        assert_eq!(config.concurrency, 128);
        assert_eq!(config.delivery_limit, 20);
        assert_eq!(config.immediate_retries, 3);
        assert_eq!(config.http_timeout, Duration::from_secs(5));
        assert_eq!(config.linked_cache_ttl, Duration::from_secs(600));
        assert_eq!(config.linked_cache_size, 100_000);
        assert_eq!(config.circuit_failure_threshold, 20);
        assert_eq!(config.circuit_probe_interval, Duration::from_secs(30));
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert_eq!(config.http_addr.to_string(), "0.0.0.0:9464");
        let labels: Vec<String> = config
            .retry_delays
            .iter()
            .map(|d| delay_label(*d))
            .collect();
        assert_eq!(labels, ["10s", "1m", "5m", "15m", "1h"]);
        assert!(config.declare_topology);
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
        assert_eq!(config.secret_key.expose(), "s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn amqp_password_is_redacted() {
        let url = AmqpUrl::new("amqp://user:hunter2@rabbit:5672/%2f");
        assert_eq!(url.redacted(), "amqp://user:***@rabbit:5672/%2f");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
    }

    #[test]
    fn delay_labels_are_short() {
        assert_eq!(delay_label(Duration::from_millis(250)), "250ms");
        assert_eq!(delay_label(Duration::from_secs(90)), "90s");
        assert_eq!(delay_label(Duration::from_secs(3600)), "1h");
    }
}
