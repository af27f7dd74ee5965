//! A JSON body that is checked when parsed but turned into a [`serde_json::Value`] only
//! when something asks for one. Most messages are routed on headers and handed to an agent
//! that re-serializes them, so building a value tree for every message would be wasted work;
//! the raw text is kept and written out as is. The text is a slice of the message body
//! itself, not a copy of it.
//!
//! Parsing decides once: [`JsonPayload::parse`] reads the whole document the way building
//! a value tree reads it (the same nesting limit, every string's escapes decoded, every
//! number converted), keeping nothing. A body it accepts always becomes a value tree later;
//! one it refuses is a parse failure with its reason and position, not a surprise when an
//! extraction rule first looks inside.

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

pub struct JsonPayload {
    /// One JSON document without surrounding whitespace, checked when parsed.
    raw: Bytes,
    value: OnceLock<serde_json::Value>,
}

impl JsonPayload {
    /// Checks that `body` is exactly one JSON document that a value tree can hold.
    pub fn parse(body: &Bytes) -> Result<Self, serde_json::Error> {
        let mut reader = serde_json::Deserializer::from_slice(body);
        Checked::deserialize(&mut reader)?;
        reader.end()?;
        let text = body.trim_ascii();
        Ok(Self {
            raw: body.slice_ref(text),
            value: OnceLock::new(),
        })
    }

    /// Like [`JsonPayload::parse`], building the value tree while reading, for a caller
    /// that is going to ask for it (the same document is accepted or refused, with the same
    /// error).
    pub fn parse_value(body: &Bytes) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(body)?;
        Ok(Self {
            raw: body.slice_ref(body.trim_ascii()),
            value: OnceLock::from(value),
        })
    }

    pub fn from_value(value: serde_json::Value) -> Self {
        let raw = serde_json::to_vec(&value).expect("a Value always serializes");
        Self {
            raw: Bytes::from(raw),
            value: OnceLock::from(value),
        }
    }

    /// The document as a value tree, built on first use. A checked document always
    /// builds; the error is handed on rather than assumed away.
    pub fn value(&self) -> Result<&serde_json::Value, serde_json::Error> {
        if let Some(v) = self.value.get() {
            return Ok(v);
        }
        let built = serde_json::from_slice(&self.raw)?;
        Ok(self.value.get_or_init(|| built))
    }

    /// The document's bytes as received (without surrounding whitespace).
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
}

impl Clone for JsonPayload {
    fn clone(&self) -> Self {
        let value = OnceLock::new();
        if let Some(v) = self.value.get() {
            let _ = value.set(v.clone());
        }
        Self {
            raw: self.raw.clone(),
            value,
        }
    }
}

impl PartialEq for JsonPayload {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw || matches!((self.value(), other.value()), (Ok(a), Ok(b)) if a == b)
    }
}

impl fmt::Debug for JsonPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonPayload({})", String::from_utf8_lossy(&self.raw))
    }
}

impl Serialize for JsonPayload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_json makes a `RawValue` only by reading it, so the text is read once more
        // here; that is paid by the messages written out to an agent, not by every message.
        let raw: &RawValue = serde_json::from_slice(&self.raw).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// A JSON value read as [`serde_json::Value`] reads one, and dropped as it is read: through
/// `deserialize_any`, so serde_json applies its nesting limit and decodes every string and
/// number exactly as it does when building a tree.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        // Keys are strings: reading one as a string decodes its escapes.
        while map.next_key::<KeyChecked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// An object key, decoded as a string (a value tree keeps keys as `String`s).
struct KeyChecked;

impl<'de> Deserialize<'de> for KeyChecked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CheckedVisitor).map(|Checked| KeyChecked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<JsonPayload, serde_json::Error> {
        JsonPayload::parse(&Bytes::from(text.to_owned()))
    }

    #[test]
    fn keeps_the_text_and_builds_the_value_on_demand() {
        let body = Bytes::from_static(b" {\"a\": [1, 2]} ");
        let p = JsonPayload::parse(&body).unwrap();
        assert_eq!(p.as_bytes(), b"{\"a\": [1, 2]}");
        assert_eq!(p.raw.as_ptr(), body[1..].as_ptr(), "the text is the body's, not a copy");
        assert_eq!(p.value().unwrap(), &json!({"a": [1, 2]}));
        assert_eq!(serde_json::to_string(&p).unwrap(), "{\"a\": [1, 2]}");
        assert_eq!(p, JsonPayload::from_value(json!({"a": [1, 2]})));
        assert!(JsonPayload::parse(&Bytes::from_static(b"{\"a\": 1} trailing")).is_err());
    }

    #[test]
    fn nesting_deeper_than_a_value_tree_holds_is_refused_when_parsed() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let err = parse(&deep).unwrap_err();
        assert!(err.to_string().contains("recursion limit exceeded"), "{err}");
        let deep_objects = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        assert!(parse(&deep_objects).is_err());
        let fits = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&fits).unwrap().value().is_ok());
    }

    #[test]
    fn a_lone_surrogate_escape_is_refused_with_its_position() {
        for text in [r#""\ud800""#, r#"{"k": "a\udc00b"}"#, r#"{"\ud800": 1}"#] {
            let err = parse(text).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("surrogate") || message.contains("escape"),
                "{text}: {err}"
            );
            assert!(err.line() >= 1 && err.column() > 0, "{text}: {err}");
        }
        let pair = parse(r#""\ud83d\ude00""#).unwrap();
        assert_eq!(pair.value().unwrap(), &json!("\u{1F600}"));
    }

    #[test]
    fn numbers_a_value_tree_cannot_hold_are_refused_and_huge_integers_become_floats() {
        assert!(parse("1e400").is_err());
        assert!(parse("[-1e400]").is_err());
        let big = parse("123456789012345678901234567890").unwrap();
        assert!(big.value().unwrap().is_f64());
    }

    #[test]
    fn duplicate_keys_are_accepted_and_the_last_one_wins() {
        let p = parse(r#"{"a": 1, "a": 2}"#).unwrap();
        assert_eq!(p.value().unwrap(), &json!({"a": 2}));
    }
}
