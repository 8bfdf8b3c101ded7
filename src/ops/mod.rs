//! Operations: metrics, the record of each outcome (log + metric), HTTP
//! endpoints, readiness, telemetry and shutdown.

pub mod http;
pub mod metrics;
pub mod readiness;
pub mod record;
pub mod shutdown;
pub mod telemetry;
