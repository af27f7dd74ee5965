//! Producing to Kafka and waiting for the broker's acknowledgement: `qt send`, dead letters
//! and requeues.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use qt_core::config::KafkaSourceConfig;
use qt_core::{AdapterError, AdapterSettings, Health, OutgoingMessage, Publisher};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::connection::{self, SOURCE_PATH};
use crate::context::QtClientContext;
use crate::message;
use qt_core::redact::Redactor;

/// How many messages [`KafkaPublisher::publish_many`] keeps awaiting acknowledgement at once.
const PUBLISH_WINDOW: usize = 4_096;

/// Where a produced record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Produced {
    pub partition: i32,
    pub offset: i64,
}

/// Produces messages and waits for the broker to acknowledge each (with the producer's
/// `acks=all` and idempotence defaults, a confirmed message is on every in-sync replica).
/// Cheap to clone.
#[derive(Clone)]
pub struct KafkaPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    producer: FutureProducer<QtClientContext>,
    context: QtClientContext,
    default_topic: Option<String>,
    delivery_timeout: Duration,
    brokers: String,
}

impl KafkaPublisher {
    /// A publisher for the brokers and security of a Kafka source section. Messages without
    /// a destination go to the first of its `topics`.
    pub fn new(cfg: &KafkaSourceConfig, settings: &AdapterSettings) -> Result<Self, AdapterError> {
        check_connection_settings(cfg, settings)?;
        Self::build(cfg, settings, crate::redact::for_config(cfg))
    }

    /// For the adapter, which has validated the whole section already.
    pub(crate) fn build(
        cfg: &KafkaSourceConfig,
        settings: &AdapterSettings,
        redactor: Redactor,
    ) -> Result<Self, AdapterError> {
        let context = QtClientContext::new("producer", redactor);
        let client_config = connection::producer(cfg, &format!("qt-{}-producer", settings.trigger_name));
        let producer = FutureProducer::from_config_and_context(&client_config, context.clone()).map_err(|e| {
            AdapterError::Config {
                field: format!("{SOURCE_PATH}.producer_options"),
                reason: format!(
                    "librdkafka refused the producer settings: {}",
                    context.redactor().redact(&e)
                ),
            }
        })?;
        context.health().started();
        Ok(Self {
            inner: Arc::new(Inner {
                producer,
                context,
                default_topic: cfg.topics.first().cloned(),
                delivery_timeout: cfg.delivery_timeout,
                brokers: cfg.brokers.join(","),
            }),
        })
    }

    /// Produces one record and waits for its acknowledgement. The error text is redacted.
    pub async fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<Produced, String> {
        self.produce_at(topic, key, payload, headers, None).await
    }

    /// [`produce`](Self::produce) with the record's timestamp (Unix milliseconds) given
    /// rather than taken by the producer: a record written again keeps its original time.
    pub async fn produce_at(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        timestamp_ms: Option<i64>,
    ) -> Result<Produced, String> {
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(ts) = timestamp_ms {
            rec = rec.timestamp(ts);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        match self
            .inner
            .producer
            .send(rec, Timeout::After(self.inner.delivery_timeout))
            .await
        {
            Ok(d) => {
                self.inner.context.health().reachable();
                Ok(Produced {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Err((e, _)) => Err(self.inner.context.redactor().redact(&e)),
        }
    }

    async fn publish_one(&self, message: &OutgoingMessage) -> Result<String, AdapterError> {
        let topic = message
            .destination
            .as_deref()
            .or(self.inner.default_topic.as_deref())
            .ok_or_else(|| AdapterError::Config {
                field: "destination".to_owned(),
                reason: "no destination topic given and the source has no topics".to_owned(),
            })?;
        let headers = message::outgoing_headers(std::iter::empty(), &[], message.headers.iter());
        let produced = self
            .produce(
                topic,
                message.key.as_deref().map(str::as_bytes),
                Some(&message.body),
                headers,
            )
            .await
            .map_err(|reason| AdapterError::Publish {
                destination: topic.to_owned(),
                reason,
            })?;
        Ok(message::message_id(topic, produced.partition, produced.offset))
    }

    /// Publishes many messages with up to a few thousand awaiting acknowledgement at once;
    /// returns their ids (`topic/partition/offset`) in order. Stops at the first failure.
    pub async fn publish_many(&self, messages: Vec<OutgoingMessage>) -> Result<Vec<String>, AdapterError> {
        let mut results = futures::stream::iter(messages.iter().map(|m| self.publish_one(m))).buffered(PUBLISH_WINDOW);
        let mut ids = Vec::with_capacity(messages.len());
        while let Some(r) = results.next().await {
            ids.push(r?);
        }
        Ok(ids)
    }

    /// Waits until everything produced so far is acknowledged (or `timeout` passes).
    pub async fn flush(&self, timeout: Duration) -> Result<(), AdapterError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| AdapterError::Other {
                what: "flushing the Kafka producer".to_owned(),
                reason: e.to_string(),
            })?
            .map_err(|e| AdapterError::Publish {
                destination: self.inner.brokers.clone(),
                reason: self.inner.context.redactor().redact(&e),
            })
    }

    /// Unhealthy while librdkafka reports every broker down.
    pub fn health(&self) -> Health {
        self.inner.context.health().health()
    }
}

/// The parts of the section a producer needs: brokers, security, producer options.
fn check_connection_settings(cfg: &KafkaSourceConfig, settings: &AdapterSettings) -> Result<(), AdapterError> {
    let consumer_only = ["topics", "consumer_group", "options"].map(|f| format!("{SOURCE_PATH}.{f}"));
    let relevant = connection::problems(cfg, settings)
        .problems
        .into_iter()
        .filter(|p| {
            !consumer_only
                .iter()
                .any(|c| p.path == *c || p.path.starts_with(&format!("{c}.")) || p.path.starts_with(&format!("{c}[")))
        })
        .collect::<Vec<_>>();
    connection::into_result(&relevant)
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError> {
        self.publish_one(&message).await.map(Some)
    }
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("brokers", &self.inner.brokers)
            .field("default_topic", &self.inner.default_topic)
            .finish_non_exhaustive()
    }
}
