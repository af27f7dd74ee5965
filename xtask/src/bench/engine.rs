//! `cargo xtask bench engine`: the measuring code is `crates/qt-engine/benches/throughput.rs`.

use anyhow::Result;

use super::{machine_description, record_section, run_bench};

const GOAL_MESSAGES_PER_SECOND: f64 = 500_000.0;

pub fn run() -> Result<()> {
    let rows = run_bench("engine", "qt-engine", "throughput", &[])?.rows;
    let mut body = String::from(
        "## Engine\n\n\
         Mock source, no-op agent, in-memory idempotency store and ledger, 200-byte JSON messages \
         with 10% duplicate dedup keys (each repeating a key 20,000 messages back), batch size \
         256, max in flight 512 (the default). Each concurrency runs three times over a fresh \
         queue and store; the table shows the median round and the range of the three. Latency \
         is per message from receive to ledger record (parse, dedup claim, governance, agent, \
         claim completion). CPU is the process's user + system time per message.\n\n\
         | concurrency | messages | seconds | messages/s (median) | range of rounds | CPU µs/message | duplicates | deferred | p50 ms | p99 ms |\n\
         |---:|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        body.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {:.0} to {:.0} | {:.2} | {} | {} | {:.3} | {:.3} |\n",
            r["concurrency"],
            r["messages"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["messages_per_second"].as_f64().unwrap_or(0.0),
            r["min_messages_per_second"].as_f64().unwrap_or(0.0),
            r["max_messages_per_second"].as_f64().unwrap_or(0.0),
            r["cpu_us_per_message"].as_f64().unwrap_or(0.0),
            r["duplicates"],
            r["deferred"],
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
        ));
    }
    let best = rows
        .iter()
        .filter_map(|r| r["messages_per_second"].as_f64())
        .fold(0.0_f64, f64::max);
    let verdict = if best >= GOAL_MESSAGES_PER_SECOND {
        "meets"
    } else {
        "falls short of"
    };
    body.push_str(&format!(
        "\nThe best median, {best:.0} messages/s, {verdict} the goal of {GOAL_MESSAGES_PER_SECOND:.0}.\n"
    ));
    body.push_str(&format!(
        "\nCommand: `cargo xtask bench engine` (release profile). Machine: {}.\n\
         Goal: at least 500,000 messages/s; the Python implementation this replaces does about \
         20,000 on the same workload.\n",
        machine_description()
    ));
    record_section("engine", &body)
}
