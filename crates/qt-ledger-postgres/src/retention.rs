//! `ledger.retention`: a background task deleting records older than the retention period.
//!
//! When the ledger starts and then once every [`INTERVAL`] it deletes rows whose `finished_at` is older than the period, in
//! statements of at most [`CHUNK`] rows (`DELETE ... WHERE ctid IN (SELECT ctid ... LIMIT n)`,
//! an index range scan on `finished_at`), at most [`MAX_CHUNKS`] statements per run. Short
//! statements hold row locks briefly and never block the writers (COPY only inserts); a
//! backlog larger than one run's bound (after first enabling retention on a big table) is
//! worked off over several runs. The deleted rows are dead tuples until autovacuum reclaims
//! them.

use std::sync::Weak;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::ledger::Inner;

/// Time between runs.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Rows deleted by one statement.
pub const CHUNK: u32 = 10_000;
/// Statements per run.
pub const MAX_CHUNKS: u32 = 10;

/// Starts the task; it ends when the ledger is dropped.
pub(crate) fn spawn(ledger: Weak<Inner>, keep: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = ledger.upgrade() else { return };
            let Ok(keep) = chrono::Duration::from_std(keep) else {
                return;
            };
            let cutoff = chrono::Utc::now() - keep;
            match inner.delete_finished_before(cutoff, CHUNK, MAX_CHUNKS).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(ledger = %inner.redactor.ledger(), deleted = n, %cutoff, "ledger retention"),
                // Retention failing does not stop writes; it is retried on the next run.
                Err(e) => tracing::warn!(error = %e, "ledger retention failed; retrying in a minute"),
            }
        }
    })
}
