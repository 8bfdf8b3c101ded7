//! Output side: the MonetizationOS link call, the worker's half of
//! check-then-create (one call in flight per anonymous identifier, and a
//! cache of pairs already linked), and the policy about failures: what an
//! answer means, retries, and the circuit breaker with its probe; and how
//! fast calls go (rate-limit pauses, pacing, the adaptive concurrency limit).

mod cache;
mod circuit;
mod client;
pub mod flow;
pub mod key;
pub mod policy;
mod probe;
mod single_flight;

pub use cache::LinkedCache;
pub use circuit::{Circuit, TripReason};
pub use client::{LinkClient, parse_retry_after};
pub use flow::{Admission, Flow};
pub use policy::{CallError, TargetHealth, Verdict};
pub use probe::{EndpointCheck, probe_loop};
pub use single_flight::Linker;
