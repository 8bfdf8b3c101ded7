//! Operations: metrics, HTTP endpoints, readiness, circuit breaker,
//! telemetry and shutdown.

pub mod circuit;
pub mod http;
pub mod metrics;
pub mod readiness;
pub mod shutdown;
pub mod telemetry;
