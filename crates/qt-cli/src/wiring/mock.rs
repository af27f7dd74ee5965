//! The mock source: an in-memory queue fed from `source.file`.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use qt_adapter_mock::{MessageLine, MockDlq, MockQueue};
use qt_core::config::{Config, MockSourceConfig};
use qt_core::{AdapterError, DlqReader, OutgoingMessage, Publisher};

use super::Source;
use crate::admin_client::AdminClient;

pub fn source(config: &MockSourceConfig) -> anyhow::Result<Source> {
    let queue = MockQueue::from_config(config).context("source.file")?;
    Ok(Source {
        adapter: Arc::new(queue.adapter()),
        mock: Some(queue),
    })
}

/// Publishes into the mock queue of a running `qt run` of the same configuration, through
/// its admin server's `POST /send`: the mock queue lives inside that process. An
/// `x-message-id` header becomes the message's id.
pub struct RunningMockPublisher {
    admin: AdminClient,
    queue: String,
}

impl std::fmt::Debug for RunningMockPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningMockPublisher")
            .field("queue", &self.queue)
            .finish()
    }
}

impl RunningMockPublisher {
    pub fn new(config: &Config, mock: &MockSourceConfig) -> anyhow::Result<Self> {
        Ok(Self {
            admin: AdminClient::for_config(config, "publishing to the mock source")?,
            queue: mock.queue.clone(),
        })
    }
}

#[async_trait]
impl Publisher for RunningMockPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError> {
        let failed = |reason: String| AdapterError::Publish {
            destination: format!("the mock queue {:?} of the running `qt run`", self.queue),
            reason,
        };
        if let Some(to) = message.destination.as_deref().filter(|to| *to != self.queue) {
            return Err(failed(format!(
                "the mock source has one queue; it cannot publish to {to:?}"
            )));
        }
        let mut headers = message.headers;
        let id = headers.get("x-message-id").map(str::to_owned);
        headers.remove("x-message-id");
        let line = MessageLine::for_message(id, &headers, message.key, &message.body);
        let line = serde_json::to_value(&line).map_err(|e| failed(e.to_string()))?;
        let answer = self
            .admin
            .post("/send", Some(&line))
            .await
            .map_err(|e| failed(format!("{e:#}")))?;
        Ok(answer.get("message_id").and_then(|m| m.as_str()).map(str::to_owned))
    }
}

/// The dead letters of a mock source: its `dlq_file`.
pub fn dlq(mock: &MockSourceConfig) -> anyhow::Result<Box<dyn DlqReader>> {
    let Some(path) = &mock.dlq_file else {
        anyhow::bail!(
            "this mock source keeps its dead letters in the memory of `qt run`; set source.dlq_file to keep \
             them in a file that `qt dlq` can read"
        );
    };
    Ok(Box::new(MockDlq::open(path)?))
}
