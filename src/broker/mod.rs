//! Input side: RabbitMQ topology, the consumer loop, confirmed re-publishing
//! to the retry and dead-letter queues, and the dead-letter tools.

pub mod connection;
pub mod consumer;
pub mod dlq;
pub mod headers;
pub mod publisher;
pub mod topology;
