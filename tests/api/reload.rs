//! Config reload without a restart (issue 9, item 9) through `POST /v1/admin/reload`: a good
//! file adds a tenant at once; a bad one is refused with every reason and the service keeps
//! running on the old configuration; a server-level change is reported as needing a restart.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// Test-only admin key (its digest goes in the test's server file).
const ADMIN_KEY: &str = "cs_admin_test_only_4b7f1e";

fn server_toml(max_calls: u32) -> String {
    format!(
        "[server]\nsandbox = true\nshutdown_grace_secs = 1\ntenants_dir = \"tenants\"\nadmin_key_sha256 = \"{}\"\n\
         [identity]\npull_interval_secs = 0\n[limits]\nmax_concurrent_calls = {max_calls}\n",
        hex::encode(callside::config::api_key_digest(ADMIN_KEY))
    )
}

fn demo_toml() -> String {
    std::fs::read_to_string(repo_path("config/tenants/demo.toml")).unwrap()
}

/// The demo file turned into a second tenant: its own id, number and key (no Vapi secret).
fn other_toml() -> String {
    demo_toml()
        .replace("id = \"demo\"", "id = \"other\"")
        .replace("name = \"Demo Salon\"", "name = \"Other Clinic\"")
        .replace("+1 212 555 0100", OTHER_NUMBER)
        .replace(
            "7743534656661f2419c887aa8182b2689aaeefcf231367d40d8592761a233ea0",
            &hex::encode(callside::config::api_key_digest(OTHER_KEY)),
        )
        .lines()
        .filter(|l| !l.starts_with("vapi_secret_sha256"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn reload(app: &TestApp, key: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().post(format!("http://{}/v1/admin/reload", app.addr));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn calls_status(app: &TestApp, key: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new().get(format!("http://{}/v1/calls", app.addr)).bearer_auth(key).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn write(dir: &Path, rel: &str, text: &str) {
    std::fs::write(dir.join(rel), text).unwrap();
}

#[tokio::test]
async fn a_bad_reload_leaves_the_service_on_the_old_config_and_a_good_one_applies_at_once() {
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir(files.path().join("tenants")).unwrap();
    write(files.path(), "callside.toml", &server_toml(100));
    write(files.path(), "tenants/demo.toml", &demo_toml());
    let app = spawn_app_from_file(&files.path().join("callside.toml"), tempfile::tempdir().unwrap()).await;

    // Only an admin may reload.
    assert_eq!(reload(&app, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(reload(&app, Some(DEMO_KEY)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(calls_status(&app, OTHER_KEY).await.0, StatusCode::UNAUTHORIZED, "no such tenant yet");

    // A good file: the new tenant works at once, without a restart.
    write(files.path(), "tenants/other.toml", &other_toml());
    let (status, body) = reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["report"]["added"], serde_json::json!(["other"]));
    assert_eq!(body["report"]["restart_needed"], serde_json::json!([]));
    assert_eq!(calls_status(&app, OTHER_KEY).await.0, StatusCode::OK);
    assert!(app.core.tenants.by_id("other").is_some());

    // A bad file (an unknown zone in one tenant, broken TOML in the other): refused with every
    // reason, and the service keeps running on the old configuration.
    write(files.path(), "tenants/demo.toml", &demo_toml().replace("America/New_York", "Mars/Olympus_Mons"));
    write(files.path(), "tenants/other.toml", "id = \"other\"\nname = ");
    let (status, body) = reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["applied"], false);
    let issues = body["issues"].to_string();
    assert!(issues.contains("demo.toml") && issues.contains("time_zone"), "{issues}");
    assert!(issues.contains("other.toml"), "{issues}");
    let (status, day) = calls_status(&app, DEMO_KEY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(day["time_zone"], "America/New_York", "the old configuration is still in force");
    assert_eq!(calls_status(&app, OTHER_KEY).await.0, StatusCode::OK, "the tenant added before is kept");
    assert_eq!(app.get("/healthz").await.0, 200);
    // A call still connects and is served.
    let mut call = app.connect("reload-call", "+12125550123").await;
    call.initialize().await;
    drop(call);

    // Fixed files and a server-level change: the tenants apply, the limit waits for a restart.
    write(files.path(), "tenants/demo.toml", &demo_toml().replace("Demo Salon", "Demo Salon & Spa"));
    write(files.path(), "tenants/other.toml", &other_toml());
    write(files.path(), "callside.toml", &server_toml(50));
    let (status, body) = reload(&app, Some(ADMIN_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["report"]["restart_needed"], serde_json::json!(["limits"]));
    assert_eq!(app.core.tenants.by_id("demo").unwrap().config.name, "Demo Salon & Spa");
    let metrics = app.get("/metrics").await.1;
    assert!(metrics.contains("callside_config_reloads_total{outcome=\"applied\"} 2"), "{metrics}");
    assert!(metrics.contains("callside_config_reloads_total{outcome=\"refused\"} 1"), "{metrics}");
    app.shutdown().await;
}

/// A real SIGHUP (sent to this test process with `kill -HUP`) reloads the configuration: the
/// handler `callside serve` installs, waited on through its count of finished reloads.
#[tokio::test]
async fn a_sighup_reloads_the_configuration() {
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir(files.path().join("tenants")).unwrap();
    write(files.path(), "callside.toml", &server_toml(100));
    write(files.path(), "tenants/demo.toml", &demo_toml());
    let app = spawn_app_from_file(&files.path().join("callside.toml"), tempfile::tempdir().unwrap()).await;
    let mut reloads = callside::reload::on_sighup(app.reloader.clone()).expect("the handler installs");
    assert!(app.core.tenants.by_id("other").is_none());

    write(files.path(), "tenants/other.toml", &other_toml());
    let sent = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(sent.success());
    tokio::time::timeout(std::time::Duration::from_secs(20), reloads.wait_for(|n| *n >= 1))
        .await
        .expect("the signal was handled")
        .unwrap();
    assert!(app.core.tenants.by_id("other").is_some(), "the new tenant is served after the SIGHUP");
    assert_eq!(calls_status(&app, OTHER_KEY).await.0, StatusCode::OK);
    let metrics = app.get("/metrics").await.1;
    assert!(metrics.contains("callside_config_reloads_total{outcome=\"applied\"} 1"), "{metrics}");
    app.shutdown().await;
}
