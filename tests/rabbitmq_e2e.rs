//! End-to-end tests that run the built `qt` binary against the local RabbitMQ broker.
//!
//! The broker is `QT_TEST_RABBITMQ_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`;
//! `cargo xtask services up` starts it). Tests that make the broker close connections or
//! read its unacknowledged counts use `rabbitmqctl` (`QT_TEST_RABBITMQCTL`), scoped to a
//! vhost of the test's own where it changes anything.
//!
//! Every test uses randomly named queues, bounds each wait, kills the processes it started
//! on every path (a guard kills the `qt` process group on drop) and deletes what it created.

// The commands' output is printed for `cargo test` to show when a test fails.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use qt_test_support::raw_amqp;
use serde_json::Value;

mod support;

use support::agent::{agent_runs, counting_agent};
use support::collector::{Collector, consumer_span, with_tracing};
use support::dlq::{DlqStory, breakable_agent, story_prefix};
use support::files::{by_message, ledger, status_of};
use support::process::{QtRun, qt, run_bounded};
use support::wait::wait_until;
use support::{free_port, runtime, unique};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// What the counting agent notes of each run: the dedup key the event carries.
const DEDUP_KEY: &str = r#"grep -o '"dedup_key":"[^"]*"' | head -n 1 | cut -d '"' -f 4"#;

fn broker_url() -> String {
    std::env::var("QT_TEST_RABBITMQ_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `broker_url()` with its vhost replaced.
fn url_for_vhost(vhost: &str) -> String {
    let base = broker_url();
    let start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[start..].find(['/', '?']).map_or(base.len(), |i| start + i);
    let query = base[authority_end..]
        .find('?')
        .map_or("", |i| &base[authority_end + i..]);
    format!("{}/{vhost}{query}", &base[..authority_end])
}

/// The password in `url` when it differs from the user name (the masking leaves a password
/// equal to the user name visible as the user name).
fn url_password(url: &str) -> Option<String> {
    let start = url.find("://")? + 3;
    let authority = &url[start..start + url[start..].find(['/', '?']).unwrap_or(url.len() - start)];
    let userinfo = &authority[..authority.rfind('@')?];
    let (user, password) = userinfo.split_once(':')?;
    (password != user && !password.is_empty()).then(|| password.to_owned())
}

/// A plain lapin connection for publishing and for reading queue counts; reconnects when
/// the broker closed it (the reconnect test closes every connection of its vhost).
struct Broker {
    runtime: tokio::runtime::Runtime,
    url: String,
    link: Option<(Connection, Channel)>,
}

impl Broker {
    fn connect(url: &str) -> Self {
        let mut broker = Self {
            runtime: runtime(),
            url: url.to_owned(),
            link: None,
        };
        broker.channel();
        broker
    }

    fn channel(&mut self) -> Channel {
        if let Some((connection, channel)) = &self.link
            && connection.status().connected()
            && channel.status().connected()
        {
            return channel.clone();
        }
        let url = self.url.clone();
        let (connection, channel) = self.runtime.block_on(async move {
            let attempt = Connection::connect(&url, ConnectionProperties::default());
            let connection = match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => panic!(
                    "RabbitMQ is not reachable at {} ({e}); start it with `cargo xtask services up` or set \
                     QT_TEST_RABBITMQ_URL",
                    qt_core::secret::mask_url_credentials(&url)
                ),
                Err(_) => panic!(
                    "RabbitMQ at {} did not answer within 10s; start it with `cargo xtask services up`",
                    qt_core::secret::mask_url_credentials(&url)
                ),
            };
            let channel = connection.create_channel().await.unwrap();
            channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
            (connection, channel)
        });
        self.link = Some((connection, channel.clone()));
        channel
    }

    /// Publishes every message to `queue` (default exchange), then waits for all confirms.
    fn publish_all(&mut self, queue: &str, messages: Vec<(BasicProperties, Vec<u8>)>) {
        let channel = self.channel();
        let queue = queue.to_owned();
        self.runtime.block_on(async move {
            let mut confirms = Vec::with_capacity(messages.len());
            for (properties, body) in messages {
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        options,
                        &body,
                        properties.with_delivery_mode(2),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("publishing to {queue}: {e}"));
                confirms.push(confirm);
            }
            for confirm in confirms {
                let confirmation = tokio::time::timeout(Duration::from_secs(30), confirm)
                    .await
                    .expect("publish confirm within 30s")
                    .unwrap();
                assert!(confirmation.is_ack(), "the broker refused a message for {queue}");
                assert!(
                    confirmation.take_message().is_none(),
                    "{queue} does not exist (message returned)"
                );
            }
        });
    }

    /// (ready messages, consumers) of `queue`. One retry on a fresh connection, for a
    /// connection the broker closed and lapin has not noticed yet.
    fn stats(&mut self, queue: &str) -> (u32, u32) {
        let mut last_error = None;
        for _ in 0..2 {
            let channel = self.channel();
            let declared = self.runtime.block_on(channel.queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            ));
            match declared {
                Ok(q) => return (q.message_count(), q.consumer_count()),
                Err(e) => {
                    last_error = Some(e);
                    self.link = None;
                }
            }
        }
        panic!("passive declare of {queue}: {}", last_error.unwrap());
    }

    fn ready(&mut self, queue: &str) -> u32 {
        self.stats(queue).0
    }

    /// Takes one message (acknowledged) if there is one.
    fn get(&mut self, queue: &str) -> Option<BasicGetMessage> {
        let channel = self.channel();
        self.runtime
            .block_on(channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some((connection, _)) = self.link.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), connection.close(200, "OK".into())).await
            });
        }
    }
}

/// Deletes queues of the default vhost when dropped, also when the test panics.
struct Cleanup {
    queues: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let Ok(Ok(connection)) = tokio::time::timeout(
                Duration::from_secs(5),
                Connection::connect(&broker_url(), ConnectionProperties::default()),
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
            let _ = connection.close(200, "OK".into()).await;
        });
    }
}

/// The queues qt uses for `queue`: itself, its retry queue and the DLQ these tests configure.
fn queue_family(queue: &str) -> Cleanup {
    Cleanup {
        queues: vec![queue.to_owned(), format!("{queue}.qt-retry"), format!("{queue}.dlq")],
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let program = std::env::var("QT_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
    let out = Command::new(&program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}); this test needs rabbitmqctl for the local broker (set QT_TEST_RABBITMQCTL)")
    });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Messages delivered and not yet acknowledged, as the broker counts them.
fn unacknowledged(vhost: &str, queue: &str) -> u64 {
    let out = rabbitmqctl(&[
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_unacknowledged",
        "--no-table-headers",
        "--quiet",
    ]);
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{queue} not listed by rabbitmqctl list_queues -p {vhost}:\n{out}"))
}

/// A vhost of the test's own, so "close all connections" touches nothing else; deleted
/// (with everything in it) when dropped.
struct TestVhost {
    name: String,
}

impl TestVhost {
    fn create() -> Self {
        let name = unique("vhost");
        rabbitmqctl(&["add_vhost", &name]);
        let vhost = Self { name };
        let user = url_user(&broker_url());
        rabbitmqctl(&["set_permissions", "-p", &vhost.name, &user, ".*", ".*", ".*"]);
        vhost
    }

    fn close_all_connections(&self) {
        rabbitmqctl(&[
            "close_all_connections",
            "-p",
            &self.name,
            "qt e2e: broker closes every connection",
        ]);
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let program = std::env::var("QT_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
        let _ = Command::new(&program).args(["delete_vhost", &self.name]).output();
    }
}

/// The user name in an AMQP URL (`guest` when it has none, as RabbitMQ assumes).
fn url_user(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => authority[..at].split(':').next().unwrap_or("guest").to_owned(),
        None => "guest".to_owned(),
    }
}

/// The vhost an AMQP URL names (`/` when it names none or `%2f`).
fn url_vhost(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let path = url[start..].find('/').map_or("", |i| &url[start + i + 1..]);
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() || path.eq_ignore_ascii_case("%2f") {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

/// A configuration for `queue` on `url`: qt declares the queue and a DLQ (`<queue>.dlq`),
/// runs `agent` through `/bin/sh` for every message and writes the JSONL ledger to `ledger`
/// (which may be `${VAR}`).
fn config(url: &str, queue: &str, agent: &Path, ledger: &str, admin_port: u16, processing: &str) -> String {
    format!(
        r#"name: e2e-rabbitmq
source:
  type: rabbitmq
  url: "{url}"
  queue: {queue}
  declare: {{queue: {{durable: true}}}}
  dlq: {{routing_key: {queue}.dlq, declare: {{durable: true}}}}
  connect_timeout: 5s
  reconnect_initial: 100ms
  reconnect_max: 1s
processing: {processing}
idempotency: {{enabled: true, window: 1h, lease: 5m, store: {{type: memory}}}}
agent:
  targets:
    main: {{type: command, program: /bin/sh, args: ["{agent}"], timeout: 90s}}
ledger: {{type: jsonl, path: "{ledger}"}}
observability:
  admin: {{listen: "127.0.0.1:{admin_port}"}}
  log: {{level: info}}
"#,
        agent = agent.display()
    )
}

fn message(i: usize) -> (BasicProperties, Vec<u8>) {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-dedup-key".into(),
        AMQPValue::LongString(LongString::from(format!("order-{i:03}"))),
    );
    headers.insert("x-tenant-id".into(), AMQPValue::LongString(LongString::from("acme")));
    let properties = BasicProperties::default()
        .with_message_id(format!("m-{i:03}").into())
        .with_content_type("application/json".into())
        .with_headers(headers);
    let body = format!(r#"{{"order_id":"order-{i:03}","n":{i},"items":["a","b"]}}"#).into_bytes();
    (properties, body)
}

fn assert_no_password(text: &str, url: &str) {
    if let Some(password) = url_password(url) {
        assert!(!text.contains(&password), "the broker password appears in:\n{text}");
    }
}

/// `qt validate` shows a rabbitmq configuration valid (password masked) and refuses it under
/// `security.require_tls`; `qt send` publishes through the RabbitMQ publisher into a running
/// `qt run`, whose ledger, agent and DLQ see each message as sent.
#[test]
fn validate_send_and_run_on_rabbitmq() {
    let dir = tempfile::tempdir().unwrap();
    let url = broker_url();
    let queue = unique("send");
    let _cleanup = queue_family(&queue);
    let events = dir.path().join("events");
    std::fs::create_dir(&events).unwrap();
    let agent = dir.path().join("agent.sh");
    std::fs::write(&agent, format!("cat > {}/\"$QT_MESSAGE_ID\".json\n", events.display())).unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let yaml = config(
        &url,
        &queue,
        &agent,
        &ledger_path.display().to_string(),
        port,
        "{concurrency: 4}",
    );
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(&cfg, &yaml).unwrap();

    let validate = run_bounded(
        qt().args(["validate", "-c"]).arg(&cfg),
        dir.path(),
        Duration::from_secs(30),
    );
    // The URL is shown masked.
    validate.assert_shows(&["valid", "type: rabbitmq", &queue, "***@"]);
    assert_no_password(&validate.stdout, &url);

    let tls_cfg = dir.path().join("tls.yaml");
    std::fs::write(&tls_cfg, format!("{yaml}security: {{require_tls: true}}\n")).unwrap();
    for subcommand in [&["validate", "-c"][..], &["send", "--body", "{}", "-c"][..]] {
        let refused = run_bounded(qt().args(subcommand).arg(&tls_cfg), dir.path(), Duration::from_secs(30));
        refused.assert_refused(&["source.url", "require_tls"]);
        assert_no_password(&refused.stderr, &url);
    }

    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));
    let mut broker = Broker::connect(&url);
    assert_eq!(broker.stats(&queue), (0, 1), "qt declared the queue and consumes it");

    let send = |args: &[&str]| {
        let out = run_bounded(
            qt().args(["send", "-c"]).arg(&cfg).args(args),
            dir.path(),
            Duration::from_secs(30),
        );
        assert_no_password(&out.stdout, &url);
        assert_no_password(&out.stderr, &url);
        out.sent_id()
    };
    let first = send(&[
        "--id",
        "send-1",
        "--body",
        r#"{"order_id":"o-1","total":42}"#,
        "-H",
        "x-tenant-id=acme",
        "-H",
        "x-dedup-key=o-1",
    ]);
    assert_eq!(first, "send-1", "--id becomes the AMQP message-id");
    // Once send-1 is done, a message with the same tenant and dedup key is a duplicate
    // (while send-1 still ran, it would be deferred instead).
    wait_until(
        "send-1 processed",
        Duration::from_secs(30),
        || by_message(&ledger(&ledger_path)).contains_key("send-1"),
        || run.logs(),
    );
    assert_eq!(
        send(&[
            "--id",
            "send-2",
            "--body",
            r#"{"order_id":"o-1"}"#,
            "-H",
            "x-tenant-id=acme",
            "-H",
            "x-dedup-key=o-1"
        ]),
        "send-2"
    );
    // Without --id the publisher names the message (a UUIDv7) and prints the name.
    let generated = send(&["--body", r#"{"order_id":"o-3"}"#, "-H", "x-dedup-key=o-3"]);
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    // Not JSON: a parse failure, dead-lettered to the DLQ qt declared.
    assert_eq!(send(&["--id", "send-bad", "--body", "not json at all"]), "send-bad");

    let ids = ["send-1", "send-2", generated.as_str(), "send-bad"];
    let records = run.wait_recorded_once(&ledger_path, &ids, Duration::from_secs(30));
    let only = |id: &str| records[id].clone();
    let r1 = only("send-1");
    assert_eq!(status_of(&r1), "succeeded", "{r1}");
    assert_eq!(r1["adapter"], "rabbitmq");
    assert_eq!(r1["queue"], queue.as_str());
    assert_eq!(r1["tenant_id"], "acme");
    assert_eq!(r1["dedup_key"], "o-1");
    assert_eq!(r1["settlement"], "ack");
    let r2 = only("send-2");
    assert_eq!(status_of(&r2), "duplicate", "{r2}");
    assert_eq!(status_of(&only(&generated)), "succeeded");
    let bad = only("send-bad");
    assert_eq!(status_of(&bad), "parse_failed", "{bad}");
    assert_eq!(bad["settlement"], "dead_letter");

    // What the agent saw of the first message: body and headers as sent.
    let event: Value = serde_json::from_str(&std::fs::read_to_string(events.join("send-1.json")).unwrap()).unwrap();
    assert_eq!(event["context"]["message_id"], "send-1");
    assert_eq!(event["context"]["payload"]["total"], 42);
    assert_eq!(event["context"]["headers"]["x-tenant-id"], "acme");
    assert!(event["context"]["headers"].get("x-message-id").is_none(), "{event}");
    assert_eq!(event["context"]["source"]["adapter"], "rabbitmq");
    assert_eq!(event["context"]["source"]["queue"], queue.as_str());
    assert!(
        !events.join("send-2.json").exists(),
        "the duplicate never reached the agent"
    );

    // The ledger record is written before the dead letter is published: wait for it.
    let dlq = format!("{queue}.dlq");
    let mut dead = None;
    wait_until(
        "the unparseable message in the DLQ",
        Duration::from_secs(20),
        || {
            dead = broker.get(&dlq);
            dead.is_some()
        },
        || run.logs(),
    );
    let dead = dead.unwrap();
    assert_eq!(dead.delivery.data, b"not json at all");
    let props = &dead.delivery.properties;
    assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some("send-bad"));
    let reason = match props.headers().as_ref().and_then(|h| h.inner().get("x-qt-dlq-reason")) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("the DLQ copy says why in x-qt-dlq-reason, got {other:?}"),
    };
    assert!(reason.contains("JSON"), "{reason}");

    let logs_before_stop = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(
        status.success(),
        "graceful stop exits 0 ({status}):\n{logs_before_stop}"
    );
    assert_eq!(broker.stats(&queue), (0, 0), "every message settled, consumer gone");
    assert_no_password(&std::fs::read_to_string(dir.path().join("qt.log")).unwrap(), &url);
}

/// A message whose AMQP `traceparent` header carries the producer's trace context is
/// processed in that trace: with `observability.tracing` on, the collector gets one consumer
/// span for it, the child of the producer's span, naming the queue.
#[test]
fn an_amqp_traceparent_header_makes_the_messages_span_a_child_of_the_producers() {
    const PRODUCER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const PRODUCER_SPAN: &str = "b7ad6b7169203331";
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    let url = broker_url();
    let queue = unique("traced");
    let _cleanup = queue_family(&queue);
    let agent = dir.path().join("agent.sh");
    std::fs::write(&agent, "cat > /dev/null\n").unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(
        &cfg,
        with_tracing(
            &config(&url, &queue, &agent, &ledger_path.display().to_string(), port, "{}"),
            &collector.url,
        ),
    )
    .unwrap();
    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));
    let (properties, body) = message(1);
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"))),
    );
    let mut broker = Broker::connect(&url);
    broker.publish_all(&queue, vec![(properties.with_headers(headers), body)]);

    let id = "m-001";
    let records = run.wait_recorded_once(&ledger_path, &[id], Duration::from_secs(30));
    assert_eq!(status_of(&records[id]), "succeeded", "{}", records[id]);
    assert_eq!(records[id]["trace_id"], PRODUCER_TRACE, "{}", records[id]);
    // Stopping flushes the spans: all of them are at the collector once qt has exited.
    let logs = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status}):\n{logs}");

    let spans = collector.spans();
    consumer_span(&spans, id).assert_continues(PRODUCER_TRACE, PRODUCER_SPAN, "rabbitmq", &queue);
}

/// A message whose headers nest arrays thousands of levels deep (15 KB, well within
/// RabbitMQ's frame size) runs like any other and qt goes on. lapin's parser recurses once
/// per level on a thread of its own, which overflows a default stack: qt gives its threads
/// deeper ones (crates/qt-cli/src/stacks.rs) and keeps that setting out of its agents.
#[test]
fn a_message_with_headers_nested_thousands_deep_runs_and_qt_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = broker_url();
    let queue = unique("deep");
    let _cleanup = queue_family(&queue);
    let agent = dir.path().join("agent.sh");
    let envs = dir.path().join("env");
    std::fs::create_dir(&envs).unwrap();
    std::fs::write(
        &agent,
        format!("env > {}/$QT_MESSAGE_ID\ncat > /dev/null\n", envs.display()),
    )
    .unwrap();
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(
        &cfg,
        config(&url, &queue, &agent, &ledger_path.display().to_string(), port, "{}"),
    )
    .unwrap();
    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));

    let deep = raw_amqp::nested_arrays("x-deep", 3_000);
    raw_amqp::publish(&url, &queue, "deep-1", &deep, br#"{"order_id":"deep"}"#);
    Broker::connect(&url).publish_all(&queue, vec![message(1)]);

    let ids = ["deep-1", "m-001"];
    let records = run.wait_recorded_once(&ledger_path, &ids, Duration::from_secs(30));
    for id in ids {
        assert_eq!(status_of(&records[id]), "succeeded", "{}", records[id]);
    }
    let agent_env = std::fs::read_to_string(envs.join("deep-1")).unwrap();
    assert!(
        !agent_env.contains("RUST_MIN_STACK") && !agent_env.contains("QT_SET_RUST_MIN_STACK"),
        "the stack size qt chose for itself reached the agent:\n{agent_env}"
    );
    let logs = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status}):\n{logs}");
}

/// A broker that cannot be reached at start fails `qt run` with the URL masked.
#[test]
fn an_unreachable_broker_fails_the_run_without_leaking_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let closed_port = free_port();
    let url = format!("amqp://app:pw-e2e-4711@127.0.0.1:{closed_port}/%2f");
    let agent = dir.path().join("agent.sh");
    std::fs::write(&agent, "exit 0\n").unwrap();
    let cfg = dir.path().join("qt.yaml");
    let ledger_path = dir.path().join("ledger.jsonl");
    std::fs::write(
        &cfg,
        config(
            &url,
            "orders",
            &agent,
            &ledger_path.display().to_string(),
            free_port(),
            "{}",
        ),
    )
    .unwrap();
    let out = run_bounded(qt().args(["run", "-c"]).arg(&cfg), dir.path(), Duration::from_secs(30));
    assert!(!out.status.success());
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{closed_port}")),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("pw-e2e-4711"), "{}", out.stderr);
    assert!(!out.stdout.contains("pw-e2e-4711"), "{}", out.stdout);
}

/// The broker closes every connection while qt is consuming with many messages in flight:
/// qt reconnects, every message ends succeeded or duplicate, and the agent — counted by the
/// agent itself — ran exactly once per message; redeliveries were absorbed by idempotency.
#[test]
fn broker_closing_every_connection_mid_run_loses_nothing_and_runs_each_message_once() {
    const N: usize = 300;
    let vhost = TestVhost::create();
    let url = url_for_vhost(&vhost.name);
    let dir = tempfile::tempdir().unwrap();
    let queue = unique("reconnect");
    let runs = dir.path().join("runs.log");
    let agent = counting_agent(dir.path(), &runs, DEDUP_KEY, "1");
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let cfg = dir.path().join("qt.yaml");
    // 20 agents of 1s each and up to 128 messages held: when the connections close, about a
    // hundred delivered messages are unacknowledged, most of them claimed or running.
    std::fs::write(
        &cfg,
        config(
            &url,
            &queue,
            &agent,
            &ledger_path.display().to_string(),
            port,
            "{concurrency: 20, max_in_flight: 128, batch_size: 32, duplicate_in_flight_delay: 1s, drain_timeout: 30s}",
        ),
    )
    .unwrap();
    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));
    let mut broker = Broker::connect(&url);
    broker.publish_all(&queue, (0..N).map(message).collect());
    let context = || {
        format!(
            "agent runs: {}, ledger records: {}\nqt log:\n{}",
            agent_runs(&runs).len(),
            ledger(&ledger_path).len(),
            run.logs()
        )
    };
    wait_until(
        "agent runs under way",
        Duration::from_secs(60),
        || agent_runs(&runs).len() >= 40,
        context,
    );

    vhost.close_all_connections();
    let finished_at_close = by_message(&ledger(&ledger_path)).len();
    assert!(
        finished_at_close < N,
        "every message had finished before the broker closed the connections; the test proves nothing"
    );
    wait_until(
        "qt noticed the loss and reconnected",
        Duration::from_secs(30),
        || run.logs().contains("reconnected to RabbitMQ and resubscribed"),
        context,
    );
    let retry_queue = format!("{queue}.qt-retry");
    let settled = |broker: &mut Broker, run: &QtRun| {
        let final_ok = by_message(&ledger(&ledger_path))
            .values()
            .filter(|rs| matches!(status_of(rs.last().unwrap()), "succeeded" | "duplicate"))
            .count();
        final_ok == N && broker.ready(&queue) == 0 && broker.ready(&retry_queue) == 0 && run.in_flight() == 0
    };
    wait_until(
        "every message settled for good",
        Duration::from_secs(150),
        || settled(&mut broker, &run),
        context,
    );
    // Still true a moment later: no redelivered copy was on its way.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(settled(&mut broker, &run), "{}", context());
    let logs = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status})");

    assert!(logs.contains("lost the RabbitMQ connection"), "{logs}");
    assert_no_password(&logs, &url);

    let records = by_message(&ledger(&ledger_path));
    let expected: BTreeSet<String> = (0..N).map(|i| format!("m-{i:03}")).collect();
    assert_eq!(
        records.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "a record for every message, no other"
    );
    let mut absorbed = 0;
    for (id, rs) in &records {
        let key = format!("order-{}", &id[2..]);
        let succeeded = rs.iter().filter(|r| status_of(r) == "succeeded").count();
        assert_eq!(succeeded, 1, "{id} must succeed exactly once: {rs:#?}");
        let last = rs.last().unwrap();
        assert!(matches!(status_of(last), "succeeded" | "duplicate"), "{id}: {rs:#?}");
        for r in rs {
            assert!(
                matches!(status_of(r), "succeeded" | "duplicate" | "deferred"),
                "{id}: {r}"
            );
            assert_eq!(r["dedup_key"], key.as_str(), "{r}");
        }
        if rs.len() > 1 {
            absorbed += 1;
        }
    }
    assert!(
        absorbed > 0,
        "the broker redelivered nothing: the connections were not closed mid-flight"
    );

    // Counted from the agent's side: one run per message, with the right dedup key.
    let runs = agent_runs(&runs);
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, key) in &runs {
        assert_eq!(key, &format!("order-{}", &id[2..]), "{id} ran with dedup key {key}");
        *per_id.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "the agent ran these more than once: {twice:?}");
    assert_eq!(per_id.len(), N, "the agent ran for every message");
    assert_eq!(broker.stats(&queue), (0, 0));
    assert_eq!(broker.ready(&format!("{queue}.dlq")), 0, "nothing dead-lettered");
    eprintln!(
        "{N} messages, {} had finished when the connections closed, {absorbed} were redelivered and absorbed",
        finished_at_close
    );
}

/// `qt run` is killed with SIGKILL while 200 messages are delivered and unacknowledged: the
/// broker gets all 200 back and the next `qt run` processes every one of them.
#[test]
fn sigkill_with_200_unacked_messages_hands_them_all_to_the_next_run() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let url = broker_url();
    let vhost = url_vhost(&url);
    let queue = unique("sigkill");
    let _cleanup = queue_family(&queue);
    let runs = dir.path().join("runs.log");
    let agent = counting_agent(dir.path(), &runs, DEDUP_KEY, "0");
    let cfg = dir.path().join("qt.yaml");
    let port = free_port();
    // Prefetch follows max_in_flight (256): the broker hands all 200 over at once; 50 run,
    // 150 wait for an agent slot, none is acked.
    //
    // batch_size 1: the engine's intake (qt-engine pipeline/intake.rs) reserves batch_size
    // in-flight permits per receive and hands the ones a short batch leaves unused to that
    // batch's last message, which holds them until it settles. With agents that sleep, a
    // few short batches exhaust max_in_flight long before 200 messages are taken, so only
    // single-message receives let all 200 be in flight at once.
    std::fs::write(
        &cfg,
        config(
            &url,
            &queue,
            &agent,
            "${QT_E2E_LEDGER}",
            port,
            "{concurrency: 50, max_in_flight: 256, batch_size: 1}",
        ),
    )
    .unwrap();
    let ledger1 = dir.path().join("ledger-1.jsonl");
    let ledger2 = dir.path().join("ledger-2.jsonl");

    let mut first = QtRun::start(
        &cfg,
        &dir.path().join("qt-1.log"),
        port,
        &[("AGENT_SLEEP", "60"), ("QT_E2E_LEDGER", ledger1.to_str().unwrap())],
    );
    first.wait_ready(Duration::from_secs(30));
    let mut broker = Broker::connect(&url);
    broker.publish_all(&queue, (0..N).map(message).collect());
    wait_until(
        "all 200 delivered to qt and agents running",
        Duration::from_secs(60),
        || broker.ready(&queue) == 0 && first.in_flight() == N as u64 && agent_runs(&runs).len() >= 50,
        || format!("qt status: {}\nqt log:\n{}", first.status(), first.logs()),
    );
    assert_eq!(
        unacknowledged(&vhost, &queue),
        N as u64,
        "the broker counts 200 unacknowledged"
    );
    first.kill_hard();
    assert!(
        ledger(&ledger1).is_empty(),
        "nothing had finished, so nothing was recorded or acked"
    );
    wait_until(
        "the broker requeued all 200",
        Duration::from_secs(30),
        || broker.stats(&queue) == (N as u32, 0),
        String::new,
    );

    let mut second = QtRun::start(
        &cfg,
        &dir.path().join("qt-2.log"),
        port,
        &[("AGENT_SLEEP", "0"), ("QT_E2E_LEDGER", ledger2.to_str().unwrap())],
    );
    second.wait_ready(Duration::from_secs(30));
    wait_until(
        "the second run processed all 200",
        Duration::from_secs(120),
        || by_message(&ledger(&ledger2)).len() == N,
        || format!("records: {}\nqt log:\n{}", ledger(&ledger2).len(), second.logs()),
    );
    let status = second.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status})");

    let records = by_message(&ledger(&ledger2));
    let expected: BTreeSet<String> = (0..N).map(|i| format!("m-{i:03}")).collect();
    assert_eq!(records.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (id, rs) in &records {
        assert_eq!(rs.len(), 1, "{id}: {rs:#?}");
        assert_eq!(status_of(&rs[0]), "succeeded", "{id}: {}", rs[0]);
        assert_eq!(rs[0]["settlement"], "ack");
    }
    assert_eq!(broker.stats(&queue), (0, 0), "all acked by the second run");
    assert_eq!(broker.ready(&format!("{queue}.dlq")), 0);
}

/// Issue 19: the dead-letter story of every source on RabbitMQ: letters listed from the
/// dead-letter queue without an ack, replayed with publisher-confirm-then-ack, kept by the
/// loop guard, safe under a SIGKILL mid-replay, and purged by filter.
#[test]
fn dead_letters_are_listed_shown_replayed_guarded_and_purged_with_qt_dlq_on_rabbitmq() {
    let dir = tempfile::tempdir().unwrap();
    let url = broker_url();
    let queue = unique("dlq-story");
    let _cleanup = queue_family(&queue);
    let broken = dir.path().join("broken");
    let agent = breakable_agent(dir.path(), &broken);
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let yaml = config(
        &url,
        &queue,
        &agent,
        &ledger_path.display().to_string(),
        port,
        "{concurrency: 2, on_failure: dlq}",
    );
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));
    DlqStory {
        dir: dir.path(),
        config: cfg,
        ledger: ledger_path,
        broken,
        run: &run,
        qt: &qt,
        prefix: story_prefix(),
        hold: None,
    }
    .tell();
    assert!(run.terminate(Duration::from_secs(30)).success(), "{}", run.logs());
}
