//! An in-memory queue adapter for qt (requirement 10.1), with a test handle to enqueue
//! messages and inspect what was acked, nacked, requeued and dead-lettered; and a
//! file-fed mode for the `qt` CLI that reads JSONL messages and writes dead letters to a
//! JSONL file.
//!
//! It behaves like a broker where it matters to the engine: a handle dropped unsettled
//! puts its message back (as a redelivery), delayed requeues come back after their delay,
//! and `receive` is cancel-safe.

mod adapter;
mod dlq;
mod file;
mod publisher;
mod queue;
mod settle;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use adapter::MockAdapter;
pub use dlq::MockDlq;
pub use file::{FileError, MessageLine, read_messages};
pub use publisher::MockPublisher;
pub use queue::{DeadLettered, MockQueue, Settled};
