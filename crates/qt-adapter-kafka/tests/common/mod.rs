//! Helpers for the integration tests: the broker address, unique topic names, a test
//! configuration with fast group timings, producing and bounded receiving.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use qt_adapter_kafka::{KafkaAdapter, KafkaAdmin, KafkaPublisher};
use qt_core::config::KafkaSourceConfig;
use qt_core::{AdapterSettings, Delivery, Headers, OutgoingMessage, QueueAdapter};

/// The Kafka-protocol broker (Nisshi) the tests run against.
pub fn brokers() -> String {
    let brokers = std::env::var("QT_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    for b in brokers.split(',') {
        let reachable = b
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
        assert!(
            reachable,
            "the Kafka broker at {b} (QT_TEST_KAFKA_BROKERS) is not reachable; start it with `cargo xtask services up`"
        );
    }
    brokers
}

/// A name no other test run uses.
pub fn unique(what: &str) -> String {
    format!("qt-test-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// A source section with group timings that make joins take seconds, not half a minute.
pub fn source(brokers: &str, topics: &[&str], group: &str) -> KafkaSourceConfig {
    let mut options = BTreeMap::new();
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("statistics.interval.ms", "500"),
        ("reconnect.backoff.max.ms", "1000"),
        ("topic.metadata.refresh.interval.ms", "2000"),
    ] {
        options.insert(k.to_owned(), v.to_owned());
    }
    KafkaSourceConfig {
        brokers: brokers.split(',').map(str::to_owned).collect(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        consumer_group: group.to_owned(),
        commit_interval: Duration::from_millis(200),
        revoke_drain_timeout: Duration::from_secs(5),
        redelivery_delay: Duration::from_millis(300),
        delivery_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        options,
        ..KafkaSourceConfig::default()
    }
}

pub fn settings(max_in_flight: usize) -> AdapterSettings {
    AdapterSettings::new("kafka-test", max_in_flight.min(64), max_in_flight)
}

/// Log lines go to the test's output (shown for failing tests); `RUST_LOG` filters them.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub async fn connected(cfg: &KafkaSourceConfig, max_in_flight: usize) -> KafkaAdapter {
    init_tracing();
    let adapter = KafkaAdapter::new(cfg, settings(max_in_flight)).expect("adapter");
    adapter.connect().await.expect("connect");
    adapter
}

/// Creates a topic and returns its name.
pub async fn topic(admin: &KafkaAdmin, what: &str, partitions: i32) -> String {
    let name = unique(what);
    admin.create_topic(&name, partitions).await.expect("create topic");
    name
}

pub fn message(topic: &str, i: usize) -> OutgoingMessage {
    let headers: Headers = [("x-test-seq", i.to_string()), ("x-tenant-id", "acme".to_owned())]
        .into_iter()
        .collect();
    OutgoingMessage {
        body: format!("{{\"seq\":{i}}}").into(),
        headers,
        key: Some(format!("key-{}", i % 7)),
        destination: Some(topic.to_owned()),
        deduplication_id: None,
    }
}

/// Produces `n` messages numbered from `from`.
pub async fn produce(publisher: &KafkaPublisher, topic: &str, from: usize, n: usize) {
    let msgs = (from..from + n).map(|i| message(topic, i)).collect();
    publisher.publish_many(msgs).await.expect("produce");
}

/// Receives until `n` deliveries arrived or `limit` passed (then fails).
pub async fn receive_n(adapter: &KafkaAdapter, n: usize, limit: Duration) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        let batch = tokio::time::timeout_at(deadline, adapter.receive(n - out.len()))
            .await
            .unwrap_or_else(|_| panic!("received {} of {n} messages within {limit:?}", out.len()))
            .expect("receive");
        assert!(!batch.is_empty(), "the adapter closed while receiving");
        out.extend(batch);
    }
    out
}

/// Receives whatever arrives within `window`.
pub async fn receive_for(adapter: &KafkaAdapter, window: Duration) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(batch) = tokio::time::timeout_at(deadline, adapter.receive(1000)).await {
        let batch = batch.expect("receive");
        if batch.is_empty() {
            break;
        }
        out.extend(batch);
    }
    out
}

/// Polls `check` until it returns `Some` or `limit` passes (then fails with `what`).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the group's committed offsets equal the topic's end offsets.
pub async fn wait_committed_to_end(admin: &KafkaAdmin, group: &str, topic: &str, limit: Duration) {
    let end = admin.end_offsets(topic).await.expect("end offsets");
    eventually("committed offsets to reach the end of the topic", limit, || async {
        let committed = admin.committed_offsets(group, topic).await.ok()?;
        end.iter()
            .all(|(p, hi)| *hi == 0 || committed.get(p).copied().flatten() == Some(*hi))
            .then_some(())
    })
    .await;
}

pub fn seq(d: &Delivery) -> usize {
    d.message
        .headers
        .get("x-test-seq")
        .expect("x-test-seq header")
        .parse()
        .expect("number")
}

pub async fn ack_all(deliveries: Vec<Delivery>) {
    for d in deliveries {
        d.handle.ack().await.expect("ack");
    }
}
