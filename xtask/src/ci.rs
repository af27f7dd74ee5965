//! `cargo xtask ci`: the one command CI runs.

use anyhow::Result;

use crate::cmd::run as sh;
use crate::services;

pub fn run() -> Result<()> {
    let started = std::time::Instant::now();
    sh("cargo", &["fmt", "--all", "--check"])?;
    sh(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    services::ensure_all()?;
    let env = services::test_env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    crate::cmd::run_with_env(
        "cargo",
        &[
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--no-fail-fast",
            "--profile",
            "ci",
        ],
        &env_refs,
    )?;
    // The library example checks its own outcomes and exits non-zero when one differs.
    sh(
        "cargo",
        &["run", "--locked", "-p", "qt-engine", "--example", "in_process_agent"],
    )?;
    // Doc tests are not run by nextest.
    crate::cmd::run_with_env("cargo", &["test", "--workspace", "--locked", "--doc"], &env_refs)?;
    crate::cmd::run_with_env(
        "cargo",
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    eprintln!("xtask ci: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}
