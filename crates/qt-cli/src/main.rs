//! `qt`: runs a queue trigger from one YAML file.

mod admin;
mod admin_client;
mod agents;
mod cli;
mod commands;
mod logging;
mod prometheus;
mod summary;
mod wiring;

use std::process::ExitCode;

use clap::Parser;

// The pipeline allocates per message on several threads (ARCHITECTURE.md, hot-path rule 17).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
    let result = runtime.block_on(commands::dispatch(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::fatal(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}
