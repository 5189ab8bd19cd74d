//! `/v1/calls/ws`: one WebSocket per call, subprotocol `mcp`, JSON-RPC 2.0 with the MCP message
//! set. Authentication happens before the upgrade; every bad frame after it gets a clear answer
//! and leaves the connection in the state the protocol table (tests/api/bad_input.rs) pins.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::AppState;
use crate::identity::{ParsedPhone, Phone};
use crate::observe::{ToolLabels, ToolNameLabel};
use crate::protocol::tools::{self, ToolParseError};
use crate::protocol::{ToolResult, jsonrpc, mcp};
use crate::session::{CallSession, Notification};
use crate::writeback::EndReason;

/// The subprotocol prefix a client uses to pass its API key when it cannot set headers.
const KEY_PROTOCOL_PREFIX: &str = "callside-key.";

#[derive(Debug, Deserialize)]
pub struct ConnectQuery {
    call_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    api_key: Option<String>,
}

fn refuse(status: StatusCode, reason: &str, metrics_reason: &str, app: &AppState) -> Response {
    app.core.metrics.calls_refused.get_or_create(&ToolNameLabel { tool: metrics_reason.into() }).inc();
    (status, axum::Json(json!({"error": reason}))).into_response()
}

/// "Busy" before the upgrade: 503 with `Retry-After` and the JSON-RPC error's stable code and
/// message (`{"error": message, "code": -32004}`), so a client can tell it from an outage.
fn refuse_busy(scope: crate::session::BusyScope, app: &AppState) -> Response {
    app.core.metrics.calls_refused.get_or_create(&ToolNameLabel { tool: "busy".into() }).inc();
    let e = super::busy_error(scope);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        axum::Json(json!({"error": e.message, "code": e.code})),
    )
        .into_response()
}

fn presented_key<'a>(headers: &'a HeaderMap, query: &'a ConnectQuery) -> Option<&'a str> {
    if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(token) = auth.strip_prefix("Bearer ")
    {
        return Some(token.trim());
    }
    if let Some(k) = query.api_key.as_deref() {
        return Some(k);
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(KEY_PROTOCOL_PREFIX))
}

pub(super) fn valid_call_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    Query(q): Query<ConnectQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if app.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this instance is draining; reconnect to another",
            "draining",
            &app,
        );
    }
    let Some(call_id) = q.call_id.clone().filter(|c| valid_call_id(c)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "call_id is required (1-128 characters: letters, digits, - _ . :)",
            "bad_request",
            &app,
        );
    };
    let Some(to) = q.to.as_deref() else {
        return refuse(StatusCode::BAD_REQUEST, "to (the dialed number) is required", "bad_request", &app);
    };
    // The dialed number selects the tenant. Parse it with the default region of any tenant: a
    // tenant's numbers are stored in E.164, and a dialed number arrives in E.164 from carriers.
    let tenant = match Phone::parse(to, rlibphonenumber::enums::Region::US) {
        ParsedPhone::Number(p) => app.core.tenants.by_dialed_number(&p.e164),
        _ => None,
    };
    let Some(tenant) = tenant else {
        return refuse(
            StatusCode::NOT_FOUND,
            "the dialed number does not belong to any business here",
            "unknown_number",
            &app,
        );
    };
    match presented_key(&headers, &q) {
        Some(key) if tenant.accepts_key(key) => {}
        _ => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "missing or invalid API key for this number",
                "unauthorized",
                &app,
            );
        }
    }
    if app.core.sessions.get(&call_id).is_some() {
        return refuse(StatusCode::CONFLICT, "a call with this call_id is already connected", "duplicate_call", &app);
    }
    // A call id is used once: a finished call (or another tenant's) is never re-opened, so a new
    // session cannot attach to rows it does not own. `open_call` re-checks this atomically.
    match app.core.store.call_tenant(&call_id).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return refuse(StatusCode::CONFLICT, "this call_id has already been used", "duplicate_call", &app);
        }
        Err(e) => {
            tracing::error!(call_id = %call_id, error = %e, "store unavailable checking a call id");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "store unavailable; retry", "store_unavailable", &app);
        }
    }
    if let Err(scope) = app.core.sessions.room_for(tenant.id()) {
        return refuse_busy(scope, &app);
    }
    let Ok(permit) = app.call_permits.clone().try_acquire_owned() else {
        return refuse_busy(crate::session::BusyScope::Total, &app);
    };
    let caller = Phone::parse(q.from.as_deref().unwrap_or(""), tenant.config.default_region);
    let limits = app.limits.clone();
    let token = app.call_tasks.token();
    // tungstenite's own cap is a hard backstop at 4× the limit; the configured limit itself is
    // enforced in `run_call` after the frame is read, so the client gets a clean 1009 close.
    let hard_cap = limits.max_message_bytes.saturating_mul(4);
    ws.protocols(["mcp"])
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .read_buffer_size(limits.ws_read_buffer_bytes)
        .write_buffer_size(limits.ws_write_buffer_bytes)
        .max_write_buffer_size(limits.max_message_bytes.max(limits.ws_write_buffer_bytes) * 4)
        .on_upgrade(move |socket| async move {
            let dialed = match Phone::parse(to_owned_str(&q.to), tenant.config.default_region) {
                ParsedPhone::Number(p) => p.e164,
                _ => String::new(),
            };
            match app.core.open_call(tenant, call_id.clone(), caller, dialed).await {
                Ok((session, notes)) => run_call(app, socket, session, notes).await,
                Err(e) => {
                    tracing::warn!(call_id = %call_id, error = %e, "call refused after upgrade");
                    // A cap reached between the check and the open is "try again later" (1013).
                    let code = match e {
                        crate::session::OpenError::Busy(_) => close_code::AGAIN,
                        _ => close_code::POLICY,
                    };
                    let mut socket = socket;
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(e.to_string()) })))
                        .await;
                }
            }
            drop(permit);
            drop(token);
        })
}

fn to_owned_str(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

/// Request ids the client cancelled (`notifications/cancelled`): their results are not sent.
type Cancelled = Arc<Mutex<HashSet<String>>>;

async fn run_call(
    app: Arc<AppState>,
    socket: WebSocket,
    session: Arc<CallSession>,
    mut notes: mpsc::Receiver<Notification>,
) {
    let call_id = session.call_id.clone();
    let tenant_id = session.tenant.id().to_owned();
    tracing::info!(call_id = %call_id, tenant = %tenant_id, "call connected");
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let cancelled: Cancelled = Arc::default();
    let mut initialized = false;
    let mut tool_tasks = tokio::task::JoinSet::new();
    let close =
        |code: u16, reason: &str| Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason.to_owned()) }));
    // Once we have sent a close frame we keep reading (and ignoring) until the client answers
    // with its own close, so the closing handshake completes and no unread bytes turn the TCP
    // close into a reset that would hide our close code.
    let mut closing: Option<tokio::time::Instant> = None;
    let limit = app.limits.max_message_bytes;
    loop {
        let drain_deadline = async {
            match closing {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Err(e)) => {
                    // Past tungstenite's hard cap (4× the configured limit) the read fails
                    // mid-frame; say why if we still can.
                    let text = e.to_string();
                    if closing.is_none() && text.contains("Space limit exceeded") {
                        let _ = out.send(close(close_code::SIZE, "message too big")).await;
                    }
                    tracing::info!(call_id = %call_id, error = %text, "socket read ended");
                    break;
                }
                Some(Ok(_)) if closing.is_some() => {}
                Some(Ok(Message::Binary(_))) => {
                    let _ = out.send(close(close_code::UNSUPPORTED, "binary frames are not supported; send JSON-RPC as text")).await;
                    closing = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(text))) if text.len() > limit => {
                    let _ = out.send(close(close_code::SIZE, &format!("message too big (limit {limit} bytes)"))).await;
                    closing = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                Some(Ok(Message::Text(text))) => {
                    handle_text(&app, &session, &mut initialized, &cancelled, text.as_str(), &out, &mut tool_tasks).await;
                }
            },
            Some(note) = notes.recv(), if closing.is_none() => {
                let (method, params) = super::notification_message(&session.call_id, &note);
                let msg = jsonrpc::notification(method, params);
                let _ = out.send(Message::Text(msg.into())).await;
            },
            Some(_) = tool_tasks.join_next(), if !tool_tasks.is_empty() => {},
            _ = drain_deadline => break,
            _ = app.close_calls.cancelled(), if closing.is_none() => {
                let _ = out.send(close(close_code::AWAY, "server shutting down")).await;
                closing = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
        }
    }
    // Let in-flight tools finish (a booking in progress must complete or fail cleanly), then
    // write the call back even though it never said end_call.
    while tool_tasks.join_next().await.is_some() {}
    match app.core.finish_call(&session, EndReason::Disconnected, None).await {
        Ok(Some(_)) => {
            tracing::info!(call_id = %call_id, tenant = %tenant_id, "call disconnected without end_call; write-back planned")
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(call_id = %call_id, tenant = %tenant_id, error = %e, "could not persist the write-back of a disconnected call")
        }
    }
    drop(out);
    let _ = writer.await;
    tracing::info!(call_id = %call_id, tenant = %tenant_id, "call closed");
}

async fn handle_text(
    app: &Arc<AppState>,
    session: &Arc<CallSession>,
    initialized: &mut bool,
    cancelled: &Cancelled,
    text: &str,
    out: &mpsc::Sender<Message>,
    tool_tasks: &mut tokio::task::JoinSet<()>,
) {
    let send = |s: String| {
        let out = out.clone();
        async move {
            let _ = out.send(Message::Text(s.into())).await;
        }
    };
    let req = match jsonrpc::parse_limited(text, app.limits.max_json_depth) {
        Ok(r) => r,
        Err((id, err)) => return send(jsonrpc::error_response(&id, &err)).await,
    };
    let Some(id) = req.id.clone() else {
        // Notifications never get a response.
        if req.method == "notifications/cancelled"
            && let Some(rid) = req.params.get("requestId")
        {
            cancelled.lock().expect("cancel set").insert(rid.to_string());
        }
        return;
    };
    let result = match req.method.as_str() {
        "initialize" => {
            let requested = req.params.get("protocolVersion").and_then(Value::as_str);
            *initialized = true;
            Ok(mcp::initialize_result(
                mcp::negotiate(requested),
                "You are connected to callside for one phone call. Call get_caller_context first, book with find_slots → hold_slot → book_slot, and call end_call when the call ends.",
            ))
        }
        "ping" => Ok(json!({})),
        _ if !*initialized => {
            Err(jsonrpc::RpcError::new(jsonrpc::NOT_INITIALIZED, "Server not initialized: send initialize first"))
        }
        "tools/list" => Ok(tools::list()),
        "tools/call" => {
            let Some(name) = req.params.get("name").and_then(Value::as_str) else {
                return send(jsonrpc::error_response(
                    &id,
                    &jsonrpc::RpcError::new(jsonrpc::INVALID_PARAMS, "Invalid params: \"name\" must be a string"),
                ))
                .await;
            };
            let arguments = req.params.get("arguments").cloned().unwrap_or(Value::Null);
            match tools::parse_call(name, &arguments) {
                Err(ToolParseError::UnknownTool(n)) => {
                    Err(jsonrpc::RpcError::new(jsonrpc::INVALID_PARAMS, format!("Unknown tool: {n}")))
                }
                Err(ToolParseError::BadArgument { argument, reason }) => {
                    count(app, name, "bad_argument");
                    Ok(ToolResult::error(
                        json!({"error": "bad_argument", "argument": argument, "reason": reason}),
                        format!("The argument {argument} {reason}."),
                    )
                    .to_mcp())
                }
                Ok(call) => {
                    if let Err(e) = super::admit_tool(app, session, call.name()) {
                        return send(jsonrpc::error_response(&id, &e)).await;
                    }
                    // Run the tool in its own task so pings and other requests are answered
                    // meanwhile; the deadline answers the AI without cancelling the work (a
                    // half-cancelled booking would be worse than a late one).
                    let app = app.clone();
                    let session = session.clone();
                    let cancelled = cancelled.clone();
                    let out = out.clone();
                    let deadline = Duration::from_millis(app.limits.tool_deadline_ms);
                    tool_tasks.spawn(async move {
                        let tool = call.name();
                        let started = tokio::time::Instant::now();
                        let core = app.core.clone();
                        let work = tokio::spawn(async move { core.call_tool(&session, call).await });
                        let result = match tokio::time::timeout(deadline, work).await {
                            Ok(Ok(r)) => r,
                            Ok(Err(_)) => ToolResult::error(
                                json!({"error": "internal"}),
                                "Something went wrong on my side; please try again.",
                            ),
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
                        count(&app, tool, if result.is_error { "error" } else { "ok" });
                        if cancelled.lock().expect("cancel set").remove(&id.to_string()) {
                            return;
                        }
                        let _ = out.send(Message::Text(jsonrpc::response(&id, result.to_mcp()).into())).await;
                    });
                    return;
                }
            }
        }
        other => Err(jsonrpc::RpcError::new(jsonrpc::METHOD_NOT_FOUND, format!("Method not found: {other}"))),
    };
    let text = match result {
        Ok(v) => jsonrpc::response(&id, v),
        Err(e) => jsonrpc::error_response(&id, &e),
    };
    send(text).await;
}

fn count(app: &AppState, tool: &str, outcome: &str) {
    app.core.metrics.tool_calls.get_or_create(&ToolLabels { tool: tool.into(), outcome: outcome.into() }).inc();
}
