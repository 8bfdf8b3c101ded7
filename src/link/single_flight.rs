//! The worker's half of check-then-create: never two calls in flight for one
//! anonymous identifier, and no call at all for a pair already linked.
//!
//! The endpoint's own check-then-create is not atomic (a list, then a create),
//! so two concurrent calls for one visitor could both create a link. Here a
//! second event for an anonymous identifier waits for the first call and
//! reuses its result (same pair), or calls after it (another user).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::watch;

use super::cache::LinkedCache;
use super::circuit::Circuit;
use super::client::LinkClient;
use super::flow::{self, Flow};
use super::policy;
use super::policy::{CallError, Verdict};
use super::probe::EndpointCheck;
use crate::domain::{AnonymousId, LinkEvent, LinkResult, UserId};
use crate::ops::metrics::Metrics;

/// The backoff between in-process tries (whether to try is `policy`'s):
/// exponential from 100 ms, capped at 5 s, full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

type FlightResult = Option<Result<LinkResult, CallError>>;

struct Flight {
    user: UserId,
    done: watch::Receiver<FlightResult>,
}

/// Shards of the in-flight map, to keep lock contention low at high concurrency.
const SHARDS: usize = 16;

pub struct Linker {
    client: LinkClient,
    flow: Arc<Flow>,
    check: Arc<EndpointCheck>,
    cache: LinkedCache,
    circuit: Arc<Circuit>,
    metrics: Arc<Metrics>,
    immediate_retries: usize,
    flights: [Mutex<HashMap<AnonymousId, Flight>>; SHARDS],
    shard_hasher: std::collections::hash_map::RandomState,
}

enum Role {
    Lead(watch::Sender<FlightResult>),
    Follow {
        same_user: bool,
        done: watch::Receiver<FlightResult>,
    },
}

/// Removes the flight when the leader finishes or is dropped (e.g. aborted
/// at shutdown), so followers never wait on a call nobody makes.
struct FlightGuard<'a> {
    map: &'a Mutex<HashMap<AnonymousId, Flight>>,
    anonymous: &'a AnonymousId,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        lock(self.map).remove(self.anonymous);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Linker {
    pub fn new(
        client: LinkClient,
        flow: Flow,
        cache: LinkedCache,
        circuit: Arc<Circuit>,
        metrics: Arc<Metrics>,
        immediate_retries: usize,
    ) -> Self {
        Self {
            check: Arc::new(EndpointCheck::new(client.clone())),
            client,
            flow: Arc::new(flow),
            cache,
            circuit,
            metrics,
            immediate_retries,
            flights: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            shard_hasher: Default::default(),
        }
    }

    pub fn cache(&self) -> &LinkedCache {
        &self.cache
    }

    pub fn client(&self) -> &LinkClient {
        &self.client
    }

    /// Shared with the consumer, which admits events by it.
    pub fn flow(&self) -> &Arc<Flow> {
        &self.flow
    }

    /// The visitor-less check, shared with the circuit's probe.
    pub fn endpoint_check(&self) -> Arc<EndpointCheck> {
        Arc::clone(&self.check)
    }

    /// `true` (and counted) when the pair is known linked: no call needed.
    pub fn known_linked(&self, event: &LinkEvent) -> bool {
        let hit = self.cache.contains(event);
        if hit {
            self.metrics.linked_cache_hits.inc();
        }
        hit
    }

    fn shard(&self, anonymous: &AnonymousId) -> &Mutex<HashMap<AnonymousId, Flight>> {
        use std::hash::BuildHasher;
        let index = self.shard_hasher.hash_one(anonymous.as_str()) as usize % SHARDS;
        &self.flights[index]
    }

    /// Links the pair with immediate retries, sharing the call with any
    /// concurrent event for the same anonymous identifier.
    pub async fn link(&self, event: &LinkEvent, request_id: &str) -> Result<LinkResult, CallError> {
        self.link_in_flight(event, request_id).await
    }

    async fn link_in_flight(
        &self,
        event: &LinkEvent,
        request_id: &str,
    ) -> Result<LinkResult, CallError> {
        let map = self.shard(&event.anonymous);
        loop {
            if self.known_linked(event) {
                return Ok(LinkResult::AlreadyLinked);
            }
            let role = {
                let mut flights = lock(map);
                match flights.get(&event.anonymous) {
                    Some(flight) => Role::Follow {
                        same_user: flight.user == event.user,
                        done: flight.done.clone(),
                    },
                    None => {
                        let (tx, rx) = watch::channel(None);
                        flights.insert(
                            event.anonymous.clone(),
                            Flight {
                                user: event.user.clone(),
                                done: rx,
                            },
                        );
                        Role::Lead(tx)
                    }
                }
            };
            match role {
                Role::Lead(tx) => {
                    let _guard = FlightGuard {
                        map,
                        anonymous: &event.anonymous,
                    };
                    let result = self.call_with_retries(event, request_id).await;
                    if result.is_ok() {
                        self.cache.insert(event);
                    }
                    tx.send_replace(Some(result.clone()));
                    return result;
                }
                Role::Follow {
                    same_user,
                    mut done,
                } => {
                    let shared = done
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|r| r.clone());
                    match shared {
                        // Same pair: the leader's answer is ours. Its link now exists.
                        Some(result) if same_user => {
                            return result.map(|_| LinkResult::AlreadyLinked);
                        }
                        // Another user for this visitor, or the leader was
                        // aborted: go round, now that nothing is in flight.
                        _ => continue,
                    }
                }
            }
        }
    }

    /// The call, its in-process retries, and waiting out rate limits: those
    /// spend no retry; past [`flow::PATIENCE`] the message takes the ladder.
    async fn call_with_retries(
        &self,
        event: &LinkEvent,
        request_id: &str,
    ) -> Result<LinkResult, CallError> {
        let patient_until = Instant::now() + flow::PATIENCE;
        loop {
            let result = self.call_with_backoff(event, request_id).await;
            match &result {
                Err(error)
                    if matches!(error.verdict, Verdict::RateLimited(_))
                        && Instant::now() < patient_until =>
                {
                    tracing::debug!(%error, "rate limited: waiting with every other call");
                }
                _ => return result,
            }
        }
    }

    async fn call_with_backoff(
        &self,
        event: &LinkEvent,
        request_id: &str,
    ) -> Result<LinkResult, CallError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(BACKOFF_BASE)
            .with_max_delay(BACKOFF_CAP)
            .with_factor(2.0)
            .with_max_times(self.immediate_retries);
        let attempt = || async {
            let turn = self.flow.turn().await;
            let sent = Instant::now();
            let sent_with = self.client.key_generation();
            let mut result = self.client.link(event, request_id).await;
            turn.done(&result, sent.elapsed());
            if let Err(refused) = &result
                && refused.verdict == Verdict::KeyRefused
            {
                // A rotated key file is read before anything blames the key
                // (or this request); the check then uses the key in use now.
                self.client.reload_key();
                let rotated = self.client.key_generation() != sent_with;
                let check = self.check.since(sent).await;
                result = Err(policy::refusal_given(refused.clone(), &check, rotated));
            }
            self.circuit.observe(&result);
            result
        };
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &CallError| policy::retry_in_process(e, self.circuit.is_open()))
            .adjust(|e: &CallError, delay: Option<Duration>| {
                delay.map(|d| e.retry_after().unwrap_or_else(|| full_jitter(d)))
            })
            .notify(|e: &CallError, delay: Duration| {
                self.metrics.retries_immediate.inc();
                tracing::debug!(error = %e, delay = %crate::ops::telemetry::duration(delay), "link call failed, retrying in process");
            })
            .await
    }
}

/// "Full jitter": a uniform delay in [0, d], which spreads retries of many
/// workers hitting the same outage.
fn full_jitter(delay: Duration) -> Duration {
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds alone pass for a constant (0, or `d`), which would put every
    /// worker's retries in step; so the spread is checked too. For 1 000
    /// uniform draws on [0, d], P(none below d/4) = P(none above 3d/4) =
    /// 0.75^1000 < 1e-124, and Hoeffding bounds P(|mean - d/2| >= 0.15 d) by
    /// 2 e^-45 < 1e-19: a correct jitter never fails this.
    #[test]
    fn jitter_stays_within_the_delay_and_spreads_over_it() {
        let d = Duration::from_millis(100);
        let draws: Vec<Duration> = (0..1000).map(|_| full_jitter(d)).collect();
        assert!(draws.iter().all(|&j| j <= d), "a draw above {d:?}");
        let (min, max) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(*min < d / 4, "smallest of 1000 draws {min:?}");
        assert!(*max > d * 3 / 4, "largest of 1000 draws {max:?}");
        let mean = draws.iter().sum::<Duration>() / 1000;
        assert!(
            mean > d * 35 / 100 && mean < d * 65 / 100,
            "mean {mean:?} of 1000 draws, expected about {:?}",
            d / 2
        );
    }
}
