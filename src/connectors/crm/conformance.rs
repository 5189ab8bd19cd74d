//! The CRM conformance suite: what every [`CrmConnector`] must do against its vendor's emulator.
//!
//! A vendor plugs in through two small traits: [`CrmEmulator`] (seed records, switch faults on,
//! inspect what was written — in vendor-neutral terms) and [`ConformanceTarget`] (start a fresh
//! emulator and a connector talking to it, connected the way production connects). Every check
//! is a plain async function taking the target, so a vendor's test module runs the whole suite
//! with one line per check (see the HubSpot run at the bottom of this file). Salesforce and
//! Pipedrive implement the same two traits.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};

use super::{
    AppointmentRecord, CallLog, ContactFields, CrmAppointmentStatus, CrmConnector, NameZipQuery, NoteRecord,
    PhoneQuery, PropertyValue, PropertyWrite, PropertyWriteStatus, SecondaryPhoneOutcome, TaskRecord,
};
use crate::connectors::ConnectorError;

/// A contact to seed, in neutral terms.
#[derive(Debug, Clone, Default)]
pub struct SeedContact {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub mobile: Option<String>,
    pub zip: Option<String>,
    pub owner_id: Option<String>,
}

/// Engagement records the suite counts on a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Call,
    Note,
    Task,
    Meeting,
}

/// How a 429's `Retry-After` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    Seconds(u64),
    /// An HTTP date this many seconds after now.
    DateIn(u64),
}

/// Vendor property names for the typed-write checks.
#[derive(Debug, Clone)]
pub struct TypedProperties {
    pub text: String,
    pub number: String,
    pub date: String,
    pub datetime: String,
    pub enumeration: String,
    pub enumeration_option: String,
}

/// A running vendor emulator, driven by the suite.
pub trait CrmEmulator: Send + Sync {
    fn seed_contact(&self, seed: &SeedContact) -> String;
    fn seed_owner(&self, first_name: &str, last_name: &str, email: &str) -> String;
    fn seed_deal(&self, contact_id: &str, name: &str, open: bool) -> String;
    fn seed_ticket(&self, contact_id: &str, subject: &str, open: bool) -> String;
    fn seed_task(&self, contact_id: &str, subject: &str, completed: bool) -> String;
    fn seed_note(&self, contact_id: &str, body: &str, at: Timestamp) -> String;
    /// A person edits the contact in the CRM's own UI.
    fn rep_edit(&self, contact_id: &str, property: &str, value: &str, user_id: &str);

    fn contact_property(&self, contact_id: &str, property: &str) -> Option<String>;
    fn count(&self, contact_id: &str, kind: RecordKind) -> usize;
    fn contacts_total(&self) -> usize;
    /// `(owner id, due)` of each task on the contact.
    fn tasks(&self, contact_id: &str) -> Vec<(Option<String>, Option<Timestamp>)>;
    fn deal_stage(&self, deal_id: &str) -> Option<String>;
    /// `(label, id)` of an open stage of the default pipeline other than the seeded one.
    fn another_open_stage(&self) -> (String, String);
    fn typed_properties(&self) -> TypedProperties;
    /// The vendor enforces unique emails on contacts (a create with a taken one is a conflict).
    fn unique_emails(&self) -> bool;
    /// The vendor has tickets (Pipedrive has none: the context's tickets are always empty).
    fn has_tickets(&self) -> bool {
        true
    }
    /// The vendor field a last name is written to (Pipedrive keeps one `name`).
    fn last_name_field(&self) -> String {
        "lastname".into()
    }

    fn set_search_lag(&self, on: bool);
    fn drop_next_write_response(&self);
    fn fail_next_with_rate_limit(&self, retry_after: RetryAfter);
    fn fail_next_with_server_error(&self);
    fn set_down(&self, down: bool);
    fn reject_property(&self, property: &str);
    fn ignore_property(&self, property: &str);
    fn clear_property_faults(&self);
    fn expire_access_token(&self);
    fn revoke_grant(&self);
    fn refresh_count(&self) -> u64;
    /// The custom field a tenant maps for an appointment's outcome (`[outcomes]
    /// crm_outcome_field`); `None` when the vendor has a standard one (HubSpot).
    fn outcome_field(&self) -> Option<String>;
    /// A person records what became of the appointment (`object_id`: what
    /// [`CrmConnector::record_appointment`] returned) in the CRM's UI: `attended` or `no_show`.
    fn record_outcome(&self, object_id: &str, outcome: &str);
    /// Whether an attended appointment is still read without the mapped field (Pipedrive's
    /// `done`) — Salesforce reads nothing then.
    fn reads_attendance_natively(&self) -> bool {
        true
    }
    /// Whether the vendor's rate-limit answer says when to retry (HubSpot's `Retry-After`).
    /// Salesforce's 403 `REQUEST_LIMIT_EXCEEDED` carries no such hint.
    fn rate_limit_says_when(&self) -> bool {
        true
    }
}

/// A connector and its emulator, plus whatever must live as long as they do.
pub struct Harness {
    pub crm: Arc<dyn CrmConnector>,
    pub emulator: Arc<dyn CrmEmulator>,
    pub keep: Box<dyn Any + Send + Sync>,
}

#[async_trait]
pub trait ConformanceTarget: Send + Sync {
    /// A fresh emulator and a connector connected to it as in production (OAuth where the
    /// vendor uses it), so token refresh and revocation run through the real paths.
    async fn start(&self) -> Harness;
}

fn seed(first: &str, last: &str) -> SeedContact {
    SeedContact { first_name: Some(first.into()), last_name: Some(last.into()), ..Default::default() }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn call_log(call_id: &str) -> CallLog {
    CallLog {
        call_id: call_id.into(),
        started_at: "2026-11-23T14:00:00Z".parse().unwrap(),
        duration_secs: 90,
        from: Some("+14155550134".into()),
        to: "+14155550100".into(),
        summary: "Asked about a quote.".into(),
        disposition: Some("connected".into()),
        recording_url: None,
        transcript_url: None,
        source: "AI receptionist".into(),
    }
}

fn appointment() -> AppointmentRecord {
    AppointmentRecord {
        title: "Estimate visit".into(),
        start: "2026-11-24T17:00:00Z".parse().unwrap(),
        end: "2026-11-24T18:00:00Z".parse().unwrap(),
        calendar_event_id: "evt-1".into(),
        notes: None,
    }
}

fn task() -> TaskRecord {
    TaskRecord {
        subject: "Call back about the quote".into(),
        body: Some("Caller wants a written quote.".into()),
        due: "2026-11-25T16:00:00Z".parse().unwrap(),
        owner_id: None,
        priority: Some("HIGH".into()),
    }
}

// ----- read parity ---------------------------------------------------------------------------------

/// A number stored in five layouts is found by one lookup; the caller's digit check keeps them
/// and drops a different number.
pub async fn finds_by_phone_stored_in_five_formats(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let layouts = ["+14155550134", "(415) 555-0134", "415-555-0134", "4155550134", "+1 415 555 0134"];
    let expected: Vec<String> = layouts
        .iter()
        .map(|p| h.emulator.seed_contact(&SeedContact { phone: Some(p.to_string()), ..seed("Ada", "L") }))
        .collect();
    let other = h.emulator.seed_contact(&SeedContact { phone: Some("+14155550199".into()), ..seed("Bo", "M") });
    let query = PhoneQuery { e164: "+14155550134".into(), national: "4155550134".into() };
    let found = h.crm.find_contacts_by_phone(&query).await.unwrap();
    let matching: Vec<String> = found
        .iter()
        .filter(|c| c.phones.iter().any(|p| digits(p).ends_with("4155550134")))
        .map(|c| c.id.clone())
        .collect();
    for id in &expected {
        assert!(matching.contains(id), "contact {id} not found: {found:?}");
    }
    assert!(!matching.contains(&other));
}

pub async fn finds_by_email_case_insensitively(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let ada = h.emulator.seed_contact(&SeedContact { email: Some("Ada@Example.com".into()), ..seed("Ada", "L") });
    h.emulator.seed_contact(&SeedContact { email: Some("bo@example.com".into()), ..seed("Bo", "M") });
    let found = h.crm.find_contacts_by_email("ada@example.com").await.unwrap();
    assert_eq!(found.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec![ada.as_str()]);
    assert!(h.crm.find_contacts_by_email("nobody@example.com").await.unwrap().is_empty());
}

pub async fn finds_by_name_and_zip(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let zip = |z: &str, s: SeedContact| SeedContact { zip: Some(z.into()), ..s };
    let ada = h.emulator.seed_contact(&zip("94107", seed("Ada", "Lovelace")));
    h.emulator.seed_contact(&zip("10001", seed("Ada", "Lovelace")));
    let bo = h.emulator.seed_contact(&zip("94107", seed("Bo", "Lovelace")));
    let query = NameZipQuery { first_name: Some("ada".into()), last_name: "LOVELACE".into(), zip: "94107".into() };
    let found = h.crm.find_contacts_by_name_zip(&query).await.unwrap();
    assert_eq!(found.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec![ada.as_str()]);
    let by_last = NameZipQuery { first_name: None, last_name: "Lovelace".into(), zip: "94107".into() };
    let mut ids: Vec<String> =
        h.crm.find_contacts_by_name_zip(&by_last).await.unwrap().into_iter().map(|c| c.id).collect();
    ids.sort();
    let mut want = vec![ada, bo];
    want.sort();
    assert_eq!(ids, want);
}

/// The context carries open deals, open tickets, open tasks, recent notes and the owner.
pub async fn reads_context_with_deals_tickets_tasks(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let owner = h.emulator.seed_owner("Rita", "Rep", "rita@example.com");
    let contact = h.emulator.seed_contact(&SeedContact {
        phone: Some("+14155550134".into()),
        owner_id: Some(owner.clone()),
        ..seed("Ada", "Lovelace")
    });
    let open_deal = h.emulator.seed_deal(&contact, "Kitchen remodel", true);
    h.emulator.seed_deal(&contact, "Old job", false);
    let open_ticket = h.emulator.has_tickets().then(|| h.emulator.seed_ticket(&contact, "Leaking tap", true));
    if h.emulator.has_tickets() {
        h.emulator.seed_ticket(&contact, "Fixed already", false);
    }
    let open_task = h.emulator.seed_task(&contact, "Send brochure", false);
    h.emulator.seed_task(&contact, "Done thing", true);
    let note = h.emulator.seed_note(&contact, "Prefers mornings", "2026-11-20T10:00:00Z".parse().unwrap());

    let ctx = h.crm.read_context(&contact).await.unwrap();
    assert_eq!(ctx.contact.first_name.as_deref(), Some("Ada"));
    assert_eq!(ctx.open_deals.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), vec![open_deal.as_str()]);
    assert_eq!(
        ctx.open_tickets.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        open_ticket.into_iter().collect::<Vec<_>>()
    );
    assert_eq!(ctx.open_tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec![open_task.as_str()]);
    let activity = ctx.recent_activity.iter().find(|a| a.id == note).expect("the note is in the recent activity");
    assert!(activity.summary.contains("Prefers mornings"), "{activity:?}");
    let resolved = ctx.owner.expect("the owner is resolved");
    assert_eq!(resolved.id, owner);
    assert_eq!(resolved.first_name.as_deref(), Some("Rita"));
}

// ----- write parity --------------------------------------------------------------------------------

pub async fn writes_contacts_calls_notes_tasks_meetings_idempotently(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let fields = ContactFields { first_name: Some("Grace".into()), zip: Some("10001".into()), ..Default::default() };
    let contact = h.crm.create_contact(&fields, "c-key").await.unwrap();
    assert_eq!(h.crm.create_contact(&fields, "c-key").await.unwrap(), contact);
    assert_eq!(h.emulator.contacts_total(), 1);

    let update = ContactFields { last_name: Some("Hopper".into()), ..Default::default() };
    h.crm.update_contact(&contact, &update).await.unwrap();
    assert_eq!(h.emulator.contact_property(&contact, "lastname").as_deref(), Some("Hopper"));

    let call = h.crm.log_call(&contact, &call_log("call-1"), "call-key").await.unwrap();
    assert_eq!(h.crm.log_call(&contact, &call_log("call-1"), "call-key").await.unwrap(), call);
    let note = NoteRecord { body: "Wants a quote by Friday.".into(), at: "2026-11-23T14:05:00Z".parse().unwrap() };
    let note_id = h.crm.log_note(&contact, &note, "note-key").await.unwrap();
    assert_eq!(h.crm.log_note(&contact, &note, "note-key").await.unwrap(), note_id);
    let owner = h.emulator.seed_owner("Rita", "Rep", "rita@example.com");
    let t = TaskRecord { owner_id: Some(owner.clone()), ..task() };
    let task_id = h.crm.create_task(&contact, &t, "task-key").await.unwrap();
    assert_eq!(h.crm.create_task(&contact, &t, "task-key").await.unwrap(), task_id);
    let meeting = h.crm.record_appointment(&contact, &appointment(), "appt-key").await.unwrap();
    assert_eq!(h.crm.record_appointment(&contact, &appointment(), "appt-key").await.unwrap(), meeting);

    for kind in [RecordKind::Call, RecordKind::Note, RecordKind::Task, RecordKind::Meeting] {
        assert_eq!(h.emulator.count(&contact, kind), 1, "{kind:?}");
    }
    assert_eq!(h.emulator.tasks(&contact), vec![(Some(owner), Some(t.due))]);
}

/// What became of a booked appointment is read from the CRM object the write-back created: not
/// yet known right after booking, then what a person recorded — the tenant's mapped field where
/// the vendor has no standard one.
pub async fn reads_what_became_of_an_appointment(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let contact = h.emulator.seed_contact(&seed("Ada", "Outcome"));
    let id = h.crm.record_appointment(&contact, &appointment(), "appt-outcome").await.unwrap();
    let field = h.emulator.outcome_field();
    let read = || h.crm.appointment_status(&id, field.as_deref());
    assert_eq!(read().await.unwrap(), CrmAppointmentStatus::NotYetKnown, "just booked");
    h.emulator.record_outcome(&id, "no_show");
    assert_eq!(read().await.unwrap(), CrmAppointmentStatus::NoShow);
    h.emulator.record_outcome(&id, "attended");
    assert_eq!(read().await.unwrap(), CrmAppointmentStatus::Attended);
    // Without the mapping: what the vendor itself records, or nothing.
    let unmapped = h.crm.appointment_status(&id, None).await.unwrap();
    if h.emulator.reads_attendance_natively() {
        assert_eq!(unmapped, CrmAppointmentStatus::Attended);
    } else {
        assert_eq!(unmapped, CrmAppointmentStatus::NotTracked);
    }
}

pub async fn moves_a_deal_to_a_stage_by_label(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let contact = h.emulator.seed_contact(&seed("Ada", "L"));
    let deal = h.emulator.seed_deal(&contact, "Remodel", true);
    let (label, id) = h.emulator.another_open_stage();
    h.crm.set_deal_stage(&deal, &label.to_uppercase()).await.unwrap();
    assert_eq!(h.emulator.deal_stage(&deal), Some(id.clone()));
    h.crm.set_deal_stage(&deal, &id).await.unwrap();
    let err = h.crm.set_deal_stage(&deal, "no such stage").await.unwrap_err();
    assert!(matches!(err, ConnectorError::Validation { .. }), "{err:?}");
}

/// Typed values go out in the vendor's formats; a bad option is refused before sending; a
/// property the vendor rejects does not stop the others; a silently ignored one is reported.
pub async fn writes_typed_properties_with_per_property_results(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let p = h.emulator.typed_properties();
    let contact = h.emulator.seed_contact(&seed("Ada", "L"));
    let w = |name: &str, value: PropertyValue| PropertyWrite { name: name.into(), value };
    let date: jiff::civil::Date = "2026-12-01".parse().unwrap();
    let at: Timestamp = "2026-11-23T14:30:00Z".parse().unwrap();
    let writes = vec![
        w(&p.text, PropertyValue::Text("Acme".into())),
        w(&p.number, PropertyValue::Number(3.into())),
        w(&p.date, PropertyValue::Date(date)),
        w(&p.datetime, PropertyValue::DateTime(at)),
        w(&p.enumeration, PropertyValue::Enumeration(p.enumeration_option.clone())),
    ];
    let results = h.crm.update_properties(&contact, &writes).await.unwrap();
    assert_eq!(results.len(), writes.len());
    for r in &results {
        assert_eq!(r.status, PropertyWriteStatus::Written, "{r:?}");
    }
    assert_eq!(h.emulator.contact_property(&contact, &p.text).as_deref(), Some("Acme"));
    assert_eq!(h.emulator.contact_property(&contact, &p.date).as_deref(), Some("2026-12-01"));

    let bad_option = vec![w(&p.enumeration, PropertyValue::Enumeration("carrier-pigeon".into()))];
    let results = h.crm.update_properties(&contact, &bad_option).await.unwrap();
    assert!(matches!(results[0].status, PropertyWriteStatus::Rejected { .. }), "{results:?}");
    assert_eq!(h.emulator.contact_property(&contact, &p.enumeration), Some(p.enumeration_option.clone()));

    h.emulator.reject_property(&p.number);
    let results = h
        .crm
        .update_properties(
            &contact,
            &[w(&p.number, PropertyValue::Number(4.into())), w(&p.text, PropertyValue::Text("Beta".into()))],
        )
        .await
        .unwrap();
    assert!(matches!(results[0].status, PropertyWriteStatus::Rejected { .. }), "{results:?}");
    assert_eq!(results[1].status, PropertyWriteStatus::Written);
    assert_eq!(h.emulator.contact_property(&contact, &p.text).as_deref(), Some("Beta"));
    h.emulator.clear_property_faults();

    h.emulator.ignore_property(&p.text);
    let results = h
        .crm
        .update_properties(
            &contact,
            &[w(&p.text, PropertyValue::Text("Gamma".into())), w(&p.number, PropertyValue::Number(5.into()))],
        )
        .await
        .unwrap();
    assert_eq!(results[0].status, PropertyWriteStatus::Ignored, "{results:?}");
    assert_eq!(results[1].status, PropertyWriteStatus::Written);
    h.emulator.clear_property_faults();
}

pub async fn adds_a_second_phone_without_overwriting_the_first(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let contact = h.emulator.seed_contact(&SeedContact { phone: Some("(415) 555-0134".into()), ..seed("Ada", "L") });
    let outcome = h.crm.add_secondary_phone(&contact, "+14155550134").await.unwrap();
    assert!(matches!(outcome, SecondaryPhoneOutcome::AlreadyPresent { .. }), "{outcome:?}");
    let outcome = h.crm.add_secondary_phone(&contact, "+14155550177").await.unwrap();
    assert!(matches!(outcome, SecondaryPhoneOutcome::Added { .. }), "{outcome:?}");
    let outcome = h.crm.add_secondary_phone(&contact, "+14155550188").await.unwrap();
    assert_eq!(outcome, SecondaryPhoneOutcome::NoFreeSlot);
    let ctx = h.crm.read_context(&contact).await.unwrap();
    assert_eq!(ctx.contact.phones[0], "(415) 555-0134", "the first phone is untouched");
    assert!(ctx.contact.phones.iter().any(|p| digits(p) == "14155550177"));
}

/// Property history tells a rep's edit from the connector's own write.
pub async fn property_history_tells_a_rep_edit_from_ours(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let p = h.emulator.typed_properties();
    let contact = h.emulator.seed_contact(&seed("Ada", "L"));
    let write = PropertyWrite { name: p.text.clone(), value: PropertyValue::Text("ours".into()) };
    h.crm.update_properties(&contact, &[write]).await.unwrap();
    let history = h.crm.property_history(&contact, std::slice::from_ref(&p.text)).await.unwrap();
    assert!(!history[0].versions[0].is_human_edit(), "{history:?}");
    h.emulator.rep_edit(&contact, &p.text, "theirs", "4242");
    let history = h.crm.property_history(&contact, std::slice::from_ref(&p.text)).await.unwrap();
    let newest = &history[0].versions[0];
    assert_eq!(newest.value, "theirs");
    assert!(newest.is_human_edit(), "{newest:?}");
    assert_eq!(newest.updated_by_user_id.as_deref(), Some("4242"));
    assert!(history[0].versions.iter().any(|v| v.value == "ours" && !v.is_human_edit()));
}

// ----- idempotency under lag -------------------------------------------------------------------------

/// Each create kind: the write is applied, the response is lost, search lags — the retry with the
/// same key returns the same record and nothing is duplicated.
pub async fn a_dropped_response_is_retried_without_duplicates_under_search_lag(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    h.emulator.set_search_lag(true);
    let fields =
        ContactFields { first_name: Some("Lost".into()), phone: Some("+14155550134".into()), ..Default::default() };
    h.emulator.drop_next_write_response();
    let err = h.crm.create_contact(&fields, "lost-contact").await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let contact = h.crm.create_contact(&fields, "lost-contact").await.unwrap();
    assert_eq!(h.emulator.contacts_total(), 1);

    h.emulator.drop_next_write_response();
    assert!(h.crm.log_call(&contact, &call_log("c"), "lost-call").await.unwrap_err().is_retryable());
    h.crm.log_call(&contact, &call_log("c"), "lost-call").await.unwrap();

    let note = NoteRecord { body: "n".into(), at: Timestamp::now() };
    h.emulator.drop_next_write_response();
    assert!(h.crm.log_note(&contact, &note, "lost-note").await.unwrap_err().is_retryable());
    h.crm.log_note(&contact, &note, "lost-note").await.unwrap();

    h.emulator.drop_next_write_response();
    assert!(h.crm.create_task(&contact, &task(), "lost-task").await.unwrap_err().is_retryable());
    h.crm.create_task(&contact, &task(), "lost-task").await.unwrap();

    h.emulator.drop_next_write_response();
    assert!(h.crm.record_appointment(&contact, &appointment(), "lost-appt").await.unwrap_err().is_retryable());
    h.crm.record_appointment(&contact, &appointment(), "lost-appt").await.unwrap();

    for kind in [RecordKind::Call, RecordKind::Note, RecordKind::Task, RecordKind::Meeting] {
        assert_eq!(h.emulator.count(&contact, kind), 1, "{kind:?} duplicated");
    }
}

// ----- error classes ----------------------------------------------------------------------------------

pub async fn classifies_every_error(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let contact = h.emulator.seed_contact(&seed("Ada", "L"));

    let hinted = h.emulator.rate_limit_says_when();
    h.emulator.fail_next_with_rate_limit(RetryAfter::Seconds(30));
    match h.crm.read_context(&contact).await.unwrap_err() {
        ConnectorError::RateLimited { retry_after: Some(d), .. } if hinted => {
            assert!(d >= Duration::from_secs(30), "{d:?}")
        }
        ConnectorError::RateLimited { retry_after: None, .. } if !hinted => {}
        other => panic!("expected rate limited, got {other:?}"),
    }
    h.emulator.fail_next_with_rate_limit(RetryAfter::DateIn(120));
    match h.crm.read_context(&contact).await.unwrap_err() {
        ConnectorError::RateLimited { retry_after: Some(d), .. } if hinted => {
            assert!(d >= Duration::from_secs(110) && d <= Duration::from_secs(121), "{d:?}")
        }
        ConnectorError::RateLimited { retry_after: None, .. } if !hinted => {}
        other => panic!("expected rate limited, got {other:?}"),
    }

    h.emulator.fail_next_with_server_error();
    assert!(matches!(h.crm.read_context(&contact).await.unwrap_err(), ConnectorError::Transient(_)));
    h.emulator.set_down(true);
    assert!(matches!(h.crm.read_context(&contact).await.unwrap_err(), ConnectorError::Transient(_)));
    h.emulator.set_down(false);

    let err = h.crm.read_context("999999999").await.unwrap_err();
    assert!(matches!(err, ConnectorError::NotFound(_)), "{err:?}");

    let p = h.emulator.typed_properties();
    h.emulator.reject_property(&h.emulator.last_name_field());
    let err =
        h.crm.update_contact(&contact, &ContactFields { last_name: Some("X".into()), ..Default::default() }).await;
    match err.unwrap_err() {
        // Field names compare case-insensitively (Salesforce answers `LastName`).
        ConnectorError::Validation { fields, .. } => assert_eq!(
            fields.iter().map(|f| f.to_ascii_lowercase()).collect::<Vec<_>>(),
            vec![h.emulator.last_name_field().to_ascii_lowercase()]
        ),
        other => panic!("expected validation, got {other:?}"),
    }
    h.emulator.clear_property_faults();
    let _ = p;

    if h.emulator.unique_emails() {
        let taken = h.emulator.seed_contact(&SeedContact { email: Some("taken@example.com".into()), ..seed("T", "T") });
        let fields = ContactFields { email: Some("taken@example.com".into()), ..Default::default() };
        match h.crm.create_contact(&fields, "new-key").await.unwrap_err() {
            ConnectorError::Conflict { existing_id, .. } => assert_eq!(existing_id, Some(taken)),
            other => panic!("expected conflict, got {other:?}"),
        }
    }
}

/// An expired access token is refreshed once — even by 100 concurrent requests (a write-back
/// backlog draining after an outage) — and every request succeeds.
pub async fn refreshes_an_expired_token_once(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let contact = h.emulator.seed_contact(&seed("Ada", "L"));
    h.crm.read_context(&contact).await.unwrap();
    let before = h.emulator.refresh_count();
    h.emulator.expire_access_token();
    let results = futures::future::join_all((0..100).map(|_| h.crm.read_context(&contact))).await;
    for r in results {
        r.unwrap();
    }
    assert_eq!(h.emulator.refresh_count(), before + 1, "one refresh for 100 concurrent requests");
}

/// A revoked grant surfaces as `AuthRevoked`, not as a retryable expiry.
pub async fn a_revoked_grant_surfaces_as_revoked(target: &dyn ConformanceTarget) {
    let h = target.start().await;
    let contact = h.emulator.seed_contact(&seed("Ada", "L"));
    h.emulator.revoke_grant();
    h.emulator.expire_access_token();
    let err = h.crm.read_context(&contact).await.unwrap_err();
    assert!(matches!(err, ConnectorError::AuthRevoked(_)), "{err:?}");
    assert!(!err.is_retryable());
    let refreshes = h.emulator.refresh_count();
    let err = h.crm.read_context(&contact).await.unwrap_err();
    assert!(matches!(err, ConnectorError::AuthRevoked(_)), "{err:?}");
    assert_eq!(h.emulator.refresh_count(), refreshes, "a revoked connection is not refreshed again");
}

/// A `Retry-After` HTTP date `secs` from now (RFC 9110 IMF-fixdate).
pub fn http_date_in(secs: u64) -> String {
    let at = Timestamp::now() + SignedDuration::from_secs(secs as i64);
    at.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Every page of one incremental pull from `since` (the identity pull's loop without the
/// index): the contacts in the order listed, the number of pages and the newest stamp seen.
pub async fn pull_all(
    crm: &dyn CrmConnector,
    since: Option<Timestamp>,
) -> (Vec<super::CrmContact>, usize, Option<Timestamp>) {
    let (mut contacts, mut pages, mut newest) = (Vec::new(), 0, None::<Timestamp>);
    let mut cursor: Option<String> = None;
    loop {
        let page = crm.contacts_changed_since(since, cursor.as_deref()).await.expect("a page of changes");
        pages += 1;
        assert!(pages < 50, "the pull must end");
        contacts.extend(page.contacts);
        newest = newest.max(page.newest);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return (contacts, pages, newest),
        }
    }
}

// ----- HubSpot -----------------------------------------------------------------------------------------

#[cfg(test)]
mod hubspot_run {
    use std::sync::Arc;

    use async_trait::async_trait;
    use jiff::Timestamp;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::clock::SystemClock;
    use crate::connections::{Connections, OAuthApp, TokenCipher};
    use crate::connectors::crm::hubspot::HubSpotConnector;
    use crate::connectors::http_client;
    use crate::sandbox::hubspot::{
        CUSTOM_DATE_PROPERTY, CUSTOM_DATETIME_PROPERTY, CUSTOM_ENUM_OPTIONS, CUSTOM_ENUM_PROPERTY,
        CUSTOM_NUMBER_PROPERTY, HubSpotSandbox, InjectedFailure, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, ObjectType,
    };
    use crate::store::Store;

    struct HubSpotEmulator {
        sandbox: HubSpotSandbox,
    }

    impl CrmEmulator for HubSpotEmulator {
        fn outcome_field(&self) -> Option<String> {
            None
        }

        fn record_outcome(&self, object_id: &str, outcome: &str) {
            let value = match outcome {
                "attended" => "COMPLETED",
                "no_show" => "NO_SHOW",
                other => panic!("no HubSpot outcome for {other}"),
            };
            self.sandbox.state.rep_edit(ObjectType::Meetings, object_id, "hs_meeting_outcome", value, "7");
        }

        fn seed_contact(&self, seed: &SeedContact) -> String {
            let mut props: Vec<(&str, String)> = Vec::new();
            let mut put = |k: &'static str, v: &Option<String>| {
                if let Some(v) = v {
                    props.push((k, v.clone()));
                }
            };
            put("firstname", &seed.first_name);
            put("lastname", &seed.last_name);
            put("email", &seed.email);
            put("phone", &seed.phone);
            put("mobilephone", &seed.mobile);
            put("zip", &seed.zip);
            put("hubspot_owner_id", &seed.owner_id);
            self.sandbox.state.insert_contact(props)
        }

        fn seed_owner(&self, first_name: &str, last_name: &str, email: &str) -> String {
            self.sandbox.state.insert_owner(first_name, last_name, email)
        }

        fn seed_deal(&self, contact_id: &str, name: &str, open: bool) -> String {
            let stage = if open { "qualifiedtobuy" } else { "closedwon" };
            self.sandbox.state.insert_deal([("dealname", name), ("dealstage", stage)], contact_id)
        }

        fn seed_ticket(&self, contact_id: &str, subject: &str, open: bool) -> String {
            let stage = if open { "1" } else { "4" };
            self.sandbox.state.insert_associated(
                ObjectType::Tickets,
                [("subject", subject), ("hs_pipeline_stage", stage)],
                contact_id,
            )
        }

        fn seed_task(&self, contact_id: &str, subject: &str, completed: bool) -> String {
            let status = if completed { "COMPLETED" } else { "NOT_STARTED" };
            self.sandbox.state.insert_associated(
                ObjectType::Tasks,
                [
                    ("hs_task_subject", subject),
                    ("hs_task_status", status),
                    ("hs_timestamp", "2026-11-30T09:00:00.000Z"),
                ],
                contact_id,
            )
        }

        fn seed_note(&self, contact_id: &str, body: &str, at: Timestamp) -> String {
            let at = at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            let body = format!("<p>{body}</p>");
            self.sandbox.state.insert_associated(
                ObjectType::Notes,
                [("hs_note_body", body.as_str()), ("hs_timestamp", at.as_str())],
                contact_id,
            )
        }

        fn rep_edit(&self, contact_id: &str, property: &str, value: &str, user_id: &str) {
            self.sandbox.state.rep_edit(ObjectType::Contacts, contact_id, property, value, user_id);
        }

        fn contact_property(&self, contact_id: &str, property: &str) -> Option<String> {
            self.sandbox.state.contact(contact_id)?.prop(property).map(String::from)
        }

        fn count(&self, contact_id: &str, kind: RecordKind) -> usize {
            let t = match kind {
                RecordKind::Call => ObjectType::Calls,
                RecordKind::Note => ObjectType::Notes,
                RecordKind::Task => ObjectType::Tasks,
                RecordKind::Meeting => ObjectType::Meetings,
            };
            // Every record of the type (not only associated ones): a duplicate is a duplicate.
            let associated = self.sandbox.state.associated_with_contact(contact_id, t).len();
            let all = self.sandbox.state.objects(t).len();
            assert_eq!(associated, all, "every {t:?} is associated with the contact");
            all
        }

        fn contacts_total(&self) -> usize {
            self.sandbox.state.contacts().len()
        }

        fn tasks(&self, contact_id: &str) -> Vec<(Option<String>, Option<Timestamp>)> {
            self.sandbox
                .state
                .associated_with_contact(contact_id, ObjectType::Tasks)
                .iter()
                .map(|t| {
                    (t.prop("hubspot_owner_id").map(String::from), t.prop("hs_timestamp").and_then(|v| v.parse().ok()))
                })
                .collect()
        }

        fn deal_stage(&self, deal_id: &str) -> Option<String> {
            self.sandbox.state.deal(deal_id)?.prop("dealstage").map(String::from)
        }

        fn another_open_stage(&self) -> (String, String) {
            ("Contract Sent".into(), "contractsent".into())
        }

        fn typed_properties(&self) -> TypedProperties {
            TypedProperties {
                text: "company".into(),
                number: CUSTOM_NUMBER_PROPERTY.into(),
                date: CUSTOM_DATE_PROPERTY.into(),
                datetime: CUSTOM_DATETIME_PROPERTY.into(),
                enumeration: CUSTOM_ENUM_PROPERTY.into(),
                enumeration_option: CUSTOM_ENUM_OPTIONS[1].into(),
            }
        }

        fn unique_emails(&self) -> bool {
            true
        }

        fn set_search_lag(&self, on: bool) {
            self.sandbox.state.set_search_lag(on);
        }

        fn drop_next_write_response(&self) {
            self.sandbox.state.drop_next_responses_after_apply(1);
        }

        fn fail_next_with_rate_limit(&self, retry_after: RetryAfter) {
            let failure = match retry_after {
                RetryAfter::Seconds(s) => InjectedFailure::rate_limited_secs(s),
                RetryAfter::DateIn(s) => InjectedFailure::rate_limited_until(&http_date_in(s)),
            };
            self.sandbox.state.fail_next_with(failure.with_window(None), 1);
        }

        fn fail_next_with_server_error(&self) {
            self.sandbox.state.fail_next(500, 1);
        }

        fn set_down(&self, down: bool) {
            self.sandbox.state.set_down(down);
        }

        fn reject_property(&self, property: &str) {
            self.sandbox.state.reject_property(property);
        }

        fn ignore_property(&self, property: &str) {
            self.sandbox.state.ignore_property(property);
        }

        fn clear_property_faults(&self) {
            self.sandbox.state.clear_property_faults();
        }

        fn expire_access_token(&self) {
            self.sandbox.state.expire_token();
        }

        fn revoke_grant(&self) {
            self.sandbox.state.revoke_grant();
        }

        fn refresh_count(&self) -> u64 {
            self.sandbox.state.refresh_count()
        }
    }

    /// What a connected HubSpot tenant consists of in a test: the sandbox, a store in a
    /// temporary directory and the connection made through the OAuth flow.
    pub(crate) struct Connected {
        pub sandbox: HubSpotSandbox,
        pub store: Store,
        pub connections: Arc<Connections>,
        pub app: Arc<OAuthApp>,
        pub connection_id: String,
        pub dir: tempfile::TempDir,
    }

    /// Runs the authorization-code flow against the sandbox: start → the authorize page (which
    /// approves at once and redirects) → callback with the code and state.
    pub(crate) async fn connect() -> Connected {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("c.db").display())).await.unwrap();
        connect_on(store, dir).await
    }

    /// [`connect`] on a given store.
    async fn connect_on(store: Store, dir: tempfile::TempDir) -> Connected {
        let sandbox = HubSpotSandbox::start("unused-static-token").unwrap();
        let base = sandbox.base_url();
        let redirect = "https://callside.example.com/v1/connect/hubspot/callback";
        let app = Arc::new(
            OAuthApp::hubspot(OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET.to_string().into(), redirect, &base, &base).unwrap(),
        );
        let connections =
            Arc::new(Connections::new(store.clone(), Arc::new(test_cipher()), http_client(), Arc::new(SystemClock)));
        let authorize = connections.start(&app, "acme").await.unwrap();
        let answer = http_client().get(authorize).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 302);
        let location = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
        assert!(location.as_str().starts_with(redirect));
        let param = |k: &str| location.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned()).unwrap();
        let info = connections.callback(&app, &param("state"), &param("code")).await.unwrap();
        Connected { sandbox, store, connections, app, connection_id: info.id, dir }
    }

    fn test_cipher() -> TokenCipher {
        use base64::Engine as _;
        TokenCipher::from_base64(&base64::engine::general_purpose::STANDARD.encode([9u8; 32])).unwrap()
    }

    struct HubSpotTarget;

    #[async_trait]
    impl ConformanceTarget for HubSpotTarget {
        async fn start(&self) -> Harness {
            let c = connect().await;
            let tokens = c.connections.token_source(c.app.clone(), &c.connection_id);
            let crm = Arc::new(HubSpotConnector::with_token_source(c.sandbox.base_url(), tokens, http_client()));
            let Connected { sandbox, store, dir, .. } = c;
            Harness { crm, emulator: Arc::new(HubSpotEmulator { sandbox }), keep: Box::new((store, dir)) }
        }
    }

    macro_rules! conformance {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&HubSpotTarget).await;
                }
            )*
        };
    }

    conformance!(
        finds_by_phone_stored_in_five_formats,
        finds_by_email_case_insensitively,
        finds_by_name_and_zip,
        reads_context_with_deals_tickets_tasks,
        writes_contacts_calls_notes_tasks_meetings_idempotently,
        moves_a_deal_to_a_stage_by_label,
        writes_typed_properties_with_per_property_results,
        adds_a_second_phone_without_overwriting_the_first,
        property_history_tells_a_rep_edit_from_ours,
        a_dropped_response_is_retried_without_duplicates_under_search_lag,
        classifies_every_error,
        refreshes_an_expired_token_once,
        a_revoked_grant_surfaces_as_revoked,
        reads_what_became_of_an_appointment,
    );

    /// Issue 13, item 4: two instances on one PostgreSQL store (two stores over the same schema,
    /// each with its own `Connections` and connector) meet one expired token with 100 concurrent
    /// requests between them. The refresh runs under the store's advisory lock, so the vendor
    /// sees exactly one refresh — with rotating refresh tokens (the emulator's default) a second
    /// one would present the retired token, be refused, and revoke the connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_instances_on_one_postgresql_store_refresh_an_expired_token_once() {
        let schema = crate::store::testing::TestSchema::create().await.expect("the machine's PostgreSQL answers");
        let first = Store::open(&schema.url).await.unwrap();
        let c = connect_on(first, tempfile::tempdir().unwrap()).await;
        let second = Store::open(&schema.url).await.unwrap();
        let other =
            Arc::new(Connections::new(second.clone(), Arc::new(test_cipher()), http_client(), Arc::new(SystemClock)));
        let instances = [c.connections.clone(), other];
        let crms: Vec<_> = instances
            .iter()
            .map(|connections| {
                let tokens = connections.token_source(c.app.clone(), &c.connection_id);
                HubSpotConnector::with_token_source(c.sandbox.base_url(), tokens, http_client())
            })
            .collect();
        let contact = c.sandbox.state.insert_contact([("firstname", "Ada"), ("lastname", "L")]);
        for crm in &crms {
            crm.read_context(&contact).await.unwrap();
        }
        let before = c.sandbox.state.refresh_count();
        c.sandbox.state.expire_token();
        let results = futures::future::join_all((0..100).map(|i| crms[i % 2].read_context(&contact))).await;
        for r in results {
            r.unwrap();
        }
        assert_eq!(c.sandbox.state.refresh_count(), before + 1, "one refresh for two instances");
        assert_eq!(c.connections.info(&c.connection_id).await.unwrap().unwrap().status, "active");
        c.store.close().await;
        second.close().await;
        schema.drop_now().await.unwrap();
    }

    /// The connect flow end to end: the tokens reach the store only as ciphertexts — neither the
    /// connection row nor the database file contains them — and the connection works.
    #[tokio::test]
    async fn oauth_connect_flow_stores_tokens_encrypted_at_rest() {
        let c = connect().await;
        assert_eq!(c.sandbox.state.code_exchange_count(), 1);
        let tokens = c.connections.token_source(c.app.clone(), &c.connection_id);
        let access = tokens.access_token().await.unwrap();
        let access = access.expose_secret().to_string();
        assert!(access.starts_with("sandbox-access-"));
        let row = c.store.connection(&c.connection_id).await.unwrap().unwrap();
        assert_eq!(row.status, "active");
        assert!(!row.access_token_ct.contains(&access));
        assert!(!row.refresh_token_ct.contains("sandbox-refresh-"));
        c.store.close().await;
        for entry in std::fs::read_dir(c.dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&access), "the access token is in the database file");
            assert!(!text.contains("sandbox-refresh-"), "a refresh token is in the database file");
        }
    }

    /// A state is single-use; an unknown one is refused.
    #[tokio::test]
    async fn callback_state_is_checked_and_single_use() {
        let c = connect().await;
        let err = c.connections.callback(&c.app, "forged-state", "code").await.unwrap_err();
        assert!(matches!(err, crate::connections::ConnectionError::UnknownState), "{err:?}");
        let authorize = c.connections.start(&c.app, "acme").await.unwrap();
        let state = authorize.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
        assert!(authorize.query_pairs().any(|(k, v)| k == "code_challenge_method" && v == "S256"));
        // A wrong code with the right state burns the state.
        assert!(c.connections.callback(&c.app, &state, "wrong-code").await.is_err());
        let err = c.connections.callback(&c.app, &state, "wrong-code").await.unwrap_err();
        assert!(matches!(err, crate::connections::ConnectionError::UnknownState), "{err:?}");
    }

    /// Rotation: after a refresh the store holds the new refresh token, so a fresh process (new
    /// `Connections` over the same store) refreshes with it; the retired one is refused by the
    /// vendor. A revoked connection is re-authorized through the same flow.
    #[tokio::test]
    async fn the_store_holds_the_live_token_after_rotation_and_reauthorize_revives_a_revoked_connection() {
        let c = connect().await;
        let tokens = c.connections.token_source(c.app.clone(), &c.connection_id);
        let first = tokens.access_token().await.unwrap();
        c.sandbox.state.expire_token();
        let second = tokens.refreshed(&first).await.unwrap();
        assert_ne!(first.expose_secret(), second.expose_secret());
        // "Restart": same store and key, new service object: it refreshes with the rotated
        // refresh token the store now holds.
        let restarted =
            Arc::new(Connections::new(c.store.clone(), Arc::new(test_cipher()), http_client(), Arc::new(SystemClock)));
        let after_restart = restarted.token_source(c.app.clone(), &c.connection_id);
        assert_eq!(after_restart.access_token().await.unwrap().expose_secret(), second.expose_secret());
        c.sandbox.state.expire_token();
        let third = after_restart.refreshed(&second).await.unwrap();
        assert_ne!(third.expose_secret(), second.expose_secret());
        assert_eq!(c.sandbox.state.refresh_count(), 2, "the rotated refresh token was accepted");
        // A different key cannot read the rows.
        let other_key = Arc::new(Connections::new(
            c.store.clone(),
            Arc::new(TokenCipher::generate()),
            http_client(),
            Arc::new(SystemClock),
        ));
        assert!(other_key.token_source(c.app.clone(), &c.connection_id).access_token().await.is_err());

        c.sandbox.state.revoke_grant();
        c.sandbox.state.expire_token();
        let err = tokens.refreshed(&third).await.unwrap_err();
        assert!(matches!(err, ConnectorError::AuthRevoked(_)), "{err:?}");
        assert_eq!(c.connections.info(&c.connection_id).await.unwrap().unwrap().status, "revoked");

        // Re-authorize: the same start/callback flow makes the connection active again.
        let authorize = c.connections.start(&c.app, "acme").await.unwrap();
        let answer = http_client().get(authorize).send().await.unwrap();
        let location = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
        let param = |k: &str| location.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned()).unwrap();
        c.connections.callback(&c.app, &param("state"), &param("code")).await.unwrap();
        assert_eq!(c.connections.info(&c.connection_id).await.unwrap().unwrap().status, "active");
        assert!(tokens.access_token().await.is_ok());
    }
}
