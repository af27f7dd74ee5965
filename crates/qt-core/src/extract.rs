//! Custom extraction rules (requirement 3.5): where event name, tenant, dedup key and
//! ordering key come from, and which part of the payload the agent sees.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::envelope::Payload;
use crate::headers::{DEDUP_KEY, EVENT_NAME, Headers, TENANT_ID};
use crate::json_pointer::JsonPointer;
use crate::message::SourceInfo;

/// One place a value may come from. Rules are tried in the order written; the first that
/// yields a value wins. Written in YAML as a one-key map: `- header: x-event-name`,
/// `- pointer: /type`, `- source_key: true`, `- value: unknown`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FieldSourceRepr", into = "FieldSourceRepr")]
pub enum FieldSource {
    /// A message header.
    Header(String),
    /// An RFC 6901 JSON pointer into a JSON payload.
    Pointer(JsonPointer),
    /// The broker's own message key (Kafka key, RabbitMQ routing key, SQS MessageGroupId)
    /// when `true`.
    SourceKey(bool),
    /// A constant, used as the default when nothing earlier matched.
    Value(String),
}

/// The YAML shape of a [`FieldSource`]: exactly one of the fields.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSourceRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pointer: Option<JsonPointer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_key: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

impl TryFrom<FieldSourceRepr> for FieldSource {
    type Error = String;
    fn try_from(r: FieldSourceRepr) -> Result<Self, Self::Error> {
        let mut found = Vec::new();
        if let Some(h) = r.header {
            found.push(FieldSource::Header(h));
        }
        if let Some(p) = r.pointer {
            found.push(FieldSource::Pointer(p));
        }
        if let Some(k) = r.source_key {
            found.push(FieldSource::SourceKey(k));
        }
        if let Some(v) = r.value {
            found.push(FieldSource::Value(v));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err("a rule needs one of header, pointer, source_key or value".to_owned()),
            _ => Err("a rule takes exactly one of header, pointer, source_key or value; write several rules to try several places".to_owned()),
        }
    }
}

impl From<FieldSource> for FieldSourceRepr {
    fn from(f: FieldSource) -> Self {
        let mut r = FieldSourceRepr::default();
        match f {
            FieldSource::Header(h) => r.header = Some(h),
            FieldSource::Pointer(p) => r.pointer = Some(p),
            FieldSource::SourceKey(k) => r.source_key = Some(k),
            FieldSource::Value(v) => r.value = Some(v),
        }
        r
    }
}

/// Read through `FieldSourceRepr`, which takes any of the four keys; the schema says what
/// it then accepts: a mapping with exactly one of them.
impl JsonSchema for FieldSource {
    fn schema_name() -> Cow<'static, str> {
        "FieldSource".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let rule = |key: &str, value: serde_json::Value, description: &str| {
            serde_json::json!({
                "type": "object",
                "properties": {key: value},
                "required": [key],
                "additionalProperties": false,
                "description": description,
            })
        };
        json_schema!({
            "description": "A place a value may come from: a mapping with exactly one of `header`, `pointer`, \
                            `source_key` or `value`.",
            "oneOf": [
                rule("header", serde_json::json!({"type": "string"}), "A message header, by name."),
                rule(
                    "pointer",
                    serde_json::json!({"type": "string"}),
                    "An RFC 6901 JSON pointer into a JSON payload (needs `parser: json`).",
                ),
                rule(
                    "source_key",
                    serde_json::json!({"type": "boolean"}),
                    "The broker's own message key (Kafka key, RabbitMQ routing key, SQS MessageGroupId) when `true`.",
                ),
                rule(
                    "value",
                    serde_json::json!({"type": "string"}),
                    "A constant, used when nothing earlier matched.",
                ),
            ],
        })
    }
}

/// Which extracted field a rule list fills; used in errors and `required`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExtractedField {
    /// `event_name`.
    EventName,
    /// `tenant_id`.
    TenantId,
    /// `dedup_key`.
    DedupKey,
    /// `ordering_key`.
    OrderingKey,
}

impl ExtractedField {
    pub fn as_str(self) -> &'static str {
        match self {
            ExtractedField::EventName => "event_name",
            ExtractedField::TenantId => "tenant_id",
            ExtractedField::DedupKey => "dedup_key",
            ExtractedField::OrderingKey => "ordering_key",
        }
    }
}

/// `processing.extraction` in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractionRules {
    /// Rules for the event name, tried in order; the first that yields a value wins. An
    /// event without a name is named after its queue.
    #[serde(default = "default_event_name")]
    pub event_name: Vec<FieldSource>,
    /// Rules for the tenant id, tried in order.
    #[serde(default = "default_tenant_id")]
    pub tenant_id: Vec<FieldSource>,
    /// Rules for the dedup key, tried in order; a message without one is keyed by its
    /// message id.
    #[serde(default = "default_dedup_key")]
    pub dedup_key: Vec<FieldSource>,
    /// Rules for the ordering key of `ordering: key`, tried in order.
    #[serde(default = "default_ordering_key")]
    pub ordering_key: Vec<FieldSource>,
    /// When set, the agent receives the sub-document at this JSON pointer instead of the
    /// whole payload; a message without it fails extraction. Unset: the whole payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_pointer: Option<JsonPointer>,
    /// Fields that must resolve; a message missing one fails extraction and is handled as
    /// a parse failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<ExtractedField>,
}

fn default_event_name() -> Vec<FieldSource> {
    vec![FieldSource::Header(EVENT_NAME.to_owned())]
}
fn default_tenant_id() -> Vec<FieldSource> {
    vec![FieldSource::Header(TENANT_ID.to_owned())]
}
fn default_dedup_key() -> Vec<FieldSource> {
    vec![FieldSource::Header(DEDUP_KEY.to_owned())]
}
fn default_ordering_key() -> Vec<FieldSource> {
    vec![FieldSource::SourceKey(true)]
}

impl Default for ExtractionRules {
    fn default() -> Self {
        Self {
            event_name: default_event_name(),
            tenant_id: default_tenant_id(),
            dedup_key: default_dedup_key(),
            ordering_key: default_ordering_key(),
            payload_pointer: None,
            required: Vec::new(),
        }
    }
}

/// Why extraction failed; names the field and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtractionError {
    #[error("{field}: pointer {pointer} selects a {kind}, expected a string, number or boolean")]
    NotScalar {
        field: &'static str,
        pointer: String,
        kind: &'static str,
    },
    #[error("{field} is required but no rule matched (tried {tried})")]
    Missing { field: &'static str, tried: String },
    #[error("payload_pointer {pointer} does not exist in the payload")]
    PayloadPointerMissing { pointer: String },
    #[error("payload_pointer {pointer} needs a JSON payload, got {format}")]
    PayloadNotJson { pointer: String, format: &'static str },
    #[error("the JSON payload cannot be read as a value: {0}")]
    UnreadableJson(String),
}

/// The payload's value tree, for a rule that looks inside it.
fn document(payload: &Payload) -> Result<Option<&serde_json::Value>, ExtractionError> {
    payload
        .as_json()
        .map_err(|e| ExtractionError::UnreadableJson(e.to_string()))
}

/// What extraction found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extracted {
    pub event_name: Option<String>,
    pub tenant_id: Option<String>,
    pub dedup_key: Option<String>,
    pub ordering_key: Option<String>,
    pub agent_payload: Option<serde_json::Value>,
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

impl ExtractionRules {
    /// Applies the rules to one message.
    pub fn extract(
        &self,
        headers: &Headers,
        payload: &Payload,
        source: &SourceInfo,
    ) -> Result<Extracted, ExtractionError> {
        let mut out = Extracted {
            event_name: self.resolve(ExtractedField::EventName, &self.event_name, headers, payload, source)?,
            tenant_id: self.resolve(ExtractedField::TenantId, &self.tenant_id, headers, payload, source)?,
            dedup_key: self.resolve(ExtractedField::DedupKey, &self.dedup_key, headers, payload, source)?,
            ordering_key: self.resolve(
                ExtractedField::OrderingKey,
                &self.ordering_key,
                headers,
                payload,
                source,
            )?,
            agent_payload: None,
        };
        if let Some(pointer) = &self.payload_pointer {
            let Some(doc) = document(payload)? else {
                return Err(ExtractionError::PayloadNotJson {
                    pointer: pointer.to_string(),
                    format: payload.format(),
                });
            };
            let selected = pointer
                .lookup(doc)
                .ok_or_else(|| ExtractionError::PayloadPointerMissing {
                    pointer: pointer.to_string(),
                })?;
            out.agent_payload = Some(selected.clone());
        }
        Ok(out)
    }

    /// Whether the rules look inside every payload: a pointer rule, or `payload_pointer`.
    pub fn reads_payload(&self) -> bool {
        self.payload_pointer.is_some()
            || [&self.event_name, &self.tenant_id, &self.dedup_key, &self.ordering_key]
                .into_iter()
                .flatten()
                .any(|rule| matches!(rule, FieldSource::Pointer(_)))
    }

    /// The tenant and the dedup key of a message whose payload could not be read, as far as
    /// the rules find them without it (headers, the broker's key, constants), so that its
    /// ledger record can still be found by them.
    pub fn without_payload(&self, headers: &Headers, source: &SourceInfo) -> (Option<String>, Option<String>) {
        let find = |rules: &[FieldSource]| {
            rules.iter().find_map(|rule| match rule {
                FieldSource::Header(name) => headers.get(name).filter(|v| !v.is_empty()).map(str::to_owned),
                FieldSource::SourceKey(true) => source.key.clone().filter(|k| !k.is_empty()),
                FieldSource::Value(v) => Some(v.clone()),
                FieldSource::Pointer(_) | FieldSource::SourceKey(false) => None,
            })
        };
        (find(&self.tenant_id), find(&self.dedup_key))
    }

    fn resolve(
        &self,
        field: ExtractedField,
        rules: &[FieldSource],
        headers: &Headers,
        payload: &Payload,
        source: &SourceInfo,
    ) -> Result<Option<String>, ExtractionError> {
        for rule in rules {
            let found = match rule {
                FieldSource::Header(name) => headers.get(name).filter(|v| !v.is_empty()).map(str::to_owned),
                FieldSource::Pointer(pointer) => match document(payload)?.and_then(|doc| pointer.lookup(doc)) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) if s.is_empty() => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
                    Some(other) => {
                        return Err(ExtractionError::NotScalar {
                            field: field.as_str(),
                            pointer: pointer.to_string(),
                            kind: json_kind(other),
                        });
                    }
                },
                FieldSource::SourceKey(true) => source.key.clone().filter(|k| !k.is_empty()),
                FieldSource::SourceKey(false) => None,
                FieldSource::Value(v) => Some(v.clone()),
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        if self.required.contains(&field) {
            return Err(ExtractionError::Missing {
                field: field.as_str(),
                tried: describe(rules),
            });
        }
        Ok(None)
    }
}

fn describe(rules: &[FieldSource]) -> String {
    if rules.is_empty() {
        return "no rules".to_owned();
    }
    rules
        .iter()
        .map(|r| match r {
            FieldSource::Header(h) => format!("header {h}"),
            FieldSource::Pointer(p) => format!("pointer {p}"),
            FieldSource::SourceKey(_) => "source key".to_owned(),
            FieldSource::Value(_) => "constant".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn src() -> SourceInfo {
        SourceInfo::new("mock", "q")
    }

    #[test]
    fn rules_apply_in_order_with_constant_default() {
        let rules: ExtractionRules =
            serde_yaml_ng::from_str("event_name:\n  - header: x-type\n  - pointer: /type\n  - value: fallback\n")
                .unwrap();
        let payload = Payload::json(json!({"type": "order.created"}));
        let mut headers = Headers::new();
        assert_eq!(
            rules.extract(&headers, &payload, &src()).unwrap().event_name.as_deref(),
            Some("order.created")
        );
        headers.insert("x-type", "from-header");
        assert_eq!(
            rules.extract(&headers, &payload, &src()).unwrap().event_name.as_deref(),
            Some("from-header")
        );
        let empty = Payload::json(json!({}));
        assert_eq!(
            rules
                .extract(&Headers::new(), &empty, &src())
                .unwrap()
                .event_name
                .as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn rules_read_the_payload_only_with_a_pointer_or_payload_pointer() {
        let read = |yaml: &str| {
            serde_yaml_ng::from_str::<ExtractionRules>(yaml)
                .unwrap()
                .reads_payload()
        };
        assert!(!ExtractionRules::default().reads_payload());
        assert!(!read("tenant_id: [{header: x-org}, {value: nobody}]\n"));
        assert!(read("ordering_key: [{header: x-key}, {pointer: /key}]\n"));
        assert!(read("payload_pointer: /data\n"));
    }

    #[test]
    fn without_a_payload_the_rules_that_need_none_still_find_the_tenant_and_dedup_key() {
        let rules: ExtractionRules = serde_yaml_ng::from_str(
            "tenant_id: [{pointer: /tenant}, {header: x-org}, {value: nobody}]\n\
             dedup_key: [{pointer: /id}, {source_key: true}]\n",
        )
        .unwrap();
        let mut headers = Headers::new();
        headers.insert("x-org", "acme");
        let mut source = src();
        source.key = Some("order-7".to_owned());
        assert_eq!(
            rules.without_payload(&headers, &source),
            (Some("acme".to_owned()), Some("order-7".to_owned()))
        );
        assert_eq!(
            rules.without_payload(&Headers::new(), &src()),
            (Some("nobody".to_owned()), None),
            "a pointer is skipped, a constant still counts"
        );
        let mut defaults = Headers::new();
        defaults.insert(crate::headers::DEDUP_KEY, "k-1");
        assert_eq!(
            ExtractionRules::default().without_payload(&defaults, &src()),
            (None, Some("k-1".to_owned()))
        );
    }

    #[test]
    fn numbers_become_strings_objects_are_refused() {
        let rules: ExtractionRules = serde_yaml_ng::from_str("dedup_key: [{pointer: /id}]\n").unwrap();
        let ok = rules
            .extract(&Headers::new(), &Payload::json(json!({"id": 42})), &src())
            .unwrap();
        assert_eq!(ok.dedup_key.as_deref(), Some("42"));
        let err = rules
            .extract(&Headers::new(), &Payload::json(json!({"id": {"a": 1}})), &src())
            .unwrap_err();
        assert!(err.to_string().contains("dedup_key"), "{err}");
    }

    #[test]
    fn payload_pointer_selects_sub_document_or_fails() {
        let rules: ExtractionRules = serde_yaml_ng::from_str("payload_pointer: /data\n").unwrap();
        let got = rules
            .extract(
                &Headers::new(),
                &Payload::json(json!({"data": {"x": 1}, "noise": 2})),
                &src(),
            )
            .unwrap();
        assert_eq!(got.agent_payload, Some(json!({"x": 1})));
        assert!(
            rules
                .extract(&Headers::new(), &Payload::json(json!({})), &src())
                .is_err()
        );
        assert!(
            rules
                .extract(&Headers::new(), &Payload::Text("x".into()), &src())
                .is_err()
        );
    }

    #[test]
    fn required_fields_must_resolve() {
        let rules: ExtractionRules = serde_yaml_ng::from_str("required: [tenant_id]\n").unwrap();
        let err = rules
            .extract(&Headers::new(), &Payload::json(json!({})), &src())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tenant_id is required but no rule matched (tried header x-tenant-id)"
        );
    }

    #[test]
    fn ordering_key_defaults_to_source_key() {
        let mut s = src();
        s.key = Some("k1".into());
        let got = ExtractionRules::default()
            .extract(&Headers::new(), &Payload::json(json!({})), &s)
            .unwrap();
        assert_eq!(got.ordering_key.as_deref(), Some("k1"));
    }
}
