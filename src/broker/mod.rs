//! Input side: RabbitMQ topology, the consume loop (the work queue, and the
//! partition queues with a single active consumer each), per-visitor order,
//! settling each delivery (confirmed copies, coalesced acks), and the
//! dead-letter tools.

pub mod acks;
pub mod connection;
pub mod consumer;
pub mod dlq;
pub mod headers;
pub mod partitions;
pub mod publisher;
pub mod settle;
pub mod topology;
pub mod turns;
pub mod version;
