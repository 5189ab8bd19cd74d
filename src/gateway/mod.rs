//! HTTP edge: the per-call WebSocket, health and metrics. Knows axum and the wire; knows no
//! business rules (those live behind [`crate::session::Core`]).

mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::session::Core;

/// State shared by every route.
pub struct AppState {
    pub core: Arc<Core>,
    pub limits: Limits,
    /// One permit per open call: the cap on concurrent calls.
    pub call_permits: Arc<Semaphore>,
    /// Fires when live calls must be closed (after the shutdown grace period).
    pub close_calls: CancellationToken,
    /// Owns every call socket task: axum's graceful shutdown does not cover upgraded sockets.
    pub call_tasks: TaskTracker,
    pub draining: AtomicBool,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/calls/ws", get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    if app.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if !app.core.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
    }
    (StatusCode::OK, "ready")
}

async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.core.metrics.render())
}
