//! The adapter against RabbitMQ (`QT_TEST_RABBITMQ_URL`, default the local broker): what it
//! declares or checks at connect, where each settlement lands, how acks are coalesced, and
//! reading and emptying the dead-letter queue.

mod ack_batching;
#[path = "../common/mod.rs"]
mod common;
mod dlq;
mod settlement;
mod topology;
