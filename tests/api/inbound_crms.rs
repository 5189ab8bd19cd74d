//! Inbound CRM sync for Pipedrive (webhooks v2) and Salesforce (polling), issue 12: a rep's edit
//! reaches a live call's socket; bad Pipedrive deliveries are refused with their status, counted
//! and change nothing; a missed webhook is caught by the next pull; our own write-back is not
//! refetched.

use callside::config::TenantFile;
use callside::sandbox::pipedrive::SANDBOX_COMPANY_ID;
use callside::sandbox::pipedrive_webhooks::basic_header;
use serde_json::{Value, json};

use crate::helpers::*;

const PASSWORD_ENV: &str = "CALLSIDE_TEST_PIPEDRIVE_WEBHOOK_PASSWORD";
const USER: &str = "callside";
const ANA: &str = "+14155550134";

fn password() -> String {
    std::env::var(PASSWORD_ENV).expect(".cargo/config.toml sets the test password")
}

fn pipedrive_tenant() -> TenantFile {
    let mut t = demo_tenant();
    t.crm.vendor = "pipedrive".into();
    t.crm.auth = "token".into();
    t.crm.company_id = Some(SANDBOX_COMPANY_ID);
    t
}

fn salesforce_tenant() -> TenantFile {
    let mut t = demo_tenant();
    t.crm = toml::from_str("vendor = \"salesforce\"\nbase_url = \"sandbox\"\nnew_callers = \"contact\"\n").unwrap();
    t
}

fn webhooks_section() -> String {
    format!("[inbound.pipedrive]\nhttp_auth_user = \"{USER}\"\nhttp_auth_password_env = \"{PASSWORD_ENV}\"\n")
}

async fn spawn_pipedrive(extra: &str) -> TestApp {
    spawn_app_with(server_file(&format!("{}{extra}", webhooks_section())), vec![pipedrive_tenant()]).await
}

fn ana_person(app: &TestApp) -> String {
    app.pipedrive.person_with_phone("(415) 555-0134").expect("the demo seed has Ana")
}

fn target(app: &TestApp) -> String {
    format!("http://{}/v1/inbound/pipedrive", app.addr)
}

/// A webhooks v2 notification as Pipedrive sends it.
fn notification(id: &str, company: u64, person: &str, change_source: &str, user: u64, attempt: u64) -> Value {
    json!({
        "meta": {
            "action": "change", "entity": "person", "entity_id": person, "company_id": company.to_string(),
            "user_id": user.to_string(), "id": id, "correlation_id": "c-1", "is_bulk_edit": false,
            "timestamp": "2026-11-23T13:00:00.000Z", "type": "general", "version": "2.0",
            "webhook_id": "1", "webhook_owner_id": "1", "change_source": change_source, "attempt": attempt,
            "host": "sandbox.pipedrive.com",
        },
        "data": {"id": person.parse::<u64>().unwrap(), "name": "Mallory"},
        "previous": {"name": "Ana López"},
    })
}

async fn post(app: &TestApp, body: Vec<u8>, authorization: Option<String>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(target(app)).header("Content-Type", "application/json").body(body);
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A refused delivery: (what, status, outcome counted, body, `Authorization` header).
type BadCase = (&'static str, u16, &'static str, Vec<u8>, Option<String>);

fn good_auth() -> Option<String> {
    Some(basic_header(USER, &password()))
}

fn requests(app: &TestApp, outcome: &str) -> u64 {
    app.core.metrics.inbound_request_count("pipedrive", outcome)
}

fn events(app: &TestApp, vendor: &str, outcome: &str) -> u64 {
    app.core.metrics.inbound_event_count(vendor, outcome)
}

#[tokio::test]
async fn the_emulator_company_has_v2_webhooks_with_basic_auth_pointing_at_the_service() {
    let app = spawn_pipedrive("").await;
    let subs = app.pipedrive.webhook_subscriptions();
    assert_eq!(subs.len(), 2, "person and deal: {subs:?}");
    for s in &subs {
        assert_eq!(s.version, "2.0");
        assert_eq!(s.event_action, "*");
        assert_eq!(s.subscription_url.as_str(), target(&app));
        assert_eq!(s.http_auth, Some((USER.to_string(), password())));
    }
    let objects: Vec<&str> = subs.iter().map(|s| s.event_object.as_str()).collect();
    assert_eq!(objects, ["person", "deal"]);
    app.shutdown().await;
}

#[tokio::test]
async fn a_reps_edit_in_pipedrive_reaches_the_live_calls_socket_by_webhook() {
    let app = spawn_pipedrive("").await;
    let ana = ana_person(&app);
    let mut call = app.connect("pd-inbound-1", ANA).await;
    call.initialize().await;
    let before = call.tool("get_caller_context", json!({})).await;
    assert_eq!(before["structuredContent"]["contact"]["first_name"], "Ana", "{before}");

    // A rep renames her in Pipedrive's web app while she is on the line: the company's webhook
    // POSTs the v2 notification (Basic auth) and the service re-reads her and pushes it.
    app.pipedrive.rep_edit(&ana, "name", "Anita López", "77");
    let note = call.next_notification("notifications/callside/context_changed").await;
    assert_eq!(note["params"]["call_id"], "pd-inbound-1");
    assert_eq!(note["params"]["context"]["contact"]["first_name"], "Anita", "{note}");
    let after = call.tool("get_caller_context", json!({})).await;
    assert_eq!(after["structuredContent"]["contact"]["first_name"], "Anita");
    // Once the delivery is answered, it has been counted.
    let stats = app.pipedrive.webhook_stats().wait_for(|s| s.settled == 1).await.unwrap().clone();
    assert_eq!((stats.queued, stats.delivered, stats.failed), (1, 1, 0), "{stats:?}");
    assert_eq!(requests(&app, "accepted"), 1);
    assert_eq!(events(&app, "pipedrive", "applied"), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn forged_unknown_malformed_and_redelivered_pipedrive_webhooks_are_refused_counted_and_change_nothing() {
    let app = spawn_pipedrive("").await;
    let ana = ana_person(&app);
    let mut call = app.connect("pd-inbound-bad", ANA).await;
    call.initialize().await;
    call.tool("get_caller_context", json!({})).await;
    let reads_before = app.pipedrive.requests().len();
    let good = serde_json::to_vec(&notification("n-10", SANDBOX_COMPANY_ID, &ana, "app", 77, 1)).unwrap();

    let check_untouched = |what: &str| {
        assert_eq!(app.pipedrive.requests().len(), reads_before, "{what}: nothing re-read");
        assert!(app.core.context.is_cached("demo", ANA), "{what}: the cached context is kept");
    };
    let cases: Vec<BadCase> = vec![
        ("wrong password", 401, "forged", good.clone(), Some(basic_header(USER, "not-the-password-at-all"))),
        ("wrong user", 401, "forged", good.clone(), Some(basic_header("mallory", &password()))),
        ("no credentials", 401, "forged", good.clone(), None),
        ("a bearer token", 401, "forged", good.clone(), Some(format!("Bearer {}", password()))),
        ("garbage", 401, "forged", good.clone(), Some("Basic %%%".into())),
        (
            "a company no tenant has",
            404,
            "unknown_portal",
            serde_json::to_vec(&notification("n-11", 999, &ana, "app", 77, 1)).unwrap(),
            good_auth(),
        ),
        ("not JSON", 400, "malformed", b"{not json".to_vec(), good_auth()),
        ("a batch", 400, "malformed", b"[]".to_vec(), good_auth()),
        (
            "a v1 notification",
            400,
            "malformed",
            serde_json::to_vec(&json!({"meta": {"action": "updated", "object": "person", "entity": "person",
                "entity_id": 1, "company_id": SANDBOX_COMPANY_ID, "id": 5, "version": "1.0"}}))
            .unwrap(),
            good_auth(),
        ),
        (
            "no meta.id",
            400,
            "malformed",
            serde_json::to_vec(&json!({"meta": {"action": "change", "entity": "person", "entity_id": ana,
                "company_id": SANDBOX_COMPANY_ID, "version": "2.0"}}))
            .unwrap(),
            good_auth(),
        ),
        (
            "an entity id of the wrong type",
            400,
            "malformed",
            serde_json::to_vec(&json!({"meta": {"action": "change", "entity": "person", "entity_id": [1],
                "company_id": SANDBOX_COMPANY_ID, "id": "n-12", "version": "2.0"}}))
            .unwrap(),
            good_auth(),
        ),
    ];
    for (what, status, outcome, body, auth) in cases {
        let counted = requests(&app, outcome);
        let (got, answer) = post(&app, body, auth).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["error"], outcome, "{what}");
        assert_eq!(requests(&app, outcome), counted + 1, "{what} is counted");
        check_untouched(what);
    }
    // Nothing refused was recorded as delivered: the genuine notification below is still new.
    for id in ["n-10", "n-11", "n-12"] {
        let key = format!("event:{SANDBOX_COMPANY_ID}:{id}");
        assert!(!app.core.store.inbound_delivery_seen("pipedrive", &key).await.unwrap(), "{id}");
    }
    let (got, _) = post(&app, vec![b' '; 300 * 1024], good_auth()).await;
    assert_eq!(got, 413, "an oversized body is refused before it is read");
    check_untouched("oversized");

    // The genuine notification is applied: the record is re-read (it is a hint, never the
    // data: Ana was not really renamed in Pipedrive, so nothing is pushed).
    let (got, answer) = post(&app, good.clone(), good_auth()).await;
    assert_eq!((got, answer["applied"].clone(), answer["notified"].clone()), (200, json!(1), json!(0)), "{answer}");
    let reads_after = app.pipedrive.requests().len();
    assert!(reads_after > reads_before, "the accepted notification made the service re-read the person");
    // Pipedrive's retry of it (same meta.id, next attempt) is acknowledged — a non-2xx would
    // make Pipedrive retry again — and not applied twice.
    let retry = serde_json::to_vec(&notification("n-10", SANDBOX_COMPANY_ID, &ana, "app", 77, 2)).unwrap();
    let (got, answer) = post(&app, retry, good_auth()).await;
    assert_eq!((got, answer["duplicate"].clone(), answer["applied"].clone()), (200, json!(1), json!(0)), "{answer}");
    assert_eq!(app.pipedrive.requests().len(), reads_after, "a redelivery is not re-read");
    assert_eq!(events(&app, "pipedrive", "duplicate"), 1);
    assert_eq!(events(&app, "pipedrive", "applied"), 1);

    let ctx = call.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched");
    app.shutdown().await;
}

/// The write-back creates a person for a new caller: Pipedrive notifies the creation (through
/// the API, by the connection's user), which the receiver takes for our own write — no re-read,
/// and no further notification follows from it.
#[tokio::test]
async fn our_own_write_back_in_pipedrive_is_recognized_and_not_refetched() {
    let app = spawn_pipedrive("").await;
    let mut stats = app.pipedrive.webhook_stats();
    let mut call = app.connect("pd-own-1", "+1 646 555 0199").await;
    call.initialize().await;
    let ctx = call.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "new", "{ctx}");
    call.drop_abruptly().await;
    assert_eq!(app.wait_for_sync("pd-own-1").await, "synced");
    let created = app.pipedrive.person_with_phone("+16465550199").expect("the write-back created the person");

    // Every notification the write-back caused has been answered (the write-back is synced, so
    // they are all queued; the delivery task reports each one's end).
    let settled = stats.wait_for(|s| s.queued >= 1 && s.settled == s.queued).await.unwrap().clone();
    assert_eq!((settled.failed, settled.delivered), (0, settled.queued), "{settled:?}");
    let own = events(&app, "pipedrive", "own");
    assert_eq!(own, settled.delivered, "every notification of our write-back is ours: {settled:?}");
    assert_eq!(events(&app, "pipedrive", "applied"), 0, "nothing was refetched");
    // The receiver asked once who the connection acts as; the person was never read for it.
    let requests = app.pipedrive.requests();
    let me = requests.iter().filter(|(m, p, _)| m == "GET" && p == "/v1/users/me").count();
    assert_eq!(me, 1, "{requests:?}");

    // A rep's edit of that person right after is someone else's change and is applied.
    app.pipedrive.rep_edit(&created, "name", "Zoe Kim", "77");
    let after = stats.wait_for(|s| s.queued > settled.queued && s.settled == s.queued).await.unwrap().clone();
    assert_eq!(after.delivered, settled.delivered + 1, "one edit, one notification: no loop");
    assert_eq!(after.queued, settled.queued + 1, "{after:?}");
    assert_eq!(events(&app, "pipedrive", "applied"), 1);
    assert_eq!(events(&app, "pipedrive", "own"), own);
    app.shutdown().await;
}

/// The polling safety net: the webhook of a rep's edit is lost; the next identity pull (one
/// minute later on the injected clock) sees the person changed and pushes the fresh context.
#[tokio::test]
async fn a_missed_pipedrive_webhook_is_caught_by_the_next_pull() {
    let app = spawn_pipedrive("[identity]\npull_interval_secs = 60\n").await;
    let mut rounds = app.identity_rounds.clone();
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let ana = ana_person(&app);
    let mut call = app.connect("pd-missed-1", ANA).await;
    call.initialize().await;
    assert_eq!(call.tool("get_caller_context", json!({})).await["structuredContent"]["contact"]["first_name"], "Ana");

    let mut stats = app.pipedrive.webhook_stats();
    app.pipedrive.drop_next_webhooks(1);
    app.pipedrive.rep_edit(&ana, "name", "Anita López", "77");
    stats.wait_for(|s| s.dropped == 1).await.unwrap();
    assert_eq!(requests(&app, "accepted"), 0, "the webhook never arrived");

    app.clock.advance(jiff::SignedDuration::from_secs(60));
    let note = call.next_notification("notifications/callside/context_changed").await;
    assert_eq!(note["params"]["context"]["contact"]["first_name"], "Anita", "{note}");
    rounds.wait_for(|n| *n >= 2).await.unwrap();
    assert!(events(&app, "pipedrive", "polled") >= 1);
    assert_eq!(events(&app, "pipedrive", "applied"), 0);
    app.shutdown().await;
}

/// Salesforce is polled (the issue allows Outbound Messages or polling): a rep's edit of the
/// Lead reaches the live call at the next pull on the injected clock.
#[tokio::test]
async fn a_reps_edit_in_salesforce_reaches_the_live_calls_socket_at_the_next_poll() {
    let app = spawn_app_with(server_file("[identity]\npull_interval_secs = 120\n"), vec![salesforce_tenant()]).await;
    let mut rounds = app.identity_rounds.clone();
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let lead = app.salesforce.records("Lead")[0].id();
    let mut call = app.connect("sf-inbound-1", ANA).await;
    call.initialize().await;
    let before = call.tool("get_caller_context", json!({})).await;
    assert_eq!(before["structuredContent"]["contact"]["first_name"], "Ana", "{before}");

    let rep = app.salesforce.insert_user("Rita", "Rep", "rita@example.com");
    app.salesforce.rep_edit(&lead, "FirstName", "Anita", &rep);
    // Nothing happens before the interval is up: the round counter has not moved.
    assert_eq!(*rounds.borrow(), 1);
    app.clock.advance(jiff::SignedDuration::from_secs(120));
    let note = call.next_notification("notifications/callside/context_changed").await;
    assert_eq!(note["params"]["call_id"], "sf-inbound-1");
    assert_eq!(note["params"]["context"]["contact"]["first_name"], "Anita", "{note}");
    rounds.wait_for(|n| *n >= 2).await.unwrap();
    assert!(events(&app, "salesforce", "polled") >= 1);
    let after = call.tool("get_caller_context", json!({})).await;
    assert_eq!(after["structuredContent"]["contact"]["first_name"], "Anita");
    app.shutdown().await;
}

/// A pull's changes reach only the live calls they concern: a Salesforce contact created with
/// a live caller's number re-reads that call (a "new" caller becomes known), another call is
/// left alone.
#[tokio::test]
async fn a_pulled_change_reaches_only_the_calls_it_concerns() {
    let app = spawn_app_with(server_file("[identity]\npull_interval_secs = 60\n"), vec![salesforce_tenant()]).await;
    let mut rounds = app.identity_rounds.clone();
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let mut newcomer = app.connect("sf-new-1", "+1 646 555 0142").await;
    newcomer.initialize().await;
    assert_eq!(newcomer.tool("get_caller_context", json!({})).await["structuredContent"]["status"], "new");
    let mut ana = app.connect("sf-ana-1", ANA).await;
    ana.initialize().await;
    ana.tool("get_caller_context", json!({})).await;

    // A rep enters the newcomer as a contact while they talk.
    app.salesforce.insert(
        "Contact",
        &[("FirstName", json!("Noor")), ("LastName", json!("Haddad")), ("Phone", json!("(646) 555-0142"))],
    );
    app.clock.advance(jiff::SignedDuration::from_secs(60));
    let note = newcomer.next_notification("notifications/callside/context_changed").await;
    assert_eq!(note["params"]["status"], "matched", "{note}");
    assert_eq!(note["params"]["context"]["contact"]["first_name"], "Noor");
    rounds.wait_for(|n| *n >= 2).await.unwrap();
    // Ana's call was not concerned: no notification queued for it.
    let ctx = ana.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["contact"]["first_name"], "Ana");
    assert!(ana.notifications.iter().all(|n| n["method"] != "notifications/callside/context_changed"));
    app.shutdown().await;
}

#[tokio::test]
async fn without_an_inbound_pipedrive_section_the_route_answers_not_configured() {
    let app = spawn_app_with(server_file(""), vec![pipedrive_tenant()]).await;
    let (status, answer) = post(&app, b"{}".to_vec(), good_auth()).await;
    assert_eq!((status, answer["error"].clone()), (404, json!("not_configured")));
    assert_eq!(requests(&app, "not_configured"), 1);
    assert!(app.pipedrive.webhook_subscriptions().is_empty(), "no webhook is created without the section");
    app.shutdown().await;
}

#[test]
fn inbound_pipedrive_configuration_errors_are_reported_with_their_keys() {
    use callside::config::{Config, Overrides};
    use std::path::{Path, PathBuf};
    let server = server_file(
        "[inbound.pipedrive]\nhttp_auth_user = \"a:b\"\nhttp_auth_password_env = \"CALLSIDE_TEST_UNSET_PIPEDRIVE_PASSWORD\"\n",
    );
    let a = pipedrive_tenant();
    let mut b = other_tenant();
    b.crm.vendor = "pipedrive".into();
    b.crm.company_id = Some(SANDBOX_COMPANY_ID);
    let mut c = other_tenant();
    c.id = "third".into();
    c.numbers = vec!["+12125550177".into()];
    c.api_key_sha256 = vec![hex::encode(callside::config::api_key_digest("cs_third_tenant_key_0001"))];
    c.vapi_secret_sha256 = None;
    c.crm.company_id = Some(42);
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server,
        vec![
            (PathBuf::from("tenants/a.toml"), a),
            (PathBuf::from("tenants/b.toml"), b),
            (PathBuf::from("tenants/c.toml"), c),
        ],
        &Overrides::default(),
        PathBuf::from("data"),
    )
    .unwrap_err();
    let keys: Vec<(String, String)> =
        err.issues.iter().map(|i| (i.file.display().to_string(), i.key.clone())).collect();
    for (file, key) in [
        ("callside.toml", "inbound.pipedrive.http_auth_password_env"),
        ("callside.toml", "inbound.pipedrive.http_auth_user"),
        ("tenants/b.toml", "crm.company_id"),
        ("tenants/c.toml", "crm.company_id"),
    ] {
        assert!(keys.contains(&(file.to_owned(), key.to_owned())), "missing {file}: {key} in {keys:?}");
    }
    assert_eq!(err.issues.len(), 4, "{err}");
}

/// A Lead deleted in Salesforce (issue 12): the next pull reads it from "Get Deleted Records",
/// drops it from the identity index and the cached context, and tells the live call from its
/// number; the next call from that number is a new caller, not a match to a record the CRM no
/// longer has.
#[tokio::test]
async fn a_lead_deleted_in_salesforce_is_no_longer_matched_after_the_next_pull() {
    let app = spawn_app_with(server_file("[identity]\npull_interval_secs = 120\n"), vec![salesforce_tenant()]).await;
    // The org's delete log is stamped on the service's clock, as the pull's window is.
    app.salesforce.set_clock(std::sync::Arc::new(app.clock.clone()));
    let mut rounds = app.identity_rounds.clone();
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let lead = app.salesforce.records("Lead")[0].id();
    let mut first = app.connect("sf-del-1", ANA).await;
    first.initialize().await;
    let before = first.tool("get_caller_context", json!({})).await;
    assert_eq!(before["structuredContent"]["contact"]["first_name"], "Ana", "{before}");

    assert!(app.salesforce.delete_record(&lead), "a person deletes the Lead in Salesforce");
    app.clock.advance(jiff::SignedDuration::from_secs(120));
    let note = first.next_notification("notifications/callside/context_changed").await;
    assert_eq!(note["params"]["status"], "new", "{note}");
    rounds.wait_for(|n| *n >= 2).await.unwrap();
    assert!(events(&app, "salesforce", "polled") >= 1);

    let mut second = app.connect("sf-del-2", ANA).await;
    second.initialize().await;
    let after = second.tool("get_caller_context", json!({})).await;
    assert_eq!(after["structuredContent"]["status"], "new", "{after}");
    app.shutdown().await;
}

/// A HubSpot contact deleted (archived) in HubSpot, its webhook never sent: the next pull reads
/// it from the archived list, drops it from the identity index and the cached context, and the
/// next call from its number is a new caller.
#[tokio::test]
async fn a_contact_archived_in_hubspot_is_no_longer_matched_after_the_next_pull() {
    use callside::sandbox::hubspot::ObjectType;
    let app = spawn_app_with(server_file("[identity]\npull_interval_secs = 60\n"), vec![demo_tenant()]).await;
    let mut rounds = app.identity_rounds.clone();
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let ana = app.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Ana")).expect("the demo seed");
    let mut first = app.connect("hs-del-1", ANA).await;
    first.initialize().await;
    let before = first.tool("get_caller_context", json!({})).await;
    assert_eq!(before["structuredContent"]["contact"]["first_name"], "Ana", "{before}");

    assert!(app.hubspot.archive_directly(ObjectType::Contacts, &ana.id), "a person deletes Ana in HubSpot");
    app.clock.advance(jiff::SignedDuration::from_secs(60));
    let note = first.next_notification("notifications/callside/context_changed").await;
    assert_eq!(note["params"]["status"], "new", "{note}");
    rounds.wait_for(|n| *n >= 2).await.unwrap();

    let mut second = app.connect("hs-del-2", ANA).await;
    second.initialize().await;
    let after = second.tool("get_caller_context", json!({})).await;
    assert_eq!(after["structuredContent"]["status"], "new", "{after}");
    app.shutdown().await;
}

/// A person deleted in Pipedrive's app (issue 12): the `delete` webhook drops every index row of
/// theirs at once — Pipedrive's pull cannot list deleted persons, and with no live call from
/// their number nothing else would read (and so drop) them before the next caller.
#[tokio::test]
async fn a_person_deleted_in_pipedrive_leaves_the_index_by_webhook() {
    use callside::store::IdentityKind;
    let app = spawn_pipedrive("[identity]\npull_interval_secs = 300\n").await;
    let mut rounds = app.identity_rounds.clone();
    rounds.wait_for(|n| *n >= 1).await.unwrap();
    let ana = ana_person(&app);
    let store = &app.core.store;
    assert_eq!(store.lookup_identity("demo", IdentityKind::Phone, ANA).await.unwrap(), vec![ana.clone()]);
    assert_eq!(
        store.lookup_identity("demo", IdentityKind::Email, "ana.lopez@example.com").await.unwrap(),
        vec![ana.clone()]
    );

    let mut stats = app.pipedrive.webhook_stats();
    assert!(app.pipedrive.rep_delete(&ana, "77"), "a rep deletes Ana in Pipedrive");
    stats.wait_for(|s| s.delivered >= 1).await.unwrap();
    assert!(store.lookup_identity("demo", IdentityKind::Phone, ANA).await.unwrap().is_empty());
    assert!(store.lookup_identity("demo", IdentityKind::Email, "ana.lopez@example.com").await.unwrap().is_empty());
    assert_eq!(events(&app, "pipedrive", "applied"), 1);
    assert_eq!(*rounds.borrow(), 1, "no pull ran: the webhook did it");
    app.shutdown().await;
}
