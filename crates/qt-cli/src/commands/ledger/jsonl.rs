//! Reading a `jsonl` ledger file. Records come in the order they were written; a line that is
//! not a record (cut short by a crash, edited by hand) is counted and reported, not fatal.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use qt_core::{LedgerFilter, LedgerRecord};

/// Lines that were not ledger records.
#[derive(Debug, Default)]
pub struct Unreadable {
    pub count: u64,
    /// The first one's line number and why it was not a record.
    pub first: Option<(u64, String)>,
}

impl Unreadable {
    fn add(&mut self, line: u64, reason: String) {
        self.count += 1;
        self.first.get_or_insert((line, reason));
    }

    /// What to tell the operator, if any line was skipped.
    pub fn warning(&self, path: &Path) -> Option<String> {
        let (line, reason) = self.first.as_ref()?;
        Some(format!(
            "skipped {} line(s) of {} that are not ledger records (the first, line {line}: {reason})",
            self.count,
            path.display()
        ))
    }
}

/// A `jsonl` ledger file.
#[derive(Debug)]
pub struct JsonlFile {
    path: PathBuf,
}

impl JsonlFile {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_owned() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> anyhow::Result<File> {
        File::open(&self.path).with_context(|| {
            format!(
                "cannot read the ledger {} (ledger.path); has qt written to it yet, and is this the \
                 directory `qt run` ran in?",
                self.path.display()
            )
        })
    }

    /// Every record that matches, in the order written.
    pub fn scan(&self, filter: &LedgerFilter, each: impl FnMut(LedgerRecord)) -> anyhow::Result<Unreadable> {
        self.reader()?.read_new(filter, each)
    }

    /// The newest `limit` records that match, oldest first.
    pub fn newest(&self, filter: &LedgerFilter, limit: usize) -> anyhow::Result<(Vec<LedgerRecord>, Unreadable)> {
        let mut kept = Newest::new(limit);
        let unreadable = self.scan(filter, |r| kept.push(r))?;
        Ok((kept.into_vec(), unreadable))
    }

    /// A reader from the file's start, which goes on where it stopped each time it is asked
    /// to read again.
    pub fn reader(&self) -> anyhow::Result<Reader> {
        let file = self.open()?;
        let inode = file.metadata()?.ino();
        Ok(Reader {
            path: self.path.clone(),
            reader: BufReader::new(file),
            inode,
            position: 0,
            line: 0,
            partial: String::new(),
        })
    }
}

/// The last `limit` of what is pushed.
pub struct Newest {
    limit: usize,
    kept: VecDeque<LedgerRecord>,
}

impl Newest {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            kept: VecDeque::with_capacity(limit.min(4096)),
        }
    }

    pub fn push(&mut self, record: LedgerRecord) {
        if self.limit == 0 {
            return;
        }
        if self.kept.len() == self.limit {
            self.kept.pop_front();
        }
        self.kept.push_back(record);
    }

    pub fn into_vec(self) -> Vec<LedgerRecord> {
        self.kept.into()
    }
}

/// `None` for a blank line.
fn parse_line(line: &str) -> Option<Result<LedgerRecord, String>> {
    let line = line.trim();
    (!line.is_empty()).then(|| serde_json::from_str(line).map_err(|e| e.to_string()))
}

/// Reads a ledger file, and what qt appends to it later. A file replaced (rotated) or cut
/// shorter is read again from its start.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    reader: BufReader<File>,
    inode: u64,
    position: u64,
    /// Lines read so far, for naming an unreadable one.
    line: u64,
    /// A line read before qt finished writing it.
    partial: String,
}

impl Reader {
    /// The records written since the last call (all of them the first time), those that match.
    pub fn read_new(
        &mut self,
        filter: &LedgerFilter,
        mut each: impl FnMut(LedgerRecord),
    ) -> anyhow::Result<Unreadable> {
        self.reopen_if_replaced()?;
        let mut unreadable = Unreadable::default();
        loop {
            let read = self
                .reader
                .read_line(&mut self.partial)
                .with_context(|| format!("reading the ledger {}", self.path.display()))?;
            if read == 0 {
                return Ok(unreadable);
            }
            self.position += read as u64;
            if !self.partial.ends_with('\n') {
                // The rest of the line is still being written.
                return Ok(unreadable);
            }
            self.line += 1;
            match parse_line(&self.partial) {
                Some(Ok(record)) if filter.matches(&record) => each(record),
                Some(Ok(_)) | None => {}
                Some(Err(reason)) => unreadable.add(self.line, reason),
            }
            self.partial.clear();
        }
    }

    fn reopen_if_replaced(&mut self) -> anyhow::Result<()> {
        let Ok(now) = std::fs::metadata(&self.path) else {
            // Moved away and not yet made again: keep reading the old file.
            return Ok(());
        };
        if now.ino() == self.inode && now.len() >= self.position {
            return Ok(());
        }
        let file = File::open(&self.path).with_context(|| format!("reopening the ledger {}", self.path.display()))?;
        self.inode = file.metadata()?.ino();
        self.reader = BufReader::new(file);
        self.position = 0;
        self.line = 0;
        self.partial.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use qt_core::LedgerStatus;

    use super::*;
    use crate::commands::ledger::test_record;

    fn write(path: &Path, records: &[LedgerRecord], extra: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for r in records {
            writeln!(f, "{}", serde_json::to_string(r).unwrap()).unwrap();
        }
        f.write_all(extra.as_bytes()).unwrap();
    }

    #[test]
    fn newest_keeps_the_last_matching_records_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let records: Vec<_> = (0..10)
            .map(|i| {
                test_record(
                    &format!("m-{i}"),
                    if i % 2 == 0 {
                        LedgerStatus::Succeeded
                    } else {
                        LedgerStatus::Failed
                    },
                )
            })
            .collect();
        write(&path, &records, "");
        let filter = LedgerFilter {
            status: Some(LedgerStatus::Failed),
            ..Default::default()
        };
        let (newest, unreadable) = JsonlFile::new(&path).newest(&filter, 3).unwrap();
        let ids: Vec<_> = newest.iter().map(|r| r.message_id.as_str()).collect();
        assert_eq!(ids, ["m-5", "m-7", "m-9"]);
        assert_eq!(unreadable.count, 0);
        assert_eq!(newest[0], records[5], "a record reads back as it was written");
    }

    #[test]
    fn a_line_that_is_not_a_record_is_skipped_and_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        write(
            &path,
            &[test_record("m-1", LedgerStatus::Succeeded)],
            "{\"cut short\n\n",
        );
        write(&path, &[test_record("m-2", LedgerStatus::Succeeded)], "");
        let (newest, unreadable) = JsonlFile::new(&path).newest(&LedgerFilter::default(), 10).unwrap();
        assert_eq!(newest.len(), 2);
        assert_eq!(unreadable.count, 1);
        let warning = unreadable.warning(&path).unwrap();
        assert!(warning.contains("line 2"), "{warning}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it_and_the_setting() {
        let e = JsonlFile::new(Path::new("/nonexistent/qt-ledger.jsonl"))
            .newest(&LedgerFilter::default(), 1)
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("/nonexistent/qt-ledger.jsonl") && text.contains("ledger.path"),
            "{text}"
        );
    }

    #[test]
    fn a_reader_goes_on_with_whole_lines_as_they_are_appended_and_starts_over_on_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        write(&path, &[test_record("old", LedgerStatus::Succeeded)], "");
        let mut reader = JsonlFile::new(&path).reader().unwrap();
        let all = LedgerFilter::default();
        let read = |reader: &mut Reader| {
            let mut ids = Vec::new();
            reader.read_new(&all, |r| ids.push(r.message_id)).unwrap();
            ids
        };
        assert_eq!(read(&mut reader), ["old"]);
        assert!(read(&mut reader).is_empty(), "nothing new");

        let line = serde_json::to_string(&test_record("new", LedgerStatus::Failed)).unwrap();
        let (head, tail) = line.split_at(20);
        write(&path, &[], head);
        assert!(read(&mut reader).is_empty(), "half a line waits");
        write(&path, &[], &format!("{tail}\n"));
        assert_eq!(read(&mut reader), ["new"]);

        // Rotated: the old file moved away, a new one written.
        std::fs::rename(&path, dir.path().join("ledger.jsonl.1")).unwrap();
        write(&path, &[test_record("rotated", LedgerStatus::Succeeded)], "");
        assert_eq!(read(&mut reader), ["rotated"]);
    }
}
