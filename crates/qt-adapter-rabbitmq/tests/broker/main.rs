//! The adapter against RabbitMQ (`QT_TEST_RABBITMQ_URL`, default the local broker): what it
//! declares or checks at connect, where each settlement lands, and how acks are coalesced.

mod ack_batching;
#[path = "../common/mod.rs"]
mod common;
mod settlement;
mod topology;
