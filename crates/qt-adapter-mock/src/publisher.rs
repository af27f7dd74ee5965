//! Publishing to the in-memory queue: `qt send` and tests.

use async_trait::async_trait;
use qt_core::{AdapterError, OutgoingMessage, Publisher, RawMessage};

use crate::queue::MockQueue;

/// Publishes into a [`MockQueue`] (what `qt send` uses for the mock source).
#[derive(Debug, Clone)]
pub struct MockPublisher {
    queue: MockQueue,
}

impl MockPublisher {
    pub(crate) fn new(queue: MockQueue) -> Self {
        Self { queue }
    }
}

#[async_trait]
impl Publisher for MockPublisher {
    async fn publish(&self, message: OutgoingMessage) -> Result<Option<String>, AdapterError> {
        let id = message
            .headers
            .get("x-message-id")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sent-{}", uuid::Uuid::now_v7()));
        let mut source = self.queue.source_info();
        source.key = message.key;
        let raw = RawMessage::new(id.clone(), message.body, source).with_headers(message.headers);
        self.queue.enqueue(raw);
        Ok(Some(id))
    }
}
