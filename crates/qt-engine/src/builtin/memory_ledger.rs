//! A ledger kept in memory: for tests and benchmarks.

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_core::{Ledger, LedgerRecord, LedgerStatus, Unwritten};

/// Keeps records in memory, optionally only the most recent `retain` of them (benchmarks
/// push millions), while counting all.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: std::collections::VecDeque<LedgerRecord>,
    retain: Option<usize>,
    total: u64,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps only the last `retain` records.
    pub fn bounded(retain: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                retain: Some(retain),
                ..Default::default()
            }),
        }
    }

    pub fn records(&self) -> Vec<LedgerRecord> {
        self.inner.lock().records.iter().cloned().collect()
    }

    pub fn total(&self) -> u64 {
        self.inner.lock().total
    }

    pub fn count(&self, status: LedgerStatus) -> usize {
        self.inner.lock().records.iter().filter(|r| r.status == status).count()
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn record_batch(&self, records: Vec<LedgerRecord>) -> Result<(), Unwritten> {
        let mut inner = self.inner.lock();
        inner.total += records.len() as u64;
        match inner.retain {
            Some(0) => {}
            Some(limit) => {
                for r in records {
                    if inner.records.len() == limit {
                        inner.records.pop_front();
                    }
                    inner.records.push_back(r);
                }
            }
            None => inner.records.extend(records),
        }
        Ok(())
    }
}
