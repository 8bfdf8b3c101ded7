//! The fault suite (GitHub issue 4): break things for real and count.
//!
//! Every scenario runs the worker binary as a child process with
//! `RUST_LOG=trace` (output to files), against a broker of the suite's own
//! (never the machine's on 5672, which may be the user's) and an
//! in-process mos-sim, with private queue and exchange names. Each test prints
//! one summary line (to the real stderr, and appended to
//! `target/tmp/faults-summary.txt`):
//!
//! `scenario | load | faults injected | sent | linked | dead-lettered | lost | duplicate links | recovery time`
//!
//! Some scenarios cut, stop or restart the broker, so the single-node ones run
//! serially on the private node of `scripts/rabbitmq-private` (ilw-test@localhost,
//! AMQP 5680; `RABBITMQ_PRIVATE_*` from its `env`, or the suite fails), the
//! scale-out ones also on RabbitMQ 4.0 (`scripts/ensure-rabbitmq4`, 5673), the
//! `cluster::` ones on `scripts/rabbitmq-cluster`'s nodes. `scripts/test` runs
//! `cargo test --locked --release --test faults -- --test-threads=1 --skip cluster::`
//! after `eval "$(bash scripts/rabbitmq-private env)"`; by hand the same after
//! `bash scripts/rabbitmq-private up` (README "Test").

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
