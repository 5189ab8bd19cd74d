//! The demo tenants of the other CRMs (`config/examples/tenants/*-demo.toml`), each answering a
//! call end to end through the service against its sandbox emulator: the returning customer is
//! recognised from the CRM, and the call is written back there.

use callside::config::TenantFile;
use serde_json::json;

use crate::helpers::{TestApp, repo_path, server_file, spawn_app_with, urlencode};

fn example_tenant(file: &str) -> TenantFile {
    let path = repo_path(&format!("config/examples/tenants/{file}"));
    toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A call to `tenant`'s number with its development API key, from Ana López's phone.
async fn call_from_ana(app: &TestApp, call_id: &str, tenant: &TenantFile, key: &str) -> crate::helpers::Client {
    let url = format!(
        "ws://{}/v1/calls/ws?call_id={call_id}&from={}&to={}",
        app.addr,
        urlencode("+14155550134"),
        urlencode(&tenant.numbers[0])
    );
    app.connect_with(&url, Some(key)).await.expect("handshake accepted")
}

#[tokio::test]
async fn salesforce_demo_tenant_answers_a_call_through_the_emulator() {
    let tenant = example_tenant("salesforce-demo.toml");
    let app = spawn_app_with(server_file(""), vec![tenant.clone()]).await;
    let ana = app.salesforce.records("Lead")[0].id();

    let mut c = call_from_ana(&app, "sf-demo-1", &tenant, "cs_sfdemo_not_secret_71b4e0").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    let s = &ctx["structuredContent"];
    assert_eq!(s["status"], "matched", "{ctx}");
    assert_eq!(s["contact"]["id"], json!(ana));
    assert_eq!(s["contact"]["first_name"], "Ana");
    let end = c.tool("end_call", json!({"summary": "Asked about the quote.", "disposition": "info"})).await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync_of(&tenant.id, "sf-demo-1").await, "synced");

    let calls: Vec<_> = app
        .salesforce
        .records("Task")
        .into_iter()
        .filter(|t| t.text("TaskSubtype").as_deref() == Some("Call"))
        .collect();
    assert_eq!(calls.len(), 1, "one call task");
    assert_eq!(calls[0].text("WhoId").as_deref(), Some(ana.as_str()));
    assert!(app.salesforce.records("Contact").is_empty(), "the Lead caller was not duplicated");
    app.shutdown().await;
}

/// The Salesforce connector is built by the same tenant builder a config reload uses: a
/// Salesforce tenant added by a reload answers calls at once, from its own emulator.
#[tokio::test]
async fn a_reload_adds_a_salesforce_tenant_that_answers_at_once() {
    const ADMIN_KEY: &str = "cs_admin_test_only_crm_9c1d";
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir(files.path().join("tenants")).unwrap();
    let server = format!(
        "[server]\nsandbox = true\nshutdown_grace_secs = 1\ntenants_dir = \"tenants\"\nadmin_key_sha256 = \"{}\"\n\
         [identity]\npull_interval_secs = 0\n",
        hex::encode(callside::config::api_key_digest(ADMIN_KEY))
    );
    std::fs::write(files.path().join("callside.toml"), server).unwrap();
    std::fs::copy(repo_path("config/tenants/demo.toml"), files.path().join("tenants/demo.toml")).unwrap();
    let app =
        crate::helpers::spawn_app_from_file(&files.path().join("callside.toml"), tempfile::tempdir().unwrap()).await;
    assert!(app.core.tenants.by_id("salesforce-demo").is_none());

    std::fs::copy(
        repo_path("config/examples/tenants/salesforce-demo.toml"),
        files.path().join("tenants/salesforce-demo.toml"),
    )
    .unwrap();
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/reload", app.addr))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["report"]["added"], json!(["salesforce-demo"]), "{body}");
    assert_eq!(app.core.tenants.by_id("salesforce-demo").unwrap().crm.vendor(), "salesforce");

    let tenant = example_tenant("salesforce-demo.toml");
    let ana = app.salesforce.records("Lead")[0].id();
    let mut c = call_from_ana(&app, "sf-reload-1", &tenant, "cs_sfdemo_not_secret_71b4e0").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["contact"]["id"], json!(ana), "{ctx}");
    app.shutdown().await;
}

#[tokio::test]
async fn pipedrive_demo_tenant_answers_a_call_through_the_emulator() {
    let tenant = example_tenant("pipedrive-demo.toml");
    let app = spawn_app_with(server_file(""), vec![tenant.clone()]).await;

    let mut c = call_from_ana(&app, "pd-demo-1", &tenant, "cs_pddemo_not_secret_2a6f93").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    let s = &ctx["structuredContent"];
    assert_eq!(s["status"], "matched", "{ctx}");
    assert_eq!(s["contact"]["first_name"], "Ana");
    assert_eq!(s["open_deals"][0]["name"], "Color correction package", "{ctx}");
    let ana = s["contact"]["id"].as_str().unwrap().to_string();
    let end = c.tool("end_call", json!({"summary": "Asked about the quote.", "disposition": "info"})).await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync_of(&tenant.id, "pd-demo-1").await, "synced");

    assert_eq!(app.pipedrive.activities_of(&ana, "call").len(), 1, "one call activity on the person");
    assert_eq!(app.pipedrive.persons_total(), 1, "the known caller was not duplicated");
    app.shutdown().await;
}
