//! [`PostgresLedger`]: the [`Ledger`] writing to a PostgreSQL table, and its read side.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use parking_lot::Mutex;
use qt_core::config::{ConfigErrors, PostgresLedgerConfig, Validate, join};
use qt_core::{Health, Ledger, LedgerError, LedgerFilter, LedgerRecord, Unwritten};
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::errors::{PostgresLedgerError, Redactor, describe_pg, describe_pool};
use crate::migrations::{self, Target};
use crate::{connection, retention, row};

/// The configuration's path, for naming fields in errors.
const CONFIG_PATH: &str = "ledger";

/// A record as stored: the row's `id` (increasing in insertion order) with the record.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    pub id: i64,
    pub record: LedgerRecord,
}

/// Records in a PostgreSQL table. Cheap to share behind an `Arc`; dropping it stops its
/// retention task.
pub struct PostgresLedger {
    inner: Arc<Inner>,
    retention: Option<JoinHandle<()>>,
}

pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) redactor: Redactor,
    pub(crate) target: Target,
    statement_timeout: Duration,
    copy_sql: String,
    copy_types: Vec<Type>,
    select_sql: String,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for PostgresLedger {
    // The pool's driver configuration holds the password; it is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger")
            .field("ledger", &self.inner.redactor.ledger())
            .field("retention", &self.retention.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresLedger {
    fn drop(&mut self) {
        if let Some(task) = &self.retention {
            task.abort();
        }
    }
}

impl PostgresLedger {
    /// Checks the configuration, connects, brings the table up to date (see
    /// [`migrations`](crate::migrations)) and, with `retention` set, starts the retention
    /// task. Must be called inside a Tokio runtime.
    ///
    /// Fails fast: an unreachable database, a wrong password or missing privileges are
    /// errors here, so they show when `qt` starts rather than on the first message. Once
    /// running, the ledger rides out outages: writes fail while PostgreSQL is away (and the
    /// engine does not ack those messages) and succeed again on fresh connections once it is
    /// back.
    ///
    /// `require_tls` (`security.require_tls`) refuses `tls: disable`.
    pub async fn connect(cfg: &PostgresLedgerConfig, require_tls: bool) -> Result<Self, PostgresLedgerError> {
        let ledger = Self::open(cfg, require_tls).await?;
        ledger.migrate().await?;
        Ok(ledger.with_retention(cfg.retention))
    }

    /// Like [`connect`](Self::connect) without migrating or starting the retention task:
    /// for tools that only read, or that migrate explicitly. Connects lazily.
    pub async fn open(cfg: &PostgresLedgerConfig, require_tls: bool) -> Result<Self, PostgresLedgerError> {
        let mut redactor = Redactor::new(format!("{} ({}.{})", cfg.url, cfg.schema, cfg.table));
        let mut problems = ConfigErrors::default();
        cfg.validate(CONFIG_PATH, &mut problems);
        if require_tls && !cfg.is_tls() {
            problems.push(
                join(CONFIG_PATH, "url"),
                format!(
                    "security.require_tls is set but {} is not TLS (set ledger.tls: verify-full)",
                    cfg.url
                ),
            );
        }
        if !problems.is_empty() {
            return Err(redactor.config(problems.to_string().trim_end()));
        }
        let pg = connection::pg_config(cfg).map_err(|e| redactor.config(&e))?;
        if let Some(password) = pg.get_password() {
            redactor.add_secret(&String::from_utf8_lossy(password));
        }
        let tls = connection::tls(cfg).await.map_err(|e| redactor.config(&e))?;
        let pool = connection::pool(cfg, pg, tls).map_err(|e| redactor.failed("set up", &e))?;
        let target = Target {
            schema: cfg.schema.clone(),
            table: cfg.table.clone(),
        };
        let columns = row::column_list();
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                redactor,
                copy_sql: format!("COPY {} ({columns}) FROM STDIN (FORMAT binary)", target.table()),
                copy_types: row::types(),
                select_sql: format!("SELECT {columns}, id FROM {}", target.table()),
                target,
                statement_timeout: cfg.statement_timeout,
                last_error: Mutex::new(None),
            }),
            retention: None,
        })
    }

    fn with_retention(mut self, keep: Option<Duration>) -> Self {
        if let Some(keep) = keep {
            self.retention = Some(retention::spawn(Arc::downgrade(&self.inner), keep));
        }
        self
    }

    /// The ledger as printed in errors and logs: URL (password masked) and table.
    pub fn name(&self) -> &str {
        self.inner.redactor.ledger()
    }

    /// Applies the migrations this version has and the table lacks; returns the versions
    /// applied (empty when it was up to date). Safe to run from several processes at once.
    pub async fn migrate(&self) -> Result<Vec<i32>, PostgresLedgerError> {
        let mut client = self.inner.client("migrate the ledger table").await?;
        migrations::migrate(&mut client, &self.inner.target)
            .await
            .map_err(|e| self.inner.redactor.failed("migrate the ledger table", &e))
    }

    /// Records matching `filter`, newest first (by `finished_at`, then insertion order).
    pub async fn query(&self, filter: &LedgerFilter) -> Result<Vec<LedgerRecord>, PostgresLedgerError> {
        let Conditions { mut sql, mut params } = Conditions::of(&self.inner.select_sql, filter);
        sql.push_str(" ORDER BY finished_at DESC, id DESC");
        if let Some(limit) = filter.limit {
            params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        Ok(self
            .inner
            .read("query records", &sql, &params.refs())
            .await?
            .into_iter()
            .map(|s| s.record)
            .collect())
    }

    /// Every record matching `filter` (its `limit` aside), in insertion order, read `page`
    /// rows at a time so that memory stays bounded however many match.
    pub async fn scan(
        &self,
        filter: &LedgerFilter,
        page: usize,
        mut each: impl FnMut(LedgerRecord) + Send,
    ) -> Result<(), PostgresLedgerError> {
        let Conditions { mut sql, mut params } = Conditions::of(&self.inner.select_sql, filter);
        params.push(Box::new(0_i64));
        let after = params.len();
        sql.push_str(if after == 1 { " WHERE" } else { " AND" });
        params.push(Box::new(i64::try_from(page).unwrap_or(i64::MAX)));
        sql.push_str(&format!(" id > ${after} ORDER BY id LIMIT ${}", after + 1));
        loop {
            let rows = self.inner.read("scan records", &sql, &params.refs()).await?;
            let Some(last) = rows.last().map(|r| r.id) else {
                return Ok(());
            };
            let full = rows.len() == page;
            rows.into_iter().for_each(|r| each(r.record));
            if !full {
                return Ok(());
            }
            params[after - 1] = Box::new(last);
        }
    }

    /// Up to `limit` records stored after the one with id `after`, oldest first: for
    /// following the ledger (`after` = the last id seen, 0 to start at the beginning).
    ///
    /// Ids are taken when a row is inserted, so a batch that commits after a later one can
    /// land below the last id seen; a follower that must not miss any re-reads a margin.
    pub async fn records_after(&self, after: i64, limit: usize) -> Result<Vec<StoredRecord>, PostgresLedgerError> {
        let sql = format!("{} WHERE id > $1 ORDER BY id LIMIT $2", self.inner.select_sql);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.inner.read("read records to follow", &sql, &[&after, &limit]).await
    }

    /// The id of the newest row stored (0 for an empty table): where a follower starts.
    pub async fn last_id(&self) -> Result<i64, PostgresLedgerError> {
        const ACTION: &str = "read the newest record's id";
        let client = self.inner.client(ACTION).await?;
        let sql = format!("SELECT coalesce(max(id), 0) FROM {}", self.inner.target.table());
        let row = client
            .query_one(&sql, &[])
            .await
            .map_err(|e| self.inner.redactor.failed(ACTION, &describe_pg(&e)))?;
        Ok(row.get(0))
    }

    /// Deletes records whose `finished_at` is before `cutoff`, in chunks of `chunk` rows
    /// per statement, at most `max_chunks` statements; returns how many were deleted. The
    /// retention task calls this; it is public for tools and tests.
    pub async fn delete_finished_before(
        &self,
        cutoff: DateTime<Utc>,
        chunk: u32,
        max_chunks: u32,
    ) -> Result<u64, PostgresLedgerError> {
        self.inner.delete_finished_before(cutoff, chunk, max_chunks).await
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

trait Refs {
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)>;
}

impl Refs for Vec<Param> {
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()
    }
}

/// A select with a filter's conditions as a `WHERE` clause and their parameters, values
/// always bound, never written into the SQL.
struct Conditions {
    sql: String,
    params: Vec<Param>,
}

impl Conditions {
    fn of(select: &str, filter: &LedgerFilter) -> Self {
        let mut c = Self {
            sql: select.to_owned(),
            params: Vec::new(),
        };
        if let Some(v) = &filter.tenant_id {
            c.add("tenant_id", "=", Box::new(v.clone()));
        }
        if let Some(v) = filter.status {
            c.add("status", "=", Box::new(v.as_str()));
        }
        if let Some(v) = &filter.event_name {
            c.add("event_name", "=", Box::new(v.clone()));
        }
        if let Some(v) = filter.since {
            c.add("finished_at", ">=", Box::new(v));
        }
        if let Some(v) = filter.until {
            c.add("finished_at", "<", Box::new(v));
        }
        if let Some(v) = &filter.message_id {
            c.add("message_id", "=", Box::new(v.clone()));
        }
        if let Some(v) = filter.trace_id {
            c.add("trace_id", "=", Box::new(v.to_hex()));
        }
        if let Some(v) = &filter.dedup_key {
            c.add("dedup_key", "=", Box::new(v.clone()));
        }
        c
    }

    fn add(&mut self, column: &str, op: &str, value: Param) {
        self.params.push(value);
        self.sql
            .push_str(if self.params.len() == 1 { " WHERE " } else { " AND " });
        self.sql.push_str(&format!("\"{column}\" {op} ${}", self.params.len()));
    }
}

impl Inner {
    pub(crate) async fn client(&self, action: &'static str) -> Result<deadpool_postgres::Client, PostgresLedgerError> {
        self.pool
            .get()
            .await
            .map_err(|e| self.redactor.failed(action, &describe_pool(&e, self.statement_timeout)))
    }

    async fn read(
        &self,
        action: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<StoredRecord>, PostgresLedgerError> {
        let client = self.client(action).await?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(|e| self.redactor.failed(action, &describe_pg(&e)))?;
        let rows = client
            .query(&stmt, params)
            .await
            .map_err(|e| self.redactor.failed(action, &describe_pg(&e)))?;
        rows.iter()
            .map(|r| {
                Ok(StoredRecord {
                    id: r.get(row::COLUMNS.len()),
                    record: row::to_record(r).map_err(|e| self.redactor.failed(action, &e))?,
                })
            })
            .collect()
    }

    async fn write(&self, records: &[LedgerRecord]) -> Result<(), PostgresLedgerError> {
        const ACTION: &str = "write records";
        let fail = |e: tokio_postgres::Error| self.redactor.failed(ACTION, &describe_pg(&e));
        let mut client = self.client(ACTION).await?;
        let tx = client.transaction().await.map_err(fail)?;
        let copied = async {
            let stmt = tx.prepare_cached(&self.copy_sql).await?;
            let sink = tx.copy_in(&stmt).await?;
            let writer = BinaryCopyInWriter::new(sink, &self.copy_types);
            let mut writer = std::pin::pin!(writer);
            for r in records {
                let values = row::RowValues::new(r);
                writer.as_mut().write(&values.params()).await?;
            }
            writer.finish().await
        }
        .await;
        match copied {
            Ok(_) => tx.commit().await.map_err(fail),
            Err(e) => {
                // Nothing of the batch is committed either way; rolling back now frees the
                // connection at once (on a dead connection this fails too, and the pool
                // drops it).
                let _ = tx.rollback().await;
                Err(fail(e))
            }
        }
    }

    pub(crate) async fn delete_finished_before(
        &self,
        cutoff: DateTime<Utc>,
        chunk: u32,
        max_chunks: u32,
    ) -> Result<u64, PostgresLedgerError> {
        const ACTION: &str = "delete expired records";
        let table = self.target.table();
        let sql =
            format!("DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE finished_at < $1 LIMIT $2)");
        let client = self.client(ACTION).await?;
        let stmt = client
            .prepare_cached(&sql)
            .await
            .map_err(|e| self.redactor.failed(ACTION, &describe_pg(&e)))?;
        let mut deleted = 0;
        for _ in 0..max_chunks {
            let n = client
                .execute(&stmt, &[&cutoff, &i64::from(chunk)])
                .await
                .map_err(|e| self.redactor.failed(ACTION, &describe_pg(&e)))?;
            deleted += n;
            if n < u64::from(chunk) {
                break;
            }
        }
        Ok(deleted)
    }

    fn remember(&self, result: Result<(), PostgresLedgerError>) -> Result<(), LedgerError> {
        match result {
            Ok(()) => {
                *self.last_error.lock() = None;
                Ok(())
            }
            Err(e) => {
                let e = LedgerError::from(e);
                *self.last_error.lock() = Some(e.reason.clone());
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Ledger for PostgresLedger {
    /// Writes the batch with one binary COPY in one transaction, committed before this
    /// returns: either every record is stored or none is.
    async fn record_batch(&self, records: Vec<LedgerRecord>) -> Result<(), Unwritten> {
        if records.is_empty() {
            return Ok(());
        }
        let result = self.inner.write(&records).await;
        self.inner
            .remember(result)
            .map_err(|error| Unwritten { error, records })
    }

    /// Unhealthy with the last error from the moment a write fails until one succeeds.
    async fn health(&self) -> Health {
        match &*self.inner.last_error.lock() {
            Some(e) => Health::Unhealthy(format!("ledger {}: {e}", self.inner.redactor.ledger())),
            None => Health::Healthy,
        }
    }
}
