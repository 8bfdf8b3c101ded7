//! The circuit breaker (contract section 5).
//!
//! Opens on a refused key (401/403) or after N transient failures in a row.
//! While open the consumer stops taking deliveries; the probe task retries the
//! call that tripped it every probe interval and closes the circuit at the
//! first answer that shows the target up and the key accepted.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::watch;

use crate::domain::LinkEvent;
use crate::ops::metrics::Metrics;

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
}

#[derive(Debug, Clone)]
struct Trip {
    reason: TripReason,
    /// The request the probe repeats: the one that tripped the circuit.
    probe: LinkEvent,
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
}

impl Circuit {
    pub fn new(threshold: u32, metrics: Arc<Metrics>) -> Self {
        let (state, _) = watch::channel(false);
        Self {
            threshold,
            consecutive_failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            trip: Mutex::new(None),
            state,
            metrics,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Why it is open, for `/readyz`.
    pub fn reason(&self) -> Option<(TripReason, String)> {
        self.lock()
            .as_ref()
            .map(|t| (t.reason, t.last_error.clone()))
    }

    pub fn probe_request(&self) -> Option<LinkEvent> {
        self.lock().as_ref().map(|t| t.probe.clone())
    }

    pub fn record_success(&self) {
        // Only touch the shared counter when it is not already zero: this is
        // called for every successful call.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A transient failure; opens the circuit at the threshold.
    pub fn record_transient(&self, request: &LinkEvent, error: &str) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold {
            self.open_with(TripReason::TargetUnavailable, request, error);
        }
    }

    /// 401/403: open at once.
    pub fn record_refused_key(&self, request: &LinkEvent, error: &str) {
        self.open_with(TripReason::KeyRefused, request, error);
    }

    fn open_with(&self, reason: TripReason, request: &LinkEvent, error: &str) {
        let mut trip = self.lock();
        match trip.as_mut() {
            Some(existing) => {
                // Already open: a refused key outranks an outage in what we report.
                if reason == TripReason::KeyRefused {
                    existing.reason = reason;
                }
                existing.last_error = error.to_owned();
            }
            None => {
                *trip = Some(Trip {
                    reason,
                    probe: request.clone(),
                    last_error: error.to_owned(),
                });
                self.open.store(true, Ordering::Release);
                self.metrics.circuit_open.set(1);
                tracing::error!(
                    reason = reason.as_str(),
                    %error,
                    "circuit opened: pausing consumption until a probe call succeeds"
                );
                self.state.send_replace(true);
            }
        }
    }

    /// The probe failed again; keep the error current for `/readyz`.
    pub fn still_open(&self, reason: TripReason, error: &str) {
        if let Some(trip) = self.lock().as_mut() {
            trip.reason = reason;
            trip.last_error = error.to_owned();
        }
    }

    pub fn close(&self) {
        let mut trip = self.lock();
        if trip.take().is_some() {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.open.store(false, Ordering::Release);
            self.metrics.circuit_open.set(0);
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
    use crate::domain::{AnonymousId, UserId};

    fn request() -> LinkEvent {
        LinkEvent {
            anonymous: AnonymousId::parse("a").unwrap(),
            user: UserId::parse("u").unwrap(),
        }
    }

    #[test]
    fn opens_after_threshold_in_a_row() {
        let circuit = Circuit::new(3, Arc::new(Metrics::new(&[])));
        circuit.record_transient(&request(), "503");
        circuit.record_transient(&request(), "503");
        circuit.record_success();
        circuit.record_transient(&request(), "503");
        circuit.record_transient(&request(), "503");
        assert!(!circuit.is_open());
        circuit.record_transient(&request(), "503");
        assert!(circuit.is_open());
        assert_eq!(circuit.reason().unwrap().0, TripReason::TargetUnavailable);
        circuit.close();
        assert!(!circuit.is_open());
    }

    #[test]
    fn refused_key_opens_at_once() {
        let circuit = Circuit::new(20, Arc::new(Metrics::new(&[])));
        let mut state = circuit.subscribe();
        circuit.record_refused_key(&request(), "401");
        assert!(circuit.is_open());
        assert!(*state.borrow_and_update());
        assert_eq!(circuit.probe_request(), Some(request()));
    }
}
