//! Seed 002's calls 5–7 on Google Calendar: booking with the right duration, organizer-side
//! calendar and reminders; reschedule modifies the event in place; cancellation cancels and
//! notifies.

use callside::sandbox::google_calendar::GoogleCalendarMethod;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

const ALEX: &str = "alex@demo-salon.example";

/// Books a Color appointment (Alex only, 120 min) for Ana on its own call and ends the call.
async fn book_color(app: &TestApp, call_id: &str) -> (String, Value) {
    let mut c = app.connect(call_id, "+14155550134").await;
    c.initialize().await;
    let slots = c.tool("find_slots", json!({"service": "colour"})).await;
    let first = slots["structuredContent"]["slots"][1].clone();
    let hold = c.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await;
    let booked = c
        .tool("book_slot", json!({"hold_id": hold["structuredContent"]["hold_id"], "email": "ana.lopez@example.com"}))
        .await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    c.tool("end_call", json!({"summary": "Booked color."})).await;
    (booked["structuredContent"]["event_id"].as_str().unwrap().to_owned(), first)
}

#[tokio::test]
async fn a_booking_has_the_right_duration_reminders_attendee_and_markers() {
    let app = spawn_app().await;
    let (event_id, _) = book_color(&app, "ap-book").await;
    let events = app.google.events(ALEX);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.id, event_id);
    assert_eq!(e.end.duration_since(e.start), jiff::SignedDuration::from_mins(120), "the service's own duration");
    assert_eq!(e.start_time_zone.as_deref(), Some("America/New_York"));
    assert_eq!(e.organizer_email, ALEX, "organized by the staff member's calendar it was booked into");
    assert_eq!(e.reminder_overrides, vec![("popup".to_owned(), 60), ("popup".to_owned(), 1440)]);
    assert!(!e.reminders_use_default);
    assert_eq!(e.attendees, vec!["ana.lopez@example.com".to_owned()]);
    assert_eq!(e.private_properties.get("callside_call_id").map(String::as_str), Some("ap-book"));
    assert_eq!(e.private_properties.get("callside_service").map(String::as_str), Some("color"));
    app.shutdown().await;
}

#[tokio::test]
async fn reschedule_moves_the_event_in_place_and_cancel_notifies() {
    let app = spawn_app().await;
    let (event_id, booked_slot) = book_color(&app, "ap-1").await;
    let inserts = app.google.request_count(GoogleCalendarMethod::Insert);

    // A second call from the same caller.
    let mut c = app.connect("ap-2", "+1 (415) 555-0134").await;
    c.initialize().await;
    let found = c.tool("find_appointments", json!({})).await;
    let list = found["structuredContent"]["appointments"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{found}");
    assert_eq!(list[0]["appointment_id"], json!(event_id));
    assert_eq!(list[0]["service"], "Color");

    // Move it to another offered time on a later day.
    let slots = c.tool("find_slots", json!({"service": "color", "day": "2026-11-25"})).await;
    let target = slots["structuredContent"]["slots"][0].clone();
    assert_ne!(target["start"], booked_slot["start"]);
    let moved = c.tool("reschedule_appointment", json!({"appointment_id": event_id, "start": target["start"]})).await;
    assert_eq!(moved["isError"], false, "{moved}");
    assert_eq!(moved["structuredContent"]["appointment_id"], json!(event_id), "same event");
    let events = app.google.events(ALEX);
    assert_eq!(events.len(), 1, "modified, not deleted-and-recreated");
    let new_start: jiff::Timestamp = target["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(events[0].start, new_start);
    assert_eq!(events[0].status, "confirmed");
    assert_eq!(app.google.request_count(GoogleCalendarMethod::Insert), inserts, "no new event");
    assert_eq!(app.google.request_count(GoogleCalendarMethod::Delete), 0);
    assert_eq!(app.google.request_count(GoogleCalendarMethod::Patch), 1);
    assert!(events[0].writes.iter().any(|w| w.if_match.is_some()), "the move was conditional on the etag");

    // The old time is free again; the new one is not.
    let old = c.tool("hold_slot", json!({"service": "color", "start": booked_slot["start"]})).await;
    assert_eq!(old["isError"], false, "the old time can be held again: {old}");
    c.tool("release_hold", json!({"hold_id": old["structuredContent"]["hold_id"]})).await;
    let taken = c.tool("hold_slot", json!({"service": "color", "start": target["start"]})).await;
    assert_eq!(taken["isError"], true, "the new time is taken: {taken}");

    // Cancel: the event is cancelled with a notification to the attendee.
    let cancelled = c.tool("cancel_appointment", json!({"appointment_id": event_id, "reason": "travelling"})).await;
    assert_eq!(cancelled["structuredContent"]["cancelled"], true, "{cancelled}");
    let e = &app.google.events(ALEX)[0];
    assert_eq!(e.status, "cancelled");
    assert_eq!(e.send_updates_of(GoogleCalendarMethod::Delete), Some("all"), "the customer is notified");
    let none = c.tool("find_appointments", json!({})).await;
    assert_eq!(none["structuredContent"]["appointments"], json!([]));

    // The call log records both changes.
    c.tool("end_call", json!({"summary": "Moved then cancelled the color appointment."})).await;
    assert_eq!(app.wait_for_sync("ap-2").await, "synced");
    let ana = app.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Ana")).unwrap();
    let logs = app.hubspot.calls_for_contact(&ana.id);
    let body = logs.iter().map(|l| serde_json::to_string(&l.properties).unwrap()).collect::<String>();
    assert!(body.contains("Rescheduled Color from"), "{body}");
    assert!(body.contains("Cancelled Color on"), "{body}");
    assert!(body.contains("travelling"), "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn another_caller_cannot_touch_someone_elses_appointment() {
    let app = spawn_app().await;
    let (event_id, _) = book_color(&app, "ap-own").await;
    let mut other = app.connect("ap-other", "+16465550177").await;
    other.initialize().await;
    assert_eq!(other.tool("find_appointments", json!({})).await["structuredContent"]["appointments"], json!([]));
    let r = other.tool("cancel_appointment", json!({"appointment_id": event_id})).await;
    assert_eq!(r["isError"], true);
    assert_eq!(r["structuredContent"]["error"], "unknown_appointment");
    let r = other
        .tool("reschedule_appointment", json!({"appointment_id": event_id, "start": "2026-11-25T10:00:00-05:00"}))
        .await;
    assert_eq!(r["structuredContent"]["error"], "unknown_appointment");
    assert_eq!(app.google.events(ALEX)[0].status, "confirmed", "untouched");
    app.shutdown().await;
}

#[tokio::test]
async fn a_reschedule_to_a_taken_time_keeps_the_original() {
    let app = spawn_app().await;
    let (event_id, booked) = book_color(&app, "ap-k1").await;
    let mut c = app.connect("ap-k2", "+14155550134").await;
    c.initialize().await;
    let slots = c.tool("find_slots", json!({"service": "color", "day": "2026-11-25"})).await;
    let target = slots["structuredContent"]["slots"][0].clone();
    let start: jiff::Timestamp = target["start"].as_str().unwrap().parse().unwrap();
    let end: jiff::Timestamp = target["end"].as_str().unwrap().parse().unwrap();
    app.google.insert_foreign_event(ALEX, start, end, "Walk-in");
    let r = c.tool("reschedule_appointment", json!({"appointment_id": event_id, "start": target["start"]})).await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["rescheduled"], false);
    let ours: Vec<_> = app.google.events(ALEX).into_iter().filter(|e| e.id == event_id).collect();
    let original: jiff::Timestamp = booked["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(ours[0].start, original, "the appointment stays where it was");
    assert_eq!(
        c.tool("find_appointments", json!({})).await["structuredContent"]["appointments"].as_array().unwrap().len(),
        1
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_holds_on_ten_slots_yield_exactly_ten() {
    let app = spawn_app().await;
    // Ten Color slots that do not overlap one another (Color is Alex-only and lasts 120 min plus
    // buffers, so offered options an hour apart would overlap).
    let mut probe = app.connect("race-probe", "+16465550100").await;
    probe.initialize().await;
    let mut starts: Vec<Value> = Vec::new();
    let mut chosen: Vec<jiff::Timestamp> = Vec::new();
    for day in ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28"] {
        let r = probe.tool("find_slots", json!({"service": "color", "day": day, "count": 5})).await;
        for s in r["structuredContent"]["slots"].as_array().unwrap() {
            let at: jiff::Timestamp = s["start"].as_str().unwrap().parse().unwrap();
            if starts.len() < 10
                && chosen.iter().all(|c| c.duration_since(at).abs() >= jiff::SignedDuration::from_mins(150))
            {
                chosen.push(at);
                starts.push(s["start"].clone());
            }
        }
    }
    assert_eq!(starts.len(), 10, "ten non-overlapping slots");
    // 100 calls, each firing 10 hold_slot requests at once over its socket: 1,000 attempts.
    let mut tasks = tokio::task::JoinSet::new();
    for call in 0..100 {
        let mut c = app.connect(&format!("race-{call}"), &format!("+1646555{:04}", 1000 + call)).await;
        c.initialize().await;
        let starts = starts.clone();
        tasks.spawn(async move {
            for (i, start) in starts.iter().enumerate() {
                let req = json!({"jsonrpc": "2.0", "id": 1000 + i, "method": "tools/call",
                    "params": {"name": "hold_slot", "arguments": {"service": "color", "start": start}}});
                c.send_text(&req.to_string()).await;
            }
            let mut won = Vec::new();
            for _ in 0..starts.len() {
                match c.next_reply().await {
                    crate::helpers::Reply::Message(v) => {
                        if v["result"]["isError"] == json!(false) {
                            won.push(v["result"]["structuredContent"]["start"].clone());
                        } else {
                            assert_eq!(v["result"]["structuredContent"]["error"], "slot_taken", "{v}");
                            let alternatives = v["result"]["structuredContent"]["alternatives"].as_array();
                            assert!(alternatives.is_some_and(|a| !a.is_empty()), "the losers get alternatives: {v}");
                        }
                    }
                    other => panic!("socket closed: {other:?}"),
                }
            }
            (c, won)
        });
    }
    let mut winners = Vec::new();
    let mut clients = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (c, won) = r.unwrap();
        winners.extend(won);
        clients.push(c);
    }
    assert_eq!(winners.len(), 10, "exactly one winner per slot");
    let mut distinct: Vec<String> = winners.iter().map(|v| v.to_string()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10, "each slot won once");
    drop(clients);
    app.shutdown().await;
}
