//! Engine throughput by ledger, and the ceiling for the PostgreSQL one. Run with
//! `cargo xtask bench ledger`, which records the figures in docs/benchmarks.md. Prints one
//! JSON line per configuration.
//!
//! The engine's workload is the engine benchmark's (mock source, no-op agent, in-memory
//! idempotency store, 200-byte JSON messages with 10% duplicates, batch size 256), with the
//! ledger varied: memory, JSONL with `fsync: false` and with `fsync: true`, and PostgreSQL
//! (the machine's, in a schema of its own, dropped at the end). Every round's ledger starts
//! empty.
//!
//! The ceiling is a plain tokio-postgres loop with no engine: the records of a memory round,
//! written to the same table with binary COPY, one transaction per 256 rows (as the engine's
//! batches), over as many connections as the ledger's pool. The configurations take turns
//! round by round, three rounds each; the median round is reported with the range.
//!
//! Environment: `QT_BENCH_LEDGER_MESSAGES` (default 200000), `QT_BENCH_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`).

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qt_adapter_mock::MockQueue;
use qt_bench_support::{NoOpAgent, env_or, median, mock_messages, process_cpu_seconds};
use qt_core::config::{Config, LedgerConfig, MockSourceConfig, PostgresLedgerConfig, SourceConfig};
use qt_core::{Ledger, LedgerRecord};
use qt_engine::QueueTrigger;
use qt_engine::builtin::jsonl_ledger::JsonlLedger;
use qt_engine::builtin::memory_ledger::MemoryLedger;
use qt_ledger_postgres::PostgresLedger;
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};

// The same allocator as the `qt` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 3;
/// `processing.batch_size` of the engine rounds, and rows per transaction in the plain loop.
const BATCH: usize = 256;
const CONCURRENCY: usize = 8;
/// How far back a duplicate's original is (as in the engine benchmark).
const DUPLICATE_DISTANCE: usize = 20_000;

#[derive(Clone, Copy, Debug)]
enum Sink {
    Memory,
    Jsonl {
        fsync: bool,
    },
    Postgres,
    /// The plain loop.
    PlainCopy,
}

impl Sink {
    fn name(self) -> &'static str {
        match self {
            Sink::Memory => "memory",
            Sink::Jsonl { fsync: false } => "jsonl, fsync off",
            Sink::Jsonl { fsync: true } => "jsonl, fsync on",
            Sink::Postgres => "postgres",
            Sink::PlainCopy => "plain COPY loop (no engine)",
        }
    }
}

struct Bench {
    n: usize,
    dir: tempfile::TempDir,
    postgres: PostgresLedgerConfig,
    /// A memory round's records, for the plain loop to write.
    records: Vec<LedgerRecord>,
}

/// One engine round over `ledger`; returns seconds and CPU seconds.
async fn engine_round(n: usize, ledger: Arc<dyn Ledger>) -> (f64, f64) {
    let mut config = Config::with_source(SourceConfig::Mock(MockSourceConfig {
        queue: "bench".into(),
        file: None,
        dlq_file: None,
    }));
    config.processing.concurrency = CONCURRENCY;
    config.processing.batch_size = BATCH;
    config.ledger = LedgerConfig::Memory;
    let queue = MockQueue::counting_only("bench");
    queue.enqueue_all(mock_messages(n, DUPLICATE_DISTANCE));
    let trigger = QueueTrigger::builder(config)
        .adapter(Arc::new(queue.adapter()))
        .ledger(ledger)
        .agent("noop", Arc::new(NoOpAgent))
        .build()
        .expect("bench configuration is valid");
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    trigger.start().await.expect("starts");
    tokio::time::timeout(Duration::from_secs(600), queue.wait_idle())
        .await
        .expect("drains");
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    trigger.stop().await.expect("stops");
    assert_eq!(queue.acked_count(), n as u64, "every message is acked");
    (elapsed, cpu)
}

impl Bench {
    async fn round(&mut self, sink: Sink) -> (f64, f64) {
        match sink {
            Sink::Memory => {
                let ledger = Arc::new(MemoryLedger::new());
                let timed = engine_round(self.n, ledger.clone()).await;
                if self.records.is_empty() {
                    self.records = ledger.records();
                }
                timed
            }
            Sink::Jsonl { fsync } => {
                let path = self.dir.path().join("ledger.jsonl");
                let _ = std::fs::remove_file(&path);
                let ledger = Arc::new(JsonlLedger::open(&path, fsync).expect("jsonl ledger opens"));
                engine_round(self.n, ledger).await
            }
            Sink::Postgres => {
                self.truncate().await;
                let ledger = Arc::new(
                    PostgresLedger::connect(&self.postgres, false)
                        .await
                        .expect("postgres ledger connects"),
                );
                let timed = engine_round(self.n, ledger).await;
                assert_eq!(self.rows().await, self.n as i64, "one row per message");
                timed
            }
            Sink::PlainCopy => {
                self.truncate().await;
                let timed = self.plain_copy().await;
                assert_eq!(self.rows().await, self.records.len() as i64, "one row per record");
                timed
            }
        }
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(self.postgres.url.expose(), NoTls)
            .await
            .expect("PostgreSQL at QT_BENCH_POSTGRES_URL answers");
        tokio::spawn(connection);
        client
    }

    fn table(&self) -> String {
        format!("\"{}\".\"{}\"", self.postgres.schema, self.postgres.table)
    }

    async fn truncate(&self) {
        let client = self.client().await;
        // The table exists once the ledger has migrated; the first round makes it.
        let _ = client.batch_execute(&format!("TRUNCATE {}", self.table())).await;
    }

    async fn rows(&self) -> i64 {
        let client = self.client().await;
        client
            .query_one(&format!("SELECT count(*) FROM {}", self.table()), &[])
            .await
            .expect("count")
            .get(0)
    }

    /// The records written by `pool_size` connections, `BATCH` rows per COPY and transaction.
    async fn plain_copy(&self) -> (f64, f64) {
        let records = Arc::new(self.records.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let sql = format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            self.table(),
            COLUMNS.join(", ")
        );
        let mut clients = Vec::new();
        for _ in 0..self.postgres.pool_size {
            clients.push(self.client().await);
        }
        let started = Instant::now();
        let cpu_before = process_cpu_seconds();
        let writers: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                let (records, next, sql) = (records.clone(), next.clone(), sql.clone());
                tokio::spawn(async move {
                    loop {
                        let start = next.fetch_add(BATCH, Ordering::Relaxed);
                        if start >= records.len() {
                            return;
                        }
                        let batch = &records[start..(start + BATCH).min(records.len())];
                        let tx = client.transaction().await.expect("begin");
                        let sink = tx.copy_in(&sql).await.expect("copy");
                        let writer = BinaryCopyInWriter::new(sink, &TYPES);
                        let mut writer = std::pin::pin!(writer);
                        for r in batch {
                            writer.as_mut().write(&Row::of(r).values()).await.expect("row");
                        }
                        writer.finish().await.expect("copy ends");
                        tx.commit().await.expect("commit");
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        (started.elapsed().as_secs_f64(), process_cpu_seconds() - cpu_before)
    }
}

/// The ledger table's columns in COPY order, and their types.
const COLUMNS: [&str; 23] = [
    "trace_id",
    "message_id",
    "queue",
    "adapter",
    "event_name",
    "tenant_id",
    "dedup_key",
    "target",
    "status",
    "settlement",
    "attempts",
    "duration_ms",
    "consume_latency_ms",
    "agent_run_id",
    "llm_calls",
    "agent_output",
    "error",
    "error_class",
    "decision_reason",
    "decision_policies",
    "retries",
    "received_at",
    "finished_at",
];
const TYPES: [Type; 23] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT,
    Type::INT8,
    Type::JSONB,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
];

/// One record's column values, written the plain way.
struct Row<'a> {
    r: &'a LedgerRecord,
    trace_id: String,
    queue: &'a str,
    adapter: &'a str,
    target: Option<&'a str>,
    status: &'static str,
    settlement: String,
    attempts: i64,
    llm_calls: i64,
    agent_output: Option<Json<&'a serde_json::Value>>,
    error_class: Option<String>,
    decision_policies: Json<&'a [String]>,
    retries: Json<&'a [qt_core::ledger::AttemptRecord]>,
}

impl<'a> Row<'a> {
    fn of(r: &'a LedgerRecord) -> Self {
        Self {
            r,
            trace_id: r.trace_id.to_string(),
            queue: &r.queue,
            adapter: &r.adapter,
            target: r.target.as_deref(),
            status: r.status.as_str(),
            settlement: serde_name(&r.settlement).unwrap_or_default(),
            attempts: i64::from(r.attempts),
            llm_calls: i64::from(r.llm_calls),
            agent_output: r.agent_output.as_ref().map(Json),
            error_class: r.error_class.as_ref().and_then(serde_name),
            decision_policies: Json(&r.decision_policies),
            retries: Json(&r.retries),
        }
    }

    fn values(&self) -> [&(dyn ToSql + Sync); 23] {
        let r = self.r;
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

/// How serde names a unit variant: what the ledger stores for an enum.
fn serde_name(value: &impl serde::Serialize) -> Option<String> {
    serde_json::to_value(value).ok()?.as_str().map(str::to_owned)
}

fn main() {
    let n = env_or("QT_BENCH_LEDGER_MESSAGES", 200_000usize);
    let url =
        std::env::var("QT_BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut postgres = PostgresLedgerConfig::new(url);
    postgres.schema = format!("qt_bench_{}", std::process::id());
    let mut bench = Bench {
        n,
        dir: tempfile::tempdir().expect("temp dir"),
        postgres,
        records: Vec::new(),
    };
    let sinks = [
        Sink::Memory,
        Sink::Jsonl { fsync: false },
        Sink::Jsonl { fsync: true },
        Sink::Postgres,
        Sink::PlainCopy,
    ];
    // A short warm-up, which also makes the table and the plain loop's records.
    runtime.block_on(async {
        bench.n = n / 10;
        bench.round(Sink::Memory).await;
        bench.round(Sink::Postgres).await;
        bench.n = n;
        bench.records.clear();
        bench.round(Sink::Memory).await;
    });
    let mut rounds: Vec<Vec<(f64, f64)>> = vec![Vec::new(); sinks.len()];
    for _ in 0..ROUNDS {
        for (i, sink) in sinks.iter().enumerate() {
            rounds[i].push(runtime.block_on(bench.round(*sink)));
        }
    }
    for (sink, timed) in sinks.iter().zip(rounds) {
        let messages = if matches!(sink, Sink::PlainCopy) {
            bench.records.len()
        } else {
            n
        };
        let rates: Vec<f64> = timed.iter().map(|(secs, _)| messages as f64 / secs).collect();
        let cpu: Vec<f64> = timed.iter().map(|(_, cpu)| cpu * 1e6 / messages as f64).collect();
        println!(
            "{}",
            serde_json::json!({
                "ledger": sink.name(),
                "messages": messages,
                "messages_per_second": median(rates.clone()),
                "min_messages_per_second": rates.iter().copied().fold(f64::INFINITY, f64::min),
                "max_messages_per_second": rates.iter().copied().fold(0.0, f64::max),
                "cpu_us_per_message": median(cpu),
            })
        );
    }
    runtime.block_on(async {
        let client = bench.client().await;
        client
            .batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", bench.postgres.schema))
            .await
            .expect("the bench schema is dropped");
    });
}
