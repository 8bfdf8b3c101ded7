//! Parsers for one variable each: every error names its variable.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::secret::{AmqpUrl, SecretKey, redact_userinfo};
use super::{BrokerTls, ConfigError, DEFAULT_AMQP_URL};
use crate::domain::{JsonPointers, RetryLadder};

/// `LINKER_AMQP_URL`: one URL, or the nodes of one cluster separated by
/// commas (a comma inside a password must be written `%2C`).
pub(super) fn amqp_urls(value: Option<String>) -> Result<Vec<AmqpUrl>, ConfigError> {
    const VAR: &str = "LINKER_AMQP_URL";
    let text = value.unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
    let mut urls = Vec::new();
    for url in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(ConfigError::new(
                VAR,
                format!(
                    "each URL must start with amqp:// or amqps:// (got `{}`)",
                    redact_userinfo(url)
                ),
            ));
        }
        if url.parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(ConfigError::new(
                VAR,
                format!("not a valid AMQP URI: `{}`", redact_userinfo(url)),
            ));
        }
        let url = AmqpUrl::new(url);
        if urls
            .iter()
            .any(|known: &AmqpUrl| known.node() == url.node())
        {
            return Err(ConfigError::new(
                VAR,
                format!("names the node {} twice", url.node()),
            ));
        }
        urls.push(url);
    }
    if urls.is_empty() {
        return Err(ConfigError::new(VAR, "must name at least one broker URL"));
    }
    Ok(urls)
}

/// The TLS files, checked now so that a wrong path fails at start, not at
/// the first reconnect; they are read again at each connection.
pub(super) fn broker_tls(
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
) -> Result<BrokerTls, ConfigError> {
    let pem = |path: Option<String>, variable: &'static str, kind: &str| {
        let Some(path) = path.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let path = PathBuf::from(path);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::new(variable, format!("cannot read {}: {e}", path.display()))
        })?;
        if !text.contains(&format!("-----BEGIN {kind}")) {
            return Err(ConfigError::new(
                variable,
                format!("{} holds no PEM `{kind}` block", path.display()),
            ));
        }
        Ok(Some(path))
    };
    let ca_file = pem(ca_file, "LINKER_AMQP_CA_FILE", "CERTIFICATE")?;
    let cert = pem(cert_file, "LINKER_AMQP_CLIENT_CERT_FILE", "CERTIFICATE")?;
    let key = pem(key_file, "LINKER_AMQP_CLIENT_KEY_FILE", "PRIVATE KEY")?;
    let client_identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "LINKER_AMQP_CLIENT_KEY_FILE",
                "is required with LINKER_AMQP_CLIENT_CERT_FILE",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "LINKER_AMQP_CLIENT_CERT_FILE",
                "is required with LINKER_AMQP_CLIENT_KEY_FILE",
            ));
        }
    };
    Ok(BrokerTls {
        ca_file,
        client_identity,
    })
}

/// `LINKER_MAX_REQUESTS_PER_SECOND`: unset (or empty) is no fixed pace.
pub(super) fn optional_rate(value: Option<String>) -> Result<Option<NonZeroU32>, ConfigError> {
    match value.filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(text) => non_zero(
            "LINKER_MAX_REQUESTS_PER_SECOND",
            Some(text),
            NonZeroU32::MIN,
            "must be at least 1 (unset means no fixed pace)",
        )
        .map(Some),
    }
}

/// An optional count: unset (or empty) is `None`, `0` is refused.
pub(super) fn optional_count(
    variable: &'static str,
    value: Option<String>,
) -> Result<Option<NonZeroU16>, ConfigError> {
    match value.filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(text) => non_zero(
            variable,
            Some(text),
            NonZeroU16::MIN,
            "must be at least 1 (unset means the broker's default)",
        )
        .map(Some),
    }
}

pub(super) fn endpoint_url(value: Option<String>) -> Result<reqwest::Url, ConfigError> {
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

pub(super) fn secret_key(
    inline: Option<String>,
    file: Option<String>,
) -> Result<SecretKey, ConfigError> {
    match (
        inline.filter(|v| !v.is_empty()),
        file.filter(|v| !v.is_empty()),
    ) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "LINKER_MOS_SECRET_KEY",
            "set either LINKER_MOS_SECRET_KEY or LINKER_MOS_SECRET_KEY_FILE, not both",
        )),
        (None, None) => Err(ConfigError::new(
            "LINKER_MOS_SECRET_KEY",
            "is required (or LINKER_MOS_SECRET_KEY_FILE with the path of a file holding it)",
        )),
        (Some(key), None) => Ok(SecretKey::new(checked_key("LINKER_MOS_SECRET_KEY", &key)?)),
        (None, Some(path)) => key_file(Path::new(&path)),
    }
}

/// The key in `path`, checked as at start: used at start and at each re-read.
pub(super) fn key_file(path: &Path) -> Result<SecretKey, ConfigError> {
    const VAR: &str = "LINKER_MOS_SECRET_KEY_FILE";
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(VAR, format!("cannot read {}: {e}", path.display())))?;
    let key = checked_key(VAR, &text).map_err(|e| ConfigError {
        problem: format!("{} ({})", e.problem, path.display()),
        ..e
    })?;
    Ok(SecretKey::from_file(key, path.to_owned()))
}

fn checked_key(variable: &'static str, text: &str) -> Result<String, ConfigError> {
    // Mounted secrets usually end with a newline.
    let key = text.trim();
    if key.is_empty() {
        return Err(ConfigError::new(variable, "is empty"));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(ConfigError::new(variable, "contains control characters"));
    }
    Ok(key.to_owned())
}

pub(super) fn name(
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

pub(super) fn list(
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

pub(super) fn pointers(
    variable: &'static str,
    value: Option<&str>,
    default: &str,
) -> Result<JsonPointers, ConfigError> {
    let items = list(variable, value, default)?;
    JsonPointers::parse(&items).map_err(|e| ConfigError::new(variable, e))
}

pub(super) fn number<T: std::str::FromStr>(
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

pub(super) fn parsed<T: std::str::FromStr>(
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

pub(super) fn boolean(
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

pub(super) fn duration(
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

pub(super) fn retry_ladder(value: Option<&str>) -> Result<RetryLadder, ConfigError> {
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
    Ok(RetryLadder::new(delays))
}

/// A number that must be at least 1, parsed straight into its `NonZero*` type.
pub(super) fn non_zero<T>(
    variable: &'static str,
    value: Option<String>,
    default: T,
    problem: &str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + Copy,
    T::Err: fmt::Display,
{
    let Some(text) = value else {
        return Ok(default);
    };
    // Parse as the plain integer first, so `0` gets our message, not the std one.
    let trimmed = text.trim();
    if trimmed.parse::<u64>() == Ok(0) {
        return Err(ConfigError::new(variable, problem));
    }
    trimmed
        .parse()
        .map_err(|e| ConfigError::new(variable, format!("`{text}` is not a valid number: {e}")))
}

/// [`non_zero`] with the usual message.
pub(super) fn at_least_one<T>(
    variable: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + Copy,
    T::Err: fmt::Display,
{
    non_zero(variable, value, default, "must be at least 1")
}

/// A duration that must be above zero.
pub(super) fn positive_duration(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let value = duration(variable, value, default)?;
    if value.is_zero() {
        return Err(ConfigError::new(variable, "must be above zero"));
    }
    Ok(value)
}

/// Most partition queues: each is a quorum queue (a Raft group) on the broker.
pub(super) const MAX_PARTITIONS: u16 = 256;
pub(super) const DEFAULT_PARTITIONS: u16 = 16;

pub(super) fn partitions(value: Option<String>) -> Result<Option<NonZeroU16>, ConfigError> {
    const VAR: &str = "LINKER_PARTITIONS";
    let count: u16 = number(VAR, value, DEFAULT_PARTITIONS)?;
    if count > MAX_PARTITIONS {
        return Err(ConfigError::new(
            VAR,
            format!("must be at most {MAX_PARTITIONS} (each partition is a quorum queue)"),
        ));
    }
    Ok(NonZeroU16::new(count))
}

/// The pod's name where there is one, so a restarted pod keeps its claims.
pub(super) fn replica_id(value: Option<String>) -> String {
    value
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// `LINKER_MAX_BODY_BYTES`: room for two 512-byte identifiers and the rest of
/// an event at the least; at most 16 MiB, so that prefetch × limit stays a
/// figure a pod's memory limit can be sized from.
pub(super) fn body_limit(value: Option<String>) -> Result<usize, ConfigError> {
    const VARIABLE: &str = "LINKER_MAX_BODY_BYTES";
    let bytes: usize = number(VARIABLE, value, super::DEFAULT_MAX_BODY_BYTES)?;
    if !(MIN_BODY_LIMIT..=MAX_BODY_LIMIT).contains(&bytes) {
        return Err(ConfigError::new(
            VARIABLE,
            format!("must be within {MIN_BODY_LIMIT}..={MAX_BODY_LIMIT} bytes, got {bytes}"),
        ));
    }
    Ok(bytes)
}

const MIN_BODY_LIMIT: usize = 2048;
const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;
