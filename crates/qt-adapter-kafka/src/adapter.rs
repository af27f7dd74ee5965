//! [`KafkaAdapter`]: consumer-group consumption with at-least-once offset commits.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use qt_core::config::KafkaSourceConfig;
use qt_core::{AckHandle, AdapterError, AdapterSettings, Capabilities, Delivery, Health, OrderingUnit, QueueAdapter};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::connection::{self, SOURCE_PATH};
use crate::consumer::{ConsumerCtx, Control, PollLoop};
use crate::context::QtClientContext;
use crate::health::BrokerHealth;
use crate::message;
use crate::publisher::KafkaPublisher;
use crate::settle::{KafkaSettle, SettleContext};
use crate::state::Shared;
use qt_core::redact::Redactor;

const NOTES: &[&str] = &[
    "ack commits the offset once every earlier message of the partition is finished too; commits are batched every commit_interval",
    "nack drops the message: Kafka has no reject, so qt marks it finished and commits past it",
    "requeue re-produces the message (key, value, headers) to retry_topic or its own topic with x-qt-attempt, then marks the original finished; a delay travels as x-qt-not-before and qt holds the message until then (up to 4x max_in_flight such messages, at least 1000; they hold back that partition's commits)",
    "dead-lettering produces to dlq_topic and marks the original finished only after the broker confirms; without dlq_topic it fails and the message stays uncommitted",
    "a failed settle or a dropped handle rewinds the partition to its first unfinished offset after redelivery_delay, so later messages of that partition are delivered again too",
    "a crash or lost partition redelivers everything after the last commit (at-least-once); idempotency (dedup) skips the repeats",
    "close stops intake, waits up to revoke_drain_timeout for requeues and dead letters under way, then commits; a requeue or dead letter started after close began fails and its message is delivered again",
    "ordering: messages are delivered in partition order; requeued messages come back later, out of order",
];

/// Consumes topics in a consumer group. See the crate docs for the guarantees.
pub struct KafkaAdapter {
    queue: String,
    group: String,
    brokers: String,
    shared: Arc<Shared>,
    control: Arc<Control>,
    client: QtClientContext,
    settle: Arc<SettleContext>,
    subscribed: Vec<String>,
    dlq_topic: Option<String>,
    connect_timeout: Duration,
    close_timeout: Duration,
    delivery_timeout: Duration,
    settings: AdapterSettings,
    commit_interval: Duration,
    redelivery_delay: Duration,
    consumer: Mutex<Option<BaseConsumer<ConsumerCtx>>>,
    poller: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A snapshot of the consumer, for `/status` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaStatus {
    /// Assigned partitions as (topic, partition), sorted.
    pub assignment: Vec<(String, i32)>,
    /// Assignment and revocation callbacks seen so far.
    pub rebalances: u64,
    /// Messages taken from the broker and not yet received by the engine.
    pub buffered: usize,
    /// Requeued messages waiting for their `x-qt-not-before` time.
    pub held: usize,
    /// Messages the engine holds unsettled.
    pub in_flight: usize,
    /// Partitions being revoked right now, waiting for their in-flight messages.
    pub revoking: Vec<(String, i32)>,
}

impl KafkaAdapter {
    /// Validates the section (and `require_tls`) and creates the consumer and producer.
    /// Nothing is contacted until [`QueueAdapter::connect`].
    pub fn new(cfg: &KafkaSourceConfig, settings: AdapterSettings) -> Result<Self, AdapterError> {
        connection::check(cfg, &settings)?;
        let redactor = crate::redact::for_config(cfg);
        let shared = Arc::new(Shared::new());
        let client = QtClientContext::new("consumer", redactor.clone());
        let ctx = ConsumerCtx {
            client: client.clone(),
            shared: shared.clone(),
            drain_timeout: cfg.revoke_drain_timeout,
        };
        let consumer =
            BaseConsumer::from_config_and_context(&connection::consumer(cfg, &settings), ctx).map_err(|e| {
                AdapterError::Config {
                    field: format!("{SOURCE_PATH}.options"),
                    reason: format!("librdkafka refused the consumer settings: {}", redactor.redact(&e)),
                }
            })?;
        let publisher = KafkaPublisher::build(cfg, &settings, redactor)?;
        let settle = Arc::new(SettleContext {
            shared: shared.clone(),
            publisher,
            dlq_topic: cfg.dlq_topic.clone(),
            retry_topic: cfg.retry_topic.clone(),
            redelivery_delay: cfg.redelivery_delay,
        });
        Ok(Self {
            queue: cfg.topics.join(","),
            group: cfg.consumer_group.clone(),
            brokers: cfg.brokers.join(","),
            shared,
            control: Arc::new(Control::new()),
            client,
            settle,
            subscribed: cfg.subscribed_topics(),
            dlq_topic: cfg.dlq_topic.clone(),
            connect_timeout: cfg.connect_timeout,
            close_timeout: cfg.revoke_drain_timeout + Duration::from_secs(30),
            delivery_timeout: cfg.delivery_timeout,
            settings,
            commit_interval: cfg.commit_interval,
            redelivery_delay: cfg.redelivery_delay,
            consumer: Mutex::new(Some(consumer)),
            poller: Mutex::new(None),
        })
    }

    /// The producer this adapter writes dead letters and requeues with; usable for `qt send`.
    pub fn publisher(&self) -> &KafkaPublisher {
        &self.settle.publisher
    }

    /// The consumer group.
    pub fn consumer_group(&self) -> &str {
        &self.group
    }

    /// Partitions, buffers and rebalances right now.
    pub fn status(&self) -> KafkaStatus {
        let st = self.shared.lock();
        let assignment = st.assignment();
        KafkaStatus {
            in_flight: st.in_flight(&assignment),
            assignment: assignment
                .into_iter()
                .map(|tp| (tp.topic.to_string(), tp.partition))
                .collect(),
            rebalances: st.rebalances,
            buffered: st.buffer.len(),
            held: st.held.len(),
            revoking: st
                .revoking()
                .into_iter()
                .map(|tp| (tp.topic.to_string(), tp.partition))
                .collect(),
        }
    }

    fn redact(&self, text: impl std::fmt::Display) -> String {
        self.client.redactor().redact(text)
    }

    async fn wait_pause_applied(&self, paused: bool) {
        if self.poller.lock().is_none() {
            return;
        }
        let mut rx = self.control.applied_pause.subscribe();
        let bound = self.close_timeout;
        if tokio::time::timeout(bound, rx.wait_for(|v| *v == paused))
            .await
            .is_err()
        {
            tracing::warn!(
                paused,
                "the consumer thread did not confirm the pause state in time; it will apply it"
            );
        }
    }
}

#[async_trait]
impl QueueAdapter for KafkaAdapter {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn queue(&self) -> &str {
        &self.queue
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_reject: false,
            delayed_requeue: true,
            dead_letter: self.dlq_topic.is_some(),
            lease_extension: false,
            pause: true,
            ordering: OrderingUnit::Partition,
            notes: NOTES.to_vec(),
        }
    }

    async fn connect(&self) -> Result<(), AdapterError> {
        let Some(consumer) = self.consumer.lock().take() else {
            if self.poller.lock().is_some() {
                return Ok(());
            }
            return Err(AdapterError::Other {
                what: "connecting the Kafka consumer".to_owned(),
                reason: "the adapter is connecting already or was closed".to_owned(),
            });
        };
        let checked = {
            let check = CheckTopics {
                subscribed: self.subscribed.clone(),
                dlq_topic: self.dlq_topic.clone(),
                brokers: self.brokers.clone(),
                timeout: self.connect_timeout,
                redactor: self.client.redactor().clone(),
                health: self.client.health().clone(),
            };
            tokio::task::spawn_blocking(move || {
                let r = check.run(&consumer);
                (consumer, r)
            })
            .await
        };
        let (consumer, result) = checked.map_err(|e| AdapterError::Other {
            what: "checking the Kafka topics".to_owned(),
            reason: e.to_string(),
        })?;
        if let Err(e) = result {
            *self.consumer.lock() = Some(consumer);
            return Err(e);
        }
        let topics: Vec<&str> = self.subscribed.iter().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&topics) {
            let err = AdapterError::Connect {
                endpoint: self.brokers.clone(),
                reason: format!("subscribing to {} failed: {}", self.queue, self.redact(&e)),
            };
            *self.consumer.lock() = Some(consumer);
            return Err(err);
        }
        self.client.health().started();
        let poll = PollLoop::new(
            consumer,
            self.shared.clone(),
            self.control.clone(),
            self.settings.max_in_flight.max(1),
            self.commit_interval,
            self.redelivery_delay,
        );
        let handle = std::thread::Builder::new()
            .name("qt-kafka-consumer".to_owned())
            .spawn(move || poll.run())
            .map_err(|e| AdapterError::Other {
                what: "starting the Kafka consumer thread".to_owned(),
                reason: e.to_string(),
            })?;
        *self.poller.lock() = Some(handle);
        tracing::info!(topics = %self.subscribed.join(","), group = %self.group, "Kafka consumer subscribed");
        Ok(())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, AdapterError> {
        let max = max.max(1);
        let settle = Arc::new(SettleContext::clone(&self.settle));
        loop {
            // Register interest before looking, so a wake-up between the look and the wait
            // is not missed.
            let notified = self.shared.ready.notified();
            {
                let mut st = self.shared.lock();
                if let Some(reason) = &st.failed {
                    return Err(AdapterError::Receive {
                        queue: self.queue.clone(),
                        reason: reason.clone(),
                    });
                }
                if !st.buffer.is_empty() {
                    let taken = st.take(max);
                    drop(st);
                    self.shared.notify_room();
                    // Like the settle context, the adapter name is this batch's own copy.
                    let adapter: Arc<str> = Arc::from("kafka");
                    return Ok(taken
                        .into_iter()
                        .map(|p| {
                            let message = message::raw_message(&p, &adapter);
                            Delivery::new(message, AckHandle::new(KafkaSettle::new(settle.clone(), p.origin)))
                        })
                        .collect());
                }
                if st.closing {
                    return Ok(Vec::new());
                }
            }
            if self.poller.lock().is_none() && self.consumer.lock().is_some() {
                return Err(AdapterError::Other {
                    what: format!("receiving from {}", self.queue),
                    reason: "connect() was not called".to_owned(),
                });
            }
            notified.await;
        }
    }

    async fn pause(&self) -> Result<(), AdapterError> {
        self.control.user_paused.store(true, Ordering::SeqCst);
        self.wait_pause_applied(true).await;
        Ok(())
    }

    async fn resume(&self) -> Result<(), AdapterError> {
        self.control.user_paused.store(false, Ordering::SeqCst);
        self.wait_pause_applied(false).await;
        Ok(())
    }

    async fn health(&self) -> Health {
        if let Some(reason) = &self.shared.lock().failed {
            return Health::Unhealthy(reason.clone());
        }
        self.client.health().health()
    }

    /// Consumer lag of the assigned partitions: high watermark minus committed offset,
    /// from the latest librdkafka statistics (refreshed every `statistics.interval.ms`).
    async fn backlog(&self) -> Result<Option<u64>, AdapterError> {
        let Some(stats) = self.client.latest_stats() else {
            return Ok(None);
        };
        let positions = self.shared.lock().positions();
        let mut total: u64 = 0;
        for (tp, position) in positions {
            let Some(p) = stats
                .topics
                .get(&*tp.topic)
                .and_then(|t| t.partitions.get(&tp.partition))
            else {
                continue;
            };
            if p.hi_offset < 0 {
                continue;
            }
            // Before the group's first commit of this partition, the consumer's own start
            // (or fetch position) stands in for the committed offset.
            let committed = if p.committed_offset >= 0 {
                p.committed_offset
            } else if let Some(pos) = position {
                pos
            } else if p.next_offset >= 0 {
                p.next_offset
            } else {
                continue;
            };
            total += u64::try_from(p.hi_offset - committed).unwrap_or(0);
        }
        Ok(Some(total))
    }

    async fn close(&self) -> Result<(), AdapterError> {
        {
            let mut st = self.shared.lock();
            st.closing = true;
            st.clear_unreceived();
        }
        self.shared.ready.notify_waiters();
        self.shared.ready.notify_one();
        self.shared.notify_settled();
        self.shared.notify_room();
        let poller = self.poller.lock().take();
        let unconnected = self.consumer.lock().take();
        let joined = tokio::task::spawn_blocking(move || {
            drop(unconnected);
            poller.map(std::thread::JoinHandle::join)
        });
        match tokio::time::timeout(self.close_timeout, joined).await {
            Ok(Ok(Some(Err(_)))) => tracing::error!("the Kafka consumer thread panicked"),
            Ok(Err(e)) => tracing::error!(error = %e, "closing the Kafka consumer failed"),
            Err(_) => tracing::warn!(timeout = ?self.close_timeout, "the Kafka consumer did not close in time"),
            Ok(Ok(_)) => {}
        }
        self.client.health().closed();
        self.settle.publisher.flush(self.delivery_timeout).await
    }
}

/// The topic check, run on a blocking thread with the consumer moved in.
struct CheckTopics {
    subscribed: Vec<String>,
    dlq_topic: Option<String>,
    brokers: String,
    timeout: Duration,
    redactor: Redactor,
    health: Arc<BrokerHealth>,
}

impl CheckTopics {
    /// Fails fast on an unreachable cluster or a missing topic instead of waiting forever
    /// for an assignment.
    fn run(&self, consumer: &BaseConsumer<ConsumerCtx>) -> Result<(), AdapterError> {
        let mut wanted = self.subscribed.clone();
        wanted.extend(self.dlq_topic.iter().cloned());
        for topic in &wanted {
            let metadata = consumer.fetch_metadata(Some(topic), self.timeout).map_err(|e| {
                // Error events wait in the consumer queue until polled; nothing is subscribed
                // yet, so polling here only serves them (the cause, e.g. failed SASL).
                let until = std::time::Instant::now() + Duration::from_millis(200);
                while std::time::Instant::now() < until {
                    let _ = consumer.poll(Duration::from_millis(20));
                }
                AdapterError::Connect {
                    endpoint: self.brokers.clone(),
                    reason: format!(
                        "no metadata for topic {topic} within {:?}: {}{}",
                        self.timeout,
                        self.redactor.redact(&e),
                        self.health
                            .last_error()
                            .map(|last| format!("; last client error: {last}"))
                            .unwrap_or_default()
                    ),
                }
            })?;
            let described = metadata.topics().iter().find(|t| t.name() == topic);
            let missing = match described {
                None => Some("the cluster does not know it".to_owned()),
                Some(t) => match t.error() {
                    Some(code) => Some(rdkafka::error::RDKafkaErrorCode::from(code).to_string()),
                    None if t.partitions().is_empty() => Some("it has no partitions".to_owned()),
                    None => None,
                },
            };
            if let Some(reason) = missing {
                return Err(AdapterError::MissingResource {
                    queue: topic.clone(),
                    reason: format!(
                        "{reason}. Create the topic, or grant this client Describe and Read on it (Write for dlq_topic and retry_topic)"
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Drop for KafkaAdapter {
    /// Dropped without `close`: the consumer thread still commits the finished prefix and
    /// leaves the group, on its own time.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.ready.notify_waiters();
        self.shared.notify_settled();
    }
}

impl fmt::Debug for KafkaAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaAdapter")
            .field("topics", &self.subscribed)
            .field("group", &self.group)
            .field("brokers", &self.brokers)
            .field("dlq_topic", &self.dlq_topic)
            .finish_non_exhaustive()
    }
}
