//! Input side: RabbitMQ topology, the consume loop, settling each delivery
//! (confirmed copies to the retry and dead-letter queues, coalesced acks),
//! and the dead-letter tools.

pub mod acks;
pub mod connection;
pub mod consumer;
pub mod dlq;
pub mod headers;
pub mod publisher;
pub mod settle;
pub mod topology;
