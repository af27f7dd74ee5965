//! What each settlement means on RabbitMQ.
//!
//! | settlement | broker operations |
//! |---|---|
//! | ack | `basic.ack`, coalesced with the acks of neighbouring deliveries into `basic.ack(multiple)` where they form a run (see [`crate::acks`]) |
//! | nack | `basic.nack(requeue=false)`: the queue's dead-letter exchange applies if it has one, otherwise the broker drops the message |
//! | requeue, no delay | `basic.nack(requeue=true)`: back to the queue at once; `x-qt-attempt` is not rewritten (quorum queues count returns in `x-delivery-count`) |
//! | requeue with delay | publish a copy to the retry queue with `expiration` = delay and `x-qt-attempt` = attempt, wait for the confirm, then `basic.ack` the original; the retry queue dead-letters the copy back to the queue when it expires |
//! | dead letter | publish a copy with the dead-letter headers to `source.dlq`, wait for the confirm, then `basic.ack` the original; without `source.dlq` the settle fails and the message is redelivered |
//!
//! Every path that writes a copy acks the original only after the broker confirmed the copy.
//! If the ack itself is then lost with the connection, the broker redelivers the original as
//! well: at least once, never lost. When writing the copy fails, the original is returned to
//! the queue (`basic.nack(requeue)`) one second later, and the settle reports the error. A
//! handle dropped unsettled is returned at once.
//!
//! Closing the adapter lets settlements already under way finish (see [`crate::session`]);
//! one started after the close began fails, and the broker redelivers its message.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::BasicNackOptions;
use lapin::{Acker, BasicProperties};
use qt_core::{DeadLetter, Headers, Settle, SettleError, Settlement, SourceInfo};

use crate::acks::AckFailure;
use crate::amqp_value::{BROKER_DELIVERY_HEADERS, headers_from_table, table_for};
use crate::describe::{is_connection_loss, lapin_error};
use crate::publish::{Publication, PublishFailure, copy_properties, publish_confirmed};
use crate::session::Session;

/// How long a message whose settle failed stays out of the queue before it is returned.
/// Returning it at once would turn a persistent failure (a missing DLQ, a broker refusing
/// the copy) into a tight redelivery loop; keeping it would strand it on the channel.
const RETURN_AFTER_FAILED_SETTLE: Duration = Duration::from_secs(1);

/// The received message as needed to write a copy of it.
pub(crate) struct Original {
    pub properties: BasicProperties,
    pub body: Bytes,
    pub source: SourceInfo,
}

pub(crate) struct RabbitMqSettle {
    session: Arc<Session>,
    /// Rejects and requeues go through the delivery's own acker; acks go through the
    /// session's [`crate::acks::AckBatcher`] by delivery tag.
    acker: Acker,
    delivery_tag: u64,
    message_id: String,
    original: Original,
}

impl RabbitMqSettle {
    pub(crate) fn new(
        session: Arc<Session>,
        acker: Acker,
        delivery_tag: u64,
        message_id: String,
        original: Original,
    ) -> Self {
        Self {
            session,
            acker,
            delivery_tag,
            message_id,
            original,
        }
    }

    fn lost(&self) -> SettleError {
        SettleError::ConnectionLost {
            message_id: self.message_id.clone(),
        }
    }

    fn closing(&self, operation: &'static str) -> SettleError {
        self.broker_error(
            operation,
            "the adapter is closing and takes no new settlements; the broker redelivers the message",
        )
    }

    fn broker_error(&self, operation: &'static str, reason: impl std::fmt::Display) -> SettleError {
        SettleError::Broker {
            operation,
            queue: self.session.ctx.plan.queue.clone(),
            message_id: self.message_id.clone(),
            reason: self.session.ctx.endpoint.redactor.redact(reason),
        }
    }

    /// Turns the outcome of an ack/nack into a settle result. `Ok(false)` is lapin's way of
    /// saying the delivery's channel is gone.
    fn acked(&self, operation: &'static str, outcome: Result<bool, lapin::Error>) -> Result<(), SettleError> {
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost()),
            Err(e) if is_connection_loss(&e) || !self.session.is_alive() => Err(self.lost()),
            Err(e) => Err(self.broker_error(operation, lapin_error(&e))),
        }
    }

    async fn ack(&self) -> Result<(), SettleError> {
        match self.session.acks.ack(self.delivery_tag).await {
            Ok(()) => Ok(()),
            Err(AckFailure::Closed) if self.session.is_closing() => Err(self.closing("ack")),
            Err(AckFailure::Closed) => Err(self.lost()),
            Err(AckFailure::Broker(e)) => self.acked("ack", Err(e)),
            Err(AckFailure::UnknownTag) => Err(self.broker_error(
                "ack",
                format!(
                    "delivery tag {} is not awaiting settlement on this channel; the message is left to the broker",
                    self.delivery_tag
                ),
            )),
        }
    }

    async fn nack(&self, requeue: bool) -> Result<(), SettleError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        let outcome = self.acker.nack(options).await;
        // Sent (or the channel is gone): a later multiple ack may now run past this tag.
        self.session.acks.settled_otherwise(self.delivery_tag);
        self.acked(if requeue { "requeue" } else { "nack" }, outcome)
    }

    /// The original's headers without the ones that describe its last delivery.
    fn carried_headers(&self) -> Headers {
        let mut headers = headers_from_table(self.original.properties.headers().as_ref());
        for name in BROKER_DELIVERY_HEADERS {
            headers.remove(name);
        }
        headers
    }

    async fn publish_copy(
        &self,
        operation: &'static str,
        exchange: &str,
        routing_key: &str,
        headers: &Headers,
        expiration: Option<String>,
    ) -> Result<(), SettleError> {
        let ctx = &self.session.ctx;
        let table = table_for(self.original.properties.headers().as_ref(), headers)
            .map_err(|e| self.broker_error(operation, e))?;
        let properties = copy_properties(&self.original.properties, table, &self.message_id, expiration)
            .map_err(|e| self.broker_error(operation, e))?;
        let channel = match self.session.publish_channel().await {
            Ok(c) => c,
            Err(e) if !self.session.is_alive() || is_connection_loss(&e) => return Err(self.lost()),
            Err(e) => {
                return Err(self.broker_error(
                    operation,
                    format!("cannot open a publishing channel: {}", lapin_error(&e)),
                ));
            }
        };
        let publication = Publication {
            exchange,
            routing_key,
            body: &self.original.body,
            properties,
        };
        match publish_confirmed(&channel, publication, ctx.confirm_timeout).await {
            Ok(()) => Ok(()),
            Err(PublishFailure::NotSent(_)) if !self.session.is_alive() => Err(self.lost()),
            Err(failure) => Err(self.broker_error(
                operation,
                format!(
                    "publishing the copy to exchange {exchange:?} with routing key {routing_key:?} failed: {failure}; \
                     the original stays on the queue and will be redelivered"
                ),
            )),
        }
    }

    async fn requeue_later(
        &self,
        delay: Duration,
        attempt: u32,
        traceparent: Option<String>,
    ) -> Result<(), SettleError> {
        let mut headers = self.carried_headers();
        headers.insert(qt_core::headers::ATTEMPT, attempt.to_string());
        if let Some(traceparent) = traceparent {
            headers.insert(qt_core::headers::TRACEPARENT, traceparent);
        }
        // Whole milliseconds, rounded up so the message never comes back early.
        let millis = delay.as_nanos().div_ceil(1_000_000).max(1);
        let retry_queue = self.session.ctx.plan.retry_queue.clone();
        self.publish_copy(
            "requeue with delay",
            "",
            &retry_queue,
            &headers,
            Some(millis.to_string()),
        )
        .await?;
        self.ack().await
    }

    async fn dead_letter(&self, dead_letter: &DeadLetter) -> Result<(), SettleError> {
        let Some(dlq) = self.session.ctx.plan.dlq.clone() else {
            return Err(SettleError::Unsupported {
                adapter: "rabbitmq",
                operation: "dead-lettering without source.dlq configured (the message stays on the queue)",
            });
        };
        let headers = dead_letter.headers_for(&self.carried_headers(), &self.original.source, &self.message_id);
        self.publish_copy("dead-letter", &dlq.exchange, &dlq.routing_key, &headers, None)
            .await?;
        self.ack().await
    }
}

#[async_trait]
impl Settle for RabbitMqSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), SettleError> {
        // A delivery tag belongs to the channel that issued it; once that channel is gone the
        // broker has requeued the message, and the tag must not be used anywhere else.
        if !self.session.is_alive() || !self.acker.usable() {
            return Err(self.lost());
        }
        let outcome = match settlement {
            // Acks in flight are the ack batcher's to finish when the adapter closes.
            Settlement::Ack => self.ack().await,
            other => match self.session.start_settlement() {
                Some(_in_flight) => self.publish_or_reject(other).await,
                None => Err(self.closing("settle")),
            },
        };
        if outcome.is_err() {
            // The original was neither acked nor rejected (the copy could not be written).
            self.return_to_queue(RETURN_AFTER_FAILED_SETTLE, "its settle failed");
        }
        outcome
    }

    /// Hands the message straight back to the queue.
    fn abandon(self: Box<Self>) {
        self.return_to_queue(Duration::ZERO, "its handle was dropped unsettled");
    }
}

impl RabbitMqSettle {
    /// Every settlement but a plain ack.
    async fn publish_or_reject(&self, settlement: Settlement) -> Result<(), SettleError> {
        match settlement {
            Settlement::Ack => self.ack().await,
            Settlement::Nack => self.nack(false).await,
            Settlement::Requeue {
                delay,
                attempt,
                traceparent,
            } => match delay.filter(|d| !d.is_zero()) {
                // The broker puts the message itself back: it keeps its headers.
                None => self.nack(true).await,
                Some(delay) => self.requeue_later(delay, attempt, traceparent).await,
            },
            Settlement::DeadLetter(dead_letter) => self.dead_letter(&dead_letter).await,
        }
    }

    /// Returns the message to the queue with `basic.nack(requeue)` after `delay`. On a live
    /// channel RabbitMQ would otherwise hold it unacknowledged, out of every consumer's reach,
    /// until the connection closes. Nothing to do when the channel is gone or the delivery
    /// tag was already used.
    fn return_to_queue(self: Box<Self>, delay: Duration, why: &'static str) {
        if !self.session.is_alive() || !self.acker.usable() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                message_id = %self.message_id,
                queue = %self.session.ctx.plan.queue,
                "{why} outside a tokio runtime; the broker redelivers the message when the connection closes"
            );
            return;
        };
        let RabbitMqSettle {
            acker,
            delivery_tag,
            message_id,
            session,
            ..
        } = *self;
        runtime.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if !session.is_alive() {
                return;
            }
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            let queue = &session.ctx.plan.queue;
            let outcome = acker.nack(options).await;
            session.acks.settled_otherwise(delivery_tag);
            match outcome {
                Ok(_) => tracing::debug!(%message_id, %queue, "{why}; message returned to the queue"),
                Err(e) => tracing::debug!(
                    %message_id,
                    %queue,
                    error = %session.ctx.endpoint.redactor.redact(lapin_error(&e)),
                    "{why}; returning the message failed, the broker redelivers it when the channel closes"
                ),
            }
        });
    }
}
