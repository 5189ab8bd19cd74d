//! Personal data never reaches the logs (issue 14, "Done when" bullet 3): representative flows —
//! a known caller booking over the WebSocket, a new caller over MCP HTTP giving name and email, a
//! Vapi call with its end-of-call report, the write-back of each to the CRM, and hostile
//! handshakes carrying numbers — run with a JSON subscriber at `trace` for every target (our
//! own and every dependency's, `log` records included), through the production filter
//! (`observe::log_filter`, which caps the dependency targets listed in `CAPPED_TARGETS`). The
//! captured output must contain none of the fixtures' phone numbers, in any format, nor emails.
//!
//! Its own test binary: the subscriber is process-global, and no other test may log into it.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tracing_subscriber::util::SubscriberInitExt;

use helpers::{DEMO_NUMBER, spawn_app};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every way a North American number is written: E.164, with and without the country code,
/// grouped with spaces, dashes, dots and parentheses.
fn formats(e164: &str) -> Vec<String> {
    let d = e164.trim_start_matches("+1");
    assert_eq!(d.len(), 10, "{e164}");
    let (a, b, c) = (&d[..3], &d[3..6], &d[6..]);
    vec![
        e164.to_owned(),
        format!("1{d}"),
        d.to_owned(),
        format!("({a}) {b}-{c}"),
        format!("{a}-{b}-{c}"),
        format!("{a}.{b}.{c}"),
        format!("{a} {b} {c}"),
        format!("+1 {a} {b} {c}"),
        format!("{b}-{c}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_of_representative_flows_hold_no_phone_number_or_email() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(callside::observe::log_filter("trace"))
        .with_writer(move || sink.clone())
        .finish()
        .try_init()
        .expect("the only subscriber of this process");
    tracing::trace!(target: "pii_probe", "capture is on");

    let app = spawn_app().await;
    let known: Vec<(String, String)> = app
        .hubspot
        .contacts()
        .iter()
        .filter_map(|c| Some((c.prop("phone")?.to_owned(), c.prop("email").unwrap_or_default().to_owned())))
        .collect();
    assert!(!known.is_empty(), "the demo CRM has callers");

    // 1. A known caller books over the WebSocket and hangs up.
    let (known_phone, known_email) = known[0].clone();
    let mut c = app.connect("pii-ws", &known_phone).await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "{ctx}");
    let slots = c.tool("find_slots", json!({"service": "consult"})).await;
    let first = slots["structuredContent"]["slots"][0].clone();
    let hold = c.tool("hold_slot", json!({"service": "consult", "start": first["start"]})).await;
    let hold_id = hold["structuredContent"]["hold_id"].as_str().unwrap().to_owned();
    let booked = c.tool("book_slot", json!({"hold_id": hold_id, "name": "Ana López", "email": known_email})).await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    c.tool("end_call", json!({"summary": "Booked a consultation.", "caller_name": "Ana López"})).await;
    assert_eq!(app.wait_for_sync("pii-ws").await, "synced");

    // 2. A new caller over MCP HTTP gives a name, an email and a second number.
    let new_phone = "+16465550142";
    let new_email = "lee.park.pii@example.com";
    let other_phone = "+17185550199";
    let http = reqwest::Client::new();
    let mcp = format!("http://{}/mcp", app.addr);
    let post = |body: Value| {
        http.post(&mcp)
            .bearer_auth(helpers::DEMO_KEY)
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string())
            .send()
    };
    let call = |id: u64, name: &str, args: Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": args}});
    post(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
        .await
        .unwrap();
    let r = post(call(2, "start_call", json!({"call_id": "pii-mcp", "from": "(646) 555-0142", "to": DEMO_NUMBER})))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    post(call(3, "get_caller_context", json!({"call_id": "pii-mcp", "email": new_email}))).await.unwrap();
    let r = post(call(
        4,
        "end_call",
        json!({"call_id": "pii-mcp", "summary": "New caller, wants a call back on 718-555-0199.",
            "caller_name": "Lee Park", "caller_email": new_email, "email": new_email}),
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let mut progress = app.core.worker.progress();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            if let Some(call) = app.core.store.call("demo", "pii-mcp").await.unwrap()
                && call.sync_status != "pending"
                && call.ended_at.is_some()
            {
                return;
            }
            progress.changed().await.unwrap();
        }
    })
    .await
    .expect("the MCP call is written back");

    // 3. A Vapi call: a tool call, then the end-of-call report with its transcript.
    let vapi = format!("http://{}/v1/vapi", app.addr);
    let report = std::fs::read_to_string(helpers::repo_path("tests/fixtures/vapi/end-of-call-report.json"))
        .unwrap()
        .replace("vapi-call-0001", "pii-vapi");
    let vapi_phone = "+14155550134";
    let tool_calls = json!({"message": {"type": "tool-calls", "call": {"id": "pii-vapi", "customer": {"number": vapi_phone}},
        "toolCallList": [{"id": "t1", "type": "function", "function": {"name": "get_caller_context", "arguments": {}}}]}});
    for body in [tool_calls.to_string(), report] {
        let r = http
            .post(&vapi)
            .header("x-vapi-secret", "vapi_demo_not_secret_3f8e1b")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // 4. Hostile input carrying numbers and emails: refused, and not echoed into the logs.
    let refused = app.connect_with(&app.ws_url("pii-bad", "+1 (212) 555-0177", "+1 212 555 0188"), Some("x")).await;
    assert!(refused.is_err());
    let mut bad = app.connect("pii-bad-2", "212.555.0166").await;
    bad.initialize().await;
    let r = bad
        .tool(
            "end_call",
            json!({"summary": "x", "email": "not-an-email@", "caller_email": "mallory@evil.example.com<script>"}),
        )
        .await;
    assert!(r.get("isError").is_some());
    drop(bad);
    app.wait_for_close("pii-bad-2").await;
    app.shutdown().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("capture is on"), "the subscriber captured");
    // Our own events of every flow were captured (so an empty capture cannot pass).
    for call in ["pii-ws", "pii-mcp", "pii-vapi", "pii-bad-2"] {
        assert!(text.contains(&format!(r#""call_id":"{call}""#)), "{call} logged:\n{text}");
    }
    let mut forbidden: Vec<String> = vec![];
    for phone in known.iter().map(|(p, _)| p.as_str()).chain([
        new_phone,
        other_phone,
        vapi_phone,
        "+12125550177",
        "+12125550188",
        "+12125550166",
    ]) {
        if phone.starts_with("+1") && phone.len() == 12 {
            forbidden.extend(formats(phone));
        } else {
            forbidden.push(phone.to_owned());
        }
    }
    for email in
        known.iter().map(|(_, e)| e.as_str()).filter(|e| !e.is_empty()).chain([new_email, "mallory@evil.example.com"])
    {
        forbidden.push(email.to_owned());
        forbidden.push(email.to_lowercase());
    }
    let mut leaks: Vec<String> = vec![];
    for line in text.lines() {
        for f in &forbidden {
            if line.contains(f.as_str()) {
                let target =
                    serde_json::from_str::<Value>(line).ok().and_then(|v| v["target"].as_str().map(str::to_owned));
                leaks.push(format!("{f:?} via {target:?}: {}", &line[..line.len().min(400)]));
            }
        }
    }
    assert!(leaks.is_empty(), "{} leaked line(s):\n{}", leaks.len(), leaks.join("\n"));
}
