//! A target that calls an HTTP endpoint per message.
//!
//! The request body is the event JSON, the same document a `command` target reads on stdin.
//! `docs/agent-protocol.md` specifies the request, its headers and the table below for users.
//! Each target has one client, so connections are kept alive and reused across calls (HTTP/2
//! when the server offers it by ALPN). Redirects are not followed: the event is not re-sent to
//! a place the configuration does not name.
//!
//! | response                                   | outcome                                   |
//! |--------------------------------------------|-------------------------------------------|
//! | 2xx                                        | success; body `{"run_id", "llm_calls", "output"}` read if within `max_response_bytes` |
//! | 408                                        | `timeout` (retried), `Retry-After` honoured |
//! | 429                                        | `rate_limited` (retried), `Retry-After` honoured |
//! | 425, 500, 502, 503, 504                    | `retryable`, `Retry-After` honoured        |
//! | no answer within `timeout`                 | `timeout`                                  |
//! | connection refused/reset, TLS or DNS error | `retryable`                                |
//! | any other status (3xx, other 4xx and 5xx)  | `permanent`                                |
//!
//! A failure's error carries the status and at most
//! [`SNIPPET_LIMIT`](super::response::SNIPPET_LIMIT) bytes of the body, with
//! every secret of the target (header values, token, password) masked.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use qt_core::config::{HttpAuth, HttpTarget, HttpVersion};
use qt_core::redact::Redactor;
use qt_core::{AgentError, AgentEvent, AgentRun, AgentRuntime, IdempotencyKey};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, StatusCode};
use tokio::sync::Semaphore;
use tracing::warn;

use super::response::{self, parse_retry_after};

pub struct HttpAgent {
    target: String,
    url: reqwest::Url,
    /// The URL with credentials masked, for errors.
    shown_url: String,
    method: Method,
    client: Client,
    /// Configured headers and `authorization`, all marked sensitive.
    headers: HeaderMap,
    timeout: Duration,
    max_response_bytes: usize,
    slots: Option<Semaphore>,
    redactor: Redactor,
}

/// Shows where the target calls, never its headers or credentials.
impl fmt::Debug for HttpAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAgent")
            .field("target", &self.target)
            .field("url", &self.shown_url)
            .field("method", &self.method)
            .field("headers", &self.headers.len())
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_concurrency", &self.slots.as_ref().map(|_| "bounded"))
            .finish()
    }
}

impl HttpAgent {
    /// Builds the target's client. Errors name the field at fault under `agent.targets.NAME`
    /// (`tls.ca_file: cannot read ...`) and never contain a secret value.
    pub fn new(target: &str, config: &HttpTarget) -> Result<Self, String> {
        let url =
            reqwest::Url::parse(config.url.expose()).map_err(|e| format!("url: not a URL ({e}): {}", config.url))?;
        let method = Method::from_bytes(config.method.as_bytes()).map_err(|e| format!("method: {e}"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("headers.{name}: {e}"))?;
            headers.insert(
                name.clone(),
                sensitive(value.expose()).map_err(|e| format!("headers.{name}: {e}"))?,
            );
        }
        match &config.auth {
            Some(HttpAuth::Bearer(token)) => {
                let value =
                    sensitive(&format!("Bearer {}", token.expose())).map_err(|e| format!("auth.bearer: {e}"))?;
                headers.insert(header::AUTHORIZATION, value);
            }
            Some(HttpAuth::Basic(basic)) => {
                let pair = format!("{}:{}", basic.username, basic.password.expose());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                let value = sensitive(&format!("Basic {encoded}")).map_err(|e| format!("auth.basic: {e}"))?;
                headers.insert(header::AUTHORIZATION, value);
            }
            None => {}
        }
        let mut redactor = Redactor::new(config.secret_values());
        if let Some(HttpAuth::Basic(basic)) = &config.auth {
            // The encoded pair is what travels; a server echoing it must not show it either.
            redactor.add(base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                basic.username,
                basic.password.expose()
            )));
        }
        if let Some(password) = url.password() {
            // reqwest sends URL credentials as basic auth; mask them in every form they travel.
            let user = percent_decode(url.username());
            let plain = percent_decode(password);
            redactor.add(password);
            redactor.add(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{plain}")));
            redactor.add(plain);
        }
        let mut builder = Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true);
        builder = match config.http_version {
            HttpVersion::Auto => builder,
            HttpVersion::Http1 => builder.http1_only(),
            HttpVersion::Http2 => builder.http2_prior_knowledge(),
        };
        if let Some(ca) = &config.tls.ca_file {
            let pem = read_file(ca, "tls.ca_file")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("tls.ca_file: {} holds no PEM certificate: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("tls.ca_file: {} holds no PEM certificate", ca.display()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&config.tls.client_cert_file, &config.tls.client_key_file) {
            let mut pem = read_file(cert, "tls.client_cert_file")?;
            pem.push(b'\n');
            pem.extend(read_file(key, "tls.client_key_file")?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!(
                    "tls.client_cert_file: {} and {} do not make a client identity \
                     (a PEM certificate chain and its PEM private key): {e}",
                    cert.display(),
                    key.display()
                )
            })?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build its HTTP client: {}", chain(&e)))?;
        Ok(Self {
            target: target.to_owned(),
            url,
            shown_url: config.url.masked(),
            method,
            client,
            headers,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            slots: config.max_concurrency.map(Semaphore::new),
            redactor,
        })
    }

    async fn call(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        // Most events fit in 1 KiB; a larger one grows as it is written.
        let mut body = Vec::with_capacity(1024);
        serde_json::to_writer(&mut body, &event.to_json())
            .map_err(|e| AgentError::permanent(format!("cannot serialize the event: {e}")))?;
        let mut request = reqwest::Request::new(self.method.clone(), self.url.clone());
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        add_event_headers(headers, event);
        *request.body_mut() = Some(body.into());
        let exchange = async {
            let response = self.client.execute(request).await?;
            let status = response.status();
            let retry_after = response.headers().get(header::RETRY_AFTER).and_then(parse_retry_after);
            let (body, complete) = read_limited(response, self.max_response_bytes).await?;
            Ok::<_, reqwest::Error>((status, retry_after, body, complete))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(self.timed_out()),
            Ok(Err(e)) if e.is_timeout() => Err(self.timed_out()),
            Ok(Err(e)) => Err(AgentError::retryable(self.redactor.redact(format_args!(
                "calling {} {} (target {}) failed: {}",
                self.method,
                self.shown_url,
                self.target,
                chain(&e.without_url())
            )))),
            Ok(Ok((status, retry_after, body, complete))) => self.outcome(status, retry_after, &body, complete),
        }
    }

    fn outcome(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
        complete: bool,
    ) -> Result<AgentRun, AgentError> {
        if status.is_success() && !complete {
            warn!(
                target_name = %self.target,
                limit = self.max_response_bytes,
                "the agent's response body is longer than max_response_bytes; its report (run id, llm_calls, output) is not read"
            );
        }
        let what = format!("{} {} (target {})", self.method, self.shown_url, self.target);
        response::http_outcome(&what, status, retry_after, body, complete, &self.redactor)
    }

    fn timed_out(&self) -> AgentError {
        AgentError::timeout(format!(
            "{} {} (target {}) did not answer within agent.targets.{}.timeout ({}); raise the timeout if \
             runs this long are expected, or find why the agent is slow",
            self.method,
            self.shown_url,
            self.target,
            self.target,
            humantime::format_duration(self.timeout)
        ))
    }
}

#[async_trait]
impl AgentRuntime for HttpAgent {
    async fn trigger_event(&self, event: &AgentEvent) -> Result<AgentRun, AgentError> {
        let _slot = match &self.slots {
            // The semaphore lives as long as the agent and is never closed.
            Some(slots) => Some(slots.acquire().await.expect("the target's semaphore is never closed")),
            None => None,
        };
        self.call(event).await
    }
}

/// Adds the per-message headers to the target's own. Values that are not plain visible
/// ASCII are made so by [`header_safe`].
fn add_event_headers(h: &mut HeaderMap, event: &AgentEvent) {
    let env = &event.envelope;
    h.reserve(9);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let key = IdempotencyKey::new(env.tenant_id.as_deref(), env.idempotency_key()).scoped();
    h.insert("idempotency-key", header_safe(&key));
    h.insert("x-qt-message-id", header_safe(&env.message_id));
    h.insert("x-qt-event", header_safe(event.event_name()));
    if let Some(tenant) = event.tenant_id() {
        h.insert("x-qt-tenant-id", header_safe(tenant));
    }
    h.insert("x-qt-attempt", HeaderValue::from(event.attempt));
    if let Some(focus) = event.focus() {
        h.insert("x-qt-focus", header_safe(focus));
    }
    let trace = event.outgoing_trace();
    h.insert(
        "traceparent",
        HeaderValue::from_str(&trace.traceparent).expect("a traceparent is lower-case hex and dashes"),
    );
    if let Some(state) = trace.tracestate {
        h.insert(
            "tracestate",
            HeaderValue::from_str(state).expect("a tracestate passed on is visible ASCII, spaces and tabs"),
        );
    }
}

/// `value` as a header value: visible ASCII other than `%` as is, every other byte (space,
/// control characters, `%`, the bytes of non-ASCII characters) percent-encoded as `%XX`.
/// Typical ids pass unchanged, and distinct values stay distinct.
fn header_safe(value: &str) -> HeaderValue {
    let encoded: std::borrow::Cow<'_, str> = percent_encoding::utf8_percent_encode(value, NOT_PLAIN_IN_HEADERS).into();
    HeaderValue::from_str(&encoded).expect("percent-encoded text is visible ASCII")
}

/// What [`header_safe`] encodes besides non-ASCII bytes: controls, space and `%` itself.
const NOT_PLAIN_IN_HEADERS: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b' ').add(b'%');

fn sensitive(value: &str) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        "the value has a character a header cannot carry (a line break or control character)".to_owned()
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Reads the body up to `limit` bytes. `complete` is false when there was more: the rest is not
/// read, and that connection is not reused.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// `%XX` escapes decoded, as reqwest decodes URL credentials before sending them.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn read_file(path: &Path, field: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))
}

/// An error with its causes: reqwest's own text is terse ("error sending request"), the cause
/// says what happened ("Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use axum::Router;
    use axum::body::Bytes;
    use axum::http::HeaderMap as SeenHeaders;
    use axum::response::{IntoResponse, Response};
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use qt_core::config::{HttpTls, TargetConfig};
    use qt_core::{ErrorClass, Secret, SecretUrl, TraceId};
    use qt_test_support::TestCerts;
    use tokio::net::TcpListener;

    use super::response::SNIPPET_LIMIT;
    use super::*;

    /// A request as the test server received it.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        headers: SeenHeaders,
        body: Bytes,
    }

    /// A local HTTP/1.1 server that answers every request with `reply`, counting the
    /// connections it accepts and recording the requests.
    struct Server {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    async fn serve<F, Fut>(reply: F) -> Server
    where
        F: Fn(Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let app = Router::new().fallback(move |method: axum::http::Method, headers: SeenHeaders, body: Bytes| {
            let reply = reply.clone();
            let recorded = recorded.clone();
            async move {
                let s = Seen {
                    method: method.to_string(),
                    headers,
                    body,
                };
                recorded.lock().unwrap().push(s.clone());
                reply(s).await
            }
        });
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            addr,
            connections,
            seen,
        }
    }

    fn status(code: u16, body: &'static str) -> impl Fn(Seen) -> std::future::Ready<Response> + Clone {
        move |_| std::future::ready((StatusCode::from_u16(code).unwrap(), body).into_response())
    }

    fn config(url: String) -> HttpTarget {
        HttpTarget {
            url: SecretUrl::new(url),
            method: "POST".to_owned(),
            timeout: Duration::from_secs(5),
            headers: BTreeMap::new(),
            auth: None,
            tls: HttpTls::default(),
            max_concurrency: None,
            max_response_bytes: 64 * 1024,
            http_version: HttpVersion::Auto,
        }
    }

    fn agent_for(server: &Server) -> HttpAgent {
        HttpAgent::new("bot", &config(format!("http://{}/run", server.addr))).unwrap()
    }

    /// An event with a focus, a tenant, an event name and a dedup key, on its second attempt.
    fn event() -> AgentEvent {
        let mut event = super::super::test_event("bot");
        event.focus = Some(Arc::from("billing"));
        event.attempt = 2;
        let envelope = Arc::make_mut(&mut event.envelope);
        envelope.dedup_key = Some("order-7".to_owned());
        envelope.event_name = Some("order.created".to_owned());
        envelope.tenant_id = Some("acme".to_owned());
        event
    }

    #[tokio::test]
    async fn a_2xx_is_a_success_and_its_body_reports_run_id_llm_calls_and_output() {
        let server = serve(status(200, r#"{"run_id": "r-9", "llm_calls": 3, "output": "done"}"#)).await;
        let run = agent_for(&server).trigger_event(&event()).await.unwrap();
        assert_eq!(
            run,
            AgentRun {
                run_id: Some("r-9".to_owned()),
                llm_calls: 3,
                output: Some(serde_json::json!("done")),
            }
        );
        for code in [201, 202, 204] {
            let server = serve(status(code, "")).await;
            assert_eq!(
                agent_for(&server).trigger_event(&event()).await,
                Ok(AgentRun::default()),
                "{code}"
            );
        }
        let server = serve(status(200, "not json")).await;
        assert_eq!(
            agent_for(&server).trigger_event(&event()).await,
            Ok(AgentRun::default())
        );
    }

    #[tokio::test]
    async fn statuses_408_425_429_and_500_502_503_504_are_retried_each_in_its_class() {
        let expect = [
            (408, ErrorClass::Timeout),
            (425, ErrorClass::Retryable),
            (429, ErrorClass::RateLimited),
            (500, ErrorClass::Retryable),
            (502, ErrorClass::Retryable),
            (503, ErrorClass::Retryable),
            (504, ErrorClass::Retryable),
        ];
        for (code, class) in expect {
            let server = serve(status(code, "busy")).await;
            let e = agent_for(&server).trigger_event(&event()).await.unwrap_err();
            assert_eq!(e.class, class, "{code}: {e}");
            assert!(
                e.message.contains(&code.to_string()) && e.message.contains("busy"),
                "{e}"
            );
            assert_eq!(e.retry_after, None);
        }
    }

    #[tokio::test]
    async fn every_other_status_is_permanent_and_redirects_are_not_followed() {
        for code in [301, 307, 400, 401, 403, 404, 409, 422, 501, 505] {
            let server = serve(move |_| {
                std::future::ready(
                    (
                        StatusCode::from_u16(code).unwrap(),
                        [(header::LOCATION, "http://127.0.0.1:1/elsewhere")],
                        "no",
                    )
                        .into_response(),
                )
            })
            .await;
            let e = agent_for(&server).trigger_event(&event()).await.unwrap_err();
            assert_eq!(e.class, ErrorClass::Permanent, "{code}: {e}");
            assert!(e.message.contains(&code.to_string()), "{e}");
        }
    }

    #[tokio::test]
    async fn retry_after_in_seconds_is_honoured() {
        let server = serve(|_| {
            std::future::ready(
                (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "7")], "slow down").into_response(),
            )
        })
        .await;
        let e = agent_for(&server).trigger_event(&event()).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn retry_after_as_an_http_date_is_honoured() {
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let server = serve(move |_| {
            let at = at.clone();
            async move { (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, at)], "").into_response() }
        })
        .await;
        let e = agent_for(&server).trigger_event(&event()).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
        let wait = e.retry_after.expect("a retry_after from the date");
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        let past = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }

    #[tokio::test]
    async fn an_agent_slower_than_the_timeout_is_a_timeout() {
        let server = serve(|_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK.into_response()
        })
        .await;
        let mut c = config(format!("http://{}/run", server.addr));
        c.timeout = Duration::from_millis(200);
        let agent = HttpAgent::new("bot", &c).unwrap();
        let started = std::time::Instant::now();
        let e = agent.trigger_event(&event()).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Timeout, "{e}");
        assert!(e.message.contains("agent.targets.bot.timeout"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn connection_refused_is_retryable_and_says_so() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let agent = HttpAgent::new("bot", &config(format!("http://{addr}/run"))).unwrap();
        let e = agent.trigger_event(&event()).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable, "{e}");
        assert!(e.message.to_lowercase().contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn twenty_sequential_calls_reuse_one_kept_alive_connection() {
        let server = serve(status(200, r#"{"llm_calls": 1}"#)).await;
        let agent = agent_for(&server);
        for _ in 0..20 {
            agent.trigger_event(&event()).await.unwrap();
        }
        assert_eq!(server.seen.lock().unwrap().len(), 20);
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_over_max_response_bytes_is_a_success_unread_or_a_bounded_error() {
        let big = format!(r#"{{"run_id": "r-1", "llm_calls": 2, "pad": "{}"}}"#, "x".repeat(4096));
        let body: &'static str = Box::leak(big.into_boxed_str());
        let server = serve(status(200, body)).await;
        let mut c = config(format!("http://{}/run", server.addr));
        c.max_response_bytes = 1024;
        let run = HttpAgent::new("bot", &c)
            .unwrap()
            .trigger_event(&event())
            .await
            .unwrap();
        assert_eq!(run, AgentRun::default());

        // Multi-byte characters put the 512-byte cut inside one; it moves back to a boundary.
        let failure: &'static str = Box::leak("é".repeat(2000).into_boxed_str());
        let server = serve(status(500, failure)).await;
        let e = agent_for(&server).trigger_event(&event()).await.unwrap_err();
        let snippet = e.message.rsplit_once(": ").unwrap().1;
        assert!(snippet.len() <= SNIPPET_LIMIT + '…'.len_utf8(), "{}", snippet.len());
        assert!(snippet.ends_with('…') && snippet.starts_with("éé"), "{snippet}");
    }

    #[tokio::test]
    async fn the_request_is_the_event_json_with_the_documented_headers() {
        let server = serve(status(200, "")).await;
        let event = event();
        agent_for(&server).trigger_event(&event).await.unwrap();
        let seen = server.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.body, serde_json::to_vec(&event.to_json()).unwrap());
        let h = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(h("content-type").as_deref(), Some("application/json"));
        assert_eq!(h("idempotency-key").as_deref(), Some("acme:order-7"));
        assert_eq!(h("x-qt-message-id").as_deref(), Some("m-1"));
        assert_eq!(h("x-qt-event").as_deref(), Some("order.created"));
        assert_eq!(h("x-qt-tenant-id").as_deref(), Some("acme"));
        assert_eq!(h("x-qt-attempt").as_deref(), Some("2"));
        assert_eq!(h("x-qt-focus").as_deref(), Some("billing"));
        let traceparent = h("traceparent").unwrap();
        assert_eq!(TraceId::from_traceparent(&traceparent), Some(event.envelope.trace_id));
        assert!(traceparent.ends_with("-01"), "{traceparent}");
    }

    #[tokio::test]
    async fn the_producers_sampling_decision_and_tracestate_are_passed_on() {
        let server = serve(status(200, "")).await;
        let mut event = event();
        let mut envelope = (*event.envelope).clone();
        envelope.trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        envelope.headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_owned(),
        );
        envelope.headers.insert("tracestate", "congo=t61rcWkgMzE".to_owned());
        event.envelope = Arc::new(envelope);
        agent_for(&server).trigger_event(&event).await.unwrap();
        let seen = server.seen.lock().unwrap()[0].clone();
        let traceparent = seen.headers["traceparent"].to_str().unwrap().to_owned();
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && traceparent.ends_with("-00"),
            "{traceparent}"
        );
        assert_eq!(seen.headers["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn header_values_that_are_not_visible_ascii_are_percent_encoded() {
        assert_eq!(header_safe("order-7:a/b"), "order-7:a/b");
        assert_eq!(header_safe("a b%\nç"), "a%20b%25%0A%C3%A7");
    }

    #[tokio::test]
    async fn the_token_and_header_values_never_appear_in_errors_or_debug_output() {
        // The server echoes what it was sent, as a careless agent might.
        let server = serve(|seen: Seen| async move {
            let echo = format!("{:?}", seen.headers);
            (StatusCode::UNAUTHORIZED, echo).into_response()
        })
        .await;
        let mut c = config(format!("http://{}/run", server.addr));
        c.headers.insert("x-api-key".to_owned(), Secret::new("key-value-123"));
        c.auth = Some(HttpAuth::Bearer(Secret::new("token-abc-456")));
        let agent = HttpAgent::new("bot", &c).unwrap();
        let e = agent.trigger_event(&event()).await.unwrap_err();
        let seen = server.seen.lock().unwrap()[0].clone();
        assert_eq!(seen.headers["authorization"], "Bearer token-abc-456");
        assert_eq!(seen.headers["x-api-key"], "key-value-123");
        let printed = format!("{e}\n{e:?}\n{agent:?}");
        assert!(printed.contains("401"), "{printed}");
        for secret in ["key-value-123", "token-abc-456"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }

        let mut c = config(format!("http://{}/run", server.addr));
        c.auth = Some(HttpAuth::Basic(qt_core::config::BasicAuth {
            username: "bot".to_owned(),
            password: Secret::new("basic-pw-789"),
        }));
        let agent = HttpAgent::new("bot", &c).unwrap();
        let e = agent.trigger_event(&event()).await.unwrap_err();
        let encoded = base64::engine::general_purpose::STANDARD.encode("bot:basic-pw-789");
        let printed = format!("{e}\n{e:?}\n{agent:?}");
        assert!(
            !printed.contains(&encoded) && !printed.contains("basic-pw-789"),
            "{printed}"
        );
    }

    #[tokio::test]
    async fn max_concurrency_bounds_the_calls_in_flight() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (now, most) = (in_flight.clone(), peak.clone());
        let server = serve(move |_| {
            let (now, most) = (now.clone(), most.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                StatusCode::OK.into_response()
            }
        })
        .await;
        let mut c = config(format!("http://{}/run", server.addr));
        c.max_concurrency = Some(2);
        let agent = Arc::new(HttpAgent::new("bot", &c).unwrap());
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let agent = agent.clone();
                tokio::spawn(async move { agent.trigger_event(&event()).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn an_unreadable_tls_file_is_reported_at_start_by_field() {
        let mut c = config("https://agents.test/run".to_owned());
        c.tls.ca_file = Some("/nonexistent/ca.pem".into());
        let mut agent = qt_core::config::AgentConfig::default();
        agent.targets.insert("bot".to_owned(), TargetConfig::Http(c));
        let e = super::super::build(&agent).unwrap_err().to_string();
        assert!(
            e.starts_with("agent.targets.bot.tls.ca_file: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
    }

    /// Answers 200 with a report whose run id is the HTTP version the request came in.
    fn version_app() -> Router {
        Router::new().fallback(|version: axum::http::Version| async move {
            (StatusCode::OK, format!(r#"{{"run_id": "{version:?}"}}"#))
        })
    }

    /// Serves one connection with HTTP/1.1 or HTTP/2, whichever the client speaks.
    async fn serve_any_version<S>(stream: S, app: Router)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
            .await;
    }

    /// An HTTPS server with the test CA's server certificate that offers HTTP/2 and HTTP/1.1
    /// by ALPN and answers with [`version_app`]; with `client_auth`, it requires a client
    /// certificate signed by the test CA. Counts the handshakes that succeeded.
    async fn serve_tls(certs: &TestCerts, client_auth: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![CertificateDer::from_pem_file(&certs.server_cert).unwrap()];
        let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let mut tls = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_file(&certs.ca).unwrap()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap()
        } else {
            builder.with_no_client_auth().with_single_cert(chain, key).unwrap()
        };
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    serve_any_version(stream, version_app()).await;
                });
            }
        });
        (addr, handshakes)
    }

    fn with_version(mut c: HttpTarget, version: HttpVersion) -> HttpTarget {
        c.http_version = version;
        c
    }

    async fn version_spoken(c: &HttpTarget) -> Result<String, AgentError> {
        let run = HttpAgent::new("bot", c).unwrap().trigger_event(&event()).await?;
        Ok(run.run_id.unwrap())
    }

    #[tokio::test]
    async fn over_https_http2_is_spoken_when_the_server_offers_it_unless_http1_is_configured() {
        let certs = TestCerts::generate();
        let (addr, _) = serve_tls(&certs, false).await;
        let mut c = config(format!("https://127.0.0.1:{}/run", addr.port()));
        c.tls.ca_file = Some(certs.ca.clone());
        assert_eq!(version_spoken(&c).await.unwrap(), "HTTP/2.0");
        let c1 = with_version(c.clone(), HttpVersion::Http1);
        assert_eq!(version_spoken(&c1).await.unwrap(), "HTTP/1.1");
        let c2 = with_version(c, HttpVersion::Http2);
        assert_eq!(version_spoken(&c2).await.unwrap(), "HTTP/2.0");
    }

    #[tokio::test]
    async fn over_plain_http_http2_is_spoken_with_prior_knowledge_only_when_configured() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_any_version(stream, version_app()));
            }
        });
        let c = config(format!("http://{addr}/run"));
        assert_eq!(version_spoken(&c).await.unwrap(), "HTTP/1.1");
        let c2 = with_version(c, HttpVersion::Http2);
        assert_eq!(version_spoken(&c2).await.unwrap(), "HTTP/2.0");

        // A server that speaks only HTTP/1.1 fails every call of an http2 target, retryably.
        let h1_only = serve(status(200, "")).await;
        let c2 = with_version(config(format!("http://{}/run", h1_only.addr)), HttpVersion::Http2);
        let e = version_spoken(&c2).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable, "{e}");
        assert!(h1_only.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_https_target_trusts_its_ca_file_and_presents_its_client_certificate() {
        let certs = TestCerts::generate();
        let (addr, handshakes) = serve_tls(&certs, true).await;
        let url = format!("https://127.0.0.1:{}/run", addr.port());
        let tls = HttpTls {
            ca_file: Some(certs.ca.clone()),
            client_cert_file: Some(certs.client_cert.clone()),
            client_key_file: Some(certs.client_key.clone()),
        };

        let mut c = config(url.clone());
        c.tls = tls.clone();
        let run = HttpAgent::new("bot", &c)
            .unwrap()
            .trigger_event(&event())
            .await
            .unwrap();
        assert_eq!(run.run_id.as_deref(), Some("HTTP/2.0"));
        assert_eq!(handshakes.load(Ordering::SeqCst), 1);

        // Without the CA the server is not trusted; without the client certificate the
        // server refuses the client. Neither call reaches the agent.
        let mut untrusted = config(url.clone());
        untrusted.tls.client_cert_file = tls.client_cert_file.clone();
        untrusted.tls.client_key_file = tls.client_key_file.clone();
        let e = HttpAgent::new("bot", &untrusted)
            .unwrap()
            .trigger_event(&event())
            .await
            .unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable, "{e}");
        assert!(e.message.to_lowercase().contains("certificate"), "{e}");
        let mut anonymous = config(url);
        anonymous.tls.ca_file = tls.ca_file.clone();
        let e = HttpAgent::new("bot", &anonymous)
            .unwrap()
            .trigger_event(&event())
            .await
            .unwrap_err();
        assert!(e.class.is_retryable(), "{e}");
        assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    }
}
