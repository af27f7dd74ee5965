//! `qt send -c FILE --body ... -H k=v`: publish one message to the configured source. It starts
//! a trace (a `traceparent` header) unless `-H traceparent=...` gives one, and prints its id.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use qt_core::config::SourceConfig;
use qt_core::headers::TRACEPARENT;
use qt_core::{Headers, OutgoingMessage, TraceId};

use super::load_or_report;
use crate::admin_client::AdminClient;
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
    let id = match &config.source {
        SourceConfig::Mock(_) => send_to_running_mock(&config, &args, &headers, &body).await?,
        _ => {
            let publisher = wiring::publisher(&config).await?;
            let mut headers = headers;
            if let Some(id) = &args.id {
                headers.insert("x-message-id", id.clone());
            }
            publisher
                .publish(OutgoingMessage {
                    body: Bytes::from(body),
                    headers,
                    key: args.key.clone(),
                    destination: None,
                    deduplication_id: None,
                })
                .await?
        }
    };
    writeln!(
        std::io::stdout().lock(),
        "sent {}\ntrace {trace_id}",
        id.as_deref().unwrap_or("(the broker gave no id)")
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The mock queue lives inside a running `qt run`; its admin server takes the message.
async fn send_to_running_mock(
    config: &qt_core::config::Config,
    args: &SendArgs,
    headers: &Headers,
    body: &[u8],
) -> anyhow::Result<Option<String>> {
    let admin = AdminClient::for_config(config, "qt send (for the mock source)")?;
    let mut line = serde_json::json!({
        "headers": headers.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    if let Some(id) = &args.id {
        line["id"] = id.clone().into();
    }
    if let Some(key) = &args.key {
        line["key"] = key.clone().into();
    }
    match (
        serde_json::from_slice::<serde_json::Value>(body),
        std::str::from_utf8(body),
    ) {
        (Ok(v), _) => line["json"] = v,
        (Err(_), Ok(text)) => line["text"] = text.into(),
        (Err(_), Err(_)) => line["body_base64"] = base64::engine::general_purpose::STANDARD.encode(body).into(),
    }
    let answer = admin.post("/send", Some(&line)).await?;
    Ok(answer.get("message_id").and_then(|m| m.as_str()).map(str::to_owned))
}
