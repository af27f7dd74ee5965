//! Trace ids: one per message, continued from a W3C `traceparent` header when the producer
//! sent one, so a message can be followed from producer to agent run.

use std::cell::RefCell;
use std::fmt;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// Every message without a `traceparent` gets a new trace id. Trace ids must be unique,
    /// not unpredictable, so a fast generator per thread (seeded from the OS-seeded thread
    /// generator) serves them; the cryptographic thread generator cost several times more
    /// per message.
    static TRACE_ID_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// A 128-bit W3C trace id, printed as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// A fresh random trace id (never all zeros, which W3C reserves as invalid).
    pub fn random() -> Self {
        TRACE_ID_RNG.with_borrow_mut(|rng| {
            loop {
                let bytes: [u8; 16] = rng.random();
                if bytes != [0; 16] {
                    return Self(bytes);
                }
            }
        })
    }

    /// The trace id inside a `traceparent` header value
    /// (`version-traceid-parentid-flags`), if it is well formed.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        Self::from_hex(trace)
    }

    /// Parses 32 hex digits; rejects the all-zero id.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16)?;
            let lo = (chunk[1] as char).to_digit(16)?;
            bytes[i] = (hi * 16 + lo) as u8;
        }
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    pub fn to_hex(self) -> String {
        self.to_string()
    }

    /// A W3C `traceparent` value (version 00, sampled) that continues this trace from a new
    /// span, for handing the trace on to an agent: `00-<trace id>-<16 hex span id>-01`.
    pub fn child_traceparent(self) -> String {
        let span: u64 = TRACE_ID_RNG.with_borrow_mut(|rng| {
            loop {
                // W3C reserves the all-zero span id as invalid.
                let span: u64 = rng.random();
                if span != 0 {
                    return span;
                }
            }
        });
        format!("00-{self}-{span:016x}-01")
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(deserializer)?;
        TraceId::from_hex(&hex).ok_or_else(|| serde::de::Error::custom(format!("not a trace id: {hex:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_traceparent() {
        let t = TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn rejects_malformed_or_zero_ids() {
        assert!(TraceId::from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(TraceId::from_traceparent("00-xyz-00f067aa0ba902b7-01").is_none());
        assert!(TraceId::from_traceparent("garbage").is_none());
    }

    #[test]
    fn random_ids_are_32_hex_digits() {
        let t = TraceId::random();
        assert_eq!(t.to_string().len(), 32);
        assert_eq!(TraceId::from_hex(&t.to_string()), Some(t));
    }

    #[test]
    fn a_child_traceparent_carries_the_trace_id_and_a_fresh_span() {
        let id = TraceId::random();
        let a = id.child_traceparent();
        let b = id.child_traceparent();
        assert_eq!(TraceId::from_traceparent(&a), Some(id));
        assert_eq!(a.len(), 55);
        assert!(a.starts_with(&format!("00-{id}-")) && a.ends_with("-01"), "{a}");
        assert_ne!(a, b);
    }
}
