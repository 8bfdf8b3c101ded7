//! What `/readyz` answers: connected, consuming, not paused by the circuit
//! breaker, not stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use std::sync::Mutex;

use crate::ops::metrics::Metrics;

pub struct Readiness {
    connected: AtomicBool,
    consuming: AtomicBool,
    stopping: AtomicBool,
    /// Set by the circuit breaker while open: the `/readyz` reason and the last error.
    paused: Mutex<Option<(&'static str, String)>>,
    /// Why the last attempt to open a broker session failed (the `/readyz` detail).
    broker_problem: Mutex<Option<String>>,
    /// In partitioned mode: the partitions this replica works (see `/readyz`).
    partitions_active: Mutex<Option<Vec<u16>>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NotReady {
    pub ready: bool,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Readiness {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            connected: AtomicBool::new(false),
            consuming: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            paused: Mutex::new(None),
            broker_problem: Mutex::new(None),
            partitions_active: Mutex::new(None),
            metrics,
        }
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        self.metrics.broker_connected.set(i64::from(connected));
        if !connected {
            self.consuming.store(false, Ordering::Release);
        }
    }

    /// Why no session could be opened (`None` once one is).
    pub fn set_broker_problem(&self, problem: Option<String>) {
        *self
            .broker_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = problem;
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Release);
    }

    pub fn set_paused(&self, paused: Option<(&'static str, String)>) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = paused;
    }

    pub fn set_partitions_active(&self, active: Option<Vec<u16>>) {
        *self
            .partitions_active
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = active;
    }

    /// The partitions that delivered to this replica in the last minute;
    /// `None` in direct mode.
    pub fn partitions_active(&self) -> Option<Vec<u16>> {
        self.partitions_active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn check(&self) -> Result<(), NotReady> {
        let not_ready = |reason, detail| {
            Err(NotReady {
                ready: false,
                reason,
                detail,
            })
        };
        if self.stopping.load(Ordering::Acquire) {
            return not_ready("shutting_down", None);
        }
        if !self.connected.load(Ordering::Acquire) {
            let problem = self
                .broker_problem
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return not_ready("broker_disconnected", problem);
        }
        let paused = self
            .paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((reason, error)) = paused {
            return not_ready(reason, Some(error));
        }
        if !self.consuming.load(Ordering::Acquire) {
            return not_ready("not_consuming", None);
        }
        Ok(())
    }
}
