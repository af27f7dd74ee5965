//! Vocabulary of qt, the queue trigger runtime.
//!
//! Everything the engine, the adapters and the stores share lives here, and nothing else:
//! messages and deliveries with their settle-once handles, the envelope and its parsers,
//! extraction rules, configuration, secrets, and the traits each component implements.
//! Adapters and stores depend on this crate only.
//!
//! To run an agent of your own in process, implement [`AgentRuntime`] and hand it to the
//! `qt-engine` crate's `QueueTrigger`; that crate's documentation shows the whole program,
//! and its example
//! [`in_process_agent.rs`](https://github.com/qt-runtime/qt/blob/main/crates/qt-engine/examples/in_process_agent.rs)
//! runs one over the mock queue.

pub mod adapter;
pub mod agent;
pub mod backoff;
pub mod config;
pub mod delivery;
pub mod dlq;
pub mod envelope;
pub mod error_class;
pub mod extract;
pub mod governance;
pub mod headers;
pub mod health;
pub mod idempotency;
pub mod json_payload;
pub mod json_pointer;
pub mod ledger;
pub mod message;
pub mod parse;
pub mod redact;
pub mod secret;
pub mod trace;

pub use adapter::{
    AdapterError, AdapterSettings, Capabilities, OrderingUnit, OutgoingMessage, Publisher, QueueAdapter,
};
pub use agent::{AgentError, AgentEvent, AgentRun, AgentRuntime};
pub use backoff::Backoff;
pub use delivery::{AckHandle, DeadLetter, Delivery, Settle, SettleError, Settlement, Settling};
pub use dlq::{DeadLetterDetails, DlqMessage, DlqReader};
pub use envelope::{MessageEnvelope, Payload};
pub use error_class::ErrorClass;
pub use governance::{Decision, Governance, GovernanceContext, GovernanceError};
pub use headers::{HeaderName, Headers};
pub use health::Health;
pub use idempotency::{Claim, ClaimState, ClaimToken, IdempotencyKey, IdempotencyStore, StoreError};
pub use ledger::{Ledger, LedgerError, LedgerFilter, LedgerRecord, LedgerStatus, SettlementKind, Unwritten};
pub use message::{RawMessage, SourceInfo};
pub use secret::{Secret, SecretUrl};
pub use trace::{OutgoingContext, TraceId};
