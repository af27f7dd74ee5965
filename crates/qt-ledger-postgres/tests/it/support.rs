//! What the tests share: the database URL, a fresh schema per test, ledgers on it, a raw
//! client to look behind the ledger's back, and records to write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use qt_core::config::PostgresLedgerConfig;
use qt_core::ledger::AttemptRecord;
use qt_core::{ErrorClass, LedgerRecord, LedgerStatus, SettlementKind, TraceId};
use qt_ledger_postgres::PostgresLedger;
use tokio_postgres::{Client, NoTls};

pub fn shared_url() -> String {
    std::env::var("QT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema only this test uses; dropped (with everything in it) when this is dropped,
/// also when the test fails.
#[derive(Debug)]
pub struct TestSchema {
    pub url: String,
    pub name: String,
}

impl TestSchema {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "qt_test_{}_{}_{:08x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand_u32()
        );
        Self {
            url: shared_url(),
            name,
        }
    }

    /// The ledger configuration for this schema, with short timeouts.
    pub fn config(&self) -> PostgresLedgerConfig {
        let mut cfg = PostgresLedgerConfig::new(&self.url);
        cfg.schema = self.name.clone();
        cfg.connect_timeout = Duration::from_secs(3);
        cfg.statement_timeout = Duration::from_secs(5);
        cfg
    }

    /// A migrated ledger. Fails the test, saying where PostgreSQL was expected, when it is
    /// not reachable.
    pub async fn ledger(&self) -> PostgresLedger {
        match PostgresLedger::connect(&self.config(), false).await {
            Ok(l) => l,
            Err(e) => panic!(
                "the test PostgreSQL at {} (QT_TEST_POSTGRES_URL) is not usable: {e}\n\
                 start it with `cargo xtask services up`",
                self.url
            ),
        }
    }
}

impl Drop for TestSchema {
    #[allow(
        clippy::print_stderr,
        reason = "a leftover schema is worth a line in the test output"
    )]
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with a
        // runtime of its own can.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    let client = raw_at(&url).await;
                    client
                        .batch_execute(&format!(
                            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                        ))
                        .await
                })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop test schema {}: {e}", self.name);
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

/// A plain connection to the shared database.
pub async fn raw() -> Client {
    raw_at(&shared_url()).await
}

pub async fn raw_at(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!(
            "cannot reach the test PostgreSQL at {url} (QT_TEST_POSTGRES_URL): {e}; start it with `cargo xtask services up`"
        ));
    tokio::spawn(conn);
    client
}

/// Rows in `schema.qt_ledger`.
pub async fn count(client: &Client, schema: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".qt_ledger"), &[])
        .await
        .expect("count rows")
        .get(0)
}

/// A point in time with whole microseconds (what `timestamptz` keeps).
pub fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_000_000 + seconds, 123_456_000)
        .single()
        .expect("valid time")
}

/// A record with only the required fields set.
pub fn minimal(message_id: &str, status: LedgerStatus, finished: i64) -> LedgerRecord {
    LedgerRecord {
        trace_id: TraceId::random(),
        message_id: message_id.to_owned(),
        queue: Arc::from("orders"),
        adapter: Arc::from("mock"),
        event_name: None,
        tenant_id: None,
        dedup_key: None,
        target: None,
        status,
        settlement: SettlementKind::Ack,
        attempts: 0,
        duration_ms: 0.25,
        consume_latency_ms: None,
        agent_run_id: None,
        llm_calls: 0,
        agent_output: None,
        error: None,
        error_class: None,
        decision_reason: None,
        decision_policies: Vec::new(),
        retries: Vec::new(),
        received_at: at(finished - 1),
        finished_at: at(finished),
    }
}

/// A record with every optional field set.
pub fn full(message_id: &str, status: LedgerStatus, finished: i64) -> LedgerRecord {
    LedgerRecord {
        event_name: Some("order.created".into()),
        tenant_id: Some("acme".into()),
        dedup_key: Some(format!("dedup-{message_id}")),
        target: Some(Arc::from("billing")),
        settlement: SettlementKind::DeadLetter,
        attempts: u32::MAX,
        duration_ms: 1234.5678,
        consume_latency_ms: Some(0.001),
        agent_run_id: Some("run-7".into()),
        llm_calls: 3,
        agent_output: Some(serde_json::json!({"summary": "ok", "items": [1, 2.5, null, "ü"], "nested": {"a": true}})),
        error: Some("agent said no: 'quoted' \"double\" \\ back".into()),
        error_class: Some(ErrorClass::RateLimited),
        decision_reason: Some("tenant over budget".into()),
        decision_policies: vec!["budget".into(), "allow-list".into()],
        retries: vec![
            AttemptRecord {
                attempt: 1,
                class: ErrorClass::Timeout,
                reason: "timed out after 30s".into(),
                at: at(finished - 1),
                backoff_ms: Some(250),
            },
            AttemptRecord {
                attempt: 2,
                class: ErrorClass::Permanent,
                reason: "bad input".into(),
                at: at(finished),
                backoff_ms: None,
            },
        ],
        ..minimal(message_id, status, finished)
    }
}
