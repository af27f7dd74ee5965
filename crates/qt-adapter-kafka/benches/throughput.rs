//! Consume-process-commit throughput on Kafka: qt (the engine with this adapter, a no-op
//! agent, the in-memory idempotency store sized for the run's keys, the in-memory ledger
//! counting records) next to the minimal hand-written at-least-once consumer (an rdkafka
//! `BaseConsumer` that parses each body as JSON and stores its offset, with
//! `enable.auto.offset.store=false` and auto-commit). Both read the same pre-filled topic
//! on the same broker in the same run, each drain in a consumer group of its own, taking
//! turns.
//!
//! The plain consumer fetches with qt's `fetch.queue.backoff.ms` (100 ms; librdkafka's
//! default of 1 s idles any consumer that drains its prefetch queue faster than the broker
//! refills it, which capped both sides near 170,000 messages/s here and hid what qt costs
//! per message). A third drain, `rdkafka-defaults`, runs it at librdkafka's defaults for
//! reference; the ratio is qt against the plain consumer fetching alike.
//!
//! Each drain is timed from its first message to its last finished message (offset stored;
//! for qt, settled after its ledger record): the group join before the first message is the
//! broker's and the same for both. After each drain the group's committed offsets are
//! checked to reach the end of every partition.
//!
//! Run with `cargo xtask bench kafka`, which records the figures in docs/benchmarks.md.
//! Prints one JSON line per measured drain and a final summary line.
//!
//! Environment: `QT_BENCH_KAFKA_BROKERS` (else `QT_TEST_KAFKA_BROKERS`, else
//! `127.0.0.1:9092`), `QT_BENCH_MESSAGES` (1000000), `QT_BENCH_PARTITIONS` (8),
//! `QT_BENCH_ROUNDS` (3), `QT_BENCH_CONCURRENCY` (8), `QT_BENCH_BATCH` (256),
//! `QT_BENCH_MAX_IN_FLIGHT` (8 x batch), `QT_BENCH_SIDES` (`rdkafka,qt,rdkafka-defaults`;
//! one side alone for profiling), `QT_BENCH_KAFKA_OPTIONS` (`key=value,...`: librdkafka
//! options for every side's consumer, for experiments), `QT_BENCH_TOPIC` (use this topic
//! and keep it: created and filled when it does not exist, else drained as it is; for
//! profiling the drains alone).

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qt_adapter_kafka::{FETCH_QUEUE_BACKOFF_MS, KafkaAdapter, KafkaAdmin};
use qt_bench_support::{NoOpAgent, dedup_key, env_or, median, order_body, tenant_of};
use qt_core::config::{
    Config, FailureAction, KafkaSourceConfig, MemoryStoreConfig, SourceConfig, StoreConfig, UnprocessableAction,
};
use qt_core::{AdapterError, AdapterSettings, Capabilities, Delivery, Health, LedgerStatus, QueueAdapter};
use qt_engine::QueueTrigger;
use qt_engine::builtin::memory_ledger::MemoryLedger;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

// The same allocator as the `qt` binary, for both sides.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest any single drain may take before the benchmark gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);
/// How long committed offsets may take to reach the end after a drain.
const COMMIT_LIMIT: Duration = Duration::from_secs(30);

/// Group timings that make a join take seconds (the same on both sides).
const GROUP_OPTIONS: [(&str, &str); 2] = [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")];
/// Commit every second on both sides (qt's default `commit_interval`).
const COMMIT_INTERVAL_MS: u64 = 1000;

#[derive(Clone, Debug)]
struct Settings {
    brokers: String,
    messages: usize,
    partitions: i32,
    rounds: usize,
    concurrency: usize,
    batch_size: usize,
    max_in_flight: usize,
    sides: Vec<Side>,
    topic: Option<String>,
    /// librdkafka options for both sides' consumers.
    options: Vec<(String, String)>,
}

impl Settings {
    fn from_env() -> Self {
        let brokers = std::env::var("QT_BENCH_KAFKA_BROKERS")
            .or_else(|_| std::env::var("QT_TEST_KAFKA_BROKERS"))
            .unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
        let batch_size = env_or("QT_BENCH_BATCH", 256);
        let concurrency = env_or("QT_BENCH_CONCURRENCY", 8);
        // Eight batches in flight: with the engine's default of two, the consumer buffers a
        // quarter as many messages between the broker's bursts of fetches, and qt reads
        // about 15% less here.
        let max_in_flight = env_or("QT_BENCH_MAX_IN_FLIGHT", batch_size * 8);
        Self {
            brokers,
            messages: env_or("QT_BENCH_MESSAGES", 1_000_000),
            partitions: env_or("QT_BENCH_PARTITIONS", 8),
            rounds: env_or("QT_BENCH_ROUNDS", 3),
            concurrency,
            batch_size,
            max_in_flight,
            sides: std::env::var("QT_BENCH_SIDES")
                .unwrap_or_else(|_| "rdkafka,qt,rdkafka-defaults".to_owned())
                .split(',')
                .map(|side| match side.trim() {
                    "qt" => Side::Qt,
                    "rdkafka" => Side::Plain,
                    "rdkafka-defaults" => Side::PlainDefaults,
                    other => panic!("QT_BENCH_SIDES: unknown side {other:?} (qt, rdkafka, rdkafka-defaults)"),
                })
                .collect(),
            topic: std::env::var("QT_BENCH_TOPIC").ok(),
            options: std::env::var("QT_BENCH_KAFKA_OPTIONS")
                .unwrap_or_default()
                .split(',')
                .filter(|kv| !kv.trim().is_empty())
                .map(|kv| {
                    let (k, v) = kv
                        .split_once('=')
                        .unwrap_or_else(|| panic!("QT_BENCH_KAFKA_OPTIONS: {kv:?} is not key=value"));
                    (k.trim().to_owned(), v.trim().to_owned())
                })
                .collect(),
        }
    }
}

/// Message `i`: a ~200-byte JSON order keyed by its order id, with dedup key and tenant
/// headers, as a producer feeding qt would send it.
fn message(i: usize) -> (String, Vec<u8>, OwnedHeaders) {
    let body = order_body(i);
    let dedup = dedup_key(i);
    let tenant = tenant_of(i);
    let headers = OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: "x-dedup-key",
            value: Some(dedup.as_bytes()),
        })
        .insert(Header {
            key: "x-tenant-id",
            value: Some(tenant.as_bytes()),
        });
    (format!("order-{i}"), body, headers)
}

/// Counts delivery reports of the pre-fill.
#[derive(Default)]
struct Reports {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl rdkafka::ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Fills `topic` with `n` messages, every one acknowledged by the broker.
fn prefill(s: &Settings, topic: &str) {
    let started = Instant::now();
    let producer: BaseProducer<Reports> = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(Reports::default())
        .expect("a producer for the pre-fill");
    for i in 0..s.messages {
        let (key, body, headers) = message(i);
        let mut record = BaseRecord::to(topic).key(&key).payload(&body).headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .expect("the pre-fill is acknowledged");
    let reports = producer.context();
    assert_eq!(reports.failed.load(Ordering::Relaxed), 0, "the broker refused messages");
    assert_eq!(reports.delivered.load(Ordering::Relaxed) as usize, s.messages);
    eprintln!(
        "pre-filled {topic} with {} messages in {:.1?}",
        s.messages,
        started.elapsed()
    );
}

/// The minimal hand-written at-least-once consumer: poll, parse the body as JSON, store the
/// offset; librdkafka commits the stored offsets every second. With `fetch_like_qt`, it
/// fetches with qt's `fetch.queue.backoff.ms`, so the two sides differ only in what they do
/// per message; without, it keeps librdkafka's defaults. Returns the time from the first
/// message to the last stored offset, and the CPU time its threads used.
fn drain_plain(s: &Settings, topic: &str, group: &str, fetch_like_qt: bool) -> (Duration, ThreadCpu) {
    let cpu_before = ThreadTimes::now();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &s.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", COMMIT_INTERVAL_MS.to_string())
        .set("auto.offset.reset", "earliest");
    for (k, v) in GROUP_OPTIONS {
        config.set(k, v);
    }
    if fetch_like_qt {
        config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    }
    for (k, v) in &s.options {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().expect("a plain consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut first = None;
    let mut done = 0;
    while done < s.messages {
        match consumer.poll(Duration::from_millis(100)) {
            None => assert!(
                Instant::now() < deadline,
                "the plain consumer read {done} of {} within {DRAIN_LIMIT:?}",
                s.messages
            ),
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                let value: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).expect("a JSON body");
                std::hint::black_box(&value);
                consumer.store_offset_from_message(&m).expect("store the offset");
                done += 1;
            }
            Some(Err(e)) => panic!("the plain consumer failed: {e}"),
        }
    }
    let elapsed = first.expect("at least one message").elapsed();
    let cpu = ThreadTimes::now().since(&cpu_before);
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("the final commit");
    (elapsed, cpu)
}

/// The engine's source, noting when the first delivery arrived.
#[derive(Debug)]
struct FirstReceive {
    inner: KafkaAdapter,
    first: OnceLock<Instant>,
    /// Non-empty receives, for the average batch the engine got.
    receives: AtomicU64,
}

#[async_trait]
impl QueueAdapter for FirstReceive {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn queue(&self) -> &str {
        self.inner.queue()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn connect(&self) -> Result<(), AdapterError> {
        self.inner.connect().await
    }
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, AdapterError> {
        let received = self.inner.receive(max).await;
        if matches!(&received, Ok(d) if !d.is_empty()) {
            self.first.get_or_init(Instant::now);
            self.receives.fetch_add(1, Ordering::Relaxed);
        }
        received
    }
    async fn pause(&self) -> Result<(), AdapterError> {
        self.inner.pause().await
    }
    async fn resume(&self) -> Result<(), AdapterError> {
        self.inner.resume().await
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
    async fn backlog(&self) -> Result<Option<u64>, AdapterError> {
        self.inner.backlog().await
    }
    async fn close(&self) -> Result<(), AdapterError> {
        self.inner.close().await
    }
}

/// qt: the engine with the Kafka adapter, a no-op agent, the in-memory idempotency store
/// (every message claimed and completed) and the in-memory ledger (counting records,
/// keeping none). Returns the time from the first delivery to the last settled message
/// (the engine counts a message processed once its settle returned, after its ledger
/// record), and the CPU time its threads used.
async fn drain_qt(s: &Settings, topic: &str, group: &str) -> (Duration, ThreadCpu, f64) {
    let cpu_before = ThreadTimes::now();
    let mut source = KafkaSourceConfig {
        brokers: s.brokers.split(',').map(str::to_owned).collect(),
        topics: vec![topic.to_owned()],
        consumer_group: group.to_owned(),
        commit_interval: Duration::from_millis(COMMIT_INTERVAL_MS),
        ..KafkaSourceConfig::default()
    };
    source.options = GROUP_OPTIONS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain(s.options.iter().cloned())
        .collect::<BTreeMap<_, _>>();
    let mut config = Config::with_source(SourceConfig::Kafka(source.clone()));
    config.name = "bench".into();
    config.processing.concurrency = s.concurrency;
    config.processing.batch_size = s.batch_size;
    config.processing.max_in_flight = Some(s.max_in_flight);
    // Sized for the run's keys, as a long-running instance's store is once it has held one
    // window: a store growing from empty doubles its tables again and again on the way to
    // a million keys, which is start-up work, not per-message work.
    config.idempotency.store = StoreConfig::Memory(MemoryStoreConfig { capacity: s.messages });
    // Nothing fails in this run; these keep the trigger from needing a DLQ topic.
    config.processing.on_failure = FailureAction::Nack;
    config.processing.on_parse_failure = UnprocessableAction::Nack;
    config.processing.on_unrouted = UnprocessableAction::Nack;
    let settings = AdapterSettings::new("bench", s.concurrency, s.max_in_flight);
    let adapter = Arc::new(FirstReceive {
        inner: KafkaAdapter::new(&source, settings).expect("adapter"),
        first: OnceLock::new(),
        receives: AtomicU64::new(0),
    });
    let trigger = QueueTrigger::builder(config)
        .adapter(adapter.clone())
        // Every record is built and handed over, counted and dropped at once, as a ledger
        // that writes it out does; keeping the last thousands would measure the memory
        // ledger's own retention (each record freed long after, by another thread).
        .ledger(Arc::new(MemoryLedger::bounded(0)))
        .agent("noop", Arc::new(NoOpAgent))
        .build()
        .expect("bench configuration is valid");
    trigger.start().await.expect("the trigger starts");
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        let done = trigger.metrics().processed(LedgerStatus::Succeeded);
        if done as usize >= s.messages {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "qt settled {done} of {} within {DRAIN_LIMIT:?}",
            s.messages
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = adapter.first.get().expect("at least one delivery").elapsed();
    // Before the stop: the adapter's consumer thread ends with it.
    let cpu = ThreadTimes::now().since(&cpu_before);
    trigger.stop().await.expect("the trigger stops");
    let m = trigger.metrics();
    assert_eq!(
        m.processed(LedgerStatus::Succeeded) as usize,
        s.messages,
        "every message succeeded once"
    );
    assert_eq!(m.dedup_hits, 0, "no message was delivered twice");
    assert_eq!(m.settle_errors, 0, "no settle failed");
    let mean_batch = s.messages as f64 / adapter.receives.load(Ordering::Relaxed).max(1) as f64;
    (elapsed, cpu, mean_batch)
}

/// Waits until `group` has committed the end of every partition of `topic`.
async fn assert_committed_to_end(admin: &KafkaAdmin, group: &str, topic: &str, end: &BTreeMap<i32, i64>) {
    let deadline = Instant::now() + COMMIT_LIMIT;
    loop {
        let committed = admin.committed_offsets(group, topic).await.expect("committed offsets");
        if end
            .iter()
            .all(|(p, hi)| committed.get(p).copied().flatten() == Some(*hi))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} committed {committed:?}, the topic ends at {end:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The plain consumer fetching like qt.
    Plain,
    /// The plain consumer at librdkafka's defaults: what a hand-written consumer gets
    /// untuned, shown for reference; the ratio is taken against [`Side::Plain`].
    PlainDefaults,
    Qt,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Plain => "rdkafka",
            Side::PlainDefaults => "rdkafka-defaults",
            Side::Qt => "qt",
        }
    }
}

async fn measure(
    s: &Settings,
    admin: &KafkaAdmin,
    topic: &str,
    end: &BTreeMap<i32, i64>,
    side: Side,
    round: usize,
) -> f64 {
    let group = format!("qt-bench-{}-{}", side.name(), uuid::Uuid::new_v4().simple());
    let (elapsed, cpu, mean_batch) = match side {
        Side::Plain | Side::PlainDefaults => {
            let (s, topic, group) = (s.clone(), topic.to_owned(), group.clone());
            let fetch_like_qt = side == Side::Plain;
            let (elapsed, cpu) = tokio::task::spawn_blocking(move || drain_plain(&s, &topic, &group, fetch_like_qt))
                .await
                .expect("the plain consumer thread");
            (elapsed, cpu, None)
        }
        Side::Qt => {
            let (elapsed, cpu, mean_batch) = drain_qt(s, topic, &group).await;
            (elapsed, cpu, Some(mean_batch))
        }
    };
    assert_committed_to_end(admin, &group, topic, end).await;
    let rate = s.messages as f64 / elapsed.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "side": side.name(),
            "round": round,
            "messages": s.messages,
            "seconds": elapsed.as_secs_f64(),
            "messages_per_second": rate,
            "cpu_seconds": cpu.total().as_secs_f64(),
            "cpu_us_per_message": cpu.total().as_secs_f64() * 1e6 / s.messages as f64,
            "cpu_us_per_message_by_thread": cpu.per_message(s.messages),
            "mean_receive_batch": mean_batch,
        })
    );
    rate
}

/// CPU time (user and system) used by this process's threads, by kind of thread, from
/// `/proc/self/task/*/stat` (clock ticks of 10ms). Threads that ended are not counted, so a
/// drain takes its second reading before it stops its consumer.
#[derive(Debug, Default)]
struct ThreadCpu(BTreeMap<&'static str, Duration>);

/// Each live thread's kind and CPU time so far, by thread id.
#[derive(Debug, Default)]
struct ThreadTimes(BTreeMap<u64, (&'static str, Duration)>);

impl ThreadTimes {
    fn now() -> Self {
        let mut by_thread = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Self(by_thread);
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ...`: the name may hold spaces, so split at the parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
            let used = Duration::from_millis((ticks(11) + ticks(12)) * 10);
            let kind = match name {
                "qt-kafka-consum" => "adapter_consumer_thread",
                n if n.starts_with("tokio-") => "tokio_workers",
                n if n.starts_with("rdk:") => "librdkafka",
                _ => "other",
            };
            by_thread.insert(tid, (kind, used));
        }
        Self(by_thread)
    }

    /// What each kind of thread used since `before`, thread by thread: a thread that
    /// ended meanwhile (an idle tokio blocking thread retires after 10 s) takes its
    /// earlier time with it instead of cancelling another thread's.
    fn since(&self, before: &Self) -> ThreadCpu {
        let mut by_kind = BTreeMap::new();
        for (tid, (kind, used)) in &self.0 {
            let earlier = before.0.get(tid).map_or(Duration::ZERO, |(_, t)| *t);
            *by_kind.entry(*kind).or_default() += used.saturating_sub(earlier);
        }
        ThreadCpu(by_kind)
    }
}

impl ThreadCpu {
    fn total(&self) -> Duration {
        self.0.values().sum()
    }

    fn per_message(&self, messages: usize) -> BTreeMap<&'static str, f64> {
        self.0
            .iter()
            .map(|(k, v)| (*k, v.as_secs_f64() * 1e6 / messages as f64))
            .collect()
    }
}

fn main() {
    // Warnings (a failing commit, a stalled consumer) explain odd figures; `RUST_LOG`
    // shows more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let s = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let admin = KafkaAdmin::plaintext(&s.brokers).expect("an admin client");
        // Describing a missing topic may create it empty (broker auto-creation): a kept
        // topic counts as filled only when it holds messages.
        let filled = match &s.topic {
            Some(t) => admin
                .end_offsets(t)
                .await
                .ok()
                .filter(|end| end.values().sum::<i64>() > 0)
                .map(|_| t.clone()),
            None => None,
        };
        let topic = match filled {
            Some(t) => t,
            None => {
                let topic = match &s.topic {
                    Some(t) => {
                        let _ = admin.delete_topic(t).await;
                        t.clone()
                    }
                    None => format!("qt-bench-{}", uuid::Uuid::new_v4().simple()),
                };
                admin.create_topic(&topic, s.partitions).await.unwrap_or_else(|e| {
                    panic!(
                        "cannot create the benchmark topic on {} ({e}); start the broker with `cargo xtask services up`",
                        s.brokers
                    )
                });
                let (s, name) = (s.clone(), topic.clone());
                tokio::task::spawn_blocking(move || prefill(&s, &name))
                    .await
                    .expect("the pre-fill thread");
                topic
            }
        };
        let end = admin.end_offsets(&topic).await.expect("end offsets");
        assert_eq!(
            end.values().sum::<i64>() as usize,
            s.messages,
            "the topic holds exactly the pre-filled messages"
        );
        let mut plain = Vec::new();
        let mut plain_defaults = Vec::new();
        let mut qt = Vec::new();
        for round in 0..s.rounds {
            // Taking turns, and swapping who goes first, spreads drift in the broker's state
            // (and in whatever else the machine runs) over both sides.
            let mut order = s.sides.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for side in order {
                let rate = measure(&s, &admin, &topic, &end, side, round).await;
                match side {
                    Side::Plain => plain.push(rate),
                    Side::PlainDefaults => plain_defaults.push(rate),
                    Side::Qt => qt.push(rate),
                }
            }
        }
        if s.topic.is_none()
            && let Err(e) = admin.delete_topic(&topic).await
        {
            eprintln!("could not delete {topic}: {e}");
        }
        if plain.is_empty() || qt.is_empty() {
            return;
        }
        let plain_median = median(plain);
        let qt_median = median(qt);
        let plain_defaults_median = (!plain_defaults.is_empty()).then(|| median(plain_defaults));
        println!(
            "{}",
            serde_json::json!({
                "summary": true,
                "messages": s.messages,
                "partitions": s.partitions,
                "rounds": s.rounds,
                "concurrency": s.concurrency,
                "batch_size": s.batch_size,
                "max_in_flight": s.max_in_flight,
                "rdkafka_median_messages_per_second": plain_median,
                "rdkafka_defaults_median_messages_per_second": plain_defaults_median,
                "qt_median_messages_per_second": qt_median,
                "ratio": qt_median / plain_median,
            })
        );
    });
}
