//! Write-back durability through the running service with the HubSpot emulator's faults: the
//! vendor's Retry-After (both forms) decides the next attempt, a response lost after the write
//! applied causes no duplicate, an hour-long CRM outage loses nothing, a revoked grant parks the
//! steps until re-authorization, and a dead letter can be replayed. Domain time is the manual
//! clock; every wait is on the worker's progress signal.

use callside::sandbox::hubspot::InjectedFailure;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::helpers::{DEMO_KEY, START, TestApp, demo_tenant, server_file, spawn_app, spawn_app_with};

/// Waits (on the worker's progress signal) until `done` holds for the store.
macro_rules! wait_until {
    ($app:expr, $what:expr, |$store:ident| $cond:expr) => {{
        let mut progress = $app.core.worker.progress();
        let wait = async {
            loop {
                let $store = &$app.core.store;
                if $cond {
                    break;
                }
                progress.changed().await.expect("worker alive");
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), wait).await.expect($what);
    }};
}

/// A call from a new caller that ends with `end_call`, after the ring-time prefetch finished (so
/// the next request the emulator sees is the write-back's).
async fn finished_call(app: &TestApp, call_id: &str, phone: &str, before_end: impl FnOnce()) {
    let mut c = app.connect(call_id, phone).await;
    c.initialize().await;
    c.tool("get_caller_context", json!({})).await;
    before_end();
    let r = c.tool("end_call", json!({"summary": "Asked about prices.", "caller_name": "Rita Ames"})).await;
    assert_eq!(r["isError"], false, "{r}");
}

async fn contact_step_id(app: &TestApp, call_id: &str) -> i64 {
    app.core.store.steps_for_call("demo", call_id).await.unwrap()[0].id
}

fn contacts_with_phone(app: &TestApp, phone: &str) -> usize {
    app.hubspot.contacts().iter().filter(|c| c.prop("phone") == Some(phone)).count()
}

fn call_logs_for(app: &TestApp, call_id: &str) -> usize {
    let key = callside::connectors::crm::hubspot::IDEMPOTENCY_PROPERTY;
    let prefix = format!("{call_id}:");
    app.hubspot.calls().iter().filter(|c| c.prop(key).is_some_and(|k| k.starts_with(&prefix))).count()
}

#[tokio::test]
async fn retry_after_in_seconds_and_as_an_http_date_sets_the_next_attempt() {
    let app = spawn_app().await;
    let start: Timestamp = START.parse().unwrap();

    // 429 with `Retry-After: 30` (and HubSpot's exhausted 10 s window): the longest signal wins.
    finished_call(&app, "ra-secs", "+14155550171", || {
        app.hubspot.fail_next_with(InjectedFailure::rate_limited_secs(30), 1)
    })
    .await;
    let step = contact_step_id(&app, "ra-secs").await;
    wait_until!(app, "first attempt recorded", |s| s.step_schedule(step).await.unwrap().unwrap().attempts >= 1);
    let sched = app.core.store.step_schedule(step).await.unwrap().unwrap();
    assert_eq!(sched.status, "pending");
    assert_eq!(sched.next_attempt_at, start + SignedDuration::from_secs(30), "Retry-After seconds obeyed");
    app.clock.advance(SignedDuration::from_secs(30));
    assert_eq!(app.wait_for_sync("ra-secs").await, "synced");

    // `Retry-After` as an IMF-fixdate, read against the injected clock (now 13:00:30Z).
    finished_call(&app, "ra-date", "+14155550172", || {
        app.hubspot.fail_next_with(InjectedFailure::rate_limited_until("Mon, 23 Nov 2026 13:02:00 GMT"), 1)
    })
    .await;
    let step = contact_step_id(&app, "ra-date").await;
    wait_until!(app, "first attempt recorded", |s| s.step_schedule(step).await.unwrap().unwrap().attempts >= 1);
    let sched = app.core.store.step_schedule(step).await.unwrap().unwrap();
    assert_eq!(sched.next_attempt_at, "2026-11-23T13:02:00Z".parse::<Timestamp>().unwrap(), "HTTP-date obeyed");
    app.clock.advance(SignedDuration::from_secs(90));
    assert_eq!(app.wait_for_sync("ra-date").await, "synced");
    app.shutdown().await;
}

#[tokio::test]
async fn a_response_dropped_after_the_write_applied_is_retried_without_a_duplicate() {
    let app = spawn_app().await;
    // Search lags too, so the retry cannot find the first write by searching: only the
    // idempotency key can tell it exists.
    app.hubspot.set_search_lag(true);
    let phone = "+14155550173";
    finished_call(&app, "dropped", phone, || app.hubspot.drop_next_responses_after_apply(1)).await;
    let step = contact_step_id(&app, "dropped").await;
    wait_until!(app, "the lost response recorded as a retry", |s| s
        .step_schedule(step)
        .await
        .unwrap()
        .unwrap()
        .attempts
        >= 1);
    // The contact exists at the CRM although the worker never heard so.
    assert_eq!(contacts_with_phone(&app, phone), 1);
    // A first retry comes within a second (1 s backoff, jittered down).
    app.clock.advance(SignedDuration::from_secs(1));
    assert_eq!(app.wait_for_sync("dropped").await, "synced");
    let steps = app.core.store.steps_for_call("demo", "dropped").await.unwrap();
    assert_eq!(steps.iter().map(|s| s.attempts).collect::<Vec<_>>(), [2, 1], "the contact write was lost once");
    assert_eq!(contacts_with_phone(&app, phone), 1, "no duplicate contact");
    assert_eq!(call_logs_for(&app, "dropped"), 1, "no duplicate call log");
    app.shutdown().await;
}

#[tokio::test]
async fn an_hour_long_crm_outage_loses_nothing_and_the_backlog_drains() {
    let app = spawn_app().await;
    app.hubspot.set_down(true);
    let calls: Vec<(String, String)> =
        (0..8).map(|i| (format!("outage-{i}"), format!("+1415555{:04}", 3100 + i))).collect();
    for (id, phone) in &calls {
        finished_call(&app, id, phone, || {}).await;
    }
    // A simulated hour, a minute at a time; after each minute the worker has tried every due step.
    for _ in 0..60 {
        app.clock.advance(SignedDuration::from_secs(60));
        let now = callside::clock::Clock::now(&app.clock);
        wait_until!(app, "due steps attempted", |s| s.next_due_at().await.unwrap().is_none_or(|at| at > now));
    }
    for (id, _) in &calls {
        let call = app.core.store.call("demo", id).await.unwrap().unwrap();
        assert_eq!(call.sync_status, "pending", "{id} is kept, not dropped, during the outage");
        let steps = app.core.store.steps_for_call("demo", id).await.unwrap();
        assert!(steps[0].attempts >= 8, "{id} retried with backoff through the hour: {}", steps[0].attempts);
        // One attempt a minute without backoff would be 61.
        assert!(steps[0].attempts <= 40, "{id} backed off: {}", steps[0].attempts);
    }
    assert!(app.hubspot.contacts().iter().all(|c| !c.prop("phone").is_some_and(|p| p.starts_with("+14155553"))));

    app.hubspot.set_down(false);
    app.clock.advance(SignedDuration::from_secs(300));
    for (id, phone) in &calls {
        assert_eq!(app.wait_for_sync(id).await, "synced", "{id}");
        assert_eq!(contacts_with_phone(&app, phone), 1, "{id}");
        assert_eq!(call_logs_for(&app, id), 1, "{id}");
    }
    app.shutdown().await;
}

/// Runs the OAuth connect flow through the service (the sandbox auto-approves).
async fn authorize(app: &TestApp) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let start = format!("http://{}/v1/connect/hubspot/start", app.addr);
    let answer: serde_json::Value = http.get(&start).bearer_auth(DEMO_KEY).send().await.unwrap().json().await.unwrap();
    let approved = http.get(answer["authorize_url"].as_str().unwrap()).send().await.unwrap();
    let back = approved.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(http.get(back).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_revoked_grant_parks_the_steps_and_reauthorization_resumes_them() {
    let mut tenant = demo_tenant();
    tenant.crm.auth = "oauth".into();
    let app = spawn_app_with(server_file(""), vec![tenant]).await;
    authorize(&app).await;
    let phone = "+14155550174";
    finished_call(&app, "revoked", phone, || {
        app.hubspot.revoke_grant();
        app.hubspot.expire_token();
    })
    .await;
    wait_until!(app, "parked", |s| s.call("demo", "revoked").await.unwrap().unwrap().sync_status == "parked");
    let steps = app.core.store.steps_for_call("demo", "revoked").await.unwrap();
    assert_eq!(steps[0].status, "parked");
    assert_eq!(steps[1].status, "pending", "the rest of the plan is kept");
    let audit = app.core.store.audit_for_call("demo", "revoked").await.unwrap();
    assert!(audit.iter().any(|(a, _)| a == "writeback.parked"), "{audit:?}");
    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.contains("outcome=\"parked\""), "the park is counted for alerting");
    // Parked is not retried, however much time passes.
    app.clock.advance(SignedDuration::from_secs(86_400 * 2));
    assert!(app.core.store.next_due_at().await.unwrap().is_none());
    assert_eq!(contacts_with_phone(&app, phone), 0);

    authorize(&app).await;
    assert_eq!(app.wait_for_sync("revoked").await, "synced");
    assert_eq!(contacts_with_phone(&app, phone), 1);
    assert_eq!(call_logs_for(&app, "revoked"), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_dead_parent_takes_its_dependants_with_it_the_call_is_final_and_a_replay_runs_them_all() {
    let app = spawn_app().await;
    let phone = "+14155550175";
    // The contact step is refused for good (a validation error on a field it cannot drop).
    finished_call(&app, "dead", phone, || app.hubspot.reject_property("firstname")).await;
    // Final without any clock advance: the call log, which needs the contact, is dead-lettered
    // with it instead of waiting forever for a parent that will never be done.
    assert_eq!(app.wait_for_sync("dead").await, "failed");
    let steps = app.core.store.steps_for_call("demo", "dead").await.unwrap();
    assert_eq!(
        steps.iter().map(|s| (s.kind.as_str(), s.status.as_str())).collect::<Vec<_>>(),
        [("contact", "dead"), ("call_log", "dead")]
    );
    assert_eq!(steps[1].attempts, 0, "the dependant was never attempted");
    assert!(app.core.store.next_due_at().await.unwrap().is_none(), "nothing left waiting");
    let mut dead = app.core.store.dead_letters(10).await.unwrap();
    dead.sort_by_key(|d| d.step_id);
    assert_eq!(
        dead.iter().map(|d| (d.call_id.as_str(), d.kind.as_str())).collect::<Vec<_>>(),
        [("dead", "contact"), ("dead", "call_log")]
    );
    assert!(dead[0].last_error.as_deref().is_some_and(|e| e.contains("firstname")), "{dead:?}");
    let why = dead[1].last_error.as_deref().unwrap();
    assert!(why.contains(&format!("step {} (contact)", steps[0].id)), "{why}");
    let audit = app.core.store.audit_for_call("demo", "dead").await.unwrap();
    let cascade: Vec<_> = audit.iter().filter(|(a, _)| a == "writeback.dependants_dead").collect();
    assert_eq!(cascade.len(), 1, "{audit:?}");
    let detail = &cascade[0].1;
    assert_eq!(detail["parent_step"], steps[0].id, "the audit entry names the parent");
    assert_eq!(detail["steps"], json!([steps[1].id]));
    // The console's list says the same.
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/v1/calls?date=2026-11-23", app.addr))
        .bearer_auth(DEMO_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = list["calls"].as_array().unwrap().iter().find(|c| c["call_id"] == "dead").expect("listed");
    assert_eq!(row["status"], "failed", "{list}");

    // A replay of the call re-runs the parent and its dependants.
    app.hubspot.clear_property_faults();
    assert_eq!(
        app.core
            .store
            .requeue_call(
                None,
                "dead",
                callside::store::Requeue::Failed,
                "writeback.replay",
                &serde_json::json!({}),
                callside::clock::Clock::now(&app.clock)
            )
            .await
            .unwrap(),
        Some(2)
    );
    app.core.worker.wake();
    assert_eq!(app.wait_for_sync("dead").await, "synced");
    assert_eq!(contacts_with_phone(&app, phone), 1);
    assert_eq!(call_logs_for(&app, "dead"), 1);
    assert!(app.core.store.dead_letters(10).await.unwrap().is_empty());
    app.shutdown().await;
}

/// `callside dead-letters` and `callside replay --call` work on the store the config names.
#[tokio::test]
async fn the_replay_and_dead_letters_commands_work_on_the_store() {
    use callside::store::{AttemptResult, NewStep, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("callside.db").display())).await.unwrap();
    let t0: Timestamp = START.parse().unwrap();
    store.record_call_start("cli-1", "demo", None, "+12125550100", t0).await.unwrap();
    let step =
        NewStep { seq: 0, kind: "contact".into(), payload: json!({}), depends_on: None, idempotency_key: "k".into() };
    store.close_call_with_plan("cli-1", "demo", "end_call", &json!({}), &[step], t0).await.unwrap();
    let due = store.due_steps(t0, 1).await.unwrap().remove(0);
    store.record_attempt(&due, &AttemptResult::Dead { error: "boom".into() }, "t", &json!({}), t0).await.unwrap();
    store.close().await;

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_callside"))
            .args(args)
            .arg("--config")
            .arg(crate::helpers::repo_path("config/callside.toml"))
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["dead-letters"]);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("cli-1") && listed.contains("contact") && listed.contains("boom"), "{listed}");

    let out = run(&["replay", "--call", "unknown-call"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no call unknown-call"));

    let out = run(&["replay", "--call", "cli-1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1 step(s)"));
    let store = Store::open(&format!("sqlite://{}", dir.path().join("callside.db").display())).await.unwrap();
    assert_eq!(store.call("demo", "cli-1").await.unwrap().unwrap().sync_status, "pending");
    assert_eq!(String::from_utf8_lossy(&run(&["dead-letters"]).stdout).trim(), "no dead letters");
}

/// The account's budget is one token bucket shared by live reads and the write-back lane, charged
/// per request at the connector. With HubSpot's limit set to 10 per 10 s and 30 % reserved, a
/// backlog drains at exactly 7 requests per 10 s of the injected clock (counted at the emulator),
/// and a call that rings while the lane is exhausted still reads the caller's context at once.
#[tokio::test]
async fn under_a_saturated_backlog_a_live_read_gets_through_and_the_writeback_lane_keeps_to_its_share() {
    const SHARE: usize = 7; // 70 % of 10
    let mut tenant = demo_tenant();
    tenant.crm.requests_per_10s = Some(10);
    let app = spawn_app_with(server_file("[writeback]\nlive_reserve_percent = 30\n"), vec![tenant]).await;
    let budgets = app.core.budgets.clone();
    let sent = || budgets.sent("hubspot", "demo");
    let mut waits = budgets.waits();
    let mut progress = app.core.worker.progress();
    app.hubspot.reset_request_log();
    // A backlog with no live read: twelve finished calls straight into the outbox.
    let phones: Vec<String> = (0..12).map(|i| format!("+1415555{:04}", 4200 + i)).collect();
    for (i, phone) in phones.iter().enumerate() {
        let at = format!("2026-11-23T12:{:02}:00Z", i);
        crate::console::seed_call(&app, &format!("backlog-{i}"), phone, &at, "question answered").await;
    }
    // The lane runs dry and waits for the clock: exactly its share reached the CRM.
    tokio::time::timeout(std::time::Duration::from_secs(20), waits.changed()).await.expect("the lane ran out").unwrap();
    assert_eq!(app.hubspot.requests().len(), SHARE, "the first window: the lane's share, no more");
    assert_eq!(sent().writeback as usize, SHARE);
    assert!(app.core.store.pending_step_count().await.unwrap() > 0, "a backlog is waiting");

    // A call rings now, the clock standing still: its reads draw on the reserve and go at once.
    let mut c = app.connect("live-during-backlog", "+14155550134").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "the live read got through: {ctx}");
    let live = sent().live as usize;
    assert!(live > 0);
    assert_eq!(app.hubspot.requests().len(), SHARE + live, "every live request reached the CRM");
    assert_eq!(sent().writeback as usize, SHARE, "the lane did not move while the call read");
    let r = c.tool("end_call", json!({"summary": "Asked about opening hours."})).await;
    assert_eq!(r["structuredContent"]["saved"], true);

    // Window after window of the injected clock, the lane never sends more than its share.
    let mut windows = 0;
    let mut full_windows = 0;
    loop {
        let (seen, before) = (app.hubspot.requests().len(), sent().writeback);
        waits.borrow_and_update();
        app.clock.advance(SignedDuration::from_secs(10));
        let drained = async {
            loop {
                if waits.has_changed().unwrap() {
                    return false;
                }
                if app.core.store.pending_step_count().await.unwrap() == 0 {
                    return true;
                }
                tokio::select! {
                    // The lane ran dry again: this window is over.
                    _ = waits.changed() => return false,
                    _ = progress.changed() => {},
                }
            }
        };
        let done = tokio::time::timeout(std::time::Duration::from_secs(20), drained).await.expect("window ran");
        let at_crm = app.hubspot.requests().len() - seen;
        assert_eq!(at_crm as u64, sent().writeback - before, "only the lane talked to the CRM");
        assert!(at_crm <= SHARE, "window {windows}: {at_crm} write-back requests > {SHARE}");
        full_windows += usize::from(at_crm == SHARE);
        windows += 1;
        if done {
            break;
        }
        assert!(windows < 50, "the backlog never drained");
    }
    assert!(windows >= 3 && full_windows >= 2, "the backlog took several windows: {windows}, {full_windows} full");
    assert!(sent().writeback as usize <= SHARE * (windows + 1), "{:?} over {} windows", sent(), windows + 1);
    for (i, phone) in phones.iter().enumerate() {
        assert_eq!(app.wait_for_sync(&format!("backlog-{i}")).await, "synced");
        assert_eq!(contacts_with_phone(&app, phone), 1, "{phone}");
    }
    app.shutdown().await;
}
