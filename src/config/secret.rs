//! Values that must never be printed whole: the MonetizationOS key and the
//! broker URL (which usually carries a password).

use std::fmt;
use std::path::PathBuf;

/// The MonetizationOS secret key, and the file it came from if any. Debug
/// never shows it and there is no Display: the only way out is
/// [`SecretKey::expose`], used for the header.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey {
    key: String,
    file: Option<PathBuf>,
}

impl SecretKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            file: None,
        }
    }
    pub(super) fn from_file(key: String, file: PathBuf) -> Self {
        Self {
            key,
            file: Some(file),
        }
    }
    pub fn expose(&self) -> &str {
        &self.key
    }
    /// The variable the key came from, for messages about it.
    pub fn variable(&self) -> &'static str {
        match self.file {
            Some(_) => "LINKER_MOS_SECRET_KEY_FILE",
            None => "LINKER_MOS_SECRET_KEY",
        }
    }
    /// The key file as it is now, checked as at start; `None` for a key
    /// given inline (nothing to re-read).
    pub fn reread(&self) -> Option<Result<SecretKey, super::ConfigError>> {
        self.file.as_deref().map(super::values::key_file)
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
    /// `host:port` (the port the scheme implies when none is written): names
    /// the node in metrics and logs, with no credentials.
    pub fn node(&self) -> String {
        match self.0.parse::<lapin::uri::AMQPUri>() {
            Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
            Err(_) => "[not an AMQP URI]".to_owned(),
        }
    }
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("amqps://")
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

/// The URL with its password replaced by `***`, by parsing it: a password
/// may hold any character once percent-encoded, and a raw `/`, `@` or `#` in
/// it defeats any pattern. A URL that does not parse shows nothing between
/// `://` and its last `@`, where userinfo would end.
pub(super) fn redact_userinfo(url: &str) -> String {
    if let Ok(mut parsed) = reqwest::Url::parse(url) {
        if parsed.password().is_some() && parsed.set_password(Some("***")).is_ok() {
            // `set_password` percent-encodes: show the three stars plainly.
            return parsed.as_str().replacen("%2A%2A%2A", "***", 1);
        }
        if parsed.password().is_none() {
            return parsed.as_str().to_owned();
        }
    }
    let Some(scheme_end) = url.find("://") else {
        return "[redacted: not a URL]".to_owned();
    };
    match url.rfind('@') {
        Some(at) if at > scheme_end => format!("{}***{}", &url[..scheme_end + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_password_survives_redaction() {
        for (url, shown) in [
            (
                "amqp://user:hunter2@rabbit:5672/%2f",
                "amqp://user:***@rabbit:5672/%2f",
            ),
            // A raw `/` ends the authority for a pattern: the URL no longer parses.
            (
                "amqp://user:hun/ter2@rabbit:5672/%2f",
                "amqp://***@rabbit:5672/%2f",
            ),
            (
                "amqp://user:hun@ter2@rabbit/%2f",
                "amqp://user:***@rabbit/%2f",
            ),
            (
                "amqps://user:hun%2Fter2@rabbit/vh",
                "amqps://user:***@rabbit/vh",
            ),
            ("amqp://user:h#unter2@rabbit/%2f", "amqp://***@rabbit/%2f"),
            ("amqp://rabbit:5672/%2f", "amqp://rabbit:5672/%2f"),
        ] {
            let redacted = redact_userinfo(url);
            assert_eq!(redacted, shown, "{url}");
            for secret in ["hunter2", "ter2", "hun"] {
                assert!(!redacted.contains(secret), "{url} -> {redacted}");
            }
        }
    }
}
