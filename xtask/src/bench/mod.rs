//! `cargo xtask bench <which>`: runs one benchmark binary in release mode and records its
//! report in its own section of `docs/benchmarks.md`.

mod engine;
mod http;
mod kafka;
mod ledger;
mod rabbitmq;
mod redis;
mod sqs;

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde_json::Value;

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
    /// The `http` target through the `qt` binary (mock source, local server) next to a plain
    /// reqwest loop; the `command` target for contrast.
    Http,
    /// Engine throughput by ledger (memory, JSONL with fsync off and on, PostgreSQL) next to a
    /// plain tokio-postgres COPY loop writing the same rows.
    Ledger,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Rabbitmq => rabbitmq::run(),
        Which::Engine => engine::run(),
        Which::Kafka => kafka::run(),
        Which::Redis => redis::run(),
        Which::Sqs => sqs::run(),
        Which::Http => http::run(),
        Which::Ledger => ledger::run(),
    }
}

/// What a benchmark binary printed on stdout: one JSON object per line, each a run, and at
/// most one summary (an object with a `summary` field).
pub struct Report {
    pub rows: Vec<Value>,
    pub summary: Option<Value>,
}

impl Report {
    /// The summary, for benchmarks that must print one.
    pub fn summary(&self, name: &str) -> Result<&Value> {
        self.summary
            .as_ref()
            .with_context(|| format!("the {name} benchmark printed no summary line"))
    }
}

/// Runs `cargo bench -p <package> --bench <bench>` with `env` added. Its progress (stderr)
/// stays visible; its results are read from stdout.
pub fn run_bench(name: &str, package: &str, bench: &str, env: &[(&str, &str)]) -> Result<Report> {
    let args = ["bench", "--locked", "-p", package, "--bench", bench];
    let env_shown: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    eprintln!("$ {env_shown}cargo {}", args.join(" "));
    let out = Command::new("cargo")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start `cargo bench`")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the {name} benchmark failed ({}):\n{stdout}", out.status);
    }
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("the {name} benchmark printed a line that is not JSON"))?;
    let (summaries, rows): (Vec<Value>, Vec<Value>) = lines.into_iter().partition(|v| v.get("summary").is_some());
    anyhow::ensure!(!rows.is_empty(), "the {name} benchmark printed no runs:\n{stdout}");
    for r in &rows {
        eprintln!("{r}");
    }
    Ok(Report {
        rows,
        summary: summaries.into_iter().last(),
    })
}

/// Replaces the section between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in
/// docs/benchmarks.md (appending it when absent), so each benchmark owns its section.
pub fn record_section(name: &str, body: &str) -> Result<()> {
    let path = Path::new("docs/benchmarks.md");
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\nFigures recorded by `cargo xtask bench <name>`; each section says the command and machine.\n".to_owned());
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->");
    let updated = crate::cmd::replace_between(&existing, &start, &end, body)
        .unwrap_or_else(|| format!("{}\n{start}\n{}\n{end}\n", existing.trim_end(), body.trim_end()));
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
