//! Engine throughput and latency: mock source, no-op agent, in-memory dedup and ledger,
//! 200-byte JSON messages with 10% duplicates. Run with `cargo xtask bench engine`, which
//! records the figures in docs/benchmarks.md. Prints one JSON line per configuration.

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_adapter_mock::MockQueue;
use qt_core::config::{Config, LedgerConfig, MockSourceConfig, SourceConfig};
use qt_core::{
    AgentError, AgentEvent, AgentRun, AgentRuntime, Ledger, LedgerError, LedgerRecord, RawMessage, SourceInfo,
};
use qt_engine::QueueTrigger;

// The same allocator as the `qt` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug)]
struct NoOpAgent;

#[async_trait]
impl AgentRuntime for NoOpAgent {
    async fn trigger_event(&self, _event: &AgentEvent) -> Result<AgentRun, AgentError> {
        Ok(AgentRun::default())
    }
}

/// An in-memory ledger that keeps only each record's processing time (receive to ledger),
/// which is what the latency figures are made of.
#[derive(Debug, Default)]
struct LatencyLedger {
    durations_ms: Mutex<Vec<f32>>,
}

#[async_trait]
impl Ledger for LatencyLedger {
    async fn record_batch(&self, records: Vec<LedgerRecord>) -> Result<(), LedgerError> {
        let mut d = self.durations_ms.lock();
        d.extend(records.iter().map(|r| r.duration_ms as f32));
        Ok(())
    }
}

const BODY_BYTES: usize = 200;

/// `n` messages; every tenth repeats the dedup key of a message 1,000 places earlier, far
/// enough back that it has finished (a duplicate of one still running is deferred instead).
fn messages(n: usize) -> Vec<RawMessage> {
    let source = SourceInfo::new("mock", "bench");
    (0..n)
        .map(|i| {
            let key = if i % 10 == 9 && i >= 1000 { i - 1000 + 1 } else { i };
            // The tenant follows the key, so a repeated key is a duplicate within its tenant.
            let tenant = key % 16;
            let mut body =
                format!(r#"{{"type":"order.created","order_id":"{key}","tenant":"t{tenant}","items":[1,2,3],"note":""#);
            while body.len() < BODY_BYTES - 2 {
                body.push('x');
            }
            body.push_str("\"}");
            let mut m = RawMessage::new(format!("m{i}"), body.into_bytes(), source.clone());
            m.headers.insert("x-dedup-key", format!("k{key}"));
            m.headers.insert("x-tenant-id", format!("t{tenant}"));
            m
        })
        .collect()
}

/// CPU time (user + system) this process has used so far, from /proc/self/stat: with other
/// work on the machine, CPU per message is the figure that does not depend on what else runs.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Linux reports these in USER_HZ, which is 100 on every mainstream configuration.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx])
}

async fn run_once(concurrency: usize, n: usize) -> serde_json::Value {
    let mut config = Config::with_source(SourceConfig::Mock(MockSourceConfig {
        queue: "bench".into(),
        file: None,
        dlq_file: None,
    }));
    config.processing.concurrency = concurrency;
    config.processing.batch_size = 256;
    if let Some(m) = std::env::var("QT_BENCH_MAX_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.processing.max_in_flight = Some(m);
    }
    config.ledger = LedgerConfig::Memory;
    let queue = MockQueue::counting_only("bench");
    queue.enqueue_all(messages(n));
    let ledger = Arc::new(LatencyLedger::default());
    let trigger = QueueTrigger::builder(config)
        .adapter(Arc::new(queue.adapter()))
        .ledger(ledger.clone())
        .agent("noop", Arc::new(NoOpAgent))
        .build()
        .expect("bench configuration is valid");
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    trigger.start().await.expect("starts");
    tokio::time::timeout(Duration::from_secs(600), queue.wait_idle())
        .await
        .expect("drains");
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    trigger.stop().await.expect("stops");
    let m = trigger.metrics();
    assert_eq!(queue.acked_count(), n as u64, "every message is acked");
    let mut d = std::mem::take(&mut *ledger.durations_ms.lock());
    d.sort_unstable_by(f32::total_cmp);
    serde_json::json!({
        "concurrency": concurrency,
        "messages": n,
        "seconds": elapsed.as_secs_f64(),
        "messages_per_second": n as f64 / elapsed.as_secs_f64(),
        "cpu_seconds": cpu,
        "cpu_us_per_message": cpu * 1e6 / n as f64,
        "duplicates": m.dedup_hits,
        "p50_ms": percentile(&d, 0.50),
        "p99_ms": percentile(&d, 0.99),
        "max_ms": d.last().copied().unwrap_or(0.0),
    })
}

fn main() {
    let n: usize = std::env::var("QT_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A short warm-up so allocator and caches are in steady state.
    runtime.block_on(run_once(8, n / 20));
    for concurrency in [1, 8] {
        let result = runtime.block_on(run_once(concurrency, n));
        println!("{result}");
    }
}
