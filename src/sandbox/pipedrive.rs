//! A Pipedrive emulator: the slice of the v2 API (persons, deals, stages, activities, search,
//! organizations) and of the v1 API where v2 has no counterpart yet (notes, person fields, users,
//! the person changelog) that the connector uses, plus the OAuth server, with the documented
//! shapes, errors and rate-limit signals and the same fault injection as the HubSpot emulator.
//!
//! Documentation each behaviour follows (the connector cites the same pages):
//! - OAuth: authorize at `/oauth/authorize?client_id&redirect_uri&state`, tokens from
//!   `POST /oauth/token` (form body, client credentials in HTTP Basic), answering
//!   `{access_token, token_type, refresh_token, scope, expires_in, api_domain}` —
//!   <https://pipedrive.readme.io/docs/marketplace-oauth-authorization>,
//!   <https://developers.pipedrive.com/docs/api/v1/Oauth>.
//! - Rate limits: every answer carries `x-ratelimit-limit`, `x-ratelimit-remaining`,
//!   `x-ratelimit-reset` (the 2-second window) and `x-daily-requests-left`; an exhausted window
//!   or daily budget answers 429; the token budget "resets at the start of the next day" (UTC) —
//!   <https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting>,
//!   <https://developers.pipedrive.com/changelog/post/daily-api-limit-for-postput-endpoints>.
//!   Each endpoint costs tokens (`x-token-cost` in Pipedrive's OpenAPI description; v2 endpoints
//!   cost less than v1 — <https://pipedrive.readme.io/docs/guide-for-optimizing-api-usage>).
//! - Persons v2 (`first_name`/`last_name` derived from `name`, `emails[]`/`phones[]` of
//!   `{value, primary, label}`, `custom_fields` keyed by the field's 40-character hash, enum
//!   options by id), activities v2 (`type`, `due_date`, `due_time`, `duration`, `done`,
//!   `person_id`, `deal_id`, `owner_id`, `note`), persons search
//!   (`GET /api/v2/persons/search?term&fields&exact_match`, items `{result_score, item}`):
//!   <https://developers.pipedrive.com/docs/api/v1/Persons#searchPersons> and Pipedrive's v2
//!   OpenAPI models (`GetPersonsResponse`, `AddPersonRequest`, `ActivityItem`,
//!   `AddActivityRequest`, `GetPersonSearchResponse`).
//! - Errors: `{"success": false, "error": "...", "error_info": "...", "data": null,
//!   "additional_data": null}`; 401 `unauthorized access` with `errorCode`.
//!
//! The search index lags writes when told to (`set_search_lag`); list and get endpoints never
//! lag, which is what the connector's idempotency reads rely on.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::pipedrive_webhooks::{self, Change as WebhookChange, Subscription, WebhookStats, Webhooks};

use crate::clock::{SharedClock, SystemClock};

pub const OAUTH_CLIENT_ID: &str = "sandbox-pipedrive-client-id";
pub const OAUTH_CLIENT_SECRET: &str = "sandbox-pipedrive-client-secret";
/// Pipedrive access tokens live an hour (`expires_in: 3600` in the OAuth guide's example).
pub const ACCESS_TOKEN_TTL_SECS: u64 = 3600;

/// The person custom field holding the service's idempotency marker (created when the
/// connection is set up, like HubSpot's unique property). Its key is a 40-character hash.
pub const IDEMPOTENCY_FIELD_NAME: &str = "callside idempotency key";
pub const IDEMPOTENCY_FIELD_KEY: &str = "9f1c0a7e5b3d2c4e6f8a0b1c2d3e4f5a6b7c8d9e";
/// Custom person fields of the emulated company (one per typed-write kind). Pipedrive has no
/// date-time field type; a date-time goes to a text field as RFC 3339.
pub const ZIP_FIELD_KEY: &str = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";
pub const TEXT_FIELD_KEY: &str = "2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
pub const NUMBER_FIELD_KEY: &str = "3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
pub const DATE_FIELD_KEY: &str = "4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e";
pub const DATETIME_FIELD_KEY: &str = "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f";
pub const ENUM_FIELD_KEY: &str = "6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a";
/// `(id, label)` of the enum field's options: values are written by option id.
pub const ENUM_OPTIONS: [(u64, &str); 3] = [(31, "Phone"), (32, "Email"), (33, "SMS")];
/// Custom person fields the write-back rules map captured data into (as the HubSpot emulator's
/// `callside_*` properties): intent, urgency, sentiment and language (enums), a qualification
/// answer as text and one as a number, and the "last written by callside" stamp (text: Pipedrive
/// has no date-time field type).
pub const INTENT_FIELD_KEY: &str = "7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b";
pub const URGENCY_FIELD_KEY: &str = "8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c";
pub const URGENCY_OPTIONS: [(u64, &str); 3] = [(41, "low"), (42, "medium"), (43, "high")];
pub const SENTIMENT_FIELD_KEY: &str = "9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d";
pub const SENTIMENT_OPTIONS: [(u64, &str); 3] = [(51, "positive"), (52, "neutral"), (53, "negative")];
pub const LANGUAGE_FIELD_KEY: &str = "0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e";
pub const LANGUAGE_OPTIONS: [(u64, &str); 4] = [(61, "en"), (62, "es"), (63, "fr"), (64, "de")];
pub const SERVICE_INTEREST_FIELD_KEY: &str = "1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f";
pub const BUDGET_FIELD_KEY: &str = "2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a";
pub const LAST_WRITTEN_FIELD_KEY: &str = "3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";

/// The default pipeline's stages `(id, name)`.
pub const STAGES: [(u64, &str); 5] =
    [(1, "Qualified"), (2, "Contact Made"), (3, "Demo Scheduled"), (4, "Proposal Made"), (5, "Negotiations Started")];
const PIPELINE_ID: u64 = 1;
/// The user the OAuth grant belongs to (the actor of API changes).
pub const AUTHORIZING_USER_ID: u64 = 1;
/// The emulated company's id (`meta.company_id` of its webhooks; a tenant's `crm.company_id`).
pub const SANDBOX_COMPANY_ID: u64 = 7_201_001;

/// Token cost of one request by route shape (Pipedrive publishes a per-operation `x-token-cost`;
/// these follow its pattern: single GETs cheapest, lists more, search most, v1 dearer than v2).
fn token_cost(method: &Method, path: &str) -> u64 {
    let v1 = path.starts_with("/v1/");
    let base = if path.ends_with("/search") {
        20
    } else if method == Method::GET {
        let single = path.rsplit('/').next().is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()));
        if single { 1 } else { 10 }
    } else {
        5
    };
    if v1 { base * 2 } else { base }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// 429 with the window exhausted and `x-ratelimit-reset` in seconds.
    Burst(u64),
    Status(u16),
}

#[derive(Debug, Clone)]
struct Person {
    name: String,
    owner_id: Option<u64>,
    org_id: Option<u64>,
    emails: Vec<Value>,
    phones: Vec<Value>,
    custom: Map<String, Value>,
    add_time: Timestamp,
    update_time: Timestamp,
}

#[derive(Debug, Clone)]
struct Deal {
    title: String,
    person_id: u64,
    stage_id: u64,
    status: String,
    value: Option<f64>,
}

#[derive(Debug, Clone)]
struct Activity {
    fields: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct Note {
    content: String,
    person_id: u64,
    deal_id: Option<u64>,
    add_time: Timestamp,
}

#[derive(Debug, Clone)]
struct Change {
    person_id: u64,
    field_key: String,
    old_value: Value,
    new_value: Value,
    actor_user_id: u64,
    time: Timestamp,
    change_source: &'static str,
}

#[derive(Debug, Default)]
struct OAuth {
    codes: HashMap<String, String>,
    /// access token → expired
    access: HashMap<String, bool>,
    /// refresh token → usable
    refresh: HashMap<String, bool>,
    refreshes: u64,
    exchanges: u64,
    /// Basic credentials of every token request (checked by tests: client auth is Basic).
    basic_auth_requests: u64,
}

struct Inner {
    next_id: u64,
    persons: BTreeMap<u64, Person>,
    deals: BTreeMap<u64, Deal>,
    activities: BTreeMap<u64, Activity>,
    notes: BTreeMap<u64, Note>,
    users: BTreeMap<u64, (String, String)>,
    orgs: BTreeMap<u64, String>,
    changes: Vec<Change>,
    /// Deal field changes (`person_id` holds the deal's id).
    deal_changes: Vec<Change>,
    /// Persons the search index knows (all of them unless search lags).
    indexed: HashSet<u64>,
    search_lag: bool,
    down: bool,
    latency: std::time::Duration,
    failures: VecDeque<Injected>,
    drop_after_apply: u32,
    rejected: HashSet<String>,
    ignored: HashSet<String>,
    oauth: OAuth,
    revoked: bool,
    /// Daily token budget and what is left of it; `None`: unlimited.
    daily_budget: Option<u64>,
    budget_left: u64,
    budget_day: jiff::civil::Date,
    /// Requests allowed per 2-second window; `None`: unlimited.
    burst_limit: Option<u64>,
    window_start: Timestamp,
    window_used: u64,
    /// What the token endpoint returns as `api_domain` (default: the emulator's own URL).
    api_domain: String,
    /// A personal API token accepted in `x-api-token` (the demo's token mode).
    api_token: Option<String>,
    requests: Vec<(String, String, u16)>,
    /// Webhooks v2 subscriptions and their delivery (`super::pipedrive_webhooks`).
    webhooks: Webhooks,
}

impl Inner {
    /// Deletes a person and notifies the `delete` webhook as `change_source` by `user_id` (a rep
    /// in the app, or the API caller). False when there is no such person.
    fn delete_person(&mut self, id: u64, change_source: &'static str, user_id: u64, at: Timestamp) -> bool {
        let Some(person) = self.persons.remove(&id) else { return false };
        self.webhooks.emit(WebhookChange {
            action: "delete",
            entity: "person",
            entity_id: id,
            data: Value::Null,
            previous: person_json(id, &person),
            change_source,
            user_id,
            at,
        });
        true
    }
}

pub struct PipedriveState {
    inner: Mutex<Inner>,
    clock: Mutex<SharedClock>,
}

impl PipedriveState {
    fn new(api_domain: String) -> Arc<Self> {
        let clock: SharedClock = Arc::new(SystemClock);
        let now = clock.now();
        let mut users = BTreeMap::new();
        users.insert(AUTHORIZING_USER_ID, ("Sandbox Admin".to_string(), "admin@example.com".to_string()));
        Arc::new(Self {
            inner: Mutex::new(Inner {
                next_id: 100,
                persons: BTreeMap::new(),
                deals: BTreeMap::new(),
                activities: BTreeMap::new(),
                notes: BTreeMap::new(),
                users,
                orgs: BTreeMap::new(),
                changes: Vec::new(),
                deal_changes: Vec::new(),
                indexed: HashSet::new(),
                search_lag: false,
                down: false,
                latency: std::time::Duration::ZERO,
                failures: VecDeque::new(),
                drop_after_apply: 0,
                rejected: HashSet::new(),
                ignored: HashSet::new(),
                oauth: OAuth::default(),
                revoked: false,
                daily_budget: None,
                budget_left: 0,
                budget_day: now.to_zoned_datetime(jiff::tz::TimeZone::UTC).date(),
                burst_limit: None,
                window_start: now,
                window_used: 0,
                webhooks: Webhooks::new(
                    url::Url::parse(&api_domain).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default(),
                ),
                api_domain,
                api_token: None,
                requests: Vec::new(),
            }),
            clock: Mutex::new(clock),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Timestamp {
        self.clock.lock().unwrap_or_else(|p| p.into_inner()).now()
    }

    /// The clock the rate windows and the daily reset read (tests drive a `ManualClock`).
    pub fn set_clock(&self, clock: SharedClock) {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner()) = clock;
    }

    fn allocate(&self, inner: &mut Inner) -> u64 {
        let _ = self;
        inner.next_id += 1;
        inner.next_id
    }

    // ----- seeding ------------------------------------------------------------------------

    /// A person as a rep would have typed it. `zip` goes to the ZIP custom field.
    pub fn insert_person(
        &self,
        name: &str,
        email: Option<&str>,
        phones: &[&str],
        zip: Option<&str>,
        owner_id: Option<u64>,
    ) -> String {
        let now = self.now();
        let mut inner = self.lock();
        let id = self.allocate(&mut inner);
        let mut custom = Map::new();
        if let Some(zip) = zip {
            custom.insert(ZIP_FIELD_KEY.into(), json!(zip));
        }
        let phones = phones
            .iter()
            .enumerate()
            .map(|(i, p)| json!({"value": p, "primary": i == 0, "label": if i == 0 { "work" } else { "mobile" }}))
            .collect();
        let emails = email.map(|e| vec![json!({"value": e, "primary": true, "label": "work"})]).unwrap_or_default();
        inner.persons.insert(
            id,
            Person {
                name: name.into(),
                owner_id,
                org_id: None,
                emails,
                phones,
                custom,
                add_time: now,
                update_time: now,
            },
        );
        inner.indexed.insert(id);
        id.to_string()
    }

    pub fn insert_user(&self, name: &str, email: &str) -> String {
        let mut inner = self.lock();
        let id = self.allocate(&mut inner);
        inner.users.insert(id, (name.into(), email.into()));
        id.to_string()
    }

    pub fn insert_org(&self, name: &str, person_id: &str) -> String {
        let mut inner = self.lock();
        let id = self.allocate(&mut inner);
        inner.orgs.insert(id, name.into());
        if let Some(p) = person_id.parse().ok().and_then(|pid: u64| inner.persons.get_mut(&pid)) {
            p.org_id = Some(id);
        }
        id.to_string()
    }

    /// `status`: `open`, `won` or `lost`.
    pub fn insert_deal(&self, person_id: &str, title: &str, status: &str, stage_id: u64) -> String {
        let mut inner = self.lock();
        let id = self.allocate(&mut inner);
        let person_id = person_id.parse().unwrap_or_default();
        inner.deals.insert(id, Deal { title: title.into(), person_id, stage_id, status: status.into(), value: None });
        id.to_string()
    }

    pub fn insert_activity(&self, person_id: &str, kind: &str, subject: &str, done: bool, due_date: &str) -> String {
        let now = self.now();
        let mut inner = self.lock();
        let id = self.allocate(&mut inner);
        let mut fields = Map::new();
        fields.insert("subject".into(), json!(subject));
        fields.insert("type".into(), json!(kind));
        fields.insert("person_id".into(), json!(person_id.parse::<u64>().unwrap_or_default()));
        fields.insert("done".into(), json!(done));
        fields.insert("due_date".into(), json!(due_date));
        fields.insert("add_time".into(), json!(rfc3339(now)));
        inner.activities.insert(id, Activity { fields });
        id.to_string()
    }

    /// A person changes an activity in Pipedrive's UI: `field` at the top level (`done`, ...),
    /// any JSON value (a test may store one Pipedrive would not send). False when absent.
    pub fn set_activity_field(&self, id: &str, field: &str, value: Value) -> bool {
        let mut inner = self.lock();
        let Some(activity) = id.parse::<u64>().ok().and_then(|id| inner.activities.get_mut(&id)) else {
            return false;
        };
        activity.fields.insert(field.into(), value);
        true
    }

    /// Sets one of the company's activity custom fields on an activity (API v2 answers them
    /// under `custom_fields`). False when absent.
    pub fn set_activity_custom_field(&self, id: &str, key: &str, value: &str) -> bool {
        let mut inner = self.lock();
        let Some(activity) = id.parse::<u64>().ok().and_then(|id| inner.activities.get_mut(&id)) else {
            return false;
        };
        let custom = activity.fields.entry("custom_fields").or_insert_with(|| json!({}));
        if let Some(map) = custom.as_object_mut() {
            map.insert(key.into(), json!(value));
        }
        true
    }

    pub fn insert_note(&self, person_id: &str, content: &str, at: Timestamp) -> String {
        let mut inner = self.lock();
        let id = self.allocate(&mut inner);
        let person_id = person_id.parse().unwrap_or_default();
        inner.notes.insert(id, Note { content: content.into(), person_id, deal_id: None, add_time: at });
        id.to_string()
    }

    /// A rep edits a person field in Pipedrive's web app.
    pub fn rep_edit(&self, person_id: &str, field_key: &str, value: &str, user_id: &str) {
        let now = self.now();
        let mut inner = self.lock();
        let Ok(pid) = person_id.parse::<u64>() else { return };
        let user = user_id.parse().unwrap_or_default();
        let Some(person) = inner.persons.get_mut(&pid) else { return };
        let old = person_field(person, field_key);
        set_person_field(person, field_key, json!(value));
        person.update_time = now;
        let data = person_json(pid, person);
        inner.changes.push(Change {
            person_id: pid,
            field_key: field_key.into(),
            old_value: old.clone(),
            new_value: json!(value),
            actor_user_id: user,
            time: now,
            change_source: "app",
        });
        let previous = pipedrive_webhooks::previous_of(&[(field_key.to_string(), old)], is_custom_key);
        inner.webhooks.emit(WebhookChange {
            action: "change",
            entity: "person",
            entity_id: pid,
            data,
            previous,
            change_source: "app",
            user_id: user,
            at: now,
        });
    }

    /// A person deletes a person in Pipedrive's app (webhook `delete` with `change_source: app`).
    /// False when there is no such person.
    pub fn rep_delete(&self, person_id: &str, user_id: &str) -> bool {
        let now = self.now();
        let Ok(pid) = person_id.parse::<u64>() else { return false };
        self.lock().delete_person(pid, "app", user_id.parse().unwrap_or_default(), now)
    }

    // ----- webhooks ---------------------------------------------------------------------------

    /// The next `n` notifications are dropped (a missed webhook: the polling safety net's case).
    pub fn drop_next_webhooks(&self, n: u32) {
        self.lock().webhooks.drop_next(n);
    }

    /// What the webhook delivery has done so far; `changed()` wakes on every answer or drop.
    pub fn webhook_stats(&self) -> tokio::sync::watch::Receiver<WebhookStats> {
        self.lock().webhooks.stats()
    }

    pub fn webhook_subscriptions(&self) -> Vec<Subscription> {
        self.lock().webhooks.subscriptions().to_vec()
    }

    // ----- inspection -----------------------------------------------------------------------

    /// A person field as stored: `name`, `first_name`, `last_name`, `email`, `phone` (the
    /// primary), or a custom field key. `firstname`/`lastname` are accepted as the suite's
    /// neutral names.
    pub fn person_field(&self, person_id: &str, field: &str) -> Option<String> {
        let inner = self.lock();
        let person = inner.persons.get(&person_id.parse().ok()?)?;
        let value = match field {
            "firstname" => person_field(person, "first_name"),
            "lastname" => person_field(person, "last_name"),
            "email" => person.emails.first().map(|e| e["value"].clone()).unwrap_or(Value::Null),
            "phone" => person.phones.first().map(|e| e["value"].clone()).unwrap_or(Value::Null),
            other => person_field(person, other),
        };
        match value {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    pub fn person_phones(&self, person_id: &str) -> Vec<String> {
        let inner = self.lock();
        let Some(person) = person_id.parse().ok().and_then(|id: u64| inner.persons.get(&id)) else { return vec![] };
        person.phones.iter().filter_map(|p| p["value"].as_str().map(String::from)).collect()
    }

    /// The id of the person holding this exact phone string, if any.
    pub fn person_with_phone(&self, phone: &str) -> Option<String> {
        self.persons_with_phone(phone).into_iter().next()
    }

    /// The ids of every person holding this exact phone string.
    pub fn persons_with_phone(&self, phone: &str) -> Vec<String> {
        let inner = self.lock();
        inner
            .persons
            .iter()
            .filter(|(_, p)| p.phones.iter().any(|e| e["value"].as_str() == Some(phone)))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// The contents of the person's notes.
    pub fn notes_of(&self, person_id: &str) -> Vec<String> {
        let pid: u64 = person_id.parse().unwrap_or_default();
        self.lock().notes.values().filter(|n| n.person_id == pid).map(|n| n.content.clone()).collect()
    }

    pub fn persons_total(&self) -> usize {
        self.lock().persons.len()
    }

    /// Activities of a type on the person (every one of them, not only linked ones).
    pub fn activities_of(&self, person_id: &str, kind: &str) -> Vec<Map<String, Value>> {
        let inner = self.lock();
        let pid: u64 = person_id.parse().unwrap_or_default();
        inner
            .activities
            .values()
            .filter(|a| a.fields.get("type").and_then(Value::as_str) == Some(kind))
            .inspect(|a| assert_eq!(a.fields.get("person_id").and_then(Value::as_u64), Some(pid), "{a:?}"))
            .map(|a| a.fields.clone())
            .collect()
    }

    /// Every activity's fields, of every person.
    pub fn activities(&self) -> Vec<Map<String, Value>> {
        self.lock().activities.values().map(|a| a.fields.clone()).collect()
    }

    pub fn notes_total(&self, person_id: &str) -> usize {
        let inner = self.lock();
        let pid: u64 = person_id.parse().unwrap_or_default();
        assert!(inner.notes.values().all(|n| n.person_id == pid), "every note is on the person");
        inner.notes.len()
    }

    pub fn deal_stage(&self, deal_id: &str) -> Option<u64> {
        self.lock().deals.get(&deal_id.parse().ok()?).map(|d| d.stage_id)
    }

    /// A deal as the API answers it (`None`: no such deal).
    pub fn deal(&self, deal_id: &str) -> Option<Value> {
        let id = deal_id.parse().ok()?;
        self.lock().deals.get(&id).map(|d| deal_json(id, d))
    }

    pub fn deals_total(&self) -> usize {
        self.lock().deals.len()
    }

    /// `(method, path, status)` of every request so far.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.lock().requests.clone()
    }

    pub fn refresh_count(&self) -> u64 {
        self.lock().oauth.refreshes
    }

    pub fn code_exchange_count(&self) -> u64 {
        self.lock().oauth.exchanges
    }

    /// How many token requests authenticated the client with HTTP Basic.
    pub fn basic_auth_token_requests(&self) -> u64 {
        self.lock().oauth.basic_auth_requests
    }

    // ----- faults ---------------------------------------------------------------------------

    /// The personal API token the emulator accepts (the pilot revokes it by changing it).
    pub fn set_api_token(&self, token: &str) {
        self.lock().api_token = Some(token.to_string());
    }

    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Every answer is delayed this long (a slow vendor; the load test's latency profile).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().latency = latency;
    }

    pub fn fail_next(&self, failure: Injected) {
        self.lock().failures.push_back(failure);
    }

    /// The next write is applied but its response is lost (the connection breaks after the
    /// headers).
    pub fn drop_next_write_response(&self) {
        self.lock().drop_after_apply += 1;
    }

    /// While on, persons created or changed are not visible to search (they appear when it goes
    /// off).
    pub fn set_search_lag(&self, on: bool) {
        let mut inner = self.lock();
        inner.search_lag = on;
        if !on {
            let all: Vec<u64> = inner.persons.keys().copied().collect();
            inner.indexed.extend(all);
        }
    }

    pub fn reject_field(&self, key: &str) {
        self.lock().rejected.insert(key.into());
    }

    pub fn ignore_field(&self, key: &str) {
        self.lock().ignored.insert(key.into());
    }

    pub fn clear_field_faults(&self) {
        let mut inner = self.lock();
        inner.rejected.clear();
        inner.ignored.clear();
    }

    pub fn expire_tokens(&self) {
        let mut inner = self.lock();
        for expired in inner.oauth.access.values_mut() {
            *expired = true;
        }
    }

    pub fn revoke_grant(&self) {
        let mut inner = self.lock();
        inner.revoked = true;
        for usable in inner.oauth.refresh.values_mut() {
            *usable = false;
        }
    }

    /// A daily token budget (`None`: unlimited). Resets at 00:00 UTC of the emulator's clock.
    pub fn set_daily_budget(&self, tokens: Option<u64>) {
        let day = self.now().to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
        let mut inner = self.lock();
        inner.daily_budget = tokens;
        inner.budget_left = tokens.unwrap_or(0);
        inner.budget_day = day;
    }

    /// Requests per 2-second window (`None`: unlimited).
    pub fn set_burst_limit(&self, per_window: Option<u64>) {
        let now = self.now();
        let mut inner = self.lock();
        inner.burst_limit = per_window;
        inner.window_start = now;
        inner.window_used = 0;
    }

    /// What the token endpoint returns as `api_domain`.
    pub fn set_api_domain(&self, domain: &str) {
        self.lock().api_domain = domain.into();
    }
}

fn person_field(person: &Person, key: &str) -> Value {
    match key {
        "name" => json!(person.name),
        "first_name" => person.name.split_once(' ').map(|(f, _)| json!(f)).unwrap_or_else(|| json!(person.name)),
        "last_name" => person.name.split_once(' ').map(|(_, l)| json!(l)).unwrap_or(Value::Null),
        "owner_id" => json!(person.owner_id),
        "phones" => json!(person.phones),
        "emails" => json!(person.emails),
        other => person.custom.get(other).cloned().unwrap_or(Value::Null),
    }
}

fn set_person_field(person: &mut Person, key: &str, value: Value) {
    match key {
        "name" => person.name = value.as_str().unwrap_or_default().to_string(),
        // A rep's edit names the user as text (`rep_edit`), the API as a number.
        "owner_id" => person.owner_id = value.as_u64().or_else(|| value.as_str().and_then(|s| s.parse().ok())),
        "phones" => person.phones = value.as_array().cloned().unwrap_or_default(),
        "emails" => person.emails = value.as_array().cloned().unwrap_or_default(),
        other => {
            if value.is_null() {
                person.custom.remove(other);
            } else {
                person.custom.insert(other.into(), value);
            }
        }
    }
}

/// Custom field keys are 40-character hashes; standard fields have names.
fn is_custom_key(key: &str) -> bool {
    key.len() == 40 && key.chars().all(|c| c.is_ascii_hexdigit())
}

/// `2026-11-23T14:00:00Z`, the v2 time format.
fn rfc3339(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `2026-11-23 14:00:00`, the v1 time format (UTC).
fn v1_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// Person field definitions (`GET /v1/personFields`): the standard fields the connector touches
/// and the company's custom fields.
fn person_fields() -> Value {
    let custom = |id: u64, key: &str, name: &str, field_type: &str| {
        json!({"id": id, "key": key, "name": name, "field_type": field_type, "edit_flag": true,
               "active_flag": true, "mandatory_flag": false, "add_visible_flag": true})
    };
    let mut fields = vec![
        json!({"id": 9001, "key": "name", "name": "Name", "field_type": "varchar", "edit_flag": false, "active_flag": true}),
        json!({"id": 9002, "key": "phone", "name": "Phone", "field_type": "phone", "edit_flag": false, "active_flag": true}),
        json!({"id": 9003, "key": "email", "name": "Email", "field_type": "varchar", "edit_flag": false, "active_flag": true}),
        json!({"id": 9004, "key": "owner_id", "name": "Owner", "field_type": "user", "edit_flag": false, "active_flag": true}),
        custom(9101, IDEMPOTENCY_FIELD_KEY, IDEMPOTENCY_FIELD_NAME, "varchar"),
        custom(9102, ZIP_FIELD_KEY, "ZIP code", "varchar"),
        custom(9103, TEXT_FIELD_KEY, "Company name", "varchar"),
        custom(9104, NUMBER_FIELD_KEY, "Call count", "double"),
        custom(9105, DATE_FIELD_KEY, "Next visit", "date"),
        custom(9106, DATETIME_FIELD_KEY, "Last call at", "varchar"),
    ];
    let enumeration = |id: u64, key: &str, name: &str, options: &[(u64, &str)]| {
        let mut field = custom(id, key, name, "enum");
        field["options"] =
            json!(options.iter().map(|(id, label)| json!({"id": id, "label": label})).collect::<Vec<_>>());
        field
    };
    fields.extend([
        enumeration(9107, ENUM_FIELD_KEY, "Preferred channel", &ENUM_OPTIONS),
        custom(9108, INTENT_FIELD_KEY, "Intent", "varchar"),
        enumeration(9109, URGENCY_FIELD_KEY, "Urgency", &URGENCY_OPTIONS),
        enumeration(9110, SENTIMENT_FIELD_KEY, "Sentiment", &SENTIMENT_OPTIONS),
        enumeration(9111, LANGUAGE_FIELD_KEY, "Language", &LANGUAGE_OPTIONS),
        custom(9112, SERVICE_INTEREST_FIELD_KEY, "Service interest", "varchar"),
        custom(9113, BUDGET_FIELD_KEY, "Budget", "double"),
        custom(9114, LAST_WRITTEN_FIELD_KEY, "Last written by callside", "varchar"),
    ]);
    Value::Array(fields)
}

pub struct PipedriveSandbox {
    pub addr: SocketAddr,
    pub state: Arc<PipedriveState>,
    task: JoinHandle<()>,
}

impl PipedriveSandbox {
    /// Like [`PipedriveSandbox::start`], also accepting `api_token` in `x-api-token`.
    pub async fn start_with_api_token(api_token: &str) -> io::Result<Self> {
        Self::start_with_api_token_on(api_token, 0).await
    }

    /// As [`PipedriveSandbox::start_with_api_token`], on the given loopback port (0: any free one).
    pub async fn start_with_api_token_on(api_token: &str, port: u16) -> io::Result<Self> {
        let sandbox = Self::start_on(port).await?;
        sandbox.state.lock().api_token = Some(api_token.to_string());
        Ok(sandbox)
    }

    /// Binds `127.0.0.1:0` and serves the API and the OAuth server on the current runtime.
    pub async fn start() -> io::Result<Self> {
        Self::start_on(0).await
    }

    /// As [`PipedriveSandbox::start`], on the given loopback port (0: any free one).
    pub async fn start_on(port: u16) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = PipedriveState::new(format!("http://{addr}"));
        let app = Self::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "pipedrive sandbox stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:<port>/`: both the OAuth server and the `api_domain` it hands out.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("socket address forms a valid URL")
    }

    pub fn router(state: Arc<PipedriveState>) -> Router {
        Router::new()
            .route("/api/v2/persons", get(list_persons).post(create_person))
            .route("/api/v2/persons/search", get(search_persons))
            .route("/api/v2/persons/{id}", get(read_person).patch(update_person).delete(delete_person))
            .route("/api/v2/deals", get(list_deals).post(create_deal))
            .route("/api/v2/deals/{id}", get(read_deal).patch(update_deal).delete(delete_deal))
            .route("/v1/deals/{id}/changelog", get(deal_changelog))
            .route("/api/v2/stages", get(list_stages))
            .route("/api/v2/activities", get(list_activities).post(create_activity))
            .route("/api/v2/activities/{id}", patch(update_activity).get(read_activity).delete(delete_activity))
            .route("/api/v2/organizations/{id}", get(read_org))
            .route("/v1/notes", get(list_notes).post(create_note))
            .route("/v1/notes/{id}", get(read_note).delete(delete_note))
            .route("/v1/personFields", get(list_person_fields))
            .route("/v1/users/me", get(read_me))
            .route("/v1/users/{id}", get(read_user))
            .route("/v1/webhooks", get(list_webhooks).post(create_webhook))
            .route("/v1/webhooks/{id}", axum::routing::delete(delete_webhook))
            .route("/v1/persons/{id}/changelog", get(person_changelog))
            .route("/oauth/authorize", get(oauth_authorize))
            .route("/oauth/token", post(oauth_token))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "Unknown method .") })
            .layer(middleware::from_fn_with_state(state.clone(), gatekeeper))
            .with_state(state)
    }
}

impl Drop for PipedriveSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ----- cross-cutting ---------------------------------------------------------------------------

/// The error body of Pipedrive's v1 and v2 APIs.
fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "success": false,
        "error": message,
        "error_info": "Please check developers.pipedrive.com for more information about Pipedrive API.",
        "data": null,
        "additional_data": null,
    });
    (status, axum::Json(body)).into_response()
}

fn ok(data: Value) -> Response {
    (StatusCode::OK, axum::Json(json!({"success": true, "data": data}))).into_response()
}

fn ok_list(data: Vec<Value>, next_cursor: Option<String>) -> Response {
    let body = json!({"success": true, "data": data, "additional_data": {"next_cursor": next_cursor}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn rate_limit_headers(headers: &mut HeaderMap, limit: u64, remaining: u64, reset: u64, daily_left: Option<u64>) {
    let mut put = |name: &'static str, v: u64| {
        headers.insert(name, HeaderValue::from_str(&v.to_string()).expect("digits are a valid header"));
    };
    put("x-ratelimit-limit", limit);
    put("x-ratelimit-remaining", remaining);
    put("x-ratelimit-reset", reset);
    if let Some(left) = daily_left {
        put("x-daily-requests-left", left);
    }
}

enum Verdict {
    Pass { limit: u64, remaining: u64, reset: u64, daily_left: Option<u64> },
    Refuse(Response),
}

/// Outage, auth, injected faults, the daily budget and the 2-second window, in that order; then
/// the handler; then the lost response when one is armed.
async fn gatekeeper(State(state): State<Arc<PipedriveState>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let latency = state.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let now = state.now();
    let verdict = {
        let mut inner = state.lock();
        gate(&mut inner, &request, &method, &path, now)
    };
    let (limit, remaining, reset, daily_left) = match verdict {
        Verdict::Refuse(response) => {
            state.lock().requests.push((method.to_string(), path, response.status().as_u16()));
            return response;
        }
        Verdict::Pass { limit, remaining, reset, daily_left } => (limit, remaining, reset, daily_left),
    };
    let is_write = method != Method::GET && !path.starts_with("/oauth/");
    let drop_response = {
        let mut inner = state.lock();
        let drop = is_write && inner.drop_after_apply > 0;
        if drop {
            inner.drop_after_apply -= 1;
        }
        drop
    };
    let mut response = next.run(request).await;
    if !path.starts_with("/oauth/") {
        rate_limit_headers(response.headers_mut(), limit, remaining, reset, daily_left);
    }
    state.lock().requests.push((method.to_string(), path, response.status().as_u16()));
    if !drop_response {
        return response;
    }
    // The write is applied; the body fails after the headers, so the client sees a broken
    // connection and cannot know the outcome.
    let (parts, _) = response.into_parts();
    let failing = futures::stream::once(async {
        Err::<Bytes, io::Error>(io::Error::new(io::ErrorKind::ConnectionAborted, "response dropped"))
    });
    Response::from_parts(parts, Body::from_stream(failing))
}

fn gate(inner: &mut Inner, request: &Request, method: &Method, path: &str, now: Timestamp) -> Verdict {
    if inner.down {
        let body = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>";
        return Verdict::Refuse(
            (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/html")], body).into_response(),
        );
    }
    if path.starts_with("/oauth/") {
        return Verdict::Pass { limit: 0, remaining: 0, reset: 0, daily_left: None };
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // A personal API token goes in `x-api-token`
    // (<https://pipedrive.readme.io/docs/core-api-concepts-authentication>).
    let api_token = request.headers().get("x-api-token").and_then(|v| v.to_str().ok());
    let valid = presented.and_then(|t| inner.oauth.access.get(t)).is_some_and(|expired| !expired)
        || (api_token.is_some() && api_token == inner.api_token.as_deref());
    if !valid {
        // A missing, unknown or expired token: 401 with Pipedrive's `unauthorized access` body.
        let body = json!({
            "success": false,
            "error": "unauthorized access",
            "errorCode": 401,
            "error_info": "Please check developers.pipedrive.com for more information about Pipedrive API.",
        });
        return Verdict::Refuse((StatusCode::UNAUTHORIZED, axum::Json(body)).into_response());
    }
    // The 2-second window (fixed windows anchored at the first request after the last one).
    if now.duration_since(inner.window_start) >= SignedDuration::from_secs(2) {
        inner.window_start = now;
        inner.window_used = 0;
    }
    let limit = inner.burst_limit.unwrap_or(80);
    let elapsed = now.duration_since(inner.window_start).as_secs();
    let reset = (2 - elapsed.clamp(0, 2)).max(1) as u64;
    // The daily budget resets at the start of the next (UTC) day.
    let today = now.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    if today != inner.budget_day {
        inner.budget_day = today;
        inner.budget_left = inner.daily_budget.unwrap_or(0);
    }
    let daily_left = inner.daily_budget.map(|_| inner.budget_left);
    if let Some(failure) = inner.failures.pop_front() {
        return Verdict::Refuse(match failure {
            Injected::Burst(secs) => too_many(limit, 0, secs, daily_left),
            Injected::Status(status) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                error(status, "Internal server error")
            }
        });
    }
    let cost = token_cost(method, path);
    if inner.daily_budget.is_some() && inner.budget_left < cost {
        return Verdict::Refuse(too_many(limit, limit.saturating_sub(inner.window_used), reset, Some(0)));
    }
    if inner.burst_limit.is_some() && inner.window_used >= limit {
        return Verdict::Refuse(too_many(limit, 0, reset, daily_left));
    }
    inner.window_used += 1;
    if inner.daily_budget.is_some() {
        inner.budget_left -= cost;
    }
    Verdict::Pass {
        limit,
        remaining: limit.saturating_sub(inner.window_used),
        reset,
        daily_left: inner.daily_budget.map(|_| inner.budget_left),
    }
}

/// 429 "Too Many Requests" with the rate-limit headers (rate limiting page).
fn too_many(limit: u64, remaining: u64, reset: u64, daily_left: Option<u64>) -> Response {
    let body = json!({
        "success": false,
        "error": "Request over limit",
        "errorCode": 429,
        "error_info": "Please check developers.pipedrive.com for more information about Pipedrive API.",
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    rate_limit_headers(response.headers_mut(), limit, remaining, reset, daily_left);
    response
}

// ----- persons -----------------------------------------------------------------------------------

fn person_json(id: u64, p: &Person) -> Value {
    json!({
        "id": id,
        "name": p.name,
        "first_name": person_field(p, "first_name"),
        "last_name": person_field(p, "last_name"),
        "owner_id": p.owner_id,
        "org_id": p.org_id,
        "add_time": rfc3339(p.add_time),
        "update_time": rfc3339(p.update_time),
        "emails": p.emails,
        "phones": p.phones,
        "is_deleted": false,
        "visible_to": 3,
        "label_ids": [],
        "picture_id": null,
        "custom_fields": p.custom,
    })
}

fn parse_id(raw: &str) -> Option<u64> {
    raw.parse().ok()
}

async fn read_person(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    match parse_id(&id).and_then(|id| inner.persons.get(&id).map(|p| person_json(id, p))) {
        Some(p) => ok(p),
        None => error(StatusCode::NOT_FOUND, "Person not found"),
    }
}

/// `GET /api/v2/persons?sort_by&sort_direction&limit&cursor&ids&updated_since&updated_until`:
/// straight from the database (no index lag). `sort_by` is `id` (default), `update_time` or
/// `add_time`; `updated_since` / `updated_until` (RFC 3339) keep persons whose `update_time` is
/// at or after / before them (the v2 reference, "Get all persons"). The cursor is opaque to
/// clients: an offset when sorted by id, and for the time sorts the last row's (time, id), so a
/// person edited while a client pages moves to the end instead of shifting the others.
async fn list_persons(State(state): State<Arc<PipedriveState>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let inner = state.lock();
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100);
    if limit == 0 || limit > 500 {
        return error(StatusCode::BAD_REQUEST, "Validation failed: limit: Parameter 'limit' must be between 1 and 500");
    }
    let sort_by = q.get("sort_by").map(String::as_str).unwrap_or("id");
    if !matches!(sort_by, "id" | "update_time" | "add_time") {
        return error(StatusCode::BAD_REQUEST, "Validation failed: sort_by: must be one of id, update_time, add_time");
    }
    let desc = match q.get("sort_direction").map(String::as_str) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "Validation failed: sort_direction: must be asc or desc"),
    };
    let mut bounds = [None, None];
    for (i, key) in ["updated_since", "updated_until"].iter().enumerate() {
        if let Some(raw) = q.get(*key) {
            match raw.parse::<Timestamp>() {
                Ok(t) => bounds[i] = Some(t),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("Validation failed: {key}: must be an RFC 3339 date-time"),
                    );
                }
            }
        }
    }
    let [since, until] = bounds;
    let ids: Option<HashSet<u64>> = q.get("ids").map(|s| s.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    // Times are stored to the second in answers; compare what clients see.
    let seconds = |t: Timestamp| t.as_second();
    let key = |id: u64, p: &Person| -> (i64, u64) {
        match sort_by {
            "update_time" => (seconds(p.update_time), id),
            "add_time" => (seconds(p.add_time), id),
            _ => (0, id),
        }
    };
    let mut all: Vec<(u64, &Person)> = inner
        .persons
        .iter()
        .filter(|(id, _)| ids.as_ref().is_none_or(|set| set.contains(id)))
        .filter(|(_, p)| since.is_none_or(|s| seconds(p.update_time) >= seconds(s)))
        .filter(|(_, p)| until.is_none_or(|u| seconds(p.update_time) < seconds(u)))
        .map(|(k, v)| (*k, v))
        .collect();
    all.sort_by_key(|(id, p)| key(*id, p));
    if desc {
        all.reverse();
    }
    let cursor = q.get("cursor").map(String::as_str);
    let (page, next): (Vec<(u64, &Person)>, Option<String>) = if sort_by == "id" {
        let offset = cursor.and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
        let page: Vec<_> = all.iter().skip(offset).take(limit).cloned().collect();
        (page, (offset + limit < all.len()).then(|| (offset + limit).to_string()))
    } else {
        let after: Option<(i64, u64)> = match cursor {
            None => None,
            Some(c) => match c.split_once(':').and_then(|(t, i)| Some((t.parse().ok()?, i.parse().ok()?))) {
                Some(k) => Some(k),
                None => return error(StatusCode::BAD_REQUEST, "Validation failed: cursor: invalid cursor"),
            },
        };
        let rest: Vec<_> = all
            .iter()
            .filter(|(id, p)| after.is_none_or(|a| if desc { key(*id, p) < a } else { key(*id, p) > a }))
            .cloned()
            .collect();
        let page: Vec<_> = rest.iter().take(limit).cloned().collect();
        let next = (rest.len() > limit).then(|| {
            let (id, p) = page.last().expect("a full page");
            let (t, i) = key(*id, p);
            format!("{t}:{i}")
        });
        (page, next)
    };
    ok_list(page.iter().map(|(id, p)| person_json(*id, p)).collect(), next)
}

/// Checks a person body's fields; returns the problems as Pipedrive words them.
fn validate_person_body(inner: &Inner, body: &Map<String, Value>) -> Option<Response> {
    let defs = person_fields();
    let defs = defs.as_array().expect("static list");
    if let Some(name) = body.get("name")
        && name.as_str().is_none_or(|n| n.trim().is_empty())
    {
        return Some(error(StatusCode::BAD_REQUEST, "Validation failed: name: Name must be given"));
    }
    for key in ["phones", "emails"] {
        if let Some(list) = body.get(key) {
            let fine = list.as_array().is_some_and(|a| a.iter().all(|e| e.get("value").is_some_and(Value::is_string)));
            if !fine {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    &format!("Validation failed: {key}: must be an array of {{value, primary, label}}"),
                ));
            }
        }
    }
    if inner.rejected.contains("name") && body.contains_key("name") {
        return Some(error(StatusCode::BAD_REQUEST, "Validation failed: name: the value is not allowed"));
    }
    let custom = body.get("custom_fields").and_then(Value::as_object).cloned().unwrap_or_default();
    for (key, value) in &custom {
        let Some(def) = defs.iter().find(|d| d["key"] == json!(key)) else {
            return Some(error(
                StatusCode::BAD_REQUEST,
                &format!("Validation failed: custom_fields.{key}: unknown field"),
            ));
        };
        if inner.rejected.contains(key) {
            return Some(error(
                StatusCode::BAD_REQUEST,
                &format!("Validation failed: custom_fields.{key}: the value is not allowed"),
            ));
        }
        let fits = match def["field_type"].as_str().unwrap_or_default() {
            _ if value.is_null() => true,
            "double" | "monetary" => value.is_number(),
            "date" => value.as_str().is_some_and(|s| s.parse::<jiff::civil::Date>().is_ok()),
            "enum" => value.as_u64().is_some_and(|id| {
                def["options"].as_array().is_some_and(|o| o.iter().any(|opt| opt["id"].as_u64() == Some(id)))
            }),
            _ => value.is_string(),
        };
        if !fits {
            return Some(error(
                StatusCode::BAD_REQUEST,
                &format!("Validation failed: custom_fields.{key}: invalid value for a {} field", def["field_type"]),
            ));
        }
    }
    None
}

/// Applies a person body through the API; returns the changed fields with their old values.
fn apply_person_body(inner: &mut Inner, id: u64, body: &Map<String, Value>, now: Timestamp) -> Vec<(String, Value)> {
    let ignored = inner.ignored.clone();
    let Some(person) = inner.persons.get_mut(&id) else { return Vec::new() };
    let mut changes = Vec::new();
    let mut apply = |person: &mut Person, key: &str, value: &Value| {
        if ignored.contains(key) {
            return;
        }
        let old = person_field(person, key);
        if old != *value {
            set_person_field(person, key, value.clone());
            changes.push((key.to_string(), old, value.clone()));
        }
    };
    for key in ["name", "owner_id", "phones", "emails"] {
        if let Some(v) = body.get(key) {
            apply(person, key, v);
        }
    }
    if let Some(custom) = body.get("custom_fields").and_then(Value::as_object) {
        for (k, v) in custom {
            apply(person, k, v);
        }
    }
    person.update_time = now;
    let changed: Vec<(String, Value)> = changes.iter().map(|(k, old, _)| (k.clone(), old.clone())).collect();
    for (field_key, old_value, new_value) in changes {
        inner.changes.push(Change {
            person_id: id,
            field_key,
            old_value,
            new_value,
            actor_user_id: AUTHORIZING_USER_ID,
            time: now,
            change_source: "api",
        });
    }
    if !inner.search_lag {
        inner.indexed.insert(id);
    }
    changed
}

async fn create_person(State(state): State<Arc<PipedriveState>>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: request body must be a JSON object");
    };
    if !body.contains_key("name") {
        return error(StatusCode::BAD_REQUEST, "Validation failed: name: Name must be given");
    }
    let now = state.now();
    let mut inner = state.lock();
    if let Some(problem) = validate_person_body(&inner, &body) {
        return problem;
    }
    let id = state.allocate(&mut inner);
    inner.persons.insert(
        id,
        Person {
            name: String::new(),
            owner_id: Some(AUTHORIZING_USER_ID),
            org_id: body.get("org_id").and_then(Value::as_u64),
            emails: vec![],
            phones: vec![],
            custom: Map::new(),
            add_time: now,
            update_time: now,
        },
    );
    apply_person_body(&mut inner, id, &body, now);
    let data = person_json(id, inner.persons.get(&id).expect("just inserted"));
    inner.webhooks.emit(WebhookChange {
        action: "create",
        entity: "person",
        entity_id: id,
        data: data.clone(),
        previous: Value::Null,
        change_source: "api",
        user_id: AUTHORIZING_USER_ID,
        at: now,
    });
    ok(data)
}

async fn update_person(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: request body must be a JSON object");
    };
    let now = state.now();
    let mut inner = state.lock();
    let Some(id) = parse_id(&id).filter(|id| inner.persons.contains_key(id)) else {
        return error(StatusCode::NOT_FOUND, "Person not found");
    };
    if let Some(problem) = validate_person_body(&inner, &body) {
        return problem;
    }
    let changed = apply_person_body(&mut inner, id, &body, now);
    let data = person_json(id, &inner.persons[&id]);
    // One edit, one notification; a write that changed nothing sends none.
    if !changed.is_empty() {
        inner.webhooks.emit(WebhookChange {
            action: "change",
            entity: "person",
            entity_id: id,
            data: data.clone(),
            previous: pipedrive_webhooks::previous_of(&changed, is_custom_key),
            change_source: "api",
            user_id: AUTHORIZING_USER_ID,
            at: now,
        });
    }
    ok(data)
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// `GET /api/v2/persons/search`. Pipedrive matches the term anywhere in the field unless
/// `exact_match=true`; phones match on their digits (a term of digits finds every layout of the
/// number), case-insensitively elsewhere. Only indexed persons are found.
async fn search_persons(
    State(state): State<Arc<PipedriveState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let term = q.get("term").map(|t| t.trim().to_lowercase()).unwrap_or_default();
    let exact = q.get("exact_match").is_some_and(|v| v == "true" || v == "1");
    if term.chars().count() < if exact { 1 } else { 2 } {
        return error(
            StatusCode::BAD_REQUEST,
            "Validation failed: term: Search term must be at least 2 characters long",
        );
    }
    let fields: Vec<String> = q
        .get("fields")
        .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_else(|| vec!["name".into(), "email".into(), "phone".into(), "notes".into(), "custom_fields".into()]);
    let inner = state.lock();
    let matches = |value: &str, is_phone: bool| {
        if is_phone {
            let (v, t) = (digits(value), digits(&term));
            !t.is_empty() && if exact { v == t } else { v.contains(&t) }
        } else {
            let v = value.to_lowercase();
            if exact { v == term } else { v.contains(&term) }
        }
    };
    let mut items = Vec::new();
    for (id, p) in &inner.persons {
        if !inner.indexed.contains(id) {
            continue;
        }
        let hit = fields.iter().any(|f| match f.as_str() {
            "name" => matches(&p.name, false) || (!exact && p.name.split_whitespace().any(|w| matches(w, false))),
            "email" => p.emails.iter().any(|e| matches(e["value"].as_str().unwrap_or_default(), false)),
            "phone" => p.phones.iter().any(|e| matches(e["value"].as_str().unwrap_or_default(), true)),
            "custom_fields" => p.custom.values().any(|v| v.as_str().is_some_and(|s| matches(s, false))),
            _ => false,
        });
        if hit {
            items.push(json!({
                "result_score": 1.0,
                "item": {
                    "id": id,
                    "type": "person",
                    "name": p.name,
                    "phones": p.phones.iter().filter_map(|e| e["value"].as_str()).collect::<Vec<_>>(),
                    "emails": p.emails.iter().filter_map(|e| e["value"].as_str()).collect::<Vec<_>>(),
                    "primary_email": p.emails.first().map(|e| e["value"].clone()),
                    "visible_to": 3,
                    "owner": {"id": p.owner_id},
                    "organization": p.org_id.map(|o| json!({"id": o, "name": inner.orgs.get(&o), "address": null})),
                    "custom_fields": p.custom.values().filter_map(Value::as_str).collect::<Vec<_>>(),
                    "notes": [],
                    "update_time": rfc3339(p.update_time),
                }
            }));
        }
    }
    let body = json!({"success": true, "data": {"items": items}, "additional_data": {"next_cursor": null}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn person_changelog(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    let Some(id) = parse_id(&id).filter(|id| inner.persons.contains_key(id)) else {
        return error(StatusCode::NOT_FOUND, "Person not found");
    };
    // Newest first.
    let data: Vec<Value> = inner
        .changes
        .iter()
        .rev()
        .filter(|c| c.person_id == id)
        .map(|c| {
            json!({
                "field_key": c.field_key,
                "old_value": c.old_value,
                "new_value": c.new_value,
                "actor_user_id": c.actor_user_id,
                "time": v1_time(c.time),
                "change_source": c.change_source,
                "change_source_user_agent": null,
                "is_bulk_update_flag": false,
            })
        })
        .collect();
    ok_list(data, None)
}

async fn list_person_fields() -> Response {
    ok_list(person_fields().as_array().cloned().unwrap_or_default(), None)
}

// ----- deals and stages -------------------------------------------------------------------------

fn deal_json(id: u64, d: &Deal) -> Value {
    json!({
        "id": id,
        "title": d.title,
        "person_id": d.person_id,
        "stage_id": d.stage_id,
        "pipeline_id": PIPELINE_ID,
        "status": d.status,
        "value": d.value,
        "currency": "USD",
        "expected_close_date": null,
        "is_deleted": false,
    })
}

async fn list_deals(State(state): State<Arc<PipedriveState>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let inner = state.lock();
    let person = q.get("person_id").and_then(|p| p.parse::<u64>().ok());
    let status = q.get("status").cloned();
    let data: Vec<Value> = inner
        .deals
        .iter()
        .filter(|(_, d)| person.is_none_or(|p| d.person_id == p))
        .filter(|(_, d)| status.as_deref().is_none_or(|s| d.status == s))
        .map(|(id, d)| deal_json(*id, d))
        .collect();
    ok_list(data, None)
}

async fn read_deal(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    match parse_id(&id).and_then(|id| inner.deals.get(&id).map(|d| deal_json(id, d))) {
        Some(d) => ok(d),
        None => error(StatusCode::NOT_FOUND, "Deal not found"),
    }
}

/// `POST /api/v2/deals`: `title` is required, and a `person_id` (or `org_id`) that exists;
/// without `stage_id` the deal goes to the first stage of the default pipeline; `value` is a
/// number in v2; a new deal is `open`
/// (<https://developers.pipedrive.com/docs/api/v1/Deals#addDeal>, the v2 `AddDealRequest`).
async fn create_deal(State(state): State<Arc<PipedriveState>>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: request body must be a JSON object");
    };
    let Some(title) = body.get("title").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: title: Title must be given");
    };
    let mut inner = state.lock();
    let Some(person_id) = body.get("person_id").and_then(Value::as_u64) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: person_id: person_id or org_id must be given");
    };
    if !inner.persons.contains_key(&person_id) {
        return error(StatusCode::BAD_REQUEST, "Validation failed: person_id: Person not found");
    }
    let stage_id = match body.get("stage_id") {
        None | Some(Value::Null) => STAGES[0].0,
        Some(stage) => match stage.as_u64().filter(|s| STAGES.iter().any(|(id, _)| id == s)) {
            Some(s) => s,
            None => return error(StatusCode::BAD_REQUEST, "Validation failed: stage_id: Stage not found"),
        },
    };
    let value = match body.get("value") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(v) => Some(v),
            None => return error(StatusCode::BAD_REQUEST, "Validation failed: value: must be a number"),
        },
    };
    let id = state.allocate(&mut inner);
    let deal = Deal { title: title.to_string(), person_id, stage_id, status: "open".into(), value };
    let answer = deal_json(id, &deal);
    inner.deals.insert(id, deal);
    ok(answer)
}

async fn update_deal(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: request body must be a JSON object");
    };
    let mut inner = state.lock();
    let Some(id) = parse_id(&id).filter(|id| inner.deals.contains_key(id)) else {
        return error(StatusCode::NOT_FOUND, "Deal not found");
    };
    if let Some(stage) = body.get("stage_id") {
        let Some(stage) = stage.as_u64().filter(|s| STAGES.iter().any(|(id, _)| id == s)) else {
            return error(StatusCode::BAD_REQUEST, "Validation failed: stage_id: Stage not found");
        };
        let deal = inner.deals.get_mut(&id).expect("checked");
        let old = deal.stage_id;
        deal.stage_id = stage;
        if old != stage {
            let now = state.now();
            inner.deal_changes.push(Change {
                person_id: id,
                field_key: "stage_id".into(),
                old_value: json!(old),
                new_value: json!(stage),
                actor_user_id: AUTHORIZING_USER_ID,
                time: now,
                change_source: "api",
            });
        }
    }
    ok(deal_json(id, &inner.deals[&id]))
}

async fn list_stages(Query(q): Query<HashMap<String, String>>) -> Response {
    let pipeline = q.get("pipeline_id").and_then(|p| p.parse::<u64>().ok());
    let data: Vec<Value> = STAGES
        .iter()
        .enumerate()
        .filter(|_| pipeline.is_none_or(|p| p == PIPELINE_ID))
        .map(|(i, (id, name))| {
            json!({"id": id, "order_nr": i + 1, "name": name, "is_deleted": false, "deal_probability": 100,
                   "pipeline_id": PIPELINE_ID, "is_deal_rot_enabled": false, "days_to_rotten": null})
        })
        .collect();
    ok_list(data, None)
}

// ----- activities ---------------------------------------------------------------------------------

fn activity_json(id: u64, a: &Activity) -> Value {
    let mut v = a.fields.clone();
    v.insert("id".into(), json!(id));
    v.insert("is_deleted".into(), json!(false));
    Value::Object(v)
}

async fn list_activities(
    State(state): State<Arc<PipedriveState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let inner = state.lock();
    let person = q.get("person_id").and_then(|p| p.parse::<u64>().ok());
    let done = q.get("done").map(|d| d == "true" || d == "1");
    let data: Vec<Value> = inner
        .activities
        .iter()
        .filter(|(_, a)| person.is_none_or(|p| a.fields.get("person_id").and_then(Value::as_u64) == Some(p)))
        .filter(|(_, a)| done.is_none_or(|d| a.fields.get("done").and_then(Value::as_bool).unwrap_or(false) == d))
        .map(|(id, a)| activity_json(*id, a))
        .collect();
    ok_list(data, None)
}

async fn read_activity(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    match parse_id(&id).and_then(|id| inner.activities.get(&id).map(|a| activity_json(id, a))) {
        Some(a) => ok(a),
        None => error(StatusCode::NOT_FOUND, "Activity not found"),
    }
}

const ACTIVITY_FIELDS: [&str; 12] = [
    "subject",
    "type",
    "owner_id",
    "deal_id",
    "person_id",
    "due_date",
    "due_time",
    "duration",
    "done",
    "note",
    "busy",
    "participants",
];
const ACTIVITY_TYPES: [&str; 6] = ["call", "meeting", "task", "deadline", "email", "lunch"];

fn validate_activity(inner: &Inner, body: &Map<String, Value>) -> Option<Response> {
    if let Some(kind) = body.get("type")
        && !kind.as_str().is_some_and(|k| ACTIVITY_TYPES.contains(&k))
    {
        return Some(error(StatusCode::BAD_REQUEST, "Validation failed: type: Activity type is not valid"));
    }
    if let Some(date) = body.get("due_date")
        && date.as_str().is_none_or(|d| d.parse::<jiff::civil::Date>().is_err())
    {
        return Some(error(StatusCode::BAD_REQUEST, "Validation failed: due_date: must be YYYY-MM-DD"));
    }
    for (key, pattern_ok) in [("due_time", body.get("due_time")), ("duration", body.get("duration"))] {
        if let Some(v) = pattern_ok
            && !v.as_str().is_some_and(|t| t.len() == 5 && t.as_bytes()[2] == b':' && digits(t).len() == 4)
        {
            return Some(error(StatusCode::BAD_REQUEST, &format!("Validation failed: {key}: must be HH:MM")));
        }
    }
    if let Some(owner) = body.get("owner_id")
        && !owner.as_u64().is_some_and(|o| inner.users.contains_key(&o))
    {
        return Some(error(StatusCode::BAD_REQUEST, "Validation failed: owner_id: User not found"));
    }
    if let Some(person) = body.get("person_id")
        && !person.as_u64().is_some_and(|p| inner.persons.contains_key(&p))
    {
        return Some(error(StatusCode::BAD_REQUEST, "Validation failed: person_id: Person not found"));
    }
    None
}

async fn create_activity(State(state): State<Arc<PipedriveState>>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: request body must be a JSON object");
    };
    let now = state.now();
    let mut inner = state.lock();
    if let Some(problem) = validate_activity(&inner, &body) {
        return problem;
    }
    if !body.contains_key("subject") {
        return error(StatusCode::BAD_REQUEST, "Validation failed: subject: Subject must be given");
    }
    let id = state.allocate(&mut inner);
    let mut fields: Map<String, Value> =
        body.into_iter().filter(|(k, _)| ACTIVITY_FIELDS.contains(&k.as_str())).collect();
    fields.entry("type").or_insert(json!("task"));
    fields.entry("done").or_insert(json!(false));
    fields.entry("owner_id").or_insert(json!(AUTHORIZING_USER_ID));
    fields.insert("add_time".into(), json!(rfc3339(now)));
    fields.insert("update_time".into(), json!(rfc3339(now)));
    let a = Activity { fields };
    let out = activity_json(id, &a);
    inner.activities.insert(id, a);
    ok(out)
}

async fn update_activity(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: request body must be a JSON object");
    };
    let mut inner = state.lock();
    let Some(id) = parse_id(&id).filter(|id| inner.activities.contains_key(id)) else {
        return error(StatusCode::NOT_FOUND, "Activity not found");
    };
    if let Some(problem) = validate_activity(&inner, &body) {
        return problem;
    }
    let now = state.now();
    let a = inner.activities.get_mut(&id).expect("checked");
    a.fields.insert("update_time".into(), json!(rfc3339(now)));
    for (k, v) in body {
        if ACTIVITY_FIELDS.contains(&k.as_str()) {
            a.fields.insert(k, v);
        }
    }
    ok(activity_json(id, a))
}

// ----- notes, users, organizations (v1 where v2 lacks them) -----------------------------------------

fn note_json(id: u64, n: &Note) -> Value {
    json!({"id": id, "content": n.content, "person_id": n.person_id, "deal_id": n.deal_id,
           "add_time": v1_time(n.add_time), "update_time": v1_time(n.add_time), "active_flag": true})
}

async fn list_notes(State(state): State<Arc<PipedriveState>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let inner = state.lock();
    let person = q.get("person_id").and_then(|p| p.parse::<u64>().ok());
    let mut notes: Vec<(u64, &Note)> =
        inner.notes.iter().filter(|(_, n)| person.is_none_or(|p| n.person_id == p)).map(|(k, v)| (*k, v)).collect();
    notes.sort_by_key(|(_, n)| std::cmp::Reverse(n.add_time));
    let data: Vec<Value> = notes.iter().map(|(id, n)| note_json(*id, n)).collect();
    let body = json!({"success": true, "data": data,
                      "additional_data": {"pagination": {"start": 0, "limit": 100, "more_items_in_collection": false}}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `POST /v1/notes` with `content` and at least one of `deal_id`, `person_id`, `org_id`,
/// `lead_id`; `add_time` is `YYYY-MM-DD HH:MM:SS` UTC.
async fn create_note(State(state): State<Arc<PipedriveState>>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: request body must be a JSON object");
    };
    let now = state.now();
    let mut inner = state.lock();
    let Some(content) = body.get("content").and_then(Value::as_str).filter(|c| !c.trim().is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "Note content is required");
    };
    let Some(person_id) = body.get("person_id").and_then(Value::as_u64).filter(|p| inner.persons.contains_key(p))
    else {
        return error(StatusCode::BAD_REQUEST, "Note needs to be attached to a deal, person, organization or lead");
    };
    let add_time = match body.get("add_time").and_then(Value::as_str) {
        Some(t) => match jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", t) {
            Ok(dt) => dt.to_zoned_datetime(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).unwrap_or(now),
            Err(_) => {
                return error(StatusCode::BAD_REQUEST, "Validation failed: add_time: must be YYYY-MM-DD HH:MM:SS");
            }
        },
        None => now,
    };
    let id = state.allocate(&mut inner);
    let note = Note {
        content: content.to_string(),
        person_id,
        deal_id: body.get("deal_id").and_then(Value::as_u64),
        add_time,
    };
    let out = note_json(id, &note);
    inner.notes.insert(id, note);
    ok(out)
}

async fn read_note(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    match parse_id(&id).and_then(|id| inner.notes.get(&id).map(|n| note_json(id, n))) {
        Some(n) => ok(n),
        None => error(StatusCode::NOT_FOUND, "Note not found"),
    }
}

/// Deletes answer `{"success": true, "data": {"id": <id>}}`.
fn deleted(id: u64) -> Response {
    ok(json!({"id": id}))
}

async fn delete_note(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    match parse_id(&id).and_then(|id| state.lock().notes.remove(&id).map(|_| id)) {
        Some(id) => deleted(id),
        None => error(StatusCode::NOT_FOUND, "Note not found"),
    }
}

async fn delete_person(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let now = state.now();
    match parse_id(&id) {
        Some(id) if state.lock().delete_person(id, "api", AUTHORIZING_USER_ID, now) => deleted(id),
        _ => error(StatusCode::NOT_FOUND, "Person not found"),
    }
}

// ----- webhooks -----------------------------------------------------------------------------------

/// `POST /v1/webhooks` (JSON body): `subscription_url`, `event_action`, `event_object` required;
/// `http_auth_user` + `http_auth_password` together or not at all; `version` `2.0` (default) or
/// `1.0`; `user_id` optional. Answers 201 with the webhook.
async fn create_webhook(State(state): State<Arc<PipedriveState>>, body: Bytes) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: request body must be a JSON object");
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::trim).filter(|v| !v.is_empty());
    let Some(url) = text("subscription_url")
        .and_then(|u| url::Url::parse(u).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
    else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: subscription_url: must be a valid URL");
    };
    let version = text("version").unwrap_or("2.0");
    if !matches!(version, "1.0" | "2.0") {
        return error(StatusCode::BAD_REQUEST, "Validation failed: version: must be one of 1.0, 2.0");
    }
    let actions: &[&str] = if version == "2.0" {
        &pipedrive_webhooks::ACTIONS_V2
    } else {
        &["added", "updated", "merged", "deleted", "*"]
    };
    let Some(action) = text("event_action").filter(|a| actions.contains(a)) else {
        return error(StatusCode::BAD_REQUEST, &format!("Validation failed: event_action: must be one of {actions:?}"));
    };
    let Some(object) = text("event_object").filter(|o| pipedrive_webhooks::OBJECTS.contains(o)) else {
        return error(StatusCode::BAD_REQUEST, "Validation failed: event_object: not a supported object");
    };
    let http_auth = match (text("http_auth_user"), text("http_auth_password")) {
        (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
        (None, None) => None,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "Validation failed: http_auth_user and http_auth_password go together",
            );
        }
    };
    let now = state.now();
    let mut inner = state.lock();
    let created = inner.webhooks.register(Subscription {
        id: 0,
        subscription_url: url,
        event_action: action.to_string(),
        event_object: object.to_string(),
        http_auth,
        version: version.to_string(),
        user_id: body.get("user_id").and_then(Value::as_u64).unwrap_or(AUTHORIZING_USER_ID),
        add_time: now,
    });
    (StatusCode::CREATED, axum::Json(json!({"success": true, "data": created.to_json()}))).into_response()
}

async fn list_webhooks(State(state): State<Arc<PipedriveState>>) -> Response {
    let data: Vec<Value> = state.lock().webhooks.subscriptions().iter().map(Subscription::to_json).collect();
    ok(json!(data))
}

async fn delete_webhook(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    match parse_id(&id).filter(|id| state.lock().webhooks.remove(*id)) {
        Some(id) => ok(json!({"id": id})),
        None => error(StatusCode::NOT_FOUND, "Webhook not found"),
    }
}

/// `GET /v1/users/me`: the user the token belongs to.
async fn read_me(State(state): State<Arc<PipedriveState>>) -> Response {
    let inner = state.lock();
    let (name, email) = inner.users.get(&AUTHORIZING_USER_ID).cloned().unwrap_or_default();
    ok(json!({"id": AUTHORIZING_USER_ID, "name": name, "email": email, "company_id": SANDBOX_COMPANY_ID,
              "active_flag": true}))
}

async fn delete_deal(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    match parse_id(&id).and_then(|id| state.lock().deals.remove(&id).map(|_| id)) {
        Some(id) => deleted(id),
        None => error(StatusCode::NOT_FOUND, "Deal not found"),
    }
}

async fn delete_activity(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    match parse_id(&id).and_then(|id| state.lock().activities.remove(&id).map(|_| id)) {
        Some(id) => deleted(id),
        None => error(StatusCode::NOT_FOUND, "Activity not found"),
    }
}

async fn deal_changelog(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    let Some(id) = parse_id(&id).filter(|id| inner.deals.contains_key(id)) else {
        return error(StatusCode::NOT_FOUND, "Deal not found");
    };
    let data: Vec<Value> = inner
        .deal_changes
        .iter()
        .rev()
        .filter(|c| c.person_id == id)
        .map(|c| {
            json!({"field_key": c.field_key, "old_value": c.old_value, "new_value": c.new_value,
                   "actor_user_id": c.actor_user_id, "time": v1_time(c.time), "change_source": c.change_source,
                   "change_source_user_agent": null, "is_bulk_update_flag": false})
        })
        .collect();
    ok_list(data, None)
}

async fn read_user(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    match parse_id(&id).and_then(|id| inner.users.get(&id).map(|u| (id, u))) {
        Some((id, (name, email))) => ok(json!({"id": id, "name": name, "email": email, "active_flag": true})),
        None => error(StatusCode::NOT_FOUND, "User not found"),
    }
}

async fn read_org(State(state): State<Arc<PipedriveState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    match parse_id(&id).and_then(|id| inner.orgs.get(&id).map(|o| (id, o))) {
        Some((id, name)) => ok(json!({"id": id, "name": name, "owner_id": AUTHORIZING_USER_ID, "is_deleted": false})),
        None => error(StatusCode::NOT_FOUND, "Organization not found"),
    }
}

// ----- OAuth ----------------------------------------------------------------------------------------

/// `GET /oauth/authorize?client_id&redirect_uri&state`: the user approves at once; the browser is
/// sent back with `code` and `state`.
async fn oauth_authorize(
    State(state): State<Arc<PipedriveState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("client_id").map(String::as_str) != Some(OAUTH_CLIENT_ID) {
        return (StatusCode::BAD_REQUEST, "Invalid client_id").into_response();
    }
    let Some(mut redirect) = q.get("redirect_uri").and_then(|r| url::Url::parse(r).ok()) else {
        return (StatusCode::BAD_REQUEST, "Invalid redirect_uri").into_response();
    };
    let code = uuid::Uuid::new_v4().to_string();
    state.lock().oauth.codes.insert(code.clone(), redirect.to_string());
    redirect.query_pairs_mut().append_pair("code", &code);
    if let Some(st) = q.get("state") {
        redirect.query_pairs_mut().append_pair("state", st);
    }
    (StatusCode::FOUND, [(header::LOCATION, redirect.to_string())]).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({"error": error, "error_description": description}))).into_response()
}

/// `POST /oauth/token`: the client authenticates with `Authorization: Basic
/// base64(client_id:client_secret)`; the form carries `grant_type` and `code` + `redirect_uri`
/// or `refresh_token`. The answer carries `api_domain`, the company's own API host.
async fn oauth_token(State(state): State<Arc<PipedriveState>>, headers: HeaderMap, body: Bytes) -> Response {
    use base64::Engine as _;
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let expected = format!("{OAUTH_CLIENT_ID}:{OAUTH_CLIENT_SECRET}");
    if basic.as_deref() != Some(expected.as_str()) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client credentials");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let mut inner = state.lock();
    inner.oauth.basic_auth_requests += 1;
    let refresh = match get("grant_type") {
        "authorization_code" => {
            let Some(redirect) = inner.oauth.codes.remove(get("code")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid authorization code");
            };
            if redirect.split('?').next() != Some(get("redirect_uri")) && redirect != get("redirect_uri") {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri mismatch");
            }
            inner.oauth.exchanges += 1;
            inner.revoked = false;
            let refresh = format!("sandbox-pd-refresh-{}", uuid::Uuid::new_v4());
            inner.oauth.refresh.insert(refresh.clone(), true);
            refresh
        }
        "refresh_token" => {
            let presented = get("refresh_token").to_string();
            if inner.revoked || inner.oauth.refresh.get(&presented) != Some(&true) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid refresh token");
            }
            inner.oauth.refreshes += 1;
            // The refresh token stays the same (it expires if unused for 60 days).
            presented
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("{other} is not supported"),
            );
        }
    };
    let access = format!("sandbox-pd-access-{}", uuid::Uuid::new_v4());
    inner.oauth.access.insert(access.clone(), false);
    let body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "refresh_token": refresh,
        "scope": "base,deals:full,contacts:full,activities:full,users:read",
        "expires_in": ACCESS_TOKEN_TTL_SECS,
        "api_domain": inner.api_domain,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sandbox() -> (PipedriveSandbox, reqwest::Client) {
        (PipedriveSandbox::start_with_api_token("t").await.unwrap(), reqwest::Client::new())
    }

    /// Without a valid token: 401 with Pipedrive's `unauthorized access` body and no data.
    #[tokio::test]
    async fn unauthenticated_requests_get_the_documented_401() {
        let (s, http) = sandbox().await;
        let answer = http.get(s.base_url().join("api/v2/persons").unwrap()).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["success"], false);
        assert_eq!(body["error"], "unauthorized access");
        assert_eq!(body["errorCode"], 401);
    }

    /// Every API answer carries the rate-limit headers; a spent budget answers 429 with
    /// `x-daily-requests-left: 0`, and list costs more than a single read.
    #[tokio::test]
    async fn answers_carry_rate_limit_headers_and_spend_the_daily_budget() {
        let (s, http) = sandbox().await;
        let id = s.state.insert_person("Ada Lovelace", None, &[], None, None);
        s.state.set_daily_budget(Some(11));
        let get = |path: String| http.get(s.base_url().join(&path).unwrap()).header("x-api-token", "t").send();
        let one = get(format!("api/v2/persons/{id}")).await.unwrap();
        assert_eq!(one.status().as_u16(), 200);
        for h in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"] {
            assert!(one.headers().contains_key(h), "{h}");
        }
        assert_eq!(one.headers()["x-daily-requests-left"], "10");
        let list = get("api/v2/persons".into()).await.unwrap();
        assert_eq!(list.status().as_u16(), 200);
        assert_eq!(list.headers()["x-daily-requests-left"], "0");
        let refused = get(format!("api/v2/persons/{id}")).await.unwrap();
        assert_eq!(refused.status().as_u16(), 429);
        assert_eq!(refused.headers()["x-daily-requests-left"], "0");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["success"], false);
    }

    /// The token answer has the documented keys, `api_domain` included; a client that does not
    /// authenticate with HTTP Basic is refused.
    #[tokio::test]
    async fn the_token_endpoint_wants_basic_auth_and_names_the_api_domain() {
        let (s, http) = sandbox().await;
        let redirect = "https://callside.example.com/cb";
        let mut authorize = s.base_url().join("oauth/authorize").unwrap();
        authorize.query_pairs_mut().append_pair("client_id", OAUTH_CLIENT_ID).append_pair("redirect_uri", redirect);
        let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let answer = no_redirects.get(authorize).send().await.unwrap();
        let location = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
        let code = location.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
        let form = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", redirect)];
        let token_url = s.base_url().join("oauth/token").unwrap();
        // Client credentials in the body instead of Basic: refused.
        let body_auth = [("client_id", OAUTH_CLIENT_ID), ("client_secret", OAUTH_CLIENT_SECRET)];
        let refused = http.post(token_url.clone()).form(&[&form[..], &body_auth[..]].concat()).send().await.unwrap();
        assert_eq!(refused.status().as_u16(), 401);
        let ok = http
            .post(token_url)
            .basic_auth(OAUTH_CLIENT_ID, Some(OAUTH_CLIENT_SECRET))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status().as_u16(), 200);
        let body: Value = ok.json().await.unwrap();
        for key in ["access_token", "token_type", "refresh_token", "scope", "expires_in", "api_domain"] {
            assert!(body.get(key).is_some(), "{key} missing from {body}");
        }
        assert_eq!(body["api_domain"], format!("http://{}", s.addr));
    }

    /// Search lags writes while told to; the list endpoint does not.
    #[tokio::test]
    async fn search_lags_but_lists_do_not() {
        let (s, http) = sandbox().await;
        s.state.set_search_lag(true);
        let created = http
            .post(s.base_url().join("api/v2/persons").unwrap())
            .header("x-api-token", "t")
            .json(&json!({"name": "Lagging Person", "phones": [{"value": "+1 415 555 0134", "primary": true}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 200);
        let mut search = s.base_url().join("api/v2/persons/search").unwrap();
        search.query_pairs_mut().append_pair("term", "4155550134").append_pair("fields", "phone");
        let found: Value =
            http.get(search.clone()).header("x-api-token", "t").send().await.unwrap().json().await.unwrap();
        assert_eq!(found["data"]["items"].as_array().unwrap().len(), 0);
        let listed: Value = http
            .get(s.base_url().join("api/v2/persons").unwrap())
            .header("x-api-token", "t")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["data"].as_array().unwrap().len(), 1);
        s.state.set_search_lag(false);
        let found: Value = http.get(search).header("x-api-token", "t").send().await.unwrap().json().await.unwrap();
        assert_eq!(found["data"]["items"][0]["item"]["name"], "Lagging Person");
    }

    /// Malformed bodies are refused with a validation error and change nothing.
    #[tokio::test]
    async fn malformed_bodies_are_refused() {
        let (s, http) = sandbox().await;
        let id = s.state.insert_person("Ada Lovelace", None, &["+14155550134"], None, None);
        let patch = |body: &'static str| {
            http.patch(s.base_url().join(&format!("api/v2/persons/{id}")).unwrap())
                .header("x-api-token", "t")
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        for bad in ["not json", "[1,2]", r#"{"phones": "+1"}"#, r#"{"custom_fields": {"nope": 1}}"#, r#"{"name": ""}"#]
        {
            assert_eq!(patch(bad).await.unwrap().status().as_u16(), 400, "{bad}");
        }
        assert_eq!(s.state.person_field(&id, "name").as_deref(), Some("Ada Lovelace"));
        assert_eq!(s.state.person_phones(&id), vec!["+14155550134".to_string()]);
    }
}
