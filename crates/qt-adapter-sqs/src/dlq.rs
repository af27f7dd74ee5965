//! [`SqsDlq`]: `qt dlq` on the SQS queue at `source.dlq_queue_url`.
//!
//! SQS has no way to look at a message without receiving it, so a session receives the
//! letters like a consumer would, with a visibility timeout long enough for the session
//! ([`SESSION_VISIBILITY`], five minutes, unless [`SqsDlq::with_visibility_timeout`] says
//! otherwise), and deletes none but those it is told to remove. Reading therefore
//! changes this much, for a moment:
//!
//! - letters the session has read are invisible to other readers of the DLQ until the
//!   session closes (close makes them visible again at once, with ChangeMessageVisibility
//!   to 0); a session that is killed leaves them to come back by themselves when the
//!   visibility timeout ends, so nothing is lost either way;
//! - every read raises the letter's ApproximateReceiveCount. A DLQ with a redrive policy of
//!   its own (maxReceiveCount) would pass letters on after that many reads; DLQs normally
//!   have none.
//!
//! A session lasting longer than the visibility timeout lets the letters it read first
//! become visible again: another reader may take them meanwhile, and this session, should
//! it receive one again, does not return it a second time (it knows its MessageId) but
//! keeps its newest receipt handle for `remove` and `close`.
//!
//! # Which letters, in what order
//!
//! `next` receives up to ten letters at a time (long poll of one second, every message and
//! system attribute) and hands them out oldest SentTimestamp first. The session ends at
//! the first receive that returns nothing: SQS answers a long poll empty only when no
//! message is visible, and the letters read are all invisible. Letters sent after the
//! session started (by the SentTimestamp, allowing [`CLOCK_SKEW`] for the difference
//! between this machine's clock and SQS's) are not part of it: they are received, kept
//! invisible and released at close, so that a trigger still dead-lettering, or a replay
//! into the same queue, cannot keep a session going; after [`MAX_NEWER_ONLY_RECEIVES`]
//! receives in a row that brought only such letters the session ends too.
//!
//! Order is best effort on a standard queue (SQS does not keep one), per message group on a
//! FIFO queue. On a FIFO queue SQS hands out a group's later messages only once the earlier
//! ones received are deleted: a session that only reads sees the first letters of each
//! group (at least one, at most ten); one that removes what it reads as it goes (replay,
//! purge) reaches them all.
//!
//! # Mapping
//!
//! | `DlqMessage` | SQS |
//! |---|---|
//! | `id` | MessageId |
//! | `body` | Body |
//! | `headers` | message attributes, `x-qt-headers` unfolded, plus the `x-sqs-*` headers a consumer sees |
//! | `key` | MessageGroupId (FIFO) |
//! | `timestamp` | SentTimestamp |
//!
//! `remove` is DeleteMessage with the letter's receipt handle, at once. Replaying goes
//! through [`SqsPublisher`](crate::SqsPublisher): SendMessage to the original queue (its
//! URL, from `x-qt-original-queue`) or the queue given instead (URL or name), with the
//! letter's group id and, on FIFO queues, the replay's own deduplication id; then the
//! letter is deleted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, Utc};
use qt_core::config::SqsSourceConfig;
use qt_core::{AdapterError, AdapterSettings, DlqMessage, DlqReader};

use crate::connection::{Failure, classify, classify_code, describe, resolve_queue_url, sdk_client};
use crate::message;
use crate::queue::visibility_seconds;

/// How long letters a session has read stay invisible to other readers unless the session
/// closes first: long enough to list or replay a DLQ of some thousands of letters.
pub const SESSION_VISIBILITY: Duration = Duration::from_secs(5 * 60);
/// How far this machine's clock may be behind SQS's before letters sent just before the
/// session started are taken for newer ones (and ahead of it before newer ones join in).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Receives in a row that bring only letters newer than the session, after which the
/// session ends although the queue still answers.
pub const MAX_NEWER_ONLY_RECEIVES: u32 = 3;
/// The long-poll wait of each receive. Long polling asks every SQS server, so an empty
/// answer means no message is visible (a short poll can miss some).
const RECEIVE_WAIT_SECONDS: i32 = 1;
/// SQS's limit on messages per receive and entries per batch.
const BATCH: usize = 10;
const FIELD: &str = "source.dlq_queue_url";

/// One session on an SQS dead-letter queue; see the module documentation.
pub struct SqsDlq {
    client: Client,
    url: Arc<str>,
    visibility_timeout: Duration,
    started_at: DateTime<Utc>,
    /// Letters received and not handed out yet, oldest first.
    buffer: VecDeque<DlqMessage>,
    /// Everything this session holds invisible, by MessageId: the newest receipt handle.
    held: HashMap<String, String>,
    /// MessageIds by `seq`; `None` once removed.
    letters: Vec<Option<String>>,
    /// Message ids seen, removed ones included, so a letter is handed out once.
    seen: HashSet<String>,
    newer_only_receives: u32,
    done: bool,
}

impl SqsDlq {
    /// A session on `cfg.dlq_queue_url`, credentials from the standard AWS provider chain.
    /// Checks that the queue exists and can be read; nothing is received yet.
    pub async fn open(cfg: &SqsSourceConfig, settings: &AdapterSettings) -> Result<Self, AdapterError> {
        Self::build(cfg, settings, None).await
    }

    /// [`open`](SqsDlq::open) with the given credentials provider instead of the chain.
    pub async fn with_credentials(
        cfg: &SqsSourceConfig,
        settings: &AdapterSettings,
        credentials: impl ProvideCredentials + 'static,
    ) -> Result<Self, AdapterError> {
        Self::build(cfg, settings, Some(SharedCredentialsProvider::new(credentials))).await
    }

    /// How long letters read stay invisible to other readers if the session does not
    /// close (default [`SESSION_VISIBILITY`]; whole seconds, at most 12 hours).
    #[must_use]
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    async fn build(
        cfg: &SqsSourceConfig,
        settings: &AdapterSettings,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Result<Self, AdapterError> {
        let Some(dlq) = cfg.dlq_queue_url.as_deref() else {
            return Err(AdapterError::Config {
                field: FIELD.to_owned(),
                reason: "not set: `qt dlq` reads the queue qt dead-letters to; set it to the DLQ's URL or name \
                         (also the redrive target of the queue's own redrive policy, if that is where the \
                         letters are)"
                    .to_owned(),
            });
        };
        let client = sdk_client(cfg, settings.require_tls, credentials).await?;
        let url = resolve_queue_url(&client, dlq, FIELD).await?;
        client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| access_error(&url, "reading its attributes", &e))?;
        tracing::trace!(queue = %url, "GetQueueAttributes returned");
        Ok(Self {
            client,
            url: Arc::from(url),
            visibility_timeout: SESSION_VISIBILITY,
            started_at: Utc::now(),
            buffer: VecDeque::new(),
            held: HashMap::new(),
            letters: Vec::new(),
            seen: HashSet::new(),
            newer_only_receives: 0,
            done: false,
        })
    }

    /// One receive: the letters of this session it brought, oldest first. Sets `done` when
    /// the session has no more.
    async fn receive(&mut self) -> Result<Vec<DlqMessage>, AdapterError> {
        let out = self
            .client
            .receive_message()
            .queue_url(self.url.as_ref())
            .max_number_of_messages(i32::try_from(BATCH).expect("10 fits"))
            .wait_time_seconds(RECEIVE_WAIT_SECONDS)
            .visibility_timeout(visibility_seconds(self.visibility_timeout))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| access_error(&self.url, "receiving", &e))?;
        let messages = out.messages.unwrap_or_default();
        tracing::trace!(queue = %self.url, got = messages.len(), "ReceiveMessage returned");
        if messages.is_empty() {
            self.done = true;
            return Ok(Vec::new());
        }
        let (mut fresh, mut newer) = (Vec::new(), 0usize);
        let received_at = Utc::now();
        for m in messages {
            let inbound = match message::convert(m, &self.url, received_at) {
                Ok(inbound) => inbound,
                Err(missing) => {
                    // Without an id or receipt handle it can be neither told apart nor
                    // released; it comes back when its visibility timeout ends.
                    tracing::warn!(queue = %self.url, %missing, "SQS returned a message it cannot be read by; skipped");
                    continue;
                }
            };
            let raw = inbound.message;
            let id = raw.message_id.clone();
            self.held.insert(id.clone(), inbound.receipt_handle);
            if !self.seen.insert(id.clone()) {
                continue;
            }
            if !in_session(raw.broker_timestamp, self.started_at) {
                newer += 1;
                continue;
            }
            fresh.push(DlqMessage {
                seq: 0,
                id,
                body: raw.body,
                headers: raw.headers,
                key: raw.source.key,
                timestamp: raw.broker_timestamp,
            });
        }
        if fresh.is_empty() && newer > 0 {
            self.newer_only_receives += 1;
            if self.newer_only_receives >= MAX_NEWER_ONLY_RECEIVES {
                tracing::debug!(queue = %self.url, "only letters newer than the session arrive; the session ends");
                self.done = true;
            }
        } else {
            self.newer_only_receives = 0;
        }
        // Stable: letters of one FIFO group sent in the same millisecond keep SQS's order.
        fresh.sort_by_key(|l| l.timestamp);
        for letter in &mut fresh {
            letter.seq = self.letters.len() as u64;
            self.letters.push(Some(letter.id.clone()));
        }
        Ok(fresh)
    }

    /// Makes every letter still held visible again, ten to a request; the error names
    /// those that could not be.
    async fn release_all(&mut self) -> Result<(), AdapterError> {
        let held: Vec<(String, String)> = self.held.drain().collect();
        let mut failed: Vec<String> = Vec::new();
        for chunk in held.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (_, receipt_handle))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt_handle)
                        .visibility_timeout(0)
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect();
            match self
                .client
                .change_message_visibility_batch()
                .queue_url(self.url.as_ref())
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    tracing::trace!(queue = %self.url, entries = chunk.len(), "ChangeMessageVisibilityBatch returned");
                    for f in out.failed() {
                        // A receipt no longer valid belongs to a letter that is visible
                        // already or was taken by another reader: nothing to hand back.
                        if classify_code(Some(f.code())) == Failure::NotRetryable {
                            continue;
                        }
                        let id = f.id().parse::<usize>().ok().and_then(|i| chunk.get(i));
                        failed.push(format!(
                            "{}: {}: {}",
                            id.map_or("?", |(message_id, _)| message_id.as_str()),
                            f.code(),
                            f.message().unwrap_or("no detail")
                        ));
                    }
                }
                Err(e) => failed.extend(chunk.iter().map(|(id, _)| format!("{id}: {}", describe(&e)))),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        Err(AdapterError::Other {
            what: format!("making {} letters of {} visible again", failed.len(), self.url),
            reason: format!(
                "{}. Nothing is lost: they become visible by themselves within {}s of when this session read them",
                failed.join("; "),
                visibility_seconds(self.visibility_timeout)
            ),
        })
    }
}

/// Whether a letter SQS took at `sent` was there when the session started at `started`
/// (a letter without SentTimestamp counts as there).
fn in_session(sent: Option<DateTime<Utc>>, started: DateTime<Utc>) -> bool {
    let skew = chrono::Duration::from_std(CLOCK_SKEW).expect("a few seconds");
    sent.is_none_or(|sent| sent <= started + skew)
}

fn access_error<E, R>(url: &str, doing: &str, err: &SdkError<E, R>) -> AdapterError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match classify(err) {
        Failure::MissingQueue => AdapterError::MissingResource {
            queue: format!("{url} ({FIELD})"),
            reason: describe(err),
        },
        Failure::Unreachable => AdapterError::Connect {
            endpoint: url.to_owned(),
            reason: format!("{doing} failed: {}", describe(err)),
        },
        _ => AdapterError::Other {
            what: format!("{doing} {url} ({FIELD})"),
            reason: describe(err),
        },
    }
}

impl fmt::Debug for SqsDlq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsDlq")
            .field("queue", &self.url)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("read", &self.letters.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DlqReader for SqsDlq {
    fn name(&self) -> &str {
        &self.url
    }

    async fn next(&mut self) -> Result<Option<DlqMessage>, AdapterError> {
        loop {
            if let Some(letter) = self.buffer.pop_front() {
                return Ok(Some(letter));
            }
            if self.done {
                return Ok(None);
            }
            let fresh = self.receive().await?;
            self.buffer.extend(fresh);
        }
    }

    async fn remove(&mut self, letter: &DlqMessage) -> Result<(), AdapterError> {
        let what = || format!("removing dead letter {} from {}", letter.id, self.url);
        let slot = usize::try_from(letter.seq).ok().and_then(|seq| self.letters.get(seq));
        match slot {
            Some(Some(id)) if *id == letter.id => {}
            // Removed already.
            Some(None) => return Ok(()),
            _ => {
                return Err(AdapterError::Other {
                    what: what(),
                    reason: "this session did not read it".to_owned(),
                });
            }
        }
        let Some(receipt_handle) = self.held.get(&letter.id) else {
            return Err(AdapterError::Other {
                what: what(),
                reason: "this session no longer holds it".to_owned(),
            });
        };
        let result = self
            .client
            .delete_message()
            .queue_url(self.url.as_ref())
            .receipt_handle(receipt_handle)
            .send()
            .await;
        if let Err(e) = result {
            let reason = match classify(&e) {
                Failure::NotRetryable => format!(
                    "{}; the session read it more than {}s ago, so another reader may have taken it since",
                    describe(&e),
                    visibility_seconds(self.visibility_timeout)
                ),
                _ => describe(&e),
            };
            return Err(AdapterError::Other { what: what(), reason });
        }
        tracing::trace!(queue = %self.url, message_id = %letter.id, "DeleteMessage returned");
        self.held.remove(&letter.id);
        if let Some(slot) = usize::try_from(letter.seq)
            .ok()
            .and_then(|seq| self.letters.get_mut(seq))
        {
            *slot = None;
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> Result<(), AdapterError> {
        self.release_all().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_sent_after_the_session_started_are_not_part_of_it_beyond_the_clock_skew() {
        let started = Utc::now();
        let at = |secs: i64| Some(started + chrono::Duration::seconds(secs));
        assert!(in_session(at(-60), started));
        assert!(in_session(at(0), started));
        assert!(in_session(at(5), started), "within the allowed clock skew");
        assert!(!in_session(at(6), started));
        assert!(in_session(None, started), "no SentTimestamp: counted as there");
    }

    #[tokio::test]
    async fn a_source_without_a_dlq_queue_is_refused_naming_the_field() {
        let cfg = SqsSourceConfig {
            queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/orders".into(),
            region: "us-east-1".into(),
            ..SqsSourceConfig::default()
        };
        let err = SqsDlq::open(&cfg, &AdapterSettings::new("t", 1, 1))
            .await
            .expect_err("no DLQ configured")
            .to_string();
        assert!(err.contains("source.dlq_queue_url") && err.contains("not set"), "{err}");
    }
}
