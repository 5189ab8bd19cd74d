//! HubSpot webhooks (issue 12): a rep's edit in the CRM reaches a live call; bad deliveries are
//! refused with their status, counted, and change nothing.

use callside::sandbox::hubspot::{ObjectType, SANDBOX_APP_ID};
use callside::sandbox::hubspot_webhooks::sign_v3;
use callside::session::Core;
use serde_json::{Value, json};

use crate::helpers::*;

const PORTAL: u64 = 62_515_001;
const SECRET_ENV: &str = "CALLSIDE_TEST_HUBSPOT_APP_SECRET";
const ANA: &str = "+14155550134";

fn secret() -> String {
    std::env::var(SECRET_ENV).expect(".cargo/config.toml sets the test secret")
}

async fn spawn_with_webhooks() -> TestApp {
    let server = server_file(&format!(
        "[inbound.hubspot]\nclient_secret_env = \"{SECRET_ENV}\"\napp_id = \"{SANDBOX_APP_ID}\"\n"
    ));
    let mut tenant = demo_tenant();
    tenant.crm.portal_id = Some(PORTAL);
    spawn_app_with(server, vec![tenant]).await
}

fn ana_id(app: &TestApp) -> String {
    let ana = app.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Ana")).expect("demo seed");
    ana.prop("hs_object_id").expect("id").to_owned()
}

fn target(app: &TestApp) -> String {
    format!("http://{}/v1/inbound/hubspot", app.addr)
}

fn event(event_id: u64, portal: u64, contact_id: &str, property: &str, value: &str, source: (&str, &str)) -> Value {
    json!({
        "eventId": event_id, "subscriptionId": 7001, "portalId": portal, "appId": 4242001,
        "occurredAt": 1_700_000_000_000i64, "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
        "objectId": contact_id.parse::<u64>().unwrap(), "propertyName": property, "propertyValue": value,
        "changeSource": source.0, "sourceId": source.1,
    })
}

/// POSTs `body` as HubSpot would, with the given timestamp and signature headers.
async fn post_raw(app: &TestApp, body: Vec<u8>, timestamp: Option<String>, signature: Option<String>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(target(app)).header("Content-Type", "application/json").body(body);
    if let Some(t) = timestamp {
        req = req.header("X-HubSpot-Request-Timestamp", t);
    }
    if let Some(s) = signature {
        req = req.header("X-HubSpot-Signature-v3", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// POSTs `body` signed with `secret` at domain time `at_ms`.
async fn post_signed(app: &TestApp, body: &[u8], secret: &str, at_ms: i64) -> (u16, Value, String) {
    let sig = sign_v3(secret, "POST", &target(app), body, at_ms);
    let (status, answer) = post_raw(app, body.to_vec(), Some(at_ms.to_string()), Some(sig.clone())).await;
    (status, answer, sig)
}

fn now_ms(app: &TestApp) -> i64 {
    app.core.clock.now().as_millisecond()
}

fn requests(core: &Core, outcome: &str) -> u64 {
    core.metrics.inbound_request_count("hubspot", outcome)
}

/// A refused delivery: (what, status, outcome counted, body, timestamp header, signature header).
type BadCase = (&'static str, u16, &'static str, Vec<u8>, Option<String>, Option<String>);

#[tokio::test]
async fn a_reps_edit_in_the_crm_reaches_the_live_calls_socket_with_the_fresh_context() {
    let app = spawn_with_webhooks().await;
    let ana = ana_id(&app);
    let mut call = app.connect("call-inbound-1", ANA).await;
    call.initialize().await;
    let before = call.tool("get_caller_context", json!({})).await;
    assert_eq!(before["structuredContent"]["contact"]["first_name"], "Ana");

    // A rep renames her in HubSpot while she is on the line: the emulator's app POSTs the
    // signed webhook to the service, which re-reads her record and pushes it on the socket.
    app.hubspot.rep_edit(ObjectType::Contacts, &ana, "firstname", "Anita", "77");
    let note = call.next_notification("notifications/callside/context_changed").await;
    assert_eq!(note["params"]["call_id"], "call-inbound-1");
    assert_eq!(note["params"]["status"], "matched");
    assert_eq!(note["params"]["context"]["contact"]["first_name"], "Anita");
    assert!(note["params"]["greeting_hint"].as_str().unwrap().contains("Anita"));

    // The AI's next read sees the edit too, and so does a cache that held the old record.
    let after = call.tool("get_caller_context", json!({})).await;
    assert_eq!(after["structuredContent"]["contact"]["first_name"], "Anita");
    // The push above comes from inside the handler, before it counts the request and the
    // event: read the counters once the emulator's delivery is answered.
    let mut stats = app.hubspot.webhook_stats().expect("the app's webhooks are on");
    let stats = stats.wait_for(|s| s.settled == 1).await.expect("delivery task alive").clone();
    assert_eq!((stats.delivered, stats.failed), (1, 0), "{stats:?}");
    assert_eq!(requests(&app.core, "accepted"), 1);
    assert_eq!(app.core.metrics.inbound_event_count("hubspot", "applied"), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn our_own_writes_and_redeliveries_are_acknowledged_without_a_refetch() {
    let app = spawn_with_webhooks().await;
    let ana = ana_id(&app);
    let mut call = app.connect("call-inbound-own", ANA).await;
    call.initialize().await;
    call.tool("get_caller_context", json!({})).await;
    let reads_before = app.hubspot.total_requests();

    // The service's write-back changed the record (changeSource INTEGRATION, our app).
    let own = serde_json::to_vec(&json!([event(
        1,
        PORTAL,
        &ana,
        "callside_intent",
        "booking",
        ("INTEGRATION", SANDBOX_APP_ID)
    )]))
    .unwrap();
    let (status, answer, _) = post_signed(&app, &own, &secret(), now_ms(&app)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["own"], 1);
    assert_eq!(answer["applied"], 0);
    assert_eq!(app.hubspot.total_requests(), reads_before, "our own write is not re-read");
    assert!(app.core.context.is_cached("demo", ANA), "the cache is kept");

    // Another app's write is a change like a person's; its redelivery (same eventId, new
    // attempt, new timestamp and signature) is acknowledged and not applied again.
    let other =
        serde_json::to_vec(&json!([event(2, PORTAL, &ana, "lastname", "López", ("INTEGRATION", "some-other-app"))]))
            .unwrap();
    let (status, answer, _) = post_signed(&app, &other, &secret(), now_ms(&app)).await;
    assert_eq!((status, answer["applied"].clone()), (200, json!(1)), "{answer}");
    let reads_after_first = app.hubspot.total_requests();
    assert!(reads_after_first > reads_before, "a foreign change is re-read");
    app.clock.advance(jiff::SignedDuration::from_secs(30));
    let (status, answer, _) = post_signed(&app, &other, &secret(), now_ms(&app)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["duplicate"].clone(), answer["applied"].clone()), (json!(1), json!(0)));
    assert_eq!(app.hubspot.total_requests(), reads_after_first, "a redelivery is not re-read");
    assert_eq!(app.core.metrics.inbound_event_count("hubspot", "own"), 1);
    assert_eq!(app.core.metrics.inbound_event_count("hubspot", "duplicate"), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn forged_stale_replayed_unknown_and_malformed_webhooks_are_refused_counted_and_change_nothing() {
    let app = spawn_with_webhooks().await;
    let ana = ana_id(&app);
    let mut call = app.connect("call-inbound-bad", ANA).await;
    call.initialize().await;
    call.tool("get_caller_context", json!({})).await;
    let reads_before = app.hubspot.total_requests();
    let good =
        serde_json::to_vec(&json!([event(10, PORTAL, &ana, "firstname", "Mallory", ("CRM_UI", "userId:1"))])).unwrap();
    let now = now_ms(&app);
    let five_min = 5 * 60 * 1000;

    // Each case: (what, status, outcome counted, the request).
    let wrong_secret = sign_v3("not-the-apps-secret-at-all", "POST", &target(&app), &good, now);
    let cases: Vec<BadCase> = vec![
        ("wrong secret", 401, "forged", good.clone(), Some(now.to_string()), Some(wrong_secret)),
        ("no signature", 401, "forged", good.clone(), Some(now.to_string()), None),
        ("garbage signature", 401, "forged", good.clone(), Some(now.to_string()), Some("%%%".into())),
        (
            "signed for another URL",
            401,
            "forged",
            good.clone(),
            Some(now.to_string()),
            Some(sign_v3(&secret(), "POST", "http://evil.example/v1/inbound/hubspot", &good, now)),
        ),
        (
            "older than five minutes",
            401,
            "stale",
            good.clone(),
            Some((now - five_min - 1).to_string()),
            Some(sign_v3(&secret(), "POST", &target(&app), &good, now - five_min - 1)),
        ),
        (
            "five minutes in the future",
            401,
            "stale",
            good.clone(),
            Some((now + five_min + 1).to_string()),
            Some(sign_v3(&secret(), "POST", &target(&app), &good, now + five_min + 1)),
        ),
        ("no timestamp", 401, "stale", good.clone(), None, Some(sign_v3(&secret(), "POST", &target(&app), &good, now))),
        ("timestamp not a number", 401, "stale", good.clone(), Some("yesterday".into()), Some("x".into())),
    ];
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{not json".to_vec()),
        ("an object, not a batch", br#"{"eventId": 1}"#.to_vec()),
        ("an empty batch", b"[]".to_vec()),
        ("eventId of the wrong type", serde_json::to_vec(&json!([{"eventId": "ten", "portalId": PORTAL, "subscriptionType": "contact.propertyChange", "objectId": 1}])).unwrap()),
        ("no objectId", serde_json::to_vec(&json!([{"eventId": 11, "portalId": PORTAL, "subscriptionType": "contact.propertyChange"}])).unwrap()),
    ];
    let unknown_portal =
        serde_json::to_vec(&json!([event(12, 999, &ana, "firstname", "Eve", ("CRM_UI", "userId:1"))])).unwrap();

    let check_untouched = |what: &str| {
        assert_eq!(app.hubspot.total_requests(), reads_before, "{what}: nothing re-read");
        assert!(app.core.context.is_cached("demo", ANA), "{what}: the cached context is kept");
    };
    for (what, status, outcome, body, t, sig) in cases {
        let counted = requests(&app.core, outcome);
        let (got, answer) = post_raw(&app, body, t, sig).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["error"], outcome, "{what}");
        assert_eq!(requests(&app.core, outcome), counted + 1, "{what} is counted");
        check_untouched(what);
    }
    for (what, body) in malformed {
        let counted = requests(&app.core, "malformed");
        let (got, answer, sig) = post_signed(&app, &body, &secret(), now).await;
        assert_eq!(got, 400, "{what}: {answer}");
        assert_eq!(requests(&app.core, "malformed"), counted + 1, "{what} is counted");
        assert!(!app.core.store.inbound_delivery_seen("hubspot", &format!("sig:{sig}")).await.unwrap());
        check_untouched(what);
    }
    let (got, answer, _) = post_signed(&app, &unknown_portal, &secret(), now).await;
    assert_eq!((got, answer["error"].clone()), (404, json!("unknown_portal")), "{answer}");
    check_untouched("unknown portal");
    let (got, _) = post_raw(&app, vec![b' '; 300 * 1024], Some(now.to_string()), Some("x".into())).await;
    assert_eq!(got, 413, "an oversized body is refused before it is read");
    check_untouched("oversized");

    // A genuine delivery is applied once; the same request sent again (a capture replayed
    // within the window) is refused.
    let (got, answer, _) = post_signed(&app, &good, &secret(), now).await;
    assert_eq!((got, answer["applied"].clone()), (200, json!(1)), "{answer}");
    // The event is a hint, never the data: the record is re-read, and as it did not really
    // change in the CRM, nothing is pushed.
    assert_eq!(answer["notified"], 0, "{answer}");
    let reads_after = app.hubspot.total_requests();
    assert!(reads_after > reads_before, "the accepted event made the service re-read the record");
    let sig = sign_v3(&secret(), "POST", &target(&app), &good, now);
    let (got, answer) = post_raw(&app, good.clone(), Some(now.to_string()), Some(sig)).await;
    assert_eq!((got, answer["error"].clone()), (409, json!("replayed")), "{answer}");
    assert_eq!(requests(&app.core, "replayed"), 1);
    assert_eq!(app.hubspot.total_requests(), reads_after, "a replay is not re-read");

    // The socket and the service are still fine.
    let ctx = call.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched");
    app.shutdown().await;
}

#[tokio::test]
async fn without_an_inbound_hubspot_section_the_route_answers_not_configured() {
    let app = spawn_app().await;
    let (status, answer) = post_raw(&app, b"[]".to_vec(), Some("1".into()), Some("x".into())).await;
    assert_eq!((status, answer["error"].clone()), (404, json!("not_configured")));
    assert_eq!(requests(&app.core, "not_configured"), 1);
    app.shutdown().await;
}

#[test]
fn inbound_configuration_errors_are_reported_with_their_keys() {
    use callside::config::{Config, Overrides};
    use std::path::{Path, PathBuf};
    let server =
        server_file("[inbound.hubspot]\nclient_secret_env = \"CALLSIDE_TEST_UNSET_HUBSPOT_SECRET\"\napp_id = \" \"\n");
    let mut a = demo_tenant();
    a.crm.portal_id = Some(PORTAL);
    let mut b = other_tenant();
    b.crm.portal_id = Some(PORTAL);
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server,
        vec![(PathBuf::from("tenants/a.toml"), a), (PathBuf::from("tenants/b.toml"), b)],
        &Overrides::default(),
        PathBuf::from("data"),
    )
    .unwrap_err();
    let keys: Vec<(String, String)> =
        err.issues.iter().map(|i| (i.file.display().to_string(), i.key.clone())).collect();
    for (file, key) in [
        ("callside.toml", "inbound.hubspot.client_secret_env"),
        ("callside.toml", "inbound.hubspot.app_id"),
        ("tenants/b.toml", "crm.portal_id"),
    ] {
        assert!(keys.contains(&(file.to_owned(), key.to_owned())), "missing {file}: {key} in {keys:?}");
    }
    assert_eq!(err.issues.len(), 3, "{err}");
}

/// The demo tenant on `PORTAL` with HubSpot webhooks on and the identity pull slow (five
/// minutes): the app once its first round has indexed the contacts, that round's signal, and
/// Ana's contact id.
async fn spawn_indexed() -> (TestApp, tokio::sync::watch::Receiver<u64>, String) {
    let server = server_file(&format!(
        "[identity]\npull_interval_secs = 300\n[inbound.hubspot]\nclient_secret_env = \"{SECRET_ENV}\"\napp_id = \"{SANDBOX_APP_ID}\"\n"
    ));
    let mut tenant = demo_tenant();
    tenant.crm.portal_id = Some(PORTAL);
    let app = spawn_app_with(server, vec![tenant]).await;
    let mut rounds = app.identity_rounds.clone();
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let ana = ana_id(&app);
    (app, rounds, ana)
}

/// A contact deleted in HubSpot (issue 12): the signed `contact.deletion` event drops every index
/// row of theirs at once — not at the next pull, and with no live call from their number nothing
/// else would read (and so drop) them before the next caller.
#[tokio::test]
async fn a_contact_deletion_webhook_drops_the_contact_from_the_identity_index() {
    use callside::store::IdentityKind;
    let (app, rounds, ana) = spawn_indexed().await;
    let store = &app.core.store;
    assert_eq!(store.lookup_identity("demo", IdentityKind::Phone, ANA).await.unwrap(), vec![ana.clone()]);
    assert_eq!(
        store.lookup_identity("demo", IdentityKind::Email, "ana.lopez@example.com").await.unwrap(),
        vec![ana.clone()]
    );

    assert!(app.hubspot.archive_directly(ObjectType::Contacts, &ana));
    let body = json!([{
        "eventId": 9101, "subscriptionId": 7004, "portalId": PORTAL, "appId": 4242001,
        "occurredAt": now_ms(&app), "subscriptionType": "contact.deletion", "attemptNumber": 0,
        "objectId": ana.parse::<u64>().unwrap(), "changeSource": "CRM_UI", "sourceId": "userId:77",
    }])
    .to_string();
    let (status, answer, _) = post_signed(&app, body.as_bytes(), &secret(), now_ms(&app)).await;
    assert!((200..300).contains(&status), "{status}: {answer}");
    assert!(store.lookup_identity("demo", IdentityKind::Phone, ANA).await.unwrap().is_empty());
    assert!(store.lookup_identity("demo", IdentityKind::Email, "ana.lopez@example.com").await.unwrap().is_empty());
    assert_eq!(app.core.metrics.inbound_event_count("hubspot", "applied"), 1);
    assert_eq!(*rounds.borrow(), 1, "no pull ran: the webhook did it");
    app.shutdown().await;
}

/// A merge in HubSpot (issue 12): the signed `contact.merge` event (`primaryObjectId`,
/// `mergedObjectIds`) repoints the merged contact's index rows to the survivor at once.
#[tokio::test]
async fn a_contact_merge_webhook_repoints_the_index_to_the_survivor() {
    use callside::store::IdentityKind;
    let (app, rounds, ana) = spawn_indexed().await;
    let store = &app.core.store;
    assert_eq!(store.lookup_identity("demo", IdentityKind::Phone, ANA).await.unwrap(), vec![ana.clone()]);

    let survivor = app.hubspot.insert_contact([("firstname", "Ana María"), ("email", "ana.maria@example.com")]);
    assert!(app.hubspot.merge_contacts(&survivor, &ana));
    let body = json!([{
        "eventId": 9201, "subscriptionId": 7005, "portalId": PORTAL, "appId": 4242001,
        "occurredAt": now_ms(&app), "subscriptionType": "contact.merge", "attemptNumber": 0,
        "objectId": survivor.parse::<u64>().unwrap(), "changeSource": "CRM_UI", "sourceId": "userId:77",
        "primaryObjectId": survivor.parse::<u64>().unwrap(), "mergedObjectIds": [ana.parse::<u64>().unwrap()],
        "newObjectId": survivor.parse::<u64>().unwrap(), "numberOfPropertiesMoved": 2,
    }])
    .to_string();
    let (status, answer, _) = post_signed(&app, body.as_bytes(), &secret(), now_ms(&app)).await;
    assert!((200..300).contains(&status), "{status}: {answer}");
    assert_eq!(store.lookup_identity("demo", IdentityKind::Phone, ANA).await.unwrap(), vec![survivor.clone()]);
    assert_eq!(
        store.lookup_identity("demo", IdentityKind::Email, "ana.lopez@example.com").await.unwrap(),
        vec![survivor.clone()]
    );
    assert_eq!(*rounds.borrow(), 1, "no pull ran: the webhook did it");
    app.shutdown().await;
}
