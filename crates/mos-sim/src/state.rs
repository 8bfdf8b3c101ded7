//! State shared by every connection: key, pause, faults, store and counters.
//!
//! The hot path touches only atomics, a read lock on the key and one store
//! shard at a time; the fault mutex is skipped entirely while no fault is set.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use super::SimStats;
use super::faults::{Decision, FaultState, Faults};
use super::store::Store;

/// Status codes are counted in a flat array indexed by code.
const STATUS_SLOTS: usize = 600;

pub(crate) struct Shared {
    key: RwLock<String>,
    pause_nanos: AtomicU64,
    pub plain_success: bool,
    faults_active: AtomicBool,
    faults: Mutex<FaultState>,
    pub store: Store,
    pub counters: Counters,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub creates: AtomicU64,
    pub duplicates: AtomicU64,
    pub already_linked: AtomicU64,
    statuses: StatusCounts,
}

struct StatusCounts(Box<[AtomicU64]>);

impl Default for StatusCounts {
    fn default() -> Self {
        Self((0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_status(&self, status: u16) {
        if let Some(slot) = self.statuses.0.get(usize::from(status)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn clear(&self) {
        for c in [
            &self.requests,
            &self.creates,
            &self.duplicates,
            &self.already_linked,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for slot in self.statuses.0.iter() {
            slot.store(0, Ordering::Relaxed);
        }
    }
}

impl Shared {
    pub fn new(key: String, pause: Duration, plain_success: bool, faults: Faults) -> Self {
        let shared = Self {
            key: RwLock::new(key),
            pause_nanos: AtomicU64::new(0),
            plain_success,
            faults_active: AtomicBool::new(false),
            faults: Mutex::new(FaultState::default()),
            store: Store::new(),
            counters: Counters::default(),
        };
        shared.set_pause(pause);
        shared.set_faults(faults);
        shared
    }

    /// Compares the `X-MOS-Key` header value against `Bearer <key>`.
    pub fn authorized(&self, header: Option<&[u8]>) -> bool {
        let Some(token) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let key = self.key.read().unwrap_or_else(PoisonError::into_inner);
        !key.is_empty() && token.trim_ascii() == key.as_bytes()
    }

    pub fn set_key(&self, key: &str) {
        *self.key.write().unwrap_or_else(PoisonError::into_inner) = key.to_owned();
    }

    pub fn pause(&self) -> Duration {
        Duration::from_nanos(self.pause_nanos.load(Ordering::Relaxed))
    }

    pub fn set_pause(&self, pause: Duration) {
        let nanos = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
        self.pause_nanos.store(nanos, Ordering::Relaxed);
    }

    fn fault_state(&self) -> MutexGuard<'_, FaultState> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `None` when no fault is set (the common case, decided without a lock).
    pub fn decide_fault(&self) -> Option<Decision> {
        if !self.faults_active.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.fault_state();
        let decision = state.decide();
        if state.is_inert() {
            self.faults_active.store(false, Ordering::Release);
        }
        Some(decision)
    }

    /// The content-dependent refusal of this body, if one is set.
    pub fn refusal(&self, body: &[u8]) -> Option<u16> {
        if !self.faults_active.load(Ordering::Acquire) {
            return None;
        }
        self.fault_state().refusal(body)
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut state = self.fault_state();
        *state = FaultState::new(faults);
        self.faults_active
            .store(!state.is_inert(), Ordering::Release);
    }

    pub fn faults(&self) -> Faults {
        self.fault_state().view()
    }

    /// Clears store, counters and faults; keeps key, pause and mode.
    pub fn reset(&self) {
        self.set_faults(Faults::default());
        self.store.clear();
        self.counters.clear();
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        let statuses: BTreeMap<String, u64> = c
            .statuses
            .0
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| (code.to_string(), n))
            })
            .collect();
        SimStats {
            requests: c.requests.load(Ordering::Relaxed),
            creates: c.creates.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            already_linked: c.already_linked.load(Ordering::Relaxed),
            links: self.store.len(),
            statuses,
        }
    }
}
