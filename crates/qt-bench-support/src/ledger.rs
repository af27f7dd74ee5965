use async_trait::async_trait;
use parking_lot::Mutex;
use qt_core::{Ledger, LedgerRecord, Unwritten};

/// An in-memory ledger that keeps only each record's processing time (receive to ledger),
/// which is what latency figures are made of.
#[derive(Debug, Default)]
pub struct LatencyLedger {
    durations_ms: Mutex<Vec<f32>>,
}

impl LatencyLedger {
    /// The processing times recorded so far, in milliseconds, sorted; the ledger is emptied.
    pub fn take_sorted(&self) -> Vec<f32> {
        let mut d = std::mem::take(&mut *self.durations_ms.lock());
        d.sort_unstable_by(f32::total_cmp);
        d
    }
}

#[async_trait]
impl Ledger for LatencyLedger {
    async fn record_batch(&self, records: Vec<LedgerRecord>) -> Result<(), Unwritten> {
        self.durations_ms
            .lock()
            .extend(records.iter().map(|r| r.duration_ms as f32));
        Ok(())
    }
}
