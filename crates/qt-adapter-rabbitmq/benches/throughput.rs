//! Consume throughput on RabbitMQ: qt (the engine with this adapter, a no-op agent, the
//! in-memory idempotency store and ledger) next to a plain lapin consumer with the same
//! prefetch that acks every message as it arrives, in two styles: awaiting each ack before
//! the next delivery (lapin's own example) and with acks pipelined. Each round drains one
//! queue per consumer, back to back; the ratio is the median over rounds of qt against the
//! faster lapin consumer of the same round. Both drain the same pre-loaded queue
//! setup (a durable classic queue holding the same persistent ~200-byte JSON messages) on
//! the same broker in the same run, taking turns.
//!
//! Run with `cargo xtask bench rabbitmq`, which records the figures in docs/benchmarks.md.
//! Prints one JSON line per measured drain and a final summary line.
//!
//! Environment: `QT_BENCH_RABBITMQ_URL` (else `QT_TEST_RABBITMQ_URL`, else the local
//! broker), `QT_BENCH_MESSAGES` (100000), `QT_BENCH_PREFETCH` (1000), `QT_BENCH_ROUNDS` (3),
//! `QT_BENCH_CONCURRENCY` (8), `QT_BENCH_BATCH` (256), `QT_BENCH_ONLY` (one consumer only,
//! for profiling: `qt`, `lapin` or `lapin-pipelined`).

// Printing results is what a benchmark binary is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use qt_adapter_rabbitmq::RabbitMqAdapter;
use qt_bench_support::{
    NoOpAgent, dedup_key, env_or, median, order_body, process_cpu_time, run_until_succeeded, tenant_of,
};
use qt_core::AdapterSettings;
use qt_core::config::{Config, FailureAction, LedgerConfig, RabbitMqSourceConfig, SourceConfig, UnprocessableAction};
use qt_engine::QueueTrigger;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Publishes awaiting their confirm at once while pre-loading.
const PUBLISH_WINDOW: usize = 2_000;
/// Longest any single drain may take before the benchmark gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
struct Settings {
    url: String,
    messages: usize,
    prefetch: u16,
    rounds: usize,
    concurrency: usize,
    batch_size: usize,
    /// Measure one consumer only (`qt`, `lapin`, `lapin-pipelined`), e.g. under a profiler.
    only: Option<String>,
}

impl Settings {
    fn from_env() -> Self {
        let url = std::env::var("QT_BENCH_RABBITMQ_URL")
            .or_else(|_| std::env::var("QT_TEST_RABBITMQ_URL"))
            .unwrap_or_else(|_| DEFAULT_URL.to_owned());
        Self {
            url,
            messages: env_or("QT_BENCH_MESSAGES", 100_000),
            prefetch: env_or("QT_BENCH_PREFETCH", 1_000),
            rounds: env_or("QT_BENCH_ROUNDS", 3),
            concurrency: env_or("QT_BENCH_CONCURRENCY", 8),
            batch_size: env_or("QT_BENCH_BATCH", 256),
            only: std::env::var("QT_BENCH_ONLY").ok().filter(|v| !v.is_empty()),
        }
    }
}

async fn connect(url: &str) -> Connection {
    match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "RabbitMQ is not reachable at {} ({e}); start it with `cargo xtask services up` or set QT_BENCH_RABBITMQ_URL",
            qt_core::secret::mask_url_credentials(url)
        ),
        Err(_) => panic!(
            "RabbitMQ at {} did not answer within 10s",
            qt_core::secret::mask_url_credentials(url)
        ),
    }
}

/// Message `i`: a ~200-byte JSON order with a message id, a dedup key and a tenant header,
/// persistent, as a producer feeding qt would send it.
fn message(i: usize) -> (BasicProperties, Vec<u8>) {
    let body = order_body(i);
    let mut headers = FieldTable::default();
    headers.insert(
        "x-dedup-key".into(),
        AMQPValue::LongString(LongString::from(dedup_key(i))),
    );
    headers.insert(
        "x-tenant-id".into(),
        AMQPValue::LongString(LongString::from(tenant_of(i))),
    );
    let properties = BasicProperties::default()
        .with_message_id(format!("m{i}").into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    (properties, body)
}

/// Declares `queue` afresh and fills it with `n` messages, confirmed by the broker.
async fn preload(connection: &Connection, queue: &str, n: usize) {
    let channel = connection.create_channel().await.expect("channel");
    let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), FieldTable::default())
        .await
        .expect("declare the benchmark queue");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let mut pending = std::collections::VecDeque::with_capacity(PUBLISH_WINDOW);
    for i in 0..n {
        if pending.len() == PUBLISH_WINDOW {
            let confirm: lapin::PublisherConfirm = pending.pop_front().unwrap();
            assert!(confirm.await.expect("confirm").is_ack(), "the broker refused a message");
        }
        let (properties, body) = message(i);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .expect("publish");
        pending.push_back(confirm);
    }
    for confirm in pending {
        assert!(confirm.await.expect("confirm").is_ack(), "the broker refused a message");
    }
    let ready = ready(connection, queue).await;
    assert_eq!(
        ready as usize, n,
        "{queue} holds {ready} messages after pre-loading {n}"
    );
    let _ = channel.close(200, "OK".into()).await;
}

async fn ready(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default().passive(),
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    let _ = channel.close(200, "OK".into()).await;
    q.message_count()
}

/// How the plain lapin consumer acks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AckStyle {
    /// `delivery.ack(..).await` before taking the next delivery: lapin's own example loop.
    Awaited,
    /// Every ack started as its delivery arrives and awaited alongside the next deliveries.
    Pipelined,
}

/// A plain lapin consumer: own connection, basic.qos(prefetch), one basic.ack per
/// delivery. Timed from connecting to the last ack.
async fn drain_with_lapin(s: &Settings, queue: &str, style: AckStyle) -> Duration {
    let started = Instant::now();
    let connection = connect(&s.url).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(s.prefetch, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "qt-bench-lapin".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let mut acked = 0;
    let mut acks = FuturesUnordered::new();
    while acked < s.messages {
        tokio::select! {
            Some(done) = acks.next(), if !acks.is_empty() => {
                let done: lapin::Result<bool> = done;
                assert!(done.expect("ack"), "ack refused");
                acked += 1;
            }
            delivery = consumer.next() => {
                let delivery = delivery.expect("the consumer stream ended early").expect("delivery");
                match style {
                    AckStyle::Awaited => {
                        assert!(delivery.acker.ack(BasicAckOptions::default()).await.expect("ack"), "ack refused");
                        acked += 1;
                    }
                    AckStyle::Pipelined => {
                        let acker = delivery.acker;
                        acks.push(async move { acker.ack(BasicAckOptions::default()).await });
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = connection.close(200, "OK".into()).await;
    elapsed
}

/// qt: the engine with the RabbitMQ adapter, a no-op agent, in-memory idempotency store and
/// ledger; prefetch = max in flight = `s.prefetch`. Timed from connecting to the last
/// settled message (the engine counts a message processed after its settle returned).
async fn drain_with_qt(s: &Settings, queue: &str) -> Duration {
    let mut source = RabbitMqSourceConfig::new(s.url.clone(), queue);
    source.prefetch = Some(s.prefetch);
    let mut config = Config::with_source(SourceConfig::Rabbitmq(source.clone()));
    config.name = "bench".into();
    config.processing.concurrency = s.concurrency;
    config.processing.batch_size = s.batch_size;
    config.processing.max_in_flight = Some(usize::from(s.prefetch));
    // Nothing fails in this run; these keep the trigger from needing a DLQ.
    config.processing.on_failure = FailureAction::Nack;
    config.processing.on_parse_failure = UnprocessableAction::Nack;
    config.processing.on_unrouted = UnprocessableAction::Nack;
    config.ledger = LedgerConfig::Memory;
    let settings = AdapterSettings::new("bench", s.concurrency, usize::from(s.prefetch));
    let adapter = RabbitMqAdapter::new(&source, settings).expect("adapter");
    let trigger = QueueTrigger::builder(config)
        .adapter(Arc::new(adapter))
        .agent("noop", Arc::new(NoOpAgent))
        .build()
        .expect("bench configuration is valid");
    let elapsed = run_until_succeeded(&trigger, s.messages, DRAIN_LIMIT).await;
    let m = trigger.metrics();
    assert_eq!(m.settle_errors, 0, "no settle failed");
    elapsed
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Lapin(AckStyle),
    Qt,
}

impl Side {
    const ALL: [Side; 3] = [
        Side::Lapin(AckStyle::Awaited),
        Side::Lapin(AckStyle::Pipelined),
        Side::Qt,
    ];

    fn name(self) -> &'static str {
        match self {
            Side::Lapin(AckStyle::Awaited) => "lapin",
            Side::Lapin(AckStyle::Pipelined) => "lapin-pipelined",
            Side::Qt => "qt",
        }
    }
}

/// One drain of a freshly filled queue; prints its JSON line and returns messages/s.
async fn measure(s: &Settings, side: Side, round: usize, setup: &Connection) -> f64 {
    let queue = format!("qt-bench-{}-{}", side.name(), uuid::Uuid::new_v4().simple());
    preload(setup, &queue, s.messages).await;
    let cpu_before = process_cpu_time();
    let elapsed = match side {
        Side::Lapin(style) => drain_with_lapin(s, &queue, style).await,
        Side::Qt => drain_with_qt(s, &queue).await,
    };
    let cpu = cpu_before.zip(process_cpu_time()).map(|(a, b)| b.saturating_sub(a));
    // Every message was acked: nothing came back when the consumer's connection closed.
    let left = ready(setup, &queue).await;
    assert_eq!(left, 0, "{} left {left} messages in {queue}", side.name());
    let channel = setup.create_channel().await.expect("channel");
    for q in [queue.clone(), format!("{queue}.qt-retry")] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let rate = s.messages as f64 / elapsed.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "side": side.name(),
            "round": round,
            "messages": s.messages,
            "prefetch": s.prefetch,
            "seconds": elapsed.as_secs_f64(),
            "messages_per_second": rate,
            "cpu_us_per_message": cpu.map(|c| c.as_secs_f64() * 1e6 / s.messages as f64),
        })
    );
    rate
}

fn main() {
    let s = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let setup = connect(&s.url).await;
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Side::ALL.len()];
        for round in 0..s.rounds {
            // Taking turns, and rotating who goes first, spreads drift in the broker's state
            // (and in whatever else the machine runs) over every side.
            for k in 0..Side::ALL.len() {
                let i = (k + round) % Side::ALL.len();
                if s.only.as_deref().is_some_and(|only| only != Side::ALL[i].name()) {
                    continue;
                }
                rates[i].push(measure(&s, Side::ALL[i], round, &setup).await);
            }
        }
        // Within a round the drains run back to back under the same machine load, so the
        // round's own ratio is steadier than a ratio of medians taken across rounds.
        let round_ratios: Vec<f64> = (0..s.rounds)
            .filter_map(|r| {
                let qt = *rates[2].get(r)?;
                let lapin = rates[0].get(r).copied().unwrap_or(0.0);
                let pipelined = rates[1].get(r).copied().unwrap_or(0.0);
                Some(qt / lapin.max(pipelined))
            })
            .collect();
        let medians: Vec<f64> = rates.into_iter().map(median).collect();
        let (lapin, pipelined, qt) = (medians[0], medians[1], medians[2]);
        println!(
            "{}",
            serde_json::json!({
                "summary": true,
                "messages": s.messages,
                "prefetch": s.prefetch,
                "rounds": s.rounds,
                "concurrency": s.concurrency,
                "batch_size": s.batch_size,
                "lapin_median_messages_per_second": lapin,
                "lapin_pipelined_median_messages_per_second": pipelined,
                "qt_median_messages_per_second": qt,
                "round_ratios": round_ratios,
                "ratio": median(round_ratios.clone()),
                "ratio_of_medians": qt / lapin.max(pipelined),
            })
        );
        let _ = setup.close(200, "OK".into()).await;
    });
}
