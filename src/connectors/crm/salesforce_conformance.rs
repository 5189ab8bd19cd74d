//! The CRM conformance suite run against the Salesforce connector and emulator, connected
//! through the OAuth web server flow as in production, plus the Salesforce-specific cases.

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::conformance::*;
use super::salesforce::{NOT_PROVIDED, NewCallerObject, SalesforceConnector};
use super::{CallLog, CrmConnector};
use crate::clock::{Clock as _, SystemClock};
use crate::connections::{Connections, OAuthApp, TokenCipher};
use crate::connectors::{ConnectorError, http_client};
use crate::identity::{MatchDecision, ParsedPhone, Phone, decide_by_phone};
use crate::sandbox::salesforce::{
    CUSTOM_DATE_FIELD, CUSTOM_DATETIME_FIELD, CUSTOM_NUMBER_FIELD, CUSTOM_PICKLIST_FIELD, EVENT_OUTCOME_FIELD, Fault,
    OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, Record, SalesforceSandbox,
};
use crate::store::Store;

struct SalesforceEmulator {
    sandbox: SalesforceSandbox,
}

impl SalesforceEmulator {
    fn tasks_of(&self, contact_id: &str) -> Vec<Record> {
        let all = self.sandbox.state.records("Task");
        let mine: Vec<Record> =
            all.iter().filter(|t| t.text("WhoId").as_deref() == Some(contact_id)).cloned().collect();
        assert_eq!(mine.len(), all.len(), "every task is on the contact");
        mine
    }
}

fn put(fields: &mut Vec<(&'static str, Value)>, key: &'static str, value: &Option<String>) {
    if let Some(v) = value {
        fields.push((key, json!(v)));
    }
}

impl CrmEmulator for SalesforceEmulator {
    fn outcome_field(&self) -> Option<String> {
        Some(EVENT_OUTCOME_FIELD.into())
    }

    fn record_outcome(&self, object_id: &str, outcome: &str) {
        let value = match outcome {
            "attended" => "Attended",
            "no_show" => "No Show",
            other => panic!("no Salesforce outcome for {other}"),
        };
        let user = self.sandbox.state.insert_user("Rita", "Rep", "rita@example.com");
        self.sandbox.state.rep_edit(object_id, EVENT_OUTCOME_FIELD, value, &user);
    }

    fn reads_attendance_natively(&self) -> bool {
        false
    }

    fn seed_contact(&self, seed: &SeedContact) -> String {
        let mut fields = Vec::new();
        put(&mut fields, "FirstName", &seed.first_name);
        fields.push(("LastName", json!(seed.last_name.clone().unwrap_or_else(|| NOT_PROVIDED.into()))));
        put(&mut fields, "Email", &seed.email);
        put(&mut fields, "Phone", &seed.phone);
        put(&mut fields, "MobilePhone", &seed.mobile);
        put(&mut fields, "MailingPostalCode", &seed.zip);
        put(&mut fields, "OwnerId", &seed.owner_id);
        self.sandbox.state.insert("Contact", &fields)
    }

    fn seed_owner(&self, first_name: &str, last_name: &str, email: &str) -> String {
        self.sandbox.state.insert_user(first_name, last_name, email)
    }

    fn seed_deal(&self, contact_id: &str, name: &str, open: bool) -> String {
        let stage = if open { "Qualification" } else { "Closed Won" };
        let opp = self.sandbox.state.insert(
            "Opportunity",
            &[
                ("Name", json!(name)),
                ("StageName", json!(stage)),
                ("CloseDate", json!("2026-12-31")),
                ("Amount", json!(1200)),
            ],
        );
        self.sandbox.state.insert(
            "OpportunityContactRole",
            &[("OpportunityId", json!(opp)), ("ContactId", json!(contact_id)), ("IsPrimary", json!(true))],
        );
        opp
    }

    fn seed_ticket(&self, contact_id: &str, subject: &str, open: bool) -> String {
        let status = if open { "New" } else { "Closed" };
        self.sandbox.state.insert(
            "Case",
            &[
                ("Subject", json!(subject)),
                ("Status", json!(status)),
                ("Priority", json!("Medium")),
                ("ContactId", json!(contact_id)),
            ],
        )
    }

    fn seed_task(&self, contact_id: &str, subject: &str, completed: bool) -> String {
        let status = if completed { "Completed" } else { "Not Started" };
        self.sandbox.state.insert(
            "Task",
            &[
                ("Subject", json!(subject)),
                ("Status", json!(status)),
                ("ActivityDate", json!("2026-11-30")),
                ("WhoId", json!(contact_id)),
            ],
        )
    }

    fn seed_note(&self, contact_id: &str, body: &str, at: Timestamp) -> String {
        let date = at.to_zoned_datetime(jiff::tz::TimeZone::UTC).date().to_string();
        self.sandbox.state.insert(
            "Task",
            &[
                ("Subject", json!("Note")),
                ("Status", json!("Completed")),
                ("Description", json!(body)),
                ("ActivityDate", json!(date)),
                ("WhoId", json!(contact_id)),
            ],
        )
    }

    fn rep_edit(&self, contact_id: &str, property: &str, value: &str, user_id: &str) {
        self.sandbox.state.rep_edit(contact_id, property, value, user_id);
    }

    fn contact_property(&self, contact_id: &str, property: &str) -> Option<String> {
        self.sandbox.state.record(contact_id)?.text(property)
    }

    fn count(&self, contact_id: &str, kind: RecordKind) -> usize {
        let subtype = |t: &Record| t.text("TaskSubtype").unwrap_or_default();
        let completed = |t: &Record| t.text("Status").as_deref() == Some("Completed");
        match kind {
            RecordKind::Call => self.tasks_of(contact_id).iter().filter(|t| subtype(t) == "Call").count(),
            RecordKind::Note => {
                self.tasks_of(contact_id).iter().filter(|t| subtype(t) == "Task" && completed(t)).count()
            }
            RecordKind::Task => {
                self.tasks_of(contact_id).iter().filter(|t| subtype(t) == "Task" && !completed(t)).count()
            }
            RecordKind::Meeting => {
                let all = self.sandbox.state.records("Event");
                assert!(all.iter().all(|e| e.text("WhoId").as_deref() == Some(contact_id)));
                all.len()
            }
        }
    }

    fn contacts_total(&self) -> usize {
        self.sandbox.state.records("Contact").len() + self.sandbox.state.records("Lead").len()
    }

    fn tasks(&self, contact_id: &str) -> Vec<(Option<String>, Option<Timestamp>)> {
        self.tasks_of(contact_id)
            .iter()
            .filter(|t| {
                t.text("TaskSubtype").as_deref() == Some("Task") && t.text("Status").as_deref() != Some("Completed")
            })
            .map(|t| {
                let due = t.text("ReminderDateTime").and_then(|v| v.replace("+0000", "Z").parse().ok());
                (t.text("OwnerId"), due)
            })
            .collect()
    }

    fn deal_stage(&self, deal_id: &str) -> Option<String> {
        self.sandbox.state.record(deal_id)?.text("StageName")
    }

    fn another_open_stage(&self) -> (String, String) {
        ("Needs Analysis".into(), "Needs Analysis".into())
    }

    fn typed_properties(&self) -> TypedProperties {
        TypedProperties {
            text: "Department".into(),
            number: CUSTOM_NUMBER_FIELD.into(),
            date: CUSTOM_DATE_FIELD.into(),
            datetime: CUSTOM_DATETIME_FIELD.into(),
            enumeration: CUSTOM_PICKLIST_FIELD.into(),
            enumeration_option: "Email".into(),
        }
    }

    /// Salesforce has no unique email on Contact or Lead (duplicate rules are an org's choice).
    fn unique_emails(&self) -> bool {
        false
    }

    fn set_search_lag(&self, on: bool) {
        self.sandbox.state.set_search_lag(on);
    }

    fn drop_next_write_response(&self) {
        self.sandbox.state.drop_next_responses_after_apply(1);
    }

    /// Salesforce's only rate-limit answer: 403 `REQUEST_LIMIT_EXCEEDED`, whatever the wait.
    fn fail_next_with_rate_limit(&self, _retry_after: RetryAfter) {
        self.sandbox.state.fail_next(Fault::RequestLimit, 1);
    }

    fn fail_next_with_server_error(&self) {
        self.sandbox.state.fail_next(Fault::Status(500), 1);
    }

    fn set_down(&self, down: bool) {
        self.sandbox.state.set_down(down);
    }

    fn reject_property(&self, property: &str) {
        self.sandbox.state.reject_field(property);
    }

    fn ignore_property(&self, property: &str) {
        self.sandbox.state.ignore_field(property);
    }

    fn clear_property_faults(&self) {
        self.sandbox.state.clear_field_faults();
    }

    fn expire_access_token(&self) {
        self.sandbox.state.expire_sessions();
    }

    fn revoke_grant(&self) {
        self.sandbox.state.revoke_grant();
    }

    fn refresh_count(&self) -> u64 {
        self.sandbox.state.refresh_count()
    }

    fn rate_limit_says_when(&self) -> bool {
        false
    }
}

struct Connected {
    sandbox: SalesforceSandbox,
    store: Store,
    connections: Arc<Connections>,
    app: Arc<OAuthApp>,
    connection_id: String,
    dir: tempfile::TempDir,
}

fn test_cipher() -> TokenCipher {
    use base64::Engine as _;
    TokenCipher::from_base64(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap()
}

/// The web server flow against the sandbox: start → authorize (approves, redirects) → callback.
async fn connect() -> Connected {
    let sandbox = SalesforceSandbox::start("unused-static-token").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("c.db").display())).await.unwrap();
    let redirect = "https://callside.example.com/v1/connect/salesforce/callback";
    let app = Arc::new(
        OAuthApp::salesforce(OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET.to_string().into(), redirect, &sandbox.base_url())
            .unwrap(),
    );
    let connections =
        Arc::new(Connections::new(store.clone(), Arc::new(test_cipher()), http_client(), Arc::new(SystemClock)));
    let authorize = connections.start(&app, "acme").await.unwrap();
    assert!(authorize.query_pairs().any(|(k, v)| k == "response_type" && v == "code"));
    let answer = http_client().get(authorize).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 302);
    let location = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    let param = |k: &str| location.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned()).unwrap();
    let info = connections.callback(&app, &param("state"), &param("code")).await.unwrap();
    Connected { sandbox, store, connections, app, connection_id: info.id, dir }
}

/// A fallback instance nobody listens on: every request must go to the `instance_url` the token
/// endpoint named.
fn unreachable_fallback() -> url::Url {
    url::Url::parse("http://127.0.0.1:9/").unwrap()
}

struct SalesforceTarget {
    new_callers: NewCallerObject,
}

impl SalesforceTarget {
    async fn connected(&self) -> (Connected, Arc<SalesforceConnector>) {
        let c = connect().await;
        let tokens = c.connections.token_source(c.app.clone(), &c.connection_id);
        let crm = Arc::new(
            SalesforceConnector::with_token_source(unreachable_fallback(), tokens, http_client())
                .with_new_callers(self.new_callers),
        );
        (c, crm)
    }
}

#[async_trait]
impl ConformanceTarget for SalesforceTarget {
    async fn start(&self) -> Harness {
        let (c, crm) = self.connected().await;
        let Connected { sandbox, store, dir, .. } = c;
        Harness { crm, emulator: Arc::new(SalesforceEmulator { sandbox }), keep: Box::new((store, dir)) }
    }
}

const LEADS: SalesforceTarget = SalesforceTarget { new_callers: NewCallerObject::Lead };

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                super::conformance::$name(&LEADS).await;
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

/// A mapped outcome field the org does not have is the setting's error (`INVALID_FIELD`, a
/// validation error), never "no outcome yet".
#[tokio::test]
async fn an_outcome_field_the_org_lacks_is_an_error_not_an_outcome() {
    let h = LEADS.start().await;
    let contact = h.emulator.seed_contact(&SeedContact { last_name: Some("Outcome".into()), ..Default::default() });
    let appointment = super::AppointmentRecord {
        title: "Consultation".into(),
        start: "2026-11-24T17:00:00Z".parse().unwrap(),
        end: "2026-11-24T17:30:00Z".parse().unwrap(),
        calendar_event_id: "evt9".into(),
        notes: None,
    };
    let event = h.crm.record_appointment(&contact, &appointment, "appt-missing-field").await.unwrap();
    let err = h.crm.appointment_status(&event, Some("No_Such_Outcome__c")).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Validation { .. }), "{err:?}");
}

/// The suite again with new callers created as Contacts (the other tenant setting).
#[tokio::test]
async fn writes_idempotently_when_new_callers_become_contacts() {
    let target = SalesforceTarget { new_callers: NewCallerObject::Contact };
    super::conformance::writes_contacts_calls_notes_tasks_meetings_idempotently(&target).await;
    super::conformance::a_dropped_response_is_retried_without_duplicates_under_search_lag(&target).await;
}

fn call(id: &str) -> CallLog {
    CallLog {
        call_id: id.into(),
        started_at: "2026-11-23T14:00:00Z".parse().unwrap(),
        duration_secs: 95,
        from: Some("+14155550134".into()),
        to: "+14155550100".into(),
        summary: "Asked for a quote.".into(),
        disposition: Some("connected".into()),
        recording_url: None,
        transcript_url: None,
        source: "AI receptionist".into(),
    }
}

/// A caller who is a Lead is found by the phone search and matched by the identity rules — the
/// call lands on the Lead and no Contact is created, even for a tenant whose new callers become
/// Contacts. A converted Lead (whose person now lives on as a Contact) is not a candidate.
#[tokio::test]
async fn a_caller_who_is_a_lead_is_matched_not_duplicated_as_a_contact() {
    let target = SalesforceTarget { new_callers: NewCallerObject::Contact };
    let (c, crm) = target.connected().await;
    let state = &c.sandbox.state;
    let lead = state.insert(
        "Lead",
        &[
            ("FirstName", json!("Ada")),
            ("LastName", json!("Lovelace")),
            ("Company", json!("Analytical Engines")),
            ("Phone", json!("(415) 555-0134")),
        ],
    );
    state.insert(
        "Lead",
        &[
            ("LastName", json!("Old")),
            ("Company", json!("Gone")),
            ("Phone", json!("415.555.0134")),
            ("IsConverted", json!(true)),
        ],
    );
    let region = rlibphonenumber::enums::Region::US;
    let ParsedPhone::Number(phone) = Phone::parse("+14155550134", region) else { panic!("parses") };
    let candidates = crm.find_contacts_by_phone(&phone.query()).await.unwrap();
    let matched = match decide_by_phone(&phone, candidates, region) {
        MatchDecision::Matched(found) => found,
        other => panic!("expected the lead to match, got {other:?}"),
    };
    assert_eq!(matched.id, lead);
    assert_eq!(matched.first_name.as_deref(), Some("Ada"));
    let ctx = crm.read_context(&matched.id).await.unwrap();
    assert_eq!(ctx.contact.last_name.as_deref(), Some("Lovelace"));
    crm.log_call(&matched.id, &call("c-1"), "lead-call").await.unwrap();
    assert!(state.records("Contact").is_empty(), "no Contact was created for a Lead caller");
    let calls = state.records("Task");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].text("WhoId").as_deref(), Some(lead.as_str()));
    assert_eq!(calls[0].text("TaskSubtype").as_deref(), Some("Call"));
    assert_eq!(calls[0].text("CallDurationInSeconds").as_deref(), Some("95"));
}

/// Salesforce's rate limit is a 403 with `REQUEST_LIMIT_EXCEEDED` in the body: it is classified
/// as rate limited (retryable, no refresh, no re-authorization), and the retry with the same key
/// writes the call once.
#[tokio::test]
async fn a_403_request_limit_exceeded_is_retried_as_rate_limited() {
    let h = LEADS.start().await;
    let contact = h.emulator.seed_contact(&SeedContact {
        first_name: Some("Ada".into()),
        last_name: Some("L".into()),
        ..Default::default()
    });
    let refreshes = h.emulator.refresh_count();
    h.emulator.fail_next_with_rate_limit(RetryAfter::Seconds(0));
    let err = h.crm.log_call(&contact, &call("c-2"), "limited-call").await.unwrap_err();
    match &err {
        ConnectorError::RateLimited { retry_after: None, detail } => {
            assert!(detail.starts_with("REQUEST_LIMIT_EXCEEDED (api-usage="), "{detail}")
        }
        other => panic!("expected rate limited, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(h.emulator.refresh_count(), refreshes, "a rate limit is not an auth failure");
    h.crm.log_call(&contact, &call("c-2"), "limited-call").await.unwrap();
    assert_eq!(h.emulator.count(&contact, RecordKind::Call), 1);
}

/// The connect flow: tokens encrypted at rest, the `instance_url` of the token answer stored
/// with the connection as its API base URL; a refresh (which answers without a refresh token)
/// keeps the stored one.
#[tokio::test]
async fn connect_flow_stores_the_instance_url_and_keeps_the_refresh_token() {
    let c = connect().await;
    assert_eq!(c.sandbox.state.code_exchange_count(), 1);
    let stored = c.connections.api_base_url(&c.connection_id).await.unwrap().unwrap();
    assert_eq!(stored.url(), &c.sandbox.base_url());
    let tokens = c.connections.token_source(c.app.clone(), &c.connection_id);
    let first = tokens.access_token().await.unwrap();
    let row = c.store.connection(&c.connection_id).await.unwrap().unwrap();
    assert!(!row.access_token_ct.contains(first.expose_secret()));
    c.sandbox.state.expire_sessions();
    let second = tokens.refreshed(&first).await.unwrap();
    c.sandbox.state.expire_sessions();
    let third = tokens.refreshed(&second).await.unwrap();
    assert_ne!(second.expose_secret(), third.expose_secret());
    assert_eq!(c.sandbox.state.refresh_count(), 2, "the same refresh token worked twice");
    let _ = c.dir;
}

/// A write Salesforce rejects names its fields; a bad id never reaches the API.
#[tokio::test]
async fn validation_errors_keep_their_fields_and_bad_ids_stay_local() {
    let h = LEADS.start().await;
    let contact = h.emulator.seed_contact(&SeedContact { last_name: Some("L".into()), ..Default::default() });
    let bad_email = super::ContactFields { email: Some("not an email".into()), ..Default::default() };
    match h.crm.update_contact(&contact, &bad_email).await.unwrap_err() {
        ConnectorError::Validation { fields, message } => {
            assert_eq!(fields, vec!["Email".to_string()]);
            assert!(message.contains("INVALID_EMAIL_ADDRESS"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    for bad in ["x' OR Id != '", "0018d0000000001AAA", "../../limits"] {
        assert!(matches!(h.crm.read_context(bad).await.unwrap_err(), ConnectorError::NotFound(_)), "{bad}");
    }
    // The contact is intact.
    assert_eq!(h.emulator.contact_property(&contact, "LastName").as_deref(), Some("L"));
}

/// Without field history tracking, the record's `LastModifiedById` / `LastModifiedDate` are the
/// conflict data: a rep's later edit of the record is seen as a person's, ours as ours.
#[tokio::test]
async fn untracked_fields_fall_back_to_the_records_last_modification() {
    let (c, crm) = LEADS.connected().await;
    let state = &c.sandbox.state;
    state.untrack_field("Department");
    let contact = state.insert("Contact", &[("LastName", json!("L"))]);
    let write = super::PropertyWrite { name: "Department".into(), value: super::PropertyValue::Text("ours".into()) };
    crm.update_properties(&contact, &[write]).await.unwrap();
    let history = crm.property_history(&contact, &["department".to_string()]).await.unwrap();
    assert_eq!(history[0].versions.len(), 1, "{history:?}");
    assert_eq!(history[0].versions[0].value, "ours");
    assert!(!history[0].versions[0].is_human_edit(), "{history:?}");
    state.rep_edit(&contact, "MobilePhone", "+14155550177", "0058d0000000099AAA");
    let history = crm.property_history(&contact, &["Department".to_string()]).await.unwrap();
    let newest = &history[0].versions[0];
    assert!(newest.is_human_edit(), "a rep touched the record after us: {newest:?}");
    assert_eq!(newest.updated_by_user_id.as_deref(), Some("0058d0000000099AAA"));
}

/// Undo support and ticket notes: a note on a Case is a completed Task on it; a deal's stage is
/// read back through `object_history` (neutral `dealstage` → `StageName`); a created Task is
/// deleted, and deleting it again is not an error; a record a rep touched reads as a person's edit.
#[tokio::test]
async fn ticket_notes_object_history_and_delete() {
    let (c, crm) = LEADS.connected().await;
    let state = &c.sandbox.state;
    let contact = state.insert("Contact", &[("LastName", json!("L"))]);
    let case =
        state.insert("Case", &[("Subject", json!("Tap")), ("Status", json!("New")), ("ContactId", json!(contact))]);
    let note = super::NoteRecord { body: "Called about the tap.".into(), at: "2026-11-23T14:00:00Z".parse().unwrap() };
    let id = crm.log_ticket_note(&case, &note, "ticket-note").await.unwrap();
    assert_eq!(crm.log_ticket_note(&case, &note, "ticket-note").await.unwrap(), id);
    let task = state.record(&id).unwrap();
    assert_eq!(task.text("WhatId").as_deref(), Some(case.as_str()));
    assert_eq!(task.text("Status").as_deref(), Some("Completed"));
    assert!(matches!(crm.log_ticket_note("0038d0000000001AAA", &note, "k").await, Err(ConnectorError::NotFound(_))));

    let deal = h_deal(state, &contact);
    crm.set_deal_stage(&deal, "needs analysis").await.unwrap();
    let history = crm.object_history(super::CrmObjectType::Deal, &deal, &["dealstage".to_string()]).await.unwrap();
    let newest = &history[0].versions[0];
    assert_eq!(newest.value, "Needs Analysis");
    assert!(!newest.is_human_edit(), "{newest:?}");
    state.rep_edit(&deal, "Amount", "99", "0058d0000000099AAA");
    let history = crm.object_history(super::CrmObjectType::Deal, &deal, &["dealstage".to_string()]).await.unwrap();
    assert!(history[0].versions[0].is_human_edit());

    crm.delete_object(super::CrmObjectType::Note, &id).await.unwrap();
    assert!(state.record(&id).is_none());
    crm.delete_object(super::CrmObjectType::Note, &id).await.unwrap();
    let err = crm.object_history(super::CrmObjectType::Note, &id, &["x".to_string()]).await.unwrap_err();
    assert!(matches!(err, ConnectorError::NotFound(_)), "{err:?}");
}

fn h_deal(state: &crate::sandbox::salesforce::SalesforceState, contact: &str) -> String {
    let deal = state.insert(
        "Opportunity",
        &[("Name", json!("Remodel")), ("StageName", json!("Qualification")), ("CloseDate", json!("2026-12-31"))],
    );
    state.insert("OpportunityContactRole", &[("OpportunityId", json!(deal)), ("ContactId", json!(contact))]);
    deal
}

/// A refresh may move the org: the `instance_url` of each token answer replaces the stored API
/// base URL. One naming a host outside Salesforce is refused whole — neither its token nor its
/// host is stored — and the connection keeps the host it had.
#[tokio::test]
async fn a_refresh_may_change_the_api_base_url_but_never_to_a_foreign_host() {
    let c = connect().await;
    let tokens = c.connections.token_source(c.app.clone(), &c.connection_id);
    let first = tokens.access_token().await.unwrap();
    c.sandbox.state.set_instance_url("https://acme--migrated.my.salesforce.com");
    c.sandbox.state.expire_sessions();
    let second = tokens.refreshed(&first).await.unwrap();
    let moved = tokens.api_base_url().await.unwrap().unwrap();
    assert_eq!(moved.as_str(), "https://acme--migrated.my.salesforce.com/");

    let before = c.store.connection(&c.connection_id).await.unwrap().unwrap();
    c.sandbox.state.set_instance_url("https://callside-tokens.example.com");
    c.sandbox.state.expire_sessions();
    match tokens.refreshed(&second).await.unwrap_err() {
        ConnectorError::Permanent(m) => assert!(m.contains("callside-tokens.example.com"), "{m}"),
        other => panic!("{other:?}"),
    }
    let after = c.store.connection(&c.connection_id).await.unwrap().unwrap();
    assert_eq!(after, before, "nothing of the refused answer is stored");
    assert_eq!(tokens.api_base_url().await.unwrap().unwrap(), moved);
    let _ = c.dir;
}

/// The pilot's seeded deal: an open Opportunity with a primary `OpportunityContactRole`, so the
/// contact's context lists it; the stage is the picklist's first active value unless one is named
/// (by label, any case); the close date is 30 days after the connector's clock. A Lead (no
/// opportunities before conversion) and a bad amount are refused before anything is created.
#[tokio::test]
async fn creates_an_open_opportunity_on_a_contact_and_refuses_a_lead() {
    let (c, _) = LEADS.connected().await;
    let clock = crate::clock::ManualClock::new("2026-12-07T10:00:00Z".parse().unwrap());
    let crm = SalesforceConnector::with_token_source(
        unreachable_fallback(),
        c.connections.token_source(c.app.clone(), &c.connection_id),
        http_client(),
    )
    .with_clock(Arc::new(clock));
    let state = &c.sandbox.state;
    let contact = state.insert("Contact", &[("LastName", json!("Quill"))]);
    let deal = super::DealRecord { name: "Kitchen remodel".into(), stage: None, amount: Some("4800".into()) };
    let id = crm.create_deal(&contact, &deal, "pilot-deal").await.unwrap();
    let opp = state.records("Opportunity").into_iter().find(|o| o.id() == id).expect("the opportunity exists");
    assert_eq!(opp.text("StageName").as_deref(), Some("Prospecting"));
    assert_eq!(opp.text("CloseDate").as_deref(), Some("2027-01-06"));
    assert_eq!(opp.text("Amount").and_then(|a| a.parse::<f64>().ok()), Some(4800.0));
    let roles = state.records("OpportunityContactRole");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].text("ContactId").as_deref(), Some(contact.as_str()));
    assert_eq!(roles[0].text("OpportunityId").as_deref(), Some(id.as_str()));
    let ctx = crm.read_context(&contact).await.unwrap();
    assert_eq!(ctx.open_deals.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), vec!["Kitchen remodel"]);

    let named = super::DealRecord { name: "Second".into(), stage: Some("qualification".into()), amount: None };
    let second = crm.create_deal(&contact, &named, "pilot-deal-2").await.unwrap();
    let opp = state.records("Opportunity").into_iter().find(|o| o.id() == second).unwrap();
    assert_eq!(opp.text("StageName").as_deref(), Some("Qualification"));

    let lead = state.insert("Lead", &[("LastName", json!("L")), ("Company", json!("C"))]);
    match crm.create_deal(&lead, &deal, "pilot-deal-3").await.unwrap_err() {
        ConnectorError::Validation { fields, .. } => assert_eq!(fields, vec!["ContactId".to_string()]),
        other => panic!("{other:?}"),
    }
    let bad = super::DealRecord { amount: Some("lots".into()), ..deal.clone() };
    match crm.create_deal(&contact, &bad, "pilot-deal-4").await.unwrap_err() {
        ConnectorError::Validation { fields, .. } => assert_eq!(fields, vec!["Amount".to_string()]),
        other => panic!("{other:?}"),
    }
    let unknown = super::DealRecord { stage: Some("Negotiation Wizardry".into()), ..deal };
    assert!(matches!(
        crm.create_deal(&contact, &unknown, "pilot-deal-5").await.unwrap_err(),
        ConnectorError::Validation { .. }
    ));
    assert_eq!(state.records("Opportunity").len(), 2, "nothing was created for the refused deals");
}

/// The identity pull's query (issue 12): Contacts, then unconverted Leads, changed at or after
/// the watermark, oldest change first, through query locators in batches of at most 200.
#[tokio::test]
async fn the_incremental_pull_lists_only_changes_since_the_watermark_contacts_then_leads_paged() {
    let (c, crm) = LEADS.connected().await;
    let state = c.sandbox.state.clone();
    let clock = crate::clock::ManualClock::new("2026-11-23T13:00:00Z".parse().unwrap());
    state.set_clock(Arc::new(clock.clone()));
    let old: Vec<String> = (0..230)
        .map(|i| {
            state.insert(
                "Contact",
                &[("LastName", json!(format!("Old{i}"))), ("Phone", json!(format!("+1 718 555 {:04}", 1000 + i)))],
            )
        })
        .collect();
    let old_lead = state.insert("Lead", &[("LastName", json!("Early")), ("Company", json!("Acme"))]);

    // Everything (no watermark): 230 Contacts in two batches, then the Lead query.
    let (all, pages, newest) = pull_all(crm.as_ref(), None).await;
    assert_eq!(pages, 3, "200 + 30 contacts, then the leads");
    let ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 231);
    assert_eq!(&ids[..230], old.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), "contacts first, in order");
    assert_eq!(ids[230], old_lead);
    assert_eq!(newest, Some(clock.now()));
    assert_eq!(all[5].phones, vec!["+1 718 555 1005".to_string()]);

    // Five minutes later a rep edits one contact, a lead comes in and another is converted.
    clock.advance(jiff::SignedDuration::from_mins(5));
    let watermark = clock.now();
    let rep = state.insert_user("Rita", "Rep", "rita@example.com");
    state.rep_edit(&old[7], "Phone", "+1 718 555 9999", &rep);
    let new_lead = state.insert("Lead", &[("LastName", json!("Late")), ("Company", json!("Acme"))]);
    state.insert("Lead", &[("LastName", json!("Converted")), ("Company", json!("Acme")), ("IsConverted", json!(true))]);
    clock.advance(jiff::SignedDuration::from_secs(1));
    let (changed, pages, newest) = pull_all(crm.as_ref(), Some(watermark)).await;
    let ids: Vec<&str> = changed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [old[7].as_str(), new_lead.as_str()], "only what changed since the watermark");
    assert_eq!(pages, 2, "one page per object");
    assert_eq!(changed[0].phones, vec!["+1 718 555 9999".to_string()]);
    assert_eq!(newest, Some(watermark));

    // A watermark inside a second still lists that second (SOQL literals have whole seconds).
    let (again, _, _) = pull_all(crm.as_ref(), Some(watermark + jiff::SignedDuration::from_millis(400))).await;
    assert_eq!(again.len(), 2);
    // A cursor that is not ours is refused, not followed.
    assert!(matches!(crm.contacts_changed_since(None, Some("Account|01g")).await, Err(ConnectorError::Permanent(_))));
    assert!(matches!(
        crm.contacts_changed_since(None, Some("Contact|../../sobjects")).await,
        Err(ConnectorError::Permanent(_))
    ));
    let _ = (&c.store, &c.dir);
}

/// Removals (issue 12): Contacts and Leads deleted within the window come from "Get Deleted
/// Records" (whole minutes; a window of a minute or less is not asked), a merge's loser is
/// merged into its `MasterRecordId` (read with `queryAll`), a converted Lead into its Contact, and a window the delete log no longer covers (older than 15 days,
/// or purged) is reported incomplete instead of empty.
#[tokio::test]
async fn deleted_and_converted_people_are_listed_and_a_purged_log_asks_for_a_resync() {
    let (c, crm) = LEADS.connected().await;
    let state = c.sandbox.state.clone();
    let clock = crate::clock::ManualClock::new("2026-11-23T12:58:20Z".parse().unwrap());
    state.set_clock(Arc::new(clock.clone()));
    let gone = state.insert("Contact", &[("LastName", json!("Gone")), ("Phone", json!("+1 718 555 0101"))]);
    let kept = state.insert("Contact", &[("LastName", json!("Kept")), ("Phone", json!("+1 718 555 0102"))]);
    let lead = state.insert("Lead", &[("LastName", json!("Lee")), ("Company", json!("Acme"))]);
    let converted = state.insert("Lead", &[("LastName", json!("Conv")), ("Company", json!("Acme"))]);
    let loser = state.insert("Contact", &[("LastName", json!("Kept")), ("MobilePhone", json!("+1 718 555 0103"))]);
    let old_delete = state.insert("Contact", &[("LastName", json!("Before"))]);
    assert!(state.delete_record(&old_delete));
    clock.advance(jiff::SignedDuration::from_mins(2));
    let since = clock.now();

    clock.advance(jiff::SignedDuration::from_secs(30));
    assert!(state.delete_record(&gone));
    // Within the same minute: not asked, the window stays where it was.
    let page = crm.contacts_removed_since(since, clock.now()).await.unwrap().expect("Salesforce lists removals");
    assert_eq!(page, super::RemovedPage { removed: vec![], covered_until: None, complete: true });

    clock.advance(jiff::SignedDuration::from_mins(1));
    assert!(state.delete_record(&lead));
    state.convert_lead(&converted, &kept);
    assert!(state.merge_records(&kept, &loser), "a rep merges the duplicate into Kept");
    assert_eq!(state.record(&kept).unwrap().text("MobilePhone").as_deref(), Some("+1 718 555 0103"));
    clock.advance(jiff::SignedDuration::from_mins(2));
    let page = crm.contacts_removed_since(since, clock.now()).await.unwrap().unwrap();
    assert!(page.complete);
    let removed: Vec<(&str, Option<&str>)> =
        page.removed.iter().map(|r| (r.id.as_str(), r.merged_into.as_deref())).collect();
    assert_eq!(
        removed,
        [
            (gone.as_str(), None),
            (loser.as_str(), Some(kept.as_str())),
            (lead.as_str(), None),
            (converted.as_str(), Some(kept.as_str()))
        ],
        "contacts (a merge's loser with its master, from queryAll's MasterRecordId), then leads, then \
         conversions; the record deleted before the window is not listed"
    );
    let covered = page.covered_until.expect("latestDateCovered");
    assert_eq!(covered, "2026-11-23T13:03:00Z".parse().unwrap(), "the end, to the minute");
    // The next window finds nothing new (the conversion is at or after `since` only once).
    clock.advance(jiff::SignedDuration::from_mins(2));
    let next = crm.contacts_removed_since(covered, clock.now()).await.unwrap().unwrap();
    assert!(next.removed.is_empty() && next.complete, "{next:?}");

    // More than 15 days back: incomplete, without asking.
    let requests = state.request_count();
    let stale = crm.contacts_removed_since(since - jiff::SignedDuration::from_hours(16 * 24), clock.now());
    assert!(!stale.await.unwrap().unwrap().complete);
    assert_eq!(state.request_count(), requests);
    // The recycle bin emptied after the window's start: Salesforce refuses, we resync.
    state.purge_delete_log();
    clock.advance(jiff::SignedDuration::from_mins(2));
    let purged = crm.contacts_removed_since(covered, clock.now()).await.unwrap().unwrap();
    assert!(!purged.complete && purged.removed.is_empty(), "{purged:?}");
    let _ = (&c.store, &c.dir);
}

/// The emulator's "Get Deleted Records" answers as documented: the shape, and
/// `INVALID_REPLICATION_DATE` / `MALFORMED_QUERY` for the windows Salesforce refuses.
#[tokio::test]
async fn the_emulators_get_deleted_resource_answers_and_refuses_as_documented() {
    let c = connect().await;
    let state = c.sandbox.state.clone();
    let clock = crate::clock::ManualClock::new("2026-11-23T13:00:00Z".parse().unwrap());
    state.set_clock(Arc::new(clock.clone()));
    let token = c.connections.token_source(c.app.clone(), &c.connection_id).access_token().await.unwrap();
    let id = state.insert("Contact", &[("LastName", json!("Gone"))]);
    clock.advance(jiff::SignedDuration::from_secs(90));
    // Deleted through the API this time.
    let base = c.sandbox.base_url();
    let client = http_client();
    let delete = client
        .delete(format!("{base}services/data/v62.0/sobjects/Contact/{id}"))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status().as_u16(), 204);
    clock.advance(jiff::SignedDuration::from_mins(5));
    let get = |start: &str, end: &str| {
        client
            .get(format!("{base}services/data/v62.0/sobjects/Contact/deleted/"))
            .query(&[("start", start), ("end", end)])
            .bearer_auth(token.expose_secret())
            .send()
    };
    let answer = get("2026-11-23T13:00:00+00:00", "2026-11-23T13:05:00+00:00").await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["deletedRecords"], json!([{ "id": id, "deletedDate": "2026-11-23T13:01:30.000+0000" }]));
    assert_eq!(body["latestDateCovered"], "2026-11-23T13:05:00.000+0000");
    assert!(body["earliestDateAvailable"].is_string());
    // Seconds are ignored: 13:00:59 → 13:01:59 is one minute, refused.
    for (start, end, code) in [
        ("2026-11-23T13:00:59+00:00", "2026-11-23T13:01:59+00:00", "INVALID_REPLICATION_DATE"),
        ("2026-11-23T13:05:00+00:00", "2026-11-23T13:00:00+00:00", "INVALID_REPLICATION_DATE"),
        ("2026-11-01T13:00:00+00:00", "2026-11-23T13:05:00+00:00", "INVALID_REPLICATION_DATE"),
        ("yesterday", "2026-11-23T13:05:00+00:00", "MALFORMED_QUERY"),
    ] {
        let answer = get(start, end).await.unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{start} → {end}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body[0]["errorCode"], code, "{start} → {end}: {body}");
    }
    let _ = (&c.store, &c.dir);
}
