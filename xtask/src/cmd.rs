//! Running commands with their output visible and failures explained.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs from the workspace root so relative paths mean the same everywhere.
pub fn enter_workspace_root() -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cannot enter {}", root.display()))
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Where downloaded or built tools are cached: outside the checkout, so a fresh clone on
/// the same machine reuses them. `QT_DEV_CACHE` overrides the location.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QT_DEV_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("qt-dev")
}

/// Installs the cargo subcommand `krate` (whose binary has the crate's name) at exactly
/// `version` into its own directory of the cache, unless that version is already there, and
/// returns the directory of its binary. `version_args` make the binary print its version.
pub fn install_cargo_tool(krate: &str, version: &str, version_args: &[&str]) -> Result<PathBuf> {
    let root = cache_dir().join(krate);
    let bin_dir = root.join("bin");
    let installed = output(bin_dir.join(krate).to_string_lossy().as_ref(), version_args).unwrap_or_default();
    if !installed.contains(version) {
        eprintln!(
            "xtask: building {krate} {version} into {} (once per machine)",
            root.display()
        );
        run(
            "cargo",
            &[
                "install",
                "--locked",
                "--version",
                version,
                krate,
                "--root",
                root.to_string_lossy().as_ref(),
            ],
        )?;
    }
    Ok(bin_dir)
}

/// cargo's target directory (`CARGO_TARGET_DIR`, or `target` below the workspace root).
pub fn target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    if target.is_absolute() {
        target
    } else {
        workspace_root().join(target)
    }
}

/// `text` with what lies between the lines `start` and `end` replaced by `body` (the markers
/// kept), or `None` when the markers are missing or out of order. How a generated document
/// section (benchmark figures, coverage) is rewritten without touching the prose around it.
pub fn replace_between(text: &str, start: &str, end: &str, body: &str) -> Option<String> {
    let s = text.find(start)?;
    let e = text.find(end).filter(|e| *e > s)?;
    Some(format!("{}{start}\n{}\n{}", &text[..s], body.trim_end(), &text[e..]))
}

/// Runs a command, echoing it first; fails with the command line when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    run_with_env(program, args, &[])
}

pub fn run_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let line = format!("{program} {}", args.join(" "));
    eprintln!("$ {line}");
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
