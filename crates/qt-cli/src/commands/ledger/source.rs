//! The ledger a configuration writes, opened for reading: its JSONL file or its PostgreSQL
//! table. Both answer the same three questions: the newest records that match, every record
//! that matches, and what is written from now on.

use std::collections::BTreeSet;
use std::io::Write;

use qt_core::config::{Config, LedgerConfig};
use qt_core::{LedgerFilter, LedgerRecord};

use super::jsonl::{JsonlFile, Newest, Reader, Unreadable};

/// Rows read per round trip when scanning a PostgreSQL ledger.
#[cfg(feature = "postgres")]
const PAGE: usize = 5_000;
/// How far behind the newest id seen a PostgreSQL follower looks again: a batch that
/// commits after a later one has lower ids than rows already shown.
#[cfg(feature = "postgres")]
const FOLLOW_MARGIN: i64 = 1_024;

pub enum Source {
    Jsonl(JsonlFile),
    #[cfg(feature = "postgres")]
    Postgres(qt_ledger_postgres::PostgresLedger),
}

impl Source {
    /// Opens the configured ledger. A `memory` ledger cannot be read from outside its process.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        match &config.ledger {
            LedgerConfig::Jsonl(j) => Ok(Source::Jsonl(JsonlFile::new(&j.path))),
            LedgerConfig::Memory => anyhow::bail!(
                "ledger.type is memory: its records live only inside a running qt and cannot be read; \
                 configure `jsonl` or `postgres` to keep them"
            ),
            #[cfg(feature = "postgres")]
            LedgerConfig::Postgres(p) => Ok(Source::Postgres(
                qt_ledger_postgres::PostgresLedger::open(p, config.security.require_tls).await?,
            )),
            #[cfg(not(feature = "postgres"))]
            LedgerConfig::Postgres(_) => Err(crate::wiring::missing_ledger_feature()),
        }
    }

    /// The newest `limit` records that match, oldest first.
    pub async fn newest(&self, filter: &LedgerFilter, limit: usize) -> anyhow::Result<Vec<LedgerRecord>> {
        match self {
            Source::Jsonl(file) => {
                let (records, unreadable) = blocking(|| file.newest(filter, limit))?;
                warn_unreadable(file, &unreadable);
                Ok(records)
            }
            #[cfg(feature = "postgres")]
            Source::Postgres(ledger) => {
                let filter = LedgerFilter {
                    limit: Some(limit),
                    ..filter.clone()
                };
                let mut records = ledger.query(&filter).await?;
                records.reverse();
                Ok(records)
            }
        }
    }

    /// Every record that matches, in the order written.
    pub async fn scan(&self, filter: &LedgerFilter, each: impl FnMut(LedgerRecord) + Send) -> anyhow::Result<()> {
        match self {
            Source::Jsonl(file) => {
                let unreadable = blocking(|| file.scan(filter, each))?;
                warn_unreadable(file, &unreadable);
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Source::Postgres(ledger) => Ok(ledger.scan(filter, PAGE, each).await?),
        }
    }

    /// The newest `backlog` records that match, and a follower of what is written after them.
    pub async fn follow(
        &self,
        filter: &LedgerFilter,
        backlog: usize,
    ) -> anyhow::Result<(Vec<LedgerRecord>, Follower<'_>)> {
        match self {
            Source::Jsonl(file) => {
                let mut reader = file.reader()?;
                let mut newest = Newest::new(backlog);
                let unreadable = blocking(|| reader.read_new(filter, |r| newest.push(r)))?;
                warn_unreadable(file, &unreadable);
                Ok((newest.into_vec(), Follower::Jsonl { file, reader }))
            }
            #[cfg(feature = "postgres")]
            Source::Postgres(ledger) => {
                // The id first: a record written between the two reads is shown twice rather
                // than missed.
                let last = ledger.last_id().await?;
                let records = self.newest(filter, backlog).await?;
                Ok((
                    records,
                    Follower::Postgres {
                        ledger,
                        floor: last,
                        last,
                        seen: BTreeSet::new(),
                    },
                ))
            }
        }
    }
}

/// Reads what is written to a ledger after a point.
pub enum Follower<'a> {
    Jsonl {
        file: &'a JsonlFile,
        reader: Reader,
    },
    #[cfg(feature = "postgres")]
    Postgres {
        ledger: &'a qt_ledger_postgres::PostgresLedger,
        /// Rows up to this id were there when following began: never shown as new.
        floor: i64,
        /// The newest id read.
        last: i64,
        /// Ids shown within [`FOLLOW_MARGIN`] of `last`, so a second look shows nothing twice.
        seen: BTreeSet<i64>,
    },
}

impl Follower<'_> {
    /// The records that match, written since the last call.
    pub async fn read_new(&mut self, filter: &LedgerFilter) -> anyhow::Result<Vec<LedgerRecord>> {
        match self {
            Follower::Jsonl { file, reader } => {
                let mut records = Vec::new();
                let unreadable = blocking(|| reader.read_new(filter, |r| records.push(r)))?;
                warn_unreadable(file, &unreadable);
                Ok(records)
            }
            #[cfg(feature = "postgres")]
            Follower::Postgres {
                ledger,
                floor,
                last,
                seen,
            } => {
                let mut cursor = (*floor).max(*last - FOLLOW_MARGIN);
                let mut records = Vec::new();
                loop {
                    let rows = ledger.records_after(cursor, PAGE).await?;
                    let full = rows.len() == PAGE;
                    for row in rows {
                        cursor = row.id;
                        *last = (*last).max(row.id);
                        if seen.insert(row.id) && filter.matches(&row.record) {
                            records.push(row.record);
                        }
                    }
                    if !full {
                        break;
                    }
                }
                *seen = seen.split_off(&(*last - FOLLOW_MARGIN));
                Ok(records)
            }
        }
    }
}

/// Runs file reading where blocking is allowed.
fn blocking<T>(read: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    tokio::task::block_in_place(read)
}

fn warn_unreadable(file: &JsonlFile, unreadable: &Unreadable) {
    if let Some(warning) = unreadable.warning(file.path()) {
        let _ = writeln!(std::io::stderr(), "qt: warning: {warning}");
    }
}
