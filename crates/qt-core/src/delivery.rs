//! A received message together with the one-shot right to settle it.
//!
//! Settling consumes the [`AckHandle`], so a message cannot be acked twice or acked after it
//! was dead-lettered. A handle dropped without settling tells the adapter to leave the
//! message to the broker's redelivery: the only safe reading of "we don't know what
//! happened" is "not done".

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error_class::ErrorClass;
use crate::headers::{Headers, dead_letter};
use crate::message::{RawMessage, SourceInfo};

/// How a message leaves qt's hands.
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    /// Done: the broker may forget it.
    Ack,
    /// Give up without a retry from qt: the broker's own dead-lettering (RabbitMQ DLX, SQS
    /// redrive policy) applies where it exists; Kafka drops it.
    Nack,
    /// Try again later. `attempt` is the attempt number the redelivery will carry;
    /// `traceparent`, when set, is qt's span of the message, which the redelivery carries
    /// instead of the producer's where the broker lets a copy carry new headers.
    Requeue {
        delay: Option<Duration>,
        attempt: u32,
        traceparent: Option<String>,
    },
    /// Move to the configured dead-letter destination with the failure details. Boxed: dead
    /// letters are rare, and every settlement is as large as its largest kind.
    DeadLetter(Box<DeadLetter>),
}

impl Settlement {
    /// Short name used in logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::Nack => "nack",
            Settlement::Requeue { .. } => "requeue",
            Settlement::DeadLetter(_) => "dead_letter",
        }
    }
}

/// Why a message goes to the dead-letter destination, carried on it as headers.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub reason: String,
    pub error_class: Option<ErrorClass>,
    /// How many agent attempts were made (0 when the message never reached the agent).
    pub attempts: u32,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    /// The `traceparent` of qt's span of the message, when it was traced: it replaces the
    /// producer's, so a replay of the dead letter continues the same trace from there.
    pub traceparent: Option<String>,
}

impl DeadLetter {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            error_class: None,
            attempts: 0,
            first_failure_at: None,
            last_failure_at: None,
            traceparent: None,
        }
    }

    /// The original headers plus the dead-letter headers every adapter writes.
    pub fn headers_for(&self, original: &Headers, source: &SourceInfo, message_id: &str) -> Headers {
        let mut headers = original.clone();
        headers.insert(dead_letter::REASON, self.reason.clone());
        if let Some(class) = self.error_class {
            headers.insert(dead_letter::ERROR_CLASS, class.as_str());
        }
        headers.insert(dead_letter::ATTEMPTS, self.attempts.to_string());
        headers.insert(dead_letter::ORIGINAL_QUEUE, source.queue.to_string());
        headers.insert(dead_letter::ORIGINAL_MESSAGE_ID, message_id);
        if let Some(p) = source.partition {
            headers.insert(dead_letter::ORIGINAL_PARTITION, p.to_string());
        }
        if let Some(o) = source.offset {
            headers.insert(dead_letter::ORIGINAL_OFFSET, o.to_string());
        }
        if let Some(t) = self.first_failure_at {
            headers.insert(dead_letter::FIRST_FAILURE_AT, t.to_rfc3339());
        }
        if let Some(t) = self.last_failure_at {
            headers.insert(dead_letter::LAST_FAILURE_AT, t.to_rfc3339());
        }
        if let Some(traceparent) = &self.traceparent {
            headers.insert(crate::headers::TRACEPARENT, traceparent.clone());
        }
        headers
    }
}

/// Why settling failed. The message is then left to the broker's redelivery.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("{operation} is not supported by the {adapter} adapter")]
    Unsupported {
        adapter: &'static str,
        operation: &'static str,
    },
    #[error("could not {operation} message {message_id} on {queue}: {reason}")]
    Broker {
        operation: &'static str,
        queue: String,
        message_id: String,
        reason: String,
    },
    #[error("the connection that delivered message {message_id} is gone; the broker will redeliver it")]
    ConnectionLost { message_id: String },
}

/// The adapter side of a handle: what settling a message means for one broker.
///
/// Implementations must make a failed settle leave the message for redelivery, and must
/// treat [`Settle::abandon`] (a handle dropped unsettled) the same way.
#[async_trait]
pub trait Settle: Send + Sync + 'static {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), SettleError>;

    /// Extends the broker lease (SQS visibility timeout) by `by` from now.
    async fn extend(&self, by: Duration) -> Result<(), SettleError> {
        let _ = by;
        Err(SettleError::Unsupported {
            adapter: "this",
            operation: "extending the lease",
        })
    }

    /// Settles right here when this adapter settles `settlement` without waiting for the
    /// broker (a Kafka ack only marks its offset finished), so a caller settling a batch
    /// builds no future for each of those messages. `None` when the settlement needs
    /// [`Settle::settle`]; that is the default. Once this returns `Some`, the message is
    /// settled: the handle is dropped without [`Settle::settle`] or [`Settle::abandon`].
    fn settle_now(&mut self, settlement: &Settlement) -> Option<Result<(), SettleError>> {
        let _ = settlement;
        None
    }

    /// Called when the handle is dropped unsettled. The default does nothing, which leaves
    /// the message to the broker's redelivery; adapters that track outstanding messages
    /// (Kafka offsets, the mock) note it here.
    fn abandon(self: Box<Self>) {}
}

/// A settlement under way: [`AckHandle::settle`]'s future. It is either already done
/// ([`Settle::settle_now`]) or the adapter's own future, not wrapped again, so a caller
/// settling many messages can poll each once and keep only those still waiting.
#[must_use = "a settlement does nothing unless polled"]
pub struct Settling(SettlingState);

enum SettlingState {
    Done(Option<Result<(), SettleError>>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), SettleError>> + Send>>),
}

impl Future for Settling {
    type Output = Result<(), SettleError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            SettlingState::Done(result) => {
                Poll::Ready(result.take().expect("a Settling is not polled after it finished"))
            }
            SettlingState::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for Settling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.0 {
            SettlingState::Done(_) => "done",
            SettlingState::Waiting(_) => "waiting",
        };
        f.debug_tuple("Settling").field(&state).finish()
    }
}

/// Settle-once handle for one delivered message.
pub struct AckHandle {
    inner: Option<Box<dyn Settle>>,
}

impl AckHandle {
    pub fn new(settle: impl Settle) -> Self {
        Self {
            inner: Some(Box::new(settle)),
        }
    }

    /// Settles the message (see [`Settling`]).
    pub fn settle(mut self, settlement: Settlement) -> Settling {
        let mut inner = self.inner.take().expect("an AckHandle is settled at most once");
        match inner.settle_now(&settlement) {
            Some(done) => Settling(SettlingState::Done(Some(done))),
            None => Settling(SettlingState::Waiting(inner.settle(settlement))),
        }
    }

    pub async fn ack(self) -> Result<(), SettleError> {
        self.settle(Settlement::Ack).await
    }

    pub async fn nack(self) -> Result<(), SettleError> {
        self.settle(Settlement::Nack).await
    }

    pub async fn requeue(self, delay: Option<Duration>, attempt: u32) -> Result<(), SettleError> {
        self.settle(Settlement::Requeue {
            delay,
            attempt,
            traceparent: None,
        })
        .await
    }

    pub async fn dead_letter(self, dead_letter: DeadLetter) -> Result<(), SettleError> {
        self.settle(Settlement::DeadLetter(Box::new(dead_letter))).await
    }

    /// Extends the broker lease where the adapter supports it.
    pub async fn extend(&self, by: Duration) -> Result<(), SettleError> {
        match &self.inner {
            Some(inner) => inner.extend(by).await,
            None => Ok(()),
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.abandon();
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("settled", &self.inner.is_none())
            .finish()
    }
}

/// A received message and its handle.
#[derive(Debug)]
pub struct Delivery {
    pub message: RawMessage,
    pub handle: AckHandle,
}

impl Delivery {
    pub fn new(message: RawMessage, handle: AckHandle) -> Self {
        Self { message, handle }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Log(Arc<Mutex<Vec<String>>>);

    struct Recorder(Log);

    #[async_trait]
    impl Settle for Recorder {
        async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), SettleError> {
            self.0.0.lock().unwrap().push(settlement.kind().to_owned());
            Ok(())
        }
        fn abandon(self: Box<Self>) {
            self.0.0.lock().unwrap().push("abandoned".to_owned());
        }
    }

    /// Settles acks on the spot and everything else through its future.
    struct Immediate(Log);

    #[async_trait]
    impl Settle for Immediate {
        async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), SettleError> {
            self.0.0.lock().unwrap().push(format!("{} later", settlement.kind()));
            Ok(())
        }
        fn settle_now(&mut self, settlement: &Settlement) -> Option<Result<(), SettleError>> {
            (*settlement == Settlement::Ack).then(|| {
                self.0.0.lock().unwrap().push("ack now".to_owned());
                Ok(())
            })
        }
        fn abandon(self: Box<Self>) {
            self.0.0.lock().unwrap().push("abandoned".to_owned());
        }
    }

    #[tokio::test]
    async fn a_settlement_done_on_the_spot_is_neither_repeated_nor_abandoned() {
        let log = Log::default();
        let settling = AckHandle::new(Immediate(log.clone())).settle(Settlement::Ack);
        assert_eq!(
            *log.0.lock().unwrap(),
            vec!["ack now"],
            "settled before the future is polled"
        );
        settling.await.unwrap();
        AckHandle::new(Immediate(log.clone())).nack().await.unwrap();
        assert_eq!(*log.0.lock().unwrap(), vec!["ack now", "nack later"]);
    }

    #[tokio::test]
    async fn settles_once_and_drop_means_redeliver() {
        let log = Log::default();
        AckHandle::new(Recorder(log.clone())).ack().await.unwrap();
        drop(AckHandle::new(Recorder(log.clone())));
        assert_eq!(*log.0.lock().unwrap(), vec!["ack", "abandoned"]);
    }

    #[test]
    fn dead_letter_headers_keep_originals_and_add_details() {
        let mut source = SourceInfo::new("kafka", "orders");
        source.partition = Some(3);
        source.offset = Some(42);
        let original: Headers = [("x-tenant-id", "acme")].into_iter().collect();
        let mut dl = DeadLetter::new("agent failed: boom");
        dl.error_class = Some(ErrorClass::Permanent);
        dl.attempts = 4;
        let h = dl.headers_for(&original, &source, "m-1");
        assert_eq!(h.get("x-tenant-id"), Some("acme"));
        assert_eq!(h.get(dead_letter::REASON), Some("agent failed: boom"));
        assert_eq!(h.get(dead_letter::ERROR_CLASS), Some("permanent"));
        assert_eq!(h.get(dead_letter::ATTEMPTS), Some("4"));
        assert_eq!(h.get(dead_letter::ORIGINAL_PARTITION), Some("3"));
        assert_eq!(h.get(dead_letter::ORIGINAL_OFFSET), Some("42"));
        assert_eq!(h.get(dead_letter::ORIGINAL_QUEUE), Some("orders"));
    }

    #[test]
    fn a_dead_letters_traceparent_replaces_the_producers() {
        let producer = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let original: Headers = [("traceparent", producer)].into_iter().collect();
        let source = SourceInfo::new("mock", "orders");
        let mut dl = DeadLetter::new("failed");
        assert_eq!(
            dl.headers_for(&original, &source, "m-1").get("traceparent"),
            Some(producer)
        );
        let ours = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";
        dl.traceparent = Some(ours.to_owned());
        let h = dl.headers_for(&original, &source, "m-1");
        assert_eq!(h.get("traceparent"), Some(ours));
        assert_eq!(h.iter().filter(|(k, _)| *k == "traceparent").count(), 1);
    }
}
