//! An SQS message as qt receives it (`qt-adapter-sqs`'s `message.rs` and `attributes.rs`):
//! message attributes (string, number and binary) and the folded `x-qt-headers` attribute
//! unfolded into headers, system attributes (receive count, sent time, FIFO group and
//! deduplication ids, the X-Ray trace header) into the source and headers; and the headers
//! back into attributes, as a retry or a dead letter writes them.
//!
//! The input is a message as SQS's JSON protocol returns it from `ReceiveMessage`.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/qt-adapter-sqs/src/attributes.rs"]
mod attributes;
#[allow(dead_code)]
#[path = "../../crates/qt-adapter-sqs/src/message.rs"]
mod message;

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Received {
    message_id: Option<String>,
    receipt_handle: Option<String>,
    body: Option<String>,
    #[serde(default)]
    attributes: HashMap<String, String>,
    #[serde(default)]
    message_attributes: HashMap<String, Attribute>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attribute {
    data_type: Option<String>,
    string_value: Option<String>,
    /// Base64, as the JSON protocol carries binary values.
    binary_value: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(received) = serde_json::from_slice::<Received>(data) else {
        return;
    };
    let mut builder = Message::builder()
        .set_message_id(received.message_id)
        .set_receipt_handle(received.receipt_handle)
        .set_body(received.body);
    for (name, value) in received.attributes {
        builder = builder.attributes(MessageSystemAttributeName::from(name.as_str()), value);
    }
    for (name, a) in received.message_attributes {
        let binary = a
            .binary_value
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(Blob::new);
        let value = MessageAttributeValue::builder()
            .set_data_type(a.data_type)
            .set_string_value(a.string_value)
            .set_binary_value(binary)
            .build();
        if let Ok(value) = value {
            builder = builder.message_attributes(name, value);
        }
    }
    let queue: Arc<str> = Arc::from("https://sqs.eu-west-1.amazonaws.com/123456789012/orders");
    let Ok(inbound) = message::convert(builder.build(), &queue, chrono::Utc::now()) else {
        return;
    };
    // Every header but the per-delivery x-sqs-* ones survives being written back.
    let headers = &inbound.message.headers;
    let written = attributes::to_attributes(headers);
    assert!(
        written.len() <= attributes::MAX_ATTRIBUTES,
        "{} attributes",
        written.len()
    );
    let mut back: Vec<(String, String)> = attributes::to_headers(Some(&written)).into_iter().collect();
    let mut kept: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !attributes::is_sqs_header(name))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    back.sort();
    kept.sort();
    assert_eq!(back, kept);
});
