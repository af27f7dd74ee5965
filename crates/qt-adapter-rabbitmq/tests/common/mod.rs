//! Shared helpers for the RabbitMQ integration tests: the broker endpoint, a raw lapin
//! connection to set up and inspect queues, unique names, bounded waits and cleanup.
//!
//! The broker is `QT_TEST_RABBITMQ_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//! Tests that change broker state beyond queues (vhosts, users, closing connections) use
//! `rabbitmqctl` (`QT_TEST_RABBITMQCTL`, default `rabbitmqctl`).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use qt_core::config::RabbitMqSourceConfig;
use qt_core::{AdapterSettings, Delivery, QueueAdapter};

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn broker_url() -> String {
    std::env::var("QT_TEST_RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `broker_url()` with another vhost (and optionally other credentials).
pub fn url_with(vhost: &str, credentials: Option<(&str, &str)>) -> String {
    let mut url = url::Url::parse(&broker_url()).expect("QT_TEST_RABBITMQ_URL is a URL");
    url.set_path(&format!("/{vhost}"));
    if let Some((user, password)) = credentials {
        url.set_username(user).unwrap();
        url.set_password(Some(password)).unwrap();
    }
    url.to_string()
}

/// `qt-test-<what>-<random>`.
pub fn unique(what: &str) -> String {
    format!("qt-test-{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

pub fn settings(max_in_flight: usize) -> AdapterSettings {
    AdapterSettings::new("it", max_in_flight.min(8), max_in_flight)
}

/// A config for `queue` with fast reconnects, as tests want them.
pub fn config(url: &str, queue: &str) -> RabbitMqSourceConfig {
    let mut cfg = RabbitMqSourceConfig::new(url, queue);
    cfg.reconnect_initial = Duration::from_millis(200);
    cfg.reconnect_max = Duration::from_secs(1);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.confirm_timeout = Duration::from_secs(5);
    cfg
}

/// With `QT_TEST_LOG` set (an env-filter such as `qt_adapter_rabbitmq=debug`), log lines
/// go to the test output.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("QT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A plain lapin connection for setting up and inspecting the broker.
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
}

impl Broker {
    pub async fn connect() -> Self {
        Self::connect_to(&broker_url()).await
    }

    pub async fn connect_to(url: &str) -> Self {
        init_logs();
        let attempt = Connection::connect(url, ConnectionProperties::default());
        let connection = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!(
                "RabbitMQ is not reachable at {} ({e}); start it with `cargo xtask services up` or set \
                 QT_TEST_RABBITMQ_URL",
                qt_core::secret::mask_url_credentials(url)
            ),
            Err(_) => panic!(
                "RabbitMQ at {} did not answer within 10s; start it with `cargo xtask services up`",
                qt_core::secret::mask_url_credentials(url)
            ),
        };
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        Self { connection, channel }
    }

    pub async fn declare(&self, queue: &str, arguments: FieldTable) {
        self.channel
            .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
            .await
            .unwrap_or_else(|e| panic!("declaring {queue}: {e}"));
    }

    pub async fn declare_quorum(&self, queue: &str) {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
        self.declare(queue, args).await;
    }

    /// Publishes to `queue` through the default exchange and waits for the confirm.
    pub async fn publish(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.publish_to("", queue, body, properties).await;
    }

    pub async fn publish_to(&self, exchange: &str, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "publish to {exchange}/{routing_key} not confirmed");
        assert!(
            confirm.take_message().is_none(),
            "publish to {exchange}/{routing_key} was unroutable"
        );
    }

    /// Takes one message (acknowledged) if there is one.
    pub async fn get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"))
    }

    /// Waits up to `within` for a message in `queue`.
    pub async fn get_within(&self, queue: &str, within: Duration) -> lapin::message::BasicGetMessage {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.get(queue).await {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no message arrived in {queue} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (ready messages, consumers) of `queue`.
    pub async fn stats(&self, queue: &str) -> (u32, u32) {
        let q = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        (q.message_count(), q.consumer_count())
    }

    pub async fn ready(&self, queue: &str) -> u32 {
        self.stats(queue).await.0
    }

    /// Waits up to `within` until `queue` has `consumers` consumers.
    pub async fn wait_consumers(&self, queue: &str, consumers: u32, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.stats(queue).await.1 == consumers {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} did not reach {consumers} consumers within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `within` until `queue` holds `ready` ready messages.
    pub async fn wait_ready(&self, queue: &str, ready: u32, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.ready(queue).await;
            if now == ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} holds {now} ready messages, expected {ready}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn delete(&self, queue: &str) {
        let _ = self
            .channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Deletes queues and exchanges when dropped, also when the test panics.
pub struct Cleanup {
    url: String,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Cleanup {
    pub fn new(queues: &[&str]) -> Self {
        Self {
            url: broker_url(),
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            exchanges: Vec::new(),
        }
    }

    pub fn exchange(mut self, name: &str) -> Self {
        self.exchanges.push(name.to_owned());
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let url = self.url.clone();
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        // A fresh runtime on a fresh thread: Drop may run inside (or outside) the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let Ok(Ok(connection)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    Connection::connect(&url, ConnectionProperties::default()),
                )
                .await
                else {
                    return;
                };
                for q in &queues {
                    if let Ok(ch) = connection.create_channel().await {
                        let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
                    }
                }
                for e in &exchanges {
                    if let Ok(ch) = connection.create_channel().await {
                        let _ = ch.exchange_delete(e.as_str().into(), Default::default()).await;
                    }
                }
                let _ = connection.close(200, "OK".into()).await;
            });
        })
        .join();
    }
}

/// Receives until `n` deliveries arrived, waiting at most `within` in total.
pub async fn receive_n(adapter: &dyn QueueAdapter, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout_at(deadline, adapter.receive(n - out.len())).await {
            Ok(batch) => {
                let batch = batch.expect("receive failed");
                assert!(!batch.is_empty(), "receive returned an empty batch: adapter closed");
                out.extend(batch);
            }
            Err(_) => panic!("received {} of {n} deliveries within {within:?}", out.len()),
        }
    }
    out
}

pub async fn receive_one(adapter: &dyn QueueAdapter, within: Duration) -> Delivery {
    receive_n(adapter, 1, within).await.pop().unwrap()
}

/// Asserts nothing is delivered for `quiet`.
pub async fn assert_nothing_for(adapter: &dyn QueueAdapter, quiet: Duration) {
    if let Ok(batch) = tokio::time::timeout(quiet, adapter.receive(10)).await {
        let ids: Vec<_> = batch.unwrap().iter().map(|d| d.message.message_id.clone()).collect();
        panic!("expected no delivery for {quiet:?}, got {ids:?}");
    }
}

/// Runs `rabbitmqctl` with `args`, failing the test with its output when it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let program = std::env::var("QT_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
    let out = std::process::Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); these tests need rabbitmqctl for the local broker (set QT_TEST_RABBITMQCTL)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A vhost of its own (so closing "all connections" touches only this test), optionally
/// with a user of its own; deleted when dropped.
pub struct TestVhost {
    pub name: String,
    pub user: Option<(String, String)>,
}

impl TestVhost {
    pub fn create(user: Option<(&str, &str)>) -> Self {
        let name = unique("vhost");
        rabbitmqctl(&["add_vhost", &name]);
        let guest = url::Url::parse(&broker_url()).unwrap().username().to_owned();
        rabbitmqctl(&["set_permissions", "-p", &name, &guest, ".*", ".*", ".*"]);
        let user = user.map(|(u, p)| {
            rabbitmqctl(&["add_user", u, p]);
            rabbitmqctl(&["set_permissions", "-p", &name, u, ".*", ".*", ".*"]);
            (u.to_owned(), p.to_owned())
        });
        Self { name, user }
    }

    /// Makes the broker close every connection to this vhost.
    pub fn close_all_connections(&self) {
        rabbitmqctl(&["close_all_connections", "-p", &self.name, "test"]);
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        // Best effort, also while a failed test unwinds: no assertion here.
        let program = std::env::var("QT_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
        if let Some((user, _)) = &self.user {
            let _ = std::process::Command::new(&program)
                .args(["delete_user", user])
                .output();
        }
        let _ = std::process::Command::new(&program)
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// The message id of every delivery.
pub fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.message.message_id.clone()).collect()
}

pub fn with_id(id: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(id.into())
}

/// A header of a received message as text (long strings as they are, other values as
/// their `Debug`).
pub fn header(props: &BasicProperties, name: &str) -> Option<String> {
    props
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get(name))
        .map(|v| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => format!("{other:?}"),
        })
}
