//! End-to-end tests of the Redis idempotency store through the `qt` binary.
//!
//! - Two `qt run` processes on one Redis consume the same messages: every dedup key runs
//!   exactly once in total, counted by the agent itself.
//! - A private `redis-server` (started by each test on a free port; the shared one is never
//!   touched) is killed mid-run and started again, under `on_store_error: fail_open` and
//!   `fail_closed`.
//!
//! The agent is a shell script that appends `<message id> <process>` to a file on each run
//! (one short `O_APPEND` write, so concurrent runs never interleave): the run counts come
//! from the agent's side, not from qt's own bookkeeping.
//!
//! The shared Redis comes from `QT_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`;
//! `cargo xtask services up` starts it); `redis-server` and `redis-cli` must be on PATH.

// What each run saw goes to stderr, shown when a test fails.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod support;

use support::agent::{agent_runs, counting_agent};
use support::files::{jsonl, ledger};
use support::http::http_get;
use support::process::{QtRun, qt, run_bounded, summary};
use support::wait::wait_for;
use support::{free_port, unique};

/// What the counting agent notes of each run: the process it ran in.
const PROCESS: &str = r#"cat > /dev/null; printf '%s' "${QT_E2E_PROCESS:-?}""#;

fn shared_redis_url() -> String {
    std::env::var("QT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `redis-cli -u URL ARGS...`, its stdout.
fn redis_cli(url: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-u", url])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli (it ships with Redis; `cargo xtask services up`): {e}"));
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_redis(url: &str) {
    let pong = Command::new("redis-cli")
        .args(["-u", url, "PING"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match pong {
        Ok(p) if p == "PONG" => {}
        other => panic!(
            "the shared Redis at {url} (QT_TEST_REDIS_URL) is not reachable ({other:?}); \
             start it with `cargo xtask services up`"
        ),
    }
}

/// Every key under `prefix` with its value.
fn keys_under(url: &str, prefix: &str) -> BTreeMap<String, String> {
    let keys: Vec<String> = redis_cli(url, &["--scan", "--pattern", &format!("{prefix}:*")])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let mut out = BTreeMap::new();
    for chunk in keys.chunks(500) {
        let mut args = vec!["MGET"];
        args.extend(chunk.iter().map(String::as_str));
        let values = redis_cli(url, &args);
        for (k, v) in chunk.iter().zip(values.lines()) {
            out.insert(k.clone(), v.to_owned());
        }
    }
    out
}

/// Deletes the keys of one test's prefix when dropped, whatever the outcome.
struct RedisKeys {
    url: String,
    prefix: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(out) = Command::new("redis-cli")
            .args(["-u", &self.url, "--scan", "--pattern", &format!("{}:*", self.prefix)])
            .stdin(Stdio::null())
            .output()
        else {
            return;
        };
        let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        for chunk in keys.chunks(500) {
            let _ = Command::new("redis-cli")
                .args(["-u", &self.url, "DEL"])
                .args(chunk)
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// A `redis-server` of the test's own on a free port, with the append-only file fsynced on
/// every write: a restart brings back every claim it acknowledged, as production Redis
/// configured for idempotency must (see the durability notes of qt-idempotency-redis).
/// Killed when dropped.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut server = Self {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        server.spawn();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let dir = self.dir.display().to_string();
        let log = self.dir.join("redis.log").display().to_string();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--daemonize",
                "no",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", &dir, "--logfile", &log])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (it ships with Redis): {e}"));
        self.child = Some(child);
        let url = self.url();
        wait_for("the private redis-server to answer", Duration::from_secs(10), || {
            let out = Command::new("redis-cli")
                .args(["-u", &url, "PING"])
                .stdin(Stdio::null())
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "PONG").then_some(())
        });
    }

    /// SIGKILL, as a crash: nothing but what the append-only file holds survives.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Messages with dedup keys: `duplicates` of them repeat the key of an earlier one, half of
/// those a recent one (likely still in flight somewhere), half any earlier one.
struct Plan {
    /// (message id, dedup key), in queue order.
    messages: Vec<(String, String)>,
}

impl Plan {
    fn new(tag: &str, total: usize, duplicates: usize, mut seed: u64) -> Self {
        let mut next = move || {
            // xorshift64: deterministic, so a failure can be replayed.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut repeat = vec![false; total];
        let mut positions: Vec<usize> = (1..total).collect();
        for i in (1..positions.len()).rev() {
            positions.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        for &p in positions.iter().take(duplicates) {
            repeat[p] = true;
        }
        let mut issued: Vec<String> = Vec::new();
        let mut messages = Vec::with_capacity(total);
        for (i, dup) in repeat.into_iter().enumerate() {
            let key = if dup {
                let span = if next() % 2 == 0 {
                    issued.len().min(32)
                } else {
                    issued.len()
                };
                issued[issued.len() - 1 - (next() % span as u64) as usize].clone()
            } else {
                issued.push(format!("{tag}-k{:04}", issued.len()));
                issued.last().unwrap().clone()
            };
            messages.push((format!("{tag}-m{i:04}"), key));
        }
        Self { messages }
    }

    fn unique_keys(&self) -> BTreeSet<String> {
        self.messages.iter().map(|(_, k)| k.clone()).collect()
    }

    fn write(&self, path: &Path) {
        let lines: String = self
            .messages
            .iter()
            .map(|(id, key)| {
                format!(
                    "{}\n",
                    serde_json::json!({"id": id, "headers": {"x-dedup-key": key}, "json": {"id": id, "key": key}})
                )
            })
            .collect();
        std::fs::write(path, lines).unwrap();
    }
}

/// The last record of each message: its final status.
fn final_status(records: &[Value]) -> BTreeMap<String, String> {
    records
        .iter()
        .map(|r| {
            (
                r["message_id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn metric(port: u16, name: &str) -> Option<u64> {
    http_get(port, "/metrics")?
        .1
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Acceptance 2: two processes, one Redis, the same 2,000 messages offered to both (30%
/// of them repeating an earlier dedup key): the agent runs exactly once per key in total,
/// and each process's ledger ends every message as succeeded or duplicate.
#[test]
fn two_processes_on_one_redis_run_each_key_exactly_once() {
    const MESSAGES: usize = 2_000;
    const DUPLICATES: usize = 600;
    let url = shared_redis_url();
    require_redis(&url);
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("two");
    let _keys = RedisKeys {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let plan = Plan::new("two", MESSAGES, DUPLICATES, 0x9e37_79b9_7f4a_7c15);
    let unique = plan.unique_keys();
    assert_eq!(unique.len(), MESSAGES - DUPLICATES);
    let messages = dir.path().join("messages.jsonl");
    plan.write(&messages);
    let runs_file = dir.path().join("runs.log");
    let agent = counting_agent(dir.path(), &runs_file, PROCESS, "0");
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"name: redis-e2e
source: {{type: mock, queue: orders, file: "{messages}"}}
processing:
  concurrency: 16
  duplicate_in_flight_delay: 50ms
idempotency:
  key_prefix: {prefix}
  lease: 2m
  window: 10m
  store: {{type: redis, url: "{url}"}}
agent:
  targets:
    main: {{type: command, program: /bin/sh, args: ["{agent}"], timeout: 30s}}
ledger: {{type: jsonl, path: "${{QT_E2E_LEDGER}}"}}
observability: {{admin: {{listen: "127.0.0.1:0"}}, log: {{level: warn}}}}
"#,
            messages = messages.display(),
            agent = agent.display(),
        ),
    )
    .unwrap();

    let ledger_of = |p: &str| dir.path().join(format!("ledger-{p}.jsonl"));
    // The admin servers listen on ports of their own choosing, never asked.
    let mut procs: Vec<(&str, QtRun)> = ["a", "b"]
        .into_iter()
        .map(|p| {
            let run = QtRun::spawn(
                qt().args(["run", "--until-idle", "-c"])
                    .arg(&cfg)
                    .env("QT_E2E_LEDGER", ledger_of(p))
                    .env("QT_E2E_PROCESS", p),
                &dir.path().join(format!("{p}.log")),
                0,
            );
            (p, run)
        })
        .collect();
    for (name, p) in &mut procs {
        let status = p.wait_exit(Duration::from_secs(150));
        assert!(status.success(), "qt run ({name}) failed: {status}\n{}", p.logs());
    }

    // The agent's own count: each key exactly once, whichever process ran it.
    let key_of: BTreeMap<&str, &str> = plan.messages.iter().map(|(id, k)| (id.as_str(), k.as_str())).collect();
    let runs = agent_runs(&runs_file);
    let mut per_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, process) in &runs {
        per_key.entry(key_of[id.as_str()]).or_default().push(process.as_str());
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, p)| p.len() > 1).collect();
    assert!(twice.is_empty(), "keys run more than once: {twice:?}");
    assert_eq!(per_key.len(), unique.len(), "every key ran");
    assert_eq!(runs.len(), unique.len());
    for p in ["a", "b"] {
        eprintln!("process {p} ran {} keys", runs.iter().filter(|(_, by)| by == p).count());
        assert!(
            runs.iter().any(|(_, by)| by == p),
            "process {p} ran nothing: the two did not really share the work"
        );
    }

    // Each process's ledger: every message ends succeeded or duplicate; between them,
    // exactly one success per key.
    let mut successes: BTreeMap<String, usize> = BTreeMap::new();
    let mut totals = (0, 0);
    for (name, p) in &procs {
        let records = jsonl(&ledger_of(name));
        eprintln!(
            "process {name}: {} ledger records, {} deferred (key in flight elsewhere)",
            records.len(),
            records.iter().filter(|r| r["status"] == "deferred").count()
        );
        let finals = final_status(&records);
        assert_eq!(finals.len(), MESSAGES, "process {name}: every message has a record");
        for (id, status) in &finals {
            assert!(
                status == "succeeded" || status == "duplicate",
                "process {name}: {id} ended {status}"
            );
            if status == "succeeded" {
                *successes.entry(key_of[id.as_str()].to_owned()).or_default() += 1;
            }
        }
        let s = summary(&p.stdout());
        totals.0 += s["succeeded"];
        totals.1 += s["duplicates"];
        eprintln!("process {name}: {s:?}");
    }
    assert!(
        successes.values().all(|&n| n == 1),
        "a key succeeded twice: {successes:?}"
    );
    assert_eq!(successes.len(), unique.len());
    assert_eq!(totals, (unique.len() as u64, (2 * MESSAGES - unique.len()) as u64));

    // And Redis remembers each key as done.
    let stored = keys_under(&url, &prefix);
    assert_eq!(stored.len(), unique.len(), "one claim key per dedup key");
    assert!(stored.values().all(|v| v.starts_with("done:")), "every claim completed");
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OnStoreError {
    FailOpen,
    FailClosed,
}

/// What a fault run saw.
struct FaultRun {
    plan_keys: BTreeSet<String>,
    /// Message id -> dedup key, for every message (file and sent).
    key_of: BTreeMap<String, String>,
    runs: Vec<(String, String)>,
    runs_at_kill: usize,
    runs_at_restart: usize,
    records: Vec<Value>,
    idempotency_errors: u64,
    stored: BTreeMap<String, String>,
    sent_during_outage: Vec<String>,
}

/// Acceptance 3, the shared part: a slow agent works through 200 messages (50 repeating a
/// key); Redis is killed once 40 have run, four messages are sent during the outage, Redis
/// comes back, four more are sent, and the run goes on until every message is settled.
fn run_through_a_redis_outage(mode: OnStoreError) -> FaultRun {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = PrivateRedis::start(&dir.path().join("redis"));
    let url = redis.url();
    let plan = Plan::new("file", 200, 50, 0x2545_f491_4f6c_dd1d);
    let messages = dir.path().join("messages.jsonl");
    plan.write(&messages);
    let runs_file = dir.path().join("runs.log");
    let agent = counting_agent(dir.path(), &runs_file, PROCESS, "0.05");
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let cfg = dir.path().join("qt.yaml");
    let policy = match mode {
        OnStoreError::FailOpen => "fail_open",
        OnStoreError::FailClosed => "fail_closed",
    };
    std::fs::write(
        &cfg,
        format!(
            r#"name: redis-outage
source: {{type: mock, queue: orders, file: "{messages}"}}
processing:
  concurrency: 4
  duplicate_in_flight_delay: 100ms
idempotency:
  key_prefix: outage
  lease: 2m
  window: 10m
  on_store_error: {policy}
  store_error_delay: 300ms
  store: {{type: redis, url: "{url}", connect_timeout: 1s, command_timeout: 1s}}
agent:
  targets:
    main: {{type: command, program: /bin/sh, args: ["{agent}"], timeout: 30s}}
ledger: {{type: jsonl, path: "{ledger}"}}
observability: {{admin: {{listen: "127.0.0.1:{port}"}}, log: {{level: info}}}}
"#,
            messages = messages.display(),
            agent = agent.display(),
            ledger = ledger_path.display(),
        ),
    )
    .unwrap();
    let mut key_of: BTreeMap<String, String> = plan.messages.iter().cloned().collect();
    let send = |id: &str, key: &str| {
        let out = run_bounded(
            qt().args(["send", "-c"]).arg(&cfg).args([
                "--id",
                id,
                "--body",
                &format!("{{\"id\":\"{id}\"}}"),
                "-H",
                &format!("x-dedup-key={key}"),
            ]),
            dir.path(),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "qt send {id}: {}", out.stderr);
    };

    let mut proc = QtRun::start(
        &cfg,
        &dir.path().join("outage.log"),
        port,
        &[("QT_E2E_PROCESS", "solo")],
    );
    wait_for("the admin server", Duration::from_secs(20), || {
        http_get(port, "/healthz")
    });

    // Mid-run: the first messages have run, most are still to come.
    let runs_at_kill = wait_for("40 runs before the outage", Duration::from_secs(30), || {
        let n = agent_runs(&runs_file).len();
        (n >= 40).then_some(n)
    });
    redis.kill();
    wait_for("the engine to notice the outage", Duration::from_secs(20), || {
        metric(port, "qt_idempotency_errors_total").filter(|&n| n > 0)
    });

    // During the outage: a new key, a key that completed before it, and repeats of both.
    let first_key = plan.messages[0].1.clone();
    let sent_during_outage: Vec<(String, String)> = vec![
        ("outage-0".into(), "sent-k0".into()),
        ("outage-1".into(), first_key.clone()),
        ("outage-2".into(), "sent-k0".into()),
        ("outage-3".into(), "sent-k1".into()),
    ];
    for (id, key) in &sent_during_outage {
        send(id, key);
        key_of.insert(id.clone(), key.clone());
    }
    let outage_ids: Vec<String> = sent_during_outage.iter().map(|(id, _)| id.clone()).collect();
    match mode {
        // Processing goes on without Redis: the messages sent meanwhile finish.
        OnStoreError::FailOpen => wait_for(
            "fail_open to process the outage messages",
            Duration::from_secs(60),
            || {
                let finals = final_status(&ledger(&ledger_path));
                outage_ids
                    .iter()
                    .all(|id| finals.get(id).is_some_and(|s| s == "succeeded"))
                    .then_some(())
            },
        ),
        // Nothing new runs: each message sent meanwhile is deferred for the store.
        OnStoreError::FailClosed => wait_for(
            "fail_closed to defer the outage messages",
            Duration::from_secs(60),
            || {
                let records = ledger(&ledger_path);
                outage_ids
                    .iter()
                    .all(|id| {
                        records.iter().any(|r| {
                            r["message_id"] == id.as_str()
                                && r["status"] == "deferred"
                                && r["error"].as_str().is_some_and(|e| e.contains("idempotency store"))
                        })
                    })
                    .then_some(())
            },
        ),
    }
    let runs_at_restart = agent_runs(&runs_file).len();
    redis.restart();

    // After the restart: a new key, and repeats of keys done before and during the outage.
    let after: Vec<(String, String)> = vec![
        ("after-0".into(), "sent-k2".into()),
        ("after-1".into(), first_key),
        ("after-2".into(), "sent-k0".into()),
        ("after-3".into(), "sent-k2".into()),
    ];
    for (id, key) in &after {
        send(id, key);
        key_of.insert(id.clone(), key.clone());
    }
    wait_for(
        "every message to be settled after the restart",
        Duration::from_secs(90),
        || {
            let finals = final_status(&ledger(&ledger_path));
            key_of
                .keys()
                .all(|id| finals.get(id).is_some_and(|s| s == "succeeded" || s == "duplicate"))
                .then_some(())
        },
    );
    let idempotency_errors = metric(port, "qt_idempotency_errors_total").expect("metrics answer");
    // Completions Redis missed during the outage are paid back once it answers; give the
    // store a moment if the last of them is still under way.
    let stored = wait_for("no claim left in flight", Duration::from_secs(15), || {
        let stored = keys_under(&url, "outage");
        stored.values().all(|v| v.starts_with("done:")).then_some(stored)
    });
    let status = proc.terminate(Duration::from_secs(40));
    let stderr = proc.logs();
    let records = jsonl(&ledger_path);
    let deferred_for_store = records
        .iter()
        .filter(|r| r["status"] == "deferred" && r["error"].as_str().is_some_and(|e| e.contains("idempotency store")))
        .count();
    eprintln!(
        "{policy}: {} runs ({runs_at_kill} at the kill, {runs_at_restart} at the restart), {} ledger records, \
         {deferred_for_store} deferred for the store, qt_idempotency_errors_total {idempotency_errors}",
        agent_runs(&runs_file).len(),
        records.len(),
    );
    for line in stderr
        .lines()
        .filter(|l| l.contains("Redis did not confirm") || l.contains("Redis confirmed"))
    {
        eprintln!("  {line}");
    }
    assert!(status.success(), "qt run exits 0 on SIGTERM: {status}\n{stderr}");
    assert!(
        stderr.contains("Redis did not confirm"),
        "the store said it kept the completions it could not make:\n{stderr}"
    );
    FaultRun {
        plan_keys: plan.unique_keys(),
        key_of,
        runs: agent_runs(&runs_file),
        runs_at_kill,
        runs_at_restart,
        records,
        idempotency_errors,
        stored,
        sent_during_outage: outage_ids,
    }
}

impl FaultRun {
    fn runs_per_key(&self) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for (id, _) in &self.runs {
            *n.entry(self.key_of[id].clone()).or_default() += 1;
        }
        n
    }

    fn all_keys(&self) -> BTreeSet<String> {
        self.key_of.values().cloned().collect()
    }

    /// Every message, file and sent, ends succeeded or duplicate: none is lost.
    fn assert_nothing_lost(&self) {
        let finals = final_status(&self.records);
        for id in self.key_of.keys() {
            let status = finals.get(id).map(String::as_str);
            assert!(
                matches!(status, Some("succeeded" | "duplicate")),
                "{id} ended {status:?}"
            );
        }
        let per_key = self.runs_per_key();
        for key in self.all_keys() {
            assert!(per_key.get(&key).copied().unwrap_or(0) >= 1, "{key} never ran");
        }
        assert!(self.plan_keys.is_subset(&self.all_keys()));
    }
}

/// Acceptance 3, `fail_open`: while Redis is down messages keep running (without dedup)
/// and are counted as idempotency errors; once it is back dedup resumes; no message is
/// lost.
#[test]
fn fail_open_keeps_processing_through_a_redis_outage() {
    let run = run_through_a_redis_outage(OnStoreError::FailOpen);
    run.assert_nothing_lost();
    assert!(
        run.idempotency_errors > 0,
        "the outage shows in qt_idempotency_errors_total"
    );
    assert!(
        run.runs_at_restart > run.runs_at_kill,
        "runs went on during the outage ({} at the kill, {} at the restart)",
        run.runs_at_kill,
        run.runs_at_restart
    );
    // The messages sent during the outage ran then, before Redis was back.
    let ran_during_outage: BTreeSet<&str> = run.runs[run.runs_at_kill..run.runs_at_restart]
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    for id in &run.sent_during_outage {
        assert!(
            ran_during_outage.contains(id.as_str()),
            "{id} did not run during the outage"
        );
    }
    // Processing resumed with dedup: the repeat of a key that completed after the restart
    // was caught.
    let finals = final_status(&run.records);
    assert_eq!(finals["after-0"], "succeeded");
    let after_3 = run.runs.iter().filter(|(id, _)| id == "after-3").count();
    assert_eq!(
        (after_3, finals["after-3"].as_str()),
        (0, "duplicate"),
        "after-3 repeats after-0's key once Redis is back"
    );
    assert!(run.stored.values().all(|v| v.starts_with("done:")));
}

/// Acceptance 3, `fail_closed`: while Redis is down nothing new runs (messages are deferred
/// and retried), once it is back everything is processed, and no key ever runs twice —
/// including keys whose runs finished while Redis was down.
#[test]
fn fail_closed_never_runs_a_key_twice_through_a_redis_outage() {
    let run = run_through_a_redis_outage(OnStoreError::FailClosed);
    run.assert_nothing_lost();
    assert!(
        run.idempotency_errors > 0,
        "the outage shows in qt_idempotency_errors_total"
    );
    let twice: Vec<_> = run.runs_per_key().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "keys run more than once: {twice:?}");
    assert_eq!(run.runs.len(), run.all_keys().len(), "one run per key");
    // What was sent during the outage ran only after the restart.
    for id in &run.sent_during_outage {
        let at = run.runs.iter().position(|(r, _)| r == id);
        if let Some(at) = at {
            assert!(
                at >= run.runs_at_restart,
                "{id} ran during the outage (run {at}, restart at {})",
                run.runs_at_restart
            );
        }
    }
    assert!(
        run.runs.len() > run.runs_at_restart,
        "processing resumed after the restart"
    );
    // Every key is remembered as done, including the ones that finished during the outage.
    let done: BTreeSet<&str> = run.stored.keys().map(|k| k.rsplit(':').next().unwrap()).collect();
    for key in run.all_keys() {
        assert!(done.contains(key.as_str()), "{key} is not marked done in Redis");
    }
}
