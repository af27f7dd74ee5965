//! `cargo deny check licenses bans sources` with a cargo-deny built once into the cache.

use std::path::PathBuf;

use anyhow::Result;

use crate::cmd::{cache_dir, run, run_with_env};

const CARGO_DENY_VERSION: &str = "0.20.2";

fn install_root() -> PathBuf {
    cache_dir().join("cargo-deny")
}

/// Installs cargo-deny into the cache unless that exact version is already there.
fn ensure_installed() -> Result<PathBuf> {
    let root = install_root();
    let bin = root.join("bin").join("cargo-deny");
    let installed = crate::cmd::output(bin.to_string_lossy().as_ref(), &["--version"]).unwrap_or_default();
    if !installed.contains(CARGO_DENY_VERSION) {
        eprintln!(
            "xtask: building cargo-deny {CARGO_DENY_VERSION} into {} (once per machine)",
            root.display()
        );
        run(
            "cargo",
            &[
                "install",
                "--locked",
                "--version",
                CARGO_DENY_VERSION,
                "cargo-deny",
                "--root",
                root.to_string_lossy().as_ref(),
            ],
        )?;
    }
    Ok(root.join("bin"))
}

/// Licenses, bans and sources; none of these needs the network once every crate of the
/// lock file is in cargo's cache. A build fetches only the crates of this platform, and
/// cargo-deny reads the metadata of all of them, so a fresh machine fetches the rest first.
pub fn check() -> Result<()> {
    let bin_dir = ensure_installed()?;
    run("cargo", &["fetch", "--locked"])?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    run_with_env(
        "cargo",
        &["deny", "--offline", "check", "licenses", "bans", "sources"],
        &[("PATH", &path)],
    )
}
