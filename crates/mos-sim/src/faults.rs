//! What the simulator injects before the real workflow runs, and the
//! per-request decision drawn from it.

use std::collections::VecDeque;
use std::time::Duration;

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

/// Faults applied to the link route, before the auth check and the store.
///
/// Per request, in order: `latency_ms` (+ up to `jitter_ms`) is added; then
/// the next code of `statuses` is answered if any is left; else `rate` may
/// fail the request; else the connection is dropped without a response if
/// `drop` has any left or `drop_rate` says so; else the request runs normally.
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
        }
    }
}

impl Faults {
    /// Checks what a caller sent: statuses must be 4xx/5xx codes and
    /// probabilities within 0.0..=1.0.
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
        check_probability("drop_rate", self.drop_rate)
    }

    /// The same faults with anything invalid made harmless: bad statuses
    /// become 500, probabilities are clamped. For the infallible Rust API.
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
        self
    }
}

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

/// The faults as configured plus what is left of the counted ones.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    config: Faults,
    statuses: VecDeque<u16>,
    drop_left: u64,
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        let faults = faults.sanitized();
        Self {
            statuses: faults.statuses.iter().copied().collect(),
            drop_left: faults.drop,
            config: faults,
        }
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
    }

    /// The status a request with this body is refused with, if any.
    pub fn refusal(&self, body: &[u8]) -> Option<u16> {
        let refuse = self.config.refuse.as_ref()?;
        let needle = refuse.contains.as_bytes();
        body.windows(needle.len())
            .any(|w| w == needle)
            .then_some(refuse.status)
    }

    /// Draws the fate of one request, consuming counted faults.
    pub fn decide(&mut self) -> Decision {
        let c = &self.config;
        let jitter = if c.jitter_ms > 0 {
            rand::random_range(0..=c.jitter_ms)
        } else {
            0
        };
        let delay = Duration::from_millis(c.latency_ms.saturating_add(jitter));
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
