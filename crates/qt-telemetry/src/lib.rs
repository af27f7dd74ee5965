//! `observability.tracing`: the OpenTelemetry SDK behind the engine's message spans
//! (`qt_engine::TriggerBuilder::tracer`), exporting them over OTLP: HTTP with protobuf bodies,
//! or gRPC.
//!
//! Finished spans go into a bounded queue that one export thread drains in batches. A
//! collector that is slow or down never slows the pipeline: when the queue is full a span is
//! dropped and counted (`qt_trace_spans_dropped_total`). The queue is ours rather than the
//! SDK's `BatchSpanProcessor` because that one keeps its count of dropped spans private, and
//! the count is what an operator needs to see. Before the queue is full it tells the engine,
//! through an [`ExportGate`], to stop tracing new messages until the export thread has
//! taken what is queued: spans are then rarely made only to be dropped. The export thread runs a small Tokio runtime of
//! its own, so the exporter uses the same reqwest client as the `http` agents.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use qt_core::config::{OtlpProtocol, TracingConfig};
use qt_core::trace::ExportGate;

/// Spans dropped because the export queue was full, since start.
static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Spans a collector accepted, since start.
static SPANS_EXPORTED: AtomicU64 = AtomicU64::new(0);
/// Spans whose export failed (collector down, refusing, too slow), since start.
static SPANS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Most links a span keeps: `processing.batch_size` at its largest.
const MAX_LINKS: u32 = 10_000;
/// Most spans sent in one export.
const MAX_EXPORT_BATCH: usize = 512;
/// Longest a finished span waits before it is sent.
const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// Why tracing could not start: the setting at fault and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("observability.tracing{field}: {reason}")]
pub struct TelemetryError {
    /// `.ca_file`, `.endpoint`, or empty for the whole section.
    field: &'static str,
    reason: String,
}

impl TelemetryError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// The export counters, for `/metrics`: dropped, exported, failed.
pub fn span_counts() -> (u64, u64, u64) {
    (
        SPANS_DROPPED.load(Ordering::Relaxed),
        SPANS_EXPORTED.load(Ordering::Relaxed),
        SPANS_FAILED.load(Ordering::Relaxed),
    )
}

/// The running tracer provider; [`Tracing::shutdown`] sends what is queued.
pub struct Tracing {
    provider: SdkTracerProvider,
    gate: Arc<ExportGate>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Builds the exporter and the provider from the configuration. Errors name the field.
    pub fn start(config: &TracingConfig) -> Result<Self, TelemetryError> {
        // The export thread's runtime; a gRPC channel's background work is spawned onto it
        // as the exporter is built, and runs while the thread exports.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TelemetryError::new("", format!("cannot start the span exporter's runtime: {e}")))?;
        let ca = match &config.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| TelemetryError::new(".ca_file", format!("cannot read {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let mut exporter = match config.protocol {
            OtlpProtocol::Http => http_exporter(config, ca.as_deref())?,
            OtlpProtocol::Grpc => {
                let _inside = runtime.enter();
                grpc_exporter(config, ca)?
            }
        };
        let mut attributes: Vec<KeyValue> = config
            .resource_attributes
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        attributes.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .with_attributes(attributes)
            .build();
        exporter.set_resource(&resource);
        let gate = Arc::new(ExportGate::default());
        let queue = ExportQueue::start(runtime, exporter, config.max_queue_size, gate.clone())?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            // The engine decides which messages are kept (see qt-engine's spans module) and
            // makes spans only for those.
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            // A batch step links to each traced message of its batch (at most
            // processing.batch_size's largest value), not the SDK's default 128.
            .with_max_links_per_span(MAX_LINKS)
            .with_span_processor(queue)
            .build();
        Ok(Self { provider, gate })
    }

    /// Set while the export queue is nearly full, for the engine to stop tracing new
    /// messages until there is room (`qt_engine::TraceSettings::export_gate`).
    pub fn export_gate(&self) -> Arc<ExportGate> {
        self.gate.clone()
    }

    /// The tracer the engine makes its spans with.
    pub fn tracer(&self) -> opentelemetry::global::BoxedTracer {
        opentelemetry::global::BoxedTracer::new(Box::new(self.provider.tracer("qt")))
    }

    /// Sends every span queued so far, waiting at most `within`.
    pub async fn flush(&self, within: Duration) {
        let provider = self.provider.clone();
        let _ = tokio::time::timeout(within, tokio::task::spawn_blocking(move || provider.force_flush())).await;
    }

    /// Sends what is queued, waiting at most `within`, and stops the export thread.
    pub async fn shutdown(self, within: Duration) {
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "spans still queued at exit were not all exported"),
            Err(e) => tracing::warn!(error = %e, "stopping the span exporter failed"),
        }
    }
}

/// An OTLP/HTTP exporter on reqwest.
fn http_exporter(
    config: &TracingConfig,
    ca: Option<&[u8]>,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let endpoint = config.effective_endpoint();
    let mut client = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| TelemetryError::new(".ca_file", format!("holds no PEM certificate: {e}")))?;
        for cert in certs {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client
        .build()
        .map_err(|e| TelemetryError::new("", format!("cannot build the exporter's HTTP client: {e}")))?;
    let headers: HashMap<String, String> = config
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
        .collect();
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.expose())
        .with_timeout(config.timeout)
        .with_headers(headers)
        .with_http_client(OtlpClient(client))
        .build()
        .map_err(|e| TelemetryError::new(".endpoint", format!("cannot export to {endpoint}: {e}")))
}

/// An OTLP/gRPC exporter (tonic). Call it inside the runtime the exports will run on.
fn grpc_exporter(
    config: &TracingConfig,
    ca: Option<Vec<u8>>,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::WithTonicConfig;
    use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
    use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

    let endpoint = config.effective_endpoint();
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let key = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| TelemetryError::new(".headers", format!("{name}: {e}")))?;
        let mut value = HeaderValue::from_str(value.expose())
            .map_err(|_| TelemetryError::new(".headers", format!("{name}: not a valid metadata value")))?;
        value.set_sensitive(true);
        headers.insert(key, value);
    }
    let metadata = MetadataMap::from_headers(headers);
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.expose())
        .with_timeout(config.timeout)
        .with_metadata(metadata);
    if endpoint.scheme().as_deref() == Some("https") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(pem) = ca {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        builder = builder.with_tls_config(tls);
    }
    builder
        .build()
        .map_err(|e| TelemetryError::new(".endpoint", format!("cannot export to {endpoint}: {e}")))
}

/// The exporter's HTTP client: reqwest, run on the export thread's runtime.
#[derive(Debug)]
struct OtlpClient(reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let response = self.0.execute(request).await?;
        let mut out = opentelemetry_http::Response::builder().status(response.status());
        if let Some(headers) = out.headers_mut() {
            *headers = response.headers().clone();
        }
        Ok(out.body(response.bytes().await?)?)
    }
}

/// What waits for the export thread: finished spans, and requests to export them now.
#[derive(Debug, Default)]
struct Queued {
    spans: Vec<SpanData>,
    /// Each answered once everything queued before it was asked for is exported.
    flushes: Vec<SyncSender<()>>,
    /// Set when the queue stops: the thread exports what is left and ends.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    queued: Mutex<Queued>,
    /// Wakes the export thread before its next tick: a full batch, a flush, a stop.
    wake: Condvar,
    capacity: usize,
    /// Set from `high_water` queued spans until the export thread takes them: the spans
    /// of messages already traced still fit in the rest of the queue.
    gate: Arc<ExportGate>,
    high_water: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A bounded queue of finished spans and the thread that exports them.
///
/// Ending a span only pushes it under a lock: the export thread is woken when a batch is
/// full, and otherwise exports on its own tick. Waking it for every span would cost each span
/// a thread switch, which on a busy machine is most of what tracing a message costs.
#[derive(Debug)]
struct ExportQueue {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ExportQueue {
    fn start(
        runtime: tokio::runtime::Runtime,
        exporter: opentelemetry_otlp::SpanExporter,
        capacity: usize,
        gate: Arc<ExportGate>,
    ) -> Result<Self, TelemetryError> {
        let shared = Arc::new(Shared {
            queued: Mutex::new(Queued::default()),
            wake: Condvar::new(),
            capacity,
            gate,
            high_water: (capacity - capacity / 4).max(1),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("qt-span-export".to_owned())
            .spawn(move || export_loop(&runtime, &exporter, &thread_shared))
            .map_err(|e| TelemetryError::new("", format!("cannot start the span export thread: {e}")))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks the thread to export everything queued so far and waits at most `within`.
    fn flush(&self, within: Duration) -> OTelSdkResult {
        let (done, wait) = sync_channel(1);
        self.shared.lock().flushes.push(done);
        self.shared.wake.notify_one();
        wait.recv_timeout(within).map_err(|_| OTelSdkError::Timeout(within))
    }

    /// Lets the thread export what is left and end.
    fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for ExportQueue {
    fn drop(&mut self) {
        self.close();
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let mut queued = self.shared.lock();
        if queued.spans.len() >= self.shared.capacity {
            SPANS_DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queued.spans.push(span);
        if queued.spans.len() >= self.shared.high_water {
            self.shared.gate.set_saturated(true);
        }
        let full = queued.spans.len() == MAX_EXPORT_BATCH.min(self.shared.capacity);
        drop(queued);
        if full {
            self.shared.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush(Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let flushed = self.flush(timeout);
        self.close();
        // The provider holds this processor, so the thread is detached rather than waited
        // for: it ends once it has exported what is left.
        drop(
            self.thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        flushed
    }
}

/// Exports every [`EXPORT_DELAY`], or at once when a batch is full, a flush is asked for or
/// the queue closes.
fn export_loop(runtime: &tokio::runtime::Runtime, exporter: &opentelemetry_otlp::SpanExporter, shared: &Shared) {
    loop {
        let (spans, flushes, closed) = {
            let mut queued = shared.lock();
            let tick = Instant::now() + EXPORT_DELAY;
            while queued.spans.len() < MAX_EXPORT_BATCH && queued.flushes.is_empty() && !queued.closed {
                let left = tick.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                queued = shared
                    .wake
                    .wait_timeout(queued, left)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            shared.gate.set_saturated(false);
            (
                std::mem::take(&mut queued.spans),
                std::mem::take(&mut queued.flushes),
                queued.closed,
            )
        };
        let mut spans = spans.into_iter();
        loop {
            let batch: Vec<SpanData> = spans.by_ref().take(MAX_EXPORT_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            export(runtime, exporter, batch);
        }
        for done in flushes {
            let _ = done.try_send(());
        }
        if closed {
            return;
        }
    }
}

fn export(runtime: &tokio::runtime::Runtime, exporter: &opentelemetry_otlp::SpanExporter, spans: Vec<SpanData>) {
    let n = spans.len() as u64;
    match runtime.block_on(exporter.export(spans)) {
        Ok(()) => {
            SPANS_EXPORTED.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            SPANS_FAILED.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(error = %e, spans = n, "exporting spans failed; they are dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

    use super::*;

    /// Tracing to `silent`, a listener that never answers: an export hangs until `timeout`.
    fn to_silent_collector(silent: &std::net::TcpListener, timeout: Duration, max_queue_size: usize) -> TracingConfig {
        TracingConfig {
            enabled: true,
            endpoint: Some(qt_core::SecretUrl::new(format!(
                "http://{}/v1/traces",
                silent.local_addr().unwrap()
            ))),
            timeout,
            max_queue_size,
            ..TracingConfig::default()
        }
    }

    #[test]
    fn the_gate_closes_at_three_quarters_of_the_queue_and_opens_when_the_exporter_takes_it() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tracing = Tracing::start(&to_silent_collector(&silent, Duration::from_secs(1), 16)).unwrap();
        let gate = tracing.export_gate();
        let tracer = tracing.tracer();
        for _ in 0..11 {
            tracer.start("step").end();
        }
        assert!(!gate.is_saturated(), "11 of 16 queued");
        tracer.start("step").end();
        assert!(gate.is_saturated(), "12 of 16 queued");
        // The export thread takes the queue on its next tick, whatever the collector does.
        let deadline = Instant::now() + EXPORT_DELAY * 3;
        while gate.is_saturated() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!gate.is_saturated(), "the gate opens once the queue is taken");
    }

    #[test]
    fn when_the_collector_does_not_answer_spans_beyond_the_queue_are_dropped_and_counted() {
        // A listener that never answers: the first export hangs until its timeout, and the
        // spans behind it fill the queue.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (dropped_before, _, _) = span_counts();
        let tracing = Tracing::start(&to_silent_collector(&silent, Duration::from_secs(2), 10)).unwrap();
        let tracer = tracing.tracer();
        let started = Instant::now();
        for _ in 0..1000 {
            tracer.start("step").end();
        }
        // Ending a span never waits for the collector.
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        let (dropped, _, _) = span_counts();
        assert!(
            dropped - dropped_before >= 1000 - 10 - MAX_EXPORT_BATCH as u64,
            "dropped {}",
            dropped - dropped_before
        );
        drop(silent);
    }

    /// A collector's gRPC trace service, passing on what it receives.
    struct GrpcSink(tokio::sync::mpsc::UnboundedSender<(String, Vec<String>)>);

    #[tonic::async_trait]
    impl TraceService for GrpcSink {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let key = request
                .metadata()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let names = request
                .into_inner()
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .map(|s| s.name)
                .collect();
            let _ = self.0.send((key, names));
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_a_grpc_collector_with_the_configured_metadata() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent, mut received) = tokio::sync::mpsc::unbounded_channel();
        let service = TraceServiceServer::new(GrpcSink(sent));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .http2_only()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper_util::service::TowerToHyperService::new(service),
                        )
                        .await;
                });
            }
        });
        let config = TracingConfig {
            enabled: true,
            protocol: OtlpProtocol::Grpc,
            endpoint: Some(qt_core::SecretUrl::new(format!("http://{addr}"))),
            headers: [("x-api-key".to_owned(), qt_core::Secret::new("key-1"))].into(),
            ..TracingConfig::default()
        };
        let tracing = Tracing::start(&config).unwrap();
        tracing.tracer().start("grpc-step").end();
        tracing.shutdown(Duration::from_secs(10)).await;
        let (key, names) = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("an export within 10 s")
            .unwrap();
        assert_eq!(key, "key-1");
        assert_eq!(names, ["grpc-step"]);
    }
}
