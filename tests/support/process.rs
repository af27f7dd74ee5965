//! Running the `qt` binary: bounded one-shot commands, and `qt run` processes under a guard
//! that kills their whole process group.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::files::{by_message, ledger};
use super::http::http_get;
use super::wait::{poll, wait_until};
use super::{repo_root, unique};

/// The `qt` binary, run from the workspace root, logging at the level its configuration
/// sets rather than at whatever `RUST_LOG` the test runner has.
pub fn qt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qt"));
    c.current_dir(repo_root());
    c.env_remove("RUST_LOG");
    c
}

/// The command line of `cmd` without its environment, which may hold test credentials.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Output of a `qt` command that had to end within a bound.
#[derive(Debug)]
pub struct Finished {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Checks that the command succeeded and printed every one of `words`.
    pub fn assert_shows(&self, words: &[&str]) {
        assert!(self.status.success(), "{}: {}", self.command, self.stderr);
        self.assert_contains(&self.stdout, words);
    }

    /// Checks that `qt` refused the configuration (exit 2) naming every one of `words`.
    pub fn assert_refused(&self, words: &[&str]) {
        assert_eq!(self.status.code(), Some(2), "{}: {}", self.command, self.stderr);
        self.assert_contains(&self.stderr, words);
    }

    fn assert_contains(&self, output: &str, words: &[&str]) {
        for w in words {
            assert!(output.contains(w), "{}: {w:?} not in:\n{output}", self.command);
        }
    }

    /// The id a successful `qt send` printed as `sent <id>`.
    pub fn sent_id(&self) -> String {
        self.printed("sent ")
    }

    /// The trace a successful `qt send` started (or continued), printed as `trace <id>`.
    pub fn sent_trace(&self) -> String {
        self.printed("trace ")
    }

    fn printed(&self, prefix: &str) -> String {
        self.assert_shows(&[]);
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("qt send prints `{prefix}...`:\n{}", self.stdout))
            .to_owned()
    }
}

/// Runs `cmd` to completion (output through files in `dir`, so a chatty child cannot block
/// on a full pipe), killing it if it runs longer than `within`.
pub fn run_bounded(cmd: &mut Command, dir: &Path, within: Duration) -> Finished {
    let name = unique("out");
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("the qt binary runs");
    let command = command_line(cmd);
    let Some(status) = poll(within, Duration::from_millis(20), || child.try_wait().unwrap()) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{command} did not finish within {within:?}; stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    };
    let done = Finished {
        command,
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    eprintln!(
        "$ {} -> {status}\nstdout:\n{}\nstderr:\n{}",
        done.command, done.stdout, done.stderr
    );
    done
}

/// The `qt run --until-idle` summary: row name -> count.
pub fn summary(stdout: &str) -> BTreeMap<String, u64> {
    stdout
        .lines()
        .filter_map(|l| {
            let (name, n) = l.trim().rsplit_once(' ')?;
            Some((name.trim().to_owned(), n.parse().ok()?))
        })
        .collect()
}

/// A running `qt run`, in a process group of its own so that the agent programs it started
/// die with it. Dropping it kills the whole group. Its stderr (the log) goes to a file and
/// its stdout to the same path with the extension `stdout`.
#[derive(Debug)]
pub struct QtRun {
    child: Option<Child>,
    log: PathBuf,
    stdout: PathBuf,
    admin_port: u16,
}

impl QtRun {
    /// `qt run -c <config>` with `env` added; its admin server listens on `admin_port`.
    pub fn start(config: &Path, log: &Path, admin_port: u16, env: &[(&str, &str)]) -> Self {
        Self::spawn(
            qt().args(["run", "-c"]).arg(config).envs(env.iter().copied()),
            log,
            admin_port,
        )
    }

    /// Starts `cmd`, a `qt run` command line; `admin_port` is only asked by the methods that
    /// talk to the admin server.
    pub fn spawn(cmd: &mut Command, log: &Path, admin_port: u16) -> Self {
        let stdout = log.with_extension("stdout");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(log).unwrap())
            .process_group(0)
            .spawn()
            .expect("qt run starts");
        Self {
            child: Some(child),
            log: log.to_owned(),
            stdout,
            admin_port,
        }
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }

    pub fn stdout(&self) -> String {
        read(&self.stdout)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("still running").id()
    }

    /// Waits until `/readyz` answers 200 (connected and consuming).
    pub fn wait_ready(&mut self, within: Duration) {
        let (child, log, port) = (self.child.as_mut().unwrap(), &self.log, self.admin_port);
        let ready = poll(within, Duration::from_millis(50), || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("qt run exited ({status}) before it was ready:\n{}", read(log));
            }
            matches!(http_get(port, "/readyz"), Some((200, _))).then_some(())
        });
        assert!(ready.is_some(), "qt run not ready within {within:?}:\n{}", self.logs());
    }

    /// `/status` as JSON.
    pub fn status(&self) -> Value {
        let (code, body) = http_get(self.admin_port, "/status").expect("the admin server answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn in_flight(&self) -> u64 {
        self.status()["status"]["metrics"]["inflight"]
            .as_u64()
            .expect("status.metrics.inflight")
    }

    /// Waits until the ledger at `path` has a record of every one of `ids`, then returns each
    /// one's record; a message recorded more than once fails the test.
    pub fn wait_recorded_once(&self, path: &Path, ids: &[&str], within: Duration) -> BTreeMap<String, Value> {
        wait_until(
            "a ledger record for every sent message",
            within,
            || {
                let seen = by_message(&ledger(path));
                ids.iter().all(|id| seen.contains_key(*id))
            },
            || format!("ledger:\n{:#?}\nqt log:\n{}", ledger(path), self.logs()),
        );
        by_message(&ledger(path))
            .into_iter()
            .filter(|(id, _)| ids.contains(&id.as_str()))
            .map(|(id, mut rs)| {
                assert_eq!(rs.len(), 1, "{id}: {rs:#?}");
                (id, rs.remove(0))
            })
            .collect()
    }

    /// SIGTERM, then waits (bounded) for the graceful exit. The logs stay readable.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = self.pid().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.wait_exit(within)
    }

    /// Waits (bounded) for the process to exit by itself, then kills what is left of its
    /// group.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("still running");
        let pid = child.id().to_string();
        let Some(status) = poll(within, Duration::from_millis(50), || child.try_wait().unwrap()) else {
            panic!("qt run did not exit within {within:?}:\n{}", self.logs());
        };
        self.child = None;
        kill_group(&pid);
        status
    }

    /// SIGKILL to the `qt` process alone (no chance to drain, settle, commit or close
    /// anything), then SIGKILL to the agent programs it left behind.
    pub fn kill_hard(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        child.kill().expect("SIGKILL qt");
        child.wait().unwrap();
        kill_group(&pid);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn kill_group(pid: &str) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

impl Drop for QtRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&child.id().to_string());
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "qt run was still running and has been killed; its log:\n{}",
                self.logs()
            );
        }
    }
}
