//! A ledger appended to a local file, one JSON object per line.
//!
//! One writer thread owns the file. A batch's lines are handed to it and `record_batch`
//! returns once they are written and, with `fsync` (the default), synced to disk — so before
//! the engine acks any message in the batch. Batches that arrive while the thread is writing
//! or syncing are written together after it and synced once (group commit): under load a
//! sync covers many batches instead of each batch waiting for its own.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_core::{Health, Ledger, LedgerError, LedgerRecord, Unwritten};
use tokio::sync::oneshot;

#[derive(Debug)]
pub struct JsonlLedger {
    path: PathBuf,
    writer: mpsc::Sender<Append>,
    last_error: Mutex<Option<String>>,
}

/// Lines for the writer thread, answered once they are durable (or failed).
struct Append {
    lines: Vec<u8>,
    /// Sync even when the ledger does not sync every batch (a flush).
    sync: bool,
    done: oneshot::Sender<Result<(), String>>,
}

impl JsonlLedger {
    /// Opens (creating if needed) the file for appending and starts its writer thread.
    pub fn open(path: &Path, fsync: bool) -> Result<Self, LedgerError> {
        let failed = |reason: String| LedgerError {
            ledger: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| failed(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| failed(format!("cannot open for appending: {e}")))?;
        let (writer, appends) = mpsc::channel();
        std::thread::Builder::new()
            .name("qt-ledger-jsonl".to_owned())
            .spawn(move || write_loop(file, fsync, &appends))
            .map_err(|e| failed(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            last_error: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands `lines` to the writer thread and waits until they are durable.
    async fn append(&self, lines: Vec<u8>, sync: bool) -> Result<(), LedgerError> {
        let (done, written) = oneshot::channel();
        let result = match self.writer.send(Append { lines, sync, done }) {
            Ok(()) => written
                .await
                .unwrap_or_else(|_| Err("the writer thread ended".to_owned())),
            Err(_) => Err("the writer thread ended".to_owned()),
        };
        match result {
            Ok(()) => {
                *self.last_error.lock() = None;
                Ok(())
            }
            Err(reason) => Err(self.error(reason)),
        }
    }

    fn error(&self, reason: String) -> LedgerError {
        *self.last_error.lock() = Some(reason.clone());
        LedgerError {
            ledger: self.path.display().to_string(),
            reason,
        }
    }
}

/// Writes what is handed over, a group at a time: everything queued is written, synced once,
/// and each batch in the group answered. Ends when the ledger is dropped.
fn write_loop(mut file: File, fsync: bool, appends: &mpsc::Receiver<Append>) {
    while let Ok(first) = appends.recv() {
        let mut group = vec![first];
        group.extend(appends.try_iter());
        let sync = fsync || group.iter().any(|a| a.sync);
        let result = group
            .iter()
            .try_for_each(|a| file.write_all(&a.lines))
            .map_err(|e| format!("write failed: {e}"))
            .and_then(|()| {
                if sync {
                    file.sync_data().map_err(|e| format!("fsync failed: {e}"))
                } else {
                    Ok(())
                }
            });
        for append in group {
            let _ = append.done.send(result.clone());
        }
    }
}

#[async_trait]
impl Ledger for JsonlLedger {
    async fn record_batch(&self, records: Vec<LedgerRecord>) -> Result<(), Unwritten> {
        if records.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::with_capacity(records.len() * 512);
        for r in &records {
            if let Err(e) = serde_json::to_writer(&mut lines, r) {
                let error = self.error(format!("cannot serialize a record: {e}"));
                return Err(Unwritten { error, records });
            }
            lines.push(b'\n');
        }
        self.append(lines, false)
            .await
            .map_err(|error| Unwritten { error, records })
    }

    async fn flush(&self) -> Result<(), LedgerError> {
        self.append(Vec::new(), true).await
    }

    async fn health(&self) -> Health {
        match &*self.last_error.lock() {
            Some(e) => Health::Unhealthy(format!("ledger {}: {e}", self.path.display())),
            None => Health::Healthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use qt_core::{LedgerStatus, SettlementKind, TraceId};

    use super::*;

    fn record(id: usize) -> LedgerRecord {
        let now = chrono::Utc::now();
        LedgerRecord {
            trace_id: TraceId::random(),
            message_id: format!("m-{id}"),
            queue: Arc::from("q"),
            adapter: Arc::from("mock"),
            event_name: None,
            tenant_id: None,
            dedup_key: None,
            target: None,
            status: LedgerStatus::Succeeded,
            settlement: SettlementKind::Ack,
            attempts: 1,
            duration_ms: 1.0,
            consume_latency_ms: None,
            agent_run_id: None,
            llm_calls: 0,
            agent_output: None,
            error: None,
            error_class: None,
            decision_reason: None,
            decision_policies: Vec::new(),
            retries: Vec::new(),
            received_at: now,
            finished_at: now,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_written_at_once_all_land_whole_and_in_one_piece_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let ledger = Arc::new(JsonlLedger::open(&path, true).unwrap());
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    for b in 0..10 {
                        let batch = (0..20).map(|i| record(w * 1000 + b * 20 + i)).collect();
                        ledger.record_batch(batch).await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: std::collections::BTreeSet<String> = text
            .lines()
            .map(|l| serde_json::from_str::<LedgerRecord>(l).unwrap().message_id)
            .collect();
        assert_eq!(text.lines().count(), 16 * 10 * 20);
        assert_eq!(ids.len(), 16 * 10 * 20, "every record once");
        assert_eq!(ledger.health().await, Health::Healthy);
    }

    #[tokio::test]
    async fn a_write_that_fails_is_an_error_naming_the_file_and_the_ledger_turns_unhealthy() {
        // /dev/full accepts the open and fails every write with "no space left".
        let ledger = JsonlLedger::open(Path::new("/dev/full"), true).unwrap();
        let e = ledger.record_batch(vec![record(1)]).await.unwrap_err();
        assert_eq!(e.error.ledger, "/dev/full");
        assert!(e.error.reason.contains("write failed"), "{e}");
        assert_eq!(e.records.len(), 1, "the batch is handed back");
        assert!(matches!(ledger.health().await, Health::Unhealthy(why) if why.contains("/dev/full")));
    }
}
