//! The messages every benchmark sends: ~200-byte JSON orders spread over 16 tenants, with a
//! dedup key per order.

use qt_core::{RawMessage, SourceInfo};

/// Size of every message body, in bytes.
pub const BODY_BYTES: usize = 200;
/// How many tenants the orders are spread over.
pub const TENANTS: usize = 16;

/// The body of order `key`: a JSON object padded to [`BODY_BYTES`].
pub fn order_body(key: usize) -> Vec<u8> {
    let mut body = format!(
        r#"{{"type":"order.created","order_id":"{key}","tenant":"{}","items":[1,2,3],"note":""#,
        tenant_of(key)
    );
    while body.len() < BODY_BYTES - 2 {
        body.push('x');
    }
    body.push_str("\"}");
    body.into_bytes()
}

/// The tenant of order `key`. It follows the key, so a repeated key is a duplicate within
/// its tenant.
pub fn tenant_of(key: usize) -> String {
    format!("t{}", key % TENANTS)
}

/// The dedup key of order `key`.
pub fn dedup_key(key: usize) -> String {
    format!("k{key}")
}

/// Whether message `i` repeats an earlier order: every tenth, once `distance` messages have
/// gone by.
pub fn is_duplicate(i: usize, distance: usize) -> bool {
    i % 10 == 9 && i >= distance
}

/// The order message `i` carries: its own, or for a duplicate the order of a message about
/// `distance` places earlier. That one is never a duplicate itself, so its key is really
/// repeated.
pub fn order_of(i: usize, distance: usize) -> usize {
    if !is_duplicate(i, distance) {
        return i;
    }
    let earlier = i - distance;
    if earlier % 10 == 9 { earlier + 1 } else { earlier }
}

/// `n` mock-source messages with dedup key and tenant headers; every tenth after the first
/// `distance` repeats an earlier order.
pub fn mock_messages(n: usize, distance: usize) -> Vec<RawMessage> {
    let source = SourceInfo::new("mock", "bench");
    (0..n)
        .map(|i| {
            let key = order_of(i, distance);
            let mut m = RawMessage::new(format!("m{i}"), order_body(key), source.clone());
            m.headers.insert("x-dedup-key", dedup_key(key));
            m.headers.insert("x-tenant-id", tenant_of(key));
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn bodies_are_json_of_the_fixed_size() {
        for key in [0, 7, 123_456_789] {
            let body = order_body(key);
            assert_eq!(body.len(), BODY_BYTES);
            let v: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
            assert_eq!(v["order_id"], key.to_string());
        }
    }

    #[test]
    fn every_duplicate_repeats_a_key_seen_before() {
        for distance in [4096, 20_000] {
            let mut seen = HashSet::new();
            let mut duplicates = 0;
            for i in 0..50_000 {
                let key = order_of(i, distance);
                let repeated = !seen.insert(key);
                assert_eq!(repeated, is_duplicate(i, distance), "message {i}, distance {distance}");
                duplicates += usize::from(repeated);
            }
            assert_eq!(duplicates, (distance..50_000).filter(|i| i % 10 == 9).count());
        }
    }
}
