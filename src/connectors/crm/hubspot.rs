//! HubSpot CRM connector over the CRM v3 object/search APIs.
//!
//! Reads at ring time: one search for the caller's phone (email and name + ZIP are the other
//! lookups; searches are spaced to respect the search endpoints' ~5 requests/s), then one contact
//! read with every association inline (deals, tickets, tasks, calls, notes) and, concurrently, one
//! batch read per associated type plus the owner. Deal and ticket openness comes from the
//! portal's pipeline definitions (`metadata.isClosed` of each stage), fetched once and cached for
//! the connector's life, never from stage names.
//!
//! Typed property writes check each value against the property's definition from the properties
//! API (type, enumeration options, read-only), send the rest in one `PATCH`, re-send without any
//! property HubSpot rejects, and read the values back so a silently dropped one is reported.
//! Association type ids come from the v4 labels endpoint, not constants. Conflict data for the
//! write-back comes from `propertiesWithHistory`. The bearer token comes from a [`TokenSource`]:
//! a `401` makes an OAuth connection refresh (single-flight) and the request go once more.
//!
//! Writes after hangup carry an idempotency key in the custom unique-value property
//! [`IDEMPOTENCY_PROPERTY`] (`hasUniqueValue: true` on contacts, calls, meetings, notes and
//! tasks — it has to be created in the portal when the connection is set up). A retried create therefore answers
//! `409`, and the connector returns the existing object's id as success: the id is taken from
//! HubSpot's `Existing ID: <id>` message, or, when the message does not carry it, read back with
//! `GET /crm/v3/objects/{type}/{key}?idProperty=callside_idempotency_key` — a read by unique
//! property, which is not subject to the search index lag
//! (<https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/guide>, "unique
//! identifier properties"). Searching for the key instead would duplicate after a lost response,
//! because search lags ("It may take a few moments for newly created or updated CRM objects to
//! appear in search results",
//! <https://developers.hubspot.com/docs/api-reference/legacy/crm/search-the-crm>).
//!
//! Every failure is classified into [`ConnectorError`] from the status, HubSpot's error body
//! (<https://developers.hubspot.com/docs/api-reference/error-handling>) and its rate-limit
//! headers (<https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>).

use std::collections::{HashMap, HashSet};
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
    CrmConnector, CrmContact, CrmContext, CrmDeal, CrmObjectType, CrmOwner, CrmTask, CrmTicket, DealRecord,
    NameZipQuery, NoteRecord, PhoneQuery, PropertyHistory, PropertyValue, PropertyVersion, PropertyWrite,
    PropertyWriteResult, PropertyWriteStatus, RemovedContact, RemovedPage, SecondaryPhoneOutcome, TaskRecord,
};
use crate::clock::{SharedClock, SystemClock};
use crate::connections::{StaticToken, TokenSource};
use crate::connectors::{ConnectorError, longest, parse_retry_after};

/// The unique-value custom property holding the idempotency key on contacts, calls and meetings.
pub const IDEMPOTENCY_PROPERTY: &str = "callside_idempotency_key";

/// The custom contact property for the lead source label. HubSpot's `hs_analytics_source`
/// ("Original source") is calculated by HubSpot and read-only, and `hs_lead_status` is a status,
/// not a source, so the label goes into a property of our own.
pub const SOURCE_PROPERTY: &str = "callside_source";

const CONTACT_PROPERTIES: [&str; 8] =
    ["firstname", "lastname", "email", "phone", "mobilephone", "zip", "hubspot_owner_id", "lifecyclestage"];
const DEAL_PROPERTIES: [&str; 5] = ["dealname", "dealstage", "amount", "closedate", "pipeline"];
const TICKET_PROPERTIES: [&str; 4] = ["subject", "hs_pipeline", "hs_pipeline_stage", "hs_ticket_priority"];
const TASK_PROPERTIES: [&str; 4] = ["hs_task_subject", "hs_task_status", "hs_timestamp", "hubspot_owner_id"];
const CALL_READ_PROPERTIES: [&str; 3] = ["hs_timestamp", "hs_call_title", "hs_call_body"];
const NOTE_READ_PROPERTIES: [&str; 2] = ["hs_timestamp", "hs_note_body"];
/// How many recent calls and notes the context carries.
const RECENT_ACTIVITY: usize = 5;
const ACTIVITY_SUMMARY_CHARS: usize = 200;
/// The phone properties a second number may go into, in order. HubSpot contacts have `phone` and
/// `mobilephone` by default; the first is never overwritten.
const PHONE_PROPERTIES: [&str; 2] = ["phone", "mobilephone"];
/// Spacing between searches from one connector: HubSpot's search endpoints allow about five
/// requests per second per token ("The search endpoints are rate limited to five requests per
/// second", search guide, Limits); 250 ms keeps us at four.
const SEARCH_SPACING: Duration = Duration::from_millis(250);

/// Search limits: "a maximum of five filterGroups with up to six filters in each group, with a
/// maximum of 18 filters in total" (search guide, Limits).
const MAX_FILTER_GROUPS: usize = 5;
/// Object batch endpoints take at most 100 inputs.
const BATCH_LIMIT: usize = 100;
/// Candidates returned by one phone search; more than this for one number is noise.
const SEARCH_LIMIT: u32 = 100;
/// Contacts per page of the incremental pull (search's maximum page size is 200).
const PULL_PAGE: u32 = 100;
/// Search returns at most 10,000 results per query.
const SEARCH_RESULT_CAP: u64 = 10_000;
/// How long HubSpot lists an archived contact (it can be restored for 90 days).
const ARCHIVE_RETENTION_DAYS: i64 = 90;
/// Pages of archived contacts read per pull at most (100 each); past it the pull re-lists every
/// contact instead.
const MAX_REMOVAL_PAGES: usize = 100;
const MAX_MESSAGE_CHARS: usize = 300;

/// Stage id → closed, from the deal (or ticket) pipelines.
#[derive(Debug, Default)]
struct StageIndex {
    by_pipeline: HashMap<(String, String), bool>,
    by_stage: HashMap<String, bool>,
    /// `(pipeline id, stage id, label)` of every stage.
    stages: Vec<(String, String, String)>,
}

impl StageIndex {
    /// The stage id a name (id or label, case-insensitive) stands for within a pipeline.
    fn resolve(&self, pipeline: Option<&str>, name: &str) -> Option<String> {
        let name = name.trim();
        let in_pipeline = |p: &String| pipeline.is_none_or(|want| want == p);
        self.stages
            .iter()
            .find(|(p, id, _)| in_pipeline(p) && id == name)
            .or_else(|| self.stages.iter().find(|(p, _, label)| in_pipeline(p) && label.eq_ignore_ascii_case(name)))
            .map(|(_, id, _)| id.clone())
    }

    fn is_closed(&self, pipeline: Option<&str>, stage: &str) -> Option<bool> {
        pipeline
            .and_then(|p| self.by_pipeline.get(&(p.to_string(), stage.to_string())))
            .or_else(|| self.by_stage.get(stage))
            .copied()
    }
}

/// A [`CrmConnector`] for HubSpot.
pub struct HubSpotConnector {
    base_url: Url,
    tokens: Arc<dyn TokenSource>,
    client: reqwest::Client,
    clock: SharedClock,
    stages: Mutex<Option<Arc<StageIndex>>>,
    ticket_stages: Mutex<Option<Arc<StageIndex>>>,
    /// `(from, to)` → the HubSpot-defined unlabeled association type id, from the labels endpoint.
    association_types: Mutex<HashMap<(String, String), u32>>,
    /// Contact property definitions by name (`None`: the portal has no such property).
    property_defs: Mutex<HashMap<String, Option<Arc<PropertyDef>>>>,
    /// The minimum gap between two searches (`None`: no spacing).
    search_spacing: Option<Duration>,
    /// When the last search was sent.
    last_search: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// Every request is charged to the account's rate budget (`crate::connectors::rate`).
    meter: crate::connectors::rate::Meter,
    /// The tenant's extra contact properties read with the context (`[account_flags]`).
    extra_properties: Vec<String>,
}

impl std::fmt::Debug for HubSpotConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSpotConnector").field("base_url", &self.base_url.as_str()).finish_non_exhaustive()
    }
}

impl HubSpotConnector {
    /// `base_url` is `https://api.hubapi.com` in production, the sandbox's URL in tests.
    pub fn new(base_url: Url, access_token: SecretString, client: reqwest::Client) -> Self {
        Self::with_token_source(base_url, Arc::new(StaticToken::new(access_token)), client)
    }

    /// A connector whose access token comes from `tokens` (an OAuth connection that refreshes):
    /// on `401` with an expired token the source is asked for a fresh one and the request is sent
    /// once more.
    pub fn with_token_source(base_url: Url, tokens: Arc<dyn TokenSource>, client: reqwest::Client) -> Self {
        // The vendor's search limit binds against HubSpot; an emulator on loopback (tests, the
        // demo, the load test) does not enforce it unless told to, so searches are not spaced
        // there unless asked with `with_search_spacing`.
        let loopback = matches!(base_url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(base_url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
            || base_url.host_str() == Some("localhost");
        Self {
            search_spacing: (!loopback).then_some(SEARCH_SPACING),
            base_url,
            tokens,
            client,
            clock: Arc::new(SystemClock),
            stages: Mutex::new(None),
            ticket_stages: Mutex::new(None),
            association_types: Mutex::new(HashMap::new()),
            property_defs: Mutex::new(HashMap::new()),
            last_search: tokio::sync::Mutex::new(None),
            meter: crate::connectors::rate::Meter::unmetered(),
            extra_properties: Vec::new(),
        }
    }

    /// Reads these contact properties too in `read_context` (`CrmContext::properties`).
    pub fn with_contact_properties(mut self, names: Vec<String>) -> Self {
        self.extra_properties = names;
        self
    }

    /// Charges every request to this rate budget (the account's, shared by live reads and the
    /// write-back lane).
    pub fn with_meter(mut self, meter: crate::connectors::rate::Meter) -> Self {
        self.meter = meter;
        self
    }

    /// The minimum gap between two searches from this connector (`None`: unspaced).
    pub fn with_search_spacing(mut self, spacing: Option<Duration>) -> Self {
        self.search_spacing = spacing;
        self
    }

    /// The clock used to turn an HTTP-date `Retry-After` into a delay.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    // ----- HTTP plumbing ---------------------------------------------------------------------

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, ConnectorError> {
        let mut url = self.base_url.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| ConnectorError::Permanent("HubSpot base URL cannot carry a path".into()))?;
            path.pop_if_empty();
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Sends with the current access token; a `401` makes the token source refresh
    /// (single-flight) and the request go once more. A `401` means HubSpot did not apply
    /// anything, so resending a create is safe.
    async fn send(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Raw, ConnectorError> {
        let token = self.tokens.access_token().await?;
        let raw = self.send_with(method.clone(), url.clone(), body, &token).await?;
        if raw.status != StatusCode::UNAUTHORIZED {
            return Ok(raw);
        }
        // Expired or not recognized (an uninstalled app's token): a refreshable source tries its
        // refresh token, which either yields a working token or reveals the revoked grant.
        match self.tokens.refreshed(&token).await {
            Ok(fresh) => self.send_with(method, url, body, &fresh).await,
            // A static token cannot be refreshed: the original answer is classified.
            Err(ConnectorError::AuthExpired) => Ok(raw),
            Err(e) => Err(e),
        }
    }

    async fn send_with(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        token: &SecretString,
    ) -> Result<Raw, ConnectorError> {
        let mut request =
            self.client.request(method, url).bearer_auth(token.expose_secret()).header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        crate::connectors::send_metered(&self.meter, request).await
    }

    /// Sends and decodes a successful answer; anything else is classified.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<T, ConnectorError> {
        let raw = self.send(method, url, body).await?;
        self.decode(raw)
    }

    fn decode<T: DeserializeOwned>(&self, raw: Raw) -> Result<T, ConnectorError> {
        if !raw.status.is_success() {
            return Err(classify(&raw, self.clock.now()));
        }
        // A 2xx whose body we cannot read: the request may have been applied; retrying is safe
        // because every create is idempotent.
        serde_json::from_slice(&raw.body).map_err(|_| {
            ConnectorError::Transient(format!("unreadable HubSpot response (HTTP {})", raw.status.as_u16()))
        })
    }

    // ----- reads -----------------------------------------------------------------------------

    /// The deal stage index, fetched once per connector; `refresh` refetches (a stage unknown to
    /// the cached definitions means the pipelines changed).
    async fn stage_index(&self, refresh: bool) -> Result<Arc<StageIndex>, ConnectorError> {
        self.pipeline_index("deals", &self.stages, refresh).await
    }

    async fn pipeline_index(
        &self,
        object_type: &str,
        cache: &Mutex<Option<Arc<StageIndex>>>,
        refresh: bool,
    ) -> Result<Arc<StageIndex>, ConnectorError> {
        if !refresh && let Some(index) = cache.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(index);
        }
        let url = self.url(&["crm", "v3", "pipelines", object_type], &[])?;
        let pipelines: PipelinesResponse = self.call(Method::GET, url, None).await?;
        let mut index = StageIndex::default();
        for pipeline in pipelines.results {
            for stage in pipeline.stages {
                let closed = stage.metadata.is_closed.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true"));
                index.by_pipeline.insert((pipeline.id.clone(), stage.id.clone()), closed);
                index.by_stage.insert(stage.id.clone(), closed);
                index.stages.push((pipeline.id.clone(), stage.id, stage.label.unwrap_or_default()));
            }
        }
        let index = Arc::new(index);
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(index.clone());
        Ok(index)
    }

    /// One `batch/read` per 100 ids (none when there are no ids). `207 Multi-Status` lists ids
    /// that no longer exist under `errors`; the rest are read.
    async fn read_batch(
        &self,
        object_type: &str,
        ids: &[String],
        properties: &[&str],
    ) -> Result<Vec<SimpleObject>, ConnectorError> {
        let mut objects = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_LIMIT) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({"id": id})).collect();
            let body = json!({"inputs": inputs, "properties": properties});
            let url = self.url(&["crm", "v3", "objects", object_type, "batch", "read"], &[])?;
            let batch: BatchResponse = self.call(Method::POST, url, Some(&body)).await?;
            objects.extend(batch.results);
        }
        Ok(objects)
    }

    /// `GET /crm/v3/owners/{ownerId}`; an owner HubSpot no longer has is `None`, not an error.
    async fn read_owner(&self, owner_id: Option<&str>) -> Result<Option<CrmOwner>, ConnectorError> {
        let Some(owner_id) = owner_id else {
            return Ok(None);
        };
        let url = self.url(&["crm", "v3", "owners", owner_id], &[])?;
        match self.call::<OwnerResponse>(Method::GET, url, None).await {
            Ok(o) => Ok(Some(CrmOwner {
                id: o.id,
                first_name: o.first_name.filter(|s| !s.is_empty()),
                last_name: o.last_name.filter(|s| !s.is_empty()),
                email: o.email.filter(|s| !s.is_empty()),
            })),
            Err(ConnectorError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether each object is open per its pipeline's stage metadata; an unknown stage refetches
    /// the pipelines once, and a stage no pipeline knows counts as open (better to mention a deal
    /// than to hide one).
    async fn open_filter(
        &self,
        object_type: &str,
        cache: &Mutex<Option<Arc<StageIndex>>>,
        objects: &[SimpleObject],
        pipeline_property: &str,
        stage_property: &str,
    ) -> Result<Vec<bool>, ConnectorError> {
        let mut stages = self.pipeline_index(object_type, cache, false).await?;
        let mut refreshed = false;
        let mut open = Vec::with_capacity(objects.len());
        for object in objects {
            let stage = object.prop(stage_property).unwrap_or_default();
            let pipeline = object.prop(pipeline_property);
            let mut closed = stages.is_closed(pipeline.as_deref(), &stage);
            if closed.is_none() && !refreshed {
                stages = self.pipeline_index(object_type, cache, true).await?;
                refreshed = true;
                closed = stages.is_closed(pipeline.as_deref(), &stage);
            }
            open.push(closed != Some(true));
        }
        Ok(open)
    }

    /// The HubSpot-defined, unlabeled association type from one object type to another, read from
    /// `GET /crm/v4/associations/{from}/{to}/labels` once per pair and cached — never hard-coded
    /// (<https://developers.hubspot.com/docs/api-reference/latest/crm/associations/associations-schema/guide>).
    async fn association_type(&self, from: &str, to: &str) -> Result<u32, ConnectorError> {
        let key = (from.to_string(), to.to_string());
        if let Some(id) = self.association_types.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(*id);
        }
        let url = self.url(&["crm", "v4", "associations", from, to, "labels"], &[])?;
        let labels: LabelsResponse = self.call(Method::GET, url, None).await?;
        let id = unlabeled_type(&labels)
            .ok_or_else(|| ConnectorError::Permanent(format!("HubSpot defines no association from {from} to {to}")))?;
        self.association_types.lock().unwrap_or_else(|p| p.into_inner()).insert(key, id);
        Ok(id)
    }

    /// A contact property's definition (type and enumeration options), cached per connector.
    async fn property_def(&self, name: &str) -> Result<Option<Arc<PropertyDef>>, ConnectorError> {
        if let Some(def) = self.property_defs.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(def.clone());
        }
        let url = self.url(&["crm", "v3", "properties", "contacts", name], &[])?;
        let def = match self.call::<PropertyDef>(Method::GET, url, None).await {
            Ok(def) => Some(Arc::new(def)),
            Err(ConnectorError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        self.property_defs.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), def.clone());
        Ok(def)
    }

    /// A contact search, spaced to stay under the search endpoint's own rate limit.
    async fn search_contacts(&self, body: Value) -> Result<Vec<SimpleObject>, ConnectorError> {
        let found = self.search_contacts_page(body).await?;
        if found.total > u64::from(SEARCH_LIMIT) {
            tracing::warn!(total = found.total, "contact search matched more contacts than one page holds");
        }
        Ok(found.results)
    }

    /// One search request, spaced under HubSpot's search rate limit, with its paging.
    async fn search_contacts_page(&self, body: Value) -> Result<SearchResponse, ConnectorError> {
        if let Some(spacing) = self.search_spacing {
            let mut last = self.last_search.lock().await;
            if let Some(at) = *last {
                tokio::time::sleep_until(at + spacing).await;
            }
            *last = Some(tokio::time::Instant::now());
        }
        let url = self.url(&["crm", "v3", "objects", "contacts", "search"], &[])?;
        self.call(Method::POST, url, Some(&body)).await
    }

    async fn read_contact_props(&self, contact_id: &str, names: &[&str]) -> Result<SimpleObject, ConnectorError> {
        let url = self.url(&["crm", "v3", "objects", "contacts", contact_id], &[("properties", &names.join(","))])?;
        self.call(Method::GET, url, None).await
    }

    async fn patch_contact(&self, contact_id: &str, properties: Map<String, Value>) -> Result<(), ConnectorError> {
        let url = self.url(&["crm", "v3", "objects", "contacts", contact_id], &[])?;
        let _updated: SimpleObject = self.call(Method::PATCH, url, Some(&json!({"properties": properties}))).await?;
        Ok(())
    }

    // ----- writes ----------------------------------------------------------------------------

    /// Creates an object carrying the idempotency key; a create that finds the key taken returns
    /// the existing object's id.
    async fn create_idempotent(
        &self,
        object_type: &str,
        mut properties: Map<String, Value>,
        associations: Value,
        key: &str,
    ) -> Result<String, ConnectorError> {
        properties.insert(IDEMPOTENCY_PROPERTY.into(), Value::String(key.to_string()));
        let mut body = json!({"properties": properties});
        if associations.as_array().is_some_and(|a| !a.is_empty()) {
            body["associations"] = associations;
        }
        let url = self.url(&["crm", "v3", "objects", object_type], &[])?;
        let raw = self.send(Method::POST, url, Some(&body)).await?;
        if raw.status.is_success() {
            let created: SimpleObject = self.decode(raw)?;
            return Ok(created.id);
        }
        let error = ErrorBody::parse(&raw.body);
        let unique_conflict = raw.status == StatusCode::CONFLICT
            || (raw.status == StatusCode::BAD_REQUEST
                && error.all_messages().any(|m| m.contains("already has that value")));
        if !unique_conflict {
            return Err(classify(&raw, self.clock.now()));
        }
        if error.mentions(IDEMPOTENCY_PROPERTY)
            && let Some(existing) = error.existing_id()
        {
            return Ok(existing);
        }
        // The conflict may be on another unique property (a contact's email), or the message may
        // not carry the id: the unique-property read settles it without search lag.
        match self.find_by_key(object_type, key).await? {
            Some(existing) => Ok(existing),
            None => Err(classify(&raw, self.clock.now())),
        }
    }

    async fn find_by_key(&self, object_type: &str, key: &str) -> Result<Option<String>, ConnectorError> {
        let url = self.url(
            &["crm", "v3", "objects", object_type, key],
            &[("idProperty", IDEMPOTENCY_PROPERTY), ("properties", IDEMPOTENCY_PROPERTY)],
        )?;
        let raw = self.send(Method::GET, url, None).await?;
        if raw.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let found: SimpleObject = self.decode(raw)?;
        Ok(Some(found.id))
    }
}

#[async_trait]
impl CrmConnector for HubSpotConnector {
    fn vendor(&self) -> &'static str {
        "hubspot"
    }

    /// One search request. HubSpot's `EQ`/`IN` on `phone` compare the string as typed, so the
    /// request ORs four groups (of the five allowed, one filter each):
    ///
    /// 1. `hs_searchable_calculated_phone_number EQ <national>` and
    /// 2. `hs_searchable_calculated_mobile_number EQ <national>` — HubSpot's calculated copies of
    ///    `phone`/`mobilephone` holding "only the area code and local number" (search guide,
    ///    Limits: "You should refrain from including the country code"). They match every
    ///    formatting of a number HubSpot could parse: `+14155550134`, `(415) 555-0134`,
    ///    `415-555-0134`, `4155550134`, `+1 415 555 0134`, `415.555.0134`, ...
    /// 3. `phone IN <forms>` and 4. `mobilephone IN <forms>` — the raw property against the E.164
    ///    and national forms plus, for NANP numbers, the common typed layouts. This covers records
    ///    whose calculated property is missing (HubSpot could not parse the number). A layout not
    ///    in the list (e.g. `415.555.0134`) is then only found by the identity index, which keeps
    ///    normalized digits of every contact the service has seen.
    ///
    /// `IN` on a string property needs lowercase values; phone forms have no letters.
    async fn find_contacts_by_phone(&self, phone: &PhoneQuery) -> Result<Vec<CrmContact>, ConnectorError> {
        let national = phone.national.trim();
        let forms = phone_forms(phone);
        if forms.is_empty() {
            return Ok(Vec::new());
        }
        let mut groups = Vec::new();
        if !national.is_empty() {
            for calculated in ["hs_searchable_calculated_phone_number", "hs_searchable_calculated_mobile_number"] {
                groups.push(json!({"filters": [{"propertyName": calculated, "operator": "EQ", "value": national}]}));
            }
        }
        for raw in ["phone", "mobilephone"] {
            groups.push(json!({"filters": [{"propertyName": raw, "operator": "IN", "values": forms}]}));
        }
        debug_assert!(groups.len() <= MAX_FILTER_GROUPS);
        let body = json!({
            "filterGroups": groups,
            "properties": CONTACT_PROPERTIES,
            "limit": SEARCH_LIMIT,
        });
        Ok(self.search_contacts(body).await?.iter().map(to_contact).collect())
    }

    /// One contact read with every association inline (`associations=deals,tickets,tasks,calls,
    /// notes`), then — concurrently — one batch read per associated object type and the owner.
    /// The deal and ticket pipelines are read once per connector and cached. HubSpot has no single
    /// request returning associated records' properties, so this is the fewest requests the API
    /// allows.
    async fn read_context(&self, contact_id: &str) -> Result<CrmContext, ConnectorError> {
        let mut properties = CONTACT_PROPERTIES.join(",");
        for extra in &self.extra_properties {
            properties.push(',');
            properties.push_str(extra);
        }
        let url = self.url(
            &["crm", "v3", "objects", "contacts", contact_id],
            &[("properties", &properties), ("associations", "deals,tickets,tasks,calls,notes")],
        )?;
        let contact: SimpleObject = self.call(Method::GET, url, None).await?;
        let ids = |to: &str| {
            let mut seen = HashSet::new();
            contact.associated(to).into_iter().filter(|id| seen.insert(id.clone())).collect::<Vec<_>>()
        };
        let (deal_ids, ticket_ids, task_ids) = (ids("deals"), ids("tickets"), ids("tasks"));
        // The newest calls and notes: HubSpot ids grow over time, so the highest ids are read.
        let newest = |mut v: Vec<String>| {
            v.sort_by_key(|id| std::cmp::Reverse(id.parse::<u64>().unwrap_or(0)));
            v.truncate(BATCH_LIMIT);
            v
        };
        let (call_ids, note_ids) = (newest(ids("calls")), newest(ids("notes")));
        let owner_id = contact.prop("hubspot_owner_id");
        let (deals, tickets, tasks, calls, notes, owner) = futures::try_join!(
            self.read_batch("deals", &deal_ids, &DEAL_PROPERTIES),
            self.read_batch("tickets", &ticket_ids, &TICKET_PROPERTIES),
            self.read_batch("tasks", &task_ids, &TASK_PROPERTIES),
            self.read_batch("calls", &call_ids, &CALL_READ_PROPERTIES),
            self.read_batch("notes", &note_ids, &NOTE_READ_PROPERTIES),
            self.read_owner(owner_id.as_deref()),
        )?;

        let mut open_deals = Vec::new();
        if !deals.is_empty() {
            let stages = self.open_filter("deals", &self.stages, &deals, "pipeline", "dealstage").await?;
            for (deal, open) in deals.iter().zip(stages) {
                if open {
                    open_deals.push(CrmDeal {
                        id: deal.id.clone(),
                        name: deal.prop("dealname").unwrap_or_default(),
                        stage: deal.prop("dealstage").unwrap_or_default(),
                        amount: deal.prop("amount"),
                        close_date: deal.prop("closedate"),
                    });
                }
            }
        }
        let mut open_tickets = Vec::new();
        if !tickets.is_empty() {
            let open =
                self.open_filter("tickets", &self.ticket_stages, &tickets, "hs_pipeline", "hs_pipeline_stage").await?;
            for (ticket, open) in tickets.iter().zip(open) {
                if open {
                    open_tickets.push(CrmTicket {
                        id: ticket.id.clone(),
                        subject: ticket.prop("subject").unwrap_or_default(),
                        stage: ticket.prop("hs_pipeline_stage").unwrap_or_default(),
                        priority: ticket.prop("hs_ticket_priority"),
                    });
                }
            }
        }
        let open_tasks = tasks
            .iter()
            .filter(|t| t.prop("hs_task_status").as_deref() != Some("COMPLETED"))
            .map(|t| CrmTask {
                id: t.id.clone(),
                subject: t.prop("hs_task_subject").unwrap_or_default(),
                status: t.prop("hs_task_status").unwrap_or_else(|| "NOT_STARTED".into()),
                due: t.prop("hs_timestamp").as_deref().and_then(parse_hubspot_time),
                owner_id: t.prop("hubspot_owner_id"),
            })
            .collect();
        let mut recent_activity: Vec<CrmActivity> = calls
            .iter()
            .map(|c| CrmActivity {
                id: c.id.clone(),
                kind: ActivityKind::Call,
                at: c.prop("hs_timestamp").as_deref().and_then(parse_hubspot_time),
                summary: summarize(&c.prop("hs_call_body").or_else(|| c.prop("hs_call_title")).unwrap_or_default()),
            })
            .chain(notes.iter().map(|n| CrmActivity {
                id: n.id.clone(),
                kind: ActivityKind::Note,
                at: n.prop("hs_timestamp").as_deref().and_then(parse_hubspot_time),
                summary: summarize(&n.prop("hs_note_body").unwrap_or_default()),
            }))
            .collect();
        super::newest_activities(&mut recent_activity, RECENT_ACTIVITY);
        let properties = self.extra_properties.iter().filter_map(|n| contact.prop(n).map(|v| (n.clone(), v))).collect();
        Ok(CrmContext {
            contact: to_contact(&contact),
            open_deals,
            open_tickets,
            open_tasks,
            recent_activity,
            owner,
            organization: None,
            properties,
        })
    }

    async fn create_contact(&self, fields: &ContactFields, idempotency_key: &str) -> Result<String, ConnectorError> {
        let properties = contact_properties(fields);
        self.create_idempotent("contacts", properties, json!([]), idempotency_key).await
    }

    async fn update_contact(&self, contact_id: &str, fields: &ContactFields) -> Result<(), ConnectorError> {
        let properties = contact_properties(fields);
        if properties.is_empty() {
            return Ok(());
        }
        let url = self.url(&["crm", "v3", "objects", "contacts", contact_id], &[])?;
        let _updated: SimpleObject = self.call(Method::PATCH, url, Some(&json!({"properties": properties}))).await?;
        Ok(())
    }

    async fn log_call(
        &self,
        contact_id: &str,
        call: &CallLog,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let associations = association(contact_id, self.association_type("calls", "contacts").await?);
        let (properties, disposition_guid) = call_properties(contact_id, call);
        let result = self.create_idempotent("calls", properties, associations.clone(), idempotency_key).await;
        match result {
            // A portal may have removed a default outcome: the outcome is in the body anyway, so
            // log the call without the disposition rather than not at all.
            Err(ConnectorError::Validation { fields, .. })
                if disposition_guid && fields.iter().any(|f| f == "hs_call_disposition") =>
            {
                let (mut properties, _) = call_properties(contact_id, call);
                properties.remove("hs_call_disposition");
                self.create_idempotent("calls", properties, associations, idempotency_key).await
            }
            other => other,
        }
    }

    /// `PATCH /crm/v3/objects/calls/{callId}` with the call's properties (calls guide,
    /// <https://developers.hubspot.com/docs/api-reference/legacy/crm/activities/calls/guide>
    /// "Update calls"). The callee association fields are left as written at create time.
    async fn update_call_log(&self, call_object_id: &str, call: &CallLog) -> Result<(), ConnectorError> {
        let (mut properties, _) = call_properties("", call);
        properties.remove("hs_call_callee_object_id");
        properties.remove("hs_call_callee_object_type");
        let url = self.url(&["crm", "v3", "objects", "calls", call_object_id], &[])?;
        let patch = |properties: Map<String, Value>| json!({"properties": properties});
        match self.call::<SimpleObject>(Method::PATCH, url.clone(), Some(&patch(properties.clone()))).await {
            Err(ConnectorError::Validation { fields, .. }) if fields.iter().any(|f| f == "hs_call_disposition") => {
                properties.remove("hs_call_disposition");
                let _: SimpleObject = self.call(Method::PATCH, url, Some(&patch(properties))).await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    async fn record_appointment(
        &self,
        contact_id: &str,
        appointment: &AppointmentRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let mut properties = Map::new();
        // hs_timestamp places the meeting on the timeline; "The value for this property should
        // match the value for hs_timestamp" (meetings guide, hs_meeting_start_time).
        properties.insert("hs_timestamp".into(), json!(appointment.start.to_string()));
        properties.insert("hs_meeting_title".into(), json!(appointment.title));
        properties.insert("hs_meeting_start_time".into(), json!(appointment.start.to_string()));
        properties.insert("hs_meeting_end_time".into(), json!(appointment.end.to_string()));
        properties.insert("hs_meeting_outcome".into(), json!("SCHEDULED"));
        if let Some(notes) = appointment.notes.as_deref().filter(|n| !n.trim().is_empty()) {
            properties.insert("hs_meeting_body".into(), json!(format!("<p>{}</p>", escape_html(notes))));
        }
        // The calendar event id is all we have (no URL for hs_meeting_external_url); kept where the
        // team can see it.
        properties.insert(
            "hs_internal_meeting_notes".into(),
            json!(format!("Booked by the AI receptionist. Calendar event: {}", appointment.calendar_event_id)),
        );
        let associations = association(contact_id, self.association_type("meetings", "contacts").await?);
        self.create_idempotent("meetings", properties, associations, idempotency_key).await
    }

    /// `email EQ <address>` (search filter values are case-insensitive), then an exact,
    /// case-insensitive comparison on our side.
    async fn find_contacts_by_email(&self, email: &str) -> Result<Vec<CrmContact>, ConnectorError> {
        let wanted = email.trim().to_lowercase();
        if wanted.is_empty() || !wanted.contains('@') {
            return Ok(Vec::new());
        }
        let body = json!({
            "filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": wanted}]}],
            "properties": CONTACT_PROPERTIES,
            "limit": SEARCH_LIMIT,
        });
        let found = self.search_contacts(body).await?;
        Ok(found
            .iter()
            .map(to_contact)
            .filter(|c| c.email.as_deref().is_some_and(|e| e.trim().to_lowercase() == wanted))
            .collect())
    }

    /// One group ANDing `lastname`, `zip` (and `firstname`) with `EQ`; the answer is re-checked on
    /// our side (names case- and space-insensitive, ZIPs by their first five characters).
    async fn find_contacts_by_name_zip(&self, query: &NameZipQuery) -> Result<Vec<CrmContact>, ConnectorError> {
        let last = query.last_name.trim();
        let zip = query.zip.trim();
        if last.is_empty() || zip.is_empty() {
            return Ok(Vec::new());
        }
        let mut filters = vec![
            json!({"propertyName": "lastname", "operator": "EQ", "value": last}),
            json!({"propertyName": "zip", "operator": "EQ", "value": zip}),
        ];
        let first = query.first_name.as_deref().map(str::trim).filter(|f| !f.is_empty());
        if let Some(first) = first {
            filters.push(json!({"propertyName": "firstname", "operator": "EQ", "value": first}));
        }
        let body = json!({
            "filterGroups": [{"filters": filters}],
            "properties": CONTACT_PROPERTIES,
            "limit": SEARCH_LIMIT,
        });
        let found = self.search_contacts(body).await?;
        let same = |a: Option<&str>, b: &str| a.is_some_and(|a| fold(a) == fold(b));
        Ok(found
            .iter()
            .map(to_contact)
            .filter(|c| same(c.last_name.as_deref(), last))
            .filter(|c| first.is_none_or(|f| same(c.first_name.as_deref(), f)))
            .filter(|c| c.zip.as_deref().is_some_and(|z| zip_key(z) == zip_key(zip)))
            .collect())
    }

    /// Checks each value against the property's definition (type, enumeration options) before
    /// sending, sends the rest in one `PATCH`, drops and reports any property HubSpot rejects and
    /// sends the others again, then reads the values back so a silently ignored one is reported.
    async fn update_properties(
        &self,
        contact_id: &str,
        writes: &[PropertyWrite],
    ) -> Result<Vec<PropertyWriteResult>, ConnectorError> {
        let mut results: Vec<PropertyWriteResult> = Vec::new();
        let mut pending: Map<String, Value> = Map::new();
        for write in writes {
            let def = self.property_def(&write.name).await?;
            match format_property(def.as_deref(), &write.value) {
                Ok(value) => {
                    pending.insert(write.name.clone(), Value::String(value));
                }
                Err(reason) => results.push(PropertyWriteResult {
                    name: write.name.clone(),
                    status: PropertyWriteStatus::Rejected { reason },
                }),
            }
        }
        while !pending.is_empty() {
            match self.patch_contact(contact_id, pending.clone()).await {
                Ok(()) => break,
                Err(ConnectorError::Validation { message, fields }) => {
                    let named: Vec<String> = fields.into_iter().filter(|f| pending.contains_key(f)).collect();
                    // Nothing we sent is named: the whole request was refused.
                    let refused = if named.is_empty() { pending.keys().cloned().collect() } else { named };
                    for name in refused {
                        pending.remove(&name);
                        results.push(PropertyWriteResult {
                            name,
                            status: PropertyWriteStatus::Rejected { reason: message.clone() },
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !pending.is_empty() {
            let names: Vec<&str> = pending.keys().map(String::as_str).collect();
            let stored = self.read_contact_props(contact_id, &names).await?;
            for (name, sent) in &pending {
                let sent = sent.as_str().unwrap_or_default();
                let now = stored.prop(name).unwrap_or_default();
                let status =
                    if same_value(sent, &now) { PropertyWriteStatus::Written } else { PropertyWriteStatus::Ignored };
                results.push(PropertyWriteResult { name: name.clone(), status });
            }
        }
        // Results in the order the writes were given.
        results.sort_by_key(|r| writes.iter().position(|w| w.name == r.name).unwrap_or(usize::MAX));
        Ok(results)
    }

    /// Reads `phone` and `mobilephone`; a number whose digits are already there is left alone,
    /// otherwise it goes into the first empty one. A filled property is never overwritten.
    async fn add_secondary_phone(&self, contact_id: &str, e164: &str) -> Result<SecondaryPhoneOutcome, ConnectorError> {
        let contact = self.read_contact_props(contact_id, &PHONE_PROPERTIES).await?;
        for name in PHONE_PROPERTIES {
            if contact.prop(name).is_some_and(|stored| same_phone(&stored, e164)) {
                return Ok(SecondaryPhoneOutcome::AlreadyPresent { property: name.to_string() });
            }
        }
        let Some(free) = PHONE_PROPERTIES.iter().find(|name| contact.prop(name).is_none()) else {
            return Ok(SecondaryPhoneOutcome::NoFreeSlot);
        };
        let mut properties = Map::new();
        properties.insert(free.to_string(), json!(e164));
        self.patch_contact(contact_id, properties).await?;
        Ok(SecondaryPhoneOutcome::Added { property: free.to_string() })
    }

    /// A note (`hs_timestamp`, `hs_note_body`) associated with the contact
    /// (<https://developers.hubspot.com/docs/api-reference/legacy/crm/activities/notes/guide>).
    async fn log_note(
        &self,
        contact_id: &str,
        note: &NoteRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let mut properties = Map::new();
        properties.insert("hs_timestamp".into(), json!(hubspot_datetime(note.at)));
        properties.insert("hs_note_body".into(), json!(format!("<p>{}</p>", escape_html(&note.body))));
        let associations = association(contact_id, self.association_type("notes", "contacts").await?);
        self.create_idempotent("notes", properties, associations, idempotency_key).await
    }

    /// A note associated with the ticket (the HubSpot-defined note→ticket type, from the labels
    /// endpoint like every association type).
    async fn log_ticket_note(
        &self,
        ticket_id: &str,
        note: &NoteRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let mut properties = Map::new();
        properties.insert("hs_timestamp".into(), json!(hubspot_datetime(note.at)));
        properties.insert("hs_note_body".into(), json!(format!("<p>{}</p>", escape_html(&note.body))));
        let associations = association(ticket_id, self.association_type("notes", "tickets").await?);
        self.create_idempotent("notes", properties, associations, idempotency_key).await
    }

    /// A task: `hs_timestamp` is its due date, `hs_task_status` starts `NOT_STARTED`, the owner in
    /// `hubspot_owner_id`
    /// (<https://developers.hubspot.com/docs/api-reference/legacy/crm/activities/tasks/guide>).
    async fn create_task(
        &self,
        contact_id: &str,
        task: &TaskRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let mut properties = Map::new();
        properties.insert("hs_timestamp".into(), json!(hubspot_datetime(task.due)));
        properties.insert("hs_task_subject".into(), json!(task.subject));
        if let Some(body) = task.body.as_deref().filter(|b| !b.trim().is_empty()) {
            properties.insert("hs_task_body".into(), json!(format!("<p>{}</p>", escape_html(body))));
        }
        properties.insert("hs_task_status".into(), json!("NOT_STARTED"));
        properties.insert("hs_task_type".into(), json!("TODO"));
        if let Some(priority) = task.priority.as_deref() {
            let priority = priority.trim().to_ascii_uppercase();
            if !matches!(priority.as_str(), "LOW" | "MEDIUM" | "HIGH") {
                return Err(ConnectorError::Validation {
                    message: format!("task priority {priority} is not LOW, MEDIUM or HIGH"),
                    fields: vec!["hs_task_priority".into()],
                });
            }
            properties.insert("hs_task_priority".into(), json!(priority));
        }
        if let Some(owner) = task.owner_id.as_deref().filter(|o| !o.is_empty()) {
            properties.insert("hubspot_owner_id".into(), json!(owner));
        }
        let associations = association(contact_id, self.association_type("tasks", "contacts").await?);
        self.create_idempotent("tasks", properties, associations, idempotency_key).await
    }

    /// Reads the deal's pipeline, resolves the stage (id or label) in that pipeline's definition
    /// and patches `dealstage`. A stage the pipeline does not have is a validation error.
    async fn set_deal_stage(&self, deal_id: &str, stage: &str) -> Result<(), ConnectorError> {
        let url = self.url(&["crm", "v3", "objects", "deals", deal_id], &[("properties", "pipeline,dealstage")])?;
        let deal: SimpleObject = self.call(Method::GET, url, None).await?;
        let pipeline = deal.prop("pipeline");
        let mut resolved = self.stage_index(false).await?.resolve(pipeline.as_deref(), stage);
        if resolved.is_none() {
            resolved = self.stage_index(true).await?.resolve(pipeline.as_deref(), stage);
        }
        let Some(stage_id) = resolved else {
            return Err(ConnectorError::Validation {
                message: format!("the deal's pipeline has no stage {stage}"),
                fields: vec!["dealstage".into()],
            });
        };
        if deal.prop("dealstage").as_deref() == Some(stage_id.as_str()) {
            return Ok(());
        }
        let url = self.url(&["crm", "v3", "objects", "deals", deal_id], &[])?;
        let body = json!({"properties": {"dealstage": stage_id}});
        let _updated: SimpleObject = self.call(Method::PATCH, url, Some(&body)).await?;
        Ok(())
    }

    /// `GET /crm/v3/objects/contacts/{id}?propertiesWithHistory=...`: every version with its
    /// `sourceType`, `sourceId` and `updatedByUserId` (objects guide, "Retrieve records").
    /// `lastmodifieddate GTE since`, sorted ascending, 100 per page, followed with `after`.
    /// Search caps one query at 10,000 results (paging past it is a 400), so the caller restarts
    /// from the newest time seen before that (the search guide, Limits:
    /// <https://developers.hubspot.com/docs/api-reference/legacy/crm/search-the-crm>). The filter value is
    /// epoch milliseconds, which datetime filters accept.
    async fn contacts_changed_since(
        &self,
        since: Option<Timestamp>,
        cursor: Option<&str>,
    ) -> Result<ContactPage, ConnectorError> {
        let mut properties: Vec<&str> = CONTACT_PROPERTIES.to_vec();
        properties.push("lastmodifieddate");
        let mut body = json!({
            "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
            "properties": properties,
            "limit": PULL_PAGE,
        });
        if let Some(since) = since {
            body["filterGroups"] = json!([{"filters": [
                {"propertyName": "lastmodifieddate", "operator": "GTE", "value": since.as_millisecond().to_string()}
            ]}]);
        }
        if let Some(after) = cursor {
            body["after"] = json!(after);
        }
        let page = self.search_contacts_page(body).await?;
        let newest =
            page.results.iter().filter_map(|o| o.prop("lastmodifieddate")).filter_map(|v| parse_hubspot_time(&v)).max();
        let next_cursor = page
            .paging
            .and_then(|p| p.next)
            .map(|n| n.after)
            .filter(|a| a.parse::<u64>().map_or(true, |n| n + u64::from(PULL_PAGE) <= SEARCH_RESULT_CAP));
        Ok(ContactPage { contacts: page.results.iter().map(to_contact).collect(), newest, next_cursor })
    }

    /// Contacts archived (deleted) or merged away at or after `since`:
    ///
    /// - archived: `GET /crm/v3/objects/contacts?archived=true`, 100 a page with `after`, kept
    ///   where `archivedAt` is at or after `since` (the list has no time filter; archived
    ///   contacts can be restored for 90 days, then they are gone from it —
    ///   <https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/delete-contacts>
    ///   — so a window older than that answers `complete: false`);
    /// - merged: a search for contacts changed since `since` that carry `hs_merged_object_ids`
    ///   (the ids merged into them, `;`-separated): each of those ids is merged into the result.
    ///   A merge changes the primary record, so it is in the window. (Merges through
    ///   `POST /crm/v3/objects/contacts/merge`,
    ///   <https://developers.hubspot.com/docs/api-reference/crm-contacts-v3/basic/post-crm-v3-objects-contacts-merge>.)
    async fn contacts_removed_since(
        &self,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<RemovedPage>, ConnectorError> {
        if now.duration_since(since) > jiff::SignedDuration::from_hours(ARCHIVE_RETENTION_DAYS * 24) {
            return Ok(Some(RemovedPage { removed: Vec::new(), covered_until: Some(now), complete: false }));
        }
        let mut removed = Vec::new();
        let mut after: Option<String> = None;
        let mut listed_all = false;
        for _ in 0..MAX_REMOVAL_PAGES {
            let limit = PULL_PAGE.to_string();
            let mut query = vec![("archived", "true"), ("limit", limit.as_str())];
            if let Some(after) = after.as_deref() {
                query.push(("after", after));
            }
            let url = self.url(&["crm", "v3", "objects", "contacts"], &query)?;
            let page: ArchivedList = self.call(Method::GET, url, None).await?;
            for object in page.results {
                let at = object.archived_at.as_deref().and_then(parse_hubspot_time);
                if at.is_none_or(|at| at >= since) {
                    removed.push(RemovedContact { id: object.id, merged_into: None });
                }
            }
            after = page.paging.and_then(|p| p.next).map(|n| n.after);
            if after.is_none() {
                listed_all = true;
                break;
            }
        }
        let mut after: Option<String> = None;
        loop {
            let mut body = json!({
                "filterGroups": [{"filters": [
                    {"propertyName": "lastmodifieddate", "operator": "GTE", "value": since.as_millisecond().to_string()},
                    {"propertyName": "hs_merged_object_ids", "operator": "HAS_PROPERTY"},
                ]}],
                "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "properties": ["hs_merged_object_ids", "lastmodifieddate"],
                "limit": PULL_PAGE,
            });
            if let Some(after) = after.as_deref() {
                body["after"] = json!(after);
            }
            let page = self.search_contacts_page(body).await?;
            for primary in &page.results {
                let merged = primary.prop("hs_merged_object_ids").unwrap_or_default();
                for id in merged.split(';').map(str::trim).filter(|id| !id.is_empty() && *id != primary.id) {
                    removed.push(RemovedContact { id: id.to_owned(), merged_into: Some(primary.id.clone()) });
                }
            }
            after = page
                .paging
                .and_then(|p| p.next)
                .map(|n| n.after)
                .filter(|a| a.parse::<u64>().map_or(true, |n| n + u64::from(PULL_PAGE) <= SEARCH_RESULT_CAP));
            if after.is_none() {
                break;
            }
        }
        // More archived contacts than the page bound: the pull re-lists everything instead.
        Ok(Some(RemovedPage { removed, covered_until: Some(now), complete: listed_all }))
    }

    async fn property_history(
        &self,
        contact_id: &str,
        properties: &[String],
    ) -> Result<Vec<PropertyHistory>, ConnectorError> {
        if properties.is_empty() {
            return Ok(Vec::new());
        }
        let names = properties.join(",");
        let url = self.url(
            &["crm", "v3", "objects", "contacts", contact_id],
            &[("properties", &names), ("propertiesWithHistory", &names)],
        )?;
        let object: HistoryObject = self.call(Method::GET, url, None).await?;
        Ok(to_histories(properties, object))
    }

    /// `GET /crm/v3/objects/{type}/{id}?propertiesWithHistory=...` for any object type.
    async fn object_history(
        &self,
        object: CrmObjectType,
        id: &str,
        properties: &[String],
    ) -> Result<Vec<PropertyHistory>, ConnectorError> {
        if properties.is_empty() {
            return Ok(Vec::new());
        }
        let names = properties.join(",");
        let url = self.url(
            &["crm", "v3", "objects", object_path(object), id],
            &[("properties", &names), ("propertiesWithHistory", &names)],
        )?;
        let found: HistoryObject = self.call(Method::GET, url, None).await?;
        Ok(to_histories(properties, found))
    }

    /// A deal in the default pipeline (`appointmentscheduled` unless a stage is given), associated
    /// with the contact (deals guide: `POST /crm/v3/objects/deals` with `associations`). The
    /// idempotency property is defined on the objects the write-back creates, not on deals, so
    /// the key is not sent: only the pilot seeds deals, once per run, and deletes them after.
    async fn create_deal(
        &self,
        contact_id: &str,
        deal: &DealRecord,
        _idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let mut properties = Map::new();
        properties.insert("dealname".into(), json!(deal.name));
        properties.insert("pipeline".into(), json!("default"));
        properties.insert("dealstage".into(), json!(deal.stage.as_deref().unwrap_or("appointmentscheduled")));
        if let Some(amount) = &deal.amount {
            properties.insert("amount".into(), json!(amount));
        }
        let associations = association(contact_id, self.association_type("deals", "contacts").await?);
        let url = self.url(&["crm", "v3", "objects", "deals"], &[])?;
        let body = json!({"properties": properties, "associations": associations});
        let created: SimpleObject = self.call(Method::POST, url, Some(&body)).await?;
        Ok(created.id)
    }

    /// `DELETE /crm/v3/objects/{type}/{id}` archives the object and answers 204 (objects guide,
    /// "Delete records"); an object already gone answers 404, which is success here.
    /// `GET /crm/v3/objects/meetings/{id}` with `hs_meeting_outcome` and its history. The
    /// outcome is an enumeration (meetings guide, "hs_meeting_outcome": `SCHEDULED`,
    /// `COMPLETED`, `RESCHEDULED`, `NO_SHOW`, `CANCELED` —
    /// https://developers.hubspot.com/docs/api-reference/latest/crm/activities/meetings/guide.md);
    /// a portal can add its own outcomes, which say nothing here. When it was set to `CANCELED`
    /// comes from the property's history (the newest version with that value). A `custom`
    /// field is never read: config validation refuses one for HubSpot.
    async fn appointment_status(
        &self,
        object_id: &str,
        _outcome_field: Option<&str>,
    ) -> Result<CrmAppointmentStatus, ConnectorError> {
        let url = self.url(
            &["crm", "v3", "objects", "meetings", object_id],
            &[("properties", MEETING_OUTCOME), ("propertiesWithHistory", MEETING_OUTCOME)],
        )?;
        let meeting: MeetingOutcomeObject = self.call(Method::GET, url, None).await?;
        let value = meeting.properties.get(MEETING_OUTCOME).cloned().flatten().unwrap_or_default();
        Ok(match value.as_str() {
            "COMPLETED" => CrmAppointmentStatus::Attended,
            "NO_SHOW" => CrmAppointmentStatus::NoShow,
            "RESCHEDULED" => CrmAppointmentStatus::Rescheduled,
            "CANCELED" => {
                let at = meeting
                    .properties_with_history
                    .get(MEETING_OUTCOME)
                    .into_iter()
                    .flatten()
                    .filter(|v| v.value.as_deref() == Some("CANCELED"))
                    .filter_map(|v| parse_hubspot_time(v.timestamp.as_deref()?))
                    .max();
                CrmAppointmentStatus::Cancelled { at }
            }
            _ => CrmAppointmentStatus::NotYetKnown,
        })
    }

    async fn delete_object(&self, object: CrmObjectType, id: &str) -> Result<(), ConnectorError> {
        let url = self.url(&["crm", "v3", "objects", object_path(object), id], &[])?;
        let raw = self.send(Method::DELETE, url, None).await?;
        if raw.status.is_success() || raw.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(classify(&raw, self.clock.now()))
    }
}

/// HubSpot's object type path segment.
fn object_path(object: CrmObjectType) -> &'static str {
    match object {
        CrmObjectType::Contact => "contacts",
        CrmObjectType::Deal => "deals",
        CrmObjectType::Call => "calls",
        CrmObjectType::Meeting => "meetings",
        CrmObjectType::Note => "notes",
        CrmObjectType::Task => "tasks",
    }
}

// ----- request building -------------------------------------------------------------------------

/// The phone forms matched against the raw `phone`/`mobilephone` strings.
fn phone_forms(phone: &PhoneQuery) -> Vec<String> {
    let e164 = phone.e164.trim();
    let national = phone.national.trim();
    let mut forms = vec![e164.to_string(), national.to_string()];
    let is_nanp = e164.strip_prefix("+1").is_some_and(|rest| rest == national)
        && national.len() == 10
        && national.bytes().all(|b| b.is_ascii_digit());
    if is_nanp {
        let (area, exchange, line) = (&national[..3], &national[3..6], &national[6..]);
        forms.extend([
            format!("({area}) {exchange}-{line}"),
            format!("{area}-{exchange}-{line}"),
            format!("+1 {area} {exchange} {line}"),
            format!("+1 ({area}) {exchange}-{line}"),
            format!("1{national}"),
        ]);
    }
    let mut seen = HashSet::new();
    forms.retain(|f| !f.is_empty() && seen.insert(f.clone()));
    forms
}

fn contact_properties(fields: &ContactFields) -> Map<String, Value> {
    let mut properties = Map::new();
    let mut put = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            properties.insert(name.to_string(), Value::String(v.clone()));
        }
    };
    put("firstname", &fields.first_name);
    put("lastname", &fields.last_name);
    put("email", &fields.email);
    put("phone", &fields.phone);
    put("zip", &fields.zip);
    put(SOURCE_PROPERTY, &fields.source);
    properties
}

fn association(contact_id: &str, type_id: u32) -> Value {
    json!([{
        "to": {"id": contact_id},
        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
    }])
}

/// HubSpot's default call outcomes, whose internal values are GUIDs ("To set the call
/// disposition, you need to use the internal GUID value", calls guide). Custom outcomes have
/// per-portal GUIDs we do not look up: those stay in the call body only.
fn disposition_guid(label: &str) -> Option<&'static str> {
    let normalized: String =
        label.trim().to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    match normalized.as_str() {
        "busy" => Some("9d9162e7-6cf3-4944-bf63-4dff82258764"),
        "connected" | "answered" => Some("f240bbac-87c9-4f6e-bf70-924b57d47db7"),
        "left_live_message" => Some("a4c4c377-d246-4b32-a13b-75a56a4cd0ff"),
        "left_voicemail" | "voicemail" => Some("b2cf5968-551e-4856-9783-52b3da59a7d0"),
        "no_answer" => Some("73a0d17f-1163-4015-bdd5-ec830791da20"),
        "wrong_number" => Some("17b47fee-58de-441e-a44c-c6300d46f273"),
        _ => None,
    }
}

/// The call's properties, and whether a disposition GUID was set. `hs_call_source` is left
/// unset: it is only for HubSpot's recording-transcription pipeline (`INTEGRATIONS_PLATFORM`).
/// There is no transcript property, so the transcript link goes into the body; a recording URL
/// that is not HTTPS (HubSpot accepts only HTTPS there) goes into the body too.
fn call_properties(contact_id: &str, call: &CallLog) -> (Map<String, Value>, bool) {
    let mut properties = Map::new();
    properties.insert("hs_timestamp".into(), json!(call.started_at.as_millisecond().to_string()));
    properties.insert("hs_call_title".into(), json!(format!("Inbound call ({})", call.source)));
    properties.insert("hs_call_direction".into(), json!("INBOUND"));
    properties.insert("hs_call_status".into(), json!("COMPLETED"));
    properties.insert("hs_call_duration".into(), json!(call.duration_secs.saturating_mul(1000).to_string()));
    properties.insert("hs_call_to_number".into(), json!(call.to));
    if let Some(from) = call.from.as_deref().filter(|f| !f.is_empty()) {
        properties.insert("hs_call_from_number".into(), json!(from));
    }
    // For INBOUND calls the callee object is the dialer's record (calls guide).
    properties.insert("hs_call_callee_object_id".into(), json!(contact_id));
    properties.insert("hs_call_callee_object_type".into(), json!("CONTACT"));

    let mut body = vec![format!("<p>{}</p>", escape_html(&call.summary))];
    let mut guid_set = false;
    if let Some(disposition) = call.disposition.as_deref().filter(|d| !d.trim().is_empty()) {
        if let Some(guid) = disposition_guid(disposition) {
            properties.insert("hs_call_disposition".into(), json!(guid));
            guid_set = true;
        }
        body.push(format!("<p>Outcome: {}</p>", escape_html(disposition)));
    }
    if let Some(recording) = call.recording_url.as_deref().filter(|u| !u.is_empty()) {
        if recording.starts_with("https://") {
            properties.insert("hs_call_recording_url".into(), json!(recording));
        } else {
            body.push(format!("<p>Recording: {}</p>", escape_html(recording)));
        }
    }
    if let Some(transcript) = call.transcript_url.as_deref().filter(|u| !u.is_empty()) {
        let url = escape_html(transcript);
        body.push(format!("<p>Transcript: <a href=\"{url}\">{url}</a></p>"));
    }
    body.push(format!("<p>Call id: {}</p>", escape_html(&call.call_id)));
    properties.insert("hs_call_body".into(), json!(body.concat()));
    (properties, guid_set)
}

/// HubSpot renders engagement bodies as HTML.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

fn to_contact(object: &SimpleObject) -> CrmContact {
    let mut phones = Vec::new();
    for name in ["phone", "mobilephone"] {
        if let Some(p) = object.prop(name)
            && !phones.contains(&p)
        {
            phones.push(p);
        }
    }
    CrmContact {
        id: object.id.clone(),
        first_name: object.prop("firstname"),
        last_name: object.prop("lastname"),
        email: object.prop("email"),
        phones,
        zip: object.prop("zip"),
        owner_id: object.prop("hubspot_owner_id"),
        lifecycle_stage: object.prop("lifecyclestage"),
        updated_at: object.updated_at.as_deref().and_then(parse_hubspot_time),
    }
}

/// HubSpot datetimes are written as ISO 8601 in UTC with milliseconds
/// (<https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/guide>, "datetime").
fn hubspot_datetime(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A datetime as HubSpot returns it: ISO 8601, or epoch milliseconds in older properties.
fn parse_hubspot_time(value: &str) -> Option<Timestamp> {
    value
        .parse::<Timestamp>()
        .ok()
        .or_else(|| value.parse::<i64>().ok().and_then(|ms| Timestamp::from_millisecond(ms).ok()))
}

/// Plain text of an engagement body (HubSpot stores HTML), bounded.
fn summarize(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'");
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&collapsed, ACTIVITY_SUMMARY_CHARS)
}

fn fold(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// ZIPs compare by their first five alphanumerics (US ZIP+4 equals its ZIP), case-insensitive.
fn zip_key(zip: &str) -> String {
    zip.chars().filter(char::is_ascii_alphanumeric).take(5).collect::<String>().to_ascii_uppercase()
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Two phone strings are the same number when their digits agree, allowing one to carry a
/// country code the other omits (`(415) 555-0134` vs `+14155550134`).
fn same_phone(a: &str, b: &str) -> bool {
    let (a, b) = (digits(a), digits(b));
    if a.len() < 7 || b.len() < 7 {
        return !a.is_empty() && a == b;
    }
    a == b || a.ends_with(&b) || b.ends_with(&a)
}

/// Whether the value read back is the value sent (numbers compare numerically, an empty value
/// means cleared).
fn same_value(sent: &str, stored: &str) -> bool {
    if sent == stored {
        return true;
    }
    match (sent.parse::<f64>(), stored.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => match (parse_hubspot_time(sent), parse_hubspot_time(stored)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
    }
}

/// Formats a typed value for a property per its definition, or says why it cannot be written.
/// Dates: "date" properties hold midnight UTC and take `YYYY-MM-DD`; "datetime" properties take
/// ISO 8601 (properties guide, "Property type and fieldType values").
fn format_property(def: Option<&PropertyDef>, value: &PropertyValue) -> Result<String, String> {
    let Some(def) = def else {
        return Err("the CRM has no such property".into());
    };
    if def.modification_metadata.as_ref().is_some_and(|m| m.read_only_value) || def.calculated {
        return Err("the property is read-only (calculated by the CRM)".into());
    }
    let kind = def.kind.as_str();
    let enumeration = |v: &str| -> Result<String, String> {
        if def.options.iter().any(|o| o.value == v) {
            return Ok(v.to_string());
        }
        // A label is accepted and mapped to its internal value.
        def.options.iter().find(|o| o.label.eq_ignore_ascii_case(v.trim())).map(|o| o.value.clone()).ok_or_else(|| {
            let allowed: Vec<&str> = def.options.iter().map(|o| o.value.as_str()).collect();
            format!("{v} is not one of the allowed options: [{}]", allowed.join(", "))
        })
    };
    match (value, kind) {
        (PropertyValue::Clear, _) => Ok(String::new()),
        (PropertyValue::Enumeration(v) | PropertyValue::Text(v), "enumeration") => enumeration(v),
        (PropertyValue::Bool(b), "enumeration" | "bool") => enumeration(&b.to_string()).or(Ok(b.to_string())),
        (PropertyValue::Enumeration(_), other) => Err(format!("the property is {other}, not an enumeration")),
        (PropertyValue::Number(n), "number") => Ok(n.to_string()),
        (PropertyValue::Text(t), "number") => {
            t.trim().parse::<f64>().map(|_| t.trim().to_string()).map_err(|_| format!("{t} is not a number"))
        }
        (PropertyValue::Date(d), "date") => Ok(d.to_string()),
        (PropertyValue::Date(d), "datetime") => jiff::tz::TimeZone::UTC
            .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .map(hubspot_datetime)
            .map_err(|e| format!("{d} cannot be written: {e}")),
        (PropertyValue::DateTime(t), "datetime") => Ok(hubspot_datetime(*t)),
        (PropertyValue::DateTime(t), "date") => Ok(jiff::tz::TimeZone::UTC.to_datetime(*t).date().to_string()),
        (PropertyValue::Text(t), "string" | "phone_number") => Ok(t.clone()),
        // Text in the property's own stored form (an undo restoring a value read from history).
        (PropertyValue::Text(t), "datetime") => {
            parse_hubspot_time(t.trim()).map(hubspot_datetime).ok_or_else(|| format!("{t} is not a datetime"))
        }
        (PropertyValue::Text(t), "date") => {
            t.trim().parse::<jiff::civil::Date>().map(|d| d.to_string()).map_err(|_| format!("{t} is not a date"))
        }
        (PropertyValue::Number(n), "string") => Ok(n.to_string()),
        (value, kind) => Err(format!("a {} value cannot be written to a {kind} property", value_kind(value))),
    }
}

fn value_kind(value: &PropertyValue) -> &'static str {
    match value {
        PropertyValue::Text(_) => "text",
        PropertyValue::Number(_) => "number",
        PropertyValue::Bool(_) => "boolean",
        PropertyValue::Date(_) => "date",
        PropertyValue::DateTime(_) => "datetime",
        PropertyValue::Enumeration(_) => "enumeration",
        PropertyValue::Clear => "empty",
    }
}

/// The HubSpot-defined association type without a label (the default association), else the
/// first HubSpot-defined one. User-defined labels may reuse HubSpot's type ids, so the category
/// must be checked too.
fn unlabeled_type(labels: &LabelsResponse) -> Option<u32> {
    let defined = |l: &&AssociationLabel| l.category.as_deref() == Some("HUBSPOT_DEFINED");
    labels
        .results
        .iter()
        .filter(defined)
        .find(|l| l.label.as_deref().is_none_or(str::is_empty))
        .or_else(|| labels.results.iter().find(defined))
        .map(|l| l.type_id)
}

fn to_histories(properties: &[String], object: HistoryObject) -> Vec<PropertyHistory> {
    properties
        .iter()
        .map(|name| {
            let mut versions: Vec<PropertyVersion> = object
                .properties_with_history
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    Some(PropertyVersion {
                        value: v.value.clone().unwrap_or_default(),
                        timestamp: parse_hubspot_time(v.timestamp.as_deref()?)?,
                        source_type: v.source_type.clone().unwrap_or_default(),
                        source_id: v.source_id.clone(),
                        updated_by_user_id: v.updated_by_user_id.as_ref().and_then(|u| match u {
                            Value::Number(n) => Some(n.to_string()),
                            Value::String(s) if !s.is_empty() => Some(s.clone()),
                            _ => None,
                        }),
                    })
                })
                .collect();
            versions.sort_by_key(|v| std::cmp::Reverse(v.timestamp));
            PropertyHistory { name: name.clone(), versions }
        })
        .collect()
}

// ----- response types -----------------------------------------------------------------------------

use crate::connectors::Raw;

/// Ids are strings in v3 responses and numbers in v4 ones.
fn id_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("unexpected id {other}"))),
    }
}

/// A CRM record as the v3 object APIs return it.
#[derive(Debug, Deserialize)]
struct SimpleObject {
    #[serde(deserialize_with = "id_string")]
    id: String,
    #[serde(default)]
    properties: HashMap<String, Value>,
    #[serde(default)]
    associations: HashMap<String, AssociationList>,
    /// The record's last change (`updatedAt` of v3 object and search responses).
    #[serde(default, rename = "updatedAt")]
    updated_at: Option<String>,
}

impl SimpleObject {
    /// A property's value; absent, `null` and empty all mean "no value".
    fn prop(&self, name: &str) -> Option<String> {
        match self.properties.get(name)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Associated record ids of one type (`deals`, ...), from `?associations=`.
    fn associated(&self, to: &str) -> Vec<String> {
        self.associations
            .iter()
            .filter(|(k, _)| {
                k.eq_ignore_ascii_case(to) || k.trim_end_matches('s').eq_ignore_ascii_case(to.trim_end_matches('s'))
            })
            .flat_map(|(_, list)| list.results.iter().map(|r| r.id.clone()))
            .collect()
    }
}

#[derive(Debug, Default, Deserialize)]
struct AssociationList {
    #[serde(default)]
    results: Vec<AssociationRef>,
}

#[derive(Debug, Deserialize)]
struct AssociationRef {
    #[serde(deserialize_with = "id_string")]
    id: String,
}

#[derive(Debug, Deserialize)]
struct SearchResponse {
    #[serde(default)]
    total: u64,
    #[serde(default)]
    results: Vec<SimpleObject>,
    #[serde(default)]
    paging: Option<SearchPaging>,
}

#[derive(Debug, Deserialize)]
struct SearchPaging {
    next: Option<SearchNext>,
}

#[derive(Debug, Deserialize)]
struct SearchNext {
    after: String,
}

/// `GET /crm/v3/objects/contacts?archived=true`: the archived records, with when.
#[derive(Debug, Deserialize)]
struct ArchivedList {
    #[serde(default)]
    results: Vec<ArchivedObject>,
    #[serde(default)]
    paging: Option<SearchPaging>,
}

#[derive(Debug, Deserialize)]
struct ArchivedObject {
    #[serde(deserialize_with = "id_string")]
    id: String,
    #[serde(default, rename = "archivedAt")]
    archived_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BatchResponse {
    #[serde(default)]
    results: Vec<SimpleObject>,
}

#[derive(Debug, Deserialize)]
struct PipelinesResponse {
    #[serde(default)]
    results: Vec<PipelineDef>,
}

#[derive(Debug, Deserialize)]
struct PipelineDef {
    id: String,
    #[serde(default)]
    stages: Vec<StageDef>,
}

#[derive(Debug, Deserialize)]
struct StageDef {
    id: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    metadata: StageMetadata,
}

#[derive(Debug, Default, Deserialize)]
struct StageMetadata {
    #[serde(rename = "isClosed")]
    is_closed: Option<String>,
}

/// `GET /crm/v3/owners/{ownerId}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnerResponse {
    #[serde(deserialize_with = "id_string")]
    id: String,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LabelsResponse {
    #[serde(default)]
    results: Vec<AssociationLabel>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssociationLabel {
    category: Option<String>,
    type_id: u32,
    label: Option<String>,
}

/// A property definition from the properties API.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PropertyDef {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    options: Vec<PropertyOption>,
    #[serde(default)]
    calculated: bool,
    modification_metadata: Option<ModificationMetadata>,
}

#[derive(Debug, Deserialize)]
struct PropertyOption {
    label: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModificationMetadata {
    #[serde(default)]
    read_only_value: bool,
}

const MEETING_OUTCOME: &str = "hs_meeting_outcome";

/// A meeting read for its outcome: `id` and `properties` are required, so an answer without them
/// is unreadable (an error), never "no outcome yet".
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeetingOutcomeObject {
    #[allow(dead_code)]
    id: String,
    properties: HashMap<String, Option<String>>,
    #[serde(default)]
    properties_with_history: HashMap<String, Vec<HistoryVersion>>,
}

/// A record read with `propertiesWithHistory`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryObject {
    #[serde(default)]
    properties_with_history: HashMap<String, Vec<HistoryVersion>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryVersion {
    value: Option<String>,
    timestamp: Option<String>,
    source_type: Option<String>,
    source_id: Option<String>,
    updated_by_user_id: Option<Value>,
}

/// HubSpot's error body. "The fields in the example response above should all be treated as
/// optional in any error parsing" (error-handling guide), so every field is.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    message: Option<String>,
    category: Option<String>,
    policy_name: Option<String>,
    error_type: Option<String>,
    #[serde(default)]
    errors: Vec<ErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    message: Option<String>,
    #[serde(rename = "in")]
    location: Option<String>,
    #[serde(default)]
    context: HashMap<String, Value>,
}

/// One entry of the JSON list embedded in `Property values were not valid: [...]`.
#[derive(Debug, Deserialize)]
struct PropertyProblem {
    name: Option<String>,
    error: Option<String>,
}

impl ErrorBody {
    fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }

    fn all_messages(&self) -> impl Iterator<Item = &str> {
        self.message.as_deref().into_iter().chain(self.errors.iter().filter_map(|e| e.message.as_deref()))
    }

    fn mentions(&self, property: &str) -> bool {
        self.all_messages().any(|m| m.contains(property))
            || self.errors.iter().any(|e| e.location.as_deref() == Some(property))
            || self.property_names().iter().any(|p| p == property)
    }

    /// The id in HubSpot's `... Existing ID: 123` conflict messages.
    fn existing_id(&self) -> Option<String> {
        self.all_messages().find_map(|m| {
            let rest = &m[m.find("Existing ID:")? + "Existing ID:".len()..];
            let digits: String = rest.trim_start().chars().take_while(char::is_ascii_digit).collect();
            (!digits.is_empty()).then_some(digits)
        })
    }

    fn embedded_problems(&self) -> Vec<PropertyProblem> {
        let Some(message) = self.message.as_deref() else {
            return Vec::new();
        };
        let Some(start) = message.find('[') else {
            return Vec::new();
        };
        if !message[..start].contains("not valid") {
            return Vec::new();
        }
        let mut stream = serde_json::Deserializer::from_str(&message[start..]).into_iter::<Vec<PropertyProblem>>();
        stream.next().and_then(Result::ok).unwrap_or_default()
    }

    /// Property names the error is about: `errors[].context.propertyName` (documented),
    /// `errors[].in`, and the `name`s in the embedded `Property values were not valid` list.
    fn property_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut add = |name: &str| {
            if !name.is_empty() && name != "body" && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        };
        for error in &self.errors {
            match error.context.get("propertyName") {
                Some(Value::Array(values)) => values.iter().filter_map(Value::as_str).for_each(&mut add),
                Some(Value::String(name)) => add(name),
                _ => {}
            }
            if let Some(location) = error.location.as_deref() {
                add(location);
            }
        }
        for problem in self.embedded_problems() {
            if let Some(name) = problem.name.as_deref() {
                add(name);
            }
        }
        names
    }

    /// A message fit for logs: the embedded per-property list (which echoes the rejected values)
    /// is replaced by property names and error codes, and the length is capped.
    fn summary(&self, status: StatusCode) -> String {
        let problems = self.embedded_problems();
        let text = if !problems.is_empty() {
            let listed: Vec<String> = problems
                .iter()
                .map(|p| format!("{} ({})", p.name.as_deref().unwrap_or("?"), p.error.as_deref().unwrap_or("invalid")))
                .collect();
            format!("Property values were not valid: {}", listed.join(", "))
        } else {
            match self.message.as_deref().filter(|m| !m.trim().is_empty()) {
                Some(m) => m.to_string(),
                None => format!("HTTP {}", status.as_u16()),
            }
        };
        truncate(&text, MAX_MESSAGE_CHARS)
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Maps a non-2xx answer to a [`ConnectorError`].
fn classify(raw: &Raw, now: Timestamp) -> ConnectorError {
    let status = raw.status;
    let error = ErrorBody::parse(&raw.body);
    let summary = error.summary(status);
    match status.as_u16() {
        429 => {
            let policy = error.policy_name.clone().or_else(|| error.error_type.clone());
            let retry_after =
                raw.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now));
            // An exhausted rolling window frees up within its interval; the daily limit does not
            // (it resets at midnight in the portal's time zone, which we do not know).
            let window = (policy.as_deref() != Some("DAILY")
                && header_u64(&raw.headers, "x-hubspot-ratelimit-remaining") == Some(0))
            .then(|| header_u64(&raw.headers, "x-hubspot-ratelimit-interval-milliseconds"))
            .flatten()
            .map(Duration::from_millis);
            let secondly = (header_u64(&raw.headers, "x-hubspot-ratelimit-secondly-remaining") == Some(0))
                .then_some(Duration::from_secs(1));
            ConnectorError::RateLimited {
                retry_after: longest([retry_after, window, secondly]),
                detail: policy.unwrap_or_else(|| "RATE_LIMIT".into()),
            }
        }
        401 => {
            let expired = error.category.as_deref() == Some("EXPIRED_AUTHENTICATION")
                || error.message.as_deref().is_some_and(|m| m.to_ascii_lowercase().contains("expired"));
            if expired {
                ConnectorError::AuthExpired
            } else {
                // A token HubSpot does not know (revoked, uninstalled app, rotated private-app
                // token): refreshing will not help, the connection must be re-authorized.
                ConnectorError::AuthRevoked(summary)
            }
        }
        // Missing scopes: only re-authorizing with the scopes fixes it.
        403 => ConnectorError::AuthRevoked(format!("forbidden: {summary}")),
        404 => ConnectorError::NotFound(summary),
        409 => ConnectorError::Conflict { message: summary, existing_id: error.existing_id() },
        // "Locks will last for 2 seconds" (error-handling guide).
        423 => ConnectorError::RateLimited { retry_after: Some(Duration::from_secs(2)), detail: "LOCKED".into() },
        // Account migration between data centers; HubSpot sends Retry-After.
        477 => ConnectorError::RateLimited {
            retry_after: raw
                .headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now)),
            detail: "MIGRATION_IN_PROGRESS".into(),
        },
        400 | 422 => ConnectorError::Validation { message: summary, fields: error.property_names() },
        408 | 500..=599 => ConnectorError::Transient(format!(
            "HubSpot answered HTTP {}{}",
            status.as_u16(),
            error.category.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
        )),
        _ => ConnectorError::Permanent(format!("HTTP {}: {summary}", status.as_u16())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::connectors::http_client;
    use crate::sandbox::hubspot::{HubSpotSandbox, InjectedFailure, ObjectType, RouteKind};

    const TOKEN: &str = "pat-na1-test-token";

    fn connector(sandbox: &HubSpotSandbox) -> HubSpotConnector {
        connector_with_token(sandbox, TOKEN)
    }

    fn connector_with_token(sandbox: &HubSpotSandbox, token: &str) -> HubSpotConnector {
        HubSpotConnector::new(sandbox.base_url(), SecretString::from(token.to_string()), http_client())
    }

    fn query() -> PhoneQuery {
        PhoneQuery { e164: "+14155550134".into(), national: "4155550134".into() }
    }

    fn call_log() -> CallLog {
        CallLog {
            call_id: "call-1".into(),
            started_at: "2026-11-23T14:00:00Z".parse().unwrap(),
            duration_secs: 125,
            from: Some("+14155550134".into()),
            to: "+14155550100".into(),
            summary: "Caller asked for a <quote> & booked a visit.".into(),
            disposition: Some("connected".into()),
            recording_url: Some("https://recordings.example.com/call-1.wav".into()),
            transcript_url: Some("https://app.example.com/calls/call-1/transcript".into()),
            source: "AI receptionist".into(),
        }
    }

    /// Removals (issue 12): archived contacts from the archived list (every page, `archivedAt`
    /// at or after the window's start), merged ones from the primary's `hs_merged_object_ids`;
    /// a window older than the 90 days HubSpot keeps archived contacts is incomplete.
    #[tokio::test]
    async fn archived_and_merged_contacts_are_listed_as_removed() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let state = &sandbox.state;
        let crm = connector(&sandbox);
        let since = Timestamp::now() - jiff::SignedDuration::from_mins(1);
        let archived: Vec<String> =
            (0..105).map(|i| state.insert_contact([("phone", format!("+1415555{:04}", 1000 + i))])).collect();
        for id in &archived {
            assert!(state.archive_directly(ObjectType::Contacts, id));
        }
        let primary = state.insert_contact([("firstname", "Ana"), ("phone", "+14155550134")]);
        let secondary = state.insert_contact([("firstname", "Ana"), ("mobilephone", "+14155550135")]);
        let untouched = state.insert_contact([("firstname", "Bo"), ("phone", "+14155550136")]);
        assert!(state.merge_contacts(&primary, &secondary));
        assert!(!state.merge_contacts(&primary, &secondary), "the secondary is gone");
        assert_eq!(state.contact(&primary).unwrap().prop("mobilephone"), Some("+14155550135"), "a gap is filled");

        let page = crm.contacts_removed_since(since, Timestamp::now()).await.unwrap().expect("HubSpot lists removals");
        assert!(page.complete);
        let deleted: Vec<&str> =
            page.removed.iter().filter(|r| r.merged_into.is_none()).map(|r| r.id.as_str()).collect();
        assert_eq!(deleted, archived.iter().map(String::as_str).collect::<Vec<_>>(), "both pages of the archive");
        let merged: Vec<(&str, &str)> =
            page.removed.iter().filter_map(|r| r.merged_into.as_deref().map(|to| (r.id.as_str(), to))).collect();
        assert_eq!(merged, [(secondary.as_str(), primary.as_str())]);
        assert!(page.removed.iter().all(|r| r.id != untouched && r.id != primary));
        // A window that starts after all of it finds nothing.
        let later = Timestamp::now() + jiff::SignedDuration::from_mins(1);
        let none =
            crm.contacts_removed_since(later, later + jiff::SignedDuration::from_mins(1)).await.unwrap().unwrap();
        assert!(none.removed.is_empty() && none.complete, "{none:?}");
        // Older than the archive keeps: incomplete, without a request.
        let requests = state.total_requests();
        let stale = crm
            .contacts_removed_since(since - jiff::SignedDuration::from_hours(91 * 24), Timestamp::now())
            .await
            .unwrap()
            .unwrap();
        assert!(!stale.complete);
        assert_eq!(state.total_requests(), requests);
    }

    /// The emulator's list endpoint answers as documented: live or archived records, `limit` in
    /// 1..=100, `after` paging; bad parameters are a 400.
    #[tokio::test]
    async fn the_emulators_list_endpoint_pages_live_and_archived_contacts() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let state = &sandbox.state;
        let kept = state.insert_contact([("firstname", "Kept")]);
        let gone = state.insert_contact([("firstname", "Gone")]);
        assert!(state.archive_directly(ObjectType::Contacts, &gone));
        let client = http_client();
        let get = |query: &str| {
            client.get(format!("{}crm/v3/objects/contacts?{query}", sandbox.base_url())).bearer_auth(TOKEN).send()
        };
        let live: Value = get("limit=1").await.unwrap().json().await.unwrap();
        assert_eq!(live["results"][0]["id"], kept.as_str());
        assert_eq!(live["results"][0]["archived"], false);
        assert!(live.get("paging").is_none(), "{live}");
        let archived: Value = get("archived=true&properties=firstname").await.unwrap().json().await.unwrap();
        assert_eq!(archived["results"].as_array().unwrap().len(), 1);
        assert_eq!(archived["results"][0]["id"], gone.as_str());
        assert_eq!(archived["results"][0]["archived"], true);
        assert_eq!(archived["results"][0]["properties"]["firstname"], "Gone");
        assert!(archived["results"][0]["archivedAt"].as_str().is_some_and(|t| t.parse::<Timestamp>().is_ok()));
        for bad in ["limit=0", "limit=101", "after=x", "archived=maybe"] {
            assert_eq!(get(bad).await.unwrap().status().as_u16(), 400, "{bad}");
        }
    }

    #[tokio::test]
    async fn finds_contacts_stored_in_every_format_with_one_search() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let state = &sandbox.state;
        let formats = ["+14155550134", "(415) 555-0134", "415-555-0134", "4155550134", "+1 415 555 0134"];
        let mut expected: Vec<String> = formats.iter().map(|f| state.insert_contact([("phone", *f)])).collect();
        expected.push(state.insert_contact([("mobilephone", "415.555.0134"), ("firstname", "Mo")]));
        state.insert_contact([("phone", "+14155550199")]);

        let found = connector(&sandbox).find_contacts_by_phone(&query()).await.unwrap();
        let ids: Vec<String> = found.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, expected, "every stored layout is found through the calculated properties");
        assert_eq!(found[1].phones, vec!["(415) 555-0134".to_string()], "phones come back raw");
        assert_eq!(found[5].first_name.as_deref(), Some("Mo"));
        assert_eq!(state.request_count(RouteKind::Search), 1);
        assert_eq!(state.total_requests(), 1);
    }

    #[tokio::test]
    async fn raw_phone_forms_cover_the_common_layouts_without_calculated_properties() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let state = &sandbox.state;
        state.set_calculated_phone_properties(false);
        let formats = ["+14155550134", "(415) 555-0134", "415-555-0134", "4155550134", "+1 415 555 0134"];
        let expected: Vec<String> = formats.iter().map(|f| state.insert_contact([("phone", *f)])).collect();
        // Not one of the queried layouts: only the identity index (normalized digits) finds it.
        state.insert_contact([("phone", "415.555.0134")]);

        let found = connector(&sandbox).find_contacts_by_phone(&query()).await.unwrap();
        let ids: Vec<String> = found.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, expected);
    }

    #[tokio::test]
    async fn phone_search_does_not_see_contacts_the_index_has_not_caught_up_with() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let hubspot = connector(&sandbox);
        sandbox.state.set_search_lag(true);
        let id = hubspot
            .create_contact(&ContactFields { phone: Some("+14155550134".into()), ..Default::default() }, "key-lag")
            .await
            .unwrap();
        assert!(hubspot.find_contacts_by_phone(&query()).await.unwrap().is_empty());
        sandbox.state.flush_search_index();
        let found = hubspot.find_contacts_by_phone(&query()).await.unwrap();
        assert_eq!(found.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec![id.as_str()]);
    }

    #[tokio::test]
    async fn read_context_returns_open_deals_only_using_pipeline_definitions() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let state = &sandbox.state;
        // Stage ids that say nothing about openness: only the pipeline metadata does.
        state.add_deal_pipeline("renewals", "Renewals", &[("1001", "Talking", false), ("1002", "Signed", true)]);
        let contact = state.insert_contact([
            ("firstname", "Ada"),
            ("lastname", "Lovelace"),
            ("email", "ada@example.com"),
            ("phone", "+14155550134"),
            ("mobilephone", "+14155550177"),
            ("zip", "94107"),
            ("hubspot_owner_id", "777"),
            ("lifecyclestage", "customer"),
        ]);
        let open = state.insert_deal(
            [
                ("dealname", "Kitchen remodel"),
                ("dealstage", "qualifiedtobuy"),
                ("amount", "12000"),
                ("closedate", "2026-12-31"),
            ],
            &contact,
        );
        state.insert_deal([("dealname", "Old job"), ("dealstage", "closedwon")], &contact);
        let renewal =
            state.insert_deal([("dealname", "Renewal"), ("dealstage", "1001"), ("pipeline", "renewals")], &contact);
        state.insert_deal([("dealname", "Signed renewal"), ("dealstage", "1002"), ("pipeline", "renewals")], &contact);

        let hubspot = connector(&sandbox);
        let context = hubspot.read_context(&contact).await.unwrap();
        assert_eq!(context.contact.first_name.as_deref(), Some("Ada"));
        assert_eq!(context.contact.phones, vec!["+14155550134".to_string(), "+14155550177".to_string()]);
        assert_eq!(context.contact.owner_id.as_deref(), Some("777"));
        assert_eq!(context.contact.lifecycle_stage.as_deref(), Some("customer"));
        let ids: Vec<&str> = context.open_deals.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, vec![open.as_str(), renewal.as_str()]);
        assert_eq!(context.open_deals[0].amount.as_deref(), Some("12000"));
        assert_eq!(context.open_deals[0].stage, "qualifiedtobuy");
        assert_eq!(state.request_count(RouteKind::Read), 1);
        assert_eq!(state.request_count(RouteKind::Batch), 1);
        assert_eq!(state.request_count(RouteKind::Pipelines), 1);

        // The owner (777, unknown to the portal: no owner in the context) is read alongside.
        assert_eq!(context.owner, None);
        assert_eq!(state.request_count(RouteKind::Other), 1);

        hubspot.read_context(&contact).await.unwrap();
        assert_eq!(state.request_count(RouteKind::Pipelines), 1, "pipelines are cached");
        assert_eq!(state.total_requests(), 7);
    }

    #[tokio::test]
    async fn read_context_without_deals_makes_one_request() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let contact = sandbox.state.insert_contact([("firstname", "Solo")]);
        let context = connector(&sandbox).read_context(&contact).await.unwrap();
        assert!(context.open_deals.is_empty());
        assert_eq!(sandbox.state.total_requests(), 1);
    }

    #[tokio::test]
    async fn read_context_of_a_missing_contact_is_not_found() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let err = connector(&sandbox).read_context("999999").await.unwrap_err();
        assert!(matches!(err, ConnectorError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn creating_a_contact_twice_with_one_key_returns_the_same_contact() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let hubspot = connector(&sandbox);
        let fields = ContactFields {
            first_name: Some("Grace".into()),
            last_name: Some("Hopper".into()),
            email: None,
            phone: Some("+14155550134".into()),
            zip: Some("10001".into()),
            source: Some("AI receptionist".into()),
        };
        let first = hubspot.create_contact(&fields, "contact-key-1").await.unwrap();
        let second = hubspot.create_contact(&fields, "contact-key-1").await.unwrap();
        assert_eq!(first, second);
        let contacts = sandbox.state.contacts();
        assert_eq!(contacts.len(), 1);
        let stored = &contacts[0];
        assert_eq!(stored.prop("firstname"), Some("Grace"));
        assert_eq!(stored.prop("zip"), Some("10001"));
        assert_eq!(stored.prop(SOURCE_PROPERTY), Some("AI receptionist"));
        assert_eq!(stored.prop(IDEMPOTENCY_PROPERTY), Some("contact-key-1"));
        assert_eq!(sandbox.state.request_count(RouteKind::Create), 2);
        assert_eq!(sandbox.state.request_count(RouteKind::Read), 0, "the id came from the 409 message");
    }

    #[tokio::test]
    async fn an_email_taken_by_another_contact_is_a_conflict_not_a_success() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let existing = sandbox.state.insert_contact([("email", "ada@example.com")]);
        let fields = ContactFields { email: Some("ADA@example.com".into()), ..Default::default() };
        let err = connector(&sandbox).create_contact(&fields, "new-key").await.unwrap_err();
        match err {
            ConnectorError::Conflict { existing_id, .. } => assert_eq!(existing_id, Some(existing)),
            other => panic!("expected a conflict, got {other:?}"),
        }
        // The key lookup told the two conflicts apart.
        assert_eq!(sandbox.state.request_count(RouteKind::Read), 1);
    }

    #[tokio::test]
    async fn update_contact_patches_only_the_given_fields() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let contact = sandbox.state.insert_contact([("firstname", "Ada"), ("lastname", "L"), ("zip", "94107")]);
        let hubspot = connector(&sandbox);
        let fields = ContactFields {
            zip: Some("10001".into()),
            phone: Some("+14155550134".into()),
            source: Some("AI receptionist".into()),
            ..Default::default()
        };
        hubspot.update_contact(&contact, &fields).await.unwrap();
        let stored = sandbox.state.contact(&contact).unwrap();
        assert_eq!(stored.prop("zip"), Some("10001"));
        assert_eq!(stored.prop("phone"), Some("+14155550134"));
        assert_eq!(stored.prop(SOURCE_PROPERTY), Some("AI receptionist"));
        assert_eq!(stored.prop("firstname"), Some("Ada"));
        assert_eq!(stored.prop("lastname"), Some("L"));

        hubspot.update_contact(&contact, &ContactFields::default()).await.unwrap();
        assert_eq!(sandbox.state.request_count(RouteKind::Update), 1, "nothing to write, no request");

        let err = hubspot.update_contact("999999", &fields).await.unwrap_err();
        assert!(matches!(err, ConnectorError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn log_call_writes_a_native_call_on_the_contact() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let contact = sandbox.state.insert_contact([("firstname", "Ada")]);
        let id = connector(&sandbox).log_call(&contact, &call_log(), "call-key-1").await.unwrap();
        let calls = sandbox.state.calls_for_contact(&contact);
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(call.id, id);
        assert_eq!(call.prop("hs_timestamp"), Some("1795442400000"));
        assert_eq!(call.prop("hs_call_duration"), Some("125000"));
        assert_eq!(call.prop("hs_call_direction"), Some("INBOUND"));
        assert_eq!(call.prop("hs_call_status"), Some("COMPLETED"));
        assert_eq!(call.prop("hs_call_disposition"), Some("f240bbac-87c9-4f6e-bf70-924b57d47db7"));
        assert_eq!(call.prop("hs_call_from_number"), Some("+14155550134"));
        assert_eq!(call.prop("hs_call_to_number"), Some("+14155550100"));
        assert_eq!(call.prop("hs_call_recording_url"), Some("https://recordings.example.com/call-1.wav"));
        assert_eq!(call.prop(IDEMPOTENCY_PROPERTY), Some("call-key-1"));
        let body = call.prop("hs_call_body").unwrap();
        assert!(body.contains("a &lt;quote&gt; &amp; booked"), "{body}");
        assert!(body.contains("href=\"https://app.example.com/calls/call-1/transcript\""), "{body}");
    }

    #[tokio::test]
    async fn custom_outcomes_and_plain_http_recordings_go_to_the_body() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let contact = sandbox.state.insert_contact([("firstname", "Ada")]);
        let call = CallLog {
            disposition: Some("Booked appointment".into()),
            recording_url: Some("http://insecure.example.com/r.wav".into()),
            ..call_log()
        };
        connector(&sandbox).log_call(&contact, &call, "call-key-2").await.unwrap();
        let stored = &sandbox.state.calls_for_contact(&contact)[0];
        assert_eq!(stored.prop("hs_call_disposition"), None);
        assert_eq!(stored.prop("hs_call_recording_url"), None);
        let body = stored.prop("hs_call_body").unwrap();
        assert!(body.contains("Outcome: Booked appointment"), "{body}");
        assert!(body.contains("Recording: http://insecure.example.com/r.wav"), "{body}");
    }

    #[tokio::test]
    async fn a_response_lost_after_the_write_then_a_retry_leaves_exactly_one_call() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let state = &sandbox.state;
        let contact = state.insert_contact([("firstname", "Ada")]);
        state.set_search_lag(true);
        state.drop_next_responses_after_apply(1);
        let hubspot = connector(&sandbox);

        let err = hubspot.log_call(&contact, &call_log(), "call-key-lost").await.unwrap_err();
        assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
        assert_eq!(state.calls_for_contact(&contact).len(), 1, "the write was applied");

        let id = hubspot.log_call(&contact, &call_log(), "call-key-lost").await.unwrap();
        let calls = state.calls_for_contact(&contact);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].id, id);
        assert_eq!(state.calls().len(), 1);
        assert_eq!(state.request_count(RouteKind::Search), 0, "no reliance on the lagging index");
    }

    #[tokio::test]
    async fn record_appointment_is_idempotent_and_scheduled() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let contact = sandbox.state.insert_contact([("firstname", "Ada")]);
        let appointment = AppointmentRecord {
            title: "Estimate visit".into(),
            start: "2026-11-24T17:00:00Z".parse().unwrap(),
            end: "2026-11-24T18:00:00Z".parse().unwrap(),
            calendar_event_id: "evt123".into(),
            notes: Some("Bring samples".into()),
        };
        let hubspot = connector(&sandbox);
        let first = hubspot.record_appointment(&contact, &appointment, "appt-key").await.unwrap();
        let second = hubspot.record_appointment(&contact, &appointment, "appt-key").await.unwrap();
        assert_eq!(first, second);
        let meetings = sandbox.state.meetings_for_contact(&contact);
        assert_eq!(meetings.len(), 1);
        let meeting = &meetings[0];
        assert_eq!(meeting.prop("hs_meeting_title"), Some("Estimate visit"));
        assert_eq!(meeting.prop("hs_meeting_outcome"), Some("SCHEDULED"));
        assert_eq!(meeting.prop("hs_meeting_start_time"), Some("2026-11-24T17:00:00Z"));
        assert_eq!(meeting.prop("hs_meeting_end_time"), Some("2026-11-24T18:00:00Z"));
        assert_eq!(meeting.prop("hs_timestamp"), Some("2026-11-24T17:00:00Z"));
        assert!(meeting.prop("hs_internal_meeting_notes").unwrap().contains("evt123"));
        assert_eq!(sandbox.state.object(ObjectType::Meetings, &first).unwrap().id, first);
    }

    #[tokio::test]
    async fn a_meetings_outcome_is_read_from_hs_meeting_outcome_and_an_unreadable_answer_is_an_error() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let contact = sandbox.state.insert_contact([("firstname", "Ada")]);
        let appointment = AppointmentRecord {
            title: "Estimate visit".into(),
            start: "2026-11-24T17:00:00Z".parse().unwrap(),
            end: "2026-11-24T18:00:00Z".parse().unwrap(),
            calendar_event_id: "evt123".into(),
            notes: None,
        };
        let hubspot = connector(&sandbox);
        let meeting = hubspot.record_appointment(&contact, &appointment, "appt-key").await.unwrap();
        assert_eq!(hubspot.appointment_status(&meeting, None).await.unwrap(), CrmAppointmentStatus::NotYetKnown);
        for (value, status) in [
            ("COMPLETED", CrmAppointmentStatus::Attended),
            ("NO_SHOW", CrmAppointmentStatus::NoShow),
            ("RESCHEDULED", CrmAppointmentStatus::Rescheduled),
            ("SCHEDULED", CrmAppointmentStatus::NotYetKnown),
        ] {
            sandbox.state.rep_edit(ObjectType::Meetings, &meeting, "hs_meeting_outcome", value, "7");
            assert_eq!(hubspot.appointment_status(&meeting, None).await.unwrap(), status, "{value}");
        }
        sandbox.state.rep_edit(ObjectType::Meetings, &meeting, "hs_meeting_outcome", "CANCELED", "7");
        let CrmAppointmentStatus::Cancelled { at: Some(_) } = hubspot.appointment_status(&meeting, None).await.unwrap()
        else {
            panic!("a cancellation carries its time from the property's history");
        };
        // A 200 whose body is not the meeting is an error, not "nothing recorded yet".
        sandbox.state.garble_next_responses(1);
        assert!(matches!(hubspot.appointment_status(&meeting, None).await, Err(ConnectorError::Transient(_))));
        assert!(matches!(hubspot.appointment_status("999999", None).await, Err(ConnectorError::NotFound(_))));
    }

    #[tokio::test]
    async fn a_conflict_message_without_the_id_is_resolved_by_the_unique_property_read() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let contact = sandbox.state.insert_contact([("firstname", "Ada")]);
        let hubspot = connector(&sandbox);
        let id = hubspot.log_call(&contact, &call_log(), "k-1").await.unwrap();
        sandbox.state.set_conflict_message_ids(false);
        let again = hubspot.log_call(&contact, &call_log(), "k-1").await.unwrap();
        assert_eq!(id, again);
        assert_eq!(sandbox.state.request_count(RouteKind::Read), 1);
    }

    #[tokio::test]
    async fn rate_limit_with_retry_after_seconds_takes_the_longest_signal() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        sandbox.state.fail_next_with(InjectedFailure::rate_limited_secs(30), 1);
        let err = connector(&sandbox).find_contacts_by_phone(&query()).await.unwrap_err();
        assert_eq!(
            err,
            ConnectorError::RateLimited { retry_after: Some(Duration::from_secs(30)), detail: "SECONDLY".into() }
        );

        // Retry-After shorter than the exhausted 10 s window: the window wins.
        sandbox.state.fail_next_with(InjectedFailure::rate_limited_secs(2), 1);
        let err = connector(&sandbox).find_contacts_by_phone(&query()).await.unwrap_err();
        assert_eq!(
            err,
            ConnectorError::RateLimited { retry_after: Some(Duration::from_secs(10)), detail: "SECONDLY".into() }
        );
    }

    #[tokio::test]
    async fn rate_limit_with_an_http_date_is_measured_from_the_clock() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let clock = ManualClock::new("2026-11-23T14:00:00Z".parse().unwrap());
        let hubspot = connector(&sandbox).with_clock(Arc::new(clock));
        sandbox
            .state
            .fail_next_with(InjectedFailure::rate_limited_until("Mon, 23 Nov 2026 14:00:45 GMT").with_window(None), 1);
        let contact = sandbox.state.insert_contact([("firstname", "Ada")]);
        let err = hubspot.read_context(&contact).await.unwrap_err();
        assert_eq!(
            err,
            ConnectorError::RateLimited { retry_after: Some(Duration::from_secs(45)), detail: "SECONDLY".into() }
        );
    }

    #[tokio::test]
    async fn daily_limit_without_retry_after_has_no_delay() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        sandbox.state.fail_next_with(InjectedFailure::status(429).with_policy("DAILY"), 1);
        let err = connector(&sandbox).find_contacts_by_phone(&query()).await.unwrap_err();
        assert_eq!(err, ConnectorError::RateLimited { retry_after: None, detail: "DAILY".into() });
    }

    #[tokio::test]
    async fn server_errors_and_outages_are_transient() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let hubspot = connector(&sandbox);
        sandbox.state.fail_next(500, 1);
        let err = hubspot.find_contacts_by_phone(&query()).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
        assert!(err.is_retryable());

        sandbox.state.set_down(true);
        let err = hubspot.read_context("101").await.unwrap_err();
        assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
        sandbox.state.set_down(false);
        assert!(hubspot.find_contacts_by_phone(&query()).await.is_ok());
    }

    #[tokio::test]
    async fn bad_and_expired_tokens_are_auth_errors() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let err = connector_with_token(&sandbox, "pat-na1-wrong").find_contacts_by_phone(&query()).await.unwrap_err();
        assert!(matches!(err, ConnectorError::AuthRevoked(_)), "{err:?}");

        sandbox.state.expire_token();
        let err = connector(&sandbox).find_contacts_by_phone(&query()).await.unwrap_err();
        assert_eq!(err, ConnectorError::AuthExpired);
    }

    #[tokio::test]
    async fn validation_errors_name_the_property() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let fields = ContactFields { email: Some("not-an-email".into()), ..Default::default() };
        let err = connector(&sandbox).create_contact(&fields, "key-invalid").await.unwrap_err();
        match err {
            ConnectorError::Validation { message, fields } => {
                assert_eq!(fields, vec!["email".to_string()]);
                assert!(!message.contains("not-an-email"), "rejected values stay out of the message: {message}");
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
        assert!(sandbox.state.contacts().is_empty());
    }

    // ----- golden responses copied from HubSpot's documentation -----------------------------

    /// The example error of <https://developers.hubspot.com/docs/api-reference/error-handling>.
    #[test]
    fn golden_error_handling_example_is_a_validation_error_naming_the_property() {
        let body = r#"{
          "status": "error",
          "message": "This will be a human readable message with details about the error.",
          "errors": [
            {
              "message": "discount was not a valid number",
              "code": "INVALID_INTEGER",
              "context": {
                "propertyName": ["discount"]
              }
            }
          ],
          "category": "VALIDATION_ERROR",
          "correlationId": "a43683b0-5717-4ceb-80b4-104d02915d8c"
        }"#;
        let raw = Raw { status: StatusCode::BAD_REQUEST, headers: HeaderMap::new(), body: body.as_bytes().to_vec() };
        match classify(&raw, Timestamp::UNIX_EPOCH) {
            ConnectorError::Validation { fields, message } => {
                assert_eq!(fields, vec!["discount".to_string()]);
                assert!(message.starts_with("This will be a human readable message"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// The multi-status error of the same page, whose message embeds the per-property list.
    #[test]
    fn golden_embedded_property_list_yields_the_property_name() {
        let error = r#"{
          "status": "error",
          "category": "VALIDATION_ERROR",
          "message": "Property values were not valid: [{\"isValid\":false,\"message\":\"Property \\\"missing\\\" does not exist\",\"error\":\"PROPERTY_DOESNT_EXIST\",\"name\":\"missing\",\"localizedErrorMessage\":\"Property \\\"missing\\\" does not exist\",\"portalId\":891936587}]",
          "context": {
            "objectWriteTraceId": ["549b1c2a9351"]
          }
        }"#;
        let parsed = ErrorBody::parse(error.as_bytes());
        assert_eq!(parsed.property_names(), vec!["missing".to_string()]);
        assert_eq!(
            parsed.summary(StatusCode::BAD_REQUEST),
            "Property values were not valid: missing (PROPERTY_DOESNT_EXIST)"
        );
    }

    /// The first response example of
    /// <https://developers.hubspot.com/docs/api-reference/legacy/crm/search-the-crm>.
    #[test]
    fn golden_search_response_maps_to_contacts() {
        let body = r#"{
          "total": 2,
          "results": [
            {
              "id": "100451",
              "properties": {
                "createdate": "2024-01-17T19:55:04.281Z",
                "email": "testperson@hubspot.com",
                "firstname": "Test",
                "hs_object_id": "100451",
                "lastmodifieddate": "2024-09-11T13:27:39.356Z",
                "lastname": "Person"
              },
              "createdAt": "2024-01-17T19:55:04.281Z",
              "updatedAt": "2024-09-11T13:27:39.356Z",
              "archived": false
            },
            {
              "id": "57156923994",
              "properties": {
                "createdate": "2024-09-11T18:21:50.012Z",
                "email": "emailmaria@hubspot.com",
                "firstname": "Maria",
                "hs_object_id": "57156923994",
                "lastmodifieddate": "2024-10-21T21:36:02.961Z",
                "lastname": "Johnson (Sample Contact)"
              },
              "createdAt": "2024-09-11T18:21:50.012Z",
              "updatedAt": "2024-10-21T21:36:02.961Z",
              "archived": false
            }
          ]
        }"#;
        let parsed: SearchResponse = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.total, 2);
        let contacts: Vec<CrmContact> = parsed.results.iter().map(to_contact).collect();
        assert_eq!(contacts[1].id, "57156923994");
        assert_eq!(contacts[1].first_name.as_deref(), Some("Maria"));
        assert_eq!(contacts[1].email.as_deref(), Some("emailmaria@hubspot.com"));
        assert!(contacts[0].phones.is_empty());
    }

    /// The 429 body of HubSpot's usage guidelines
    /// (<https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>).
    #[test]
    fn golden_daily_limit_body_names_the_policy() {
        let body = r#"{
          "status": "error",
          "message": "You have reached your daily limit.",
          "errorType": "RATE_LIMIT",
          "correlationId": "c033cdaa-2c40-4a64-ae48-b4cec88dad24",
          "policyName": "DAILY",
          "requestId": "3d3e35b7-0dae-4b9f-a6e3-9c230cbcf8dd"
        }"#;
        let mut headers = HeaderMap::new();
        headers.insert("x-hubspot-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-hubspot-ratelimit-interval-milliseconds", "10000".parse().unwrap());
        let raw = Raw { status: StatusCode::TOO_MANY_REQUESTS, headers, body: body.as_bytes().to_vec() };
        assert_eq!(
            classify(&raw, Timestamp::UNIX_EPOCH),
            ConnectorError::RateLimited { retry_after: None, detail: "DAILY".into() }
        );
    }

    /// A deal pipeline stage as the pipelines guide shows it
    /// (<https://developers.hubspot.com/docs/api-reference/legacy/crm/pipelines/guide>, audit
    /// example), wrapped in the list response.
    #[test]
    fn golden_pipeline_stage_metadata() {
        let body = r#"{"results":[{"id":"11348541","label":"Partner pipeline","displayOrder":1,"stages":[
          {"displayOrder":0,"id":"11348542","label":"Appointment scheduled","metadata":{"isClosed":"false","probability":"0.2"}},
          {"displayOrder":6,"id":"11348547","label":"Closed won","metadata":{"isClosed":"true","probability":"1.0"}}
        ]}]}"#;
        let parsed: PipelinesResponse = serde_json::from_str(body).unwrap();
        let stages = &parsed.results[0].stages;
        assert_eq!(stages[0].metadata.is_closed.as_deref(), Some("false"));
        assert_eq!(stages[1].metadata.is_closed.as_deref(), Some("true"));
    }

    /// The "Read a property" response example of
    /// <https://developers.hubspot.com/docs/api-reference/crm-properties-v3/core/get-crm-v3-properties-objectType-propertyName>.
    #[test]
    fn golden_property_definition_checks_enumeration_values() {
        let body = r#"{
          "displayOrder": 2,
          "fieldType": "select",
          "formField": true,
          "groupName": "contactinformation",
          "hasUniqueValue": false,
          "hidden": false,
          "label": "My Contact Property",
          "modificationMetadata": {
            "archivable": true,
            "readOnlyDefinition": false,
            "readOnlyOptions": false,
            "readOnlyValue": false
          },
          "name": "my_contact_property",
          "options": [
            {"description": "Choice number one", "displayOrder": 1, "hidden": false, "label": "Option A", "value": "A"},
            {"description": "Choice number two", "displayOrder": 2, "hidden": false, "label": "Option B", "value": "B"}
          ],
          "type": "enumeration"
        }"#;
        let def: PropertyDef = serde_json::from_str(body).unwrap();
        assert_eq!(format_property(Some(&def), &PropertyValue::Enumeration("A".into())), Ok("A".into()));
        assert_eq!(format_property(Some(&def), &PropertyValue::Text("option b".into())), Ok("B".into()), "label");
        let err = format_property(Some(&def), &PropertyValue::Enumeration("C".into())).unwrap_err();
        assert!(err.contains("[A, B]"), "{err}");
        assert!(format_property(Some(&def), &PropertyValue::Number(1.into())).is_err());
        assert!(format_property(None, &PropertyValue::Text("x".into())).is_err(), "unknown property");
    }

    #[test]
    fn typed_values_take_hubspots_formats() {
        let def = |kind: &str| PropertyDef {
            kind: kind.into(),
            options: Vec::new(),
            calculated: false,
            modification_metadata: None,
        };
        let date: jiff::civil::Date = "2026-12-01".parse().unwrap();
        let at: Timestamp = "2026-11-23T14:30:00Z".parse().unwrap();
        assert_eq!(format_property(Some(&def("date")), &PropertyValue::Date(date)), Ok("2026-12-01".into()));
        assert_eq!(format_property(Some(&def("date")), &PropertyValue::DateTime(at)), Ok("2026-11-23".into()));
        assert_eq!(
            format_property(Some(&def("datetime")), &PropertyValue::DateTime(at)),
            Ok("2026-11-23T14:30:00.000Z".into())
        );
        assert_eq!(
            format_property(Some(&def("datetime")), &PropertyValue::Date(date)),
            Ok("2026-12-01T00:00:00.000Z".into())
        );
        assert_eq!(format_property(Some(&def("number")), &PropertyValue::Text(" 12.5 ".into())), Ok("12.5".into()));
        assert!(format_property(Some(&def("number")), &PropertyValue::Text("twelve".into())).is_err());
        assert_eq!(format_property(Some(&def("string")), &PropertyValue::Clear), Ok(String::new()));
        let read_only = PropertyDef {
            modification_metadata: Some(ModificationMetadata { read_only_value: true }),
            ..def("string")
        };
        assert!(format_property(Some(&read_only), &PropertyValue::Text("x".into())).is_err());
    }

    /// A labels response for contacts → companies as HubSpot returned it (posted on HubSpot's
    /// developer community, <https://community.hubspot.com/t5/APIs-Integrations/Association-s-typeId-field-is-not-unique/td-p/1166801>):
    /// a user-defined label reuses type id 1, the unlabeled default is 279.
    #[test]
    fn golden_association_labels_pick_the_unlabeled_hubspot_type() {
        let body = r#"{
          "results": [
            {"category": "USER_DEFINED", "typeId": 1, "label": "Referred By"},
            {"category": "HUBSPOT_DEFINED", "typeId": 931, "label": "Billing Contact"},
            {"category": "HUBSPOT_DEFINED", "typeId": 279, "label": null},
            {"category": "HUBSPOT_DEFINED", "typeId": 1, "label": "Primary"}
          ]
        }"#;
        let labels: LabelsResponse = serde_json::from_str(body).unwrap();
        assert_eq!(unlabeled_type(&labels), Some(279));
        let only_labeled: LabelsResponse =
            serde_json::from_str(r#"{"results": [{"category": "HUBSPOT_DEFINED", "label": "Mentor", "typeId": 1}]}"#)
                .unwrap();
        assert_eq!(unlabeled_type(&only_labeled), Some(1));
    }

    /// A record read with `propertiesWithHistory`, its versions shaped as HubSpot's
    /// `ValueWithTimestamp` schema (objects API reference,
    /// <https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/guide>,
    /// "Retrieve records"; `sourceId` as `userId:<id>` per
    /// <https://developers.hubspot.com/changelog/crm-property-change-source-will-show-owner-id-instead-of-owner-email>).
    #[test]
    fn golden_properties_with_history_tell_people_from_integrations() {
        let body = r#"{
          "id": "512",
          "properties": {"lifecyclestage": "customer"},
          "propertiesWithHistory": {
            "lifecyclestage": [
              {"value": "customer", "timestamp": "2024-01-15T10:30:00.000Z", "sourceType": "CRM_UI",
               "sourceId": "userId:12345", "sourceLabel": "John Doe", "updatedByUserId": 12345},
              {"value": "lead", "timestamp": "2023-12-01T09:00:00.000Z", "sourceType": "INTEGRATION",
               "sourceId": "1234567"}
            ]
          },
          "createdAt": "2023-12-01T09:00:00.000Z",
          "updatedAt": "2024-01-15T10:30:00.000Z",
          "archived": false
        }"#;
        let object: HistoryObject = serde_json::from_str(body).unwrap();
        let history = to_histories(&["lifecyclestage".to_string()], object);
        let versions = &history[0].versions;
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[0].value, "customer");
        assert_eq!(versions[0].updated_by_user_id.as_deref(), Some("12345"));
        assert!(versions[0].is_human_edit());
        assert!(!versions[1].is_human_edit());
    }

    #[tokio::test]
    async fn searches_stay_under_the_search_rate_limit() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        sandbox.state.limit_search_rate(Some(5));
        let real = HubSpotConnector::new(
            Url::parse("https://api.hubapi.com").unwrap(),
            SecretString::from("t".to_string()),
            http_client(),
        );
        assert_eq!(real.search_spacing, Some(SEARCH_SPACING), "spaced by default against HubSpot");
        assert_eq!(connector(&sandbox).search_spacing, None, "not against a loopback emulator");
        let hubspot = connector(&sandbox).with_search_spacing(Some(SEARCH_SPACING));
        for _ in 0..7 {
            hubspot.find_contacts_by_phone(&query()).await.unwrap();
        }
        assert!(sandbox.state.requests().iter().all(|r| r.status == 200));

        // Without the spacing the emulator answers 429 past five a second.
        let raw = reqwest::Client::new();
        let url = sandbox.base_url().join("crm/v3/objects/contacts/search").unwrap();
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let r = raw.post(url.clone()).bearer_auth(TOKEN).json(&json!({})).send().await.unwrap();
            statuses.push(r.status().as_u16());
        }
        assert!(statuses.contains(&429), "{statuses:?}");
    }

    #[test]
    fn existing_id_is_read_from_hubspots_conflict_message() {
        // The contact-exists conflict as reported on HubSpot's community forum
        // (https://community.hubspot.com/t5/APIs-Integrations/Updated-409-Conflict-responses/m-p/951534).
        let body = r#"{
          "message": "Contact already exists. Existing ID: 2926551",
          "errors": [{"message": "A contact with email lee@xyz.co.uk already exists. Existing ID: 2926551", "in": "email"}],
          "status": "error",
          "correlationId": "b6881283-187e-4088-a778-5c933a14547c",
          "category": "OBJECT_ALREADY_EXISTS",
          "error": "CONTACT_EXISTS"
        }"#;
        let parsed = ErrorBody::parse(body.as_bytes());
        assert_eq!(parsed.existing_id().as_deref(), Some("2926551"));
        assert!(parsed.mentions("email"));
        assert!(!parsed.mentions(IDEMPOTENCY_PROPERTY));
    }

    #[test]
    fn nanp_numbers_are_queried_in_their_common_layouts() {
        let forms = phone_forms(&query());
        assert_eq!(
            forms,
            vec![
                "+14155550134",
                "4155550134",
                "(415) 555-0134",
                "415-555-0134",
                "+1 415 555 0134",
                "+1 (415) 555-0134",
                "14155550134",
            ]
        );
        let uk = phone_forms(&PhoneQuery { e164: "+442079460958".into(), national: "2079460958".into() });
        assert_eq!(uk, vec!["+442079460958", "2079460958"]);
    }

    #[test]
    fn default_outcomes_map_to_their_guids() {
        assert_eq!(disposition_guid("No answer"), Some("73a0d17f-1163-4015-bdd5-ec830791da20"));
        assert_eq!(disposition_guid("left-voicemail"), Some("b2cf5968-551e-4856-9783-52b3da59a7d0"));
        assert_eq!(disposition_guid("booked"), None);
    }
}
