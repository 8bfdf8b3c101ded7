//! Integration tests against the real local RabbitMQ and mos-sim over HTTP.
//! One test binary (faster to build and link); every test has its own
//! queue and exchange names, so they run in parallel on one broker.

mod circuit;
mod config;
mod dlq_replay;
mod flow;
mod helpers;
mod hostile;
mod log_pipe;
mod metrics;
mod nodes;
mod operator;
mod outcomes;
mod process;
mod races;
mod retries;
mod topology;
