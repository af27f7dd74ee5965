//! A lapin delivery turned into qt's [`RawMessage`], without parsing the body.
//!
//! * `message_id` is the AMQP `message-id` property. A message without one gets a derived id,
//!   `sha256:<32 hex digits>`, hashed from the body, the `timestamp` property and the
//!   application headers (leaving out the ones the broker adds per delivery or per
//!   dead-lettering), so that it is the same on every redelivery. Two byte-identical messages
//!   without a message-id therefore share an id; producers that can send the same bytes twice
//!   on purpose should set `message-id` (`qt send` does).
//! * `delivery_count` is `x-delivery-count + 1` when the broker sends that header (quorum
//!   queues count returns), exactly 1 when the delivery is not flagged as redelivered, and
//!   unknown (`None`) for a redelivery from a classic queue, which only says "not the first".
//! * `broker_timestamp` is the `timestamp_in_ms` header when present (RabbitMQ's message
//!   timestamp plugin), else the `timestamp` property (seconds, set by the publisher).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use qt_core::{RawMessage, SourceInfo};
use sha2::{Digest, Sha256};

use crate::amqp_value::{headers_from_table, to_text};

/// Headers left out of the derived id: RabbitMQ writes them when it redelivers or
/// dead-letters a message, and qt writes its attempt counter when it re-publishes.
pub(crate) const VOLATILE_HEADERS: &[&str] = &[
    "x-delivery-count",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    qt_core::headers::ATTEMPT,
];

/// Builds the message qt hands to the engine.
pub(crate) fn raw_message(
    queue: &Arc<str>,
    routing_key: &str,
    redelivered: bool,
    properties: &BasicProperties,
    body: Bytes,
) -> RawMessage {
    let table = properties.headers().as_ref();
    let message_id = match properties.message_id() {
        Some(id) if !id.as_str().is_empty() => id.as_str().to_owned(),
        _ => derived_message_id(properties, &body),
    };
    let mut source = SourceInfo::new("rabbitmq", Arc::clone(queue));
    source.key = (!routing_key.is_empty()).then(|| routing_key.to_owned());
    source.redelivered = redelivered;
    source.delivery_count = delivery_count(table, redelivered);
    let mut message = RawMessage::new(message_id, body, source).with_headers(headers_from_table(table));
    message.broker_timestamp = broker_timestamp(properties);
    message
}

/// The stable id of a message that carries no `message-id`.
pub(crate) fn derived_message_id(properties: &BasicProperties, body: &[u8]) -> String {
    let mut h = Sha256::new();
    // Every part is length-prefixed so that moving bytes between parts changes the hash.
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(body);
    part(&properties.timestamp().unwrap_or(0).to_be_bytes());
    if let Some(table) = properties.headers() {
        for (k, v) in table.inner() {
            if VOLATILE_HEADERS.iter().any(|n| k.as_str().eq_ignore_ascii_case(n)) {
                continue;
            }
            part(k.as_str().as_bytes());
            part(to_text(v).as_bytes());
        }
    }
    let digest = h.finalize();
    let mut id = String::with_capacity(7 + 32);
    id.push_str("sha256:");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

fn delivery_count(table: Option<&FieldTable>, redelivered: bool) -> Option<u32> {
    let returned = table.and_then(|t| t.inner().get("x-delivery-count")).and_then(as_u64);
    match returned {
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX - 1).saturating_add(1)),
        None if !redelivered => Some(1),
        None => None,
    }
}

fn as_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn broker_timestamp(properties: &BasicProperties) -> Option<DateTime<Utc>> {
    let from_header = properties
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get("timestamp_in_ms"))
        .and_then(as_u64)
        .and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    from_header.or_else(|| {
        properties
            .timestamp()
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;
    use proptest::prelude::*;

    fn props_with(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(t).with_timestamp(1_700_000_000)
    }

    #[test]
    fn message_id_property_wins() {
        let q: Arc<str> = "orders".into();
        let p = BasicProperties::default().with_message_id("m-1".into());
        let m = raw_message(&q, "rk", false, &p, Bytes::from_static(b"{}"));
        assert_eq!(m.message_id, "m-1");
        assert_eq!(m.source.key.as_deref(), Some("rk"));
        assert_eq!(m.source.delivery_count, Some(1));
        assert!(!m.source.redelivered);
    }

    #[test]
    fn derived_id_ignores_broker_headers_and_tracks_content() {
        let plain = props_with(&[("x-tenant-id", AMQPValue::LongString("acme".into()))]);
        let returned = props_with(&[
            ("x-tenant-id", AMQPValue::LongString("acme".into())),
            ("x-delivery-count", AMQPValue::LongLongInt(3)),
            ("x-death", AMQPValue::LongString("..".into())),
        ]);
        let a = derived_message_id(&plain, b"body");
        assert!(a.starts_with("sha256:") && a.len() == 7 + 32, "{a}");
        assert_eq!(a, derived_message_id(&returned, b"body"));
        assert_ne!(a, derived_message_id(&plain, b"other"));
        let other_tenant = props_with(&[("x-tenant-id", AMQPValue::LongString("umbrella".into()))]);
        assert_ne!(a, derived_message_id(&other_tenant, b"body"));
    }

    #[test]
    fn delivery_count_from_header_or_flag() {
        let q: Arc<str> = "q".into();
        let quorum = props_with(&[("x-delivery-count", AMQPValue::LongLongInt(2))]);
        let m = raw_message(&q, "", true, &quorum, Bytes::new());
        assert_eq!(m.source.delivery_count, Some(3));
        assert_eq!(m.source.key, None);
        let classic = raw_message(&q, "", true, &BasicProperties::default(), Bytes::new());
        assert_eq!(classic.source.delivery_count, None);
        assert!(classic.source.redelivered);
    }

    #[test]
    fn timestamps_prefer_milliseconds() {
        let q: Arc<str> = "q".into();
        let p = props_with(&[("timestamp_in_ms", AMQPValue::LongLongInt(1_700_000_000_123))]);
        let m = raw_message(&q, "", false, &p, Bytes::new());
        assert_eq!(m.broker_timestamp.unwrap().timestamp_millis(), 1_700_000_000_123);
        let p = props_with(&[("x", AMQPValue::LongString(LongString::from("y")))]);
        let m = raw_message(&q, "", false, &p, Bytes::new());
        assert_eq!(m.broker_timestamp.unwrap().timestamp(), 1_700_000_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The derived id depends on the message alone: the same bytes and headers always give
        /// the same id, whatever the broker adds on redelivery; different bodies give different ids.
        #[test]
        fn derived_id_is_stable(body in proptest::collection::vec(any::<u8>(), 0..256),
                                other in proptest::collection::vec(any::<u8>(), 0..256),
                                count in 0i64..1000,
                                tenant in "[a-z]{0,12}") {
            let base = props_with(&[("x-tenant-id", AMQPValue::LongString(tenant.as_str().into()))]);
            let redelivered = props_with(&[
                ("x-tenant-id", AMQPValue::LongString(tenant.as_str().into())),
                ("x-delivery-count", AMQPValue::LongLongInt(count)),
            ]);
            let id = derived_message_id(&base, &body);
            prop_assert_eq!(&id, &derived_message_id(&redelivered, &body));
            if body != other {
                prop_assert_ne!(id, derived_message_id(&base, &other));
            }
        }
    }
}
