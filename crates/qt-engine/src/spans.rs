//! OpenTelemetry spans of each message: a consumer span per message that continues the
//! producer's trace (its `traceparent`), with a child for the governance check and one per
//! agent attempt, whose context the agent receives as its parent.
//!
//! The engine speaks the OpenTelemetry API only; whoever builds the trigger hands it a tracer
//! ([`crate::TriggerBuilder::tracer`]; the `qt` binary's exports over OTLP). Messages are
//! handled in batches rather than one task each, so every span is made with an explicit parent
//! taken from its message, never from an ambient "current" context.
//!
//! Sampling is decided here, once per message, before any span is made: a message whose
//! producer sent a valid `traceparent` follows its sampled flag (parent-based); any other is
//! kept with probability `observability.tracing.sample_ratio`, decided from its trace id the
//! way OpenTelemetry's `TraceIdRatioBased` sampler decides. A message not kept gets no span at
//! all, so a low ratio costs next to nothing; its agent still gets a `traceparent` (flags 00).
//! A kept message is handled the same way while the exporter says it has no room
//! ([`ExportGate`]), so tracing costs no more than the collector takes.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use qt_core::trace::{AttemptTrace, ExportGate, parse_traceparent};
use qt_core::{AgentError, Decision, Headers, MessageEnvelope, RawMessage, SourceInfo, TraceId};
use qt_core::{LedgerStatus, SettlementKind};

use crate::metrics::Metrics;

/// What the trigger needs to trace messages: a tracer, the share of new traces to keep,
/// and the exporter's word on whether it has room.
pub struct TraceSettings {
    pub tracer: BoxedTracer,
    /// From 0 to 1.
    pub sample_ratio: f64,
    /// Set by the exporter while it cannot take more spans: kept messages are then not
    /// traced (and counted as `traces_shed`). `None`: always trace what is kept.
    pub export_gate: Option<Arc<ExportGate>>,
}

impl std::fmt::Debug for TraceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSettings")
            .field("sample_ratio", &self.sample_ratio)
            .finish_non_exhaustive()
    }
}

/// What a message's span is made from.
struct Facts<'a> {
    trace_id: TraceId,
    headers: &'a Headers,
    source: &'a SourceInfo,
    message_id: &'a str,
    event_name: Option<&'a str>,
    tenant_id: Option<&'a str>,
    attempt: u32,
}

/// The pipeline's span maker.
pub(crate) struct Spans {
    tracer: BoxedTracer,
    /// `messaging.consumer.group.name`, for a source that has consumer groups (Kafka).
    consumer_group: Option<std::sync::Arc<str>>,
    /// A new trace is kept when the low 63 bits of its id are below this.
    keep_below: u64,
    export_gate: Option<Arc<ExportGate>>,
    /// Counts the messages left untraced because the exporter had no room.
    metrics: Arc<Metrics>,
}

/// The context holding a message's consumer span, carried with it from intake to settlement;
/// empty when the message is not traced (no tracer, or not kept). Boxed: every message's
/// metadata carries it, and most have none.
#[derive(Clone, Debug, Default)]
pub(crate) struct MessageTrace(Option<Box<Context>>);

impl Spans {
    pub fn new(settings: TraceSettings, consumer_group: Option<&str>, metrics: Arc<Metrics>) -> Self {
        let ratio = settings.sample_ratio.clamp(0.0, 1.0);
        Self {
            tracer: settings.tracer,
            consumer_group: consumer_group.map(std::sync::Arc::from),
            keep_below: (ratio * (1u64 << 63) as f64) as u64,
            export_gate: settings.export_gate,
            metrics,
        }
    }

    /// Decides whether the message is kept and, if so, starts its consumer span. A kept
    /// message without a producer's context starts a new trace, whose id becomes the
    /// envelope's (so logs and the ledger show the exported trace).
    pub fn start_message(&self, envelope: &mut MessageEnvelope) -> MessageTrace {
        let (trace, trace_id) = self.start(&Facts {
            trace_id: envelope.trace_id,
            headers: &envelope.headers,
            source: &envelope.source,
            message_id: &envelope.message_id,
            event_name: envelope.event_name.as_deref(),
            tenant_id: envelope.tenant_id.as_deref(),
            attempt: envelope.attempt,
        });
        envelope.trace_id = trace_id;
        trace
    }

    /// [`Spans::start_message`] for a message that could not be parsed: what is known of it
    /// comes from the raw message. Returns the trace id it goes on with.
    pub fn start_unparsed(&self, raw: &RawMessage, trace_id: TraceId) -> (MessageTrace, TraceId) {
        self.start(&Facts {
            trace_id,
            headers: &raw.headers,
            source: &raw.source,
            message_id: &raw.message_id,
            event_name: None,
            tenant_id: raw.headers.get(qt_core::headers::TENANT_ID),
            attempt: raw.attempt(),
        })
    }

    fn start(&self, m: &Facts<'_>) -> (MessageTrace, TraceId) {
        let producer = m
            .headers
            .get(qt_core::headers::TRACEPARENT)
            .and_then(parse_traceparent)
            .filter(|p| p.trace_id == m.trace_id);
        let keep = match &producer {
            Some(p) => p.sampled,
            None => {
                let low = u64::from_be_bytes(m.trace_id.to_bytes()[8..].try_into().expect("8 bytes")) >> 1;
                low < self.keep_below
            }
        };
        if !keep {
            return (MessageTrace(None), m.trace_id);
        }
        if self.export_gate.as_ref().is_some_and(|gate| gate.is_saturated()) {
            self.metrics.trace_shed();
            return (MessageTrace(None), m.trace_id);
        }
        let parent = match producer {
            Some(p) => {
                let state = m
                    .headers
                    .get(qt_core::headers::TRACESTATE)
                    .and_then(|s| s.parse::<TraceState>().ok())
                    .unwrap_or_default();
                Context::new().with_remote_span_context(SpanContext::new(
                    opentelemetry::trace::TraceId::from_bytes(p.trace_id.to_bytes()),
                    SpanId::from_bytes(p.span_id),
                    TraceFlags::SAMPLED,
                    true,
                    state,
                ))
            }
            None => Context::new(),
        };
        let source = m.source;
        let destination = destination_name(source);
        let mut attributes = vec![
            KeyValue::new("messaging.system", messaging_system(&source.adapter)),
            KeyValue::new("messaging.destination.name", destination.clone()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.message.id", m.message_id.to_owned()),
        ];
        if &*source.adapter == "sqs" {
            attributes.push(KeyValue::new("aws.sqs.queue.url", source.queue.clone()));
        }
        if let Some(group) = &self.consumer_group {
            attributes.push(KeyValue::new("messaging.consumer.group.name", group.clone()));
        }
        if let Some(partition) = source.partition {
            attributes.push(KeyValue::new(
                "messaging.destination.partition.id",
                partition.to_string(),
            ));
        }
        if let Some(offset) = source.offset {
            attributes.push(KeyValue::new("messaging.kafka.offset", offset));
        }
        if let Some(event) = m.event_name {
            attributes.push(KeyValue::new("qt.event_name", event.to_owned()));
        }
        if let Some(tenant) = m.tenant_id {
            attributes.push(KeyValue::new("qt.tenant_id", tenant.to_owned()));
        }
        if m.attempt > 1 {
            attributes.push(KeyValue::new("qt.delivery_attempt", i64::from(m.attempt)));
        }
        let span = self
            .tracer
            .span_builder(format!("process {destination}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let trace_id = TraceId::from_bytes(span.span_context().trace_id().to_bytes()).unwrap_or(m.trace_id);
        (MessageTrace(Some(Box::new(parent.with_span(span)))), trace_id)
    }

    /// Starts the span of a step done once for a whole batch (the idempotency claim, the
    /// ledger write, the settlement), linked to the span of each of its messages that is
    /// traced rather than the child of one of them; `None` when none is.
    pub fn start_batch_step(&self, name: &'static str, messages: &[SpanContext]) -> Option<BoxedSpan> {
        if messages.is_empty() {
            return None;
        }
        let count = messages.len() as i64;
        let links = messages.iter().cloned().map(Link::with_context).collect();
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_links(links)
            .with_attributes([KeyValue::new("messaging.batch.message_count", count)])
            .start_with_context(&self.tracer, &Context::new());
        Some(span)
    }

    /// Starts the span of one governance check, under the message's. Boxed, like the attempt
    /// span: the run of every message keeps the slot for one across its waits.
    pub fn start_governance(&self, trace: &MessageTrace) -> Option<Box<Context>> {
        let message = trace.0.as_deref()?;
        let span = self
            .tracer
            .span_builder("governance")
            .with_kind(SpanKind::Internal)
            .start_with_context(&self.tracer, message);
        Some(Box::new(message.with_span(span)))
    }

    /// Starts the span of one agent attempt, under the message's. Returns it with what the
    /// agent is told: the attempt span is its parent, or the message was not kept.
    pub fn start_attempt(
        &self,
        trace: &MessageTrace,
        target: &str,
        attempt: u32,
    ) -> (Option<Box<Context>>, Option<AttemptTrace>) {
        match trace.0.as_deref() {
            None => (None, Some(AttemptTrace::Unsampled)),
            Some(message) => {
                let span = self
                    .tracer
                    .span_builder(format!("agent {target}"))
                    .with_kind(SpanKind::Client)
                    .with_attributes([
                        KeyValue::new("qt.agent.target", target.to_owned()),
                        KeyValue::new("qt.agent.attempt", i64::from(attempt)),
                    ])
                    .start_with_context(&self.tracer, message);
                let span_id = span.span_context().span_id().to_bytes();
                (
                    Some(Box::new(message.with_span(span))),
                    Some(AttemptTrace::Span(span_id)),
                )
            }
        }
    }
}

/// Ends a governance span with what governance decided.
pub(crate) fn end_governance(span: Option<Box<Context>>, decision: &Result<Decision, qt_core::GovernanceError>) {
    let Some(cx) = span else {
        return;
    };
    let span = cx.span();
    match decision {
        Ok(Decision::Allow) => span.set_attribute(KeyValue::new("qt.governance.decision", "allow")),
        Ok(Decision::Deny { reason, policies }) => {
            span.set_attribute(KeyValue::new("qt.governance.decision", "deny"));
            span.set_attributes(refusal(reason, policies));
        }
        Ok(Decision::Defer { reason, policies, .. }) => {
            span.set_attribute(KeyValue::new("qt.governance.decision", "defer"));
            span.set_attributes(refusal(reason, policies));
        }
        Err(e) => {
            span.set_attribute(KeyValue::new("qt.governance.decision", "error"));
            span.set_status(Status::error(e.to_string()));
        }
    }
    span.end();
}

/// Why governance did not allow a run, as span attributes.
fn refusal(reason: &str, policies: &[String]) -> Vec<KeyValue> {
    let mut attributes = vec![KeyValue::new("qt.governance.reason", reason.to_owned())];
    if !policies.is_empty() {
        attributes.push(KeyValue::new("qt.governance.policies", policies.join(",")));
    }
    attributes
}

/// Ends a batch step's span, with the error that failed the step.
pub(crate) fn end_batch_step(span: Option<BoxedSpan>, error: Option<String>) {
    let Some(mut span) = span else {
        return;
    };
    if let Some(error) = error {
        span.set_status(Status::error(error));
    }
    span.end();
}

/// Ends an agent attempt's span: its error class and, when it is retried, the delay before the
/// next attempt.
pub(crate) fn end_attempt(span: Option<Box<Context>>, failed: Option<&AgentError>, retry_in: Option<Duration>) {
    let Some(cx) = span else {
        return;
    };
    let span = cx.span();
    if let Some(error) = failed {
        span.set_attribute(KeyValue::new("qt.agent.error_class", error.class.to_string()));
        span.set_status(Status::error(error.message.clone()));
        if let Some(delay) = retry_in {
            span.set_attribute(KeyValue::new("qt.agent.retry_in_ms", delay.as_millis() as i64));
        }
    }
    span.end();
}

impl MessageTrace {
    /// The message's span, for a batch step to link to; `None` when it is not traced.
    pub fn span_context(&self) -> Option<SpanContext> {
        self.0.as_deref().map(|cx| cx.span().span_context().clone())
    }

    /// The `traceparent` of the message's span, for a dead letter to carry on; `None` when the
    /// message was not traced.
    pub fn traceparent(&self) -> Option<String> {
        let span = self.0.as_deref()?.span();
        let sc = span.span_context();
        let trace_id = TraceId::from_bytes(sc.trace_id().to_bytes())?;
        Some(qt_core::trace::traceparent(trace_id, sc.span_id().to_bytes(), true))
    }

    /// Ends the message's span with its outcome, as the ledger records it.
    pub fn end(self, status: LedgerStatus, settlement: SettlementKind, attempts: u32, error: Option<&str>) {
        let Some(cx) = self.0 else {
            return;
        };
        let span = cx.span();
        span.set_attribute(KeyValue::new("qt.status", status.as_str()));
        span.set_attribute(KeyValue::new("qt.settlement", settlement_name(settlement)));
        span.set_attribute(KeyValue::new("qt.attempts", i64::from(attempts)));
        if matches!(status, LedgerStatus::Failed | LedgerStatus::ParseFailed) {
            span.set_status(Status::error(error.unwrap_or_default().to_owned()));
        }
        span.end();
    }
}

fn settlement_name(settlement: SettlementKind) -> &'static str {
    match settlement {
        SettlementKind::Ack => "ack",
        SettlementKind::Nack => "nack",
        SettlementKind::Requeue => "requeue",
        SettlementKind::DeadLetter => "dead_letter",
    }
}

/// The `messaging.destination.name` of a message's source: the topic or queue, and for SQS,
/// whose sources are queue URLs, the queue's name (the URL's last segment).
fn destination_name(source: &SourceInfo) -> std::sync::Arc<str> {
    match (&*source.adapter, source.queue.rsplit_once('/')) {
        ("sqs", Some((_, name))) if !name.is_empty() => std::sync::Arc::from(name),
        _ => source.queue.clone(),
    }
}

/// The `messaging.system` value of an adapter, by the OpenTelemetry semantic conventions.
fn messaging_system(adapter: &std::sync::Arc<str>) -> opentelemetry::Value {
    match &**adapter {
        "sqs" => "aws_sqs".into(),
        _ => adapter.clone().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::noop::NoopTracer;
    use qt_core::parse::{PayloadFormat, parser_for};

    fn envelope() -> MessageEnvelope {
        let raw = RawMessage::new("m1", &b"{}"[..], SourceInfo::new("mock", "orders"));
        let parser = parser_for(PayloadFormat::Json, 1024, false);
        qt_core::envelope::build_envelope(raw, parser.as_ref(), &Default::default())
            .expect("parses")
            .envelope
    }

    #[test]
    fn a_kept_message_is_not_traced_while_the_exporter_has_no_room_and_is_counted() {
        let gate = Arc::new(ExportGate::default());
        let metrics = Arc::new(Metrics::new());
        let spans = Spans::new(
            TraceSettings {
                tracer: BoxedTracer::new(Box::new(NoopTracer::new())),
                sample_ratio: 1.0,
                export_gate: Some(gate.clone()),
            },
            None,
            metrics.clone(),
        );
        assert!(spans.start_message(&mut envelope()).span_context().is_some(), "traced");

        gate.set_saturated(true);
        assert!(spans.start_message(&mut envelope()).span_context().is_none(), "shed");
        assert_eq!(metrics.snapshot().traces_shed, 1);

        gate.set_saturated(false);
        assert!(
            spans.start_message(&mut envelope()).span_context().is_some(),
            "traced again"
        );
        assert_eq!(metrics.snapshot().traces_shed, 1);
    }
}
