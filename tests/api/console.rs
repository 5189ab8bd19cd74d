//! The operator console and its JSON API (issue 9), over HTTP against the real application:
//! a seeded day of calls written back to the HubSpot emulator (one synced, one partial, one
//! dead-lettered), operator login, tenant isolation between agencies, CSRF, and re-sync.

use std::time::Duration;

use callside::config::{ServerFile, TenantFile};
use callside::writeback::{CallOutcome, EndReason, build_plan};
use jiff::Timestamp;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

pub const PORTAL: u64 = 4242;
pub const ANA_PASSWORD: &str = "ana's long passphrase 7";
pub const BO_PASSWORD: &str = "bo's other long passphrase";
/// The seeded calls: Sunday 2026-11-22 in New York, the day before the clock's START.
pub const SYNCED: &str = "call-synced";
pub const PARTIAL: &str = "call-partial";
pub const DEAD: &str = "call-dead";

pub fn console_server() -> ServerFile {
    let hash = callside::console::auth::hash_password;
    server_file(&format!(
        "[writeback]\nretry_window_secs = 30\nmax_backoff_secs = 5\n\
         [[console.operators]]\nusername = \"ana\"\npassword_argon2 = \"{}\"\ntenants = [\"demo\"]\n\
         [[console.operators]]\nusername = \"bo\"\npassword_argon2 = \"{}\"\ntenants = [\"other\"]\n",
        hash(ANA_PASSWORD),
        hash(BO_PASSWORD),
    ))
}

pub fn tenants() -> Vec<TenantFile> {
    let mut demo = demo_tenant();
    demo.crm.portal_id = Some(PORTAL);
    vec![demo, other_tenant()]
}

/// Closes a call with the plan the service would build and wakes the outbox.
pub async fn seed_call(app: &TestApp, call_id: &str, phone: &str, at: &str, disposition: &str) {
    let at: Timestamp = at.parse().unwrap();
    let store = &app.core.store;
    assert!(store.record_call_start(call_id, "demo", Some(phone), DEMO_NUMBER, at).await.unwrap());
    let outcome = CallOutcome {
        call_id: call_id.into(),
        end_reason: EndReason::EndCall,
        started_at: at,
        duration_secs: 95,
        caller_phone: Some(phone.into()),
        dialed: DEMO_NUMBER.into(),
        matched_contact_id: None,
        summary: "Asked about a haircut on Tuesday.".into(),
        disposition: Some(disposition.into()),
        recording_url: Some(format!("https://recordings.example.com/{call_id}.wav")),
        transcript_url: None,
        caller_name: Some("Dana Example".into()),
        caller_email: None,
        caller_zip: None,
        bookings: vec![],
        service_names: vec![],
        appointment_changes: vec![],
        ..Default::default()
    };
    let steps = build_plan(&outcome);
    assert!(!steps.is_empty());
    let closed = store
        .close_call_with_plan(call_id, "demo", "end_call", &serde_json::to_value(&outcome).unwrap(), &steps, at)
        .await
        .unwrap();
    assert!(closed);
    app.core.worker.wake();
}

/// Waits (on the worker's progress signal) until `done` holds for the call's steps.
pub async fn wait_steps(app: &TestApp, call_id: &str, done: impl Fn(&[callside::store::StepRow]) -> bool) {
    let mut progress = app.core.worker.progress();
    let wait = async {
        loop {
            if done(&app.core.store.steps_for_call("demo", call_id).await.unwrap()) {
                return;
            }
            progress.changed().await.expect("worker alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("write-back progressed in time");
}

/// A day with a synced call, a partial one (the call log refused by the portal, the contact
/// written) and a dead-lettered one (the CRM down past the retry window). The CRM is left down.
pub async fn seeded_day() -> TestApp {
    let app = spawn_app_with(console_server(), tenants()).await;
    seed_call(&app, SYNCED, "+12125550111", "2026-11-22T14:05:00Z", "booked").await;
    assert_eq!(app.wait_for_sync(SYNCED).await, "synced");

    app.hubspot.reject_property("hs_call_body");
    seed_call(&app, PARTIAL, "+12125550122", "2026-11-22T15:30:00Z", "question answered").await;
    assert_eq!(app.wait_for_sync(PARTIAL).await, "failed");
    app.hubspot.clear_property_faults();

    app.hubspot.set_down(true);
    seed_call(&app, DEAD, "+12125550133", "2026-11-22T20:45:00Z", "callback requested").await;
    wait_steps(&app, DEAD, |s| s[0].attempts >= 1).await;
    // Past the 30 s retry window: the next attempt dead-letters the step.
    app.clock.advance(jiff::SignedDuration::from_secs(60));
    assert_eq!(app.wait_for_sync(DEAD).await, "failed");
    app
}

/// An HTTP client that follows no redirects and keeps cookies by hand (so tests see each hop).
pub struct Browser {
    http: reqwest::Client,
    base: String,
    pub cookies: Vec<(String, String)>,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Browser {
    pub fn new(app: &TestApp) -> Browser {
        Browser {
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            base: format!("http://{}", app.addr),
            cookies: vec![],
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn finish(&mut self, resp: reqwest::Response) -> Page {
        let status = resp.status();
        let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        let set_cookies: Vec<String> =
            resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        for c in &set_cookies {
            let (pair, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !v.is_empty() {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
        Page { status, location, set_cookies, body: resp.text().await.unwrap() }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let resp = self.http.get(format!("{}{path}", self.base)).header("cookie", self.cookie_header()).send().await;
        self.finish(resp.unwrap()).await
    }

    pub async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await;
        self.finish(resp.unwrap()).await
    }

    pub async fn post_json(&mut self, path: &str, csrf: Option<&str>) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.base)).header("cookie", self.cookie_header());
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        let resp = req.send().await;
        self.finish(resp.unwrap()).await
    }

    /// Logs in through the form and returns the session's CSRF token (from the next page).
    pub async fn login(&mut self, user: &str, password: &str) -> String {
        let form = self.get("/console/login").await;
        let csrf = hidden_csrf(&form.body);
        let done =
            self.post_form("/console/login", &[("username", user), ("password", password), ("csrf", &csrf)]).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        let session = done.set_cookies.iter().find(|c| c.starts_with("callside_session=")).expect("session cookie");
        assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"), "{session}");
        let home = self.get("/console").await;
        let day = self.get(home.location.as_deref().expect("redirect to the tenant's day")).await;
        assert_eq!(day.status, StatusCode::OK);
        hidden_csrf(&day.body)
    }
}

pub fn hidden_csrf(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a CSRF field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn json(page: &Page) -> Value {
    serde_json::from_str(&page.body).unwrap_or_else(|e| panic!("{e}: {}", page.body))
}

fn crm_object_count(app: &TestApp) -> usize {
    app.hubspot.contacts().len() + app.hubspot.calls().len() + app.hubspot.meetings().len()
}

#[tokio::test]
async fn the_api_shows_each_status_and_links_records_into_the_portal() {
    let app = seeded_day().await;
    let http = reqwest::Client::new();
    let addr = app.addr;
    let get = |path: String| {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://{addr}{path}")).bearer_auth(DEMO_KEY).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    // Default day: yesterday in New York (the clock is Monday morning there).
    let (status, body) = get("/v1/calls".into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let day: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(day["date"], "2026-11-22");
    let statuses: Vec<(&str, &str)> = day["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["call_id"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, vec![(SYNCED, "synced"), (PARTIAL, "partial"), (DEAD, "failed")]);
    let synced = &day["calls"][0];
    assert_eq!(synced["time"], "09:05");
    assert_eq!(synced["caller"], "+1***11", "the caller is redacted");
    assert!(!body.contains("Dana") && !body.contains("2125550111"), "no personal data: {body}");
    // Each record link names an object that exists at the CRM.
    let records = synced["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let contact = records.iter().find(|r| r["object_type"] == "contact").unwrap();
    let id = contact["id"].as_str().unwrap();
    assert!(app.hubspot.contact(id).is_some());
    assert_eq!(contact["url"], format!("https://app.hubspot.com/contacts/{PORTAL}/record/0-1/{id}"));
    let call = records.iter().find(|r| r["object_type"] == "call").unwrap();
    assert!(app.hubspot.call(call["id"].as_str().unwrap()).is_some());
    assert!(call["url"].as_str().unwrap().contains("/record/0-48/"));
    // The partial call wrote its contact but not its call log.
    let partial = &day["calls"][1];
    assert_eq!(partial["records"].as_array().unwrap().len(), 1);
    assert_eq!(day["calls"][2]["records"].as_array().unwrap().len(), 0);
    // The call page: steps, attempts (one per request the audit trail recorded), audit, actions.
    let (status, body) = get(format!("/v1/calls/{DEAD}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dead: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dead["steps"][0]["status"], "dead");
    // The call log needs the contact: dead-lettered with it (never left pending), saying why.
    assert_eq!(dead["steps"][1]["status"], "dead");
    assert_eq!(dead["steps"][1]["attempts"], 0, "never attempted");
    let why = dead["steps"][1]["last_error"].as_str().unwrap();
    assert!(why.contains(&format!("step {} (contact)", dead["steps"][0]["id"])), "{why}");
    assert_eq!(dead["steps"][1]["blocked"], false);
    let cascade: Vec<&Value> =
        dead["audit"].as_array().unwrap().iter().filter(|a| a["action"] == "writeback.dependants_dead").collect();
    assert_eq!(cascade.len(), 1, "{body}");
    assert_eq!(cascade[0]["detail"]["parent_step"], dead["steps"][0]["id"]);
    assert_eq!(cascade[0]["detail"]["steps"], serde_json::json!([dead["steps"][1]["id"]]));
    assert_eq!(dead["attempts"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(dead["actions"], serde_json::json!(["resync", "replay"]));
    assert_eq!(dead["recording_url"], format!("https://recordings.example.com/{DEAD}.wav"));
    // Bad input: a clear 400, and the service keeps answering.
    let (status, body) = get("/v1/calls?date=22-11-2026".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("YYYY-MM-DD"), "{body}");
    assert_eq!(get("/v1/calls/no-such-call".into()).await.0, StatusCode::NOT_FOUND);
    assert_eq!(reqwest::get(format!("http://{}/v1/calls", app.addr)).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The OpenAPI document is served and describes every API route.
    let (status, body) = get("/v1/openapi.json".into()).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    for path in ["/v1/calls", "/v1/calls/{call_id}", "/v1/calls/{call_id}/resync", "/v1/calls/{call_id}/replay"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn resyncing_a_synced_call_twice_creates_no_crm_object() {
    let app = seeded_day().await;
    app.hubspot.set_down(false);
    let before = crm_object_count(&app);
    let requests_before = app.hubspot.total_requests();
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http
            .post(format!("http://{}/v1/calls/{SYNCED}/resync", app.addr))
            .bearer_auth(DEMO_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(app.wait_for_sync(SYNCED).await, "synced");
    }
    assert!(app.hubspot.total_requests() > requests_before, "the re-sync really wrote to the CRM");
    assert_eq!(crm_object_count(&app), before, "re-sync creates 0 new CRM objects");
    // Each re-sync is in the audit trail.
    let audit = app.core.store.audit_rows_for_call("demo", SYNCED).await.unwrap();
    assert_eq!(audit.iter().filter(|a| a.action == "console.resync").count(), 2);
    // A replay of a call with no dead letter is refused, and changes nothing.
    let r =
        http.post(format!("http://{}/v1/calls/{SYNCED}/replay", app.addr)).bearer_auth(DEMO_KEY).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    app.shutdown().await;
}

#[tokio::test]
async fn an_operator_sees_only_their_agencys_tenants() {
    let app = seeded_day().await;
    let mut bo = Browser::new(&app);
    let csrf = bo.login("bo", BO_PASSWORD).await;
    // Pages: the demo tenant's day and call pages are 404 for an operator of another agency.
    assert_eq!(bo.get("/console/t/demo/calls").await.status, StatusCode::NOT_FOUND);
    let page = bo.get(&format!("/console/t/demo/calls/{SYNCED}")).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!page.body.contains(SYNCED));
    // Even through their own tenant's URL.
    assert_eq!(bo.get(&format!("/console/t/other/calls/{SYNCED}")).await.status, StatusCode::NOT_FOUND);
    // API: same answer as for a call that does not exist.
    assert_eq!(bo.get(&format!("/v1/calls/{SYNCED}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(bo.get("/v1/calls?tenant=demo&date=2026-11-22").await.status, StatusCode::NOT_FOUND);
    let own = bo.get("/v1/calls?date=2026-11-22").await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(json(&own)["calls"].as_array().unwrap().len(), 0, "the other tenant had no calls");
    // Actions too, with a valid CSRF token.
    assert_eq!(bo.post_json(&format!("/v1/calls/{DEAD}/replay"), Some(&csrf)).await.status, StatusCode::NOT_FOUND);
    let post = bo.post_form(&format!("/console/t/demo/calls/{DEAD}/replay"), &[("csrf", &csrf)]).await;
    assert_eq!(post.status, StatusCode::NOT_FOUND);
    // A tenant key cannot reach another tenant's calls either.
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/calls/{SYNCED}", app.addr))
        .bearer_auth(OTHER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.core.store.call("demo", DEAD).await.unwrap().unwrap().sync_status, "failed", "nothing changed");
    app.shutdown().await;
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_refused() {
    let app = seeded_day().await;
    let mut ana = Browser::new(&app);
    // Wrong password: refused, no session.
    let form = ana.get("/console/login").await;
    let login_csrf = hidden_csrf(&form.body);
    let bad =
        ana.post_form("/console/login", &[("username", "ana"), ("password", "guess"), ("csrf", &login_csrf)]).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(!bad.set_cookies.iter().any(|c| c.starts_with("callside_session=")));
    // A login form posted without its CSRF cookie (a cross-site form) is refused.
    let mut stranger = Browser::new(&app);
    let forged = stranger
        .post_form("/console/login", &[("username", "ana"), ("password", ANA_PASSWORD), ("csrf", &login_csrf)])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let csrf = ana.login("ana", ANA_PASSWORD).await;
    for form in [vec![], vec![("csrf", "not-the-token")]] {
        let r = ana.post_form(&format!("/console/t/demo/calls/{DEAD}/replay"), &form).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{form:?}");
        assert_eq!(ana.post_json(&format!("/v1/calls/{DEAD}/replay"), None).await.status, StatusCode::FORBIDDEN);
    }
    let r = ana.post_form("/console/logout", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "logout is a POST with CSRF too");
    assert_eq!(app.core.store.call("demo", DEAD).await.unwrap().unwrap().sync_status, "failed", "nothing requeued");
    // With the token the replay goes through.
    app.hubspot.set_down(false);
    let r = ana.post_form(&format!("/console/t/demo/calls/{DEAD}/replay"), &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location.as_deref(), Some(format!("/console/t/demo/calls/{DEAD}?done=replay").as_str()));
    assert_eq!(app.wait_for_sync(DEAD).await, "synced");
    // Logged out, the session is gone.
    assert_eq!(ana.post_form("/console/logout", &[("csrf", &csrf)]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(ana.get("/console/t/demo/calls").await.location.as_deref(), Some("/console/login"));
    assert_eq!(ana.get("/v1/calls").await.status, StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[test]
fn a_console_operator_with_a_plain_password_or_unknown_tenant_is_a_config_error() {
    let server = server_file(
        "[[console.operators]]\nusername = \"ana\"\npassword_argon2 = \"hunter2hunter2\"\ntenants = [\"nope\"]\n",
    );
    let err = callside::config::Config::from_parts(
        std::path::Path::new("server.toml"),
        server,
        vec![(std::path::PathBuf::from("demo.toml"), demo_tenant())],
        &callside::config::Overrides::default(),
        std::path::PathBuf::from("data"),
    )
    .unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"console.operators[0].password_argon2"), "{err}");
    assert!(keys.contains(&"console.operators[0].tenants"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "the bad value is not echoed: {err}");
}

#[tokio::test]
async fn a_plan_held_for_review_is_approved_from_the_console_and_undone_through_the_api() {
    let app = spawn_app_with(console_server(), tenants()).await;
    let store = &app.core.store;
    let at: Timestamp = "2026-11-22T16:00:00Z".parse().unwrap();
    let call_id = "call-review";
    store.record_call_start(call_id, "demo", Some("+12125550144"), DEMO_NUMBER, at).await.unwrap();
    let outcome = CallOutcome {
        call_id: call_id.into(),
        end_reason: EndReason::EndCall,
        started_at: at,
        duration_secs: 60,
        caller_phone: Some("+12125550144".into()),
        dialed: DEMO_NUMBER.into(),
        matched_contact_id: None,
        summary: "Wants a quote.".into(),
        disposition: Some("quote requested".into()),
        recording_url: None,
        transcript_url: None,
        caller_name: Some("Robin Example".into()),
        caller_email: None,
        caller_zip: None,
        bookings: vec![],
        service_names: vec![],
        appointment_changes: vec![],
        ..Default::default()
    };
    let steps = build_plan(&outcome);
    let outcome = serde_json::to_value(&outcome).unwrap();
    assert!(store.close_call_with_held_plan(call_id, "demo", "end_call", &outcome, &steps, true, at).await.unwrap());
    let contacts_before = app.hubspot.contacts().len();

    let mut ana = Browser::new(&app);
    let csrf = ana.login("ana", ANA_PASSWORD).await;
    let day = ana.get("/v1/calls?date=2026-11-22").await;
    assert_eq!(json(&day)["calls"][0]["status"], "needs_review", "{}", day.body);
    let page = ana.get(&format!("/console/t/demo/calls/{call_id}")).await;
    assert!(page.body.contains("id=\"approve\"") && !page.body.contains("id=\"undo\""), "{}", page.body);
    assert_eq!(app.hubspot.contacts().len(), contacts_before, "nothing written before approval");

    let r = ana.post_form(&format!("/console/t/demo/calls/{call_id}/approve"), &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some(format!("/console/t/demo/calls/{call_id}?done=approve").as_str()));
    assert_eq!(app.wait_for_sync(call_id).await, "synced");
    assert_eq!(app.hubspot.contacts().len(), contacts_before + 1);
    // Approving twice does nothing more.
    let again = ana.post_json(&format!("/v1/calls/{call_id}/approve"), Some(&csrf)).await;
    assert_eq!(again.status, StatusCode::CONFLICT);

    let detail = json(&ana.get(&format!("/v1/calls/{call_id}")).await);
    let contact = detail["records"].as_array().unwrap().iter().find(|r| r["object_type"] == "contact").unwrap().clone();
    assert_eq!(contact["action"], "created");
    assert!(detail["actions"].as_array().unwrap().contains(&Value::from("undo")), "{detail}");

    let r = ana.post_json(&format!("/v1/calls/{call_id}/undo"), Some(&csrf)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let report = json(&r);
    let deleted: Vec<&str> =
        report["report"]["deleted"].as_array().unwrap().iter().map(|d| d["object_id"].as_str().unwrap()).collect();
    assert!(deleted.contains(&contact["id"].as_str().unwrap()), "{report}");
    let audit = app.core.store.audit_rows_for_call("demo", call_id).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).filter(|a| a.starts_with("console.")).collect();
    assert_eq!(actions, vec!["console.approve", "console.undo"]);
    app.shutdown().await;
}

#[tokio::test]
async fn the_audit_trails_attempt_count_equals_the_requests_the_crm_saw() {
    let app = spawn_app_with(console_server(), tenants()).await;
    // An outage: every attempt is one request the emulator answers 503 (nothing else talks to
    // it: the identity pull is off and no call is live).
    app.hubspot.set_down(true);
    app.hubspot.reset_request_log();
    let call = "call-outage";
    seed_call(&app, call, "+12125550144", "2026-11-22T16:00:00Z", "callback requested").await;
    // Several retries on the injected clock (backoff is at most 5 s), then past the 30 s window.
    for n in 1..=4 {
        wait_steps(&app, call, |s| s[0].attempts >= n).await;
        app.clock.advance(jiff::SignedDuration::from_secs(6));
    }
    app.clock.advance(jiff::SignedDuration::from_secs(60));
    assert_eq!(app.wait_for_sync(call).await, "failed");
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/calls/{call}", app.addr))
        .bearer_auth(DEMO_KEY)
        .send()
        .await
        .unwrap();
    let detail: Value = r.json().await.unwrap();
    let attempts = detail["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 5, "several attempts were made: {attempts:?}");
    assert_eq!(attempts.len() as u64, app.hubspot.total_requests(), "one audited attempt per request the CRM saw");
    assert_eq!(attempts.len() as i64, detail["steps"][0]["attempts"].as_i64().unwrap(), "and the step's own count");
    assert!(attempts.iter().take(attempts.len() - 1).all(|a| a["result"] == "retry"), "{attempts:?}");
    assert_eq!(attempts.last().unwrap()["result"], "dead");
    app.shutdown().await;
}
