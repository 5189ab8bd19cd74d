//! A tenant on Pipedrive (`[crm] vendor = "pipedrive"`): connected through the service's OAuth
//! flow, the caller is greeted from Pipedrive and the call is written back to Pipedrive; with
//! the sandbox's API token, the same without OAuth.

use serde_json::json;

use crate::helpers::{DEMO_KEY, demo_tenant, server_file, spawn_app_with};

fn pipedrive_tenant(auth: &str) -> callside::config::TenantFile {
    let mut t = demo_tenant();
    t.crm.vendor = "pipedrive".into();
    t.crm.auth = auth.into();
    t
}

#[tokio::test]
async fn a_pipedrive_tenant_connects_through_oauth_and_greets_a_known_caller() {
    let app = spawn_app_with(server_file(""), vec![pipedrive_tenant("oauth")]).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let start = format!("http://{}/v1/connect/pipedrive/start", app.addr);
    let answer: serde_json::Value = http.get(&start).bearer_auth(DEMO_KEY).send().await.unwrap().json().await.unwrap();
    let authorize = url::Url::parse(answer["authorize_url"].as_str().unwrap()).unwrap();
    assert!(authorize.path().ends_with("/oauth/authorize"), "{authorize}");
    let approved = http.get(authorize).send().await.unwrap();
    assert_eq!(approved.status(), 302);
    let back = url::Url::parse(approved.headers()["location"].to_str().unwrap()).unwrap();
    let done = http.get(back).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Connected pipedrive for demo"));
    assert_eq!(app.pipedrive.basic_auth_token_requests(), 1, "the code was exchanged with HTTP Basic");

    let mut c = app.connect("pd-call-1", "+14155550134").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["isError"], false, "{ctx}");
    let s = &ctx["structuredContent"];
    assert_eq!(s["status"], "matched", "{s}");
    assert_eq!(s["contact"]["first_name"], "Ana");
    assert_eq!(s["open_deals"][0]["name"], "Color correction package");
    app.shutdown().await;
}

#[tokio::test]
async fn a_new_caller_on_a_pipedrive_tenant_becomes_a_person_with_a_call_activity() {
    let app = spawn_app_with(server_file(""), vec![pipedrive_tenant("token")]).await;
    let before = app.pipedrive.persons_total();
    let mut c = app.connect("pd-call-2", "+1 646 555 0199").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "new", "{ctx}");
    c.drop_abruptly().await;
    assert_eq!(app.wait_for_sync("pd-call-2").await, "synced");
    assert_eq!(app.pipedrive.persons_total(), before + 1, "one new person");
    let requests = app.pipedrive.requests();
    let created = requests.iter().filter(|(m, p, s)| m == "POST" && p == "/api/v2/persons" && *s == 200).count();
    assert_eq!(created, 1, "{requests:?}");
    let id = app.pipedrive.person_with_phone("+16465550199").expect("the new person holds the caller's number");
    assert_eq!(app.pipedrive.activities_of(&id, "call").len(), 1, "one call activity on the person");
    app.shutdown().await;
}

/// Bad Pipedrive configuration is reported with file, key and reason: OAuth against the real
/// Pipedrive without a `[connect.pipedrive]` app, and a CRM vendor nobody supports.
#[test]
fn pipedrive_configuration_errors_are_reported() {
    use std::path::{Path, PathBuf};

    use callside::config::{Config, Overrides};

    let mut oauth = pipedrive_tenant("oauth");
    oauth.crm.base_url = "https://acme.pipedrive.com/".into();
    let mut unknown = demo_tenant();
    unknown.id = "other".into();
    unknown.numbers = vec!["+12125550199".into()];
    unknown.crm.vendor = "zoho".into();
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server_file(""),
        vec![(PathBuf::from("tenants/demo.toml"), oauth), (PathBuf::from("tenants/other.toml"), unknown)],
        &Overrides { listen: Some("127.0.0.1:0".into()), ..Default::default() },
        PathBuf::from("data"),
    )
    .unwrap_err();
    let find = |file: &str, key: &str| {
        err.issues.iter().find(|i| i.file == Path::new(file) && i.key == key).map(|i| i.reason.clone())
    };
    let reason = find("tenants/demo.toml", "crm.auth").expect("the missing app is reported");
    assert!(reason.contains("[connect.pipedrive]"), "{reason}");
    let reason = find("tenants/other.toml", "crm.vendor").expect("the unknown vendor is reported");
    assert!(reason.contains("pipedrive"), "{reason}");

    // A server file with a Pipedrive app whose variables are unset names both.
    let server = server_file(
        "[connect.pipedrive]\nclient_id_env = \"CALLSIDE_TEST_UNSET_PD_ID\"\nclient_secret_env = \"CALLSIDE_TEST_UNSET_PD_SECRET\"\n",
    );
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server,
        vec![(PathBuf::from("tenants/demo.toml"), pipedrive_tenant("oauth"))],
        &Overrides { listen: Some("127.0.0.1:0".into()), ..Default::default() },
        PathBuf::from("data"),
    )
    .unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"connect.pipedrive.client_id_env"), "{keys:?}");
    assert!(keys.contains(&"connect.pipedrive.client_secret_env"), "{keys:?}");
}
