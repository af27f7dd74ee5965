//! The audit ledger: one record for every outcome (requirement 7.2).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error_class::ErrorClass;
use crate::health::Health;

/// The outcome a ledger record states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerStatus {
    Succeeded,
    Duplicate,
    Deferred,
    ParseFailed,
    Unrouted,
    Rejected,
    Failed,
}

impl LedgerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerStatus::Succeeded => "succeeded",
            LedgerStatus::Duplicate => "duplicate",
            LedgerStatus::Deferred => "deferred",
            LedgerStatus::ParseFailed => "parse_failed",
            LedgerStatus::Unrouted => "unrouted",
            LedgerStatus::Rejected => "rejected",
            LedgerStatus::Failed => "failed",
        }
    }
}

/// One agent attempt, as kept in the record's history (requirement 5.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub class: ErrorClass,
    pub reason: String,
    pub at: DateTime<Utc>,
    /// The delay waited before the next attempt, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

/// How the broker was told, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettlementKind {
    Ack,
    Nack,
    Requeue,
    DeadLetter,
}

impl From<&crate::delivery::Settlement> for SettlementKind {
    fn from(s: &crate::delivery::Settlement) -> Self {
        match s {
            crate::delivery::Settlement::Ack => SettlementKind::Ack,
            crate::delivery::Settlement::Nack => SettlementKind::Nack,
            crate::delivery::Settlement::Requeue { .. } => SettlementKind::Requeue,
            crate::delivery::Settlement::DeadLetter(_) => SettlementKind::DeadLetter,
        }
    }
}

/// What happened to one message. Names shared by many records (queue, adapter, target) are
/// reference-counted rather than copied per record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerRecord {
    pub trace_id: crate::trace::TraceId,
    pub message_id: String,
    pub queue: Arc<str>,
    pub adapter: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Arc<str>>,
    pub status: LedgerStatus,
    /// How the broker was told.
    pub settlement: SettlementKind,
    /// Agent attempts made (0 when the agent was never called).
    pub attempts: u32,
    pub duration_ms: f64,
    /// Broker accept -> qt receive, when the broker gives a timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume_latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_run_id: Option<String>,
    pub llm_calls: u32,
    /// What the agent reported as its output, as it reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_output: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decision_policies: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<AttemptRecord>,
    pub received_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
#[error("ledger {ledger} write failed: {reason}")]
pub struct LedgerError {
    pub ledger: String,
    pub reason: String,
}

/// Where records go. `record_batch` returns only once the records are durable in the
/// sense the sink promises; the engine acks the messages only after it returns. Records are
/// handed over by value so in-memory sinks keep them without copying.
#[async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    async fn record_batch(&self, records: Vec<LedgerRecord>) -> Result<(), LedgerError>;

    async fn flush(&self) -> Result<(), LedgerError> {
        Ok(())
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}
