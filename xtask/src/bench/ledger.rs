//! `cargo xtask bench ledger`: the measuring code is
//! `crates/qt-ledger-postgres/benches/ledger_throughput.rs`.

use anyhow::{Context, Result};

use super::{machine_description, record_section, run_bench};

const GOAL_MESSAGES_PER_SECOND: f64 = 150_000.0;
const GOAL_SHARE_OF_PLAIN: f64 = 0.8;

pub fn run() -> Result<()> {
    let rows = run_bench("ledger", "qt-ledger-postgres", "ledger_throughput", &[])?.rows;
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let rate_of = |name: &str| {
        rows.iter()
            .find(|r| r["ledger"] == name)
            .map(|r| f(r, "messages_per_second"))
            .with_context(|| format!("the ledger benchmark printed no {name} row"))
    };
    let mut body = String::from(
        "## Ledgers\n\n\
         Engine throughput by ledger, the engine benchmark's workload otherwise (mock source, \
         no-op agent, in-memory idempotency store, 200-byte JSON messages with 10% duplicates, \
         concurrency 8, batch size 256): memory, JSONL with `fsync: false` and `fsync: true` \
         (group commit), and PostgreSQL (the machine's server on loopback, sharing the two cores; \
         default pool of 4 connections; one binary COPY per batch in one transaction). Beside \
         them, the ceiling for PostgreSQL: a plain tokio-postgres loop with no engine writing a \
         memory round's records to the same table with binary COPY, 256 rows per transaction, \
         over 4 connections. Every round starts with an empty ledger; the configurations take \
         turns round by round, three rounds each; the table shows the median round and the \
         range. CPU is the benchmark process's (PostgreSQL's own is not counted).\n\n\
         | ledger | messages | messages/s (median) | range of rounds | CPU µs/message |\n\
         |---|---:|---:|---|---:|\n",
    );
    for r in &rows {
        body.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} to {:.0} | {:.2} |\n",
            r["ledger"].as_str().unwrap_or("?"),
            r["messages"],
            f(r, "messages_per_second"),
            f(r, "min_messages_per_second"),
            f(r, "max_messages_per_second"),
            f(r, "cpu_us_per_message"),
        ));
    }
    let postgres = rate_of("postgres")?;
    let plain = rate_of("plain COPY loop (no engine)")?;
    let (memory, fsync_off, fsync_on) = (
        rate_of("memory")?,
        rate_of("jsonl, fsync off")?,
        rate_of("jsonl, fsync on")?,
    );
    let share = if plain > 0.0 { postgres / plain } else { 0.0 };
    let verdict = |ok: bool| if ok { "meets" } else { "falls short of" };
    body.push_str(&format!(
        "\nfsync's cost: the JSONL ledger with `fsync: true` runs at {:.2} of its rate with \
         `fsync: false` ({:.2} of the memory ledger's).\n\
         With the PostgreSQL ledger, {postgres:.0} messages/s {} the goal of \
         {GOAL_MESSAGES_PER_SECOND:.0}, and is {share:.2} of the plain loop's {plain:.0}, which {} \
         the goal of {GOAL_SHARE_OF_PLAIN}.\n\n\
         Command: `cargo xtask bench ledger` (release profile; `QT_BENCH_LEDGER_MESSAGES` changes \
         the message count, `QT_BENCH_POSTGRES_URL` the server). Machine: {}.\n\
         Goals: at least 150,000 messages/s with the PostgreSQL ledger, and at least 0.8 of the \
         plain loop.\n",
        if fsync_off > 0.0 { fsync_on / fsync_off } else { 0.0 },
        if memory > 0.0 { fsync_on / memory } else { 0.0 },
        verdict(postgres >= GOAL_MESSAGES_PER_SECOND),
        verdict(share >= GOAL_SHARE_OF_PLAIN),
        machine_description()
    ));
    record_section("ledger", &body)
}
