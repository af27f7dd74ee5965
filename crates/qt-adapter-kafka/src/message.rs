//! Kafka records in and out: a consumed record becomes the exact bytes needed to
//! re-produce it ([`RecordBytes`]), and from those a [`RawMessage`]; an outgoing record is
//! built from those bytes.
//!
//! The consumer thread copies a record out of librdkafka once, into one buffer holding its
//! key, value and headers, and allocates nothing else. The engine's thread that receives
//! the message makes its strings (headers, key, id) from that buffer, and the message body
//! is a slice of it, so the consumer thread allocates once per record (ARCHITECTURE.md,
//! hot-path rule 2).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use qt_core::{RawMessage, SourceInfo};
use rdkafka::Message;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Header, Headers as _, OwnedHeaders};

use crate::record::not_before_millis;
pub use crate::record::{RecordBuilder, RecordBytes, decoded_headers, header_len, text};
use crate::state::{Origin, Pending, TopicPartition};

/// Header carrying the earliest time (Unix epoch milliseconds) a requeued message may be
/// processed. Written by a delayed requeue, honoured by qt's Kafka consumer.
pub const NOT_BEFORE: &str = "x-qt-not-before";

/// The stable message id of a Kafka record. Built on every consumed record, so the numbers
/// are written with `itoa` rather than through `fmt`.
pub fn message_id(topic: &str, partition: i32, offset: i64) -> String {
    let mut digits = itoa::Buffer::new();
    let mut id = String::with_capacity(topic.len() + 24);
    id.push_str(topic);
    id.push('/');
    id.push_str(digits.format(partition));
    id.push('/');
    id.push_str(digits.format(offset));
    id
}

/// What every record of one poll batch shares.
#[derive(Debug)]
pub struct Batch {
    pub received_at: DateTime<Utc>,
    pub now_wall: SystemTime,
    pub now: Instant,
}

/// Takes a consumed record in: copies its key, value and headers into one buffer and
/// nothing else (see [`Pending`]). `topic` is the poll batch's copy of the topic name.
/// Returns the pending message and, for a requeued message whose delay has not passed,
/// when it is due.
pub fn from_kafka(msg: &BorrowedMessage<'_>, topic: Arc<str>, batch: &Batch) -> (Pending, Option<Instant>) {
    let mut not_before = None;
    let (record, unreadable) = copy_record(msg, |key, value| {
        if key.eq_ignore_ascii_case(NOT_BEFORE) && not_before.is_none() {
            not_before = value.and_then(|v| due_in(v, batch));
        }
    });
    let origin = Origin {
        tp: TopicPartition {
            topic,
            partition: msg.partition(),
        },
        offset: msg.offset(),
        epoch: 0,
        record,
        unreadable,
    };
    let pending = Pending {
        origin,
        broker_timestamp_ms: msg.timestamp().to_millis(),
        received_at: batch.received_at,
        redelivered: false,
    };
    (pending, not_before)
}

/// When an `x-qt-not-before` value (Unix epoch milliseconds) is due, if it is still ahead.
fn due_in(value: &[u8], batch: &Batch) -> Option<Instant> {
    let ms = not_before_millis(value)?;
    let due = UNIX_EPOCH + Duration::from_millis(ms);
    let wait = due.duration_since(batch.now_wall).ok().filter(|d| !d.is_zero())?;
    Some(batch.now + wait)
}

/// The message the engine receives for a pending record, made on the engine's thread.
/// `adapter` is the receiving batch's copy of the adapter name.
pub fn raw_message(pending: &Pending, adapter: &Arc<str>) -> RawMessage {
    let Origin {
        tp,
        offset,
        record,
        unreadable,
        ..
    } = &pending.origin;
    let headers = decoded_headers(record);
    let source = SourceInfo {
        adapter: adapter.clone(),
        queue: tp.topic.clone(),
        partition: Some(tp.partition),
        offset: Some(*offset),
        key: record.key().map(text),
        delivery_count: None,
        redelivered: pending.redelivered,
    };
    RawMessage {
        message_id: message_id(&tp.topic, tp.partition, *offset),
        body: record.payload_bytes(),
        headers,
        broker_timestamp: pending
            .broker_timestamp_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis),
        received_at: pending.received_at,
        source,
        unreadable: unreadable.as_ref().map(|u| u.reason.clone()),
    }
}

/// Copies a record read outside the consumer thread (no `x-qt-not-before` handling).
pub fn record_of(msg: &BorrowedMessage<'_>) -> (RecordBytes, Option<Arc<UnreadableHeaders>>) {
    copy_record(msg, |_, _| {})
}

/// The headers of a record that has a header qt cannot read: one whose key is not UTF-8.
/// Kafka's protocol makes header keys strings, but a broker stores whatever a producer
/// sends, and rdkafka 0.39 panics on reading such a key. The record's copy in
/// [`RecordBytes`] lacks those headers, so these are librdkafka's own copy of all of them,
/// which re-producing the record sends instead, byte for byte.
#[derive(Debug)]
pub struct UnreadableHeaders {
    /// Which headers could not be read, for the ledger and the logs.
    pub reason: String,
    pub headers: OwnedHeaders,
}

/// Header `index`, or `None` when its key is not UTF-8 (rdkafka panics reading it). The
/// panic is rdkafka's `unwrap` in safe code, after librdkafka has returned, so nothing is
/// left half done when it unwinds here.
fn header_at(headers: &BorrowedHeaders, index: usize) -> Option<Header<'_, &[u8]>> {
    catch_unwind(AssertUnwindSafe(|| headers.try_get(index))).ok().flatten()
}

/// Copies a record's key, value and readable headers into one buffer, showing `each`
/// every header on the way; and, when a header could not be read, all the headers as
/// librdkafka holds them.
fn copy_record(
    msg: &BorrowedMessage<'_>,
    mut each: impl FnMut(&str, Option<&[u8]>),
) -> (RecordBytes, Option<Arc<UnreadableHeaders>>) {
    let Some(headers) = msg.headers() else {
        return (RecordBuilder::new(msg.key(), msg.payload(), 0).finish(), None);
    };
    let count = headers.count();
    let header_bytes = (0..count)
        .filter_map(|i| header_at(headers, i))
        .map(|h| header_len(h.key, h.value))
        .sum();
    let mut builder = RecordBuilder::new(msg.key(), msg.payload(), header_bytes);
    let mut which = Vec::new();
    for i in 0..count {
        match header_at(headers, i) {
            Some(h) => {
                builder.header(h.key, h.value);
                each(h.key, h.value);
            }
            None => which.push(i.to_string()),
        }
    }
    let unreadable = (!which.is_empty()).then(|| {
        Arc::new(UnreadableHeaders {
            reason: format!(
                "Kafka header {} (counting from 0, of {count}) has a key that is not UTF-8; header keys are strings in Kafka's protocol, so the producer that wrote this record is at fault",
                which.join(", ")
            ),
            headers: headers.detach(),
        })
    });
    (builder.finish(), unreadable)
}

/// The headers for re-producing a consumed record: its own minus `replaced` names
/// (compared without ASCII case), followed by `extra`. A record with an unreadable header
/// keeps all of its headers as they came, `replaced` ones too, since they cannot be read
/// one by one to leave some out; `extra` follows them.
pub fn reproduced_headers<K: AsRef<str>, V: AsRef<str>>(
    record: &RecordBytes,
    unreadable: Option<&UnreadableHeaders>,
    replaced: &[&str],
    extra: impl IntoIterator<Item = (K, V)>,
) -> OwnedHeaders {
    match unreadable {
        Some(u) => append(u.headers.clone(), extra),
        None => outgoing_headers(record.headers(), replaced, extra),
    }
}

/// Builds librdkafka headers from the original headers minus `replaced` names (compared
/// without ASCII case), followed by `extra`.
pub fn outgoing_headers<'a, K: AsRef<str>, V: AsRef<str>>(
    original: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
    replaced: &[&str],
    extra: impl IntoIterator<Item = (K, V)>,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(original.size_hint().0 + 4);
    for (k, v) in original {
        if replaced.iter().any(|r| r.eq_ignore_ascii_case(k)) {
            continue;
        }
        out = out.insert(Header { key: k, value: v });
    }
    append(out, extra)
}

fn append<K: AsRef<str>, V: AsRef<str>>(
    mut out: OwnedHeaders,
    extra: impl IntoIterator<Item = (K, V)>,
) -> OwnedHeaders {
    for (k, v) in extra {
        out = out.insert(Header {
            key: k.as_ref(),
            value: Some(v.as_ref().as_bytes()),
        });
    }
    out
}

/// Milliseconds since the Unix epoch, `delay` from now.
pub fn not_before_value(delay: Duration) -> String {
    let due = SystemTime::now() + delay;
    // Rounded up: a whole millisecond rounded down would let the message back before its delay.
    due.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .div_ceil(1_000_000)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_topic_partition_offset() {
        assert_eq!(message_id("orders", 3, 42), "orders/3/42");
        assert_eq!(message_id("t", 0, 0), "t/0/0");
        assert_eq!(
            message_id("t", i32::MAX, i64::MAX),
            format!("t/{}/{}", i32::MAX, i64::MAX)
        );
        assert_eq!(message_id("t", -1, i64::MIN), format!("t/-1/{}", i64::MIN));
    }

    #[test]
    fn a_not_before_time_is_never_earlier_than_now_plus_the_delay() {
        for delay_ms in [0, 1, 250, 30_000] {
            let delay = Duration::from_millis(delay_ms) + Duration::from_micros(300);
            let earliest = SystemTime::now() + delay;
            let written: u64 = not_before_value(delay).parse().expect("milliseconds");
            let due = UNIX_EPOCH + Duration::from_millis(written);
            assert!(due >= earliest, "{delay:?}: due {due:?} before {earliest:?}");
        }
    }
}
