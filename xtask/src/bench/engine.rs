//! `cargo xtask bench engine`: the measuring code is `crates/qt-engine/benches/throughput.rs`.

use anyhow::Result;

use super::{machine_description, record_section, run_bench};

const GOAL_MESSAGES_PER_SECOND: f64 = 500_000.0;
/// The least share of the tracing-off rate each sample ratio must keep.
const TRACING_GOALS: [(&str, f64); 2] = [("0.01", 0.95), ("1", 0.5)];

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
         At concurrency 8 it also runs with tracing on, at sample ratios 0.01 and 1: the \
         `qt-telemetry` exporter the `qt` binary uses, sending OTLP/HTTP to a receiver in the \
         benchmark process that accepts every export at once. Tracing off, 0.01 and 1 take turns \
         round by round; a traced round ends once its spans have been exported (the time and CPU \
         of exporting count). The spans exported and dropped (export queue full), and the \
         messages kept by the sampler but not traced because the export queue was nearly full \
         (traces shed), are the median round's.\n\n\
         | concurrency | tracing | messages | seconds | messages/s (median) | range of rounds | CPU µs/message | duplicates | deferred | p50 ms | p99 ms | spans exported | spans dropped | traces shed |\n\
         |---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        body.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} to {:.0} | {:.2} | {} | {} | {:.3} | {:.3} | {} | {} | {} |\n",
            r["concurrency"],
            r["tracing"].as_str().unwrap_or("off"),
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
            r["spans_exported"],
            r["spans_dropped"],
            r["traces_shed"],
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
    // Tracing's cost: each ratio against tracing off at the same concurrency, in the same run.
    let rate_at = |tracing: &str| {
        rows.iter()
            .find(|r| r["concurrency"] == 8 && r["tracing"] == tracing)
            .and_then(|r| r["messages_per_second"].as_f64())
    };
    if let Some(off) = rate_at("off") {
        for (ratio, goal) in TRACING_GOALS {
            if let Some(on) = rate_at(ratio) {
                let share = on / off;
                let verdict = if share >= goal { "meets" } else { "falls short of" };
                body.push_str(&format!(
                    "With tracing at sample ratio {ratio}, {on:.0} messages/s is {share:.2} of the rate with tracing off, \
                     which {verdict} the goal of {goal}.\n"
                ));
            }
        }
    }
    body.push_str(&format!(
        "\nCommand: `cargo xtask bench engine` (release profile). Machine: {}.\n\
         Goals: at least 500,000 messages/s (the Python implementation this replaces does about \
         20,000 on the same workload); with tracing at ratio 0.01 at least 0.95 of the rate \
         with tracing off, at ratio 1 at least 0.5.\n",
        machine_description()
    ));
    record_section("engine", &body)
}
