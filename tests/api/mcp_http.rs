//! MCP Streamable HTTP at `/mcp`: both protocol eras run a booking flow on the same tool core,
//! notifications ride on the next tool result, idle calls are abandoned and written back, and
//! bad input gets a pinned answer (table-driven) with the service intact.

use serde_json::{Value, json};

use crate::helpers::{DEMO_KEY, DEMO_NUMBER, OTHER_NUMBER, TestApp, spawn_app};

const MODERN: &str = "2026-07-28";

/// A minimal Streamable HTTP client: one POST per message.
struct Http<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    /// `None`: the handshake era; `Some(version)`: the stateless era's per-request `_meta`.
    modern: Option<&'static str>,
    session_id: Option<String>,
    protocol_version: Option<String>,
    next_id: u64,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl<'a> Http<'a> {
    fn new(app: &'a TestApp, modern: Option<&'static str>) -> Self {
        Http { app, client: reqwest::Client::new(), modern, session_id: None, protocol_version: None, next_id: 1 }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.app.addr)
    }

    async fn send(&mut self, mut msg: Value) -> Reply {
        let method = msg["method"].as_str().unwrap_or_default().to_owned();
        let mut req = self
            .client
            .post(self.url())
            .bearer_auth(DEMO_KEY)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(v) = self.modern {
            if msg.get("params").is_none() {
                msg["params"] = json!({});
            }
            msg["params"]["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": v,
                "io.modelcontextprotocol/clientCapabilities": {},
            });
            req = req.header("mcp-protocol-version", v).header("mcp-method", &method);
        } else {
            if let Some(sid) = &self.session_id {
                req = req.header("mcp-session-id", sid);
            }
            if let Some(v) = &self.protocol_version {
                req = req.header("mcp-protocol-version", v);
            }
        }
        let resp = req.body(msg.to_string()).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        Reply { status, headers, body }
    }

    async fn request(&mut self, method: &str, params: Value) -> Reply {
        let id = self.next_id;
        self.next_id += 1;
        let r = self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        if r.status == 200 {
            assert_eq!(r.body["id"], json!(id), "{method}: {}", r.body);
        }
        r
    }

    async fn initialize(&mut self) -> Value {
        let r = self
            .request(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/json");
        self.session_id = Some(r.headers["mcp-session-id"].to_str().unwrap().to_owned());
        self.protocol_version = r.body["result"]["protocolVersion"].as_str().map(str::to_owned);
        let n = self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert_eq!(n.status, 202, "a notification is accepted without a body");
        assert_eq!(n.body, Value::Null);
        r.body["result"].clone()
    }

    /// A tool call; returns the `CallToolResult`.
    async fn tool(&mut self, name: &str, args: Value) -> Value {
        let r = self.request("tools/call", json!({"name": name, "arguments": args})).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert!(r.body.get("error").is_none(), "{name} answered a protocol error: {}", r.body);
        if self.modern.is_some() {
            assert_eq!(r.body["result"]["resultType"], "complete", "{name}: {}", r.body);
        }
        r.body["result"].clone()
    }
}

/// start_call → context → slots → hold → book → end_call, over one era.
async fn booking_flow(h: &mut Http<'_>, call_id: &str) {
    let started = h.tool("start_call", json!({"call_id": call_id, "from": "+14155550134", "to": DEMO_NUMBER})).await;
    assert_eq!(started["isError"], false, "{started}");
    assert_eq!(started["structuredContent"]["business"], "Demo Salon");
    let ctx = h.tool("get_caller_context", json!({"call_id": call_id})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "{ctx}");
    let slots = h.tool("find_slots", json!({"call_id": call_id, "service": "consult"})).await;
    let first = slots["structuredContent"]["slots"][0].clone();
    assert!(first["start"].is_string(), "{slots}");
    let hold = h
        .tool(
            "hold_slot",
            json!({"call_id": call_id, "service": "consult", "start": first["start"], "staff_id": first["staff_id"]}),
        )
        .await;
    assert_eq!(hold["isError"], false, "{hold}");
    let booked = h
        .tool(
            "book_slot",
            json!({"call_id": call_id, "hold_id": hold["structuredContent"]["hold_id"], "name": "Ana López"}),
        )
        .await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    let end = h.tool("end_call", json!({"call_id": call_id, "summary": "Booked a consultation."})).await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
}

#[tokio::test]
async fn both_protocol_eras_run_a_booking_flow_on_the_same_tool_core() {
    let app = spawn_app().await;

    // Handshake era.
    let mut legacy = Http::new(&app, None);
    let init = legacy.initialize().await;
    assert_eq!(init["protocolVersion"], "2025-11-25");
    assert!(legacy.session_id.as_deref().unwrap().len() > 10);
    assert_eq!(legacy.request("ping", json!({})).await.body["result"], json!({}));
    let list = legacy.request("tools/list", json!({})).await.body["result"].clone();
    assert!(list.get("ttlMs").is_none(), "no caching hints before 2026-07-28");
    // An older client keeps its version.
    let mut old = Http::new(&app, None);
    let r = old
        .request(
            "initialize",
            json!({"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "o", "version": "0"}}),
        )
        .await;
    assert_eq!(r.body["result"]["protocolVersion"], "2025-03-26");
    booking_flow(&mut legacy, "http-legacy-1").await;

    // Stateless era: no handshake, discover, per-request _meta.
    let mut modern = Http::new(&app, Some(MODERN));
    let d = modern.request("server/discover", json!({})).await;
    assert_eq!(d.status, 200, "{}", d.body);
    let d = &d.body["result"];
    assert_eq!(d["resultType"], "complete");
    assert!(d["supportedVersions"].as_array().unwrap().contains(&json!(MODERN)), "{d}");
    assert!(d["supportedVersions"].as_array().unwrap().contains(&json!("2025-11-25")), "{d}");
    assert!(d["capabilities"]["tools"].is_object());
    assert_eq!(d["cacheScope"], "public");
    assert!(d["ttlMs"].as_u64().is_some());
    let mlist = modern.request("tools/list", json!({})).await.body["result"].clone();
    assert_eq!(mlist["resultType"], "complete");
    assert_eq!(mlist["cacheScope"], "public");
    assert!(mlist["ttlMs"].as_u64().unwrap() > 0);
    // One tools/list for every transport.
    assert_eq!(mlist["tools"], list["tools"]);
    booking_flow(&mut modern, "http-modern-1").await;

    // Both write-backs happen, and the era of each call is recorded.
    assert_eq!(app.wait_for_sync("http-legacy-1").await, "synced");
    assert_eq!(app.wait_for_sync("http-modern-1").await, "synced");
    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.contains(r#"callside_mcp_sessions_total{era="2025-11-25"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"callside_mcp_sessions_total{era="2026-07-28"} 1"#), "{metrics}");
    app.shutdown().await;
}

#[tokio::test]
async fn notifications_ride_on_the_next_tool_result_of_the_call() {
    let app = spawn_app().await;
    let mut h = Http::new(&app, Some(MODERN));
    let started = h.tool("start_call", json!({"call_id": "notes-1", "from": "+14155550134"})).await;
    // The prefetch announces "context ready" before get_caller_context can answer: the
    // notification rides on that result, or on start_call's if the prefetch was faster.
    let ctx = h.tool("get_caller_context", json!({"call_id": "notes-1"})).await;
    let notes: Vec<Value> = [&started, &ctx]
        .iter()
        .filter_map(|r| r["_meta"]["dev.callside/notifications"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(notes.len(), 1, "delivered exactly once: {started} {ctx}");
    assert_eq!(notes[0]["method"], "notifications/callside/context_ready");
    assert_eq!(notes[0]["params"], json!({"call_id": "notes-1", "status": "matched"}));
    // Delivered once.
    let again = h.tool("list_services", json!({"call_id": "notes-1"})).await;
    assert!(again.get("_meta").is_none(), "{again}");
    // The X-Call-Id header names the call too (Vapi sends it).
    let r = h
        .client
        .post(h.url())
        .bearer_auth(DEMO_KEY)
        .header("content-type", "application/json")
        .header("x-call-id", "notes-1")
        .body(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "list_services", "arguments": {}}}).to_string())
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["isError"], false, "{v}");
    app.shutdown().await;
}

#[tokio::test]
async fn an_idle_http_call_is_abandoned_and_written_back() {
    let app = spawn_app().await;
    let mut h = Http::new(&app, None);
    h.initialize().await;
    h.tool("start_call", json!({"call_id": "idle-1", "from": "+14155550134"})).await;
    h.tool("get_caller_context", json!({"call_id": "idle-1"})).await;
    // A minute short of the idle timeout (15 min by default): still live.
    app.clock.advance(jiff::SignedDuration::from_secs(14 * 60));
    let r = h.tool("list_services", json!({"call_id": "idle-1"})).await;
    assert_eq!(r["isError"], false, "activity pushes the deadline back");
    assert!(app.core.sessions.get("idle-1").is_some());
    app.clock.advance(jiff::SignedDuration::from_secs(15 * 60 + 1));
    app.wait_for_close("idle-1").await;
    let call = app.core.store.call("demo", "idle-1").await.unwrap().unwrap();
    assert_eq!(call.end_reason.as_deref(), Some("abandoned"));
    assert_eq!(app.wait_for_sync("idle-1").await, "synced");
    let logs: Vec<_> = app
        .hubspot
        .calls()
        .into_iter()
        .filter(|c| c.prop("hs_call_body").is_some_and(|b| b.contains("idle-1")))
        .collect();
    assert_eq!(logs.len(), 1);
    assert!(logs[0].prop("hs_call_body").unwrap().contains("stopped responding"), "{:?}", logs[0]);
    // The call is over: a late tool call is a clear tool error, and it cannot be restarted.
    let late = h.tool("list_services", json!({"call_id": "idle-1"})).await;
    assert_eq!(late["isError"], true);
    assert_eq!(late["structuredContent"]["error"], "unknown_call");
    let restart = h.tool("start_call", json!({"call_id": "idle-1"})).await;
    assert_eq!(restart["structuredContent"]["error"], "call_ended");
    app.shutdown().await;
}

/// What a bad request must get.
enum Expect {
    /// An HTTP status with no JSON-RPC shape (auth, media type, size, method).
    Status(u16),
    /// A JSON-RPC error with this code, at this HTTP status.
    Rpc(u16, i64),
    /// A tool result with `isError: true` and this `structuredContent.error` (or argument).
    Tool(&'static str),
}

struct Row {
    name: &'static str,
    method: &'static str,
    key: Option<&'static str>,
    content_type: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    expect: Expect,
}

fn row(name: &'static str, body: Value, expect: Expect) -> Row {
    Row {
        name,
        method: "POST",
        key: Some(DEMO_KEY),
        content_type: "application/json",
        headers: vec![],
        body: body.to_string(),
        expect,
    }
}

fn call(name: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": args}})
}

fn modern_meta(version: &str) -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": version, "io.modelcontextprotocol/clientCapabilities": {}})
}

#[tokio::test]
async fn bad_http_input_gets_pinned_answers_and_leaves_the_service_intact() {
    let app = spawn_app().await;
    // A live call for the rows that need one.
    let mut h = Http::new(&app, Some(MODERN));
    h.tool("start_call", json!({"call_id": "live-1", "from": "+14155550134"})).await;
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let rows = vec![
        Row { key: None, ..row("no API key", ping.clone(), Expect::Status(401)) },
        Row { key: Some("wrong-key"), ..row("wrong API key", ping.clone(), Expect::Status(401)) },
        Row { content_type: "text/plain", ..row("wrong content type", ping.clone(), Expect::Status(415)) },
        Row { body: "{not json".into(), ..row("malformed JSON", json!(null), Expect::Rpc(400, -32700)) },
        row("a batch array", json!([ping.clone()]), Expect::Rpc(400, -32600)),
        row("wrong jsonrpc version", json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}), Expect::Rpc(400, -32600)),
        row("unknown method", json!({"jsonrpc": "2.0", "id": 1, "method": "tools/destroy"}), Expect::Rpc(200, -32601)),
        row("unknown tool", call("delete_everything", json!({"call_id": "live-1"})), Expect::Rpc(200, -32602)),
        row(
            "tool name missing",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}),
            Expect::Rpc(200, -32602),
        ),
        row("no call_id", call("list_services", json!({})), Expect::Tool("call_id")),
        row("call_id of the wrong type", call("list_services", json!({"call_id": 42})), Expect::Tool("call_id")),
        row("call_id with bad characters", call("start_call", json!({"call_id": "a b/c"})), Expect::Tool("call_id")),
        row(
            "unknown call_id",
            call("get_caller_context", json!({"call_id": "never-started"})),
            Expect::Tool("unknown_call"),
        ),
        row(
            "bad argument on a live call",
            call("find_slots", json!({"call_id": "live-1", "service": 5})),
            Expect::Tool("service"),
        ),
        row(
            "another tenant's dialed number",
            call("start_call", json!({"call_id": "wrong-to", "to": OTHER_NUMBER})),
            Expect::Tool("wrong_number"),
        ),
        Row {
            headers: vec![("mcp-protocol-version", "1999-01-01")],
            ..row("unsupported handshake-era version header", ping.clone(), Expect::Rpc(400, -32600))
        },
        row(
            "stateless request without client capabilities",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}}),
            Expect::Rpc(400, -32602),
        ),
        row(
            "server/discover without _meta",
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover"}),
            Expect::Rpc(400, -32602),
        ),
        row(
            "unsupported stateless version",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": modern_meta("2099-01-01")}}),
            Expect::Rpc(400, -32022),
        ),
        Row {
            headers: vec![("mcp-protocol-version", "2025-11-25")],
            ..row(
                "header disagrees with _meta",
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": modern_meta(MODERN)}}),
                Expect::Rpc(400, -32020),
            )
        },
        Row {
            body: format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
                "x".repeat(70 * 1024)
            ),
            ..row("oversized body", json!(null), Expect::Status(413))
        },
        Row { method: "GET", ..row("GET (no standalone stream)", json!(null), Expect::Status(405)) },
        Row {
            headers: vec![("origin", "https://evil.example")],
            ..row("a foreign browser Origin (DNS rebinding)", ping.clone(), Expect::Status(403))
        },
        Row {
            headers: vec![("mcp-session-id", "not-one-of-ours")],
            ..row("a session id we never issued", ping.clone(), Expect::Rpc(404, -32600))
        },
    ];
    let client = reqwest::Client::new();
    for r in rows {
        let mut req = match r.method {
            "GET" => client.get(format!("http://{}/mcp", app.addr)),
            _ => client.post(format!("http://{}/mcp", app.addr)).body(r.body.clone()),
        };
        req = req.header("content-type", r.content_type);
        if let Some(k) = r.key {
            req = req.bearer_auth(k);
        }
        for (k, v) in &r.headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let name = r.name;
        match r.expect {
            Expect::Status(s) => assert_eq!(status, s, "{name}: {text}"),
            Expect::Rpc(s, code) => {
                assert_eq!(status, s, "{name}: {text}");
                let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: JSON body, got {text}"));
                assert_eq!(v["error"]["code"], json!(code), "{name}: {v}");
                assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}");
                if code == -32022 {
                    assert!(v["error"]["data"]["supported"].as_array().unwrap().contains(&json!(MODERN)), "{v}");
                    assert_eq!(v["error"]["data"]["requested"], "2099-01-01");
                }
            }
            Expect::Tool(what) => {
                assert_eq!(status, 200, "{name}: {text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                let result = &v["result"];
                assert_eq!(result["isError"], true, "{name}: {v}");
                let s = &result["structuredContent"];
                assert!(s["error"] == what || s["argument"] == what, "{name}: {v}");
                assert!(result["content"][0]["text"].as_str().unwrap().len() > 10, "{name}: speakable");
            }
        }
    }
    // The service and the live call are intact.
    assert_eq!(app.get("/healthz").await.0, 200);
    let ctx = h.tool("get_caller_context", json!({"call_id": "live-1"})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched");
    app.shutdown().await;
}
