//! The sandbox-only switches the load test uses: the admin endpoint (state snapshot and fault
//! switches) and the test-only hold-ledger bypass. Both are off by default and refused by config
//! validation outside the sandbox.

use std::path::{Path, PathBuf};

use callside::config::{Config, Overrides};
use serde_json::{Value, json};

use crate::helpers::{demo_tenant, server_file, spawn_app, spawn_app_with};

const ADMIN: &str = "[sandbox_options]\nadmin_endpoint = true\n";

fn validate(server: &str, tenant_on_real_crm: bool) -> Vec<(String, String)> {
    let mut t = demo_tenant();
    if tenant_on_real_crm {
        t.crm.base_url = "https://api.hubapi.com/".into();
        t.crm.auth = "oauth".into();
    }
    match Config::from_parts(
        Path::new("callside.toml"),
        toml::from_str(server).unwrap(),
        vec![(PathBuf::from("demo.toml"), t)],
        &Overrides::default(),
        PathBuf::from("data"),
    ) {
        Ok(_) => vec![],
        Err(e) => e.issues.into_iter().map(|i| (i.file.display().to_string(), i.key)).collect(),
    }
}

#[test]
fn the_switches_are_refused_outside_the_sandbox() {
    for (key, value) in
        [("admin_endpoint", "true"), ("unsafe_bypass_hold_ledger", "true"), ("integration_fault", "\"naive_create\"")]
    {
        let on = format!("[sandbox_options]\n{key} = {value}\n");
        // Sandbox off.
        let issues = validate(&format!("[server]\nsandbox = false\n{on}"), false);
        assert!(issues.contains(&("callside.toml".into(), format!("sandbox_options.{key}"))), "{key}: {issues:?}");
        // A tenant on a real vendor.
        let issues = validate(&format!("[server]\nsandbox = true\n{on}"), true);
        assert!(issues.contains(&("demo.toml".into(), format!("sandbox_options.{key}"))), "{key}: {issues:?}");
        // Sandbox on, every tenant on it: accepted.
        assert_eq!(validate(&format!("[server]\nsandbox = true\n{on}"), false), vec![], "{key}");
    }
    // Unknown switches are reported, not ignored.
    let err =
        toml::from_str::<callside::config::ServerFile>("[sandbox_options]\nbypass_everything = true\n").unwrap_err();
    assert!(err.message().contains("unknown field `bypass_everything`"), "{err}");
    // So are unknown integration faults, naming the ones that exist.
    let err = toml::from_str::<callside::config::ServerFile>("[sandbox_options]\nintegration_fault = \"everything\"\n")
        .unwrap_err();
    assert!(err.message().contains("unknown variant `everything`"), "{err}");
    assert!(err.message().contains("drop_open_deals"), "{err}");
}

#[tokio::test]
async fn the_admin_endpoint_is_absent_unless_switched_on() {
    let app = spawn_app().await;
    assert_eq!(app.get("/v1/sandbox/state").await.0, 404);
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/sandbox/faults", app.addr))
        .json(&json!({"crm_down": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn the_state_snapshot_shows_calendar_crm_store_and_ledger() {
    let app = spawn_app_with(server_file(ADMIN), vec![demo_tenant()]).await;
    let mut c = app.connect("admin-1", "+14155550134").await;
    c.initialize().await;
    let slots = c.tool("find_slots", json!({"service": "consult"})).await;
    let first = slots["structuredContent"]["slots"][0].clone();
    let held = c.tool("hold_slot", json!({"service": "consult", "start": first["start"]})).await;
    assert_eq!(held["isError"], false, "{held}");

    // A live hold is outstanding while the call is open.
    let (status, body) = app.get("/v1/sandbox/state").await;
    assert_eq!(status, 200, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["outstanding_holds"], 1, "{s}");
    assert_eq!(s["open_sessions"], 1, "{s}");
    assert!(s["emulator_urls"]["hubspot"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{s}");

    let booked =
        c.tool("book_slot", json!({"hold_id": held["structuredContent"]["hold_id"], "name": "Ana López"})).await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    let ended = c.tool("end_call", json!({"summary": "Booked."})).await;
    assert_eq!(ended["structuredContent"]["saved"], true, "{ended}");
    assert_eq!(app.wait_for_sync("admin-1").await, "synced");

    let s: Value = serde_json::from_str(&app.get("/v1/sandbox/state").await.1).unwrap();
    assert_eq!(s["outstanding_holds"], 0, "the hold became a booking: {s}");
    let events = s["calendar_events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{s}");
    assert_eq!(events[0]["id"], booked["structuredContent"]["event_id"]);
    assert_eq!(events[0]["busy"], true);
    assert!(s["crm_call_keys"].as_array().unwrap().contains(&json!("admin-1:call")), "{s}");
    assert_eq!(s["steps"]["pending"], 0, "{s}");
    assert!(s["steps"]["done"].as_u64().unwrap() >= 2, "{s}");
    let call = s["calls"].as_array().unwrap().iter().find(|c| c["call_id"] == "admin-1").unwrap();
    assert_eq!(call["sync_status"], "synced");
    assert!(
        s["contacts"].as_array().unwrap().iter().any(|c| c["email"] == "ana.lopez@example.com"),
        "the seeded demo contact is listed: {s}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn faults_switch_the_emulators_and_bad_bodies_are_refused() {
    let app = spawn_app_with(server_file(ADMIN), vec![demo_tenant()]).await;
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(format!("http://{}/v1/sandbox/faults", app.addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for bad in [
        "{",
        "[]",
        r#"{"crm_down": "yes"}"#,
        r#"{"unknown": true}"#,
        r#"{"crm_fail_next": {"status": 200, "count": 1}}"#,
    ] {
        let r = post(bad.into()).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{bad}: {body}");
    }
    // Nothing was switched by the refused bodies: the CRM emulator answers.
    let state: Value = serde_json::from_str(&app.get("/v1/sandbox/state").await.1).unwrap();
    let hubspot = state["emulator_urls"]["hubspot"].as_str().unwrap().to_owned();
    let crm = || async {
        let url = format!("{hubspot}crm/v3/objects/contacts/search");
        let r = reqwest::Client::new()
            .post(url)
            .bearer_auth(callside::sandbox::HUBSPOT_TOKEN)
            .json(&json!({"filterGroups": [], "limit": 1}))
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    assert_eq!(crm().await, 200);

    let r = post(json!({"crm_down": true}).to_string()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(crm().await, 503, "the CRM emulator is down");
    post(json!({"crm_down": false}).to_string()).await.unwrap();
    assert_eq!(crm().await, 200);

    // A 429 storm of two responses, then the CRM answers again.
    post(json!({"crm_fail_next": {"status": 429, "count": 2}}).to_string()).await.unwrap();
    assert_eq!((crm().await, crm().await, crm().await), (429, 429, 200));
    app.shutdown().await;
}

#[tokio::test]
async fn the_ledger_bypass_lets_two_calls_hold_the_same_time() {
    let app =
        spawn_app_with(server_file("[sandbox_options]\nunsafe_bypass_hold_ledger = true\n"), vec![demo_tenant()]).await;
    let mut a = app.connect("bypass-a", "+14155550134").await;
    let mut b = app.connect("bypass-b", "+14155550135").await;
    a.initialize().await;
    b.initialize().await;
    let slots = a.tool("find_slots", json!({"service": "consult"})).await;
    let first = slots["structuredContent"]["slots"][0].clone();
    let args = json!({"service": "consult", "start": first["start"], "staff_id": first["staff_id"]});
    let ha = a.tool("hold_slot", args.clone()).await;
    let hb = b.tool("hold_slot", args).await;
    assert_eq!(ha["isError"], false, "{ha}");
    assert_eq!(hb["isError"], false, "with the ledger bypassed the second hold is admitted: {hb}");
    for (c, h, name) in [(&mut a, &ha, "A"), (&mut b, &hb, "B")] {
        let r = c.tool("book_slot", json!({"hold_id": h["structuredContent"]["hold_id"], "name": name})).await;
        assert_eq!(r["structuredContent"]["booked"], true, "{r}");
    }
    let events = app.google.all_events();
    assert_eq!(events.len(), 2);
    assert_eq!((events[0].start, events[0].end), (events[1].start, events[1].end), "double-booked");
    app.shutdown().await;
}
