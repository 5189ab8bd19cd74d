//! The hostile-input table (issue 14, "Done when" bullet 2): every `[limits]` limit and each
//! malformed input class, on the WebSocket, MCP HTTP, the Vapi server URL and the REST API. Each
//! row pins the clear error; after each row the row's connection still answers, the service is
//! up, and no data changed (the live calls, their store rows, the CRM and the calendar).
//!
//! The limits are set small so each can be reached in a few requests; the rate windows run on
//! the manual clock, which moves one second before each row so every row starts fresh.

use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    Client, DEMO_KEY, DEMO_NUMBER, OTHER_KEY, OTHER_NUMBER, Reply, TestApp, demo_tenant, other_tenant, server_file,
    spawn_app_with,
};
use crate::vapi::VAPI_SECRET;

const LIMITS: &str = "[limits]
max_message_bytes = 4096
max_json_depth = 8
tool_calls_per_call_per_sec = 3
tool_calls_per_tenant_per_sec = 5
max_concurrent_calls_per_tenant = 3
max_concurrent_calls = 5
max_http_body_bytes = 8192
";

/// The live calls every row must leave as they were.
const WS: &str = "hi-ws";
const MCP: &str = "hi-mcp";
const VAPI: &str = "hi-vapi";
const OTHER: &str = "hi-other";
const OTHER2: &str = "hi-other-2";

/// What a row sends.
enum Send {
    /// A text frame on the live WebSocket call.
    WsText(String),
    /// `n` tool calls (list_services) on the live WebSocket call; the last one's answer is checked.
    WsBurst(usize),
    /// Tool calls on the WebSocket call, then on the MCP call, until the tenant's budget is spent.
    TenantBurst { ws: usize, mcp: usize },
    /// A new WebSocket handshake (key, dialed number).
    WsHandshake(&'static str, &'static str),
    /// A raw POST to `/mcp` on the live MCP session: content type, body.
    Mcp(&'static str, Vec<u8>),
    /// `n` tool calls (list_services) on the MCP call; the last one's answer is checked.
    McpBurst(usize),
    /// A raw POST to `/v1/vapi` with the demo's secret.
    Vapi(Vec<u8>),
    /// A REST request with the demo's key: method, path, body.
    Rest(&'static str, String, Vec<u8>),
}

/// What the row must get back.
enum Expect {
    /// A JSON-RPC error with this code whose message contains the text (WebSocket or MCP 4xx/200).
    Rpc { status: u16, code: i64, says: &'static str },
    /// An MCP tool result with `isError: true` and this structured `error` or `argument`.
    ToolError(&'static str),
    /// An HTTP status, and a body containing this text.
    Http(u16, &'static str),
    /// A Vapi tool-calls reply whose last result is an error containing this text.
    VapiError(&'static str),
}

fn rpc(status: u16, code: i64, says: &'static str) -> Expect {
    Expect::Rpc { status, code, says }
}

fn frame(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string()
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!([v]))
}

fn vapi_tools(call_id: &str, calls: Vec<Value>) -> Vec<u8> {
    json!({"message": {"type": "tool-calls", "call": {"id": call_id, "customer": {"number": "+14155550134"}},
        "toolCallList": calls}})
    .to_string()
    .into_bytes()
}

fn vapi_call(id: &str, name: &str, args: Value) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
}

struct Mcp {
    client: reqwest::Client,
    url: String,
    session: String,
    next_id: u64,
}

impl Mcp {
    async fn open(app: &TestApp) -> Self {
        let client = reqwest::Client::new();
        let url = format!("http://{}/mcp", app.addr);
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
        let r = client
            .post(&url)
            .bearer_auth(DEMO_KEY)
            .header("content-type", "application/json")
            .body(init.to_string())
            .send()
            .await
            .unwrap();
        let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        Mcp { client, url, session, next_id: 100 }
    }

    async fn post(&self, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(&self.url)
            .bearer_auth(DEMO_KEY)
            .header("content-type", content_type)
            .header("mcp-session-id", &self.session)
            .header("mcp-protocol-version", "2025-11-25")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn request(&mut self, method: &str, params: Value) -> (u16, Value) {
        self.next_id += 1;
        let msg = json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        self.post("application/json", msg.to_string().into_bytes()).await
    }
}

async fn vapi_post(app: &TestApp, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/vapi", app.addr))
        .header("x-vapi-secret", VAPI_SECRET)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn rest(app: &TestApp, method: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = reqwest::Client::new()
        .request(method, format!("http://{}{path}", app.addr))
        .bearer_auth(DEMO_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Everything a row must not change.
async fn snapshot(app: &TestApp) -> Value {
    let mut live: Vec<(String, String)> = [WS, MCP, VAPI, OTHER, OTHER2]
        .iter()
        .filter_map(|id| app.core.sessions.get(id).map(|s| (id.to_string(), s.tenant.id().to_owned())))
        .collect();
    live.sort();
    let mut rows = vec![];
    for (tenant, id) in [("demo", WS), ("demo", MCP), ("demo", VAPI), ("other", OTHER), ("other", OTHER2)] {
        let row = app.core.store.call(tenant, id).await.unwrap();
        rows.push(json!(row.map(|c| json!([c.tenant, c.ended_at.is_some(), c.sync_status]))));
    }
    let events = app.google.events("alex@demo-salon.example").len();
    json!({
        "live": live,
        "open sessions": app.core.sessions.len(),
        "rows": rows,
        "crm": [app.hubspot.contacts().len(), app.hubspot.calls().len(), app.hubspot.meetings().len(),
        ],
        "calendar": events,
    })
}

fn tool_frame(n: usize) -> String {
    json!({"jsonrpc": "2.0", "id": 1000 + n, "method": "tools/call", "params": {"name": "list_services", "arguments": {}}})
        .to_string()
}

async fn ws_reply(ws: &mut Client) -> Value {
    match ws.next_reply().await {
        Reply::Message(v) => v,
        Reply::Closed(code) => panic!("the socket closed ({code:?}) instead of answering"),
    }
}

#[tokio::test]
async fn hostile_input_table_every_limit_and_malformed_class_gets_a_clear_error_and_changes_nothing() {
    let app = spawn_app_with(server_file(LIMITS), vec![demo_tenant(), other_tenant()]).await;

    // Three live demo calls (the tenant's cap) and two of the other tenant (the total cap).
    let mut ws = app.connect(WS, "+14155550134").await;
    ws.initialize().await;
    let mut mcp = Mcp::open(&app).await;
    let (s, started) = mcp
        .request("tools/call", json!({"name": "start_call", "arguments": {"call_id": MCP, "from": "+14155550135"}}))
        .await;
    assert_eq!((s, &started["result"]["isError"]), (200, &json!(false)), "{started}");
    let (s, _) = vapi_post(
        &app,
        json!({"message": {"type": "status-update", "status": "in-progress", "call": {"id": VAPI, "customer": {"number": "+14155550136"}}}})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(s, 200);
    let mut other = app
        .connect_with(&app.ws_url(OTHER, "+14155550137", OTHER_NUMBER), Some(OTHER_KEY))
        .await
        .expect("the other tenant's call");
    other.initialize().await;
    let mut other2 = app
        .connect_with(&app.ws_url(OTHER2, "+14155550140", OTHER_NUMBER), Some(OTHER_KEY))
        .await
        .expect("the other tenant's second call");
    other2.initialize().await;

    let deep_params = json!({"name": "find_slots", "arguments": {"service": nested(9)}});
    let big = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#, "x".repeat(5000));
    let rows: Vec<(&str, Send, Expect)> = vec![
        // WebSocket: malformed classes (the socket stays open).
        ("ws: not JSON", Send::WsText("{{not json".into()), rpc(0, -32700, "not valid JSON")),
        ("ws: truncated", Send::WsText(r#"{"jsonrpc":"2.0","id":1,"#.into()), rpc(0, -32700, "not valid JSON")),
        ("ws: not an object", Send::WsText("[1,2]".into()), rpc(0, -32600, "request object")),
        (
            "ws: wrong version",
            Send::WsText(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.into()),
            rpc(0, -32600, "2.0"),
        ),
        ("ws: id an object", Send::WsText(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#.into()), rpc(0, -32600, "id")),
        ("ws: unknown method", Send::WsText(frame("tools/destroy", json!({}))), rpc(0, -32601, "tools/destroy")),
        ("ws: unknown tool", Send::WsText(frame("tools/call", json!({"name": "drop_db"}))), rpc(0, -32602, "drop_db")),
        ("ws: name not a string", Send::WsText(frame("tools/call", json!({"name": 5}))), rpc(0, -32602, "name")),
        (
            "ws: argument of the wrong type",
            Send::WsText(frame("tools/call", json!({"name": "find_slots", "arguments": {"service": 5}}))),
            Expect::ToolError("service"),
        ),
        (
            "ws: injection in an id",
            Send::WsText(frame("tools/call", json!({"name": "book_slot", "arguments": {"hold_id": "1' OR '1'='1"}}))),
            Expect::ToolError("hold_id"),
        ),
        // WebSocket: the limits.
        ("ws: JSON too deep", Send::WsText(frame("tools/call", deep_params.clone())), rpc(0, -32600, "deeper than 8")),
        ("ws: 10k open brackets", Send::WsText("[".repeat(3000)), rpc(0, -32600, "deeper than 8")),
        ("ws: tool calls per call per second", Send::WsBurst(4), rpc(0, -32005, "for this call")),
        (
            "ws+mcp: tool calls per tenant per second",
            Send::TenantBurst { ws: 3, mcp: 3 },
            rpc(200, -32005, "for this business"),
        ),
        ("ws: calls per tenant", Send::WsHandshake(DEMO_KEY, DEMO_NUMBER), Expect::Http(503, r#""code":-32004"#)),
        (
            "ws: calls in total",
            Send::WsHandshake(OTHER_KEY, OTHER_NUMBER),
            Expect::Http(503, "too many calls in progress, try"),
        ),
        ("ws: wrong key", Send::WsHandshake(OTHER_KEY, DEMO_NUMBER), Expect::Http(401, "invalid API key")),
        // MCP Streamable HTTP.
        ("mcp: not JSON", Send::Mcp("application/json", b"nope".to_vec()), rpc(400, -32700, "not valid JSON")),
        ("mcp: not UTF-8", Send::Mcp("application/json", vec![0xff, 0xfe, b'{']), rpc(400, -32700, "UTF-8")),
        ("mcp: not an object", Send::Mcp("application/json", b"[]".to_vec()), rpc(400, -32600, "request object")),
        ("mcp: wrong content type", Send::Mcp("text/plain", b"{}".to_vec()), Expect::Http(415, "Content-Type")),
        ("mcp: body too large", Send::Mcp("application/json", big.clone().into_bytes()), Expect::Http(413, "")),
        (
            "mcp: JSON too deep",
            Send::Mcp("application/json", frame("tools/call", deep_params.clone()).into_bytes()),
            rpc(400, -32600, "deeper than 8"),
        ),
        (
            "mcp: unknown tool",
            Send::Mcp(
                "application/json",
                frame("tools/call", json!({"name": "drop_db", "arguments": {"call_id": MCP}})).into_bytes(),
            ),
            rpc(200, -32602, "drop_db"),
        ),
        (
            "mcp: argument of the wrong type",
            Send::Mcp(
                "application/json",
                frame("tools/call", json!({"name": "find_slots", "arguments": {"call_id": MCP, "service": []}}))
                    .into_bytes(),
            ),
            Expect::ToolError("service"),
        ),
        (
            "mcp: another tenant's call",
            Send::Mcp(
                "application/json",
                frame("tools/call", json!({"name": "list_services", "arguments": {"call_id": OTHER}})).into_bytes(),
            ),
            Expect::ToolError("unknown_call"),
        ),
        ("mcp: tool calls per call per second", Send::McpBurst(4), rpc(200, -32005, "for this call")),
        (
            "mcp: calls per tenant",
            Send::Mcp(
                "application/json",
                frame("tools/call", json!({"name": "start_call", "arguments": {"call_id": "hi-new"}})).into_bytes(),
            ),
            rpc(200, -32004, "busy: too many calls in progress for this business"),
        ),
        // The Vapi server URL.
        ("vapi: not JSON", Send::Vapi(b"<xml/>".to_vec()), Expect::Http(400, "not valid JSON")),
        ("vapi: body too large", Send::Vapi(vec![b' '; 9000]), Expect::Http(413, "")),
        (
            "vapi: JSON too deep",
            Send::Vapi(json!({"message": nested(9)}).to_string().into_bytes()),
            Expect::Http(400, "deeper than 8"),
        ),
        (
            "vapi: message not an object",
            Send::Vapi(br#"{"message":[]}"#.to_vec()),
            Expect::Http(400, "message must be an object"),
        ),
        (
            "vapi: call id with a path",
            Send::Vapi(
                json!({"message": {"type": "tool-calls", "call": {"id": "../../etc"}, "toolCallList": []}})
                    .to_string()
                    .into_bytes(),
            ),
            Expect::Http(400, "message.call.id"),
        ),
        (
            "vapi: too many tool calls in one message",
            Send::Vapi(vapi_tools(
                VAPI,
                (0..33).map(|i| vapi_call(&format!("t{i}"), "list_services", json!({}))).collect(),
            )),
            Expect::Http(400, "too many entries"),
        ),
        (
            "vapi: arguments string too deep",
            Send::Vapi(vapi_tools(VAPI, vec![vapi_call("t1", "find_slots", json!(nested(9).to_string()))])),
            Expect::VapiError("deeper than 8"),
        ),
        (
            "vapi: tool calls per call per second",
            Send::Vapi(vapi_tools(
                VAPI,
                (0..4).map(|i| vapi_call(&format!("r{i}"), "list_services", json!({}))).collect(),
            )),
            Expect::VapiError("rate limited: too many tool calls per second for this call (code -32005)"),
        ),
        (
            "vapi: calls per tenant",
            Send::Vapi(vapi_tools("hi-vapi-new", vec![vapi_call("t1", "list_services", json!({}))])),
            Expect::VapiError("busy: too many calls in progress for this business"),
        ),
        // REST.
        (
            "rest: bad date",
            Send::Rest("GET", "/v1/calls?date=tomorrow".into(), vec![]),
            Expect::Http(400, "YYYY-MM-DD"),
        ),
        ("rest: unknown call", Send::Rest("GET", "/v1/calls/no-such-call".into(), vec![]), Expect::Http(404, "")),
        ("rest: another tenant's call", Send::Rest("GET", format!("/v1/calls/{OTHER}"), vec![]), Expect::Http(404, "")),
        (
            "rest: approve an unknown call",
            Send::Rest("POST", "/v1/writeback/calls/nope/approve".into(), vec![]),
            Expect::Http(404, ""),
        ),
        (
            "rest: form body too large",
            Send::Rest("POST", "/console/login".into(), format!("user=a&password={}", "p".repeat(20_000)).into_bytes()),
            Expect::Http(413, ""),
        ),
    ];

    let before = snapshot(&app).await;
    for (name, send, expect) in rows {
        app.clock.advance(jiff::SignedDuration::from_secs(1));
        // The answer.
        let (status, body): (u16, Value) = match send {
            Send::WsText(t) => {
                ws.send_text(&t).await;
                (0, ws_reply(&mut ws).await)
            }
            Send::WsBurst(n) => {
                let mut last = Value::Null;
                for i in 0..n {
                    ws.send_text(&tool_frame(i)).await;
                    last = ws_reply(&mut ws).await;
                    if i + 1 < n {
                        assert!(last.get("result").is_some(), "{name}: call {i} within the limit: {last}");
                    }
                }
                (0, last)
            }
            Send::TenantBurst { ws: on_ws, mcp: on_mcp } => {
                for i in 0..on_ws {
                    ws.send_text(&tool_frame(i)).await;
                    let r = ws_reply(&mut ws).await;
                    assert!(r.get("result").is_some(), "{name}: ws call {i}: {r}");
                }
                let mut last = (0, Value::Null);
                for i in 0..on_mcp {
                    last = mcp
                        .request("tools/call", json!({"name": "list_services", "arguments": {"call_id": MCP}}))
                        .await;
                    if i + 1 < on_mcp {
                        assert!(last.1.get("result").is_some(), "{name}: mcp call {i}: {:?}", last);
                    }
                }
                last
            }
            Send::WsHandshake(key, number) => {
                let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    app.ws_url("hi-extra", "+14155550138", number),
                )
                .unwrap();
                req.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
                match tokio_tungstenite::connect_async(req).await {
                    Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                        let status = resp.status().as_u16();
                        let text = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                        (status, Value::String(text))
                    }
                    Ok(_) => panic!("{name}: the handshake was accepted"),
                    Err(e) => panic!("{name}: {e}"),
                }
            }
            Send::Mcp(ct, b) => mcp.post(ct, b).await,
            Send::McpBurst(n) => {
                let mut last = (0, Value::Null);
                for i in 0..n {
                    last = mcp
                        .request("tools/call", json!({"name": "list_services", "arguments": {"call_id": MCP}}))
                        .await;
                    if i + 1 < n {
                        assert!(last.1.get("result").is_some(), "{name}: call {i} within the limit: {:?}", last);
                    }
                }
                last
            }
            Send::Vapi(b) => vapi_post(&app, b).await,
            Send::Rest(m, path, b) => {
                let (s, t) = rest(&app, m, &path, b).await;
                (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
            }
        };
        let text = body.to_string();
        match expect {
            Expect::Rpc { status: want, code, says } => {
                if want != 0 {
                    assert_eq!(status, want, "{name}: {body}");
                }
                assert_eq!(body["error"]["code"], json!(code), "{name}: {body}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(says), "{name}: {message:?} should say {says:?}");
            }
            Expect::ToolError(what) => {
                let result = &body["result"];
                assert_eq!(result["isError"], true, "{name}: {body}");
                let s = &result["structuredContent"];
                assert!(s["argument"] == json!(what) || s["error"] == json!(what), "{name}: {body}");
            }
            Expect::Http(want, says) => {
                assert_eq!(status, want, "{name}: {body}");
                assert!(
                    text.contains(&says.replace('"', "\\\"")) || text.contains(says),
                    "{name}: {text} should say {says:?}"
                );
            }
            Expect::VapiError(says) => {
                assert_eq!(status, 200, "{name}: {body}");
                let results = body["results"].as_array().unwrap_or_else(|| panic!("{name}: {body}"));
                let last = results.last().unwrap();
                let error =
                    last["error"].as_str().unwrap_or_else(|| panic!("{name}: the last result is not an error: {body}"));
                assert!(error.contains(says), "{name}: {error:?} should say {says:?}");
                for earlier in &results[..results.len() - 1] {
                    assert!(earlier.get("result").is_some(), "{name}: calls within the limit are answered: {body}");
                }
            }
        }
        // The connections still answer (a ping costs no tool budget), the service is up, and
        // nothing changed.
        let pong = ws.request("ping", json!({})).await;
        assert_eq!(pong["result"], json!({}), "{name}: the socket still answers");
        let (s, pong) = mcp.request("ping", json!({})).await;
        assert_eq!((s, &pong["result"]), (200, &json!({})), "{name}: the MCP session still answers");
        assert_eq!(app.get("/healthz").await, (200, "ok".into()), "{name}");
        assert_eq!(app.get("/readyz").await, (200, "ready".into()), "{name}");
        assert_eq!(snapshot(&app).await, before, "{name}: data changed");
    }

    // The limit that ends a connection by design comes last: a message past max_message_bytes
    // closes the socket with 1009; the other calls and the service carry on.
    ws.send_text(&big).await;
    assert!(matches!(ws.next_reply().await, Reply::Closed(Some(1009))), "oversized frame closes with 1009");
    let pong = other.request("ping", json!({})).await;
    assert_eq!(pong["result"], json!({}));
    let list = other.tool("list_services", json!({})).await;
    assert_eq!(list["isError"], false, "{list}");
    let (s, pong) = mcp.request("ping", json!({})).await;
    assert_eq!((s, &pong["result"]), (200, &json!({})));
    assert_eq!(app.get("/healthz").await, (200, "ok".into()));
    // The dropped call is written back like any disconnect: its row closes, the others are as
    // they were.
    app.wait_for_close(WS).await;
    let mut ws2 = app.connect("hi-ws-2", "+14155550139").await;
    ws2.initialize().await;
    let binary = ws2.ws.send(Message::Binary(vec![0u8, 1].into())).await;
    assert!(binary.is_ok());
    assert!(matches!(ws2.next_reply().await, Reply::Closed(Some(1003))), "binary frames close with 1003");
    app.shutdown().await;
}
