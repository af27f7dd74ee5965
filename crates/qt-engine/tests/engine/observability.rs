//! Logs and secrets (requirements 8.2, 8.5, 9.2).

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;
use qt_core::AgentRuntime;
use qt_core::config::{RedisStoreConfig, StoreConfig};
use serde_json::{Value, json};
use tracing_subscriber::fmt::MakeWriter;

use crate::support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Log lines that are about the trigger as a whole, not one message.
const LIFECYCLE: &[&str] = &["trigger started", "trigger stopped", "drain timeout passed"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// trace_id on every per-message log line (8.2, 8.5): with logging at debug, every
    /// line except lifecycle ones carries the message's trace_id and message_id, and the
    /// trace_id is the one in the ledger record of that delivery.
    #[test]
    fn every_message_log_line_has_its_trace_id(kinds in prop::collection::vec(0u8..4, 1..10)) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(capture.clone())
            .finish();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ran = tracing::subscriber::with_default(subscriber, || rt.block_on(async {
            let mut c = config();
            c.retry.max_retries = 1;
            let agent = ScriptedAgent::new("default");
            let messages = kinds.iter().enumerate().map(|(i, k)| {
                let id = format!("m{i}");
                match k {
                    0 => ok(&id),
                    1 => msg(&id, &[], json!({"do": "fail", "class": "retryable"})),
                    2 => qt_core::RawMessage::new(id, &b"{bad"[..], qt_core::SourceInfo::new("mock", "q")),
                    _ => msg(&id, &[("x-dedup-key", "shared")], json!({})),
                }
            }).collect();
            run_to_idle(c, &[("default", agent as Arc<dyn AgentRuntime>)], messages).await
        }));
        // Each delivery is its own trace (unless the producer sent a traceparent), and each
        // delivery leaves a ledger record: a line's trace id must be one of its message's.
        let mut traces: std::collections::HashMap<String, std::collections::HashSet<String>> = Default::default();
        for r in ran.records() {
            traces.entry(r.message_id).or_default().insert(r.trace_id.to_string());
        }
        let text = String::from_utf8(capture.0.lock().clone()).unwrap();
        let mut per_message_lines = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let message = v["message"].as_str().unwrap_or_default();
            if LIFECYCLE.iter().any(|l| message.starts_with(l)) {
                continue;
            }
            per_message_lines += 1;
            let fields = [&v, &v["span"]];
            let trace = fields.iter().find_map(|f| f["trace_id"].as_str());
            let id = fields.iter().find_map(|f| f["message_id"].as_str());
            prop_assert!(trace.is_some() && id.is_some(), "line without trace_id/message_id: {}", line);
            prop_assert!(traces.get(id.unwrap()).is_some_and(|t| t.contains(trace.unwrap())), "{}", line);
        }
        prop_assert!(per_message_lines >= kinds.len(), "each message logs at least once");
    }
}

/// No secret in any Debug or printed form of a configuration (9.2).
#[test]
fn configured_secrets_never_print() {
    let mut c = config();
    let mut redis = RedisStoreConfig::new("rediss://svc:hunter2-password@cache.internal:6380/0");
    redis.password = Some(qt_core::Secret::new("second-s3cret"));
    c.idempotency.store = StoreConfig::Redis(redis);
    let outputs = [format!("{c:?}"), format!("{c:#?}"), c.to_masked_yaml()];
    for out in outputs {
        assert!(!out.contains("hunter2-password"), "{out}");
        assert!(!out.contains("second-s3cret"), "{out}");
        assert!(out.contains("cache.internal"), "the host stays visible: {out}");
    }
}

/// A run that outlives its idempotency lease is reported with the message it concerns:
/// the warning names trace id, message id and key, so an operator can find the run.
#[test]
fn an_expired_lease_is_reported_with_its_message() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::WARN)
        .with_writer(capture.clone())
        .finish();
    // One thread, so the whole trigger logs to this test's subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ran = tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let mut c = config();
            c.idempotency.lease = std::time::Duration::from_millis(20);
            let agent = ScriptedAgent::new("default");
            let slow = msg("slow", &[("x-dedup-key", "k-slow")], json!({"do": "sleep", "ms": 80}));
            run_to_idle(c, &[("default", agent as Arc<dyn AgentRuntime>)], vec![slow]).await
        })
    });
    let record = ran
        .final_records()
        .remove("slow")
        .expect("the slow message has a record");
    let text = String::from_utf8(capture.0.lock().clone()).unwrap();
    let warning = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("idempotency lease had expired"))
        })
        .unwrap_or_else(|| panic!("no lease warning in:\n{text}"));
    assert_eq!(warning["message_id"], "slow");
    assert_eq!(warning["trace_id"], record.trace_id.to_string());
    assert_eq!(warning["key"], "k-slow");
}
