//! qt headers <-> SQS message attributes.
//!
//! SQS carries at most ten message attributes, each with a restricted name and a non-empty
//! value. qt messages can carry more headers than that (a dead letter adds up to seven of its
//! own to the originals), so headers that do not fit, or cannot be attributes at all, are
//! folded into one String attribute, [`FOLDED_HEADERS`], holding a JSON array of
//! `[name, value]` pairs. Receiving unfolds it again, so headers survive a trip through SQS
//! whatever their number. When folding is needed, the dead-letter details stay separate
//! attributes so they can be read in the AWS console and filtered on.

use std::collections::{HashMap, HashSet};

use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine as _;
use qt_core::Headers;
use qt_core::headers::{ATTEMPT, dead_letter};

/// The attribute holding headers that did not fit as attributes of their own.
pub const FOLDED_HEADERS: &str = "x-qt-headers";

/// Headers qt derives from SQS system attributes on receipt. They describe one delivery, so
/// they are never written back as message attributes.
pub const SQS_HEADER_PREFIX: &str = "x-sqs-";

/// SQS's limit on message attributes per message.
pub const MAX_ATTRIBUTES: usize = 10;

/// When headers must be folded, these stay attributes of their own, in this order.
const KEEP_NATIVE: &[&str] = &[
    dead_letter::REASON,
    dead_letter::ERROR_CLASS,
    dead_letter::ATTEMPTS,
    dead_letter::ORIGINAL_QUEUE,
    dead_letter::ORIGINAL_MESSAGE_ID,
    dead_letter::FIRST_FAILURE_AT,
    dead_letter::LAST_FAILURE_AT,
    ATTEMPT,
];

/// Message attributes for `headers`: at most [`MAX_ATTRIBUTES`], every name and value one
/// SQS accepts.
pub fn to_attributes(headers: &Headers) -> HashMap<String, MessageAttributeValue> {
    let mut native: Vec<(&str, &str)> = Vec::new();
    let mut folded: Vec<(&str, &str)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (name, value) in headers.iter() {
        if is_sqs_header(name) {
            continue;
        }
        if !name.eq_ignore_ascii_case(FOLDED_HEADERS)
            && is_valid_name(name)
            && is_valid_value(value)
            && seen.insert(name)
        {
            native.push((name, value));
        } else {
            folded.push((name, value));
        }
    }
    if !folded.is_empty() || native.len() > MAX_ATTRIBUTES {
        // One slot goes to the folded attribute.
        native.sort_by_key(|(name, _)| {
            KEEP_NATIVE
                .iter()
                .position(|k| k.eq_ignore_ascii_case(name))
                .unwrap_or(KEEP_NATIVE.len())
        });
        if native.len() > MAX_ATTRIBUTES - 1 {
            let rest = native.split_off(MAX_ATTRIBUTES - 1);
            folded = rest.into_iter().chain(folded).collect();
        }
    }
    let mut out: HashMap<String, MessageAttributeValue> = native
        .into_iter()
        .map(|(name, value)| (name.to_owned(), string_attribute(value.to_owned())))
        .collect();
    if !folded.is_empty() {
        let json = serde_json::to_string(&folded).expect("string pairs always serialize");
        out.insert(FOLDED_HEADERS.to_owned(), string_attribute(json));
    }
    out
}

/// Headers for received message attributes, the folded ones unfolded. Attributes come back
/// sorted by name (SQS returns them unordered); binary values are base64-encoded, since
/// headers are text.
pub fn to_headers(attributes: Option<&HashMap<String, MessageAttributeValue>>) -> Headers {
    let Some(attributes) = attributes else {
        return Headers::new();
    };
    let mut names: Vec<&String> = attributes.keys().collect();
    names.sort();
    let mut headers = Headers::with_capacity(attributes.len());
    let mut unfolded: Vec<(String, String)> = Vec::new();
    for name in names {
        let value = attribute_text(&attributes[name]);
        if name == FOLDED_HEADERS
            && let Ok(pairs) = serde_json::from_str::<Vec<(String, String)>>(&value)
        {
            unfolded.extend(pairs);
            continue;
        }
        headers.append(name.clone(), value);
    }
    for (name, value) in unfolded {
        headers.append(name, value);
    }
    headers
}

fn attribute_text(value: &MessageAttributeValue) -> String {
    if let Some(s) = value.string_value() {
        return s.to_owned();
    }
    if let Some(b) = value.binary_value() {
        return base64::engine::general_purpose::STANDARD.encode(b.as_ref());
    }
    String::new()
}

fn string_attribute(value: String) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data_type is set")
}

pub fn is_sqs_header(name: &str) -> bool {
    // Compared as bytes: a producer's header name may have a multi-byte character where the
    // prefix ends, and a `str` cannot be cut there.
    name.as_bytes()
        .get(..SQS_HEADER_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(SQS_HEADER_PREFIX.as_bytes()))
}

/// SQS attribute names: up to 256 of `[A-Za-z0-9_.-]`, no leading, trailing or doubled
/// period, and not in the reserved `AWS.` / `Amazon.` namespaces.
fn is_valid_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

/// SQS accepts non-empty values made of the characters XML allows.
fn is_valid_value(value: &str) -> bool {
    !value.is_empty() && value.chars().all(is_sqs_char)
}

/// A character SQS accepts in bodies and attribute values.
pub fn is_sqs_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use qt_core::{DeadLetter, ErrorClass, SourceInfo};

    fn sorted(headers: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
        let mut v: Vec<_> = headers.into_iter().collect();
        v.sort();
        v
    }

    fn check_sqs_limits(attrs: &HashMap<String, MessageAttributeValue>) {
        assert!(attrs.len() <= MAX_ATTRIBUTES, "{} attributes", attrs.len());
        for (name, value) in attrs {
            assert!(is_valid_name(name), "{name}");
            assert_eq!(value.data_type(), "String");
            assert!(is_valid_value(value.string_value().unwrap()), "{name}");
        }
    }

    #[test]
    fn few_headers_become_attributes_of_their_own() {
        let headers: Headers = [("x-tenant-id", "acme"), ("x-event-name", "order.created")]
            .into_iter()
            .collect();
        let attrs = to_attributes(&headers);
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs["x-tenant-id"].string_value(), Some("acme"));
        assert!(!attrs.contains_key(FOLDED_HEADERS));
    }

    #[test]
    fn a_dead_letter_with_many_headers_keeps_its_details_as_attributes() {
        let original: Headers = (0..8).map(|i| (format!("h{i}"), format!("v{i}"))).collect();
        let mut source = SourceInfo::new("sqs", "https://sqs.example/1/orders");
        source.delivery_count = Some(3);
        let mut dl = DeadLetter::new("agent failed: boom");
        dl.error_class = Some(ErrorClass::Permanent);
        dl.attempts = 3;
        let headers = dl.headers_for(&original, &source, "m-1");
        let attrs = to_attributes(&headers);
        check_sqs_limits(&attrs);
        for name in [
            dead_letter::REASON,
            dead_letter::ERROR_CLASS,
            dead_letter::ATTEMPTS,
            dead_letter::ORIGINAL_QUEUE,
            dead_letter::ORIGINAL_MESSAGE_ID,
        ] {
            assert!(attrs.contains_key(name), "{name} must stay an attribute");
        }
        assert!(attrs.contains_key(FOLDED_HEADERS));
        let back = to_headers(Some(&attrs));
        assert_eq!(sorted(back), sorted(headers));
    }

    #[test]
    fn headers_sqs_cannot_carry_are_folded_and_sqs_headers_dropped() {
        let mut headers = Headers::new();
        headers.append("with space", "v");
        headers.append("AWS.reserved", "v");
        headers.append("empty", "");
        headers.append("ctl", "a\u{1}b");
        headers.append("x-sqs-message-group-id", "g");
        let attrs = to_attributes(&headers);
        assert_eq!(attrs.len(), 1);
        let back = to_headers(Some(&attrs));
        assert_eq!(back.len(), 4);
        assert_eq!(back.get("ctl"), Some("a\u{1}b"));
        assert_eq!(back.get("empty"), Some(""));
        assert_eq!(back.get("x-sqs-message-group-id"), None);
    }

    #[test]
    fn a_header_name_with_a_multi_byte_character_where_the_prefix_ends_is_no_sqs_header() {
        for name in ["x-sq\u{20ac}", "x-s\u{e9}", "\u{20ac}\u{20ac}", "X-SQS-Group"] {
            assert_eq!(is_sqs_header(name), name.eq_ignore_ascii_case("x-sqs-group"), "{name}");
        }
        let mut headers = Headers::new();
        headers.append("x-sq\u{20ac}", "folded, since SQS names are ASCII");
        let back = to_headers(Some(&to_attributes(&headers)));
        assert_eq!(back.get("x-sq\u{20ac}"), Some("folded, since SQS names are ASCII"));
    }

    #[test]
    fn binary_and_number_attributes_read_as_text() {
        let mut attrs = HashMap::new();
        attrs.insert(
            "n".to_owned(),
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value("42")
                .build()
                .unwrap(),
        );
        attrs.insert(
            "b".to_owned(),
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0u8, 255]))
                .build()
                .unwrap(),
        );
        let headers = to_headers(Some(&attrs));
        assert_eq!(headers.get("n"), Some("42"));
        assert_eq!(headers.get("b"), Some("AP8="));
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_-]{1,12}",
            "x-qt-[a-z-]{1,10}",
            Just(dead_letter::REASON.to_owned()),
            Just(FOLDED_HEADERS.to_owned()),
            "[a-z ./]{1,6}",
            "AWS\\.[a-z]{1,4}",
        ]
        .prop_filter("x-sqs-* headers describe one delivery and are not carried", |n| {
            !is_sqs_header(n)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any headers (minus the per-delivery x-sqs-* ones) survive the trip through
        /// message attributes, within SQS's limits.
        #[test]
        fn headers_round_trip_within_sqs_limits(
            pairs in proptest::collection::vec((header_name(), "\\PC{0,12}"), 0..24),
        ) {
            let headers: Headers = pairs.iter().cloned().collect();
            let attrs = to_attributes(&headers);
            prop_assert!(attrs.len() <= MAX_ATTRIBUTES);
            for (name, value) in &attrs {
                prop_assert!(is_valid_name(name), "{}", name);
                prop_assert!(is_valid_value(value.string_value().unwrap()), "{}", name);
            }
            let back = to_headers(Some(&attrs));
            prop_assert_eq!(sorted(back), sorted(pairs));
        }
    }
}
