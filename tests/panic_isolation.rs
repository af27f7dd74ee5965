//! A panic in a step a batch takes together costs one message on every broker, not only on
//! the mock: the batch's messages come back by the broker's own redelivery, each runs
//! alone, and the one that panics is dead-lettered. The engine is driven as a library with
//! a store that has a bug the dedup key `poison` sets off.
//!
//! The brokers are `QT_TEST_RABBITMQ_URL` and `QT_TEST_KAFKA_BROKERS` (defaults on
//! loopback; `cargo xtask services up` starts them).

// The shared support module prints commands' output for `cargo test` to show on failure.
#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use qt_adapter_kafka::{KafkaAdapter, KafkaAdmin, KafkaPublisher};
use qt_adapter_rabbitmq::{RabbitMqAdapter, RabbitMqPublisher};
use qt_core::config::{Config, SourceConfig, load_str};
use qt_core::{
    AdapterSettings, AgentError, AgentEvent, AgentRun, AgentRuntime, Claim, ClaimState, ClaimToken, ErrorClass,
    Headers, Health, IdempotencyKey, IdempotencyStore, LedgerRecord, LedgerStatus, OutgoingMessage, Publisher,
    QueueAdapter, SettlementKind, StoreError,
};
use qt_engine::QueueTrigger;
use qt_engine::builtin::memory_ledger::MemoryLedger;
use qt_engine::builtin::memory_store::MemoryStore;

mod support;

use support::unique;

/// A memory store with a bug that the dedup key `poison` sets off, in the call that claims
/// a whole batch's keys at once.
#[derive(Debug, Default)]
struct PanicsOnPoisonKey(MemoryStore);

#[async_trait]
impl IdempotencyStore for PanicsOnPoisonKey {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim, StoreError> {
        self.0.claim(key, lease).await
    }
    async fn claim_batch(&self, keys: Vec<IdempotencyKey>, lease: Duration) -> Result<Vec<Claim>, StoreError> {
        assert!(keys.iter().all(|k| k.key != "poison"), "store bug on key poison");
        self.0.claim_batch(keys, lease).await
    }
    async fn complete(&self, token: &ClaimToken, window: Duration) -> Result<ClaimState, StoreError> {
        self.0.complete(token, window).await
    }
    async fn release(&self, token: &ClaimToken) -> Result<ClaimState, StoreError> {
        self.0.release(token).await
    }
    async fn health(&self) -> Health {
        self.0.health().await
    }
}

/// Succeeds, and counts its runs per dedup key.
#[derive(Debug, Default)]
struct Counting(std::sync::Mutex<Vec<String>>);

#[async_trait]
impl AgentRuntime for Counting {
    async fn trigger_event(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        let key = event.envelope.dedup_key.clone().unwrap_or_default();
        self.0.lock().expect("not poisoned").push(key);
        Ok(AgentRun::default())
    }
}

/// Six good messages and, in the middle, the one that sets off the bug.
fn messages() -> Vec<OutgoingMessage> {
    let keys = ["k0", "k1", "k2", "poison", "k3", "k4", "k5"];
    keys.iter()
        .map(|key| {
            let mut headers = Headers::new();
            headers.insert("x-dedup-key", *key);
            OutgoingMessage {
                body: Bytes::from(format!("{{\"key\": \"{key}\"}}")),
                headers,
                key: None,
                destination: None,
                deduplication_id: Some(format!("id-{key}")),
            }
        })
        .collect()
}

/// Runs the trigger until every message has its record, then checks that only the poison
/// message failed, dead-lettered with the panic's message, and every other one ran once.
async fn run_and_check(config: Config, adapter: Arc<dyn QueueAdapter>, publisher: &dyn Publisher) {
    let ledger = Arc::new(MemoryLedger::new());
    let agent = Arc::new(Counting::default());
    let trigger = QueueTrigger::builder(config)
        .adapter(adapter)
        .ledger(ledger.clone())
        .idempotency_store(Arc::new(PanicsOnPoisonKey::default()))
        .agent("main", agent.clone() as Arc<dyn AgentRuntime>)
        .build()
        .expect("valid");
    trigger.start().await.expect("starts");
    for m in messages() {
        publisher.publish(m).await.expect("published");
    }
    let finals = |records: Vec<LedgerRecord>| {
        let mut by_key = std::collections::BTreeMap::new();
        for r in records {
            by_key.insert(r.dedup_key.clone().unwrap_or_default(), r);
        }
        by_key
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while finals(ledger.records()).len() < 7 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every message has its record within 60 s: {:?}",
            ledger.records()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trigger.stop().await.expect("stops");
    let finals = finals(ledger.records());
    let poison = &finals["poison"];
    assert_eq!(poison.status, LedgerStatus::Failed);
    assert_eq!(poison.error_class, Some(ErrorClass::Permanent));
    assert_eq!(poison.settlement, SettlementKind::DeadLetter);
    let reason = poison.error.as_deref().unwrap_or_default();
    assert!(reason.contains("store bug on key poison"), "{reason}");
    let runs = agent.0.lock().expect("not poisoned").clone();
    let records = ledger.records();
    for key in ["k0", "k1", "k2", "k3", "k4", "k5"] {
        // A Kafka rewind may deliver a finished message again: then it is a duplicate.
        let statuses: Vec<LedgerStatus> = records
            .iter()
            .filter(|r| r.dedup_key.as_deref() == Some(key))
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses[0], LedgerStatus::Succeeded, "{key}: {statuses:?}");
        assert!(
            statuses[1..].iter().all(|s| *s == LedgerStatus::Duplicate),
            "{key}: {statuses:?}"
        );
        assert_eq!(runs.iter().filter(|k| *k == key).count(), 1, "{key} ran once: {runs:?}");
    }
    assert!(!runs.iter().any(|k| k == "poison"));
    assert!(trigger.metrics().panics >= 1);
}

fn config(yaml: &str) -> Config {
    load_str(yaml, |_| None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn on_rabbitmq_a_batch_that_panics_is_traced_to_the_one_message_which_is_dead_lettered() {
    let url = std::env::var("QT_TEST_RABBITMQ_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = unique("qt-panic");
    let config = config(&format!(
        "source: {{type: rabbitmq, url: \"{url}\", queue: {queue}, declare: {{queue: {{durable: false}}}}, \
         dlq: {{routing_key: {queue}-dlq, declare: {{durable: false}}}}}}\n\
         agent: {{targets: {{main: {{type: log}}}}}}\n"
    ));
    let SourceConfig::Rabbitmq(source) = &config.source else {
        unreachable!("a rabbitmq source");
    };
    let settings = AdapterSettings::new("panic-isolation", 4, 16);
    support::runtime().block_on(async {
        let adapter = Arc::new(RabbitMqAdapter::new(source, settings.clone()).expect("adapter"));
        let publisher = RabbitMqPublisher::new(source, &settings).expect("publisher");
        run_and_check(config.clone(), adapter, &publisher).await;
        publisher.close().await;
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("connects");
        let channel = connection.create_channel().await.expect("channel");
        for q in [queue.clone(), format!("{queue}-dlq")] {
            let _ = channel.queue_delete(q.as_str().into(), Default::default()).await;
        }
    });
}

#[test]
fn on_kafka_a_batch_that_panics_is_traced_to_the_one_message_which_is_dead_lettered() {
    let brokers = std::env::var("QT_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let topic = unique("qt-panic");
    let config = config(&format!(
        "source: {{type: kafka, brokers: [\"{brokers}\"], topics: [{topic}], consumer_group: {topic}-group, \
         dlq_topic: {topic}-dlq, options: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}}}}\n\
         agent: {{targets: {{main: {{type: log}}}}}}\n"
    ));
    let SourceConfig::Kafka(source) = &config.source else {
        unreachable!("a kafka source");
    };
    let settings = AdapterSettings::new("panic-isolation", 4, 16);
    support::runtime().block_on(async {
        let admin = KafkaAdmin::new(source).expect("admin");
        for t in [topic.clone(), format!("{topic}-dlq")] {
            admin.create_topic(&t, 1).await.expect("topic created");
        }
        let adapter = Arc::new(KafkaAdapter::new(source, settings.clone()).expect("adapter"));
        let publisher = KafkaPublisher::new(source, &settings).expect("publisher");
        run_and_check(config.clone(), adapter, &publisher).await;
        for t in [topic.clone(), format!("{topic}-dlq")] {
            let _ = admin.delete_topic(&t).await;
        }
    });
}
