//! A JSON body that is validated when parsed but turned into a [`serde_json::Value`] only
//! when something asks for one. Most messages are routed on headers and handed to an agent
//! that re-serializes them, so building a value tree for every message would be wasted work;
//! the raw text is kept and written out as is.

use std::fmt;
use std::sync::OnceLock;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

pub struct JsonPayload {
    raw: Box<RawValue>,
    value: OnceLock<serde_json::Value>,
}

impl JsonPayload {
    /// Validates `body` as exactly one JSON document.
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        let raw: Box<RawValue> = serde_json::from_slice(body)?;
        Ok(Self {
            raw,
            value: OnceLock::new(),
        })
    }

    pub fn from_value(value: serde_json::Value) -> Self {
        let raw = serde_json::value::to_raw_value(&value).expect("a Value always serializes");
        Self {
            raw,
            value: OnceLock::from(value),
        }
    }

    /// The document as a value tree, built on first use.
    pub fn value(&self) -> &serde_json::Value {
        self.value.get_or_init(|| {
            serde_json::from_str(self.raw.get()).expect("the raw text was validated as JSON when parsed")
        })
    }

    /// The document's text as received (without surrounding whitespace).
    pub fn raw(&self) -> &RawValue {
        &self.raw
    }

    pub fn into_value(self) -> serde_json::Value {
        match self.value.into_inner() {
            Some(v) => v,
            None => serde_json::from_str(self.raw.get()).expect("the raw text was validated as JSON when parsed"),
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
        self.raw.get() == other.raw.get() || self.value() == other.value()
    }
}

impl fmt::Debug for JsonPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonPayload({})", self.raw.get())
    }
}

impl Serialize for JsonPayload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_the_text_and_builds_the_value_on_demand() {
        let p = JsonPayload::parse(b" {\"a\": [1, 2]} ").unwrap();
        assert_eq!(p.raw().get(), "{\"a\": [1, 2]}");
        assert_eq!(p.value(), &json!({"a": [1, 2]}));
        assert_eq!(serde_json::to_string(&p).unwrap(), "{\"a\": [1, 2]}");
        assert_eq!(p, JsonPayload::from_value(json!({"a": [1, 2]})));
        assert!(JsonPayload::parse(b"{\"a\": 1} trailing").is_err());
    }
}
