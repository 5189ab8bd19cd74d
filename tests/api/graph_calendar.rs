//! Seed 002's calls 5–7 through the service on Microsoft 365 (the Graph emulator): booking with
//! the service's duration and reminder, reschedule modifies the event in place, cancellation
//! removes it with the attendee notified (Graph's `cancel` action).

use callside::sandbox::graph::GraphMethod;
use serde_json::json;

use crate::helpers::{demo_tenant, server_file, spawn_app_with};

const ALEX: &str = "alex@demo-salon.example";

#[tokio::test]
async fn book_reschedule_cancel_on_microsoft_365() {
    let mut tenant = demo_tenant();
    tenant.calendar.vendor = "microsoft".into();
    let app = spawn_app_with(server_file(""), vec![tenant]).await;

    let mut c = app.connect("ms-1", "+14155550134").await;
    c.initialize().await;
    let slots = c.tool("find_slots", json!({"service": "color"})).await;
    let first = slots["structuredContent"]["slots"][1].clone();
    let hold = c.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await;
    let booked = c
        .tool("book_slot", json!({"hold_id": hold["structuredContent"]["hold_id"], "email": "ana.lopez@example.com"}))
        .await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    let appointment = booked["structuredContent"]["event_id"].clone();
    c.tool("end_call", json!({"summary": "Booked color."})).await;

    let events = app.graph.events(ALEX);
    assert_eq!(events.len(), 1, "one event");
    let e = &events[0];
    assert_eq!(e.end.duration_since(e.start), jiff::SignedDuration::from_mins(120), "the service's duration");
    assert!(e.transaction_id.is_some(), "created with a transactionId (idempotent create)");
    assert!(e.is_reminder_on);
    assert!(e.is_organizer, "the staff member's mailbox organizes it (so Graph's cancel notifies attendees)");
    assert_eq!(e.attendees, vec!["ana.lopez@example.com".to_owned()]);
    let graph_id = e.id.clone();

    // A second call: reschedule in place, then cancel.
    let mut c = app.connect("ms-2", "+14155550134").await;
    c.initialize().await;
    let found = c.tool("find_appointments", json!({})).await;
    assert_eq!(found["structuredContent"]["appointments"][0]["appointment_id"], appointment, "{found}");
    let later = c.tool("find_slots", json!({"service": "color", "day": "2026-11-25"})).await;
    let target = later["structuredContent"]["slots"][0].clone();
    let moved =
        c.tool("reschedule_appointment", json!({"appointment_id": appointment, "start": target["start"]})).await;
    assert_eq!(moved["isError"], false, "{moved}");
    let events = app.graph.events(ALEX);
    assert_eq!(events.len(), 1, "modified, not deleted-and-recreated");
    assert_eq!(events[0].id, graph_id, "the same Graph event");
    let new_start: jiff::Timestamp = target["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(events[0].start, new_start);
    assert!(events[0].writes.iter().any(|w| w.method == GraphMethod::Patch), "moved with PATCH");

    let cancelled = c.tool("cancel_appointment", json!({"appointment_id": appointment})).await;
    assert_eq!(cancelled["structuredContent"]["cancelled"], true, "{cancelled}");
    let removals = app.graph.removals();
    assert_eq!(removals.len(), 1, "{removals:?}");
    assert_eq!(removals[0].id, graph_id);
    assert_eq!(removals[0].method, GraphMethod::Cancel, "Graph's cancel action notifies the attendees");
    assert_eq!(c.tool("find_appointments", json!({})).await["structuredContent"]["appointments"], json!([]));
    app.shutdown().await;
}
