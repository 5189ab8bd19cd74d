//! Calendar changes (issue 12): Google push channels with incremental sync, the polling safety
//! net, subscription renewal on the injected clock, holds flagged under a direct booking, and a
//! post-hangup conflict turned into a staff task. Every test waits on the sync's progress signal
//! (`CalendarSync::progress`) or on a socket notification, never on wall time.

use std::time::Duration;

use callside::inbound::calendar::SyncProgress;
use callside::sandbox::google_calendar::{GoogleCalendarMethod, WatchChannel};
use callside::sandbox::hubspot::ObjectType;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::helpers::*;

const ALEX: &str = "alex@demo-salon.example";
const ANA: &str = "+14155550134";
const STRANGER: &str = "+16465550123";

async fn spawn_with_calendar_sync() -> TestApp {
    let app = spawn_app_with(server_file("[inbound.calendar]\npoll_interval_secs = 30\n"), vec![demo_tenant()]).await;
    wait_progress(&app, |p| p.started).await;
    app
}

/// Waits until the sync's progress satisfies `done`.
pub(crate) async fn wait_progress(app: &TestApp, done: impl Fn(&SyncProgress) -> bool) -> SyncProgress {
    let mut rx = app.core.calendar_sync.progress();
    let seen = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|p| done(p)))
        .await
        .expect("calendar sync progressed in time")
        .expect("sync state alive");
    *seen
}

pub(crate) fn progress(app: &TestApp) -> SyncProgress {
    *app.core.calendar_sync.progress().borrow()
}

/// The first offered consultation: (start as sent, start, staff).
pub(crate) async fn first_slot(c: &mut Client) -> (Value, Timestamp, String) {
    let slots = c.tool("find_slots", json!({"service": "consult"})).await;
    assert_eq!(slots["isError"], false, "{slots}");
    let first = slots["structuredContent"]["slots"][0].clone();
    let start: Timestamp = first["start"].as_str().unwrap().parse().unwrap();
    (first["start"].clone(), start, first["staff_id"].as_str().unwrap().to_owned())
}

/// Holds the first offered consultation: (hold id, start).
pub(crate) async fn hold_first(c: &mut Client) -> (String, Timestamp) {
    let (start_sent, start, staff) = first_slot(c).await;
    let hold = c.tool("hold_slot", json!({"service": "consult", "start": start_sent, "staff_id": staff})).await;
    assert_eq!(hold["isError"], false, "{hold}");
    (hold["structuredContent"]["hold_id"].as_str().unwrap().to_owned(), start)
}

/// Whether `find_slots` offers this start with this staff member.
pub(crate) async fn offered(c: &mut Client, start: Timestamp, staff: &str) -> bool {
    let day = start.to_zoned_datetime(jiff::tz::TimeZone::get("America/New_York").unwrap()).date().to_string();
    let slots = c.tool("find_slots", json!({"service": "consult", "day": day, "count": 5})).await;
    assert_eq!(slots["isError"], false, "{slots}");
    slots["structuredContent"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["staff_id"] == staff && s["start"].as_str().unwrap().parse::<Timestamp>().unwrap() == start)
}

fn open_channel(app: &TestApp, calendar: &str) -> WatchChannel {
    app.google
        .channels()
        .into_iter()
        .rev()
        .find(|c| c.calendar_id == calendar && !c.stopped)
        .expect("a channel is open")
}

#[tokio::test]
async fn an_event_booked_directly_in_google_leaves_find_slots_after_its_push_and_our_own_booking_is_not_news() {
    let app = spawn_with_calendar_sync().await;
    // At start every staff calendar was fully synced and watched.
    let channel = open_channel(&app, ALEX);
    assert!(channel.address.ends_with("/v1/inbound/google"), "{channel:?}");
    assert!(app.core.calendar_sync.cursor("demo", ALEX).is_some());
    let mut c = app.connect("cal-push-1", STRANGER).await;
    c.initialize().await;
    let (_, start, staff) = first_slot(&mut c).await;
    assert_eq!(staff, "alex");
    assert!(offered(&mut c, start, "alex").await, "offered, and alex's busy time is now cached");

    // The business books a walk-in straight into Google Calendar.
    let before = progress(&app);
    let sent = open_channel(&app, ALEX).message_number;
    app.google.insert_foreign_event(ALEX, start, start + SignedDuration::from_mins(30), "Walk-in");
    let after = wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    assert_eq!(after.foreign_changes, before.foreign_changes + 1, "exactly the new event");
    // It came by push: the clock did not move, so no poll ran.
    assert_eq!(open_channel(&app, ALEX).message_number, sent + 1);
    assert!(!offered(&mut c, start, "alex").await, "the slot is gone from the next find_slots");

    // Our own booking makes Google push too; it is recognized and changes nothing.
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
async fn a_hold_under_a_direct_booking_is_flagged_and_its_call_told() {
    let app = spawn_with_calendar_sync().await;
    let mut c = app.connect("cal-hold", STRANGER).await;
    c.initialize().await;
    let (hold_id, start) = hold_first(&mut c).await;
    assert!(!app.core.booking.ledger.is_flagged("demo", hold_id.parse().unwrap()).await);

    app.google.insert_foreign_event(
        ALEX,
        start + SignedDuration::from_mins(15),
        start + SignedDuration::from_mins(45),
        "Direct",
    );
    let note = c.next_notification("notifications/callside/slot_taken").await;
    assert_eq!(note["params"]["call_id"], "cal-hold");
    assert_eq!(note["params"]["hold_id"], hold_id.as_str());
    assert_eq!(note["params"]["booked"], false);
    assert!(app.core.booking.ledger.is_flagged("demo", hold_id.parse().unwrap()).await);

    // Booking it now fails cleanly at the commit's re-check: nothing of ours in the calendar.
    let booked = c.tool("book_slot", json!({"hold_id": hold_id, "name": "Pat Doe"})).await;
    assert_eq!(booked["isError"], true, "{booked}");
    assert!(app.google.events(ALEX).iter().all(|e| e.foreign), "{:?}", app.google.events(ALEX));
    app.shutdown().await;
}

#[tokio::test]
async fn a_missed_push_is_caught_by_the_next_poll() {
    let app = spawn_with_calendar_sync().await;
    let mut c = app.connect("cal-missed", STRANGER).await;
    c.initialize().await;
    let (_, start, _) = first_slot(&mut c).await;
    assert!(offered(&mut c, start, "alex").await, "offered, and alex's busy time is now cached");
    let before = progress(&app);
    app.google.drop_next_pushes(1);
    app.google.insert_foreign_event(ALEX, start, start + SignedDuration::from_mins(30), "Phone booking");
    assert_eq!(app.google.push_stats().dropped.load(std::sync::atomic::Ordering::SeqCst), 1, "the push was lost");
    assert_eq!(progress(&app).foreign_changes, before.foreign_changes, "nothing told us yet");

    // The poll interval passes on the injected clock: the incremental sync finds the event.
    app.clock.advance(SignedDuration::from_secs(30));
    wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    assert!(!offered(&mut c, start, "alex").await);
    app.shutdown().await;
}

#[tokio::test]
async fn an_expired_sync_token_means_a_full_resync() {
    let app = spawn_with_calendar_sync().await;
    let mut c = app.connect("cal-410", STRANGER).await;
    c.initialize().await;
    let (_, start, _) = first_slot(&mut c).await;
    assert!(offered(&mut c, start, "alex").await);
    let cursor = app.core.calendar_sync.cursor("demo", ALEX).unwrap();
    let lists = app.google.request_count(GoogleCalendarMethod::List);
    let before = progress(&app);
    app.google.expire_sync_tokens();
    app.google.insert_foreign_event(ALEX, start, start + SignedDuration::from_mins(30), "Direct");
    wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    // One list answered 410, the full sync listed again from now.
    assert_eq!(app.google.request_count(GoogleCalendarMethod::List), lists + 2);
    assert_ne!(app.core.calendar_sync.cursor("demo", ALEX).unwrap(), cursor);
    assert!(!offered(&mut c, start, "alex").await);
    app.shutdown().await;
}

#[tokio::test]
async fn channels_are_replaced_before_they_expire_on_the_injected_clock() {
    let app = spawn_with_calendar_sync().await;
    let old = app.core.calendar_sync.subscription("demo", ALEX).expect("subscribed at start");
    let emulated = open_channel(&app, ALEX);
    assert_eq!(emulated.id, old.id);
    assert_eq!(emulated.expiration, old.expires_at);
    // Defaults: a day's channel, replaced an hour before it ends.
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
    let channels = app.google.channels();
    assert!(channels.iter().find(|c| c.id == old.id).unwrap().stopped, "the replaced channel is stopped");
    assert!(!channels.iter().find(|c| c.id == new.id).unwrap().stopped);

    // The new channel carries changes.
    let before = progress(&app);
    let at = app.core.clock.now() + SignedDuration::from_hours(3);
    app.google.insert_foreign_event(ALEX, at, at + SignedDuration::from_mins(30), "Direct");
    wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    app.shutdown().await;
}

/// A refused notification: (what, status, outcome counted, headers).
type BadPush = (&'static str, u16, &'static str, Vec<(&'static str, String)>);

/// POSTs a notification with the given headers.
fn google_requests(app: &TestApp, outcome: &str) -> u64 {
    app.core.metrics.inbound_request_count("google", outcome)
}

#[tokio::test]
async fn forged_stale_replayed_unknown_and_malformed_google_pushes_are_refused_counted_and_change_nothing() {
    let app = spawn_with_calendar_sync().await;
    let channel = open_channel(&app, ALEX);
    let token = channel.token.clone().expect("we set a channel token");
    let mut unknown = channel.clone();
    unknown.id = "not-our-channel".into();
    let mut wrong_resource = channel.clone();
    wrong_resource.resource_id = "res-someone-else".into();
    let cases: Vec<BadPush> = vec![
        ("unknown channel", 404, "unknown_channel", push_headers(&unknown, Some(&token), "exists", "7")),
        ("wrong token", 401, "forged", push_headers(&channel, Some("0123456789abcdef"), "exists", "7")),
        ("no token", 401, "forged", push_headers(&channel, None, "exists", "7")),
        ("wrong resource", 401, "forged", push_headers(&wrong_resource, Some(&token), "exists", "7")),
        ("unknown state", 400, "malformed", push_headers(&channel, Some(&token), "changed", "7")),
        ("bad message number", 400, "malformed", push_headers(&channel, Some(&token), "exists", "seven")),
        ("no headers", 400, "malformed", Vec::new()),
    ];
    let before = progress(&app);
    let lists = app.google.request_count(GoogleCalendarMethod::List);
    for (what, status, outcome, headers) in cases {
        let counted = google_requests(&app, outcome);
        let (got, body) = post_push(&app, &headers).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["error"], outcome, "{what}");
        assert_eq!(google_requests(&app, outcome), counted + 1, "{what} is counted");
    }
    assert_eq!(progress(&app), before, "no sync ran");
    assert_eq!(app.google.request_count(GoogleCalendarMethod::List), lists, "nothing was read");

    // A good one is applied once; the same message again is a replay.
    let good = push_headers(&channel, Some(&token), "exists", "100000");
    let (status, body) = post_push(&app, &good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sync"]["full"], false, "{body}");
    let (status, body) = post_push(&app, &good).await;
    assert_eq!((status, body["error"].clone()), (409, json!("replayed")));
    assert_eq!(progress(&app).syncs, before.syncs + 1, "the replay synced nothing");

    // A channel past its expiration (its renewal failed) is stale.
    app.google.fail_next_for(GoogleCalendarMethod::Watch, 503, "backendError", 10);
    app.clock.set(channel.expiration + SignedDuration::from_secs(1));
    let (status, body) = post_push(&app, &push_headers(&channel, Some(&token), "exists", "100001")).await;
    assert_eq!((status, body["error"].clone()), (401, json!("stale")), "{body}");
    assert_eq!(google_requests(&app, "stale"), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_direct_booking_over_one_we_made_after_hangup_becomes_a_staff_task_not_a_cancellation() {
    let app = spawn_with_calendar_sync().await;
    let ana = app.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Ana")).unwrap();
    let ana_id = ana.prop("hs_object_id").unwrap().to_owned();
    let mut c = app.connect("cal-conflict", ANA).await;
    c.initialize().await;
    let (hold_id, start) = hold_first(&mut c).await;
    let booked =
        c.tool("book_slot", json!({"hold_id": hold_id, "name": "Ana López", "email": "ana.lopez@example.com"})).await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    let event_id = booked["structuredContent"]["event_id"].as_str().unwrap().to_owned();
    c.tool("end_call", json!({"summary": "Booked a consultation.", "disposition": "booked"})).await;
    app.wait_for_sync("cal-conflict").await;
    let tasks_before = app.hubspot.associated_with_contact(&ana_id, ObjectType::Tasks).len();

    // After she hung up, someone books the same time directly in the calendar.
    let before = progress(&app);
    app.google.insert_foreign_event(ALEX, start, start + SignedDuration::from_mins(30), "Booked at the desk");
    wait_progress(&app, |p| p.conflict_tasks > before.conflict_tasks).await;
    let tasks = app.hubspot.associated_with_contact(&ana_id, ObjectType::Tasks);
    assert_eq!(tasks.len(), tasks_before + 1, "{tasks:?}");
    let task = tasks.iter().find(|t| t.prop("hs_task_subject").is_some_and(|s| s.contains("Double booking"))).unwrap();
    assert!(task.prop("hs_task_body").unwrap().contains(&event_id), "{task:?}");
    assert_eq!(app.google.event(ALEX, &event_id).unwrap().status, "confirmed", "nothing was cancelled");
    let audit = app.core.store.audit_for_call("demo", "cal-conflict").await.unwrap();
    assert!(audit.iter().any(|(a, _)| a == "calendar.conflict_task"), "{audit:?}");

    // A full resync sees the same conflict again: no second task.
    let before = progress(&app);
    app.google.expire_sync_tokens();
    app.clock.advance(SignedDuration::from_secs(30));
    wait_progress(&app, |p| p.syncs >= before.syncs + 2).await;
    assert_eq!(app.hubspot.associated_with_contact(&ana_id, ObjectType::Tasks).len(), tasks_before + 1);
    assert_eq!(progress(&app).conflict_tasks, before.conflict_tasks);
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_put_directly_in_radicale_leaves_find_slots_after_the_next_poll() {
    let (tenant, dav, alex) = crate::caldav_booking::caldav_tenant(None).await;
    let app = spawn_app_with(server_file("[inbound.calendar]\npoll_interval_secs = 30\n"), vec![tenant]).await;
    wait_progress(&app, |p| p.started).await;
    assert!(app.core.calendar_sync.cursor("demo", &alex).is_some(), "fully synced at start");
    assert!(app.core.calendar_sync.subscription("demo", &alex).is_none(), "CalDAV has no push: polled only");
    let mut c = app.connect("cal-caldav", STRANGER).await;
    c.initialize().await;
    let (_, start, staff) = first_slot(&mut c).await;
    assert_eq!(staff, "alex");
    assert!(offered(&mut c, start, "alex").await);

    // Another client books the slot straight into the CalDAV collection.
    let ics = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Front desk//EN\r\nBEGIN:VEVENT\r\nUID:desk-1\r\nDTSTAMP:20261101T000000Z\r\nDTSTART:{}\r\nDTEND:{}\r\nSUMMARY:Walk-in\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        callside::connectors::calendar::caldav::ical_utc(start),
        callside::connectors::calendar::caldav::ical_utc(start + SignedDuration::from_mins(30)),
    );
    let url = dav.collection_url(&alex).unwrap().join("desk-1.ics").unwrap();
    let put = reqwest::Client::new()
        .put(url)
        .basic_auth("callside", Some("unused"))
        .header("Content-Type", "text/calendar; charset=utf-8")
        .body(ics)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let before = progress(&app);
    app.clock.advance(SignedDuration::from_secs(30));
    wait_progress(&app, |p| p.foreign_changes > before.foreign_changes).await;
    assert!(!offered(&mut c, start, "alex").await, "gone after the poll");
    app.shutdown().await;
}
