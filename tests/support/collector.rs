//! An OTLP/HTTP collector inside the test: it decodes every export qt sends to
//! `POST /v1/traces` and keeps the spans, as a tracing backend would receive them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// OTLP span kinds and status codes the tests look for.
pub const CLIENT: i32 = 3;
pub const CONSUMER: i32 = 5;
pub const ERROR: i32 = 2;

/// `config` (a qt YAML with an `observability:` line) with tracing on, exporting to `endpoint`.
pub fn with_tracing(config: &str, endpoint: &str) -> String {
    assert!(
        config.contains("observability:\n"),
        "no observability section in:\n{config}"
    );
    config.replacen(
        "observability:\n",
        &format!("observability:\n  tracing: {{enabled: true, endpoint: \"{endpoint}\"}}\n"),
        1,
    )
}

/// The one consumer span of `message_id` among `spans`.
pub fn consumer_span<'a>(spans: &'a [ReceivedSpan], message_id: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == CONSUMER && s.attr("messaging.message.id") == Some(message_id))
        .collect();
    assert_eq!(found.len(), 1, "one consumer span for {message_id}: {spans:#?}");
    found[0]
}

/// One received span, its ids as lower-case hex.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP's span kind number: 2 server, 3 client, 5 consumer, 1 internal.
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// `(trace id, span id)` of each linked span.
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Checks that this consumer span continues the producer's span `parent` of trace
    /// `trace`, for a message of `system` from `destination`.
    pub fn assert_continues(&self, trace: &str, parent: &str, system: &str, destination: &str) {
        assert_eq!(self.trace_id, trace, "{self:#?}");
        assert_eq!(self.parent_span_id, parent, "{self:#?}");
        assert_eq!(self.name, format!("process {destination}"), "{self:#?}");
        assert_eq!(self.attr("messaging.system"), Some(system), "{self:#?}");
        assert_eq!(self.attr("messaging.destination.name"), Some(destination), "{self:#?}");
        assert_eq!(self.attr("messaging.operation.type"), Some("process"), "{self:#?}");
    }
}

/// The collector, serving on its own runtime while it lives.
pub struct Collector {
    pub url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    pub fn start() -> Self {
        let runtime = super::runtime();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            spans,
            _runtime: runtime,
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut received = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?))))
                        .collect(),
                    status: span.status.map_or(0, |s| s.code),
                    links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                });
            }
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

fn text(value: &AnyValue) -> String {
    match value {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
