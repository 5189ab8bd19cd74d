//! Caller identity through the whole service (issue 6): seed 003's diagnostic, ambiguous callers
//! flagged inside the CRM, the identity index (zero vendor searches for a known caller) and its
//! incremental pull. Everything over the per-call WebSocket against the HubSpot emulator.

use std::sync::Arc;

use callside::clock::Clock as _;
use callside::matching::sync;
use callside::sandbox::hubspot::{ObjectType, RouteKind};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, spawn_app};

fn demo(app: &TestApp) -> Arc<callside::tenant::Tenant> {
    app.core.tenants.by_id("demo").unwrap().clone()
}

/// Dana is a customer with phone 555-1234 (stored as the rep typed it) and an email.
fn seed_dana(app: &TestApp) -> String {
    app.hubspot.insert_contact([
        ("firstname", "Dana"),
        ("lastname", "Reyes"),
        ("email", "dana.reyes@example.com"),
        ("phone", "(415) 555-1234"),
        ("zip", "94110"),
    ])
}

#[tokio::test]
async fn seed_003_a_known_email_from_a_new_number_is_the_same_contact_with_the_number_added() {
    let app = spawn_app().await;
    let dana = seed_dana(&app);
    let before = app.hubspot.contacts().len();
    // Dana calls from 555-5678, a number the CRM has never seen.
    let mut c = app.connect("seed003", "+1 415 555 5678").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "new", "{ctx}");
    // She gives her email: the lookup is redone with it.
    let ctx = c.tool("get_caller_context", json!({"email": " Dana.Reyes@Example.com "})).await;
    let sc = &ctx["structuredContent"];
    assert_eq!(sc["status"], "matched", "{ctx}");
    assert_eq!(sc["contact"]["id"], dana.as_str());
    assert_eq!(sc["new_number"], "+14155555678");
    assert!(sc["greeting_hint"].as_str().unwrap().contains("Dana"), "{ctx}");
    let end = c.tool("end_call", json!({"summary": "Asked about opening hours."})).await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync("seed003").await, "synced");

    assert_eq!(app.hubspot.contacts().len(), before, "no duplicate contact");
    let record = app.hubspot.contact(&dana).unwrap();
    assert_eq!(record.prop("phone"), Some("(415) 555-1234"), "the existing number is untouched");
    assert_eq!(record.prop("mobilephone"), Some("+14155555678"), "the new number is added");
    assert_eq!(app.hubspot.calls_for_contact(&dana).len(), 1, "the call is logged on Dana");
    // Next time she calls from the new number she is known at once, without a search.
    app.hubspot.reset_request_log();
    let mut again = app.connect("seed003-again", "+14155555678").await;
    again.initialize().await;
    let ctx = again.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "{ctx}");
    assert_eq!(app.hubspot.request_count(RouteKind::Search), 0, "matched through the identity index");
    app.shutdown().await;
}

#[tokio::test]
async fn seed_003_the_email_given_only_at_end_call_still_finds_the_contact() {
    let app = spawn_app().await;
    let dana = seed_dana(&app);
    let before = app.hubspot.contacts().len();
    let mut c = app.connect("seed003-end", "+14155555678").await;
    c.initialize().await;
    c.tool(
        "end_call",
        json!({"summary": "Wants a quote.", "caller_name": "Dana Reyes", "caller_email": "DANA.REYES@example.com"}),
    )
    .await;
    assert_eq!(app.wait_for_sync("seed003-end").await, "synced");
    assert_eq!(app.hubspot.contacts().len(), before, "no duplicate contact");
    assert_eq!(app.hubspot.contact(&dana).unwrap().prop("mobilephone"), Some("+14155555678"));
    assert_eq!(app.hubspot.calls_for_contact(&dana).len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn an_ambiguous_caller_gets_a_new_record_flagged_for_review_inside_the_crm() {
    let app = spawn_app().await;
    let owner = app.hubspot.insert_owner("Rita", "Rep", "rita@clinic.example");
    // A household line: María and Mario López share the home number.
    let maria = app.hubspot.insert_contact([
        ("firstname", "María"),
        ("lastname", "López"),
        ("phone", "(305) 555-0142"),
        ("hubspot_owner_id", owner.as_str()),
    ]);
    let mario = app.hubspot.insert_contact([("firstname", "Mario"), ("lastname", "López"), ("phone", "305.555.0142")]);
    let before = app.hubspot.contacts().len();
    let mut c = app.connect("household", "+13055550142").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "ambiguous", "{ctx}");
    assert_eq!(ctx["structuredContent"]["candidates"], 2);
    assert_eq!(ctx["structuredContent"]["contact"], serde_json::Value::Null, "no name is guessed");
    // Their daughter is calling.
    let ctx = c.tool("get_caller_context", json!({"name": "Lucía López"})).await;
    assert_eq!(ctx["structuredContent"]["status"], "ambiguous", "{ctx}");
    c.tool("end_call", json!({"summary": "Booked a cleaning.", "caller_name": "Lucía López"})).await;
    assert_eq!(app.wait_for_sync("household").await, "synced");

    let contacts = app.hubspot.contacts();
    assert_eq!(contacts.len(), before + 1, "a new record, not a merge into María or Mario");
    let lucia = contacts.iter().find(|c| c.prop("firstname") == Some("Lucía")).expect("the new record");
    assert_eq!(lucia.prop("lastname"), Some("López"), "accents kept for writing");
    let tasks = app.hubspot.associated_with_contact(&lucia.id, ObjectType::Tasks);
    assert_eq!(tasks.len(), 1, "one review task on the new record");
    let task = &tasks[0];
    assert!(task.prop("hs_task_subject").unwrap().contains("possible duplicate"), "{:?}", task.properties);
    let body = task.prop("hs_task_body").unwrap();
    assert!(body.contains(&maria) && body.contains(&mario), "both candidates kept: {body}");
    assert_eq!(task.prop("hubspot_owner_id"), Some(owner.as_str()), "for the candidates' owner");
    assert_eq!(task.prop("hs_task_priority"), Some("HIGH"));
    // Nothing was written onto the candidates.
    assert!(app.hubspot.calls_for_contact(&maria).is_empty() && app.hubspot.calls_for_contact(&mario).is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn the_name_on_a_shared_line_picks_the_person_and_a_conflicting_email_does_not() {
    let app = spawn_app().await;
    let maria =
        app.hubspot.insert_contact([("firstname", "María"), ("lastname", "López"), ("phone", "(305) 555-0142")]);
    app.hubspot.insert_contact([("firstname", "Mario"), ("lastname", "López"), ("phone", "305.555.0142")]);
    let mut c = app.connect("pick", "+13055550142").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({"name": "Maria Lopez"})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "{ctx}");
    assert_eq!(ctx["structuredContent"]["contact"]["id"], maria.as_str());
    // The number is Ana's, the email someone else's: never guess.
    let mut c = app.connect("conflict", "+14155550134").await;
    c.initialize().await;
    assert_eq!(c.tool("get_caller_context", json!({})).await["structuredContent"]["status"], "matched");
    app.hubspot.insert_contact([("firstname", "Bea"), ("lastname", "Ruiz"), ("email", "bea@example.com")]);
    let ctx = c.tool("get_caller_context", json!({"email": "bea@example.com"})).await;
    assert_eq!(ctx["structuredContent"]["status"], "ambiguous", "{ctx}");
    // A malformed email is refused with a sentence, and the call goes on as it was.
    let bad = c.tool("get_caller_context", json!({"email": "bea at example"})).await;
    assert_eq!(bad["isError"], true, "{bad}");
    assert_eq!(bad["structuredContent"]["argument"], "email");
    let bad = c.tool("get_caller_context", json!({"email": 42})).await;
    assert_eq!(bad["isError"], true, "{bad}");
    assert_eq!(c.tool("get_caller_context", json!({})).await["structuredContent"]["status"], "ambiguous");
    app.shutdown().await;
}

#[tokio::test]
async fn a_known_caller_is_matched_from_the_index_with_zero_searches_and_one_fetch() {
    let app = spawn_app().await;
    let tenant = demo(&app);
    // The index learns the CRM (an incremental pull; the demo CRM has Ana).
    let report = sync::pull_once(&app.core.store, &tenant, app.clock.now()).await.unwrap();
    assert!(report.records >= 1 && report.watermark.is_some(), "{report:?}");
    app.hubspot.reset_request_log();

    // Ana rings (the carrier sends E.164; the CRM has "(415) 555-0134").
    let mut c = app.connect("idx-1", "+14155550134").await;
    c.initialize().await;
    let first = c.tool("get_caller_context", json!({})).await;
    assert_eq!(first["structuredContent"]["status"], "matched", "{first}");
    assert_eq!(first["structuredContent"]["open_deals"].as_array().unwrap().len(), 1);
    assert_eq!(app.hubspot.request_count(RouteKind::Search), 0, "no vendor search for a known caller");
    assert_eq!(app.hubspot.request_count(RouteKind::Read), 1, "one fetch: the contact read once, by id");
    let after_first = app.hubspot.total_requests();
    // The same call asks again: served by the prefetch.
    let second = c.tool("get_caller_context", json!({})).await;
    assert_eq!(second["structuredContent"], first["structuredContent"]);
    // Another call from the same caller within the TTL: the cache, no request at all.
    let mut d = app.connect("idx-2", "(415) 555-0134").await;
    d.initialize().await;
    let third = d.tool("get_caller_context", json!({})).await;
    assert_eq!(third["structuredContent"]["contact"], first["structuredContent"]["contact"]);
    assert_eq!(app.hubspot.total_requests(), after_first, "no vendor request within the TTL");

    // An unknown number: the index misses, so the vendor is searched once.
    let mut e = app.connect("idx-3", "+16465550111").await;
    e.initialize().await;
    assert_eq!(e.tool("get_caller_context", json!({})).await["structuredContent"]["status"], "new");
    assert_eq!(app.hubspot.request_count(RouteKind::Search), 1, "vendor search is the fallback on a miss");
    app.shutdown().await;
}

#[tokio::test]
async fn the_incremental_pull_reads_only_changes_and_runs_on_the_clock() {
    let app = spawn_app().await;
    let tenant = demo(&app);
    let stop = CancellationToken::new();
    let interval = jiff::SignedDuration::from_mins(5);
    let (task, mut rounds) = sync::spawn(
        app.core.store.clone(),
        app.core.tenants.clone(),
        Arc::new(app.clock.clone()),
        interval,
        stop.clone(),
    );
    rounds.changed().await.unwrap();
    let size = app.core.store.identity_index_size("demo").await.unwrap();
    assert!(size >= 2, "Ana's phone and email are indexed ({size})");
    let first_watermark = app.core.store.identity_watermark("demo", "hubspot").await.unwrap().unwrap();

    // A rep adds a contact; the next round (5 minutes later on the clock) picks it up.
    let zoe = app.hubspot.insert_contact([("firstname", "Zoë"), ("lastname", "Kim"), ("phone", "212 555 0187")]);
    app.hubspot.reset_request_log();
    app.clock.advance(interval);
    rounds.changed().await.unwrap();
    let ids =
        app.core.store.lookup_identity("demo", callside::store::IdentityKind::Phone, "+12125550187").await.unwrap();
    assert_eq!(ids, vec![zoe.clone()]);
    // One page of changes, and one search for merges (the removals: archived contacts are a list
    // request, not a search).
    assert_eq!(app.hubspot.request_count(RouteKind::Search), 2, "one page of changes, one of merges");
    let second_watermark = app.core.store.identity_watermark("demo", "hubspot").await.unwrap().unwrap();
    assert!(second_watermark >= first_watermark);
    // The connector asks only for changes: a page from the watermark holds Zoë, not all of the CRM.
    let since = jiff::Timestamp::from_millisecond(second_watermark).unwrap();
    let page = tenant.crm.contacts_changed_since(Some(since), None).await.unwrap();
    assert!(page.contacts.iter().any(|c| c.id == zoe), "{page:?}");
    assert!(page.contacts.len() < app.hubspot.contacts().len(), "{page:?}");
    stop.cancel();
    task.await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn the_pull_pages_through_more_contacts_than_one_page() {
    let app = spawn_app().await;
    let tenant = demo(&app);
    for i in 0..230 {
        app.hubspot.insert_contact([
            ("firstname", format!("Pat{i}")),
            ("lastname", "Page".to_string()),
            ("phone", format!("+1 718 555 {:04}", 1000 + i)),
        ]);
    }
    app.hubspot.reset_request_log();
    let report = sync::pull_once(&app.core.store, &tenant, app.clock.now()).await.unwrap();
    assert_eq!(report.records, app.hubspot.contacts().len(), "{report:?}");
    assert_eq!(report.pages, 3, "100 per page");
    assert_eq!(app.hubspot.request_count(RouteKind::Search), 3);
    let ids =
        app.core.store.lookup_identity("demo", callside::store::IdentityKind::Phone, "+17185551229").await.unwrap();
    assert_eq!(ids.len(), 1);
    app.shutdown().await;
}

/// A removals window the vendor's log no longer covers (HubSpot keeps archived contacts 90
/// days): the pull re-lists every contact and drops the CRM rows the listing did not refresh —
/// a contact deleted meanwhile leaves the index, the others stay.
#[tokio::test]
async fn a_removals_window_the_vendor_no_longer_covers_relists_and_prunes_what_is_gone() {
    let app = spawn_app().await;
    let tenant = demo(&app);
    let zoe = app.hubspot.insert_contact([("firstname", "Zoë"), ("lastname", "Kim"), ("phone", "212 555 0187")]);
    sync::pull_once(&app.core.store, &tenant, app.clock.now()).await.unwrap();
    let phone = |n: &'static str| {
        let store = app.core.store.clone();
        async move { store.lookup_identity("demo", callside::store::IdentityKind::Phone, n).await.unwrap() }
    };
    assert_eq!(phone("+12125550187").await, vec![zoe.clone()]);

    assert!(app.hubspot.archive_directly(ObjectType::Contacts, &zoe));
    let long_ago = app.clock.now() - jiff::SignedDuration::from_hours(100 * 24);
    let now_ms = app.clock.now().as_millisecond();
    app.core
        .store
        .set_identity_watermark("demo", "hubspot:removed", Some(long_ago.as_millisecond()), 0, now_ms)
        .await
        .unwrap();
    app.clock.advance(jiff::SignedDuration::from_mins(1));
    let report = sync::pull_once(&app.core.store, &tenant, app.clock.now()).await.unwrap();
    assert_eq!(report.removed, 1, "{report:?}");
    assert!(report.changed.iter().any(|c| c.id == zoe && c.numbers == ["+12125550187"]), "{report:?}");
    assert!(phone("+12125550187").await.is_empty(), "Zoë left the index");
    assert_eq!(phone("+14155550134").await.len(), 1, "Ana, listed again, stays");
    let window = app.core.store.identity_watermark("demo", "hubspot:removed").await.unwrap();
    assert_eq!(window, Some(app.clock.now().as_millisecond()), "removals are asked from the resync on");
    app.shutdown().await;
}

#[test]
fn a_bad_identity_section_is_refused_naming_the_key() {
    for (bad, key) in [
        ("[identity]\npull_interval_secs = -5\n", "pull_interval_secs"),
        ("[identity]\npull_interval_secs = \"often\"\n", "pull_interval_secs"),
        ("[identity]\npull_every = 3\n", "pull_every"),
    ] {
        let e = toml::from_str::<callside::config::ServerFile>(bad).unwrap_err();
        assert!(e.to_string().contains(key), "{bad:?}: {e}");
    }
    let ok: callside::config::ServerFile = toml::from_str("[identity]\npull_interval_secs = 0\n").unwrap();
    assert_eq!(ok.identity.pull_interval_secs, 0);
    let default: callside::config::ServerFile = toml::from_str("").unwrap();
    assert_eq!(default.identity.pull_interval_secs, 300);
}
