//! Point-of-sale history in the caller context (issue 6, item 5): read at ring beside the CRM,
//! cached, served without it when the till is slow or down, shown only for an identified caller.

use std::path::{Path, PathBuf};

use callside::config::{Config, Overrides, PosSection, TenantFile};
use serde_json::{Value, json};

use crate::helpers::{TestApp, demo_tenant, server_file, spawn_app, spawn_app_with};

const ANA: &str = "+14155550134";
const SEARCH: &str = "/v2/customers/search";
const ORDERS: &str = "/v2/orders/search";

fn pos_section(toml_text: &str) -> PosSection {
    toml::from_str(toml_text).unwrap()
}

fn tenant_with_pos(toml_text: &str) -> TenantFile {
    let mut t = demo_tenant();
    t.pos = Some(pos_section(toml_text));
    t
}

async fn context(app: &TestApp, call_id: &str, from: &str) -> Value {
    let mut c = app.connect(call_id, from).await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["isError"], false, "{ctx}");
    ctx
}

fn square_requests(app: &TestApp) -> u64 {
    app.square.faults.requests()
}

#[tokio::test]
async fn the_demo_caller_gets_her_till_history_with_one_pos_fetch_per_ring_and_none_within_the_ttl() {
    let app = spawn_app().await;
    let first = context(&app, "pos-1", ANA).await;
    let s = &first["structuredContent"];
    assert_eq!(s["status"], "matched", "{first}");
    let pos = &s["pos"];
    assert_eq!((pos["status"].clone(), pos["matched_by"].clone()), (json!("found"), json!("phone")), "{pos}");
    let summary = &pos["summary"];
    assert_eq!(summary["visit_count"], 4);
    assert_eq!(summary["lifetime_spend"], json!({"minor": 43000, "currency": "USD"}));
    assert_eq!(summary["usual_items"], json!(["Haircut", "Deep conditioning"]));
    assert_eq!(summary["last_purchases"][0]["at"], "2026-11-12T15:00:00Z", "newest first");
    assert_eq!(s["pos_hint"], "Usual: Haircut and Deep conditioning.");
    let text = first["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("Ana") && text.ends_with("Usual: Haircut and Deep conditioning."), "{text}");
    // One fetch at ring: the customer search and one page of orders.
    assert_eq!((app.square.faults.requests_to(SEARCH), app.square.faults.requests_to(ORDERS)), (1, 1));

    // Another call from the same caller within the TTL (another layout of her number): no POS request.
    let second = context(&app, "pos-2", "(415) 555-0134").await;
    assert_eq!(second["structuredContent"]["pos"], first["structuredContent"]["pos"]);
    assert_eq!(square_requests(&app), 2, "served from the cache");
    assert!(app.core.context.is_pos_cached("demo", ANA));

    // A caller the till does not know: one search, nothing shown, no hint.
    let stranger = context(&app, "pos-3", "+16465550111").await;
    assert_eq!(stranger["structuredContent"]["pos"], json!({"status": "not_found"}));
    assert_eq!(stranger["structuredContent"]["pos_hint"], Value::Null);
    assert_eq!(square_requests(&app), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn a_pos_outage_leaves_the_context_served_without_it_and_the_next_ring_reads_again() {
    let app = spawn_app().await;
    app.square.faults.set_down(true);
    let ctx = context(&app, "down-1", ANA).await;
    let s = &ctx["structuredContent"];
    assert_eq!(s["status"], "matched", "the CRM context is served: {ctx}");
    assert_eq!(s["contact"]["first_name"], "Ana");
    assert_eq!(s["pos"]["status"], "unavailable", "{ctx}");
    assert_eq!(s["pos_hint"], Value::Null);
    assert!(!app.core.context.is_pos_cached("demo", ANA), "a failure is not cached");
    // A rate-limited till is the same: unavailable, said so.
    app.square.faults.set_down(false);
    app.square.faults.fail_next(429, 1);
    let limited = context(&app, "down-2", ANA).await;
    let reason = limited["structuredContent"]["pos"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("rate limited"), "{reason}");
    // Back up: the next ring reads it.
    let ok = context(&app, "down-3", ANA).await;
    assert_eq!(ok["structuredContent"]["pos"]["status"], "found");
    app.shutdown().await;
}

#[tokio::test]
async fn a_till_that_hangs_is_cut_off_at_the_ring_budget() {
    let mut t = demo_tenant();
    t.pos.as_mut().unwrap().ring_budget_ms = 100;
    let app = spawn_app_with(server_file(""), vec![t]).await;
    // The emulator holds every request until released: only the budget can answer.
    app.square.faults.set_stalled(true);
    let ctx = context(&app, "stall-1", ANA).await;
    let s = &ctx["structuredContent"];
    assert_eq!(s["status"], "matched");
    assert_eq!(s["pos"]["status"], "unavailable");
    assert!(s["pos"]["reason"].as_str().unwrap().contains("within 100 ms"), "{ctx}");
    app.square.faults.set_stalled(false);
    app.shutdown().await;
}

#[tokio::test]
async fn a_number_not_on_the_till_is_found_by_the_crm_records_email() {
    let app = spawn_app().await;
    app.hubspot.insert_contact([
        ("firstname", "Dana"),
        ("lastname", "Reyes"),
        ("email", "dana.reyes@example.com"),
        ("phone", "(415) 555-1234"),
    ]);
    // At the till Dana gave only her email.
    let dana = app.square.insert_customer("Dana", "Reyes", Some("Dana.Reyes@example.com"), None);
    for day in ["2026-10-01", "2026-11-01"] {
        let at = format!("{day}T15:00:00Z").parse().unwrap();
        app.square.insert_order(&dana, callside::sandbox::square::DEMO_LOCATION, at, &[("Beard trim", 3000)]);
    }
    let ctx = context(&app, "email-1", "+14155551234").await;
    let pos = &ctx["structuredContent"]["pos"];
    assert_eq!((pos["status"].clone(), pos["matched_by"].clone()), (json!("found"), json!("email")), "{ctx}");
    assert_eq!(pos["summary"]["customer_id"], json!(dana));
    assert_eq!(ctx["structuredContent"]["pos_hint"], "Usual: Beard trim.");
    app.shutdown().await;
}

#[tokio::test]
async fn an_ambiguous_caller_or_a_different_first_name_at_the_till_sees_no_history() {
    let app = spawn_app().await;
    // A household line: two people in the CRM, one profile at the till.
    for first in ["Maria", "Jorge"] {
        app.hubspot.insert_contact([("firstname", first), ("lastname", "Lopez"), ("phone", "(415) 555-7777")]);
    }
    let maria = app.square.insert_customer("Maria", "Lopez", None, Some("+14155557777"));
    app.square.insert_order(
        &maria,
        callside::sandbox::square::DEMO_LOCATION,
        "2026-11-01T15:00:00Z".parse().unwrap(),
        &[("Color", 12000)],
    );
    let shared = context(&app, "amb-1", "+14155557777").await;
    assert_eq!(shared["structuredContent"]["status"], "ambiguous");
    assert_eq!(shared["structuredContent"]["pos"]["status"], "not_shown", "{shared}");
    assert!(shared["structuredContent"]["pos"].get("summary").is_none());
    assert_eq!(shared["structuredContent"]["pos_hint"], Value::Null);

    // The CRM knows Pat on this number; the till has Chris on it.
    app.hubspot.insert_contact([("firstname", "Pat"), ("lastname", "Kim"), ("phone", "(415) 555-8888")]);
    let chris = app.square.insert_customer("Chris", "Kim", None, Some("+14155558888"));
    app.square.insert_order(
        &chris,
        callside::sandbox::square::DEMO_LOCATION,
        "2026-11-01T15:00:00Z".parse().unwrap(),
        &[("Haircut", 6500)],
    );
    let other = context(&app, "amb-2", "+14155558888").await;
    assert_eq!(other["structuredContent"]["status"], "matched");
    assert_eq!(other["structuredContent"]["pos"]["status"], "not_shown", "{other}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_shopify_tenant_reads_the_shop_with_its_staff_and_a_throttled_shop_is_unavailable() {
    let t = tenant_with_pos(
        "vendor = \"shopify\"\nbase_url = \"sandbox\"\nshop_domain = \"demo-salon.myshopify.com\"\nread_staff = true\n",
    );
    let app = spawn_app_with(server_file(""), vec![t]).await;
    app.shopify.grant_staff_scope(true);
    app.shopify.throttle_next(1);
    let throttled = context(&app, "shop-1", ANA).await;
    let pos = &throttled["structuredContent"]["pos"];
    assert_eq!(pos["status"], "unavailable", "{throttled}");
    assert!(pos["reason"].as_str().unwrap().contains("THROTTLED"), "{pos}");
    let ctx = context(&app, "shop-2", ANA).await;
    let pos = &ctx["structuredContent"]["pos"];
    assert_eq!(pos["status"], "found", "{ctx}");
    assert_eq!(pos["summary"]["vendor"], "shopify");
    assert_eq!(pos["summary"]["visit_count"], 4);
    assert_eq!(pos["summary"]["lifetime_spend"], json!({"minor": 43000, "currency": "USD"}));
    assert_eq!(ctx["structuredContent"]["pos_hint"], "Usual: Haircut and Deep conditioning; last served by Alex.");
    assert_eq!(app.shopify.faults.requests(), 2, "one query per ring");
    assert_eq!(app.square.faults.requests(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_tenant_without_a_pos_says_so() {
    let mut t = demo_tenant();
    t.pos = None;
    let app = spawn_app_with(server_file(""), vec![t]).await;
    let ctx = context(&app, "nopos-1", ANA).await;
    assert_eq!(ctx["structuredContent"]["pos"], json!({"status": "not_configured"}));
    assert_eq!(app.square.faults.requests() + app.shopify.faults.requests(), 0);
    app.shutdown().await;
}

fn pos_issues(pos: &str, sandbox: bool) -> Vec<(String, String)> {
    let t = tenant_with_pos(pos);
    let server = if sandbox { server_file("") } else { toml::from_str("[server]\nsandbox = false\n").unwrap() };
    match Config::from_parts(
        Path::new("callside.toml"),
        server,
        vec![(PathBuf::from("tenants/demo.toml"), t)],
        &Overrides::default(),
        PathBuf::from("data"),
    ) {
        Ok(_) => vec![],
        Err(e) => e.issues.into_iter().filter(|i| i.key.starts_with("pos.")).map(|i| (i.key, i.reason)).collect(),
    }
}

#[test]
fn a_bad_pos_section_is_refused_naming_the_key() {
    let cases: &[(&str, bool, &str, &str)] = &[
        ("vendor = \"lightspeed\"\nbase_url = \"sandbox\"", true, "pos.vendor", "not supported"),
        ("vendor = \"square\"\nbase_url = \"sandbox\"", true, "pos.location_ids", "1 to 10"),
        (
            "vendor = \"square\"\nbase_url = \"sandbox\"\nlocation_ids = [\"L1\", \"L2\", \"L3\", \"L4\", \"L5\", \"L6\", \"L7\", \"L8\", \"L9\", \"L10\", \"L11\"]",
            true,
            "pos.location_ids",
            "1 to 10",
        ),
        ("vendor = \"shopify\"\nbase_url = \"sandbox\"", true, "pos.shop_domain", "myshopify.com"),
        (
            "vendor = \"shopify\"\nbase_url = \"sandbox\"\nshop_domain = \"evil.example.com\"",
            true,
            "pos.shop_domain",
            "myshopify.com",
        ),
        (
            "vendor = \"square\"\nlocation_ids = [\"L1\"]\naccess_token = \"EAAAsecret\"\naccess_token_env = \"CALLSIDE_TEST_WEBHOOK_SECRET\"",
            false,
            "pos.access_token",
            "environment variable",
        ),
        ("vendor = \"square\"\nlocation_ids = [\"L1\"]", false, "pos.access_token_env", "required"),
        (
            "vendor = \"square\"\nlocation_ids = [\"L1\"]\naccess_token_env = \"CALLSIDE_NO_SUCH_VARIABLE_FOR_POS\"",
            false,
            "pos.access_token_env",
            "not set",
        ),
        (
            "vendor = \"shopify\"\nbase_url = \"sandbox\"\nshop_domain = \"s.myshopify.com\"\napi_version = \"latest\"",
            true,
            "pos.api_version",
            "2025-10",
        ),
        (
            "vendor = \"square\"\nbase_url = \"sandbox\"\nlocation_ids = [\"L1\"]\nring_budget_ms = 10",
            true,
            "pos.ring_budget_ms",
            "between",
        ),
        (
            "vendor = \"square\"\nbase_url = \"sandbox\"\nlocation_ids = [\"L1\"]\nread_staff = true",
            true,
            "pos.read_staff",
            "shopify",
        ),
        (
            "vendor = \"square\"\nbase_url = \"sandbox\"\nlocation_ids = [\"L1\"]",
            false,
            "pos.base_url",
            "server.sandbox",
        ),
    ];
    for (pos, sandbox, key, reason) in cases {
        let issues = pos_issues(pos, *sandbox);
        assert!(
            issues.iter().any(|(k, r)| k == key && r.contains(reason)),
            "{pos:?}: expected {key} ({reason}) in {issues:?}"
        );
        // The secret itself is never echoed back.
        assert!(issues.iter().all(|(_, r)| !r.contains("EAAAsecret")), "{issues:?}");
    }
    // Good sections pass: the demo's Square, a Shopify shop, a real Square seller.
    for good in [
        "vendor = \"square\"\nbase_url = \"sandbox\"\nlocation_ids = [\"LDEMO0SALON\"]",
        "vendor = \"shopify\"\nbase_url = \"sandbox\"\nshop_domain = \"demo-salon.myshopify.com\"\napi_version = \"2025-10\"",
    ] {
        assert_eq!(pos_issues(good, true), vec![], "{good}");
    }
    assert_eq!(
        pos_issues(
            "vendor = \"square\"\nlocation_ids = [\"L1\"]\naccess_token_env = \"CALLSIDE_TEST_WEBHOOK_SECRET\"\napi_version = \"2025-10-16\"",
            false
        ),
        vec![]
    );
    // An unknown key is a parse error, not ignored.
    let err = toml::from_str::<PosSection>("vendor = \"square\"\nlocations = [\"L1\"]").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}
