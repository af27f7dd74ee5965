//! Acks as DeleteMessageBatch.
//!
//! Every ack waits for its own entry's outcome, so an ack returns only once SQS has deleted
//! the message. Deletes are gathered for at most [`FLUSH_INTERVAL`] or until ten are
//! waiting (the SQS batch limit), whichever comes first, and several batches may be in
//! flight at once. Entries SQS fails for a reason on its side are retried; entries it
//! refuses (sender fault, e.g. an expired receipt handle) are reported at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until};

use crate::connection::{Failure, classify, describe};

/// Longest an ack waits for others to share its DeleteMessageBatch call.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// SQS's batch limit.
const BATCH_MAX: usize = 10;
/// Batches in flight at once.
const MAX_CONCURRENT_FLUSHES: usize = 16;
/// Attempts per entry (the SDK's own retries of a whole call come on top).
const MAX_ATTEMPTS: u32 = 3;
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

struct DeleteRequest {
    receipt_handle: String,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The sending side; cheap to clone. The batching task ends once every clone is gone.
#[derive(Clone, Debug)]
pub struct Deleter {
    tx: mpsc::UnboundedSender<DeleteRequest>,
}

impl Deleter {
    /// Starts the batching task on the current runtime.
    pub fn start(client: Client, queue_url: Arc<str>) -> Self {
        // Unbounded is safe here: each unsettled delivery (at most max_in_flight) sends
        // at most one request.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, queue_url, rx));
        Self { tx }
    }

    /// Deletes one message; returns once SQS confirmed or refused it.
    pub async fn delete(&self, receipt_handle: String) -> Result<(), String> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(DeleteRequest { receipt_handle, reply })
            .map_err(|_| "the delete batcher has stopped".to_owned())?;
        outcome
            .await
            .unwrap_or_else(|_| Err("the delete batcher stopped before answering".to_owned()))
    }
}

async fn run(client: Client, queue_url: Arc<str>, mut rx: mpsc::UnboundedReceiver<DeleteRequest>) {
    let flushes = Arc::new(Semaphore::new(MAX_CONCURRENT_FLUSHES));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = Instant::now() + FLUSH_INTERVAL;
        while batch.len() < BATCH_MAX {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(request) => batch.push(request),
                    None => break,
                },
                () = sleep_until(deadline) => break,
            }
        }
        let permit = Arc::clone(&flushes)
            .acquire_owned()
            .await
            .expect("the flush semaphore is never closed");
        let client = client.clone();
        let queue_url = Arc::clone(&queue_url);
        tokio::spawn(async move {
            flush(&client, &queue_url, batch).await;
            drop(permit);
        });
    }
}

async fn flush(client: &Client, queue_url: &str, mut pending: Vec<DeleteRequest>) {
    for attempt in 1..=MAX_ATTEMPTS {
        let entries = pending
            .iter()
            .enumerate()
            .map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&r.receipt_handle)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let last = attempt == MAX_ATTEMPTS;
        let mut retry = Vec::new();
        match client
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                tracing::trace!(
                    queue = queue_url,
                    entries = pending.len(),
                    attempt,
                    "DeleteMessageBatch returned"
                );
                let succeeded: HashSet<usize> = out.successful().iter().filter_map(|s| s.id().parse().ok()).collect();
                let failed: HashMap<usize, _> = out
                    .failed()
                    .iter()
                    .filter_map(|f| f.id().parse().ok().map(|i: usize| (i, f)))
                    .collect();
                for (i, request) in pending.into_iter().enumerate() {
                    if succeeded.contains(&i) {
                        let _ = request.reply.send(Ok(()));
                    } else if let Some(f) = failed.get(&i) {
                        let reason = format!("{}: {}", f.code(), f.message().unwrap_or("no detail"));
                        if f.sender_fault() || last {
                            let _ = request.reply.send(Err(reason));
                        } else {
                            retry.push(request);
                        }
                    } else if last {
                        let _ = request
                            .reply
                            .send(Err("SQS did not report on this entry of DeleteMessageBatch".to_owned()));
                    } else {
                        retry.push(request);
                    }
                }
            }
            Err(e) => {
                if last || classify(&e) == Failure::MissingQueue {
                    let reason = describe(&e);
                    for request in pending {
                        let _ = request.reply.send(Err(reason.clone()));
                    }
                } else {
                    tracing::debug!(queue = queue_url, error = %describe(&e), attempt, "DeleteMessageBatch failed; retrying");
                    retry = pending;
                }
            }
        }
        if retry.is_empty() {
            return;
        }
        pending = retry;
        sleep(RETRY_BACKOFF * attempt).await;
    }
}
