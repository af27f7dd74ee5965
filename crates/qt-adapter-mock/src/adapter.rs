//! The adapter, its settle handles and its publisher.

use async_trait::async_trait;
use qt_core::{
    AckHandle, AdapterError, Capabilities, Delivery, Health, OrderingUnit, OutgoingMessage, Publisher, QueueAdapter,
    RawMessage, Settle, SettleError, Settlement,
};
use tokio::time::Instant;

use crate::queue::{MockQueue, Settled};

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

struct MockSettle {
    queue: MockQueue,
    message: RawMessage,
}

#[async_trait]
impl Settle for MockSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), SettleError> {
        let MockSettle { queue, mut message } = *self;
        let inner = &queue.inner;
        match settlement {
            Settlement::DeadLetter(dl) => {
                let id = message.message_id.clone();
                return queue.record_dead_letter(message, *dl).map_err(|e| SettleError::Broker {
                    operation: "dead-letter",
                    queue: inner.name.to_string(),
                    message_id: id,
                    reason: e.to_string(),
                });
            }
            Settlement::Ack => {
                let mut s = inner.state.lock();
                s.outstanding -= 1;
                s.acked_count += 1;
                if inner.keep_history {
                    s.acked.push(Settled { message });
                }
                let idle = s.pending() == 0;
                drop(s);
                queue.notify_if_idle(idle);
            }
            Settlement::Nack => {
                let mut s = inner.state.lock();
                s.outstanding -= 1;
                s.nacked.push(Settled { message });
                let idle = s.pending() == 0;
                drop(s);
                queue.notify_if_idle(idle);
            }
            Settlement::Requeue {
                delay,
                attempt,
                traceparent,
            } => {
                message.headers.insert(qt_core::headers::ATTEMPT, attempt.to_string());
                if let Some(traceparent) = traceparent {
                    message.headers.insert(qt_core::headers::TRACEPARENT, traceparent);
                }
                let mut s = inner.state.lock();
                s.outstanding -= 1;
                if inner.keep_history {
                    s.requeued.push((
                        Settled {
                            message: message.clone(),
                        },
                        delay,
                    ));
                }
                match delay {
                    Some(d) if !d.is_zero() => s.delay(message, d),
                    _ => s.ready.push_back(message),
                }
                drop(s);
                inner.available.notify_one();
            }
        }
        Ok(())
    }

    fn abandon(self: Box<Self>) {
        let MockSettle { queue, message } = *self;
        queue.put_back(message);
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
