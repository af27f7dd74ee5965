//! A Kafka record as the consumer copies it out of librdkafka (key, value and headers into
//! one buffer, `qt-adapter-kafka`'s `record.rs`) and as the engine's thread reads it back into
//! a message's headers, key and body, with the `x-qt-not-before` header read as a time.
//!
//! The input is the record as a Kafka v2 record batch carries it: key and value as length
//! and bytes (length -1: null), then the header count and each header's key and value the
//! same way, every number a zigzag varint. Header keys that are not UTF-8 are left out, as
//! librdkafka hands qt keys as `&str`.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/qt-adapter-kafka/src/record.rs"]
mod record;

use libfuzzer_sys::fuzz_target;
use record::{RecordBuilder, decoded_headers, header_len, not_before_millis, text};

fn varint(data: &mut &[u8]) -> Option<i64> {
    let mut raw: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (byte, rest) = data.split_first()?;
        *data = rest;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    None
}

/// Bytes with a varint length before them; -1 is null.
fn nullable<'a>(data: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let len = varint(data)?;
    if len < 0 {
        return Some(None);
    }
    let len = usize::try_from(len).ok().filter(|n| *n <= data.len())?;
    let (bytes, rest) = data.split_at(len);
    *data = rest;
    Some(Some(bytes))
}

fn record(mut data: &[u8]) -> Option<(Option<&[u8]>, Option<&[u8]>, Vec<(&str, Option<&[u8]>)>)> {
    let key = nullable(&mut data)?;
    let value = nullable(&mut data)?;
    let count = varint(&mut data)?;
    let mut headers = Vec::new();
    for _ in 0..count.clamp(0, 1024) {
        let name = nullable(&mut data)?.unwrap_or_default();
        let value = nullable(&mut data)?;
        if let Ok(name) = std::str::from_utf8(name) {
            headers.push((name, value));
        }
    }
    Some((key, value, headers))
}

fuzz_target!(|data: &[u8]| {
    let Some((key, value, headers)) = record(data) else {
        return;
    };
    // As the consumer thread copies a record.
    let header_bytes = headers.iter().map(|(k, v)| header_len(k, *v)).sum();
    let mut builder = RecordBuilder::new(key, value, header_bytes);
    for (k, v) in &headers {
        builder.header(k, *v);
    }
    let record = builder.finish();
    // As the engine's thread reads it: every header back, in order, byte for byte.
    assert_eq!(record.key(), key);
    assert_eq!(record.payload(), value);
    assert_eq!(&record.payload_bytes()[..], value.unwrap_or_default());
    assert!(record.headers().eq(headers.iter().copied()));
    let decoded = decoded_headers(&record);
    assert_eq!(decoded.len(), headers.len());
    let _ = record.key().map(text);
    for (k, v) in &headers {
        if k.eq_ignore_ascii_case("x-qt-not-before") {
            let _ = v.and_then(not_before_millis);
        }
    }
    let _ = format!("{record:?}");
});
