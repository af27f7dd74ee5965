//! The configuration's JSON Schema: what `qt config schema` prints, what editors complete the
//! YAML from, and what the reference tables of docs/configuration.md are generated from.
//!
//! It is derived from the types by `schemars`, which follows their serde attributes (names,
//! tags, defaults, `deny_unknown_fields`). Two things serde knows and schemars does not are
//! marked on the field and settled by [`json_schema`]:
//!
//! - `#[schemars(extend("x-required" = true))]`: the field is read with a default only so that
//!   validation can report it missing with its path; the schema lists it as required and gives
//!   no default.
//! - `#[schemars(extend("x-aliases" = ["old_name"]))]`: the serde aliases of a field, accepted
//!   as property names beside it, or of an enum value, accepted beside it.
//!
//! A secret's default is left out (it serializes as `***`), and a field whose
//! `skip_serializing_if` hides its default names it with `#[schemars(transform =
//! default_of::<T>)]`.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::secret::REDACTED;

use super::Config;

/// The JSON Schema (draft 2020-12) of the configuration file, [`Config`].
pub fn json_schema() -> Value {
    let mut schema = schemars::schema_for!(Config).to_value();
    settle_markers(&mut schema);
    schema
}

/// What humantime reads: one or more numbers with a unit (`250ms`, `30s`, `1h 30m`), or `0`.
const DURATION_PATTERN: &str = r"^\s*(0|[0-9]+\s*[a-zA-Zµ]+(\s*[0-9]+\s*[a-zA-Zµ]+)*)\s*$";

/// The schema of a `Duration` field read with `humantime_serde`: a string such as `30s`.
/// Fields name it with `#[schemars(with = "HumanDuration")]` (or `Option<HumanDuration>`).
#[derive(Debug)]
pub(crate) struct HumanDuration;

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "title": "duration",
            "description": "A duration: a number and a unit, several summed, e.g. `250ms`, `30s`, `5m`, `1h 30m`, `7d`.",
            "pattern": DURATION_PATTERN,
        })
    }
}

/// Sets a field's `default` to `T::default()`: for a field whose `skip_serializing_if`
/// matches its default, which schemars then leaves out.
pub(crate) fn default_of<T: Default + Serialize>(schema: &mut Schema) {
    if let Ok(value) = serde_json::to_value(T::default()) {
        schema.insert("default".into(), value);
    }
}

/// Applies the `x-required` and `x-aliases` marks of every object schema in `value`, and
/// the `x-aliases` of enum values.
fn settle_markers(value: &mut Value) {
    match value {
        Value::Object(object) => {
            settle_object(object);
            settle_enum_value(object);
            object.values_mut().for_each(settle_markers);
        }
        Value::Array(items) => items.iter_mut().for_each(settle_markers),
        _ => {}
    }
}

/// An enum value with aliases, `{const: A, x-aliases: [a]}`, becomes `{enum: [A, a]}`: the
/// first value is the one written out.
fn settle_enum_value(object: &mut Map<String, Value>) {
    let Some(Value::Array(aliases)) = object.remove("x-aliases") else {
        return;
    };
    if let Some(value) = object.remove("const") {
        let values = std::iter::once(value).chain(aliases).collect();
        object.insert("enum".into(), Value::Array(values));
    }
}

fn settle_object(object: &mut Map<String, Value>) {
    let Some(Value::Object(properties)) = object.get_mut("properties") else {
        return;
    };
    let mut required = Vec::new();
    let mut aliases: Vec<(String, String)> = Vec::new();
    for (name, property) in properties.iter_mut() {
        let Some(property) = property.as_object_mut() else {
            continue;
        };
        // A secret's default serializes masked, which says nothing about it.
        if property.get("$ref") == Some(&Value::from("#/$defs/Secret"))
            && property.get("default") == Some(&Value::from(REDACTED))
        {
            property.remove("default");
        }
        if property.remove("x-required") == Some(Value::Bool(true)) {
            property.remove("default");
            required.push(name.clone());
        }
        if let Some(Value::Array(names)) = property.remove("x-aliases") {
            aliases.extend(
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|a| (a.to_owned(), name.clone())),
            );
        }
    }
    for (alias, name) in &aliases {
        let mut copy = properties[name].clone();
        if let Some(copy) = copy.as_object_mut() {
            copy.remove("default");
            copy.insert("description".into(), Value::String(format!("Alias of `{name}`.")));
        }
        properties.insert(alias.clone(), copy);
    }
    for name in required {
        let names: Vec<&String> = std::iter::once(&name)
            .chain(aliases.iter().filter(|(_, n)| *n == name).map(|(a, _)| a))
            .collect();
        if names.len() == 1 {
            let list = object.entry("required").or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list
                && !list.contains(&Value::String(name.clone()))
            {
                list.push(Value::String(name));
            }
        } else {
            // Required under any of its names.
            let any_name: Vec<Value> = names.iter().map(|n| serde_json::json!({"required": [n]})).collect();
            let all_of = object.entry("allOf").or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(all_of) = all_of {
                all_of.push(serde_json::json!({"anyOf": any_name}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema of `source` with `type: kafka`.
    fn kafka(schema: &Value) -> &Value {
        schema["$defs"]["SourceConfig"]["oneOf"]
            .as_array()
            .expect("SourceConfig is a oneOf")
            .iter()
            .find(|v| v["properties"]["type"]["const"] == "kafka")
            .expect("a kafka variant")
    }

    #[test]
    fn durations_are_humantime_strings_with_their_default() {
        let schema = json_schema();
        let commit = &kafka(&schema)["properties"]["commit_interval"];
        assert_eq!(commit["$ref"], "#/$defs/Duration", "{commit}");
        assert_eq!(commit["default"], "1s", "{commit}");
        assert_eq!(schema["$defs"]["Duration"]["type"], "string");
        // A Duration field without `schemars(with)` would be an object of secs and nanos.
        assert!(!schema.to_string().contains("\"nanos\""), "a Duration is not a string");
    }

    #[test]
    fn required_fields_have_no_default_and_aliases_are_accepted() {
        let schema = json_schema();
        let kafka = kafka(&schema);
        assert!(kafka["properties"]["brokers"].get("default").is_none());
        let required = kafka["required"].as_array().expect("required");
        assert!(required.contains(&"brokers".into()), "{required:?}");
        assert_eq!(kafka["properties"]["queue_name"]["description"], "Alias of `topics`.");
        assert_eq!(
            kafka["allOf"][0]["anyOf"],
            serde_json::json!([{"required": ["topics"]}, {"required": ["queue_name"]}])
        );
        assert!(!schema.to_string().contains("x-required") && !schema.to_string().contains("x-aliases"));
    }

    #[test]
    fn a_default_hidden_by_skip_serializing_if_is_still_given_and_secrets_have_none() {
        let schema = json_schema();
        let http = schema["$defs"]["TargetConfig"]["oneOf"]
            .as_array()
            .expect("TargetConfig is a oneOf")
            .iter()
            .find(|v| v["properties"]["type"]["const"] == "http")
            .expect("an http variant");
        assert_eq!(http["properties"]["http_version"]["default"], "auto");
        assert!(
            schema["$defs"]["BasicAuth"]["properties"]["password"]
                .get("default")
                .is_none()
        );
    }

    #[test]
    fn secrets_are_strings() {
        let schema = json_schema();
        let password = &schema["$defs"]["KafkaSaslConfig"]["properties"]["password"];
        assert_eq!(password["$ref"], "#/$defs/Secret", "{password}");
        assert_eq!(schema["$defs"]["Secret"]["type"], "string");
    }
}
