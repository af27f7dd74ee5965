//! The verifier: from what the producer sent, what the agent ran, what the ledger holds and
//! what is left in the queues, it counts
//! - **lost**: produced, and neither settled with a ledger record, dead-lettered nor still
//!   queued;
//! - **doubled**: a message run again after an earlier run of it had finished and its claim was
//!   completed (its final ledger record came first), or run again with no crash to explain it;
//! - **re-run after crash**: run again because the qt process of its earlier run was killed
//!   during or after that run (at least once, by design), set beside the runs the killed
//!   processes had in flight;
//! - **records missing**: a message that left the queue (run, or dead-lettered) with no
//!   record in the ledger;
//! - **runs recorded as duplicate**: a message the agent ran, whose process died after
//!   completing its claim and before writing its record, so that the ledger holds only the
//!   redelivery's `duplicate` (not a failure of the bar: the outcome is recorded, the run's
//!   own details are not).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::agent::Run;
use super::run::LedgerRecord;
use super::services::Images;

/// One fault: what, when it struck and when it was over (the service back, the replacement
/// process ready).
#[derive(Clone, Debug)]
pub struct FaultEvent {
    pub what: String,
    pub at: SystemTime,
    pub over: SystemTime,
    /// The qt process it killed, if any, and what that process had in flight then.
    pub killed: Option<(String, u64)>,
}

impl FaultEvent {
    pub fn new(what: &str, at: SystemTime, over: SystemTime) -> Self {
        Self {
            what: what.to_owned(),
            at,
            over,
            killed: None,
        }
    }

    pub fn on_process(mut self, process: &str, in_flight: u64) -> Self {
        self.killed = Some((process.to_owned(), in_flight));
        self
    }
}

#[derive(Debug)]
pub struct Observed {
    pub produced: Vec<String>,
    pub runs: Vec<Run>,
    pub ledger: Vec<LedgerRecord>,
    pub dead_letters: Vec<String>,
    pub still_queued: Vec<String>,
    pub faults: Vec<FaultEvent>,
    /// From the first message published to the last.
    pub traffic: (SystemTime, SystemTime),
}

#[derive(Debug)]
pub struct Report {
    row: serde_json::Value,
    lost: Vec<String>,
    doubled: Vec<String>,
    missing: Vec<String>,
    reruns: usize,
    in_flight_at_kills: u64,
}

impl Report {
    pub fn build(scenario: &str, images: Images, poison_percent: usize, seen: &Observed) -> Self {
        let final_at = final_records(&seen.ledger);
        let queued: BTreeSet<&str> = seen.still_queued.iter().map(String::as_str).collect();
        let dead: BTreeSet<&str> = seen.dead_letters.iter().map(String::as_str).collect();
        let ran: BTreeSet<&str> = seen.runs.iter().map(|r| r.key.as_str()).collect();
        let mut by_key: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
        for run in &seen.runs {
            by_key.entry(run.key.as_str()).or_default().push(run);
        }

        let (mut lost, mut missing) = (Vec::new(), Vec::new());
        for id in &seen.produced {
            let id = id.as_str();
            if final_at.contains_key(id) || queued.contains(id) {
                continue;
            }
            // Dead-lettered, or run and gone from the queue, with no final record; or nowhere.
            if dead.contains(id) || ran.contains(id) {
                missing.push(id.to_owned());
            } else {
                lost.push(id.to_owned());
            }
        }

        let (mut doubled, mut reruns) = (Vec::new(), 0);
        for (key, runs) in &mut by_key {
            runs.sort_by_key(|r| r.started);
            for pair in runs.windows(2) {
                let (earlier, again) = (pair[0], pair[1]);
                let after_final = final_at.get(earlier.key.as_str()).is_some_and(|at| again.started > *at);
                let crashed = seen
                    .faults
                    .iter()
                    .any(|f| f.killed.as_ref().is_some_and(|(p, _)| *p == earlier.process) && f.at >= earlier.started);
                if !after_final && crashed {
                    reruns += 1;
                } else {
                    doubled.push(format!("{key} (run by {} then {})", earlier.process, again.process));
                }
            }
        }
        let in_flight_at_kills: u64 = seen.faults.iter().filter_map(|f| f.killed.as_ref().map(|k| k.1)).sum();

        let (start, end) = seen.traffic;
        let finished: Vec<SystemTime> = seen.ledger.iter().filter(|r| r.final_).map(|r| r.finished_at).collect();
        let windows: Vec<(SystemTime, SystemTime)> = seen
            .faults
            .iter()
            .map(|f| (f.at, f.over.max(f.at + Duration::from_secs(1))))
            .collect();
        let in_windows = |t: &SystemTime| windows.iter().any(|(a, b)| t >= a && t <= b);
        let window_time: f64 = windows.iter().map(|(a, b)| secs(*a, *b)).sum();
        let during = finished.iter().filter(|t| in_windows(t)).count();
        let clean = finished
            .iter()
            .filter(|t| *t >= &start && *t <= &end && !in_windows(t))
            .count();
        let clean_time = (secs(start, end) - window_time).max(1e-3);
        let recover = seen
            .faults
            .iter()
            .filter_map(|f| finished.iter().filter(|t| **t > f.over).min().map(|t| secs(f.over, *t)))
            .fold(0.0, f64::max);
        let good = seen
            .ledger
            .iter()
            .filter(|r| r.final_ && r.status == "succeeded")
            .count();
        let run_recorded: BTreeSet<&str> = seen
            .ledger
            .iter()
            .filter(|r| r.status != "duplicate")
            .map(|r| r.key.as_str())
            .collect();
        let recorded_as_duplicate = ran
            .iter()
            .filter(|id| final_at.contains_key(*id) && !run_recorded.contains(*id))
            .count();

        let row = json!({
            "scenario": scenario,
            "images": format!("{images:?}").to_lowercase(),
            "messages": seen.produced.len(),
            "poison_percent": poison_percent,
            "faults": seen.faults.len(),
            "lost": lost.len(),
            "doubled": doubled.len(),
            "reruns_after_crash": reruns,
            "in_flight_at_kills": in_flight_at_kills,
            "records_missing": missing.len(),
            "runs_recorded_as_duplicate": recorded_as_duplicate,
            "still_queued": queued.len(),
            "dead_lettered": dead.len(),
            "succeeded": good,
            "longest_recovery_s": round(recover),
            "throughput_during_faults": if window_time > 0.0 { Some(round(during as f64 / window_time)) } else { None },
            "throughput_clean": round(clean as f64 / clean_time),
            "traffic_s": round(secs(start, end)),
        });
        Report {
            row,
            lost,
            doubled,
            missing,
            reruns,
            in_flight_at_kills,
        }
    }

    /// Prints the row and appends it to `QT_CHAOS_REPORT`, for `cargo xtask chaos` to write
    /// docs/reliability.md from.
    pub fn publish(&self, faults: &[FaultEvent]) {
        for f in faults {
            eprintln!("fault: {} ({:.1}s)", f.what, secs(f.at, f.over));
        }
        println!("{}", self.row);
        if let Ok(path) = std::env::var("QT_CHAOS_REPORT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            writeln!(file, "{}", self.row).unwrap();
        }
    }

    /// The bar: nothing lost, nothing doubled, no record missing, and no more re-runs after
    /// a crash than the killed processes had in flight.
    pub fn assert_holds(&self) {
        let sample = |ids: &[String]| ids.iter().take(10).cloned().collect::<Vec<_>>();
        assert!(
            self.lost.is_empty(),
            "lost {}: {:?} {}",
            self.lost.len(),
            sample(&self.lost),
            self.row
        );
        assert!(
            self.doubled.is_empty(),
            "doubled {}: {:?} {}",
            self.doubled.len(),
            sample(&self.doubled),
            self.row
        );
        assert!(
            self.missing.is_empty(),
            "records missing {}: {:?} {}",
            self.missing.len(),
            sample(&self.missing),
            self.row
        );
        assert!(
            self.reruns as u64 <= self.in_flight_at_kills,
            "{} re-runs after crash, more than the {} runs in flight at the kills: {}",
            self.reruns,
            self.in_flight_at_kills,
            self.row
        );
    }
}

/// Each message's earliest final record (settled by ack or dead-lettering).
fn final_records(ledger: &[LedgerRecord]) -> BTreeMap<&str, SystemTime> {
    let mut first = BTreeMap::new();
    for r in ledger.iter().filter(|r| r.final_) {
        first
            .entry(r.key.as_str())
            .and_modify(|at: &mut SystemTime| *at = (*at).min(r.finished_at))
            .or_insert(r.finished_at);
    }
    first
}

fn secs(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64()
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn run(process: &str, id: &str, started: u64) -> Run {
        Run {
            process: process.to_owned(),
            key: id.to_owned(),
            started: at(started),
        }
    }

    fn record(id: &str, status: &str, finished: u64) -> LedgerRecord {
        LedgerRecord {
            key: id.to_owned(),
            status: status.to_owned(),
            final_: true,
            finished_at: at(finished),
        }
    }

    fn kill(process: &str, when: u64, in_flight: u64) -> FaultEvent {
        FaultEvent::new(&format!("SIGKILL {process}"), at(when), at(when)).on_process(process, in_flight)
    }

    fn observed(runs: Vec<Run>, ledger: Vec<LedgerRecord>, faults: Vec<FaultEvent>) -> Observed {
        Observed {
            produced: vec!["m1".to_owned(), "m2".to_owned()],
            runs,
            ledger,
            dead_letters: Vec::new(),
            still_queued: Vec::new(),
            faults,
            traffic: (at(0), at(10_000)),
        }
    }

    fn report(seen: &Observed) -> Report {
        Report::build("test", Images::Host, 0, seen)
    }

    #[test]
    fn a_message_neither_recorded_dead_lettered_nor_queued_is_lost() {
        let seen = observed(
            vec![run("a.1", "m1", 10)],
            vec![record("m1", "succeeded", 50)],
            Vec::new(),
        );
        let r = report(&seen);
        assert_eq!(r.lost, ["m2"]);
        assert!(r.doubled.is_empty() && r.missing.is_empty());
    }

    #[test]
    fn a_message_still_queued_or_dead_lettered_with_its_record_is_not_lost() {
        let mut seen = observed(Vec::new(), vec![record("m2", "failed", 50)], Vec::new());
        seen.still_queued = vec!["m1".to_owned()];
        seen.dead_letters = vec!["m2".to_owned()];
        let r = report(&seen);
        assert!(r.lost.is_empty() && r.missing.is_empty(), "{r:?}");
    }

    #[test]
    fn a_run_after_the_keys_final_record_is_doubled() {
        let seen = observed(
            vec![run("a.1", "m1", 10), run("b.1", "m1", 100), run("a.1", "m2", 10)],
            vec![record("m1", "succeeded", 50), record("m2", "succeeded", 50)],
            Vec::new(),
        );
        assert_eq!(report(&seen).doubled.len(), 1);
    }

    #[test]
    fn a_rerun_whose_earlier_process_was_killed_is_counted_apart_not_doubled() {
        let seen = observed(
            vec![run("a.1", "m1", 10), run("b.1", "m1", 200), run("b.1", "m2", 10)],
            vec![record("m1", "succeeded", 250), record("m2", "succeeded", 50)],
            vec![kill("a.1", 20, 1)],
        );
        let r = report(&seen);
        assert!(r.doubled.is_empty(), "{r:?}");
        assert_eq!((r.reruns, r.in_flight_at_kills), (1, 1));
        r.assert_holds();
    }

    #[test]
    fn a_rerun_with_no_kill_of_the_earlier_runs_process_is_doubled() {
        let seen = observed(
            vec![run("a.1", "m1", 10), run("b.1", "m1", 200), run("b.1", "m2", 10)],
            vec![record("m1", "succeeded", 250), record("m2", "succeeded", 50)],
            vec![kill("b.1", 20, 1), kill("a.1", 5, 1)],
        );
        assert_eq!(report(&seen).doubled.len(), 1);
    }

    #[test]
    fn a_dead_letter_or_a_run_without_any_record_is_a_missing_record() {
        let mut seen = observed(vec![run("a.1", "m1", 10)], Vec::new(), Vec::new());
        seen.dead_letters = vec!["m2".to_owned()];
        let r = report(&seen);
        assert_eq!(r.missing, ["m1", "m2"]);
        assert!(r.lost.is_empty());
    }

    #[test]
    fn a_run_recorded_only_by_its_redeliverys_duplicate_is_counted() {
        let seen = observed(
            vec![run("a.1", "m1", 10), run("b.1", "m2", 10)],
            vec![record("m1", "duplicate", 300), record("m2", "succeeded", 50)],
            vec![kill("a.1", 45, 1)],
        );
        let r = report(&seen);
        assert_eq!(r.row["runs_recorded_as_duplicate"], 1);
        r.assert_holds();
    }

    #[test]
    #[should_panic(expected = "re-runs after crash")]
    fn more_reruns_than_runs_in_flight_at_the_kills_fail_the_bar() {
        let seen = observed(
            vec![
                run("a.1", "m1", 10),
                run("b.1", "m1", 200),
                run("a.1", "m2", 10),
                run("b.1", "m2", 200),
            ],
            vec![record("m1", "succeeded", 250), record("m2", "succeeded", 250)],
            vec![kill("a.1", 20, 1)],
        );
        report(&seen).assert_holds();
    }
}
