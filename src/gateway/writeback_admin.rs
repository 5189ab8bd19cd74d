//! The operator's write-back API, authenticated with the tenant's API key (Bearer): a call's
//! plan (held or in the outbox), its field results and conflicts; approving or rejecting a plan
//! held for review; undoing a call's write-back. `callside approve|reject|undo` call these.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::AppState;
use crate::store::Decided;
use crate::tenant::Tenant;
use crate::writeback::undo::{UndoError, undo_call};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/writeback/review", get(awaiting_review))
        .route("/v1/writeback/conflicts", get(conflicts))
        .route("/v1/writeback/calls/{call_id}", get(call_plan))
        .route("/v1/writeback/calls/{call_id}/approve", post(approve))
        .route("/v1/writeback/calls/{call_id}/reject", post(reject))
        .route("/v1/writeback/calls/{call_id}/undo", post(undo))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

fn tenant(app: &AppState, headers: &HeaderMap) -> Result<Arc<Tenant>, Box<Response>> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .and_then(|k| app.core.tenants.by_api_key(k))
        .ok_or_else(|| Box::new(error(StatusCode::UNAUTHORIZED, "a tenant API key is required as a Bearer token")))
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "write-back admin request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

async fn awaiting_review(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let t = match tenant(&app, &headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match app.core.store.plans_awaiting_review(t.id()).await {
        Ok(calls) => axum::Json(json!({"awaiting_review": calls})).into_response(),
        Err(e) => internal(e),
    }
}

async fn conflicts(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let t = match tenant(&app, &headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match app.core.store.conflicts(t.id(), None).await {
        Ok(rows) => axum::Json(json!({"conflicts": rows})).into_response(),
        Err(e) => internal(e),
    }
}

/// The plan as the operator reviews it: held steps (shadow / review) or the outbox's steps with
/// their status, each field's result, and the conflicts.
async fn call_plan(State(app): State<Arc<AppState>>, headers: HeaderMap, Path(call_id): Path<String>) -> Response {
    let t = match tenant(&app, &headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let store = &app.core.store;
    let call = match store.call(t.id(), &call_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return error(StatusCode::NOT_FOUND, "unknown call"),
        Err(e) => return internal(e),
    };
    let (held, steps, fields, conflicts) = match tokio::try_join!(
        store.held_plan(t.id(), &call_id),
        store.steps_for_call(t.id(), &call_id),
        store.field_writes_for_call(t.id(), &call_id),
        store.conflicts(t.id(), Some(&call_id)),
    ) {
        Ok(all) => all,
        Err(e) => return internal(e),
    };
    let steps: Vec<_> = steps
        .iter()
        .map(|s| {
            json!({"seq": s.seq, "kind": s.kind, "status": s.status, "attempts": s.attempts,
                   "external_id": s.external_id, "last_error": s.last_error, "payload": s.payload})
        })
        .collect();
    axum::Json(json!({
        "call_id": call.call_id,
        "sync_status": call.sync_status,
        "mode": held.as_ref().map(|h| h.mode.clone()).unwrap_or_else(|| "auto".into()),
        "held_plan": held,
        "steps": steps,
        "field_writes": fields,
        "conflicts": conflicts,
    }))
    .into_response()
}

async fn decide(app: &AppState, headers: &HeaderMap, call_id: &str, approve: bool) -> Response {
    let t = match tenant(app, headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    // Another tenant's call answers like a call that does not exist (as on every other route).
    match app.core.store.call(t.id(), call_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, "unknown call"),
        Err(e) => return internal(e),
    }
    let now = app.core.clock.now();
    match app.core.store.decide_held_plan(t.id(), call_id, approve, "operator api", now).await {
        Ok(Decided::Approved { steps }) => {
            app.core.worker.wake();
            axum::Json(json!({"approved": true, "steps": steps})).into_response()
        }
        Ok(Decided::Rejected) => axum::Json(json!({"rejected": true})).into_response(),
        Ok(Decided::NotAwaiting) => error(StatusCode::CONFLICT, "no plan awaiting review for this call"),
        Err(e) => internal(e),
    }
}

async fn approve(State(app): State<Arc<AppState>>, headers: HeaderMap, Path(call_id): Path<String>) -> Response {
    decide(&app, &headers, &call_id, true).await
}

async fn reject(State(app): State<Arc<AppState>>, headers: HeaderMap, Path(call_id): Path<String>) -> Response {
    decide(&app, &headers, &call_id, false).await
}

async fn undo(State(app): State<Arc<AppState>>, headers: HeaderMap, Path(call_id): Path<String>) -> Response {
    let t = match tenant(&app, &headers) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    match undo_call(&app.core.store, &app.core.clock, &t, &call_id).await {
        Ok(report) => axum::Json(json!({"undone": true, "report": report})).into_response(),
        Err(UndoError::UnknownCall) => error(StatusCode::NOT_FOUND, "unknown call"),
        Err(UndoError::StillRunning) => {
            error(StatusCode::CONFLICT, "the call's write-back is still running; undo it once it has finished")
        }
        Err(UndoError::Crm(e)) => {
            tracing::warn!(call_id = %call_id, error = %e, "undo stopped by the CRM");
            error(StatusCode::BAD_GATEWAY, &format!("the CRM refused: {e}; nothing further was changed, retry later"))
        }
        Err(e) => internal(e),
    }
}
