//! `cargo deny check licenses bans sources` with a cargo-deny built once into the cache.

use anyhow::Result;

use crate::cmd::{install_cargo_tool, run, run_with_env};

const CARGO_DENY_VERSION: &str = "0.20.2";

/// Licenses, bans and sources; none of these needs the network once every crate of the
/// lock file is in cargo's cache. A build fetches only the crates of this platform, and
/// cargo-deny reads the metadata of all of them, so a fresh machine fetches the rest first.
pub fn check() -> Result<()> {
    let bin_dir = install_cargo_tool("cargo-deny", CARGO_DENY_VERSION, &["--version"])?;
    run("cargo", &["fetch", "--locked"])?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    run_with_env(
        "cargo",
        &["deny", "--offline", "check", "licenses", "bans", "sources"],
        &[("PATH", &path)],
    )
}
