//! CalDAV through the whole service, on a real Radicale 3.9.0 (`callside::sandbox::radicale`):
//! seed 002's calls 5–7 (booking with the service's duration, the business as organizer and
//! VALARM reminders; reschedule modifies the same resource under its ETag; cancel deletes it and
//! — Radicale has no scheduling — notifies the customer through the tenant's signed webhook),
//! and the two races of the commit protocol, triggered at the exact point by the commit hook.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use callside::booking::{CommitHook, CommitHookArgs, CommitPoint};
use callside::config::{NotificationsSection, TenantFile};
use callside::connectors::ConnectorError;
use callside::connectors::calendar::caldav::{CalDavAuth, CalDavConnector, ical_utc, parse_calendar, parse_duration};
use callside::connectors::calendar::{CalendarConnector, Interval};
use callside::sandbox::radicale;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::{TestApp, demo_tenant, server_file, spawn_app_with};

const SECRET_ENV: &str = "CALLSIDE_TEST_WEBHOOK_SECRET";
const ORGANIZER: &str = "bookings@demo-salon.example";
const PASSWORD_ENV: &str = "CALLSIDE_TEST_CALDAV_PASSWORD";
/// Radicale (`--auth-type none`) takes any Basic user; collections live under the user's own
/// principal collection, which it creates on first use.
const USER: &str = "callside";

fn connector(base: url::Url) -> CalDavConnector {
    let password = std::env::var(PASSWORD_ENV).expect(".cargo/config.toml sets the test password");
    let auth = CalDavAuth::Basic { username: USER.into(), password: password.into() };
    CalDavConnector::new(base, auth, callside::connectors::http_client())
}

/// The demo tenant on Radicale: fresh collections for Alex and Sam, the business as organizer,
/// and (when given) a notification webhook.
pub(crate) async fn caldav_tenant(webhook: Option<String>) -> (TenantFile, CalDavConnector, String) {
    let base = url::Url::parse(&radicale::url()).unwrap();
    let dav = connector(base);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let alex = format!("{USER}/{run}-alex/");
    let sam = format!("{USER}/{run}-sam/");
    dav.create_calendar(&alex, "Alex").await.unwrap();
    dav.create_calendar(&sam, "Sam").await.unwrap();
    let mut t = demo_tenant();
    t.calendar.vendor = "caldav".into();
    t.calendar.base_url = radicale::url();
    t.calendar.organizer_email = Some(ORGANIZER.into());
    t.calendar.username = Some(USER.into());
    t.calendar.password_env = Some(PASSWORD_ENV.into());
    t.staff[0].calendar_ids = vec![alex.clone()];
    t.staff[1].calendar_ids = vec![sam];
    match webhook {
        Some(url) => {
            t.notifications = Some(NotificationsSection { webhook_url: url, webhook_secret_env: SECRET_ENV.into() })
        }
        None => t.schedule.notify_on_cancel = false,
    }
    (t, dav, alex)
}

/// A local webhook receiver: every POST's headers and body go to the channel; answers 204.
async fn webhook_receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    webhook_receiver_answering(axum::http::StatusCode::NO_CONTENT).await
}

/// A receiver that records every POST and answers `status`.
async fn webhook_receiver_answering(
    status: axum::http::StatusCode,
) -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = axum::Router::new().route(
        "/hooks/callside",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/hooks/callside"), rx)
}

/// The raw iCalendar text of a resource.
async fn raw(dav: &CalDavConnector, calendar: &str, id: &str) -> String {
    let resp = reqwest::Client::new()
        .get(dav.resource_url(calendar, id).unwrap())
        .basic_auth(USER, Some("any"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.text().await.unwrap()
}

fn week() -> Interval {
    Interval::new("2026-11-23T00:00:00Z".parse().unwrap(), "2026-12-07T00:00:00Z".parse().unwrap())
}

async fn book_color(app: &TestApp, call_id: &str, slot_index: usize) -> (Value, Value) {
    let mut c = app.connect(call_id, "+14155550134").await;
    c.initialize().await;
    let slots = c.tool("find_slots", json!({"service": "colour"})).await;
    let slot = slots["structuredContent"]["slots"][slot_index].clone();
    let hold = c.tool("hold_slot", json!({"service": "color", "start": slot["start"]})).await;
    assert_eq!(hold["isError"], false, "{hold}");
    let booked = c
        .tool(
            "book_slot",
            json!({"hold_id": hold["structuredContent"]["hold_id"], "name": "Ana López", "email": "ana.lopez@example.com"}),
        )
        .await;
    c.tool("end_call", json!({"summary": "Booking attempt."})).await;
    (booked, slot)
}

#[tokio::test]
async fn seed_002_calls_5_to_7_on_radicale() {
    let (hook_url, mut hooks) = webhook_receiver().await;
    let (tenant, dav, alex) = caldav_tenant(Some(hook_url)).await;
    let app = spawn_app_with(server_file(""), vec![tenant]).await;

    // Call 5: booking.
    let (booked, slot) = book_color(&app, "dav-5", 1).await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    let event_id = booked["structuredContent"]["event_id"].as_str().unwrap().to_owned();
    let stored = dav.get_event(&alex, &event_id).await.unwrap();
    let start: jiff::Timestamp = slot["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(stored.start, start);
    assert_eq!(stored.end.duration_since(stored.start), jiff::SignedDuration::from_mins(120), "Color lasts 120 min");
    assert_eq!(stored.call_id.as_deref(), Some("dav-5"));
    let ics = parse_calendar(&raw(&dav, &alex, &event_id).await).unwrap();
    let vevent = ics.components("VEVENT").next().unwrap();
    assert_eq!(vevent.property("UID").unwrap().value, event_id, "the resource is named by its UID");
    let organizer = vevent.property("ORGANIZER").expect("an organizer");
    assert_eq!(organizer.value.to_ascii_lowercase(), format!("mailto:{ORGANIZER}"));
    assert_eq!(organizer.param("CN"), Some("Demo Salon"));
    // Radicale stores the triggers normalized (-PT1440M comes back as -P1D): compare durations.
    let mut before_minutes: Vec<i64> = vevent
        .components("VALARM")
        .map(|a| -parse_duration(&a.property("TRIGGER").unwrap().value).unwrap().as_mins())
        .collect();
    before_minutes.sort();
    assert_eq!(before_minutes, vec![60, 1440], "the tenant's reminders");
    assert!(vevent.components("VALARM").all(|a| a.property("ACTION").unwrap().value == "DISPLAY"));
    let etag_before = stored.etag.clone().expect("Radicale sends ETags");

    // Call 6: reschedule in place.
    let mut c = app.connect("dav-6", "+14155550134").await;
    c.initialize().await;
    let found = c.tool("find_appointments", json!({})).await;
    assert_eq!(found["structuredContent"]["appointments"][0]["appointment_id"], json!(event_id), "{found}");
    let later = c.tool("find_slots", json!({"service": "color", "day": "2026-11-25"})).await;
    let target = later["structuredContent"]["slots"][0].clone();
    let moved = c.tool("reschedule_appointment", json!({"appointment_id": event_id, "start": target["start"]})).await;
    assert_eq!(moved["isError"], false, "{moved}");
    let events = dav.list_events(&alex, week()).await.unwrap();
    assert_eq!(events.len(), 1, "modified, not deleted-and-recreated: {events:?}");
    assert_eq!(events[0].id, event_id, "the same resource");
    let new_start: jiff::Timestamp = target["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(events[0].start, new_start);
    let after = dav.get_event(&alex, &event_id).await.unwrap();
    assert_ne!(after.etag.as_deref(), Some(etag_before.as_str()), "a new version of the resource");
    let text = raw(&dav, &alex, &event_id).await;
    assert!(text.contains(&format!("DTSTART:{}", ical_utc(new_start))), "{text}");
    assert!(text.contains("SEQUENCE:1"), "{text}");
    // The service's write was conditional: the pre-move ETag no longer opens the resource.
    let stale =
        dav.move_event(&alex, &event_id, start, start + jiff::SignedDuration::from_mins(120), Some(&etag_before));
    assert!(matches!(stale.await, Err(ConnectorError::PreconditionFailed(_))));

    // Call 7: cancel → the resource is deleted and the customer notified by the signed webhook.
    let cancelled = c.tool("cancel_appointment", json!({"appointment_id": event_id, "reason": "sick"})).await;
    assert_eq!(cancelled["structuredContent"]["cancelled"], true, "{cancelled}");
    assert_eq!(cancelled["structuredContent"]["notified"], "webhook", "{cancelled}");
    assert!(matches!(dav.get_event(&alex, &event_id).await, Err(ConnectorError::NotFound(_))));
    let (headers, body) =
        tokio::time::timeout(Duration::from_secs(10), hooks.recv()).await.expect("webhook called").unwrap();
    let signature = headers.get("x-callside-signature").unwrap().to_str().unwrap();
    let secret = std::env::var(SECRET_ENV).expect(".cargo/config.toml sets the test secret");
    assert!(callside::notify::verify(secret.as_bytes(), signature, &body), "signed with the tenant's secret");
    assert!(!callside::notify::verify(b"another secret of 16+ bytes", signature, &body));
    assert!(headers.get("x-callside-event-id").is_some());
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "appointment.cancelled");
    assert_eq!(event["appointment_id"], json!(event_id));
    assert_eq!(event["service"], "Color");
    assert_eq!(event["start"], json!(new_start.to_string()));
    assert_eq!(event["customer"]["email"], "ana.lopez@example.com");
    assert_eq!(event["customer"]["phone"], "+14155550134");
    assert!(hooks.try_recv().is_err(), "exactly one notification");
    assert_eq!(c.tool("find_appointments", json!({})).await["structuredContent"]["appointments"], json!([]));
    app.shutdown().await;
}

/// A customer's own booking, PUT by another client straight into the collection.
async fn put_direct(calendar_url: url::Url, slot: Interval) {
    let uid = uuid::Uuid::new_v4();
    let ics = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Phone app//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261101T000000Z\r\nDTSTART:{}\r\nDTEND:{}\r\nSUMMARY:Booked directly\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        ical_utc(slot.start),
        ical_utc(slot.end)
    );
    let resp = reqwest::Client::new()
        .put(calendar_url.join(&format!("direct-{uid}.ics")).unwrap())
        .basic_auth(USER, Some("any"))
        .header("Content-Type", "text/calendar; charset=utf-8")
        .body(ics)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// A hook that books the slot directly, once, at `at`.
fn direct_booking_at(at: CommitPoint, dav_base: url::Url) -> (CommitHook, Arc<AtomicBool>) {
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let hook: CommitHook = Arc::new(move |args: CommitHookArgs| {
        let flag = flag.clone();
        let base = dav_base.clone();
        Box::pin(async move {
            if args.point == at && !flag.swap(true, Ordering::SeqCst) {
                let dav = connector(base);
                put_direct(dav.collection_url(&args.calendar_id).unwrap(), args.slot).await;
            }
        })
    });
    (hook, fired)
}

#[tokio::test]
async fn on_radicale_a_direct_booking_during_the_commit_wins() {
    let (tenant, dav, alex) = caldav_tenant(None).await;
    let app = spawn_app_with(server_file(""), vec![tenant]).await;
    let base = url::Url::parse(&radicale::url()).unwrap();

    for (point, call) in [(CommitPoint::BeforeRecheck, "race-recheck"), (CommitPoint::BeforeVerify, "race-verify")] {
        let (hook, fired) = direct_booking_at(point, base.clone());
        app.core.booking.set_commit_hook(Some(hook));
        let (booked, slot) = book_color(&app, call, 0).await;
        app.core.booking.set_commit_hook(None);
        assert!(fired.load(Ordering::SeqCst), "the hook ran at {point:?}");
        assert_eq!(booked["isError"], true, "{point:?}: {booked}");
        assert_eq!(booked["structuredContent"]["error"], "slot_taken", "{point:?}: {booked}");
        let alternatives = booked["structuredContent"]["alternatives"].as_array().unwrap();
        assert!(!alternatives.is_empty(), "{point:?}: alternatives offered");
        assert!(alternatives.iter().all(|a| a["start"] != slot["start"]), "{point:?}: not the taken time");
        // Only the customer's own event remains at that time.
        let start: jiff::Timestamp = slot["start"].as_str().unwrap().parse().unwrap();
        let at = Interval::new(start, start + jiff::SignedDuration::from_mins(120));
        let events = dav.list_events(&alex, at).await.unwrap();
        assert_eq!(events.len(), 1, "{point:?}: {events:?}");
        assert_eq!(events[0].summary.as_deref(), Some("Booked directly"));
        assert_eq!(events[0].call_id, None);
        let audit = app.core.store.audit_for_call("demo", call).await.unwrap();
        let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
        match point {
            CommitPoint::BeforeRecheck => {
                assert!(!actions.contains(&"calendar.create_event"), "yielded before creating: {actions:?}")
            }
            CommitPoint::BeforeVerify => {
                assert!(actions.contains(&"calendar.create_event"), "{actions:?}");
                let withdrawn = audit.iter().find(|(a, _)| a == "calendar.withdraw_event").expect("withdrawn");
                assert_eq!(withdrawn.1["ok"], true, "ours was deleted: {audit:?}");
            }
        }
        assert!(app.core.store.bookings_for_call("demo", call).await.unwrap().is_empty(), "no booking recorded");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn on_radicale_a_failing_webhook_does_not_undo_the_cancellation_and_the_caller_is_told() {
    let (hook_url, mut hooks) = webhook_receiver_answering(axum::http::StatusCode::SERVICE_UNAVAILABLE).await;
    let (tenant, dav, alex) = caldav_tenant(Some(hook_url)).await;
    let app = spawn_app_with(server_file(""), vec![tenant]).await;
    let (booked, _) = book_color(&app, "dav-hook-1", 0).await;
    let event_id = booked["structuredContent"]["event_id"].as_str().unwrap().to_owned();
    let mut c = app.connect("dav-hook-2", "+14155550134").await;
    c.initialize().await;
    let cancelled = c.tool("cancel_appointment", json!({"appointment_id": event_id})).await;
    assert_eq!(cancelled["structuredContent"]["cancelled"], true, "{cancelled}");
    assert_eq!(cancelled["structuredContent"]["notified"], "failed", "{cancelled}");
    let said = cancelled["content"][0]["text"].as_str().unwrap();
    assert!(said.contains("couldn't send the confirmation"), "{said}");
    assert!(matches!(dav.get_event(&alex, &event_id).await, Err(ConnectorError::NotFound(_))), "still cancelled");
    // A 503 is transient: one retry, same event id, then it is given up and audited.
    let (first, _) = hooks.recv().await.unwrap();
    let (second, _) = hooks.recv().await.unwrap();
    assert_eq!(first.get("x-callside-event-id"), second.get("x-callside-event-id"));
    assert!(hooks.try_recv().is_err(), "two attempts, no more");
    let audit = app.core.store.audit_for_call("demo", "dav-hook-2").await.unwrap();
    let hook = audit.iter().find(|(a, _)| a == "notify.webhook").expect("audited");
    assert_eq!(hook.1["ok"], false, "{audit:?}");
    app.shutdown().await;
}
