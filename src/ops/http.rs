//! The operations HTTP server: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;

#[derive(Clone)]
struct OpsState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .with_state(OpsState { metrics, readiness })
}

async fn metrics_handler(State(state): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(state): State<OpsState>) -> Response {
    match state.readiness.check() {
        Ok(()) => {
            let mut body = serde_json::json!({"ready": true});
            // Partitioned mode: which partitions this replica works; on a broker
            // that keeps the first consumer (3.10), extra replicas show none.
            if let Some(active) = state.readiness.partitions_active() {
                body["partitions_active"] = serde_json::json!(active);
            }
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(not_ready) => (StatusCode::SERVICE_UNAVAILABLE, Json(not_ready)).into_response(),
    }
}

/// Binds first (so a bad address fails at start and port 0 works in tests),
/// then serves until `stop` is cancelled.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, app: Router, stop: CancellationToken) {
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "operations HTTP server failed");
    }
}
