//! The uniform envelope every message becomes before it reaches governance and the agent.

use std::panic::AssertUnwindSafe;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::extract::{Extracted, ExtractionError, ExtractionRules};
use crate::headers::{Headers, TRACEPARENT};
use crate::json_payload::JsonPayload;
use crate::message::{RawMessage, SourceInfo};
use crate::parse::{ParseError, Parser};
use crate::trace::TraceId;

/// A parsed body.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Json(JsonPayload),
    Text(String),
    Binary(Bytes),
}

impl Payload {
    pub fn format(&self) -> &'static str {
        match self {
            Payload::Json(_) => "json",
            Payload::Text(_) => "text",
            Payload::Binary(_) => "binary",
        }
    }

    /// A JSON payload from a value (tests, publishers).
    pub fn json(value: serde_json::Value) -> Self {
        Payload::Json(JsonPayload::from_value(value))
    }

    /// The JSON document as a value tree (built on first use); `None` for text and binary.
    pub fn as_json(&self) -> Result<Option<&serde_json::Value>, serde_json::Error> {
        match self {
            Payload::Json(v) => v.value().map(Some),
            _ => Ok(None),
        }
    }

    /// The payload as a JSON value for an agent: JSON as is, text as a string, binary as a
    /// base64 string (the context's `payload_format` says which).
    pub fn to_json_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        Ok(match self {
            Payload::Json(v) => v.value()?.clone(),
            Payload::Text(s) => serde_json::Value::String(s.clone()),
            Payload::Binary(b) => serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        })
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Json(v) => v.serialize(serializer),
            Payload::Text(s) => serializer.serialize_str(s),
            Payload::Binary(b) => serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        }
    }
}

/// A message after parsing and extraction (requirement 3.2).
#[derive(Clone, Debug, Serialize)]
pub struct MessageEnvelope {
    pub message_id: String,
    pub payload: Payload,
    pub headers: Headers,
    pub received_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_timestamp: Option<DateTime<Utc>>,
    pub source: SourceInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The key under which `ordering: key` serialises messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    pub trace_id: TraceId,
    /// 1 for a first delivery; higher when the broker or qt redelivers it.
    pub attempt: u32,
}

impl MessageEnvelope {
    /// The key idempotency claims use: the dedup key, or the message id when there is none
    /// (requirement 6.3).
    pub fn idempotency_key(&self) -> &str {
        self.dedup_key.as_deref().unwrap_or(&self.message_id)
    }
}

/// Why a message could not become an envelope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("parse failed: {0}")]
    Parse(#[from] ParseError),
    #[error("extraction failed: {0}")]
    Extraction(#[from] ExtractionError),
    /// The parser or an extraction rule panicked: a bug, in qt or in a parser given to it.
    #[error("parsing panicked: {0}")]
    Panicked(String),
    /// The adapter could not read all of the message from the broker
    /// ([`RawMessage::unreadable`]).
    #[error("the message could not be read from the broker: {0}")]
    Unreadable(String),
}

/// A message that could not be parsed or extracted, handed back whole so it can be
/// dead-lettered and recorded.
#[derive(Debug)]
pub struct Unparseable {
    pub raw: RawMessage,
    pub trace_id: TraceId,
    pub error: EnvelopeError,
}

/// A successfully built envelope plus the sub-document the agent receives when
/// `extraction.payload_pointer` is set.
#[derive(Debug)]
pub struct Built {
    pub envelope: MessageEnvelope,
    pub agent_payload: Option<serde_json::Value>,
}

/// What a caught panic said, for a log line or a ledger record.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// The trace id for a raw message: continued from `traceparent`, or new.
pub fn trace_id_for(headers: &Headers) -> TraceId {
    headers
        .get(TRACEPARENT)
        .and_then(TraceId::from_traceparent)
        .unwrap_or_else(TraceId::random)
}

/// Parses and extracts one raw message (requirement 3.1).
pub fn build_envelope(
    raw: RawMessage,
    parser: &dyn Parser,
    rules: &ExtractionRules,
) -> Result<Built, Box<Unparseable>> {
    let trace_id = trace_id_for(&raw.headers);
    if let Some(reason) = &raw.unreadable {
        let error = EnvelopeError::Unreadable(reason.clone());
        return Err(Box::new(Unparseable { raw, trace_id, error }));
    }
    // The body and the rules are read by reference, so a panic in either (a bug) still
    // leaves the whole message to hand back.
    let read = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<_, EnvelopeError> {
        let payload = parser.parse(&raw.body)?;
        let extracted = rules.extract(&raw.headers, &payload, &raw.source)?;
        Ok((payload, extracted))
    }))
    .unwrap_or_else(|panic| Err(EnvelopeError::Panicked(panic_message(panic.as_ref()))));
    let (
        payload,
        Extracted {
            event_name,
            tenant_id,
            dedup_key,
            ordering_key,
            agent_payload,
        },
    ) = match read {
        Ok(read) => read,
        Err(error) => return Err(Box::new(Unparseable { raw, trace_id, error })),
    };
    let attempt = raw.attempt();
    let RawMessage {
        message_id,
        body: _,
        headers,
        broker_timestamp,
        received_at,
        source,
        unreadable: _,
    } = raw;
    Ok(Built {
        envelope: MessageEnvelope {
            message_id,
            payload,
            headers,
            received_at,
            broker_timestamp,
            source,
            dedup_key,
            event_name,
            tenant_id,
            ordering_key,
            trace_id,
            attempt,
        },
        agent_payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{JsonParser, PayloadFormat, parser_for};
    use proptest::prelude::*;

    fn source() -> SourceInfo {
        SourceInfo::new("mock", "orders")
    }

    /// Builds the envelope with the JSON parser and no extraction rules.
    fn build_json(raw: RawMessage) -> Result<Built, Box<Unparseable>> {
        let parser = JsonParser {
            max_message_bytes: 1024,
            builds_value: false,
        };
        build_envelope(raw, &parser, &ExtractionRules::default())
    }

    #[test]
    fn parse_failure_hands_the_message_back() {
        let raw = RawMessage::new("m1", &b"{not json"[..], source());
        let err = build_json(raw).unwrap_err();
        assert_eq!(err.raw.message_id, "m1");
        assert!(matches!(
            err.error,
            EnvelopeError::Parse(ParseError::InvalidJson { .. })
        ));
    }

    #[test]
    fn a_message_its_adapter_could_not_read_is_unparseable_even_with_a_valid_body() {
        let mut raw = RawMessage::new("m1", &br#"{"type":"order.created"}"#[..], source());
        raw.unreadable = Some("header 2 has a key that is not UTF-8".to_owned());
        let err = build_json(raw).unwrap_err();
        assert_eq!(err.raw.message_id, "m1", "the message is handed back whole");
        assert_eq!(
            err.error.to_string(),
            "the message could not be read from the broker: header 2 has a key that is not UTF-8"
        );
    }

    /// Text that is JSON or nearly so: the shapes that have hurt parsers (deep nesting,
    /// lone and paired surrogate escapes, numbers past every width, duplicate keys),
    /// joined at random.
    fn jsonish() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just(r#""type""#.to_owned()),
            Just(r#""a""#.to_owned()),
            Just(r#""\ud800""#.to_owned()),
            Just(r#""\udc00x""#.to_owned()),
            Just(r#""\ud83d\ude00""#.to_owned()),
            Just(r#""\u0000\n\"""#.to_owned()),
            Just("1e400".to_owned()),
            Just("-1e-400".to_owned()),
            Just("123456789012345678901234567890".to_owned()),
            Just("-0".to_owned()),
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just(r#"{"a": 1, "a": {"b": 2}}"#.to_owned()),
            "\\PC{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        let flat = prop::collection::vec(token, 0..40).prop_map(|t| t.concat());
        let nested = (0usize..300, prop::bool::ANY, "[0-9a-z\"]{0,6}").prop_map(|(depth, objects, inner)| {
            if objects {
                format!("{}{inner}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
            } else {
                format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
            }
        });
        prop_oneof![flat, nested]
    }

    /// Every kind of rule, each looking into the payload where it can.
    fn every_rule_kind() -> ExtractionRules {
        serde_yaml_ng::from_str(
            "event_name: [{pointer: /type}, {header: x-event-name}, {value: fallback}]\n\
             tenant_id: [{pointer: /a/b}, {pointer: /0}, {header: x-tenant-id}]\n\
             dedup_key: [{pointer: /a}, {source_key: true}]\n\
             ordering_key: [{pointer: ''}, {source_key: false}]\n\
             payload_pointer: /a\n\
             required: [event_name]\n",
        )
        .unwrap()
    }

    #[derive(Debug)]
    struct PanickingParser;

    impl Parser for PanickingParser {
        fn format(&self) -> PayloadFormat {
            PayloadFormat::Binary
        }
        fn parse(&self, _: &Bytes) -> Result<Payload, ParseError> {
            panic!("parser bug on this body")
        }
    }

    #[test]
    fn a_panicking_parser_hands_the_whole_message_back_with_the_panic_message() {
        let raw = RawMessage::new("m1", &b"anything"[..], source());
        let err = build_envelope(raw, &PanickingParser, &ExtractionRules::default()).unwrap_err();
        assert_eq!(err.raw.message_id, "m1");
        assert_eq!(&err.raw.body[..], b"anything");
        assert_eq!(err.error, EnvelopeError::Panicked("parser bug on this body".to_owned()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Envelope completeness (requirements 3.1, 3.2): every required field is carried
        /// over unchanged, optional fields come from the default headers, and the trace id
        /// continues a traceparent when one is sent.
        #[test]
        fn envelope_is_complete(
            id in "[a-zA-Z0-9-]{1,40}",
            queue in "[a-z.]{1,20}",
            text in "\\PC{0,100}",
            tenant in proptest::option::of("[a-z0-9]{1,10}"),
            event in proptest::option::of("[a-z.]{1,16}"),
            dedup in proptest::option::of("[a-z0-9]{1,16}"),
            traceparent in proptest::option::of("[0-9a-f]{32}"),
            format in prop_oneof![Just(PayloadFormat::Json), Just(PayloadFormat::Text), Just(PayloadFormat::Binary)],
        ) {
            let mut headers = Headers::new();
            headers.insert("x-custom", "kept");
            if let Some(t) = &tenant { headers.insert("x-tenant-id", t.clone()); }
            if let Some(e) = &event { headers.insert("x-event-name", e.clone()); }
            if let Some(d) = &dedup { headers.insert("x-dedup-key", d.clone()); }
            if let Some(tp) = &traceparent { headers.insert("traceparent", format!("00-{tp}-00f067aa0ba902b7-01")); }
            let body = match format {
                PayloadFormat::Json => serde_json::to_vec(&serde_json::json!({"text": text})).unwrap(),
                _ => text.clone().into_bytes(),
            };
            let raw = RawMessage::new(id.clone(), body.clone(), SourceInfo::new("mock", queue.clone())).with_headers(headers.clone());
            let received_at = raw.received_at;
            let built = build_envelope(raw, parser_for(format, 1 << 20, false).as_ref(), &ExtractionRules::default()).unwrap();
            let env = built.envelope;
            prop_assert_eq!(&env.message_id, &id);
            prop_assert_eq!(&env.headers, &headers);
            prop_assert_eq!(env.received_at, received_at);
            prop_assert_eq!(&*env.source.queue, queue.as_str());
            prop_assert_eq!(&env.tenant_id, &tenant);
            prop_assert_eq!(&env.event_name, &event);
            prop_assert_eq!(&env.dedup_key, &dedup);
            prop_assert_eq!(env.idempotency_key(), dedup.as_deref().unwrap_or(&id));
            prop_assert_eq!(env.attempt, 1);
            if let Some(tp) = &traceparent
                && tp.chars().any(|c| c != '0') {
                    prop_assert_eq!(&env.trace_id.to_string(), tp);
                }
            match (format, env.payload) {
                (PayloadFormat::Json, Payload::Json(v)) => prop_assert_eq!(v.value().unwrap(), &serde_json::json!({"text": text})),
                (PayloadFormat::Text, Payload::Text(s)) => prop_assert_eq!(s, text),
                (PayloadFormat::Binary, Payload::Binary(b)) => prop_assert_eq!(&b[..], &body[..]),
                (f, p) => prop_assert!(false, "format {:?} gave {:?}", f, p),
            }
        }

        /// Hostile bodies never panic: arbitrary bytes and JSON-ish text go through every
        /// parser and every kind of extraction rule, and each ends as exactly one envelope
        /// (whose JSON, if any, builds its value tree and serializes) or one error that
        /// says why.
        #[test]
        fn hostile_bodies_become_an_envelope_or_a_reason_never_a_panic(
            body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                jsonish().prop_map(String::into_bytes),
            ],
        ) {
            let rules = every_rule_kind();
            for format in [PayloadFormat::Json, PayloadFormat::Text, PayloadFormat::Binary] {
                let raw = RawMessage::new("m", body.clone(), source());
                match build_envelope(raw, parser_for(format, 1 << 20, false).as_ref(), &rules) {
                    Ok(built) => {
                        prop_assert!(built.envelope.payload.as_json().is_ok());
                        prop_assert!(serde_json::to_vec(&built.envelope.payload).is_ok());
                    }
                    Err(unparseable) => {
                        prop_assert_eq!(&unparseable.raw.message_id, "m");
                        prop_assert!(!unparseable.error.to_string().is_empty());
                    }
                }
            }
        }
    }
}
