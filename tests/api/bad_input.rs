//! Bad input, table-driven: each row pins the exact answer, and whether the socket must still be
//! open afterwards. The service stays up throughout.

use serde_json::{Value, json};

use crate::helpers::{
    DEMO_KEY, DEMO_NUMBER, OTHER_KEY, OTHER_NUMBER, Reply, demo_tenant, other_tenant, server_file, spawn_app,
    spawn_app_with,
};

enum Frame {
    Text(String),
    Binary,
    Oversized,
}

enum Expect {
    /// A JSON-RPC error with this code; the socket stays open.
    RpcError(i64),
    /// A tool result with `isError: true` naming this argument; the socket stays open.
    ToolError { argument: &'static str },
    /// The server closes the socket with this code.
    Close(u16),
}

fn call(name: &str, args: Value) -> Frame {
    Frame::Text(
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": args}})
            .to_string(),
    )
}

fn text(s: &str) -> Frame {
    Frame::Text(s.to_owned())
}

#[tokio::test]
async fn malformed_frames_get_pinned_answers_and_leave_the_service_intact() {
    let app = spawn_app().await;
    let rows: Vec<(&str, Frame, Expect)> = vec![
        ("not JSON", text("this is not json"), Expect::RpcError(-32700)),
        ("truncated JSON", text(r#"{"jsonrpc":"2.0","id":1,"#), Expect::RpcError(-32700)),
        ("wrong jsonrpc version", text(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#), Expect::RpcError(-32600)),
        ("array, not a request object", text("[1,2,3]"), Expect::RpcError(-32600)),
        ("a bare string", text(r#""ping""#), Expect::RpcError(-32600)),
        ("method not a string", text(r#"{"jsonrpc":"2.0","id":1,"method":42}"#), Expect::RpcError(-32600)),
        ("unknown method", text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/destroy"}"#), Expect::RpcError(-32601)),
        ("unknown tool", call("delete_everything", json!({})), Expect::RpcError(-32602)),
        (
            "tool name missing",
            text(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#),
            Expect::RpcError(-32602),
        ),
        (
            "argument of the wrong type",
            call("find_slots", json!({"service": 5})),
            Expect::ToolError { argument: "service" },
        ),
        ("argument missing", call("find_slots", json!({})), Expect::ToolError { argument: "service" }),
        (
            "count out of range",
            call("find_slots", json!({"service": "consult", "count": 50})),
            Expect::ToolError { argument: "count" },
        ),
        ("arguments not an object", call("find_slots", json!("consult")), Expect::ToolError { argument: "arguments" }),
        (
            "start not a time",
            call("hold_slot", json!({"service": "consult", "start": "tomorrow-ish"})),
            Expect::ToolError { argument: "start" },
        ),
        (
            "day not a date",
            call("find_slots", json!({"service": "consult", "day": "next tuesday"})),
            Expect::ToolError { argument: "day" },
        ),
        (
            "hold id not a uuid",
            call("book_slot", json!({"hold_id": "'; DROP TABLE calls; --"})),
            Expect::ToolError { argument: "hold_id" },
        ),
        (
            "bad recording URL",
            call("end_call", json!({"summary": "x", "recording_url": "file:///etc/passwd"})),
            Expect::ToolError { argument: "recording_url" },
        ),
        (
            "answers not an object",
            call("end_call", json!({"summary": "x", "answers": ["budget", 100]})),
            Expect::ToolError { argument: "answers" },
        ),
        (
            "answer key with spaces",
            call("end_call", json!({"summary": "x", "answers": {"how much": "100"}})),
            Expect::ToolError { argument: "answers" },
        ),
        (
            "language not a tag",
            call("end_call", json!({"summary": "x", "language": "<script>"})),
            Expect::ToolError { argument: "language" },
        ),
        (
            "escalation urgency unknown",
            call("escalate", json!({"reason": "x", "urgency": "yesterday"})),
            Expect::ToolError { argument: "urgency" },
        ),
        ("escalation without a reason", call("escalate", json!({})), Expect::ToolError { argument: "reason" }),
        ("binary frame", Frame::Binary, Expect::Close(1003)),
        ("oversized frame", Frame::Oversized, Expect::Close(1009)),
    ];
    for (i, (name, frame, expect)) in rows.into_iter().enumerate() {
        let call_id = format!("bad-{i}");
        let mut c = app.connect(&call_id, "+14155550134").await;
        c.initialize().await;
        match frame {
            Frame::Text(t) => c.send_text(&t).await,
            Frame::Binary => {
                use futures::SinkExt;
                c.ws.send(tokio_tungstenite::tungstenite::Message::Binary(vec![0u8, 159, 146, 150].into()))
                    .await
                    .unwrap();
            }
            Frame::Oversized => {
                let big = format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
                    "x".repeat(70 * 1024)
                );
                c.send_text(&big).await;
            }
        }
        let reply = c.next_reply().await;
        match expect {
            Expect::RpcError(code) => {
                let Reply::Message(v) = reply else { panic!("{name}: expected an error reply, got {reply:?}") };
                assert_eq!(v["error"]["code"], json!(code), "{name}: {v}");
                assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: a clear message");
            }
            Expect::ToolError { argument } => {
                let Reply::Message(v) = reply else { panic!("{name}: expected a tool result, got {reply:?}") };
                assert_eq!(v["result"]["isError"], true, "{name}: {v}");
                assert_eq!(v["result"]["structuredContent"]["argument"], argument, "{name}: {v}");
                assert!(v["result"]["content"][0]["text"].as_str().unwrap().len() > 5, "{name}: speakable text");
            }
            Expect::Close(code) => {
                assert!(
                    matches!(reply, Reply::Closed(Some(c)) if c == code),
                    "{name}: expected close {code}, got {reply:?}"
                );
                continue;
            }
        }
        // The socket is still usable after a bad frame.
        let pong = c.request("ping", json!({})).await;
        assert_eq!(pong["result"], json!({}), "{name}: socket still answers");
    }
    // The service is up and a normal call still works.
    assert_eq!(app.get("/healthz").await.0, 200);
    let mut c = app.connect("after-bad", "+14155550134").await;
    c.initialize().await;
    assert_eq!(c.tool("get_caller_context", json!({})).await["structuredContent"]["status"], "matched");
    app.shutdown().await;
}

#[tokio::test]
async fn requests_before_initialize_are_refused_but_ping_works() {
    let app = spawn_app().await;
    let mut c = app.connect("pre-init", "+14155550134").await;
    let r = c.request("tools/call", json!({"name": "get_caller_context", "arguments": {}})).await;
    assert_eq!(r["error"]["code"], -32002);
    let r = c.request("tools/list", json!({})).await;
    assert_eq!(r["error"]["code"], -32002);
    assert_eq!(c.request("ping", json!({})).await["result"], json!({}));
    c.initialize().await;
    assert!(c.request("tools/list", json!({})).await["result"]["tools"].is_array());
    app.shutdown().await;
}

#[tokio::test]
async fn handshakes_are_authenticated_and_scoped_to_the_dialed_number() {
    let app = spawn_app_with(server_file(""), vec![demo_tenant(), other_tenant()]).await;
    let url = |id: &str, to: &str| app.ws_url(id, "+14155550134", to);
    // Refusals, each with its status.
    assert_eq!(app.connect_with(&url("h1", DEMO_NUMBER), Some("wrong-key")).await.err(), Some(401));
    assert_eq!(app.connect_with(&url("h2", DEMO_NUMBER), None).await.err(), Some(401));
    assert_eq!(app.connect_with(&url("h3", "+19995550000"), Some(DEMO_KEY)).await.err(), Some(404));
    assert_eq!(app.connect_with(&url("h4", "not-a-number"), Some(DEMO_KEY)).await.err(), Some(404));
    // A valid key used with another tenant's number is refused, both ways.
    assert_eq!(app.connect_with(&url("h5", OTHER_NUMBER), Some(DEMO_KEY)).await.err(), Some(401));
    assert_eq!(app.connect_with(&url("h6", DEMO_NUMBER), Some(OTHER_KEY)).await.err(), Some(401));
    assert_eq!(
        app.connect_with(&format!("ws://{}/v1/calls/ws?to={}", app.addr, DEMO_NUMBER), Some(DEMO_KEY)).await.err(),
        Some(400)
    );
    // The key as a query parameter (clients that take only a URL) …
    let mut c = app
        .connect_with(&format!("{}&api_key={}", url("h7", DEMO_NUMBER), DEMO_KEY), None)
        .await
        .expect("query-parameter key accepted");
    assert_eq!(c.initialize().await["serverInfo"]["name"], "callside");
    // … and as a Sec-WebSocket-Protocol token; the server still selects `mcp`.
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url("h8", OTHER_NUMBER))
            .unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", format!("mcp, callside-key.{OTHER_KEY}").parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("subprotocol key accepted");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "mcp");
    drop(ws);
    // A second socket with a live call id is refused.
    let _live = app.connect("dup", "+14155550134").await;
    assert_eq!(app.connect_with(&url("dup", DEMO_NUMBER), Some(DEMO_KEY)).await.err(), Some(409));
    // Calls on each tenant only see that tenant's data.
    let mut o = app.connect_with(&url("h9", OTHER_NUMBER), Some(OTHER_KEY)).await.unwrap();
    o.initialize().await;
    let services = o.tool("start_call", json!({})).await;
    assert_eq!(services["structuredContent"]["business"], "Other Clinic");
    assert_eq!(app.get("/healthz").await.0, 200);
    app.shutdown().await;
}

#[tokio::test]
async fn a_withheld_number_is_a_normal_call() {
    let app = spawn_app().await;
    for (i, from) in ["anonymous", "", "Restricted", "+266696687"].iter().enumerate() {
        let mut c = app.connect(&format!("anon-{i}"), from).await;
        c.initialize().await;
        let ctx = c.tool("get_caller_context", json!({})).await;
        assert_eq!(ctx["structuredContent"]["status"], "withheld", "{from:?}");
        assert_eq!(ctx["isError"], false);
    }
    use callside::sandbox::hubspot::RouteKind;
    assert_eq!(app.hubspot.request_count(RouteKind::Search), 0, "no search for a withheld number");
    app.shutdown().await;
}
