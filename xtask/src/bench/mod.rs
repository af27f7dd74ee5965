//! `cargo xtask bench <which>`: runs one benchmark binary in release mode and records its
//! report in its own section of `docs/benchmarks.md`.

mod engine;
mod kafka;
mod rabbitmq;
mod redis;
mod sqs;

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;

#[derive(Clone, Copy, ValueEnum)]
pub enum Which {
    /// Consume throughput on RabbitMQ: qt (engine + adapter, no-op agent) next to plain lapin.
    Rabbitmq,
    /// Consume-process-commit on Kafka: qt (engine + adapter, no-op agent) next to plain rdkafka.
    Kafka,
    /// Engine throughput and latency: mock source, no-op agent, in-memory dedup and ledger.
    Engine,
    /// Engine throughput with the Redis idempotency store beside the in-memory one.
    Redis,
    /// Consume throughput on SQS (moto): qt (engine + adapter, no-op agent) next to plain aws-sdk-sqs.
    Sqs,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Rabbitmq => rabbitmq::run(),
        Which::Engine => engine::run(),
        Which::Kafka => kafka::run(),
        Which::Redis => redis::run(),
        Which::Sqs => sqs::run(),
    }
}

/// Replaces the section between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in
/// docs/benchmarks.md (appending it when absent), so each benchmark owns its section.
pub fn record_section(name: &str, body: &str) -> Result<()> {
    let path = Path::new("docs/benchmarks.md");
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\nFigures recorded by `cargo xtask bench <name>`; each section says the command and machine.\n".to_owned());
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{section}{}", &existing[..s], &existing[e + end.len()..]),
        _ => format!("{}\n{section}\n", existing.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

/// One line describing the machine a figure was measured on.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let rustc = crate::cmd::output("rustc", &["--version"]).unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem_gib} GiB RAM, {}", rustc.trim())
}
