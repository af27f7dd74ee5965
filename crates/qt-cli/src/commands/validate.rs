//! `qt validate -c FILE`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::{load_or_report, preflight_or_report};

pub async fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // Everything `qt run` checks before it connects: a command that does not exist, a
    // dead-letter policy the source cannot carry out, ... fails here, not at run time.
    if let Err(code) = preflight_or_report(path, &config).await {
        return Ok(code);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# {}: valid. Effective configuration (secrets masked):",
        path.display()
    )?;
    out.write_all(config.to_masked_yaml().as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
