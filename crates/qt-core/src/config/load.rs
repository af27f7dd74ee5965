//! Reading a configuration file and collecting all of its problems.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::env::substitute_marked;
use super::problems::{ConfigErrors, Validate};
use super::{Config, KafkaSourceConfig, MockSourceConfig, RabbitMqSourceConfig, SourceConfig, SqsSourceConfig};

/// How many structural problems are collected before giving up on a file.
const MAX_STRUCTURAL_PROBLEMS: usize = 50;

/// The source types, as `source.type` spells them.
const SOURCE_TYPES: &str = "mock, kafka, rabbitmq or sqs";

/// Reads, substitutes and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::default();
        errs.push("", format!("cannot read {}: {e}", path.display()));
        errs
    })?;
    load_str(&text, |name| std::env::var(name).ok())
}

/// The problems found so far, and the paths whose further problems would only repeat them.
#[derive(Default)]
struct Found {
    problems: ConfigErrors,
    /// A node set aside for a structural problem falls back to its default, and a field
    /// whose variable is unset holds a stand-in: checks of either would only repeat the
    /// problem already recorded.
    quiet: Vec<String>,
}

impl Found {
    fn is_quiet(&self, path: &str) -> bool {
        self.quiet
            .iter()
            .any(|q| path == q || path.starts_with(&format!("{q}.")) || path.starts_with(&format!("{q}[")))
    }

    /// Records a problem unless it concerns a quiet path.
    fn push(&mut self, path: String, message: String) {
        if !self.is_quiet(&path) {
            self.problems.push(path, message);
        }
    }

    fn quiet(&mut self, path: String) {
        self.quiet.push(path);
    }
}

/// Substitutes with `env`, parses and validates a configuration text. Every problem is in
/// the one list: unset variables (with their line and field), YAML syntax, structure (unknown
/// fields, wrong types) and meaning.
pub fn load_str(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let substituted = substitute_marked(text, env);
    let mut found = Found::default();
    let parsed = serde_yaml_ng::from_str::<Value>(&substituted.text);
    // Where each unset variable landed, once the YAML is read.
    for p in &substituted.problems {
        let at = format!("line {}", p.line);
        let fields = match (&p.marker, &parsed) {
            (Some(marker), Ok(value)) => {
                let mut fields = Vec::new();
                find_marker(value, marker, &mut Vec::new(), &mut fields);
                fields
            }
            _ => Vec::new(),
        };
        if fields.is_empty() {
            found.problems.push(at.clone(), p.message.clone());
        }
        for field in fields {
            let field = unmark(&field, &substituted.problems);
            let message = p.message.replacen(" is not set", &format!(" is not set ({at})"), 1);
            found.problems.push(field.clone(), message);
            found.quiet(field);
        }
    }
    let mut value = match parsed {
        Ok(v) => v,
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!("line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            found.problems.push(at, format!("not valid YAML: {e}"));
            return Err(found.problems);
        }
    };
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    // `source` is read on its own (see `read_source`); a mock source stands in meanwhile.
    let source = match &mut value {
        Value::Mapping(m) => m
            .get_mut("source")
            .map(|s| std::mem::replace(s, serde_yaml_ng::from_str("{type: mock}").expect("static YAML"))),
        _ => None,
    };
    let Some(mut config) = read::<Config>(&mut value, &[], &mut found) else {
        return Err(found.problems);
    };
    if let Some(source) = source {
        config.source = read_source(source, &mut found);
    }
    let mut semantic = ConfigErrors::default();
    config.validate("", &mut semantic);
    for p in semantic.problems {
        found.push(p.path, p.message);
    }
    found.problems.into_result(config)
}

/// Deserializes `value` as a `T` found at `prefix`, recording each structural problem and
/// setting the offending node aside to read on, until it reads or cannot be repaired.
fn read<T: DeserializeOwned>(value: &mut Value, prefix: &[Seg], found: &mut Found) -> Option<T> {
    let mut count = 0;
    loop {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return Some(t),
            Err(err) => {
                let path = segments(err.path());
                let message = err.inner().to_string();
                let (at, repaired) = repair(value, &path, &message);
                let full = render(&[prefix, &at].concat());
                found.push(full.clone(), tidy(&message));
                found.quiet(full);
                if message.starts_with("missing field ") && at.len() > 1 {
                    // The mapping that lacks the field is set aside as a whole.
                    found.quiet(render(&[prefix, &at[..at.len() - 1]].concat()));
                }
                count += 1;
                if !repaired || count >= MAX_STRUCTURAL_PROBLEMS {
                    return None;
                }
            }
        }
    }
}

/// `source`, in two steps: `type` picks the broker, then the rest of the mapping is read as
/// that broker's section, so that a problem inside it keeps its whole path. (An internally
/// tagged enum would buffer the section and lose the path below `source`.)
fn read_source(value: Value, found: &mut Found) -> SourceConfig {
    let stand_in = SourceConfig::Mock(MockSourceConfig::default());
    let mut map = match value {
        Value::Mapping(m) => m,
        Value::Tagged(t) => match t.value {
            Value::Mapping(m) => m,
            _ => Mapping::new(),
        },
        other => {
            found.push(
                "source".to_owned(),
                format!(
                    "expected a mapping with `type` ({SOURCE_TYPES}) and the fields of that source, got {}",
                    describe(&other)
                ),
            );
            found.quiet("source".to_owned());
            return stand_in;
        }
    };
    let kind = match map.remove("type") {
        Some(Value::String(kind)) => kind,
        None => {
            found.push("source.type".to_owned(), format!("required: one of {SOURCE_TYPES}"));
            found.quiet("source".to_owned());
            return stand_in;
        }
        Some(other) => {
            found.push(
                "source.type".to_owned(),
                format!("expected one of {SOURCE_TYPES}, got {}", describe(&other)),
            );
            found.quiet("source".to_owned());
            return stand_in;
        }
    };
    let mut section = Value::Mapping(map);
    let prefix = [Seg::Key("source".to_owned())];
    let read = match kind.as_str() {
        "mock" => read::<MockSourceConfig>(&mut section, &prefix, found).map(SourceConfig::Mock),
        "kafka" => read::<KafkaSourceConfig>(&mut section, &prefix, found).map(SourceConfig::Kafka),
        "rabbitmq" => read::<RabbitMqSourceConfig>(&mut section, &prefix, found).map(SourceConfig::Rabbitmq),
        "sqs" => read::<SqsSourceConfig>(&mut section, &prefix, found).map(SourceConfig::Sqs),
        other => {
            found.push(
                "source.type".to_owned(),
                format!("unknown source type {other:?}: expected one of {SOURCE_TYPES}"),
            );
            None
        }
    };
    read.unwrap_or_else(|| {
        found.quiet("source".to_owned());
        stand_in
    })
}

/// A YAML value's kind, for messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => describe(&t.value),
    }
}

/// Every path at which `marker` appears in a key or a string value.
fn find_marker(value: &Value, marker: &str, at: &mut Vec<Seg>, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.contains(marker) => out.push(render(at)),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                at.push(Seg::Index(i));
                find_marker(item, marker, at, out);
                at.pop();
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_owned(),
                };
                at.push(Seg::Key(key.clone()));
                if key.contains(marker) {
                    out.push(render(at));
                } else {
                    find_marker(v, marker, at, out);
                }
                at.pop();
            }
        }
        Value::Tagged(t) => find_marker(&t.value, marker, at, out),
        _ => {}
    }
}

/// A path with the stand-ins of unset variables written back as `${NAME}`.
fn unmark(path: &str, problems: &[super::env::EnvProblem]) -> String {
    let mut out = path.to_owned();
    for p in problems {
        if let Some(marker) = &p.marker {
            let name = marker
                .strip_prefix("__qt_unset_")
                .and_then(|rest| rest.split_once('_'))
                .and_then(|(_, rest)| rest.strip_suffix("__"))
                .unwrap_or_default();
            out = out.replace(marker.as_str(), &format!("${{{name}}}"));
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The quoted name in serde's "unknown field `x`" / "missing field `x`" messages.
fn quoted_field<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('`')?;
    rest.split('`').next()
}

/// Serde's messages end with position noise for YAML; keep the part that explains.
/// Rust type names in serde's messages are replaced by the YAML shape they stand for.
fn tidy(message: &str) -> String {
    let m = message.trim();
    let m = match m.find(" at line ") {
        Some(i) => &m[..i],
        None => m,
    };
    let mut out = String::with_capacity(m.len());
    let mut rest = m;
    while let Some(i) = rest.find("expected ") {
        let (before, after) = rest.split_at(i + "expected ".len());
        out.push_str(before);
        let (shape, used) = yaml_shape(after);
        out.push_str(&shape);
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// The YAML shape for the Rust type named at the start of `text` (after "expected "), and
/// how many bytes of `text` that name took; `text` unchanged when it names none.
fn yaml_shape(text: &str) -> (String, usize) {
    let word = |t: &str| -> usize {
        t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(t.len())
    };
    // serde_yaml_ng's own wording for a list or mapping where a name belongs.
    if let Some(rest) = text.strip_prefix("a Value::Tagged enum") {
        return ("a single name".to_owned(), text.len() - rest.len());
    }
    for (prefix, shape) in [
        ("internally tagged enum ", "a mapping with `type`"),
        ("struct ", "a mapping"),
        ("enum ", "one of the names this field takes"),
    ] {
        if let Some(name) = text.strip_prefix(prefix) {
            return (shape.to_owned(), prefix.len() + word(name));
        }
    }
    let n = word(text);
    let shape = match &text[..n] {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        _ => return (String::new(), 0),
    };
    (shape.to_owned(), n)
}

/// Sets the failing node aside so deserialization can go on. Returns the path to report and
/// whether anything changed.
fn repair(root: &mut Value, path: &[Seg], message: &str) -> (Vec<Seg>, bool) {
    if let Some(field) = quoted_field(message, "unknown field ") {
        // The path may or may not already end with the unknown key.
        let parent: Vec<Seg> = if path.last() == Some(&Seg::Key(field.to_owned())) {
            path[..path.len() - 1].to_vec()
        } else {
            path.to_vec()
        };
        let mut full = parent;
        full.push(Seg::Key(field.to_owned()));
        let removed = remove_at(root, &full);
        return (full, removed);
    }
    if let Some(field) = quoted_field(message, "missing field ") {
        let mut full = path.to_vec();
        full.push(Seg::Key(field.to_owned()));
        // A missing `source` cannot be defaulted: stand a mock source in so the other
        // sections can still be checked; the problem is already recorded.
        if path.is_empty() && field == "source" {
            let placeholder = serde_yaml_ng::from_str::<Value>("{type: mock}").expect("static YAML");
            return (full, set_at(root, &[Seg::Key("source".into())], placeholder));
        }
        return (full, remove_at(root, path));
    }
    let removed = !path.is_empty() && remove_at(root, path);
    (path.to_vec(), removed)
}

fn navigate<'a>(root: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = root;
    for seg in path {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str())?,
            (Seg::Index(i), Value::Sequence(s)) => s.get_mut(*i)?,
            (seg, Value::Tagged(t)) => navigate(&mut t.value, std::slice::from_ref(seg))?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_at(root: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (last, navigate(root, parent)) {
        (Seg::Key(k), Some(Value::Mapping(m))) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Some(Value::Sequence(s))) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

fn set_at(root: &mut Value, path: &[Seg], value: Value) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match (last, navigate(root, parent)) {
        (Seg::Key(k), Some(Value::Mapping(m))) => {
            let changed = m.get(k.as_str()) != Some(&value);
            m.insert(Value::String(k.clone()), value);
            changed
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceConfig;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn problems(yaml: &str) -> Vec<String> {
        load_str(yaml, no_env)
            .unwrap_err()
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn text_that_is_not_yaml_is_one_problem_at_its_line_and_column() {
        let found = problems("source: {type: mock}\nagent: [unclosed\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("line "), "{found:?}");
        assert!(found[0].contains(", column "), "{found:?}");
        assert!(found[0].contains("not valid YAML"), "{found:?}");
    }

    #[test]
    fn an_empty_file_is_read_as_an_empty_mapping_and_asks_for_its_sections() {
        let found = problems("");
        assert!(found.iter().any(|p| p.contains("source")), "{found:?}");
    }

    #[test]
    fn minimal_mock_config_loads_with_defaults() {
        let c = load_str(
            "source: {type: mock}\nagent: {targets: {default: {type: log}}}\n",
            no_env,
        )
        .unwrap();
        assert_eq!(c.processing.concurrency, 8);
        assert_eq!(c.agent.effective_default_target(), Some("default"));
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let yaml = r#"
source:
  type: kafka
  brokers: [localhost]
  topicz: [orders]
processing:
  concurrency: 0
  bogus: true
retry:
  backoff: {initial: soon}
agent:
  targets: {a: {type: log}}
  routes: [{event: "x.*", target: b}]
"#;
        let got = problems(yaml);
        let expect = [
            "source.topicz",
            "processing.bogus",
            "retry.backoff.initial",
            "source.brokers[0]",
            "source.topics",
            "source.consumer_group",
            "processing.concurrency",
            "agent.routes[0].target",
        ];
        for path in expect {
            assert!(
                got.iter().any(|p| p.starts_with(&format!("{path}:"))),
                "missing {path} in {got:#?}"
            );
        }
    }

    #[test]
    fn missing_source_type_is_reported_and_the_rest_still_checked() {
        let got = problems("source: {queue: x}\nprocessing: {concurrency: -1}\n");
        assert!(got.iter().any(|p| p.starts_with("source")), "{got:#?}");
        assert!(got.iter().any(|p| p.starts_with("processing.concurrency")), "{got:#?}");
    }

    #[test]
    fn env_substitution_feeds_secrets_and_they_never_print() {
        let yaml = "source: {type: rabbitmq, url: \"amqp://guest:${RMQ_PASSWORD}@localhost:5672/%2f\", queue: q, dlq: {routing_key: q.dlq}}\n\
                    agent: {targets: {a: {type: log}}}\n";
        let c = load_str(yaml, |n| (n == "RMQ_PASSWORD").then(|| "s3cr3t-pw".to_owned())).unwrap();
        let SourceConfig::Rabbitmq(r) = &c.source else { panic!() };
        assert!(r.url.expose().contains("s3cr3t-pw"));
        assert!(!c.to_masked_yaml().contains("s3cr3t-pw"));
        assert!(!format!("{c:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn require_tls_rejects_plaintext_endpoints() {
        let yaml = "source: {type: rabbitmq, url: \"amqp://localhost\", queue: q}\n\
                    idempotency: {store: {type: redis, url: \"redis://localhost\"}}\n\
                    agent: {targets: {a: {type: log}}}\nsecurity: {require_tls: true}\n";
        let got = problems(yaml);
        assert!(got.iter().any(|p| p.starts_with("source.url:")), "{got:#?}");
        assert!(got.iter().any(|p| p.starts_with("idempotency.store.url:")), "{got:#?}");
    }

    #[test]
    fn an_http_target_takes_its_defaults_and_keeps_its_secrets_masked() {
        let yaml = "source: {type: mock, queue: q}\n\
                    agent: {targets: {a: {type: http, url: \"https://bot:url-pw-1@agents.test/run\", \
                    headers: {x-api-key: \"${API_KEY}\"}, auth: {bearer: \"${TOKEN}\"}}}}\n";
        let env = |n: &str| match n {
            "API_KEY" => Some("header-secret-1".to_owned()),
            "TOKEN" => Some("bearer-secret-1".to_owned()),
            _ => None,
        };
        let c = load_str(yaml, env).unwrap();
        let crate::config::TargetConfig::Http(h) = &c.agent.targets["a"] else {
            panic!()
        };
        assert_eq!(h.method, "POST");
        assert_eq!(h.timeout, std::time::Duration::from_secs(30));
        assert_eq!(h.max_response_bytes, 64 * 1024);
        assert_eq!(h.max_concurrency, None);
        assert_eq!(h.headers["x-api-key"].expose(), "header-secret-1");
        let printed = format!("{}\n{c:?}", c.to_masked_yaml());
        for secret in ["header-secret-1", "bearer-secret-1", "url-pw-1"] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        assert!(printed.contains("agents.test/run"), "{printed}");
    }

    #[test]
    fn an_http_target_reports_each_bad_field_by_path() {
        let yaml = "source: {type: mock, queue: q}\n\
                    agent: {targets: {a: {type: http, url: \"ftp://x\", method: GET, timeout: 0s, \
                    headers: {traceparent: x, \"bad name\": y, authorization: z}, auth: {basic: {username: \"u:v\"}}, \
                    tls: {client_cert_file: c.pem}, max_concurrency: 0, max_response_bytes: 0}, \
                    b: {type: http}}}\n";
        let got = problems(yaml);
        for path in [
            "agent.targets.a.url",
            "agent.targets.a.method",
            "agent.targets.a.timeout",
            "agent.targets.a.headers.traceparent",
            "agent.targets.a.headers.bad name",
            "agent.targets.a.headers.authorization",
            "agent.targets.a.auth.basic.username",
            "agent.targets.a.tls.client_key_file",
            "agent.targets.a.max_concurrency",
            "agent.targets.a.max_response_bytes",
            "agent.targets.b.url",
        ] {
            assert_eq!(at(&got, path).len(), 1, "{path} in {got:#?}");
        }
        assert_no_rust_names(&got);
    }

    #[test]
    fn tracing_reports_each_bad_field_by_path() {
        let yaml = "source: {type: mock, queue: q}\n\
                    observability: {tracing: {enabled: true, endpoint: \"ftp://collector/v1/traces\", \
                    sample_ratio: 1.5, service_name: \" \", headers: {\"bad name\": x}, timeout: 0s, \
                    max_queue_size: 0, ca_file: ca.pem}}\n";
        let got = problems(yaml);
        for path in [
            "observability.tracing.endpoint",
            "observability.tracing.sample_ratio",
            "observability.tracing.service_name",
            "observability.tracing.headers.bad name",
            "observability.tracing.timeout",
            "observability.tracing.max_queue_size",
            "observability.tracing.ca_file",
        ] {
            assert_eq!(at(&got, path).len(), 1, "{path} in {got:#?}");
        }
        let got = problems(
            "source: {type: mock, queue: q}\n\
             observability: {tracing: {enabled: true, endpoint: \"http://collector:4318\", sample_ratio: -0.1}}\n",
        );
        assert!(
            at(&got, "observability.tracing.endpoint")[0].contains("/v1/traces"),
            "{got:#?}"
        );
        assert_eq!(at(&got, "observability.tracing.sample_ratio").len(), 1, "{got:#?}");
        // gRPC names the collector's address, with no path; its -bin metadata is binary.
        let got = problems(
            "source: {type: mock, queue: q}\n\
             observability: {tracing: {enabled: true, protocol: grpc, endpoint: \"http://collector:4317\", \
             headers: {x-key-bin: x}, sample_ratio: 2}}\n",
        );
        assert!(at(&got, "observability.tracing.endpoint").is_empty(), "{got:#?}");
        assert_eq!(at(&got, "observability.tracing.headers.x-key-bin").len(), 1, "{got:#?}");
        let got = problems(
            "source: {type: mock, queue: q}\nsecurity: {require_tls: true}\n\
             observability: {tracing: {enabled: true}}\n",
        );
        assert_eq!(at(&got, "observability.tracing.endpoint").len(), 1, "{got:#?}");
        assert_no_rust_names(&got);
    }

    #[test]
    fn tracing_headers_are_secrets() {
        let c = load_str(
            "source: {type: mock, queue: q}\nagent: {targets: {a: {type: log}}}\n\
             observability: {tracing: {enabled: true, headers: {x-api-key: trace-secret-1}}}\n",
            no_env,
        )
        .unwrap();
        let printed = format!("{}\n{c:?}", c.to_masked_yaml());
        assert!(!printed.contains("trace-secret-1"), "{printed}");
    }

    #[test]
    fn an_admin_server_on_an_outside_address_without_a_token_is_refused_naming_listen() {
        for listen in ["0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464"] {
            let got = problems(&format!(
                "source: {{type: mock}}\nagent: {{targets: {{a: {{type: log}}}}}}\n\
                 observability: {{admin: {{listen: \"{listen}\"}}}}\n"
            ));
            let listen_problems = at(&got, "observability.admin.listen");
            assert_eq!(listen_problems.len(), 1, "{listen}: {got:#?}");
            for hint in ["token", "allow_unauthenticated", "loopback"] {
                assert!(listen_problems[0].contains(hint), "{hint} in {got:#?}");
            }
        }
    }

    #[test]
    fn an_outside_admin_address_is_accepted_with_a_token_or_allow_unauthenticated() {
        let base = "source: {type: mock}\nagent: {targets: {a: {type: log}}}\n";
        for admin in [
            "{listen: \"0.0.0.0:9464\", token: \"${QT_ADMIN_TOKEN}\"}",
            "{listen: \"0.0.0.0:9464\", allow_unauthenticated: true}",
            "{listen: \"0.0.0.0:9464\", enabled: false}",
        ] {
            let yaml = format!("{base}observability: {{admin: {admin}}}\n");
            let env = |n: &str| (n == "QT_ADMIN_TOKEN").then(|| "admin-tok-1".to_owned());
            if let Err(e) = load_str(&yaml, env) {
                panic!("{admin} is accepted: {e}");
            }
        }
    }

    #[test]
    fn a_loopback_admin_address_needs_no_token() {
        for listen in ["127.0.0.1:9464", "127.0.0.2:0", "[::1]:9464", "[::ffff:127.0.0.1]:9464"] {
            let yaml = format!(
                "source: {{type: mock}}\nagent: {{targets: {{a: {{type: log}}}}}}\n\
                 observability: {{admin: {{listen: \"{listen}\"}}}}\n"
            );
            if let Err(e) = load_str(&yaml, no_env) {
                panic!("{listen} is accepted: {e}");
            }
        }
    }

    #[test]
    fn an_admin_token_must_be_usable_and_protect_all_needs_one() {
        let base = "source: {type: mock}\nagent: {targets: {a: {type: log}}}\n";
        let got = problems(&format!("{base}observability: {{admin: {{token: \"\"}}}}\n"));
        assert_eq!(at(&got, "observability.admin.token").len(), 1, "{got:#?}");
        let got = problems(&format!("{base}observability: {{admin: {{token: \"two words\"}}}}\n"));
        assert_eq!(at(&got, "observability.admin.token").len(), 1, "{got:#?}");
        assert!(!got[0].contains("two words"), "the token is not echoed: {got:#?}");
        let got = problems(&format!("{base}observability: {{admin: {{protect_all: true}}}}\n"));
        assert_eq!(at(&got, "observability.admin.protect_all").len(), 1, "{got:#?}");
        let got = problems(&format!(
            "{base}observability: {{admin: {{token: \"${{QT_ADMIN_TOKEN}}\"}}}}\n"
        ));
        let unset = at(&got, "observability.admin.token");
        assert_eq!(unset.len(), 1, "{got:#?}");
        assert!(unset[0].contains("QT_ADMIN_TOKEN"), "{got:#?}");
    }

    #[test]
    fn the_admin_token_comes_from_the_environment_and_never_prints() {
        let c = load_str(
            "source: {type: mock}\nagent: {targets: {a: {type: log}}}\n\
             observability: {admin: {listen: \"0.0.0.0:9464\", token: \"${QT_ADMIN_TOKEN}\"}}\n",
            |n| (n == "QT_ADMIN_TOKEN").then(|| "admin-secret-7".to_owned()),
        )
        .unwrap();
        let token = c.observability.admin.token.as_ref().expect("the token is set");
        assert_eq!(token.expose(), "admin-secret-7");
        let masked = c.to_masked_yaml();
        let printed = format!("{masked}\n{c:?}");
        assert!(!printed.contains("admin-secret-7"), "{printed}");
        assert!(masked.contains("token: '***'"), "masked, not dropped: {masked}");
    }

    #[test]
    fn an_http_target_rejects_unknown_fields() {
        let got = problems(
            "source: {type: mock, queue: q}\nagent: {targets: {a: {type: http, url: \"https://h\", bogus: 1}}}\n",
        );
        assert!(got.iter().any(|p| p.contains("bogus")), "{got:#?}");
    }

    #[test]
    fn require_tls_rejects_a_plain_http_agent_url_naming_the_field() {
        let yaml = "source: {type: mock, queue: q}\n\
                    agent: {targets: {plain: {type: http, url: \"http://u:pw-9@h/run\"}, tls: {type: http, url: \"https://h/run\"}}}\n\
                    security: {require_tls: true}\n";
        let got = problems(yaml);
        let plain = at(&got, "agent.targets.plain.url");
        assert_eq!(plain.len(), 1, "{got:#?}");
        assert!(!plain[0].contains("pw-9"), "{got:#?}");
        assert!(at(&got, "agent.targets.tls.url").is_empty(), "{got:#?}");
    }

    #[test]
    fn require_tls_rejects_a_plaintext_postgres_ledger_naming_the_url() {
        let yaml = "source: {type: mock, queue: q}\nagent: {targets: {a: {type: log}}}\n\
                    ledger: {type: postgres, url: \"postgres://qt:pg-pw-5@db/qt\"}\n\
                    security: {require_tls: true}\n";
        let got = problems(yaml);
        let url = at(&got, "ledger.url");
        assert_eq!(url.len(), 1, "{got:#?}");
        assert!(
            url[0].contains("require_tls") && !url[0].contains("pg-pw-5"),
            "{got:#?}"
        );
        let encrypted = yaml.replace("postgres, url", "postgres, tls: verify-full, url");
        if let Err(e) = load_str(&encrypted, no_env) {
            panic!("tls: verify-full passes require_tls: {e}");
        }
    }

    #[test]
    fn a_postgres_ledger_reports_its_problems_with_their_paths() {
        let got = problems(
            "source: {type: mock, queue: q}\nagent: {targets: {a: {type: log}}}\n\
             ledger: {type: postgres, url: \"http://db/qt\", table: \"bad name\", pool_size: 0}\n",
        );
        for path in ["ledger.url", "ledger.table", "ledger.pool_size"] {
            assert_eq!(at(&got, path).len(), 1, "{path} in {got:#?}");
        }
        assert_no_rust_names(&got);
    }

    /// Every problem of `yaml` whose path starts with `path:`.
    fn at<'a>(got: &'a [String], path: &str) -> Vec<&'a String> {
        got.iter().filter(|p| p.starts_with(&format!("{path}:"))).collect()
    }

    /// No Rust type name leaks into a message.
    fn assert_no_rust_names(got: &[String]) {
        for p in got {
            for rust in [
                "struct ",
                "enum ",
                "Value::",
                "Config",
                "Declaration",
                "u16",
                "usize",
                "i32",
                "Option<",
                "Vec<",
            ] {
                assert!(!p.contains(rust), "{rust:?} in {p:?}");
            }
        }
    }

    #[test]
    fn an_unset_variable_joins_every_other_problem_of_the_file_with_its_line_and_field() {
        let yaml = "source:\n  type: rabbitmq\n  url: \"amqp://app:${RMQ_PASSWORD}@localhost\"\n  queue: q\n  dlq: {routing_key: q.dlq}\n  bogus: 1\n\
                    processing: {concurrency: 0}\nagent: {targets: {a: {type: log}}}\n";
        let got = problems(yaml);
        let unset = at(&got, "source.url");
        assert_eq!(
            unset.len(),
            1,
            "one problem for the field, not a second about its stand-in: {got:#?}"
        );
        assert!(
            unset[0].contains("RMQ_PASSWORD is not set") && unset[0].contains("line 3"),
            "{got:#?}"
        );
        assert_eq!(at(&got, "source.bogus").len(), 1, "{got:#?}");
        assert_eq!(at(&got, "processing.concurrency").len(), 1, "{got:#?}");
        assert_eq!(got.len(), 3, "{got:#?}");
    }

    #[test]
    fn an_unset_variable_in_a_typed_field_is_reported_once_and_the_rest_still_checked() {
        let yaml = "source: {type: kafka, brokers: [\"k:9092\"], topics: [t], consumer_group: g, dlq_topic: d}\n\
                    processing: {concurrency: ${CONCURRENCY}, batch_size: ${BATCH}}\n\
                    retry: {max_retries: x}\nagent: {targets: {a: {type: log}}}\n";
        let got = problems(yaml);
        assert_eq!(at(&got, "processing.concurrency").len(), 1, "{got:#?}");
        assert!(at(&got, "processing.concurrency")[0].contains("CONCURRENCY is not set (line 2)"));
        assert_eq!(at(&got, "processing.batch_size").len(), 1, "{got:#?}");
        assert_eq!(at(&got, "retry.max_retries").len(), 1, "{got:#?}");
        assert_eq!(got.len(), 3, "{got:#?}");
    }

    #[test]
    fn an_unset_variable_outside_any_field_is_reported_with_its_line() {
        let got = problems(
            "# set ${NOWHERE}\nsource: {type: mock}\nprocessing: {concurrency: 0}\nagent: {targets: {a: {type: log}}}\n",
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("line 1: environment variable NOWHERE")),
            "{got:#?}"
        );
        assert_eq!(at(&got, "processing.concurrency").len(), 1, "{got:#?}");
    }

    #[test]
    fn a_wrong_type_inside_a_rabbitmq_source_names_its_path_and_yaml_shape() {
        let got = problems(
            "source: {type: rabbitmq, url: \"amqp://localhost\", queue: q, declare: {queue: true}, prefetch: lots, dlq: {routing_key: d}}\n\
             agent: {targets: {a: {type: log}}}\n",
        );
        let declare = at(&got, "source.declare.queue");
        assert_eq!(declare.len(), 1, "{got:#?}");
        assert!(
            declare[0].contains("a mapping with `durable`") && declare[0].contains("`arguments`"),
            "{got:#?}"
        );
        assert!(
            at(&got, "source.prefetch")[0].contains("a whole number from 0 to 65535"),
            "{got:#?}"
        );
        assert_no_rust_names(&got);
    }

    #[test]
    fn a_wrong_type_inside_a_kafka_source_names_its_path_and_yaml_shape() {
        let got = problems(
            "source: {type: kafka, brokers: [\"k:9092\"], topics: [t], consumer_group: g, dlq_topic: d, \
             security_protocol: sasl_ssl, sasl: {mechanism: [PLAIN], username: u, password: p}, ssl: true}\n\
             agent: {targets: {a: {type: log}}}\n",
        );
        assert!(
            at(&got, "source.sasl.mechanism")[0].contains("expected a single name"),
            "{got:#?}"
        );
        assert!(
            at(&got, "source.ssl")[0].contains("a mapping with `ca_location`"),
            "{got:#?}"
        );
        assert_no_rust_names(&got);
    }

    #[test]
    fn a_wrong_type_inside_an_sqs_source_names_its_path_and_yaml_shape() {
        let got = problems(
            "source: {type: sqs, queue_url: q, region: r, dlq_queue_url: d, max_messages: many, pollers: [2]}\n\
             agent: {targets: {a: {type: log}}}\n",
        );
        assert!(
            at(&got, "source.max_messages")[0].contains("a whole number"),
            "{got:#?}"
        );
        assert!(
            at(&got, "source.pollers")[0].contains("a whole number, 0 or more"),
            "{got:#?}"
        );
        assert_no_rust_names(&got);
    }

    #[test]
    fn a_wrong_type_inside_a_mock_source_names_its_path_and_yaml_shape() {
        let got =
            problems("source: {type: mock, queue: [a, b], file: {path: x}}\nagent: {targets: {a: {type: log}}}\n");
        assert!(at(&got, "source.queue")[0].contains("expected a string"), "{got:#?}");
        assert_eq!(at(&got, "source.file").len(), 1, "{got:#?}");
        assert_no_rust_names(&got);
    }

    #[test]
    fn an_unknown_or_missing_source_type_is_named_with_the_types_there_are() {
        let unknown = problems("source: {type: kafak}\nagent: {targets: {a: {type: log}}}\n");
        assert!(
            at(&unknown, "source.type")[0].contains("mock, kafka, rabbitmq or sqs"),
            "{unknown:#?}"
        );
        let scalar = problems("source: kafka\nagent: {targets: {a: {type: log}}}\n");
        assert!(
            at(&scalar, "source")[0].contains("expected a mapping with `type`"),
            "{scalar:#?}"
        );
    }

    #[test]
    fn the_dlq_queue_is_declared_in_the_same_shape_as_the_consumed_queue() {
        let yaml = "source: {type: rabbitmq, url: \"amqp://localhost\", queue: q, \
                    declare: {queue: {durable: true, arguments: {x-queue-type: quorum}}}, \
                    dlq: {routing_key: q.dlq, declare: {durable: false, arguments: {x-max-length: 10}}}}\n\
                    agent: {targets: {a: {type: log}}}\n";
        let c = load_str(yaml, no_env).unwrap();
        let SourceConfig::Rabbitmq(r) = &c.source else { panic!() };
        let dlq = r.dlq.as_ref().unwrap().declare.as_ref().unwrap();
        assert!(!dlq.durable);
        assert_eq!(dlq.arguments["x-max-length"], serde_json::json!(10));
        let empty = yaml.replace("{durable: false, arguments: {x-max-length: 10}}", "{}");
        let c = load_str(&empty, no_env).unwrap();
        let SourceConfig::Rabbitmq(r) = &c.source else { panic!() };
        assert!(
            r.dlq.as_ref().unwrap().declare.as_ref().unwrap().durable,
            "durable by default"
        );
    }

    #[test]
    fn the_former_boolean_dlq_declare_says_what_to_write_instead() {
        for (old, says) in [("true", "declare: {durable: true}"), ("false", "leave `declare` out")] {
            let got = problems(&format!(
                "source: {{type: rabbitmq, url: \"amqp://localhost\", queue: q, dlq: {{routing_key: d, declare: {old}}}}}\n\
                 agent: {{targets: {{a: {{type: log}}}}}}\n"
            ));
            let declare = at(&got, "source.dlq.declare");
            assert_eq!(declare.len(), 1, "{got:#?}");
            assert!(declare[0].contains(says), "{got:#?}");
        }
    }

    #[test]
    fn a_kafka_source_without_dlq_topic_is_refused_while_the_policies_ask_for_dead_letters() {
        let kafka = "source: {type: kafka, brokers: [\"k:9092\"], topics: [t], consumer_group: g}\n\
                     agent: {targets: {a: {type: log}}}\n";
        let got = problems(kafka);
        let dlq = at(&got, "source.dlq_topic");
        assert_eq!(dlq.len(), 1, "{got:#?}");
        for field in [
            "processing.on_failure",
            "processing.on_parse_failure",
            "processing.on_unrouted",
        ] {
            assert!(dlq[0].contains(field), "{field} in {got:#?}");
        }
        assert!(!dlq[0].contains("on_governance_deny"), "its default is ack: {got:#?}");
        let no_dlq_actions =
            format!("{kafka}processing: {{on_failure: nack, on_parse_failure: ack, on_unrouted: ack}}\n");
        load_str(&no_dlq_actions, no_env).expect("nothing asks for dead-lettering");
        let one = format!("{kafka}processing: {{on_parse_failure: ack, on_unrouted: ack}}\n");
        let got = problems(&one);
        assert!(
            at(&got, "source.dlq_topic")[0].contains("processing.on_failure asks"),
            "{got:#?}"
        );
        for (source, field) in [
            ("{type: rabbitmq, url: \"amqp://localhost\", queue: q}", "source.dlq"),
            ("{type: sqs, queue_url: q, region: r}", "source.dlq_queue_url"),
        ] {
            let got = problems(&format!("source: {source}\nagent: {{targets: {{a: {{type: log}}}}}}\n"));
            assert_eq!(at(&got, field).len(), 1, "{got:#?}");
        }
    }

    #[test]
    fn a_capped_requeue_needs_a_dead_letter_destination_and_says_how_to_do_without() {
        let kafka = "source: {type: kafka, brokers: [\"k:9092\"], topics: [t], consumer_group: g}\n\
                     agent: {targets: {a: {type: log}}}\n\
                     processing: {on_failure: requeue, on_parse_failure: ack, on_unrouted: ack";
        let got = problems(&format!("{kafka}}}\n"));
        let dlq = at(&got, "source.dlq_topic");
        assert_eq!(dlq.len(), 1, "{got:#?}");
        assert!(
            dlq[0].contains("processing.max_requeues asks for dead-lettering")
                && dlq[0].contains("still failing after max_requeues requeues")
                && dlq[0].ends_with("set source.dlq_topic, or set processing.max_requeues: unlimited"),
            "{got:#?}"
        );
        let unlimited = load_str(&format!("{kafka}, max_requeues: unlimited}}\n"), no_env)
            .expect("an unlimited requeue never dead-letters");
        assert_eq!(unlimited.warnings().len(), 1, "and is warned about");
    }

    #[test]
    fn the_memory_store_takes_a_capacity_and_nothing_else() {
        use crate::config::{MemoryStoreConfig, StoreConfig};
        let with = |store: &str| {
            format!(
                "source: {{type: mock, queue: q}}\nidempotency: {{store: {store}}}\nagent: {{targets: {{a: {{type: log}}}}}}\n"
            )
        };
        let loaded = |store: &str| load_str(&with(store), |_| None).map(|c| c.idempotency.store);
        assert_eq!(
            loaded("{type: memory}").unwrap(),
            StoreConfig::Memory(MemoryStoreConfig { capacity: 0 })
        );
        assert_eq!(
            loaded("{type: memory, capacity: 1000000}").unwrap(),
            StoreConfig::Memory(MemoryStoreConfig { capacity: 1_000_000 })
        );
        let unknown = problems(&with("{type: memory, capacty: 10}"));
        assert!(unknown.iter().any(|p| p.contains("capacty")), "{unknown:#?}");
        let huge = problems(&with("{type: memory, capacity: 99999999999}"));
        assert!(
            huge.iter().any(|p| p.starts_with("idempotency.store.capacity:")),
            "{huge:#?}"
        );
    }
}

#[cfg(test)]
mod applied {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::load_str;
    use crate::config::{FailureAction, Ordering, RequeueLimit};
    use crate::parse::PayloadFormat;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Config applied (2.1): whatever valid values a file gives, the loaded
        /// configuration carries exactly those values, through env substitution too.
        #[test]
        fn every_value_in_the_file_is_the_value_loaded(
            concurrency in 1usize..500,
            max_retries in 0u32..50,
            initial_ms in 1u64..5_000,
            multiplier in 1.0f64..10.0,
            window_s in 1u64..100_000,
            parser in prop_oneof![Just(PayloadFormat::Json), Just(PayloadFormat::Text), Just(PayloadFormat::Binary)],
            ordering in prop_oneof![Just(Ordering::None), Just(Ordering::Key), Just(Ordering::Partition)],
            on_failure in prop_oneof![Just(FailureAction::Dlq), Just(FailureAction::Nack), Just(FailureAction::Requeue), Just(FailureAction::Ack)],
            max_requeues in prop_oneof![(0u32..1_000).prop_map(RequeueLimit::At), Just(RequeueLimit::Unlimited)],
            queue in "[a-z][a-z0-9_.-]{0,20}",
            dedup in any::<bool>(),
        ) {
            let yaml = format!(
                "source: {{type: mock, queue: \"${{QUEUE}}\"}}\n\
                 processing: {{concurrency: {concurrency}, parser: {}, ordering: {}, ack_policy: {}, max_requeues: {max_requeues}}}\n\
                 retry: {{max_retries: {max_retries}, backoff: {{base: {initial_ms}ms, multiplier: {multiplier}, max: 10m}}}}\n\
                 idempotency: {{enable_dedup: {dedup}, idempotency_window: {window_s}s}}\n\
                 agent: {{targets: {{a: {{type: log}}}}}}\n",
                parser.as_str(),
                serde_json::to_value(ordering).unwrap().as_str().unwrap(),
                serde_json::to_value(on_failure).unwrap().as_str().unwrap(),
            );
            let c = load_str(&yaml, |n| (n == "QUEUE").then(|| queue.clone())).unwrap();
            prop_assert_eq!(c.processing.concurrency, concurrency);
            prop_assert_eq!(c.processing.parser, parser);
            prop_assert_eq!(c.processing.ordering, ordering);
            prop_assert_eq!(c.processing.on_failure, on_failure);
            prop_assert_eq!(c.processing.max_requeues, max_requeues);
            prop_assert_eq!(c.retry.max_retries, max_retries);
            prop_assert_eq!(c.retry.backoff.initial, Duration::from_millis(initial_ms));
            prop_assert!((c.retry.backoff.multiplier - multiplier).abs() < 1e-9);
            prop_assert_eq!(c.idempotency.enabled, dedup);
            prop_assert_eq!(c.idempotency.window, Duration::from_secs(window_s));
            let crate::config::SourceConfig::Mock(m) = &c.source else { panic!("mock source") };
            prop_assert_eq!(&m.queue, &queue);
        }
    }
}
