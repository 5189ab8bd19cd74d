//! Account flags and past no-shows in the caller context (issue 6, item 6): the CRM properties a
//! business names in `[account_flags]`, read with the contact in the same request.

use std::path::{Path, PathBuf};

use callside::config::{AccountFlagsSection, Config, Overrides};
use serde_json::json;

use crate::helpers::{demo_tenant, server_file, spawn_app_with};

fn mapping() -> AccountFlagsSection {
    toml::from_str(
        "vip = \"vip_tier\"\nvip_values = [\"gold\", \"platinum\"]\noverdue_balance = \"overdue_balance\"\n\
         do_not_call = \"do_not_call\"\npast_no_shows = \"no_show_count\"\n",
    )
    .unwrap()
}

#[tokio::test]
async fn mapped_hubspot_properties_become_flags_and_no_shows_read_with_the_contact() {
    let mut t = demo_tenant();
    t.account_flags = mapping();
    let app = spawn_app_with(server_file(""), vec![t]).await;
    app.hubspot.insert_contact([
        ("firstname", "Vera"),
        ("lastname", "Ortiz"),
        ("phone", "(415) 555-2020"),
        ("vip_tier", "Gold"),
        ("overdue_balance", "$120.50"),
        ("do_not_call", "true"),
        ("no_show_count", "3"),
    ]);
    app.hubspot.insert_contact([
        ("firstname", "Walt"),
        ("lastname", "Ng"),
        ("phone", "(415) 555-3030"),
        ("vip_tier", "bronze"),
        ("overdue_balance", "0.00"),
        ("do_not_call", "false"),
    ]);
    let mut c = app.connect("flags-1", "+14155552020").await;
    c.initialize().await;
    // The ring-time read is done once its context is pushed; count requests from there.
    c.next_notification("notifications/callside/context_ready").await;
    let before = app.hubspot.total_requests();
    let vera = c.tool("get_caller_context", json!({})).await;
    let s = &vera["structuredContent"];
    assert_eq!(s["status"], "matched", "{vera}");
    assert_eq!(s["account_flags"], json!({"vip": true, "overdue_balance": true, "do_not_call": true}));
    assert_eq!(s["past_no_shows"], 3);
    assert_eq!(s["account_notes"].as_array().unwrap().len(), 4, "{s}");
    // Served by the ring-time read: the flags cost no request of their own.
    assert_eq!(app.hubspot.total_requests(), before);
    let text = vera["content"][0]["text"].as_str().unwrap();
    assert!(!text.contains("overdue"), "notes are for the AI, not read out: {text}");

    let mut d = app.connect("flags-2", "+14155553030").await;
    d.initialize().await;
    let walt = d.tool("get_caller_context", json!({})).await;
    let s = &walt["structuredContent"];
    assert_eq!(s["account_flags"], json!({"vip": false, "overdue_balance": false, "do_not_call": false}));
    assert_eq!(s["past_no_shows"], serde_json::Value::Null, "no value: unknown, not zero");
    assert_eq!(s["account_notes"], json!([]));
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_mapping_the_flags_are_unknown() {
    let app = spawn_app_with(server_file(""), vec![demo_tenant()]).await;
    let mut c = app.connect("flags-3", "+14155550134").await;
    c.initialize().await;
    let ana = c.tool("get_caller_context", json!({})).await;
    let s = &ana["structuredContent"];
    assert_eq!(s["status"], "matched");
    assert_eq!(s["account_flags"], json!({"vip": null, "overdue_balance": null, "do_not_call": null}));
    assert_eq!(s["past_no_shows"], serde_json::Value::Null);
    app.shutdown().await;
}

#[test]
fn a_bad_mapping_is_refused_naming_the_key() {
    let issues = |crm: &str, flags: &str| {
        let mut t = demo_tenant();
        t.crm.vendor = crm.into();
        t.account_flags = toml::from_str(flags).unwrap();
        match Config::from_parts(
            Path::new("callside.toml"),
            server_file(""),
            vec![(PathBuf::from("tenants/demo.toml"), t)],
            &Overrides::default(),
            PathBuf::from("data"),
        ) {
            Ok(_) => vec![],
            Err(e) => e.issues.into_iter().map(|i| (i.key, i.reason)).collect::<Vec<_>>(),
        }
    };
    let bad = issues("hubspot", "vip = \"vip tier; drop\"\npast_no_shows = \"\"");
    assert!(bad.iter().any(|(k, _)| k == "account_flags.vip"), "{bad:?}");
    assert!(bad.iter().any(|(k, _)| k == "account_flags.past_no_shows"), "{bad:?}");
    let orphan = issues("hubspot", "vip_values = [\"gold\"]");
    assert!(orphan.iter().any(|(k, r)| k == "account_flags.vip_values" && r.contains("needs")), "{orphan:?}");
    let salesforce = issues("salesforce", "vip = \"VIP__c\"");
    assert!(salesforce.iter().any(|(k, r)| k == "account_flags" && r.contains("HubSpot")), "{salesforce:?}");
    assert_eq!(issues("hubspot", "vip = \"vip_tier\"\ndo_not_call = \"do_not_call\""), vec![]);
    let err = toml::from_str::<AccountFlagsSection>("vipp = \"x\"").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}
