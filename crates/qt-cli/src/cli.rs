//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Check a configuration: every problem with its path, or the effective configuration
    /// with secrets masked.
    Validate(ConfigArg),
    /// Publish one message to the configured source (for the mock source: into a running
    /// `qt run` of the same configuration, through its admin server).
    Send(SendArgs),
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
