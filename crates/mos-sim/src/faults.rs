//! What the simulator injects before the real workflow runs, and the
//! per-request decision drawn from it.
//!
//! Per link request, in order (see [`Faults`] for each field):
//!
//! 1. **Rate limit** ([`RateLimit`], a gateway in front of the backend): a
//!    token bucket shared by all connections. No token: **429** at once
//!    (no latency), `Retry-After` in whole seconds until the next token.
//! 2. **In flight**: the request now counts as in flight (until its answer
//!    is returned or the connection is gone), whether or not a capacity is
//!    set; the peak is `max_in_flight_seen` in the stats.
//! 3. **Capacity** ([`Capacity`], the backend's): more than `hard_limit` in
//!    flight: **503** at once; more than `max_in_flight`: extra latency.
//! 4. **Latency**, then **statuses**, **rate**, **drop**, then the key, then
//!    **refuse** on the body, then the real workflow.
//!
//! ## Token bucket (`rate_limit`)
//!
//! The bucket holds up to `burst` tokens and starts full (also whenever the
//! faults are set again). It refills continuously: `tokens = min(burst,
//! tokens + per_second × elapsed)`. A request takes one token; if fewer than
//! one is left it is answered 429 with `{"message":"Too Many Requests"}` and
//! `Retry-After: max(1, ceil((1 - tokens) / per_second))`. `Retry-After` has
//! whole-second resolution, so at 50/s a client told "1" could in fact retry
//! after 20 ms. Over any window of `t` seconds at most `burst + per_second × t`
//! requests pass. The limiter's 429s are counted as `rate_limited`; its
//! `Retry-After` ignores `retry_after_secs` and `retry_after_http_date`,
//! which belong to injected 429s.
//!
//! ## Capacity model (`capacity`)
//!
//! With `n` link requests in flight when one arrives (itself included; the
//! rate-limited ones never count):
//!
//! - `n > hard_limit`: **503** `{"message":"Service Unavailable"}` at once,
//!   with `Retry-After: retry_after_secs` if that is set, else no header;
//!   counted as `overloaded`.
//! - otherwise its delay is `latency_ms + jitter + max(0, n - max_in_flight)
//!   × latency_per_extra_ms`, with `n` taken at arrival.
//!
//! With a fixed base latency `L`, `M = max_in_flight` and `e =
//! latency_per_extra_ms`, `n ≥ M` callers that each send again as soon as
//! answered get `n / (L + (n - M) × e)` answers per ms. For `e = L / M` (a backend that serves `M` at a time,
//! the others wait their turn) that is `M / L`, flat: more concurrency only
//! adds latency. A larger `e` makes throughput fall past `M`, a smaller one
//! lets it creep up towards `1 / e`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Fail a share of requests with one status.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFault {
    pub status: u16,
    /// 0.0..=1.0
    pub probability: f64,
}

/// Refuse every request whose body contains a text, as a web application
/// firewall in front of the endpoint does (e.g. `<script` in an identifier).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefuseFault {
    pub contains: String,
    pub status: u16,
}

/// A token bucket over all link requests, as an API gateway applies it.
///
/// JSON: `{"per_second": 50, "burst": 10}`, both required. See the module
/// docs for the formulas.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second, continuously; finite and > 0.
    pub per_second: f64,
    /// Size of the bucket, and its content at start; at least 1.
    pub burst: u32,
}

/// A backend that serves `max_in_flight` requests at full speed, slows down
/// beyond that and refuses past `hard_limit`.
///
/// JSON: `{"max_in_flight": 4, "latency_per_extra_ms": 25.0, "hard_limit":
/// 8, "retry_after_secs": 2}`; `retry_after_secs` may be omitted (no header).
/// See the module docs for the formulas.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Requests in flight served with the normal latency; at least 1.
    pub max_in_flight: u32,
    /// Delay added per request in flight beyond `max_in_flight`, in
    /// milliseconds (fractions allowed); finite and >= 0.
    pub latency_per_extra_ms: f64,
    /// More than this many in flight: 503 at once; >= `max_in_flight`
    /// (`u32::MAX` for never).
    pub hard_limit: u32,
    /// `Retry-After` seconds on those 503s; `None` sends no header.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
}

/// Faults applied to the link route, before the auth check and the store.
///
/// Per request, in order: `rate_limit` may answer 429 at once; the request
/// then counts as in flight, and `capacity` may answer 503 at once; then
/// `latency_ms` (+ up to `jitter_ms`, + the capacity's extra latency) is
/// added; then the next code of `statuses` is answered if any is left; else
/// `rate` may fail the request; else the connection is dropped without a
/// response if `drop` has any left or `drop_rate` says so; else the request
/// runs normally. The module docs give the two models' formulas.
///
/// As JSON (`PUT /_sim/faults`) every field is optional; unknown fields are
/// rejected so a typo does not silently leave a fault off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// Consumed one per request, front first (e.g. `[503, 503, 429, 500]`).
    pub statuses: Vec<u16>,
    pub rate: Option<RateFault>,
    /// Number of requests whose connection is closed with no response.
    pub drop: u64,
    /// Probability (0.0..=1.0) that a request's connection is dropped.
    pub drop_rate: f64,
    /// `Retry-After` on 429 answers, in seconds (or as a date, see below).
    pub retry_after_secs: u64,
    /// Send `Retry-After` as an HTTP date `retry_after_secs` from now.
    pub retry_after_http_date: bool,
    /// Checked after the key, on the request body: content-dependent refusals.
    pub refuse: Option<RefuseFault>,
    /// Token bucket in front of everything else (429s, no latency).
    pub rate_limit: Option<RateLimit>,
    /// Backend capacity: latency grows past `max_in_flight`, 503 past `hard_limit`.
    pub capacity: Option<Capacity>,
}

// Not derived: `retry_after_secs` defaults to 1, also for serde's defaults.
impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            jitter_ms: 0,
            statuses: Vec::new(),
            rate: None,
            drop: 0,
            drop_rate: 0.0,
            retry_after_secs: 1,
            retry_after_http_date: false,
            refuse: None,
            rate_limit: None,
            capacity: None,
        }
    }
}

impl Faults {
    /// Checks what a caller sent: statuses must be 4xx/5xx codes,
    /// probabilities within 0.0..=1.0, a rate limit must refill (finite
    /// `per_second` > 0) and hold a token (`burst` >= 1), a capacity must
    /// serve at least one request and not refuse below it (`1 <=
    /// max_in_flight <= hard_limit`, finite `latency_per_extra_ms` >= 0).
    pub fn validate(&self) -> Result<(), String> {
        for &status in &self.statuses {
            check_status(status)?;
        }
        if let Some(rate) = &self.rate {
            check_status(rate.status)?;
            check_probability("rate.probability", rate.probability)?;
        }
        if let Some(refuse) = &self.refuse {
            check_status(refuse.status)?;
            if refuse.contains.is_empty() {
                return Err("refuse.contains must not be empty".to_owned());
            }
        }
        if let Some(limit) = &self.rate_limit {
            if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
                return Err(format!(
                    "rate_limit.per_second must be a finite number > 0, got {}",
                    limit.per_second
                ));
            }
            if limit.burst == 0 {
                return Err("rate_limit.burst must be at least 1".to_owned());
            }
        }
        if let Some(cap) = &self.capacity {
            if cap.max_in_flight == 0 {
                return Err("capacity.max_in_flight must be at least 1".to_owned());
            }
            if cap.hard_limit < cap.max_in_flight {
                return Err(format!(
                    "capacity.hard_limit ({}) must be >= capacity.max_in_flight ({})",
                    cap.hard_limit, cap.max_in_flight
                ));
            }
            if !(cap.latency_per_extra_ms.is_finite() && cap.latency_per_extra_ms >= 0.0) {
                return Err(format!(
                    "capacity.latency_per_extra_ms must be a finite number >= 0, got {}",
                    cap.latency_per_extra_ms
                ));
            }
        }
        check_probability("drop_rate", self.drop_rate)
    }

    /// The same faults with anything invalid made harmless: bad statuses
    /// become 500, probabilities are clamped, and so are the rate limit
    /// (`per_second` into [`MIN_PER_SECOND`]..=[`MAX_PER_SECOND`], NaN to
    /// the minimum; `burst` at least 1) and the capacity (`max_in_flight` at
    /// least 1, `hard_limit` at least `max_in_flight`, `latency_per_extra_ms`
    /// into 0..=[`MAX_EXTRA_MS`], NaN to 0). For the infallible Rust API.
    pub(crate) fn sanitized(mut self) -> Self {
        for status in &mut self.statuses {
            if check_status(*status).is_err() {
                *status = 500;
            }
        }
        if let Some(rate) = &mut self.rate {
            if check_status(rate.status).is_err() {
                rate.status = 500;
            }
            rate.probability = clamp_probability(rate.probability);
        }
        self.drop_rate = clamp_probability(self.drop_rate);
        if let Some(refuse) = &mut self.refuse
            && check_status(refuse.status).is_err()
        {
            refuse.status = 403;
        }
        self.refuse = self.refuse.filter(|r| !r.contains.is_empty());
        if let Some(limit) = &mut self.rate_limit {
            limit.per_second = if limit.per_second.is_nan() {
                MIN_PER_SECOND
            } else {
                limit.per_second.clamp(MIN_PER_SECOND, MAX_PER_SECOND)
            };
            limit.burst = limit.burst.max(1);
        }
        if let Some(cap) = &mut self.capacity {
            cap.max_in_flight = cap.max_in_flight.max(1);
            cap.hard_limit = cap.hard_limit.max(cap.max_in_flight);
            cap.latency_per_extra_ms = if cap.latency_per_extra_ms.is_nan() {
                0.0
            } else {
                cap.latency_per_extra_ms.clamp(0.0, MAX_EXTRA_MS)
            };
        }
        self
    }
}

/// Slowest refill [`Faults::sanitized`] leaves: one token in 1000 s.
const MIN_PER_SECOND: f64 = 0.001;
/// Fastest refill [`Faults::sanitized`] leaves.
const MAX_PER_SECOND: f64 = 1e9;
/// Largest `latency_per_extra_ms` [`Faults::sanitized`] leaves (one hour).
const MAX_EXTRA_MS: f64 = 3_600_000.0;

fn check_status(status: u16) -> Result<(), String> {
    if (400..=599).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status} is not a 4xx or 5xx code"))
    }
}

fn check_probability(name: &str, p: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("{name} must be within 0.0..=1.0, got {p}"))
    }
}

fn clamp_probability(p: f64) -> f64 {
    // NaN fails every comparison, so it would survive `clamp`.
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Pass,
    Status(u16),
    Drop,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Decision {
    pub delay: Duration,
    pub action: Action,
    pub retry_after_secs: u64,
    pub retry_after_http_date: bool,
}

/// The rate limiter's state: tokens left as of `at`.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        let burst = f64::from(limit.burst);
        Self {
            per_second: limit.per_second,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token, or says in how many whole seconds (at least 1) the
    /// next one will be there.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // `as` saturates: a refill slow enough to overflow gives u64::MAX.
            let wait = ((1.0 - self.tokens) / self.per_second).ceil();
            Err((wait as u64).max(1))
        }
    }
}

/// The faults as configured plus what is left of the counted ones.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    config: Faults,
    statuses: VecDeque<u16>,
    drop_left: u64,
    bucket: Option<TokenBucket>,
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        let faults = faults.sanitized();
        Self {
            statuses: faults.statuses.iter().copied().collect(),
            drop_left: faults.drop,
            bucket: faults
                .rate_limit
                .map(|limit| TokenBucket::full(limit, Instant::now())),
            config: faults,
        }
    }

    /// The rate limiter's verdict: `Err(retry_after_secs)` when the bucket
    /// is empty. Always `Ok` without a rate limit.
    pub fn take_token(&mut self, now: Instant) -> Result<(), u64> {
        match &mut self.bucket {
            Some(bucket) => bucket.take(now),
            None => Ok(()),
        }
    }

    pub fn capacity(&self) -> Option<Capacity> {
        self.config.capacity
    }

    /// The faults still to come: `statuses` and `drop` show what is left.
    pub fn view(&self) -> Faults {
        Faults {
            statuses: self.statuses.iter().copied().collect(),
            drop: self.drop_left,
            ..self.config.clone()
        }
    }

    /// True when no request would be affected, so the hot path can skip the lock.
    pub fn is_inert(&self) -> bool {
        let c = &self.config;
        c.latency_ms == 0
            && c.jitter_ms == 0
            && self.statuses.is_empty()
            && c.rate.is_none_or(|r| r.probability <= 0.0)
            && self.drop_left == 0
            && c.drop_rate <= 0.0
            && c.refuse.is_none()
            && c.rate_limit.is_none()
            && c.capacity.is_none()
    }

    /// The status a request with this body is refused with, if any.
    pub fn refusal(&self, body: &[u8]) -> Option<u16> {
        let refuse = self.config.refuse.as_ref()?;
        let needle = refuse.contains.as_bytes();
        body.windows(needle.len())
            .any(|w| w == needle)
            .then_some(refuse.status)
    }

    /// Draws the fate of one admitted request, consuming counted faults;
    /// `in_flight` (itself included) sets the capacity's extra latency.
    pub fn decide(&mut self, in_flight: u64) -> Decision {
        let c = &self.config;
        let jitter = if c.jitter_ms > 0 {
            rand::random_range(0..=c.jitter_ms)
        } else {
            0
        };
        let delay = Duration::from_millis(c.latency_ms.saturating_add(jitter)).saturating_add(
            c.capacity
                .map_or(Duration::ZERO, |cap| extra_latency(cap, in_flight)),
        );
        let action = if let Some(status) = self.statuses.pop_front() {
            Action::Status(status)
        } else if let Some(rate) = c.rate
            && rate.probability > 0.0
            && rand::random_bool(rate.probability)
        {
            Action::Status(rate.status)
        } else if self.drop_left > 0 {
            self.drop_left -= 1;
            Action::Drop
        } else if c.drop_rate > 0.0 && rand::random_bool(c.drop_rate) {
            Action::Drop
        } else {
            Action::Pass
        };
        Decision {
            delay,
            action,
            retry_after_secs: c.retry_after_secs,
            retry_after_http_date: c.retry_after_http_date,
        }
    }
}

/// `max(0, in_flight - max_in_flight) × latency_per_extra_ms`.
fn extra_latency(cap: Capacity, in_flight: u64) -> Duration {
    let extra = in_flight.saturating_sub(u64::from(cap.max_in_flight));
    if extra == 0 || cap.latency_per_extra_ms <= 0.0 {
        return Duration::ZERO;
    }
    // In microseconds so fractional milliseconds count; `as` saturates.
    let micros = extra as f64 * cap.latency_per_extra_ms * 1000.0;
    Duration::from_micros(micros as u64)
}
