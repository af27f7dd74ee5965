//! The engine's metrics, kept as plain atomics on the hot path. The CLI renders a
//! [`MetricsSnapshot`] as Prometheus text.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use qt_core::{ErrorClass, LedgerStatus};
use serde::Serialize;

/// Every ledger status, in the fixed order of the counter arrays.
const STATUSES: [LedgerStatus; 7] = LedgerStatus::ALL;

fn status_index(s: LedgerStatus) -> usize {
    STATUSES
        .iter()
        .position(|x| *x == s)
        .expect("STATUSES lists every status")
}

/// Why a message was dead-lettered: the `reason` label of `qt_dlq_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DlqReason {
    ParseFailed,
    Unrouted,
    Rejected,
    PermanentFailure,
    RetriesExhausted,
    RetryBudgetExhausted,
    /// Processing the message panicked (a bug, in qt or in a component given to it).
    Panicked,
    /// It failed again after `processing.max_requeues` requeues.
    RequeuesExhausted,
}

impl DlqReason {
    pub const ALL: [DlqReason; 8] = [
        DlqReason::ParseFailed,
        DlqReason::Unrouted,
        DlqReason::Rejected,
        DlqReason::PermanentFailure,
        DlqReason::RetriesExhausted,
        DlqReason::RetryBudgetExhausted,
        DlqReason::Panicked,
        DlqReason::RequeuesExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::ParseFailed => "parse_failed",
            DlqReason::Unrouted => "unrouted",
            DlqReason::Rejected => "rejected",
            DlqReason::PermanentFailure => "permanent_failure",
            DlqReason::RetriesExhausted => "retries_exhausted",
            DlqReason::RetryBudgetExhausted => "retry_budget_exhausted",
            DlqReason::Panicked => "panicked",
            DlqReason::RequeuesExhausted => "requeues_exhausted",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

fn bucket_of(d: Duration) -> Option<usize> {
    let secs = d.as_secs_f64();
    LATENCY_BUCKETS.iter().position(|b| secs <= *b)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Observations counted locally and added to a [`Histogram`] in one go: the histogram's
/// atomics are shared by every worker, and adding a batch's observations once instead of
/// each one keeps their cache lines from bouncing between cores per message.
#[derive(Debug, Default)]
pub(crate) struct HistogramTally {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_nanos: u64,
}

impl HistogramTally {
    pub fn observe(&mut self, d: Duration) {
        if let Some(i) = bucket_of(d) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos(d));
    }
}

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn add(&self, tally: &HistogramTally) {
        if tally.count == 0 {
            return;
        }
        for (bucket, n) in self.buckets.iter().zip(tally.buckets) {
            if n > 0 {
                bucket.fetch_add(n, Relaxed);
            }
        }
        self.count.fetch_add(tally.count, Relaxed);
        self.sum_nanos.fetch_add(tally.sum_nanos, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(le, c)| {
                cumulative += c.load(Relaxed);
                (*le, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Cumulative bucket counts, as Prometheus wants them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it)
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// What a batch of settled messages adds to the counters, tallied locally and added once
/// (see [`HistogramTally`]).
#[derive(Debug, Default)]
pub(crate) struct SettledTally {
    processed: [u64; STATUSES.len()],
    processing: HistogramTally,
}

impl SettledTally {
    pub fn settled(&mut self, status: LedgerStatus, processing: Duration) {
        self.processed[status_index(status)] += 1;
        self.processing.observe(processing);
    }
}

/// Live counters of one trigger.
#[derive(Debug, Default)]
pub struct Metrics {
    received: AtomicU64,
    processed: [AtomicU64; 7],
    retries: [AtomicU64; 4],
    dedup_hits: AtomicU64,
    dlq: [AtomicU64; DlqReason::ALL.len()],
    panics: AtomicU64,
    traces_shed: AtomicU64,
    idempotency_errors: AtomicU64,
    settle_errors: AtomicU64,
    ledger_errors: AtomicU64,
    agent_attempts: AtomicU64,
    processing: Histogram,
    consume_lag: Histogram,
    backlog: AtomicI64,
    inflight: AtomicI64,
    running: AtomicI64,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::default();
        m.backlog.store(-1, Relaxed);
        m
    }

    pub(crate) fn received(&self, n: u64) {
        self.received.fetch_add(n, Relaxed);
        self.inflight.fetch_add(n as i64, Relaxed);
    }
    pub(crate) fn left_pipeline(&self) {
        self.inflight.fetch_sub(1, Relaxed);
    }
    pub(crate) fn retry(&self, class: ErrorClass) {
        self.retries[class.index()].fetch_add(1, Relaxed);
    }
    pub(crate) fn dedup_hit(&self) {
        self.dedup_hits.fetch_add(1, Relaxed);
    }
    pub(crate) fn dead_lettered(&self, reason: DlqReason) {
        self.dlq[reason.index()].fetch_add(1, Relaxed);
    }
    pub(crate) fn idempotency_error(&self, n: u64) {
        self.idempotency_errors.fetch_add(n, Relaxed);
    }
    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Relaxed);
    }
    pub(crate) fn trace_shed(&self) {
        self.traces_shed.fetch_add(1, Relaxed);
    }
    pub(crate) fn settle_error(&self) {
        self.settle_errors.fetch_add(1, Relaxed);
    }
    pub(crate) fn ledger_error(&self) {
        self.ledger_errors.fetch_add(1, Relaxed);
    }
    pub(crate) fn agent_attempt(&self) {
        self.agent_attempts.fetch_add(1, Relaxed);
    }
    pub(crate) fn agent_running(&self, delta: i64) {
        self.running.fetch_add(delta, Relaxed);
    }
    pub(crate) fn observe_consume_lag(&self, lags: &HistogramTally) {
        self.consume_lag.add(lags);
    }
    /// Adds a batch of settled messages: each is processed, observed, and out of the
    /// pipeline.
    pub(crate) fn settled(&self, tally: &SettledTally) {
        let mut left = 0;
        for (counter, n) in self.processed.iter().zip(tally.processed) {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
                left += n;
            }
        }
        self.processing.add(&tally.processing);
        self.inflight
            .fetch_sub(i64::try_from(left).unwrap_or(i64::MAX), Relaxed);
    }
    pub(crate) fn set_backlog(&self, backlog: Option<u64>) {
        self.backlog
            .store(backlog.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)), Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            received: self.received.load(Relaxed),
            processed: STATUSES
                .iter()
                .map(|s| (s.as_str(), self.processed[status_index(*s)].load(Relaxed)))
                .collect(),
            retries: ErrorClass::ALL
                .iter()
                .map(|c| (c.as_str(), self.retries[c.index()].load(Relaxed)))
                .collect(),
            dedup_hits: self.dedup_hits.load(Relaxed),
            dlq: DlqReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.dlq[r.index()].load(Relaxed)))
                .collect(),
            panics: self.panics.load(Relaxed),
            traces_shed: self.traces_shed.load(Relaxed),
            idempotency_errors: self.idempotency_errors.load(Relaxed),
            settle_errors: self.settle_errors.load(Relaxed),
            ledger_errors: self.ledger_errors.load(Relaxed),
            agent_attempts: self.agent_attempts.load(Relaxed),
            processing_seconds: self.processing.snapshot(),
            consume_lag_seconds: self.consume_lag.snapshot(),
            backlog: u64::try_from(self.backlog.load(Relaxed)).ok(),
            inflight: self.inflight.load(Relaxed).max(0) as u64,
            running: self.running.load(Relaxed).max(0) as u64,
        }
    }
}

/// A point-in-time copy of every metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub received: u64,
    /// (outcome, count) for every ledger status.
    pub processed: Vec<(&'static str, u64)>,
    /// (error class, retries) for every class.
    pub retries: Vec<(&'static str, u64)>,
    pub dedup_hits: u64,
    /// (reason, count) for every dead-letter reason.
    pub dlq: Vec<(&'static str, u64)>,
    /// Panics caught while processing messages: each is a bug. The message that panicked
    /// is dead-lettered as a permanent failure; a batch that panicked outside any one
    /// message's steps counts once, and its messages are then run one by one.
    pub panics: u64,
    /// Messages the sampler kept but that were not traced, because the span exporter's
    /// queue was nearly full ([`qt_core::trace::ExportGate`]).
    pub traces_shed: u64,
    pub idempotency_errors: u64,
    pub settle_errors: u64,
    pub ledger_errors: u64,
    pub agent_attempts: u64,
    pub processing_seconds: HistogramSnapshot,
    pub consume_lag_seconds: HistogramSnapshot,
    /// Messages waiting at the broker, when the adapter can tell.
    pub backlog: Option<u64>,
    /// Taken from the source and not yet settled.
    pub inflight: u64,
    /// Agent runs in progress. A call that answers on its first poll is never counted: it
    /// is over before any scrape could see it.
    pub running: u64,
}

impl MetricsSnapshot {
    pub fn processed(&self, status: LedgerStatus) -> u64 {
        self.processed
            .iter()
            .find(|(s, _)| *s == status.as_str())
            .map_or(0, |(_, n)| *n)
    }

    pub fn total_processed(&self) -> u64 {
        self.processed.iter().map(|(_, n)| n).sum()
    }

    pub fn total_retries(&self) -> u64 {
        self.retries.iter().map(|(_, n)| n).sum()
    }

    pub fn total_dead_lettered(&self) -> u64 {
        self.dlq.iter().map(|(_, n)| n).sum()
    }
}
