//! `cargo xtask coverage`: line and branch coverage of every test nextest runs (unit,
//! integration against the services, and the end-to-end tests, whose `qt` child processes
//! write their own profiles), with an HTML report and a per-crate table recorded in
//! `docs/development.md`.
//!
//! The figures come from rustc's source-based coverage (`-C instrument-coverage`) through
//! cargo-llvm-cov, built once into the cache at a pinned version. The profiles it writes
//! can only be read by LLVM tools of the compiler's own LLVM major version, and the
//! toolchain has no `llvm-tools` component here, so the tools come from Debian's `llvm-N`
//! package for that N (LLVM 14, the machine's default, rejects LLVM 22's raw profiles as an
//! "unsupported instrumentation profile format version"). Branch coverage needs the
//! unstable `-Z coverage-options=branch` and instrumented doc tests need nightly's rustdoc,
//! so the build uses the nightly toolchain; branches are opt-in (`--branch`) because LLVM
//! 22's llvm-cov crashes reading this workspace's branch regions (docs/development.md#coverage).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cmd::{output, run as sh, run_with_env};
use crate::services;

const CARGO_LLVM_COV_VERSION: &str = "0.9.1";

/// The crates held to the line goal, in the table's order.
const GOAL_CRATES: [&str; 7] = [
    "qt-core",
    "qt-engine",
    "qt-adapter-kafka",
    "qt-adapter-rabbitmq",
    "qt-adapter-sqs",
    "qt-adapter-mock",
    "qt-idempotency-redis",
];
/// Measured and shown, without a goal.
const OTHER_CRATES: [&str; 3] = ["qt-ledger-postgres", "qt-telemetry", "qt-cli"];
const GOAL_LINE_PERCENT: f64 = 80.0;

/// Where the table is written, between [`START`] and [`END`].
const DOC: &str = "docs/development.md";
const START: &str = "<!-- coverage -->";
const END: &str = "<!-- /coverage -->";

pub fn run(branches: bool) -> Result<()> {
    let started = Instant::now();
    let toolchain = Toolchain::pick(branches)?;
    let llvm_bin = ensure_llvm_tools(toolchain.llvm_major)?;
    let cov_bin = crate::cmd::install_cargo_tool("cargo-llvm-cov", CARGO_LLVM_COV_VERSION, &["llvm-cov", "--version"])?;
    services::ensure_all()?;

    let path = format!("{}:{}", cov_bin.display(), std::env::var("PATH").unwrap_or_default());
    let llvm_cov = llvm_bin.join("llvm-cov").to_string_lossy().into_owned();
    let llvm_profdata = llvm_bin.join("llvm-profdata").to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = services::test_env();
    env.extend([
        ("PATH".to_owned(), path),
        ("LLVM_COV".to_owned(), llvm_cov),
        ("LLVM_PROFDATA".to_owned(), llvm_profdata),
    ]);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cargo = |args: &[&str]| -> Result<()> { run_with_env("cargo", &[&["+nightly"], args].concat(), &env_refs) };

    // Profiles of an earlier run would be merged into this one's figures, and the report
    // reads every instrumented binary of the workspace's crates it finds, so binaries built
    // by another toolchain or with other features would count their code as never run.
    cargo(&["llvm-cov", "clean", "--workspace"])?;
    let branch: &[&str] = if toolchain.branches { &["--branch"] } else { &[] };
    // A failing test still leaves the profiles of every other test: the report is made
    // either way, and the failures are reported after it.
    let mut failed = Vec::new();
    let nextest = [
        "llvm-cov",
        "nextest",
        "--workspace",
        "--locked",
        "--no-report",
        "--no-fail-fast",
        "--profile",
        "ci",
    ];
    if let Err(e) = cargo(&[&nextest[..], branch].concat()) {
        failed.push(e);
    }
    // As in CI: the library example checks its own outcomes.
    let example = [
        "llvm-cov",
        "run",
        "--locked",
        "--no-report",
        "-p",
        "qt-engine",
        "--example",
        "in_process_agent",
    ];
    if let Err(e) = cargo(&[&example[..], branch].concat()) {
        failed.push(e);
    }
    let doc = ["llvm-cov", "--workspace", "--locked", "--no-report", "--doc"];
    if let Err(e) = cargo(&[&doc[..], branch].concat()) {
        failed.push(e);
    }

    let target = crate::cmd::target_dir();
    let out_dir = target.join("coverage");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let html_dir = out_dir.to_string_lossy().into_owned();
    let lcov_path = out_dir.join("lcov.info");
    let lcov_arg = lcov_path.to_string_lossy().into_owned();
    let ignore = "(^|/)(tests|benches|examples|xtask|qt-test-support|qt-bench-support)/";
    cargo(&[
        "llvm-cov",
        "report",
        "--html",
        "--output-dir",
        &html_dir,
        "--ignore-filename-regex",
        ignore,
    ])?;
    cargo(&[
        "llvm-cov",
        "report",
        "--lcov",
        "--output-path",
        &lcov_arg,
        "--ignore-filename-regex",
        ignore,
    ])?;

    let lcov = std::fs::read_to_string(&lcov_path).with_context(|| format!("cannot read {}", lcov_path.display()))?;
    let root = crate::cmd::workspace_root();
    let totals = per_crate(&lcov, &root, |p| std::fs::read_to_string(p).ok());
    let elapsed = started.elapsed();
    let table = render_table(&totals, toolchain.branches);
    eprintln!("\n{table}");
    eprintln!(
        "xtask coverage: HTML report in {}/html/index.html, lcov in {}; {:.0?}",
        out_dir.display(),
        lcov_path.display(),
        elapsed
    );
    if !failed.is_empty() {
        let causes: Vec<String> = failed.iter().map(|e| format!("{e:#}")).collect();
        bail!(
            "the figures above count the tests that passed, and are not recorded; failed: {}",
            causes.join("; ")
        );
    }
    record(&section(&table, &toolchain, elapsed.as_secs()))
}

/// The compiler the coverage build uses.
struct Toolchain {
    branches: bool,
    llvm_major: u32,
    version: String,
}

impl Toolchain {
    /// The nightly toolchain (the one Nisshi is built with): its rustdoc instruments doc
    /// tests, and only it takes `-Z coverage-options=branch`.
    fn pick(branches: bool) -> Result<Self> {
        let verbose = output("rustc", &["+nightly", "-vV"])
            .context("coverage builds with the nightly toolchain (rustup toolchain install nightly)")?;
        Ok(Self {
            branches,
            llvm_major: llvm_major(&verbose)?,
            version: first_line(&verbose),
        })
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

/// The major version in `rustc -vV`'s `LLVM version: 22.1.2` line.
fn llvm_major(rustc_verbose: &str) -> Result<u32> {
    rustc_verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("no LLVM version in `rustc -vV`:\n{rustc_verbose}"))
}

/// The directory holding `llvm-cov` and `llvm-profdata` of LLVM `major`, installing Debian's
/// `llvm-<major>` package when they are missing.
fn ensure_llvm_tools(major: u32) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/usr/lib/llvm-{major}/bin"));
    let present = |d: &Path| d.join("llvm-cov").is_file() && d.join("llvm-profdata").is_file();
    if present(&dir) {
        return Ok(dir);
    }
    let package = format!("llvm-{major}");
    eprintln!("xtask: installing Debian's {package} for llvm-cov and llvm-profdata (once per machine)");
    // A fresh machine's package lists may predate the package.
    sh("apt-get", &["update", "-q"])?;
    sh("apt-get", &["install", "-y", "-q", &package])
        .with_context(|| format!("coverage needs the LLVM {major} tools: install {package} (as root)"))?;
    if !present(&dir) {
        bail!(
            "{package} is installed but {} has no llvm-cov or llvm-profdata",
            dir.display()
        );
    }
    Ok(dir)
}

/// Covered and total counts of one crate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub lines: u64,
    pub lines_hit: u64,
    pub branches: u64,
    pub branches_hit: u64,
}

/// Per-crate counts from an lcov export, over the files under `crates/<name>/src/`, leaving out
/// the lines of `#[cfg(test)]` items (read from each file's source through `source`).
pub fn per_crate(lcov: &str, root: &Path, source: impl Fn(&Path) -> Option<String>) -> BTreeMap<String, Counts> {
    let mut totals: BTreeMap<String, Counts> = BTreeMap::new();
    for record in lcov.split("end_of_record") {
        let Some(file) = record.lines().find_map(|l| l.strip_prefix("SF:")) else {
            continue;
        };
        let path = Path::new(file);
        let relative = path.strip_prefix(root).unwrap_or(path);
        let Some(krate) = crate_of(relative) else {
            continue;
        };
        let test_lines = source(&root.join(relative))
            .map(|s| test_only_lines(&s))
            .unwrap_or_default();
        let counts = totals.entry(krate).or_default();
        for line in record.lines() {
            if let Some(da) = line.strip_prefix("DA:") {
                let mut parts = da.split(',');
                let (Some(n), Some(hits)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if is_test_line(&test_lines, n) {
                    continue;
                }
                counts.lines += 1;
                if hits.trim() != "0" {
                    counts.lines_hit += 1;
                }
            } else if let Some(brda) = line.strip_prefix("BRDA:") {
                let parts: Vec<&str> = brda.split(',').collect();
                if parts.len() != 4 || is_test_line(&test_lines, parts[0]) {
                    continue;
                }
                counts.branches += 1;
                if !matches!(parts[3].trim(), "-" | "0") {
                    counts.branches_hit += 1;
                }
            }
        }
    }
    totals
}

fn is_test_line(test_lines: &[(usize, usize)], line: &str) -> bool {
    line.trim()
        .parse::<usize>()
        .is_ok_and(|n| test_lines.iter().any(|&(a, b)| (a..=b).contains(&n)))
}

/// `crates/<name>/src/...` → `<name>`; anything else (tests, benches, examples) is not a
/// crate's library or binary code.
fn crate_of(relative: &Path) -> Option<String> {
    let mut parts = relative.components().map(|c| c.as_os_str().to_string_lossy());
    if parts.next()? != "crates" {
        return None;
    }
    let name = parts.next()?.into_owned();
    (parts.next()? == "src").then_some(name)
}

/// The 1-based line ranges of items marked `#[cfg(test)]`: from the attribute to the item's
/// end, which in rustfmt's layout is the first later line holding only `}` at the
/// attribute's indentation (or the item's own line when it ends with `;`, as `mod tests;`).
pub fn test_only_lines(source: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() != "#[cfg(test)]" {
            i += 1;
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let close = format!("{indent}}}");
        // The item's first line: past further attributes and doc comments.
        let mut j = i + 1;
        while j < lines.len() && (lines[j].trim_start().starts_with("#[") || lines[j].trim_start().starts_with("///")) {
            j += 1;
        }
        let end = if lines.get(j).is_some_and(|l| l.trim_end().ends_with(';')) {
            j
        } else {
            (j..lines.len()).find(|&k| lines[k] == close).unwrap_or(lines.len() - 1)
        };
        ranges.push((i + 1, end + 1));
        i = end + 1;
    }
    ranges
}

fn percent(hit: u64, total: u64) -> String {
    if total == 0 {
        return "–".to_owned();
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let p = hit as f64 * 100.0 / total as f64;
    format!("{p:.1}%")
}

fn meets_goal(c: &Counts) -> bool {
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let p = if c.lines == 0 {
        100.0
    } else {
        c.lines_hit as f64 * 100.0 / c.lines as f64
    };
    p >= GOAL_LINE_PERCENT
}

/// The per-crate table (Markdown, readable as plain text too).
pub fn render_table(totals: &BTreeMap<String, Counts>, branches: bool) -> String {
    let mut out = String::from(
        "| crate | lines covered/total | lines | branches covered/total | branches |\n|---|---:|---:|---:|---:|\n",
    );
    let row = |out: &mut String, name: &str, goal: bool| {
        let c = totals.get(name).copied().unwrap_or_default();
        let mark = match (goal, meets_goal(&c)) {
            (false, _) => "",
            (true, true) => " ✓",
            (true, false) => " ✗",
        };
        let (branch_count, branch_pct) = if branches {
            (
                format!("{}/{}", c.branches_hit, c.branches),
                percent(c.branches_hit, c.branches),
            )
        } else {
            ("–".to_owned(), "–".to_owned())
        };
        out.push_str(&format!(
            "| {name} | {}/{} | {}{mark} | {branch_count} | {branch_pct} |\n",
            c.lines_hit,
            c.lines,
            percent(c.lines_hit, c.lines)
        ));
    };
    for name in GOAL_CRATES {
        row(&mut out, name, true);
    }
    for name in OTHER_CRATES {
        row(&mut out, name, false);
    }
    out
}

fn section(table: &str, toolchain: &Toolchain, seconds: u64) -> String {
    let date = output("date", &["-u", "+%Y-%m-%d"]).unwrap_or_default();
    let branches = if toolchain.branches {
        "Branches are each outcome of each condition (`-Z coverage-options=branch`)."
    } else {
        "No branch figures: see above for why."
    };
    format!(
        "Measured by `cargo xtask coverage` on {} with {} in {} min ({}). Lines of each \
         crate's `src/` without its `#[cfg(test)]` items, over every test nextest runs, the \
         end-to-end tests' `qt` processes included. {branches} ✓ or ✗: whether a crate held to the \
         goal has at least {GOAL_LINE_PERCENT}% of its lines covered; the last three have no goal.\n\n{table}",
        date.trim(),
        toolchain.version,
        seconds.div_ceil(60),
        crate::bench::machine_description(),
    )
}

/// Replaces the text between the markers of [`DOC`].
fn record(body: &str) -> Result<()> {
    let text = std::fs::read_to_string(DOC).with_context(|| format!("cannot read {DOC}"))?;
    let updated = replace_section(&text, body)?;
    std::fs::write(DOC, updated).with_context(|| format!("cannot write {DOC}"))?;
    eprintln!("{DOC}: coverage figures recorded");
    Ok(())
}

fn replace_section(text: &str, body: &str) -> Result<String> {
    crate::cmd::replace_between(text, START, END, body)
        .with_context(|| format!("{DOC} has no `{START}` … `{END}` markers, in that order, for the coverage figures"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_items_are_found_to_their_closing_brace_or_semicolon() {
        let src = "fn a() {}\n\n#[cfg(test)]\nmod tests {\n    #[cfg(test)]\n    fn inner() {\n    }\n}\n\
                   fn b() {}\n#[cfg(test)]\n#[allow(unused)]\nmod more;\nfn c() {}\n";
        assert_eq!(test_only_lines(src), vec![(3, 8), (10, 12)]);
    }

    #[test]
    fn lcov_records_are_counted_per_crate_without_test_lines_or_test_files() {
        let root = Path::new("/w");
        let lcov = "SF:/w/crates/qt-core/src/a.rs\nDA:1,3\nDA:2,0\nDA:5,1\nBRDA:1,0,0,2\nBRDA:1,0,1,-\nBRDA:5,0,0,1\nend_of_record\n\
                    SF:/w/crates/qt-core/tests/t.rs\nDA:1,1\nend_of_record\n\
                    SF:/w/crates/qt-engine/src/lib.rs\nDA:1,0\nend_of_record\n";
        let source = |p: &Path| {
            (p == Path::new("/w/crates/qt-core/src/a.rs")).then(|| "a\nb\nc\n#[cfg(test)]\nmod t;\n".to_owned())
        };
        let totals = per_crate(lcov, root, source);
        assert_eq!(
            totals["qt-core"],
            Counts {
                lines: 2,
                lines_hit: 1,
                branches: 2,
                branches_hit: 1
            }
        );
        assert_eq!(
            totals["qt-engine"],
            Counts {
                lines: 1,
                lines_hit: 0,
                branches: 0,
                branches_hit: 0
            }
        );
        assert_eq!(totals.len(), 2);
    }

    #[test]
    fn the_table_marks_each_goal_crate_against_eighty_percent() {
        let mut totals = BTreeMap::new();
        totals.insert(
            "qt-core".to_owned(),
            Counts {
                lines: 10,
                lines_hit: 8,
                branches: 4,
                branches_hit: 1,
            },
        );
        totals.insert(
            "qt-engine".to_owned(),
            Counts {
                lines: 10,
                lines_hit: 7,
                branches: 0,
                branches_hit: 0,
            },
        );
        let table = render_table(&totals, true);
        assert!(table.contains("| qt-core | 8/10 | 80.0% ✓ | 1/4 | 25.0% |"), "{table}");
        assert!(table.contains("| qt-engine | 7/10 | 70.0% ✗ | 0/0 | – |"), "{table}");
        assert!(table.contains("| qt-cli | 0/0 | – | 0/0 | – |"), "{table}");
    }

    #[test]
    fn the_section_between_the_markers_is_replaced_and_the_rest_kept() {
        let doc = format!("before\n{START}\nold\n{END}\nafter\n");
        assert_eq!(
            replace_section(&doc, "new\n").unwrap(),
            format!("before\n{START}\nnew\n{END}\nafter\n")
        );
        assert!(replace_section("no markers", "x").is_err());
    }

    #[test]
    fn the_llvm_major_version_is_read_from_rustc() {
        assert_eq!(llvm_major("rustc 1.95.0\nLLVM version: 22.1.2\n").unwrap(), 22);
        assert!(llvm_major("rustc 1.95.0\n").is_err());
    }
}
