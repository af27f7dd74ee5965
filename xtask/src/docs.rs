//! `cargo xtask docs`: the reference tables of docs/configuration.md, generated from the
//! configuration's JSON Schema (`qt_core::config::json_schema`), so that each field's type,
//! default and meaning are written once, in the Rust types.
//!
//! The handwritten prose stays as it is; each table sits between two marker comments,
//! `<!-- generated:config:PATH -->` and `<!-- /generated -->`, one per configuration type,
//! PATH being where the type is found (`top` for the file itself, `source.kafka`,
//! `agent.targets.http.tls`). Every type in the schema must have its markers: a new type
//! without them fails the generation, naming the markers to add.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use serde_json::Value;

/// The file whose tables are generated.
pub const FILE: &str = "docs/configuration.md";

const START: &str = "<!-- generated:config:";
const END: &str = "<!-- /generated -->";
/// The marker path of the top-level fields.
const TOP: &str = "top";
/// Longer defaults (whole mappings) are shown as a pointer to their own table.
const MAX_INLINE_DEFAULT: usize = 60;

/// Regenerates [`FILE`], or with `check` only compares it with what would be generated and
/// fails naming it when they differ.
pub fn run(check: bool) -> Result<()> {
    let current = std::fs::read_to_string(FILE).map_err(|e| anyhow::anyhow!("cannot read {FILE}: {e}"))?;
    let wanted = regenerate(&current, &qt_core::config::json_schema())?;
    if wanted == current {
        eprintln!("{FILE}: the generated configuration tables are up to date");
    } else if check {
        bail!(
            "{FILE} is stale: its configuration tables differ from what the configuration types \
             generate; run `cargo xtask docs` and commit the result"
        );
    } else {
        std::fs::write(FILE, wanted).map_err(|e| anyhow::anyhow!("cannot write {FILE}: {e}"))?;
        eprintln!("{FILE}: configuration tables regenerated");
    }
    Ok(())
}

/// The table of one configuration type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The first paragraph of the type's doc comment.
    pub about: String,
    pub rows: Vec<Row>,
}

/// One row of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub field: String,
    pub ty: String,
    pub default: String,
    pub meaning: String,
}

/// `text` with the content between each pair of markers replaced by the table of its type.
pub fn regenerate(text: &str, schema: &Value) -> Result<String> {
    let tables = tables(schema);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut found = BTreeSet::new();
    while let Some(start) = rest.find(START) {
        let after_start = &rest[start + START.len()..];
        let Some(close) = after_start.find("-->") else {
            bail!("{FILE}: a `{START}` marker is not closed with `-->`");
        };
        let path = after_start[..close].trim().to_owned();
        let Some(end) = after_start.find(END) else {
            bail!("{FILE}: the table of `{path}` has no `{END}` after it");
        };
        let Some(table) = tables.get(&path) else {
            bail!(
                "{FILE}: `{START}{path} -->` names no configuration type; the types are: {}",
                names(&tables)
            );
        };
        if !found.insert(path.clone()) {
            bail!("{FILE}: the table of `{path}` appears twice");
        }
        out.push_str(&rest[..start + START.len() + close + 3]);
        out.push('\n');
        out.push_str(&render_table(table));
        out.push_str(END);
        rest = &after_start[end + END.len()..];
    }
    out.push_str(rest);
    let missing: Vec<&String> = tables.keys().filter(|p| !found.contains(*p)).collect();
    if !missing.is_empty() {
        let markers: Vec<String> = missing.iter().map(|p| format!("`{START}{p} -->` {END}")).collect();
        bail!(
            "{FILE} has no place for the table of {} configuration type(s); add, where each belongs: {}",
            missing.len(),
            markers.join(", ")
        );
    }
    Ok(out)
}

fn names(tables: &BTreeMap<String, Table>) -> String {
    tables.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

fn render_table(table: &Table) -> String {
    let mut out = String::new();
    if !table.about.is_empty() {
        out.push_str(&format!("{}\n\n", table.about));
    }
    out.push_str("| field | type | default | meaning |\n|---|---|---|---|\n");
    for r in &table.rows {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            r.field, r.ty, r.default, r.meaning
        ));
    }
    out
}

/// Every configuration type's table, by marker path.
pub fn tables(schema: &Value) -> BTreeMap<String, Table> {
    let mut walker = Walker {
        root: schema,
        paths: BTreeMap::new(),
        pending: Vec::new(),
    };
    walker.visit(schema, TOP);
    let pending = std::mem::take(&mut walker.pending);
    pending
        .into_iter()
        .map(|(path, object, tag)| {
            let about = object
                .get("description")
                .and_then(Value::as_str)
                .map(first_paragraph)
                .unwrap_or_default();
            let rows = walker.rows(object, tag);
            (path, Table { about, rows })
        })
        .collect()
}

/// Walks the schema from the root, giving each object type the path it is first found at.
struct Walker<'a> {
    root: &'a Value,
    /// Definition name to the path of its table.
    paths: BTreeMap<&'a str, String>,
    /// The object schemas that get a table: path, schema, and the tag property to leave out.
    pending: Vec<(String, &'a Value, Option<&'a str>)>,
}

impl<'a> Walker<'a> {
    /// `schema` with `$ref` followed, and the definition's name.
    fn resolve(&self, schema: &'a Value) -> (&'a Value, Option<&'a str>) {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/$defs/");
                (&self.root["$defs"][name], Some(name))
            }
            None => (schema, None),
        }
    }

    fn visit(&mut self, schema: &'a Value, path: &str) {
        let (schema, name) = self.resolve(schema);
        if let Some(name) = name {
            if self.paths.contains_key(name) {
                return;
            }
            self.paths.insert(name, path.to_owned());
        }
        if let Some(inner) = non_null(schema) {
            return self.visit(inner, path);
        }
        if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
            for variant in variants {
                let (variant, _) = self.resolve(variant);
                if let Some(tag) = variant.pointer("/properties/type/const").and_then(Value::as_str) {
                    self.visit_object(variant, &join(path, tag), Some("type"));
                } else if let Some(key) = single_key(variant) {
                    self.visit(&variant["properties"][key], &join(path, key));
                } else {
                    self.visit(variant, path);
                }
            }
            return;
        }
        if let Some(items) = schema.get("items") {
            return self.visit(items, path);
        }
        if schema.get("properties").is_some() {
            return self.visit_object(schema, path, None);
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            self.visit(values, path);
        }
    }

    fn visit_object(&mut self, schema: &'a Value, path: &str, tag: Option<&'a str>) {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        if properties.keys().any(|k| Some(k.as_str()) != tag) {
            self.pending.push((path.to_owned(), schema, tag));
        }
        for (name, property) in properties {
            if Some(name.as_str()) != tag && alias_of(property).is_none() {
                self.visit(property, &join(path, name));
            }
        }
    }

    /// The rows of an object schema: required fields first, then by name; aliases folded into
    /// the field they name.
    fn rows(&self, schema: &'a Value, tag: Option<&str>) -> Vec<Row> {
        let properties = schema["properties"].as_object().expect("an object with properties");
        let required = required_names(schema);
        let mut aliases: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, property) in properties {
            if let Some(target) = alias_of(property) {
                aliases.entry(target).or_default().push(name);
            }
        }
        let mut names: Vec<&String> = properties
            .keys()
            .filter(|n| Some(n.as_str()) != tag && alias_of(&properties[*n]).is_none())
            .collect();
        names.sort_by_key(|n| (!required.contains(n.as_str()), n.as_str()));
        names
            .into_iter()
            .map(|name| {
                let property = &properties[name];
                let mut meaning = self.meaning(property);
                if let Some(alias) = aliases.get(name.as_str()) {
                    let alias: Vec<String> = alias.iter().map(|a| format!("`{a}`")).collect();
                    meaning.push_str(&format!(" (alias {})", alias.join(", ")));
                }
                Row {
                    field: name.clone(),
                    ty: self.type_name(property),
                    default: if required.contains(name.as_str()) {
                        "required".to_owned()
                    } else {
                        self.default(property)
                    },
                    meaning,
                }
            })
            .collect()
    }

    fn type_name(&self, schema: &Value) -> String {
        let (schema, name) = self.resolve(schema);
        if let Some(inner) = non_null(schema) {
            return self.type_name(inner);
        }
        if let Some(title) = schema.get("title").and_then(Value::as_str) {
            return title.to_owned();
        }
        if let Some(values) = enum_values(schema) {
            return one_of(&values.iter().map(|(v, _)| format!("`{v}`")).collect::<Vec<_>>());
        }
        let table = |what: &str| match name.and_then(|n| self.paths.get(n)) {
            Some(path) => format!("{what} (`{path}`)"),
            None => what.to_owned(),
        };
        if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
            let variants: Vec<&Value> = variants.iter().map(|v| self.resolve(v).0).collect();
            let tags: Vec<String> = variants
                .iter()
                .filter_map(|v| v.pointer("/properties/type/const").and_then(Value::as_str))
                .map(|t| format!("`{t}`"))
                .collect();
            if tags.len() == variants.len() {
                return format!("mapping with `type` {}", one_of(&tags));
            }
            let keys: Vec<String> = variants
                .iter()
                .filter_map(|v| single_key(v))
                .map(|k| format!("`{k}`"))
                .collect();
            if keys.len() == variants.len() {
                return format!("mapping with one key: {}", one_of(&keys));
            }
        }
        if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
            let options: Vec<String> = options.iter().map(|o| self.type_name(o)).collect();
            return one_of(&options);
        }
        let ty = match schema.get("type") {
            Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).find(|t| *t != "null"),
            Some(ty) => ty.as_str(),
            None => None,
        };
        match ty {
            Some("array") => format!("list of {}", self.type_name(&schema["items"])),
            Some("object") if schema.get("properties").is_some() => table("mapping"),
            Some("object") => match schema.get("additionalProperties").filter(|v| v.is_object()) {
                Some(values) => format!("mapping of {}", self.type_name(values)),
                None => "mapping".to_owned(),
            },
            Some(other) => other.to_owned(),
            None => "any".to_owned(),
        }
    }

    fn default(&self, schema: &Value) -> String {
        let Some(default) = schema.get("default") else {
            return "unset".to_owned();
        };
        if default.is_null() {
            return "unset".to_owned();
        }
        let text = flow_yaml(default);
        if text.len() <= MAX_INLINE_DEFAULT {
            return format!("`{text}`");
        }
        match self.resolve(schema).1.and_then(|n| self.paths.get(n)) {
            Some(path) => format!("see `{path}`"),
            None => format!("`{text}`"),
        }
    }

    /// The first paragraph of the field's doc comment, and what each value of an enum means.
    fn meaning(&self, schema: &Value) -> String {
        let mut meaning = schema
            .get("description")
            .and_then(Value::as_str)
            .map(first_paragraph)
            .unwrap_or_default();
        let (resolved, _) = self.resolve(schema);
        let resolved = non_null(resolved).map_or(resolved, |inner| self.resolve(inner).0);
        for (value, description) in enum_values(resolved).unwrap_or_default() {
            if let Some(description) = description {
                meaning.push_str(&format!("<br>`{value}`: {}", first_paragraph(description)));
            }
        }
        meaning
    }
}

fn join(path: &str, name: &str) -> String {
    if path == TOP {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// The schema an `Option` wraps: `anyOf: [X, {type: null}]`, or `X` itself when its `type`
/// is a list with `null`.
fn non_null(schema: &Value) -> Option<&Value> {
    let options = schema.get("anyOf")?.as_array()?;
    match options.as_slice() {
        [x, null] | [null, x] if null.get("type") == Some(&Value::from("null")) => Some(x),
        _ => None,
    }
}

/// For an externally tagged variant (`{basic: {...}}`): its one key.
fn single_key(schema: &Value) -> Option<&str> {
    let properties = schema.get("properties")?.as_object()?;
    let required = schema.get("required")?.as_array()?;
    match (properties.len(), required.as_slice()) {
        (1, [key]) => key.as_str().filter(|k| properties.contains_key(*k)),
        _ => None,
    }
}

/// The field an alias property stands for (its description is "Alias of `name`.").
fn alias_of(schema: &Value) -> Option<&str> {
    schema
        .get("description")?
        .as_str()?
        .strip_prefix("Alias of `")?
        .strip_suffix("`.")
}

/// Required names: `required`, and the first name of each `allOf: [{anyOf: [{required}...]}]`
/// (a required field that has aliases).
fn required_names(schema: &Value) -> BTreeSet<&str> {
    let mut out: BTreeSet<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for any in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        if let Some(first) = any.pointer("/anyOf/0/required/0").and_then(Value::as_str) {
            out.insert(first);
        }
    }
    out
}

/// The values of a string enum, each with its doc comment: `enum: [...]`, or `oneOf` of
/// `const`s.
fn enum_values(schema: &Value) -> Option<Vec<(&str, Option<&str>)>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values.iter().map(|v| v.as_str().map(|s| (s, None))).collect();
    }
    let variants = schema.get("oneOf")?.as_array()?;
    let mut out = Vec::new();
    for v in variants {
        if let Some(values) = v.get("enum").and_then(Value::as_array) {
            // A value with aliases: the first is the one to write.
            out.push((values.first()?.as_str()?, v.get("description").and_then(Value::as_str)));
        } else {
            out.push((v.get("const")?.as_str()?, v.get("description").and_then(Value::as_str)));
        }
    }
    Some(out)
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// A doc comment's first paragraph on one line, ready for a table cell: rustdoc links
/// (``[`X`]``) as plain code, `|` escaped.
pub fn first_paragraph(doc: &str) -> String {
    let paragraph = doc.trim().split("\n\n").next().unwrap_or_default();
    let line = paragraph.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(line.len());
    let mut rest = line.as_str();
    while let Some(start) = rest.find("[`") {
        let Some(len) = rest[start..].find("`]") else { break };
        let end = start + len;
        out.push_str(&rest[..start]);
        out.push_str(&rest[start + 1..=end]);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out.replace('|', "\\|")
}

/// A JSON value as YAML flow text: `30s`, `[{header: x-event-name}]`, `{type: memory}`.
pub fn flow_yaml(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if is_plain(s) => s.clone(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(flow_yaml).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{k}: {}", flow_yaml(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Whether a string reads back as the same string when written without quotes in a flow
/// collection.
fn is_plain(s: &str) -> bool {
    let reserved = ["true", "false", "null", "yes", "no", "on", "off", "~"];
    !s.is_empty()
        && s.trim() == s
        && !reserved.contains(&s.to_ascii_lowercase().as_str())
        && s.parse::<f64>().is_err()
        && !s.starts_with(['-', '?', ':', '*', '&', '!', '|', '>', '\'', '"', '%', '@', '`', '#'])
        && !s.contains([',', '[', ']', '{', '}', '#', '|'])
        && !s.contains(": ")
        && !s.ends_with(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(tables: &'a BTreeMap<String, Table>, path: &str, field: &str) -> &'a Row {
        tables[path]
            .rows
            .iter()
            .find(|r| r.field == field)
            .unwrap_or_else(|| panic!("no {field} in {path}: {:#?}", tables[path]))
    }

    #[test]
    fn a_broker_field_is_generated_with_its_type_default_and_meaning() {
        let tables = tables(&qt_core::config::json_schema());
        let commit = row(&tables, "source.kafka", "commit_interval");
        assert_eq!((commit.ty.as_str(), commit.default.as_str()), ("duration", "`1s`"));
        assert!(commit.meaning.starts_with("How often"), "{commit:?}");
        let brokers = row(&tables, "source.kafka", "brokers");
        assert_eq!(brokers.default, "required");
        assert_eq!(
            tables["source.kafka"].rows[0].field, "brokers",
            "required fields come first"
        );
        let topics = row(&tables, "source.kafka", "topics");
        assert!(topics.meaning.ends_with("(alias `queue_name`)"), "{topics:?}");
        assert!(
            tables["source.kafka"]
                .rows
                .iter()
                .all(|r| r.field != "queue_name" && r.field != "type")
        );
    }

    #[test]
    fn every_broker_has_a_table_and_enum_values_are_explained() {
        let tables = tables(&qt_core::config::json_schema());
        for path in [
            "source.mock",
            "source.kafka",
            "source.rabbitmq",
            "source.sqs",
            "source.kafka.sasl",
        ] {
            assert!(tables.contains_key(path), "{path} missing from {:?}", tables.keys());
        }
        let on_store_error = row(&tables, "idempotency", "on_store_error");
        assert_eq!(on_store_error.ty, "`fail_open` or `fail_closed`");
        assert_eq!(on_store_error.default, "`fail_closed`");
        assert!(
            on_store_error.meaning.contains("<br>`fail_open`: "),
            "{on_store_error:?}"
        );
        let store = row(&tables, "idempotency", "store");
        assert_eq!(store.ty, "mapping with `type` `memory` or `redis`");
        assert_eq!(store.default, "`{capacity: 0, type: memory}`");
    }

    #[test]
    fn tables_replace_what_is_between_the_markers_and_keep_the_prose() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "qt", "description": "Names it.\n\nMore."},
                "limit": {"type": ["integer", "null"], "description": "At most | this."},
            },
            "required": [],
        });
        let doc = "# Title\n\nProse.\n\n<!-- generated:config:top -->\nstale\n<!-- /generated -->\n\nMore prose.\n";
        let got = regenerate(doc, &schema).unwrap();
        assert_eq!(
            got,
            "# Title\n\nProse.\n\n<!-- generated:config:top -->\n| field | type | default | meaning |\n\
             |---|---|---|---|\n| `limit` | integer | unset | At most \\| this. |\n\
             | `name` | string | `qt` | Names it. |\n<!-- /generated -->\n\nMore prose.\n"
        );
        assert_eq!(regenerate(&got, &schema).unwrap(), got, "regenerating is stable");
    }

    #[test]
    fn a_type_without_markers_and_an_unknown_marker_are_refused() {
        let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let err = regenerate("no markers\n", &schema).unwrap_err().to_string();
        assert!(err.contains("<!-- generated:config:top -->"), "{err}");
        let err = regenerate("<!-- generated:config:nope -->\n<!-- /generated -->\n", &schema)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("names no configuration type"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_written_as_yaml_flow_text() {
        let value = serde_json::json!({"tenant": "*", "listen": "127.0.0.1:9464", "n": 1, "e": "", "b": "true"});
        assert_eq!(
            flow_yaml(&value),
            r#"{b: "true", e: "", listen: 127.0.0.1:9464, n: 1, tenant: "*"}"#
        );
    }
}
