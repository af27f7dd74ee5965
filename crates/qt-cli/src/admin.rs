//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`, `POST /pause` and
//! `POST /resume` (what `qt pause` and `qt resume` use), and for the mock source `POST /send`
//! (what `qt send` uses).
//!
//! Connections are served with hyper directly rather than `axum::serve`, which has no
//! connection bound and no header or idle timeouts; [`AdminLimits`] says what applies.
//! [`AdminAuth`] says which endpoints need `observability.admin.token`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use qt_adapter_mock::{MessageLine, MockQueue};
use qt_core::Secret;
use qt_core::config::AdminConfig;
use qt_engine::{LifecycleError, QueueTrigger};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Prometheus, the kubelet's probes and `qt send` each need one or two connections; 64
/// leaves room for several scrapers while bounding the tasks and read buffers (up to about
/// 400 KiB each in hyper) that a flood of connections can take.
pub const MAX_CONNECTIONS: usize = 64;

/// A real client sends its request head in one packet; 10 s allows for a slow network and
/// still frees, soon, a slot held by a client that trickles its headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Far longer than a probe's or a scrape's own timeout (Kubernetes 1 s, Prometheus 10 s),
/// so only a client that stalled mid-request or stopped reading its response is cut off.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Room in a `POST /send` body beyond twice the message itself: the JSON framing, the
/// headers, the id and the key.
pub const SEND_ENVELOPE_BYTES: usize = 64 << 10;

/// What the admin server allows its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections served at once. Further connections are not accepted until one closes:
    /// they wait in the listen backlog.
    pub max_connections: usize,
    /// A request head must be complete this long after the connection opens or after the
    /// previous response on it ends, so it is also how long an idle keep-alive connection
    /// is kept.
    pub header_read_timeout: Duration,
    /// A connection on which no byte is read or written for this long is closed, even in
    /// the middle of a request.
    pub idle_timeout: Duration,
    /// The largest request body. A larger `Content-Length` is refused with 413 before any
    /// of the body is read; a body without one is cut off with 413 when it passes this.
    pub max_body_bytes: usize,
}

impl AdminLimits {
    /// The limits for a trigger whose messages are at most `max_message_bytes`
    /// (`processing.max_message_bytes`). The body limit is twice that plus
    /// [`SEND_ENVELOPE_BYTES`]: `qt send` puts the message in a JSON line, where base64
    /// makes a binary body 4/3 its size and escaping (`\n`, `\"`) at most doubles a
    /// typical text one.
    pub fn for_messages(max_message_bytes: usize) -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_body_bytes: max_message_bytes.saturating_mul(2).saturating_add(SEND_ENVELOPE_BYTES),
        }
    }
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self::for_messages(qt_core::config::ProcessingConfig::default().max_message_bytes)
    }
}

/// Who may use the admin server. With a token, `/status`, `/pause`, `/resume` and `/send`
/// need it as `Authorization: Bearer <token>`; `/metrics`, `/healthz` and `/readyz` need it
/// only with `protect_all`, so that probes and scrapers without one keep working.
#[derive(Clone, Debug, Default)]
pub struct AdminAuth {
    pub token: Option<Secret>,
    pub protect_all: bool,
}

impl AdminAuth {
    pub fn from_config(config: &AdminConfig) -> Self {
        Self {
            token: config.token.clone(),
            protect_all: config.protect_all,
        }
    }
}

#[derive(Clone)]
struct AppState {
    trigger: QueueTrigger,
    mock: Option<MockQueue>,
    max_body_bytes: usize,
}

/// A running admin server; dropping the handle does not stop it, `shutdown` does.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Stops accepting, lets each connection finish the request it is serving (idle ones
    /// close at once), and returns when every connection is closed.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub async fn serve(
    addr: SocketAddr,
    trigger: QueueTrigger,
    mock: Option<MockQueue>,
    limits: AdminLimits,
    auth: AdminAuth,
) -> anyhow::Result<AdminServer> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("observability.admin.listen: cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let state = AppState {
        trigger,
        mock,
        max_body_bytes: limits.max_body_bytes,
    };
    let open = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let protected = Router::new()
        .route("/status", get(status))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/send", post(send));
    let (open, protected) = if auth.token.is_some() {
        let check = middleware::from_fn_with_state(Arc::new(auth.clone()), require_token);
        let open = if auth.protect_all {
            open.route_layer(check.clone())
        } else {
            open
        };
        (open, protected.route_layer(check))
    } else {
        (open, protected)
    };
    let app = open
        .merge(protected)
        .layer(middleware::from_fn_with_state(state.clone(), refuse_declared_oversize))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state);
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, app, limits, stop.clone()));
    Ok(AdminServer { addr, stop, task })
}

async fn accept_loop(listener: TcpListener, app: Router, limits: AdminLimits, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // A slot is taken before accepting, so connections past the bound wait in the
        // kernel's backlog instead of being accepted and left unserved.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    app.clone(),
                    limits,
                    stop.clone(),
                    permit,
                ));
            }
            Err(e) => {
                // Out of file descriptors, for one: retrying at once would spin.
                warn!(error = %e, "admin server: cannot accept a connection; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: AdminLimits,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = http.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let quiet_until = activity.last() + limits.idle_timeout;
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    debug!(%peer, error = %e, "admin connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(quiet_until) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    debug!(%peer, idle = ?limits.idle_timeout, "admin connection closed: idle");
                    return;
                }
            }
        }
    }
}

/// When a byte last moved on a connection, in milliseconds since it opened.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A TCP stream that notes in its [`Activity`] every read or write that moves bytes.
struct Watched {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Answers 413 from the `Content-Length` header alone, so a client announcing a huge body
/// is not kept waiting while the server would read it.
async fn refuse_declared_oversize(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > s.max_body_bytes as u64 => too_large(s.max_body_bytes, Some(len)),
        _ => next.run(request).await,
    }
}

fn too_large(limit: usize, declared: Option<u64>) -> Response {
    let size = declared.map_or_else(
        || "the request body".to_owned(),
        |n| format!("a request body of {n} bytes"),
    );
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "{size} is over the admin server's limit of {limit} bytes (`qt run` sets it to twice processing.max_message_bytes plus {SEND_ENVELOPE_BYTES} bytes); send a smaller message, or raise processing.max_message_bytes if messages this large are expected"
        ),
    )
        .into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::prometheus::render(s.trigger.metrics()),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    let h = s.trigger.health().await;
    let code = if h.live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h)).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let h = s.trigger.health().await;
    let code = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h)).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    let health = s.trigger.health().await;
    let status = s.trigger.status();
    Json(serde_json::json!({ "status": status, "health": health })).into_response()
}

/// Why a request was refused for want of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    NotBearer,
    Wrong,
}

/// Lets a request through only with the right `Authorization: Bearer <token>`.
async fn require_token(State(auth): State<Arc<AdminAuth>>, request: Request, next: Next) -> Response {
    let Some(expected) = &auth.token else {
        return next.run(request).await;
    };
    match check_bearer(request.headers().get(header::AUTHORIZATION), expected) {
        Ok(()) => next.run(request).await,
        Err(refusal) => unauthorized(refusal),
    }
}

fn check_bearer(authorization: Option<&HeaderValue>, expected: &Secret) -> Result<(), Refusal> {
    let value = authorization.ok_or(Refusal::Missing)?;
    let (scheme, given) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .ok_or(Refusal::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::NotBearer);
    }
    if token_matches(given.trim().as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// Compares the digests, in constant time: `ct_eq` on the tokens themselves would return at
/// once for a different length, telling a guesser the token's length.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let (given, expected) = (Sha256::digest(given), Sha256::digest(expected));
    bool::from(given.as_slice().ct_eq(expected.as_slice()))
}

fn unauthorized(refusal: Refusal) -> Response {
    let (challenge, message) = match refusal {
        Refusal::Missing => (
            r#"Bearer realm="qt""#,
            "this endpoint needs `Authorization: Bearer <token>` (observability.admin.token), and the request had no Authorization header",
        ),
        Refusal::NotBearer => (
            r#"Bearer realm="qt", error="invalid_request""#,
            "the Authorization header is not `Bearer <token>` (observability.admin.token)",
        ),
        Refusal::Wrong => (
            r#"Bearer realm="qt", error="invalid_token""#,
            "the bearer token does not match observability.admin.token",
        ),
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
        message,
    )
        .into_response()
}

async fn pause(State(s): State<AppState>) -> Response {
    let was = s.trigger.state();
    let paused = s.trigger.pause().await;
    lifecycle_response(&s, was, paused)
}

async fn resume(State(s): State<AppState>) -> Response {
    let was = s.trigger.state();
    let resumed = s.trigger.resume().await;
    lifecycle_response(&s, was, resumed)
}

/// The trigger's state after a pause or resume, with the messages still in flight (they
/// finish while paused); or why it could not be done.
fn lifecycle_response(s: &AppState, was: qt_engine::TriggerState, done: Result<(), LifecycleError>) -> Response {
    match done {
        Ok(()) => Json(serde_json::json!({
            "state": s.trigger.state(),
            "was": was,
            "in_flight": s.trigger.metrics().inflight,
        }))
        .into_response(),
        Err(e @ LifecycleError::InvalidTransition { .. }) => (StatusCode::CONFLICT, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn send(State(s): State<AppState>, line: Result<Json<MessageLine>, JsonRejection>) -> Response {
    let line = match line {
        Ok(Json(line)) => line,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return too_large(s.max_body_bytes, None),
        Err(e) => return e.into_response(),
    };
    let Some(mock) = &s.mock else {
        return (
            StatusCode::CONFLICT,
            "POST /send feeds the mock source only; this trigger consumes a broker — publish to it directly (qt send does)",
        )
            .into_response();
    };
    match line.into_checked_raw(mock.name()) {
        Ok(raw) => {
            let id = raw.message_id.clone();
            mock.enqueue(raw);
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "message_id": id }))).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qt_engine::QueueTrigger;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::{Instant, timeout};

    use qt_core::Secret;
    use reqwest::StatusCode;

    use super::{AdminAuth, AdminLimits, AdminServer, serve, token_matches};

    /// An admin server for a mock-source trigger on a free loopback port.
    async fn server(limits: AdminLimits) -> AdminServer {
        server_with(limits, AdminAuth::default()).await.0
    }

    /// An admin server with `auth` for a started mock-source trigger, and the trigger.
    async fn server_with(limits: AdminLimits, auth: AdminAuth) -> (AdminServer, QueueTrigger) {
        let config = qt_core::config::load_str(
            "source: {type: mock}\nagent: {targets: {main: {type: log}}}\nledger: {type: memory}\n",
            |_| None,
        )
        .expect("the test configuration is valid");
        let source = crate::wiring::source(&config).await.expect("the mock source builds");
        let mut builder = QueueTrigger::builder(config.clone()).adapter(source.adapter.clone());
        for (name, agent) in crate::agents::build(&config.agent).expect("the log agent builds") {
            builder = builder.agent(name, agent);
        }
        let trigger = builder.build().expect("the trigger builds");
        let admin = serve(([127, 0, 0, 1], 0).into(), trigger.clone(), source.mock, limits, auth)
            .await
            .expect("the admin server listens");
        (admin, trigger)
    }

    const TOKEN: &str = "admin-test-token-1";

    fn with_token(protect_all: bool) -> AdminAuth {
        AdminAuth {
            token: Some(Secret::new(TOKEN)),
            protect_all,
        }
    }

    /// `method path` with `authorization` as the header if given: status, the
    /// `WWW-Authenticate` header, body.
    async fn call(
        admin: &AdminServer,
        method: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> (StatusCode, Option<String>, String) {
        let url = format!("http://{}{path}", admin.addr);
        let client = reqwest::Client::new();
        let mut request = match method {
            "GET" => client.get(&url),
            _ => client.post(&url).json(&serde_json::json!({"text": "hello"})),
        };
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.expect("the admin server answers");
        let status = response.status();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, challenge, response.text().await.unwrap())
    }

    const PROTECTED: [(&str, &str); 4] = [
        ("GET", "/status"),
        ("POST", "/send"),
        ("POST", "/pause"),
        ("POST", "/resume"),
    ];
    const OPEN: [(&str, &str); 3] = [("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz")];

    #[tokio::test]
    async fn with_a_token_the_protected_endpoints_refuse_a_missing_token_with_401_saying_so() {
        let (admin, trigger) = server_with(AdminLimits::default(), with_token(false)).await;
        trigger.start().await.unwrap();
        for (method, path) in PROTECTED {
            let (status, challenge, body) = call(&admin, method, path, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            assert!(
                challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")),
                "{method} {path}: {challenge:?}"
            );
            assert!(body.contains("no Authorization header"), "{method} {path}: {body}");
        }
        assert_eq!(trigger.state(), qt_engine::TriggerState::Running, "nothing was paused");
        trigger.stop().await.unwrap();
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn with_a_token_the_protected_endpoints_refuse_a_wrong_or_malformed_token_with_401_saying_so() {
        let (admin, trigger) = server_with(AdminLimits::default(), with_token(false)).await;
        trigger.start().await.unwrap();
        for (method, path) in PROTECTED {
            for wrong in [
                "Bearer admin-test-token-2",
                "Bearer admin-test-token-1x",
                "Bearer admin-test-token-",
                "Bearer ",
            ] {
                let (status, challenge, body) = call(&admin, method, path, Some(wrong)).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} {wrong:?}: {body}");
                assert!(
                    challenge
                        .as_deref()
                        .is_some_and(|c| c.starts_with("Bearer") && c.contains("invalid_")),
                    "{challenge:?}"
                );
                assert!(
                    body.contains("does not match") || body.contains("is not `Bearer <token>`"),
                    "{method} {path} {wrong:?}: {body}"
                );
                assert!(!body.contains(TOKEN), "the token is never echoed: {body}");
            }
            let basic = format!("Basic {TOKEN}");
            let (status, _, body) = call(&admin, method, path, Some(&basic)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert!(body.contains("is not `Bearer <token>`"), "{body}");
        }
        assert_eq!(trigger.state(), qt_engine::TriggerState::Running, "nothing was paused");
        trigger.stop().await.unwrap();
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn with_the_right_token_the_protected_endpoints_answer() {
        let (admin, trigger) = server_with(AdminLimits::default(), with_token(false)).await;
        trigger.start().await.unwrap();
        let right = format!("Bearer {TOKEN}");
        // The scheme is case-insensitive (RFC 9110).
        let lower = format!("bearer {TOKEN}");
        for (method, path) in PROTECTED {
            for authorization in [&right, &lower] {
                let (status, challenge, body) = call(&admin, method, path, Some(authorization)).await;
                assert!(status.is_success(), "{method} {path}: {status} {body}");
                assert_eq!(challenge, None);
            }
        }
        trigger.stop().await.unwrap();
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn probes_and_metrics_stay_open_with_a_token_unless_protect_all() {
        let (admin, trigger) = server_with(AdminLimits::default(), with_token(false)).await;
        trigger.start().await.unwrap();
        for (method, path) in OPEN {
            let (status, _, body) = call(&admin, method, path, None).await;
            assert_eq!(status, StatusCode::OK, "{method} {path}: {body}");
        }
        trigger.stop().await.unwrap();
        admin.shutdown().await;

        let (admin, trigger) = server_with(AdminLimits::default(), with_token(true)).await;
        trigger.start().await.unwrap();
        let right = format!("Bearer {TOKEN}");
        for (method, path) in OPEN {
            let (status, _, body) = call(&admin, method, path, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            let (status, _, body) = call(&admin, method, path, Some("Bearer nope")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            let (status, _, body) = call(&admin, method, path, Some(&right)).await;
            assert_eq!(status, StatusCode::OK, "{method} {path}: {body}");
        }
        trigger.stop().await.unwrap();
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn without_a_token_every_endpoint_is_open() {
        let (admin, trigger) = server_with(AdminLimits::default(), AdminAuth::default()).await;
        trigger.start().await.unwrap();
        for (method, path) in OPEN.into_iter().chain(PROTECTED) {
            let (status, _, body) = call(&admin, method, path, None).await;
            assert!(status.is_success(), "{method} {path}: {status} {body}");
        }
        trigger.stop().await.unwrap();
        admin.shutdown().await;
    }

    #[test]
    fn the_token_check_compares_digests_in_constant_time_so_no_prefix_or_length_passes() {
        let expected = TOKEN.as_bytes();
        assert!(token_matches(expected, expected));
        for given in [
            &b""[..],
            b"admin-test-token-",
            b"admin-test-token-12",
            b"admin-test-token-2",
            b"Admin-test-token-1",
        ] {
            assert!(!token_matches(given, expected), "{}", String::from_utf8_lossy(given));
        }
    }

    #[tokio::test]
    async fn a_pause_makes_readyz_answer_503_saying_paused_and_a_resume_makes_it_ready() {
        let (admin, trigger) = server_with(AdminLimits::default(), AdminAuth::default()).await;
        trigger.start().await.unwrap();
        let (status, _, body) = call(&admin, "POST", "/pause", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["state"], "paused", "{body}");
        assert_eq!(answer["was"], "running", "{body}");
        let (status, _, body) = call(&admin, "GET", "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("\"state\":\"paused\""), "{body}");
        let (_, _, body) = call(&admin, "GET", "/status", None).await;
        let status_doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status_doc["status"]["state"], "paused", "{body}");
        let (status, _, body) = call(&admin, "POST", "/pause", None).await;
        assert_eq!(status, StatusCode::OK, "pausing twice is no error: {body}");
        let (status, _, body) = call(&admin, "POST", "/resume", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"was\":\"paused\""), "{body}");
        let (status, _, body) = call(&admin, "GET", "/readyz", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        trigger.stop().await.unwrap();
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn a_pause_of_a_trigger_that_is_not_running_is_a_409_naming_its_state() {
        let (admin, trigger) = server_with(AdminLimits::default(), AdminAuth::default()).await;
        trigger.start().await.unwrap();
        trigger.stop().await.unwrap();
        for (path, action) in [("/pause", "pause"), ("/resume", "resume")] {
            let (status, _, body) = call(&admin, "POST", path, None).await;
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body, format!("cannot {action} a trigger that is stopped"));
        }
        admin.shutdown().await;
    }

    /// Reads until the peer closes, failing if it has not within `within`.
    async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
        let mut out = Vec::new();
        timeout(within, stream.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| panic!("the server kept the connection open for {within:?}"))
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads one HTTP/1.1 response whose body has a `content-length`.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("a response within 5 s")
                .expect("the connection reads");
            assert!(n > 0, "closed mid-response: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .expect("a content-length")
                    .parse()
                    .expect("a numeric content-length");
                if body.len() >= length {
                    return text.into_owned();
                }
            }
        }
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_is_refused_with_413_before_it_is_sent() {
        let admin = server(AdminLimits::default()).await;
        let mut client = TcpStream::connect(admin.addr).await.unwrap();
        client
            .write_all(b"POST /send HTTP/1.1\r\nHost: qt\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let response = read_to_close(&mut client, Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        let limit = AdminLimits::default().max_body_bytes;
        assert!(response.contains(&format!("limit of {limit} bytes")), "{response}");
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_cut_off_with_413_naming_the_limit() {
        let admin = server(AdminLimits {
            max_body_bytes: 1000,
            ..AdminLimits::default()
        })
        .await;
        let mut client = TcpStream::connect(admin.addr).await.unwrap();
        client
            .write_all(b"POST /send HTTP/1.1\r\nHost: qt\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = format!("800\r\n{}\r\n", "x".repeat(0x800));
        client.write_all(chunk.as_bytes()).await.unwrap();
        let response = read_response(&mut client).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(response.contains("limit of 1000 bytes"), "{response}");
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn a_client_that_stalls_in_its_headers_is_disconnected_after_the_header_timeout() {
        let admin = server(AdminLimits {
            header_read_timeout: Duration::from_millis(300),
            ..AdminLimits::default()
        })
        .await;
        let mut client = TcpStream::connect(admin.addr).await.unwrap();
        client.write_all(b"GET /metrics HTTP/1.1\r\nHost: q").await.unwrap();
        let started = Instant::now();
        let answer = read_to_close(&mut client, Duration::from_secs(3)).await;
        assert!(answer.is_empty(), "closed without a response: {answer}");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "closed after {:?}",
            started.elapsed()
        );
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn connections_past_the_maximum_wait_until_one_closes() {
        let admin = server(AdminLimits {
            max_connections: 1,
            ..AdminLimits::default()
        })
        .await;
        let first = TcpStream::connect(admin.addr).await.unwrap();
        let mut second = TcpStream::connect(admin.addr).await.unwrap();
        second
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: qt\r\n\r\n")
            .await
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(
            timeout(Duration::from_millis(500), second.read(&mut byte))
                .await
                .is_err(),
            "the second connection was served while the first held the only slot"
        );
        drop(first);
        let response = read_response(&mut second).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let admin = server(AdminLimits {
            idle_timeout: Duration::from_millis(300),
            ..AdminLimits::default()
        })
        .await;
        let mut client = TcpStream::connect(admin.addr).await.unwrap();
        for _ in 0..2 {
            client
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: qt\r\n\r\n")
                .await
                .unwrap();
            let response = read_response(&mut client).await;
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        }
        let answered = Instant::now();
        let rest = read_to_close(&mut client, Duration::from_secs(3)).await;
        assert!(rest.is_empty(), "{rest}");
        assert!(
            answered.elapsed() >= Duration::from_millis(250),
            "closed after {:?}",
            answered.elapsed()
        );
        admin.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_returns() {
        let admin = server(AdminLimits::default()).await;
        let mut client = TcpStream::connect(admin.addr).await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: qt\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut client).await;
        timeout(Duration::from_secs(2), admin.shutdown())
            .await
            .expect("shutdown returns while a keep-alive connection is open");
        read_to_close(&mut client, Duration::from_secs(1)).await;
    }
}
