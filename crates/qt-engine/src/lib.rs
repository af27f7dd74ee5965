//! The qt processing engine.
//!
//! A [`QueueTrigger`] takes deliveries from a [`qt_core::QueueAdapter`], turns each into an
//! envelope, de-duplicates it, asks governance, runs the agent with retries, writes a
//! ledger record and only then settles the message on the broker, by the outcome table in
//! docs/operations.md. Built-in components (in-memory idempotency store, policy governance, memory
//! and JSONL ledgers) live in [`builtin`].
//!
//! # Using qt as a library
//!
//! Implement [`qt_core::AgentRuntime`] for your agent, register it for a target with
//! [`TriggerBuilder::agent`], give the builder a queue adapter, and start the trigger. Each
//! message's outcome is written to the ledger before the message is settled on the broker.
//! Here one message runs over the in-memory mock queue (the `qt-adapter-mock` crate):
//!
//! ```
//! use std::sync::Arc;
//!
//! use async_trait::async_trait;
//! use qt_adapter_mock::MockQueue;
//! use qt_core::config::{Config, MockSourceConfig, SourceConfig};
//! use qt_core::{AgentError, AgentEvent, AgentRun, AgentRuntime, LedgerStatus};
//! use qt_engine::QueueTrigger;
//! use qt_engine::builtin::memory_ledger::MemoryLedger;
//!
//! #[derive(Debug)]
//! struct Greeter;
//!
//! #[async_trait]
//! impl AgentRuntime for Greeter {
//!     async fn trigger_event(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
//!         let payload = event.payload_json().map_err(|e| AgentError::permanent(e.to_string()))?;
//!         match payload.get("name").and_then(|n| n.as_str()) {
//!             Some(_) => Ok(AgentRun::default()),
//!             None => Err(AgentError::permanent("no name to greet")),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::with_source(SourceConfig::Mock(MockSourceConfig {
//!     queue: "greetings".into(),
//!     file: None,
//!     dlq_file: None,
//! }));
//! let queue = MockQueue::new("greetings");
//! queue.enqueue_json("m-1", &[], &serde_json::json!({"name": "Ada"}));
//!
//! let ledger = Arc::new(MemoryLedger::new());
//! let trigger = QueueTrigger::builder(config)
//!     .adapter(Arc::new(queue.adapter()))
//!     .agent("greeter", Arc::new(Greeter))
//!     .ledger(ledger.clone())
//!     .build()?;
//! trigger.start().await?;
//! queue.wait_idle().await;
//! trigger.stop().await?;
//!
//! assert_eq!(ledger.records()[0].status, LedgerStatus::Succeeded);
//! # Ok(())
//! # }
//! ```
//!
//! A fuller run — retries, a permanent failure dead-lettered, a duplicate — is the example
//! [`examples/in_process_agent.rs`](https://github.com/qt-runtime/qt/blob/main/crates/qt-engine/examples/in_process_agent.rs):
//! `cargo run -p qt-engine --example in_process_agent`.

pub mod backoff;
pub mod builtin;
pub mod metrics;
mod pipeline;
pub mod routing;
mod spans;
mod trigger;

pub use metrics::{DlqReason, MetricsSnapshot};
pub use spans::TraceSettings;
pub use trigger::{
    BuildError, ComponentHealth, HealthReport, LifecycleError, QueueTrigger, Status, StopReport, TriggerBuilder,
    TriggerState,
};
