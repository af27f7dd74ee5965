//! A RabbitMQ delivery as qt takes it in (`qt-adapter-rabbitmq`'s `message.rs` and
//! `amqp_value.rs`): its properties, header table included, read by lapin's own parser from
//! the bytes of the content header frame, then turned into a message: id (given or derived),
//! delivery count, broker timestamp and every header value as text.
//!
//! The input is one byte of delivery flags (bit 0: redelivered), then the properties as
//! AMQP 0-9-1 encodes them (property flags, then each property present), then the body.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/qt-adapter-rabbitmq/src/amqp_value.rs"]
mod amqp_value;
#[allow(dead_code)]
#[path = "../../crates/qt-adapter-rabbitmq/src/message.rs"]
mod message;

use std::sync::Arc;

use bytes::Bytes;
use lapin::protocol::basic::parse_properties;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((flags, rest)) = data.split_first() else {
        return;
    };
    let Ok((body, properties)) = parse_properties(rest) else {
        return;
    };
    let queue: Arc<str> = Arc::from("orders");
    let raw = message::raw_message(
        &queue,
        "orders.created",
        flags & 1 == 1,
        &properties,
        Bytes::copy_from_slice(body),
    );
    // What qt re-publishes for a retry or a dead letter starts from the same table.
    let _ = amqp_value::table_for(properties.headers().as_ref(), &raw.headers);
});
