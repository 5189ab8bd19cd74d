//! A tenant on Salesforce (`[crm] vendor = "salesforce"`) through the running service, against
//! the Salesforce emulator the sandbox starts: the demo's returning customer is a Lead there.

use std::path::{Path, PathBuf};

use callside::config::{Config, Overrides, TenantFile};
use serde_json::json;

use crate::helpers::{demo_tenant, server_file, spawn_app_with};

fn salesforce_tenant(new_callers: &str) -> TenantFile {
    let mut t = demo_tenant();
    t.crm =
        toml::from_str(&format!("vendor = \"salesforce\"\nbase_url = \"sandbox\"\nnew_callers = \"{new_callers}\"\n"))
            .unwrap();
    t
}

/// A caller who is a Lead is greeted from the Lead (with its open task) and the call is logged on
/// it as a `TaskSubtype = Call` task — no Contact is created, although new callers of this tenant
/// become Contacts.
#[tokio::test]
async fn a_lead_caller_gets_context_and_the_call_is_logged_on_the_lead() {
    let app = spawn_app_with(server_file(""), vec![salesforce_tenant("contact")]).await;
    let leads = app.salesforce.records("Lead");
    assert_eq!(leads.len(), 1);
    let ana = leads[0].id();

    let mut c = app.connect("sf-call-1", "+14155550134").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["isError"], false, "{ctx}");
    let s = &ctx["structuredContent"];
    assert_eq!(s["status"], "matched", "{ctx}");
    assert_eq!(s["contact"]["id"], json!(ana));
    assert_eq!(s["contact"]["first_name"], "Ana");
    let end = c.tool("end_call", json!({"summary": "Asked about the quote.", "disposition": "info"})).await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync("sf-call-1").await, "synced");

    assert!(app.salesforce.records("Contact").is_empty(), "no Contact for a Lead caller");
    let calls: Vec<_> = app
        .salesforce
        .records("Task")
        .into_iter()
        .filter(|t| t.text("TaskSubtype").as_deref() == Some("Call"))
        .collect();
    assert_eq!(calls.len(), 1, "one call task");
    assert_eq!(calls[0].text("WhoId").as_deref(), Some(ana.as_str()));
    assert_eq!(calls[0].text("CallType").as_deref(), Some("Inbound"));
    app.shutdown().await;
}

/// An unknown caller becomes what the tenant chose: a Contact here, exactly one, even though the
/// write-back upserts on the external id.
#[tokio::test]
async fn a_new_caller_becomes_a_contact_when_the_tenant_says_so() {
    let app = spawn_app_with(server_file(""), vec![salesforce_tenant("contact")]).await;
    let mut c = app.connect("sf-call-2", "+1 646 555 0199").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "new", "{ctx}");
    let end = c
        .tool("end_call", json!({"summary": "New customer.", "disposition": "info", "caller_name": "Grace Hopper"}))
        .await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync("sf-call-2").await, "synced");
    let contacts = app.salesforce.records("Contact");
    assert_eq!(contacts.len(), 1, "one new Contact");
    assert_eq!(contacts[0].text("Phone").as_deref(), Some("+16465550199"));
    assert_eq!(app.salesforce.records("Lead").len(), 1, "only the demo Lead");
    app.shutdown().await;
}

/// `new_callers` is a Salesforce setting: elsewhere it is a configuration error, and a bad value
/// does not parse.
#[test]
fn new_callers_is_checked() {
    let mut t = demo_tenant();
    t.crm.new_callers = Some(Default::default());
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server_file(""),
        vec![(PathBuf::from("tenants/demo.toml"), t)],
        &Overrides::default(),
        PathBuf::from("data"),
    )
    .unwrap_err();
    assert!(err.issues.iter().any(|i| i.key == "crm.new_callers"), "{err}");
    assert!(
        toml::from_str::<callside::config::VendorSection>(
            "vendor = \"salesforce\"\nbase_url = \"sandbox\"\nnew_callers = \"account\"\n"
        )
        .is_err()
    );
    // OAuth against a real org needs the connected app in the server file.
    let mut t = salesforce_tenant("lead");
    t.crm.base_url = "https://acme.my.salesforce.com/".into();
    t.crm.auth = "oauth".into();
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server_file(""),
        vec![(PathBuf::from("tenants/demo.toml"), t)],
        &Overrides::default(),
        PathBuf::from("data"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("[connect.salesforce]"), "{err}");
}
