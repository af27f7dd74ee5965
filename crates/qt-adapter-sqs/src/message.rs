//! An SQS message as qt sees it: body, headers and where it came from. Nothing is parsed.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use qt_core::headers::TRACEPARENT;
use qt_core::trace::traceparent_from_xray;
use qt_core::{Headers, RawMessage, SourceInfo};

use crate::attributes::{self, is_sqs_header};

/// Header carrying a FIFO message's MessageGroupId (also in `source.key`).
pub const GROUP_ID_HEADER: &str = "x-sqs-message-group-id";
/// Header carrying a FIFO message's MessageDeduplicationId. Extract the dedup key from it
/// (`processing.extraction.dedup_key: [{header: x-sqs-deduplication-id}]`) to deduplicate
/// by the producer's id beyond SQS's own five-minute window.
pub const DEDUPLICATION_ID_HEADER: &str = "x-sqs-deduplication-id";
/// Header carrying a FIFO message's SequenceNumber (128 bits: too wide for
/// `source.offset`).
pub const SEQUENCE_NUMBER_HEADER: &str = "x-sqs-sequence-number";

/// A received message and the receipt handle that settles it.
#[derive(Debug)]
pub struct Inbound {
    pub message: RawMessage,
    pub receipt_handle: String,
}

/// Converts one received message. Fails only when SQS left out the message id or receipt
/// handle, without which the message could not be reported or settled.
pub fn convert(message: Message, queue: &Arc<str>, received_at: DateTime<Utc>) -> Result<Inbound, &'static str> {
    let Message {
        message_id,
        receipt_handle,
        body,
        attributes: system,
        message_attributes,
        ..
    } = message;
    let message_id = message_id.ok_or("no MessageId")?;
    let receipt_handle = receipt_handle.ok_or("no ReceiptHandle")?;
    let system = system.unwrap_or_default();

    // Producers cannot pose as SQS: x-sqs-* headers only ever come from system attributes.
    let mut headers: Headers = attributes::to_headers(message_attributes.as_ref())
        .into_iter()
        .filter(|(name, _)| !is_sqs_header(name))
        .collect();
    let group_id = system_text(&system, &MessageSystemAttributeName::MessageGroupId);
    if let Some(g) = &group_id {
        headers.insert(GROUP_ID_HEADER, g.clone());
    }
    if let Some(d) = system_text(&system, &MessageSystemAttributeName::MessageDeduplicationId) {
        headers.insert(DEDUPLICATION_ID_HEADER, d);
    }
    if let Some(s) = system_text(&system, &MessageSystemAttributeName::SequenceNumber) {
        headers.insert(SEQUENCE_NUMBER_HEADER, s);
    }
    // A producer traced by AWS X-Ray has its context in a system attribute; a W3C
    // `traceparent` of its own, when it sent one, wins.
    if headers.get(TRACEPARENT).is_none()
        && let Some(traceparent) = system_text(&system, &MessageSystemAttributeName::AwsTraceHeader)
            .as_deref()
            .and_then(traceparent_from_xray)
    {
        headers.insert(TRACEPARENT, traceparent);
    }

    let mut source = SourceInfo::new("sqs", Arc::clone(queue));
    source.key = group_id;
    source.delivery_count = system_text(&system, &MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|c| c.trim().parse::<u32>().ok());
    source.redelivered = source.delivery_count.is_some_and(|c| c > 1);

    let mut raw = RawMessage::new(message_id, Bytes::from(body.unwrap_or_default()), source).with_headers(headers);
    raw.received_at = received_at;
    raw.broker_timestamp = system_text(&system, &MessageSystemAttributeName::SentTimestamp)
        .and_then(|t| t.trim().parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis);
    Ok(Inbound {
        message: raw,
        receipt_handle,
    })
}

fn system_text(
    system: &HashMap<MessageSystemAttributeName, String>,
    name: &MessageSystemAttributeName,
) -> Option<String> {
    system.get(name).filter(|v| !v.is_empty()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::MessageAttributeValue;

    #[test]
    fn system_attributes_fill_source_and_headers() {
        let message = Message::builder()
            .message_id("m-1")
            .receipt_handle("rh")
            .body("{\"a\":1}")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "3")
            .attributes(MessageSystemAttributeName::SentTimestamp, "1700000000123")
            .attributes(MessageSystemAttributeName::MessageGroupId, "customer-7")
            .attributes(MessageSystemAttributeName::MessageDeduplicationId, "order-42")
            .message_attributes(
                "x-tenant-id",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("acme")
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                GROUP_ID_HEADER,
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("forged")
                    .build()
                    .unwrap(),
            )
            .build();
        let queue: Arc<str> = Arc::from("https://sqs.example/1/orders.fifo");
        let inbound = convert(message, &queue, Utc::now()).unwrap();
        let m = inbound.message;
        assert_eq!(inbound.receipt_handle, "rh");
        assert_eq!(m.message_id, "m-1");
        assert_eq!(&m.body[..], b"{\"a\":1}");
        assert_eq!(m.source.adapter.as_ref(), "sqs");
        assert_eq!(m.source.key.as_deref(), Some("customer-7"));
        assert_eq!(m.source.delivery_count, Some(3));
        assert!(m.source.redelivered);
        assert_eq!(m.attempt(), 3);
        assert_eq!(m.broker_timestamp.unwrap().timestamp_millis(), 1_700_000_000_123);
        assert_eq!(m.headers.get("x-tenant-id"), Some("acme"));
        assert_eq!(m.headers.get(GROUP_ID_HEADER), Some("customer-7"));
        assert_eq!(m.headers.get(DEDUPLICATION_ID_HEADER), Some("order-42"));
        assert_eq!(m.headers.iter().filter(|(k, _)| *k == GROUP_ID_HEADER).count(), 1);
    }

    fn with_trace(xray: &str, traceparent: Option<&str>) -> RawMessage {
        let mut message = Message::builder()
            .message_id("m-1")
            .receipt_handle("rh")
            .body("x")
            .attributes(MessageSystemAttributeName::AwsTraceHeader, xray);
        if let Some(tp) = traceparent {
            message = message.message_attributes(
                "traceparent",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(tp)
                    .build()
                    .unwrap(),
            );
        }
        convert(message.build(), &Arc::from("q"), Utc::now()).unwrap().message
    }

    #[test]
    fn an_xray_trace_header_is_continued_unless_the_producer_sent_a_traceparent() {
        let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let m = with_trace(xray, None);
        assert_eq!(
            m.headers.get(TRACEPARENT),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01")
        );
        let own = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(with_trace(xray, Some(own)).headers.get(TRACEPARENT), Some(own));
        assert_eq!(with_trace("Root=broken", None).headers.get(TRACEPARENT), None);
    }

    #[test]
    fn a_message_without_receipt_handle_is_refused() {
        let message = Message::builder().message_id("m-1").body("x").build();
        let queue: Arc<str> = Arc::from("q");
        assert!(convert(message, &queue, Utc::now()).is_err());
    }
}
