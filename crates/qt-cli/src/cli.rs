//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use qt_core::{LedgerStatus, TraceId};

#[derive(Debug, Parser)]
#[command(
    name = "qt",
    version,
    about = "qt: a queue trigger runtime — consume, de-duplicate, govern, run agents, settle, audit"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the trigger until SIGINT/SIGTERM (graceful drain), or until idle.
    Run(RunArgs),
    /// Check a configuration: every problem with its path, or the source's capabilities
    /// (what it can and cannot do) and the effective configuration with secrets masked.
    Validate(ConfigArg),
    /// Publish one message to the configured source (for the mock source: into a running
    /// `qt run` of the same configuration, through its admin server).
    Send(SendArgs),
    /// Pause the running `qt run` of this configuration, through its admin server: it takes
    /// no new message, and messages already taken finish. The broker connection stays open.
    Pause(ConfigArg),
    /// Resume a paused `qt run` of this configuration, through its admin server.
    Resume(ConfigArg),
    /// Read the audit ledger the configuration writes (`jsonl` or `postgres`).
    Ledger(LedgerArgs),
    /// Inspect, replay and purge the dead letters of the configured source.
    Dlq(DlqArgs),
    /// The configuration format itself.
    Config(ConfigArgs),
    /// Started by `qt run` itself: ends its command agents' process groups if it dies.
    #[command(name = "reap-agents", hide = true)]
    ReapAgents,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The dead letters that match, oldest first. Listing changes nothing in the dead-letter
    /// destination.
    List(DlqListArgs),
    /// One dead letter, by its id in the dead-letter destination or its original message id.
    Show(DlqShowArgs),
    /// Publish matching dead letters back to their original queue (or `--to`). Each leaves
    /// the dead-letter destination only after the broker confirmed the publish, so an
    /// interrupted replay loses nothing.
    Replay(DlqReplayArgs),
    /// Delete matching dead letters for good.
    Purge(DlqPurgeArgs),
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub session: DlqSessionArg,
    #[command(flatten)]
    pub filter: LetterFilter,
    /// Most letters listed: the oldest that match.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    #[command(flatten)]
    pub output: LetterOutput,
}

#[derive(Debug, Args)]
pub struct DlqShowArgs {
    #[command(flatten)]
    pub session: DlqSessionArg,
    /// The letter's id in the dead-letter destination (as `qt dlq list` prints it: Kafka
    /// `partition:offset`, the RabbitMQ or SQS message id, the mock letter's id), or its
    /// original message id.
    pub id: String,
    #[command(flatten)]
    pub output: LetterOutput,
}

#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    #[command(flatten)]
    pub session: DlqSessionArg,
    #[command(flatten)]
    pub filter: LetterFilter,
    /// Most letters replayed (and skipped): the oldest that match. Unset: all of them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Publish to this queue or topic of the same broker instead of each letter's original
    /// queue.
    #[arg(long, value_name = "QUEUE")]
    pub to: Option<String>,
    /// Letters already replayed this many times are skipped and reported (a loop guard),
    /// unless `--force`.
    #[arg(long, default_value_t = 3)]
    pub max_replays: u32,
    /// Replay letters at or over `--max-replays` too.
    #[arg(long)]
    pub force: bool,
    /// Say what would be replayed and skipped, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many letters a second.
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub rate: Option<f64>,
}

#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    #[command(flatten)]
    pub session: DlqSessionArg,
    #[command(flatten)]
    pub filter: LetterFilter,
    /// Most letters deleted: the oldest that match. Unset: all of them.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Delete without asking for confirmation (needed when not on a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// Which dead letters: each option given must hold.
#[derive(Clone, Debug, Default, Args)]
pub struct LetterFilter {
    /// Only letters whose reason contains this text (ASCII case ignored).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only this tenant's letters (the tenant as the configuration's extraction finds it).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only letters of this event name (as the configuration's extraction finds it).
    #[arg(long)]
    pub event: Option<String>,
    /// Only letters that last failed at or after this: a duration ago (`15m`, `2h`, `7d`) or
    /// an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
}

/// How letters are printed.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct LetterOutput {
    /// Print whole bodies instead of their beginning.
    #[arg(long)]
    pub full: bool,
    /// One JSON object per letter instead of text.
    #[arg(long)]
    pub json: bool,
}

/// SQS takes a visibility timeout in whole seconds, up to 12 hours.
fn parse_hold(s: &str) -> Result<Duration, String> {
    let hold = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))?;
    if hold < Duration::from_secs(1) || hold > Duration::from_secs(12 * 60 * 60) {
        return Err(format!("{s:?} is out of range: SQS holds letters from 1s to 12h"));
    }
    Ok(hold)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate: give letters a second, a number above 0")),
    }
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration's JSON Schema, for editors to complete and check the YAML:
    /// save it and put `# yaml-language-server: $schema=FILE` at the top of a configuration.
    Schema,
}

/// Which dead-letter destination a `qt dlq` command reads, and how its session holds letters.
#[derive(Debug, Args)]
pub struct DlqSessionArg {
    #[command(flatten)]
    pub config: ConfigArg,
    /// SQS only: how long the letters this session has read stay hidden from other readers
    /// (the receive visibility timeout), e.g. `30s`. A session that ends normally hands
    /// them back at once; one that is killed leaves them hidden this long. Default: 5m. Keep
    /// it longer than the session lasts, or early letters show up to other readers again.
    #[arg(long, value_name = "DURATION", value_parser = parse_hold)]
    pub hold: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The trigger's YAML configuration.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Exit once the mock source is drained and nothing is in flight, printing a summary.
    #[arg(long)]
    pub until_idle: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Message body as given.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Read the message body from a file (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,
    /// A header, `name=value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Broker key: Kafka message key, RabbitMQ routing key, SQS FIFO MessageGroupId.
    #[arg(long)]
    pub key: Option<String>,
    /// Message id (mock source; other brokers assign their own).
    #[arg(long)]
    pub id: Option<String>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// The newest records that match, printed oldest first.
    Query(QueryArgs),
    /// Counts by status, tenant and event, run duration and consume latency percentiles, and
    /// the most common failure reasons, over a window (`--since`, by default the last hour).
    Stats(StatsArgs),
    /// Print matching records as they are written, until interrupted.
    Tail(TailArgs),
    /// Create or update a `postgres` ledger's table (`qt run` does it at start too).
    Migrate(ConfigArg),
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub filter: RecordFilter,
    /// Most records printed: the newest that match.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// One JSON record per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub filter: RecordFilter,
    /// The figures as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub filter: RecordFilter,
    /// Records already written to print first (the newest that match).
    #[arg(short = 'n', long, default_value_t = 10)]
    pub lines: u32,
    /// One JSON record per line instead of one line of text.
    #[arg(long)]
    pub json: bool,
}

/// Which records: each option given must hold.
#[derive(Clone, Debug, Default, Args)]
pub struct RecordFilter {
    /// Only this tenant's records.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only records with this status: succeeded, duplicate, deferred, parse_failed, unrouted,
    /// rejected or failed.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<LedgerStatus>,
    /// Only records of this event name.
    #[arg(long)]
    pub event: Option<String>,
    /// Only records finished at or after this: a duration ago (`15m`, `2h`, `7d`) or an
    /// RFC 3339 time (`2026-12-05T10:00:00Z`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only records finished before this: a duration ago or an RFC 3339 time.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only records of this message id.
    #[arg(long)]
    pub message_id: Option<String>,
    /// Only records of this trace id (32 hex digits).
    #[arg(long, value_parser = parse_trace_id)]
    pub trace_id: Option<TraceId>,
    /// Only records with this dedup key.
    #[arg(long)]
    pub dedup_key: Option<String>,
}

fn parse_status(s: &str) -> Result<LedgerStatus, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!(
            "unknown status {s:?}; one of succeeded, duplicate, deferred, parse_failed, unrouted, \
             rejected, failed"
        )
    })
}

/// A duration ago (`90s`, `15m`, `2h`, `7d`), or an RFC 3339 time.
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(ago) = humantime::parse_duration(s) {
        let ago = chrono::Duration::from_std(ago).map_err(|_| format!("{s:?} is too long ago"))?;
        return Utc::now()
            .checked_sub_signed(ago)
            .ok_or_else(|| format!("{s:?} is too long ago"));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "{s:?} is neither a duration ago (15m, 2h, 7d) nor an RFC 3339 time \
                 (2026-12-05T10:00:00Z)"
            )
        })
}

fn parse_trace_id(s: &str) -> Result<TraceId, String> {
    TraceId::from_hex(s).ok_or_else(|| format!("{s:?} is not a trace id (32 hex digits, not all zeros)"))
}
