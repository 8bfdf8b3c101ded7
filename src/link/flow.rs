//! How fast the worker calls the endpoint, decided in one place:
//!
//! - **Pause**: a rate limit (429, or 503 with `Retry-After`) pauses every
//!   new call of the process until the time it gives (at most
//!   [`MAX_RETRY_AFTER`]). Calls already sent finish; none starts.
//! - **Pace**: after a rate limit, calls are paced at 90 % of the rate that
//!   met it, rising 2 % a second, so the process settles just under the
//!   limit instead of meeting it again at full speed after every pause. The
//!   pace is dropped once it has doubled without meeting a limit.
//!   `LINKER_MAX_REQUESTS_PER_SECOND` adds a fixed pace of its own.
//! - **Limit**: the calls in flight follow an AIMD limit between 1 and
//!   `LINKER_CONCURRENCY`. It starts at [`SLOW_START_FROM`] and doubles each
//!   round trip (slow start, as TCP's) up to the ceiling or the first sign of
//!   overload, so the latency baseline is learned before a backlog fills the
//!   endpoint; then +1 per round trip while the limit is in use and latency
//!   stays under its threshold; ×0.9 (at most once per round trip) on a rate
//!   limit, a timeout, a 5xx, or latency above it. The threshold is the
//!   highest of twice the baseline, the baseline plus [`LATENCY_SLACK`], and
//!   the baseline plus four times the latency's mean deviation: a rise the
//!   endpoint's own jitter explains is not overload.
//! - **Admission**: the events in hand (deliveries being worked towards a
//!   call) follow the limit, a quarter above it, so what the limit holds back
//!   waits in the broker rather than in the process, where it would only add
//!   to every event's time from delivery to ack.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::client::MAX_RETRY_AFTER;
use super::policy::{CallError, Verdict};
use crate::ops::metrics::Metrics;

/// How long one call keeps waiting out rate limits before its message takes
/// the retry ladder like any failed call.
pub const PATIENCE: Duration = Duration::from_secs(300);

/// Where the limit starts (or the ceiling, if lower).
pub const SLOW_START_FROM: usize = 16;
/// How slowly the latency baseline follows a latency that stays higher.
const BASELINE_CREEP: Duration = Duration::from_secs(60);
/// Latency above this many times its baseline counts as overload…
const LATENCY_TOLERANCE: f64 = 2.0;
/// …once it is also this much above it: on a sub-millisecond endpoint,
/// twice the baseline is the worker's own scheduling noise, not a queue at
/// the endpoint, and shrinking on it cost the fast path 58 % of its
/// throughput (BENCHMARKS.md). An endpoint over the network is slower than
/// this, so the ratio decides there.
const LATENCY_SLACK: f64 = 0.010;
/// …and once it is above what the latency's own spread explains: this many
/// mean deviations past the baseline (TCP's retransmission timeout uses 4).
const DEVIATIONS: f64 = 4.0;
const DECREASE: f64 = 0.9;
/// The pace after a rate limit: this share of the rate that met it…
const PACE_AFTER_LIMIT: f64 = 0.9;
/// …rising by this factor each second.
const PACE_GROWTH_PER_SECOND: f64 = 1.02;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Flow {
    paused_until: Mutex<Option<Instant>>,
    pace: Mutex<Pace>,
    limit: Mutex<Limit>,
    slot_freed: Notify,
    /// Room for one more event in hand.
    room: Notify,
    metrics: Arc<Metrics>,
}

/// Call pacing: slots `1 / rate` apart (GCRA without a burst).
struct Pace {
    fixed: Option<f64>,
    adaptive: Option<AdaptivePace>,
    next_slot: Instant,
    /// Start times of the last second's calls: the rate a limit was met at.
    recent: VecDeque<Instant>,
}

#[derive(Clone, Copy)]
struct AdaptivePace {
    from: f64,
    since: Instant,
}

impl AdaptivePace {
    fn rate(self, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.since).as_secs_f64();
        self.from * PACE_GROWTH_PER_SECOND.powf(secs)
    }
}

impl Pace {
    fn rate(&mut self, now: Instant) -> Option<f64> {
        if let Some(adaptive) = self.adaptive
            && adaptive.rate(now) > 2.0 * adaptive.from
        {
            self.adaptive = None;
        }
        let adaptive = self.adaptive.map(|a| a.rate(now));
        match (self.fixed, adaptive) {
            (Some(f), Some(a)) => Some(f.min(a)),
            (f, a) => f.or(a),
        }
    }

    /// When this call may start.
    fn reserve(&mut self, now: Instant) -> Instant {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        let slot = match self.rate(now) {
            Some(rate) => {
                let slot = self.next_slot.max(now);
                self.next_slot = slot + Duration::from_secs_f64(1.0 / rate.max(0.1));
                slot
            }
            None => now,
        };
        self.recent.push_back(slot);
        slot
    }

    fn met_limit(&mut self, now: Instant) {
        let rate = (self.recent.len() as f64 * PACE_AFTER_LIMIT).max(1.0);
        // A second limit met while already paced lowers the pace further.
        let current = self.rate(now).unwrap_or(f64::MAX);
        self.adaptive = Some(AdaptivePace {
            from: rate.min(current * PACE_AFTER_LIMIT),
            since: now,
        });
    }
}

/// AIMD on calls in flight, with a latency signal.
struct Limit {
    limit: f64,
    ceiling: f64,
    in_flight: usize,
    /// Events admitted into the process ([`Admission`]).
    in_hand: usize,
    /// Doubling per round trip until the first overload or the ceiling.
    slow_start: bool,
    /// Smoothed latency of the last calls, its mean deviation, and the
    /// lowest it has been (creeping up over a minute, so an endpoint that
    /// got slower for good is not taken as overloaded for ever), in seconds.
    recent: Option<f64>,
    deviation: f64,
    baseline: Option<f64>,
    baseline_at: Option<Instant>,
    last_decrease: Option<Instant>,
}

/// What a finished call says about the endpoint's capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Signal {
    Answered(Duration),
    Overloaded,
    Neutral,
}

impl Signal {
    fn of<T>(answer: &Result<T, CallError>, latency: Duration) -> Self {
        match answer {
            Ok(_) => Signal::Answered(latency),
            Err(error) => match error.verdict {
                Verdict::Reject => Signal::Answered(latency),
                Verdict::RetryAfter(_) | Verdict::RateLimited(_) => Signal::Overloaded,
                Verdict::KeyRefused => Signal::Neutral,
            },
        }
    }
}

impl Limit {
    fn new(start: f64, ceiling: f64) -> Self {
        Self {
            limit: start,
            ceiling,
            in_flight: 0,
            in_hand: 0,
            slow_start: start < ceiling,
            recent: None,
            deviation: 0.0,
            baseline: None,
            baseline_at: None,
            last_decrease: None,
        }
    }

    fn allowed(&self) -> usize {
        (self.limit as usize).max(1)
    }

    /// One more call in flight, if the limit allows it.
    fn take_call(&mut self) -> bool {
        let free = self.in_flight < self.allowed();
        self.in_flight += usize::from(free);
        free
    }

    /// One more event in hand, if [`Self::admissible`] allows it.
    fn take_in_hand(&mut self) -> bool {
        let free = self.in_hand < self.admissible();
        self.in_hand += usize::from(free);
        free
    }

    /// Events the process may hold: the calls the limit allows, a quarter
    /// more for the events that need no call or are settling, never more
    /// than the ceiling.
    fn admissible(&self) -> usize {
        let allowed = self.allowed();
        (allowed + allowed / 4 + 1)
            .min(self.ceiling as usize)
            .max(1)
    }

    fn decrease(&mut self, now: Instant) {
        let window = Duration::from_secs_f64(self.recent.unwrap_or(0.0).max(0.001));
        if self
            .last_decrease
            .is_some_and(|at| now.saturating_duration_since(at) < window)
        {
            return;
        }
        self.limit = (self.limit * DECREASE).max(1.0);
        self.slow_start = false;
        self.last_decrease = Some(now);
    }

    /// A call ended; `busy` tells whether the limit was in use when it did.
    fn record(&mut self, signal: Signal, busy: bool, now: Instant) {
        match signal {
            Signal::Neutral => {}
            Signal::Overloaded => self.decrease(now),
            Signal::Answered(latency) => {
                let latency = latency.as_secs_f64();
                // Smoothed as TCP smooths round trips (RFC 6298): the first
                // sample's deviation is half of it.
                let (recent, deviation) = match self.recent {
                    Some(r) => (
                        r + 0.2 * (latency - r),
                        self.deviation + 0.2 * ((latency - r).abs() - self.deviation),
                    ),
                    None => (latency, latency / 2.0),
                };
                self.recent = Some(recent);
                self.deviation = deviation;
                // Creeps up with a time constant of a minute, whatever the
                // call rate: sustained overload must not become the baseline
                // within seconds.
                let creep = self.baseline_at.map_or(1.0, |at| {
                    now.saturating_duration_since(at).as_secs_f64() / BASELINE_CREEP.as_secs_f64()
                });
                let baseline = match self.baseline {
                    Some(b) if recent >= b => b + creep.min(1.0) * (recent - b),
                    _ => recent,
                };
                self.baseline = Some(baseline);
                self.baseline_at = Some(now);
                let threshold = (baseline * LATENCY_TOLERANCE)
                    .max(baseline + LATENCY_SLACK)
                    .max(baseline + DEVIATIONS * deviation);
                if recent > threshold {
                    self.decrease(now);
                } else if busy {
                    // +1 per answer doubles the limit each round trip; +1/limit
                    // adds one.
                    let step = if self.slow_start {
                        1.0
                    } else {
                        1.0 / self.limit
                    };
                    self.limit = (self.limit + step).min(self.ceiling);
                    self.slow_start &= self.limit < self.ceiling;
                }
            }
        }
    }
}

impl Flow {
    pub fn new(
        ceiling: usize,
        max_requests_per_second: Option<NonZeroU32>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ceiling = ceiling.max(1) as f64;
        metrics
            .concurrency_limit
            .set(ceiling.min(SLOW_START_FROM as f64) as i64);
        Self {
            paused_until: Mutex::new(None),
            pace: Mutex::new(Pace {
                fixed: max_requests_per_second.map(|r| f64::from(r.get())),
                adaptive: None,
                next_slot: Instant::now(),
                recent: VecDeque::new(),
            }),
            limit: Mutex::new(Limit::new(ceiling.min(SLOW_START_FROM as f64), ceiling)),
            slot_freed: Notify::new(),
            room: Notify::new(),
            metrics,
        }
    }

    /// Waits until the process may take one more event in hand (see
    /// [`Limit::admissible`]); the admission ends when dropped.
    pub async fn admit(self: &Arc<Self>) -> Admission {
        self.wait_for_place(&self.room, Limit::take_in_hand).await;
        Admission {
            flow: Arc::clone(self),
        }
    }

    /// Waits until a call may start: no pause, its paced slot, a place
    /// under the limit. The returned turn gives the place back when dropped.
    pub async fn turn(&self) -> Turn<'_> {
        self.wait_out_pause().await;
        self.wait_for_place(&self.slot_freed, Limit::take_call)
            .await;
        let turn = Turn {
            flow: self,
            done: false,
        };
        let slot = lock(&self.pace).reserve(Instant::now());
        tokio::time::sleep_until(slot).await;
        // A pause that began while this call waited for its slot holds it too.
        self.wait_out_pause().await;
        turn
    }

    /// Waits, woken by `wake`, until `take` finds a place under the lock
    /// (and counts it). Registered before the check, so no wake-up is lost.
    async fn wait_for_place(&self, wake: &Notify, take: fn(&mut Limit) -> bool) {
        loop {
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if take(&mut lock(&self.limit)) {
                return;
            }
            woken.await;
        }
    }

    async fn wait_out_pause(&self) {
        loop {
            let until = *lock(&self.paused_until);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// Every new call waits until `for_` from now (bounded); the pace drops.
    fn pause(&self, for_: Duration) {
        let now = Instant::now();
        let until = now + for_.min(MAX_RETRY_AFTER);
        let new_episode = {
            let mut paused = lock(&self.paused_until);
            let new_episode = paused.is_none_or(|p| p <= now);
            let from = paused.map_or(now, |p| p.max(now));
            if until > from {
                self.metrics
                    .rate_limit_paused_seconds
                    .inc_by(until.duration_since(from).as_secs_f64());
                *paused = Some(until);
            }
            new_episode
        };
        // Once per episode: the calls sent together before the pause all come
        // back limited, and each lowering the pace would compound it to nothing.
        if new_episode {
            lock(&self.pace).met_limit(now);
        }
        self.metrics.rate_limited.inc();
    }

    /// The current limit on calls in flight.
    pub fn limit(&self) -> usize {
        lock(&self.limit).allowed()
    }

    /// Whether a pause holds new calls now.
    pub fn paused(&self) -> bool {
        lock(&self.paused_until).is_some_and(|until| until > Instant::now())
    }

    fn finish(&self, signal: Signal) {
        let (before, allowed) = {
            let mut limit = lock(&self.limit);
            let before = limit.allowed();
            let busy = limit.in_flight >= before;
            limit.in_flight = limit.in_flight.saturating_sub(1);
            limit.record(signal, busy, Instant::now());
            (before, limit.allowed())
        };
        self.metrics.concurrency_limit.set(allowed as i64);
        self.slot_freed.notify_one();
        // A grown limit: room for more calls, and more events in hand.
        for _ in before..allowed {
            self.slot_freed.notify_one();
            self.room.notify_one();
        }
    }
}

/// One event in hand, counted against [`Limit::admissible`].
pub struct Admission {
    flow: Arc<Flow>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut limit = lock(&self.flow.limit);
        limit.in_hand = limit.in_hand.saturating_sub(1);
        drop(limit);
        self.flow.room.notify_one();
    }
}

/// One call's place under the limit.
pub struct Turn<'a> {
    flow: &'a Flow,
    done: bool,
}

impl Turn<'_> {
    /// The call's answer, and how long it took: adjusts the limit, and a
    /// rate limit pauses every new call.
    pub fn done<T>(mut self, answer: &Result<T, CallError>, latency: Duration) {
        if let Err(CallError {
            verdict: Verdict::RateLimited(after),
            ..
        }) = answer
        {
            self.flow.pause(*after);
        }
        self.done = true;
        self.flow.finish(Signal::of(answer, latency));
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // A call abandoned (shutdown, let go): its place only.
        if !self.done {
            self.flow.finish(Signal::Neutral);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(ceiling: usize) -> Flow {
        Flow::new(ceiling, None, Arc::new(Metrics::new(&[])))
    }

    fn limited() -> Result<(), CallError> {
        Err(CallError {
            verdict: Verdict::RateLimited(Duration::from_millis(300)),
            status: Some(429),
            message: "HTTP 429".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_holds_every_new_call_for_the_time_given() {
        let flow = flow(8);
        let first = flow.turn().await;
        let second = flow.turn().await;
        let at = Instant::now();
        first.done(&limited(), Duration::from_millis(5));
        assert!(flow.paused());
        // The call already sent finishes; a new one waits out the pause.
        second.done(&Ok::<(), CallError>(()), Duration::from_millis(5));
        let third = flow.turn().await;
        assert!(Instant::now() >= at + Duration::from_millis(300));
        drop(third);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_never_exceed_the_limit() {
        let flow = Arc::new(flow(3));
        let held: Vec<Turn<'_>> = vec![flow.turn().await, flow.turn().await, flow.turn().await];
        let waiting = tokio::time::timeout(Duration::from_secs(1), flow.turn()).await;
        assert!(waiting.is_err(), "a fourth call started under a limit of 3");
        drop(held);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), flow.turn())
                .await
                .is_ok()
        );
    }

    #[test]
    fn the_limit_falls_on_overload_and_grows_back_while_healthy() {
        let now = Instant::now();
        let mut limit = Limit::new(64.0, 64.0);
        let fast = Signal::Answered(Duration::from_millis(10));
        limit.record(fast, true, now);
        // Latency far above the baseline: decrease, once per round trip.
        for i in 0..20 {
            let later = now + Duration::from_millis(100 * (i + 1));
            limit.record(Signal::Answered(Duration::from_millis(80)), true, later);
        }
        let fallen = limit.limit;
        assert!(fallen < 64.0 * 0.9, "{fallen}");
        // Overloaded answers (timeouts, 5xx) bring it down further.
        for i in 0..20 {
            limit.record(Signal::Overloaded, true, now + Duration::from_secs(5 + i));
        }
        assert!(limit.limit < fallen);
        let low = limit.limit;
        // Fast again: it grows while in use, never above the ceiling.
        let mut t = now + Duration::from_secs(60);
        for _ in 0..100_000 {
            t += Duration::from_millis(1);
            limit.record(fast, true, t);
        }
        assert!(limit.limit > low && limit.limit <= 64.0, "{}", limit.limit);
        assert_eq!(limit.allowed(), 64);
    }

    #[test]
    fn scheduling_noise_on_a_fast_endpoint_is_not_overload() {
        let now = Instant::now();
        let mut limit = Limit::new(128.0, 128.0);
        limit.record(Signal::Answered(Duration::from_micros(300)), true, now);
        // Twenty times the baseline, but only milliseconds: the worker's own
        // queue on a busy machine, not the endpoint's.
        for i in 0..10_000u64 {
            let latency = Duration::from_micros(300 + (i % 7) * 1_000);
            limit.record(
                Signal::Answered(latency),
                true,
                now + Duration::from_micros(100 * i),
            );
        }
        assert_eq!(limit.allowed(), 128);
        // Past the slack, the ratio decides as before.
        for i in 0..100u64 {
            let at = now + Duration::from_secs(2) + Duration::from_millis(20 * i);
            limit.record(Signal::Answered(Duration::from_millis(15)), true, at);
        }
        assert!(limit.allowed() < 128, "{}", limit.allowed());
    }

    /// A toy endpoint that serves 16 calls at once in 10 ms and queues the
    /// rest (0.625 ms more per call beyond 16): calls made one round trip at
    /// a time, each seeing the latency of the limit in force.
    fn run_against_capacity(limit: &mut Limit, round_trips: usize) -> Vec<usize> {
        let mut now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..round_trips {
            let n = limit.allowed();
            let latency = 0.010 + (n.saturating_sub(16) as f64) * 0.000_625;
            for _ in 0..n {
                now += Duration::from_secs_f64(latency / n as f64);
                limit.record(
                    Signal::Answered(Duration::from_secs_f64(latency)),
                    true,
                    now,
                );
            }
            seen.push(limit.allowed());
        }
        seen
    }

    #[test]
    fn slow_start_learns_the_unloaded_latency_and_stops_past_the_knee() {
        let mut limit = Limit::new(16.0, 128.0);
        let seen = run_against_capacity(&mut limit, 400);
        // Doubling at first, well past 16…
        assert!(seen[1] >= 30, "{seen:?}");
        // …but held near twice the latency of 16 calls (32 in flight), far
        // from the ceiling, where a start at 128 would have taken 80 ms as
        // the baseline.
        let settled = &seen[200..];
        assert!(
            settled.iter().all(|&n| (20..=40).contains(&n)),
            "{settled:?}"
        );
    }

    #[test]
    fn jitter_is_not_overload() {
        // 0.1 to 6.1 s, spread evenly (a fixed sequence, not a random one).
        let mut limit = Limit::new(16.0, 64.0);
        let mut now = Instant::now();
        for i in 0..2_000u64 {
            let latency = 0.1 + ((i * 7_919) % 61) as f64 / 10.0;
            now += Duration::from_millis(50);
            limit.record(
                Signal::Answered(Duration::from_secs_f64(latency)),
                true,
                now,
            );
        }
        assert!(limit.allowed() >= 48, "{}", limit.allowed());
    }

    #[test]
    fn an_idle_limit_does_not_grow() {
        let now = Instant::now();
        let mut limit = Limit::new(4.0, 64.0);
        for i in 0..1000 {
            limit.record(
                Signal::Answered(Duration::from_millis(5)),
                false,
                now + Duration::from_millis(i),
            );
        }
        assert_eq!(limit.allowed(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_rate_limit_calls_are_paced_below_the_rate_that_met_it() {
        let flow = flow(1000);
        // 100 calls in the last second, then a limit.
        for _ in 0..100 {
            flow.turn()
                .await
                .done(&Ok::<(), CallError>(()), Duration::ZERO);
            tokio::time::advance(Duration::from_millis(9)).await;
        }
        // Ten calls of the same moment all come back limited: one episode.
        let together: Vec<Turn<'_>> = {
            let mut turns = Vec::new();
            for _ in 0..10 {
                turns.push(flow.turn().await);
            }
            turns
        };
        for turn in together {
            turn.done(&limited(), Duration::ZERO);
        }
        tokio::time::advance(Duration::from_millis(400)).await;
        let start = Instant::now();
        for _ in 0..45 {
            flow.turn()
                .await
                .done(&Ok::<(), CallError>(()), Duration::ZERO);
        }
        let took = start.elapsed();
        // About 90 a second: 45 calls take about half a second.
        assert!(
            took >= Duration::from_millis(400) && took <= Duration::from_millis(600),
            "{took:?}"
        );
    }
}
