//! `qt dlq replay`: each matching letter is published back with the broker's confirmation,
//! then removed from the dead-letter destination, at most `--rate` a second.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use qt_core::{DlqReader, Publisher};

use super::letter::{Letter, Reader};
use super::open;
use crate::cli::DlqReplayArgs;
use crate::wiring;

#[derive(Default)]
struct Tally {
    read: u64,
    replayed: u64,
    skipped: u64,
    failed: u64,
}

pub async fn replay(args: DlqReplayArgs) -> anyhow::Result<ExitCode> {
    let (config, mut dlq) = match open(&args.session).await? {
        Ok(opened) => opened,
        Err(code) => return Ok(code),
    };
    let publisher = if args.dry_run {
        None
    } else {
        Some(wiring::publisher(&config).await?)
    };
    let reader = Reader::new(&config);
    let progress = Progress::new(args.dry_run);
    let mut tally = Tally::default();
    let mut pace = args.rate.map(|per_second| {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let started = Instant::now();
    let mut stopped_early = false;
    while args
        .limit
        .is_none_or(|limit| tally.replayed + tally.skipped + tally.failed < limit)
    {
        let next = tokio::select! {
            next = dlq.next() => next?,
            _ = &mut interrupted => { stopped_early = true; break }
        };
        let Some(message) = next else { break };
        tally.read += 1;
        let letter = reader.read(message);
        if !args.filter.matches(&letter) {
            continue;
        }
        if letter.details.replays >= args.max_replays && !args.force {
            tally.skipped += 1;
            progress.line(&format!(
                "skipped {}: replayed {} times already (--max-replays {}; --force replays it anyway)",
                letter.message.id, letter.details.replays, args.max_replays
            ));
            continue;
        }
        if let Some(pace) = &mut pace {
            tokio::select! {
                _ = pace.tick() => {}
                _ = &mut interrupted => { stopped_early = true; break }
            }
        }
        match replay_one(dlq.as_mut(), publisher.as_deref(), &letter, args.to.as_deref()).await {
            Ok(to) => {
                tally.replayed += 1;
                let verb = if args.dry_run { "would replay" } else { "replayed" };
                progress.line(&format!("{verb} {} to {to}", letter.message.id));
            }
            Err(e) => {
                tally.failed += 1;
                progress.line(&format!("failed {}: {e:#}", letter.message.id));
            }
        }
        progress.count(&tally, started);
    }
    progress.finish();
    let name = dlq.name().to_owned();
    let closed = dlq.close().await;
    let verb = if args.dry_run { "would replay" } else { "replayed" };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{verb} {}, skipped {}, failed {} of {} dead letters read from {name} in {:.1}s{}",
        tally.replayed,
        tally.skipped,
        tally.failed,
        tally.read,
        started.elapsed().as_secs_f64(),
        if stopped_early { " (interrupted)" } else { "" }
    )?;
    if let Err(e) = closed {
        anyhow::bail!(
            "ending the session on {name} failed: {e}. Letters replayed may still be in it too; \
             a second replay publishes them again, and the dedup window absorbs the duplicates"
        );
    }
    Ok(if tally.failed == 0 && !stopped_early {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Publishes the letter and, once the broker confirmed it, removes it; returns where it went.
/// Without a publisher (a dry run) it only works out where the letter would go.
async fn replay_one(
    dlq: &mut dyn DlqReader,
    publisher: Option<&dyn Publisher>,
    letter: &Letter,
    to: Option<&str>,
) -> anyhow::Result<String> {
    let message = dlq.replay_message(&letter.message, to)?;
    let destination = message.destination.clone().unwrap_or_default();
    let Some(publisher) = publisher else {
        return Ok(destination);
    };
    publisher.publish(message).await?;
    dlq.remove(&letter.message).await.map_err(|e| {
        anyhow::anyhow!("published to {destination}, but it stays in the dead-letter destination too: {e}")
    })?;
    Ok(destination)
}

/// A progress bar with counts and rate on a terminal; one line per letter otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(dry_run: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            let style = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            if dry_run {
                bar.set_message("dry run");
            }
            bar
        });
        Self { bar }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }

    fn count(&self, tally: &Tally, started: Instant) {
        if let Some(bar) = &self.bar {
            let rate = tally.replayed as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "replayed {} · skipped {} · failed {} · read {} · {rate:.0}/s",
                tally.replayed, tally.skipped, tally.failed, tally.read
            ));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
