//! Logging setup, and how identifiers and other producer-supplied strings
//! appear in logs.
//!
//! Log lines never block the pipeline: they go through a bounded in-memory
//! queue to a writer thread, and when that queue is full (a log reader that
//! stopped reading) lines are dropped and counted
//! (`identity_linker_log_lines_dropped_total`) instead of stalling the
//! runtime's threads on `write(2)`.

use std::ffi::OsString;
use std::fmt;
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::field::DisplayValue;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, IdentifierLogging, LogFormat};

static IDENTIFIER_LOGGING: OnceLock<IdentifierLogging> = OnceLock::new();
/// The format of the installed subscriber, so [`untrusted`] escapes only
/// where the formatter does not (text).
static LOG_FORMAT: OnceLock<LogFormat> = OnceLock::new();
/// Lines the non-blocking writer dropped (set by the `init` that installs it).
static DROPPED_LINES: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines held in memory while the output is slower than the logging; past
/// this, lines are dropped. A few MiB even at trace level.
pub const BUFFERED_LINES: usize = 8 * 1024;

/// How long the final flush may take at exit. The writer thread may be stuck
/// in `write(2)` on a pipe nobody reads: the process exits anyway.
pub const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// The filter when `RUST_LOG` is unset. lapin's own lines are off: every
/// error it has is also returned to the worker, which logs it once, in its
/// own words, with the URL redacted; lapin logged each failed login three
/// times more, raw. `RUST_LOG=info,lapin=warn` brings them back.
pub const DEFAULT_FILTER: &str = "info,lapin=off";

/// Installs the global subscriber. `RUST_LOG` sets the level (default
/// [`DEFAULT_FILTER`]); an invalid `RUST_LOG` is an error (see [`filter`]).
/// Keep the guard for as long as the process logs: dropping it flushes
/// what is queued (within [`FINAL_FLUSH_LIMIT`]) and stops the writer.
pub fn init(format: LogFormat, identifiers: IdentifierLogging) -> Result<LogGuard, ConfigError> {
    init_with_default(format, identifiers, DEFAULT_FILTER)
}

/// Like [`init`], with another level when `RUST_LOG` is unset (the demo is quiet).
pub fn init_with_default(
    format: LogFormat,
    identifiers: IdentifierLogging,
    default_filter: &str,
) -> Result<LogGuard, ConfigError> {
    let filter = filter(default_filter)?;
    let _ = IDENTIFIER_LOGGING.set(identifiers);
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
        .with_ansi(colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests, demo) keeps the first subscriber; its writer
    // and guard are not used.
    if installed.is_err() {
        return Ok(LogGuard::inert(guard));
    }
    let _ = LOG_FORMAT.set(format);
    let _ = DROPPED_LINES.set(dropped);
    Ok(LogGuard { guard: Some(guard) })
}

/// The log filter from `RUST_LOG`, `default_filter` when it is unset or
/// empty. A value that does not parse is refused rather than silently
/// replaced: an operator who asked for debug logs should not get info.
pub fn filter(default_filter: &str) -> Result<EnvFilter, ConfigError> {
    match std::env::var("RUST_LOG") {
        Err(std::env::VarError::NotPresent) => Ok(EnvFilter::new(default_filter)),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError {
            variable: "RUST_LOG",
            problem: "not valid UTF-8".to_owned(),
        }),
        Ok(value) if value.trim().is_empty() => Ok(EnvFilter::new(default_filter)),
        Ok(value) => parse_filter(&value),
    }
}

fn parse_filter(value: &str) -> Result<EnvFilter, ConfigError> {
    EnvFilter::builder()
        .parse(value)
        .map_err(|error| ConfigError {
            variable: "RUST_LOG",
            // The parser's text is one line; the value is the operator's own.
            problem: format!("invalid filter `{}`: {error}", escaped(value)),
        })
}

/// Whether log lines get ANSI colours: only on a terminal, and never with
/// `NO_COLOR` set to anything but the empty string (<https://no-color.org>).
pub fn colours(is_terminal: bool, no_color: Option<OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
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
            IdentifierLogging::Plain => Untrusted(self.0).fmt(f),
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

/// A string a producer (or the endpoint) chose: an event id, a message_id,
/// a routing key, an error text quoting them. See [`untrusted`].
pub struct Untrusted<'a>(&'a str);

/// Shows `value` in a text log [`escaped`], so it cannot start a forged log
/// line or rewrite the terminal. JSON logs show it as it is (serde escapes
/// it there).
pub fn untrusted(value: &str) -> Untrusted<'_> {
    Untrusted(value)
}

/// [`untrusted`] for an optional field (`event_id = untrusted_opt(id)`).
pub fn untrusted_opt(value: Option<&str>) -> Option<DisplayValue<Untrusted<'_>>> {
    value.map(|v| tracing::field::display(Untrusted(v)))
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if LOG_FORMAT.get() == Some(&LogFormat::Json) {
            return f.write_str(self.0);
        }
        write_escaped(f, self.0)
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `value` with its control characters escaped (`\n`, `\r`, `\t`,
/// `\u{1b}`, ...), and line or paragraph separators and bidi overrides as
/// `\u{..}`; a backslash is doubled, so an escape cannot be forged either.
/// Whatever the log format (for plain text output: the CLI).
pub struct Escaped<'a>(&'a str);

pub fn escaped(value: &str) -> Escaped<'_> {
    Escaped(value)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_escaped(f, self.0)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\\' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn write_escaped(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    let mut rest = value;
    while let Some(at) = rest.find(needs_escape) {
        out.write_str(&rest[..at])?;
        let mut chars = rest[at..].chars();
        let Some(c) = chars.next() else { break };
        match c {
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c => write!(out, "\\u{{{:x}}}", u32::from(c))?,
        }
        rest = chars.as_str();
    }
    out.write_str(rest)
}

/// A duration as logs and the command line show it: `250ms`, `1.5s`,
/// `20s`, `2m30s`, `1h` (rounded to the millisecond, past a minute to the
/// second), never `Duration`'s Debug (`19.999999089s`) or `Some(5s)`.
#[derive(Clone, Copy)]
pub struct HumanDuration(Duration);

pub fn duration(value: Duration) -> HumanDuration {
    HumanDuration(value)
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000 {
            return write!(f, "{nanos}ns");
        }
        if nanos < 1_000_000 {
            return write!(f, "{}µs", (nanos + 500) / 1_000);
        }
        let millis = (nanos + 500_000) / 1_000_000;
        if millis < 1_000 {
            return write!(f, "{millis}ms");
        }
        if millis < 60_000 {
            let (seconds, fraction) = (millis / 1_000, millis % 1_000);
            if fraction == 0 {
                return write!(f, "{seconds}s");
            }
            let fraction = format!("{fraction:03}");
            return write!(f, "{seconds}.{}s", fraction.trim_end_matches('0'));
        }
        let seconds = (millis + 500) / 1_000;
        let (hours, minutes, seconds) = (seconds / 3_600, seconds % 3_600 / 60, seconds % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        if seconds > 0 {
            write!(f, "{seconds}s")?;
        }
        Ok(())
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// At most one log line per `interval` for something that can happen on
/// every message (a flood of blocklisted events): [`RateLimit::allow`]
/// says whether to write the line now and how many were held back since
/// the last one.
pub struct RateLimit {
    interval: Duration,
    state: Mutex<RateState>,
}

struct RateState {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(RateState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(suppressed since the last line)` if a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`RateLimit::allow`] at `now` (tests inject the time).
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed = state.suppressed.saturating_add(1);
            None
        }
    }
}

/// Text log lines captured in memory, for tests of what is logged.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct LogCapture(std::sync::Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl LogCapture {
    /// A text subscriber without colours writing here (for `with_default`).
    pub(crate) fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(level)
            .with_writer(move || writer.clone())
            .finish()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

#[cfg(test)]
impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &str) -> String {
        super::escaped(value).to_string()
    }

    #[test]
    fn control_characters_cannot_start_a_line() {
        assert_eq!(escaped("plain id-1"), "plain id-1");
        assert_eq!(
            escaped("id\n2026-01-01T00:00:00Z  INFO forged"),
            "id\\n2026-01-01T00:00:00Z  INFO forged"
        );
        assert_eq!(escaped("a\r\tb"), "a\\r\\tb");
        assert_eq!(escaped("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escaped("nul\0"), "nul\\u{0}");
        assert_eq!(escaped("c1\u{85}"), "c1\\u{85}");
        assert_eq!(escaped("ls\u{2028}ps\u{2029}"), "ls\\u{2028}ps\\u{2029}");
        assert_eq!(escaped("bidi\u{202e}x\u{2066}"), "bidi\\u{202e}x\\u{2066}");
        // A literal backslash-n is not confused with an escaped newline.
        assert_eq!(escaped("a\\nb"), "a\\\\nb");
        assert_eq!(escaped("é ü 日本 🙂"), "é ü 日本 🙂");
        assert_eq!(escaped(""), "");
    }

    #[test]
    fn untrusted_escapes_unless_the_logs_are_json() {
        // No subscriber in unit tests: the safe default, escaped.
        if LOG_FORMAT.get() != Some(&LogFormat::Json) {
            assert_eq!(untrusted("a\nb").to_string(), "a\\nb");
            assert_eq!(format!("{:?}", untrusted("a\nb")), "a\\nb");
        }
    }

    #[test]
    fn durations_read_as_durations() {
        let shown = |d: Duration| duration(d).to_string();
        assert_eq!(shown(Duration::ZERO), "0s");
        assert_eq!(shown(Duration::from_nanos(300)), "300ns");
        assert_eq!(shown(Duration::from_micros(250)), "250µs");
        assert_eq!(shown(Duration::from_millis(250)), "250ms");
        assert_eq!(shown(Duration::from_millis(1500)), "1.5s");
        assert_eq!(shown(Duration::from_millis(1250)), "1.25s");
        assert_eq!(shown(Duration::from_secs(5)), "5s");
        assert_eq!(shown(Duration::from_nanos(19_999_999_089)), "20s");
        assert_eq!(shown(Duration::from_nanos(999_600_000)), "1s");
        assert_eq!(shown(Duration::from_secs(60)), "1m");
        assert_eq!(shown(Duration::from_secs(150)), "2m30s");
        assert_eq!(shown(Duration::from_secs(3600)), "1h");
        assert_eq!(shown(Duration::from_secs(3605)), "1h5s");
        assert_eq!(format!("{:?}", duration(Duration::from_secs(5))), "5s");
    }

    #[test]
    fn an_invalid_filter_is_an_error_naming_rust_log() {
        assert!(parse_filter("info,lapin=warn").is_ok());
        let error = parse_filter("info,lapin=loud").err().map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.starts_with("RUST_LOG: invalid filter `info,lapin=loud`"),
            "{error}"
        );
        assert_eq!(error.lines().count(), 1, "{error}");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(
            colours(true, Some(OsString::new())),
            "an empty NO_COLOR is unset"
        );
        assert!(!colours(true, Some("1".into())));
        assert!(!colours(false, None));
    }

    #[test]
    fn one_line_per_interval_counting_what_was_held_back() {
        let limit = RateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(limit.allow_at(t0), Some(0), "the first line is written");
        assert_eq!(limit.allow_at(at(1)), None);
        assert_eq!(limit.allow_at(at(9)), None);
        assert_eq!(limit.allow_at(at(10)), Some(2), "two held back");
        assert_eq!(limit.allow_at(at(15)), None);
        assert_eq!(limit.allow_at(at(100)), Some(1));
        assert_eq!(limit.allow_at(at(200)), Some(0));
        // A clock that seems to go back does not panic or open the gate.
        assert_eq!(limit.allow_at(t0), None);
    }
}
