//! Turning a message body into a [`Payload`]: JSON, text or binary, behind one trait.

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::Payload;
use crate::json_payload::JsonPayload;

/// Which parser a trigger uses (`processing.parser`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Json,
    Text,
    Binary,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Text => "text",
            PayloadFormat::Binary => "binary",
        }
    }
}

/// Why a body could not be parsed. Every variant says where the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    InvalidJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid UTF-8 at byte offset {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("empty body: a JSON message needs at least one value")]
    EmptyBody,
    #[error("body is {size} bytes, larger than max_message_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
}

/// Turns a body into a payload.
pub trait Parser: Send + Sync + std::fmt::Debug {
    fn format(&self) -> PayloadFormat;
    fn parse(&self, body: &Bytes) -> Result<Payload, ParseError>;
}

fn check_size(body: &Bytes, limit: usize) -> Result<(), ParseError> {
    if body.len() > limit {
        return Err(ParseError::TooLarge {
            size: body.len(),
            limit,
        });
    }
    Ok(())
}

/// Parses the body as one JSON document.
#[derive(Clone, Debug)]
pub struct JsonParser {
    pub max_message_bytes: usize,
    /// The extraction rules read the value tree of every payload, so it is built while the
    /// body is checked rather than after (hot path: see ARCHITECTURE.md, rule 18).
    pub builds_value: bool,
}

impl Parser for JsonParser {
    fn format(&self) -> PayloadFormat {
        PayloadFormat::Json
    }

    fn parse(&self, body: &Bytes) -> Result<Payload, ParseError> {
        check_size(body, self.max_message_bytes)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ParseError::EmptyBody);
        }
        let parsed = if self.builds_value {
            JsonPayload::parse_value(body)
        } else {
            JsonPayload::parse(body)
        };
        parsed.map(Payload::Json).map_err(|e| {
            // serde_json reports "expected value" for non-UTF-8 input; say what it is.
            if let Err(utf8) = std::str::from_utf8(body) {
                let offset = utf8.valid_up_to();
                let (line, column) = line_column(&body[..offset]);
                if line <= e.line() && (line < e.line() || column <= e.column()) {
                    return ParseError::InvalidUtf8 { offset };
                }
            }
            ParseError::InvalidJson {
                line: e.line(),
                column: e.column(),
                message: strip_position(&e.to_string()),
            }
        })
    }
}

fn line_column(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = prefix.len() - prefix.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Parses the body as UTF-8 text.
#[derive(Clone, Debug)]
pub struct TextParser {
    pub max_message_bytes: usize,
}

impl Parser for TextParser {
    fn format(&self) -> PayloadFormat {
        PayloadFormat::Text
    }

    fn parse(&self, body: &Bytes) -> Result<Payload, ParseError> {
        check_size(body, self.max_message_bytes)?;
        std::str::from_utf8(body)
            .map(|s| Payload::Text(s.to_owned()))
            .map_err(|e| ParseError::InvalidUtf8 {
                offset: e.valid_up_to(),
            })
    }
}

/// Keeps the body as opaque bytes.
#[derive(Clone, Debug)]
pub struct BinaryParser {
    pub max_message_bytes: usize,
}

impl Parser for BinaryParser {
    fn format(&self) -> PayloadFormat {
        PayloadFormat::Binary
    }

    fn parse(&self, body: &Bytes) -> Result<Payload, ParseError> {
        check_size(body, self.max_message_bytes)?;
        Ok(Payload::Binary(body.clone()))
    }
}

/// The parser for a format; `builds_value` when the extraction rules read inside every
/// JSON payload (see [`crate::extract::ExtractionRules::reads_payload`]).
pub fn parser_for(format: PayloadFormat, max_message_bytes: usize, builds_value: bool) -> Box<dyn Parser> {
    match format {
        PayloadFormat::Json => Box::new(JsonParser {
            max_message_bytes,
            builds_value,
        }),
        PayloadFormat::Text => Box::new(TextParser { max_message_bytes }),
        PayloadFormat::Binary => Box::new(BinaryParser { max_message_bytes }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 1 << 20;

    fn json() -> JsonParser {
        JsonParser {
            max_message_bytes: LIMIT,
            builds_value: false,
        }
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let err = json()
            .parse(&Bytes::from_static(b"{\n  \"a\": 1,\n  oops\n}"))
            .unwrap_err();
        match err {
            ParseError::InvalidJson { line, column, .. } => {
                assert_eq!(line, 3);
                assert_eq!(column, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("line 3, column 3"));
    }

    #[test]
    fn empty_json_body_is_named() {
        assert_eq!(json().parse(&Bytes::from_static(b"  \n")), Err(ParseError::EmptyBody));
    }

    #[test]
    fn invalid_utf8_reports_offset() {
        let text = TextParser {
            max_message_bytes: LIMIT,
        };
        assert_eq!(
            text.parse(&Bytes::from_static(b"abc\xffdef")),
            Err(ParseError::InvalidUtf8 { offset: 3 })
        );
        assert_eq!(
            json().parse(&Bytes::from_static(b"\"ab\xff\"")),
            Err(ParseError::InvalidUtf8 { offset: 3 })
        );
    }

    #[test]
    fn oversize_bodies_are_refused_by_every_parser() {
        let body = Bytes::from(vec![b'a'; 11]);
        for format in [PayloadFormat::Json, PayloadFormat::Text, PayloadFormat::Binary] {
            assert_eq!(
                parser_for(format, 10, false).parse(&body),
                Err(ParseError::TooLarge { size: 11, limit: 10 })
            );
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "\\PC{0,20}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Parsing round trip, JSON: any JSON value serialized and parsed is the same value.
        #[test]
        fn json_round_trip(value in arb_json()) {
            let body = Bytes::from(serde_json::to_vec(&value).unwrap());
            prop_assert_eq!(json().parse(&body).unwrap(), Payload::json(value));
        }

        /// Building the value tree while parsing accepts and refuses exactly what checking
        /// first does, with the same errors, and yields the same payload.
        #[test]
        fn building_the_value_while_parsing_changes_no_verdict(
            body in prop_oneof![
                arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
                prop::collection::vec(prop::sample::select(&b"{}[]\":,0123 ae-.\\nul\xff"[..]), 0..24),
            ]
        ) {
            let body = Bytes::from(body);
            let building = JsonParser { max_message_bytes: LIMIT, builds_value: true };
            let (checked, built) = (json().parse(&body), building.parse(&body));
            prop_assert_eq!(&checked, &built);
            if let Ok(Payload::Json(payload)) = &built {
                prop_assert_eq!(payload.as_bytes(), body.trim_ascii());
            }
        }

        /// Parsing round trip, text: any UTF-8 string comes back unchanged.
        #[test]
        fn text_round_trip(s in "\\PC{0,200}") {
            let parsed = TextParser { max_message_bytes: LIMIT }.parse(&Bytes::from(s.clone())).unwrap();
            prop_assert_eq!(parsed, Payload::Text(s));
        }

        /// Parsing round trip, binary: any bytes come back unchanged.
        #[test]
        fn binary_round_trip(b in prop::collection::vec(any::<u8>(), 0..512)) {
            let parsed = BinaryParser { max_message_bytes: LIMIT }.parse(&Bytes::from(b.clone())).unwrap();
            prop_assert_eq!(parsed, Payload::Binary(Bytes::from(b)));
        }

        /// Any byte string either parses or yields an error that names a position or cause;
        /// no parser panics.
        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..256)) {
            let body = Bytes::from(b);
            for format in [PayloadFormat::Json, PayloadFormat::Text, PayloadFormat::Binary] {
                if let Err(e) = parser_for(format, LIMIT, false).parse(&body) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}
