//! Personal data callside keeps (issue 14, item 5): `callside erase --phone` removes one caller's
//! rows and leaves everyone else's; the retention sweep redacts old call content and removes old
//! audit data on the injected clock; bad retention values are refused at validation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use callside::config::{Config, Overrides};
use callside::store::Store;
use jiff::SignedDuration;
use serde_json::json;

use crate::helpers::{TestApp, demo_tenant, repo_path, server_file, spawn_app, spawn_app_with};

/// Ana is in the CRM as "(415) 555-0134"; the other caller is new.
const ANA: &str = "+14155550134";
const OTHER: &str = "+13125550111";

/// Ana's call: context, a booking with her email, an end_call with a transcript link.
async fn ana_books(app: &TestApp, call_id: &str) -> String {
    let mut c = app.connect(call_id, ANA).await;
    c.initialize().await;
    c.tool("get_caller_context", json!({})).await;
    let slots = c.tool("find_slots", json!({"service": "consult"})).await;
    let first = slots["structuredContent"]["slots"][0].clone();
    let hold = c
        .tool("hold_slot", json!({"service": "consult", "start": first["start"], "staff_id": first["staff_id"]}))
        .await;
    let booked = c
        .tool(
            "book_slot",
            json!({"hold_id": hold["structuredContent"]["hold_id"], "name": "Ana López", "email": "ana.lopez@example.com"}),
        )
        .await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    let end = c
        .tool(
            "end_call",
            json!({
                "summary": "Booked a consultation for Ana.",
                "disposition": "booked",
                "transcript_url": "https://recordings.example/ana.txt",
                "caller_name": "Ana López"
            }),
        )
        .await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync(call_id).await, "synced");
    booked["structuredContent"]["event_id"].as_str().unwrap().to_owned()
}

/// A call that only leaves information, with `summary` as its wrap-up.
async fn info_call(app: &TestApp, call_id: &str, from: &str, summary: &str) {
    let mut c = app.connect(call_id, from).await;
    c.initialize().await;
    c.tool("get_caller_context", json!({})).await;
    let end = c
        .tool(
            "end_call",
            json!({"summary": summary, "disposition": "info_only", "caller_name": "Liam Brennan", "caller_email": "liam.b@example.com"}),
        )
        .await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync(call_id).await, "synced");
}

fn erase_cli(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callside"))
        .arg("erase")
        .args(args)
        .arg("--config")
        .arg(repo_path("config/callside.toml"))
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "off")
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn open_store(dir: &Path) -> Store {
    Store::open(&format!("sqlite://{}", dir.join("callside.db").display())).await.unwrap()
}

#[tokio::test]
async fn erase_removes_every_row_about_the_caller_names_what_remains_in_the_crm_and_leaves_others_intact() {
    let app = spawn_app().await;
    let ana_id = app.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Ana")).unwrap().id;
    let event_id = ana_books(&app, "erase-ana").await;
    info_call(&app, "erase-other", OTHER, "Asked about parking.").await;
    let store = &app.core.store;
    let ana_before = store.tables_mentioning("4155550134").await.unwrap();
    for table in ["calls", "bookings"] {
        assert!(ana_before.iter().any(|(t, _)| t == table), "Ana's number is in {table} before: {ana_before:?}");
    }
    let other_before = store.tables_mentioning("3125550111").await.unwrap();
    let other_steps = store.steps_for_call("demo", "erase-other").await.unwrap();
    let other_audit = store.audit_for_call("demo", "erase-other").await.unwrap();
    assert!(!other_steps.is_empty() && !other_audit.is_empty());
    let dir = app.stop_keeping_data().await;

    // Bad input first: a clear error, exit 2, nothing removed.
    let (code, _, stderr) = erase_cli(dir.path(), &["--phone", "call me maybe"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("\"call me maybe\" is not a phone number"), "{stderr}");
    let (code, _, stderr) = erase_cli(dir.path(), &["--phone", ANA, "--tenant", "nobody"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no tenant \"nobody\""), "{stderr}");
    let store = open_store(dir.path()).await;
    assert_eq!(store.tables_mentioning("4155550134").await.unwrap(), ana_before, "bad input removed nothing");
    store.close().await;

    // The number in another format: the identity key is the same E.164.
    let (code, stdout, stderr) = erase_cli(dir.path(), &["--phone", "(415) 555-0134"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("tenant demo: caller +14155550134"), "{stdout}");
    assert!(stdout.contains("removed from callside: 1 call(s)"), "{stdout}");
    assert!(stdout.contains(&ana_id), "the CRM contact that remains is named: {stdout}");
    assert!(stdout.contains(&event_id), "the calendar event that remains is named: {stdout}");

    // The raw tables: nothing names Ana's number, email or call any more.
    let store = open_store(dir.path()).await;
    for needle in ["4155550134", "ana.lopez@example.com", "erase-ana", "recordings.example/ana"] {
        assert_eq!(store.tables_mentioning(needle).await.unwrap(), vec![], "{needle} is gone from every table");
    }
    // The other caller's rows are untouched.
    assert_eq!(store.tables_mentioning("3125550111").await.unwrap(), other_before);
    assert_eq!(store.call("demo", "erase-other").await.unwrap().unwrap().sync_status, "synced");
    assert_eq!(store.steps_for_call("demo", "erase-other").await.unwrap(), other_steps);
    assert_eq!(store.audit_for_call("demo", "erase-other").await.unwrap(), other_audit);

    // Erasing again finds nothing left.
    store.close().await;
    let (code, stdout, _) = erase_cli(dir.path(), &["--phone", ANA]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("removed from callside: 0 call(s)"), "{stdout}");
}

/// Waits for the retention sweep after `seen` (the sweeper bumps its counter after each one).
async fn sweep_after(app: &TestApp, seen: u64) -> u64 {
    let mut rounds = app.retention_rounds.clone();
    let n = tokio::time::timeout(Duration::from_secs(20), rounds.wait_for(|n| *n > seen))
        .await
        .expect("a sweep ran in time")
        .expect("sweeper alive");
    *n
}

#[tokio::test]
async fn the_retention_sweep_redacts_old_call_content_then_old_audit_data_and_keeps_recent_calls() {
    let app =
        spawn_app_with(server_file("[retention]\ntranscripts_days = 30\naudit_days = 90\n"), vec![demo_tenant()]).await;
    let mut seen = sweep_after(&app, 0).await;
    info_call(&app, "old-call", OTHER, "Caller mentioned RETAIN-OLD-7731 about an order.").await;
    let store = &app.core.store;
    assert!(!store.tables_mentioning("RETAIN-OLD-7731").await.unwrap().is_empty());
    let old_audit = store.audit_for_call("demo", "old-call").await.unwrap().len();
    assert!(old_audit > 0);

    app.clock.advance(SignedDuration::from_hours(24 * 31));
    seen = sweep_after(&app, seen).await;
    info_call(&app, "new-call", OTHER, "Caller mentioned RETAIN-NEW-4410 about an order.").await;
    app.clock.advance(SignedDuration::from_secs(3600));
    seen = sweep_after(&app, seen).await;

    // The old call's content is gone from every table; its disposition and audit remain.
    assert_eq!(store.tables_mentioning("RETAIN-OLD-7731").await.unwrap(), vec![]);
    let old = store.call("demo", "old-call").await.unwrap().unwrap();
    let outcome = old.outcome.unwrap();
    assert_eq!(outcome["disposition"], "info_only", "{outcome}");
    assert!(outcome.get("redacted_at").is_some() && outcome.get("caller_email").is_none(), "{outcome}");
    assert_eq!(store.audit_for_call("demo", "old-call").await.unwrap().len(), old_audit, "audit kept 90 days");
    // The recent call is untouched.
    assert!(!store.tables_mentioning("RETAIN-NEW-4410").await.unwrap().is_empty());
    assert_eq!(
        store.call("demo", "new-call").await.unwrap().unwrap().outcome.unwrap()["caller_email"],
        "liam.b@example.com"
    );

    // Past 90 days the old call's audit rows go; the new call's (60 days old) stay.
    let new_audit = store.audit_for_call("demo", "new-call").await.unwrap().len();
    app.clock.advance(SignedDuration::from_hours(24 * 60));
    sweep_after(&app, seen).await;
    assert_eq!(store.audit_for_call("demo", "old-call").await.unwrap().len(), 0);
    assert_eq!(store.audit_for_call("demo", "new-call").await.unwrap().len(), new_audit);
    app.shutdown().await;
}

#[test]
fn bad_retention_values_are_refused_with_the_key_and_the_reason() {
    let server = server_file("[retention]\ntranscripts_days = 99999\nsweep_interval_secs = 5\n");
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server,
        vec![(PathBuf::from("tenants/demo.toml"), demo_tenant())],
        &Overrides::default(),
        PathBuf::from("data"),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("retention.transcripts_days: 99999 is more than 3650 days"), "{text}");
    assert!(text.contains("retention.sweep_interval_secs: 5 must be between 60 and 86400"), "{text}");
    // A negative or misspelled value is a parse error naming the key.
    let parse = toml::from_str::<callside::config::ServerFile>("[retention]\naudit_days = -1\n").unwrap_err();
    assert!(parse.to_string().contains("audit_days"), "{parse}");
    let parse = toml::from_str::<callside::config::ServerFile>("[retention]\ntranscript_days = 7\n").unwrap_err();
    assert!(parse.to_string().contains("transcript_days"), "{parse}");
    // The defaults validate.
    assert!(callside::privacy::RetentionSection::default().validate().is_empty());
}
