//! `qt ledger query | stats | tail`: read the ledger a configuration writes, without SQL.

mod filter;
mod jsonl;
mod print;
mod stats;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use qt_core::config::LedgerConfig;

use super::{EXIT_INVALID_CONFIG, load_or_report};
use crate::cli::{LedgerArgs, LedgerCommand, QueryArgs, StatsArgs, TailArgs};
use crate::logging;
use jsonl::{JsonlFile, Newest, Unreadable};

/// How often `tail` looks for new records.
const TAIL_POLL: Duration = Duration::from_millis(250);

pub async fn ledger(args: LedgerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LedgerCommand::Query(args) => query(args).await,
        LedgerCommand::Stats(args) => stats(args).await,
        LedgerCommand::Tail(args) => tail(args).await,
    }
}

/// The ledger file the configuration at `path` writes, or the exit code after saying why
/// there is none to read.
fn configured_file(path: &Path) -> Result<JsonlFile, ExitCode> {
    let config = load_or_report(path)?;
    match &config.ledger {
        LedgerConfig::Jsonl(j) => Ok(JsonlFile::new(&j.path)),
        LedgerConfig::Memory => {
            logging::fatal(&format!(
                "{}: ledger.type is memory: its records live only inside a running qt and cannot be \
                 read; configure `jsonl` to keep them",
                path.display()
            ));
            Err(ExitCode::from(EXIT_INVALID_CONFIG))
        }
        LedgerConfig::Postgres(_) => {
            logging::fatal(&format!(
                "{}: qt ledger reads the jsonl ledger only so far; query a postgres ledger's table with SQL",
                path.display()
            ));
            Err(ExitCode::from(EXIT_INVALID_CONFIG))
        }
    }
}

fn warn_unreadable(file: &Path, unreadable: &Unreadable) {
    if let Some(warning) = unreadable.warning(file) {
        let _ = writeln!(std::io::stderr(), "qt: warning: {warning}");
    }
}

async fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let file = match configured_file(&args.config.config) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let filter = args.filter;
    let limit = args.limit as usize;
    let (records, unreadable, file) = tokio::task::spawn_blocking(move || {
        let (records, unreadable) = file.newest(&filter, limit)?;
        Ok::<_, anyhow::Error>((records, unreadable, file))
    })
    .await??;
    warn_unreadable(file.path(), &unreadable);
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
    let file = match configured_file(&args.config.config) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let mut filter = args.filter;
    let since = *filter
        .since
        .get_or_insert_with(|| Utc::now() - chrono::Duration::hours(1));
    let time = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC");
    let window = match filter.until {
        Some(until) => format!("finished from {} to {}", time(since), time(until)),
        None => format!("finished since {}", time(since)),
    };
    let (stats, unreadable, file) = tokio::task::spawn_blocking(move || {
        let mut tally = stats::Tally::default();
        let unreadable = file.scan(&filter, |r| tally.add(&r))?;
        Ok::<_, anyhow::Error>((tally.finish(), unreadable, file))
    })
    .await??;
    warn_unreadable(file.path(), &unreadable);
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
    let file = match configured_file(&args.config.config) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let mut reader = file.reader()?;
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
    let mut backlog = Newest::new(args.lines as usize);
    let unreadable = reader.read_new(&args.filter, |r| backlog.push(r))?;
    warn_unreadable(file.path(), &unreadable);
    print(&backlog.into_vec())?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(TAIL_POLL) => {}
        }
        let mut new = Vec::new();
        let unreadable = reader.read_new(&args.filter, |r| new.push(r))?;
        warn_unreadable(file.path(), &unreadable);
        if let Err(e) = print(&new) {
            // The reader went away (`qt ledger tail | head`): done.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.into());
        }
    }
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
