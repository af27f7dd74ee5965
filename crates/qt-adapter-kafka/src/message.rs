//! Kafka records in and out: a consumed record becomes the exact bytes needed to
//! re-produce it ([`RecordBytes`]), and from those a [`RawMessage`]; an outgoing record is
//! built from those bytes.
//!
//! The consumer thread copies a record out of librdkafka once, into one buffer holding its
//! key, value and headers, and allocates nothing else. The engine's thread that receives
//! the message makes its strings (headers, key, id) from that buffer, and the message body
//! is a slice of it, so the consumer thread allocates once per record (ARCHITECTURE.md,
//! hot-path rule 2).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use qt_core::{Headers, RawMessage, SourceInfo};
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};

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

/// A record's key, value and headers byte for byte (keys and values may be null, values
/// need not be UTF-8), in one buffer. Headers are stored as `key length (u32 LE), key,
/// value length (i32 LE, -1 for null), value`.
#[derive(Clone, Default)]
pub struct RecordBytes {
    data: Bytes,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    headers: Range<usize>,
}

impl RecordBytes {
    /// Builds the buffer from a key, a payload and headers.
    #[cfg(test)]
    pub fn new<'a>(
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    ) -> Self {
        let header_bytes = headers.clone().into_iter().map(|(k, v)| header_len(k, v)).sum();
        let mut b = RecordBuilder::new(key, payload, header_bytes);
        for (k, v) in headers {
            b.header(k, v);
        }
        b.finish()
    }

    pub fn key(&self) -> Option<&[u8]> {
        self.key.clone().map(|r| &self.data[r])
    }

    /// `None` for a tombstone (null value), which is re-produced as null.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.clone().map(|r| &self.data[r])
    }

    /// The payload sharing this buffer (empty for a tombstone).
    pub fn payload_bytes(&self) -> Bytes {
        self.payload.clone().map_or_else(Bytes::new, |r| self.data.slice(r))
    }

    /// The headers in record order.
    pub fn headers(&self) -> HeaderIter<'_> {
        HeaderIter {
            rest: &self.data[self.headers.clone()],
        }
    }
}

impl fmt::Debug for RecordBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBytes")
            .field("key", &self.key().map(String::from_utf8_lossy))
            .field("payload_len", &self.payload().map(<[u8]>::len))
            .field("headers", &self.headers().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

/// Fills a [`RecordBytes`] in one pass: key and payload first, then each header.
pub struct RecordBuilder {
    buf: Vec<u8>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    headers_start: usize,
}

/// What one header takes in a [`RecordBytes`] buffer.
pub fn header_len(key: &str, value: Option<&[u8]>) -> usize {
    8 + key.len() + value.map_or(0, <[u8]>::len)
}

impl RecordBuilder {
    /// `header_bytes` is what the headers that follow take ([`header_len`] of each). The
    /// buffer is sized exactly, so it becomes a [`Bytes`] without a shared block of its
    /// own: that block is made on the first clone, by the engine's thread that uses it,
    /// rather than on the consumer thread.
    pub fn new(key: Option<&[u8]>, payload: Option<&[u8]>, header_bytes: usize) -> Self {
        let size = key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + header_bytes;
        let mut buf = Vec::with_capacity(size);
        let mut put = |bytes: Option<&[u8]>| {
            bytes.map(|b| {
                let start = buf.len();
                buf.extend_from_slice(b);
                start..buf.len()
            })
        };
        let key = put(key);
        let payload = put(payload);
        let headers_start = buf.len();
        Self {
            buf,
            key,
            payload,
            headers_start,
        }
    }

    pub fn header(&mut self, key: &str, value: Option<&[u8]>) {
        self.buf.extend_from_slice(&len_u32(key.len()).to_le_bytes());
        self.buf.extend_from_slice(key.as_bytes());
        match value {
            Some(v) => {
                self.buf.extend_from_slice(&len_i32(v.len()).to_le_bytes());
                self.buf.extend_from_slice(v);
            }
            None => self.buf.extend_from_slice(&(-1i32).to_le_bytes()),
        }
    }

    pub fn finish(self) -> RecordBytes {
        let headers = self.headers_start..self.buf.len();
        RecordBytes {
            data: Bytes::from(self.buf),
            key: self.key,
            payload: self.payload,
            headers,
        }
    }
}

impl fmt::Debug for RecordBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordBuilder").field("len", &self.buf.len()).finish()
    }
}

/// Iterates the headers of a [`RecordBytes`].
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        fn split<'b>(rest: &mut &'b [u8], n: usize) -> &'b [u8] {
            let (head, tail) = rest.split_at(n);
            *rest = tail;
            head
        }
        if self.rest.is_empty() {
            return None;
        }
        let key_len = u32::from_le_bytes(split(&mut self.rest, 4).try_into().expect("4 bytes")) as usize;
        // Keys were written from `&str`.
        let key = std::str::from_utf8(split(&mut self.rest, key_len)).expect("header keys are UTF-8");
        let value_len = i32::from_le_bytes(split(&mut self.rest, 4).try_into().expect("4 bytes"));
        let value = usize::try_from(value_len).ok().map(|n| split(&mut self.rest, n));
        Some((key, value))
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("a Kafka header key is shorter than 4 GiB")
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).expect("a Kafka header value is shorter than 2 GiB")
}

/// Lossless when `bytes` is UTF-8 (the usual case), lossy otherwise.
pub fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
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
    let record = copy_record(msg, |key, value| {
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
    let ms = std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok()?;
    let due = UNIX_EPOCH + Duration::from_millis(ms);
    let wait = due.duration_since(batch.now_wall).ok().filter(|d| !d.is_zero())?;
    Some(batch.now + wait)
}

/// The message the engine receives for a pending record, made on the engine's thread.
/// `adapter` is the receiving batch's copy of the adapter name.
pub fn raw_message(pending: &Pending, adapter: &Arc<str>) -> RawMessage {
    let Origin { tp, offset, record, .. } = &pending.origin;
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
    }
}

/// A record's headers as text (a null value is empty), in record order.
pub fn decoded_headers(record: &RecordBytes) -> Headers {
    record
        .headers()
        .map(|(k, v)| (k, v.map(text).unwrap_or_default()))
        .collect()
}

/// Copies a record read outside the consumer thread (no `x-qt-not-before` handling).
pub fn record_of(msg: &BorrowedMessage<'_>) -> RecordBytes {
    copy_record(msg, |_, _| {})
}

/// Copies a record's key, value and headers into one buffer, showing `each` every header
/// on the way.
fn copy_record(msg: &BorrowedMessage<'_>, mut each: impl FnMut(&str, Option<&[u8]>)) -> RecordBytes {
    let raw_headers = msg.headers();
    let header_bytes = raw_headers
        .iter()
        .flat_map(|hs| hs.iter())
        .map(|h| header_len(h.key, h.value))
        .sum();
    let mut builder = RecordBuilder::new(msg.key(), msg.payload(), header_bytes);
    for h in raw_headers.iter().flat_map(|hs| hs.iter()) {
        builder.header(h.key, h.value);
        each(h.key, h.value);
    }
    builder.finish()
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
    use proptest::prelude::*;

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

    #[test]
    fn nulls_and_empties_survive() {
        let r = RecordBytes::new(None, None, [("a", None), ("", Some(&b""[..]))]);
        assert_eq!(r.key(), None);
        assert_eq!(r.payload(), None);
        assert!(r.payload_bytes().is_empty());
        assert_eq!(r.headers().collect::<Vec<_>>(), vec![("a", None), ("", Some(&b""[..]))]);
        let empty = RecordBytes::new(Some(b""), Some(b""), std::iter::empty());
        assert_eq!(empty.key(), Some(&b""[..]));
        assert_eq!(empty.payload(), Some(&b""[..]));
        assert_eq!(empty.headers().count(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the key, value and headers (null, empty, not UTF-8), the buffer gives
        /// them back byte for byte and in order, and the body shares the buffer.
        #[test]
        fn record_bytes_round_trip(
            key in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            payload in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
            headers in prop::collection::vec(
                ("[a-zA-Z0-9_.-]{0,12}", prop::option::of(prop::collection::vec(any::<u8>(), 0..30))),
                0..8,
            ),
        ) {
            let r = RecordBytes::new(
                key.as_deref(),
                payload.as_deref(),
                headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
            );
            prop_assert_eq!(r.key(), key.as_deref());
            prop_assert_eq!(r.payload(), payload.as_deref());
            prop_assert_eq!(&r.payload_bytes()[..], payload.as_deref().unwrap_or_default());
            let back: Vec<(String, Option<Vec<u8>>)> =
                r.headers().map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec))).collect();
            prop_assert_eq!(back, headers);
        }
    }
}
