//! `cargo xtask bench rabbitmq`: the measuring code is
//! `crates/qt-adapter-rabbitmq/benches/throughput.rs`; it needs the local RabbitMQ
//! (`cargo xtask services up`).

use anyhow::Result;
use serde_json::Value;

use super::{machine_description, record_section, run_bench};

/// The 1-minute load average, to say how busy the shared machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

pub fn run() -> Result<()> {
    let load_before = load_average();
    let report = run_bench("rabbitmq", "qt-adapter-rabbitmq", "throughput", &[])?;
    let (rows, summary) = (report.rows.as_slice(), report.summary("rabbitmq")?);
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let ratio = num(summary, "ratio");
    let mut body = format!(
        "## RabbitMQ\n\n\
         Draining a pre-loaded durable classic queue of {messages} persistent ~200-byte JSON messages \
         (message id, dedup key and tenant headers) from the local broker, which shares the machine. \
         **qt**: the engine with the RabbitMQ adapter, a no-op agent, the in-memory idempotency store \
         (every message claimed and completed) and the in-memory ledger; concurrency {concurrency}, \
         batch size {batch}, max in flight = prefetch = {prefetch}; its adapter sends the acks of \
         neighbouring deliveries settled together as one `basic.ack(multiple=true)`. **lapin**: a plain lapin consumer \
         with the same prefetch sending one basic.ack per delivery, either awaiting each ack before \
         taking the next delivery (lapin's own example loop) or with the acks pipelined. Each drain \
         gets a fresh queue filled with the same messages; the consumers take turns ({rounds} rounds, \
         rotating who goes first), each timed from connecting to its last ack. CPU is this process's \
         user + system time during the drain (the broker's is not included).\n\n\
         | round | consumer | seconds | messages/s | client CPU µs/message |\n|---:|---|---:|---:|---:|\n",
        messages = summary["messages"],
        concurrency = summary["concurrency"],
        batch = summary["batch_size"],
        prefetch = summary["prefetch"],
        rounds = summary["rounds"],
    );
    for r in rows {
        body.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {} |\n",
            r["round"],
            r["side"].as_str().unwrap_or("?"),
            num(r, "seconds"),
            num(r, "messages_per_second"),
            r["cpu_us_per_message"]
                .as_f64()
                .map_or("n/a".to_owned(), |c| format!("{c:.1}")),
        ));
    }
    let round_ratios: Vec<String> = summary["round_ratios"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).map(|r| format!("{r:.2}")).collect())
        .unwrap_or_default();
    body.push_str(&format!(
        "\nMedians: qt {:.0} messages/s; lapin {:.0} (acks awaited), {:.0} (acks pipelined).\n\n\
         **Ratio qt / faster lapin: {:.2}** (goal: at least 0.8): the median of each round's own ratio \
         ({}), as the drains of one round run back to back under the same load. Ratio of the medians: \
         {:.2}.\n\n\
         The broker runs on the same machine, so every consumer is mostly bound by it and figures vary \
         from round to round; the 1-minute load average was {load_before} before the run and {} after.\n\n\
         Command: `cargo xtask bench rabbitmq` (release profile). Machine: {}.\n",
        num(summary, "qt_median_messages_per_second"),
        num(summary, "lapin_median_messages_per_second"),
        num(summary, "lapin_pipelined_median_messages_per_second"),
        ratio,
        round_ratios.join(", "),
        num(summary, "ratio_of_medians"),
        load_average(),
        machine_description()
    ));
    eprintln!("{summary}");
    record_section("rabbitmq", &body)
}
