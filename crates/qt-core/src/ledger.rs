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
    pub const ALL: [LedgerStatus; 7] = [
        LedgerStatus::Succeeded,
        LedgerStatus::Duplicate,
        LedgerStatus::Deferred,
        LedgerStatus::ParseFailed,
        LedgerStatus::Unrouted,
        LedgerStatus::Rejected,
        LedgerStatus::Failed,
    ];

    /// The status whose [`as_str`](Self::as_str) name is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

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

impl SettlementKind {
    pub const ALL: [SettlementKind; 4] = [
        SettlementKind::Ack,
        SettlementKind::Nack,
        SettlementKind::Requeue,
        SettlementKind::DeadLetter,
    ];

    /// The serde name.
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementKind::Ack => "ack",
            SettlementKind::Nack => "nack",
            SettlementKind::Requeue => "requeue",
            SettlementKind::DeadLetter => "dead_letter",
        }
    }

    /// The kind whose [`as_str`](Self::as_str) name is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
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

/// Which records a ledger reader returns: every field that is set must match; `since` is
/// inclusive and `until` exclusive on `finished_at`. Readers return the newest first, at
/// most `limit` of them (all when unset).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LedgerFilter {
    pub tenant_id: Option<String>,
    pub status: Option<LedgerStatus>,
    pub event_name: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub message_id: Option<String>,
    pub trace_id: Option<crate::trace::TraceId>,
    pub dedup_key: Option<String>,
    pub limit: Option<usize>,
}

impl LedgerFilter {
    /// Whether `record` passes every condition (`limit` aside).
    pub fn matches(&self, record: &LedgerRecord) -> bool {
        fn same(want: Option<&String>, have: Option<&String>) -> bool {
            want.is_none_or(|w| have == Some(w))
        }
        same(self.tenant_id.as_ref(), record.tenant_id.as_ref())
            && self.status.is_none_or(|s| s == record.status)
            && same(self.event_name.as_ref(), record.event_name.as_ref())
            && self.since.is_none_or(|t| record.finished_at >= t)
            && self.until.is_none_or(|t| record.finished_at < t)
            && self.message_id.as_ref().is_none_or(|m| *m == record.message_id)
            && self.trace_id.is_none_or(|t| t == record.trace_id)
            && same(self.dedup_key.as_ref(), record.dedup_key.as_ref())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("ledger {ledger} write failed: {reason}")]
pub struct LedgerError {
    pub ledger: String,
    pub reason: String,
}

/// A batch the ledger could not write, handed back with the reason so the caller can write
/// it again when the ledger is back, without having kept a copy.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Unwritten {
    pub error: LedgerError,
    pub records: Vec<LedgerRecord>,
}

/// Where records go. `record_batch` returns only once the records are durable in the
/// sense the sink promises; the engine acks the messages only after it returns. Records are
/// handed over by value so in-memory sinks keep them without copying, and handed back when
/// they could not be written.
#[async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    async fn record_batch(&self, records: Vec<LedgerRecord>) -> Result<(), Unwritten>;

    async fn flush(&self) -> Result<(), LedgerError> {
        Ok(())
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LedgerRecord {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        LedgerRecord {
            trace_id: crate::trace::TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            message_id: "m-1".into(),
            queue: Arc::from("q"),
            adapter: Arc::from("mock"),
            event_name: Some("order.created".into()),
            tenant_id: Some("acme".into()),
            dedup_key: Some("k-1".into()),
            target: None,
            status: LedgerStatus::Succeeded,
            settlement: SettlementKind::Ack,
            attempts: 1,
            duration_ms: 1.5,
            consume_latency_ms: None,
            agent_run_id: None,
            llm_calls: 0,
            agent_output: None,
            error: None,
            error_class: None,
            decision_reason: None,
            decision_policies: Vec::new(),
            retries: Vec::new(),
            received_at: at,
            finished_at: at,
        }
    }

    #[test]
    fn status_and_settlement_names_are_their_serde_names() {
        for s in LedgerStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(LedgerStatus::from_name(s.as_str()), Some(s));
        }
        for k in SettlementKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(SettlementKind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(LedgerStatus::from_name("Succeeded"), None);
    }

    #[test]
    fn an_empty_filter_matches_everything() {
        assert!(LedgerFilter::default().matches(&record()));
    }

    #[test]
    fn each_filter_field_excludes_records_that_differ() {
        let r = record();
        let at = r.finished_at;
        let second = chrono::Duration::seconds(1);
        let pass = [
            LedgerFilter {
                tenant_id: Some("acme".into()),
                ..Default::default()
            },
            LedgerFilter {
                status: Some(LedgerStatus::Succeeded),
                ..Default::default()
            },
            LedgerFilter {
                event_name: Some("order.created".into()),
                ..Default::default()
            },
            LedgerFilter {
                since: Some(at),
                until: Some(at + second),
                ..Default::default()
            },
            LedgerFilter {
                message_id: Some("m-1".into()),
                ..Default::default()
            },
            LedgerFilter {
                trace_id: Some(r.trace_id),
                ..Default::default()
            },
            LedgerFilter {
                dedup_key: Some("k-1".into()),
                ..Default::default()
            },
        ];
        for f in pass {
            assert!(f.matches(&r), "{f:?}");
        }
        let fail = [
            LedgerFilter {
                tenant_id: Some("other".into()),
                ..Default::default()
            },
            LedgerFilter {
                status: Some(LedgerStatus::Failed),
                ..Default::default()
            },
            LedgerFilter {
                event_name: Some("order.deleted".into()),
                ..Default::default()
            },
            LedgerFilter {
                since: Some(at + second),
                ..Default::default()
            },
            LedgerFilter {
                until: Some(at),
                ..Default::default()
            },
            LedgerFilter {
                message_id: Some("m-2".into()),
                ..Default::default()
            },
            LedgerFilter {
                trace_id: Some(crate::trace::TraceId::random()),
                ..Default::default()
            },
            LedgerFilter {
                dedup_key: Some("k-2".into()),
                ..Default::default()
            },
        ];
        for f in fail {
            assert!(!f.matches(&r), "{f:?}");
        }
        let untenanted = LedgerRecord { tenant_id: None, ..r };
        assert!(
            !LedgerFilter {
                tenant_id: Some("acme".into()),
                ..Default::default()
            }
            .matches(&untenanted)
        );
    }
}
