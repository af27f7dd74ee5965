//! What an `http` target answers (`qt-cli`'s `agents/response.rs` and `agents/report.rs`):
//! the status, `Retry-After` and the body, cut at the target's `max_response_bytes` as the
//! agent reads it, into a run (a 2xx's report) or an error of the status's class quoting the
//! start of the body with the target's secrets masked.
//!
//! The input is the status on the first line, the `Retry-After` value on the second (empty:
//! none), then the body.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/qt-cli/src/agents/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../../crates/qt-cli/src/agents/response.rs"]
mod response;

use http::{HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use qt_core::redact::Redactor;

/// `max_response_bytes` for the fuzzed target; small so that bodies past it are common.
const MAX_RESPONSE_BYTES: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |b| *b == b'\n');
    let (Some(status), Some(retry_after)) = (lines.next(), lines.next()) else {
        return;
    };
    let body = lines.next().unwrap_or_default();
    let Ok(status) = StatusCode::from_bytes(status) else {
        return;
    };
    let retry_after = match retry_after {
        [] => None,
        value => HeaderValue::from_bytes(value)
            .ok()
            .as_ref()
            .and_then(response::parse_retry_after),
    };
    let (body, complete) = if body.len() > MAX_RESPONSE_BYTES {
        (&body[..MAX_RESPONSE_BYTES], false)
    } else {
        (body, true)
    };
    let redactor = Redactor::new(["s3cr3t-token".to_owned(), "pass\"word".to_owned()]);
    let what = "POST https://agents.example/run (target bot)";
    match response::http_outcome(what, status, retry_after, body, complete, &redactor) {
        Ok(_) => assert!(status.is_success()),
        Err(e) => {
            assert!(!status.is_success());
            assert!(!e.message.contains("s3cr3t-token"), "{}", e.message);
            assert!(
                e.message.len() <= what.len() + 64 + response::SNIPPET_LIMIT,
                "{} bytes",
                e.message.len()
            );
        }
    }
});
