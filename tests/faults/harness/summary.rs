//! The one-line summary each scenario prints.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::Tally;

pub struct Summary<'a> {
    pub scenario: &'a str,
    pub load: String,
    pub faults: String,
    pub tally: &'a Tally,
    pub recovery: String,
}

pub const SUMMARY_HEADER: &str = "scenario | load | faults injected | sent | linked | dead-lettered | lost | duplicate links | recovery time";

impl Summary<'_> {
    /// Printed to the real stderr (not captured by the test harness) and
    /// appended to `target/tmp/faults-summary.txt`.
    pub fn print(&self) {
        let t = self.tally;
        let line = format!(
            "{} | {} | {} | {} | {} | {} | {} | {} | {}",
            self.scenario,
            self.load,
            self.faults,
            t.sent,
            t.linked,
            t.dead_lettered,
            t.lost,
            t.duplicates,
            self.recovery
        );
        let mut stderr = std::io::stderr();
        let _ = writeln!(stderr, "\nFAULTS {SUMMARY_HEADER}\nFAULTS {line}");
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-summary.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Extra detail under the summary line (real stderr, uncaptured).
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "  {text}");
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A liveness bound on a recovery time: many times what runs show, so it
/// fails when recovery hangs or crawls, not because a machine is slow.
#[track_caller]
pub fn assert_within(what: &str, took: Duration, bound: Duration) {
    assert!(
        took <= bound,
        "{what} took {}, more than the {} allowed",
        secs(took),
        secs(bound)
    );
}
