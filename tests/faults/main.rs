//! The fault suite (GitHub issue 4): break things for real and count.
//!
//! Every scenario runs the worker binary as a child process with
//! `RUST_LOG=trace` (output to files), against the local RabbitMQ and an
//! in-process mos-sim, with private queue and exchange names. Each test prints
//! one summary line (to the real stderr, and appended to
//! `target/tmp/faults-summary.txt`):
//!
//! `scenario | load | faults injected | sent | linked | dead-lettered | lost | duplicate links | recovery time`
//!
//! Some scenarios cut, stop or restart the broker, so the suite runs alone
//! and serially: `scripts/test` runs
//! `cargo test --locked --release --test faults -- --test-threads=1`; by hand,
//! `flock /tmp/ilw-broker.lock cargo test --release --test faults -- --test-threads=1`.

mod bad_input;
mod broker_faults;
mod cluster;
mod harness;
mod poison;
mod races;
mod scale_out;
mod secrets;
mod shutdown;
mod target_faults;
mod worker_killed;
