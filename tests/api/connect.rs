//! The OAuth connect flow through the running service: start (tenant API key) → the vendor's
//! authorize page (the sandbox auto-approves) → our callback → a stored, encrypted connection.

use crate::helpers::{DEMO_KEY, spawn_app};

#[tokio::test]
async fn a_tenant_connects_hubspot_through_the_service() {
    let app = spawn_app().await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let start = format!("http://{}/v1/connect/hubspot/start", app.addr);

    // Without the tenant's key: refused.
    assert_eq!(http.get(&start).send().await.unwrap().status(), 401);
    assert_eq!(http.get(&start).bearer_auth("wrong").send().await.unwrap().status(), 401);

    let answer: serde_json::Value = http.get(&start).bearer_auth(DEMO_KEY).send().await.unwrap().json().await.unwrap();
    let authorize = url::Url::parse(answer["authorize_url"].as_str().unwrap()).unwrap();
    let param = |u: &url::Url, k: &str| u.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
    assert_eq!(param(&authorize, "code_challenge_method").as_deref(), Some("S256"));
    let redirect_uri = param(&authorize, "redirect_uri").unwrap();
    assert_eq!(redirect_uri, format!("http://{}/v1/connect/hubspot/callback", app.addr));

    // The vendor's authorize page redirects back to our callback with a code and the state.
    let approved = http.get(authorize.clone()).send().await.unwrap();
    assert_eq!(approved.status(), 302);
    let back = url::Url::parse(approved.headers()["location"].to_str().unwrap()).unwrap();
    assert!(back.as_str().starts_with(&redirect_uri));

    // A forged state is refused and does not consume the real one.
    let mut forged = back.clone();
    forged.query_pairs_mut().clear().append_pair("code", "x").append_pair("state", "forged");
    assert_eq!(http.get(forged).send().await.unwrap().status(), 400);

    let done = http.get(back.clone()).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Connected hubspot for demo"));
    // The state is single use: replaying the callback fails.
    assert_eq!(http.get(back).send().await.unwrap().status(), 400);

    let conn =
        app.core.store.connection(&callside::connections::connection_id("demo", "hubspot")).await.unwrap().unwrap();
    assert_eq!(conn.status, "active");
    assert!(!conn.access_token_ct.contains("sandbox-access-"), "tokens are encrypted at rest");
    // The raw row, every column as stored: no token (the sandbox's tokens are
    // `sandbox-access-…` / `sandbox-refresh-…`) and nothing a reader without the key can use.
    let raw = app.core.store.raw_connection_columns().await.unwrap();
    assert_eq!(raw.len(), 1);
    assert!(raw[0].iter().any(|c| c == &conn.key_id), "the key id is stored beside the ciphertexts");
    for cell in &raw[0] {
        assert!(
            !cell.contains("sandbox-access-") && !cell.contains("sandbox-refresh-"),
            "a token in the raw row: {cell}"
        );
    }
    app.shutdown().await;
}
