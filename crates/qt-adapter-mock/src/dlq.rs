//! The mock source's dead-letter file read as a dead-letter queue (`qt dlq` with a
//! `dlq_file`).
//!
//! A running `qt run` appends to the file while a `qt dlq` session reads it, so both take the
//! lock file beside it (`FILE.lock`) around each change: the running trigger for one append,
//! the session to read and, at close, to write the file anew without the letters it removed
//! (to a temporary file renamed over the old one, so a crash leaves the old or the new file,
//! whole). Letters appended during the session are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::Engine as _;
use qt_core::{AdapterError, DlqMessage, DlqReader, Headers};
use serde::Deserialize;

/// A dead-letter line as the mock source writes it.
#[derive(Deserialize)]
struct StoredLetter {
    id: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    json: Option<serde_json::Value>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    body_base64: Option<String>,
}

/// One session on a mock dead-letter file; see the module documentation.
pub struct MockDlq {
    path: PathBuf,
    name: String,
    /// The file as the session read it: at close, it must still begin with this.
    read: String,
    /// Each letter's line, by its `seq`.
    lines: Vec<String>,
    next: usize,
    removed: BTreeSet<usize>,
}

impl std::fmt::Debug for MockDlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockDlq")
            .field("path", &self.path)
            .field("letters", &self.lines.len())
            .field("next", &self.next)
            .field("removed", &self.removed.len())
            .finish()
    }
}

impl MockDlq {
    /// Reads the dead-letter file at `path`; a file that does not exist yet is an empty DLQ.
    pub fn open(path: &Path) -> Result<Self, AdapterError> {
        let read = {
            let _lock = FileLock::take(path)?;
            match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(io_error("reading", path, &e)),
            }
        };
        // A line still being written by a trigger that died part way has no newline: it is
        // not a letter yet.
        let complete = read.rfind('\n').map_or(0, |end| end + 1);
        let lines = read[..complete]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            name: path.display().to_string(),
            path: path.to_owned(),
            read: read[..complete].to_owned(),
            lines,
            next: 0,
            removed: BTreeSet::new(),
        })
    }

    fn letter(&self, seq: usize) -> Result<DlqMessage, AdapterError> {
        let bad = |reason: String| AdapterError::Other {
            what: format!("reading dead letter {} of {}", seq + 1, self.name),
            reason,
        };
        let stored: StoredLetter = serde_json::from_str(&self.lines[seq]).map_err(|e| bad(e.to_string()))?;
        let body = match (&stored.json, &stored.text, &stored.body_base64) {
            (Some(json), None, None) => serde_json::to_vec(json).map_err(|e| bad(e.to_string()))?,
            (None, Some(text), None) => text.clone().into_bytes(),
            (None, None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| bad(format!("body_base64 is not valid base64: {e}")))?,
            _ => {
                return Err(bad(
                    "needs exactly one of \"json\", \"text\" or \"body_base64\"".to_owned()
                ));
            }
        };
        let headers: Headers = stored.headers.into_iter().collect();
        Ok(DlqMessage {
            seq: seq as u64,
            id: stored.id,
            body: body.into(),
            headers,
            key: stored.key,
            timestamp: None,
        })
    }
}

#[async_trait]
impl DlqReader for MockDlq {
    fn name(&self) -> &str {
        &self.name
    }

    async fn next(&mut self) -> Result<Option<DlqMessage>, AdapterError> {
        if self.next == self.lines.len() {
            return Ok(None);
        }
        let seq = self.next;
        self.next += 1;
        self.letter(seq).map(Some)
    }

    async fn remove(&mut self, letter: &DlqMessage) -> Result<(), AdapterError> {
        let seq = usize::try_from(letter.seq).ok().filter(|s| *s < self.next);
        match seq {
            Some(seq) => {
                self.removed.insert(seq);
                Ok(())
            }
            None => Err(AdapterError::Other {
                what: format!("removing dead letter {} from {}", letter.id, self.name),
                reason: "this session did not read it".to_owned(),
            }),
        }
    }

    async fn close(self: Box<Self>) -> Result<(), AdapterError> {
        if self.removed.is_empty() {
            return Ok(());
        }
        let _lock = FileLock::take(&self.path)?;
        let now = std::fs::read_to_string(&self.path).map_err(|e| io_error("reading", &self.path, &e))?;
        let Some(appended) = now.strip_prefix(self.read.as_str()) else {
            return Err(AdapterError::Other {
                what: format!("removing dead letters from {}", self.name),
                reason: "the file was rewritten by another `qt dlq` session since this one read it; \
                         nothing was removed, run the command again"
                    .to_owned(),
            });
        };
        let mut text = String::with_capacity(now.len());
        for (seq, line) in self.lines.iter().enumerate() {
            if !self.removed.contains(&seq) {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str(appended);
        replace_file(&self.path, text.as_bytes()).map_err(|e| io_error("rewriting", &self.path, &e))
    }
}

/// Writes `contents` to a temporary file beside `path`, flushes it to disk and renames it
/// over `path`.
fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".rewrite");
    let temporary = PathBuf::from(temporary);
    let mut f = File::create(&temporary)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn io_error(doing: &str, path: &Path, e: &std::io::Error) -> AdapterError {
    AdapterError::Other {
        what: format!("{doing} the dead-letter file {}", path.display()),
        reason: e.to_string(),
    }
}

/// The exclusive lock on `FILE.lock` that orders changes to a dead-letter file; released on
/// drop.
pub(crate) struct FileLock(File);

impl FileLock {
    pub(crate) fn take(path: &Path) -> Result<Self, AdapterError> {
        Self::take_io(path).map_err(|e| io_error("locking", path, &e))
    }

    pub(crate) fn take_io(path: &Path) -> std::io::Result<Self> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(lock_path))?;
        file.lock()?;
        Ok(Self(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, reason: &str) -> String {
        format!(
            r#"{{"id":"{id}","reason":"{reason}","attempts":1,"headers":{{"x-qt-dlq-reason":"{reason}","x-qt-original-queue":"mock"}},"json":{{"n":"{id}"}}}}"#
        )
    }

    fn write(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    async fn read_all(dlq: &mut MockDlq) -> Vec<DlqMessage> {
        let mut out = Vec::new();
        while let Some(l) = dlq.next().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn reading_returns_every_letter_in_order_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        write(&path, &[line("a", "boom"), line("b", "bang")]);
        let before = std::fs::read(&path).unwrap();
        let mut dlq = MockDlq::open(&path).unwrap();
        let letters = read_all(&mut dlq).await;
        Box::new(dlq).close().await.unwrap();
        let ids: Vec<_> = letters.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(letters[1].details().reason.as_deref(), Some("bang"));
        assert_eq!(&letters[0].body[..], br#"{"n":"a"}"#);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[tokio::test]
    async fn close_drops_the_removed_letters_and_keeps_those_appended_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        write(&path, &[line("a", "x"), line("b", "y"), line("c", "z")]);
        let mut dlq = MockDlq::open(&path).unwrap();
        let letters = read_all(&mut dlq).await;
        dlq.remove(&letters[0]).await.unwrap();
        dlq.remove(&letters[2]).await.unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(format!("{}\n", line("d", "w")).as_bytes())
            .unwrap();
        Box::new(dlq).close().await.unwrap();
        let mut again = MockDlq::open(&path).unwrap();
        let ids: Vec<_> = read_all(&mut again).await.into_iter().map(|l| l.id).collect();
        assert_eq!(ids, ["b", "d"]);
    }

    #[tokio::test]
    async fn a_file_rewritten_by_another_session_is_left_alone_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        write(&path, &[line("a", "x"), line("b", "y")]);
        let mut dlq = MockDlq::open(&path).unwrap();
        let letters = read_all(&mut dlq).await;
        dlq.remove(&letters[0]).await.unwrap();
        write(&path, &[line("b", "y")]);
        let err = Box::new(dlq).close().await.unwrap_err().to_string();
        assert!(err.contains("another `qt dlq` session"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", line("b", "y")));
    }

    #[tokio::test]
    async fn a_missing_file_is_an_empty_queue_and_a_torn_last_line_is_not_a_letter() {
        let dir = tempfile::tempdir().unwrap();
        let mut dlq = MockDlq::open(&dir.path().join("none.jsonl")).unwrap();
        assert!(dlq.next().await.unwrap().is_none());
        let path = dir.path().join("dlq.jsonl");
        std::fs::write(&path, format!("{}\n{{\"id\":\"half", line("a", "x"))).unwrap();
        let mut dlq = MockDlq::open(&path).unwrap();
        assert_eq!(read_all(&mut dlq).await.len(), 1);
    }

    #[tokio::test]
    async fn a_letter_this_session_did_not_read_cannot_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlq.jsonl");
        write(&path, &[line("a", "x")]);
        let mut dlq = MockDlq::open(&path).unwrap();
        let stranger = DlqMessage {
            seq: 0,
            id: "a".to_owned(),
            body: Default::default(),
            headers: Headers::new(),
            key: None,
            timestamp: None,
        };
        assert!(dlq.remove(&stranger).await.is_err());
    }
}
