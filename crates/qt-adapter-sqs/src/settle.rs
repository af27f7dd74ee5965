//! What settling an SQS message means.
//!
//! | settlement | SQS |
//! |---|---|
//! | ack | DeleteMessageBatch (batched with other acks) |
//! | nack | no delete; visible again after `nack_delay`, so the queue's redrive policy applies |
//! | requeue (delay) | ChangeMessageVisibility(delay): the same message returns later |
//! | dead letter | SendMessage to `dlq_queue_url` with the failure details, then delete |
//!
//! Every settlement first stops the message's visibility heartbeat. A settlement that fails
//! leaves the message invisible until its current visibility timeout ends, after which
//! SQS redelivers it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use qt_core::{DeadLetter, Headers, Settle, SettleError, Settlement, SourceInfo};

use crate::connection::describe;
use crate::lease::Lease;
use crate::queue::QueueCtx;
use crate::send::{Outgoing, send};

/// The settle side of one delivery. Keeps the original body and headers for a dead letter.
pub struct SqsSettle {
    pub ctx: Arc<QueueCtx>,
    pub lease: Lease,
    pub message_id: String,
    pub body: Bytes,
    pub headers: Headers,
    pub source: SourceInfo,
}

impl SqsSettle {
    fn failed(&self, operation: &'static str, reason: String) -> SettleError {
        SettleError::Broker {
            operation,
            queue: self.ctx.url.to_string(),
            message_id: self.message_id.clone(),
            reason,
        }
    }

    async fn change_visibility(&self, operation: &'static str, delay: Duration) -> Result<(), SettleError> {
        self.ctx
            .change_visibility(self.lease.receipt_handle(), delay)
            .await
            .map_err(|e| self.failed(operation, describe(&e)))
    }

    async fn delete(&self) -> Result<(), String> {
        self.ctx.deleter.delete(self.lease.receipt_handle().to_owned()).await
    }

    async fn dead_letter(&self, dead_letter: &DeadLetter) -> Result<(), SettleError> {
        let Some(dlq) = self.ctx.dlq_url.as_deref() else {
            return Err(self.failed(
                "dead-letter",
                "source.dlq_queue_url is not set: configure a DLQ queue for qt to write to, or let the queue's \
                 redrive policy dead-letter failed messages (processing.on_failure: nack)"
                    .to_owned(),
            ));
        };
        let headers = dead_letter.headers_for(&self.headers, &self.source, &self.message_id);
        let fifo = qt_core::config::is_fifo_queue(dlq);
        // On a FIFO DLQ the original id deduplicates a dead letter written twice (a retried
        // settlement) within SQS's five-minute window.
        let outgoing = Outgoing {
            queue_url: dlq,
            body: &self.body,
            headers: &headers,
            group_id: fifo.then(|| self.source.key.as_deref().unwrap_or("qt-dead-letters")),
            deduplication_id: Some(&self.message_id),
        };
        send(&self.ctx.client, outgoing)
            .await
            .map_err(|reason| self.failed("dead-letter", format!("writing to {dlq} failed: {reason}")))?;
        self.delete().await.map_err(|reason| {
            self.failed(
                "dead-letter",
                format!(
                    "the dead letter is in {dlq} but deleting the original failed ({reason}); the original will \
                     be redelivered and may be dead-lettered again"
                ),
            )
        })
    }
}

#[async_trait]
impl Settle for SqsSettle {
    async fn settle(self: Box<Self>, settlement: Settlement) -> Result<(), SettleError> {
        let mut this = *self;
        this.lease.finish().await;
        match settlement {
            Settlement::Ack => this.delete().await.map_err(|reason| this.failed("ack", reason)),
            Settlement::Nack => this.change_visibility("nack", this.ctx.nack_delay).await,
            // SQS cannot rewrite a message, so `attempt` is not stored: the redelivery's
            // ApproximateReceiveCount carries the count instead.
            Settlement::Requeue { delay, .. } => {
                this.change_visibility("requeue", delay.unwrap_or(Duration::ZERO)).await
            }
            Settlement::DeadLetter(dead_letter) => this.dead_letter(&dead_letter).await,
        }
    }

    async fn extend(&self, by: Duration) -> Result<(), SettleError> {
        self.lease
            .extend(by)
            .await
            .map_err(|reason| self.failed("extend the visibility of", reason))
    }

    // Dropping the lease releases the message (see `Lease`'s Drop).
    fn abandon(self: Box<Self>) {}
}
