//! `identity_linker_circuit_open`, sampled: every change of the gauge, with
//! its time, so a scenario can say what the circuit did rather than assume it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::scrape;

/// Every 50 ms: the outages it watches last seconds, and a scrape is a
/// full `/metrics` page.
const EVERY: Duration = Duration::from_millis(50);

/// Scrapes `/metrics` every [`EVERY`] and keeps each change of
/// `identity_linker_circuit_open` (scrapes that get no answer are skipped).
pub struct CircuitRecorder {
    changes: Arc<Mutex<Vec<(Instant, i64)>>>,
    stop: CancellationToken,
}

impl CircuitRecorder {
    pub fn start(ops: SocketAddr) -> Self {
        let changes = Arc::new(Mutex::new(Vec::<(Instant, i64)>::new()));
        let stop = CancellationToken::new();
        let (c, s) = (changes.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.is_cancelled() {
                if let Some(m) = scrape(ops).await {
                    let mut c = c.lock().unwrap();
                    if c.last().is_none_or(|&(_, v)| v != m.circuit_open) {
                        c.push((Instant::now(), m.circuit_open));
                    }
                }
                tokio::time::sleep(EVERY).await;
            }
        });
        Self { changes, stop }
    }

    fn changes(&self) -> Vec<(Instant, i64)> {
        self.changes.lock().unwrap().clone()
    }

    /// First time at or after `t` the gauge was seen at 1.
    pub fn opened_at_or_after(&self, t: Instant) -> Option<Instant> {
        self.changes()
            .into_iter()
            .find(|&(at, v)| at >= t && v == 1)
            .map(|(at, _)| at)
    }

    /// First time after `t` the gauge was seen back at 0.
    pub fn closed_after(&self, t: Instant) -> Option<Instant> {
        self.changes()
            .into_iter()
            .find(|&(at, v)| at > t && v == 0)
            .map(|(at, _)| at)
    }

    /// Times the gauge went from 0 (or the first sample) to 1.
    pub fn opens(&self) -> usize {
        let mut last = 0;
        let mut opens = 0;
        for (_, v) in self.changes() {
            if v == 1 && last != 1 {
                opens += 1;
            }
            last = v;
        }
        opens
    }

    /// The changes as `+seconds value` relative to `origin`, for notes.
    pub fn timeline(&self, origin: Instant) -> String {
        self.changes()
            .iter()
            .map(|&(at, v)| {
                let at = at.saturating_duration_since(origin).as_secs_f64();
                format!("+{at:.2}s {v}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Drop for CircuitRecorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
