//! The qt processing engine.
//!
//! A [`QueueTrigger`] takes deliveries from a [`qt_core::QueueAdapter`], turns each into an
//! envelope, de-duplicates it, asks governance, runs the agent with retries, writes a
//! ledger record and only then settles the message on the broker — the outcome table of
//! DESIGN §4. Built-in components (in-memory idempotency store, policy governance, memory
//! and JSONL ledgers) live in [`builtin`].

pub mod backoff;
pub mod builtin;
pub mod metrics;
mod pipeline;
pub mod routing;
mod trigger;

pub use metrics::{DlqReason, MetricsSnapshot};
pub use trigger::{
    BuildError, ComponentHealth, HealthReport, LifecycleError, QueueTrigger, Status, StopReport, TriggerBuilder,
    TriggerState,
};
