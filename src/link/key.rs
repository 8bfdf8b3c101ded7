//! The key in use, shared by every call: Kubernetes updates a mounted secret
//! in place, so a key from `LINKER_MOS_SECRET_KEY_FILE` is read again when
//! the endpoint refuses it and before each circuit probe (never per call).
//! A file that cannot be read or is empty keeps the key in use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use reqwest::header::HeaderValue;

use crate::config::SecretKey;
use crate::ops::metrics::Metrics;

/// One key and its header, built once per key.
pub struct Keyed {
    pub secret: SecretKey,
    pub header: HeaderValue,
    /// Counts the keys this process has used: tells whether a request was
    /// sent with the key in use now.
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Changed,
    Unchanged,
    /// The file could not be read, or holds no valid key.
    Failed,
    /// An inline key: nothing to re-read (not counted).
    Inline,
}

impl Reload {
    pub fn label(self) -> &'static str {
        match self {
            Reload::Changed => "changed",
            Reload::Unchanged | Reload::Inline => "unchanged",
            Reload::Failed => "failed",
        }
    }
}

pub struct CurrentKey {
    current: RwLock<Arc<Keyed>>,
    /// Set by the first failed re-read, so a file that stays broken is
    /// reported once, not at every probe.
    warned: AtomicBool,
    metrics: Arc<Metrics>,
}

fn header(secret: &SecretKey) -> Result<HeaderValue, String> {
    let mut header =
        HeaderValue::from_str(&format!("Bearer {}", secret.expose())).map_err(|_| {
            format!(
                "{} holds characters not allowed in a header",
                secret.variable()
            )
        })?;
    // Keeps the value out of any Debug print of the request (hyper/reqwest traces).
    header.set_sensitive(true);
    Ok(header)
}

impl CurrentKey {
    pub fn new(secret: SecretKey, metrics: Arc<Metrics>) -> Result<Self, String> {
        let header = header(&secret)?;
        Ok(Self {
            current: RwLock::new(Arc::new(Keyed {
                secret,
                header,
                generation: 0,
            })),
            warned: AtomicBool::new(false),
            metrics,
        })
    }

    /// The key to send now.
    pub fn get(&self) -> Arc<Keyed> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The variable the key comes from (`LINKER_MOS_SECRET_KEY` or `_FILE`).
    pub fn variable(&self) -> &'static str {
        self.get().secret.variable()
    }

    /// Reads the key file again; a new key is used from the next call.
    pub fn reload(&self) -> Reload {
        let now = self.get();
        let Some(reread) = now.secret.reread() else {
            return Reload::Inline;
        };
        let result = match reread.and_then(|secret| {
            header(&secret)
                .map(|header| (secret, header))
                .map_err(|problem| crate::config::ConfigError {
                    variable: "LINKER_MOS_SECRET_KEY_FILE",
                    problem,
                })
        }) {
            Ok((secret, _)) if secret == now.secret => {
                self.warned.store(false, Ordering::Relaxed);
                Reload::Unchanged
            }
            Ok((secret, header)) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                self.warned.store(false, Ordering::Relaxed);
                // Another re-read may have put it in place meanwhile.
                if current.secret == secret {
                    drop(current);
                    self.metrics.count_key_reload(Reload::Unchanged.label());
                    return Reload::Unchanged;
                }
                let generation = current.generation + 1;
                *current = Arc::new(Keyed {
                    secret,
                    header,
                    generation,
                });
                tracing::info!(
                    variable = "LINKER_MOS_SECRET_KEY_FILE",
                    "the key file changed: the new key is used from the next call"
                );
                Reload::Changed
            }
            // The error names the variable and the path, never the content.
            Err(error) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "cannot re-read the key file; keeping the key in use");
                }
                Reload::Failed
            }
        };
        self.metrics.count_key_reload(result.label());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file(path: &std::path::Path) -> CurrentKey {
        let vars = [
            ("LINKER_MOS_ENDPOINT_URL", "http://127.0.0.1:1/x"),
            ("LINKER_MOS_SECRET_KEY_FILE", path.to_str().unwrap()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = crate::config::Config::from_vars(vars).unwrap();
        CurrentKey::new(config.link.secret_key, Arc::new(Metrics::new(&[]))).unwrap()
    }

    #[test]
    fn a_rotated_file_is_picked_up_and_a_broken_one_keeps_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "old-key\n").unwrap();
        let key = from_file(&path);
        assert_eq!(key.variable(), "LINKER_MOS_SECRET_KEY_FILE");
        assert_eq!(key.reload(), Reload::Unchanged);
        assert_eq!(key.get().generation, 0);

        // As Kubernetes swaps it: a new file renamed over the old one.
        let next = dir.path().join("key.new");
        std::fs::write(&next, "new-key\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(key.reload(), Reload::Changed);
        assert_eq!(key.get().secret.expose(), "new-key");
        assert_eq!(key.get().header, "Bearer new-key");
        assert_eq!(key.get().generation, 1);
        assert_eq!(key.reload(), Reload::Unchanged);

        for broken in ["", "  \n"] {
            std::fs::write(&path, broken).unwrap();
            assert_eq!(key.reload(), Reload::Failed);
            assert_eq!(key.get().secret.expose(), "new-key");
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(key.reload(), Reload::Failed);
        assert_eq!(key.get().generation, 1);

        let text = key.metrics.encode();
        for (result, n) in [("changed", 1), ("unchanged", 2), ("failed", 3)] {
            let line =
                format!("identity_linker_secret_key_reloads_total{{result=\"{result}\"}} {n}");
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn an_inline_key_has_nothing_to_reload() {
        let key = CurrentKey::new(SecretKey::new("k"), Arc::new(Metrics::new(&[]))).unwrap();
        assert_eq!(key.variable(), "LINKER_MOS_SECRET_KEY");
        assert_eq!(key.reload(), Reload::Inline);
        assert_eq!(key.get().secret.expose(), "k");
    }
}
