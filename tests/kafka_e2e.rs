//! End-to-end tests that run the built `qt` binary against the local Kafka-protocol broker.
//!
//! The broker is `QT_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`; `cargo xtask services up`
//! starts it). The tests create and delete their own randomly named topics and consumer
//! groups through the adapter crate's admin client, produce with its publisher, and read
//! dead letters with a plain rdkafka consumer.
//!
//! Group timings are shortened (`session.timeout.ms: 6000`, `heartbeat.interval.ms: 500`) so
//! a group join takes about three seconds. Every wait is bounded; every `qt` process runs in
//! a process group of its own that a guard kills on every path.

// The commands' output is printed for `cargo test` to show when a test fails.
#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qt_adapter_kafka::{KafkaAdmin, KafkaPublisher};
use qt_core::config::KafkaSourceConfig;
use qt_core::{AdapterSettings, Headers, OutgoingMessage};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

mod support;

use support::collector::{Collector, consumer_span, with_tracing};
use support::dlq::{DlqStory, breakable_agent, story_prefix};
use support::files::{by_message, ledger, status_of};
use support::process::{QtRun, qt, run_bounded};
use support::wait::wait_until;
use support::{free_port, reachable, runtime, unique};

// ---------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------

fn brokers() -> String {
    let brokers = std::env::var("QT_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    for b in brokers.split(',') {
        assert!(
            reachable(b, Duration::from_secs(2)),
            "the Kafka broker at {b} (QT_TEST_KAFKA_BROKERS) is not reachable; start it with `cargo xtask services up`"
        );
    }
    brokers
}

/// Admin and producer clients on a runtime of their own (the tests themselves are plain
/// threads that watch child processes). Deletes the topics it created when dropped.
struct Kafka {
    runtime: tokio::runtime::Runtime,
    brokers: String,
    admin: KafkaAdmin,
    publisher: KafkaPublisher,
    topics: Vec<String>,
}

impl Kafka {
    fn connect() -> Self {
        let brokers = brokers();
        let runtime = runtime();
        let cfg = KafkaSourceConfig {
            brokers: brokers.split(',').map(str::to_owned).collect(),
            delivery_timeout: Duration::from_secs(20),
            ..KafkaSourceConfig::default()
        };
        let (admin, publisher) = runtime.block_on(async {
            (
                KafkaAdmin::new(&cfg).expect("admin client"),
                KafkaPublisher::new(&cfg, &AdapterSettings::new("kafka-e2e", 1, 1)).expect("producer"),
            )
        });
        Self {
            runtime,
            brokers,
            admin,
            publisher,
            topics: Vec::new(),
        }
    }

    /// Creates a uniquely named topic (deleted when `self` is dropped).
    fn topic(&mut self, what: &str, partitions: i32) -> String {
        let name = unique(what);
        self.runtime
            .block_on(self.admin.create_topic(&name, partitions))
            .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
        self.topics.push(name.clone());
        name
    }

    /// Produces every message, acknowledged by the broker; returns their ids
    /// (`topic/partition/offset`, the ids the consumer gives them), in order.
    fn produce(&self, messages: Vec<OutgoingMessage>) -> Vec<String> {
        self.runtime
            .block_on(self.publisher.publish_many(messages))
            .expect("producing the test messages")
    }

    fn end_offsets(&self, topic: &str) -> BTreeMap<i32, i64> {
        self.runtime
            .block_on(self.admin.end_offsets(topic))
            .expect("end offsets")
    }

    /// What `group` has committed per partition of `topic` (`None`: nothing yet).
    fn committed(&self, group: &str, topic: &str) -> BTreeMap<i32, Option<i64>> {
        self.runtime
            .block_on(self.admin.committed_offsets(group, topic))
            .expect("committed offsets")
    }

    fn committed_to_end(&self, group: &str, topic: &str) -> bool {
        let end = self.end_offsets(topic);
        let committed = self.committed(group, topic);
        end.iter()
            .all(|(p, hi)| *hi == 0 || committed.get(p).copied().flatten() == Some(*hi))
    }

    /// Reads every message of `topic` from the start with a plain consumer (assigned, no
    /// group) until `n` arrived or `within` passed.
    fn read_all(&self, topic: &str, n: usize, within: Duration) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("a plain consumer");
        let mut tpl = TopicPartitionList::new();
        for p in self.end_offsets(topic).keys() {
            tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => out.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| {
                                    let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                    (h.key.to_owned(), v.unwrap_or_default())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        out
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        for t in std::mem::take(&mut self.topics) {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), self.admin.delete_topic(&t)).await });
        }
    }
}

/// A record as a plain consumer sees it.
#[derive(Debug)]
struct Record {
    key: Option<String>,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Message `i`: a JSON order keyed by its order id, with dedup key and tenant headers.
fn order(topic: &str, i: usize) -> OutgoingMessage {
    let headers: Headers = [
        ("x-dedup-key", format!("order-{i:04}")),
        ("x-tenant-id", "acme".to_owned()),
    ]
    .into_iter()
    .collect();
    OutgoingMessage {
        body: format!(r#"{{"order_id":"order-{i:04}","n":{i},"items":["a","b"]}}"#).into(),
        headers,
        key: Some(format!("order-{i:04}")),
        destination: Some(topic.to_owned()),
        deduplication_id: None,
    }
}

/// `(partition, offset)` of a Kafka message id `topic/partition/offset`.
fn position(id: &str) -> (i32, i64) {
    let mut parts = id.rsplitn(3, '/');
    let offset = parts
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("{id}"));
    let partition = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{id}"));
    (partition, offset)
}

// ---------------------------------------------------------------------------------------
// The qt binary
// ---------------------------------------------------------------------------------------

/// The partitions a `qt run` holds now, from its "partitions assigned" and "partitions
/// revoked" log lines (the configurations here log as JSON), and how many such lines there
/// were.
fn assignment(run: &QtRun) -> (BTreeSet<i32>, usize) {
    let mut held = BTreeSet::new();
    let mut events = 0;
    for line in run.logs().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        let fields = &line["fields"];
        let assigned = match fields["message"].as_str() {
            Some("partitions assigned") => true,
            Some("partitions revoked") => false,
            _ => continue,
        };
        events += 1;
        // `topic[0], topic[1]`
        let partitions = fields["partitions"].as_str().unwrap_or_default();
        for tp in partitions.split(", ").filter(|s| !s.is_empty()) {
            let p: i32 = tp
                .rsplit_once('[')
                .and_then(|(_, rest)| rest.strip_suffix(']'))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("unexpected partition {tp:?} in {line}"));
            if assigned {
                held.insert(p);
            } else {
                held.remove(&p);
            }
        }
    }
    (held, events)
}

/// An agent run through `/bin/sh` (so no freshly written file is executed, which can fail
/// with ETXTBSY while another test forks): sleeps `$AGENT_SLEEP` seconds (default 0), then
/// writes the event it got to `events/<message id with / as _>.json` and fails permanently
/// (exit 3) when the body asks for it with `"poison"`.
fn agent(dir: &Path, events: &Path) -> PathBuf {
    std::fs::create_dir_all(events).unwrap();
    let script = dir.join("agent.sh");
    std::fs::write(
        &script,
        format!(
            "event=$(cat)\n\
             sleep \"${{AGENT_SLEEP:-0}}\"\n\
             printf '%s' \"$event\" > \"{events}/$(printf '%s' \"$QT_MESSAGE_ID\" | tr / _).json\"\n\
             case \"$event\" in *poison*) echo 'refusing a poison order' >&2; exit 3 ;; esac\n",
            events = events.display()
        ),
    )
    .unwrap();
    script
}

/// What a test configuration varies.
struct Setup<'a> {
    brokers: &'a str,
    topic: &'a str,
    group: &'a str,
    dlq: &'a str,
    agent: &'a Path,
    /// The JSONL ledger's path; may be `${VAR}`.
    ledger: &'a str,
    /// The admin server's port; may be `${VAR}`.
    port: &'a str,
    /// The `processing` section, inline.
    processing: &'a str,
}

/// A configuration consuming `topic` in `group` with fast group timings, dead letters to
/// `dlq`, the agent for every message, the JSONL ledger, JSON logs.
fn config(s: &Setup<'_>) -> String {
    let brokers = s
        .brokers
        .split(',')
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"name: e2e-kafka
source:
  type: kafka
  brokers: [{brokers}]
  topics: [{topic}]
  consumer_group: {group}
  dlq_topic: {dlq}
  commit_interval: 200ms
  redelivery_delay: 300ms
  revoke_drain_timeout: 5s
  delivery_timeout: 10s
  connect_timeout: 10s
  options:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
    statistics.interval.ms: "500"
processing: {processing}
idempotency: {{enabled: true, window: 1h, lease: 5m, store: {{type: memory}}}}
agent:
  targets:
    main: {{type: command, program: /bin/sh, args: ["{agent}"], timeout: 60s}}
ledger: {{type: jsonl, path: "{ledger}"}}
observability:
  admin: {{listen: "127.0.0.1:{port}"}}
  log: {{level: info, format: json}}
"#,
        topic = s.topic,
        group = s.group,
        dlq = s.dlq,
        processing = s.processing,
        agent = s.agent.display(),
        ledger = s.ledger,
        port = s.port,
    )
}

/// `qt run` over a fresh one-partition topic, with a DLQ topic and a group of its own.
struct Fresh {
    topic: String,
    dlq: String,
    group: String,
    config: PathBuf,
    ledger: PathBuf,
    run: QtRun,
}

/// Creates the topics `what` and `what-dlq`, writes the configuration for them with `agent`
/// and `processing` into `dir`, and starts `qt run` on it, ready.
fn start_on_fresh_topic(kafka: &mut Kafka, dir: &Path, what: &str, agent: &Path, processing: &str) -> Fresh {
    let topic = kafka.topic(what, 1);
    let dlq = kafka.topic(&format!("{what}-dlq"), 1);
    let group = unique(&format!("{what}-group"));
    let ledger = dir.join("ledger.jsonl");
    let port = free_port();
    let config_path = dir.join("qt.yaml");
    let yaml = config(&Setup {
        brokers: &kafka.brokers,
        topic: &topic,
        group: &group,
        dlq: &dlq,
        agent,
        ledger: &ledger.display().to_string(),
        port: &port.to_string(),
        processing,
    });
    std::fs::write(&config_path, yaml).unwrap();
    let mut run = QtRun::start(&config_path, &dir.join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(60));
    Fresh {
        topic,
        dlq,
        group,
        config: config_path,
        ledger,
        run,
    }
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// `qt validate` shows a kafka configuration valid and refuses it under
/// `security.require_tls`; `qt send --key` publishes through the Kafka publisher into a
/// running `qt run`; a message the agent fails permanently and one that is not JSON land in
/// the DLQ topic with the original key, value and headers plus the `x-qt-dlq-*` headers, and
/// only then are their offsets committed.
#[test]
fn validate_send_and_dead_letters_on_kafka() {
    let mut kafka = Kafka::connect();
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka.topic("send", 2);
    let dlq = kafka.topic("send-dlq", 1);
    let group = unique("send-group");
    let events = dir.path().join("events");
    let agent = agent(dir.path(), &events);
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let yaml = config(&Setup {
        brokers: &kafka.brokers,
        topic: &topic,
        group: &group,
        dlq: &dlq,
        agent: &agent,
        ledger: &ledger_path.display().to_string(),
        port: &port.to_string(),
        processing: "{concurrency: 4}",
    });
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(&cfg, &yaml).unwrap();

    run_bounded(
        qt().args(["validate", "-c"]).arg(&cfg),
        dir.path(),
        Duration::from_secs(30),
    )
    .assert_shows(&["valid", "type: kafka", &topic, &dlq, "session.timeout.ms"]);

    let tls_cfg = dir.path().join("tls.yaml");
    std::fs::write(&tls_cfg, format!("{yaml}security: {{require_tls: true}}\n")).unwrap();
    for subcommand in [
        &["validate", "-c"][..],
        &["send", "--body", "{}", "-c"][..],
        &["run", "-c"][..],
    ] {
        run_bounded(qt().args(subcommand).arg(&tls_cfg), dir.path(), Duration::from_secs(30))
            .assert_refused(&["source.security_protocol", "require_tls"]);
    }

    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));

    let send = |args: &[&str]| {
        let id = run_bounded(
            qt().args(["send", "-c"]).arg(&cfg).args(args),
            dir.path(),
            Duration::from_secs(30),
        )
        .sent_id();
        assert!(
            id.starts_with(&format!("{topic}/")),
            "the id is topic/partition/offset: {id}"
        );
        id
    };
    let good = send(&[
        "--key",
        "cust-7",
        "--id",
        "order-1",
        "--body",
        r#"{"order_id":"o-1","total":42}"#,
        "-H",
        "x-tenant-id=acme",
        "-H",
        "x-dedup-key=o-1",
    ]);
    let poison = send(&[
        "--key",
        "cust-8",
        "--body",
        r#"{"order_id":"o-2","poison":true}"#,
        "-H",
        "x-tenant-id=acme",
        "-H",
        "x-custom=keep-me",
    ]);
    let garbage = send(&["--key", "cust-9", "--body", "not json at all", "-H", "x-tenant-id=beta"]);

    let ids = [good.as_str(), poison.as_str(), garbage.as_str()];
    let records = run.wait_recorded_once(&ledger_path, &ids, Duration::from_secs(30));
    let only = |id: &str| records[id].clone();
    let ok = only(&good);
    assert_eq!(status_of(&ok), "succeeded", "{ok}");
    assert_eq!(ok["adapter"], "kafka");
    assert_eq!(ok["queue"], topic.as_str());
    assert_eq!(ok["tenant_id"], "acme");
    assert_eq!(ok["dedup_key"], "o-1");
    assert_eq!(ok["settlement"], "ack");
    let failed = only(&poison);
    assert_eq!(status_of(&failed), "failed", "{failed}");
    assert_eq!(failed["settlement"], "dead_letter", "{failed}");
    assert_eq!(failed["attempts"], 1, "a permanent failure is not retried: {failed}");
    let unparseable = only(&garbage);
    assert_eq!(status_of(&unparseable), "parse_failed", "{unparseable}");
    assert_eq!(unparseable["settlement"], "dead_letter", "{unparseable}");

    // What the agent saw of the good message: body, key and headers as sent.
    let event_file = events.join(format!("{}.json", good.replace('/', "_")));
    let event: Value = serde_json::from_str(&std::fs::read_to_string(&event_file).unwrap()).unwrap();
    let context = &event["context"];
    assert_eq!(context["message_id"], good.as_str(), "{event}");
    assert_eq!(context["payload"]["total"], 42, "{event}");
    assert_eq!(context["headers"]["x-tenant-id"], "acme", "{event}");
    assert_eq!(
        context["headers"]["x-message-id"], "order-1",
        "--id travels as a header: {event}"
    );
    assert_eq!(context["source"]["adapter"], "kafka", "{event}");
    assert_eq!(context["source"]["queue"], topic.as_str(), "{event}");
    assert_eq!(context["source"]["key"], "cust-7", "{event}");
    let (good_partition, good_offset) = position(&good);
    assert_eq!(context["source"]["partition"], good_partition, "{event}");
    assert_eq!(context["source"]["offset"], good_offset, "{event}");

    // The DLQ topic, read by a plain consumer.
    let dead = kafka.read_all(&dlq, 2, Duration::from_secs(20));
    assert_eq!(
        dead.len(),
        2,
        "two dead letters in {dlq}: {dead:#?}\nqt log:\n{}",
        run.logs()
    );
    let find = |id: &str| {
        dead.iter()
            .find(|r| r.headers.get("x-qt-original-message-id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no dead letter for {id}: {dead:#?}"))
    };
    let d = find(&poison);
    assert_eq!(d.payload, br#"{"order_id":"o-2","poison":true}"#);
    assert_eq!(d.key.as_deref(), Some("cust-8"));
    assert_eq!(d.headers["x-tenant-id"], "acme", "original headers are kept: {d:#?}");
    assert_eq!(d.headers["x-custom"], "keep-me", "original headers are kept: {d:#?}");
    assert!(d.headers["x-qt-dlq-reason"].contains("exit 3"), "{d:#?}");
    assert_eq!(d.headers["x-qt-error-class"], "permanent", "{d:#?}");
    assert_eq!(d.headers["x-qt-attempts"], "1", "{d:#?}");
    assert_eq!(d.headers["x-qt-original-queue"], topic, "{d:#?}");
    let (p, o) = position(&poison);
    assert_eq!(d.headers["x-qt-original-partition"], p.to_string(), "{d:#?}");
    assert_eq!(d.headers["x-qt-original-offset"], o.to_string(), "{d:#?}");
    assert!(d.headers.contains_key("x-qt-last-failure-at"), "{d:#?}");
    let g = find(&garbage);
    assert_eq!(g.payload, b"not json at all");
    assert_eq!(g.key.as_deref(), Some("cust-9"));
    assert_eq!(g.headers["x-tenant-id"], "beta", "{g:#?}");
    assert!(g.headers["x-qt-dlq-reason"].contains("JSON"), "{g:#?}");
    assert_eq!(g.headers["x-qt-attempts"], "0", "never reached the agent: {g:#?}");

    // Every message finished, the dead-lettered ones included: the group commits the end.
    wait_until(
        "the group committed the end of the topic",
        Duration::from_secs(20),
        || kafka.committed_to_end(&group, &topic),
        || {
            format!(
                "committed: {:?}\nqt log:\n{}",
                kafka.committed(&group, &topic),
                run.logs()
            )
        },
    );
    let metrics = &run.status()["status"]["metrics"];
    assert_eq!(metrics["received"], 3, "{metrics}");
    let logs = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status}):\n{logs}");
}

/// A record with a header whose key is not UTF-8 (no client library writes one; a raw
/// Produce request does) is recorded as `parse_failed` and dead-lettered, and the records
/// after it run: rdkafka panics reading such a key, and qt catches that per header instead
/// of losing its consumer.
#[test]
fn a_record_with_a_header_key_that_is_not_utf8_is_dead_lettered_and_the_topic_goes_on() {
    let mut kafka = Kafka::connect();
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path(), &dir.path().join("events"));
    let Fresh {
        topic,
        dlq,
        group,
        ledger,
        mut run,
        ..
    } = start_on_fresh_topic(&mut kafka, dir.path(), "badkey", &agent, "{}");

    let broker = kafka.brokers.split(',').next().unwrap().to_owned();
    qt_test_support::raw_kafka::produce(
        &broker,
        &topic,
        br#"{"order_id":"o-1"}"#,
        &[(b"x-tenant-id", b"acme"), (b"\xffkey", b"value")],
    );
    let good = kafka.produce(vec![order(&topic, 2)]).remove(0);
    let hostile = format!("{topic}/0/0");

    let ids = [hostile.as_str(), good.as_str()];
    let records = run.wait_recorded_once(&ledger, &ids, Duration::from_secs(30));
    let failed = &records[&hostile];
    assert_eq!(status_of(failed), "parse_failed", "{failed}");
    assert_eq!(failed["settlement"], "dead_letter", "{failed}");
    assert!(
        failed["error"].as_str().is_some_and(|e| e.contains("not UTF-8")),
        "the record names what could not be read: {failed}"
    );
    assert_eq!(status_of(&records[&good]), "succeeded", "{}", records[&good]);
    wait_until(
        "the letter is in the DLQ topic and the group committed the end",
        Duration::from_secs(20),
        || kafka.end_offsets(&dlq).values().sum::<i64>() == 1 && kafka.committed_to_end(&group, &topic),
        || format!("qt log:\n{}", run.logs()),
    );
    let logs = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status}):\n{logs}");
}

/// `qt run` is killed with SIGKILL while it works through 2,000 messages, and a second
/// `qt run` in the same group takes over: every message has a ledger record with a final
/// `succeeded`, nothing is lost. Commits never ran ahead of the ledger: every message below
/// the offsets committed at the kill was recorded by the first run, and the second run
/// started exactly at those offsets.
#[test]
fn sigkill_mid_stream_then_restart_loses_nothing() {
    const N: usize = 2_000;
    let mut kafka = Kafka::connect();
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka.topic("sigkill", 4);
    let dlq = kafka.topic("sigkill-dlq", 1);
    let group = unique("sigkill-group");
    let agent = agent(dir.path(), &dir.path().join("events"));
    let port = free_port();
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(
        &cfg,
        config(&Setup {
            brokers: &kafka.brokers,
            topic: &topic,
            group: &group,
            dlq: &dlq,
            agent: &agent,
            ledger: "${QT_E2E_LEDGER}",
            port: &port.to_string(),
            processing: "{concurrency: 8, batch_size: 32}",
        }),
    )
    .unwrap();
    let ids = kafka.produce((0..N).map(|i| order(&topic, i)).collect());
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(all.len(), N);
    let ledger1 = dir.path().join("ledger-1.jsonl");
    let ledger2 = dir.path().join("ledger-2.jsonl");

    // 8 agents taking 20ms each: the first run needs several seconds for all 2,000.
    let mut first = QtRun::start(
        &cfg,
        &dir.path().join("qt-1.log"),
        port,
        &[("AGENT_SLEEP", "0.02"), ("QT_E2E_LEDGER", ledger1.to_str().unwrap())],
    );
    first.wait_ready(Duration::from_secs(30));
    wait_until(
        "the first run under way",
        Duration::from_secs(60),
        || ledger(&ledger1).len() >= 300,
        || first.logs(),
    );
    first.kill_hard();
    // A commit request the process sent just before it died is answered by now.
    std::thread::sleep(Duration::from_millis(500));
    let at_kill = by_message(&ledger(&ledger1));
    assert!(
        at_kill.len() < N,
        "the first run had finished every message before the kill; the test proves nothing"
    );
    // Nobody commits for the group now: this is where the next member starts.
    let committed = kafka.committed(&group, &topic);
    let committed_total: i64 = committed.values().map(|c| c.unwrap_or(0)).sum();
    assert!(
        committed_total > 0,
        "the first run committed nothing in the seconds it ran: {committed:?}"
    );
    for id in &all {
        let (p, o) = position(id);
        if committed[&p].is_some_and(|c| o < c) {
            assert!(
                at_kill.contains_key(id),
                "{id} is below the committed offset {committed:?} but has no ledger record: committed before recorded"
            );
        }
    }

    let mut second = QtRun::start(
        &cfg,
        &dir.path().join("qt-2.log"),
        port,
        &[("AGENT_SLEEP", "0"), ("QT_E2E_LEDGER", ledger2.to_str().unwrap())],
    );
    second.wait_ready(Duration::from_secs(30));
    let finished = || {
        let mut seen = by_message(&ledger(&ledger1));
        for (id, rs) in by_message(&ledger(&ledger2)) {
            seen.entry(id).or_default().extend(rs);
        }
        seen
    };
    wait_until(
        "every message recorded as succeeded and the end committed",
        Duration::from_secs(120),
        || {
            let seen = finished();
            all.iter().all(|id| {
                seen.get(id)
                    .is_some_and(|rs| status_of(rs.last().unwrap()) == "succeeded")
            }) && kafka.committed_to_end(&group, &topic)
        },
        || {
            format!(
                "recorded: {} of {N}\ncommitted: {:?}\nsecond run log:\n{}",
                finished().len(),
                kafka.committed(&group, &topic),
                second.logs()
            )
        },
    );
    let status = second.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status})");

    let seen = finished();
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "a record for every message, no other"
    );
    for (id, rs) in &seen {
        for r in rs {
            assert_eq!(status_of(r), "succeeded", "{id}: {rs:#?}");
            assert_eq!(r["settlement"], "ack", "{id}: {rs:#?}");
        }
    }
    // The second run started at the committed offsets: it redid nothing below them and
    // everything from them on that the first run had not recorded.
    let redone = by_message(&ledger(&ledger2));
    for id in &all {
        let (p, o) = position(id);
        let below = committed[&p].is_some_and(|c| o < c);
        if below {
            assert!(
                !redone.contains_key(id),
                "{id} was committed ({committed:?}) yet processed again"
            );
        } else {
            assert!(
                redone.contains_key(id),
                "{id} was not committed ({committed:?}) and the second run skipped it"
            );
        }
    }
    eprintln!(
        "{N} messages: {} recorded by the first run before SIGKILL, {} by the second (committed at the kill: {committed:?})",
        at_kill.len(),
        redone.len()
    );
}

/// Two `qt run` processes in one consumer group split the topic's partitions between them
/// and together process every message exactly once: each ledger holds only messages of
/// the partitions its process was assigned, and their union is everything produced.
#[test]
fn two_runs_in_one_group_split_the_partitions() {
    const N: usize = 1_000;
    const PARTITIONS: i32 = 4;
    let mut kafka = Kafka::connect();
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka.topic("split", PARTITIONS);
    let dlq = kafka.topic("split-dlq", 1);
    let group = unique("split-group");
    let agent = agent(dir.path(), &dir.path().join("events"));
    let cfg = dir.path().join("qt.yaml");
    let ports = [free_port(), free_port()];
    // One configuration; ledger and admin port differ per process.
    std::fs::write(
        &cfg,
        config(&Setup {
            brokers: &kafka.brokers,
            topic: &topic,
            group: &group,
            dlq: &dlq,
            agent: &agent,
            ledger: "${QT_E2E_LEDGER}",
            port: "${QT_E2E_PORT}",
            processing: "{concurrency: 8}",
        }),
    )
    .unwrap();
    let ledgers = [dir.path().join("ledger-a.jsonl"), dir.path().join("ledger-b.jsonl")];
    let start = |i: usize| {
        let port = ports[i].to_string();
        let mut run = QtRun::start(
            &cfg,
            &dir.path().join(format!("qt-{i}.log")),
            ports[i],
            &[("QT_E2E_LEDGER", ledgers[i].to_str().unwrap()), ("QT_E2E_PORT", &port)],
        );
        run.wait_ready(Duration::from_secs(30));
        run
    };
    let a = start(0);
    let everything: BTreeSet<i32> = (0..PARTITIONS).collect();
    wait_until(
        "the first process holds every partition",
        Duration::from_secs(30),
        || assignment(&a).0 == everything,
        || a.logs(),
    );
    let b = start(1);
    let logs = || format!("first:\n{}\nsecond:\n{}", a.logs(), b.logs());
    wait_until(
        "the two processes split the partitions",
        Duration::from_secs(60),
        || {
            let (ha, _) = assignment(&a);
            let (hb, _) = assignment(&b);
            !ha.is_empty()
                && !hb.is_empty()
                && ha.is_disjoint(&hb)
                && ha.union(&hb).copied().collect::<BTreeSet<_>>() == everything
        },
        logs,
    );
    let (held_a, events_a) = assignment(&a);
    let (held_b, events_b) = assignment(&b);

    let ids = kafka.produce((0..N).map(|i| order(&topic, i)).collect());
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let recorded = || {
        let mut seen = BTreeSet::new();
        for l in &ledgers {
            seen.extend(by_message(&ledger(l)).into_keys());
        }
        seen
    };
    wait_until(
        "every message recorded by one of the two",
        Duration::from_secs(60),
        || recorded() == all && kafka.committed_to_end(&group, &topic),
        || format!("recorded {} of {N}\n{}", recorded().len(), logs()),
    );
    assert_eq!(
        (assignment(&a), assignment(&b)),
        ((held_a.clone(), events_a), (held_b.clone(), events_b)),
        "no rebalance while the messages were processed:\n{}",
        logs()
    );

    let mut union = BTreeSet::new();
    for (ledger_path, held) in ledgers.iter().zip([&held_a, &held_b]) {
        let records = by_message(&ledger(ledger_path));
        assert!(!records.is_empty(), "{} processed nothing", ledger_path.display());
        for (id, rs) in &records {
            assert_eq!(rs.len(), 1, "{id} processed more than once: {rs:#?}");
            assert_eq!(status_of(&rs[0]), "succeeded", "{id}: {rs:#?}");
            let (p, _) = position(id);
            assert!(
                held.contains(&p),
                "{id} came from a partition this process did not hold ({held:?})"
            );
            assert!(union.insert(id.clone()), "{id} processed by both processes");
        }
    }
    assert_eq!(union, all);
    for (run, share) in [(&a, &held_a), (&b, &held_b)] {
        let received = run.status()["status"]["metrics"]["received"].as_u64().unwrap();
        assert!(received > 0, "a process with partitions {share:?} received nothing");
    }
    eprintln!("partitions: first {held_a:?}, second {held_b:?}");
    for mut run in [a, b] {
        let status = run.terminate(Duration::from_secs(40));
        assert!(status.success(), "graceful stop exits 0 ({status})");
    }
}

/// A record whose `traceparent` header carries the producer's trace context is processed in
/// that trace: with `observability.tracing` on, the collector gets one consumer span for it,
/// the child of the producer's span, naming the topic, partition and offset.
#[test]
fn a_records_traceparent_header_makes_its_span_a_child_of_the_producers() {
    const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
    let mut kafka = Kafka::connect();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    let topic = kafka.topic("traced", 1);
    let dlq = kafka.topic("traced-dlq", 1);
    let group = unique("traced-group");
    let agent = agent(dir.path(), &dir.path().join("events"));
    let ledger_path = dir.path().join("ledger.jsonl");
    let port = free_port();
    let cfg = dir.path().join("qt.yaml");
    std::fs::write(
        &cfg,
        with_tracing(
            &config(&Setup {
                brokers: &kafka.brokers,
                topic: &topic,
                group: &group,
                dlq: &dlq,
                agent: &agent,
                ledger: &ledger_path.display().to_string(),
                port: &port.to_string(),
                processing: "{}",
            }),
            &collector.url,
        ),
    )
    .unwrap();
    let mut message = order(&topic, 1);
    message
        .headers
        .insert("traceparent", format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"));
    let ids = kafka.produce(vec![message]);
    let id = ids[0].as_str();

    let mut run = QtRun::start(&cfg, &dir.path().join("qt.log"), port, &[]);
    run.wait_ready(Duration::from_secs(30));
    let records = run.wait_recorded_once(&ledger_path, &[id], Duration::from_secs(60));
    assert_eq!(status_of(&records[id]), "succeeded", "{}", records[id]);
    assert_eq!(records[id]["trace_id"], PRODUCER_TRACE, "{}", records[id]);
    // Stopping flushes the spans: all of them are at the collector once qt has exited.
    let logs = run.logs();
    let status = run.terminate(Duration::from_secs(40));
    assert!(status.success(), "graceful stop exits 0 ({status}):\n{logs}");

    let spans = collector.spans();
    let span = consumer_span(&spans, id);
    span.assert_continues(PRODUCER_TRACE, PRODUCER_SPAN, "kafka", &topic);
    assert_eq!(
        span.attr("messaging.consumer.group.name"),
        Some(group.as_str()),
        "{span:#?}"
    );
    let (partition, offset) = position(id);
    assert_eq!(
        span.attr("messaging.destination.partition.id"),
        Some(partition.to_string().as_str()),
        "{span:#?}"
    );
    assert_eq!(
        span.attr("messaging.kafka.offset"),
        Some(offset.to_string().as_str()),
        "{span:#?}"
    );
}

/// A cluster that cannot be reached fails `qt run` at start, naming the brokers, without
/// the SASL password.
#[test]
fn an_unreachable_cluster_fails_the_run_without_leaking_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", free_port());
    let agent = agent(dir.path(), &dir.path().join("events"));
    let cfg = dir.path().join("qt.yaml");
    let yaml = config(&Setup {
        brokers: &closed,
        topic: "orders",
        group: "g",
        dlq: "orders-dlq",
        agent: &agent,
        ledger: &dir.path().join("ledger.jsonl").display().to_string(),
        port: &free_port().to_string(),
        processing: "{}",
    })
    .replace("connect_timeout: 10s", "connect_timeout: 2s")
    .replace(
        "  options:\n",
        "  security_protocol: sasl_plaintext\n  sasl: {mechanism: PLAIN, username: qt, password: \"k4fka-e2e-pw-31337\"}\n  options:\n",
    );
    std::fs::write(&cfg, yaml).unwrap();
    let out = run_bounded(qt().args(["run", "-c"]).arg(&cfg), dir.path(), Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(out.stderr.contains(&closed), "{}", out.stderr);
    assert!(!out.stderr.contains("k4fka-e2e-pw-31337"), "{}", out.stderr);
    assert!(!out.stdout.contains("k4fka-e2e-pw-31337"), "{}", out.stdout);
}

/// Issue 19: the dead-letter story of every source on Kafka: letters listed from the DLQ
/// topic without a commit, replayed with produce-then-commit, kept by the loop guard, safe
/// under a SIGKILL mid-replay, and purged by filter.
#[test]
fn dead_letters_are_listed_shown_replayed_guarded_and_purged_with_qt_dlq_on_kafka() {
    let mut kafka = Kafka::connect();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    let agent = breakable_agent(dir.path(), &broken);
    let Fresh {
        config: cfg,
        ledger: ledger_path,
        mut run,
        ..
    } = start_on_fresh_topic(
        &mut kafka,
        dir.path(),
        "dlq-story",
        &agent,
        "{concurrency: 2, on_failure: dlq}",
    );
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
