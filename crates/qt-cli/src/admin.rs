//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`, and for the mock
//! source `POST /send` (what `qt send` uses).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use qt_adapter_mock::{MessageLine, MockQueue};
use qt_engine::QueueTrigger;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AppState {
    trigger: QueueTrigger,
    mock: Option<MockQueue>,
}

/// A running admin server; dropping the handle does not stop it, `shutdown` does.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

pub async fn serve(addr: SocketAddr, trigger: QueueTrigger, mock: Option<MockQueue>) -> anyhow::Result<AdminServer> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("observability.admin.listen: cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/send", post(send))
        .with_state(AppState { trigger, mock });
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .await;
    });
    Ok(AdminServer { addr, stop, task })
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

async fn send(State(s): State<AppState>, Json(line): Json<MessageLine>) -> Response {
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
