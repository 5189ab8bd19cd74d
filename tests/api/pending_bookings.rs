//! A calendar that is unreachable during `book_slot` (issue 7, item 7): the caller hears it is NOT
//! confirmed, the booking is recorded durably and its slot kept, and the retrier (driven by the
//! manual clock, observed through its progress signal) confirms it exactly once, or escalates
//! to a staff task when it cannot — also across a restart.

use std::time::Duration;

use callside::clock::Clock;
use callside::connectors::calendar::Interval;
use callside::sandbox::google_calendar::GoogleCalendarMethod;
use callside::sandbox::hubspot::ObjectType;
use callside::store::PendingBookingRow;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::helpers::{Client, TestApp, demo_tenant, server_file, spawn_app, spawn_app_in};

const ALEX: &str = "alex@demo-salon.example";
const ANA: &str = "+14155550134";

/// Holds a Color slot for Ana, takes the calendar down, asks to book; returns the answer, the
/// slot and the pending key. The call is ended afterwards.
pub(crate) async fn book_while_calendar_down(app: &TestApp, call_id: &str) -> (Value, Interval, String) {
    let (r, slot, key, c) = book_while_calendar_down_live(app, call_id).await;
    let mut c = c;
    c.tool("end_call", json!({"summary": "Tried to book a color."})).await;
    (r, slot, key)
}

/// As [`book_while_calendar_down`], with the call left open.
async fn book_while_calendar_down_live(app: &TestApp, call_id: &str) -> (Value, Interval, String, Client) {
    let mut c = app.connect(call_id, ANA).await;
    c.initialize().await;
    let slots = c.tool("find_slots", json!({"service": "color"})).await;
    let slot = slots["structuredContent"]["slots"][1].clone();
    let hold = c.tool("hold_slot", json!({"service": "color", "start": slot["start"]})).await;
    assert_eq!(hold["isError"], false, "{hold}");
    app.google.set_down(true);
    let r = c
        .tool("book_slot", json!({"hold_id": hold["structuredContent"]["hold_id"], "email": "ana.lopez@example.com"}))
        .await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["booked"], false, "{r}");
    assert_eq!(r["structuredContent"]["pending"], true, "{r}");
    let said = r["content"][0]["text"].as_str().unwrap();
    assert!(said.contains("NOT confirmed"), "the caller is told clearly: {said}");
    let start: Timestamp = slot["start"].as_str().unwrap().parse().unwrap();
    let key = r["structuredContent"]["pending_id"].as_str().unwrap().to_owned();
    (r, Interval::new(start, start + SignedDuration::from_mins(120)), key, c)
}

/// Waits (on the retrier's progress signal, never a sleep) until the row satisfies `done`.
pub(crate) async fn wait_pending(
    app: &TestApp,
    key: &str,
    done: impl Fn(&PendingBookingRow) -> bool,
) -> PendingBookingRow {
    let mut progress = app.core.booking.pending.subscribe();
    let wait = async {
        loop {
            let row = app.core.store.pending_booking(key).await.unwrap().expect("recorded");
            if done(&row) {
                return row;
            }
            progress.changed().await.expect("retrier alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("pending booking progressed in time")
}

async fn slot_is_blocked(app: &TestApp, slot: Interval) -> bool {
    !app.core.booking.ledger.busy("demo", "alex", slot, app.clock.now()).await.unwrap().is_empty()
}

#[tokio::test]
async fn a_pending_booking_is_confirmed_exactly_once_when_the_calendar_returns() {
    let app = spawn_app().await;
    let (_, slot, key) = book_while_calendar_down(&app, "pend-ok").await;
    let row = app.core.store.pending_booking(&key).await.unwrap().expect("recorded durably");
    assert_eq!(row.status, "pending");
    assert_eq!(row.start_at, slot.start.as_millisecond());
    assert!(slot_is_blocked(&app, slot).await, "the hold outlives the call");
    assert!(app.google.events(ALEX).is_empty());
    assert!(app.core.store.bookings_for_call("demo", "pend-ok").await.unwrap().is_empty(), "nothing promised");

    // The calendar is back, but the first retry's verify fails after its create succeeded.
    app.google.set_down(false);
    app.google.fail_next_for(GoogleCalendarMethod::List, 503, "backendError", 1);
    app.clock.advance(SignedDuration::from_secs(15));
    let row = wait_pending(&app, &key, |r| r.attempts >= 1).await;
    assert_eq!(row.status, "pending", "not confirmed without the verify: {row:?}");
    assert_eq!(app.google.events(ALEX).len(), 1, "the event exists already");

    // The next retry finds our event (same derived id), verifies it and confirms.
    app.clock.advance(SignedDuration::from_secs(15));
    let row = wait_pending(&app, &key, |r| r.status == "confirmed").await;
    let events = app.google.events(ALEX);
    assert_eq!(events.len(), 1, "exactly one event");
    assert_eq!(events[0].id, row.event_id);
    assert_eq!(events[0].start, slot.start);
    assert_eq!(app.google.request_count(GoogleCalendarMethod::Insert), 1, "created once");
    let bookings = app.core.store.bookings_for_call("demo", "pend-ok").await.unwrap();
    assert_eq!(bookings.len(), 1);
    assert_eq!(bookings[0].status, "confirmed");
    assert_eq!(bookings[0].event_id, row.event_id);
    // The call had ended: the appointment joins its write-back as a step after the contact.
    assert_eq!(app.wait_for_sync("pend-ok").await, "synced");
    let steps = app.core.store.steps_for_call("demo", "pend-ok").await.unwrap();
    let appointment = steps.iter().find(|s| s.kind == "appointment").expect("an appointment step");
    assert_eq!(appointment.status, "done", "{appointment:?}");
    let ana = app.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Ana")).unwrap();
    assert_eq!(app.hubspot.meetings_for_contact(&ana.id).len(), 1, "the appointment is in the CRM");
    // More time passing changes nothing.
    app.clock.advance(SignedDuration::from_hours(2));
    app.core.pending_pass().await.unwrap();
    assert_eq!(app.google.events(ALEX).len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_booking_never_confirmed_becomes_a_staff_task_for_the_owner_and_frees_the_slot() {
    let app = spawn_app().await;
    let ana = app.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Ana")).unwrap();
    let owner = app.hubspot.insert_owner("Rita", "Reyes", "rita@demo-salon.example");
    app.hubspot.rep_edit(ObjectType::Contacts, &ana.id, "hubspot_owner_id", &owner, "u-1");
    let (_, slot, key) = book_while_calendar_down(&app, "pend-never").await;

    // Retries fail while the calendar stays down.
    app.clock.advance(SignedDuration::from_secs(15));
    let row = wait_pending(&app, &key, |r| r.attempts >= 1).await;
    assert_eq!(row.status, "pending");
    assert!(slot_is_blocked(&app, slot).await);

    // Past the deadline (slot start minus minimum notice): a staff task, the slot released.
    let deadline = Timestamp::from_millisecond(row.deadline_at).unwrap();
    assert_eq!(deadline, slot.start - SignedDuration::from_mins(60));
    app.clock.set(deadline);
    let row = wait_pending(&app, &key, |r| r.status == "escalated").await;
    let tasks = app.hubspot.associated_with_contact(&ana.id, ObjectType::Tasks);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(row.task_id.as_deref(), Some(tasks[0].id.as_str()));
    assert_eq!(tasks[0].prop("hubspot_owner_id"), Some(owner.as_str()), "for the contact's owner");
    assert!(tasks[0].prop("hs_task_subject").unwrap().contains("NOT booked"), "{tasks:?}");
    assert!(!slot_is_blocked(&app, slot).await, "the hold is released");
    assert!(app.google.events(ALEX).is_empty(), "nothing was booked");
    assert!(app.core.store.bookings_for_call("demo", "pend-never").await.unwrap().is_empty());
    let audit = app.core.store.audit_for_call("demo", "pend-never").await.unwrap();
    let withdraw = audit.iter().find(|(a, _)| a == "calendar.withdraw_event").expect("the withdraw is audited");
    assert_eq!(withdraw.1["outcome"], "unreachable", "the calendar is still down: {audit:?}");
    assert!(audit.iter().any(|(a, d)| a == "crm.create_task" && d["task_id"] == json!(tasks[0].id)), "{audit:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_pending_booking_survives_a_restart_and_is_confirmed_after_it() {
    let app = spawn_app().await;
    let (_, slot, key) = book_while_calendar_down(&app, "pend-restart").await;
    let dir = app.stop_keeping_data().await;

    // A new process on the same store: its calendar answers again.
    let app = spawn_app_in(server_file(""), vec![demo_tenant()], dir).await;
    assert!(slot_is_blocked(&app, slot).await, "re-held from the store at start");
    let mut c = app.connect("pend-other", "+16465550177").await;
    c.initialize().await;
    let start = slot.start.to_zoned_datetime(jiff::tz::TimeZone::get("America/New_York").unwrap());
    let taken = c
        .tool("hold_slot", json!({"service": "color", "start": start.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()}))
        .await;
    assert_eq!(taken["isError"], true, "another caller cannot take it meanwhile: {taken}");
    app.clock.advance(SignedDuration::from_secs(15));
    let row = wait_pending(&app, &key, |r| r.status == "confirmed").await;
    let events = app.google.events(ALEX);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, row.event_id);
    assert_eq!(app.core.store.bookings_for_call("demo", "pend-restart").await.unwrap().len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_booking_confirmed_while_the_call_is_still_open_is_in_its_write_back_plan() {
    let app = spawn_app().await;
    let (_, _, key, mut c) = book_while_calendar_down_live(&app, "pend-live").await;
    app.google.set_down(false);
    app.clock.advance(SignedDuration::from_secs(15));
    let row = wait_pending(&app, &key, |r| r.status == "confirmed").await;
    // No step exists yet: the call is live, so the booking joined its outcome.
    assert!(app.core.store.steps_for_call("demo", "pend-live").await.unwrap().is_empty());
    c.tool("end_call", json!({"summary": "Booked a color (confirmed a moment later)."})).await;
    let steps = app.core.store.steps_for_call("demo", "pend-live").await.unwrap();
    let appointments: Vec<_> = steps.iter().filter(|s| s.kind == "appointment").collect();
    assert_eq!(appointments.len(), 1, "{steps:?}");
    assert_eq!(appointments[0].payload["calendar_event_id"], json!(row.event_id));
    assert_eq!(app.wait_for_sync("pend-live").await, "synced");
    app.shutdown().await;
}
