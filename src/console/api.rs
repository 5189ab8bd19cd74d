//! The JSON API behind the console. Authenticated by a tenant API key (`Authorization: Bearer`,
//! scoped to that tenant) or an operator session cookie (scoped to the operator's tenants; a POST
//! also needs the session's CSRF token in `X-CSRF-Token`). A tenant the caller may not see answers
//! 404, exactly like a missing one.

// Handlers return a ready `Response` as the early-exit error: idiomatic for axum, and the size of
// an error on a page request costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::{SESSION_COOKIE, Session, cookie};
use super::{Action, ActionResult, ConsoleState, view};
use crate::tenant::Tenant;

pub(super) enum Who {
    Tenant(Arc<Tenant>),
    Operator(Session),
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such call or tenant")
}

fn who(state: &ConsoleState, headers: &HeaderMap) -> Option<Who> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if let Some(key) = bearer {
        return state.core.tenants.by_api_key(key).map(Who::Tenant);
    }
    cookie(headers, SESSION_COOKIE).and_then(|t| state.operators.session(t)).map(Who::Operator)
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "a tenant API key (Bearer) or an operator session is required")
}

/// The tenant a request may act on: the key's own, or one of the operator's.
fn tenant_for(state: &ConsoleState, who: &Who, requested: Option<&str>) -> Result<Arc<Tenant>, Response> {
    match who {
        Who::Tenant(t) => match requested {
            Some(r) if r != t.id() => Err(not_found()),
            _ => Ok(t.clone()),
        },
        Who::Operator(s) => {
            let id = match (requested, s.tenants.as_slice()) {
                (Some(r), _) => r,
                (None, [only]) => only.as_str(),
                (None, _) => {
                    return Err(error(StatusCode::BAD_REQUEST, "`tenant` is required: this operator manages several"));
                }
            };
            match state.core.tenants.by_id(id) {
                Some(t) if s.may_see(id) => Ok(t.clone()),
                _ => Err(not_found()),
            }
        }
    }
}

/// The tenant a GET with an optional `?tenant=` is about, authenticated and authorized.
fn requested_tenant(
    state: &ConsoleState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Arc<Tenant>, Response> {
    let who = who(state, headers).ok_or_else(unauthorized)?;
    tenant_for(state, &who, q.get("tenant").map(String::as_str))
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console query failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// `GET /v1/openapi.json`
pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

/// `GET /v1/calls?date=YYYY-MM-DD[&tenant=ID]`: the day's calls in the tenant's zone
/// (default: yesterday there).
pub(super) async fn list_calls(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let tenant = match requested_tenant(&state, &headers, &q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let tz = &tenant.config.time_zone;
    let date = match q.get("date").map(|d| d.parse::<jiff::civil::Date>()) {
        None => view::yesterday(state.core.clock.now(), tz),
        Some(Ok(d)) => d,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "`date` must be a calendar date, YYYY-MM-DD"),
    };
    match view::day(&state.core.store, &tenant.config, date).await {
        Ok(calls) => Json(json!({
            "tenant": tenant.id(),
            "date": date.to_string(),
            "time_zone": tenant.config.time_zone_name,
            "calls": calls,
            "alerts": state.alerts.incidents(tenant.id()),
        }))
        .into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /v1/reconciliation[?tenant=ID]`: what the write-back did not settle, each with its fix.
pub(super) async fn reconciliation(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let tenant = match requested_tenant(&state, &headers, &q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match super::reconcile::reconcile(&state.core, &tenant).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /v1/rate-limits[?tenant=ID]`: each connected account's budget, backlog and drain ETA.
pub(super) async fn rate_limits(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let tenant = match requested_tenant(&state, &headers, &q) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match crate::observe::rate_limits::for_tenant(&state.core, &tenant).await {
        Ok(accounts) => Json(json!({"tenant": tenant.id(), "accounts": accounts})).into_response(),
        Err(e) => internal(e),
    }
}

/// The tenant owning a call, if the caller may see it.
async fn call_tenant(state: &ConsoleState, who: &Who, call_id: &str) -> Result<Arc<Tenant>, Response> {
    let owner = state.core.store.call_tenant(call_id).await.map_err(internal)?.ok_or_else(not_found)?;
    tenant_for(state, who, Some(&owner))
}

/// `GET /v1/calls/{id}`: the call with steps, attempts, audit entries and CRM links.
pub(super) async fn get_call(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path(call_id): Path<String>,
) -> Response {
    let Some(who) = who(&state, &headers) else {
        return unauthorized();
    };
    let tenant = match call_tenant(&state, &who, &call_id).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match state.call_detail(&tenant.config, &call_id).await {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => not_found(),
        Err(e) => internal(e),
    }
}

macro_rules! action_route {
    ($name:ident, $action:expr, $doc:literal) => {
        #[doc = $doc]
        pub(super) async fn $name(
            State(state): State<Arc<ConsoleState>>,
            headers: HeaderMap,
            Path(call_id): Path<String>,
        ) -> Response {
            act(&state, &headers, &call_id, $action).await
        }
    };
}

action_route!(resync, Action::Resync, "`POST /v1/calls/{id}/resync`");
action_route!(replay, Action::Replay, "`POST /v1/calls/{id}/replay`");
action_route!(approve, Action::Approve, "`POST /v1/calls/{id}/approve`");
action_route!(reject, Action::Reject, "`POST /v1/calls/{id}/reject`");
action_route!(undo, Action::Undo, "`POST /v1/calls/{id}/undo`");

/// Who performs a POST, for the audit trail; an operator's POST needs the session's CSRF token.
fn actor(who: &Who, headers: &HeaderMap) -> Result<String, Response> {
    match who {
        Who::Tenant(t) => Ok(format!("api-key:{}", t.id())),
        Who::Operator(s) => {
            let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if !s.csrf_ok(presented) {
                return Err(error(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token"));
            }
            Ok(format!("operator:{}", s.operator))
        }
    }
}

async fn act(state: &ConsoleState, headers: &HeaderMap, call_id: &str, action: Action) -> Response {
    let Some(who) = who(state, headers) else {
        return unauthorized();
    };
    let actor = match actor(&who, headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let tenant = match call_tenant(state, &who, call_id).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match state.perform(&tenant, call_id, action, &actor).await {
        Ok(ActionResult::Done(body)) => {
            let status =
                if matches!(action, Action::Resync | Action::Replay) { StatusCode::ACCEPTED } else { StatusCode::OK };
            (status, Json(body)).into_response()
        }
        Ok(ActionResult::Nothing(why)) => error(StatusCode::CONFLICT, why),
        Ok(ActionResult::Refused(why)) => error(StatusCode::CONFLICT, &why),
        Err(e) => internal(e),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ResolveBody {
    keep: String,
}

/// `POST /v1/conflicts/{id}/resolve[?tenant=ID]` with `{"keep": "crm" | "ai"}`: settles a
/// hybrid-field conflict (`writeback::conflicts`).
pub(super) async fn resolve_conflict(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Json<ResolveBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(who) = who(&state, &headers) else {
        return unauthorized();
    };
    let actor = match actor(&who, &headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let tenant = match tenant_for(&state, &who, q.get("tenant").map(String::as_str)) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, "no such conflict");
    };
    let keep = match body.as_ref().map(|b| super::Keep::parse(&b.keep)) {
        Ok(Some(k)) => k,
        Ok(None) | Err(_) => return error(StatusCode::BAD_REQUEST, "the body must be {\"keep\": \"crm\" | \"ai\"}"),
    };
    resolved_response(state.resolve_conflict(&tenant, id, keep, &actor).await)
}

/// The JSON answer to a conflict resolution.
fn resolved_response(result: Result<super::Resolved, super::ResolveError>) -> Response {
    use super::ResolveError as E;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(E::Unknown) => error(StatusCode::NOT_FOUND, "no such conflict"),
        Err(e @ (E::Settled(_) | E::ChangedSince | E::NotWritten(_) | E::RacedAfterWrite | E::Crm(_))) => {
            error(StatusCode::CONFLICT, &e.to_string())
        }
        Err(E::Store(e)) => internal(e),
    }
}
