//! Microsoft 365 calendar changes (issue 12): Graph subscriptions opened through the validation
//! handshake, change notifications applied through the events delta, the polling safety net,
//! renewal before expiry on the injected clock, and refused notifications. Every test waits on
//! the sync's progress signal (`CalendarSync::progress`), never on wall time.

use callside::sandbox::graph::{GraphMethod, GraphSubscription};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::inbound_calendar::{first_slot, hold_first, offered, progress, wait_progress};

const ALEX: &str = "alex@demo-salon.example";
const STRANGER: &str = "+16465550123";

async fn spawn_graph() -> TestApp {
    let mut tenant = demo_tenant();
    tenant.calendar.vendor = "microsoft".into();
    let app = spawn_app_with(server_file("[inbound.calendar]\npoll_interval_secs = 30\n"), vec![tenant]).await;
    wait_progress(&app, |p| p.started).await;
    app
}

/// The emulator's live subscription on a mailbox.
fn open_subscription(app: &TestApp, user: &str) -> GraphSubscription {
    app.graph.subscriptions().into_iter().rev().find(|s| s.user == user && !s.deleted).expect("a subscription is open")
}

fn graph_requests(app: &TestApp, outcome: &str) -> u64 {
    app.core.metrics.inbound_request_count("microsoft", outcome)
}

/// POSTs a raw body (and query) to the receiver.
async fn post_raw(app: &TestApp, query: &str, body: &str) -> (u16, Option<String>, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/inbound/microsoft{query}", app.addr))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, content_type, resp.text().await.unwrap())
}

fn item(subscription_id: &str, client_state: Option<&str>, change_type: &str) -> Value {
    let mut item = json!({
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": "2026-11-24T13:00:00.0000000+00:00",
        "changeType": change_type,
        "resource": format!("Users/{ALEX}/Events/AAMkAGI2"),
        "resourceData": {"@odata.type": "#Microsoft.Graph.Event", "id": "AAMkAGI2"},
        "tenantId": "5a2b4c1d-7e8f-4a90-b1c2-d3e4f5a6b7c8",
    });
    if let Some(state) = client_state {
        item["clientState"] = json!(state);
    }
    item
}

#[tokio::test]
async fn an_event_created_directly_in_outlook_leaves_find_slots_after_its_notification_and_our_own_booking_is_not_news()
{
    let app = spawn_graph().await;
    // At start every staff calendar was fully synced (delta) and subscribed, through the handshake.
    let sub = open_subscription(&app, ALEX);
    assert!(sub.notification_url.ends_with("/v1/inbound/microsoft"), "{sub:?}");
    assert_eq!(sub.resource, format!("users/{ALEX}/events"));
    assert_eq!(sub.client_state.as_deref().map(str::len), Some(48), "a random secret per subscription");
    assert_eq!(app.core.calendar_sync.subscription("demo", ALEX).unwrap().id, sub.id, "Graph's id is ours");
    assert!(app.graph.validations().iter().any(|v| v.passed && v.notification_url == sub.notification_url));
    assert!(app.core.calendar_sync.cursor("demo", ALEX).unwrap().contains("calendarView/delta"));
    let mut c = app.connect("ms-push-1", STRANGER).await;
    c.initialize().await;
    let (_, start, staff) = first_slot(&mut c).await;
    assert_eq!(staff, "alex");
    assert!(offered(&mut c, start, "alex").await, "offered, and alex's busy time is now cached");

    // The business books a walk-in straight into Outlook.
    let before = progress(&app);
    let now = app.core.clock.now();
    app.graph.insert_foreign_event(ALEX, start, start + SignedDuration::from_mins(30), "Walk-in");
    let after = wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    assert_eq!(after.foreign_changes, before.foreign_changes + 1, "exactly the new event");
    // It came by notification: the clock did not move, so no poll ran.
    assert_eq!(app.core.clock.now(), now);
    assert!(!offered(&mut c, start, "alex").await, "the slot is gone from the next find_slots");

    // Our own booking makes Graph notify too; it is recognized by our marker and changes nothing.
    let (hold_id, _) = hold_first(&mut c).await;
    let before = progress(&app);
    let booked = c.tool("book_slot", json!({"hold_id": hold_id, "name": "Pat Doe"})).await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    let after = wait_progress(&app, |p| p.own_changes > before.own_changes).await;
    assert_eq!(after.foreign_changes, before.foreign_changes, "our own event is not a foreign change");
    assert_eq!(after.flagged, before.flagged);
    app.shutdown().await;
}

#[tokio::test]
async fn a_missed_graph_notification_is_caught_by_the_next_poll() {
    let app = spawn_graph().await;
    let mut c = app.connect("ms-missed", STRANGER).await;
    c.initialize().await;
    let (_, start, _) = first_slot(&mut c).await;
    assert!(offered(&mut c, start, "alex").await, "offered, and alex's busy time is now cached");
    let before = progress(&app);
    app.graph.drop_next_notifications(1);
    app.graph.insert_foreign_event(ALEX, start, start + SignedDuration::from_mins(30), "Phone booking");
    assert_eq!(app.graph.notification_stats().dropped(), 1, "the notification was lost");
    assert_eq!(progress(&app).foreign_changes, before.foreign_changes, "nothing told us yet");

    // The poll interval passes on the injected clock: the delta finds the event.
    app.clock.advance(SignedDuration::from_secs(30));
    wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    assert!(!offered(&mut c, start, "alex").await);
    app.shutdown().await;
}

#[tokio::test]
async fn an_expired_graph_delta_token_means_a_full_resync() {
    let app = spawn_graph().await;
    let mut c = app.connect("ms-410", STRANGER).await;
    c.initialize().await;
    let (_, start, _) = first_slot(&mut c).await;
    assert!(offered(&mut c, start, "alex").await);
    let cursor = app.core.calendar_sync.cursor("demo", ALEX).unwrap();
    let deltas = app.graph.request_count(GraphMethod::Delta);
    let before = progress(&app);
    app.graph.expire_delta_tokens();
    app.graph.insert_foreign_event(ALEX, start, start + SignedDuration::from_mins(30), "Direct");
    wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    // One delta answered 410, the full sync listed the window again.
    assert_eq!(app.graph.request_count(GraphMethod::Delta), deltas + 2);
    assert_ne!(app.core.calendar_sync.cursor("demo", ALEX).unwrap(), cursor);
    assert!(!offered(&mut c, start, "alex").await);
    app.shutdown().await;
}

#[tokio::test]
async fn graph_subscriptions_are_replaced_before_they_expire_on_the_injected_clock() {
    let app = spawn_graph().await;
    let old = app.core.calendar_sync.subscription("demo", ALEX).expect("subscribed at start");
    let emulated = open_subscription(&app, ALEX);
    assert_eq!(emulated.id, old.id);
    assert_eq!(emulated.expiration, old.expires_at);
    // Defaults: a day's subscription (within Graph's 10,080 minutes), replaced an hour early.
    assert_eq!(old.expires_at, START.parse::<Timestamp>().unwrap() + SignedDuration::from_hours(24));

    let before = progress(&app);
    app.clock.set(old.expires_at - SignedDuration::from_hours(1) - SignedDuration::from_secs(1));
    let p = wait_progress(&app, |p| p.syncs >= before.syncs + 2).await;
    assert_eq!(p.renewals, 0, "not yet due");
    app.clock.advance(SignedDuration::from_secs(1));
    wait_progress(&app, |p| p.renewals >= 2).await; // alex's and sam's calendars
    assert!(app.core.clock.now() < old.expires_at, "renewed before expiry");
    let new = app.core.calendar_sync.subscription("demo", ALEX).unwrap();
    assert_ne!(new.id, old.id);
    assert!(new.expires_at > old.expires_at);
    let subs = app.graph.subscriptions();
    assert!(subs.iter().find(|s| s.id == old.id).unwrap().deleted, "the replaced subscription is deleted");
    assert!(!subs.iter().find(|s| s.id == new.id).unwrap().deleted);
    assert_eq!(app.graph.validations().iter().filter(|v| v.passed).count(), 8, "each one validated, both URLs");

    // The new subscription carries changes.
    let before = progress(&app);
    let at = app.core.clock.now() + SignedDuration::from_hours(3);
    app.graph.insert_foreign_event(ALEX, at, at + SignedDuration::from_mins(30), "Direct");
    wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    app.shutdown().await;
}

#[tokio::test]
async fn the_validation_handshake_echoes_the_decoded_token_as_plain_text() {
    let app = spawn_graph().await;
    let counted = graph_requests(&app, "validation");
    let query = "?validationToken=Validation%3A%20Testing%20client%20application%20reachability%20for%20subscription%20Request-Id%3A%20b9f8a2c4";
    let (status, content_type, body) = post_raw(&app, query, "").await;
    assert_eq!(status, 200);
    assert!(content_type.unwrap().starts_with("text/plain"));
    assert_eq!(body, "Validation: Testing client application reachability for subscription Request-Id: b9f8a2c4");
    assert_eq!(graph_requests(&app, "validation"), counted + 1);
    // Markup is echoed as plain text, never HTML.
    let (status, content_type, body) = post_raw(&app, "?validationToken=%3Cscript%3E", "").await;
    assert_eq!((status, body.as_str()), (200, "<script>"));
    assert!(content_type.unwrap().starts_with("text/plain"));
    // An empty token is malformed.
    let malformed = graph_requests(&app, "malformed");
    let (status, _, body) = post_raw(&app, "?validationToken=", "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(graph_requests(&app, "malformed"), malformed + 1);
    app.shutdown().await;
}

#[tokio::test]
async fn forged_unknown_stale_and_malformed_graph_notifications_are_refused_counted_and_change_nothing() {
    let app = spawn_graph().await;
    let sub = open_subscription(&app, ALEX);
    let secret = sub.client_state.clone().expect("we set a clientState");
    let good = json!({"value": [item(&sub.id, Some(&secret), "created")]}).to_string();
    let cases: Vec<(&str, u16, &str, String)> = vec![
        (
            "unknown subscription",
            404,
            "unknown_channel",
            json!({"value": [item("7f105c7d-2dc5-4530-97cd-4e7ae6534c07", Some(&secret), "created")]}).to_string(),
        ),
        (
            "wrong clientState",
            401,
            "forged",
            json!({"value": [item(&sub.id, Some("0123456789abcdef"), "created")]}).to_string(),
        ),
        ("no clientState", 401, "forged", json!({"value": [item(&sub.id, None, "updated")]}).to_string()),
        (
            "a forged item beside a good one",
            401,
            "forged",
            json!({"value": [item(&sub.id, Some(&secret), "created"), item(&sub.id, Some("x"), "created")]})
                .to_string(),
        ),
        ("unknown changeType", 400, "malformed", json!({"value": [item(&sub.id, Some(&secret), "moved")]}).to_string()),
        (
            "no subscription id",
            400,
            "malformed",
            json!({"value": [{"clientState": secret, "changeType": "created"}]}).to_string(),
        ),
        ("not a collection", 400, "malformed", json!({"value": 3}).to_string()),
        ("empty collection", 400, "malformed", json!({"value": []}).to_string()),
        ("not JSON", 400, "malformed", "changed!".to_owned()),
    ];
    let before = progress(&app);
    let deltas = app.graph.request_count(GraphMethod::Delta);
    for (what, status, outcome, body) in cases {
        let counted = graph_requests(&app, outcome);
        let (got, _, answer) = post_raw(&app, "", &body).await;
        assert_eq!(got, status, "{what}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"], outcome, "{what}");
        assert_eq!(graph_requests(&app, outcome), counted + 1, "{what} is counted");
    }
    assert_eq!(progress(&app), before, "no sync ran");
    assert_eq!(app.graph.request_count(GraphMethod::Delta), deltas, "nothing was read");

    // A good one is a hint: 202 at once, then one incremental sync that finds nothing new.
    let (status, _, answer) = post_raw(&app, "", &good).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["calendars"], 1);
    wait_progress(&app, |p| p.syncs > before.syncs).await;
    // The same notification again (a replay) costs one more incremental sync and changes nothing.
    let (status, _, _) = post_raw(&app, "", &good).await;
    assert_eq!(status, 202);
    let p = wait_progress(&app, |p| p.syncs > before.syncs + 1).await;
    assert_eq!((p.foreign_changes, p.flagged), (before.foreign_changes, before.flagged));
    assert_eq!(app.graph.request_count(GraphMethod::Delta), deltas + 2, "incremental: one page each");

    // A subscription past its expiration (its renewal failed) is stale.
    app.graph.fail_next(503, "ServiceNotAvailable", 10);
    app.clock.set(sub.expiration + SignedDuration::from_secs(1));
    let stale = graph_requests(&app, "stale");
    let (status, _, answer) = post_raw(&app, "", &good).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["error"], "stale");
    assert_eq!(graph_requests(&app, "stale"), stale + 1);
    app.shutdown().await;
}

#[test]
fn a_subscription_lifetime_beyond_graphs_maximum_is_refused_for_a_microsoft_tenant() {
    use callside::config::{Config, Overrides};
    use std::path::{Path, PathBuf};
    let parts = |vendor: &str, ttl: u64| {
        let mut tenant = demo_tenant();
        tenant.calendar.vendor = vendor.into();
        Config::from_parts(
            Path::new("callside.toml"),
            server_file(&format!("[inbound.calendar]\nsubscription_ttl_secs = {ttl}\n")),
            vec![(PathBuf::from("demo.toml"), tenant)],
            &Overrides::default(),
            PathBuf::from("data"),
        )
    };
    // Eight days: more than Graph's 10,080 minutes.
    let err = parts("microsoft", 8 * 86_400).unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].key, "inbound.calendar.subscription_ttl_secs");
    assert!(err.issues[0].reason.contains("10,080 minutes"), "{err}");
    // Exactly the maximum is fine, and Google's channels are not bound by Graph's limit.
    assert!(parts("microsoft", 10_080 * 60).is_ok());
    assert!(parts("google", 8 * 86_400).is_ok());
}

/// A lifecycle notification as Graph sends it: `lifecycleEvent` instead of `changeType`.
fn lifecycle_item(subscription_id: &str, client_state: Option<&str>, event: &str) -> Value {
    let mut item = json!({
        "lifecycleEvent": event,
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": "2026-11-24T13:00:00.0000000+00:00",
        "resource": format!("users/{ALEX}/events"),
        "resourceData": {"@odata.type": "#microsoft.graph.subscription", "id": subscription_id},
        "organizationId": "5a2b4c1d-7e8f-4a90-b1c2-d3e4f5a6b7c8",
    });
    if let Some(state) = client_state {
        item["clientState"] = json!(state);
    }
    item
}

/// Lifecycle notifications (issue 12), sent by the emulator to the `lifecycleNotificationUrl`
/// our subscriptions set: `reauthorizationRequired` renews the subscription now,
/// `subscriptionRemoved` opens a new one and runs a delta sync, `missed` runs a delta sync that
/// catches the change whose notification was lost.
#[tokio::test]
async fn graph_lifecycle_notifications_renew_recreate_and_resync() {
    let app = spawn_graph().await;
    let first = open_subscription(&app, ALEX);
    assert_eq!(first.lifecycle_notification_url.as_deref(), Some(first.notification_url.as_str()));

    let before = progress(&app);
    assert!(app.graph.send_lifecycle_event(&first.id, "reauthorizationRequired"));
    let p = wait_progress(&app, |p| p.lifecycle > before.lifecycle).await;
    assert_eq!(p.renewals, before.renewals + 1, "renewed at once, not at the renewal time");
    assert_eq!(p.syncs, before.syncs, "a reauthorization needs no sync");
    let second = app.core.calendar_sync.subscription("demo", ALEX).unwrap();
    assert_ne!(second.id, first.id);
    assert!(app.graph.subscriptions().iter().find(|s| s.id == first.id).unwrap().deleted);

    // Graph removes the new one; an event is created meanwhile and notifies nobody.
    let before = progress(&app);
    assert!(app.graph.send_lifecycle_event(&second.id, "subscriptionRemoved"));
    let p = wait_progress(&app, |p| p.lifecycle > before.lifecycle).await;
    assert_eq!(p.renewals, before.renewals + 1);
    assert!(p.syncs > before.syncs, "the gap is caught up by a delta sync");
    let third = app.core.calendar_sync.subscription("demo", ALEX).unwrap();
    assert!(third.id != second.id && third.id != first.id);
    assert!(!app.graph.subscriptions().iter().find(|s| s.id == third.id).unwrap().deleted);

    // A change notification is lost; Graph says so with `missed`: the sync finds the event.
    let before = progress(&app);
    let stats = app.graph.notification_stats();
    app.graph.drop_next_notifications(1);
    let at = app.core.clock.now() + SignedDuration::from_hours(3);
    app.graph.insert_foreign_event(ALEX, at, at + SignedDuration::from_mins(30), "Direct");
    assert_eq!(stats.dropped(), 1);
    assert!(app.graph.send_lifecycle_event(&third.id, "missed"));
    let p = wait_progress(&app, |p| p.lifecycle > before.lifecycle).await;
    assert!(p.foreign_changes > before.foreign_changes, "{p:?}");
    assert_eq!(p.renewals, before.renewals, "nothing to renew");
    assert_eq!(app.core.calendar_sync.subscription("demo", ALEX).unwrap().id, third.id);

    app.shutdown().await;
}

/// Bad lifecycle notifications are refused, counted and change nothing, like change
/// notifications: a wrong or missing `clientState`, an unknown subscription, an unknown event,
/// an item that is both a change and a lifecycle notification.
#[tokio::test]
async fn bad_graph_lifecycle_notifications_are_refused_counted_and_change_nothing() {
    let app = spawn_graph().await;
    let sub = open_subscription(&app, ALEX);
    let secret = sub.client_state.clone().expect("we set a clientState");
    let mut both = lifecycle_item(&sub.id, Some(&secret), "missed");
    both["changeType"] = json!("created");
    let cases: Vec<(&str, u16, &str, Value)> = vec![
        ("wrong clientState", 401, "forged", lifecycle_item(&sub.id, Some("0123456789abcdef"), "subscriptionRemoved")),
        ("no clientState", 401, "forged", lifecycle_item(&sub.id, None, "reauthorizationRequired")),
        (
            "unknown subscription",
            404,
            "unknown_channel",
            lifecycle_item("7f105c7d-2dc5-4530-97cd-4e7ae6534c07", Some(&secret), "missed"),
        ),
        ("unknown lifecycleEvent", 400, "malformed", lifecycle_item(&sub.id, Some(&secret), "subscriptionPaused")),
        ("changeType and lifecycleEvent", 400, "malformed", both),
    ];
    let before = progress(&app);
    let subscriptions = app.graph.subscriptions().len();
    for (what, status, outcome, item) in cases {
        let counted = graph_requests(&app, outcome);
        let (got, _, answer) = post_raw(&app, "", &json!({"value": [item]}).to_string()).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["error"], outcome, "{what}");
        assert_eq!(graph_requests(&app, outcome), counted + 1, "{what} is counted");
    }
    assert_eq!(progress(&app), before, "nothing renewed or synced");
    assert_eq!(app.graph.subscriptions().len(), subscriptions, "no subscription opened");
    assert_eq!(app.core.calendar_sync.subscription("demo", ALEX).unwrap().id, sub.id);
    app.shutdown().await;
}
