//! The circuit breaker: link policy about the target as a whole.
//!
//! Opens on a refused key (a 401/403 that a visitor-less check confirms) or
//! after N transient failures in a row. While open the consumer stops taking
//! deliveries; the probe (`probe.rs`) checks the endpoint with a request that
//! carries no visitor every probe interval, and the first answer that shows
//! the target up and the key accepted closes the circuit.
//! What an answer means is [`TargetHealth::of`]'s to say, nobody else's.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::watch;

use super::policy::CallError;
use super::policy::TargetHealth;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripReason {
    KeyRefused,
    TargetUnavailable,
}

impl TripReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TripReason::KeyRefused => "key_refused",
            TripReason::TargetUnavailable => "target_unavailable",
        }
    }

    /// The `/readyz` reason while open.
    pub fn readiness_reason(self) -> &'static str {
        match self {
            TripReason::KeyRefused => "circuit_open_key_refused",
            TripReason::TargetUnavailable => "circuit_open_target_unavailable",
        }
    }
}

#[derive(Debug, Clone)]
struct Trip {
    reason: TripReason,
    /// For `/readyz`: the status, or what kept the answer from coming, never
    /// an endpoint's body (which may echo anything).
    last_error: String,
}

pub struct Circuit {
    threshold: u32,
    consecutive_failures: AtomicU32,
    open: AtomicBool,
    trip: Mutex<Option<Trip>>,
    /// `true` while open; the consumer and the probe task wait on changes.
    state: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

impl Circuit {
    pub fn new(threshold: NonZeroU32, metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Self {
        let (state, _) = watch::channel(false);
        Self {
            threshold: threshold.get(),
            consecutive_failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            trip: Mutex::new(None),
            state,
            metrics,
            readiness,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Why it is open, and the last error.
    pub fn reason(&self) -> Option<(TripReason, String)> {
        self.lock()
            .as_ref()
            .map(|t| (t.reason, t.last_error.clone()))
    }

    /// Every link call's answer: a refused key opens at once, transient
    /// failures at the threshold; an answer from a healthy target resets the count.
    pub fn observe<T>(&self, answer: &Result<T, CallError>) {
        let error = match answer {
            Err(error) => error,
            Ok(_) => return self.record_success(),
        };
        match TargetHealth::of(answer) {
            TargetHealth::Up => self.record_success(),
            TargetHealth::Unavailable => {
                let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures >= self.threshold {
                    self.open_with(TripReason::TargetUnavailable, error);
                }
            }
            TargetHealth::KeyRefused => self.open_with(TripReason::KeyRefused, error),
        }
    }

    /// The probe's answer: closes the circuit when the target is up, else
    /// keeps the reason and error current for `/readyz`.
    pub fn observe_probe<T>(&self, answer: &Result<T, CallError>) -> TargetHealth {
        let health = TargetHealth::of(answer);
        let reason = match health {
            TargetHealth::Up => {
                self.close();
                return health;
            }
            TargetHealth::KeyRefused => TripReason::KeyRefused,
            TargetHealth::Unavailable => TripReason::TargetUnavailable,
        };
        let error = answer
            .as_ref()
            .err()
            .map(CallError::summary)
            .unwrap_or_default();
        if let Some(trip) = self.lock().as_mut() {
            trip.reason = reason;
            trip.last_error = error.clone();
            self.readiness
                .set_paused(Some((reason.readiness_reason(), error)));
        }
        health
    }

    fn record_success(&self) {
        // Only touch the shared counter when it is not already zero: this is
        // called for every successful call.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    fn open_with(&self, reason: TripReason, error: &CallError) {
        let summary = error.summary();
        let mut trip = self.lock();
        match trip.as_mut() {
            Some(existing) => {
                // Already open: a refused key outranks an outage in what we report.
                if reason == TripReason::KeyRefused {
                    existing.reason = reason;
                }
                existing.last_error = summary;
                self.readiness.set_paused(Some((
                    existing.reason.readiness_reason(),
                    existing.last_error.clone(),
                )));
            }
            None => {
                self.readiness
                    .set_paused(Some((reason.readiness_reason(), summary.clone())));
                *trip = Some(Trip {
                    reason,
                    last_error: summary,
                });
                self.open.store(true, Ordering::Release);
                self.metrics.circuit_open.set(1);
                tracing::error!(
                    reason = reason.as_str(),
                    error = %error.message,
                    "circuit opened: pausing consumption until a probe call succeeds"
                );
                self.state.send_replace(true);
            }
        }
    }

    fn close(&self) {
        let mut trip = self.lock();
        if trip.take().is_some() {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.open.store(false, Ordering::Release);
            self.metrics.circuit_open.set(0);
            self.readiness.set_paused(None);
            tracing::info!("circuit closed: the link endpoint answers again, resuming consumption");
            self.state.send_replace(false);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Trip>> {
        self.trip.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::policy::Verdict;

    fn failed(verdict: Verdict) -> Result<(), CallError> {
        Err(CallError {
            verdict,
            status: Some(503),
            message: "HTTP 503 from the link endpoint: <html>a body</html>".into(),
        })
    }

    fn circuit(threshold: u32) -> Circuit {
        let metrics = Arc::new(Metrics::new(&[]));
        Circuit::new(
            NonZeroU32::new(threshold).unwrap(),
            metrics.clone(),
            Arc::new(Readiness::new(metrics)),
        )
    }

    #[test]
    fn opens_after_threshold_in_a_row() {
        let circuit = circuit(3);
        let transient = || failed(Verdict::RetryAfter(None));
        circuit.observe(&transient());
        circuit.observe(&transient());
        circuit.observe(&Ok::<(), CallError>(()));
        circuit.observe(&transient());
        // A rejection proves the target up: it resets the count too.
        circuit.observe(&failed(Verdict::Reject));
        circuit.observe(&transient());
        circuit.observe(&transient());
        assert!(!circuit.is_open());
        circuit.observe(&transient());
        assert!(circuit.is_open());
        assert_eq!(circuit.reason().unwrap().0, TripReason::TargetUnavailable);
        assert_eq!(
            circuit.observe_probe(&transient()),
            TargetHealth::Unavailable
        );
        assert!(circuit.is_open());
        assert_eq!(
            circuit.observe_probe(&failed(Verdict::Reject)),
            TargetHealth::Up
        );
        assert!(!circuit.is_open());
    }

    #[test]
    fn refused_key_opens_at_once() {
        let circuit = circuit(20);
        circuit.readiness.set_connected(true);
        let mut state = circuit.subscribe();
        circuit.observe(&failed(Verdict::KeyRefused));
        assert!(circuit.is_open());
        assert!(*state.borrow_and_update());
        let not_ready = circuit.readiness.check().unwrap_err();
        assert_eq!(not_ready.reason, "circuit_open_key_refused");
        // The status only: an endpoint's body never reaches `/readyz`.
        assert_eq!(
            circuit.reason().unwrap().1,
            "HTTP 503 from the link endpoint"
        );
        circuit.observe_probe(&Ok::<(), CallError>(()));
        assert!(!circuit.is_open());
    }
}
