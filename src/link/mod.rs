//! Output side: the MonetizationOS link call and the worker's half of
//! check-then-create (one call in flight per anonymous identifier, and a
//! cache of pairs already linked).

mod cache;
mod client;
mod single_flight;

pub use cache::LinkedCache;
pub use client::{CallError, LinkClient, parse_retry_after};
pub use single_flight::Linker;
