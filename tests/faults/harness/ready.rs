//! `/readyz`, recorded: every change of answer, with its time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Transition {
    pub at: Instant,
    /// 0 when the worker did not answer at all.
    pub status: u16,
    pub reason: String,
}

/// Polls `/readyz` every 5 ms and keeps every change of answer.
pub struct ReadyRecorder {
    transitions: Arc<Mutex<Vec<Transition>>>,
    stop: CancellationToken,
}

impl ReadyRecorder {
    pub fn start(ops: SocketAddr) -> Self {
        let transitions = Arc::new(Mutex::new(Vec::<Transition>::new()));
        let stop = CancellationToken::new();
        let (t, s) = (transitions.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(1000))
                .build()
                .unwrap();
            let url = format!("http://{ops}/readyz");
            while !s.is_cancelled() {
                let (status, reason) = match client.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        let reason = body["reason"].as_str().unwrap_or("").to_owned();
                        (status, reason)
                    }
                    Err(_) => (0, "no answer".to_owned()),
                };
                {
                    let mut t = t.lock().unwrap();
                    let changed = t
                        .last()
                        .is_none_or(|l| l.status != status || l.reason != reason);
                    if changed {
                        t.push(Transition {
                            at: Instant::now(),
                            status,
                            reason,
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self { transitions, stop }
    }

    pub fn transitions(&self) -> Vec<Transition> {
        self.transitions.lock().unwrap().clone()
    }

    /// The answers as `+seconds status reason` relative to `origin`, for notes.
    pub fn timeline(&self, origin: Instant) -> String {
        self.transitions()
            .iter()
            .map(|t| {
                let at = t.at.saturating_duration_since(origin).as_secs_f64();
                format!("+{at:.2}s {} {}", t.status, t.reason)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Times readiness went from 200 to anything else.
    pub fn downs(&self) -> usize {
        self.transitions()
            .windows(2)
            .filter(|w| w[0].status == 200 && w[1].status != 200)
            .count()
    }

    /// Times readiness came back to 200 after being down.
    pub fn ups(&self) -> usize {
        self.transitions()
            .windows(2)
            .filter(|w| w[0].status != 200 && w[1].status == 200)
            .count()
    }

    /// First moment at or after `t` when `/readyz` answered 200.
    pub fn ready_at_or_after(&self, t: Instant) -> Option<Instant> {
        let all = self.transitions();
        // Ready at t already (last transition before t was a 200 and none since)?
        let mut ready_since: Option<Instant> = None;
        for tr in &all {
            if tr.at <= t {
                ready_since = (tr.status == 200).then_some(t);
            } else if tr.status == 200 {
                return Some(ready_since.unwrap_or(tr.at));
            } else {
                if ready_since.is_some() {
                    return ready_since;
                }
                ready_since = None;
            }
        }
        ready_since
    }

    /// How long `/readyz` did not answer 200 between `from` and `to`.
    pub fn unready_between(&self, from: Instant, to: Instant) -> Duration {
        let all = self.transitions();
        let mut total = Duration::ZERO;
        // The answer in force at `from`: the last one before it.
        let mut state: Option<(Instant, bool)> = all
            .iter()
            .rev()
            .find(|t| t.at <= from)
            .map(|t| (from, t.status == 200));
        for t in all.iter().filter(|t| t.at > from && t.at < to) {
            if let Some((since, false)) = state {
                total += t.at.duration_since(since);
            }
            state = Some((t.at, t.status == 200));
        }
        if let Some((since, false)) = state {
            total += to.saturating_duration_since(since);
        }
        total
    }

    /// The first not-ready answer at or after `t`, and its reason.
    pub fn first_down_after(&self, t: Instant) -> Option<Transition> {
        self.transitions()
            .into_iter()
            .find(|tr| tr.at >= t && tr.status != 200)
    }

    /// Reasons seen while not ready, with how often each started.
    pub fn reasons(&self) -> BTreeMap<String, usize> {
        let mut reasons = BTreeMap::new();
        for tr in self.transitions() {
            if tr.status != 200 {
                *reasons.entry(tr.reason).or_default() += 1;
            }
        }
        reasons
    }
}

impl Drop for ReadyRecorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
