//! Logging setup, and how identifiers appear in logs.
//!
//! Log lines never block the pipeline: they go through a bounded in-memory
//! queue to a writer thread, and when that queue is full (a log reader that
//! stopped reading) lines are dropped and counted
//! (`identity_linker_log_lines_dropped_total`) instead of stalling the
//! runtime's threads on `write(2)`.

use std::fmt;
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{IdentifierLogging, LogFormat};

static IDENTIFIER_LOGGING: OnceLock<IdentifierLogging> = OnceLock::new();
/// Lines the non-blocking writer dropped (set by the `init` that installs it).
static DROPPED_LINES: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines held in memory while the output is slower than the logging; past
/// this, lines are dropped. A few MiB even at trace level.
pub const BUFFERED_LINES: usize = 8 * 1024;

/// How long the final flush may take at exit. The writer thread may be stuck
/// in `write(2)` on a pipe nobody reads: the process exits anyway.
pub const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Installs the global subscriber. `RUST_LOG` sets the level (default `info`).
/// Keep the guard for as long as the process logs: dropping it flushes
/// what is queued (within [`FINAL_FLUSH_LIMIT`]) and stops the writer.
pub fn init(format: LogFormat, identifiers: IdentifierLogging) -> LogGuard {
    init_with_default(format, identifiers, "info")
}

/// Like [`init`], with another level when `RUST_LOG` is unset (the demo is quiet).
pub fn init_with_default(
    format: LogFormat,
    identifiers: IdentifierLogging,
    default_filter: &str,
) -> LogGuard {
    let _ = IDENTIFIER_LOGGING.set(identifiers);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Lossy: a full queue drops the line, it never blocks the caller. The
    // BufWriter saves a syscall per line; the writer thread flushes it after
    // every batch it takes from the queue.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests, demo) keeps the first subscriber; its writer
    // and guard are not used.
    if installed.is_err() {
        return LogGuard::inert(guard);
    }
    let _ = DROPPED_LINES.set(dropped);
    LogGuard { guard: Some(guard) }
}

/// Log lines dropped so far because the output did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED_LINES
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Keeps the log writer thread alive; see [`init`].
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    guard: Option<WorkerGuard>,
}

impl LogGuard {
    fn inert(unused: WorkerGuard) -> Self {
        // Never installed, so nothing was queued: its drop returns at once.
        drop(unused);
        Self { guard: None }
    }

    /// Keeps the writer for the rest of the process without a final flush
    /// (test harnesses that start many workers in one process).
    pub fn keep_for_process(mut self) {
        if let Some(guard) = self.guard.take() {
            std::mem::forget(guard);
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        // `WorkerGuard::drop` waits up to 1.1 s for the writer, and when the
        // queue is full it prints a notice to stdout, which blocks if stdout
        // is the same stalled pipe. So it runs on a thread of its own and is
        // waited for only so long; a thread still stuck is ended by the exit.
        let (done, finished) = mpsc::channel();
        let flush = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                drop(guard);
                let _ = done.send(());
            });
        if flush.is_ok() {
            let _ = finished.recv_timeout(FINAL_FLUSH_LIMIT);
        }
    }
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
