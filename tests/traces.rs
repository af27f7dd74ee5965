//! End-to-end: `qt run` with `observability.tracing` exports each message's spans over
//! OTLP/HTTP to a collector started by the test, continuing the producer's trace, and hands
//! each agent attempt's context to the agent.

// The commands' output is printed for `cargo test` to show when a test fails.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

mod support;

use support::collector::{CLIENT, CONSUMER, Collector, ERROR, ReceivedSpan, consumer_span};
use support::files::{by_message, jsonl};
use support::process::{qt, run_bounded};

const BOUND: Duration = Duration::from_secs(60);
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE: &str = "5759e988bd862e3fe1be46a994272793";

/// An agent that notes, per message and attempt, the trace context it was given, then fails
/// the first attempt of `flaky` messages (retryable), every attempt of `broken` ones
/// (permanent) and succeeds otherwise.
fn agent(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("agent.sh");
    std::fs::write(
        &script,
        format!(
            "echo \"$QT_MESSAGE_ID $QT_ATTEMPT $TRACEPARENT ${{TRACESTATE:-none}}\" >> {seen}\n\
             case \"$QT_MESSAGE_ID\" in\n\
               flaky-*) [ \"$QT_ATTEMPT\" = 1 ] && exit 75 ;;\n\
               broken-*) exit 3 ;;\n\
             esac\n\
             exit 0\n",
            seen = dir.join("seen").display()
        ),
    )
    .unwrap();
    script
}

/// `(message id, attempt) -> (traceparent, tracestate)` as the agent saw them.
fn seen_by_agent(dir: &Path) -> BTreeMap<(String, String), (String, String)> {
    std::fs::read_to_string(dir.join("seen"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            ((f[0].to_owned(), f[1].to_owned()), (f[2].to_owned(), f[3].to_owned()))
        })
        .collect()
}

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
        .collect()
}

#[test]
fn each_message_is_exported_as_a_span_tree_that_continues_the_producers_trace() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(
        &messages,
        format!(
            "{{\"id\": \"ok-1\", \"headers\": {{\"traceparent\": \"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01\", \"tracestate\": \"vendor=abc\"}}, \"json\": {{\"type\": \"order.created\", \"order_id\": \"A-1\"}}}}\n\
             {{\"id\": \"flaky-1\", \"json\": {{\"type\": \"order.created\", \"order_id\": \"A-2\"}}}}\n\
             {{\"id\": \"broken-1\", \"json\": {{\"type\": \"order.created\", \"order_id\": \"A-3\"}}}}\n\
             {{\"id\": \"quiet-1\", \"headers\": {{\"traceparent\": \"00-{UNSAMPLED_TRACE}-{PRODUCER_SPAN}-00\"}}, \"json\": {{\"type\": \"order.created\", \"order_id\": \"A-4\"}}}}\n\
             {{\"id\": \"garbled-1\", \"text\": \"not json\"}}\n"
        ),
    )
    .unwrap();
    let (ledger, dlq) = (dir.path().join("ledger.jsonl"), dir.path().join("dlq.jsonl"));
    let cfg = dir.path().join("traced.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
source: {{type: mock, queue: orders, file: {messages}, dlq_file: {dlq}}}
processing:
  extraction: {{event_name: [{{pointer: /type}}], dedup_key: [{{pointer: /order_id}}]}}
retry: {{max_retries: 2, backoff: {{initial: 10ms, multiplier: 2.0, max: 50ms}}}}
agent:
  targets:
    worker: {{type: command, program: /bin/sh, args: ["{agent}"], timeout: 10s}}
ledger: {{type: jsonl, path: {ledger}}}
observability:
  admin: {{enabled: false}}
  tracing:
    enabled: true
    endpoint: "{endpoint}"
    service_name: qt-e2e
    resource_attributes: {{deployment.environment: test}}
"#,
            messages = messages.display(),
            dlq = dlq.display(),
            ledger = ledger.display(),
            agent = agent(dir.path()).display(),
            endpoint = collector.url,
        ),
    )
    .unwrap();
    let out = run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&cfg), dir.path(), BOUND);
    assert!(out.status.success(), "{}", out.stderr);
    // Stopping flushed the queue: every span is there once qt has exited.
    let spans = collector.spans();
    let seen = seen_by_agent(dir.path());
    let records = by_message(&jsonl(&ledger));
    assert!(spans.iter().all(|s| s.service == "qt-e2e"), "{spans:#?}");

    // The producer's trace goes on: qt's span is the child of the producer's span.
    let ok = consumer_span(&spans, "ok-1");
    ok.assert_continues(PRODUCER_TRACE, PRODUCER_SPAN, "mock", "orders");
    assert_eq!(ok.attr("qt.event_name"), Some("order.created"));
    assert_eq!(ok.attr("qt.status"), Some("succeeded"));
    assert_eq!(ok.attr("qt.settlement"), Some("ack"));
    assert_eq!(
        records["ok-1"][0]["trace_id"], PRODUCER_TRACE,
        "the ledger shows the exported trace"
    );
    let kids = children(&spans, ok);
    assert!(
        kids.iter()
            .any(|s| s.name == "governance" && s.attr("qt.governance.decision") == Some("allow")),
        "{kids:#?}"
    );
    let attempts: Vec<_> = kids.iter().filter(|s| s.kind == CLIENT).collect();
    assert_eq!(attempts.len(), 1, "{kids:#?}");
    assert_eq!(attempts[0].name, "agent worker");
    // The agent's parent is the attempt span, and the producer's trace state travels along.
    let (traceparent, tracestate) = &seen[&("ok-1".to_owned(), "1".to_owned())];
    assert_eq!(traceparent, &format!("00-{PRODUCER_TRACE}-{}-01", attempts[0].span_id));
    assert_eq!(tracestate, "vendor=abc");

    // A message without context starts a trace; its failed attempt and its retry are both there.
    let flaky = consumer_span(&spans, "flaky-1");
    assert!(flaky.parent_span_id.is_empty(), "a new trace: {flaky:#?}");
    assert_eq!(records["flaky-1"][0]["trace_id"], flaky.trace_id.as_str());
    let mut tries: Vec<_> = children(&spans, flaky)
        .into_iter()
        .filter(|s| s.kind == CLIENT)
        .collect();
    tries.sort_by_key(|s| s.attr("qt.agent.attempt").map(str::to_owned));
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(tries[0].attr("qt.agent.error_class"), Some("retryable"));
    assert_eq!(tries[0].status, ERROR);
    assert!(tries[0].attr("qt.agent.retry_in_ms").is_some(), "{:#?}", tries[0]);
    assert_eq!(tries[1].attr("qt.agent.error_class"), None);
    for (attempt, span) in [("1", tries[0]), ("2", tries[1])] {
        let (traceparent, _) = &seen[&("flaky-1".to_owned(), attempt.to_owned())];
        assert_eq!(traceparent, &format!("00-{}-{}-01", flaky.trace_id, span.span_id));
    }

    // A permanent failure: the message's span is an error and says it was dead-lettered.
    let broken = consumer_span(&spans, "broken-1");
    assert_eq!(broken.status, ERROR);
    assert_eq!(broken.attr("qt.status"), Some("failed"));
    assert_eq!(broken.attr("qt.settlement"), Some("dead_letter"));
    // The dead letter carries qt's span as its traceparent, so a replay continues the trace.
    let dead = jsonl(&dlq);
    let dead_letter = |id: &str| {
        dead.iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("{id}: {dead:#?}"))
    };
    assert_eq!(
        dead_letter("broken-1")["headers"]["traceparent"],
        format!("00-{}-{}-01", broken.trace_id, broken.span_id).as_str(),
    );

    // A message that cannot be parsed is traced too.
    let garbled = consumer_span(&spans, "garbled-1");
    assert_eq!(garbled.attr("qt.status"), Some("parse_failed"));
    assert_eq!(garbled.status, ERROR);
    assert_eq!(records["garbled-1"][0]["trace_id"], garbled.trace_id.as_str());
    assert_eq!(
        dead_letter("garbled-1")["headers"]["traceparent"],
        format!("00-{}-{}-01", garbled.trace_id, garbled.span_id).as_str(),
    );

    // The batched steps each have a span linked to the messages they served.
    for step in ["idempotency claim", "ledger write", "settle"] {
        let linked: Vec<_> = spans.iter().filter(|s| s.name == step).collect();
        assert!(!linked.is_empty(), "a {step} span: {spans:#?}");
        let links: usize = linked.iter().map(|s| s.links.len()).sum();
        assert!(
            links >= 3,
            "{step} spans link to the three traced messages: {linked:#?}"
        );
        for s in &linked {
            for (trace, span) in &s.links {
                assert!(
                    spans
                        .iter()
                        .any(|m| m.kind == CONSUMER && &m.trace_id == trace && &m.span_id == span),
                    "{step} links to a message span: {s:#?}"
                );
            }
        }
    }

    // The producer decided not to sample: no span, and the agent is told so.
    assert!(spans.iter().all(|s| s.trace_id != UNSAMPLED_TRACE), "{spans:#?}");
    let (traceparent, _) = &seen[&("quiet-1".to_owned(), "1".to_owned())];
    assert!(
        traceparent.starts_with(&format!("00-{UNSAMPLED_TRACE}-")) && traceparent.ends_with("-00"),
        "{traceparent}"
    );
}

#[test]
fn a_collector_that_is_down_costs_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let cfg = dir.path().join("down.yaml");
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", support::free_port());
    std::fs::write(
        &cfg,
        format!(
            r#"
source: {{type: mock, queue: orders, file: examples/http-messages.jsonl}}
processing: {{on_failure: ack, on_parse_failure: ack, on_unrouted: ack}}
agent: {{targets: {{log: {{type: log}}}}}}
ledger: {{type: jsonl, path: {ledger}}}
observability:
  admin: {{enabled: false}}
  tracing: {{enabled: true, endpoint: "{endpoint}", timeout: 1s}}
"#,
            ledger = ledger.display(),
        ),
    )
    .unwrap();
    let out = run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&cfg), dir.path(), BOUND);
    assert!(out.status.success(), "{}", out.stderr);
    let records = jsonl(&ledger);
    assert_eq!(records.len(), 4, "{records:#?}");
    assert!(records.iter().all(|r| r["status"] == "succeeded"), "{records:#?}");
    assert!(out.stderr.contains("exporting spans failed"), "{}", out.stderr);
}

#[test]
fn a_requeued_message_continues_its_trace_from_the_first_deliverys_span() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start();
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(
        &messages,
        "{\"id\": \"again-1\", \"json\": {\"type\": \"order.created\", \"order_id\": \"B-1\"}}\n",
    )
    .unwrap();
    // Fails its first delivery for good (so it is requeued), succeeds on the next.
    let script = dir.path().join("agent.sh");
    std::fs::write(&script, "grep -q '\"delivery_attempt\":1[,}]' && exit 3\nexit 0\n").unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let cfg = dir.path().join("requeue.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
source: {{type: mock, queue: orders, file: {messages}}}
processing:
  extraction: {{event_name: [{{pointer: /type}}], dedup_key: [{{pointer: /order_id}}]}}
  on_failure: requeue
  requeue_delay: 10ms
retry: {{max_retries: 0}}
agent:
  targets:
    worker: {{type: command, program: /bin/sh, args: ["{agent}"], timeout: 10s}}
ledger: {{type: jsonl, path: {ledger}}}
observability:
  admin: {{enabled: false}}
  tracing: {{enabled: true, endpoint: "{endpoint}"}}
"#,
            messages = messages.display(),
            ledger = ledger.display(),
            agent = script.display(),
            endpoint = collector.url,
        ),
    )
    .unwrap();
    let out = run_bounded(qt().args(["run", "--until-idle", "-c"]).arg(&cfg), dir.path(), BOUND);
    assert!(out.status.success(), "{}", out.stderr);
    let spans = collector.spans();
    let mut deliveries: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == CONSUMER && s.attr("messaging.message.id") == Some("again-1"))
        .collect();
    deliveries.sort_by_key(|s| s.attr("qt.delivery_attempt").unwrap_or("1").to_owned());
    assert_eq!(deliveries.len(), 2, "{spans:#?}");
    let (first, second) = (deliveries[0], deliveries[1]);
    assert_eq!(first.attr("qt.settlement"), Some("requeue"), "{first:#?}");
    assert_eq!(second.attr("qt.status"), Some("succeeded"), "{second:#?}");
    assert_eq!(second.trace_id, first.trace_id, "one trace across deliveries");
    assert_eq!(
        second.parent_span_id, first.span_id,
        "the redelivery follows the first delivery"
    );
}
