//! `qt config schema`: the JSON Schema editors complete the YAML from, checked against the
//! JSON Schema meta-schema and against every example configuration.

// The commands' output is printed for `cargo test` to show when a test fails.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

mod support;

use support::process::{qt, run_bounded};
use support::repo_root;

/// Long enough on a loaded machine; printing the schema takes milliseconds.
const BOUND: Duration = Duration::from_secs(60);

/// The schema as `qt config schema` prints it.
fn printed_schema() -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(qt().args(["config", "schema"]), dir.path(), BOUND);
    assert!(out.status.success(), "qt config schema failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("qt config schema prints JSON")
}

/// A configuration file as the schema sees it once `qt` has substituted its variables: each
/// `${VAR:-default}` by its default, each other `${VAR}` by `.env.example`'s value or "".
fn as_json(path: &Path, env: &BTreeMap<String, String>) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    let text = qt_core::config::substitute(&text, |name| Some(env.get(name).cloned().unwrap_or_default()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn errors(validator: &jsonschema::Validator, document: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_printed_schema_is_a_valid_json_schema_that_every_example_satisfies() {
    let schema = printed_schema();
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("qt config schema is not a valid JSON Schema: {e}");
    }
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let env: BTreeMap<String, String> = support::env_example().into_iter().collect();
    let mut examples: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    examples.sort();
    assert!(
        examples.iter().any(|p| p.ends_with("mock.yaml")),
        "examples/ holds no configuration: {examples:?}"
    );
    for example in examples {
        let found = errors(&validator, &as_json(&example, &env));
        assert!(
            found.is_empty(),
            "{} does not match the schema:\n{}",
            example.display(),
            found.join("\n")
        );
    }
}

#[test]
fn the_schema_refuses_what_qt_refuses_and_takes_what_it_takes() {
    let validator = jsonschema::validator_for(&printed_schema()).expect("the schema compiles");
    let config = |source: &str| -> serde_json::Value {
        let yaml = format!("source: {source}\nagent: {{targets: {{default: {{type: log}}}}}}\n");
        serde_yaml_ng::from_str(&yaml).unwrap()
    };
    // Aliases, a single topic name, humantime durations, a secret, lower-case SASL mechanism.
    let taken = config(
        "{type: kafka, brokers: [\"k:9092\"], queue_name: orders, consumer_group: g, commit_interval: 1m 30s, \
         security_protocol: sasl_ssl, sasl: {mechanism: scram-sha-512, username: u, password: p}}",
    );
    assert_eq!(errors(&validator, &taken), Vec::<String>::new());
    for (refused, why) in [
        (
            "{type: kafka, brokers: [\"k:9092\"], topics: [t], consumer_group: g, bogus: 1}",
            "unknown field",
        ),
        (
            "{type: kafka, brokers: [\"k:9092\"], topics: [t]}",
            "missing consumer_group",
        ),
        (
            "{type: kafka, brokers: [\"k:9092\"], consumer_group: g}",
            "missing topics",
        ),
        (
            "{type: kafka, brokers: [\"k:9092\"], topics: [t], consumer_group: g, commit_interval: 30}",
            "a number as duration",
        ),
        (
            "{type: sqs, queue_url: q, region: r, wait_time: soon}",
            "a duration without a number",
        ),
        (
            "{type: rabbitmq, url: \"amqp://h\", queue: q, dlq: {routing_key: d, declare: true}}",
            "dlq.declare: true",
        ),
        ("{type: carrier_pigeon}", "unknown source type"),
    ] {
        assert!(
            !errors(&validator, &config(refused)).is_empty(),
            "{why}: {refused} was accepted"
        );
    }
}
