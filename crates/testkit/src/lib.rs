//! What the worker's test suites (`tests/api`, `tests/faults`) and the
//! benchmark harness share. A missing broker fails loudly; nothing is skipped.
//!
//! [`worker`] is the one module that touches the worker library's
//! configuration, topology, application and metrics types, so a change of
//! that API is adapted here and not in every suite.

pub mod broker;
pub mod fake_amqp;
pub mod names;
pub mod process;
pub mod scrape;
pub mod sim;
pub mod wait;
pub mod worker;
