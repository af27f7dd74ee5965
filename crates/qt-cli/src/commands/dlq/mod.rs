//! `qt dlq list | show | replay | purge`: the dead letters of the configured source, through
//! its broker's [`DlqReader`].

mod letter;
mod print;
mod replay;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use qt_core::DlqReader;
use qt_core::config::Config;

use super::load_or_report;
use crate::cli::{DlqArgs, DlqCommand, DlqListArgs, DlqPurgeArgs, DlqSessionArg, DlqShowArgs};
use crate::wiring;
use letter::{Letter, Reader};

pub async fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Show(args) => show(args).await,
        DlqCommand::Replay(args) => replay::replay(args).await,
        DlqCommand::Purge(args) => purge(args).await,
    }
}

/// The configuration and a session on its dead-letter destination; `Err` holds the exit code
/// after the configuration's problems were printed.
async fn open(session: &DlqSessionArg) -> anyhow::Result<Result<(Config, Box<dyn DlqReader>), ExitCode>> {
    let config = match load_or_report(&session.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(Err(code)),
    };
    // Opening differs by broker; boxed so every command's future stays small.
    let dlq = Box::pin(wiring::dlq(&config, session.hold)).await?;
    Ok(Ok((config, dlq)))
}

async fn list(args: DlqListArgs) -> anyhow::Result<ExitCode> {
    let (config, mut dlq) = match open(&args.session).await? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let reader = Reader::new(&config);
    let mut letters = Vec::new();
    let mut read = 0u64;
    while (letters.len() as u64) < args.limit {
        let Some(message) = dlq.next().await? else { break };
        read += 1;
        let letter = reader.read(message);
        if args.filter.matches(&letter) {
            if args.output.json {
                print::json_line(&mut std::io::stdout().lock(), &letter, args.output.full)?;
            }
            letters.push(letter);
        }
    }
    let more = (letters.len() as u64) == args.limit;
    let name = dlq.name().to_owned();
    dlq.close().await?;
    if !args.output.json {
        let mut err = std::io::stderr().lock();
        if letters.is_empty() {
            writeln!(err, "no dead letter in {name} matches ({read} read)")?;
        } else {
            writeln!(std::io::stdout().lock(), "{}", print::table(&letters))?;
            let more = if more {
                "; --limit stopped the listing, there may be more"
            } else {
                ""
            };
            writeln!(err, "{} of {read} dead letters read from {name}{more}", letters.len())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: DlqShowArgs) -> anyhow::Result<ExitCode> {
    let (config, mut dlq) = match open(&args.session).await? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let reader = Reader::new(&config);
    let mut found: Option<Letter> = None;
    while let Some(message) = dlq.next().await? {
        let letter = reader.read(message);
        if letter.message.id == args.id || letter.details.original_message_id.as_deref() == Some(&args.id) {
            found = Some(letter);
            break;
        }
    }
    let name = dlq.name().to_owned();
    dlq.close().await?;
    let Some(letter) = found else {
        anyhow::bail!(
            "no dead letter in {name} has the id or original message id {:?}; `qt dlq list` shows the ids",
            args.id
        );
    };
    let mut out = std::io::stdout().lock();
    if args.output.json {
        print::json_line(&mut out, &letter, args.output.full)?;
    } else {
        print::full(&mut out, &letter, args.output.full)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn purge(args: DlqPurgeArgs) -> anyhow::Result<ExitCode> {
    let (config, mut dlq) = match open(&args.session).await? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let what = format!("{} in {}", args.filter.describe(), dlq.name());
    if !args.yes && !confirmed(&format!("Delete {what} for good?"))? {
        dlq.close().await?;
        writeln!(std::io::stderr(), "nothing deleted")?;
        return Ok(ExitCode::FAILURE);
    }
    let reader = Reader::new(&config);
    let (mut read, mut purged) = (0u64, 0u64);
    while args.limit.is_none_or(|limit| purged < limit) {
        let Some(message) = dlq.next().await? else { break };
        read += 1;
        let letter = reader.read(message);
        if args.filter.matches(&letter) {
            dlq.remove(&letter.message).await?;
            purged += 1;
        }
    }
    dlq.close()
        .await
        .context("deleting the dead letters; those not yet deleted are still there")?;
    writeln!(std::io::stdout().lock(), "purged {purged} of {read} dead letters read")?;
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; off a terminal there is nobody to ask, so `--yes` is needed.
fn confirmed(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} Confirm with --yes (there is no terminal to ask on)");
    }
    let mut err = std::io::stderr().lock();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    drop(err);
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
