//! RFC 6901 JSON pointers, split into their reference tokens once, when the configuration is
//! read. `serde_json::Value::pointer` splits and unescapes the text again on every lookup,
//! and the extraction rules look up several pointers in every message (hot path: see
//! ARCHITECTURE.md, rule 18).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A JSON pointer as written (`/order/id`, `/items/0`, `` for the whole document) and its
/// reference tokens with `~1` and `~0` decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    /// `None` when the text is neither empty nor starts with `/`: such a pointer selects
    /// nothing (configuration validation reports it).
    tokens: Option<Vec<String>>,
}

impl JsonPointer {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let tokens = match text.strip_prefix('/') {
            _ if text.is_empty() => Some(Vec::new()),
            Some(rest) => Some(
                rest.split('/')
                    .map(|t| t.replace("~1", "/").replace("~0", "~"))
                    .collect(),
            ),
            None => None,
        };
        Self { text, tokens }
    }

    /// The pointer as written in the configuration.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value the pointer selects in `doc`, as `serde_json::Value::pointer` finds it: an
    /// object member by name, an array element by a decimal index without a sign or
    /// leading zeros.
    pub fn lookup<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.tokens.as_ref()?.iter().try_fold(doc, |at, token| match at {
            Value::Object(members) => members.get(token),
            Value::Array(elements) => array_index(token).and_then(|i| elements.get(i)),
            _ => None,
        })
    }
}

fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

impl From<&str> for JsonPointer {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for JsonPointer {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Shown as the text, as configuration errors quote it.
impl fmt::Debug for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl Serialize for JsonPointer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for JsonPointer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl JsonSchema for JsonPointer {
    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn escaped_tokens_and_array_indexes_select_as_rfc_6901_says() {
        let doc = json!({"a/b": {"m~n": [10, 20]}, "": 1, "list": [0, 1, 2]});
        assert_eq!(JsonPointer::new("/a~1b/m~0n/1").lookup(&doc), Some(&json!(20)));
        assert_eq!(JsonPointer::new("/").lookup(&doc), Some(&json!(1)));
        assert_eq!(JsonPointer::new("").lookup(&doc), Some(&doc));
        assert_eq!(JsonPointer::new("/list/01").lookup(&doc), None);
        assert_eq!(JsonPointer::new("/list/+1").lookup(&doc), None);
        assert_eq!(JsonPointer::new("/list/3").lookup(&doc), None);
        assert_eq!(JsonPointer::new("list").lookup(&doc), None);
    }

    /// Documents of nested objects and arrays whose keys include the characters pointers
    /// escape, and pointers built from the same alphabet.
    fn doc() -> impl Strategy<Value = Value> {
        let key = "[a~/0]{0,2}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            key.prop_map(Value::from)
        ];
        leaf.prop_recursive(4, 32, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_serde_json(doc in doc(), pointer in "(/[a~01+]{0,3}){0,4}|[a0]{0,2}") {
            prop_assert_eq!(JsonPointer::new(pointer.as_str()).lookup(&doc), doc.pointer(&pointer));
        }
    }
}
