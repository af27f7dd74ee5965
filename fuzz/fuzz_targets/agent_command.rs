//! What a `command` target's program hands back (`qt-cli`'s `agents/response.rs` and
//! `agents/report.rs`): its exit status, the report on its stdout (or, with exit 75, when to
//! retry) and the tail of its stderr, read into a run or an error with the target's secrets
//! masked.
//!
//! The input is the exit code on the first line (`signal` for a program a signal ended), then
//! stdout, then a NUL byte and stderr.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/qt-cli/src/agents/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../../crates/qt-cli/src/agents/response.rs"]
mod response;

use libfuzzer_sys::fuzz_target;
use qt_core::redact::Redactor;

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().position(|b| *b == b'\n') else {
        return;
    };
    let code = match std::str::from_utf8(&data[..newline]).map(str::trim) {
        Ok("signal") => None,
        Ok(code) => match code.parse::<i32>() {
            Ok(code) => Some(code),
            Err(_) => return,
        },
        Err(_) => return,
    };
    let output = &data[newline + 1..];
    let (stdout, stderr) = match output.iter().position(|b| *b == 0) {
        Some(nul) => (&output[..nul], &output[nul + 1..]),
        None => (output, &[][..]),
    };
    let redactor = Redactor::new(["s3cr3t-token".to_owned(), "pass\"word".to_owned()]);
    match response::command_outcome(code, stdout, stderr, &redactor) {
        Ok(run) => {
            if let Some(output) = run.output {
                let shown = output.to_string();
                assert!(!shown.contains("s3cr3t-token"), "{shown}");
            }
        }
        Err(e) => {
            assert!(
                e.message.len() <= response::STDERR_TAIL + 64,
                "{} bytes",
                e.message.len()
            );
        }
    }
});
