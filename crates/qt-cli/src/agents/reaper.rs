//! Ends the command agents' process groups when the `qt` process that started them dies
//! without ending them (SIGKILL, an OOM kill, a crash): a run cut off with its qt process is
//! delivered again to another, and must not go on beside the new run.
//!
//! A companion process, `qt reap-agents`, is started when the first `command` program runs. qt
//! writes `+PGID` on its stdin when a program starts and `-PGID` when its run is over. When
//! qt dies, the kernel closes the pipe; the reaper reads the end of it, sends SIGKILL to every
//! group still listed, and exits. It runs in a process group of its own, so a Ctrl-C meant
//! for qt does not end it first.
//!
//! Not the kernel's parent-death signal set in each program between fork and exec: a
//! `pre_exec` makes std fork qt instead of spawning with vfork, so each spawn copies qt's page
//! tables and every page qt writes afterwards faults once; that halved the command target's
//! rate (`cargo xtask bench http`). And it reached the program only, not what it started.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, ExitCode, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::warn;

/// The hidden subcommand the companion runs.
pub const SUBCOMMAND: &str = "reap-agents";

/// qt's end of the pipe to its reaper.
#[derive(Debug)]
pub struct Reaper {
    /// `None` once a write failed (the reaper is gone): runs go on without it.
    stdin: Mutex<Option<ChildStdin>>,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

/// The reaper, started on first use. `None` if it cannot be started (logged once): programs
/// then outlive a qt process that dies.
pub fn get() -> Option<&'static Reaper> {
    REAPER
        .get_or_init(|| match Reaper::start() {
            Ok(reaper) => Some(reaper),
            Err(e) => {
                warn!(error = %e, "cannot start `qt {SUBCOMMAND}`; if this qt process dies, the command agents it started go on running");
                None
            }
        })
        .as_ref()
}

impl Reaper {
    fn start() -> std::io::Result<Self> {
        let qt = std::env::current_exe()?;
        // Never waited for: it outlives this process by design, and ends when the pipe does.
        let child = Command::new(qt)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Self {
            stdin: Mutex::new(child.stdin),
        })
    }

    /// A program's group is running: end it if qt dies.
    pub fn watch(&self, pgid: Pid) {
        self.send('+', pgid);
    }

    /// The group's run is over (its program exited, or the group was ended).
    pub fn forget(&self, pgid: Pid) {
        self.send('-', pgid);
    }

    fn send(&self, op: char, pgid: Pid) {
        let mut stdin = self.stdin.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pipe) = stdin.as_mut() else { return };
        // One short line is one write, never blocked for long: the reaper reads as it comes.
        if let Err(e) = pipe.write_all(format!("{op}{}\n", pgid.as_raw()).as_bytes()) {
            warn!(error = %e, "`qt {SUBCOMMAND}` is gone; if this qt process dies, the command agents it started go on running");
            *stdin = None;
        }
    }
}

/// `qt reap-agents`: keeps the list qt sends, and when its stdin ends (qt exited or died),
/// sends SIGKILL to every group still on it.
pub fn serve() -> ExitCode {
    let mut running = HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        match (op, pgid.parse::<i32>()) {
            ("+", Ok(pgid)) if pgid > 1 => {
                running.insert(pgid);
            }
            ("-", Ok(pgid)) => {
                running.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in running {
        // A group already gone is fine (ESRCH).
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    ExitCode::SUCCESS
}
