//! Kafka adapter for qt, on librdkafka (rdkafka).
//!
//! [`KafkaAdapter`] consumes one or more topics in a consumer group and hands the engine
//! [`qt_core::Delivery`]s whose source carries topic, partition, offset, key and the broker
//! timestamp. [`KafkaPublisher`] produces with confirmation (`qt send`, dead letters,
//! requeues). [`KafkaDlq`] reads and empties the dead-letter topic for `qt dlq` (its docs
//! say what "in the DLQ" means on Kafka). [`KafkaAdmin`] creates topics and reads committed
//! and end offsets (tests, benchmarks, tooling).
//!
//! # Guarantees
//!
//! - **At-least-once.** A partition's committed offset only ever covers the contiguous
//!   prefix of finished messages ([`offsets::OffsetTracker`]); a message finished out of
//!   order waits for the ones before it. Commits are batched every `commit_interval`.
//! - **Rebalances.** On revocation the adapter stops taking messages of the revoked
//!   partitions, waits up to `revoke_drain_timeout` for the engine to settle what it holds,
//!   commits the finished prefix and lets go. Every assignment has an epoch: a message
//!   settled after its partition was revoked never moves a commit.
//! - **Liveness.** One thread polls the consumer continuously; flow control and `pause()`
//!   pause partitions at the consumer, so long handlers never exceed `max.poll.interval.ms`
//!   and the group stays joined. At most 2 x `max_in_flight` messages wait unreceived (plus
//!   delayed requeues held for their time, up to 4 x `max_in_flight`, at least 1000).
//! - **Failures.** A failed settle or a dropped handle rewinds its partition to the first
//!   unfinished offset after `redelivery_delay`: the message is delivered again without a
//!   restart (and the later messages of the partition with it).
//! - **Hostile records.** A header whose key is not UTF-8 (which rdkafka panics on reading)
//!   does not stop the consumer: the record reaches the engine with
//!   [`qt_core::RawMessage::unreadable`] set, so it fails as unparseable, and re-producing it
//!   sends all its headers as they came.
//!
//! # Settlements
//!
//! - `Ack`: finished. `Nack`: finished and dropped (Kafka has no reject).
//! - `Requeue { delay, attempt }`: re-produced (same key, value and headers) to
//!   `retry_topic` or the message's own topic with `x-qt-attempt: <attempt>`; a delay is
//!   written as `x-qt-not-before` (Unix milliseconds) and the consuming adapter holds the
//!   message until then without blocking anything else. Then the original is finished.
//! - `DeadLetter`: produced to `dlq_topic` with the original key, value and headers plus
//!   the `x-qt-dlq-*` headers; the original is finished only once the broker confirmed the
//!   write. Without `dlq_topic` it fails and the message stays unfinished.
//!
//! # Security
//!
//! `security_protocol`, `sasl` (PLAIN, SCRAM-SHA-256/512) and `ssl` map to librdkafka's
//! settings (rdkafka is built with OpenSSL for TLS and SCRAM). `require_tls` refuses
//! `plaintext` and `sasl_plaintext`. librdkafka's log lines and errors go through
//! `tracing` (target `librdkafka`) with URL credentials and every configured secret masked.

mod adapter;
pub mod admin;
mod connection;
mod consumer;
mod context;
mod dlq;
mod health;
mod message;
pub mod offsets;
mod publisher;
mod record;
mod redact;
mod settle;
mod state;

pub use adapter::{KafkaAdapter, KafkaStatus};
pub use admin::KafkaAdmin;
pub use connection::FETCH_QUEUE_BACKOFF_MS;
pub use dlq::KafkaDlq;
pub use message::NOT_BEFORE;
pub use publisher::{KafkaPublisher, Produced};
