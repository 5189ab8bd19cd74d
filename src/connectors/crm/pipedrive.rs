//! Pipedrive CRM connector: API v2 for persons, deals, stages, activities, organizations and
//! search; v1 where v2 has no counterpart (notes, person fields, users, the person changelog).
//!
//! Base URL: the company's own `api_domain` from the OAuth token answer
//! (<https://pipedrive.readme.io/docs/marketplace-oauth-authorization>), read through
//! [`TokenSource::api_base_url`] (the connection's API base URL); the configured base URL only when the token source has none (a
//! static API token, the sandbox).
//!
//! Reads: one persons search (`GET /api/v2/persons/search?fields=phone&term=<national number>`);
//! Pipedrive phones are free-form strings, so the caller re-checks normalized digits. The
//! context is the person plus, concurrently, its open deals, its activities (open ones are the
//! tasks; done calls and meetings are recent activity), its notes (v1), its owner (v1 users) and
//! its organization.
//!
//! Idempotency (design invariant 2): Pipedrive has no unique-value fields, and its search index
//! lags writes. Every create therefore first reads *through the person* — the newest persons
//! (`GET /api/v2/persons?sort_by=id&sort_direction=desc`, matched on the idempotency custom
//! field), the person's activities (`GET /api/v2/activities?person_id=`) or notes
//! (`GET /v1/notes?person_id=`), matched on the `[callside:<key>]` marker in the note — and only
//! creates when the marker is absent. List endpoints read the database, not the search index.
//!
//! Errors and limits (<https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting>): a 429
//! with `x-daily-requests-left: 0` means the daily token budget is spent until the start of the
//! next UTC day, so the delay runs to the next UTC midnight (the write-back parks until then
//! instead of failing); otherwise the 2-second window's `x-ratelimit-reset` (and any
//! `Retry-After`) say how long to wait. A 401 refreshes the OAuth token once (single-flight in
//! [`crate::connections`]); validation errors name the fields the body's `error` mentions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use url::Url;

use super::{
    ActivityKind, AppointmentRecord, CallLog, ContactFields, ContactPage, CrmActivity, CrmAppointmentStatus,
    CrmConnector, CrmContact, CrmContext, CrmDeal, CrmObjectType, CrmOrganization, CrmOwner, CrmTask, DealRecord,
    NameZipQuery, NoteRecord, PhoneQuery, PropertyHistory, PropertyValue, PropertyVersion, PropertyWrite,
    PropertyWriteResult, PropertyWriteStatus, SecondaryPhoneOutcome, TaskRecord,
};
use crate::clock::{SharedClock, SystemClock};
use crate::connections::{StaticToken, TokenSource};
use crate::connectors::{ConnectorError, longest, parse_retry_after, truncate_bytes};

/// The person custom field holding the idempotency key of a person the service created. It
/// must exist in the company (created when the connection is set up); found by name.
pub const IDEMPOTENCY_FIELD_NAME: &str = "callside idempotency key";
/// Names the ZIP custom field may have (Pipedrive persons have no standard postal-code field
/// writable through v2).
const ZIP_FIELD_NAMES: [&str; 3] = ["zip code", "zip", "postal code"];
/// How many of the newest persons a create reads through before creating (pages of 100).
const PERSON_READ_THROUGH_PAGES: usize = 3;
/// Recent activity kept in the context, and the summary length.
const RECENT_ACTIVITY: usize = 5;
const ACTIVITY_SUMMARY_CHARS: usize = 200;
/// The service keeps to one extra phone: a second number joins `phones[]`, a third does not.
const MAX_PHONES: usize = 2;
const MAX_MESSAGE_CHARS: usize = 300;
/// Persons per page of the identity pull (the v2 list's maximum).
const PULL_PAGE: &str = "500";

fn marker(key: &str) -> String {
    format!("[callside:{key}]")
}

#[derive(Debug, Clone, Deserialize)]
struct FieldDef {
    key: String,
    name: String,
    field_type: String,
    #[serde(default)]
    options: Option<Vec<FieldOption>>,
}

#[derive(Debug, Clone, Deserialize)]
struct FieldOption {
    id: u64,
    label: String,
}

#[derive(Debug)]
struct FieldIndex {
    defs: HashMap<String, FieldDef>,
    marker_key: Option<String>,
    zip_key: Option<String>,
}

/// A [`CrmConnector`] for Pipedrive.
pub struct PipedriveConnector {
    base_url: Url,
    tokens: Arc<dyn TokenSource>,
    /// The token is a personal API token, sent in `x-api-token`
    /// (<https://pipedrive.readme.io/docs/core-api-concepts-authentication>); otherwise an OAuth
    /// access token, sent as a bearer token.
    api_token: bool,
    client: reqwest::Client,
    clock: SharedClock,
    /// Every request is charged to the account's rate budget (`crate::connectors::rate`).
    meter: crate::connectors::rate::Meter,
    fields: Mutex<Option<Arc<FieldIndex>>>,
    /// The user the token acts as (`GET /v1/users/me`), read once.
    acting_user: tokio::sync::OnceCell<String>,
}

impl std::fmt::Debug for PipedriveConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipedriveConnector").field("base_url", &self.base_url.as_str()).finish_non_exhaustive()
    }
}

struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The top-level keys of the JSON body sent (to name rejected fields).
    sent_keys: Vec<String>,
}

impl PipedriveConnector {
    /// A connector with a personal API token (sent in `x-api-token`); `base_url` is the company
    /// domain (`https://<company>.pipedrive.com/`).
    pub fn new(base_url: Url, api_token: SecretString, client: reqwest::Client) -> Self {
        let mut connector = Self::with_token_source(base_url, Arc::new(StaticToken::new(api_token)), client);
        connector.api_token = true;
        connector
    }

    /// A connector on an OAuth connection: the base URL is the connection's `api_domain` when it
    /// has one, `base_url` otherwise.
    pub fn with_token_source(base_url: Url, tokens: Arc<dyn TokenSource>, client: reqwest::Client) -> Self {
        Self {
            base_url,
            tokens,
            api_token: false,
            client,
            clock: Arc::new(SystemClock),
            fields: Mutex::new(None),
            meter: crate::connectors::rate::Meter::unmetered(),
            acting_user: tokio::sync::OnceCell::new(),
        }
    }

    /// The clock used for rate-limit delays (the daily reset at UTC midnight).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Charges every request to this rate budget (the account's, shared by live reads and the
    /// write-back lane). Pipedrive's own 2-second window and daily token budget are still read
    /// from its answers; no per-10-second default is configured (`[crm] requests_per_10s`).
    pub fn with_meter(mut self, meter: crate::connectors::rate::Meter) -> Self {
        self.meter = meter;
        self
    }

    // ----- HTTP plumbing ---------------------------------------------------------------------

    async fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, ConnectorError> {
        let mut url = self.tokens.api_base_url().await?.map(|u| u.into_url()).unwrap_or_else(|| self.base_url.clone());
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| ConnectorError::Permanent("Pipedrive base URL cannot carry a path".into()))?;
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    async fn send(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Raw, ConnectorError> {
        let token = self.tokens.access_token().await?;
        let raw = self.send_with(method.clone(), url.clone(), body, &token).await?;
        if raw.status != StatusCode::UNAUTHORIZED {
            return Ok(raw);
        }
        // Pipedrive answers 401 for an expired access token: refresh once (a 401 applied
        // nothing, so resending a create is safe).
        match self.tokens.refreshed(&token).await {
            Ok(fresh) => {
                // The refresh may have moved the company's API domain.
                let url = self.rebase(url).await?;
                self.send_with(method, url, body, &fresh).await
            }
            Err(ConnectorError::AuthExpired) => Ok(raw),
            Err(e) => Err(e),
        }
    }

    async fn rebase(&self, url: Url) -> Result<Url, ConnectorError> {
        let Some(base) = self.tokens.api_base_url().await?.map(|u| u.into_url()) else { return Ok(url) };
        let mut moved =
            base.join(url.path().trim_start_matches('/')).map_err(|e| ConnectorError::Permanent(e.to_string()))?;
        moved.set_query(url.query());
        Ok(moved)
    }

    async fn send_with(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        token: &SecretString,
    ) -> Result<Raw, ConnectorError> {
        let request = self.client.request(method, url).header(ACCEPT, "application/json");
        let mut request = if self.api_token {
            request.header("x-api-token", token.expose_secret())
        } else {
            request.bearer_auth(token.expose_secret())
        };
        let mut sent_keys = Vec::new();
        if let Some(body) = body {
            if let Some(object) = body.as_object() {
                sent_keys.extend(object.keys().filter(|k| *k != "custom_fields").cloned());
                if let Some(custom) = object.get("custom_fields").and_then(Value::as_object) {
                    sent_keys.extend(custom.keys().cloned());
                }
            }
            request = request.json(body);
        }
        self.meter.acquire().await;
        let response = request.send().await.map_err(|e| ConnectorError::from_transport(&e))?;
        let status = response.status();
        self.meter.observe(status.as_u16());
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| ConnectorError::from_transport(&e))?.to_vec();
        Ok(Raw { status, headers, body, sent_keys })
    }

    /// Sends and decodes `data` of a successful answer; anything else is classified.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<T, ConnectorError> {
        let url = self.url(segments, query).await?;
        let raw = self.send(method, url, body).await?;
        self.decode(raw)
    }

    fn decode<T: DeserializeOwned>(&self, raw: Raw) -> Result<T, ConnectorError> {
        if !raw.status.is_success() {
            return Err(classify(&raw, self.clock.now()));
        }
        let envelope: Envelope<T> = serde_json::from_slice(&raw.body).map_err(|_| {
            ConnectorError::Transient(format!("unreadable Pipedrive response (HTTP {})", raw.status.as_u16()))
        })?;
        Ok(envelope.data)
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<T, ConnectorError> {
        self.call(Method::GET, segments, query, None).await
    }

    // ----- reads -----------------------------------------------------------------------------

    async fn field_index(&self) -> Result<Arc<FieldIndex>, ConnectorError> {
        if let Some(index) = self.fields.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(index);
        }
        let defs: Vec<FieldDef> = self.get(&["v1", "personFields"], &[("limit", "500")]).await?;
        let by_name = |names: &[&str]| {
            defs.iter().find(|d| names.iter().any(|n| d.name.eq_ignore_ascii_case(n))).map(|d| d.key.clone())
        };
        let index = Arc::new(FieldIndex {
            marker_key: by_name(&[IDEMPOTENCY_FIELD_NAME]),
            zip_key: by_name(&ZIP_FIELD_NAMES),
            defs: defs.into_iter().map(|d| (d.key.clone(), d)).collect(),
        });
        *self.fields.lock().unwrap_or_else(|p| p.into_inner()) = Some(index.clone());
        Ok(index)
    }

    async fn person(&self, id: &str) -> Result<Person, ConnectorError> {
        self.get(&["api", "v2", "persons", id], &[]).await
    }

    async fn persons_by_ids(&self, ids: &[String]) -> Result<Vec<Person>, ConnectorError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let joined = ids.join(",");
        self.get(&["api", "v2", "persons"], &[("ids", joined.as_str()), ("limit", "100")]).await
    }

    async fn search(&self, term: &str, field: &str, exact: bool) -> Result<Vec<String>, ConnectorError> {
        let exact = if exact { "true" } else { "false" };
        let found: SearchData = self
            .get(
                &["api", "v2", "persons", "search"],
                &[("term", term), ("fields", field), ("exact_match", exact), ("limit", "100")],
            )
            .await?;
        Ok(found.items.into_iter().map(|i| i.item.id.to_string()).collect())
    }

    async fn activities(&self, person_id: &str) -> Result<Vec<Activity>, ConnectorError> {
        self.get(&["api", "v2", "activities"], &[("person_id", person_id), ("limit", "500")]).await
    }

    async fn notes(&self, person_id: &str) -> Result<Vec<Note>, ConnectorError> {
        self.get(&["v1", "notes"], &[("person_id", person_id), ("sort", "add_time DESC"), ("limit", "500")]).await
    }

    async fn open_deals(&self, person_id: &str) -> Result<Vec<Deal>, ConnectorError> {
        self.get(&["api", "v2", "deals"], &[("person_id", person_id), ("status", "open"), ("limit", "500")]).await
    }

    fn to_contact(&self, p: &Person, fields: &FieldIndex) -> CrmContact {
        let (first, last) = split_name(p);
        CrmContact {
            id: p.id.to_string(),
            first_name: first,
            last_name: last,
            email: p.emails.iter().find(|e| e.primary).or(p.emails.first()).map(|e| e.value.clone()),
            phones: p.phones.iter().map(|e| e.value.clone()).collect(),
            zip: fields.zip_key.as_ref().and_then(|k| p.custom_fields.get(k)).and_then(value_text),
            owner_id: p.owner_id.map(|o| o.to_string()),
            lifecycle_stage: None,
            updated_at: p.update_time.as_deref().and_then(parse_any_time),
        }
    }

    // ----- writes ----------------------------------------------------------------------------

    /// Persons body for the neutral fields; `existing` is the stored person when updating (the
    /// name is one field in Pipedrive, so a first or last name alone is merged with it).
    fn person_body(&self, fields: &ContactFields, existing: Option<&Person>, index: &FieldIndex) -> Map<String, Value> {
        let mut body = Map::new();
        let mut custom = Map::new();
        if fields.first_name.is_some() || fields.last_name.is_some() {
            let (old_first, old_last) = existing.map(split_name).unwrap_or_default();
            let first = fields.first_name.clone().or(old_first);
            let last = fields.last_name.clone().or(old_last);
            let name = [first, last].into_iter().flatten().collect::<Vec<_>>().join(" ");
            body.insert("name".into(), json!(name));
        }
        if let Some(email) = &fields.email {
            let mut emails: Vec<Value> = existing
                .map(|p| p.emails.iter().filter(|e| !e.value.eq_ignore_ascii_case(email)).map(labeled_json).collect())
                .unwrap_or_default();
            for e in &mut emails {
                e["primary"] = json!(false);
            }
            emails.insert(0, json!({"value": email, "primary": true, "label": "work"}));
            body.insert("emails".into(), Value::Array(emails));
        }
        if let Some(phone) = &fields.phone {
            let mut phones: Vec<Value> = existing
                .map(|p| p.phones.iter().filter(|e| !same_phone(&e.value, phone)).map(labeled_json).collect())
                .unwrap_or_default();
            for p in &mut phones {
                p["primary"] = json!(false);
            }
            phones.insert(0, json!({"value": phone, "primary": true, "label": "mobile"}));
            body.insert("phones".into(), Value::Array(phones));
        }
        if let (Some(zip), Some(key)) = (&fields.zip, &index.zip_key) {
            custom.insert(key.clone(), json!(zip));
        }
        if !custom.is_empty() {
            body.insert("custom_fields".into(), Value::Object(custom));
        }
        body
    }

    /// The newest persons, newest first, matched on the idempotency field (no search lag).
    async fn person_with_marker(&self, marker_key: &str, key: &str) -> Result<Option<String>, ConnectorError> {
        let mut cursor: Option<String> = None;
        for _ in 0..PERSON_READ_THROUGH_PAGES {
            let mut query =
                vec![("sort_by", "id"), ("sort_direction", "desc"), ("limit", "100"), ("custom_fields", marker_key)];
            if let Some(c) = cursor.as_deref() {
                query.push(("cursor", c));
            }
            let url = self.url(&["api", "v2", "persons"], &query).await?;
            let raw = self.send(Method::GET, url, None).await?;
            if !raw.status.is_success() {
                return Err(classify(&raw, self.clock.now()));
            }
            let page: ListEnvelope<Person> = serde_json::from_slice(&raw.body)
                .map_err(|_| ConnectorError::Transient("unreadable Pipedrive persons list".into()))?;
            if let Some(p) =
                page.data.iter().find(|p| p.custom_fields.get(marker_key).and_then(Value::as_str) == Some(key))
            {
                return Ok(Some(p.id.to_string()));
            }
            cursor = page.additional_data.and_then(|a| a.next_cursor);
            if cursor.is_none() {
                break;
            }
        }
        Ok(None)
    }

    async fn activity_with_marker(&self, person_id: &str, key: &str) -> Result<Option<String>, ConnectorError> {
        let m = marker(key);
        Ok(self
            .activities(person_id)
            .await?
            .into_iter()
            .find(|a| a.note.as_deref().is_some_and(|n| n.contains(&m)))
            .map(|a| a.id.to_string()))
    }

    /// Reads through the person's activities, then creates the activity with the marker.
    async fn create_activity(
        &self,
        person_id: &str,
        mut body: Map<String, Value>,
        key: &str,
    ) -> Result<String, ConnectorError> {
        if let Some(existing) = self.activity_with_marker(person_id, key).await? {
            return Ok(existing);
        }
        let pid = parse_numeric_id(person_id)?;
        body.insert("person_id".into(), json!(pid));
        body.insert("participants".into(), json!([{"person_id": pid, "primary": true}]));
        let note = body.get("note").and_then(Value::as_str).unwrap_or_default().to_string();
        body.insert("note".into(), json!(format!("{note}<p>{}</p>", marker(key))));
        let created: IdOnly =
            self.call(Method::POST, &["api", "v2", "activities"], &[], Some(&Value::Object(body))).await?;
        Ok(created.id.to_string())
    }

    /// The deal a call is linked to: the person's only open deal, if exactly one.
    async fn sole_open_deal(&self, person_id: &str) -> Result<Option<u64>, ConnectorError> {
        let deals = self.open_deals(person_id).await?;
        Ok(if deals.len() == 1 { Some(deals[0].id) } else { None })
    }
}

#[async_trait]
impl CrmConnector for PipedriveConnector {
    fn vendor(&self) -> &'static str {
        "pipedrive"
    }

    /// One search on the phone field with the national number (not exact: Pipedrive matches the
    /// term inside the stored string); the persons are then read in one batch for their phones.
    async fn find_contacts_by_phone(&self, phone: &PhoneQuery) -> Result<Vec<CrmContact>, ConnectorError> {
        let national = digits(&phone.national);
        if national.len() < 2 {
            return Err(ConnectorError::Validation { message: "phone number too short".into(), fields: vec![] });
        }
        let ids = self.search(&national, "phone", false).await?;
        let index = self.field_index().await?;
        Ok(self.persons_by_ids(&ids).await?.iter().map(|p| self.to_contact(p, &index)).collect())
    }

    async fn read_context(&self, contact_id: &str) -> Result<CrmContext, ConnectorError> {
        parse_numeric_id(contact_id).map_err(|_| ConnectorError::NotFound(format!("person {contact_id}")))?;
        // The person first: a missing person or an unusable connection answers with one
        // request, and no sibling request is left in flight when it fails.
        let person = self.person(contact_id).await?;
        let (index, deals, activities, notes) = tokio::try_join!(
            self.field_index(),
            self.open_deals(contact_id),
            self.activities(contact_id),
            self.notes(contact_id)
        )?;
        let owner_fut = async {
            match person.owner_id {
                Some(owner) => {
                    let id = owner.to_string();
                    match self.get::<User>(&["v1", "users", &id], &[]).await {
                        Ok(u) => Ok(Some(u)),
                        Err(ConnectorError::NotFound(_)) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
                None => Ok(None),
            }
        };
        let org_fut = async {
            match person.org_id {
                Some(org) => {
                    let id = org.to_string();
                    match self.get::<Organization>(&["api", "v2", "organizations", &id], &[]).await {
                        Ok(o) => Ok(Some(o)),
                        Err(ConnectorError::NotFound(_)) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
                None => Ok(None),
            }
        };
        let (owner, org) = tokio::try_join!(owner_fut, org_fut)?;

        let open_deals = deals
            .into_iter()
            .filter(|d| d.status.as_deref().unwrap_or("open") == "open")
            .map(|d| CrmDeal {
                id: d.id.to_string(),
                name: d.title,
                stage: d.stage_id.map(|s| s.to_string()).unwrap_or_default(),
                amount: d.value.map(|v| v.to_string()),
                close_date: d.expected_close_date,
            })
            .collect();
        let open_tasks = activities
            .iter()
            .filter(|a| !a.done)
            .map(|a| CrmTask {
                id: a.id.to_string(),
                subject: a.subject.clone().unwrap_or_default(),
                status: "open".into(),
                due: a.due_at(),
                owner_id: a.owner_id.map(|o| o.to_string()),
            })
            .collect();
        let mut recent: Vec<CrmActivity> = activities
            .iter()
            .filter(|a| a.done && a.kind.as_deref() == Some("call"))
            .map(|a| CrmActivity {
                id: a.id.to_string(),
                kind: ActivityKind::Call,
                at: a.due_at(),
                summary: summarize(&format!(
                    "{} {}",
                    a.subject.as_deref().unwrap_or_default(),
                    strip_marker(a.note.as_deref().unwrap_or_default())
                )),
            })
            .chain(notes.iter().map(|n| CrmActivity {
                id: n.id.to_string(),
                kind: ActivityKind::Note,
                at: parse_v1_time(&n.add_time),
                summary: summarize(&strip_marker(&n.content)),
            }))
            .collect();
        // Activities store their due time to the minute: several calls share it.
        super::newest_activities(&mut recent, RECENT_ACTIVITY);
        let owner = owner.map(|u| {
            let (first, last) = match u.name.split_once(' ') {
                Some((f, l)) => (Some(f.to_string()), Some(l.to_string())),
                None => (Some(u.name.clone()), None),
            };
            CrmOwner { id: u.id.to_string(), first_name: first, last_name: last, email: u.email }
        });
        Ok(CrmContext {
            contact: self.to_contact(&person, &index),
            open_deals,
            open_tickets: Vec::new(),
            open_tasks,
            recent_activity: recent,
            owner,
            organization: org.map(|o| CrmOrganization { id: o.id.to_string(), name: o.name }),
            properties: Default::default(),
        })
    }

    async fn create_contact(&self, fields: &ContactFields, idempotency_key: &str) -> Result<String, ConnectorError> {
        let index = self.field_index().await?;
        let marker_key = index.marker_key.clone().ok_or_else(|| {
            ConnectorError::Permanent(format!("the person field \"{IDEMPOTENCY_FIELD_NAME}\" is missing in Pipedrive"))
        })?;
        if let Some(existing) = self.person_with_marker(&marker_key, idempotency_key).await? {
            return Ok(existing);
        }
        let mut body = self.person_body(fields, None, &index);
        if !body.contains_key("name") {
            // Pipedrive requires a name; a caller we know only by number is named by it.
            let name = fields.phone.clone().or(fields.email.clone()).unwrap_or_else(|| "Unknown caller".into());
            body.insert("name".into(), json!(name));
        }
        let custom = body.entry("custom_fields").or_insert_with(|| json!({}));
        custom[marker_key.as_str()] = json!(idempotency_key);
        let created: IdOnly =
            self.call(Method::POST, &["api", "v2", "persons"], &[], Some(&Value::Object(body))).await?;
        Ok(created.id.to_string())
    }

    async fn update_contact(&self, contact_id: &str, fields: &ContactFields) -> Result<(), ConnectorError> {
        let index = self.field_index().await?;
        let needs_existing = fields.first_name.is_some() != fields.last_name.is_some()
            || fields.email.is_some()
            || fields.phone.is_some();
        let existing = if needs_existing { Some(self.person(contact_id).await?) } else { None };
        let body = self.person_body(fields, existing.as_ref(), &index);
        if body.is_empty() {
            return Ok(());
        }
        let _: IdOnly =
            self.call(Method::PATCH, &["api", "v2", "persons", contact_id], &[], Some(&Value::Object(body))).await?;
        Ok(())
    }

    /// A done `call` activity at the call's start (`due_date`/`due_time` in UTC, `duration`
    /// `HH:MM`), linked to the person and to the person's only open deal.
    async fn log_call(
        &self,
        contact_id: &str,
        call: &CallLog,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let mut body = call_body(call);
        if let Some(deal) = self.sole_open_deal(contact_id).await? {
            body.insert("deal_id".into(), json!(deal));
        }
        self.create_activity(contact_id, body, idempotency_key).await
    }

    async fn update_call_log(&self, call_object_id: &str, call: &CallLog) -> Result<(), ConnectorError> {
        let existing: Activity = self.get(&["api", "v2", "activities", call_object_id], &[]).await?;
        let mut body = call_body(call);
        // Keep the idempotency marker of the original write.
        if let Some(m) = existing.note.as_deref().and_then(find_marker) {
            let note = body.get("note").and_then(Value::as_str).unwrap_or_default().to_string();
            body.insert("note".into(), json!(format!("{note}<p>{m}</p>")));
        }
        let _: IdOnly = self
            .call(Method::PATCH, &["api", "v2", "activities", call_object_id], &[], Some(&Value::Object(body)))
            .await?;
        Ok(())
    }

    async fn record_appointment(
        &self,
        contact_id: &str,
        appointment: &AppointmentRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let (date, time) = due(appointment.start);
        let minutes = appointment.end.duration_since(appointment.start).as_secs().max(0) as u64 / 60;
        let mut note = format!("<p>Calendar event {}</p>", escape_html(&appointment.calendar_event_id));
        if let Some(n) = &appointment.notes {
            note.push_str(&format!("<p>{}</p>", escape_html(n)));
        }
        let body = json!({
            "subject": appointment.title,
            "type": "meeting",
            "due_date": date,
            "due_time": time,
            "duration": hh_mm(minutes),
            "busy": true,
            "done": false,
            "note": note,
        });
        self.create_activity(contact_id, body.as_object().cloned().unwrap_or_default(), idempotency_key).await
    }

    async fn find_contacts_by_email(&self, email: &str) -> Result<Vec<CrmContact>, ConnectorError> {
        let email = email.trim();
        if email.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.search(email, "email", true).await?;
        let index = self.field_index().await?;
        Ok(self
            .persons_by_ids(&ids)
            .await?
            .iter()
            .filter(|p| p.emails.iter().any(|e| e.value.eq_ignore_ascii_case(email)))
            .map(|p| self.to_contact(p, &index))
            .collect())
    }

    /// A name search on the last name, then the persons' ZIP field and names checked here.
    async fn find_contacts_by_name_zip(&self, query: &NameZipQuery) -> Result<Vec<CrmContact>, ConnectorError> {
        let last = query.last_name.trim();
        if last.chars().count() < 2 {
            return Ok(Vec::new());
        }
        let index = self.field_index().await?;
        if index.zip_key.is_none() {
            return Ok(Vec::new());
        }
        let ids = self.search(last, "name", false).await?;
        let zip = query.zip.trim();
        Ok(self
            .persons_by_ids(&ids)
            .await?
            .iter()
            .map(|p| self.to_contact(p, &index))
            .filter(|c| c.last_name.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(last)))
            .filter(|c| {
                query
                    .first_name
                    .as_deref()
                    .is_none_or(|f| c.first_name.as_deref().is_some_and(|cf| cf.eq_ignore_ascii_case(f.trim())))
            })
            .filter(|c| c.zip.as_deref().is_some_and(|z| z.trim() == zip))
            .collect())
    }

    async fn update_properties(
        &self,
        contact_id: &str,
        writes: &[PropertyWrite],
    ) -> Result<Vec<PropertyWriteResult>, ConnectorError> {
        let index = self.field_index().await?;
        let mut results: Vec<Option<PropertyWriteStatus>> = vec![None; writes.len()];
        let mut pending: Vec<(usize, String, Value)> = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            match format_field(index.defs.get(&w.name), &w.value) {
                Ok(v) => pending.push((i, w.name.clone(), v)),
                Err(reason) => results[i] = Some(PropertyWriteStatus::Rejected { reason }),
            }
        }
        // Send; a field Pipedrive rejects is dropped and the rest re-sent.
        while !pending.is_empty() {
            let mut custom = Map::new();
            let mut body = Map::new();
            for (_, name, value) in &pending {
                if is_standard(name) {
                    body.insert(name.clone(), value.clone());
                } else {
                    custom.insert(name.clone(), value.clone());
                }
            }
            if !custom.is_empty() {
                body.insert("custom_fields".into(), Value::Object(custom));
            }
            let url = self.url(&["api", "v2", "persons", contact_id], &[]).await?;
            let raw = self.send(Method::PATCH, url, Some(&Value::Object(body))).await?;
            if raw.status.is_success() {
                break;
            }
            let err = classify(&raw, self.clock.now());
            let ConnectorError::Validation { fields, message } = &err else { return Err(err) };
            let before = pending.len();
            pending.retain(|(i, name, _)| {
                if fields.contains(name) {
                    results[*i] = Some(PropertyWriteStatus::Rejected { reason: message.clone() });
                    false
                } else {
                    true
                }
            });
            if pending.len() == before {
                return Err(err);
            }
        }
        // Read back: a value that did not stick is reported.
        if results.iter().any(Option::is_none) {
            let person = self.person(contact_id).await?;
            for (i, w) in writes.iter().enumerate() {
                if results[i].is_some() {
                    continue;
                }
                let sent = format_field(index.defs.get(&w.name), &w.value).unwrap_or(Value::Null);
                let stored = person.field(&w.name);
                results[i] = Some(if same_value(&sent, &stored) {
                    PropertyWriteStatus::Written
                } else {
                    PropertyWriteStatus::Ignored
                });
            }
        }
        Ok(writes
            .iter()
            .zip(results)
            .map(|(w, s)| PropertyWriteResult {
                name: w.name.clone(),
                status: s.unwrap_or(PropertyWriteStatus::Ignored),
            })
            .collect())
    }

    /// Appends the number to `phones[]` (the primary stays first and primary); a person already
    /// holding [`MAX_PHONES`] numbers gets no more.
    async fn add_secondary_phone(&self, contact_id: &str, e164: &str) -> Result<SecondaryPhoneOutcome, ConnectorError> {
        let person = self.person(contact_id).await?;
        if person.phones.iter().any(|p| same_phone(&p.value, e164)) {
            return Ok(SecondaryPhoneOutcome::AlreadyPresent { property: "phones".into() });
        }
        if person.phones.len() >= MAX_PHONES {
            return Ok(SecondaryPhoneOutcome::NoFreeSlot);
        }
        let mut phones: Vec<Value> = person.phones.iter().map(labeled_json).collect();
        phones.push(json!({"value": e164, "primary": phones.is_empty(), "label": "other"}));
        let body = json!({"phones": phones});
        let _: IdOnly = self.call(Method::PATCH, &["api", "v2", "persons", contact_id], &[], Some(&body)).await?;
        Ok(SecondaryPhoneOutcome::Added { property: "phones".into() })
    }

    /// A v1 note on the person (notes have no v2 endpoint), its `add_time` the note's time.
    async fn log_note(
        &self,
        contact_id: &str,
        note: &NoteRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let m = marker(idempotency_key);
        if let Some(existing) = self.notes(contact_id).await?.into_iter().find(|n| n.content.contains(&m)) {
            return Ok(existing.id.to_string());
        }
        let body = json!({
            "content": format!("<p>{}</p><p>{m}</p>", escape_html(&note.body)),
            "person_id": parse_numeric_id(contact_id)?,
            "add_time": note.at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        });
        let created: IdOnly = self.call(Method::POST, &["v1", "notes"], &[], Some(&body)).await?;
        Ok(created.id.to_string())
    }

    /// A `task` activity for the owner, due at the task's time. Pipedrive's activity priority is
    /// a company-defined option id, so the neutral priority goes into the note instead.
    async fn create_task(
        &self,
        contact_id: &str,
        task: &TaskRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let (date, time) = due(task.due);
        let mut note = task.body.as_deref().map(|b| format!("<p>{}</p>", escape_html(b))).unwrap_or_default();
        if let Some(p) = &task.priority {
            note.push_str(&format!("<p>Priority: {}</p>", escape_html(p)));
        }
        let mut body = json!({
            "subject": task.subject,
            "type": "task",
            "due_date": date,
            "due_time": time,
            "done": false,
            "note": note,
        });
        if let Some(owner) = &task.owner_id {
            body["owner_id"] = json!(parse_numeric_id(owner)?);
        }
        self.create_activity(contact_id, body.as_object().cloned().unwrap_or_default(), idempotency_key).await
    }

    async fn set_deal_stage(&self, deal_id: &str, stage: &str) -> Result<(), ConnectorError> {
        let deal: Deal = self.get(&["api", "v2", "deals", deal_id], &[]).await?;
        let pipeline = deal.pipeline_id.map(|p| p.to_string());
        let mut query = vec![("limit", "500")];
        if let Some(p) = pipeline.as_deref() {
            query.push(("pipeline_id", p));
        }
        let stages: Vec<Stage> = self.get(&["api", "v2", "stages"], &query).await?;
        let wanted = stage.trim();
        let Some(target) = stages
            .iter()
            .find(|s| s.id.to_string() == wanted)
            .or_else(|| stages.iter().find(|s| s.name.eq_ignore_ascii_case(wanted)))
        else {
            return Err(ConnectorError::Validation {
                message: format!("no stage {wanted:?} in the deal's pipeline"),
                fields: vec!["stage_id".into()],
            });
        };
        let body = json!({"stage_id": target.id});
        let _: IdOnly = self.call(Method::PATCH, &["api", "v2", "deals", deal_id], &[], Some(&body)).await?;
        Ok(())
    }

    /// The pilot's seeded deal: `POST /api/v2/deals` with `title`, `person_id`, `value` (a number
    /// in v2) and, when one is named (by id or name, any case), `stage_id`; without it Pipedrive
    /// puts the deal in the default pipeline's first stage
    /// (<https://developers.pipedrive.com/docs/api/v1/Deals#addDeal>). Deals have no unique-value
    /// field to read through: like HubSpot's, this is a plain create — only the pilot seeds deals,
    /// once per run, and deletes them after.
    async fn create_deal(
        &self,
        contact_id: &str,
        deal: &DealRecord,
        _idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let person = parse_numeric_id(contact_id)?;
        let mut body = json!({"title": truncate_bytes(&deal.name, 255), "person_id": person});
        if let Some(amount) = deal.amount.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            let value =
                amount.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| ConnectorError::Validation {
                    message: format!("{amount:?} is not an amount"),
                    fields: vec!["value".into()],
                })?;
            body["value"] = json!(value);
        }
        if let Some(stage) = deal.stage.as_deref() {
            let stages: Vec<Stage> = self.get(&["api", "v2", "stages"], &[("limit", "500")]).await?;
            let wanted = stage.trim();
            let Some(target) = stages
                .iter()
                .find(|s| s.id.to_string() == wanted)
                .or_else(|| stages.iter().find(|s| s.name.eq_ignore_ascii_case(wanted)))
            else {
                return Err(ConnectorError::Validation {
                    message: format!("no stage {wanted:?}"),
                    fields: vec!["stage_id".into()],
                });
            };
            body["stage_id"] = json!(target.id);
        }
        let created: IdOnly = self.call(Method::POST, &["api", "v2", "deals"], &[], Some(&body)).await?;
        Ok(created.id.to_string())
    }

    /// `GET /v1/persons/{id}/changelog`, newest first. `change_source` `app` (the web app),
    /// `mobile` and `import` are people; `api` and `marketplace_app` are integrations.
    async fn property_history(
        &self,
        contact_id: &str,
        properties: &[String],
    ) -> Result<Vec<PropertyHistory>, ConnectorError> {
        let changes: Vec<ChangeEntry> =
            self.get(&["v1", "persons", contact_id, "changelog"], &[("limit", "500")]).await?;
        Ok(properties
            .iter()
            .map(|name| {
                let mut versions: Vec<(Timestamp, PropertyVersion)> = changes
                    .iter()
                    .filter(|c| &c.field_key == name)
                    .filter_map(|c| {
                        let at = parse_v1_time(&c.time)?;
                        Some((
                            at,
                            PropertyVersion {
                                value: value_text(&c.new_value).unwrap_or_default(),
                                timestamp: at,
                                source_type: source_type(c.change_source.as_deref().unwrap_or_default()).into(),
                                source_id: c.change_source.clone(),
                                updated_by_user_id: c.actor_user_id.map(|u| u.to_string()),
                            },
                        ))
                    })
                    .collect();
                versions.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
                PropertyHistory { name: name.clone(), versions: versions.into_iter().map(|(_, v)| v).collect() }
            })
            .collect())
    }

    /// Pipedrive has no tickets, and a Pipedrive tenant's context never names one.
    async fn log_ticket_note(
        &self,
        _ticket_id: &str,
        _note: &NoteRecord,
        _idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        Err(ConnectorError::Permanent("Pipedrive has no tickets".into()))
    }

    /// Persons and deals: their changelog (`/v1/persons/{id}/changelog`,
    /// `/v1/deals/{id}/changelog`), the write-back's property names mapped to Pipedrive's fields
    /// (`dealstage` → `stage_id`, `lastname` → `name`, …) and reported under the names asked for.
    /// Activities and notes have no changelog in Pipedrive: an object changed since it was added
    /// (`update_time` after `add_time`) is reported as a person's edit, so undo keeps it.
    async fn object_history(
        &self,
        object: CrmObjectType,
        id: &str,
        properties: &[String],
    ) -> Result<Vec<PropertyHistory>, ConnectorError> {
        parse_numeric_id(id).map_err(|_| ConnectorError::NotFound(format!("{} {id}", object.as_str())))?;
        let (segments, field_of): (Vec<&str>, fn(&str) -> &str) = match object {
            CrmObjectType::Contact => (vec!["v1", "persons", id, "changelog"], person_field_key),
            CrmObjectType::Deal => (vec!["v1", "deals", id, "changelog"], deal_field_key),
            CrmObjectType::Note => {
                let note: Note = self.get(&["v1", "notes", id], &[]).await?;
                let edited = note.update_time.as_deref().is_some_and(|u| u != note.add_time);
                return Ok(untracked_history(properties, edited, parse_v1_time(&note.add_time)));
            }
            CrmObjectType::Call | CrmObjectType::Meeting | CrmObjectType::Task => {
                let a: Activity = self.get(&["api", "v2", "activities", id], &[]).await?;
                let edited = a.update_time.is_some() && a.update_time != a.add_time;
                return Ok(untracked_history(properties, edited, a.add_time.as_deref().and_then(parse_any_time)));
            }
        };
        let index = if object == CrmObjectType::Contact { Some(self.field_index().await?) } else { None };
        let changes: Vec<ChangeEntry> = self.get(&segments, &[("limit", "500")]).await?;
        Ok(properties
            .iter()
            .map(|name| {
                let key = match (name.as_str(), &index) {
                    ("zip", Some(index)) => index.zip_key.clone().unwrap_or_default(),
                    _ => field_of(name).to_string(),
                };
                let mut versions: Vec<(Timestamp, PropertyVersion)> = changes
                    .iter()
                    .filter(|c| c.field_key == key)
                    .filter_map(|c| {
                        let at = parse_v1_time(&c.time)?;
                        Some((
                            at,
                            PropertyVersion {
                                value: value_text(&c.new_value).unwrap_or_default(),
                                timestamp: at,
                                source_type: source_type(c.change_source.as_deref().unwrap_or_default()).into(),
                                source_id: c.change_source.clone(),
                                updated_by_user_id: c.actor_user_id.map(|u| u.to_string()),
                            },
                        ))
                    })
                    .collect();
                versions.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
                PropertyHistory { name: name.clone(), versions: versions.into_iter().map(|(_, v)| v).collect() }
            })
            .collect())
    }

    /// `GET /api/v2/activities/{id}`: `done` true → attended. Pipedrive has no no-show or
    /// cancellation on an activity — only done or not — so a missed appointment is known here
    /// only through the tenant's own activity custom field (`outcome_field`, read from the
    /// activity's `custom_fields`, or at the top level as v1 answered; activity fields:
    /// https://developers.pipedrive.com/docs/api/v1/ActivityFields), which wins over `done` when
    /// it holds an outcome. An activity without a boolean `done` is an unreadable answer.
    async fn appointment_status(
        &self,
        object_id: &str,
        outcome_field: Option<&str>,
    ) -> Result<CrmAppointmentStatus, ConnectorError> {
        parse_numeric_id(object_id).map_err(|_| ConnectorError::NotFound(format!("activity {object_id}")))?;
        let activity: Value = self.get(&["api", "v2", "activities", object_id], &[]).await?;
        let done = activity
            .get("done")
            .and_then(Value::as_bool)
            .ok_or_else(|| ConnectorError::Transient("unreadable Pipedrive activity: no boolean done".into()))?;
        if let Some(field) = outcome_field {
            let value = activity
                .get("custom_fields")
                .and_then(|c| c.get(field))
                .or_else(|| activity.get(field))
                .and_then(value_text)
                .unwrap_or_default();
            let status = CrmAppointmentStatus::of_custom_value(&value);
            if status != CrmAppointmentStatus::NotYetKnown {
                return Ok(status);
            }
        }
        Ok(if done { CrmAppointmentStatus::Attended } else { CrmAppointmentStatus::NotYetKnown })
    }

    /// `DELETE` on the object (persons and deals are marked deleted by Pipedrive and purged
    /// later); one already gone is not an error.
    async fn delete_object(&self, object: CrmObjectType, id: &str) -> Result<(), ConnectorError> {
        parse_numeric_id(id)?;
        let segments: Vec<&str> = match object {
            CrmObjectType::Contact => vec!["api", "v2", "persons", id],
            CrmObjectType::Deal => vec!["api", "v2", "deals", id],
            CrmObjectType::Call | CrmObjectType::Meeting | CrmObjectType::Task => vec!["api", "v2", "activities", id],
            CrmObjectType::Note => vec!["v1", "notes", id],
        };
        let url = self.url(&segments, &[]).await?;
        let raw = self.send(Method::DELETE, url, None).await?;
        if raw.status.is_success() || raw.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(classify(&raw, self.clock.now()))
    }

    /// `GET /api/v2/persons?updated_since=<RFC 3339>&sort_by=update_time&sort_direction=asc`,
    /// 500 a page, followed with `cursor` (`additional_data.next_cursor`): persons whose
    /// `update_time` is at or after `since` — the v2 list reads the database, not the lagging
    /// search index (<https://developers.pipedrive.com/docs/api/v1/Persons#getPersons>, the v2
    /// tab; <https://pipedrive.readme.io/docs/core-api-concepts-pagination>). `update_time` has
    /// whole seconds, so `since` is floored: that second's persons come again. Deleted persons
    /// are not listed (see ARCHITECTURE).
    async fn contacts_changed_since(
        &self,
        since: Option<Timestamp>,
        cursor: Option<&str>,
    ) -> Result<ContactPage, ConnectorError> {
        let index = self.field_index().await?;
        let since = since.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        let mut query = vec![("sort_by", "update_time"), ("sort_direction", "asc"), ("limit", PULL_PAGE)];
        if let Some(since) = since.as_deref() {
            query.push(("updated_since", since));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor));
        }
        let url = self.url(&["api", "v2", "persons"], &query).await?;
        let raw = self.send(Method::GET, url, None).await?;
        if !raw.status.is_success() {
            return Err(classify(&raw, self.clock.now()));
        }
        let page: ListEnvelope<Person> = serde_json::from_slice(&raw.body)
            .map_err(|_| ConnectorError::Transient("unreadable Pipedrive persons list".into()))?;
        let contacts: Vec<CrmContact> = page.data.iter().map(|p| self.to_contact(p, &index)).collect();
        let newest = contacts.iter().filter_map(|c| c.updated_at).max();
        Ok(ContactPage { contacts, newest, next_cursor: page.additional_data.and_then(|a| a.next_cursor) })
    }

    /// Cursor paging has no documented cap on how far one query goes.
    fn pull_query_cap(&self) -> Option<usize> {
        None
    }

    /// `GET /v1/users/me`: the user the token acts as (its API writes carry this `user_id` in
    /// webhooks), read once per connector.
    async fn acting_user_id(&self) -> Result<Option<String>, ConnectorError> {
        self.acting_user
            .get_or_try_init(|| async {
                let me: IdOnly = self.get(&["v1", "users", "me"], &[]).await?;
                Ok::<_, ConnectorError>(me.id.to_string())
            })
            .await
            .map(|id| Some(id.clone()))
    }
}

/// The Pipedrive person field a write-back property name stands for.
fn person_field_key(name: &str) -> &str {
    match name {
        "firstname" | "lastname" => "name",
        "phone" | "mobilephone" => "phone",
        "hubspot_owner_id" => "owner_id",
        other => other,
    }
}

/// The Pipedrive deal field a write-back property name stands for.
fn deal_field_key(name: &str) -> &str {
    match name {
        "dealstage" => "stage_id",
        "dealname" => "title",
        "amount" => "value",
        "hubspot_owner_id" => "user_id",
        other => other,
    }
}

/// The history of an object Pipedrive keeps no changelog for: one version per property, a
/// person's edit when the object changed after it was added.
fn untracked_history(properties: &[String], edited: bool, added: Option<Timestamp>) -> Vec<PropertyHistory> {
    let version = PropertyVersion {
        value: String::new(),
        timestamp: added.unwrap_or(Timestamp::UNIX_EPOCH),
        source_type: if edited { "CRM_UI" } else { "API" }.into(),
        source_id: None,
        updated_by_user_id: None,
    };
    properties.iter().map(|name| PropertyHistory { name: name.clone(), versions: vec![version.clone()] }).collect()
}

// ----- wire types ------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Debug, Deserialize)]
struct ListEnvelope<T> {
    data: Vec<T>,
    #[serde(default)]
    additional_data: Option<AdditionalData>,
}

#[derive(Debug, Deserialize)]
struct AdditionalData {
    #[serde(default)]
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    id: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct Labeled {
    value: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    label: Option<String>,
}

fn labeled_json(l: &Labeled) -> Value {
    json!({"value": l.value, "primary": l.primary, "label": l.label.as_deref().unwrap_or("other")})
}

#[derive(Debug, Deserialize)]
struct Person {
    id: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    owner_id: Option<u64>,
    #[serde(default)]
    org_id: Option<u64>,
    #[serde(default)]
    emails: Vec<Labeled>,
    #[serde(default)]
    phones: Vec<Labeled>,
    #[serde(default)]
    custom_fields: Map<String, Value>,
    #[serde(default)]
    update_time: Option<String>,
}

impl Person {
    fn field(&self, key: &str) -> Value {
        match key {
            "name" => json!(self.name),
            "owner_id" => json!(self.owner_id),
            other => self.custom_fields.get(other).cloned().unwrap_or(Value::Null),
        }
    }
}

fn split_name(p: &Person) -> (Option<String>, Option<String>) {
    let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    match (nonempty(&p.first_name), nonempty(&p.last_name)) {
        (None, None) => match p.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            Some(n) => match n.split_once(' ') {
                Some((f, l)) => (Some(f.into()), Some(l.into())),
                None => (Some(n.into()), None),
            },
            None => (None, None),
        },
        pair => pair,
    }
}

#[derive(Debug, Deserialize)]
struct SearchData {
    items: Vec<SearchItem>,
}

#[derive(Debug, Deserialize)]
struct SearchItem {
    item: SearchPerson,
}

#[derive(Debug, Deserialize)]
struct SearchPerson {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct Deal {
    id: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    stage_id: Option<u64>,
    #[serde(default)]
    pipeline_id: Option<u64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    expected_close_date: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Stage {
    id: u64,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Activity {
    id: u64,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    owner_id: Option<u64>,
    #[serde(default)]
    due_date: Option<String>,
    #[serde(default)]
    due_time: Option<String>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    add_time: Option<String>,
    #[serde(default)]
    update_time: Option<String>,
}

impl Activity {
    /// `due_date` + `due_time` (UTC); a date alone is its start of day.
    fn due_at(&self) -> Option<Timestamp> {
        let date: jiff::civil::Date = self.due_date.as_deref()?.parse().ok()?;
        let time = self
            .due_time
            .as_deref()
            .filter(|t| !t.is_empty())
            .and_then(|t| jiff::civil::Time::strptime("%H:%M", t).ok())
            .unwrap_or(jiff::civil::Time::midnight());
        date.to_datetime(time).to_zoned_datetime(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
    }
}

#[derive(Debug, Deserialize)]
struct Note {
    id: u64,
    #[serde(default)]
    content: String,
    #[serde(default)]
    add_time: String,
    #[serde(default)]
    update_time: Option<String>,
}

#[derive(Debug, Deserialize)]
struct User {
    id: u64,
    name: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Organization {
    id: u64,
    name: String,
}

#[derive(Debug, Deserialize)]
struct ChangeEntry {
    field_key: String,
    #[serde(default)]
    new_value: Value,
    #[serde(default)]
    actor_user_id: Option<u64>,
    time: String,
    #[serde(default)]
    change_source: Option<String>,
}

/// Pipedrive's error body: `{"success": false, "error": "...", "error_info": "...",
/// "errorCode"?: n, "code"?: "..."}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

// ----- helpers -----------------------------------------------------------------------------------------

fn parse_numeric_id(id: &str) -> Result<u64, ConnectorError> {
    id.trim()
        .parse()
        .map_err(|_| ConnectorError::Validation { message: format!("{id:?} is not a Pipedrive id"), fields: vec![] })
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Same number if the digits agree, allowing a missing NANP `1` country code on either side.
fn same_phone(a: &str, b: &str) -> bool {
    let (a, b) = (digits(a), digits(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    a == b
        || (a.len() == 11 && a.starts_with('1') && a[1..] == b)
        || (b.len() == 11 && b.starts_with('1') && b[1..] == a)
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn same_value(sent: &Value, stored: &Value) -> bool {
    match (sent, stored) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Number(a), Value::String(b)) => b.parse::<f64>().ok() == a.as_f64(),
        (a, b) => a == b,
    }
}

fn is_standard(name: &str) -> bool {
    matches!(name, "name" | "owner_id" | "org_id" | "visible_to")
}

/// The value for one field in Pipedrive's format, checked against the field's definition:
/// `varchar`/`text` strings, `double`/`monetary` numbers, `date` `YYYY-MM-DD`, `enum` the option
/// id, `time` `HH:MM:SS`. Pipedrive has no date-time type: a date-time goes to a text field as
/// RFC 3339 UTC.
fn format_field(def: Option<&FieldDef>, value: &PropertyValue) -> Result<Value, String> {
    let Some(def) = def else { return Err("no such person field in Pipedrive".into()) };
    let t = def.field_type.as_str();
    let text_like = matches!(t, "varchar" | "text" | "varchar_auto" | "address" | "phone");
    match value {
        PropertyValue::Clear => Ok(Value::Null),
        PropertyValue::Text(s) if text_like => Ok(json!(s)),
        PropertyValue::Number(n) if matches!(t, "double" | "monetary") => Ok(Value::Number(n.clone())),
        PropertyValue::Number(n) if text_like => Ok(json!(n.to_string())),
        PropertyValue::Date(d) if t == "date" => Ok(json!(d.to_string())),
        PropertyValue::Date(d) if text_like => Ok(json!(d.to_string())),
        PropertyValue::DateTime(at) if text_like => Ok(json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())),
        PropertyValue::DateTime(at) if t == "date" => {
            Ok(json!(at.to_zoned_datetime(jiff::tz::TimeZone::UTC).date().to_string()))
        }
        PropertyValue::Bool(b) if text_like => Ok(json!(if *b { "true" } else { "false" })),
        PropertyValue::Enumeration(option) if t == "enum" => {
            let options = def.options.as_deref().unwrap_or_default();
            options
                .iter()
                .find(|o| o.id.to_string() == option.trim())
                .or_else(|| options.iter().find(|o| o.label.eq_ignore_ascii_case(option.trim())))
                .map(|o| json!(o.id))
                .ok_or_else(|| format!("{option:?} is not an option of {}", def.name))
        }
        other => Err(format!("a {} value does not fit the {t} field {}", kind_name(other), def.name)),
    }
}

fn kind_name(v: &PropertyValue) -> &'static str {
    match v {
        PropertyValue::Text(_) => "text",
        PropertyValue::Number(_) => "number",
        PropertyValue::Bool(_) => "boolean",
        PropertyValue::Date(_) => "date",
        PropertyValue::DateTime(_) => "date-time",
        PropertyValue::Enumeration(_) => "option",
        PropertyValue::Clear => "clear",
    }
}

fn source_type(change_source: &str) -> &'static str {
    match change_source {
        "app" => "CRM_UI",
        "mobile" => "MOBILE_IOS",
        "import" => "IMPORT",
        _ => "API",
    }
}

fn call_body(call: &CallLog) -> Map<String, Value> {
    let (date, time) = due(call.started_at);
    let minutes = call.duration_secs.div_ceil(60);
    let mut note = format!("<p>{}</p>", escape_html(&call.summary));
    if let Some(d) = &call.disposition {
        note.push_str(&format!("<p>Outcome: {}</p>", escape_html(d)));
    }
    for (label, url) in [("Recording", &call.recording_url), ("Transcript", &call.transcript_url)] {
        if let Some(u) = url {
            note.push_str(&format!("<p>{label}: {}</p>", escape_html(u)));
        }
    }
    note.push_str(&format!("<p>Source: {}</p>", escape_html(&call.source)));
    let subject = match &call.from {
        Some(from) => format!("Call from {from}"),
        None => format!("Call to {}", call.to),
    };
    json!({
        "subject": subject,
        "type": "call",
        "due_date": date,
        "due_time": time,
        "duration": hh_mm(minutes),
        "done": true,
        "note": note,
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// `(YYYY-MM-DD, HH:MM)` in UTC, as activities take them.
fn due(at: Timestamp) -> (String, String) {
    (at.strftime("%Y-%m-%d").to_string(), at.strftime("%H:%M").to_string())
}

fn hh_mm(minutes: u64) -> String {
    format!("{:02}:{:02}", (minutes / 60).min(99), minutes % 60)
}

/// A v2 RFC 3339 time or a v1 `YYYY-MM-DD HH:MM:SS` (UTC) one.
fn parse_any_time(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok().or_else(|| parse_v1_time(s))
}

fn parse_v1_time(s: &str) -> Option<Timestamp> {
    let dt = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", s.trim()).ok()?;
    dt.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
}

fn find_marker(note: &str) -> Option<String> {
    let start = note.find("[callside:")?;
    let end = note[start..].find(']')?;
    Some(note[start..start + end + 1].to_string())
}

fn strip_marker(note: &str) -> String {
    match find_marker(note) {
        Some(m) => note.replace(&m, ""),
        None => note.to_string(),
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Plain text of an HTML note, whitespace collapsed, bounded.
fn summarize(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let text = out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(ACTIVITY_SUMMARY_CHARS).collect()
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// How long until the next 00:00 UTC (the daily token budget's reset).
fn until_next_utc_midnight(now: Timestamp) -> Duration {
    let today = now.to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    let next = today
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp())
        .unwrap_or(now);
    Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Maps a non-2xx answer to a [`ConnectorError`].
fn classify(raw: &Raw, now: Timestamp) -> ConnectorError {
    let error: ErrorBody = serde_json::from_slice(&raw.body).unwrap_or_default();
    let message = truncate_bytes(error.error.as_deref().unwrap_or("no error message"), MAX_MESSAGE_CHARS);
    match raw.status.as_u16() {
        429 => {
            let retry_after =
                raw.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now));
            if header_u64(&raw.headers, "x-daily-requests-left") == Some(0) {
                // The daily budget is spent: nothing frees up before the next UTC day.
                return ConnectorError::RateLimited {
                    retry_after: longest([retry_after, Some(until_next_utc_midnight(now))]),
                    detail: "daily token budget exhausted".into(),
                };
            }
            let window = header_u64(&raw.headers, "x-ratelimit-reset").map(Duration::from_secs);
            ConnectorError::RateLimited {
                retry_after: longest([retry_after, window, Some(Duration::from_secs(2))]),
                detail: "2-second window exhausted".into(),
            }
        }
        // Sent only after the token source already refreshed (or could not): re-authorize.
        401 => ConnectorError::AuthRevoked(format!("Pipedrive: {message}")),
        403 => ConnectorError::AuthRevoked(format!("forbidden: {message}")),
        404 => ConnectorError::NotFound(message),
        409 => ConnectorError::Conflict { message, existing_id: None },
        400 | 422 => {
            let text = error.error.clone().unwrap_or_default();
            let fields = raw.sent_keys.iter().filter(|k| mentions(&text, k)).cloned().collect();
            ConnectorError::Validation { message, fields }
        }
        408 | 500..=599 => ConnectorError::Transient(format!(
            "Pipedrive answered HTTP {}{}",
            raw.status.as_u16(),
            error.code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
        )),
        other => ConnectorError::Permanent(format!("HTTP {other}: {message}")),
    }
}

/// Whether an error message names the field `key` as a whole word (`custom_fields.<key>:`,
/// `name:`), not as part of another word.
fn mentions(text: &str, key: &str) -> bool {
    text.match_indices(key).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + key.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        boundary(before) && boundary(after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, headers: &[(&'static str, &str)], body: &str, sent: &[&str]) -> Raw {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        Raw {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: body.as_bytes().to_vec(),
            sent_keys: sent.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The response headers example of the rate-limiting page
    /// (<https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting>), on a 429: the
    /// window's reset is the delay.
    #[test]
    fn golden_rate_limit_headers_give_the_window_reset() {
        let now: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let r = raw(
            429,
            &[
                ("x-ratelimit-limit", "40"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "2"),
                ("x-daily-requests-left", "9999"),
            ],
            r#"{"success": false, "error": "Request over limit", "errorCode": 429}"#,
            &[],
        );
        match classify(&r, now) {
            ConnectorError::RateLimited { retry_after, detail } => {
                assert_eq!(retry_after, Some(Duration::from_secs(2)));
                assert!(detail.contains("2-second"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A spent daily budget waits until the next UTC midnight, whatever the window says.
    #[test]
    fn daily_budget_exhaustion_waits_for_the_utc_day_to_turn() {
        let now: Timestamp = "2026-11-23T22:30:00Z".parse().unwrap();
        let r = raw(429, &[("x-ratelimit-reset", "1"), ("x-daily-requests-left", "0")], "{}", &[]);
        match classify(&r, now) {
            ConnectorError::RateLimited { retry_after, detail } => {
                assert_eq!(retry_after, Some(Duration::from_secs(90 * 60)));
                assert!(detail.contains("daily"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_errors_name_only_fields_that_were_sent_and_mentioned() {
        let now = Timestamp::UNIX_EPOCH;
        let body = r#"{"success":false,"error":"Validation failed: custom_fields.abc: invalid value","error_info":"Please check developers.pipedrive.com for more information about Pipedrive API.","data":null,"additional_data":null}"#;
        match classify(&raw(400, &[], body, &["abc", "ab", "name"]), now) {
            ConnectorError::Validation { fields, .. } => assert_eq!(fields, vec!["abc".to_string()]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&raw(404, &[], r#"{"success":false,"error":"Person not found"}"#, &[]), now),
            ConnectorError::NotFound(_)
        ));
        assert!(matches!(classify(&raw(502, &[], "<html>", &[]), now), ConnectorError::Transient(_)));
        assert!(matches!(
            classify(&raw(401, &[], r#"{"success":false,"error":"unauthorized access","errorCode":401}"#, &[]), now),
            ConnectorError::AuthRevoked(_)
        ));
        // A hostile, huge message is cut.
        let long = format!(r#"{{"success":false,"error":"{}"}}"#, "x".repeat(10_000));
        match classify(&raw(400, &[], &long, &[]), now) {
            ConnectorError::Validation { message, fields } => {
                assert!(message.len() <= MAX_MESSAGE_CHARS);
                assert!(fields.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    /// The persons search example (`GET /api/v2/persons/search`, Pipedrive's API reference as
    /// mirrored at <https://developers.qodex.ai/pipedrive-api-collection/pipedrive-api-v2/persons-27/search-persons-5>).
    #[test]
    fn golden_person_search_response() {
        let body = r#"{"success":true,"data":{"items":[{"result_score":0.5092,"item":{"id":1,"type":"person","name":"Jane Doe","phones":["+372 555555555"],"emails":["jane@pipedrive.com"],"visible_to":3,"owner":{"id":1},"organization":{"id":1,"name":"Organization name","address":null},"custom_fields":[],"notes":[],"update_time":"2023-02-03T08:00:00Z"}}]},"additional_data":{"next_cursor":null}}"#;
        let parsed: Envelope<SearchData> = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.data.items.iter().map(|i| i.item.id).collect::<Vec<_>>(), vec![1]);
    }

    /// The v2 person shape (`GetPersonsResponse` in Pipedrive's v2 OpenAPI description).
    #[test]
    fn golden_v2_person_maps_to_a_contact() {
        let body = r#"{"success":true,"data":{"id":7,"name":"Ada Lovelace","first_name":"Ada","last_name":"Lovelace","owner_id":12,"org_id":null,
          "add_time":"2026-11-20T10:00:00Z","update_time":"2026-11-20T10:00:00Z",
          "emails":[{"value":"ada@example.com","primary":true,"label":"work"}],
          "phones":[{"value":"(415) 555-0134","primary":true,"label":"work"},{"value":"+14155550177","primary":false,"label":"mobile"}],
          "is_deleted":false,"visible_to":3,"label_ids":[],"picture_id":null,"custom_fields":{"zipkey":"94107"}}}"#;
        let person: Envelope<Person> = serde_json::from_str(body).unwrap();
        let index = FieldIndex { defs: HashMap::new(), marker_key: None, zip_key: Some("zipkey".into()) };
        let c = PipedriveConnector::new(
            Url::parse("https://acme.pipedrive.com/").unwrap(),
            SecretString::from("t"),
            reqwest::Client::new(),
        )
        .to_contact(&person.data, &index);
        assert_eq!(c.first_name.as_deref(), Some("Ada"));
        assert_eq!(c.last_name.as_deref(), Some("Lovelace"));
        assert_eq!(c.phones, vec!["(415) 555-0134".to_string(), "+14155550177".into()]);
        assert_eq!(c.zip.as_deref(), Some("94107"));
        assert_eq!(c.owner_id.as_deref(), Some("12"));
    }

    #[test]
    fn typed_values_take_pipedrives_formats() {
        let def = |t: &str| FieldDef {
            key: "k".into(),
            name: "F".into(),
            field_type: t.into(),
            options: Some(vec![FieldOption { id: 31, label: "Phone".into() }]),
        };
        let at: Timestamp = "2026-11-23T14:30:00Z".parse().unwrap();
        assert_eq!(
            format_field(Some(&def("varchar")), &PropertyValue::DateTime(at)).unwrap(),
            json!("2026-11-23T14:30:00Z")
        );
        assert_eq!(
            format_field(Some(&def("date")), &PropertyValue::Date("2026-12-01".parse().unwrap())).unwrap(),
            json!("2026-12-01")
        );
        assert_eq!(format_field(Some(&def("enum")), &PropertyValue::Enumeration("31".into())).unwrap(), json!(31));
        assert_eq!(format_field(Some(&def("enum")), &PropertyValue::Enumeration("phone".into())).unwrap(), json!(31));
        assert!(format_field(Some(&def("enum")), &PropertyValue::Enumeration("carrier-pigeon".into())).is_err());
        assert!(format_field(Some(&def("double")), &PropertyValue::Text("x".into())).is_err());
        assert!(format_field(None, &PropertyValue::Text("x".into())).is_err());
    }

    #[test]
    fn markers_round_trip_and_phones_compare_by_digits() {
        let note = format!("<p>hi</p><p>{}</p>", marker("k-1"));
        assert_eq!(find_marker(&note).as_deref(), Some("[callside:k-1]"));
        assert_eq!(summarize(&strip_marker(&note)), "hi");
        assert!(same_phone("(415) 555-0134", "+14155550134"));
        assert!(!same_phone("(415) 555-0134", "+14155550199"));
        assert_eq!(hh_mm(90), "01:30");
        assert!(mentions("Validation failed: name: x", "name"));
        assert!(!mentions("Validation failed: first_name: x", "name"));
    }
}
