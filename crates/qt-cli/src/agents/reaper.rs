//! Ends the command agents' process groups when the `qt` process that started them dies
//! without ending them (SIGKILL, an OOM kill, a crash): a run cut off with its qt process is
//! delivered again to another, and must not go on beside the new run.
//!
//! A companion process, `qt reap-agents`, is started when the first `command` program runs. qt
//! writes `+PGID` on its stdin when a program starts and `-PGID` when its run is over. When
//! qt dies, the kernel closes the pipe; the reaper reads the end of it, sends SIGKILL to every
//! group still listed, and exits. It runs in a process group of its own, so a Ctrl-C meant
//! for qt does not end it first. A `-PGID` still on its way when qt exits names a group
//! already ended and reaped, which the reaper's SIGKILL then finds gone.
//!
//! Not the kernel's parent-death signal set in each program between fork and exec: a
//! `pre_exec` makes std fork qt instead of spawning with vfork, so each spawn copies qt's page
//! tables and every page qt writes afterwards faults once; that halved the command target's
//! rate (`cargo xtask bench http`). And it reached the program only, not what it started.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::warn;

/// The hidden subcommand the companion runs.
pub const SUBCOMMAND: &str = "reap-agents";

/// qt's end of the pipe to its reaper.
///
/// Lines go through a channel to a thread of their own that writes them: a reaper that stops
/// reading (stopped with SIGSTOP, starved) fills the pipe and blocks that thread only, never a
/// run starting or ending a program.
#[derive(Debug)]
pub struct Reaper {
    lines: mpsc::Sender<String>,
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
        let pipe = child.stdin.expect("stdin was piped");
        Self::writing_to(pipe)
    }

    /// A reaper whose lines are written to `pipe` by a thread of its own.
    fn writing_to(mut pipe: impl Write + Send + 'static) -> std::io::Result<Self> {
        let (lines, to_write) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("qt-reaper-pipe".into())
            .spawn(move || {
                for line in to_write {
                    if let Err(e) = pipe.write_all(line.as_bytes()) {
                        warn!(error = %e, "`qt {SUBCOMMAND}` is gone; if this qt process dies, the command agents it started go on running");
                        return;
                    }
                }
            })?;
        Ok(Self { lines })
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
        // Fails only once the writing thread has ended, which it logged.
        let _ = self.lines.send(format!("{op}{}\n", pgid.as_raw()));
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_reaper_that_does_not_read_never_holds_up_the_runs_telling_it() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let reaper = Reaper::writing_to(writer).unwrap();
        // Far more than a pipe holds (64 KiB on Linux): with writes on the caller's thread,
        // the first calls past that would block until somebody reads.
        let groups = 20_000;
        for pgid in 2..2 + groups {
            reaper.watch(Pid::from_raw(pgid));
        }
        reaper.forget(Pid::from_raw(2));
        drop(reaper);
        let mut written = String::new();
        reader.read_to_string(&mut written).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), groups as usize + 1);
        assert_eq!(lines[0], "+2");
        assert_eq!(lines[lines.len() - 2], format!("+{}", groups + 1));
        assert_eq!(lines[lines.len() - 1], "-2");
    }
}
