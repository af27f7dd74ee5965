//! Each parser (JSON, text, binary) with extraction rules: a broker message's body, headers
//! and key made into an envelope, and the envelope into the event an agent is sent.
//!
//! The input has three parts split by NUL bytes: the parser (`json`, `text` or `binary`) on
//! the first line and the extraction rules below it, as YAML in the shape of
//! `processing.extraction` (nothing: the defaults); the headers, one `name: value` a line,
//! where the name `@key` gives the broker's key instead; the body.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use qt_core::envelope::build_envelope;
use qt_core::extract::ExtractionRules;
use qt_core::parse::{PayloadFormat, parser_for};
use qt_core::{AgentEvent, Headers, RawMessage, SourceInfo};

/// `processing.max_message_bytes` for the fuzzed trigger; small so the size check is reached.
const MAX_MESSAGE_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let (Some(setup), Some(headers), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let Ok(setup) = std::str::from_utf8(setup) else {
        return;
    };
    let (format, rules) = setup.split_once('\n').unwrap_or((setup, ""));
    let format = match format.trim() {
        "json" => PayloadFormat::Json,
        "text" => PayloadFormat::Text,
        "binary" => PayloadFormat::Binary,
        _ => return,
    };
    let rules: ExtractionRules = if rules.trim().is_empty() {
        ExtractionRules::default()
    } else {
        match serde_yaml_ng::from_str(rules) {
            Ok(rules) => rules,
            Err(_) => return,
        }
    };
    let mut source = SourceInfo::new("fuzz", "orders");
    let mut parsed = Headers::new();
    for line in String::from_utf8_lossy(headers).lines() {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim_start();
        if name == "@key" {
            source.key = Some(value.to_owned());
        } else {
            parsed.append(name.to_owned(), value.to_owned());
        }
    }
    let parser = parser_for(format, MAX_MESSAGE_BYTES, rules.reads_payload());
    let raw = RawMessage::new("m-1", body.to_vec(), source).with_headers(parsed);
    match build_envelope(raw, parser.as_ref(), &rules) {
        Ok(built) => {
            let envelope = built.envelope;
            let _ = envelope.idempotency_key();
            let _ = envelope.payload.to_json_value();
            let event = AgentEvent {
                target: Arc::from("script"),
                focus: None,
                attempt: envelope.attempt,
                envelope: Arc::new(envelope),
                selected_payload: built.agent_payload.map(Arc::new),
                trace: None,
            };
            let _ = event.outgoing_trace();
            // What an agent reads is JSON, whatever the body was.
            if let Ok(json) = serde_json::to_vec(&event.to_json()) {
                assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
            }
        }
        Err(unparseable) => {
            let _ = unparseable.error.to_string();
            let _ = rules.without_payload(&unparseable.raw.headers, &unparseable.raw.source);
        }
    }
});
