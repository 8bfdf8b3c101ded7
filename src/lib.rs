//! identity-link-worker: links a visitor's anonymous identity to their user
//! identity in MonetizationOS, driven by auth events from RabbitMQ.
//!
//! Layout follows the flow of one message:
//! - `config`: the environment, parsed once into typed settings.
//! - `domain`: the event, its identifiers and the outcome of handling it (no I/O).
//! - `handler`: the per-message decision `handle(..) -> Outcome`.
//! - `link`: the output side, the MonetizationOS client and the worker's half of
//!   check-then-create (single flight + linked cache).
//! - `broker`: the input side, topology, consumer loop, confirmed re-publishing, DLQ tools.
//! - `ops`: metrics, HTTP endpoints, readiness, circuit breaker, telemetry, shutdown.
//! - `app`: wires it together (build, then run until stopped).
//! - `cli`: the subcommands of the binary.

pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod domain;
pub mod handler;
pub mod link;
pub mod ops;
