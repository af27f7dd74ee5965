//! The SQS emulator: moto's server, installed into a virtualenv in the cache directory and
//! started in the background.
//!
//! The virtualenv keeps moto's Python dependencies away from whatever the machine has, and
//! the pinned version keeps every machine on the same emulator behaviour. A marker file
//! records the installed version so a second `services up` neither reinstalls nor keeps a
//! stale version after the pin moves.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::Service;
use crate::cmd::{cache_dir, run};

/// moto release the tests are written against.
const MOTO_VERSION: &str = "5.2.1";
const HOST: &str = "127.0.0.1";
const PORT: &str = "4566";

pub fn service() -> Service {
    Service {
        name: "moto-sqs",
        addr: "127.0.0.1:4566",
        env: ("QT_TEST_SQS_ENDPOINT", "http://127.0.0.1:4566"),
        ensure: start,
    }
}

/// moto's virtualenv, installed if it is missing (the chaos suite runs it in a container).
pub fn venv() -> Result<PathBuf> {
    let venv = venv_dir();
    install(&venv)?;
    Ok(venv)
}

fn venv_dir() -> PathBuf {
    cache_dir().join("moto-venv")
}

fn version_marker(venv: &Path) -> PathBuf {
    venv.join("qt-moto-version")
}

fn installed(venv: &Path) -> bool {
    venv.join("bin").join("moto_server").is_file()
        && fs::read_to_string(version_marker(venv)).is_ok_and(|v| v.trim() == MOTO_VERSION)
}

fn install(venv: &Path) -> Result<()> {
    if installed(venv) {
        return Ok(());
    }
    fs::create_dir_all(cache_dir()).with_context(|| format!("cannot create {}", cache_dir().display()))?;
    if !venv.join("bin").join("pip").is_file() {
        let venv_arg = venv.to_string_lossy();
        run("python3", &["-m", "venv", &venv_arg])
            .context("creating the moto virtualenv needs python3 with the venv module (Debian: python3-venv)")?;
    }
    let pip = venv.join("bin").join("pip");
    let requirement = format!("moto[server]=={MOTO_VERSION}");
    run(
        &pip.to_string_lossy(),
        &["install", "--quiet", "--disable-pip-version-check", &requirement],
    )?;
    fs::write(version_marker(venv), MOTO_VERSION)
        .with_context(|| format!("cannot write {}", version_marker(venv).display()))
}

fn start() -> Result<()> {
    let venv = venv_dir();
    install(&venv)?;
    let log_path = cache_dir().join("moto.log");
    let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let server = venv.join("bin").join("moto_server");
    eprintln!(
        "$ {} -H {HOST} -p {PORT} (log: {})",
        server.display(),
        log_path.display()
    );
    // Its own process group keeps the server alive after xtask exits and out of reach of
    // a Ctrl-C meant for the command that started it.
    Command::new(&server)
        .args(["-H", HOST, "-p", PORT])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", server.display()))?;
    Ok(())
}
