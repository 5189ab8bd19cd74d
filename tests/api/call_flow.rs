//! One call end to end over a real WebSocket: context, slots, hold, book, end_call, write-back.

use jiff::civil::Weekday;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

fn ana_id(app: &crate::helpers::TestApp) -> String {
    let contacts = app.hubspot.contacts();
    let ana: Vec<_> = contacts.iter().filter(|c| c.prop("firstname") == Some("Ana")).collect();
    assert_eq!(ana.len(), 1, "exactly one Ana in the CRM");
    ana[0].id.clone()
}

#[tokio::test]
async fn a_known_caller_books_and_the_call_is_written_back() {
    let app = spawn_app().await;
    let ana = ana_id(&app);
    let contacts_before = app.hubspot.contacts().len();

    // The CRM stores "(415) 555-0134"; the carrier delivers E.164.
    let mut c = app.connect("call-1", "+14155550134").await;
    let init = c.initialize().await;
    assert_eq!(init["protocolVersion"], "2025-11-25");

    let tools = c.request("tools/list", json!({})).await;
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "start_call",
            "get_caller_context",
            "list_services",
            "find_slots",
            "hold_slot",
            "release_hold",
            "book_slot",
            "escalate",
            "end_call"
        ]
    );

    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["isError"], false);
    let s = &ctx["structuredContent"];
    assert_eq!(s["status"], "matched");
    assert_eq!(s["contact"]["id"], json!(ana));
    assert_eq!(s["contact"]["first_name"], "Ana");
    let deals = s["open_deals"].as_array().unwrap();
    assert_eq!(deals.len(), 1);
    assert_eq!(deals[0]["name"], "Color correction package");
    assert!(ctx["content"][0]["text"].as_str().unwrap().contains("Ana"));

    let slots = c.tool("find_slots", json!({"service": "consult"})).await;
    assert_eq!(slots["isError"], false, "{slots}");
    let list = slots["structuredContent"]["slots"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3, "{slots}");
    let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let now: jiff::Timestamp = crate::helpers::START.parse().unwrap();
    for slot in &list {
        let start: jiff::Timestamp = slot["start"].as_str().unwrap().parse().unwrap();
        let end: jiff::Timestamp = slot["end"].as_str().unwrap().parse().unwrap();
        assert_eq!(end.duration_since(start), jiff::SignedDuration::from_mins(30));
        assert!(start >= now + jiff::SignedDuration::from_mins(60), "minimum notice respected");
        let local = start.to_zoned_datetime(tz.clone());
        let local_end = end.to_zoned_datetime(tz.clone());
        assert_ne!(local.weekday(), Weekday::Sunday, "closed on Sundays");
        assert!(local.hour() >= 9, "{slot}: opens at 09:00 local");
        let end_minutes = local_end.hour() as i32 * 60 + local_end.minute() as i32;
        assert!(end_minutes <= 19 * 60, "{slot}: inside opening hours");
        // The local offset is part of the RFC 3339 string the AI is given.
        assert!(slot["start"].as_str().unwrap().ends_with("-05:00"), "{slot}");
    }

    let first = &list[0];
    let hold = c
        .tool("hold_slot", json!({"service": "consult", "start": first["start"], "staff_id": first["staff_id"]}))
        .await;
    assert_eq!(hold["isError"], false, "{hold}");
    let hold_id = hold["structuredContent"]["hold_id"].as_str().unwrap().to_owned();

    let booked =
        c.tool("book_slot", json!({"hold_id": hold_id, "name": "Ana López", "email": "ana.lopez@example.com"})).await;
    assert_eq!(booked["isError"], false, "{booked}");
    assert_eq!(booked["structuredContent"]["booked"], true);
    let event_id = booked["structuredContent"]["event_id"].as_str().unwrap().to_owned();

    // Exactly one event, in the chosen staff member's calendar, with the right times.
    let mut ours = Vec::new();
    for cal in ["alex@demo-salon.example", "sam@demo-salon.example"] {
        ours.extend(app.google.events(cal).into_iter().filter(|e| e.is_busy()));
    }
    assert_eq!(ours.len(), 1, "one event in the calendars");
    assert_eq!(ours[0].id, event_id);

    let end = c
        .tool(
            "end_call",
            json!({
                "summary": "Booked a consultation for Ana.",
                "disposition": "booked",
                "recording_url": "https://recordings.example/call-1.mp3",
                "transcript_url": "https://recordings.example/call-1.txt",
                "caller_name": "Ana López"
            }),
        )
        .await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");

    assert_eq!(app.wait_for_sync("call-1").await, "synced");
    assert_eq!(app.hubspot.contacts().len(), contacts_before, "no duplicate contact");
    let calls = app.hubspot.calls_for_contact(&ana);
    assert_eq!(calls.len(), 1, "one call log on Ana");
    let call_json = serde_json::to_string(&calls[0].properties).unwrap();
    assert!(call_json.contains("https://recordings.example/call-1.mp3"), "{call_json}");
    assert!(call_json.contains("https://recordings.example/call-1.txt"), "{call_json}");
    let meetings = app.hubspot.meetings_for_contact(&ana);
    assert_eq!(meetings.len(), 1, "the appointment is on Ana");
    app.shutdown().await;
}

#[tokio::test]
async fn a_dropped_socket_still_produces_the_write_back() {
    let app = spawn_app().await;
    let before = app.hubspot.contacts().len();
    let mut c = app.connect("call-drop", "+1 646 555 0199").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "new");
    c.drop_abruptly().await;

    assert_eq!(app.wait_for_sync("call-drop").await, "synced");
    let call = app.core.store.call("demo", "call-drop").await.unwrap().unwrap();
    assert_eq!(call.end_reason.as_deref(), Some("disconnected"));
    let contacts = app.hubspot.contacts();
    assert_eq!(contacts.len(), before + 1, "the new caller became a contact");
    let new: Vec<_> = contacts.iter().filter(|c| c.prop("phone") == Some("+16465550199")).collect();
    assert_eq!(new.len(), 1);
    let calls = app.hubspot.calls_for_contact(&new[0].id);
    assert_eq!(calls.len(), 1);
    let body = serde_json::to_string(&calls[0].properties).unwrap();
    assert!(body.contains("disconnected"), "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn context_is_prefetched_once_and_pushed_when_ready() {
    let app = spawn_app().await;
    let mut c = app.connect("call-pf", "+14155550134").await;
    c.initialize().await;
    let first = c.tool("get_caller_context", json!({})).await;
    let second = c.tool("get_caller_context", json!({})).await;
    assert_eq!(first["structuredContent"], second["structuredContent"]);
    use callside::sandbox::hubspot::RouteKind;
    assert_eq!(app.hubspot.request_count(RouteKind::Search), 1, "one search for the whole call");
    // The context-ready notification arrived on the socket (collected while reading replies).
    let pushed: Vec<&Value> =
        c.notifications.iter().filter(|n| n["method"] == "notifications/callside/context_ready").collect();
    assert_eq!(pushed.len(), 1, "{:?}", c.notifications);
    assert_eq!(pushed[0]["params"]["status"], "matched");
    app.shutdown().await;
}

#[tokio::test]
async fn a_second_caller_cannot_hold_a_held_slot_and_gets_alternatives() {
    let app = spawn_app().await;
    let mut a = app.connect("call-a", "+14155550134").await;
    let mut b = app.connect("call-b", "+16465550111").await;
    a.initialize().await;
    b.initialize().await;
    let slots = a.tool("find_slots", json!({"service": "color"})).await;
    let first = slots["structuredContent"]["slots"][0].clone();
    let ha = a.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await;
    assert_eq!(ha["isError"], false, "{ha}");
    let hb = b.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await;
    assert_eq!(hb["isError"], true, "{hb}");
    assert_eq!(hb["structuredContent"]["error"], "slot_taken");
    assert!(!hb["structuredContent"]["alternatives"].as_array().unwrap().is_empty());
    assert!(hb["content"][0]["text"].as_str().unwrap().starts_with("That time was just taken"));
    // Caller B may not book caller A's hold.
    let steal = b.tool("book_slot", json!({"hold_id": ha["structuredContent"]["hold_id"]})).await;
    assert_eq!(steal["isError"], true);
    assert_eq!(app.google.events("alex@demo-salon.example").len(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_direct_booking_between_hold_and_commit_wins() {
    let app = spawn_app().await;
    let mut c = app.connect("call-race", "+14155550134").await;
    c.initialize().await;
    let slots = c.tool("find_slots", json!({"service": "color"})).await;
    let first = slots["structuredContent"]["slots"][0].clone();
    let hold = c.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await;
    let start: jiff::Timestamp = first["start"].as_str().unwrap().parse().unwrap();
    let end: jiff::Timestamp = first["end"].as_str().unwrap().parse().unwrap();
    // A customer books the same time directly in the calendar.
    app.google.insert_foreign_event("alex@demo-salon.example", start, end, "Booked online");
    let booked = c.tool("book_slot", json!({"hold_id": hold["structuredContent"]["hold_id"]})).await;
    assert_eq!(booked["isError"], true, "{booked}");
    assert_eq!(booked["structuredContent"]["error"], "slot_taken");
    let busy: Vec<_> = app.google.events("alex@demo-salon.example").into_iter().filter(|e| e.is_busy()).collect();
    assert_eq!(busy.len(), 1, "only the customer's own booking");
    app.shutdown().await;
}

#[tokio::test]
async fn a_hold_expires_on_the_domain_clock_and_frees_the_slot() {
    let app = spawn_app().await;
    let mut a = app.connect("exp-a", "+14155550134").await;
    let mut b = app.connect("exp-b", "+16465550112").await;
    a.initialize().await;
    b.initialize().await;
    let slots = a.tool("find_slots", json!({"service": "color"})).await;
    // Not the earliest option: advancing the clock 5 minutes moves the minimum-notice boundary
    // past it, which is a different reason for the slot to disappear.
    let first = slots["structuredContent"]["slots"][1].clone();
    let hold = a.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await;
    assert_eq!(hold["isError"], false, "{hold}");
    assert_eq!(b.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await["isError"], true);
    // The demo tenant's hold TTL is 300 s: one second short of it the hold is still live…
    app.clock.advance(jiff::SignedDuration::from_secs(299));
    assert_eq!(b.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await["isError"], true);
    // …and at the TTL it is gone: A can no longer book it, B can hold it.
    app.clock.advance(jiff::SignedDuration::from_secs(1));
    let late = a.tool("book_slot", json!({"hold_id": hold["structuredContent"]["hold_id"]})).await;
    assert_eq!(late["isError"], true, "{late}");
    assert_eq!(late["structuredContent"]["error"], "hold_expired");
    let hb = b.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await;
    assert_eq!(hb["isError"], false, "{hb}");
    assert!(app.google.events("alex@demo-salon.example").is_empty(), "nothing was booked");
    app.shutdown().await;
}

#[tokio::test]
async fn a_known_caller_missing_an_email_gets_it_written_without_a_duplicate() {
    let app = spawn_app().await;
    let bo = app.hubspot.insert_contact([("firstname", "Bo"), ("lastname", "Chen"), ("phone", "415.555.0142")]);
    let before = app.hubspot.contacts().len();
    let mut c = app.connect("call-bo", "+14155550142").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["contact"]["id"], json!(bo), "{ctx}");
    c.tool("end_call", json!({"summary": "Asked about opening hours.", "caller_email": "Bo.Chen@Example.com", "caller_name": "Bob Chen"}))
        .await;
    assert_eq!(app.wait_for_sync("call-bo").await, "synced");
    let contact = app.hubspot.contact(&bo).unwrap();
    assert_eq!(contact.prop("email"), Some("bo.chen@example.com"), "the missing email was filled in, normalized");
    assert_eq!(contact.prop("firstname"), Some("Bo"), "a name the CRM already has is not overwritten");
    assert_eq!(app.hubspot.contacts().len(), before, "no duplicate");
    assert_eq!(app.hubspot.calls_for_contact(&bo).len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_tool_past_its_deadline_answers_with_a_speakable_timeout_and_the_socket_lives_on() {
    let app = crate::helpers::spawn_app_with(
        crate::helpers::server_file("[limits]\ntool_deadline_ms = 200\n"),
        vec![crate::helpers::demo_tenant()],
    )
    .await;
    // The CRM answers slower than the deadline.
    app.hubspot.set_latency(std::time::Duration::from_millis(1500));
    let mut c = app.connect("call-slow", "+14155550134").await;
    c.initialize().await;
    let r = c.tool("get_caller_context", json!({})).await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(r["structuredContent"]["error"], "timeout");
    assert!(r["content"][0]["text"].as_str().unwrap().contains("taking longer"), "{r}");
    assert_eq!(c.request("ping", json!({})).await["result"], json!({}));
    app.hubspot.set_latency(std::time::Duration::ZERO);
    app.shutdown().await;
}
