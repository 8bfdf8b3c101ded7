//! The circuit's probe: while the circuit is open, repeat the call that
//! tripped it every probe interval; the circuit reads the answer.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::circuit::Circuit;
use super::policy::TargetHealth;
use super::single_flight::Linker;
use crate::ops::telemetry::ident;

pub async fn probe_loop(
    circuit: Arc<Circuit>,
    linker: Arc<Linker>,
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
        let Some(request) = circuit.probe_request() else {
            continue;
        };
        let request_id = format!("circuit-probe-{}", uuid::Uuid::new_v4());
        let answer = linker.probe(&request, &request_id).await;
        let error = answer.as_ref().err().map(|e| e.message.as_str());
        match circuit.observe_probe(&answer) {
            TargetHealth::Up => {}
            TargetHealth::KeyRefused => tracing::error!(
                error,
                next_probe_in = ?interval,
                "the link endpoint still refuses the key; check LINKER_MOS_SECRET_KEY"
            ),
            TargetHealth::Unavailable => tracing::error!(
                error,
                next_probe_in = ?interval,
                anonymous = %ident(request.anonymous.as_str()),
                "the link endpoint is still unavailable"
            ),
        }
    }
}
