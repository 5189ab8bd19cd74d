//! `/mcp`: MCP Streamable HTTP on the same tool core as the WebSocket. One JSON-RPC message per
//! POST, answered with `application/json` (no tool here streams, so no SSE is needed).
//!
//! Two protocol eras share the endpoint:
//! - the handshake era (2025-11-25, 2025-06-18, 2025-03-26):
//!   <https://modelcontextprotocol.io/specification/2025-11-25/basic/transports#streamable-http>
//!   and <https://modelcontextprotocol.io/specification/2025-11-25/basic/lifecycle>. `initialize`
//!   negotiates the version and issues an `Mcp-Session-Id`; notifications are answered `202
//!   Accepted` with no body; later requests carry `MCP-Protocol-Version` (absent: the server
//!   assumes 2025-03-26, per "Protocol Version Header"); an unsupported version is `400`.
//!   A GET (standalone SSE stream) and a DELETE (client-side session termination) are answered
//!   `405 Method Not Allowed`, both of which that page allows.
//! - the stateless era (2026-07-28): <https://modelcontextprotocol.io/specification/2026-07-28/changelog>,
//!   <https://modelcontextprotocol.io/specification/2026-07-28/basic/versioning> and
//!   <https://modelcontextprotocol.io/specification/2026-07-28/server/discover>. No handshake:
//!   every request carries `_meta["io.modelcontextprotocol/protocolVersion"]` and
//!   `_meta["io.modelcontextprotocol/clientCapabilities"]` (missing: -32602); the
//!   `MCP-Protocol-Version` and `Mcp-Method` headers must agree with the body (else -32020); a
//!   version the server does not serve is -32022 with `data: {supported, requested}`; every result
//!   carries `resultType: "complete"`; `server/discover` and `tools/list` carry the caching hints
//!   `ttlMs` and `cacheScope`. The wire details were checked against the official Python SDK
//!   `mcp==2.3.0` (`mcp/shared/inbound.py`, `mcp_types/_v2026_07_28`), which the interop tests run.
//!   HTTP statuses for errors follow that SDK's table: -32700/-32600/-32602/-32020/-32022 → 400,
//!   -32601 → 404.
//!
//! Call identity: a `call_id` argument on every tool call (or Vapi's `X-Call-Id` header). The
//! tenant is the one whose API key (Bearer) this is. `start_call` opens the call (and starts the
//! caller prefetch) when no socket did; an idle call is finished as abandoned by the sweeper.
//! Server notifications ride on the next tool result of the call, in
//! `_meta["dev.callside/notifications"]`: `_meta` is the protocol's extension point on results,
//! with reverse-DNS-prefixed keys (<https://modelcontextprotocol.io/specification/2025-11-25/basic/index#meta>).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use crate::identity::{ParsedPhone, Phone};
use crate::observe::EraLabel;
use crate::protocol::tools::{self, ToolCall, ToolParseError};
use crate::protocol::{ToolResult, jsonrpc, mcp};
use crate::session::CallSession;
use crate::tenant::Tenant;

pub const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";
pub const CLIENT_CAPABILITIES_META_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
pub const NOTIFICATIONS_META_KEY: &str = "dev.callside/notifications";
/// The stateless-era protocol versions served here.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];
/// `tools/list` and `server/discover` do not depend on the caller: cacheable anywhere, for an hour.
const LIST_TTL_MS: u64 = 3_600_000;

const HEADER_MISMATCH: i64 = -32020;
const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

const INSTRUCTIONS: &str = "callside answers for one business during a phone call. Every tool takes the call's call_id. \
Call start_call first (with call_id, and the caller's number as from), then get_caller_context; book with \
find_slots → hold_slot → book_slot; call end_call when the conversation is over. Each result's text is one \
sentence you can say to the caller.";

/// Which era a request belongs to, with its protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Era {
    Handshake(String),
    Stateless(String),
}

impl Era {
    fn version(&self) -> &str {
        match self {
            Era::Handshake(v) | Era::Stateless(v) => v,
        }
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn rpc_error(status: StatusCode, id: &Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Response {
    let mut err = jsonrpc::RpcError::new(code, message);
    err.data = data;
    json_response(status, jsonrpc::error_response(id, &err))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// GET (no standalone SSE stream is offered) and DELETE (sessions hold no server state).
pub async fn not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")], "use POST for MCP messages").into_response()
}

pub async fn post(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(tenant) = bearer(&headers).and_then(|k| app.core.tenants.by_api_key(k)) else {
        app.core
            .metrics
            .calls_refused
            .get_or_create(&crate::observe::ToolNameLabel { tool: "unauthorized".into() })
            .inc();
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": "missing or invalid API key: send Authorization: Bearer <key>"})),
        )
            .into_response();
    };
    if app.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "this instance is draining"})))
            .into_response();
    }
    // "Servers MUST validate the Origin header on all incoming connections to prevent DNS
    // rebinding attacks" (transports, Security Warning): voice platforms call server to server
    // and send none; a browser's Origin must name this host.
    if let Some(origin) = header_str(&headers, header::ORIGIN.as_str()) {
        let host = header_str(&headers, header::HOST.as_str()).unwrap_or("");
        let origin_host = url::Url::parse(origin).ok().and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        });
        if origin_host.as_deref() != Some(host) {
            return (StatusCode::FORBIDDEN, axum::Json(json!({"error": "cross-origin requests are not allowed"})))
                .into_response();
        }
    }
    // Session ids are ours and stateless (`callside.<version>.<uuid>`): one we did not issue is
    // answered 404, as for a terminated session (transports, Session Management).
    if let Some(sid) = header_str(&headers, "mcp-session-id")
        && session_version(sid).is_none()
    {
        return rpc_error(
            StatusCode::NOT_FOUND,
            &Value::Null,
            jsonrpc::INVALID_REQUEST,
            "Unknown Mcp-Session-Id: initialize again",
            None,
        );
    }
    let content_type = header_str(&headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    if !content_type.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            axum::Json(json!({"error": "send one JSON-RPC message with Content-Type: application/json"})),
        )
            .into_response();
    }
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                jsonrpc::PARSE_ERROR,
                "Parse error: not UTF-8",
                None,
            );
        }
    };
    let req = match jsonrpc::parse_limited(text, app.limits.max_json_depth) {
        Ok(r) => r,
        // "If the server cannot accept the input, it MUST return an HTTP error status code (e.g.,
        // 400 Bad Request)" (transports, Sending Messages to the Server).
        Err((id, err)) => return json_response(StatusCode::BAD_REQUEST, jsonrpc::error_response(&id, &err)),
    };
    let era = match era_of(&req, &headers) {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let Some(id) = req.id.clone() else {
        // A notification (e.g. notifications/initialized): accepted, no body.
        return StatusCode::ACCEPTED.into_response();
    };
    let modern = matches!(era, Era::Stateless(_));
    let complete = |mut v: Value| {
        if modern && let Some(o) = v.as_object_mut() {
            o.insert("resultType".into(), json!("complete"));
        }
        v
    };
    match req.method.as_str() {
        "initialize" if !modern => {
            let requested = req.params.get("protocolVersion").and_then(Value::as_str);
            let version = mcp::negotiate(requested);
            let mut resp =
                json_response(StatusCode::OK, jsonrpc::response(&id, mcp::initialize_result(version, INSTRUCTIONS)));
            // Stateless session id that still names the negotiated version, so any instance can
            // read it back (requests without MCP-Protocol-Version).
            let sid = format!("callside.{version}.{}", uuid::Uuid::new_v4().simple());
            if let Ok(v) = HeaderValue::from_str(&sid) {
                resp.headers_mut().insert("mcp-session-id", v);
            }
            resp
        }
        "ping" => json_response(StatusCode::OK, jsonrpc::response(&id, complete(json!({})))),
        "server/discover" => {
            let mut versions: Vec<&str> = MODERN_VERSIONS.to_vec();
            versions.extend_from_slice(mcp::SUPPORTED_VERSIONS);
            let init = mcp::initialize_result(mcp::LATEST, INSTRUCTIONS);
            let result = json!({
                "supportedVersions": versions,
                "capabilities": init["capabilities"],
                "instructions": INSTRUCTIONS,
                "ttlMs": LIST_TTL_MS,
                "cacheScope": "public",
                "_meta": {"io.modelcontextprotocol/serverInfo": init["serverInfo"]},
            });
            json_response(StatusCode::OK, jsonrpc::response(&id, complete(result)))
        }
        "tools/list" => {
            let mut list = tools::list();
            if modern {
                list["ttlMs"] = json!(LIST_TTL_MS);
                list["cacheScope"] = json!("public");
            }
            json_response(StatusCode::OK, jsonrpc::response(&id, complete(list)))
        }
        "tools/call" => match tool_call(&app, &tenant, &headers, &req.params, &era).await {
            Ok(result) => json_response(StatusCode::OK, jsonrpc::response(&id, complete(result))),
            Err(e) => {
                let status = if modern { StatusCode::BAD_REQUEST } else { StatusCode::OK };
                json_response(status, jsonrpc::error_response(&id, &e))
            }
        },
        other => {
            let status = if modern { StatusCode::NOT_FOUND } else { StatusCode::OK };
            rpc_error(status, &id, jsonrpc::METHOD_NOT_FOUND, format!("Method not found: {other}"), None)
        }
    }
}

/// Classifies the request's era and validates its version per that era's rules.
#[allow(clippy::result_large_err)]
fn era_of(req: &jsonrpc::Incoming, headers: &HeaderMap) -> Result<Era, Response> {
    let id = req.id.clone().unwrap_or(Value::Null);
    let header_version = header_str(headers, "mcp-protocol-version");
    let meta = req.params.get("_meta");
    let meta_version = meta.and_then(|m| m.get(PROTOCOL_VERSION_META_KEY));
    let modern = meta_version.is_some()
        || req.method == "server/discover"
        || header_version.is_some_and(|v| !mcp::SUPPORTED_VERSIONS.contains(&v) && v > mcp::LATEST);
    if modern {
        let Some(meta) = meta.and_then(Value::as_object) else {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                jsonrpc::INVALID_PARAMS,
                format!(
                    "params._meta must be an object carrying {PROTOCOL_VERSION_META_KEY:?} and {CLIENT_CAPABILITIES_META_KEY:?}"
                ),
                None,
            ));
        };
        let missing: Vec<&str> = [PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY]
            .into_iter()
            .filter(|k| !meta.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                jsonrpc::INVALID_PARAMS,
                format!("params._meta is missing the required key(s): {}", missing.join(", ")),
                None,
            ));
        }
        let Some(version) = meta[PROTOCOL_VERSION_META_KEY].as_str() else {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                jsonrpc::INVALID_PARAMS,
                "the protocol version in _meta must be a string",
                None,
            ));
        };
        if header_version.is_some_and(|h| h != version) {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                HEADER_MISMATCH,
                "MCP-Protocol-Version header does not match the request's _meta protocol version",
                None,
            ));
        }
        if header_str(headers, "mcp-method").is_some_and(|m| m != req.method) {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                HEADER_MISMATCH,
                "Mcp-Method header does not match the request body's method",
                None,
            ));
        }
        if !MODERN_VERSIONS.contains(&version) {
            let mut supported: Vec<&str> = MODERN_VERSIONS.to_vec();
            supported.extend_from_slice(mcp::SUPPORTED_VERSIONS);
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                Some(json!({"supported": supported, "requested": version})),
            ));
        }
        return Ok(Era::Stateless(version.to_owned()));
    }
    if req.method == "initialize" {
        let requested = req.params.get("protocolVersion").and_then(Value::as_str);
        return Ok(Era::Handshake(mcp::negotiate(requested).to_owned()));
    }
    let from_session = header_str(headers, "mcp-session-id").and_then(session_version);
    match header_version {
        Some(v) if mcp::SUPPORTED_VERSIONS.contains(&v) => Ok(Era::Handshake(v.to_owned())),
        Some(v) => Err(rpc_error(
            StatusCode::BAD_REQUEST,
            &id,
            jsonrpc::INVALID_REQUEST,
            format!("Unsupported MCP-Protocol-Version {v:?}; supported: {}", mcp::SUPPORTED_VERSIONS.join(", ")),
            None,
        )),
        None => Ok(Era::Handshake(from_session.unwrap_or("2025-03-26").to_owned())),
    }
}

/// The negotiated version named by a session id we issued (`callside.<version>.<32 hex>`).
fn session_version(sid: &str) -> Option<&'static str> {
    let rest = sid.strip_prefix("callside.")?;
    let (version, id) = rest.split_once('.')?;
    let version = mcp::SUPPORTED_VERSIONS.iter().find(|v| **v == version)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(*version)
}

fn tool_error(structured: Value, say: &str) -> Value {
    ToolResult::error(structured, say).to_mcp()
}

/// One `tools/call`: resolve the call from `call_id` (opening it on `start_call`), run the tool,
/// attach the call's parked notifications.
async fn tool_call(
    app: &Arc<AppState>,
    tenant: &Arc<Tenant>,
    headers: &HeaderMap,
    params: &Value,
    era: &Era,
) -> Result<Value, jsonrpc::RpcError> {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err(jsonrpc::RpcError::new(jsonrpc::INVALID_PARAMS, "Invalid params: \"name\" must be a string"));
    };
    let mut arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
    // The transport's own arguments: taken out before the tool sees its arguments.
    let (call_id, from, to) = match arguments.as_object_mut() {
        Some(m) => (take_str(m, "call_id"), take_str(m, "from"), take_str(m, "to")),
        None => (Ok(None), Ok(None), Ok(None)),
    };
    let bad = |argument: &str, reason: &str| {
        super::count_tool(app, name, "bad_argument");
        tool_error(
            json!({"error": "bad_argument", "argument": argument, "reason": reason}),
            &format!("The argument {argument} {reason}."),
        )
    };
    let (call_id, from, to) = match (call_id, from, to) {
        (Ok(c), Ok(f), Ok(t)) => (c, f, t),
        (Err(()), _, _) => return Ok(bad("call_id", "must be a string")),
        (_, Err(()), _) => return Ok(bad("from", "must be a string")),
        (_, _, Err(())) => return Ok(bad("to", "must be a string")),
    };
    let call = match tools::parse_call(name, &arguments) {
        Err(ToolParseError::UnknownTool(n)) => {
            return Err(jsonrpc::RpcError::new(jsonrpc::INVALID_PARAMS, format!("Unknown tool: {n}")));
        }
        Err(ToolParseError::BadArgument { argument, reason }) => return Ok(bad(&argument, &reason)),
        Ok(c) => c,
    };
    let call_id = call_id.or_else(|| header_str(headers, "x-call-id").map(str::to_owned));
    let Some(call_id) = call_id else {
        return Ok(bad("call_id", "is required over HTTP: pass the call's id on every tool call"));
    };
    if !super::ws::valid_call_id(&call_id) {
        return Ok(bad("call_id", "must be 1-128 characters: letters, digits, - _ . :"));
    }
    let session = match &call {
        ToolCall::StartCall if app.core.sessions.get(&call_id).is_none() => {
            // A new call past a concurrent-call cap: the stable "busy" JSON-RPC error.
            if let Err(scope) = app.core.sessions.room_for(tenant.id()) {
                app.core
                    .metrics
                    .calls_refused
                    .get_or_create(&crate::observe::ToolNameLabel { tool: "busy".into() })
                    .inc();
                return Err(super::busy_error(scope));
            }
            match open_or_resume(app, tenant, &call_id, from.as_deref(), to.as_deref(), era).await {
                Ok(s) => s,
                Err(refusal) => return Ok(refusal),
            }
        }
        ToolCall::StartCall => match open_or_resume(app, tenant, &call_id, from.as_deref(), to.as_deref(), era).await {
            Ok(s) => s,
            Err(refusal) => return Ok(refusal),
        },
        _ => match app.core.sessions.get(&call_id).filter(|s| s.tenant.id() == tenant.id()) {
            Some(s) => s,
            None => {
                super::count_tool(app, name, "unknown_call");
                return Ok(tool_error(
                    json!({"error": "unknown_call", "call_id": call_id}),
                    "I can't find that call; it may have ended. Call start_call with this call_id first.",
                ));
            }
        },
    };
    session.touch(app.core.clock.now());
    super::admit_tool(app, &session, call.name())?;
    let result = super::run_tool(app, &session, call).await;
    session.touch(app.core.clock.now());
    let mut out = result.to_mcp();
    let notes: Vec<Value> = session
        .take_notifications()
        .iter()
        .map(|n| {
            let (method, params) = super::notification_message(&session.call_id, n);
            json!({"method": method, "params": params})
        })
        .collect();
    if !notes.is_empty() {
        out["_meta"] = json!({ NOTIFICATIONS_META_KEY: notes });
    }
    Ok(out)
}

fn take_str(m: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ()> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(_) => Err(()),
    }
}

/// `start_call` over HTTP: the live call with this id (same tenant), or a new one. The dialed
/// number (`to`) must be one of the tenant's; without it the tenant's first number is used.
async fn open_or_resume(
    app: &Arc<AppState>,
    tenant: &Arc<Tenant>,
    call_id: &str,
    from: Option<&str>,
    to: Option<&str>,
    era: &Era,
) -> Result<Arc<CallSession>, Value> {
    if let Some(s) = app.core.sessions.get(call_id) {
        if s.tenant.id() == tenant.id() {
            return Ok(s);
        }
        return Err(tool_error(json!({"error": "unknown_call"}), "That call id is not available; use a new one."));
    }
    let version = era.version().to_owned();
    let s = open_http(app, tenant, call_id, from, to).await?;
    app.core.metrics.mcp_sessions.get_or_create(&EraLabel { era: version.clone() }).inc();
    tracing::info!(call_id = %call_id, tenant = %tenant.id(), protocol_version = %version, "call opened over MCP HTTP");
    Ok(s)
}

/// Opens an HTTP call after the checks every HTTP transport shares. Refusals are tool errors.
pub(super) async fn open_http(
    app: &Arc<AppState>,
    tenant: &Arc<Tenant>,
    call_id: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Arc<CallSession>, Value> {
    match app.core.store.call_tenant(call_id).await {
        Ok(None) => {}
        Ok(Some(owner)) if owner == tenant.id() => {
            return Err(tool_error(json!({"error": "call_ended"}), "This call has already ended."));
        }
        Ok(Some(_)) => {
            return Err(tool_error(json!({"error": "unknown_call"}), "That call id is not available; use a new one."));
        }
        Err(e) => {
            tracing::error!(call_id = %call_id, error = %e, "store unavailable opening an HTTP call");
            return Err(tool_error(json!({"error": "internal"}), "Something went wrong on my side; please try again."));
        }
    }
    let dialed = match to {
        None => tenant.config.numbers.first().cloned().unwrap_or_default(),
        Some(to) => match Phone::parse(to, tenant.config.default_region) {
            ParsedPhone::Number(p) if tenant.config.numbers.contains(&p.e164) => p.e164,
            _ => {
                return Err(tool_error(
                    json!({"error": "wrong_number", "argument": "to"}),
                    "That dialed number doesn't belong to this business.",
                ));
            }
        },
    };
    let caller = Phone::parse(from.unwrap_or(""), tenant.config.default_region);
    match app.core.open_http_call(tenant.clone(), call_id.to_owned(), caller, dialed).await {
        Ok(s) => Ok(s),
        Err(crate::session::OpenError::CallIdTaken) => {
            Err(tool_error(json!({"error": "unknown_call"}), "That call id is not available; use a new one."))
        }
        Err(crate::session::OpenError::Busy(scope)) => Err(tool_error(json!({"error": "busy"}), scope.message())),
        Err(crate::session::OpenError::DuplicateCall) => {
            app.core.sessions.get(call_id).filter(|s| s.tenant.id() == tenant.id()).ok_or_else(|| {
                tool_error(json!({"error": "unknown_call"}), "That call id is not available; use a new one.")
            })
        }
        Err(e) => {
            tracing::error!(call_id = %call_id, error = %e, "could not open an HTTP call");
            Err(tool_error(json!({"error": "internal"}), "Something went wrong on my side; please try again."))
        }
    }
}
