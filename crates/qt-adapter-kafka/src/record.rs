//! Kafka records in and out: a consumed record becomes a [`RawMessage`] plus the exact
//! bytes needed to re-produce it; an outgoing record is built from those bytes.

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

/// The stable message id of a Kafka record.
pub fn message_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// Converts a consumed record. `topic` is the interned topic name. Returns the pending
/// message and, for a requeued message whose delay has not passed, when it is due.
pub fn from_kafka(msg: &BorrowedMessage<'_>, topic: Arc<str>, now_wall: SystemTime) -> (Pending, Option<Instant>) {
    let partition = msg.partition();
    let offset = msg.offset();
    let key = msg.key().map(Bytes::copy_from_slice);
    let payload = msg.payload().map(Bytes::copy_from_slice);

    let mut raw_headers = Vec::new();
    let mut headers = Headers::new();
    if let Some(hs) = msg.headers() {
        raw_headers.reserve(hs.count());
        headers = Headers::with_capacity(hs.count());
        for h in hs.iter() {
            let value = h.value.map(Bytes::copy_from_slice);
            let text = value
                .as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            headers.append(h.key, text);
            raw_headers.push((h.key.to_owned(), value));
        }
    }

    let id = message_id(&topic, partition, offset);
    let mut source = SourceInfo::new("kafka", topic.clone());
    source.partition = Some(partition);
    source.offset = Some(offset);
    source.key = key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned());

    let not_before = headers
        .get(NOT_BEFORE)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .and_then(|ms| {
            let due = UNIX_EPOCH + Duration::from_millis(ms);
            due.duration_since(now_wall).ok().filter(|d| !d.is_zero())
        })
        .map(|wait| Instant::now() + wait);

    let mut message = RawMessage::new(id.clone(), payload.clone().unwrap_or_default(), source).with_headers(headers);
    message.broker_timestamp = msg
        .timestamp()
        .to_millis()
        .and_then(DateTime::<Utc>::from_timestamp_millis);

    let origin = Origin {
        tp: TopicPartition { topic, partition },
        offset,
        epoch: 0,
        message_id: id,
        key,
        payload,
        headers: raw_headers,
    };
    (Pending { message, origin }, not_before)
}

/// Builds librdkafka headers from the original headers minus `replaced` names (compared
/// without ASCII case), followed by `extra`.
pub fn outgoing_headers<K: AsRef<str>, V: AsRef<str>>(
    original: &[(String, Option<Bytes>)],
    replaced: &[&str],
    extra: impl IntoIterator<Item = (K, V)>,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(original.len() + 4);
    for (k, v) in original {
        if replaced.iter().any(|r| r.eq_ignore_ascii_case(k)) {
            continue;
        }
        out = out.insert(Header {
            key: k.as_str(),
            value: v.as_deref(),
        });
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
    due.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string()
}
