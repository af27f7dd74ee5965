//! Consume throughput on SQS: qt (the engine with this adapter, a no-op agent, the in-memory
//! idempotency store and ledger) next to a plain aws-sdk-sqs loop — `pollers` tasks that
//! each ReceiveMessage up to `max_messages` and DeleteMessageBatch what they got. Both sides
//! use the same endpoint, the same pollers, batch size and long-poll wait, ask for the same
//! attributes, and drain a fresh queue pre-filled with the same messages, taking turns.
//!
//! Against the moto emulator the figures measure moto more than either client: a Python
//! server whose every ReceiveMessage and deleted entry scans the whole queue, so it answers
//! only a handful of calls per second once the queue holds a few hundred messages, and fewer
//! as it grows. Keep `QT_BENCH_MESSAGES` small and the same for both sides.
//!
//! Run with `cargo xtask bench sqs`, which records the figures in docs/benchmarks.md. Prints
//! one JSON line per measured drain and a final summary line.
//!
//! Environment: `QT_BENCH_SQS_ENDPOINT` (else `QT_TEST_SQS_ENDPOINT`, else the local
//! emulator at `http://127.0.0.1:4566`), `QT_BENCH_MESSAGES` (400), `QT_BENCH_ROUNDS` (5),
//! `QT_BENCH_POLLERS` (2), `QT_BENCH_MAX_MESSAGES` (10), `QT_BENCH_CONCURRENCY` (8),
//! `QT_BENCH_BATCH` (64), `QT_BENCH_MAX_IN_FLIGHT` (128).

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use futures::StreamExt;
use qt_adapter_sqs::SqsAdapter;
use qt_adapter_sqs::connection::sdk_client;
use qt_bench_support::{NoOpAgent, dedup_key, env_or, median, order_body, run_until_succeeded, tenant_of};
use qt_core::config::{Config, FailureAction, LedgerConfig, SourceConfig, SqsSourceConfig, UnprocessableAction};
use qt_core::{AdapterSettings, LedgerStatus};
use qt_engine::QueueTrigger;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, filter};

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";
const REGION: &str = "us-east-1";
/// SendMessageBatch calls in flight at once while pre-filling.
const FILL_CONCURRENCY: usize = 4;
/// Long-poll wait on both sides. The queue is full until the last receive, so it only
/// matters at the very end.
const WAIT_TIME: Duration = Duration::from_secs(1);
/// Longest any single drain may take before the benchmark gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// SQS calls one drain made: how well each side fills its batches is most of what moto's
/// throughput depends on.
#[derive(Debug, Default)]
struct Calls {
    receives: AtomicU64,
    received: AtomicU64,
    deletes: AtomicU64,
    deleted: AtomicU64,
    /// qt only: on connect, and for the engine's backlog gauge (every 5s).
    attributes: AtomicU64,
}

impl Calls {
    fn received(&self, messages: u64) {
        self.receives.fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(messages, Ordering::Relaxed);
    }

    fn deleted(&self, entries: u64) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
        self.deleted.fetch_add(entries, Ordering::Relaxed);
    }

    fn json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let per = |n: u64, calls: u64| if calls == 0 { 0.0 } else { n as f64 / calls as f64 };
        serde_json::json!({
            "receive_calls": get(&self.receives),
            "messages_per_receive": per(get(&self.received), get(&self.receives)),
            "delete_batch_calls": get(&self.deletes),
            "entries_per_delete_batch": per(get(&self.deleted), get(&self.deletes)),
            "get_queue_attributes_calls": get(&self.attributes),
        })
    }
}

/// Counts the adapter's calls from its `ReceiveMessage returned`, `DeleteMessageBatch
/// returned` and `GetQueueAttributes returned` trace events.
struct CountAdapterCalls(Arc<parking_lot::Mutex<Arc<Calls>>>);

#[derive(Default)]
struct EventFields {
    message: String,
    got: u64,
    entries: u64,
}

impl Visit for EventFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "got" => self.got = value,
            "entries" => self.entries = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for CountAdapterCalls {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let calls = Arc::clone(&self.0.lock());
        match fields.message.as_str() {
            "ReceiveMessage returned" => calls.received(fields.got),
            "DeleteMessageBatch returned" => calls.deleted(fields.entries),
            "GetQueueAttributes returned" => {
                calls.attributes.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

#[derive(Clone, Debug)]
struct Settings {
    endpoint: String,
    messages: usize,
    rounds: usize,
    pollers: usize,
    max_messages: i32,
    concurrency: usize,
    batch_size: usize,
    max_in_flight: usize,
}

impl Settings {
    fn from_env() -> Self {
        let endpoint = std::env::var("QT_BENCH_SQS_ENDPOINT")
            .or_else(|_| std::env::var("QT_TEST_SQS_ENDPOINT"))
            .unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
        Self {
            endpoint,
            messages: env_or("QT_BENCH_MESSAGES", 400),
            rounds: env_or("QT_BENCH_ROUNDS", 5),
            pollers: env_or("QT_BENCH_POLLERS", 2),
            max_messages: env_or("QT_BENCH_MAX_MESSAGES", 10),
            concurrency: env_or("QT_BENCH_CONCURRENCY", 8),
            batch_size: env_or("QT_BENCH_BATCH", 64),
            max_in_flight: env_or("QT_BENCH_MAX_IN_FLIGHT", 128),
        }
    }

    /// The source section both sides are described by.
    fn source(&self, queue_url: &str) -> SqsSourceConfig {
        SqsSourceConfig {
            queue_url: queue_url.to_owned(),
            region: REGION.to_owned(),
            endpoint_url: Some(self.endpoint.clone()),
            pollers: self.pollers,
            wait_time: WAIT_TIME,
            max_messages: self.max_messages,
            visibility_timeout: Some(Duration::from_secs(60)),
            ..SqsSourceConfig::default()
        }
    }
}

/// Static dummy credentials: the emulator checks none.
fn credentials() -> Credentials {
    Credentials::new("AKIAQTBENCH000000001", "qt-bench-not-a-secret", None, None, "qt-bench")
}

async fn client(s: &Settings) -> Client {
    sdk_client(
        &s.source("qt-bench-admin"),
        false,
        Some(SharedCredentialsProvider::new(credentials())),
    )
    .await
    .expect("an SDK client for the benchmark endpoint")
}

fn text(value: String) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// Message `i`: a ~200-byte JSON order with a dedup key and a tenant attribute.
fn entry(i: usize, id_in_batch: usize) -> SendMessageBatchRequestEntry {
    let body = String::from_utf8(order_body(i)).expect("the body is ASCII JSON");
    SendMessageBatchRequestEntry::builder()
        .id(id_in_batch.to_string())
        .message_body(body)
        .message_attributes("x-dedup-key", text(dedup_key(i)))
        .message_attributes("x-tenant-id", text(tenant_of(i)))
        .build()
        .expect("id and body are set")
}

/// Creates a fresh queue holding `n` messages.
async fn prefill(client: &Client, side: Side, n: usize) -> String {
    let name = format!("qt-bench-{}-{}", side.name(), uuid::Uuid::new_v4().simple());
    let url = client
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a queue on the SQS endpoint ({}); start the emulator with `cargo xtask services up` \
                 or set QT_BENCH_SQS_ENDPOINT",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })
        .queue_url
        .expect("CreateQueue returns the URL");
    let batches: Vec<Vec<usize>> = (0..n).collect::<Vec<_>>().chunks(10).map(<[usize]>::to_vec).collect();
    futures::stream::iter(batches)
        .map(|batch| {
            let request = client
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(batch.iter().enumerate().map(|(j, i)| entry(*i, j)).collect()));
            async move {
                let out = request.send().await.expect("SendMessageBatch");
                assert!(
                    out.failed().is_empty(),
                    "SendMessageBatch refused entries: {:?}",
                    out.failed()
                );
            }
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let (visible, in_flight) = counts(client, &url).await;
    assert_eq!((visible, in_flight), (n as u64, 0), "{url} after pre-filling {n}");
    url
}

/// (visible, in flight) messages of `url`.
async fn counts(client: &Client, url: &str) -> (u64, u64) {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    let attributes = out.attributes().cloned().unwrap_or_default();
    let get = |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// The plain SDK consumer: `pollers` tasks, each receiving up to `max_messages` (with the
/// same attributes the adapter asks for) and deleting them with one DeleteMessageBatch
/// before receiving again. Timed from the first receive until every message is deleted.
/// Messages are counted by id: moto can hand one message to two concurrent receives.
async fn drain_with_sdk(s: &Settings, client: &Client, url: &str, calls: &Arc<Calls>) -> Duration {
    let deleted = Arc::new(parking_lot::Mutex::new(HashSet::<String>::with_capacity(s.messages)));
    let started = Instant::now();
    let wait = i32::try_from(WAIT_TIME.as_secs()).expect("small");
    let pollers: Vec<_> = (0..s.pollers)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            let deleted = Arc::clone(&deleted);
            let calls = Arc::clone(calls);
            let (n, max) = (s.messages, s.max_messages);
            tokio::spawn(async move {
                while deleted.lock().len() < n {
                    let out = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(max)
                        .wait_time_seconds(wait)
                        .visibility_timeout(60)
                        .message_system_attribute_names(MessageSystemAttributeName::All)
                        .message_attribute_names("All")
                        .send()
                        .await
                        .expect("ReceiveMessage");
                    let messages = out.messages.unwrap_or_default();
                    calls.received(messages.len() as u64);
                    if messages.is_empty() {
                        continue;
                    }
                    let entries = messages
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            DeleteMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .receipt_handle(m.receipt_handle().expect("receipt handle"))
                                .build()
                                .expect("id and receipt handle are set")
                        })
                        .collect();
                    let out = client
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .expect("DeleteMessageBatch");
                    calls.deleted(messages.len() as u64);
                    assert!(
                        out.failed().is_empty(),
                        "DeleteMessageBatch failed entries: {:?}",
                        out.failed()
                    );
                    let mut deleted = deleted.lock();
                    for m in &messages {
                        deleted.insert(m.message_id().expect("message id").to_owned());
                    }
                }
            })
        })
        .collect();
    let deadline = started + DRAIN_LIMIT;
    loop {
        let done = deleted.lock().len();
        if done >= s.messages {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the SDK loop deleted {done} of {} within {DRAIN_LIMIT:?}",
            s.messages
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    // The pollers may sit in a long poll on the now empty queue; the time is taken.
    for poller in pollers {
        poller.abort();
    }
    elapsed
}

/// qt: the engine with the SQS adapter, a no-op agent, in-memory idempotency store and
/// ledger. Timed from start (which connects: GetQueueAttributes) to the last settled
/// message (the engine counts a message processed after its settle returned, i.e. after
/// its DeleteMessageBatch entry succeeded).
async fn drain_with_qt(s: &Settings, url: &str) -> (Duration, serde_json::Value) {
    let source = s.source(url);
    let mut config = Config::with_source(SourceConfig::Sqs(source.clone()));
    config.name = "bench".into();
    config.processing.concurrency = s.concurrency;
    config.processing.batch_size = s.batch_size;
    config.processing.max_in_flight = Some(s.max_in_flight);
    // Nothing fails in this run; these keep the trigger from needing a DLQ.
    config.processing.on_failure = FailureAction::Nack;
    config.processing.on_parse_failure = UnprocessableAction::Nack;
    config.processing.on_unrouted = UnprocessableAction::Nack;
    config.ledger = LedgerConfig::Memory;
    let settings = AdapterSettings::new("bench", s.concurrency, s.max_in_flight);
    let adapter = SqsAdapter::with_credentials(&source, settings, credentials())
        .await
        .expect("adapter");
    let trigger = QueueTrigger::builder(config)
        .adapter(Arc::new(adapter))
        .agent("noop", Arc::new(NoOpAgent))
        .build()
        .expect("bench configuration is valid");
    let elapsed = run_until_succeeded(&trigger, s.messages, DRAIN_LIMIT).await;
    let m = trigger.metrics();
    // moto can hand one message to two concurrent receives: the second copy is a duplicate
    // (or, while the first runs, requeued, and that visibility change may then fail).
    let extra = serde_json::json!({
        "duplicates": m.processed(LedgerStatus::Duplicate),
        "settle_errors": m.settle_errors,
    });
    (elapsed, extra)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Sdk,
    Qt,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Sdk => "aws-sdk-sqs",
            Side::Qt => "qt",
        }
    }
}

async fn measure(s: &Settings, client: &Client, side: Side, round: usize, adapter_calls: &CallsSlot) -> f64 {
    let url = prefill(client, side, s.messages).await;
    let calls = Arc::new(Calls::default());
    let (elapsed, extra) = match side {
        Side::Sdk => (drain_with_sdk(s, client, &url, &calls).await, serde_json::json!({})),
        Side::Qt => {
            *adapter_calls.lock() = Arc::clone(&calls);
            let out = drain_with_qt(s, &url).await;
            *adapter_calls.lock() = Arc::new(Calls::default());
            out
        }
    };
    // Every message was deleted, and SQS confirmed each delete. moto can still hold some of
    // them: its deletes rebuild the queue's message list without a lock, so one that overlaps
    // other calls can put back messages another delete removed. Those are reported, not
    // counted against either side.
    let (visible, in_flight) = counts(client, &url).await;
    let _ = client.delete_queue().queue_url(&url).send().await;
    let rate = s.messages as f64 / elapsed.as_secs_f64();
    let mut row = serde_json::json!({
        "side": side.name(),
        "round": round,
        "messages": s.messages,
        "seconds": elapsed.as_secs_f64(),
        "messages_per_second": rate,
        "left_after_confirmed_deletes": visible + in_flight,
    });
    for (k, v) in calls
        .json()
        .as_object()
        .into_iter()
        .flatten()
        .chain(extra.as_object().into_iter().flatten())
    {
        row[k] = v.clone();
    }
    println!("{row}");
    rate
}

type CallsSlot = Arc<parking_lot::Mutex<Arc<Calls>>>;

fn main() {
    let s = Settings::from_env();
    let adapter_calls: CallsSlot = Arc::default();
    let counting = CountAdapterCalls(Arc::clone(&adapter_calls))
        .with_filter(filter::Targets::new().with_target("qt_adapter_sqs", tracing::Level::TRACE));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(counting))
        .expect("the only subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = client(&s).await;
        let mut sdk = Vec::new();
        let mut qt = Vec::new();
        for round in 0..s.rounds {
            // Taking turns, and swapping who goes first, spreads drift in the emulator's
            // state (and in whatever else the machine runs) over both sides.
            let order = if round % 2 == 0 {
                [Side::Sdk, Side::Qt]
            } else {
                [Side::Qt, Side::Sdk]
            };
            for side in order {
                let rate = measure(&s, &client, side, round, &adapter_calls).await;
                match side {
                    Side::Sdk => sdk.push(rate),
                    Side::Qt => qt.push(rate),
                }
            }
        }
        let sdk_median = median(sdk);
        let qt_median = median(qt);
        println!(
            "{}",
            serde_json::json!({
                "summary": true,
                "endpoint": qt_core::secret::mask_url_credentials(&s.endpoint),
                "messages": s.messages,
                "rounds": s.rounds,
                "pollers": s.pollers,
                "max_messages": s.max_messages,
                "wait_time_seconds": WAIT_TIME.as_secs(),
                "concurrency": s.concurrency,
                "batch_size": s.batch_size,
                "max_in_flight": s.max_in_flight,
                "sdk_median_messages_per_second": sdk_median,
                "qt_median_messages_per_second": qt_median,
                "ratio": qt_median / sdk_median,
            })
        );
    });
}
