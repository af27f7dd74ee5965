//! `qt send -c FILE --body ... -H k=v`: publish one message to the configured source. It starts
//! a trace (a `traceparent` header) unless `-H traceparent=...` gives one, and prints its id.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use qt_core::headers::TRACEPARENT;
use qt_core::{Headers, OutgoingMessage, TraceId};

use super::load_or_report;
use crate::cli::SendArgs;
use crate::wiring;

pub async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let config = match load_or_report(&args.config.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let body: Vec<u8> = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the body from stdin")?;
            buf
        }
        (None, Some(p)) => std::fs::read(p).with_context(|| format!("cannot read --body-file {}", p.display()))?,
        (None, None) => bail!("give the message body with --body or --body-file"),
    };
    let mut headers: Headers = args.headers.iter().cloned().collect();
    // The message starts a trace, unless the sender gave it a place in one.
    let trace_id = match headers.get(TRACEPARENT).and_then(TraceId::from_traceparent) {
        Some(given) => given,
        None => {
            let started = TraceId::random();
            headers.insert(TRACEPARENT, started.child_traceparent());
            started
        }
    };
    if let Some(id) = &args.id {
        headers.insert("x-message-id", id.clone());
    }
    let publisher = wiring::publisher(&config).await?;
    let id = publisher
        .publish(OutgoingMessage {
            body: Bytes::from(body),
            headers,
            key: args.key.clone(),
            destination: None,
            deduplication_id: None,
        })
        .await?;
    writeln!(
        std::io::stdout().lock(),
        "sent {}\ntrace {trace_id}",
        id.as_deref().unwrap_or("(the broker gave no id)")
    )?;
    Ok(ExitCode::SUCCESS)
}
