//! Engine throughput with the Redis idempotency store beside the in-memory one, on the same
//! workload: mock source, no-op agent, in-memory ledger, 200-byte JSON messages with 10%
//! duplicate dedup keys. Run with `cargo xtask bench redis`, which records the figures in
//! docs/benchmarks.md. Prints one JSON line per configuration.
//!
//! Both stores are wrapped in a probe that counts the engine's store calls and the keys in
//! each, so a figure below the goal comes with its explanation: how many keys the engine
//! puts in one batch, how many round trips that makes, and how long they take.
//!
//! Redis: `QT_BENCH_REDIS_URL`, else `QT_TEST_REDIS_URL`, else `redis://127.0.0.1:6379`.
//! Every run uses its own key prefix and deletes its keys afterwards. `QT_BENCH_MESSAGES`
//! (default 200,000) and `QT_BENCH_ROUNDS` (default 3) size it; the rounds alternate which
//! store goes first, so a busy spell of a shared machine hits both.

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qt_adapter_mock::MockQueue;
use qt_bench_support::{LatencyLedger, NoOpAgent, is_duplicate, mock_messages, percentile, process_cpu_seconds};
use qt_core::config::{Config, LedgerConfig, MockSourceConfig, RedisStoreConfig, SourceConfig};
use qt_core::{Claim, ClaimState, ClaimToken, Health, IdempotencyKey, IdempotencyStore, StoreError};
use qt_engine::QueueTrigger;
use qt_engine::builtin::memory_store::MemoryStore;
use qt_idempotency_redis::RedisStore;

// The allocator of the `qt` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls, keys and time spent for one kind of store call.
#[derive(Debug, Default)]
struct CallStats {
    calls: AtomicU64,
    keys: AtomicU64,
    micros: AtomicU64,
}

impl CallStats {
    fn add(&self, keys: usize, started: Instant) {
        self.calls.fetch_add(1, Relaxed);
        self.keys.fetch_add(keys as u64, Relaxed);
        self.micros.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        let calls = self.calls.load(Relaxed);
        let keys = self.keys.load(Relaxed);
        let micros = self.micros.load(Relaxed);
        let per_call = |v: u64| if calls == 0 { 0.0 } else { v as f64 / calls as f64 };
        serde_json::json!({
            "calls": calls,
            "keys_per_call": per_call(keys),
            "ms_per_call": per_call(micros) / 1000.0,
        })
    }
}

/// Passes every call through to the store and counts it.
#[derive(Debug)]
struct Probe {
    inner: Arc<dyn IdempotencyStore>,
    claims: CallStats,
    completes: CallStats,
    releases: CallStats,
}

impl Probe {
    fn new(inner: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            inner,
            claims: CallStats::default(),
            completes: CallStats::default(),
            releases: CallStats::default(),
        }
    }
}

#[async_trait]
impl IdempotencyStore for Probe {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim, StoreError> {
        let started = Instant::now();
        let r = self.inner.claim(key, lease).await;
        self.claims.add(1, started);
        r
    }

    async fn claim_batch(&self, keys: Vec<IdempotencyKey>, lease: Duration) -> Result<Vec<Claim>, StoreError> {
        let started = Instant::now();
        let asked = keys.len();
        let r = self.inner.claim_batch(keys, lease).await;
        self.claims.add(asked, started);
        r
    }

    async fn complete(&self, token: &ClaimToken, window: Duration) -> Result<ClaimState, StoreError> {
        let started = Instant::now();
        let r = self.inner.complete(token, window).await;
        self.completes.add(1, started);
        r
    }

    async fn complete_batch(&self, tokens: &[ClaimToken], window: Duration) -> Result<Vec<ClaimState>, StoreError> {
        let started = Instant::now();
        let r = self.inner.complete_batch(tokens, window).await;
        self.completes.add(tokens.len(), started);
        r
    }

    async fn release(&self, token: &ClaimToken) -> Result<ClaimState, StoreError> {
        let started = Instant::now();
        let r = self.inner.release(token).await;
        self.releases.add(1, started);
        r
    }

    async fn release_batch(&self, tokens: &[ClaimToken]) -> Result<Vec<ClaimState>, StoreError> {
        let started = Instant::now();
        let r = self.inner.release_batch(tokens).await;
        self.releases.add(tokens.len(), started);
        r
    }

    async fn health(&self) -> Health {
        self.inner.health().await
    }
}

const CONCURRENCY: usize = 8;

/// How far back a duplicate's original is.
const DUPLICATE_DISTANCE: usize = 4096;

fn expected_duplicates(n: usize) -> u64 {
    (0..n).filter(|i| is_duplicate(*i, DUPLICATE_DISTANCE)).count() as u64
}

#[derive(Clone, Copy, Debug)]
enum StoreKind {
    Memory,
    Redis,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        }
    }
}

fn redis_url() -> String {
    std::env::var("QT_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("QT_TEST_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn redis_config(url: &str, pool_size: usize) -> RedisStoreConfig {
    let mut cfg = RedisStoreConfig::new(url);
    cfg.pool_size = pool_size;
    cfg
}

async fn run_once(kind: StoreKind, batch_size: usize, pool_size: usize, n: usize) -> serde_json::Value {
    let mut config = Config::with_source(SourceConfig::Mock(MockSourceConfig {
        queue: "bench".into(),
        file: None,
        dlq_file: None,
    }));
    config.processing.concurrency = CONCURRENCY;
    config.processing.batch_size = batch_size;
    config.ledger = LedgerConfig::Memory;
    let prefix = format!("qt-bench-{:016x}", rand::random::<u64>());
    config.idempotency.key_prefix.clone_from(&prefix);

    let (inner, redis): (Arc<dyn IdempotencyStore>, Option<Arc<RedisStore>>) = match kind {
        StoreKind::Memory => (Arc::new(MemoryStore::new()), None),
        StoreKind::Redis => {
            let url = redis_url();
            let store = RedisStore::connect(&redis_config(&url, pool_size), &prefix, false)
                .await
                .unwrap_or_else(|e| {
                    panic!("the benchmark needs Redis at {url}: {e}\nstart it with `cargo xtask services up`")
                });
            let store = Arc::new(store);
            (store.clone(), Some(store))
        }
    };
    let probe = Arc::new(Probe::new(inner));

    let queue = MockQueue::counting_only("bench");
    queue.enqueue_all(mock_messages(n, DUPLICATE_DISTANCE));
    let ledger = Arc::new(LatencyLedger::default());
    let trigger = QueueTrigger::builder(config)
        .adapter(Arc::new(queue.adapter()))
        .ledger(ledger.clone())
        .idempotency_store(probe.clone())
        .agent("noop", Arc::new(NoOpAgent))
        .build()
        .expect("bench configuration is valid");
    let before = match &redis {
        Some(_) => Some(ServerStats::read(&redis_url()).await),
        None => None,
    };
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    trigger.start().await.expect("starts");
    tokio::time::timeout(Duration::from_secs(300), queue.wait_idle())
        .await
        .expect("drains within 5 minutes");
    let elapsed = started.elapsed();
    let client_cpu = process_cpu_seconds() - cpu_before;
    trigger.stop().await.expect("stops");
    let m = trigger.metrics();
    assert_eq!(queue.acked_count(), n as u64, "every message is acked");
    assert_eq!(m.idempotency_errors, 0, "the store never failed");
    let expected_duplicates = expected_duplicates(n);
    assert_eq!(
        m.dedup_hits, expected_duplicates,
        "every repeated key is caught: {:?} after {elapsed:?}",
        m.processed
    );

    let d = ledger.take_sorted();
    let mut row = serde_json::json!({
        "store": kind.name(),
        "batch_size": batch_size,
        "concurrency": CONCURRENCY,
        "messages": n,
        "seconds": elapsed.as_secs_f64(),
        "messages_per_second": n as f64 / elapsed.as_secs_f64(),
        "duplicates": m.dedup_hits,
        "p50_ms": percentile(&d, 0.50),
        "p99_ms": percentile(&d, 0.99),
        "client_cpu_us_per_message": client_cpu * 1e6 / n as f64,
    });
    row["claim_batch"] = probe.claims.json();
    row["complete_batch"] = probe.completes.json();
    row["release_batch"] = probe.releases.json();
    if let (Some(store), Some(before)) = (redis, before) {
        let after = ServerStats::read(&redis_url()).await;
        let cpu = after.cpu_seconds - before.cpu_seconds;
        row["pool_size"] = pool_size.into();
        row["connections_opened"] = store.open_connections().into();
        row["redis_cpu_seconds"] = cpu.into();
        row["redis_busy"] = (cpu / elapsed.as_secs_f64()).into();
        row["redis_script_us_per_message"] = ((after.script_usec - before.script_usec) / n as f64).into();
        row["redis_cpu_us_per_message"] = (cpu * 1e6 / n as f64).into();
        delete_keys(&redis_url(), &prefix).await;
    }
    row
}

/// What Redis itself spent: process CPU time (`INFO cpu`) and time inside `EVALSHA`
/// (`INFO commandstats`). Server-wide, so another client of the same Redis shows too.
struct ServerStats {
    cpu_seconds: f64,
    script_usec: f64,
}

impl ServerStats {
    async fn read(url: &str) -> Self {
        let client = redis::Client::open(url).expect("the URL parsed before");
        let mut conn = client.get_multiplexed_async_connection().await.expect("Redis is up");
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        let field = |line: &str, name: &str| -> Option<f64> {
            line.split([':', ','])
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        let mut stats = Self {
            cpu_seconds: 0.0,
            script_usec: 0.0,
        };
        for line in info.lines() {
            if let Some(v) = line
                .strip_prefix("used_cpu_user:")
                .or_else(|| line.strip_prefix("used_cpu_sys:"))
            {
                stats.cpu_seconds += v.trim().parse::<f64>().unwrap_or(0.0);
            }
            if line.starts_with("cmdstat_evalsha:") {
                stats.script_usec = field(line, "usec").unwrap_or(0.0);
            }
        }
        stats
    }
}

/// Deletes every key under `prefix`.
async fn delete_keys(url: &str, prefix: &str) {
    let client = redis::Client::open(url).expect("the URL parsed before");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is still up");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("UNLINK");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

fn main() {
    let n: usize = std::env::var("QT_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rounds: usize = std::env::var("QT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // `memory` or `redis` runs one side only, for profiling.
    let only = std::env::var("QT_BENCH_ONLY").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A short warm-up of both paths so allocator, caches and Redis are in steady state.
    runtime.block_on(run_once(StoreKind::Memory, 256, 16, n / 20));
    runtime.block_on(run_once(StoreKind::Redis, 256, 16, n / 20));
    for batch_size in [64, 256] {
        for round in 0..rounds {
            // Alternate who goes first, so a slow spell of the machine hits both sides.
            let order = if round % 2 == 0 {
                [StoreKind::Memory, StoreKind::Redis]
            } else {
                [StoreKind::Redis, StoreKind::Memory]
            };
            for kind in order
                .into_iter()
                .filter(|k| only.as_deref().is_none_or(|o| o == k.name()))
            {
                let mut row = runtime.block_on(run_once(kind, batch_size, 16, n));
                row["round"] = round.into();
                println!("{row}");
            }
        }
    }
}
