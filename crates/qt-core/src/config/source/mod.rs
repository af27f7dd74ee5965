//! `source`: which broker messages come from.

mod kafka;
mod mock;
mod rabbitmq;
mod sqs;

pub use kafka::{KafkaSaslConfig, KafkaSecurityProtocol, KafkaSourceConfig, KafkaSslConfig, SaslMechanism};
pub use mock::MockSourceConfig;
pub use rabbitmq::{
    ExchangeDeclaration, QueueBinding, QueueDeclaration, RabbitMqDeclare, RabbitMqDlq, RabbitMqSourceConfig,
};
pub use sqs::{SQS_MAX_VISIBILITY, SQS_MAX_WAIT, SqsSourceConfig, is_fifo_queue};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigErrors, Validate};

/// The broker messages come from; `type` picks the adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// An in-memory queue, optionally fed from a JSONL file: for trying configurations out.
    Mock(MockSourceConfig),
    /// Kafka topics, consumed in a consumer group.
    Kafka(KafkaSourceConfig),
    /// A RabbitMQ (AMQP 0-9-1) queue.
    Rabbitmq(RabbitMqSourceConfig),
    /// An Amazon SQS queue (standard or FIFO).
    Sqs(SqsSourceConfig),
}

impl SourceConfig {
    /// `mock`, `kafka`, `rabbitmq`, `sqs`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Mock(_) => "mock",
            SourceConfig::Kafka(_) => "kafka",
            SourceConfig::Rabbitmq(_) => "rabbitmq",
            SourceConfig::Sqs(_) => "sqs",
        }
    }

    /// The field (under `source`) that names a dead-letter destination when it is not set,
    /// `None` when this source can dead-letter as configured. The mock source always can.
    pub fn missing_dead_letter_field(&self) -> Option<&'static str> {
        match self {
            SourceConfig::Mock(_) => None,
            SourceConfig::Kafka(k) => k.dlq_topic.is_none().then_some("dlq_topic"),
            SourceConfig::Rabbitmq(r) => r.dlq.is_none().then_some("dlq"),
            SourceConfig::Sqs(s) => s.dlq_queue_url.is_none().then_some("dlq_queue_url"),
        }
    }

    /// Endpoints that would be reached without TLS, as (field path, masked endpoint), for
    /// `security.require_tls`.
    pub fn plaintext_endpoints(&self, path: &str) -> Vec<(String, String)> {
        match self {
            SourceConfig::Mock(_) => Vec::new(),
            SourceConfig::Kafka(k) => k.plaintext_endpoints(path),
            SourceConfig::Rabbitmq(r) => r.plaintext_endpoints(path),
            SourceConfig::Sqs(s) => s.plaintext_endpoints(path),
        }
    }
}

impl Validate for SourceConfig {
    fn validate(&self, path: &str, problems: &mut ConfigErrors) {
        match self {
            SourceConfig::Mock(m) => m.validate(path, problems),
            SourceConfig::Kafka(k) => k.validate(path, problems),
            SourceConfig::Rabbitmq(r) => r.validate(path, problems),
            SourceConfig::Sqs(s) => s.validate(path, problems),
        }
    }
}
