//! The mock source: an in-memory queue fed from `source.file`.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine as _;
use qt_adapter_mock::{MockDlq, MockQueue};
use qt_core::config::{Config, MockSourceConfig};
use qt_core::{AdapterError, DlqReader, OutgoingMessage, Publisher};

use super::Source;

pub fn source(config: &MockSourceConfig) -> anyhow::Result<Source> {
    let queue = MockQueue::from_config(config).context("source.file")?;
    Ok(Source {
        adapter: Arc::new(queue.adapter()),
        mock: Some(queue),
    })
}

/// Publishes into the mock queue of a running `qt run` of the same configuration, through
/// its admin server's `POST /send`: the mock queue lives inside that process.
#[derive(Debug)]
pub struct RunningMockPublisher {
    url: String,
    queue: String,
    client: reqwest::Client,
}

impl RunningMockPublisher {
    pub fn new(config: &Config, mock: &MockSourceConfig) -> anyhow::Result<Self> {
        if !config.observability.admin.enabled {
            anyhow::bail!(
                "the mock source takes messages through the admin server of a running `qt run`, which this \
                 configuration disables (observability.admin.enabled)"
            );
        }
        Ok(Self {
            url: format!("http://{}/send", config.observability.admin.listen),
            queue: mock.queue.clone(),
            client: reqwest::Client::new(),
        })
    }
}

#[async_trait]
impl Publisher for RunningMockPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError> {
        let failed = |reason: String| AdapterError::Publish {
            destination: self.url.clone(),
            reason,
        };
        if let Some(to) = message.destination.as_deref().filter(|to| *to != self.queue) {
            return Err(failed(format!(
                "the mock source has one queue, {:?}; it cannot publish to {to:?}",
                self.queue
            )));
        }
        let headers: std::collections::BTreeMap<&str, &str> = message.headers.iter().collect();
        let mut line = serde_json::json!({ "headers": headers });
        if let Some(id) = message.headers.get("x-message-id") {
            line["id"] = id.into();
        }
        if let Some(key) = &message.key {
            line["key"] = key.as_str().into();
        }
        match (
            serde_json::from_slice::<serde_json::Value>(&message.body),
            std::str::from_utf8(&message.body),
        ) {
            (Ok(v), _) => line["json"] = v,
            (Err(_), Ok(text)) => line["text"] = text.into(),
            (Err(_), Err(_)) => {
                line["body_base64"] = base64::engine::general_purpose::STANDARD.encode(&message.body).into();
            }
        }
        let response = self.client.post(&self.url).json(&line).send().await.map_err(|e| {
            failed(format!(
                "cannot reach the running `qt run` ({e}); is it running with this configuration?"
            ))
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(failed(format!("refused ({status}): {text}")));
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        Ok(v.get("message_id").and_then(|m| m.as_str()).map(str::to_owned))
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
