//! `cargo xtask bench engine`: the measuring code is `crates/qt-engine/benches/throughput.rs`.

use anyhow::{Context, Result};
use serde_json::Value;

use super::{machine_description, record_section};

pub fn run() -> Result<()> {
    let stdout = crate::cmd::output(
        "cargo",
        &["bench", "--locked", "-p", "qt-engine", "--bench", "throughput"],
    )?;
    let rows: Vec<Value> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("the engine benchmark printed a line that is not JSON")?;
    anyhow::ensure!(!rows.is_empty(), "the engine benchmark printed no results:\n{stdout}");
    let mut body = String::from(
        "## Engine\n\n\
         Mock source, no-op agent, in-memory idempotency store and ledger, 200-byte JSON messages \
         with 10% duplicate dedup keys, batch size 256. Latency is per message from receive to \
         ledger record (parse, dedup claim, governance, agent, claim completion).\n\n\
         | concurrency | messages | seconds | messages/s | duplicates | p50 ms | p99 ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        body.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {} | {:.3} | {:.3} |\n",
            r["concurrency"],
            r["messages"],
            r["seconds"].as_f64().unwrap_or(0.0),
            r["messages_per_second"].as_f64().unwrap_or(0.0),
            r["duplicates"],
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
        ));
        eprintln!("{r}");
    }
    body.push_str(&format!(
        "\nCommand: `cargo xtask bench engine` (release profile). Machine: {}.\n\
         Goal: at least 500,000 messages/s; the Python implementation this replaces does about \
         20,000 on the same workload.\n",
        machine_description()
    ));
    record_section("engine", &body)
}
