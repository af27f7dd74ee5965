//! Reading a configuration file and collecting all of its problems.

use std::path::Path;

use serde_yaml_ng::{Mapping, Value};

use super::problems::{ConfigErrors, Validate};
use super::{Config, substitute};

/// How many structural problems are collected before giving up on a file.
const MAX_STRUCTURAL_PROBLEMS: usize = 50;

/// Reads, substitutes and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::default();
        errs.push("", format!("cannot read {}: {e}", path.display()));
        errs
    })?;
    load_str(&text, |name| std::env::var(name).ok())
}

/// Substitutes with `env`, parses and validates a configuration text.
pub fn load_str(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let text = substitute(text, env)?;
    let mut value: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        let mut errs = ConfigErrors::default();
        let at = e
            .location()
            .map(|l| format!("line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        errs.push(at, format!("not valid YAML: {e}"));
        errs
    })?;
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    let mut problems = ConfigErrors::default();
    let config = loop {
        match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(config) => break Some(config),
            Err(err) => {
                let path = segments(err.path());
                let message = err.inner().to_string();
                let (report_path, repaired) = repair(&mut value, &path, &message);
                problems.push(report_path, tidy(&message));
                if !repaired || problems.problems.len() >= MAX_STRUCTURAL_PROBLEMS {
                    break None;
                }
            }
        }
    };
    let Some(config) = config else {
        return Err(problems);
    };
    let structural: Vec<String> = problems.problems.iter().map(|p| p.path.clone()).collect();
    let mut semantic = ConfigErrors::default();
    config.validate("", &mut semantic);
    for p in semantic.problems {
        // A node removed for a structural problem falls back to its default, which may
        // then fail a "required" check: report the structural problem only.
        if !structural
            .iter()
            .any(|s| p.path == *s || p.path.starts_with(&format!("{s}.")))
        {
            problems.problems.push(p);
        }
    }
    problems.into_result(config)
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
fn tidy(message: &str) -> String {
    let m = message.trim();
    match m.find(" at line ") {
        Some(i) => m[..i].to_owned(),
        None => m.to_owned(),
    }
}

/// Sets the failing node aside so deserialization can go on. Returns the path to report and
/// whether anything changed.
fn repair(root: &mut Value, path: &[Seg], message: &str) -> (String, bool) {
    if let Some(field) =
        quoted_field(message, "unknown field ").or_else(|| quoted_field(message, "unknown variant ").filter(|_| false))
    {
        // The path may or may not already end with the unknown key.
        let parent: Vec<Seg> = if path.last() == Some(&Seg::Key(field.to_owned())) {
            path[..path.len() - 1].to_vec()
        } else {
            path.to_vec()
        };
        let mut full = parent;
        full.push(Seg::Key(field.to_owned()));
        let removed = remove_at(root, &full);
        return (render(&full), removed);
    }
    if let Some(field) = quoted_field(message, "missing field ") {
        let mut full = path.to_vec();
        full.push(Seg::Key(field.to_owned()));
        let report = render(&full);
        // A missing `source` (or its `type`) cannot be defaulted: stand a mock source in so
        // the other sections can still be checked; the problem is already recorded.
        if path.is_empty() && field == "source" || path == [Seg::Key("source".into())] {
            let placeholder = serde_yaml_ng::from_str::<Value>("{type: mock}").expect("static YAML");
            return (report, set_at(root, &[Seg::Key("source".into())], placeholder));
        }
        return (report, remove_at(root, path));
    }
    let report = render(path);
    if path == [Seg::Key("source".into())] {
        let placeholder = serde_yaml_ng::from_str::<Value>("{type: mock}").expect("static YAML");
        return (report, set_at(root, path, placeholder));
    }
    (report, !path.is_empty() && remove_at(root, path))
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
        let yaml = "source: {type: rabbitmq, url: \"amqp://guest:${RMQ_PASSWORD}@localhost:5672/%2f\", queue: q}\n\
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
    use crate::config::{FailureAction, Ordering};
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
            queue in "[a-z][a-z0-9_.-]{0,20}",
            dedup in any::<bool>(),
        ) {
            let yaml = format!(
                "source: {{type: mock, queue: \"${{QUEUE}}\"}}\n\
                 processing: {{concurrency: {concurrency}, parser: {}, ordering: {}, ack_policy: {}}}\n\
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
