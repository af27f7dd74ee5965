//! `qt ledger query | stats | tail`: read the ledger a configuration writes, without SQL.

mod jsonl;
mod print;
mod source;
mod stats;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use qt_core::LedgerFilter;

use super::load_or_report;
use crate::cli::{LedgerArgs, LedgerCommand, QueryArgs, RecordFilter, StatsArgs, TailArgs};
use source::Source;

/// How often `tail` looks for new records.
const TAIL_POLL: Duration = Duration::from_millis(250);

pub async fn ledger(args: LedgerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LedgerCommand::Query(args) => query(args).await,
        LedgerCommand::Stats(args) => stats(args).await,
        LedgerCommand::Tail(args) => tail(args).await,
        LedgerCommand::Migrate(args) => migrate(&args.config).await,
    }
}

impl From<RecordFilter> for LedgerFilter {
    fn from(f: RecordFilter) -> Self {
        LedgerFilter {
            tenant_id: f.tenant,
            status: f.status,
            event_name: f.event,
            since: f.since,
            until: f.until,
            message_id: f.message_id,
            trace_id: f.trace_id,
            dedup_key: f.dedup_key,
            limit: None,
        }
    }
}

/// The ledger the configuration at `path` writes, opened; `Err` holds the exit code after
/// the configuration's problems were printed.
async fn configured(path: &Path) -> anyhow::Result<Result<Source, ExitCode>> {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return Ok(Err(code)),
    };
    Ok(Ok(Source::open(&config).await?))
}

async fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let ledger = match configured(&args.config.config).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let records = ledger.newest(&args.filter.into(), args.limit as usize).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        print::json_lines(&mut out, &records)?;
    } else if records.is_empty() {
        writeln!(std::io::stderr(), "no record matches")?;
    } else {
        writeln!(out, "{}", print::table(&records))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let ledger = match configured(&args.config.config).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let mut filter = LedgerFilter::from(args.filter);
    let since = *filter
        .since
        .get_or_insert_with(|| Utc::now() - chrono::Duration::hours(1));
    let time = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC");
    let window = match filter.until {
        Some(until) => format!("finished from {} to {}", time(since), time(until)),
        None => format!("finished since {}", time(since)),
    };
    let mut tally = stats::Tally::default();
    ledger.scan(&filter, |r| tally.add(&r)).await?;
    let stats = tally.finish();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &stats)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", stats.render(&window))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let ledger = match configured(&args.config.config).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let filter = LedgerFilter::from(args.filter);
    let print = |records: &[qt_core::LedgerRecord]| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if args.json {
            print::json_lines(&mut out, records)?;
        } else {
            for r in records {
                writeln!(out, "{}", print::line(r))?;
            }
        }
        out.flush()
    };
    let (backlog, mut follower) = ledger.follow(&filter, args.lines as usize).await?;
    print(&backlog)?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(TAIL_POLL) => {}
        }
        let new = follower.read_new(&filter).await?;
        if let Err(e) = print(&new) {
            // The reader went away (`qt ledger tail | head`): done.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
}

/// Brings a PostgreSQL ledger's table up to date (`qt run` does the same at start).
async fn migrate(path: &Path) -> anyhow::Result<ExitCode> {
    let ledger = match configured(path).await? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let mut out = std::io::stdout();
    match ledger {
        Source::Jsonl(file) => {
            writeln!(
                out,
                "{}: a jsonl ledger has no schema to migrate",
                file.path().display()
            )?;
        }
        #[cfg(feature = "postgres")]
        Source::Postgres(ledger) => {
            let applied = ledger.migrate().await?;
            if applied.is_empty() {
                writeln!(out, "{}: up to date", ledger.name())?;
            } else {
                let versions: Vec<String> = applied.iter().map(ToString::to_string).collect();
                writeln!(out, "{}: applied migration(s) {}", ledger.name(), versions.join(", "))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A record with every commonly read field set, for the tests of this module's parts.
#[cfg(test)]
pub(crate) fn test_record(message_id: &str, status: qt_core::LedgerStatus) -> qt_core::LedgerRecord {
    use std::sync::Arc;
    let finished_at = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:00:00.250Z")
        .unwrap()
        .with_timezone(&Utc);
    qt_core::LedgerRecord {
        trace_id: qt_core::TraceId::random(),
        message_id: message_id.to_owned(),
        queue: Arc::from("orders"),
        adapter: Arc::from("mock"),
        event_name: Some("order.created".to_owned()),
        tenant_id: Some("tenant-a".to_owned()),
        dedup_key: Some("order-1".to_owned()),
        target: Some(Arc::from("agent")),
        status,
        settlement: qt_core::SettlementKind::Ack,
        attempts: 1,
        duration_ms: 12.5,
        consume_latency_ms: Some(3.0),
        agent_run_id: None,
        llm_calls: 0,
        agent_output: None,
        error: None,
        error_class: None,
        decision_reason: None,
        decision_policies: Vec::new(),
        retries: Vec::new(),
        received_at: finished_at - chrono::Duration::milliseconds(13),
        finished_at,
    }
}
