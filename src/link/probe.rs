//! Proving the endpoint, never a pair: a request that carries no visitor
//! (`POST {}`, as `check-config` sends), which the workflow answers 400 for
//! the missing fields once the key is accepted. The circuit's probe repeats
//! it while the circuit is open; a link call refused 401/403 asks for one
//! before anything blames the key. A request with a visitor in it could be
//! refused for that visitor alone (a WAF rule matching an identifier), and
//! repeating it would keep every replica paused forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::circuit::Circuit;
use super::client::LinkClient;
use super::policy::{CallError, TargetHealth};

/// One check in flight at a time; callers that arrive while one runs, or
/// that ask for a check no older than one just made, share its answer.
pub struct EndpointCheck {
    client: LinkClient,
    last: Mutex<Option<Checked>>,
}

struct Checked {
    started: Instant,
    answer: Result<u16, CallError>,
}

impl EndpointCheck {
    pub fn new(client: LinkClient) -> Self {
        Self {
            client,
            last: Mutex::new(None),
        }
    }

    pub fn client(&self) -> &LinkClient {
        &self.client
    }

    /// The answer of a check that started at `since` or later.
    pub async fn since(&self, since: Instant) -> Result<u16, CallError> {
        let mut last = self.last.lock().await;
        if let Some(checked) = last.as_ref()
            && checked.started >= since
        {
            return checked.answer.clone();
        }
        let started = Instant::now();
        let answer = self.client.check_reachable().await;
        *last = Some(Checked {
            started,
            answer: answer.clone(),
        });
        answer
    }
}

pub async fn probe_loop(
    circuit: Arc<Circuit>,
    check: Arc<EndpointCheck>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut state = circuit.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            opened = async { state.wait_for(|open| *open).await.map(|_| ()) } => if opened.is_err() { return },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if !circuit.is_open() {
            continue;
        }
        // A key rotated in its file is tried at once, without a restart.
        check.client().reload_key();
        let answer = check.since(Instant::now()).await;
        let error = answer.as_ref().err().map(|e| e.message.as_str());
        match circuit.observe_probe(&answer) {
            TargetHealth::Up => {}
            TargetHealth::KeyRefused => {
                let variable = check.client().key_variable();
                tracing::error!(
                    error,
                    variable,
                    next_probe_in = %crate::ops::telemetry::duration(interval),
                    "the link endpoint still refuses the key; check {variable}"
                )
            }
            TargetHealth::Unavailable => tracing::error!(
                error,
                next_probe_in = %crate::ops::telemetry::duration(interval),
                "the link endpoint is still unavailable"
            ),
        }
    }
}
