//! `qt ledger stats`: what happened over a window, in figures.

use std::collections::HashMap;
use std::fmt::Write as _;

use qt_core::{LedgerRecord, LedgerStatus};
use serde::Serialize;

/// Groups shown per breakdown (tenants, events, failure reasons); the rest are summed as
/// "others".
const TOP: usize = 10;
/// Failure reasons (the errors of failed, rejected, parse_failed and unrouted records) are
/// grouped by their first characters: the rest often names the one message.
const REASON_CHARS: usize = 160;

/// Figures gathered one record at a time.
#[derive(Debug, Default)]
pub struct Tally {
    records: u64,
    by_status: HashMap<LedgerStatus, u64>,
    by_tenant: HashMap<String, u64>,
    by_event: HashMap<String, u64>,
    durations_ms: Vec<f64>,
    consume_latencies_ms: Vec<f64>,
    failures: HashMap<String, u64>,
}

impl Tally {
    pub fn add(&mut self, r: &LedgerRecord) {
        self.records += 1;
        *self.by_status.entry(r.status).or_default() += 1;
        *self
            .by_tenant
            .entry(r.tenant_id.clone().unwrap_or_else(|| "(none)".to_owned()))
            .or_default() += 1;
        *self
            .by_event
            .entry(r.event_name.clone().unwrap_or_else(|| "(none)".to_owned()))
            .or_default() += 1;
        self.durations_ms.push(r.duration_ms);
        if let Some(l) = r.consume_latency_ms {
            self.consume_latencies_ms.push(l);
        }
        let failed = matches!(
            r.status,
            LedgerStatus::Failed | LedgerStatus::Rejected | LedgerStatus::ParseFailed | LedgerStatus::Unrouted
        );
        if let Some(error) = r.error.as_ref().filter(|_| failed) {
            let reason: String = error.chars().take(REASON_CHARS).collect();
            *self.failures.entry(reason).or_default() += 1;
        }
    }

    pub fn finish(mut self) -> Stats {
        Stats {
            records: self.records,
            by_status: LedgerStatus::ALL
                .iter()
                .filter_map(|s| self.by_status.get(s).map(|n| (s.as_str().to_owned(), *n)))
                .collect(),
            by_tenant: top(self.by_tenant),
            by_event: top(self.by_event),
            duration_ms: Percentiles::of(&mut self.durations_ms),
            consume_latency_ms: Percentiles::of(&mut self.consume_latencies_ms),
            top_failures: top(self.failures),
        }
    }
}

/// The largest [`TOP`] groups, largest first (ties by name), and the rest as "(others)".
fn top(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: Vec<_> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if all.len() > TOP {
        let others = all[TOP..].iter().map(|(_, n)| n).sum();
        all.truncate(TOP);
        all.push(("(others)".to_owned(), others));
    }
    all
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` for no values.
    fn of(values: &mut [f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Self {
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: values[values.len() - 1],
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub records: u64,
    pub by_status: Vec<(String, u64)>,
    pub by_tenant: Vec<(String, u64)>,
    pub by_event: Vec<(String, u64)>,
    pub duration_ms: Option<Percentiles>,
    pub consume_latency_ms: Option<Percentiles>,
    pub top_failures: Vec<(String, u64)>,
}

impl Stats {
    /// The figures as text, `window` saying which records they cover.
    pub fn render(&self, window: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} record(s) {window}", self.records);
        if self.records == 0 {
            return out;
        }
        let section = |out: &mut String, title: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "\n{title}");
            let width = rows.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(0);
            for (name, n) in rows {
                let _ = writeln!(
                    out,
                    "  {name:<width$}  {n:>10}  {:>5.1}%",
                    100.0 * *n as f64 / self.records as f64
                );
            }
        };
        section(&mut out, "by status", &self.by_status);
        section(&mut out, "by tenant", &self.by_tenant);
        section(&mut out, "by event", &self.by_event);
        let _ = writeln!(out, "\nmilliseconds            p50        p95        p99        max");
        for (name, p) in [
            ("run duration", &self.duration_ms),
            ("consume latency", &self.consume_latency_ms),
        ] {
            match p {
                Some(p) => {
                    let _ = writeln!(
                        out,
                        "  {name:<16}{:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                        p.p50, p.p95, p.p99, p.max
                    );
                }
                None => {
                    let _ = writeln!(out, "  {name:<16}(no record has one)");
                }
            }
        }
        if !self.top_failures.is_empty() {
            let _ = writeln!(out, "\ntop failure reasons");
            for (reason, n) in &self.top_failures {
                let _ = writeln!(out, "  {n:>10}  {reason}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::ledger::test_record;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut values).unwrap();
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&mut [7.0]).unwrap().p50, 7.0);
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn records_are_counted_by_status_tenant_and_event_and_failures_by_reason() {
        let mut tally = Tally::default();
        for i in 0..6 {
            let mut r = test_record(
                &format!("m-{i}"),
                if i < 4 {
                    LedgerStatus::Succeeded
                } else {
                    LedgerStatus::Failed
                },
            );
            r.tenant_id = Some(format!("tenant-{}", i % 2));
            r.duration_ms = f64::from(i);
            if i >= 4 {
                r.error = Some("agent answered 500".into());
            }
            tally.add(&r);
        }
        let stats = tally.finish();
        assert_eq!(stats.records, 6);
        assert_eq!(stats.by_status, [("succeeded".to_owned(), 4), ("failed".to_owned(), 2)]);
        assert_eq!(
            stats.by_tenant,
            [("tenant-0".to_owned(), 3), ("tenant-1".to_owned(), 3)]
        );
        assert_eq!(stats.by_event, [("order.created".to_owned(), 6)]);
        assert_eq!(stats.top_failures, [("agent answered 500".to_owned(), 2)]);
        assert_eq!(stats.duration_ms.as_ref().unwrap().max, 5.0);
        let text = stats.render("in the last hour");
        assert!(text.starts_with("6 record(s) in the last hour"), "{text}");
        assert!(text.contains("agent answered 500"), "{text}");
    }

    #[test]
    fn beyond_the_top_groups_the_rest_are_summed_as_others() {
        let mut tally = Tally::default();
        for i in 0..(TOP + 3) {
            let mut r = test_record(&format!("m-{i}"), LedgerStatus::Succeeded);
            r.tenant_id = Some(format!("tenant-{i:02}"));
            tally.add(&r);
        }
        let stats = tally.finish();
        assert_eq!(stats.by_tenant.len(), TOP + 1);
        assert_eq!(stats.by_tenant.last().unwrap(), &("(others)".to_owned(), 3));
    }
}
