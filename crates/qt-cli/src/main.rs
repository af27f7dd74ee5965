//! `qt`: runs a queue trigger from one YAML file.

mod admin;
mod admin_client;
mod agents;
mod cli;
mod commands;
mod logging;
mod prometheus;
mod stacks;
mod summary;
mod wiring;

use std::process::ExitCode;

use clap::Parser;

// The pipeline allocates per message on several threads (ARCHITECTURE.md, hot-path rule 17).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    stacks::ensure_deep_enough();
    let cli = cli::Cli::parse();
    if let cli::Command::ReapAgents = cli.command {
        return agents::reaper::serve();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            logging::fatal(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    // On a worker thread rather than this one, whose stack the OS sizes and not
    // `RUST_MIN_STACK` (see `stacks`).
    let result = runtime.block_on(async { tokio::spawn(commands::dispatch(cli)).await });
    match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            logging::fatal(&format!("{e:#}"));
            ExitCode::from(1)
        }
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            logging::fatal(&format!("the command was stopped before it finished: {e}"));
            ExitCode::from(1)
        }
    }
}
