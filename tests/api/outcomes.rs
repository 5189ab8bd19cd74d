//! Appointment outcomes read back (issue 12, item 4): after an appointment booked through the
//! tool API has ended, the reader asks the CRM, the calendar and the point of sale what became of
//! it, and the caller's next context carries their history. Domain time is the manual clock;
//! each test waits on the reader's progress signal for a pass at the time it set.

use std::path::{Path, PathBuf};
use std::time::Duration;

use callside::clock::Clock as _;
use callside::config::{Config, OutcomesSection, Overrides, TenantFile};
use callside::outcomes::{AppointmentOutcome, OutcomeProgress, OutcomeSource};
use callside::store::RecordedOutcome;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::crms::Crm;
use crate::helpers::{TestApp, demo_tenant, server_file, spawn_app_with};

fn with_outcomes(mut tenant: TenantFile, section: &str) -> TenantFile {
    tenant.outcomes = Some(toml::from_str(section).expect("[outcomes] parses"));
    tenant
}

/// One booked appointment: its booking key, calendar event, staff calendar and times.
struct Booked {
    call_id: String,
    key: String,
    event_id: String,
    calendar_id: String,
    start: Timestamp,
    end: Timestamp,
}

/// Books a consultation for the caller through the tool API — the `nth` slot offered on `day`
/// (or the first days offered) — ends the call and waits for its write-back (the CRM object).
async fn book(app: &TestApp, call_id: &str, phone: &str, day: Option<&str>, nth: usize) -> Booked {
    let mut c = app.connect(call_id, phone).await;
    c.initialize().await;
    let args = match day {
        Some(d) => json!({"service": "consult", "day": d}),
        None => json!({"service": "consult"}),
    };
    let slots = c.tool("find_slots", args).await;
    let slot = slots["structuredContent"]["slots"][nth].clone();
    assert!(slot.is_object(), "{slots}");
    let hold = c.tool("hold_slot", json!({"service": "consult", "start": slot["start"]})).await;
    let booked = c.tool("book_slot", json!({"hold_id": hold["structuredContent"]["hold_id"]})).await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    c.tool("end_call", json!({"summary": "Booked a consultation."})).await;
    assert_eq!(app.wait_for_sync(call_id).await, "synced");
    let row = app.core.store.bookings_for_call("demo", call_id).await.unwrap().remove(0);
    Booked {
        call_id: call_id.to_owned(),
        key: row.idempotency_key,
        event_id: row.event_id,
        calendar_id: row.calendar_id,
        start: Timestamp::from_millisecond(row.start_at).unwrap(),
        end: Timestamp::from_millisecond(row.end_at).unwrap(),
    }
}

/// The CRM object the write-back created for the booking (the appointment step's result).
async fn crm_object(app: &TestApp, b: &Booked) -> String {
    let steps = app.core.store.steps_for_call("demo", &b.call_id).await.unwrap();
    steps.into_iter().find(|s| s.kind == "appointment").and_then(|s| s.external_id).expect("appointment written")
}

/// Sets the clock to `at` and waits for a finished pass that read at `at` or later.
async fn pass_at(app: &TestApp, at: Timestamp) -> OutcomeProgress {
    let mut progress = app.core.outcomes.progress();
    app.clock.set(at);
    let wait = progress.wait_for(|p| p.as_of.is_some_and(|t| t >= at));
    // The guard only keeps a regression from hanging the run; the wait is on the signal.
    *tokio::time::timeout(Duration::from_secs(60), wait).await.expect("a pass ran").expect("reader alive")
}

async fn outcome(app: &TestApp, b: &Booked) -> Option<RecordedOutcome> {
    app.core.store.booking_outcome("demo", &b.key).await.unwrap()
}

fn of(o: Option<RecordedOutcome>) -> Option<(AppointmentOutcome, OutcomeSource)> {
    o.map(|o| (o.outcome, o.source))
}

async fn caller_context(app: &TestApp, call_id: &str, phone: &str) -> Value {
    let mut c = app.connect(call_id, phone).await;
    c.initialize().await;
    let r = c.tool("get_caller_context", json!({})).await;
    c.tool("end_call", json!({"summary": "Asked a question."})).await;
    r["structuredContent"].clone()
}

fn metric(app: &TestApp, needle: &str) -> u64 {
    app.core
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A rep sets the meeting's outcome in HubSpot (as user 7).
fn set_meeting_outcome(app: &TestApp, meeting: &str, outcome: &str) {
    app.hubspot.rep_edit(callside::sandbox::hubspot::ObjectType::Meetings, meeting, "hs_meeting_outcome", outcome, "7");
}

const ANA: &str = "+14155550134";
const MINUTE: SignedDuration = SignedDuration::from_secs(60);

#[tokio::test]
async fn a_no_show_marked_in_hubspot_is_read_after_the_appointment_and_the_callers_next_context_shows_it() {
    let app = spawn_app_with(server_file(""), vec![with_outcomes(demo_tenant(), "")]).await;
    let first = book(&app, "oc-book-1", ANA, None, 0).await;
    let meeting = crm_object(&app, &first).await;

    // Not asked before the end + read_after (60 minutes by default), even when the CRM knows.
    set_meeting_outcome(&app, &meeting, "NO_SHOW");
    pass_at(&app, first.end + MINUTE * 30).await;
    assert_eq!(outcome(&app, &first).await, None, "read only after the end + read_after");

    let read_at = first.end + MINUTE * 61;
    let progress = pass_at(&app, read_at).await;
    let recorded = outcome(&app, &first).await.expect("recorded");
    assert_eq!((recorded.outcome, recorded.source), (AppointmentOutcome::NoShow, OutcomeSource::Crm));
    assert_eq!(recorded.at, read_at.as_millisecond());
    assert!(progress.recorded >= 1);
    assert_eq!(metric(&app, "callside_appointment_outcomes_total{outcome=\"no_show\",source=\"crm\"}"), 1);
    let audit = app.core.store.audit_for_call("demo", &first.call_id).await.unwrap();
    let entry = audit.iter().find(|(action, _)| action == "booking.outcome").expect("an audit entry");
    assert_eq!(entry.1["outcome"], "no_show");
    assert_eq!(entry.1["source"], "crm");

    // Written once: the CRM changing its mind later does not rewrite it.
    set_meeting_outcome(&app, &meeting, "COMPLETED");
    pass_at(&app, read_at + MINUTE * 10).await;
    assert_eq!(of(outcome(&app, &first).await), Some((AppointmentOutcome::NoShow, OutcomeSource::Crm)));

    // Ana calls again: one missed appointment, on its local day; not yet "several".
    let s = caller_context(&app, "oc-ctx-1", ANA).await;
    assert_eq!(s["status"], "matched", "{s}");
    assert_eq!(s["past_no_shows"], 1, "{s}");
    let day = first.start.to_zoned_datetime(jiff::tz::TimeZone::get("America/New_York").unwrap()).date().to_string();
    assert_eq!(s["last_no_show"], json!(day));
    assert_eq!(s["late_cancellations"], 0);
    let notes = s["account_notes"].to_string();
    assert!(!notes.contains("missed"), "{notes}");

    // A second no-show: the hint for several missed appointments comes from the store's count.
    let second = book(&app, "oc-book-2", ANA, None, 0).await;
    let meeting = crm_object(&app, &second).await;
    set_meeting_outcome(&app, &meeting, "NO_SHOW");
    pass_at(&app, second.end + MINUTE * 61).await;
    let s = caller_context(&app, "oc-ctx-2", ANA).await;
    assert_eq!(s["past_no_shows"], 2, "{s}");
    assert!(s["account_notes"].to_string().contains("Several missed appointments"), "{s}");
    app.shutdown().await;
}

#[tokio::test]
async fn calendar_cancellations_a_purchase_at_the_till_and_silence_each_become_their_outcome() {
    let app = spawn_app_with(server_file(""), vec![with_outcomes(demo_tenant(), "give_up_after_days = 3")]).await;
    let day = "2026-11-27";
    let late = book(&app, "oc-late", "+14155550181", Some(day), 0).await;
    let early = book(&app, "oc-early", "+14155550182", Some(day), 0).await;
    let bought = book(&app, "oc-till", "+14155550183", Some(day), 0).await;
    let silent = book(&app, "oc-silent", "+14155550184", Some(day), 0).await;
    // Cancelled by the service itself, now: less than 24 h before its start on the 23rd's
    // first offered slots, so late at once, from callside.
    let own = book(&app, "oc-own", "+14155550185", None, 0).await;
    let mut c = app.connect("oc-own-cancel", "+14155550185").await;
    c.initialize().await;
    let r = c.tool("cancel_appointment", json!({"appointment_id": own.event_id})).await;
    assert_eq!(r["structuredContent"]["cancelled"], true, "{r}");
    c.tool("end_call", json!({"summary": "Cancelled."})).await;
    let recorded = outcome(&app, &own).await.expect("known at once");
    assert_eq!((recorded.outcome, recorded.source), (AppointmentOutcome::CancelledLate, OutcomeSource::Callside));
    assert_eq!(recorded.cancelled_at, Some(app.clock.now().as_millisecond()));

    // In the business's calendar: one cancelled three days ahead, one two hours ahead.
    app.clock.set(early.start - SignedDuration::from_hours(72));
    assert!(app.google.cancel_directly_at(&early.calendar_id, &early.event_id, app.clock.now()));
    app.clock.set(late.start - SignedDuration::from_hours(2));
    assert!(app.google.cancel_directly_at(&late.calendar_id, &late.event_id, app.clock.now()));
    // At the till that afternoon, after the appointment started.
    let customer = app.square.insert_customer("Bo", "Reyes", None, Some("(415) 555-0183"));
    app.square.insert_order(
        &customer,
        callside::sandbox::square::DEMO_LOCATION,
        bought.start + MINUTE * 40,
        &[("Consultation", 4000)],
    );

    let last_end = [&late, &early, &bought, &silent].iter().map(|b| b.end).max().unwrap();
    pass_at(&app, last_end + MINUTE * 61).await;
    assert_eq!(of(outcome(&app, &late).await), Some((AppointmentOutcome::CancelledLate, OutcomeSource::Calendar)));
    assert_eq!(of(outcome(&app, &early).await), Some((AppointmentOutcome::Cancelled, OutcomeSource::Calendar)));
    assert_eq!(of(outcome(&app, &bought).await), Some((AppointmentOutcome::Attended, OutcomeSource::Pos)));
    assert_eq!(outcome(&app, &silent).await, None, "nothing known yet: still asked");

    // Past give_up_after_days nobody is asked any more and nothing is guessed.
    pass_at(&app, silent.end + SignedDuration::from_hours(24 * 3) + MINUTE).await;
    assert_eq!(of(outcome(&app, &silent).await), Some((AppointmentOutcome::Unknown, OutcomeSource::Callside)));

    let s = caller_context(&app, "oc-ctx-late", "+14155550181").await;
    assert_eq!(s["late_cancellations"], 1, "{s}");
    assert_eq!(s["past_no_shows"], Value::Null, "no mapped count and no no-show: unknown, not zero");
    app.shutdown().await;
}

/// Microsoft 365: an organizer's cancellation keeps the event with `isCancelled`, and its
/// `lastModifiedDateTime` says when.
#[tokio::test]
async fn a_meeting_cancelled_in_microsoft_365_two_hours_ahead_is_a_late_cancellation() {
    let mut tenant = with_outcomes(demo_tenant(), "");
    tenant.calendar.vendor = "microsoft".into();
    let app = spawn_app_with(server_file(""), vec![tenant]).await;
    let late = book(&app, "oc-ms-late", "+14155550187", Some("2026-11-27"), 0).await;
    let early = book(&app, "oc-ms-early", "+14155550188", Some("2026-11-27"), 0).await;
    let graph_id = |b: &Booked| app.graph.events(&b.calendar_id).into_iter().find(|e| e.start == b.start).unwrap().id;
    app.clock.set(early.start - SignedDuration::from_hours(50));
    assert!(app.graph.cancel_directly_at(&early.calendar_id, &graph_id(&early), app.clock.now()));
    app.clock.set(late.start - SignedDuration::from_hours(2));
    assert!(app.graph.cancel_directly_at(&late.calendar_id, &graph_id(&late), app.clock.now()));
    pass_at(&app, late.end.max(early.end) + MINUTE * 61).await;
    assert_eq!(of(outcome(&app, &late).await), Some((AppointmentOutcome::CancelledLate, OutcomeSource::Calendar)));
    assert_eq!(of(outcome(&app, &early).await), Some((AppointmentOutcome::Cancelled, OutcomeSource::Calendar)));
    app.shutdown().await;
}

#[tokio::test]
async fn a_malformed_vendor_answer_marks_nothing_and_is_counted_then_the_next_pass_reads_it() {
    let app = spawn_app_with(server_file(""), vec![with_outcomes(demo_tenant(), "")]).await;
    let b = book(&app, "oc-garbled", ANA, None, 0).await;
    let meeting = crm_object(&app, &b).await;
    set_meeting_outcome(&app, &meeting, "COMPLETED");
    app.hubspot.garble_next_responses(1);
    let before = app.core.outcomes.progress().borrow().errors;
    let progress = pass_at(&app, b.end + MINUTE * 61).await;
    assert_eq!(outcome(&app, &b).await, None, "an unreadable answer is not an outcome");
    assert_eq!(progress.errors, before + 1);
    assert_eq!(metric(&app, "callside_appointment_outcome_errors_total{source=\"crm\"}"), 1);
    // Asked again an hour later (not at every pass), and read.
    pass_at(&app, b.end + MINUTE * 70).await;
    assert_eq!(outcome(&app, &b).await, None, "not asked again within the hour");
    pass_at(&app, b.end + MINUTE * 122).await;
    assert_eq!(of(outcome(&app, &b).await), Some((AppointmentOutcome::Attended, OutcomeSource::Crm)));
    app.shutdown().await;
}

#[tokio::test]
async fn a_done_pipedrive_activity_is_attended_and_a_mapped_field_tells_a_no_show() {
    let tenant = with_outcomes(Crm::Pipedrive.tenant(demo_tenant()), "crm_outcome_field = \"a7c0outcome\"");
    let app = spawn_app_with(server_file(""), vec![tenant]).await;
    let done = book(&app, "oc-pd-done", ANA, None, 0).await;
    let missed = book(&app, "oc-pd-missed", "+14155550186", None, 1).await;
    assert!(app.pipedrive.set_activity_field(&crm_object(&app, &done).await, "done", json!(true)));
    // Pipedrive has no no-show: the business keeps it in an activity field of its own.
    assert!(app.pipedrive.set_activity_custom_field(&crm_object(&app, &missed).await, "a7c0outcome", "No show"));
    pass_at(&app, done.end.max(missed.end) + MINUTE * 61).await;
    assert_eq!(of(outcome(&app, &done).await), Some((AppointmentOutcome::Attended, OutcomeSource::Crm)));
    assert_eq!(of(outcome(&app, &missed).await), Some((AppointmentOutcome::NoShow, OutcomeSource::Crm)));
    app.shutdown().await;
}

#[tokio::test]
async fn salesforce_outcomes_come_only_from_the_mapped_event_field() {
    for mapped in [true, false] {
        let section = if mapped { "crm_outcome_field = \"Outcome__c\"" } else { "" };
        let app =
            spawn_app_with(server_file(""), vec![with_outcomes(Crm::Salesforce.tenant(demo_tenant()), section)]).await;
        let b = book(&app, "oc-sf", ANA, None, 0).await;
        let event = crm_object(&app, &b).await;
        let user = app.salesforce.insert_user("Rita", "Rep", "rita@example.com");
        app.salesforce.rep_edit(&event, "Outcome__c", "No Show", &user);
        pass_at(&app, b.end + MINUTE * 61).await;
        if mapped {
            assert_eq!(of(outcome(&app, &b).await), Some((AppointmentOutcome::NoShow, OutcomeSource::Crm)));
        } else {
            // Nothing from Salesforce without the field; the calendar says nothing either.
            assert_eq!(outcome(&app, &b).await, None);
        }
        app.shutdown().await;
    }
}

#[test]
fn bad_outcome_settings_are_clear_config_errors() {
    let issues = |section: &str, crm: Crm| {
        let tenant = with_outcomes(crm.tenant(demo_tenant()), section);
        Config::from_parts(
            Path::new("callside.toml"),
            server_file(""),
            vec![(PathBuf::from("demo.toml"), tenant)],
            &Overrides::default(),
            PathBuf::from("data"),
        )
        .err()
        .map(|e| e.issues.into_iter().map(|i| (i.key, i.reason)).collect::<Vec<_>>())
        .unwrap_or_default()
    };
    assert!(issues("", Crm::HubSpot).is_empty(), "the defaults are valid");
    assert_eq!(
        toml::from_str::<OutcomesSection>("").unwrap(),
        OutcomesSection {
            late_cancel_hours: 24,
            read_after_minutes: 60,
            give_up_after_days: 7,
            crm_outcome_field: None
        }
    );
    for (section, crm, key) in [
        ("give_up_after_days = 0", Crm::HubSpot, "outcomes.give_up_after_days"),
        ("give_up_after_days = 365", Crm::HubSpot, "outcomes.give_up_after_days"),
        ("read_after_minutes = 2880\ngive_up_after_days = 1", Crm::HubSpot, "outcomes.give_up_after_days"),
        ("read_after_minutes = 20000", Crm::HubSpot, "outcomes.read_after_minutes"),
        ("late_cancel_hours = 1000", Crm::HubSpot, "outcomes.late_cancel_hours"),
        ("crm_outcome_field = \"Outcome__c\"", Crm::HubSpot, "outcomes.crm_outcome_field"),
        ("crm_outcome_field = \"Outcome; drop\"", Crm::Salesforce, "outcomes.crm_outcome_field"),
    ] {
        let found = issues(section, crm);
        assert_eq!(found.len(), 1, "{section}: {found:?}");
        assert_eq!(found[0].0, key, "{section}: {found:?}");
        assert!(!found[0].1.is_empty());
    }
    // A value of the wrong type is refused by the parser with the key named.
    let err = toml::from_str::<OutcomesSection>("late_cancel_hours = -3").unwrap_err();
    assert!(err.to_string().contains("late_cancel_hours"), "{err}");
    let err = toml::from_str::<OutcomesSection>("late_cancel = 3").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}
