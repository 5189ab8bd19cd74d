//! HTTP edge: the per-call WebSocket, MCP Streamable HTTP (`/mcp`), the Vapi server URL
//! (`/v1/vapi`), health and metrics. Knows axum and the wire; knows no business rules (those live
//! behind [`crate::session::Core`]). Every transport runs tools through the same core.

pub mod connect;
mod inbound;
mod mcp_http;
pub mod rate;
pub mod vapi;
mod writeback_admin;
mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;

use crate::config::Limits;
use crate::observe::{ToolLabels, ToolNameLabel};
use crate::protocol::tools::ToolCall;
use crate::protocol::{ToolResult, jsonrpc};
use crate::session::{CallSession, Core, Notification};

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
    /// Tool calls per second per call and per tenant.
    pub tool_rate: rate::ToolRate,
    /// The HubSpot app's webhook receiver, when `[inbound.hubspot]` is configured.
    pub inbound_hubspot: Option<crate::inbound::hubspot::HubSpotReceiver>,
    /// The Pipedrive webhooks' receiver, when `[inbound.pipedrive]` is configured.
    pub inbound_pipedrive: Option<crate::inbound::pipedrive::PipedriveReceiver>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let mcp_limit = state.limits.max_message_bytes;
    // Vapi's end-of-call reports carry the transcript and the call object: larger than a tool call.
    // Bodies past the limit are answered 413 before a handler runs.
    let mcp = Router::new()
        .route("/mcp", post(mcp_http::post).get(mcp_http::not_allowed).delete(mcp_http::not_allowed))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(mcp_limit));
    let vapi = Router::new()
        .route("/v1/vapi", post(vapi::post))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(state.limits.max_http_body_bytes));
    let inbound = Router::new()
        .route(crate::inbound::hubspot::PATH, post(inbound::hubspot))
        .route(crate::inbound::google::PATH, post(inbound::google))
        .route(crate::inbound::graph::PATH, post(inbound::graph))
        .route(crate::inbound::pipedrive::PATH, post(inbound::pipedrive))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(inbound::INBOUND_BODY_LIMIT));
    Router::new()
        .route("/v1/calls/ws", get(ws::upgrade))
        .merge(inbound)
        .merge(mcp)
        .merge(vapi)
        .merge(writeback_admin::routes())
        .route("/v1/connect/{vendor}/start", get(connect::start))
        .route("/v1/connect/{vendor}/callback", get(connect::callback))
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
    // Budgets, backlog age and drain ETA are read at scrape time (they change with the clock).
    if let Err(e) = crate::observe::rate_limits::export(&app.core).await {
        tracing::warn!(error = %e, "rate-limit metrics not updated");
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.core.metrics.render())
}

/// Runs one tool for an HTTP transport with the server-side deadline, counting it like the
/// socket does. On deadline the AI gets a speakable answer; the work is not cancelled (a
/// half-cancelled booking would be worse than a late one).
pub(crate) async fn run_tool(app: &Arc<AppState>, session: &Arc<CallSession>, call: ToolCall) -> ToolResult {
    let tool = call.name();
    let started = tokio::time::Instant::now();
    let core = app.core.clone();
    let s = session.clone();
    let work = tokio::spawn(async move { core.call_tool(&s, call).await });
    let result = match tokio::time::timeout(Duration::from_millis(app.limits.tool_deadline_ms), work).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            ToolResult::error(json!({"error": "internal"}), "Something went wrong on my side; please try again.")
        }
        Err(_) => ToolResult::error(
            json!({"error": "timeout"}),
            "That's taking longer than expected; give me a moment and ask again.",
        ),
    };
    app.core
        .metrics
        .tool_latency
        .get_or_create(&ToolNameLabel { tool: tool.into() })
        .observe(started.elapsed().as_secs_f64());
    count_tool(app, tool, if result.is_error { "error" } else { "ok" });
    result
}

/// Counts a tool call against the per-call and per-tenant rates; a refusal is a JSON-RPC error.
pub(crate) fn admit_tool(app: &AppState, session: &CallSession, tool: &str) -> Result<(), jsonrpc::RpcError> {
    app.tool_rate.admit(session.tenant.id(), &session.call_id, app.core.clock.now()).map_err(|scope| {
        count_tool(app, tool, "rate_limited");
        app.tool_rate.error(scope)
    })
}

/// The "busy" JSON-RPC error (stable code and message).
pub(crate) fn busy_error(scope: crate::session::BusyScope) -> jsonrpc::RpcError {
    jsonrpc::RpcError::new(jsonrpc::BUSY, scope.message())
}

pub(crate) fn count_tool(app: &AppState, tool: &str, outcome: &str) {
    app.core.metrics.tool_calls.get_or_create(&ToolLabels { tool: tool.into(), outcome: outcome.into() }).inc();
}

/// A server notification as a JSON-RPC method and params.
pub(crate) fn notification_message(call_id: &str, n: &Notification) -> (&'static str, Value) {
    match n {
        Notification::ContextReady { status } => {
            ("notifications/callside/context_ready", json!({"call_id": call_id, "status": status}))
        }
        Notification::ContextChanged { context } => (
            "notifications/callside/context_changed",
            json!({"call_id": call_id, "status": context.status(), "greeting_hint": context.greeting_hint(), "context": context.as_ref()}),
        ),
        Notification::SlotTaken { hold_id, start, booked } => (
            "notifications/callside/slot_taken",
            json!({"call_id": call_id, "hold_id": hold_id, "start": start, "booked": booked}),
        ),
    }
}
