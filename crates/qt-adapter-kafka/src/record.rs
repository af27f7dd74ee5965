//! A consumed record's key, value and headers, copied out of librdkafka into one buffer,
//! and read back from it. Nothing here touches librdkafka: the fuzz target `kafka_record`
//! compiles this file on its own (so it names no other module of this crate).

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use qt_core::Headers;

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

/// A record's headers as text (a null value is empty), in record order.
pub fn decoded_headers(record: &RecordBytes) -> Headers {
    record
        .headers()
        .map(|(k, v)| (k, v.map(text).unwrap_or_default()))
        .collect()
}

/// An `x-qt-not-before` value as Unix epoch milliseconds; `None` when it is not a number.
pub fn not_before_millis(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
