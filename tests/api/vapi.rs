//! The Vapi server URL at `/v1/vapi`, driven by the payload fixtures in `tests/fixtures/vapi/`:
//! tool calls in both forms, status updates, the end-of-call report, and one write-back per call
//! whichever way the call ended first. Hostile bodies get a clear 4xx and the service stays up.

use serde_json::{Value, json};

use crate::helpers::{TestApp, repo_path, spawn_app};

pub const VAPI_SECRET: &str = "vapi_demo_not_secret_3f8e1b";

fn fixture(name: &str, call_id: &str, fill: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo_path(&format!("tests/fixtures/vapi/{name}"))).unwrap();
    text = text.replace("vapi-call-0001", call_id);
    for (k, v) in fill {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    text
}

async fn post(app: &TestApp, secret: Option<&str>, body: String) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/v1/vapi", app.addr))
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = secret {
        req = req.header("x-vapi-secret", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The results of a tool-calls reply, checked for Vapi's shape: one entry per call, each with a
/// single-line string.
fn results(reply: &Value, expected: usize) -> Vec<Value> {
    let results = reply["results"].as_array().unwrap_or_else(|| panic!("results array: {reply}")).clone();
    assert_eq!(results.len(), expected, "{reply}");
    for r in &results {
        assert!(r["toolCallId"].is_string() && r["name"].is_string(), "{r}");
        let text = r.get("result").or_else(|| r.get("error")).and_then(Value::as_str).expect("result or error");
        assert!(!text.contains('\n'), "single line: {text:?}");
    }
    results
}

/// The JSON part of a result string ("<speakable sentence> <json>").
fn structured(text: &str) -> Value {
    let at = text.find('{').expect("structured part");
    serde_json::from_str(&text[at..]).unwrap()
}

fn call_logs_for(app: &TestApp, call_id: &str) -> Vec<callside::sandbox::hubspot::SandboxObject> {
    app.hubspot
        .calls()
        .into_iter()
        .filter(|c| c.prop("hs_call_body").is_some_and(|b| b.contains(&format!("Call id: {call_id}"))))
        .collect()
}

#[tokio::test]
async fn a_vapi_call_books_and_its_end_of_call_report_becomes_the_one_write_back() {
    let app = spawn_app().await;
    let id = "vapi-flow-1";
    let (s, v) = post(&app, Some(VAPI_SECRET), fixture("status-update-in-progress.json", id, &[])).await;
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    assert!(app.core.sessions.get(id).is_some(), "the call opened and its prefetch started");

    // toolCallList form.
    let (s, v) = post(&app, Some(VAPI_SECRET), fixture("tool-calls.json", id, &[])).await;
    assert_eq!(s, 200, "{v}");
    let r = results(&v, 2);
    assert_eq!(r[0]["toolCallId"], "call_ctx_1");
    assert_eq!(r[0]["name"], "get_caller_context");
    let ctx = r[0]["result"].as_str().unwrap();
    assert!(ctx.starts_with("Returning customer"), "speakable first: {ctx}");
    assert_eq!(structured(ctx)["status"], "matched");
    let slots = structured(r[1]["result"].as_str().unwrap());
    assert_eq!(slots["slots"].as_array().unwrap().len(), 2, "{slots}");
    let start = slots["slots"][0]["start"].as_str().unwrap().to_owned();

    // function form, arguments as a JSON string.
    let (s, v) =
        post(&app, Some(VAPI_SECRET), fixture("tool-calls-function-form.json", id, &[("start", &start)])).await;
    assert_eq!(s, 200, "{v}");
    let r = results(&v, 1);
    assert_eq!((r[0]["toolCallId"].as_str(), r[0]["name"].as_str()), (Some("call_hold_1"), Some("hold_slot")));
    let hold = structured(r[0]["result"].as_str().unwrap_or_else(|| panic!("{v}")));
    let hold_id = hold["hold_id"].as_str().unwrap().to_owned();

    // function form, arguments as an object.
    let (s, v) = post(
        &app,
        Some(VAPI_SECRET),
        fixture("tool-calls-function-form-object-arguments.json", id, &[("hold_id", &hold_id)]),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let r = results(&v, 1);
    assert!(r[0]["result"].as_str().unwrap_or_else(|| panic!("{v}")).starts_with("You're booked"), "{v}");

    // Hangup, then the report: one call, one call log carrying the report.
    let (s, _) = post(&app, Some(VAPI_SECRET), fixture("status-update-ended.json", id, &[])).await;
    assert_eq!(s, 200);
    assert!(app.core.sessions.get(id).is_none(), "ended");
    let (s, v) = post(&app, Some(VAPI_SECRET), fixture("end-of-call-report.json", id, &[])).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["write_back"] == "merged_into_pending" || v["write_back"] == "update_planned", "{v}");
    // The report may have merged before the first write or planned an update after it: either
    // way the worker ends with one call object showing the report.
    loop {
        assert_eq!(app.wait_for_sync(id).await, "synced");
        let steps = app.core.store.steps_for_call("demo", id).await.unwrap();
        if steps.iter().all(|s| s.status == "done") {
            break;
        }
    }
    let logs = call_logs_for(&app, id);
    assert_eq!(logs.len(), 1, "one call log: {logs:?}");
    let body = logs[0].prop("hs_call_body").unwrap();
    assert!(body.contains("Ana booked a consultation for Monday morning."), "{body}");
    assert!(body.contains("Transcript:"), "{body}");
    assert!(body.contains("Platform evaluation: true"), "{body}");
    assert_eq!(logs[0].prop("hs_call_recording_url"), Some("https://storage.vapi.ai/vapi-flow-1-mono.wav"));
    assert_eq!(logs[0].prop("hs_call_duration"), Some("245000"));
    // A re-delivered report changes nothing visible: still one call log.
    let (s, _) = post(&app, Some(VAPI_SECRET), fixture("end-of-call-report.json", id, &[])).await;
    assert_eq!(s, 200);
    assert_eq!(app.wait_for_sync(id).await, "synced");
    assert_eq!(call_logs_for(&app, id).len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_dropped_socket_and_a_later_end_of_call_report_are_one_call() {
    let app = spawn_app().await;
    let id = "vapi-drop-1";
    let mut c = app.connect(id, "+14155550134").await;
    c.initialize().await;
    c.tool("get_caller_context", json!({})).await;
    c.drop_abruptly().await;
    // The dropped socket's write-back completes first: the call log exists.
    assert_eq!(app.wait_for_sync(id).await, "synced");
    let before = call_logs_for(&app, id);
    assert_eq!(before.len(), 1);
    assert!(before[0].prop("hs_call_body").unwrap().contains("disconnected"));

    let (s, v) = post(&app, Some(VAPI_SECRET), fixture("end-of-call-report.json", id, &[])).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["write_back"], "update_planned", "the call log was written: it is updated, not duplicated");
    loop {
        assert_eq!(app.wait_for_sync(id).await, "synced");
        let steps = app.core.store.steps_for_call("demo", id).await.unwrap();
        if steps.iter().all(|s| s.status == "done") {
            assert!(steps.iter().any(|s| s.kind == "call_log_update"));
            break;
        }
    }
    let after = call_logs_for(&app, id);
    assert_eq!(after.len(), 1, "still one call log");
    assert_eq!(after[0].id, before[0].id, "the same CRM object, updated");
    let body = after[0].prop("hs_call_body").unwrap();
    assert!(body.contains("Ana booked a consultation for Monday morning."), "{body}");
    assert_eq!(after[0].prop("hs_call_recording_url"), Some("https://storage.vapi.ai/vapi-drop-1-mono.wav"));

    // The reverse order: a report for a call never seen opens and closes it in one go.
    let (s, v) = post(&app, Some(VAPI_SECRET), fixture("end-of-call-report.json", "vapi-report-only", &[])).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(app.wait_for_sync("vapi-report-only").await, "synced");
    assert_eq!(call_logs_for(&app, "vapi-report-only").len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn hostile_vapi_bodies_get_clear_4xx_and_the_service_stays_intact() {
    let app = spawn_app().await;
    let report = fixture("end-of-call-report.json", "hostile-1", &[]);
    let mut bad_duration: Value = serde_json::from_str(&report).unwrap();
    bad_duration["message"]["durationSeconds"] = json!("long");
    let mut bad_recording: Value = serde_json::from_str(&report).unwrap();
    bad_recording["message"]["artifact"]["recordingUrl"] = json!("javascript:alert(1)");
    let mut bad_summary: Value = serde_json::from_str(&report).unwrap();
    bad_summary["message"]["analysis"]["summary"] = json!(["not", "a", "string"]);
    let call = json!({"id": "hostile-2", "customer": {"number": "+14155550134"}});
    // (name, secret, body, status)
    let rows: Vec<(&str, Option<&str>, String, u16)> = vec![
        ("no secret", None, report.clone(), 401),
        ("wrong secret", Some("guess"), report.clone(), 401),
        ("the demo API key is not the Vapi secret", Some(crate::helpers::DEMO_KEY), report.clone(), 401),
        ("not JSON", Some(VAPI_SECRET), "{{{".into(), 400),
        ("no message", Some(VAPI_SECRET), json!({"type": "tool-calls"}).to_string(), 400),
        ("message not an object", Some(VAPI_SECRET), json!({"message": "hi"}).to_string(), 400),
        ("type not a string", Some(VAPI_SECRET), json!({"message": {"type": 5, "call": call}}).to_string(), 400),
        ("call id missing", Some(VAPI_SECRET), json!({"message": {"type": "tool-calls", "toolCallList": []}}).to_string(), 400),
        (
            "call id of the wrong type",
            Some(VAPI_SECRET),
            json!({"message": {"type": "tool-calls", "call": {"id": 7}, "toolCallList": []}}).to_string(),
            400,
        ),
        (
            "toolCallList not an array",
            Some(VAPI_SECRET),
            json!({"message": {"type": "tool-calls", "call": call, "toolCallList": {"id": "x"}}}).to_string(),
            400,
        ),
        ("status missing", Some(VAPI_SECRET), json!({"message": {"type": "status-update", "call": call}}).to_string(), 400),
        ("duration of the wrong type", Some(VAPI_SECRET), bad_duration.to_string(), 400),
        ("recording URL not http(s)", Some(VAPI_SECRET), bad_recording.to_string(), 400),
        ("summary of the wrong type", Some(VAPI_SECRET), bad_summary.to_string(), 400),
        (
            "customer number of the wrong type",
            Some(VAPI_SECRET),
            json!({"message": {"type": "tool-calls", "call": {"id": "h3", "customer": {"number": 4155550134u64}}, "toolCallList": []}}).to_string(),
            400,
        ),
        ("oversized body", Some(VAPI_SECRET), format!(r#"{{"message":{{"type":"x","pad":"{}"}}}}"#, "x".repeat(1100 * 1024)), 413),
        ("an informational event", Some(VAPI_SECRET), json!({"message": {"type": "speech-update", "call": call}}).to_string(), 200),
    ];
    for (name, secret, body, status) in rows {
        let (s, v) = post(&app, secret, body).await;
        assert_eq!(s, status, "{name}: {v}");
        if status >= 400 && status != 413 {
            assert!(v["error"].as_str().is_some_and(|e| e.len() > 5), "{name}: a clear error, got {v}");
        }
    }
    // Per-call faults inside a valid tool-calls event are answered per call, HTTP 200.
    let body = json!({"message": {"type": "tool-calls", "call": call, "toolCallList": [
        {"id": "a", "name": "delete_everything", "parameters": {}},
        {"id": "b", "function": {"name": "find_slots", "arguments": "{not json"}},
        {"name": "find_slots", "parameters": {"service": "consult"}},
        {"id": "d", "name": "find_slots", "parameters": {"service": 5}},
        {"id": "e", "name": "list_services", "parameters": {}}
    ]}});
    let (s, v) = post(&app, Some(VAPI_SECRET), body.to_string()).await;
    assert_eq!(s, 200, "{v}");
    let r = results(&v, 5);
    for e in &r[..4] {
        assert!(e["error"].as_str().is_some_and(|t| t.len() > 10), "{e}");
    }
    assert!(r[0]["error"].as_str().unwrap().contains("Unknown tool"));
    assert!(r[3]["error"].as_str().unwrap().contains("service"));
    assert!(r[4]["result"].as_str().unwrap().starts_with("We offer"), "{}", r[4]);
    assert_eq!(app.get("/healthz").await.0, 200);
    app.shutdown().await;
}

#[test]
fn a_vapi_secret_is_configured_as_a_digest_and_validated() {
    use callside::config::{Config, Overrides};
    use std::path::{Path, PathBuf};
    let mut t = crate::helpers::demo_tenant();
    t.vapi_secret_sha256 = Some(VAPI_SECRET.into());
    let err = Config::from_parts(
        Path::new("callside.toml"),
        crate::helpers::server_file("[limits]\nhttp_session_idle_secs = 5\n"),
        vec![(PathBuf::from("tenants/demo.toml"), t)],
        &Overrides::default(),
        PathBuf::from("data"),
    )
    .unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"vapi_secret_sha256"), "a plaintext secret is refused: {keys:?}");
    assert!(keys.contains(&"limits.http_session_idle_secs"), "{keys:?}");
    let shipped = crate::helpers::demo_tenant();
    assert_eq!(
        shipped.vapi_secret_sha256.as_deref(),
        Some(hex::encode(callside::config::api_key_digest(VAPI_SECRET)).as_str()),
        "the documented development secret matches the demo tenant's digest"
    );
}
