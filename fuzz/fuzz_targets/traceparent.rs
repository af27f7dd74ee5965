//! W3C `traceparent` and `tracestate` as producers send them, and AWS X-Ray trace headers.
//!
//! The input is `traceparent`, optionally followed by a newline and `tracestate`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qt_core::Headers;
use qt_core::headers::{TRACEPARENT, TRACESTATE};
use qt_core::trace::{OutgoingContext, TraceId, parse_traceparent, traceparent, traceparent_from_xray};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parent, state) = text.split_once('\n').unwrap_or((text, ""));
    if let Some(p) = parse_traceparent(parent) {
        // What qt writes for a parsed context reads back as the same context.
        let written = traceparent(p.trace_id, p.span_id, p.sampled);
        assert_eq!(parse_traceparent(&written), Some(p), "{written}");
    }
    let _ = TraceId::from_hex(parent);
    if let Some(converted) = traceparent_from_xray(text) {
        assert!(parse_traceparent(&converted).is_some(), "{converted}");
    }
    let mut headers = Headers::new();
    headers.append(TRACEPARENT, parent);
    headers.append(TRACESTATE, state);
    let trace_id = qt_core::envelope::trace_id_for(&headers);
    let outgoing = OutgoingContext::for_message(trace_id, &headers);
    assert!(
        parse_traceparent(&outgoing.traceparent).is_some(),
        "{}",
        outgoing.traceparent
    );
});
