//! Trace ids: one per message, continued from a W3C `traceparent` header when the producer
//! sent one, so a message can be followed from producer to agent run.

use std::cell::RefCell;
use std::fmt;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::headers::{Headers, TRACEPARENT, TRACESTATE};

thread_local! {
    /// Every message without a `traceparent` gets a new trace id. Trace ids must be unique,
    /// not unpredictable, so a fast generator per thread (seeded from the OS-seeded thread
    /// generator) serves them (ARCHITECTURE.md, hot-path rule 15).
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
    /// (`version-traceid-parentid-flags`), if it is well formed (see [`parse_traceparent`]).
    pub fn from_traceparent(value: &str) -> Option<Self> {
        parse_traceparent(value).map(|p| p.trace_id)
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
        self.hex().as_str().to_owned()
    }

    /// The 32 hex digits, made without the formatting machinery: every message's id is
    /// written out once or twice (hot path: see ARCHITECTURE.md, rule 18).
    pub fn hex(self) -> HexDigits<32> {
        HexDigits::of(self.0)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The id of these bytes; `None` for all zeros.
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// A W3C `traceparent` value (version 00, sampled) that continues this trace from a new
    /// span, for handing the trace on to an agent: `00-<trace id>-<16 hex span id>-01`.
    pub fn child_traceparent(self) -> String {
        self.child_traceparent_with(true)
    }

    /// Like [`TraceId::child_traceparent`], with the sampled flag given.
    pub fn child_traceparent_with(self, sampled: bool) -> String {
        let span: u64 = TRACE_ID_RNG.with_borrow_mut(|rng| {
            loop {
                // W3C reserves the all-zero span id as invalid.
                let span: u64 = rng.random();
                if span != 0 {
                    return span;
                }
            }
        });
        traceparent(self, span.to_be_bytes(), sampled)
    }
}

/// A W3C `traceparent` value, version 00: `00-<trace id>-<span id>-<01 | 00>`.
pub fn traceparent(trace_id: TraceId, span_id: [u8; 8], sampled: bool) -> String {
    let mut value = String::with_capacity(55);
    value.push_str("00-");
    value.push_str(trace_id.hex().as_str());
    value.push('-');
    value.push_str(HexDigits::<16>::of(span_id).as_str());
    value.push_str(if sampled { "-01" } else { "-00" });
    value
}

/// Bytes as lower-case hex digits, on the stack: `N` digits for `N / 2` bytes.
#[derive(Debug)]
pub struct HexDigits<const N: usize>([u8; N]);

impl<const N: usize> HexDigits<N> {
    fn of(bytes: impl AsRef<[u8]>) -> Self {
        let mut digits = [0; N];
        hex::encode_to_slice(bytes, &mut digits).expect("N digits are two per byte");
        Self(digits)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// Where an agent attempt is in the message's trace, when the engine traces messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptTrace {
    /// The attempt's exported span (sampled): the agent's parent.
    Span([u8; 8]),
    /// The message was not sampled: no span exists, and the agent is told not to record.
    Unsampled,
}

/// The trace context handed on to an agent for a message: its trace continued from a new
/// span, keeping the producer's sampling decision and vendor state when the message came with
/// a valid `traceparent` (a new trace is sampled and has no state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingContext<'a> {
    /// The `traceparent` value: `00-<trace id>-<new span id>-<flags>`.
    pub traceparent: String,
    /// The producer's `tracestate`, passed on unchanged.
    pub tracestate: Option<&'a str>,
}

impl<'a> OutgoingContext<'a> {
    /// The context for a message with trace id `trace_id` and headers `headers`. The
    /// producer's flags and `tracestate` are kept only when its `traceparent` is valid and
    /// names this trace (W3C: a `tracestate` without a valid `traceparent` is discarded).
    pub fn for_message(trace_id: TraceId, headers: &'a Headers) -> Self {
        let producer = headers
            .get(TRACEPARENT)
            .and_then(parse_traceparent)
            .filter(|p| p.trace_id == trace_id);
        match producer {
            Some(p) => Self {
                traceparent: trace_id.child_traceparent_with(p.sampled),
                tracestate: headers.get(TRACESTATE).map(str::trim).filter(|s| is_tracestate(s)),
            },
            None => Self {
                traceparent: trace_id.child_traceparent(),
                tracestate: None,
            },
        }
    }
}

/// What a producer's `traceparent` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    /// The producer's span, the parent of qt's.
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// A W3C `traceparent` (`version-traceid-parentid-flags`): version 00 exactly, or a later
/// version whose first four fields read the same way; ids not all zero.
pub fn parse_traceparent(value: &str) -> Option<Parent> {
    let value = value.trim();
    let mut parts = value.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let later_version = version != "00";
    if version.len() != 2 || version == "ff" || !is_lower_hex(version) || (!later_version && parts.next().is_some()) {
        return None;
    }
    if parent.len() != 16 || !is_lower_hex(parent) || parent == "0000000000000000" {
        return None;
    }
    if flags.len() != 2 || !is_lower_hex(flags) || !is_lower_hex(trace) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let span = u64::from_str_radix(parent, 16).ok()?;
    Some(Parent {
        trace_id: TraceId::from_hex(trace)?,
        span_id: span.to_be_bytes(),
        sampled: flags & 1 == 1,
    })
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A `tracestate` worth passing on: at most 512 characters (the length W3C lets a vendor
/// keep) of visible ASCII, spaces and tabs.
fn is_tracestate(value: &str) -> bool {
    !value.is_empty() && value.len() <= 512 && value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// The `traceparent` for an AWS X-Ray trace header (SQS's `AWSTraceHeader` system attribute,
/// `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1`): the root's
/// epoch and unique parts make the trace id, `Parent` the parent span. `None` without a
/// well-formed root and parent. A missing or deferred (`?`) sampling decision reads as sampled.
pub fn traceparent_from_xray(header: &str) -> Option<String> {
    let (mut root, mut parent, mut sampled) = (None, None, true);
    for field in header.split(';') {
        let (key, value) = field.trim().split_once('=')?;
        match key.trim() {
            "Root" => root = Some(value.trim()),
            "Parent" => parent = Some(value.trim()),
            "Sampled" => sampled = value.trim() != "0",
            _ => {}
        }
    }
    let mut root_parts = root?.split('-');
    let (version, epoch, unique) = (root_parts.next()?, root_parts.next()?, root_parts.next()?);
    if version != "1" || root_parts.next().is_some() || epoch.len() != 8 || unique.len() != 24 {
        return None;
    }
    let trace = format!("{epoch}{unique}").to_ascii_lowercase();
    let parent = parent?.to_ascii_lowercase();
    let traceparent = format!("00-{trace}-{parent}-{:02x}", u8::from(sampled));
    parse_traceparent(&traceparent).map(|_| traceparent)
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.hex().as_str())
    }
}

impl<'de> Deserialize<'de> for TraceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(deserializer)?;
        TraceId::from_hex(&hex).ok_or_else(|| serde::de::Error::custom(format!("not a trace id: {hex:?}")))
    }
}

/// Whether the span exporter has room for another message's spans. The exporter sets it
/// while its queue is nearly full; the engine reads it before tracing a message. While it
/// is set, a message the sampler keeps is not traced at all (its agent gets an unsampled
/// `traceparent`): making spans that the queue would then drop one by one costs the
/// pipeline as much as exporting them, and leaves traces with holes. So tracing never
/// takes more than the exporter can send, and what is exported is whole traces.
#[derive(Debug, Default)]
pub struct ExportGate {
    saturated: std::sync::atomic::AtomicBool,
}

impl ExportGate {
    pub fn set_saturated(&self, saturated: bool) {
        self.saturated.store(saturated, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_saturated(&self) -> bool {
        self.saturated.load(std::sync::atomic::Ordering::Relaxed)
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

    proptest::proptest! {
        #[test]
        fn ids_and_traceparents_are_written_as_lower_case_hex_byte_by_byte(
            id in proptest::array::uniform16(proptest::num::u8::ANY),
            span in proptest::array::uniform8(proptest::num::u8::ANY),
            sampled: bool,
        ) {
            let digits: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let span_digits: String = span.iter().map(|b| format!("{b:02x}")).collect();
            let t = TraceId(id);
            proptest::prop_assert_eq!(&t.to_string(), &digits);
            proptest::prop_assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{digits}\""));
            proptest::prop_assert_eq!(
                traceparent(t, span, sampled),
                format!("00-{digits}-{span_digits}-0{}", u8::from(sampled))
            );
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.insert(*k, (*v).to_owned());
        }
        h
    }

    #[test]
    fn an_agent_gets_the_producers_sampling_decision_and_tracestate() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let h = headers(&[
            ("traceparent", tp),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ]);
        let id = TraceId::from_traceparent(tp).unwrap();
        let out = OutgoingContext::for_message(id, &h);
        assert!(
            out.traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{}",
            out.traceparent
        );
        assert!(
            out.traceparent.ends_with("-00"),
            "not sampled, as the producer said: {}",
            out.traceparent
        );
        assert!(
            !out.traceparent.contains("00f067aa0ba902b7"),
            "a new span: {}",
            out.traceparent
        );
        assert_eq!(out.tracestate, Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));

        let sampled = headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]);
        let out = OutgoingContext::for_message(id, &sampled);
        assert!(out.traceparent.ends_with("-01"));
        assert_eq!(out.tracestate, None);
    }

    #[test]
    fn without_a_valid_traceparent_the_agent_gets_a_new_sampled_trace_and_no_tracestate() {
        let id = TraceId::random();
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let h = headers(&[("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")]);
            let out = OutgoingContext::for_message(id, &h);
            assert!(
                out.traceparent.starts_with(&format!("00-{id}-")),
                "{bad:?}: {}",
                out.traceparent
            );
            assert!(out.traceparent.ends_with("-01"), "{bad:?}");
            assert_eq!(out.tracestate, None, "{bad:?}");
        }
        // A later version is read by its first four fields.
        let later = headers(&[(
            "traceparent",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what",
        )]);
        let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert!(OutgoingContext::for_message(id, &later).traceparent.ends_with("-00"));
        // A tracestate that could not travel as a header is dropped.
        let h = headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "a=b\nc=d"),
        ]);
        assert_eq!(OutgoingContext::for_message(id, &h).tracestate, None);
    }

    #[test]
    fn an_xray_trace_header_becomes_a_traceparent() {
        assert_eq!(
            traceparent_from_xray("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
                .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01")
        );
        assert_eq!(
            traceparent_from_xray(
                "Sampled=0; Parent=53995C3F42CD8AD8; Root=1-5759E988-BD862E3FE1BE46A994272793;Lineage=a:1"
            )
            .as_deref(),
            Some("00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-00")
        );
        for bad in [
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3f;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a99427279z;Parent=53995c3f42cd8ad8",
            "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8",
            "garbage",
            "",
        ] {
            assert_eq!(traceparent_from_xray(bad), None, "{bad:?}");
        }
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
