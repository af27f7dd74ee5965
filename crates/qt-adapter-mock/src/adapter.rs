//! The adapter: receiving from the in-memory queue, pausing, health and backlog.

use async_trait::async_trait;
use qt_core::{AckHandle, AdapterError, Capabilities, Delivery, Health, OrderingUnit, QueueAdapter, RawMessage};
use tokio::time::Instant;

use crate::queue::MockQueue;
use crate::settle::MockSettle;

/// The [`QueueAdapter`] side of a [`MockQueue`].
#[derive(Debug, Clone)]
pub struct MockAdapter {
    queue: MockQueue,
}

impl MockAdapter {
    pub(crate) fn new(queue: MockQueue) -> Self {
        Self { queue }
    }

    pub fn queue_handle(&self) -> &MockQueue {
        &self.queue
    }
}

#[async_trait]
impl QueueAdapter for MockAdapter {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn queue(&self) -> &str {
        self.queue.name()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            native_reject: false,
            delayed_requeue: true,
            dead_letter: true,
            lease_extension: false,
            pause: true,
            ordering: OrderingUnit::Queue,
            notes: vec![
                "in memory: messages are lost when the process exits",
                "nack records the message and drops it (there is no dead-letter exchange)",
            ],
        }
    }

    async fn connect(&self) -> Result<(), AdapterError> {
        Ok(())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, AdapterError> {
        let inner = &self.queue.inner;
        loop {
            let notified = inner.available.notified();
            let next_due = {
                let mut s = inner.state.lock();
                let next_due = s.promote_due(Instant::now());
                if !s.paused && !s.ready.is_empty() {
                    let n = max.min(s.ready.len());
                    let taken: Vec<RawMessage> = s.ready.drain(..n).collect();
                    s.outstanding += n;
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        // Let another waiting receiver (if any) take the rest.
                        inner.available.notify_one();
                    }
                    return Ok(taken
                        .into_iter()
                        .map(|mut m| {
                            m.received_at = chrono::Utc::now();
                            let handle = AckHandle::new(MockSettle {
                                queue: self.queue.clone(),
                                message: m.clone(),
                            });
                            Delivery::new(m, handle)
                        })
                        .collect());
                }
                if s.closed && s.ready.is_empty() && next_due.is_none() {
                    return Ok(Vec::new());
                }
                next_due
            };
            match next_due {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, notified).await;
                }
                None => notified.await,
            }
        }
    }

    async fn pause(&self) -> Result<(), AdapterError> {
        self.queue.inner.state.lock().paused = true;
        Ok(())
    }

    async fn resume(&self) -> Result<(), AdapterError> {
        self.queue.inner.state.lock().paused = false;
        self.queue.inner.available.notify_one();
        Ok(())
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }

    async fn backlog(&self) -> Result<Option<u64>, AdapterError> {
        // Waiting at the "broker": ready plus delayed, not the ones out for delivery.
        let s = self.queue.inner.state.lock();
        Ok(Some((s.pending() - s.outstanding) as u64))
    }

    async fn close(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}
