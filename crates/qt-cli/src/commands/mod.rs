//! The subcommands.

mod config;
mod dlq;
mod ledger;
mod pause;
mod preflight;
mod run;
mod send;
mod validate;

pub use preflight::{Ready, preflight};

use std::path::Path;
use std::process::ExitCode;

use qt_core::config::{Config, load_file};

use crate::cli::{Cli, Command};

/// Exit code for a configuration that cannot be used.
pub const EXIT_INVALID_CONFIG: u8 = 2;

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Validate(args) => validate::validate(&args.config).await,
        Command::Send(args) => send::send(args).await,
        Command::Pause(args) => pause::pause(&args).await,
        Command::Resume(args) => pause::resume(&args).await,
        Command::Ledger(args) => ledger::ledger(args).await,
        Command::Dlq(args) => dlq::dlq(args).await,
        Command::Config(args) => config::config(&args),
        // main() runs it before any runtime exists.
        Command::ReapAgents => unreachable!("qt reap-agents is served before the runtime starts"),
    }
}

/// Runs [`preflight()`], printing every problem (with its path) on failure.
pub async fn preflight_or_report(path: &Path, config: &Config) -> Result<Ready, ExitCode> {
    preflight(config).await.map_err(|errors| {
        crate::logging::fatal(&format!("{}: {errors}", path.display()));
        ExitCode::from(EXIT_INVALID_CONFIG)
    })
}

/// Loads a configuration, printing every problem (with its path) on failure.
pub fn load_or_report(path: &Path) -> Result<Config, ExitCode> {
    match load_file(path) {
        Ok(c) => Ok(c),
        Err(errors) => {
            crate::logging::fatal(&format!("{}: {errors}", path.display()));
            Err(ExitCode::from(EXIT_INVALID_CONFIG))
        }
    }
}
