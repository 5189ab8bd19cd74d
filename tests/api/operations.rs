//! Operations on the console (issue 9, items 2, 4 and 5): the reconciliation lists with the fix
//! that resolves each entry, rate-limit visibility (budget per lane, backlog, drain ETA) on the
//! API, the console page and `/metrics`, and the cache and 429 metrics.

use callside::sandbox::hubspot::InjectedFailure;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::console::{ANA_PASSWORD, BO_PASSWORD, Browser, DEAD, PORTAL, SYNCED, seed_call, seeded_day, tenants};
use crate::helpers::*;

async fn api(app: &TestApp, path: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", app.addr));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn entries_for<'a>(list: &'a Value, call_id: &str) -> Vec<&'a Value> {
    list.as_array().unwrap().iter().filter(|e| e["call_id"] == call_id).collect()
}

/// The number after a metric's label set in the exposition text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test]
async fn reconciliation_lists_each_unsettled_item_with_the_fix_that_resolves_it() {
    let app = seeded_day().await;
    app.hubspot.set_down(false);
    // An ambiguous caller on a household line: a new contact with a review task.
    let maria =
        app.hubspot.insert_contact([("firstname", "María"), ("lastname", "López"), ("phone", "(305) 555-0142")]);
    let mario = app.hubspot.insert_contact([("firstname", "Mario"), ("lastname", "López"), ("phone", "305.555.0142")]);
    let mut c = app.connect("household", "+13055550142").await;
    c.initialize().await;
    c.tool("end_call", json!({"summary": "Booked a cleaning.", "caller_name": "Lucía López"})).await;
    assert_eq!(app.wait_for_sync("household").await, "synced");
    let lucia = app.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Lucía")).unwrap().id;
    // A rep's edit kept over the AI's value.
    let at = app.core.clock.now();
    app.core
        .store
        .record_conflict("demo", SYNCED, 1, &maria, "callside_urgency", "high", "low", at, Some("rep 7"), at)
        .await
        .unwrap();

    let (status, r) = api(&app, "/v1/reconciliation", Some(DEMO_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    // The dead-lettered call: no CRM record, its step in the dead letters, both fixed by a replay.
    let dead = entries_for(&r["dead_letters"], DEAD);
    assert!(!dead.is_empty(), "{r}");
    let no_record = entries_for(&r["no_crm_record"], DEAD);
    assert_eq!(no_record.len(), 1, "{r}");
    for e in dead.iter().chain(&no_record) {
        assert_eq!(e["fix"]["action"], "replay", "{e}");
        assert_eq!(e["fix"]["api"], format!("/v1/calls/{DEAD}/replay"));
    }
    assert!(entries_for(&r["no_crm_record"], SYNCED).is_empty(), "a synced call with records is settled");
    // The ambiguous match: the new contact and both candidates, merged in the CRM.
    let dup = entries_for(&r["possible_duplicates"], "household");
    assert_eq!(dup.len(), 1, "{r}");
    let ids: Vec<&str> = dup[0]["records"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], lucia);
    assert!(ids.contains(&maria.as_str()) && ids.contains(&mario.as_str()), "{ids:?}");
    assert_eq!(dup[0]["fix"]["action"], "in_crm");
    assert_eq!(dup[0]["fix"]["link"], format!("https://app.hubspot.com/contacts/{PORTAL}/record/0-1/{lucia}"));
    // The conflict, with a link to the record.
    let conflict = entries_for(&r["conflicts"], SYNCED);
    assert_eq!(conflict.len(), 1, "{r}");
    assert!(conflict[0]["detail"].as_str().unwrap().contains("callside_urgency"));
    assert_eq!(conflict[0]["fix"]["link"], format!("https://app.hubspot.com/contacts/{PORTAL}/record/0-1/{maria}"));
    assert_eq!(r["parked"], json!([]));

    // The operator's page lists the same entries with their buttons; another agency sees nothing.
    let mut ana = Browser::new(&app);
    ana.login("ana", ANA_PASSWORD).await;
    let page = ana.get("/console/t/demo/operations").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("data-call-id=\"{DEAD}\" data-fix=\"replay\"")), "{}", page.body);
    assert!(page.body.contains(&format!("/console/t/demo/calls/{DEAD}/replay")), "{}", page.body);
    let mut bo = Browser::new(&app);
    bo.login("bo", BO_PASSWORD).await;
    assert_eq!(bo.get("/console/t/demo/operations").await.status, StatusCode::NOT_FOUND);
    assert_eq!(bo.get("/v1/reconciliation?tenant=demo").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api(&app, "/v1/reconciliation", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api(&app, "/v1/reconciliation?tenant=demo", Some(OTHER_KEY)).await.0, StatusCode::NOT_FOUND);

    // Applying the listed fix settles the entry: it leaves both lists.
    let r2 = reqwest::Client::new()
        .post(format!("http://{}{}", app.addr, dead[0]["fix"]["api"].as_str().unwrap()))
        .bearer_auth(DEMO_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), StatusCode::ACCEPTED);
    assert_eq!(app.wait_for_sync(DEAD).await, "synced");
    let (_, after) = api(&app, "/v1/reconciliation", Some(DEMO_KEY)).await;
    assert!(entries_for(&after["dead_letters"], DEAD).is_empty(), "{after}");
    assert!(entries_for(&after["no_crm_record"], DEAD).is_empty(), "{after}");
    app.shutdown().await;
}

#[tokio::test]
async fn rate_limits_show_each_lanes_budget_the_backlog_and_its_drain_eta_on_the_api_console_and_metrics() {
    let hash = callside::console::auth::hash_password;
    let server = server_file(&format!(
        "[writeback]\nlive_reserve_percent = 30\n\
         [[console.operators]]\nusername = \"ana\"\npassword_argon2 = \"{}\"\ntenants = [\"demo\"]\n",
        hash(ANA_PASSWORD)
    ));
    let mut t = tenants();
    t[0].crm.requests_per_10s = Some(10);
    let app = spawn_app_with(server, t).await;
    let mut waits = app.core.budgets.waits();
    for i in 0..8 {
        seed_call(&app, &format!("backlog-{i}"), &format!("+1415555{:04}", 4300 + i), "2026-11-23T12:00:00Z", "booked")
            .await;
    }
    // The write-back lane (7 of 10 per 10 s) runs dry: the rest waits for the clock.
    tokio::time::timeout(std::time::Duration::from_secs(20), waits.changed()).await.expect("the lane ran out").unwrap();
    let pending = app.core.store.pending_step_count().await.unwrap();
    assert!(pending > 0);

    let (status, body) = api(&app, "/v1/rate-limits", Some(DEMO_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let accounts = body["accounts"].as_array().unwrap();
    let crm = accounts.iter().find(|a| a["role"] == "crm").unwrap();
    assert_eq!(crm["vendor"], "hubspot");
    assert_eq!(crm["metered"], true);
    assert_eq!(crm["limit_per_10s"], 10);
    assert_eq!(crm["sent_writeback"], 7, "{crm}");
    assert_eq!(crm["lane_per_sec"], 0.7);
    assert!(crm["lane_remaining"].as_f64().unwrap() < 1.0, "{crm}");
    assert_eq!(crm["backlog"], pending);
    // The seeded calls ended at 12:00; the clock reads 13:00.
    assert_eq!(crm["oldest_age_secs"], 3600);
    let eta = crm["drain_eta_secs"].as_f64().unwrap();
    assert!((eta - pending as f64 / 0.7).abs() < 1e-6, "ETA = backlog / lane rate: {crm}");
    let calendar = accounts.iter().find(|a| a["role"] == "calendar").unwrap();
    assert_eq!(calendar["metered"], false, "the sandbox calendar is unmetered");
    assert_eq!(calendar["drain_eta_secs"], Value::Null);

    // The same figures on /metrics.
    let metrics = app.get("/metrics").await.1;
    let labels = "{vendor=\"hubspot\",account=\"demo\",lane=\"writeback\"}";
    let m_eta = metric(&metrics, &format!("callside_writeback_drain_eta_seconds{labels}")).expect("ETA exported");
    assert!((m_eta - eta).abs() < 1e-6, "{metrics}");
    assert!(metric(&metrics, &format!("callside_rate_budget_remaining{labels}")).unwrap() < 1.0);
    assert_eq!(metric(&metrics, "callside_writeback_backlog_age_seconds"), Some(3600.0), "{metrics}");

    // And on the console.
    let mut ana = Browser::new(&app);
    ana.login("ana", ANA_PASSWORD).await;
    let page = ana.get("/console/t/demo/operations").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(&format!("<span class=\"backlog\">{pending}</span>")), "{}", page.body);
    assert!(page.body.contains("drains in <span class=\"eta\">"), "{}", page.body);

    // A window later the lane has sent its next share and the backlog is smaller.
    waits.borrow_and_update();
    app.clock.advance(jiff::SignedDuration::from_secs(10));
    tokio::time::timeout(std::time::Duration::from_secs(20), waits.changed()).await.expect("the lane ran out").unwrap();
    let (_, later) = api(&app, "/v1/rate-limits", Some(DEMO_KEY)).await;
    let crm = later["accounts"].as_array().unwrap().iter().find(|a| a["role"] == "crm").unwrap().clone();
    assert_eq!(crm["sent_writeback"], 14, "{crm}");
    assert!(crm["backlog"].as_i64().unwrap() < pending, "{crm}");
    assert!(crm["drain_eta_secs"].as_f64().unwrap() < eta);
    // Not shut down gracefully: the worker waits on the manual clock for its next token, and the
    // runtime's end drops it (draining the backlog is `writeback_durability`'s subject).
    drop(app);
}

#[tokio::test]
async fn metrics_count_context_cache_hits_and_misses_and_429s_per_vendor() {
    let app = spawn_app().await;
    // Ring time reads the CRM (a miss); the call's own questions use that prefetch.
    let mut c = app.connect("cache-1", "+14155550134").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched");
    let metrics = app.get("/metrics").await.1;
    assert_eq!(metric(&metrics, "callside_context_cache_lookups_total{outcome=\"miss\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "callside_context_cache_lookups_total{outcome=\"hit\"}"), None, "{metrics}");
    // The same caller again within the cache's TTL: answered from the cache (a hit).
    let mut again = app.connect("cache-1b", "+14155550134").await;
    again.initialize().await;
    let ctx = again.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched");
    let metrics = app.get("/metrics").await.1;
    assert_eq!(metric(&metrics, "callside_context_cache_lookups_total{outcome=\"miss\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "callside_context_cache_lookups_total{outcome=\"hit\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "callside_vendor_rate_limited_total{vendor=\"hubspot\"}"), None, "no 429 yet");

    // HubSpot answers the next request with a 429: counted once, for HubSpot.
    app.hubspot.fail_next_with(InjectedFailure::status(429).with_policy("TEN_SECONDLY_ROLLING"), 1);
    let mut c = app.connect("cache-2", "+13125550177").await;
    c.initialize().await;
    c.tool("get_caller_context", json!({})).await;
    let metrics = app.get("/metrics").await.1;
    assert_eq!(metric(&metrics, "callside_vendor_rate_limited_total{vendor=\"hubspot\"}"), Some(1.0), "{metrics}");
    let (_, limits) = api(&app, "/v1/rate-limits", Some(DEMO_KEY)).await;
    assert_eq!(limits["accounts"][0]["throttled"], 1, "{limits}");
    app.shutdown().await;
}

/// Posts `{"keep": …}` (or a raw body) to a conflict's resolve endpoint with a tenant key.
async fn resolve(app: &TestApp, id: &str, body: &str, key: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/v1/conflicts/{id}/resolve", app.addr))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_conflict_is_settled_from_the_console_or_the_api_and_a_second_edit_by_a_person_is_never_overwritten() {
    use callside::sandbox::hubspot::ObjectType;
    let app = seeded_day().await;
    app.hubspot.set_down(false);
    let urgency = |id: &str| {
        app.hubspot.contacts().into_iter().find(|c| c.id == id).unwrap().prop("callside_urgency").map(str::to_owned)
    };
    let maria = app.hubspot.insert_contact([("firstname", "María"), ("phone", "(305) 555-0142")]);
    let mario = app.hubspot.insert_contact([("firstname", "Mario"), ("phone", "(305) 555-0143")]);
    let at = app.core.clock.now();
    for (step, id) in [(1, &maria), (2, &mario)] {
        // A rep set "low" after the AI's read; the AI's "high" was kept back as a conflict.
        app.hubspot.rep_edit(ObjectType::Contacts, id, "callside_urgency", "low", "7");
        let store = &app.core.store;
        store
            .record_conflict("demo", SYNCED, step, id, "callside_urgency", "high", "low", at, Some("7"), at)
            .await
            .unwrap();
    }
    let conflicts = app.core.store.conflicts("demo", Some(SYNCED)).await.unwrap();
    let id_of = |object: &str| conflicts.iter().find(|c| c.object_id == object).unwrap().id.to_string();
    let (maria_c, mario_c) = (id_of(&maria), id_of(&mario));

    // The operations page offers both choices with both values; the operator writes the AI's.
    let mut ana = Browser::new(&app);
    let csrf = ana.login("ana", ANA_PASSWORD).await;
    let page = ana.get("/console/t/demo/operations").await;
    let form = format!("/console/t/demo/conflicts/{maria_c}/resolve");
    assert!(page.body.contains(&form), "{}", page.body);
    assert!(page.body.contains("class=\"crm-value\">low<") && page.body.contains("class=\"ai-value\">high<"));
    // A stale form (wrong CSRF token) changes nothing.
    assert_eq!(ana.post_form(&form, &[("csrf", "forged"), ("keep", "ai")]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(urgency(&maria).as_deref(), Some("low"));
    let done = ana.post_form(&form, &[("csrf", &csrf), ("keep", "ai")]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some("/console/t/demo/operations?done=applied_ai#conflicts"));
    assert_eq!(urgency(&maria).as_deref(), Some("high"), "the AI's value is in the CRM");
    let settled = app.core.store.conflict("demo", maria_c.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(settled.status, "applied_ai");
    let audit = app.core.store.audit_rows_for_call("demo", SYNCED).await.unwrap();
    let entry = audit.iter().find(|a| a.action == "conflict.resolved").expect("audited");
    assert_eq!(entry.detail["by"], "operator:ana");
    assert_eq!(entry.detail["kept"], "ai");
    // Settled once: a second click is refused and writes nothing.
    let again = ana.post_form(&form, &[("csrf", &csrf), ("keep", "crm")]).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.body.contains("already settled"), "{}", again.body);
    // Another agency's operator cannot settle it.
    let mut bo = Browser::new(&app);
    let bo_csrf = bo.login("bo", BO_PASSWORD).await;
    let other = bo
        .post_form(&format!("/console/t/demo/conflicts/{mario_c}/resolve"), &[("csrf", &bo_csrf), ("keep", "ai")])
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);

    // A person edits the field again: writing the AI's value is refused, the new edit stands.
    app.hubspot.rep_edit(ObjectType::Contacts, &mario, "callside_urgency", "medium", "8");
    let requests = app.hubspot.total_requests();
    let (status, body) = resolve(&app, &mario_c, r#"{"keep": "ai"}"#, Some(DEMO_KEY)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("changed again"), "{body}");
    assert_eq!(urgency(&mario).as_deref(), Some("medium"));
    assert_eq!(app.hubspot.total_requests(), requests + 1, "one history read, no write");
    // Bad input: a clear error, nothing settled.
    for (id, body, key, want) in [
        (mario_c.as_str(), r#"{"keep": "both"}"#, Some(DEMO_KEY), StatusCode::BAD_REQUEST),
        (mario_c.as_str(), "keep=ai", Some(DEMO_KEY), StatusCode::BAD_REQUEST),
        (mario_c.as_str(), r#"{"keep": "crm"}"#, Some(OTHER_KEY), StatusCode::NOT_FOUND),
        (mario_c.as_str(), r#"{"keep": "crm"}"#, None, StatusCode::UNAUTHORIZED),
        ("99999999", r#"{"keep": "crm"}"#, Some(DEMO_KEY), StatusCode::NOT_FOUND),
        ("not-a-number", r#"{"keep": "crm"}"#, Some(DEMO_KEY), StatusCode::NOT_FOUND),
    ] {
        let (status, body) = resolve(&app, id, body, key).await;
        assert_eq!(status, want, "{id} {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(app.core.store.conflict("demo", mario_c.parse().unwrap()).await.unwrap().unwrap().status, "open");
    // Keeping the person's value writes nothing and takes the entry off the list.
    let requests = app.hubspot.total_requests();
    let (status, body) = resolve(&app, &mario_c, r#"{"keep": "crm"}"#, Some(DEMO_KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "kept_crm");
    assert_eq!(app.hubspot.total_requests(), requests, "nothing sent to the CRM");
    assert_eq!(urgency(&mario).as_deref(), Some("medium"));
    let (_, r) = api(&app, "/v1/reconciliation", Some(DEMO_KEY)).await;
    assert_eq!(r["conflicts"], json!([]), "{r}");
    app.shutdown().await;
}
