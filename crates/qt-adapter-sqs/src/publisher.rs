//! `SqsPublisher`: one SendMessage per message, for `qt send`, dead letters and replays.

use std::fmt;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{ProvideCredentials, SharedCredentialsProvider};
use qt_core::config::SqsSourceConfig;
use qt_core::{AdapterError, AdapterSettings, OutgoingMessage, Publisher};
use tokio::sync::OnceCell;

use crate::connection::{resolve_queue_url, sdk_client};
use crate::send::{Outgoing, send};

/// Publishes to the configured queue (or `OutgoingMessage::destination`, a queue URL or
/// name). Headers become message attributes (see the crate docs for the folding of more
/// than ten); `key` is the MessageGroupId; `deduplication_id` the MessageDeduplicationId on
/// FIFO queues (without one, a FIFO queue needs content-based deduplication turned on).
/// Bodies must be UTF-8 text, as SQS requires.
pub struct SqsPublisher {
    client: Client,
    queue: String,
    queue_url: OnceCell<String>,
}

impl SqsPublisher {
    /// A publisher with credentials from the standard AWS provider chain.
    pub async fn new(cfg: &SqsSourceConfig, settings: &AdapterSettings) -> Result<Self, AdapterError> {
        Self::build(cfg, settings, None).await
    }

    /// A publisher with the given credentials provider instead of the standard chain.
    pub async fn with_credentials(
        cfg: &SqsSourceConfig,
        settings: &AdapterSettings,
        credentials: impl ProvideCredentials + 'static,
    ) -> Result<Self, AdapterError> {
        Self::build(cfg, settings, Some(SharedCredentialsProvider::new(credentials))).await
    }

    async fn build(
        cfg: &SqsSourceConfig,
        settings: &AdapterSettings,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self, AdapterError> {
        let client = sdk_client(cfg, settings.require_tls, credentials).await?;
        Ok(Self {
            client,
            queue: cfg.queue_url.trim().to_owned(),
            queue_url: OnceCell::new(),
        })
    }

    async fn destination(&self, override_: Option<&str>) -> Result<String, AdapterError> {
        match override_ {
            Some(d) => resolve_queue_url(&self.client, d, "destination").await,
            None => self
                .queue_url
                .get_or_try_init(|| resolve_queue_url(&self.client, &self.queue, "source.queue_url"))
                .await
                .cloned(),
        }
    }
}

impl fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsPublisher")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Publisher for SqsPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError> {
        let queue_url = self.destination(message.destination.as_deref()).await?;
        let outgoing = Outgoing {
            queue_url: &queue_url,
            body: &message.body,
            headers: &message.headers,
            group_id: message.key.as_deref(),
            deduplication_id: message.deduplication_id.as_deref(),
        };
        send(&self.client, outgoing)
            .await
            .map_err(|reason| AdapterError::Publish {
                destination: queue_url.clone(),
                reason,
            })
    }
}
