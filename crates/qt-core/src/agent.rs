//! The agent runtime the engine triggers (requirement 4).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::envelope::{MessageEnvelope, Payload};
use crate::error_class::ErrorClass;
use crate::health::Health;

/// What an agent receives: the routed event name, the focus that narrows what it may use
/// (requirement 4.4), the tenant, and the message with its origin as context (4.2). Names
/// are shared with the router and the envelope rather than copied per message.
#[derive(Clone, Debug)]
pub struct AgentEvent {
    pub target: Arc<str>,
    pub focus: Option<Arc<str>>,
    /// 1-based attempt number of this trigger within qt's retry loop.
    pub attempt: u32,
    pub envelope: Arc<MessageEnvelope>,
    /// The sub-document selected by `extraction.payload_pointer`, when configured.
    pub selected_payload: Option<Arc<serde_json::Value>>,
    /// This attempt's place in the trace when the engine traces messages; `None` otherwise,
    /// and agents continue the message's trace from a span of their own making (see
    /// [`AgentEvent::outgoing_trace`]).
    pub trace: Option<crate::trace::AttemptTrace>,
}

/// The JSON shape of an event handed to out-of-process agents (command, HTTP).
#[derive(Debug, Serialize)]
pub struct AgentEventJson<'a> {
    pub event_name: &'a str,
    pub target: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub focus: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<&'a str>,
    pub attempt: u32,
    pub context: AgentContextJson<'a>,
}

/// The payload as written into an agent's JSON: a JSON body's own text (not re-encoded),
/// a selected sub-document, text as a string, binary as base64.
#[derive(Debug)]
pub enum PayloadRef<'a> {
    Payload(&'a Payload),
    Selected(&'a serde_json::Value),
}

impl Serialize for PayloadRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PayloadRef::Payload(p) => p.serialize(serializer),
            PayloadRef::Selected(v) => v.serialize(serializer),
        }
    }
}

/// The message and its origin, as the agent sees them.
#[derive(Debug, Serialize)]
pub struct AgentContextJson<'a> {
    pub message_id: &'a str,
    pub trace_id: crate::trace::TraceId,
    pub payload_format: &'static str,
    pub payload: PayloadRef<'a>,
    pub headers: &'a crate::headers::Headers,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub source: &'a crate::message::SourceInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<&'a str>,
    pub delivery_attempt: u32,
}

impl AgentEvent {
    /// The trace context to hand to the agent: this attempt's when the engine traces, else
    /// the message's trace continued from a new span; with the producer's `tracestate`.
    pub fn outgoing_trace(&self) -> crate::trace::OutgoingContext<'_> {
        let mut out = crate::trace::OutgoingContext::for_message(self.envelope.trace_id, &self.envelope.headers);
        match self.trace {
            Some(crate::trace::AttemptTrace::Span(span_id)) => {
                out.traceparent = crate::trace::traceparent(self.envelope.trace_id, span_id, true);
            }
            Some(crate::trace::AttemptTrace::Unsampled) => {
                out.traceparent = self.envelope.trace_id.child_traceparent_with(false);
            }
            None => {}
        }
        out
    }

    /// The event name: the extracted one, or the queue's name when none was extracted.
    pub fn event_name(&self) -> &str {
        self.envelope
            .event_name
            .as_deref()
            .unwrap_or(&self.envelope.source.queue)
    }

    pub fn tenant_id(&self) -> Option<&str> {
        self.envelope.tenant_id.as_deref()
    }

    pub fn focus(&self) -> Option<&str> {
        self.focus.as_deref()
    }

    /// The payload the agent should use: the selected sub-document, or the whole payload.
    pub fn payload_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match &self.selected_payload {
            Some(v) => Ok((**v).clone()),
            None => self.envelope.payload.to_json_value(),
        }
    }

    pub fn to_json(&self) -> AgentEventJson<'_> {
        let env = &self.envelope;
        AgentEventJson {
            event_name: self.event_name(),
            target: &self.target,
            focus: self.focus.as_deref(),
            tenant_id: self.tenant_id(),
            attempt: self.attempt,
            context: AgentContextJson {
                message_id: &env.message_id,
                trace_id: env.trace_id,
                payload_format: if self.selected_payload.is_some() {
                    "json"
                } else {
                    env.payload.format()
                },
                payload: match &self.selected_payload {
                    Some(v) => PayloadRef::Selected(v),
                    None => PayloadRef::Payload(&env.payload),
                },
                headers: &env.headers,
                received_at: env.received_at,
                source: &env.source,
                dedup_key: env.dedup_key.as_deref(),
                delivery_attempt: env.attempt,
            },
        }
    }
}

/// What a successful run reports back (requirement 7.3); the ledger records all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentRun {
    /// The agent's own id for the run.
    pub run_id: Option<String>,
    pub llm_calls: u32,
    /// Whatever result the agent wants kept with the outcome.
    pub output: Option<serde_json::Value>,
}

/// A failed run, classified for retry policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{class} failure: {message}")]
pub struct AgentError {
    pub class: ErrorClass,
    pub message: String,
    /// Honoured as the next delay when the agent says when to come back.
    pub retry_after: Option<Duration>,
}

impl AgentError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Retryable, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Timeout, message)
    }

    pub fn rate_limited(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            class: ErrorClass::RateLimited,
            message: message.into(),
            retry_after,
        }
    }
}

/// Starts agent runs. Library users implement this; the CLI ships command and log targets.
#[async_trait]
pub trait AgentRuntime: Send + Sync + std::fmt::Debug {
    async fn trigger_event(&self, event: &AgentEvent) -> Result<AgentRun, AgentError>;

    async fn health(&self) -> Health {
        Health::Healthy
    }
}
