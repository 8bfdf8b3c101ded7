//! What every fault scenario shares: a private topology and mos-sim, the
//! worker as a child process (logs to files, `RUST_LOG=trace`), a producer
//! that survives broker faults, recorders of `/readyz` and of the circuit
//! gauge, a ledger that knows what should become of each event and counts
//! what did, the secret scan, the one-line summary and the recovery bounds. What the other suites and the benchmark also use comes
//! from `testkit`.

mod broker;
mod circuit;
mod cluster;
mod drain;
mod ledger;
mod producer;
mod ready;
mod scan;
mod scenario;
mod summary;
mod worker;

pub use broker::*;
pub use circuit::*;
pub use cluster::*;
pub use drain::*;
pub use ledger::*;
pub use producer::*;
pub use ready::*;
pub use scan::*;
pub use scenario::*;
pub use summary::*;
pub use testkit::names::random_hex;
pub use testkit::wait::wait_for;
pub use worker::*;
