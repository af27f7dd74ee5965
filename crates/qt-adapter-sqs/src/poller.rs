//! Long-poll loops feeding the adapter's buffer.
//!
//! Each poller takes in-flight permits before it asks SQS for messages (one per message it
//! asks for, at least one, at most `max_messages`), so messages buffered plus messages the
//! engine holds never exceed `max_in_flight`: nothing sits in a buffer with its visibility
//! timeout running while the engine has no room for it. A permit is returned when its
//! message is settled or dropped.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use chrono::Utc;
use qt_core::{Backoff, RawMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep};

use crate::connection::{Failure, classify, describe};
use crate::health::Status;
use crate::lease::Lease;
use crate::message;
use crate::queue::QueueCtx;

/// The pause after each of a run of failed receives.
const RECEIVE_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    multiplier: 2.0,
    max: Duration::from_secs(5),
    jitter: 0.0,
};
/// How long close waits for a receive already under way to answer. A long poll on a quiet
/// queue answers only when its wait ends, so this bounds how much later close returns.
const CLOSE_RECEIVE_GRACE: Duration = Duration::from_secs(2);

/// A received message waiting in the buffer, its visibility already under watch.
pub struct Received {
    pub message: RawMessage,
    pub lease: Lease,
}

pub struct Poller {
    pub ctx: Arc<QueueCtx>,
    pub wait_time_seconds: i32,
    pub max_messages: usize,
    /// Sent with each receive when configured; otherwise the queue's own applies.
    pub visibility_timeout_seconds: Option<i32>,
    pub permits: Arc<Semaphore>,
    pub tx: mpsc::Sender<Received>,
    pub status: Arc<Status>,
    pub paused: watch::Receiver<bool>,
}

impl Poller {
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            if !self.wait_while_paused().await {
                return;
            }
            let Some(permit) = self.take_permits().await else {
                return;
            };
            let want = permit.num_permits();
            let mut request = self
                .ctx
                .client
                .receive_message()
                .queue_url(self.ctx.url.as_ref())
                .max_number_of_messages(i32::try_from(want).expect("at most 10"))
                .wait_time_seconds(self.wait_time_seconds)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All");
            if let Some(timeout) = self.visibility_timeout_seconds {
                request = request.visibility_timeout(timeout);
            }
            let send = request.send();
            tokio::pin!(send);
            let result = tokio::select! {
                biased;
                () = self.ctx.shutdown.cancelled() => {
                    // A receive under way may already have taken messages, which SQS keeps
                    // invisible for their timeout: waiting (briefly) for its answer buffers
                    // them, so close hands them back at once.
                    if let Ok(Ok(out)) = tokio::time::timeout(CLOSE_RECEIVE_GRACE, &mut send).await {
                        self.buffer(out.messages.unwrap_or_default(), permit).await;
                    }
                    return;
                }
                r = &mut send => r,
            };
            match result {
                Ok(out) => {
                    self.status.receiving();
                    failures = 0;
                    let messages = out.messages.unwrap_or_default();
                    tracing::trace!(queue = %self.ctx.url, asked = want, got = messages.len(), "ReceiveMessage returned");
                    if !self.buffer(messages, permit).await {
                        return;
                    }
                }
                Err(e) => {
                    drop(permit);
                    let reason = match classify(&e) {
                        Failure::Unreachable => format!("cannot reach the SQS endpoint: {}", describe(&e)),
                        Failure::MissingQueue => {
                            format!("the queue does not exist or is not accessible: {}", describe(&e))
                        }
                        _ => describe(&e),
                    };
                    let backoff = RECEIVE_BACKOFF.base(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(queue = %self.ctx.url, error = %reason, retry_in = ?backoff, "ReceiveMessage failed");
                    self.status.failing(reason);
                    tokio::select! {
                        () = self.ctx.shutdown.cancelled() => return,
                        () = sleep(backoff) => {}
                    }
                }
            }
        }
    }

    /// Returns false once the adapter is shutting down.
    async fn wait_while_paused(&mut self) -> bool {
        loop {
            if self.ctx.shutdown.is_cancelled() {
                return false;
            }
            if !*self.paused.borrow_and_update() {
                return true;
            }
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => return false,
                changed = self.paused.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// At least one permit (waiting for it), plus as many more as are free up to
    /// `max_messages`.
    async fn take_permits(&self) -> Option<OwnedSemaphorePermit> {
        let mut permit = tokio::select! {
            biased;
            () = self.ctx.shutdown.cancelled() => return None,
            p = Arc::clone(&self.permits).acquire_owned() => p.expect("the in-flight semaphore is never closed"),
        };
        let extra = self.permits.available_permits().min(self.max_messages - 1);
        if extra > 0
            && let Ok(more) = Arc::clone(&self.permits).try_acquire_many_owned(u32::try_from(extra).expect("at most 9"))
        {
            permit.merge(more);
        }
        Some(permit)
    }

    /// Puts received messages in the buffer, in the order SQS returned them (FIFO group
    /// order), one permit each. Returns false when the adapter's receiving side is gone.
    async fn buffer(&self, mut messages: Vec<aws_sdk_sqs::types::Message>, mut permit: OwnedSemaphorePermit) -> bool {
        let received = Instant::now();
        let received_at = Utc::now();
        let asked = permit.num_permits();
        if messages.len() > asked {
            // Never expected; the extra messages return after their visibility timeout.
            tracing::warn!(queue = %self.ctx.url, asked, got = messages.len(), "ReceiveMessage returned more messages than asked for");
            messages.truncate(asked);
        }
        if messages.is_empty() {
            return true;
        }
        if asked > messages.len() {
            drop(permit.split(asked - messages.len()));
        }
        let mut permits = Vec::with_capacity(messages.len());
        for _ in 1..messages.len() {
            permits.push(permit.split(1).expect("one permit per message was taken"));
        }
        permits.push(permit);
        for (sqs_message, message_permit) in messages.into_iter().zip(permits) {
            let inbound = match message::convert(sqs_message, &self.ctx.url, received_at) {
                Ok(inbound) => inbound,
                Err(why) => {
                    tracing::warn!(queue = %self.ctx.url, why, "skipping a message SQS sent incomplete");
                    continue;
                }
            };
            let lease = Lease::start(
                Arc::clone(&self.ctx),
                inbound.receipt_handle,
                inbound.message.message_id.clone(),
                received,
                message_permit,
            );
            let item = Received {
                message: inbound.message,
                lease,
            };
            // Never waits: the buffer holds max_in_flight items and every item holds a permit.
            if self.tx.send(item).await.is_err() {
                return false;
            }
        }
        true
    }
}
