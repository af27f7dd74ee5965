//! `qt validate -c FILE`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_INVALID_CONFIG, load_or_report};

pub async fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // Targets are checked too: a command that does not exist fails here, not at run time.
    if let Err(e) = crate::agents::build(&config.agent) {
        crate::logging::fatal(&format!("{}: invalid configuration:\n  - {e}", path.display()));
        return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
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
