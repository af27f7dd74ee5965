//! `qt config schema`.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{ConfigArgs, ConfigCommand};

pub fn config(args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::Schema => {
            let schema = serde_json::to_string_pretty(&qt_core::config::json_schema())?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{schema}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
