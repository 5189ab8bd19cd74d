//! The CRM conformance suite run against Pipedrive: the same checks as HubSpot (see
//! [`super::conformance`]), connected through Pipedrive's OAuth flow, plus Pipedrive's own cases
//! (the API domain from the token answer, HTTP Basic client auth, the daily token budget, the
//! 2-second window).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};

use super::conformance::*;
use super::pipedrive::PipedriveConnector;
use super::{CallLog, ContactFields, CrmConnector, CrmObjectType, NoteRecord};
use crate::clock::{Clock as _, ManualClock, SharedClock, SystemClock};
use crate::connections::{ApiBaseUrl, Connections, OAuthApp, TokenCipher};
use crate::connectors::{ConnectorError, http_client};
use crate::sandbox::pipedrive::{
    DATE_FIELD_KEY, DATETIME_FIELD_KEY, ENUM_FIELD_KEY, ENUM_OPTIONS, Injected, NUMBER_FIELD_KEY, OAUTH_CLIENT_ID,
    OAUTH_CLIENT_SECRET, PipedriveSandbox, STAGES, TEXT_FIELD_KEY,
};
use crate::store::Store;

struct PipedriveEmulator {
    sandbox: PipedriveSandbox,
}

/// The activity custom field the tenant maps for outcomes (Pipedrive has no no-show).
const OUTCOME_FIELD_KEY: &str = "9f1c0a77e2outcome";

impl CrmEmulator for PipedriveEmulator {
    fn outcome_field(&self) -> Option<String> {
        Some(OUTCOME_FIELD_KEY.into())
    }

    fn record_outcome(&self, object_id: &str, outcome: &str) {
        let (done, label) = match outcome {
            "attended" => (true, "Attended"),
            "no_show" => (false, "No show"),
            other => panic!("no Pipedrive outcome for {other}"),
        };
        assert!(self.sandbox.state.set_activity_field(object_id, "done", serde_json::json!(done)));
        assert!(self.sandbox.state.set_activity_custom_field(object_id, OUTCOME_FIELD_KEY, label));
    }

    fn seed_contact(&self, seed: &SeedContact) -> String {
        let name =
            [seed.first_name.clone(), seed.last_name.clone()].into_iter().flatten().collect::<Vec<_>>().join(" ");
        let phones: Vec<&str> = [seed.phone.as_deref(), seed.mobile.as_deref()].into_iter().flatten().collect();
        let owner = seed.owner_id.as_deref().and_then(|o| o.parse().ok());
        self.sandbox.state.insert_person(&name, seed.email.as_deref(), &phones, seed.zip.as_deref(), owner)
    }

    fn seed_owner(&self, first_name: &str, last_name: &str, email: &str) -> String {
        self.sandbox.state.insert_user(&format!("{first_name} {last_name}"), email)
    }

    fn seed_deal(&self, contact_id: &str, name: &str, open: bool) -> String {
        self.sandbox.state.insert_deal(contact_id, name, if open { "open" } else { "won" }, STAGES[0].0)
    }

    fn seed_ticket(&self, _contact_id: &str, _subject: &str, _open: bool) -> String {
        unreachable!("Pipedrive has no tickets; the suite asks has_tickets() first")
    }

    fn seed_task(&self, contact_id: &str, subject: &str, completed: bool) -> String {
        self.sandbox.state.insert_activity(contact_id, "task", subject, completed, "2026-11-30")
    }

    fn seed_note(&self, contact_id: &str, body: &str, at: Timestamp) -> String {
        self.sandbox.state.insert_note(contact_id, body, at)
    }

    fn rep_edit(&self, contact_id: &str, property: &str, value: &str, user_id: &str) {
        self.sandbox.state.rep_edit(contact_id, property, value, user_id);
    }

    fn contact_property(&self, contact_id: &str, property: &str) -> Option<String> {
        self.sandbox.state.person_field(contact_id, property)
    }

    fn count(&self, contact_id: &str, kind: RecordKind) -> usize {
        match kind {
            RecordKind::Call => self.sandbox.state.activities_of(contact_id, "call").len(),
            RecordKind::Task => self.sandbox.state.activities_of(contact_id, "task").len(),
            RecordKind::Meeting => self.sandbox.state.activities_of(contact_id, "meeting").len(),
            RecordKind::Note => self.sandbox.state.notes_total(contact_id),
        }
    }

    fn contacts_total(&self) -> usize {
        self.sandbox.state.persons_total()
    }

    fn tasks(&self, contact_id: &str) -> Vec<(Option<String>, Option<Timestamp>)> {
        self.sandbox
            .state
            .activities_of(contact_id, "task")
            .iter()
            .map(|a| {
                let owner = a.get("owner_id").and_then(|o| o.as_u64()).map(|o| o.to_string());
                let due = format!(
                    "{}T{}:00Z",
                    a.get("due_date").and_then(|d| d.as_str()).unwrap_or_default(),
                    a.get("due_time").and_then(|d| d.as_str()).unwrap_or("00:00")
                );
                (owner, due.parse().ok())
            })
            .collect()
    }

    fn deal_stage(&self, deal_id: &str) -> Option<String> {
        self.sandbox.state.deal_stage(deal_id).map(|s| s.to_string())
    }

    fn another_open_stage(&self) -> (String, String) {
        (STAGES[3].1.to_string(), STAGES[3].0.to_string())
    }

    fn typed_properties(&self) -> TypedProperties {
        TypedProperties {
            text: TEXT_FIELD_KEY.into(),
            number: NUMBER_FIELD_KEY.into(),
            date: DATE_FIELD_KEY.into(),
            datetime: DATETIME_FIELD_KEY.into(),
            enumeration: ENUM_FIELD_KEY.into(),
            enumeration_option: ENUM_OPTIONS[1].0.to_string(),
        }
    }

    fn unique_emails(&self) -> bool {
        false
    }

    fn has_tickets(&self) -> bool {
        false
    }

    fn last_name_field(&self) -> String {
        "name".into()
    }

    fn set_search_lag(&self, on: bool) {
        self.sandbox.state.set_search_lag(on);
    }

    fn drop_next_write_response(&self) {
        self.sandbox.state.drop_next_write_response();
    }

    /// Pipedrive signals the wait in `x-ratelimit-reset` seconds, not as an HTTP date: both
    /// forms of the neutral fault become that header.
    fn fail_next_with_rate_limit(&self, retry_after: RetryAfter) {
        let secs = match retry_after {
            RetryAfter::Seconds(s) | RetryAfter::DateIn(s) => s,
        };
        self.sandbox.state.fail_next(Injected::Burst(secs));
    }

    fn fail_next_with_server_error(&self) {
        self.sandbox.state.fail_next(Injected::Status(500));
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
        self.sandbox.state.expire_tokens();
    }

    fn revoke_grant(&self) {
        self.sandbox.state.revoke_grant();
    }

    fn refresh_count(&self) -> u64 {
        self.sandbox.state.refresh_count()
    }
}

/// A tenant connected to the Pipedrive sandbox through the OAuth flow.
struct Connected {
    sandbox: PipedriveSandbox,
    store: Store,
    connections: Arc<Connections>,
    app: Arc<OAuthApp>,
    connection_id: String,
    dir: tempfile::TempDir,
}

fn test_cipher() -> TokenCipher {
    use base64::Engine as _;
    TokenCipher::from_base64(&base64::engine::general_purpose::STANDARD.encode([5u8; 32])).unwrap()
}

async fn connect(clock: SharedClock) -> Connected {
    let sandbox = PipedriveSandbox::start().await.unwrap();
    sandbox.state.set_clock(clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("p.db").display())).await.unwrap();
    let redirect = "https://callside.example.com/v1/connect/pipedrive/callback";
    let app = Arc::new(
        OAuthApp::pipedrive(OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET.to_string().into(), redirect, &sandbox.base_url())
            .unwrap(),
    );
    let connections = Arc::new(Connections::new(store.clone(), Arc::new(test_cipher()), http_client(), clock));
    let authorize = connections.start(&app, "acme").await.unwrap();
    let answer = http_client().get(authorize).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 302);
    let location = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(redirect));
    let param = |k: &str| location.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned()).unwrap();
    let info = connections.callback(&app, &param("state"), &param("code")).await.unwrap();
    Connected { sandbox, store, connections, app, connection_id: info.id, dir }
}

/// Nothing listens here: a connector that used the configured base instead of the connection's
/// `api_domain` would fail every request.
const UNUSED_BASE: &str = "http://127.0.0.1:9/";

fn connector(c: &Connected, clock: SharedClock) -> PipedriveConnector {
    let tokens = c.connections.token_source(c.app.clone(), &c.connection_id);
    PipedriveConnector::with_token_source(url::Url::parse(UNUSED_BASE).unwrap(), tokens, http_client())
        .with_clock(clock)
}

struct PipedriveTarget;

#[async_trait]
impl ConformanceTarget for PipedriveTarget {
    async fn start(&self) -> Harness {
        let clock: SharedClock = Arc::new(SystemClock);
        let c = connect(clock.clone()).await;
        let crm = Arc::new(connector(&c, clock));
        let Connected { sandbox, store, dir, .. } = c;
        Harness { crm, emulator: Arc::new(PipedriveEmulator { sandbox }), keep: Box::new((store, dir)) }
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                super::conformance::$name(&PipedriveTarget).await;
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

fn call(id: &str) -> CallLog {
    CallLog {
        call_id: id.into(),
        started_at: "2026-11-23T23:10:00Z".parse().unwrap(),
        duration_secs: 75,
        from: Some("+14155550134".into()),
        to: "+14155550100".into(),
        summary: "Wants a quote.".into(),
        disposition: None,
        recording_url: None,
        transcript_url: None,
        source: "AI receptionist".into(),
    }
}

/// The token answer's `api_domain` is where the API calls go, the client authenticated with
/// HTTP Basic at the token endpoint, and the domain survives a restart (it is in the store).
#[tokio::test]
async fn api_calls_go_to_the_api_domain_and_the_client_authenticates_with_basic() {
    let clock: SharedClock = Arc::new(SystemClock);
    let c = connect(clock.clone()).await;
    assert_eq!(c.sandbox.state.code_exchange_count(), 1);
    assert_eq!(c.sandbox.state.basic_auth_token_requests(), 1);
    let crm = connector(&c, clock.clone());
    let ada = c.sandbox.state.insert_person("Ada Lovelace", None, &[], None, None);
    assert_eq!(crm.read_context(&ada).await.unwrap().contact.last_name.as_deref(), Some("Lovelace"));
    // A refresh also uses Basic.
    c.sandbox.state.expire_tokens();
    crm.read_context(&ada).await.unwrap();
    assert_eq!(c.sandbox.state.basic_auth_token_requests(), 2);
    // A new process over the same store finds the domain without a token request.
    let restarted = Arc::new(Connections::new(c.store.clone(), Arc::new(test_cipher()), http_client(), clock.clone()));
    let tokens = restarted.token_source(c.app.clone(), &c.connection_id);
    let again = PipedriveConnector::with_token_source(url::Url::parse(UNUSED_BASE).unwrap(), tokens, http_client());
    again.read_context(&ada).await.unwrap();
    assert_eq!(c.sandbox.state.basic_auth_token_requests(), 2);
}

/// A token answer naming a host that is neither `*.pipedrive.com` over HTTPS nor the OAuth
/// server itself is refused: the bearer token never goes there.
#[tokio::test]
async fn a_foreign_api_domain_is_refused() {
    let c = connect(Arc::new(SystemClock)).await;
    let app = &c.app;
    assert!(ApiBaseUrl::accept(app, "https://acme.pipedrive.com").is_ok());
    assert!(ApiBaseUrl::accept(app, "https://evil.example.com").is_err());
    assert!(ApiBaseUrl::accept(app, "http://acme.pipedrive.com").is_err(), "plain HTTP to Pipedrive is refused");
    assert!(ApiBaseUrl::accept(app, "https://pipedrive.com.evil.example").is_err());
    assert!(ApiBaseUrl::accept(app, "https://.pipedrive.com").is_err());
    assert!(ApiBaseUrl::accept(app, "not a url").is_err());
    // Through the flow: the next refresh names a foreign domain; the refresh fails and the
    // stored domain is unchanged.
    let crm = connector(&c, Arc::new(SystemClock));
    let ada = c.sandbox.state.insert_person("Ada Lovelace", None, &[], None, None);
    c.sandbox.state.set_api_domain("https://evil.example.com");
    c.sandbox.state.expire_tokens();
    let err = crm.read_context(&ada).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Permanent(_)), "{err:?}");
    assert_eq!(
        c.connections.api_base_url(&c.connection_id).await.unwrap().unwrap().url(),
        &c.sandbox.base_url(),
        "the stored domain is still the sandbox"
    );
    let _ = (&c.store, &c.dir);
}

/// Issue 5 "Done when": a spent daily token budget parks writes until the budget resets (00:00
/// UTC) instead of failing them: the write answers a retryable rate limit whose delay runs to
/// midnight, nothing is written, and the same write after the reset lands exactly once.
#[tokio::test]
async fn a_spent_daily_budget_parks_writes_until_the_utc_reset() {
    let clock = ManualClock::new("2026-11-23T23:30:00Z".parse().unwrap());
    let shared: SharedClock = Arc::new(clock.clone());
    let c = connect(shared.clone()).await;
    let crm = connector(&c, shared);
    let ada = c.sandbox.state.insert_person("Ada Lovelace", None, &["+14155550134"], None, None);
    // A budget of 30 tokens: one call log (two list reads and a create, 25 tokens) fits, the
    // next does not.
    c.sandbox.state.set_daily_budget(Some(30));
    crm.log_call(&ada, &call("c-0"), "first-call").await.unwrap();
    let err = crm.log_call(&ada, &call("c-1"), "budget-call").await.unwrap_err();
    match &err {
        ConnectorError::RateLimited { retry_after: Some(d), detail } => {
            assert_eq!(*d, Duration::from_secs(30 * 60), "until 00:00 UTC");
            assert!(detail.contains("daily"), "{detail}");
        }
        other => panic!("expected the daily budget, got {other:?}"),
    }
    assert!(err.is_retryable(), "parked, not failed");
    assert_eq!(c.sandbox.state.activities_of(&ada, "call").len(), 1);
    // Still the same day: still parked.
    clock.advance(SignedDuration::from_mins(10));
    assert!(matches!(crm.log_call(&ada, &call("c-1"), "budget-call").await, Err(ConnectorError::RateLimited { .. })));
    // The day turns; the budget is back and the parked write lands once.
    clock.advance(SignedDuration::from_mins(21));
    crm.log_call(&ada, &call("c-1"), "budget-call").await.unwrap();
    assert_eq!(c.sandbox.state.activities_of(&ada, "call").len(), 2);
}

/// The 2-second window: the request over the limit gets a 429 whose delay is the window's
/// `x-ratelimit-reset`; the next window serves it.
#[tokio::test]
async fn the_two_second_window_is_honoured() {
    let clock = ManualClock::new("2026-11-23T14:00:00Z".parse().unwrap());
    let shared: SharedClock = Arc::new(clock.clone());
    let c = connect(shared.clone()).await;
    let crm = connector(&c, shared);
    let ada = c.sandbox.state.insert_person("Ada Lovelace", None, &[], None, None);
    crm.read_context(&ada).await.unwrap();
    c.sandbox.state.set_burst_limit(Some(2));
    // One request (a search) and the note's read-through fill the window; the create is over.
    crm.find_contacts_by_email("nobody@example.com").await.unwrap();
    let note = NoteRecord { body: "n".into(), at: "2026-11-23T14:00:00Z".parse().unwrap() };
    match crm.log_note(&ada, &note, "burst-note").await.unwrap_err() {
        ConnectorError::RateLimited { retry_after: Some(d), detail } => {
            assert_eq!(d, Duration::from_secs(2));
            assert!(detail.contains("2-second"), "{detail}");
        }
        other => panic!("expected the window, got {other:?}"),
    }
    assert_eq!(c.sandbox.state.notes_total(&ada), 0);
    clock.advance(SignedDuration::from_secs(2));
    crm.log_note(&ada, &note, "burst-note").await.unwrap();
    assert_eq!(c.sandbox.state.notes_total(&ada), 1);
}

/// Hostile and malformed input: a non-numeric id, an unknown person, an oversized note, a
/// number where a date belongs — each a clear error, and the service keeps working.
#[tokio::test]
async fn bad_input_gets_clear_errors_and_leaves_the_connection_working() {
    let c = connect(Arc::new(SystemClock)).await;
    let crm = connector(&c, Arc::new(SystemClock));
    let ada = c.sandbox.state.insert_person("Ada Lovelace", None, &[], None, None);
    assert!(matches!(crm.read_context("../v1/users/1").await.unwrap_err(), ConnectorError::NotFound(_)));
    assert!(matches!(crm.read_context("424242").await.unwrap_err(), ConnectorError::NotFound(_)));
    let fields = ContactFields { last_name: Some("X".into()), ..Default::default() };
    assert!(crm.update_contact("not-a-number", &fields).await.is_err());
    let big = NoteRecord { body: "<script>".repeat(5_000), at: Timestamp::now() };
    let id = crm.log_note(&ada, &big, "big-note").await.unwrap();
    assert!(!id.is_empty());
    let ctx = crm.read_context(&ada).await.unwrap();
    let note = ctx.recent_activity.iter().find(|a| a.id == id).unwrap();
    assert!(note.summary.chars().count() <= 200 && note.summary.starts_with("<script>"), "{note:?}");
    let _ = (&c.store, &c.dir);
}

/// What undo and the deal-stage step need: object histories under the write-back's property
/// names (mapped to Pipedrive's fields) and deletes that tolerate a second run; tickets do not
/// exist on Pipedrive.
#[tokio::test]
async fn object_history_and_delete_serve_undo() {
    let c = connect(Arc::new(SystemClock)).await;
    let crm = connector(&c, Arc::new(SystemClock));
    let ada = c.sandbox.state.insert_person("Ada Lovelace", None, &["+14155550134"], None, None);

    let fields = ContactFields { last_name: Some("Byron".into()), ..Default::default() };
    crm.update_contact(&ada, &fields).await.unwrap();
    let h = crm.object_history(CrmObjectType::Contact, &ada, &["lastname".to_string()]).await.unwrap();
    assert_eq!(h[0].name, "lastname");
    assert_eq!(h[0].versions[0].value, "Ada Byron");
    assert!(!h[0].versions[0].is_human_edit());
    c.sandbox.state.rep_edit(&ada, "name", "Ada King", "77");
    let h = crm.object_history(CrmObjectType::Contact, &ada, &["lastname".to_string()]).await.unwrap();
    assert!(h[0].versions[0].is_human_edit(), "{h:?}");

    let deal = c.sandbox.state.insert_deal(&ada, "Remodel", "open", STAGES[0].0);
    let h = crm.object_history(CrmObjectType::Deal, &deal, &["dealstage".to_string()]).await.unwrap();
    assert!(h[0].versions.is_empty());
    crm.set_deal_stage(&deal, STAGES[2].1).await.unwrap();
    let h = crm.object_history(CrmObjectType::Deal, &deal, &["dealstage".to_string()]).await.unwrap();
    assert_eq!(h[0].versions[0].value, STAGES[2].0.to_string());
    assert!(!h[0].versions[0].is_human_edit());

    let call_id = crm.log_call(&ada, &call("c-undo"), "undo-call").await.unwrap();
    let h = crm.object_history(CrmObjectType::Call, &call_id, &["hs_call_body".to_string()]).await.unwrap();
    assert!(!h[0].versions[0].is_human_edit(), "untouched since it was added");
    crm.delete_object(CrmObjectType::Call, &call_id).await.unwrap();
    assert!(c.sandbox.state.activities_of(&ada, "call").is_empty());
    crm.delete_object(CrmObjectType::Call, &call_id).await.unwrap();
    let gone = crm.object_history(CrmObjectType::Call, &call_id, &["hs_call_body".to_string()]).await.unwrap_err();
    assert!(matches!(gone, ConnectorError::NotFound(_)), "{gone:?}");

    let note = NoteRecord { body: "n".into(), at: "2026-11-23T14:00:00Z".parse().unwrap() };
    let note_id = crm.log_note(&ada, &note, "undo-note").await.unwrap();
    let h = crm.object_history(CrmObjectType::Note, &note_id, &["hs_note_body".to_string()]).await.unwrap();
    assert!(!h[0].versions[0].is_human_edit());
    crm.delete_object(CrmObjectType::Note, &note_id).await.unwrap();
    assert_eq!(c.sandbox.state.notes_total(&ada), 0);

    crm.delete_object(CrmObjectType::Contact, &ada).await.unwrap();
    assert_eq!(c.sandbox.state.persons_total(), 0);
    let err = crm.log_ticket_note("1", &note, "t").await.unwrap_err();
    assert!(matches!(err, ConnectorError::Permanent(_)), "{err:?}");
    let _ = (&c.store, &c.dir);
}

/// The pilot's seeded deal: an open deal on the person in the default pipeline's first stage
/// (or the stage named, by name in any case), with its value; a bad value, an unknown stage and
/// an id that is not a Pipedrive id are refused before anything is created.
#[tokio::test]
async fn creates_an_open_deal_on_the_person() {
    let clock: SharedClock = Arc::new(SystemClock);
    let c = connect(clock.clone()).await;
    let crm = connector(&c, clock);
    let ada = c.sandbox.state.insert_person("Ada Lovelace", None, &[], None, None);
    let deal = super::DealRecord { name: "Kitchen remodel".into(), stage: None, amount: Some("4800".into()) };
    let id = crm.create_deal(&ada, &deal, "pilot-deal").await.unwrap();
    let stored = c.sandbox.state.deal(&id).expect("the deal exists");
    assert_eq!(stored["person_id"].as_u64().map(|p| p.to_string()), Some(ada.clone()));
    assert_eq!(stored["stage_id"], STAGES[0].0);
    assert_eq!(stored["status"], "open");
    assert_eq!(stored["value"].as_f64(), Some(4800.0));
    let ctx = crm.read_context(&ada).await.unwrap();
    assert_eq!(ctx.open_deals.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), vec![id.as_str()]);

    let named = super::DealRecord { stage: Some(STAGES[2].1.to_uppercase()), ..deal.clone() };
    let second = crm.create_deal(&ada, &named, "pilot-deal-2").await.unwrap();
    assert_eq!(c.sandbox.state.deal_stage(&second), Some(STAGES[2].0));

    let before = c.sandbox.state.deals_total();
    for (bad, field) in [
        (super::DealRecord { amount: Some("lots".into()), ..deal.clone() }, "value"),
        (super::DealRecord { stage: Some("Wizardry".into()), ..deal.clone() }, "stage_id"),
    ] {
        match crm.create_deal(&ada, &bad, "pilot-deal-x").await.unwrap_err() {
            ConnectorError::Validation { fields, .. } => assert_eq!(fields, vec![field.to_string()]),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        crm.create_deal("../persons", &deal, "pilot-deal-y").await.unwrap_err(),
        ConnectorError::Validation { .. }
    ));
    assert_eq!(c.sandbox.state.deals_total(), before, "nothing was created for the refused deals");
    let _ = (&c.store, &c.dir);
}

/// The identity pull's query (issue 12): persons updated at or after the watermark, oldest
/// first, 500 a page; a person edited while the pull pages moves to the end and nobody is
/// skipped.
#[tokio::test]
async fn the_incremental_pull_lists_only_persons_changed_since_the_watermark_paged() {
    let clock = ManualClock::new("2026-11-23T13:00:00Z".parse().unwrap());
    let shared: SharedClock = Arc::new(clock.clone());
    let c = connect(shared.clone()).await;
    let crm = connector(&c, shared);
    let state = &c.sandbox.state;
    let old: Vec<String> = (0..520)
        .map(|i| {
            clock.advance(SignedDuration::from_secs(1));
            let phone = format!("+1 718 555 {:04}", 1000 + i);
            state.insert_person(&format!("Old Person{i}"), None, &[phone.as_str()], None, None)
        })
        .collect();

    // A full pull: 500 then 20. Between the two pages a rep edits a person already listed: it
    // moves to the end of the listing, and the second page still starts where the first ended.
    let first = crm.contacts_changed_since(None, None).await.unwrap();
    assert_eq!(first.contacts.len(), 500);
    let ids: Vec<&str> = first.contacts.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, old[..500].iter().map(String::as_str).collect::<Vec<_>>(), "oldest change first");
    clock.advance(SignedDuration::from_secs(1));
    state.rep_edit(&old[0], "name", "Edited Person", "77");
    let second = crm.contacts_changed_since(None, first.next_cursor.as_deref()).await.unwrap();
    let ids: Vec<&str> = second.contacts.iter().map(|c| c.id.as_str()).collect();
    let mut expected: Vec<&str> = old[500..].iter().map(String::as_str).collect();
    expected.push(&old[0]);
    assert_eq!(ids, expected);
    assert_eq!(second.next_cursor, None);
    assert_eq!(second.newest, Some(clock.now()));

    // From a watermark: only what changed at or after it.
    clock.advance(SignedDuration::from_mins(5));
    let watermark = clock.now();
    state.rep_edit(&old[9], "name", "Renamed Person", "77");
    let late = state.insert_person("Late Comer", Some("late@example.com"), &[], None, None);
    clock.advance(SignedDuration::from_secs(1));
    let (changed, pages, newest) = pull_all(&crm, Some(watermark)).await;
    let ids: Vec<&str> = changed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [old[9].as_str(), late.as_str()]);
    assert_eq!(pages, 1);
    assert_eq!(newest, Some(watermark));
    assert_eq!(changed[1].email.as_deref(), Some("late@example.com"));
    let asked = c.sandbox.state.requests();
    let lists = asked.iter().filter(|(m, p, _)| m == "GET" && p == "/api/v2/persons").count();
    assert_eq!(lists, 3, "two pages, then one: {asked:?}");
    let _ = (&c.store, &c.dir);
}
