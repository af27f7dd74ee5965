//! The end-of-run summary `qt run --until-idle` prints.

use qt_core::LedgerStatus;
use qt_engine::MetricsSnapshot;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub received: u64,
    pub succeeded: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub deferred: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub parse_failures: u64,
    pub unrouted: u64,
    pub failed: u64,
}

impl Summary {
    pub fn from_metrics(m: &MetricsSnapshot) -> Self {
        Self {
            received: m.received,
            succeeded: m.processed(LedgerStatus::Succeeded),
            duplicates: m.processed(LedgerStatus::Duplicate),
            rejected: m.processed(LedgerStatus::Rejected),
            deferred: m.processed(LedgerStatus::Deferred),
            retried: m.total_retries(),
            dead_lettered: m.total_dead_lettered(),
            parse_failures: m.processed(LedgerStatus::ParseFailed),
            unrouted: m.processed(LedgerStatus::Unrouted),
            failed: m.processed(LedgerStatus::Failed),
        }
    }

    pub fn render(&self, title: &str) -> String {
        let rows = [
            ("received", self.received),
            ("succeeded", self.succeeded),
            ("duplicates", self.duplicates),
            ("rejected", self.rejected),
            ("deferred", self.deferred),
            ("retried", self.retried),
            ("dead-lettered", self.dead_lettered),
            ("parse failures", self.parse_failures),
            ("unrouted", self.unrouted),
            ("failed", self.failed),
        ];
        let mut out = format!("{title}\n");
        for (name, n) in rows {
            out.push_str(&format!("  {name:<15} {n:>8}\n"));
        }
        out
    }
}
