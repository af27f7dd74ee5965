//! A JSON body that is validated when parsed but turned into a [`serde_json::Value`] only
//! when something asks for one. Most messages are routed on headers and handed to an agent
//! that re-serializes them, so building a value tree for every message would be wasted work;
//! the raw text is kept and written out as is. The text is a slice of the message body
//! itself, not a copy of it.

use std::fmt;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

pub struct JsonPayload {
    /// One JSON document without surrounding whitespace, validated when parsed.
    raw: Bytes,
    value: OnceLock<serde_json::Value>,
}

impl JsonPayload {
    /// Validates `body` as exactly one JSON document.
    pub fn parse(body: &Bytes) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_slice(body)?;
        Ok(Self {
            raw: body.slice_ref(raw.get().as_bytes()),
            value: OnceLock::new(),
        })
    }

    pub fn from_value(value: serde_json::Value) -> Self {
        let raw = serde_json::to_vec(&value).expect("a Value always serializes");
        Self {
            raw: Bytes::from(raw),
            value: OnceLock::from(value),
        }
    }

    /// The document as a value tree, built on first use.
    pub fn value(&self) -> &serde_json::Value {
        self.value
            .get_or_init(|| serde_json::from_slice(&self.raw).expect("the raw text was validated as JSON when parsed"))
    }

    /// The document's text as received (without surrounding whitespace).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.raw).expect("the raw text was validated as JSON when parsed")
    }

    pub fn into_value(self) -> serde_json::Value {
        match self.value.into_inner() {
            Some(v) => v,
            None => serde_json::from_slice(&self.raw).expect("the raw text was validated as JSON when parsed"),
        }
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
        self.raw == other.raw || self.value() == other.value()
    }
}

impl fmt::Debug for JsonPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonPayload({})", self.text())
    }
}

impl Serialize for JsonPayload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_json makes a `RawValue` only by reading it, so the text is read once more
        // here; that is paid by the messages written out to an agent, not by every message.
        let raw: &RawValue = serde_json::from_str(self.text()).expect("the raw text was validated as JSON when parsed");
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_the_text_and_builds_the_value_on_demand() {
        let body = Bytes::from_static(b" {\"a\": [1, 2]} ");
        let p = JsonPayload::parse(&body).unwrap();
        assert_eq!(p.text(), "{\"a\": [1, 2]}");
        assert_eq!(p.raw.as_ptr(), body[1..].as_ptr(), "the text is the body's, not a copy");
        assert_eq!(p.value(), &json!({"a": [1, 2]}));
        assert_eq!(serde_json::to_string(&p).unwrap(), "{\"a\": [1, 2]}");
        assert_eq!(p, JsonPayload::from_value(json!({"a": [1, 2]})));
        assert!(JsonPayload::parse(&Bytes::from_static(b"{\"a\": 1} trailing")).is_err());
    }
}
