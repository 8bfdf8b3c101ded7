//! identity-link-worker: links a visitor's anonymous identity to their user
//! identity in MonetizationOS, driven by auth events from RabbitMQ.
//!
//! Layout follows the flow of one message:
//! - `config`: the environment, parsed once into sections (broker, events,
//!   link, retry, ops); each component is built from its own.
//! - `domain`: the event, its identifiers, the retry ladder and the outcome of
//!   handling it (no I/O).
//! - `handler`: the per-message decision `handle(..) -> Outcome`.
//! - `link`: the output side: the MonetizationOS client, the worker's half of
//!   check-then-create (single flight + linked cache), and the link policy
//!   (what an answer means, retries, the circuit breaker and its probe).
//! - `broker`: the input side: topology, the consume loop, settling a delivery
//!   (one `Settlement`, confirmed copies, coalesced acks), DLQ tools.
//! - `ops`: metrics, the one record of each outcome (log + metric), HTTP
//!   endpoints, readiness, telemetry, shutdown.
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
