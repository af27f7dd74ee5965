//! The Kafka-protocol broker for tests: Nisshi (the renamed Tansu), built from crates.io into
//! the cache directory and started in the background on loopback with in-memory storage.
//!
//! Nisshi 0.8.1 needs a newer compiler than the workspace's, so it is built with the
//! machine's nightly toolchain, once; the pinned version and `--locked` keep every machine
//! on the same broker. In-memory storage forgets topics on restart, which is why the tests
//! create their own uniquely named topics.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::Service;
use crate::cmd::{cache_dir, run};

/// Nisshi release the tests are written against.
const NISSHI_VERSION: &str = "0.8.1";
const LISTENER: &str = "tcp://127.0.0.1:9092";

pub fn service() -> Service {
    Service {
        name: "nisshi",
        addr: "127.0.0.1:9092",
        env: ("QT_TEST_KAFKA_BROKERS", "127.0.0.1:9092"),
        ensure: start,
    }
}

fn install_root() -> PathBuf {
    cache_dir().join(format!("nisshi-{NISSHI_VERSION}"))
}

fn binary() -> PathBuf {
    install_root().join("bin").join("nisshi")
}

/// The broker binary, built into the cache on first use.
pub fn install() -> Result<PathBuf> {
    let bin = binary();
    if bin.is_file() {
        return Ok(bin);
    }
    let root = install_root();
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    // Two `services up` at once would each spend the build time; the second waits for the
    // first and then finds the binary.
    let lock_path = cache_dir().join("nisshi-build.lock");
    let lock = File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!("xtask: another nisshi build is running; waiting for it");
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    }
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "xtask: building nisshi {NISSHI_VERSION} with the nightly toolchain into {} \
         (once per machine; about 18 minutes on 2 cores)",
        root.display()
    );
    let root_arg = root.to_string_lossy();
    run(
        "cargo",
        &[
            "+nightly",
            "install",
            "nisshi",
            "--version",
            NISSHI_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            "dynostore",
            "--root",
            &root_arg,
        ],
    )
    .context("building nisshi needs the nightly toolchain (rustup toolchain install nightly)")?;
    Ok(bin)
}

fn start() -> Result<()> {
    let bin = install()?;
    let dir = cache_dir();
    let log_path = dir.join("nisshi.log");
    let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let args = [
        "broker",
        "--listener-url",
        LISTENER,
        "--advertised-listener-url",
        LISTENER,
        "--storage-engine",
        "memory://tansu/",
    ];
    eprintln!("$ {} {} (log: {})", bin.display(), args.join(" "), log_path.display());
    // Nisshi reads a `.env` file from its working directory: run it in the cache directory,
    // not in whatever checkout started it. Its own process group keeps it alive after xtask
    // exits and out of reach of a Ctrl-C meant for the command that started it.
    Command::new(&bin)
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(())
}
