//! A producer that writes a record exactly as given, bytes the client libraries refuse
//! included (a header key that is not UTF-8): one Produce request (version 3, a record
//! batch of magic 2) over a plain TCP connection to the partition's leader. Written by
//! hand because every Kafka client takes header keys as strings.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Produces one record with `value` and `headers` (raw key bytes, value) to partition 0 of
/// `topic` on `broker`, the partition's leader, and waits for the broker to accept it.
pub fn produce(broker: &str, topic: &str, value: &[u8], headers: &[(&[u8], &[u8])]) {
    let batch = record_batch(value, headers);
    let mut body = Vec::new();
    put_i16(&mut body, -1); // transactional id: null
    put_i16(&mut body, -1); // acks: all in-sync replicas
    put_i32(&mut body, 10_000); // timeout ms
    put_i32(&mut body, 1); // one topic
    put_str(&mut body, topic);
    put_i32(&mut body, 1); // one partition
    put_i32(&mut body, 0);
    put_i32(&mut body, len_i32(batch.len()));
    body.extend_from_slice(&batch);

    let mut request = Vec::new();
    put_i16(&mut request, 0); // api key: Produce
    put_i16(&mut request, 3); // api version
    put_i32(&mut request, 1); // correlation id
    put_str(&mut request, "qt-raw-produce");
    request.extend_from_slice(&body);

    let mut stream = TcpStream::connect(broker).expect("connect to the broker");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(&len_i32(request.len()).to_be_bytes()).unwrap();
    stream.write_all(&request).unwrap();
    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .expect("the broker answers the produce request");
    let mut response = vec![0u8; usize::try_from(i32::from_be_bytes(size)).unwrap()];
    stream.read_exact(&mut response).unwrap();
    // correlation id, topic count, topic name, partition count, partition, error code
    let name_len = usize::try_from(i16::from_be_bytes([response[8], response[9]])).unwrap();
    let at = 10 + name_len + 8;
    let error_code = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(
        error_code, 0,
        "the broker refused the raw record (Kafka error code {error_code})"
    );
}

/// A record batch (magic 2) holding one record.
fn record_batch(value: &[u8], headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut record = Vec::new();
    record.push(0); // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, -1); // key: null
    put_varint(&mut record, len_i64(value.len()));
    record.extend_from_slice(value);
    put_varint(&mut record, len_i64(headers.len()));
    for (key, value) in headers {
        put_varint(&mut record, len_i64(key.len()));
        record.extend_from_slice(key);
        put_varint(&mut record, len_i64(value.len()));
        record.extend_from_slice(value);
    }
    let mut records = Vec::new();
    put_varint(&mut records, len_i64(record.len()));
    records.extend_from_slice(&record);

    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    // What the CRC covers: attributes to the end.
    let mut checked = Vec::new();
    put_i16(&mut checked, 0); // attributes
    put_i32(&mut checked, 0); // last offset delta
    put_i64(&mut checked, now); // first timestamp
    put_i64(&mut checked, now); // max timestamp
    put_i64(&mut checked, -1); // producer id
    put_i16(&mut checked, -1); // producer epoch
    put_i32(&mut checked, -1); // base sequence
    put_i32(&mut checked, 1); // record count
    checked.extend_from_slice(&records);

    let mut batch = Vec::new();
    put_i64(&mut batch, 0); // base offset
    // batch length: everything after this field (leader epoch, magic, crc, checked)
    put_i32(&mut batch, len_i32(4 + 1 + 4 + checked.len()));
    put_i32(&mut batch, -1); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c(&checked).to_be_bytes());
    batch.extend_from_slice(&checked);
    batch
}

/// CRC-32C (Castagnoli), which record batches of magic 2 carry.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)).cast_unsigned();
    while z >= 0x80 {
        out.push((z & 0x7f) as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_i16(out, i16::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap()
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap()
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
    }
}
