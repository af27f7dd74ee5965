//! Settling one Kafka message: every outcome ends in "this offset is finished" (which lets
//! the partition's committed offset move past it once everything before it is finished),
//! except a failure, which rewinds the partition so the message is delivered again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qt_core::headers::{ATTEMPT, TRACEPARENT, dead_letter};
use qt_core::{DeadLetter, Headers, Settle, SettleError, Settlement, SourceInfo};
use rdkafka::message::OwnedHeaders;

use crate::message::{self, NOT_BEFORE};
use crate::publisher::KafkaPublisher;
use crate::state::{Completion, Failure, Origin, Refusal, Shared};

/// What the handles of one adapter share. Each received batch's handles share a copy of
/// their own (cheap: shared parts and two topic names): every handle holds it until its
/// message is settled, and one context for the whole adapter would have its reference count
/// written by every worker for every message.
#[derive(Clone, Debug)]
pub struct SettleContext {
    pub shared: Arc<Shared>,
    pub publisher: KafkaPublisher,
    pub dlq_topic: Option<String>,
    pub retry_topic: Option<String>,
    pub redelivery_delay: Duration,
}

impl SettleContext {
    fn complete(&self, origin: &Origin) -> Completion {
        let c = self.shared.lock().complete(origin);
        self.shared.notify_settled();
        c
    }

    /// The message stays unfinished and is delivered again.
    fn fail(&self, origin: &Origin, why: &str) {
        let f = self.shared.lock().fail(origin, Instant::now(), self.redelivery_delay);
        self.shared.notify_settled();
        // A rewind drops the partition's buffered messages.
        self.shared.notify_room();
        match f {
            Failure::Rewinding { target } => tracing::warn!(
                message_id = %origin.message_id(),
                partition = %origin.tp,
                rewind_to = target,
                delay = ?self.redelivery_delay,
                "{why}; the partition is read again from the first unfinished offset"
            ),
            Failure::LeftToBroker => tracing::info!(
                message_id = %origin.message_id(),
                partition = %origin.tp,
                "{why}; the message stays uncommitted and the broker delivers it again"
            ),
        }
    }

    fn stale(origin: &Origin) -> SettleError {
        SettleError::ConnectionLost {
            message_id: origin.message_id(),
        }
    }
}

/// A requeue or dead letter under way, from its start until its outcome is recorded (or
/// its future is dropped). Dropped after the outcome, so a close waiting for it commits
/// the message's offset when the copy is confirmed.
struct Underway<'a>(&'a Shared);

impl Drop for Underway<'_> {
    fn drop(&mut self) {
        self.0.lock().end_underway();
        self.0.notify_settled();
    }
}

/// The settle side of one delivered Kafka message.
pub struct KafkaSettle {
    ctx: Arc<SettleContext>,
    origin: Origin,
}

impl KafkaSettle {
    pub fn new(ctx: Arc<SettleContext>, origin: Origin) -> Self {
        Self { ctx, origin }
    }

    async fn requeue(
        &self,
        delay: Option<Duration>,
        attempt: u32,
        traceparent: Option<String>,
    ) -> Result<(), SettleError> {
        let o = &self.origin;
        let topic = self.ctx.retry_topic.as_deref().unwrap_or(&o.tp.topic);
        let attempt = attempt.to_string();
        let mut extra = vec![(ATTEMPT, attempt)];
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            extra.push((NOT_BEFORE, message::not_before_value(d)));
        }
        let mut replaced = vec![ATTEMPT, NOT_BEFORE];
        if let Some(traceparent) = traceparent {
            extra.push((TRACEPARENT, traceparent));
            replaced.push(TRACEPARENT);
        }
        let headers = message::reproduced_headers(&o.record, o.unreadable.as_deref(), &replaced, extra);
        self.reproduce("requeue", topic, headers).await
    }

    async fn dead_letter(&self, dl: &DeadLetter) -> Result<(), SettleError> {
        let o = &self.origin;
        let Some(topic) = self.ctx.dlq_topic.as_deref() else {
            return Err(SettleError::Unsupported {
                adapter: "kafka",
                operation: "dead-lettering without source.dlq_topic (the message stays uncommitted)",
            });
        };
        let mut source = SourceInfo::new("kafka", o.tp.topic.clone());
        source.partition = Some(o.tp.partition);
        source.offset = Some(o.offset);
        let added = dl.headers_for(&Headers::new(), &source, &o.message_id());
        // qt's traceparent, when it sets one, replaces the producer's rather than joining it.
        let mut replaced: Vec<&str> = dead_letter::ALL.to_vec();
        if dl.traceparent.is_some() {
            replaced.push(TRACEPARENT);
        }
        let headers = message::reproduced_headers(&o.record, o.unreadable.as_deref(), &replaced, added.iter());
        self.reproduce("dead-letter", topic, headers).await
    }

    /// Produces the original key and payload to `topic` with `headers`, for a settlement
    /// that re-publishes the message before marking it done.
    async fn reproduce(&self, operation: &'static str, topic: &str, headers: OwnedHeaders) -> Result<(), SettleError> {
        let o = &self.origin;
        self.ctx
            .publisher
            .produce(topic, o.record.key(), o.record.payload(), headers)
            .await
            .map(|_| ())
            .map_err(|reason| SettleError::Broker {
                operation,
                queue: topic.to_owned(),
                message_id: o.message_id(),
                reason,
            })
    }
}

impl KafkaSettle {
    fn finish(&self) -> Result<(), SettleError> {
        match self.ctx.complete(&self.origin) {
            Completion::Counted => Ok(()),
            Completion::Stale => Err(SettleContext::stale(&self.origin)),
        }
    }

    /// Counts the settlement as under way until the returned guard is dropped, so close
    /// waits for its copy. A copy produced for a partition this consumer no longer owns
    /// would duplicate the redelivery its new owner is about to process, and one started
    /// once close began could land after the final commit; both are refused.
    fn begin_underway(&self, operation: &'static str) -> Result<Underway<'_>, SettleError> {
        let started = self.ctx.shared.lock().begin_underway(&self.origin);
        match started {
            Ok(()) => Ok(Underway(&self.ctx.shared)),
            Err(Refusal::Stale) => Err(SettleContext::stale(&self.origin)),
            Err(Refusal::Closing) => Err(SettleError::Broker {
                operation,
                queue: self.origin.tp.topic.to_string(),
                message_id: self.origin.message_id(),
                reason: "the adapter is closing; the message stays uncommitted and the consumer group \
                         delivers it again"
                    .to_owned(),
            }),
        }
    }

    /// The original is finished only once its copy is confirmed.
    fn after_produce(&self, what: &str, produced: Result<(), SettleError>) -> Result<(), SettleError> {
        match produced {
            Ok(()) => {
                if self.ctx.complete(&self.origin) == Completion::Stale {
                    tracing::debug!(
                        message_id = %self.origin.message_id(),
                        "{what} written, but the partition was revoked meanwhile; the original is delivered again"
                    );
                }
                Ok(())
            }
            Err(e) => {
                self.ctx.fail(&self.origin, &format!("{what} failed: {e}"));
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    /// An ack or a nack only marks the offset finished.
    fn settle_now(&mut self, settlement: &Settlement) -> Option<Result<(), SettleError>> {
        match settlement {
            Settlement::Ack => Some(self.finish()),
            Settlement::Nack => {
                tracing::debug!(message_id = %self.origin.message_id(), "nack: Kafka has no reject, the message is dropped");
                Some(self.finish())
            }
            Settlement::Requeue { .. } | Settlement::DeadLetter(_) => None,
        }
    }

    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), SettleError> {
        match settlement {
            // Settled by settle_now; kept so a direct call settles the same way.
            Settlement::Ack | Settlement::Nack => {
                let mut this = self;
                this.settle_now(&settlement).expect("acks and nacks settle on the spot")
            }
            Settlement::Requeue {
                delay,
                attempt,
                traceparent,
            } => {
                let _underway = self.begin_underway("requeue")?;
                let produced = self.requeue(delay, attempt, traceparent).await;
                self.after_produce("requeue", produced)
            }
            Settlement::DeadLetter(dl) => {
                let _underway = self.begin_underway("dead-letter")?;
                let produced = self.dead_letter(&dl).await;
                self.after_produce("dead-letter", produced)
            }
        }
    }

    fn abandon(self: Box<Self>) {
        self.ctx.fail(&self.origin, "handle dropped unsettled");
    }
}
