//! `cargo xtask chaos [SCENARIO] [--short]`: the chaos suite (`tests/chaos`), with the
//! container engine set up first, and its report rows written into docs/reliability.md.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::cmd::{cache_dir, run_with_env};
use crate::containers;

const DOC: &str = "docs/reliability.md";
const BEGIN: &str = "<!-- chaos:table -->";
const END: &str = "<!-- /chaos:table -->";
const HEADER: &str = "| scenario | messages | faults | lost | doubled | re-runs after crash (in flight at the kills) | records missing | runs recorded as duplicate | longest recovery | msg/s during faults / clean | images |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// Runs the scenarios whose test names contain `filter` (all without one). A full-length
/// run records its rows in docs/reliability.md, failed scenarios included; `short` (fewer
/// messages, for CI) records nothing.
pub fn run(filter: Option<&str>, short: bool) -> Result<()> {
    let engine = containers::ensure()?;
    // The Kafka scenarios run the cached Nisshi binary in a container.
    let nisshi = crate::services::nisshi::install()?.display().to_string();
    // The SQS scenarios run moto's virtualenv in a container.
    let moto = crate::services::moto::venv()?.display().to_string();
    let images = std::env::var("QT_CHAOS_IMAGES").unwrap_or_else(|_| engine.images.to_owned());
    std::fs::create_dir_all(cache_dir())?;
    let report = cache_dir().join("chaos-report.jsonl");
    let _ = std::fs::remove_file(&report);
    let report_s = report.display().to_string();
    // The whole workspace's features, as the other test runs build with, so that nothing is
    // built again for a different feature set.
    let mut args = vec![
        "test",
        "--workspace",
        "--test",
        "chaos",
        "--locked",
        "--",
        "--ignored",
        "--test-threads",
        "1",
    ];
    args.extend(filter);
    let ran = run_with_env(
        "cargo",
        &args,
        &[
            ("DOCKER_HOST", engine.docker_host.as_str()),
            ("QT_CHAOS_IMAGES", images.as_str()),
            ("QT_CHAOS_REPORT", report_s.as_str()),
            ("QT_CHAOS_SHORT", if short { "1" } else { "0" }),
            ("QT_CHAOS_NISSHI", nisshi.as_str()),
            ("QT_CHAOS_MOTO", moto.as_str()),
        ],
    );
    if !short {
        record(&report)?;
    }
    ran
}

/// Puts each row of `report` in the table of docs/reliability.md, replacing the row of the
/// same scenario and keeping the others.
fn record(report: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(report) else {
        return Ok(());
    };
    let doc = std::fs::read_to_string(DOC).with_context(|| format!("cannot read {DOC}"))?;
    let (Some(begin), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        anyhow::bail!("{DOC} has no {BEGIN} ... {END} section for the table");
    };
    let mut rows: BTreeMap<String, String> = doc[begin + BEGIN.len()..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| scenario ") && !l.starts_with("|---"))
        .filter_map(|l| Some((l.split('|').nth(1)?.trim().to_owned(), l.to_owned())))
        .collect();
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).with_context(|| format!("a bad report line: {line}"))?;
        rows.insert(row["scenario"].as_str().unwrap_or("?").to_owned(), markdown_row(&row));
    }
    let table = rows.into_values().collect::<Vec<_>>().join("\n");
    let updated = format!("{}{BEGIN}\n{HEADER}\n{table}\n{}", &doc[..begin], &doc[end..]);
    std::fs::write(DOC, updated).with_context(|| format!("cannot write {DOC}"))?;
    eprintln!("xtask: recorded {} rows in {DOC}", text.lines().count());
    Ok(())
}

fn markdown_row(row: &Value) -> String {
    let n = |k: &str| row[k].to_string();
    let tenths = |k: &str| row[k].as_f64().map_or_else(|| "—".to_owned(), |x| format!("{x:.1}"));
    let during = tenths("throughput_during_faults");
    format!(
        "| {} | {}{} | {} | {} | {} | {} ({}) | {} | {} | {} s | {during} / {} | {} |",
        row["scenario"].as_str().unwrap_or("?"),
        n("messages"),
        match row["poison_percent"].as_u64() {
            Some(p) if p > 0 => format!(" ({p}% poison)"),
            _ => String::new(),
        },
        n("faults"),
        n("lost"),
        n("doubled"),
        n("reruns_after_crash"),
        n("in_flight_at_kills"),
        n("records_missing"),
        n("runs_recorded_as_duplicate"),
        tenths("longest_recovery_s"),
        tenths("throughput_clean"),
        row["images"].as_str().unwrap_or("?"),
    )
}
