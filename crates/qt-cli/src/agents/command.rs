//! A target that runs a program per message.
//!
//! The event goes to the program as JSON on stdin. Exit 0 is success (stdout may carry
//! `{"run_id": "...", "llm_calls": N, "output": ...}`), exit 75 (EX_TEMPFAIL) is a retryable failure (stdout
//! may carry `{"retry_after_ms": N}`, making it rate-limited), any other exit is permanent.
//! The environment carries what the `http` target sends as headers: `QT_MESSAGE_ID`,
//! `QT_EVENT`, `QT_TENANT_ID`, `QT_ATTEMPT`, `QT_FOCUS`, `QT_IDEMPOTENCY_KEY` and a W3C
//! `TRACEPARENT` (plus `QT_TRACE_ID`). `docs/agent-protocol.md` is the whole protocol.
//!
//! The input is written and stdout and stderr are read at the same time, each until it closes,
//! so a program never blocks on a full pipe however much it writes: the first 64 KiB of stdout
//! are kept as the report, the end of stderr for the error message, the rest is discarded.
//!
//! Each program runs in a process group of its own. When it runs past its timeout, or its run is
//! abandoned (a stop whose drain timeout passed, exit), the whole group — the program and
//! everything it started — gets SIGTERM, and SIGKILL if any of it is still there
//! [`KILL_GRACE`] later. A run past its timeout counts as a timeout. What a program leaves
//! running after it exits by itself is its own business and is left alone.
//!
//! If qt itself dies without ending its runs (SIGKILL, OOM kill, a crash), its companion
//! process ([`super::reaper`]) sends SIGKILL to the groups of the runs it cut off: a run cut
//! off with its qt process is redelivered to another, and must not go on beside the new run.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use qt_core::config::CommandTarget;
use qt_core::redact::Redactor;
use qt_core::{AgentError, AgentEvent, AgentRun, AgentRuntime, Health, IdempotencyKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tracing::warn;

use super::reaper;
use super::response::{self, STDERR_TAIL};

/// How much of stdout is kept for the report. The report is a small JSON object; anything
/// past this is output the program did not mean for us, and is read only to be discarded.
const STDOUT_LIMIT: usize = 64 * 1024;
/// How long a program's process group has between SIGTERM and SIGKILL when its run is ended.
/// Long enough for a program that catches TERM to stop its children and clean up; short enough
/// that a run abandoned by a stop is gone soon after. `CommandTarget` has no field for it.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How often an ending looks whether the group is gone before its grace runs out.
const GROUP_POLL: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub struct CommandAgent {
    target: String,
    program: PathBuf,
    config: CommandTarget,
    /// Masks the `env` values in what the program reports.
    redactor: Redactor,
}

/// What a program left when it exited: its status and what was kept of its output.
#[derive(Debug)]
struct Finished {
    status: io::Result<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl CommandAgent {
    pub fn new(target: &str, config: &CommandTarget) -> Result<Self, String> {
        let program = resolve_program(&config.program, config.working_dir.as_deref())?;
        Ok(Self {
            target: target.to_owned(),
            program,
            config: config.clone(),
            redactor: Redactor::new(config.env.values().map(|v| v.expose().to_owned())),
        })
    }

    async fn run(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        let input = serde_json::to_vec(&event.to_json())
            .map_err(|e| AgentError::permanent(format!("cannot serialize the event: {e}")))?;
        let mut child = self.spawn(event)?;
        // Armed from here on: if this future is dropped mid-run, the group is ended.
        let group = ProcessGroup::of(&child, self.describe());
        let finished = match tokio::time::timeout(self.config.timeout, exchange(&mut child, input)).await {
            Ok(finished) => finished,
            Err(_) => {
                let ending = group.end(&mut child).await;
                return Err(self.timed_out(ending));
            }
        };
        group.release();
        self.outcome(finished)
    }

    /// Starts the program in a process group of its own, so that ending its run reaches
    /// everything it started. Not `kill_on_drop`: that would SIGKILL the program alone, at
    /// once; [`ProcessGroup`] ends all of it, with SIGTERM first.
    fn spawn(&self, event: &AgentEvent) -> Result<Child, AgentError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.config.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        crate::stacks::keep_out_of(&mut cmd);
        for (k, v) in &self.config.env {
            cmd.env(k, v.expose());
        }
        set_event_env(&mut cmd, event);
        if let Some(dir) = &self.config.working_dir {
            cmd.current_dir(dir);
        }
        cmd.spawn().map_err(|e| {
            AgentError::retryable(format!(
                "cannot start {} for target {}: {e}",
                self.program.display(),
                self.target
            ))
        })
    }

    /// The outcome of a program that exited by itself.
    fn outcome(&self, finished: Finished) -> Result<AgentRun, AgentError> {
        let Finished { status, stdout, stderr } = finished;
        let status =
            status.map_err(|e| AgentError::retryable(format!("waiting for {} failed: {e}", self.describe())))?;
        response::command_outcome(status.code(), &stdout, &stderr, &self.redactor)
    }

    fn timed_out(&self, ending: Ending) -> AgentError {
        let how = match ending {
            Ending::Terminated => "was sent SIGTERM and ended".to_owned(),
            Ending::Killed => format!(
                "was sent SIGTERM and, still running {} later, SIGKILL",
                humantime::format_duration(KILL_GRACE)
            ),
        };
        AgentError::timeout(format!(
            "{} ran longer than agent.targets.{}.timeout ({}); its process group {how}. \
             Raise the timeout if runs this long are expected, or find where the program hangs",
            self.describe(),
            self.target,
            humantime::format_duration(self.config.timeout),
        ))
    }

    fn describe(&self) -> String {
        format!("{} (target {})", self.program.display(), self.target)
    }
}

/// Writes the input, reads stdout and stderr each until it closes, then waits for the program.
/// The three go on at once, so a program blocked writing one pipe (or not yet reading its
/// input) never waits for us to get to another.
async fn exchange(child: &mut Child, input: Vec<u8>) -> Finished {
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let write = async move {
        // A program that exits without reading its input is not an error of ours. Dropping
        // stdin afterwards closes it, so the program sees the end of its input.
        let _ = stdin.write_all(&input).await;
    };
    // Twice the tail, so that `tail` still sees the text was longer than what it shows.
    let ((), stdout, stderr) = tokio::join!(
        write,
        read_head(stdout, STDOUT_LIMIT),
        read_tail(stderr, 2 * STDERR_TAIL)
    );
    let status = child.wait().await;
    Finished { status, stdout, stderr }
}

/// Reads a pipe until it closes, handing each chunk to `keep`. A read error ends it early:
/// that only shortens what is reported, the exit status decides the outcome.
async fn drain(mut pipe: impl AsyncRead + Unpin, mut keep: impl FnMut(&[u8])) {
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        keep(&buf[..n]);
    }
}

/// Reads a pipe until it closes, keeping its first `limit` bytes.
async fn read_head(pipe: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    drain(pipe, |chunk| {
        let room = limit - kept.len();
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    })
    .await;
    kept
}

/// Reads a pipe until it closes, keeping its last `limit` bytes.
async fn read_tail(pipe: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    drain(pipe, |chunk| {
        kept.extend_from_slice(chunk);
        // Cut only once twice the limit has piled up, so the copying stays linear.
        if kept.len() > 2 * limit {
            kept.drain(..kept.len() - limit);
        }
    })
    .await;
    kept.drain(..kept.len().saturating_sub(limit));
    kept
}

/// The process group a program runs in: its own, with the program as leader, so the group id
/// is its pid. Until released, dropping it ends the group, so that a run abandoned mid-way
/// leaves nothing it started behind.
#[derive(Debug)]
struct ProcessGroup {
    pgid: Option<Pid>,
    /// The program and its target, for the log.
    what: String,
}

/// How an ended group went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Gone within the grace after SIGTERM.
    Terminated,
    /// Part of it was still there after the grace and got SIGKILL.
    Killed,
}

impl ProcessGroup {
    fn of(child: &Child, what: String) -> Self {
        let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        if let (Some(pgid), Some(reaper)) = (pgid, reaper::get()) {
            reaper.watch(pgid);
        }
        Self { pgid, what }
    }

    /// The program exited by itself: its run is over and there is nothing to end.
    fn release(mut self) {
        if let Some(pgid) = self.pgid.take() {
            forget(pgid);
        }
    }

    /// Ends the group and waits until it is gone.
    async fn end(mut self, child: &mut Child) -> Ending {
        let Some(pgid) = self.pgid.take() else {
            return Ending::Terminated;
        };
        let Some(ending) = begin_ending(pgid) else {
            return Ending::Killed;
        };
        // A leader that has exited but not been reaped still counts as a member: reap it so
        // the ending can see the group empty out.
        let _ = child.wait().await;
        match tokio::task::spawn_blocking(move || ending.join()).await {
            Ok(Ok(ending)) => ending,
            // The ending's thread cannot panic; if it did, the group may not have been killed.
            _ => Ending::Terminated,
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Some(pgid) = self.pgid.take() else { return };
        warn!(
            program = %self.what,
            pgid = pgid.as_raw(),
            "a run was abandoned before its program exited; ending the program's process group"
        );
        if let Some(ending) = begin_ending(pgid) {
            track(ending);
        }
    }
}

/// Sends the group SIGTERM and starts a thread that sends SIGKILL if any of the group is still
/// there [`KILL_GRACE`] later: a thread, because a `Drop` cannot wait and the async runtime
/// may be shutting down. Without a thread to wait with, SIGKILL goes at once (`None`).
fn begin_ending(pgid: Pid) -> Option<JoinHandle<Ending>> {
    let _ = killpg(pgid, Signal::SIGTERM);
    let spawned = std::thread::Builder::new()
        .name("qt-agent-ending".to_owned())
        .spawn(move || kill_after_grace(pgid));
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            warn!(pgid = pgid.as_raw(), error = %e, "no thread to wait out the grace; sending SIGKILL now");
            let _ = killpg(pgid, Signal::SIGKILL);
            forget(pgid);
            None
        }
    }
}

/// Waits up to [`KILL_GRACE`] for the group to be gone, then sends SIGKILL to what is left.
fn kill_after_grace(pgid: Pid) -> Ending {
    let ending = wait_out_grace(pgid);
    forget(pgid);
    ending
}

/// The group's run is over: the reaper need not end it if qt dies.
fn forget(pgid: Pid) {
    if let Some(reaper) = reaper::get() {
        reaper.forget(pgid);
    }
}

fn wait_out_grace(pgid: Pid) -> Ending {
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        if !group_running(pgid) {
            return Ending::Terminated;
        }
        std::thread::sleep(GROUP_POLL);
    }
    if !group_running(pgid) {
        return Ending::Terminated;
    }
    warn!(
        pgid = pgid.as_raw(),
        "an agent's process group was still running {} after SIGTERM; sending SIGKILL",
        humantime::format_duration(KILL_GRACE)
    );
    let _ = killpg(pgid, Signal::SIGKILL);
    Ending::Killed
}

/// Whether any process of the group is still running. `kill(2)` counts zombies too, which have
/// exited and only wait to be reaped (by a PID 1 that may be slow to, or never do it), so where
/// there is a /proc its members' states decide.
fn group_running(pgid: Pid) -> bool {
    // Signal 0 checks without sending: ESRCH means no process at all is left in the group.
    if killpg(pgid, None) == Err(Errno::ESRCH) {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .any(|stat| running_member_of(&stat, pgid))
}

/// Reads a `/proc/PID/stat` line: whether that process is in group `pgid` and has not exited.
fn running_member_of(stat: &str, pgid: Pid) -> bool {
    // The command name is in parentheses and may hold anything: count fields after its last ')'.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = fields.split_whitespace();
    let (state, _parent, group) = (fields.next(), fields.next(), fields.next());
    let exited = matches!(state, Some("Z" | "X"));
    !exited && group.and_then(|g| g.parse().ok()) == Some(pgid.as_raw())
}

/// Endings of abandoned runs still inside their grace. The engine drops the runs a stop
/// abandons just before `qt run` exits, and an ending thread that has not sent its SIGKILL yet
/// would die with the process: [`wait_for_ending_groups`] waits for them.
static ENDINGS: Mutex<Vec<JoinHandle<Ending>>> = Mutex::new(Vec::new());

fn track(ending: JoinHandle<Ending>) {
    let mut endings = ENDINGS.lock().unwrap_or_else(PoisonError::into_inner);
    endings.retain(|e| !e.is_finished());
    endings.push(ending);
}

/// Blocks until every abandoned run's process group is gone or has been sent SIGKILL: at most
/// [`KILL_GRACE`] and a little more. Call it after the engine has stopped, before exiting.
pub fn wait_for_ending_groups() {
    let endings = std::mem::take(&mut *ENDINGS.lock().unwrap_or_else(PoisonError::into_inner));
    for ending in endings {
        let _ = ending.join();
    }
}

/// The per-message environment: the same values the `http` target sends as headers
/// (`QT_MESSAGE_ID` is `x-qt-message-id`, `QT_IDEMPOTENCY_KEY` is `idempotency-key`,
/// `TRACEPARENT` is `traceparent`, ...), plus `QT_TRACE_ID`. Variables of the same names in
/// the target's `env` are overridden; `QT_TENANT_ID`, `QT_FOCUS` and `TRACESTATE` are removed
/// when the message has no tenant, focus or trace state, so that qt's own environment cannot leak a stale one in.
fn set_event_env(cmd: &mut Command, event: &AgentEvent) {
    let env = &event.envelope;
    let key = IdempotencyKey::new(env.tenant_id.as_deref(), env.idempotency_key()).scoped();
    cmd.env("QT_MESSAGE_ID", &env.message_id)
        .env("QT_EVENT", event.event_name())
        .env("QT_ATTEMPT", event.attempt.to_string())
        .env("QT_IDEMPOTENCY_KEY", key)
        .env("QT_TRACE_ID", env.trace_id.to_string());
    let trace = event.outgoing_trace();
    cmd.env("TRACEPARENT", trace.traceparent);
    match trace.tracestate {
        Some(state) => cmd.env("TRACESTATE", state),
        None => cmd.env_remove("TRACESTATE"),
    };
    match event.tenant_id() {
        Some(tenant) => cmd.env("QT_TENANT_ID", tenant),
        None => cmd.env_remove("QT_TENANT_ID"),
    };
    match event.focus() {
        Some(focus) => cmd.env("QT_FOCUS", focus),
        None => cmd.env_remove("QT_FOCUS"),
    };
}

/// Finds the program the way a shell would (relative paths against the working directory,
/// bare names on PATH) and checks it can be executed.
fn resolve_program(program: &Path, working_dir: Option<&Path>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    let candidates: Vec<PathBuf> = if program.components().count() > 1 || program.is_absolute() {
        vec![match working_dir {
            Some(dir) if program.is_relative() => dir.join(program),
            _ => program.to_owned(),
        }]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
            .unwrap_or_default()
    };
    candidates
        .into_iter()
        .find(|c| executable(c))
        .ok_or_else(|| format!("{} is not an executable file (or not on PATH)", program.display()))
}

#[async_trait]
impl AgentRuntime for CommandAgent {
    async fn trigger_event(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        self.run(event).await
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use base64::Engine as _;
    use qt_core::{ErrorClass, Headers, Payload, Secret, SourceInfo, TraceId};

    use super::*;

    /// An agent running `sh -c script`, so that no test writes an executable it then runs
    /// (a file another thread's fork still holds open for writing cannot be executed).
    fn shell_agent(script: &str, timeout: Duration) -> CommandAgent {
        let config = CommandTarget {
            program: PathBuf::from("sh"),
            args: vec!["-c".to_owned(), script.to_owned(), "agent".to_owned()],
            timeout,
            env: Default::default(),
            working_dir: None,
        };
        CommandAgent::new("script", &config).expect("sh is on PATH")
    }

    fn event() -> AgentEvent {
        super::super::test_event("script")
    }

    /// A file in `dir` the script writes its background process's pid to.
    fn pid_file(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("pid")
    }

    fn read_pid(file: &Path) -> i32 {
        let text = std::fs::read_to_string(file).expect("the agent wrote its background pid");
        text.trim().parse().expect("a pid")
    }

    /// Whether a process is still alive: exists and is not a zombie (a zombie has exited and
    /// only waits for its parent, maybe a PID 1 that never reaps, to collect its status).
    fn alive(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The state follows the command name, which is in parentheses and may hold spaces.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X'))
    }

    /// Polls until `pid` is gone, for at most `within`.
    async fn gone_within(pid: i32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !alive(pid)
    }

    #[test]
    fn a_stat_line_tells_a_running_member_from_an_exited_one_or_a_stranger() {
        let group = Pid::from_raw(4242);
        assert!(running_member_of("4243 (sleep) S 4242 4242 4242 0 -1", group));
        assert!(running_member_of("4243 (a) b (c) R 1 4242 4242 0 -1", group));
        assert!(!running_member_of("4243 (sleep) Z 1 4242 4242 0 -1", group));
        assert!(!running_member_of("4243 (sleep) S 4242 4243 4242 0 -1", group));
        assert!(!running_member_of("garbage", group));
    }

    #[tokio::test]
    async fn output_past_the_limits_is_drained_so_the_program_can_exit() {
        let agent = shell_agent(
            r#"head -c 1048576 /dev/zero | tr '\0' o
               head -c 1048576 /dev/zero | tr '\0' e >&2
               exit 0"#,
            Duration::from_secs(20),
        );
        let started = Instant::now();
        let run = agent.trigger_event(&event()).await;
        assert_eq!(run, Ok(AgentRun::default()));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_report_is_read_from_stdout_while_a_large_stderr_is_drained() {
        let agent = shell_agent(
            r#"head -c 1048576 /dev/zero | tr '\0' e >&2
               printf '{"run_id": "r-7", "llm_calls": 3}'"#,
            Duration::from_secs(20),
        );
        let run = agent.trigger_event(&event()).await;
        assert_eq!(
            run,
            Ok(AgentRun {
                run_id: Some("r-7".to_owned()),
                llm_calls: 3,
                output: None,
            })
        );
    }

    #[tokio::test]
    async fn a_failure_reports_the_end_of_a_large_stderr() {
        let agent = shell_agent(
            r#"head -c 1048576 /dev/zero | tr '\0' e >&2
               echo ' the last line' >&2
               exit 3"#,
            Duration::from_secs(20),
        );
        let err = agent.trigger_event(&event()).await.expect_err("exit 3 fails");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err.message.starts_with("exit 3: …e"), "{}", err.message);
        assert!(err.message.ends_with("eee the last line"), "{}", err.message);
        assert!(err.message.len() < STDERR_TAIL + 64, "{} bytes", err.message.len());
    }

    #[tokio::test]
    async fn a_failure_masks_the_targets_secrets_in_the_stderr_it_reports() {
        let env = [("AGENT_TOKEN".to_owned(), Secret::new("tok-3f9a1c"))];
        let config = CommandTarget {
            program: PathBuf::from("sh"),
            args: vec![
                "-c".to_owned(),
                r#"echo "cannot call the model with token $AGENT_TOKEN" >&2; exit 75"#.to_owned(),
            ],
            timeout: Duration::from_secs(20),
            env: env.into_iter().collect(),
            working_dir: None,
        };
        let agent = CommandAgent::new("script", &config).expect("sh is on PATH");
        let err = agent.trigger_event(&event()).await.expect_err("exit 75 fails");
        assert_eq!(err.class, ErrorClass::Retryable);
        assert!(!err.message.contains("tok-3f9a1c"), "{}", err.message);
        assert!(
            err.message.contains("cannot call the model with token ***"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_timeout_ends_the_programs_whole_process_group_with_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let pids = pid_file(&dir);
        let agent = shell_agent(
            &format!("sleep 300 & echo $! > {}; sleep 300", pids.display()),
            Duration::from_millis(500),
        );
        let started = Instant::now();
        let err = agent.trigger_event(&event()).await.expect_err("the run times out");
        assert_eq!(err.class, ErrorClass::Timeout);
        assert!(
            err.message.contains("agent.targets.script.timeout (500ms)"),
            "{}",
            err.message
        );
        assert!(err.message.contains("was sent SIGTERM and ended"), "{}", err.message);
        // SIGTERM was enough: the run did not wait out the grace.
        assert!(
            started.elapsed() < Duration::from_millis(500) + KILL_GRACE,
            "took {:?}",
            started.elapsed()
        );
        let grandchild = read_pid(&pids);
        assert!(
            gone_within(grandchild, Duration::from_secs(3)).await,
            "pid {grandchild} outlived the run"
        );
    }

    #[tokio::test]
    async fn a_timed_out_program_gets_sigterm_first_so_it_can_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("cleaned");
        let agent = shell_agent(
            &format!(
                "trap 'echo cleaned > {}; exit 1' TERM; sleep 300 & wait",
                marker.display()
            ),
            Duration::from_millis(500),
        );
        let err = agent.trigger_event(&event()).await.expect_err("the run times out");
        assert_eq!(err.class, ErrorClass::Timeout);
        assert_eq!(std::fs::read_to_string(&marker).unwrap_or_default(), "cleaned\n");
    }

    #[tokio::test]
    async fn a_group_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let pids = pid_file(&dir);
        // An ignored signal stays ignored in the shell's children, so `sleep` ignores it too.
        let agent = shell_agent(
            &format!("trap '' TERM; sleep 300 & echo $! > {}; sleep 300", pids.display()),
            Duration::from_millis(500),
        );
        let started = Instant::now();
        let err = agent.trigger_event(&event()).await.expect_err("the run times out");
        assert_eq!(err.class, ErrorClass::Timeout);
        assert!(err.message.contains("SIGKILL"), "{}", err.message);
        assert!(
            started.elapsed() >= Duration::from_millis(500) + KILL_GRACE,
            "took {:?}",
            started.elapsed()
        );
        let grandchild = read_pid(&pids);
        assert!(
            gone_within(grandchild, Duration::from_secs(1)).await,
            "pid {grandchild} survived SIGKILL"
        );
    }

    #[tokio::test]
    async fn dropping_a_run_mid_way_ends_the_programs_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = pid_file(&dir);
        let agent = shell_agent(
            &format!("sleep 300 & echo $! > {}; sleep 300", pids.display()),
            Duration::from_secs(60),
        );
        let abandoned = tokio::time::timeout(Duration::from_millis(500), agent.trigger_event(&event())).await;
        assert!(abandoned.is_err(), "the run was still going when dropped");
        let grandchild = read_pid(&pids);
        assert!(
            gone_within(grandchild, KILL_GRACE).await,
            "pid {grandchild} outlived the dropped run"
        );
    }

    #[tokio::test]
    async fn a_dropped_run_whose_group_ignores_sigterm_is_killed_before_qt_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pids = pid_file(&dir);
        let agent = shell_agent(
            &format!("trap '' TERM; sleep 300 & echo $! > {}; sleep 300", pids.display()),
            Duration::from_secs(60),
        );
        let abandoned = tokio::time::timeout(Duration::from_millis(500), agent.trigger_event(&event())).await;
        assert!(abandoned.is_err(), "the run was still going when dropped");
        let grandchild = read_pid(&pids);
        // SIGTERM is ignored: it is still there until the grace has passed.
        tokio::time::sleep(KILL_GRACE / 2).await;
        assert!(alive(grandchild), "pid {grandchild} should have ignored SIGTERM");
        tokio::task::spawn_blocking(wait_for_ending_groups).await.unwrap();
        assert!(
            gone_within(grandchild, Duration::from_secs(1)).await,
            "pid {grandchild} survived SIGKILL"
        );
    }

    /// The event of `event()` with a tenant, a focus, a dedup key, an event name, headers and
    /// every source field set, at its second attempt.
    fn full_event(payload: Payload) -> AgentEvent {
        let mut headers = Headers::new();
        headers.insert("x-tenant-id", "acme");
        headers.insert("x-dedup-key", "order-7");
        let mut source = SourceInfo::new("kafka", "orders");
        source.partition = Some(3);
        source.offset = Some(42);
        source.key = Some("k-1".to_owned());
        source.delivery_count = Some(2);
        source.redelivered = true;
        let mut envelope = (*event().envelope).clone();
        envelope.payload = payload;
        envelope.headers = headers;
        envelope.source = source;
        envelope.dedup_key = Some("order-7".to_owned());
        envelope.event_name = Some("order.created".to_owned());
        envelope.tenant_id = Some("acme".to_owned());
        envelope.attempt = 2;
        AgentEvent {
            focus: Some(Arc::from("billing")),
            attempt: 2,
            envelope: Arc::new(envelope),
            ..event()
        }
    }

    /// `event()` with another payload.
    fn event_with(payload: Payload) -> AgentEvent {
        let mut envelope = (*event().envelope).clone();
        envelope.payload = payload;
        AgentEvent {
            envelope: Arc::new(envelope),
            ..event()
        }
    }

    /// `NAME=value` lines of an `env` dump, as a map (no value here spans lines).
    fn read_env(file: &Path) -> std::collections::HashMap<String, String> {
        std::fs::read_to_string(file)
            .expect("the agent wrote its environment")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn is_lower_hex(s: &str, len: usize) -> bool {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[tokio::test]
    async fn the_program_gets_the_http_targets_per_message_headers_as_environment_variables() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("env");
        let agent = shell_agent(&format!("env > {}", dump.display()), Duration::from_secs(20));
        let event = full_event(Payload::json(serde_json::json!({"order": 7})));
        assert_eq!(agent.trigger_event(&event).await, Ok(AgentRun::default()));
        let env = read_env(&dump);
        let var = |name: &str| env.get(name).map(String::as_str);
        assert_eq!(var("QT_MESSAGE_ID"), Some("m-1"));
        assert_eq!(var("QT_EVENT"), Some("order.created"));
        assert_eq!(var("QT_TENANT_ID"), Some("acme"));
        assert_eq!(var("QT_ATTEMPT"), Some("2"));
        assert_eq!(var("QT_FOCUS"), Some("billing"));
        assert_eq!(var("QT_IDEMPOTENCY_KEY"), Some("acme:order-7"));
        let trace_id = event.envelope.trace_id.to_string();
        assert_eq!(var("QT_TRACE_ID"), Some(trace_id.as_str()));
        // W3C: version 00, the message's trace id, a fresh non-zero span id, flags 01 (sampled).
        let traceparent = var("TRACEPARENT").expect("TRACEPARENT is set");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[0], "00", "{traceparent}");
        assert_eq!(parts[1], trace_id, "{traceparent}");
        assert!(
            is_lower_hex(parts[2], 16) && parts[2] != "0000000000000000",
            "{traceparent}"
        );
        assert_eq!(parts[3], "01", "{traceparent}");
        assert_eq!(TraceId::from_traceparent(traceparent), Some(event.envelope.trace_id));
        assert_eq!(var("TRACESTATE"), None, "no producer context, no trace state");
    }

    #[tokio::test]
    async fn the_program_gets_the_producers_sampling_decision_and_tracestate() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("env");
        let agent = shell_agent(&format!("env > {}", dump.display()), Duration::from_secs(20));
        let mut event = full_event(Payload::json(serde_json::json!({"order": 7})));
        let mut envelope = (*event.envelope).clone();
        envelope.trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        envelope
            .headers
            .insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        envelope.headers.insert("tracestate", "rojo=00f067aa0ba902b7");
        event.envelope = Arc::new(envelope);
        assert_eq!(agent.trigger_event(&event).await, Ok(AgentRun::default()));
        let env = read_env(&dump);
        let traceparent = env.get("TRACEPARENT").expect("TRACEPARENT is set");
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && traceparent.ends_with("-00"),
            "{traceparent}"
        );
        assert_eq!(env.get("TRACESTATE").map(String::as_str), Some("rojo=00f067aa0ba902b7"));
    }

    #[tokio::test]
    async fn without_tenant_focus_or_dedup_key_those_variables_are_absent_and_the_key_is_the_message_id() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("env");
        let mut config = shell_agent(&format!("env > {}", dump.display()), Duration::from_secs(20)).config;
        // A stale value in the target's own env must not pass for the message's.
        config.env.insert("QT_TENANT_ID".to_owned(), Secret::new("stale"));
        config.env.insert("QT_FOCUS".to_owned(), Secret::new("stale"));
        let agent = CommandAgent::new("script", &config).unwrap();
        assert_eq!(agent.trigger_event(&event()).await, Ok(AgentRun::default()));
        let env = read_env(&dump);
        assert_eq!(env.get("QT_TENANT_ID"), None);
        assert_eq!(env.get("QT_FOCUS"), None);
        assert_eq!(env.get("QT_EVENT").map(String::as_str), Some("orders"));
        assert_eq!(env.get("QT_ATTEMPT").map(String::as_str), Some("1"));
        assert_eq!(env.get("QT_IDEMPOTENCY_KEY").map(String::as_str), Some("_:m-1"));
        assert!(env.contains_key("TRACEPARENT"));
    }

    /// The event schema shipped in `docs/`.
    fn event_schema() -> serde_json::Value {
        let text = include_str!("../../../../docs/agent-event.schema.json");
        serde_json::from_str(text).expect("docs/agent-event.schema.json is JSON")
    }

    /// A validator for exactly the JSON Schema keywords `docs/agent-event.schema.json` uses
    /// (`type`, `required`, `properties`, `additionalProperties`, `enum`, `const`, `minimum`,
    /// `pattern` of the form `^[class]{n}$`, `format: date-time`, `contentEncoding: base64`,
    /// `allOf`, `if`/`then`, and annotations), with `format` and `contentEncoding` asserted.
    /// It panics on any other keyword, so the schema cannot grow a rule this test skips.
    ///
    /// Not the `jsonschema` crate (this crate's dev-dependency for the configuration schema):
    /// this validator asserts `format` and `contentEncoding` and refuses every keyword it does
    /// not know, which is what keeps the event schema and this test in step.
    fn schema_errors(schema: &serde_json::Value, value: &serde_json::Value, at: &str) -> Vec<String> {
        use serde_json::Value;
        let mut errors = Vec::new();
        let Value::Object(schema) = schema else {
            panic!("{at}: a schema is an object");
        };
        let if_matches = schema.get("if").map(|s| schema_errors(s, value, at).is_empty());
        for (keyword, rule) in schema {
            match keyword.as_str() {
                "$schema" | "$id" | "title" | "description" | "if" => {}
                "type" => {
                    let ok = match rule.as_str().expect("type is a string") {
                        "object" => value.is_object(),
                        "string" => value.is_string(),
                        "integer" => value.is_i64() || value.is_u64(),
                        "boolean" => value.is_boolean(),
                        other => panic!("type {other} is not supported here"),
                    };
                    if !ok {
                        errors.push(format!("{at}: {value} is not of type {rule}"));
                    }
                }
                "required" => {
                    for name in rule.as_array().expect("required is an array") {
                        let name = name.as_str().expect("required names are strings");
                        if value.as_object().is_some_and(|o| !o.contains_key(name)) {
                            errors.push(format!("{at}: {name} is missing"));
                        }
                    }
                }
                "properties" => {
                    let Some(object) = value.as_object() else { continue };
                    for (name, sub) in rule.as_object().expect("properties is an object") {
                        if let Some(v) = object.get(name) {
                            errors.extend(schema_errors(sub, v, &format!("{at}/{name}")));
                        }
                    }
                }
                "additionalProperties" => {
                    let Some(object) = value.as_object() else { continue };
                    let known = schema.get("properties").and_then(Value::as_object);
                    for (name, v) in object {
                        if known.is_some_and(|k| k.contains_key(name)) {
                            continue;
                        }
                        match rule {
                            Value::Bool(false) => errors.push(format!("{at}: {name} is not allowed")),
                            Value::Object(_) => errors.extend(schema_errors(rule, v, &format!("{at}/{name}"))),
                            other => panic!("additionalProperties {other} is not supported here"),
                        }
                    }
                }
                "enum" => {
                    if !rule.as_array().expect("enum is an array").contains(value) {
                        errors.push(format!("{at}: {value} is not one of {rule}"));
                    }
                }
                "const" => {
                    if value != rule {
                        errors.push(format!("{at}: {value} is not {rule}"));
                    }
                }
                "minimum" => {
                    let min = rule.as_i64().expect("an integer minimum");
                    if value.as_i64().is_some_and(|v| v < min) {
                        errors.push(format!("{at}: {value} is below {min}"));
                    }
                }
                "pattern" => {
                    let pattern = rule.as_str().expect("pattern is a string");
                    if let Some(s) = value.as_str()
                        && !matches_class_repeat(pattern, s)
                    {
                        errors.push(format!("{at}: {s:?} does not match {pattern}"));
                    }
                }
                "format" => {
                    assert_eq!(rule, "date-time", "{at}: only format date-time is supported here");
                    if let Some(s) = value.as_str()
                        && chrono::DateTime::parse_from_rfc3339(s).is_err()
                    {
                        errors.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
                    }
                }
                "contentEncoding" => {
                    assert_eq!(rule, "base64", "{at}: only contentEncoding base64 is supported here");
                    if let Some(s) = value.as_str()
                        && base64::engine::general_purpose::STANDARD.decode(s).is_err()
                    {
                        errors.push(format!("{at}: {s:?} is not base64"));
                    }
                }
                "allOf" => {
                    for sub in rule.as_array().expect("allOf is an array") {
                        errors.extend(schema_errors(sub, value, at));
                    }
                }
                "then" => {
                    if if_matches == Some(true) {
                        errors.extend(schema_errors(rule, value, at));
                    }
                }
                other => panic!("{at}: keyword {other} is not supported by this validator"),
            }
        }
        errors
    }

    /// Whether `s` matches `pattern` of the one form the schema uses: `^[class]{n}$`, the class
    /// made of single characters and `a-z` ranges.
    fn matches_class_repeat(pattern: &str, s: &str) -> bool {
        let inner = pattern.strip_prefix("^[").and_then(|p| p.strip_suffix('$'));
        let (class, count) = inner
            .and_then(|p| p.split_once("]{"))
            .and_then(|(class, n)| Some((class, n.strip_suffix('}')?.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("pattern {pattern} is not of the form ^[class]{{n}}$"));
        let class: Vec<char> = class.chars().collect();
        let in_class = |c: char| {
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    if (class[i]..=class[i + 2]).contains(&c) {
                        return true;
                    }
                    i += 3;
                } else {
                    if class[i] == c {
                        return true;
                    }
                    i += 1;
                }
            }
            false
        };
        s.chars().count() == count && s.chars().all(in_class)
    }

    /// Events of every payload format, with and without tenant, focus and dedup key.
    fn sample_events() -> Vec<AgentEvent> {
        let binary = Payload::Binary(bytes::Bytes::from_static(&[0, 159, 146, 150, 255, b'\n']));
        let mut selected = full_event(Payload::json(serde_json::json!({"order": {"id": 7}})));
        selected.selected_payload = Some(Arc::new(serde_json::json!([7, "seven"])));
        vec![
            event(),
            full_event(Payload::json(
                serde_json::json!({"order": 7, "lines": [1, 2], "note": null}),
            )),
            event_with(Payload::json(serde_json::json!("a bare string"))),
            event_with(Payload::Text("plain text, ünïcode\nand a second line".to_owned())),
            full_event(Payload::Text(String::new())),
            event_with(binary.clone()),
            full_event(binary),
            selected,
        ]
    }

    #[tokio::test]
    async fn the_events_a_program_reads_on_stdin_match_docs_agent_event_schema() {
        let schema = event_schema();
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("stdin.json");
        let agent = shell_agent(&format!("cat > {}", input.display()), Duration::from_secs(20));
        let mut formats = std::collections::BTreeSet::new();
        for event in sample_events() {
            assert_eq!(agent.trigger_event(&event).await, Ok(AgentRun::default()));
            let read: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&input).unwrap()).expect("stdin is JSON");
            assert_eq!(read, serde_json::to_value(event.to_json()).unwrap());
            let errors = schema_errors(&schema, &read, "");
            assert!(errors.is_empty(), "{read}\n{errors:#?}");
            formats.insert(read["context"]["payload_format"].as_str().unwrap().to_owned());
        }
        assert_eq!(formats.len(), 3, "every payload format was checked: {formats:?}");
    }

    #[test]
    fn the_schema_rejects_documents_that_break_the_protocol() {
        /// Makes a valid document break one rule.
        type Change = fn(&mut serde_json::Value);
        let schema = event_schema();
        let valid = serde_json::to_value(full_event(Payload::Text("hi".to_owned())).to_json()).unwrap();
        assert_eq!(schema_errors(&schema, &valid, ""), Vec::<String>::new());
        let broken = |change: Change| {
            let mut doc = valid.clone();
            change(&mut doc);
            schema_errors(&schema, &doc, "")
        };
        let cases: [(&str, Change); 10] = [
            ("extra top-level field", |d| d["extra"] = 1.into()),
            ("extra context field", |d| d["context"]["extra"] = 1.into()),
            ("missing event_name", |d| {
                d.as_object_mut().unwrap().remove("event_name");
            }),
            ("missing context.payload", |d| {
                d["context"].as_object_mut().unwrap().remove("payload");
            }),
            ("unknown payload_format", |d| {
                d["context"]["payload_format"] = "xml".into();
            }),
            ("text payload that is not a string", |d| {
                d["context"]["payload"] = serde_json::json!({"a": 1});
            }),
            ("binary payload that is not base64", |d| {
                d["context"]["payload_format"] = "binary".into();
                d["context"]["payload"] = "not base64!".into();
            }),
            ("attempt 0", |d| d["attempt"] = 0.into()),
            ("short trace id", |d| d["context"]["trace_id"] = "abc".into()),
            ("bad received_at", |d| d["context"]["received_at"] = "yesterday".into()),
        ];
        for (what, change) in cases {
            assert!(!broken(change).is_empty(), "the schema accepted a document with {what}");
        }
    }
}
