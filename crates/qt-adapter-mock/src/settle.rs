//! What each settlement does to the in-memory queue.

use async_trait::async_trait;
use qt_core::{RawMessage, Settle, SettleError, Settlement};

use crate::queue::{MockQueue, Settled};

pub(crate) struct MockSettle {
    pub(crate) queue: MockQueue,
    pub(crate) message: RawMessage,
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
