//! `cargo xtask bench kafka`: the measuring code is
//! `crates/qt-adapter-kafka/benches/throughput.rs`; it needs the Kafka-protocol broker
//! (Nisshi), which this starts when it is not running.

use anyhow::{Context, Result};
use serde_json::Value;

use super::{machine_description, record_section, run_bench};
use crate::services;

pub fn run() -> Result<()> {
    let broker = services::all()
        .into_iter()
        .find(|s| s.env.0 == "QT_TEST_KAFKA_BROKERS")
        .context("no Kafka broker among the services")?;
    if !services::reachable(broker.addr) {
        eprintln!("xtask: starting {} on {}", broker.name, broker.addr);
        (broker.ensure)()?;
        services::wait_reachable(broker.name, broker.addr, std::time::Duration::from_secs(60))?;
    }
    let report = run_bench("kafka", "qt-adapter-kafka", "throughput", &[broker.env])?;
    let (rows, summary) = (report.rows.as_slice(), report.summary("kafka")?);
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut body = format!(
        "## Kafka\n\n\
         Consume-process-commit of a topic pre-filled with {messages} ~200-byte JSON messages (key, \
         dedup key and tenant headers) in {partitions} partitions, on the local Kafka-protocol broker \
         (Nisshi, in-memory storage), which shares the machine. **qt**: the engine with the Kafka \
         adapter, a no-op agent, the in-memory idempotency store (every message claimed and \
         completed; sized for the run's keys with `capacity`, as a long-running instance's store \
         is once it has held one window) and the in-memory ledger, which counts every record and \
         drops it at once, as a ledger writing records out does (keeping the last ten thousand \
         measured that retention instead: each record freed long after, on another core); concurrency {concurrency}, batch size {batch}, max in \
         flight {in_flight} (eight batches; at the engine's default of two, qt reads about 15% \
         less here, its consumer buffering a quarter as many messages between the broker's \
         bursts of fetches); offsets committed every second once finished. \
         **rdkafka**: the minimal \
         hand-written at-least-once consumer, a `BaseConsumer` that parses each body as JSON and \
         stores its offset (`enable.auto.offset.store=false`, auto-commit every second), fetching \
         like qt (`fetch.queue.backoff.ms=100`, qt's default); **rdkafka-defaults**: the same \
         consumer at librdkafka's defaults (a 1 s fetch queue backoff, which idles a consumer that \
         drains its prefetch queue faster than that), for reference. Each drain \
         reads the whole topic in a consumer group of its own and is timed from its first message \
         to its last finished one (the group join before is the broker's, alike for both); every \
         drain is checked to have committed the end of every partition. The sides take turns, \
         {rounds} rounds. CPU is the process's user and system time per message, by thread kind \
         (the plain consumer polls on a tokio blocking thread, counted with the workers); \
         \"batch\" is the mean number of messages the engine took per receive.\n\n\
         | round | consumer | seconds | messages/s | CPU µs/message | of which librdkafka | of which qt's consumer thread | of which tokio workers | batch |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        messages = summary["messages"],
        partitions = summary["partitions"],
        concurrency = summary["concurrency"],
        batch = summary["batch_size"],
        in_flight = summary["max_in_flight"],
        rounds = summary["rounds"],
    );
    for r in rows {
        body.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {} |\n",
            r["round"],
            r["side"].as_str().unwrap_or("?"),
            num(r, "seconds"),
            num(r, "messages_per_second"),
            num(r, "cpu_us_per_message"),
            num(&r["cpu_us_per_message_by_thread"], "librdkafka"),
            optional(&r["cpu_us_per_message_by_thread"]["adapter_consumer_thread"], 2),
            num(&r["cpu_us_per_message_by_thread"], "tokio_workers"),
            optional(&r["mean_receive_batch"], 0),
        ));
    }
    body.push_str(&format!(
        "\nMedian: qt {:.0} messages/s, plain rdkafka fetching alike {:.0} messages/s, **ratio {:.2}** \
         (goal: at least 0.7); plain rdkafka at librdkafka's defaults {:.0} messages/s.\n\n\
         Command: `cargo xtask bench kafka` (release profile). Machine: {}.\n",
        num(summary, "qt_median_messages_per_second"),
        num(summary, "rdkafka_median_messages_per_second"),
        num(summary, "ratio"),
        num(summary, "rdkafka_defaults_median_messages_per_second"),
        machine_description()
    ));
    eprintln!("{summary}");
    record_section("kafka", &body)
}

/// A figure only some sides have: `-` for the others.
fn optional(v: &Value, decimals: usize) -> String {
    v.as_f64().map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}
