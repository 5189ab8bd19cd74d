//! `/v1/vapi`: Vapi's server URL (<https://docs.vapi.ai/server-url/events>). Every event is a POST
//! of `{"message": {"type": …, "call": {…}, …}}`.
//!
//! - `tool-calls`: each entry of `message.toolCallList` runs on the call's session (opened on
//!   first sight); accepted in both documented forms, `{id, name, parameters}` and the
//!   OpenAI-style `{id, type: "function", function: {name, arguments}}` (arguments an object or a
//!   JSON string). Reply HTTP 200 `{"results": [{"name", "toolCallId", "result" | "error"}]}`,
//!   each a single-line string (<https://docs.vapi.ai/tools/custom-tools>).
//! - `status-update`: `in-progress` opens the call (the caller prefetch starts); `ended` finishes
//!   it (its write-back is planned; a later end-of-call report is merged into it).
//! - `end-of-call-report`: summary (`analysis.summary`), transcript (`artifact.transcript`),
//!   recording (`artifact.recordingUrl`), `analysis.successEvaluation` and `endedReason` become the
//!   call's write-back — merged by call id with whatever already ended the call, never a second
//!   call log (`Core::apply_platform_report`).
//! - Everything else is informational: 200 with an empty object.
//!
//! Authentication: the tenant's Vapi secret, sent by Vapi as `X-Vapi-Secret` (the server `secret`
//! setting) or as `Authorization: Bearer` (a Bearer Token custom credential,
//! <https://docs.vapi.ai/server-url/server-authentication>), compared with the tenant's
//! `vapi_secret_sha256` in constant time.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::identity::{ParsedPhone, Phone};
use crate::protocol::jsonrpc;
use crate::protocol::tools::{self, ToolParseError};
use crate::session::{CallSession, ReportApplied, ReportError};
use crate::tenant::Tenant;
use crate::writeback::EndReason;
use crate::writeback::plan::PlatformReport;

fn reject(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({"error": reason}))).into_response()
}

fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(s) = headers.get("x-vapi-secret").and_then(|v| v.to_str().ok()) {
        return Some(s.trim());
    }
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// A string at a JSON pointer: `Ok(None)` when absent or null, `Err` naming the field when it has
/// another type.
fn opt_str<'a>(v: &'a Value, pointer: &str) -> Result<Option<&'a str>, String> {
    match v.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("message{} must be a string", pointer.replace('/', "."))),
    }
}

/// Collapses a result to one line: Vapi appends the string to the conversation as is.
fn single_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The parts of a Vapi server message the service reads, validated (no I/O).
#[derive(Debug)]
pub struct VapiEnvelope {
    pub kind: String,
    /// Validated when present (`message.call.id`, else the `X-Call-Id` header).
    pub call_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub message: Value,
}

/// Parses a `/v1/vapi` body; the error is the 400 answer's text.
pub fn parse_envelope(body: &[u8], max_depth: usize, header_call_id: Option<&str>) -> Result<VapiEnvelope, String> {
    if jsonrpc::exceeds_depth(body, max_depth) {
        return Err(format!("the body nests JSON deeper than {max_depth} levels"));
    }
    let Ok(mut body) = serde_json::from_slice::<Value>(body) else {
        return Err("the body is not valid JSON".into());
    };
    let Some(message) = body.get_mut("message").filter(|m| m.is_object()).map(Value::take) else {
        return Err("message must be an object".into());
    };
    let Some(kind) = message.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Err("message.type must be a string".into());
    };
    let call_id = match opt_str(&message, "/call/id")? {
        Some(id) => Some(id.to_owned()),
        None => header_call_id.map(str::to_owned),
    };
    let Some(call_id) = call_id else {
        return Ok(VapiEnvelope { kind, call_id: None, from: None, to: None, message });
    };
    if !super::ws::valid_call_id(&call_id) {
        return Err("message.call.id must be 1-128 characters: letters, digits, - _ . :".into());
    }
    let from = match opt_str(&message, "/call/customer/number")? {
        Some(n) => Some(n),
        None => opt_str(&message, "/customer/number")?,
    }
    .map(str::to_owned);
    let to = opt_str(&message, "/phoneNumber/number")?.map(str::to_owned);
    Ok(VapiEnvelope { kind, call_id: Some(call_id), from, to, message })
}

/// `message.toolCallList` (or `toolWithToolCallList`, the name outside the call), at most 32.
pub fn tool_call_list(message: &Value) -> Result<Vec<Value>, String> {
    let list: Vec<Value> = match (message.get("toolCallList"), message.get("toolWithToolCallList")) {
        (Some(Value::Array(l)), _) => l.clone(),
        (None | Some(Value::Null), Some(Value::Array(l))) => {
            // `[{name, toolCall: {id, parameters}}]`: the same call, with the name outside.
            l.iter()
                .map(|t| {
                    let mut c = t.get("toolCall").cloned().unwrap_or(json!({}));
                    if c.get("name").is_none()
                        && let Some(n) = t.get("name")
                        && let Some(obj) = c.as_object_mut()
                    {
                        // Not `c["name"] = …`: indexing a non-object Value panics.
                        obj.insert("name".into(), n.clone());
                    }
                    c
                })
                .collect()
        }
        _ => return Err("message.toolCallList must be an array".into()),
    };
    if list.len() > 32 {
        return Err("message.toolCallList has too many entries (at most 32)".into());
    }
    Ok(list)
}

/// One entry of the tool-call list.
#[derive(Debug)]
pub struct VapiToolCall {
    pub id: String,
    pub name: String,
    /// The arguments (the transport's own `call_id`/`from`/`to` removed), or why they are unusable.
    pub arguments: Result<Value, String>,
}

/// Reads one tool call in either documented form; `Err` is the text for an entry without a
/// string id and a function name.
pub fn tool_call_parts(item: &Value, max_depth: usize) -> Result<VapiToolCall, String> {
    let id = item.get("id").and_then(Value::as_str).unwrap_or("");
    let name = item
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| item.pointer("/function/name").and_then(Value::as_str))
        .unwrap_or("");
    if id.is_empty() || name.is_empty() {
        return Err("Each tool call needs a string id and a function name.".into());
    }
    let raw_args = item
        .get("parameters")
        .or_else(|| item.get("arguments"))
        .or_else(|| item.pointer("/function/arguments"))
        .cloned()
        .unwrap_or(Value::Null);
    let arguments = match raw_args {
        Value::String(s) if s.trim().is_empty() => Ok(Value::Null),
        Value::String(s) if jsonrpc::exceeds_depth(s.as_bytes(), max_depth) => {
            Err(format!("The arguments nest JSON deeper than {max_depth} levels."))
        }
        Value::String(s) => {
            serde_json::from_str::<Value>(&s).map_err(|_| "The arguments are not valid JSON.".to_owned())
        }
        other => Ok(other),
    }
    .map(|mut args| {
        if let Some(m) = args.as_object_mut() {
            // The transport's own arguments (the call is named by the event itself).
            for k in ["call_id", "from", "to"] {
                m.remove(k);
            }
        }
        args
    });
    Ok(VapiToolCall { id: id.to_owned(), name: name.to_owned(), arguments })
}

pub async fn post(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(tenant) = presented_secret(&headers).and_then(|s| app.core.tenants.by_vapi_secret(s)) else {
        return reject(StatusCode::UNAUTHORIZED, "missing or invalid Vapi secret (X-Vapi-Secret)");
    };
    let header_call_id = headers.get("x-call-id").and_then(|v| v.to_str().ok());
    let VapiEnvelope { kind, call_id, from, to, message } =
        match parse_envelope(&body, app.limits.max_json_depth, header_call_id) {
            Ok(e) => e,
            Err(e) => return reject(StatusCode::BAD_REQUEST, &e),
        };
    let message = &message;
    let kind = kind.as_str();
    let needs_call = matches!(kind, "tool-calls" | "status-update" | "end-of-call-report");
    let call_id = match call_id {
        Some(id) => id,
        None if needs_call => return reject(StatusCode::BAD_REQUEST, "message.call.id is required"),
        None => return (StatusCode::OK, axum::Json(json!({}))).into_response(),
    };
    match kind {
        "tool-calls" => tool_calls(&app, &tenant, &call_id, from.as_deref(), to.as_deref(), message).await,
        "status-update" => {
            let status = match opt_str(message, "/status") {
                Ok(Some(s)) => s,
                Ok(None) => return reject(StatusCode::BAD_REQUEST, "message.status is required"),
                Err(e) => return reject(StatusCode::BAD_REQUEST, &e),
            };
            match status {
                "in-progress" => {
                    if let Err(refusal) = session(&app, &tenant, &call_id, from.as_deref(), to.as_deref()).await {
                        return (StatusCode::OK, axum::Json(json!({"ok": false, "error": refusal}))).into_response();
                    }
                }
                "ended" => {
                    if let Some(s) = app.core.sessions.get(&call_id).filter(|s| s.tenant.id() == tenant.id())
                        && let Err(e) = app.core.finish_call(&s, EndReason::Disconnected, None).await
                    {
                        tracing::error!(call_id = %call_id, error = %e, "could not persist the write-back of an ended Vapi call");
                        return reject(StatusCode::SERVICE_UNAVAILABLE, "could not save the call; retry");
                    }
                }
                _ => {}
            }
            (StatusCode::OK, axum::Json(json!({"ok": true}))).into_response()
        }
        "end-of-call-report" => {
            end_of_call_report(&app, &tenant, &call_id, from.as_deref(), to.as_deref(), message).await
        }
        _ => (StatusCode::OK, axum::Json(json!({}))).into_response(),
    }
}

/// The call's live session, opened on first sight. A refusal is a speakable string.
async fn session(
    app: &Arc<AppState>,
    tenant: &Arc<Tenant>,
    call_id: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Arc<CallSession>, String> {
    if let Some(s) = app.core.sessions.get(call_id) {
        return if s.tenant.id() == tenant.id() { Ok(s) } else { Err("That call id is not available.".into()) };
    }
    // Vapi's number may be one the business forwards to, not one of the tenant's own: the tenant
    // is already known from the secret, so an unknown dialed number falls back to the tenant's.
    let to = to.filter(|t| match Phone::parse(t, tenant.config.default_region) {
        ParsedPhone::Number(p) => tenant.config.numbers.contains(&p.e164),
        _ => false,
    });
    super::mcp_http::open_http(app, tenant, call_id, from, to)
        .await
        .map_err(|v| v["content"][0]["text"].as_str().unwrap_or("This call is not available.").to_owned())
}

async fn tool_calls(
    app: &Arc<AppState>,
    tenant: &Arc<Tenant>,
    call_id: &str,
    from: Option<&str>,
    to: Option<&str>,
    message: &Value,
) -> Response {
    let list = match tool_call_list(message) {
        Ok(l) => l,
        Err(e) => return reject(StatusCode::BAD_REQUEST, &e),
    };
    let session = session(app, tenant, call_id, from, to).await;
    let mut results = Vec::with_capacity(list.len());
    for item in &list {
        let id = item.get("id").and_then(Value::as_str).unwrap_or("");
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .or_else(|| item.pointer("/function/name").and_then(Value::as_str))
            .unwrap_or("");
        let mut entry = json!({"name": name, "toolCallId": id});
        let error = |entry: &mut Value, text: &str| entry["error"] = json!(single_line(text));
        let parts = match tool_call_parts(item, app.limits.max_json_depth) {
            Ok(p) => p,
            Err(text) => {
                error(&mut entry, &text);
                results.push(entry);
                continue;
            }
        };
        let session = match &session {
            Ok(s) => s.clone(),
            Err(refusal) => {
                error(&mut entry, refusal);
                results.push(entry);
                continue;
            }
        };
        let args = match parts.arguments {
            Ok(a) => a,
            Err(text) => {
                error(&mut entry, &text);
                results.push(entry);
                continue;
            }
        };
        session.touch(app.core.clock.now());
        let call = match tools::parse_call(name, &args) {
            Err(ToolParseError::UnknownTool(n)) => {
                error(&mut entry, &format!("Unknown tool: {n}."));
                results.push(entry);
                continue;
            }
            Err(ToolParseError::BadArgument { argument, reason }) => {
                super::count_tool(app, name, "bad_argument");
                error(&mut entry, &format!("The argument {argument} {reason}."));
                results.push(entry);
                continue;
            }
            Ok(c) => c,
        };
        if let Err(e) = super::admit_tool(app, &session, call.name()) {
            error(&mut entry, &format!("{} (code {}).", e.message, e.code));
            results.push(entry);
            continue;
        }
        let result = super::run_tool(app, &session, call).await;
        // Notifications have no channel on Vapi; the result carries everything the AI needs.
        let _ = session.take_notifications();
        let text = single_line(&format!("{} {}", result.say, result.structured));
        if result.is_error {
            entry["error"] = json!(text);
        } else {
            entry["result"] = json!(text);
        }
        results.push(entry);
    }
    (StatusCode::OK, axum::Json(json!({"results": results}))).into_response()
}

/// The end-of-call report's parts the write-back uses; the error is the 400 answer's text.
pub fn parse_report(message: &Value) -> Result<PlatformReport, String> {
    let pick = |pointers: &[&str]| -> Result<Option<String>, String> {
        for p in pointers {
            if let Some(s) = opt_str(message, p)?.map(str::trim).filter(|s| !s.is_empty()) {
                return Ok(Some(s.to_owned()));
            }
        }
        Ok(None)
    };
    let recording_url = pick(&["/artifact/recordingUrl", "/recordingUrl", "/artifact/recording/mono/combinedUrl"])?;
    if let Some(u) = &recording_url
        && !url::Url::parse(u).is_ok_and(|u| u.scheme() == "https" || u.scheme() == "http")
    {
        return Err("the recording URL must be an http(s) URL".into());
    }
    let evaluation = match message.pointer("/analysis/successEvaluation") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v @ (Value::Bool(_) | Value::Number(_))) => Some(v.to_string()),
        Some(_) => return Err("message.analysis.successEvaluation must be a string, number or boolean".into()),
    };
    let duration_secs = match message.get("durationSeconds") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if (0.0..=86_400.0).contains(&f) => Some(f.round() as u64),
            _ => return Err("message.durationSeconds must be between 0 and 86400".into()),
        },
        Some(_) => return Err("message.durationSeconds must be a number".into()),
    };
    Ok(PlatformReport {
        summary: pick(&["/analysis/summary", "/summary"])?,
        transcript: pick(&["/artifact/transcript", "/transcript"])?,
        recording_url,
        duration_secs,
        evaluation,
        ended_reason: pick(&["/endedReason"])?,
    })
}

async fn end_of_call_report(
    app: &Arc<AppState>,
    tenant: &Arc<Tenant>,
    call_id: &str,
    from: Option<&str>,
    to: Option<&str>,
    message: &Value,
) -> Response {
    let report = parse_report(message);
    let report = match report {
        Ok(r) => r,
        Err(e) => return reject(StatusCode::BAD_REQUEST, &e),
    };
    let caller = Phone::parse(from.unwrap_or(""), tenant.config.default_region);
    let dialed = to
        .and_then(|t| match Phone::parse(t, tenant.config.default_region) {
            ParsedPhone::Number(p) if tenant.config.numbers.contains(&p.e164) => Some(p.e164),
            _ => None,
        })
        .or_else(|| tenant.config.numbers.first().cloned())
        .unwrap_or_default();
    match app.core.apply_platform_report(tenant, call_id, caller, dialed, &report).await {
        Ok(applied) => {
            let merged = match applied {
                ReportApplied::MergedIntoPending => "merged_into_pending",
                ReportApplied::UpdatePlanned => "update_planned",
                ReportApplied::NothingToMerge => "nothing_to_merge",
            };
            (StatusCode::OK, axum::Json(json!({"ok": true, "write_back": merged}))).into_response()
        }
        Err(ReportError::UnknownCall) => reject(StatusCode::NOT_FOUND, "unknown call"),
        Err(e) => {
            tracing::error!(call_id = %call_id, error = %e, "could not apply the end-of-call report");
            reject(StatusCode::SERVICE_UNAVAILABLE, "could not save the report; retry")
        }
    }
}
