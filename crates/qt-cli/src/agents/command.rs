//! A target that runs a program per message: the event as JSON on stdin; exit 0 is success
//! (stdout may carry `{"run_id": "...", "llm_calls": N}`), exit 75 (EX_TEMPFAIL) is a
//! retryable failure (stdout may carry `{"retry_after_ms": N}`, making it rate-limited),
//! any other exit is permanent; a run past the timeout is killed and counts as a timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use qt_core::config::CommandTarget;
use qt_core::{AgentError, AgentEvent, AgentRun, AgentRuntime, ErrorClass, Health};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// `sysexits.h` EX_TEMPFAIL: the conventional "try again later" exit code.
const EXIT_RETRYABLE: i32 = 75;
/// How much of a failing program's stderr goes into the error.
const STDERR_TAIL: usize = 2048;
const STDOUT_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
pub struct CommandAgent {
    target: String,
    program: PathBuf,
    config: CommandTarget,
}

#[derive(Debug, Default, Deserialize)]
struct ProgramReport {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    llm_calls: Option<u32>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

impl CommandAgent {
    pub fn new(target: &str, config: &CommandTarget) -> Result<Self, String> {
        let program = resolve_program(&config.program, config.working_dir.as_deref())?;
        Ok(Self {
            target: target.to_owned(),
            program,
            config: config.clone(),
        })
    }

    async fn run(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        let input = serde_json::to_vec(&event.to_json())
            .map_err(|e| AgentError::permanent(format!("cannot serialize the event: {e}")))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.config.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.config.env {
            cmd.env(k, v.expose());
        }
        cmd.env("QT_TRACE_ID", event.envelope.trace_id.to_string());
        cmd.env("QT_MESSAGE_ID", &event.envelope.message_id);
        cmd.env("QT_ATTEMPT", event.attempt.to_string());
        if let Some(dir) = &self.config.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|e| {
            AgentError::retryable(format!(
                "cannot start {} for target {}: {e}",
                self.program.display(),
                self.target
            ))
        })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let io = async {
            // A program that exits without reading its input is not an error of ours.
            let _ = stdin.write_all(&input).await;
            drop(stdin);
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut limited = (&mut stdout).take(STDOUT_LIMIT as u64);
            // Read errors only shorten what we report; the exit status decides the outcome.
            let _ = tokio::join!(limited.read_to_end(&mut out), stderr.read_to_end(&mut err));
            let status = child.wait().await;
            (status, out, err)
        };
        let (status, out, err) = match tokio::time::timeout(self.config.timeout, io).await {
            Ok(r) => r,
            Err(_) => {
                return Err(AgentError::timeout(format!(
                    "{} ran longer than {} and was killed",
                    self.program.display(),
                    humantime::format_duration(self.config.timeout)
                )));
            }
        };
        let status =
            status.map_err(|e| AgentError::retryable(format!("waiting for {} failed: {e}", self.program.display())))?;
        let report: ProgramReport = serde_json::from_slice(out.trim_ascii()).unwrap_or_default();
        match status.code() {
            Some(0) => Ok(AgentRun {
                run_id: report.run_id,
                llm_calls: report.llm_calls.unwrap_or(0),
            }),
            Some(EXIT_RETRYABLE) => {
                let message = format!("exit {EXIT_RETRYABLE} (retryable): {}", tail(&err));
                Err(match report.retry_after_ms {
                    Some(ms) => AgentError::rate_limited(message, Some(Duration::from_millis(ms))),
                    None => AgentError::new(ErrorClass::Retryable, message),
                })
            }
            Some(code) => Err(AgentError::permanent(format!("exit {code}: {}", tail(&err)))),
            None => Err(AgentError::retryable(format!("killed by a signal: {}", tail(&err)))),
        }
    }
}

fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return "(no stderr)".to_owned();
    }
    if text.len() <= STDERR_TAIL {
        return text.to_owned();
    }
    let start = text.len() - STDERR_TAIL;
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(start);
    format!("…{}", &text[start..])
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
