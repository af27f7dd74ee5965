//! `cargo xtask ci`: the one command CI runs.

use anyhow::{Result, bail};

use crate::cmd::run as sh;
use crate::services;

pub fn run() -> Result<()> {
    let started = std::time::Instant::now();
    sh("cargo", &["fmt", "--all", "--check"])?;
    crate::tidy::run()?;
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
    // Generated docs are checked early: a stale table needs no services to be found.
    crate::docs::run(true)?;
    check_packages()?;
    crate::deny::check()?;
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
    // One short chaos scenario per broker, in containers.
    crate::chaos::run(Some("qt_sigkill"), true)?;
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
    crate::fuzz::ci()?;
    eprintln!("xtask ci: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// The crates published to crates.io; `qt-bench-support`, `qt-test-support` and `xtask` are not.
const PUBLISHED: [&str; 10] = [
    "qt-core",
    "qt-engine",
    "qt-adapter-mock",
    "qt-adapter-kafka",
    "qt-adapter-rabbitmq",
    "qt-adapter-sqs",
    "qt-idempotency-redis",
    "qt-ledger-postgres",
    "qt-telemetry",
    "qt-cli",
];

/// Each published crate packages (its manifest has what crates.io needs, its files are
/// found) and carries its README, which crates.io shows as the crate's page. `--list`
/// needs no registry, so the workspace's path dependencies need not be published yet.
fn check_packages() -> Result<()> {
    for krate in PUBLISHED {
        let args = ["package", "--list", "--locked", "--allow-dirty", "-p", krate];
        eprintln!("$ cargo {}", args.join(" "));
        let files = crate::cmd::output("cargo", &args)?;
        if !files.lines().any(|f| f == "README.md") {
            bail!("the {krate} package does not include its README.md:\n{files}");
        }
    }
    Ok(())
}
