//! A [`LedgerRecord`] as a table row and back: one column per field, enums by their serde
//! names, lists and the agent's output as `jsonb`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use qt_core::ledger::AttemptRecord;
use qt_core::{ErrorClass, LedgerRecord, LedgerStatus, SettlementKind, TraceId};
use tokio_postgres::types::{FromSql, Json, ToSql, Type};

/// The columns written for each record, in COPY order, with their types.
pub const COLUMNS: [(&str, Type); 23] = [
    ("trace_id", Type::TEXT),
    ("message_id", Type::TEXT),
    ("queue", Type::TEXT),
    ("adapter", Type::TEXT),
    ("event_name", Type::TEXT),
    ("tenant_id", Type::TEXT),
    ("dedup_key", Type::TEXT),
    ("target", Type::TEXT),
    ("status", Type::TEXT),
    ("settlement", Type::TEXT),
    ("attempts", Type::INT8),
    ("duration_ms", Type::FLOAT8),
    ("consume_latency_ms", Type::FLOAT8),
    ("agent_run_id", Type::TEXT),
    ("llm_calls", Type::INT8),
    ("agent_output", Type::JSONB),
    ("error", Type::TEXT),
    ("error_class", Type::TEXT),
    ("decision_reason", Type::TEXT),
    ("decision_policies", Type::JSONB),
    ("retries", Type::JSONB),
    ("received_at", Type::TIMESTAMPTZ),
    ("finished_at", Type::TIMESTAMPTZ),
];

/// The column types, for the binary COPY writer.
pub fn types() -> Vec<Type> {
    COLUMNS.iter().map(|(_, t)| t.clone()).collect()
}

/// `"trace_id", "message_id", ...`: the column list of the COPY and of every read.
pub fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(name, _)| format!("\"{name}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of one row, borrowing from the record and owning what it does not hold in
/// column form.
#[derive(Debug)]
pub struct RowValues<'a> {
    record: &'a LedgerRecord,
    trace_id: String,
    queue: &'a str,
    adapter: &'a str,
    target: Option<&'a str>,
    status: &'static str,
    settlement: &'static str,
    attempts: i64,
    llm_calls: i64,
    agent_output: Option<Json<&'a serde_json::Value>>,
    error_class: Option<&'static str>,
    decision_policies: Json<&'a [String]>,
    retries: Json<&'a [AttemptRecord]>,
}

impl<'a> RowValues<'a> {
    pub fn new(record: &'a LedgerRecord) -> Self {
        Self {
            record,
            trace_id: record.trace_id.to_hex(),
            queue: &record.queue,
            adapter: &record.adapter,
            target: record.target.as_deref(),
            status: record.status.as_str(),
            settlement: record.settlement.as_str(),
            attempts: i64::from(record.attempts),
            llm_calls: i64::from(record.llm_calls),
            agent_output: record.agent_output.as_ref().map(Json),
            error_class: record.error_class.map(ErrorClass::as_str),
            decision_policies: Json(&record.decision_policies),
            retries: Json(&record.retries),
        }
    }

    /// The values in [`COLUMNS`] order.
    pub fn params(&self) -> [&(dyn ToSql + Sync); COLUMNS.len()] {
        let r = self.record;
        [
            &self.trace_id,
            &r.message_id,
            &self.queue,
            &self.adapter,
            &r.event_name,
            &r.tenant_id,
            &r.dedup_key,
            &self.target,
            &self.status,
            &self.settlement,
            &self.attempts,
            &r.duration_ms,
            &r.consume_latency_ms,
            &r.agent_run_id,
            &self.llm_calls,
            &self.agent_output,
            &r.error,
            &self.error_class,
            &r.decision_reason,
            &self.decision_policies,
            &self.retries,
            &r.received_at,
            &r.finished_at,
        ]
    }
}

/// A row read back (columns in [`COLUMNS`] order from index 0) as a record. Fails, naming
/// the column, on a value this version cannot read (a status written by a newer version).
pub fn to_record(row: &tokio_postgres::Row) -> Result<LedgerRecord, String> {
    fn get<'r, T: FromSql<'r>>(row: &'r tokio_postgres::Row, i: usize) -> Result<T, String> {
        row.try_get(i)
            .map_err(|e| format!("cannot read column {}: {e}", COLUMNS[i].0))
    }
    let trace: &str = get(row, 0)?;
    let trace_id = TraceId::from_hex(trace).ok_or_else(|| format!("trace_id {trace:?} is not 32 hex digits"))?;
    let status: &str = get(row, 8)?;
    let status = LedgerStatus::from_name(status).ok_or_else(|| format!("unknown status {status:?}"))?;
    let settlement: &str = get(row, 9)?;
    let settlement =
        SettlementKind::from_name(settlement).ok_or_else(|| format!("unknown settlement {settlement:?}"))?;
    let error_class = match get::<Option<&str>>(row, 17)? {
        None => None,
        Some(name) => Some(
            ErrorClass::ALL
                .into_iter()
                .find(|c| c.as_str() == name)
                .ok_or_else(|| format!("unknown error_class {name:?}"))?,
        ),
    };
    let count = |i: usize| -> Result<u32, String> {
        let n: i64 = get(row, i)?;
        u32::try_from(n).map_err(|_| format!("{} {n} is out of range", COLUMNS[i].0))
    };
    let Json(decision_policies): Json<Vec<String>> = get(row, 19)?;
    let Json(retries): Json<Vec<AttemptRecord>> = get(row, 20)?;
    Ok(LedgerRecord {
        trace_id,
        message_id: get(row, 1)?,
        queue: Arc::from(get::<&str>(row, 2)?),
        adapter: Arc::from(get::<&str>(row, 3)?),
        event_name: get(row, 4)?,
        tenant_id: get(row, 5)?,
        dedup_key: get(row, 6)?,
        target: get::<Option<&str>>(row, 7)?.map(Arc::from),
        status,
        settlement,
        attempts: count(10)?,
        duration_ms: get(row, 11)?,
        consume_latency_ms: get(row, 12)?,
        agent_run_id: get(row, 13)?,
        llm_calls: count(14)?,
        agent_output: get::<Option<Json<serde_json::Value>>>(row, 15)?.map(|Json(v)| v),
        error: get(row, 16)?,
        error_class,
        decision_reason: get(row, 18)?,
        decision_policies,
        retries,
        received_at: get::<DateTime<Utc>>(row, 21)?,
        finished_at: get::<DateTime<Utc>>(row, 22)?,
    })
}
