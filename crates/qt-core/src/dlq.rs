//! Reading and emptying a dead-letter destination: the broker side of `qt dlq`.
//!
//! A [`DlqReader`] is one session on a dead-letter destination (Kafka topic, RabbitMQ queue,
//! SQS queue, mock file). It walks the letters that were there when it started, oldest first,
//! and removes only those its caller names. Reading changes nothing an operator would notice:
//! every letter the session did not remove is in the destination as before when the session
//! ends, and also when the process dies part way.
//!
//! Replaying a letter is: publish [`DlqReader::replay_message`] with the broker's
//! confirmation, then [`DlqReader::remove`] it. Stopped anywhere in between, each letter is
//! still dead-lettered, or replayed, or both (a duplicate the dedup window absorbs) — never
//! neither.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::adapter::{AdapterError, OutgoingMessage};
use crate::headers::{ATTEMPT, Headers, REPLAYS, dead_letter};

/// One letter read from a dead-letter destination.
#[derive(Clone, Debug)]
pub struct DlqMessage {
    /// The letter's place in this session, counted from 0: what [`DlqReader::remove`] is told.
    pub seq: u64,
    /// The letter's id in the destination, for `qt dlq show`: Kafka `partition:offset`, the
    /// RabbitMQ message id, the SQS MessageId, the mock letter's `id`.
    pub id: String,
    pub body: Bytes,
    pub headers: Headers,
    /// Kafka key / RabbitMQ routing key / SQS MessageGroupId.
    pub key: Option<String>,
    /// When the broker took the letter, where it records that.
    pub timestamp: Option<DateTime<Utc>>,
}

/// What the `x-qt-*` headers qt writes on a dead letter say, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeadLetterDetails {
    pub reason: Option<String>,
    pub error_class: Option<String>,
    /// Agent attempts made before it was dead-lettered.
    pub attempts: Option<u32>,
    pub original_queue: Option<String>,
    pub original_partition: Option<i32>,
    pub original_offset: Option<i64>,
    pub original_message_id: Option<String>,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Times `qt dlq replay` has already put it back (0 when never).
    pub replays: u32,
}

impl DlqMessage {
    pub fn details(&self) -> DeadLetterDetails {
        let text = |name: &str| self.headers.get(name).map(str::to_owned);
        fn number<T: std::str::FromStr>(headers: &Headers, name: &str) -> Option<T> {
            headers.get(name).and_then(|v| v.trim().parse().ok())
        }
        let h = &self.headers;
        let time = |name: &str| {
            self.headers
                .get(name)
                .and_then(|v| DateTime::parse_from_rfc3339(v.trim()).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        DeadLetterDetails {
            reason: text(dead_letter::REASON),
            error_class: text(dead_letter::ERROR_CLASS),
            attempts: number(h, dead_letter::ATTEMPTS),
            original_queue: text(dead_letter::ORIGINAL_QUEUE),
            original_partition: number(h, dead_letter::ORIGINAL_PARTITION),
            original_offset: number(h, dead_letter::ORIGINAL_OFFSET),
            original_message_id: text(dead_letter::ORIGINAL_MESSAGE_ID),
            first_failure_at: time(dead_letter::FIRST_FAILURE_AT),
            last_failure_at: time(dead_letter::LAST_FAILURE_AT),
            replays: number(h, REPLAYS).unwrap_or(0),
        }
    }

    /// Where a replay of the letter goes: `to` when given, else the queue it came from
    /// (`x-qt-original-queue`).
    pub fn replay_destination(&self, to: Option<&str>) -> Result<String, AdapterError> {
        to.map(str::to_owned)
            .or_else(|| self.details().original_queue)
            .ok_or_else(|| AdapterError::Other {
                what: format!("replaying dead letter {}", self.id),
                reason: format!(
                    "it has no {} header saying where it came from; give the destination with --to",
                    dead_letter::ORIGINAL_QUEUE
                ),
            })
    }

    /// The letter as a message for `destination` (a queue or topic): its original headers
    /// without the dead-letter ones and without qt's requeue count, so it gets a fresh set of
    /// tries, and with the replay count one higher. Body and key are unchanged.
    pub fn replayed_to(&self, destination: impl Into<String>) -> OutgoingMessage {
        let replays = self.details().replays.saturating_add(1);
        let mut headers = self.headers.clone();
        for name in dead_letter::ALL {
            headers.remove(name);
        }
        headers.remove(ATTEMPT);
        headers.insert(REPLAYS, replays.to_string());
        let original_id = self.headers.get(dead_letter::ORIGINAL_MESSAGE_ID).unwrap_or(&self.id);
        OutgoingMessage {
            body: self.body.clone(),
            headers,
            key: self.key.clone(),
            destination: Some(destination.into()),
            // Replays of one letter differ, so a broker that de-duplicates on its own (SQS
            // FIFO) accepts each; a retried publish of the same replay is still one message.
            deduplication_id: Some(format!("{original_id}.replay-{replays}")),
        }
    }
}

/// One session on a dead-letter destination; see the module documentation.
#[async_trait]
pub trait DlqReader: Send {
    /// The destination, for messages: topic, queue name or URL, file path.
    fn name(&self) -> &str;

    /// The next letter that was in the destination when the session started, oldest first;
    /// `None` after the last. Reading alone changes nothing.
    async fn next(&mut self) -> Result<Option<DlqMessage>, AdapterError>;

    /// The message that puts `letter` back on its original queue, or on `to` (a queue or
    /// topic of this broker) when given, for this broker's [`Publisher`](crate::Publisher).
    fn replay_message(&self, letter: &DlqMessage, to: Option<&str>) -> Result<OutgoingMessage, AdapterError> {
        Ok(letter.replayed_to(letter.replay_destination(to)?))
    }

    /// Takes a letter this session read out of the destination. It is gone for good once
    /// [`close`](DlqReader::close) has returned; a session that ends another way may leave it
    /// in place (then it is replayed, or listed, again).
    async fn remove(&mut self, letter: &DlqMessage) -> Result<(), AdapterError>;

    /// Ends the session: removals are final, and every letter read and not removed is in the
    /// destination as it was.
    async fn close(self: Box<Self>) -> Result<(), AdapterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)]) -> DlqMessage {
        DlqMessage {
            seq: 0,
            id: "0:7".to_owned(),
            body: Bytes::from_static(b"{}"),
            headers: headers.iter().copied().collect(),
            key: Some("k".to_owned()),
            timestamp: None,
        }
    }

    #[test]
    fn details_decode_the_headers_qt_writes_and_ignore_what_does_not_parse() {
        let l = letter(&[
            (dead_letter::REASON, "agent failed: boom"),
            (dead_letter::ERROR_CLASS, "permanent"),
            (dead_letter::ATTEMPTS, "3"),
            (dead_letter::ORIGINAL_QUEUE, "orders"),
            (dead_letter::ORIGINAL_PARTITION, "2"),
            (dead_letter::ORIGINAL_OFFSET, "not a number"),
            (dead_letter::FIRST_FAILURE_AT, "2026-12-06T01:00:00Z"),
            (REPLAYS, "1"),
        ]);
        let d = l.details();
        assert_eq!(d.reason.as_deref(), Some("agent failed: boom"));
        assert_eq!(d.error_class.as_deref(), Some("permanent"));
        assert_eq!(d.attempts, Some(3));
        assert_eq!(d.original_queue.as_deref(), Some("orders"));
        assert_eq!(d.original_partition, Some(2));
        assert_eq!(d.original_offset, None);
        assert_eq!(
            d.first_failure_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-06T01:00:00+00:00")
        );
        assert_eq!(d.last_failure_at, None);
        assert_eq!(d.replays, 1);
    }

    #[test]
    fn a_replay_drops_the_dead_letter_headers_and_requeue_count_and_counts_itself() {
        let l = letter(&[
            ("x-tenant-id", "acme"),
            (dead_letter::REASON, "boom"),
            (dead_letter::ORIGINAL_QUEUE, "orders"),
            (dead_letter::ORIGINAL_MESSAGE_ID, "m-1"),
            (ATTEMPT, "4"),
            ("X-QT-REPLAYS", "2"),
        ]);
        let out = l.replayed_to("orders");
        let headers: Vec<_> = out.headers.iter().collect();
        assert_eq!(headers, [("x-tenant-id", "acme"), (REPLAYS, "3")]);
        assert_eq!(out.destination.as_deref(), Some("orders"));
        assert_eq!(out.key.as_deref(), Some("k"));
        assert_eq!(out.body, l.body);
        assert_eq!(out.deduplication_id.as_deref(), Some("m-1.replay-3"));
    }

    struct Empty;

    #[async_trait]
    impl DlqReader for Empty {
        fn name(&self) -> &str {
            "dlq"
        }
        async fn next(&mut self) -> Result<Option<DlqMessage>, AdapterError> {
            Ok(None)
        }
        async fn remove(&mut self, _: &DlqMessage) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn close(self: Box<Self>) -> Result<(), AdapterError> {
            Ok(())
        }
    }

    #[test]
    fn a_replay_goes_to_the_original_queue_unless_told_where_and_needs_one_of_them() {
        let with_origin = letter(&[(dead_letter::ORIGINAL_QUEUE, "orders")]);
        let to = |l: &DlqMessage, to| Empty.replay_message(l, to).map(|m| m.destination.unwrap());
        assert_eq!(to(&with_origin, None).unwrap(), "orders");
        assert_eq!(to(&with_origin, Some("orders-v2")).unwrap(), "orders-v2");
        let without = letter(&[]);
        let err = to(&without, None).unwrap_err().to_string();
        assert!(err.contains("x-qt-original-queue") && err.contains("--to"), "{err}");
        assert_eq!(to(&without, Some("orders")).unwrap(), "orders");
    }
}
