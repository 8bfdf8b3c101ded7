//! State shared by every connection: key, pause, faults, store and counters.
//!
//! The hot path touches only atomics, a read lock on the key and one store
//! shard at a time; the fault mutex is skipped entirely while no fault is set.
//! (A rate limit or a capacity is a fault: with one set, every request takes
//! the mutex, which also makes the token bucket and the hard limit exact.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

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
    /// 429s answered by the rate limiter (not injected ones).
    pub rate_limited: AtomicU64,
    /// 503s answered by the capacity's hard limit (not injected ones).
    pub overloaded: AtomicU64,
    /// Link requests past the rate limiter whose answer is not out yet. A
    /// gauge: never reset, or the guards of running requests would underflow it.
    in_flight: AtomicU64,
    /// Peak of `in_flight` since start or the last reset.
    max_in_flight_seen: AtomicU64,
    statuses: StatusCounts,
}

/// One link request in flight: counted from [`Counters::enter`] until
/// dropped, which happens however the request ends (answered, faulted,
/// dropped connection, client gone).
pub(crate) struct InFlight<'a> {
    counters: &'a Counters,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether the gateway (rate limit) and the backend (capacity) take a request.
pub(crate) enum Admission<'a> {
    /// No token: answer 429 with `Retry-After: retry_after_secs`.
    RateLimited { retry_after_secs: u64 },
    /// More than `hard_limit` in flight: answer 503 at once.
    Overloaded {
        in_flight: InFlight<'a>,
        retry_after_secs: Option<u64>,
    },
    /// Go on, with the other faults' decision if any is set.
    Admitted {
        in_flight: InFlight<'a>,
        decision: Option<Decision>,
    },
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

    /// Counts one more request in flight; returns its guard and the number
    /// in flight, this one included.
    pub fn enter(&self) -> (InFlight<'_>, u64) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight_seen.fetch_max(now, Ordering::Relaxed);
        (InFlight { counters: self }, now)
    }

    fn clear(&self) {
        for c in [
            &self.requests,
            &self.creates,
            &self.duplicates,
            &self.already_linked,
            &self.rate_limited,
            &self.overloaded,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        // The peak restarts from what is in flight now; `in_flight` stays.
        self.max_in_flight_seen
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
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

    /// Runs the rate limiter, counts the request in flight, applies the
    /// capacity's hard limit and draws the other faults. Without any fault
    /// set (the common case) only the in-flight count is taken, without a lock.
    pub fn admit(&self) -> Admission<'_> {
        if !self.faults_active.load(Ordering::Acquire) {
            let (in_flight, _) = self.counters.enter();
            return Admission::Admitted {
                in_flight,
                decision: None,
            };
        }
        let mut state = self.fault_state();
        if let Err(retry_after_secs) = state.take_token(Instant::now()) {
            return Admission::RateLimited { retry_after_secs };
        }
        // Under the fault lock, so the hard limit admits exactly `hard_limit`.
        let (in_flight, count) = self.counters.enter();
        if let Some(cap) = state.capacity()
            && count > u64::from(cap.hard_limit)
        {
            return Admission::Overloaded {
                in_flight,
                retry_after_secs: cap.retry_after_secs,
            };
        }
        let decision = state.decide(count);
        if state.is_inert() {
            self.faults_active.store(false, Ordering::Release);
        }
        Admission::Admitted {
            in_flight,
            decision: Some(decision),
        }
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
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            max_in_flight_seen: c.max_in_flight_seen.load(Ordering::Relaxed),
            links: self.store.len(),
            statuses,
        }
    }
}
