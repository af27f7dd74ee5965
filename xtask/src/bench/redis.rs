//! `cargo xtask bench redis`: the measuring code is
//! `crates/qt-idempotency-redis/benches/engine_throughput.rs`.

use anyhow::Result;
use serde_json::Value;

use super::{machine_description, record_section, run_bench};

/// Messages per second the Redis store should sustain.
const GOAL: f64 = 100_000.0;

pub fn run() -> Result<()> {
    let rows = run_bench("Redis", "qt-idempotency-redis", "engine_throughput", &[])?.rows;

    let mut body = String::from(
        "## Redis idempotency store\n\n\
         Engine throughput with the Redis store beside the in-memory store, same workload, same \
         run: mock source, no-op agent, in-memory ledger, concurrency 8, 200-byte JSON messages \
         over 16 tenants with 10% duplicate dedup keys (each repeating a key 4,096 messages \
         earlier, so it is a duplicate rather than a key still in flight). Every message is \
         claimed and completed in the store. Redis is the local server on loopback, sharing the \
         two cores with the benchmark. The two stores take turns (first one, then the other, \
         alternating per round); latency is per message from receive to ledger record.\n\n\
         | batch size | store | median messages/s | Redis / memory |\n\
         |---:|---|---:|---:|\n",
    );
    let batches = distinct(&rows, "batch_size");
    let mut best_redis: f64 = 0.0;
    for batch in &batches {
        let memory = median(&rows, batch, "memory");
        let redis = median(&rows, batch, "redis");
        best_redis = best_redis.max(redis);
        body.push_str(&format!("| {batch} | memory | {memory:.0} | |\n"));
        body.push_str(&format!(
            "| {batch} | redis | **{redis:.0}** | {:.2} |\n",
            if memory > 0.0 { redis / memory } else { 0.0 }
        ));
    }
    body.push_str(&format!(
        "\nGoal: at least {GOAL:.0} messages/s with the Redis store. Best median here: {best_redis:.0} \
         messages/s, {}.\n",
        if best_redis >= GOAL {
            "goal met"
        } else {
            "goal **not met** on this machine (see below)"
        }
    ));

    body.push_str(
        "\nEvery run. Store calls are counted by a pass-through probe between engine and store: \
         calls, keys per call, and time per call as the engine waited for it (each Redis call \
         is one round trip). Redis CPU is the server's own CPU time (`INFO cpu`) per message; \
         its inverse is what Redis alone could serve at most with a whole core to itself. \
         Redis busy is that CPU time as a share of the run's wall time. Client CPU is the \
         benchmark process's (engine, store client, mock source) per message: with two cores, \
         client plus Redis CPU per message bounds what the machine can do at all.\n\n\
         | batch size | round | store | messages/s | p50 ms | p99 ms | claim calls | keys/claim | ms/claim | complete calls | keys/complete | ms/complete | connections | client CPU µs/msg | Redis CPU µs/msg | Redis ceiling msg/s | Redis busy |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        let (c, k) = (&r["claim_batch"], &r["complete_batch"]);
        let cpu = r["redis_cpu_us_per_message"].as_f64();
        let dash = || "-".to_owned();
        body.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {:.1} | {:.3} | {} | {:.1} | {:.3} | {} | {:.1} | {} | {} | {} |\n",
            r["batch_size"],
            r["round"],
            r["store"].as_str().unwrap_or("?"),
            num(&r["messages_per_second"]),
            num(&r["p50_ms"]),
            num(&r["p99_ms"]),
            c["calls"],
            num(&c["keys_per_call"]),
            num(&c["ms_per_call"]),
            k["calls"],
            num(&k["keys_per_call"]),
            num(&k["ms_per_call"]),
            r.get("connections_opened").map_or_else(dash, ToString::to_string),
            num(&r["client_cpu_us_per_message"]),
            cpu.map_or_else(dash, |v| format!("{v:.1}")),
            cpu.filter(|v| *v > 0.0)
                .map_or_else(dash, |v| format!("{:.0}", 1e6 / v)),
            r["redis_busy"].as_f64().map_or_else(dash, |v| format!("{v:.2}")),
        ));
    }
    body.push_str(&format!(
        "\nCommand: `cargo xtask bench redis` (release profile; `QT_BENCH_MESSAGES`, default \
         200000, and `QT_BENCH_ROUNDS`, default 3, size it). Machine: {}.\n",
        machine_description()
    ));
    record_section("redis", &body)
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn distinct(rows: &[Value], field: &str) -> Vec<u64> {
    let mut out: Vec<u64> = rows.iter().filter_map(|r| r[field].as_u64()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn median(rows: &[Value], batch: &u64, store: &str) -> f64 {
    let mut v: Vec<f64> = rows
        .iter()
        .filter(|r| r["batch_size"].as_u64() == Some(*batch) && r["store"] == store)
        .map(|r| num(&r["messages_per_second"]))
        .collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
