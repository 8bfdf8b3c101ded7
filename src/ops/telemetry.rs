//! Logging setup, and how identifiers appear in logs.

use std::fmt;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use tracing_subscriber::EnvFilter;

use crate::config::{IdentifierLogging, LogFormat};

static IDENTIFIER_LOGGING: OnceLock<IdentifierLogging> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` sets the level (default `info`).
pub fn init(format: LogFormat, identifiers: IdentifierLogging) {
    init_with_default(format, identifiers, "info");
}

/// Like [`init`], with another level when `RUST_LOG` is unset (the demo is quiet).
pub fn init_with_default(format: LogFormat, identifiers: IdentifierLogging, default_filter: &str) {
    let _ = IDENTIFIER_LOGGING.set(identifiers);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, demo) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Sets how identifiers are shown without installing a subscriber (tests).
pub fn set_identifier_logging(identifiers: IdentifierLogging) {
    let _ = IDENTIFIER_LOGGING.set(identifiers);
}

/// An identifier as logs show it: a short SHA-256 prefix by default, so log
/// lines can be correlated without exposing who the visitor is.
pub struct Ident<'a>(&'a str);

pub fn ident(value: &str) -> Ident<'_> {
    Ident(value)
}

impl fmt::Display for Ident<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match IDENTIFIER_LOGGING
            .get()
            .copied()
            .unwrap_or(IdentifierLogging::Hashed)
        {
            IdentifierLogging::Plain => f.write_str(self.0),
            IdentifierLogging::Hashed => {
                let digest = Sha256::digest(self.0.as_bytes());
                f.write_str("h:")?;
                for byte in &digest[..6] {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}
