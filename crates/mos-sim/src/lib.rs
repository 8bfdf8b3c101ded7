//! mos-sim: a faithful simulator of the MonetizationOS "Link Identities"
//! endpoint, for integration tests, the demo, the benchmark and docker-compose.
//!
//! The link route reproduces the real workflow, including its weakness: the
//! check ("is this pair already linked?") and the create are two separate
//! steps with a configurable `pause` between them, so concurrent identical
//! requests really do create duplicate links. That is the race the worker
//! has to prevent, and the counters let tests prove whether it did.
//!
//! Faults (latency, status sequences, random failures, dropped connections,
//! a revoked key, a token-bucket rate limit answering 429, a capacity model
//! whose latency grows past `max_in_flight` and that answers 503 past
//! `hard_limit`; formulas in [`Faults`]' module docs) can be set at start and changed at run time, either through
//! [`MosSim`] in-process or through the `/_sim/*` control routes. Those routes
//! have no auth (anyone who reaches them can read the links, change the key or
//! reset the store), so they are served only when [`SimConfig::control_routes`]
//! asks for them (`mos-sim --control`); otherwise `/_sim/*` is a 404. `GET
//! /healthz` is always served, for container healthchecks.
//!
//! Layout: `faults` (what to inject), `store` (links and counters), `routes`
//! (the axum router), `server` (accept loop that can drop connections).

mod faults;
mod routes;
mod server;
mod state;
mod store;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use faults::{Capacity, Faults, RateFault, RateLimit, RefuseFault};
pub use server::MosSim;
pub use store::SimLink;

/// Path of the link route as the simulator's own helpers address it; the
/// router accepts any environment id in place of `sim`.
pub const ENDPOINT_PATH: &str = "/api/v1/envs/sim/endpoints/link-identities";

/// Key used when none is configured.
pub const DEFAULT_SECRET_KEY: &str = "sim-secret-key";

/// Pause between check and create when none is configured.
pub const DEFAULT_PAUSE: Duration = Duration::from_millis(5);

/// How the simulator starts. Everything but `plain_success` and
/// `control_routes` can also be changed on a running [`MosSim`].
#[derive(Clone)]
pub struct SimConfig {
    /// Accepted value after `Bearer ` in the `X-MOS-Key` header.
    pub secret_key: String,
    /// Sleep between "no link found" and "create link" (the race window).
    pub pause: Duration,
    /// Answer `{"message":"Success"}` without `outcome`, like the original recipe.
    pub plain_success: bool,
    /// Faults active from the first request.
    pub faults: Faults,
    /// Serve the `/_sim/*` control routes. Off by default: they have no
    /// auth, so only a sim that someone drives over HTTP should have them.
    pub control_routes: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            secret_key: DEFAULT_SECRET_KEY.to_owned(),
            pause: DEFAULT_PAUSE,
            plain_success: false,
            faults: Faults::default(),
            control_routes: false,
        }
    }
}

// Hand-written so the key never reaches a log line through `{:?}`.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("secret_key", &"<redacted>")
            .field("pause", &self.pause)
            .field("plain_success", &self.plain_success)
            .field("faults", &self.faults)
            .field("control_routes", &self.control_routes)
            .finish()
    }
}

/// Counters since start or the last reset, as served by `GET /_sim/stats`.
///
/// `requests` counts every request that reached the link route, faulted and
/// dropped ones included; `statuses` counts the responses actually sent, so
/// `requests - sum(statuses)` is the number of dropped (or still running)
/// requests. `links` is the number of links currently stored.
///
/// `rate_limited` counts the 429s of [`RateLimit`] and `overloaded` the 503s
/// of [`Capacity`]'s hard limit (both also in `statuses`; injected 429s and
/// 503s are not in them). `in_flight` is the number of link requests past
/// the rate limiter whose answer is not out yet (a gauge, tracked with or
/// without a capacity, not cleared by a reset) and `max_in_flight_seen` its
/// peak, i.e. the highest concurrency a client reached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
// Counters added later read as 0 from an older sim's JSON.
#[serde(default)]
pub struct SimStats {
    pub requests: u64,
    pub creates: u64,
    pub duplicates: u64,
    pub already_linked: u64,
    pub rate_limited: u64,
    pub overloaded: u64,
    pub in_flight: u64,
    pub max_in_flight_seen: u64,
    pub links: u64,
    pub statuses: BTreeMap<String, u64>,
}

impl SimStats {
    /// Responses sent with `status`, 0 if none.
    pub fn status(&self, status: u16) -> u64 {
        self.statuses
            .get(status.to_string().as_str())
            .copied()
            .unwrap_or(0)
    }
}
