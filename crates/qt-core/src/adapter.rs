//! The one interface every broker adapter implements (requirement 1.1), and its publisher
//! side.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use crate::delivery::Delivery;
use crate::headers::Headers;
use crate::health::Health;

/// What unit of the broker keeps order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderingUnit {
    /// The broker gives no ordering guarantee qt can lean on.
    None,
    /// Kafka partition.
    Partition,
    /// SQS FIFO message group.
    MessageGroup,
    /// A single queue with a single consumer (RabbitMQ single active consumer).
    Queue,
}

/// What an adapter can and cannot do (requirement 1.4). The engine reads this instead of
/// assuming; `qt validate` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// `nack` rejects the message so the broker's own dead-lettering applies.
    pub native_reject: bool,
    /// `requeue` with a delay is honoured without holding the message in memory.
    pub delayed_requeue: bool,
    /// The adapter can write dead letters itself.
    pub dead_letter: bool,
    /// `extend` pushes back the broker's redelivery lease.
    pub lease_extension: bool,
    /// Intake can be paused at the broker while the connection stays alive.
    pub pause: bool,
    pub ordering: OrderingUnit,
    /// Plain-language limits an operator should know.
    pub notes: Vec<&'static str>,
}

/// Why an adapter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("cannot connect to {endpoint}: {reason}. Check the address, credentials and that the broker is running")]
    Connect { endpoint: String, reason: String },
    #[error("{queue} does not exist or is not accessible: {reason}")]
    MissingResource { queue: String, reason: String },
    #[error("receiving from {queue} failed: {reason}")]
    Receive { queue: String, reason: String },
    #[error("publishing to {destination} failed: {reason}")]
    Publish { destination: String, reason: String },
    #[error("invalid {field}: {reason}")]
    Config { field: String, reason: String },
    #[error("{what} failed: {reason}")]
    Other { what: String, reason: String },
}

/// A message to publish: for `qt send`, dead letters and requeues by re-publishing.
#[derive(Clone, Debug, Default)]
pub struct OutgoingMessage {
    pub body: Bytes,
    pub headers: Headers,
    /// Kafka key / RabbitMQ routing key / SQS MessageGroupId.
    pub key: Option<String>,
    /// Overrides the publisher's default destination (topic, exchange, queue URL).
    pub destination: Option<String>,
    /// Deduplication id for brokers that have one (SQS FIFO).
    pub deduplication_id: Option<String>,
}

/// Publishes single messages.
#[async_trait]
pub trait Publisher: Send + Sync + std::fmt::Debug {
    /// Publishes and waits for the broker to confirm; returns the broker's id for it where
    /// there is one.
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError>;
}

/// A source of deliveries.
///
/// `receive` must be cancel-safe: when its future is dropped before completing, no message
/// may be lost (it stays with the broker or in the adapter's buffer for the next call).
#[async_trait]
pub trait QueueAdapter: Send + Sync + std::fmt::Debug {
    /// Adapter kind (`kafka`, `rabbitmq`, `sqs`, `mock`).
    fn kind(&self) -> &'static str;

    /// The queue/topic description used in logs and the ledger.
    fn queue(&self) -> &str;

    fn capabilities(&self) -> Capabilities;

    /// Connects (or checks the connection) and subscribes. Called once before `receive`.
    async fn connect(&self) -> Result<(), AdapterError>;

    /// Waits until at least one delivery is available and returns up to `max` of them.
    /// Returns an empty batch only when the source is closed for good.
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, AdapterError>;

    /// Stops fetching from the broker without dropping the connection or group membership.
    async fn pause(&self) -> Result<(), AdapterError>;

    async fn resume(&self) -> Result<(), AdapterError>;

    async fn health(&self) -> Health;

    /// Messages waiting at the broker (and, for adapters that know, not yet settled).
    async fn backlog(&self) -> Result<Option<u64>, AdapterError>;

    /// Stops intake and releases connections. Unsettled messages are left for redelivery.
    async fn close(&self) -> Result<(), AdapterError>;
}

/// Engine-side settings every adapter constructor receives beside its own config section.
#[derive(Clone, Debug)]
pub struct AdapterSettings {
    /// The trigger's name (`name` in the config), for client ids and consumer tags.
    pub trigger_name: String,
    /// Most messages the engine holds unsettled; adapters size prefetch/buffers from it.
    pub max_in_flight: usize,
    /// Agent runs at once (`processing.concurrency`).
    pub concurrency: usize,
    /// `security.require_tls`: refuse plaintext endpoints at construction.
    pub require_tls: bool,
}

impl AdapterSettings {
    pub fn new(trigger_name: impl Into<String>, concurrency: usize, max_in_flight: usize) -> Self {
        Self {
            trigger_name: trigger_name.into(),
            max_in_flight,
            concurrency,
            require_tls: false,
        }
    }
}
