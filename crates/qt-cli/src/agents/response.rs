//! What an agent's answer means: a `command` program's exit status and output, an `http`
//! target's status, `Retry-After` and body, each read into a run or an error. Nothing here
//! starts a process or opens a connection, so the fuzz targets `agent_command` and
//! `agent_http` compile this file, with `report.rs`, on their own; it names no module of
//! the CLI but `super::report`.

use std::time::{Duration, SystemTime};

use http::{HeaderValue, StatusCode};
use qt_core::redact::Redactor;
use qt_core::{AgentError, AgentRun, ErrorClass};
use serde::Deserialize;

use super::report::Report;

/// `sysexits.h` EX_TEMPFAIL: the conventional "try again later" exit code.
pub(super) const EXIT_RETRYABLE: i32 = 75;
/// How much of a failing program's stderr goes into the error.
pub(super) const STDERR_TAIL: usize = 2048;
/// Most bytes of a failed call's response body that go into its error.
pub(super) const SNIPPET_LIMIT: usize = 512;

/// What an exit 75 may say on stdout: when to try again.
#[derive(Debug, Default, Deserialize)]
struct RetryReport {
    #[serde(default)]
    retry_after_ms: Option<u64>,
}

/// The outcome of a program that exited by itself: `code` is its exit code, `None` when a
/// signal ended it; `stdout` and `stderr` are what was kept of its output.
pub(super) fn command_outcome(
    code: Option<i32>,
    stdout: &[u8],
    stderr: &[u8],
    redactor: &Redactor,
) -> Result<AgentRun, AgentError> {
    match code {
        Some(0) => Ok(Report::read(stdout).into_run(redactor)),
        Some(EXIT_RETRYABLE) => {
            let message = format!("exit {EXIT_RETRYABLE} (retryable): {}", tail(stderr, redactor));
            let report: RetryReport = serde_json::from_slice(stdout.trim_ascii()).unwrap_or_default();
            Err(match report.retry_after_ms {
                Some(ms) => AgentError::rate_limited(message, Some(Duration::from_millis(ms))),
                None => AgentError::new(ErrorClass::Retryable, message),
            })
        }
        Some(code) => Err(AgentError::permanent(format!(
            "exit {code}: {}",
            tail(stderr, redactor)
        ))),
        None => Err(AgentError::retryable(format!(
            "killed by a signal: {}",
            tail(stderr, redactor)
        ))),
    }
}

/// The last [`STDERR_TAIL`] bytes of stderr as text: secrets masked, then cut on a character
/// boundary (masking first, so a secret straddling the cut is still masked).
fn tail(stderr: &[u8], redactor: &Redactor) -> String {
    let text = redactor.redact(String::from_utf8_lossy(stderr).trim());
    let text = text.as_str();
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

/// The outcome of an http target's answer. A 2xx reads the body's report, unless the body was
/// longer than the limit (`complete` false), which reads as no report. Any other status is an
/// error of its class, saying `what` was called, the status and the start of the body.
pub(super) fn http_outcome(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    complete: bool,
    redactor: &Redactor,
) -> Result<AgentRun, AgentError> {
    if status.is_success() {
        if !complete {
            return Ok(AgentRun::default());
        }
        return Ok(Report::read(body).into_run(redactor));
    }
    let class = classify(status);
    let message = format!("{what} answered {status}: {}", snippet(body, complete, redactor));
    Err(AgentError {
        class,
        message,
        retry_after: retry_after.filter(|_| class.is_retryable()),
    })
}

/// The body as text for an error: secrets masked, then cut to [`SNIPPET_LIMIT`] bytes on a
/// character boundary (masking first, so a secret straddling the cut is still masked).
fn snippet(body: &[u8], complete: bool, redactor: &Redactor) -> String {
    let text = redactor.redact(String::from_utf8_lossy(body).trim());
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    if text.len() <= SNIPPET_LIMIT && complete {
        return text;
    }
    let mut end = SNIPPET_LIMIT.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The outcome class of a non-2xx status.
fn classify(status: StatusCode) -> ErrorClass {
    match status.as_u16() {
        408 => ErrorClass::Timeout,
        429 => ErrorClass::RateLimited,
        425 | 500 | 502 | 503 | 504 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 10.2.3); a date in the past is 0.
pub(super) fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}
