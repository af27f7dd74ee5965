//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (cargo-fuzz, the nightly toolchain).
//!
//! The targets build without a sanitizer (`-s none`). The workspace forbids `unsafe`, so what
//! the targets look for is a panic, an abort, a hang or a runaway allocation, and libFuzzer
//! catches all of those by itself. AddressSanitizer works with this nightly too, but it
//! instruments every dependency and roughly halves the executions per second, for memory
//! errors that only `unsafe` code could make. The build is cargo-fuzz's default release
//! build with debug assertions and overflow checks on.
//!
//! Each run reads two corpus directories: a writable one under the target directory, first,
//! where libFuzzer puts the inputs it finds (it only ever writes to the first), and the seeds
//! committed in `fuzz/corpus/<target>/`. Crash inputs go under the target directory too, so a
//! run changes nothing git tracks (cargo-fuzz still makes an empty `fuzz/artifacts/<target>/`,
//! which `fuzz/.gitignore` leaves out).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cmd::{install_cargo_tool, run, run_with_env};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// How long `cargo xtask fuzz` runs each target unless told otherwise.
pub const DEFAULT_SECONDS: u64 = 60;

/// How long `cargo xtask ci` runs each target: enough to run the seeds and mutate them a few
/// hundred thousand times, while the whole step stays within a few minutes.
const CI_SECONDS: u64 = 15;

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: [&str; 9] = [
    "config_load",
    "envelope",
    "traceparent",
    "mock_line",
    "kafka_record",
    "amqp_message",
    "sqs_message",
    "agent_command",
    "agent_http",
];

const FUZZ_DIR: &str = "fuzz";

/// Where the fuzz build, the found inputs and crash inputs go: `fuzz/` below the workspace's
/// target directory.
fn work_dir() -> PathBuf {
    crate::cmd::target_dir().join("fuzz")
}

struct Fuzz {
    path: String,
    work: PathBuf,
}

impl Fuzz {
    fn new() -> Result<Self> {
        let bin_dir = install_cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION, &["--version"])?;
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        Ok(Self { path, work: work_dir() })
    }

    /// `cargo fuzz COMMAND` on the fuzz crate, built without a sanitizer into the work
    /// directory, with `args` after.
    fn cargo_fuzz(&self, command: &str, args: &[&str]) -> Result<()> {
        let target_dir = self.work.join("build");
        let mut all = vec![
            "+nightly",
            "fuzz",
            command,
            "--fuzz-dir",
            FUZZ_DIR,
            "-s",
            "none",
            "--target-dir",
            target_dir
                .to_str()
                .context("the target directory's path is not UTF-8")?,
        ];
        all.extend_from_slice(args);
        run_with_env("cargo", &all, &[("PATH", &self.path)])
    }

    fn build(&self) -> Result<()> {
        self.cargo_fuzz("build", &[])
    }

    /// Runs one target for `seconds`; a crash fails it, naming the input that caused it.
    fn run(&self, target: &str, seconds: u64) -> Result<()> {
        let found = self.work.join("corpus").join(target);
        let artifacts = self.work.join("artifacts").join(target);
        for dir in [&found, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let seeds = Path::new(FUZZ_DIR).join("corpus").join(target);
        let max_time = format!("-max_total_time={seconds}");
        let artifact_prefix = format!("-artifact_prefix={}/", artifacts.display());
        self.cargo_fuzz(
            "run",
            &[
                target,
                found.to_string_lossy().as_ref(),
                seeds.to_string_lossy().as_ref(),
                "--",
                &max_time,
                &artifact_prefix,
                // A single input taking this long is a hang.
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ],
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed; the input is in {} (run it again with \
                 `cargo +nightly fuzz run -s none {target} <file>` from the workspace root)",
                artifacts.display()
            )
        })
    }
}

/// `cargo xtask fuzz [TARGET] [--seconds N]`: every target (or one) for `seconds` each.
pub fn run_targets(target: Option<&str>, seconds: u64) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t}; the targets are {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let fuzz = Fuzz::new()?;
    fuzz.build()?;
    for t in targets {
        fuzz.run(t, seconds)?;
    }
    Ok(())
}

/// What `cargo xtask ci` runs: the fuzz crate's format, then every target for a short, bounded
/// time.
pub fn ci() -> Result<()> {
    let started = Instant::now();
    run(
        "cargo",
        &["fmt", "--manifest-path", "fuzz/Cargo.toml", "--all", "--check"],
    )?;
    let fuzz = Fuzz::new()?;
    fuzz.build()?;
    for t in TARGETS {
        fuzz.run(t, CI_SECONDS)?;
    }
    eprintln!(
        "xtask: {} fuzz targets ran {CI_SECONDS} s each; fuzz step took {:.0?}",
        TARGETS.len(),
        started.elapsed()
    );
    Ok(())
}
