//! Project automation, run as `cargo xtask <command>`.
//!
//! - `ci`: everything CI checks (format, lints, generated docs, services, all tests, docs,
//!   a short run of every fuzz target).
//! - `tidy`: the workspace's layering and dependency rules (see [`tidy`]).
//! - `deny`: licenses, bans and sources against `deny.toml`.
//! - `services up|status`: installs (cached outside the checkout) and starts what the
//!   integration tests need, idempotently.
//! - `docs [--check]`: regenerates (or checks) the configuration reference tables of
//!   `docs/configuration.md` from the configuration types.
//! - `chaos [SCENARIO] [--short]`: the chaos suite in containers (podman set up when there is
//!   no Docker), recording its report in `docs/reliability.md`.
//! - `fuzz [TARGET] [--seconds N]`: the libFuzzer targets of `fuzz/`, each for N seconds.
//! - `coverage`: line and branch coverage of every test, an HTML report under the target
//!   directory, and the per-crate table recorded in `docs/development.md`.
//! - `bench <engine|redis|kafka|rabbitmq|sqs|http|ledger>`: runs a benchmark and records its figures in
//!   `docs/benchmarks.md`.

// A command-line tool: printing progress is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod chaos;
mod ci;
mod cmd;
mod containers;
mod coverage;
mod deny;
mod docs;
mod fuzz;
mod services;
mod tidy;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "qt project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Format check, clippy (warnings denied), generated docs, dependency policy, services, all
    /// tests, doc build, a short run of every fuzz target.
    Ci,
    /// Check licenses, bans and sources against deny.toml (offline).
    Deny,
    /// Check the layering between the workspace's crates, that every dependency comes from
    /// [workspace.dependencies] and is used, and that every crate takes the workspace lints.
    Tidy,
    /// Manage the local services integration tests use.
    Services {
        #[command(subcommand)]
        action: services::Action,
    },
    /// Regenerate the configuration reference tables of docs/configuration.md from the
    /// configuration types.
    Docs {
        /// Change nothing; fail, naming the file, when the checked-in tables are stale.
        #[arg(long)]
        check: bool,
    },
    /// Kill, hang and restart qt processes and the services they use while traffic flows,
    /// and check that nothing is lost or run twice; the rows go to docs/reliability.md.
    Chaos {
        /// Only the scenarios whose test names contain this (e.g. `rabbitmq_qt_sigkill`).
        scenario: Option<String>,
        /// Fewer messages, as CI runs it; records nothing.
        #[arg(long)]
        short: bool,
    },
    /// Fuzz what qt reads from outside (configuration, message bodies and headers, broker
    /// metadata, agents' answers) with libFuzzer, on the nightly toolchain.
    Fuzz {
        /// Only this target; without it, every target in turn.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
    },
    /// Line and branch coverage of every test (services included): an HTML report in
    /// target/coverage/html and the per-crate table in docs/development.md.
    Coverage {
        /// Branch coverage too: builds with nightly (`-Z coverage-options=branch`).
        #[arg(long)]
        branch: bool,
    },
    /// Run a benchmark and write its figures to docs/benchmarks.md.
    Bench {
        /// Which benchmark.
        #[arg(value_enum)]
        which: bench::Which,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cmd::enter_workspace_root()?;
    match cli.command {
        Command::Ci => ci::run(),
        Command::Deny => deny::check(),
        Command::Tidy => tidy::run(),
        Command::Services { action } => services::run(action),
        Command::Docs { check } => docs::run(check),
        Command::Chaos { scenario, short } => chaos::run(scenario.as_deref(), short),
        Command::Fuzz { target, seconds } => fuzz::run_targets(target.as_deref(), seconds),
        Command::Coverage { branch } => coverage::run(branch),
        Command::Bench { which } => bench::run(which),
    }
}
