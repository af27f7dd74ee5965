//! A ledger appended to a local file, one JSON object per line. A batch is written with
//! one `write` and, when configured, fsynced, before `record_batch` returns — so before the
//! engine acks any message in it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_core::{Health, Ledger, LedgerError, LedgerRecord};

#[derive(Debug)]
pub struct JsonlLedger {
    path: PathBuf,
    fsync: bool,
    file: Arc<Mutex<File>>,
    last_error: Mutex<Option<String>>,
}

impl JsonlLedger {
    /// Opens (creating if needed) the file for appending.
    pub fn open(path: &Path, fsync: bool) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| LedgerError {
                ledger: path.display().to_string(),
                reason: format!("cannot create directory {}: {e}", dir.display()),
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| LedgerError {
                ledger: path.display().to_string(),
                reason: format!("cannot open for appending: {e}"),
            })?;
        Ok(Self {
            path: path.to_owned(),
            fsync,
            file: Arc::new(Mutex::new(file)),
            last_error: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, reason: String) -> LedgerError {
        *self.last_error.lock() = Some(reason.clone());
        LedgerError {
            ledger: self.path.display().to_string(),
            reason,
        }
    }
}

#[async_trait]
impl Ledger for JsonlLedger {
    async fn record_batch(&self, records: Vec<LedgerRecord>) -> Result<(), LedgerError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * 512);
        for r in &records {
            serde_json::to_writer(&mut buf, r).map_err(|e| self.error(format!("cannot serialize a record: {e}")))?;
            buf.push(b'\n');
        }
        let file = self.file.clone();
        let fsync = self.fsync;
        let written = tokio::task::spawn_blocking(move || {
            let mut f = file.lock();
            f.write_all(&buf)?;
            if fsync {
                f.sync_data()?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        match written {
            Ok(Ok(())) => {
                *self.last_error.lock() = None;
                Ok(())
            }
            Ok(Err(e)) => Err(self.error(format!("write failed: {e}"))),
            Err(e) => Err(self.error(format!("writer task failed: {e}"))),
        }
    }

    async fn flush(&self) -> Result<(), LedgerError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.lock().sync_data())
            .await
            .map_err(|e| self.error(format!("flush task failed: {e}")))?
            .map_err(|e| self.error(format!("fsync failed: {e}")))
    }

    async fn health(&self) -> Health {
        match &*self.last_error.lock() {
            Some(e) => Health::Unhealthy(format!("ledger {}: {e}", self.path.display())),
            None => Health::Healthy,
        }
    }
}
