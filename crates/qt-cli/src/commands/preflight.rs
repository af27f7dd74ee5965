//! What `qt run` checks before it connects to anything, which is also everything `qt validate`
//! checks: one function, so that `validate` accepts a file exactly when `run` would go on to
//! connect.
//!
//! Loading (`qt_core::config::load_file`) reports every problem of the file, the policies
//! that ask for a dead-letter destination the source lacks included. Then the agent targets
//! are built (a command that does not exist is refused), the source adapter is constructed
//! without contacting the broker (TLS files read, client settings the broker library
//! refuses), and its capabilities are held against the policies as the engine does at start.
//! What needs a connection (the broker, a Redis store, a PostgreSQL ledger) and the ledger
//! file, which opening would create, are left to `run`.

use std::collections::HashMap;
use std::sync::Arc;

use qt_core::config::{Config, ConfigErrors};
use qt_core::{AdapterError, AgentRuntime};

use crate::{agents, wiring};

/// A configuration that passed every check made before connecting, with what was built for
/// it.
pub struct Ready {
    pub agents: HashMap<String, Arc<dyn AgentRuntime>>,
    pub source: wiring::Source,
}

/// Every problem found in a loaded configuration before connecting, all at once.
pub async fn preflight(config: &Config) -> Result<Ready, ConfigErrors> {
    let mut problems = ConfigErrors::default();
    let agents = match agents::build(&config.agent) {
        Ok(agents) => Some(agents),
        Err(e) => {
            for line in e.to_string().lines() {
                match line.split_once(": ") {
                    Some((path, message)) if path.starts_with("agent.") => problems.push(path, message),
                    _ => problems.push("agent", line),
                }
            }
            None
        }
    };
    let source = match wiring::source(config).await {
        Ok(source) => Some(source),
        Err(e) => {
            match e.downcast_ref::<AdapterError>() {
                Some(AdapterError::Config { field, reason }) => problems.push(field.clone(), reason.clone()),
                _ => problems.push("source", format!("{e:#}")),
            }
            None
        }
    };
    if let Some(source) = &source {
        // The engine's own check at start, on the adapter's capabilities.
        let asks = config.processing.dead_letter_requests();
        if !asks.is_empty() && !source.adapter.capabilities().dead_letter {
            problems.push(
                "source",
                format!(
                    "{} ask for dead-lettering, but this {} source cannot dead-letter",
                    asks.join(", "),
                    source.adapter.kind()
                ),
            );
        }
    }
    #[cfg(not(feature = "postgres"))]
    if let qt_core::config::LedgerConfig::Postgres(_) = &config.ledger {
        problems.push("ledger.type", wiring::missing_ledger_feature().to_string());
    }
    match (agents, source) {
        (Some(agents), Some(source)) if problems.is_empty() => Ok(Ready { agents, source }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use async_trait::async_trait;
    use qt_core::config::load_str;
    use qt_core::{Capabilities, Delivery, Health, QueueAdapter};
    use qt_engine::QueueTrigger;
    use qt_engine::builtin::memory_ledger::MemoryLedger;
    use qt_engine::builtin::memory_store::MemoryStore;

    use super::*;

    const NOT_CONNECTING: &str = "the test stops here instead of connecting";

    /// A built source adapter whose `connect` refuses: starting a trigger on it runs every
    /// check the engine makes before connecting, and nothing after.
    #[derive(Debug)]
    struct StopAtConnect(Arc<dyn QueueAdapter>);

    #[async_trait]
    impl QueueAdapter for StopAtConnect {
        fn kind(&self) -> &'static str {
            self.0.kind()
        }
        fn queue(&self) -> &str {
            self.0.queue()
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        async fn connect(&self) -> Result<(), AdapterError> {
            Err(AdapterError::Other {
                what: "connect".into(),
                reason: NOT_CONNECTING.into(),
            })
        }
        async fn receive(&self, _max: usize) -> Result<Vec<Delivery>, AdapterError> {
            Ok(Vec::new())
        }
        async fn pause(&self) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn resume(&self) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn health(&self) -> Health {
            Health::Unhealthy("not connected".into())
        }
        async fn backlog(&self) -> Result<Option<u64>, AdapterError> {
            Ok(None)
        }
        async fn close(&self) -> Result<(), AdapterError> {
            Ok(())
        }
    }

    /// The variables of the repository's `.env.example`, which the broker examples read.
    fn env_example() -> HashMap<String, String> {
        let text = std::fs::read_to_string(workspace_root().join(".env.example")).unwrap();
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (name, value) = l.split_once('=').expect(".env.example lines are NAME=value");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    /// Loads a configuration as `qt` does with `.env.example` loaded into its environment.
    fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let env = env_example();
        load_str(&text, |name| env.get(name).cloned()).map_err(|e| e.to_string())
    }

    /// `qt validate`'s verdict: load, then [`preflight`].
    async fn validate(path: &Path) -> Result<Ready, String> {
        let config = load(path)?;
        preflight(&config).await.map_err(|e| e.to_string())
    }

    /// `qt run`'s verdict up to connecting, made by the engine itself: the trigger is built
    /// from what was prepared and started on an adapter that stops at `connect`. (The ledger
    /// is kept in memory and a Redis store replaced, as those are opened or connected after
    /// these checks.)
    async fn engine_accepts(path: &Path, ready: Ready) -> Result<(), String> {
        let config = load(path)?;
        let mut builder = QueueTrigger::builder(config)
            .adapter(Arc::new(StopAtConnect(ready.source.adapter.clone())))
            .ledger(Arc::new(MemoryLedger::new()))
            .idempotency_store(Arc::new(MemoryStore::new()));
        for (name, agent) in ready.agents {
            builder = builder.agent(name, agent);
        }
        let trigger = builder.build().map_err(|e| e.to_string())?;
        match trigger.start().await {
            Err(e) if e.to_string().contains(NOT_CONNECTING) => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(()) => Err("started without connecting".into()),
        }
    }

    fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .unwrap()
    }

    /// The configurations the tests under tests/ write, in their shapes (broker addresses
    /// and file paths filled in), and the Kafka source without `dlq_topic` that `validate`
    /// used to accept and `run` refused.
    fn written_by_tests(dir: &Path) -> Vec<(&'static str, String)> {
        let agent = "main: {type: command, program: /bin/sh, args: [\"-c\", \"true\"], timeout: 30s}";
        let ledger = dir.join("ledger.jsonl");
        let ledger = ledger.display();
        vec![
            (
                "cli_mock send.yaml",
                format!("source: {{type: mock}}\nagent: {{targets: {{main: {{type: log}}}}}}\nledger: {{type: jsonl, path: {ledger}}}\n"),
            ),
            (
                "cli_mock kafka.yaml",
                "source: {type: kafka, brokers: [\"127.0.0.1:1\"], topics: [t], consumer_group: g, dlq_topic: t.dlq}\nagent: {targets: {main: {type: log}}}\n".into(),
            ),
            (
                "kafka_e2e",
                format!("name: e2e-kafka\nsource: {{type: kafka, brokers: [\"127.0.0.1:9092\"], topics: [orders], consumer_group: g, dlq_topic: orders.dlq, commit_interval: 200ms, options: {{session.timeout.ms: \"6000\", statistics.interval.ms: \"500\"}}}}\nprocessing: {{concurrency: 4}}\nidempotency: {{enabled: true, window: 1h, lease: 5m, store: {{type: memory}}}}\nagent: {{targets: {{{agent}}}}}\nledger: {{type: jsonl, path: \"{ledger}\"}}\n"),
            ),
            (
                "rabbitmq_e2e",
                format!("name: e2e-rabbitmq\nsource: {{type: rabbitmq, url: \"amqp://guest:guest@127.0.0.1:5672/%2f\", queue: orders, declare: {{queue: {{durable: true}}}}, dlq: {{routing_key: orders.dlq, declare: {{durable: true}}}}, connect_timeout: 5s, reconnect_initial: 100ms, reconnect_max: 1s}}\nagent: {{targets: {{{agent}}}}}\nledger: {{type: jsonl, path: \"{ledger}\"}}\n"),
            ),
            (
                "sqs_e2e",
                format!("name: e2e-sqs\nsource: {{type: sqs, queue_url: \"http://127.0.0.1:4566/000000000000/orders\", region: us-east-1, endpoint_url: \"http://127.0.0.1:4566\", dlq_queue_url: \"http://127.0.0.1:4566/000000000000/orders-dlq\", wait_time: 1s, visibility_timeout: 5s}}\nagent: {{targets: {{{agent}}}}}\nledger: {{type: jsonl, path: \"{ledger}\"}}\n"),
            ),
            (
                "redis_e2e",
                format!("source: {{type: mock}}\nidempotency: {{key_prefix: p, lease: 2m, window: 10m, store: {{type: redis, url: \"redis://127.0.0.1:6379\", connect_timeout: 1s}}}}\nagent: {{targets: {{{agent}}}}}\nledger: {{type: jsonl, path: \"{ledger}\"}}\n"),
            ),
            (
                "kafka without dlq_topic",
                "source: {type: kafka, brokers: [\"127.0.0.1:9092\"], topics: [t], consumer_group: g}\nagent: {targets: {main: {type: log}}}\n".into(),
            ),
            (
                "rabbitmq without dlq, nothing dead-lettered",
                "source: {type: rabbitmq, url: \"amqp://127.0.0.1\", queue: q}\nprocessing: {on_failure: nack, on_parse_failure: nack, on_unrouted: ack}\nagent: {targets: {main: {type: log}}}\n".into(),
            ),
            (
                "sqs without dlq_queue_url",
                "source: {type: sqs, queue_url: q, region: us-east-1}\nagent: {targets: {main: {type: log}}}\n".into(),
            ),
        ]
    }

    #[tokio::test]
    async fn validate_accepts_every_example_and_test_configuration_exactly_when_run_gets_as_far_as_connecting() {
        // Example paths (`examples/messages.jsonl`) are relative to the repository root, where
        // they are run from. (nextest runs each test in its own process.)
        std::env::set_current_dir(workspace_root()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<(String, PathBuf)> = std::fs::read_dir("examples")
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .map(|p| (p.display().to_string(), p))
            .collect();
        assert!(!files.is_empty(), "examples/ holds configurations");
        for (i, (name, yaml)) in written_by_tests(dir.path()).into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.yaml"));
            std::fs::write(&path, yaml).unwrap();
            files.push((name.to_owned(), path));
        }
        let mut accepted = 0;
        for (name, path) in &files {
            let (validated, run) = match validate(path).await {
                Ok(ready) => (Ok(()), engine_accepts(path, ready).await),
                // `run` loads and prepares with the same functions, so it refuses too.
                Err(e) => (Err(e.clone()), Err(e)),
            };
            assert_eq!(
                validated.is_ok(),
                run.is_ok(),
                "{name}: validate {validated:?}, run {run:?}"
            );
            accepted += usize::from(validated.is_ok());
        }
        assert!(
            accepted >= files.len() - 2,
            "only the two without a dead-letter destination fail"
        );
    }

    #[tokio::test]
    async fn validate_refuses_a_kafka_source_without_dlq_topic_naming_the_policies_that_dead_letter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kafka.yaml");
        std::fs::write(
            &path,
            "source: {type: kafka, brokers: [\"127.0.0.1:9092\"], topics: [t], consumer_group: g}\n\
             processing: {on_unrouted: ack}\nagent: {targets: {main: {type: log}}}\n",
        )
        .unwrap();
        let e = validate(&path).await.err().expect("refused");
        assert!(
            e.contains(
                "source.dlq_topic: required: processing.on_failure, processing.on_parse_failure ask for dead-lettering"
            ),
            "{e}"
        );
        assert!(!e.contains("on_unrouted ask"), "{e}");
    }
}
