//! Engine throughput and latency: mock source, no-op agent, in-memory dedup and ledger,
//! 200-byte JSON messages with 10% duplicates. Run with `cargo xtask bench engine`, which
//! records the figures in docs/benchmarks.md. Prints one JSON line per configuration.
//!
//! At concurrency 8 it also runs with tracing on (`qt-telemetry`'s exporter, as the `qt`
//! binary sets it up) at sample ratios 0.01 and 1, exporting over OTLP/HTTP to a receiver in
//! this process that answers every export at once; the three take turns round by round. A
//! traced round ends once its spans are exported (or dropped), so their export is counted.

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use qt_adapter_mock::MockQueue;
use qt_bench_support::{LatencyLedger, NoOpAgent, mock_messages, percentile, process_cpu_seconds};
use qt_core::config::{Config, LedgerConfig, MockSourceConfig, SourceConfig};
use qt_engine::QueueTrigger;

// The same allocator as the `qt` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How far back a duplicate's original is. A duplicate of a message still in flight is
/// deferred (requeued after `duplicate_in_flight_delay`, seconds), not counted as a
/// duplicate; messages finish out of order within the in-flight window, and a straggler can
/// still be running a thousand messages later, so the original is far behind.
const DUPLICATE_DISTANCE: usize = 20_000;

/// An OTLP/HTTP receiver on a thread of its own that accepts every export; returns its URL.
fn start_receiver() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            // An empty body is an empty ExportTraceServiceResponse: everything accepted.
            let app = axum::Router::new().route("/v1/traces", axum::routing::post(|| async { "" }));
            axum::serve(listener, app).await.expect("serve");
        });
    });
    url
}

async fn run_once(concurrency: usize, n: usize, trace: Option<(f64, &str)>) -> serde_json::Value {
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
    queue.enqueue_all(mock_messages(n, DUPLICATE_DISTANCE));
    let ledger = Arc::new(LatencyLedger::default());
    let mut builder = QueueTrigger::builder(config.clone())
        .adapter(Arc::new(queue.adapter()))
        .ledger(ledger.clone())
        .agent("noop", Arc::new(NoOpAgent));
    let mut tracing = None;
    if let Some((ratio, endpoint)) = trace {
        config.observability.tracing.enabled = true;
        config.observability.tracing.endpoint = Some(qt_core::SecretUrl::new(endpoint));
        config.observability.tracing.sample_ratio = ratio;
        let t = qt_telemetry::Tracing::start(&config.observability.tracing).expect("tracing starts");
        builder = builder.tracer(qt_engine::TraceSettings {
            tracer: t.tracer(),
            sample_ratio: ratio,
            export_gate: Some(t.export_gate()),
        });
        tracing = Some(t);
    }
    let (dropped_before, exported_before, _) = qt_telemetry::span_counts();
    let trigger = builder.build().expect("bench configuration is valid");
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    trigger.start().await.expect("starts");
    tokio::time::timeout(Duration::from_secs(600), queue.wait_idle())
        .await
        .expect("drains");
    // Exporting the round's spans is part of its cost: the round ends when they are sent.
    if let Some(t) = &tracing {
        t.flush(Duration::from_secs(60)).await;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu_seconds() - cpu_before;
    trigger.stop().await.expect("stops");
    // What the exporter still holds goes before the next round, outside the measured time.
    if let Some(t) = tracing {
        t.shutdown(Duration::from_secs(30)).await;
    }
    let (dropped_after, exported_after, _) = qt_telemetry::span_counts();
    let m = trigger.metrics();
    assert_eq!(queue.acked_count(), n as u64, "every message is acked");
    let d = ledger.take_sorted();
    serde_json::json!({
        "concurrency": concurrency,
        "tracing": trace.map_or("off".to_owned(), |(ratio, _)| ratio.to_string()),
        "spans_exported": exported_after - exported_before,
        "spans_dropped": dropped_after - dropped_before,
        "traces_shed": m.traces_shed,
        "messages": n,
        "seconds": elapsed.as_secs_f64(),
        "messages_per_second": n as f64 / elapsed.as_secs_f64(),
        "cpu_seconds": cpu,
        "cpu_us_per_message": cpu * 1e6 / n as f64,
        "duplicates": m.dedup_hits,
        // Duplicates that met their original still in flight, and waited to run again.
        "deferred": m.processed.iter().find(|(s, _)| *s == "deferred").map_or(0, |(_, n)| *n),
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
    let receiver = start_receiver();
    // A short warm-up so allocator and caches are in steady state.
    runtime.block_on(run_once(8, n / 20, None));
    // Figures vary from run to run on a shared machine: each configuration runs ROUNDS times
    // and the median round is reported, with the range beside it. Configurations compared
    // with each other take turns round by round.
    const ROUNDS: usize = 3;
    let configurations: [(usize, Option<(f64, &str)>); 4] = [
        (1, None),
        (8, None),
        (8, Some((0.01, &receiver))),
        (8, Some((1.0, &receiver))),
    ];
    let mut rounds: Vec<Vec<serde_json::Value>> = vec![Vec::new(); configurations.len()];
    for _ in 0..ROUNDS {
        for (i, (concurrency, trace)) in configurations.iter().enumerate() {
            rounds[i].push(runtime.block_on(run_once(*concurrency, n, *trace)));
        }
    }
    let rate = |r: &serde_json::Value| r["messages_per_second"].as_f64().unwrap_or(0.0);
    for mut configuration in rounds {
        configuration.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
        let mut median = configuration[ROUNDS / 2].clone();
        median["rounds"] = ROUNDS.into();
        median["min_messages_per_second"] = rate(&configuration[0]).into();
        median["max_messages_per_second"] = rate(&configuration[ROUNDS - 1]).into();
        println!("{median}");
    }
}
