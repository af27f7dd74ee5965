//! What an adapter hands the engine: the raw bytes of one message and where it came from.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::headers::Headers;

/// Where a message came from, in broker terms. Fields a broker does not have stay `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Adapter kind: `kafka`, `rabbitmq`, `sqs`, `mock`.
    pub adapter: Arc<str>,
    /// Topic, queue name or queue URL.
    pub queue: Arc<str>,
    /// Kafka partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Kafka offset, or the broker's sequence number where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Kafka message key, RabbitMQ routing key, SQS FIFO MessageGroupId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How many times the broker has delivered this message, counting this delivery, when the
    /// broker says (`x-delivery-count`, ApproximateReceiveCount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_count: Option<u32>,
    /// Whether the broker flags this as a redelivery (RabbitMQ).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redelivered: bool,
}

impl SourceInfo {
    pub fn new(adapter: impl Into<Arc<str>>, queue: impl Into<Arc<str>>) -> Self {
        Self {
            adapter: adapter.into(),
            queue: queue.into(),
            partition: None,
            offset: None,
            key: None,
            delivery_count: None,
            redelivered: false,
        }
    }
}

/// One message as received, before parsing.
#[derive(Clone, Debug)]
pub struct RawMessage {
    /// Broker message id where there is one (AMQP message-id, SQS MessageId); adapters
    /// without one derive a stable id (Kafka: `topic/partition/offset`).
    pub message_id: String,
    pub body: Bytes,
    pub headers: Headers,
    /// When the broker accepted the message, if it says.
    pub broker_timestamp: Option<DateTime<Utc>>,
    /// When qt took it from the broker.
    pub received_at: DateTime<Utc>,
    pub source: SourceInfo,
    /// Set by an adapter that could not read all of the message from the broker (say, a
    /// Kafka header whose key is not UTF-8), saying what and where. The engine then treats
    /// the message as unparseable without parsing it: `processing.on_parse_failure` settles
    /// it, dead-lettered by default, and the adapter re-publishes it as it came.
    pub unreadable: Option<String>,
}

impl RawMessage {
    pub fn new(message_id: impl Into<String>, body: impl Into<Bytes>, source: SourceInfo) -> Self {
        Self {
            message_id: message_id.into(),
            body: body.into(),
            headers: Headers::new(),
            broker_timestamp: None,
            received_at: Utc::now(),
            source,
            unreadable: None,
        }
    }

    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// The attempt number this delivery represents (1 for a first delivery): the larger of
    /// qt's own attempt header (set when qt re-publishes for a retry) and the broker's
    /// delivery count.
    pub fn attempt(&self) -> u32 {
        let from_header = self
            .headers
            .get(crate::headers::ATTEMPT)
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(1);
        let from_broker = self.source.delivery_count.unwrap_or(1);
        from_header.max(from_broker).max(1)
    }

    /// Time between the broker accepting the message and qt receiving it.
    pub fn consume_latency(&self) -> Option<std::time::Duration> {
        self.broker_timestamp.and_then(|t| (self.received_at - t).to_std().ok())
    }
}
