//! HubSpot CRM connector over the CRM v3 object/search APIs.
//!
//! Reads at ring time: one search for the caller's phone, then one contact read (with its deal
//! associations inline) and one deal batch read. Deal openness comes from the portal's pipeline
//! definitions (`metadata.isClosed` of each stage), fetched once and cached for the connector's
//! life, never from stage names.
//!
//! Writes after hangup carry an idempotency key in the custom unique-value property
//! [`IDEMPOTENCY_PROPERTY`] (`hasUniqueValue: true` on contacts, calls and meetings — it has to be
//! created in the portal when the connection is set up). A retried create therefore answers
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

use super::{AppointmentRecord, CallLog, ContactFields, CrmConnector, CrmContact, CrmContext, CrmDeal, PhoneQuery};
use crate::clock::{SharedClock, SystemClock};
use crate::connectors::{ConnectorError, longest, parse_retry_after};

/// The unique-value custom property holding the idempotency key on contacts, calls and meetings.
pub const IDEMPOTENCY_PROPERTY: &str = "callside_idempotency_key";

/// The custom contact property for the lead source label. HubSpot's `hs_analytics_source`
/// ("Original source") is calculated by HubSpot and read-only, and `hs_lead_status` is a status,
/// not a source, so the label goes into a property of our own.
pub const SOURCE_PROPERTY: &str = "callside_source";

/// Calls → contact, HubSpot-defined
/// (<https://developers.hubspot.com/docs/api-reference/legacy/crm/activities/calls/guide>).
const CALL_TO_CONTACT: u32 = 194;
/// Meetings → contact, HubSpot-defined
/// (<https://developers.hubspot.com/docs/api-reference/latest/crm/activities/meetings/guide>).
const MEETING_TO_CONTACT: u32 = 200;

const CONTACT_PROPERTIES: [&str; 8] =
    ["firstname", "lastname", "email", "phone", "mobilephone", "zip", "hubspot_owner_id", "lifecyclestage"];
const DEAL_PROPERTIES: [&str; 5] = ["dealname", "dealstage", "amount", "closedate", "pipeline"];

/// Search limits: "a maximum of five filterGroups with up to six filters in each group, with a
/// maximum of 18 filters in total" (search guide, Limits).
const MAX_FILTER_GROUPS: usize = 5;
/// Object batch endpoints take at most 100 inputs.
const BATCH_LIMIT: usize = 100;
/// Candidates returned by one phone search; more than this for one number is noise.
const SEARCH_LIMIT: u32 = 100;
const MAX_MESSAGE_CHARS: usize = 300;

/// Stage id → closed, from the deal pipelines.
#[derive(Debug, Default)]
struct StageIndex {
    by_pipeline: HashMap<(String, String), bool>,
    by_stage: HashMap<String, bool>,
}

impl StageIndex {
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
    access_token: SecretString,
    client: reqwest::Client,
    clock: SharedClock,
    stages: Mutex<Option<Arc<StageIndex>>>,
}

impl std::fmt::Debug for HubSpotConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSpotConnector").field("base_url", &self.base_url.as_str()).finish_non_exhaustive()
    }
}

impl HubSpotConnector {
    /// `base_url` is `https://api.hubapi.com` in production, the sandbox's URL in tests.
    pub fn new(base_url: Url, access_token: SecretString, client: reqwest::Client) -> Self {
        Self { base_url, access_token, client, clock: Arc::new(SystemClock), stages: Mutex::new(None) }
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

    async fn send(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Raw, ConnectorError> {
        let mut request = self
            .client
            .request(method, url)
            .bearer_auth(self.access_token.expose_secret())
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| ConnectorError::from_transport(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| ConnectorError::from_transport(&e))?.to_vec();
        Ok(Raw { status, headers, body })
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
        if !refresh && let Some(index) = self.stages.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(index);
        }
        let url = self.url(&["crm", "v3", "pipelines", "deals"], &[])?;
        let pipelines: PipelinesResponse = self.call(Method::GET, url, None).await?;
        let mut index = StageIndex::default();
        for pipeline in pipelines.results {
            for stage in pipeline.stages {
                let closed = stage.metadata.is_closed.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true"));
                index.by_pipeline.insert((pipeline.id.clone(), stage.id.clone()), closed);
                index.by_stage.insert(stage.id, closed);
            }
        }
        let index = Arc::new(index);
        *self.stages.lock().unwrap_or_else(|p| p.into_inner()) = Some(index.clone());
        Ok(index)
    }

    async fn read_deals(&self, ids: &[String]) -> Result<Vec<SimpleObject>, ConnectorError> {
        let mut deals = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_LIMIT) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({"id": id})).collect();
            let body = json!({"inputs": inputs, "properties": DEAL_PROPERTIES});
            let url = self.url(&["crm", "v3", "objects", "deals", "batch", "read"], &[])?;
            // 207 Multi-Status lists deals that no longer exist under `errors`; the rest are read.
            let batch: BatchResponse = self.call(Method::POST, url, Some(&body)).await?;
            deals.extend(batch.results);
        }
        Ok(deals)
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
        let url = self.url(&["crm", "v3", "objects", "contacts", "search"], &[])?;
        let found: SearchResponse = self.call(Method::POST, url, Some(&body)).await?;
        if found.total > u64::from(SEARCH_LIMIT) {
            tracing::warn!(total = found.total, "phone search matched more contacts than one page holds");
        }
        Ok(found.results.iter().map(to_contact).collect())
    }

    /// Two requests (three on the connector's first read): the contact with `associations=deals`,
    /// then one `deals/batch/read`; the pipelines are read once and cached.
    async fn read_context(&self, contact_id: &str) -> Result<CrmContext, ConnectorError> {
        let properties = CONTACT_PROPERTIES.join(",");
        let url = self.url(
            &["crm", "v3", "objects", "contacts", contact_id],
            &[("properties", &properties), ("associations", "deals")],
        )?;
        let contact: SimpleObject = self.call(Method::GET, url, None).await?;
        let mut deal_ids: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for deal in contact.associated("deals") {
            if seen.insert(deal.clone()) {
                deal_ids.push(deal);
            }
        }
        let mut open_deals = Vec::new();
        if !deal_ids.is_empty() {
            let deals = self.read_deals(&deal_ids).await?;
            let mut stages = self.stage_index(false).await?;
            let mut refreshed = false;
            for deal in &deals {
                let stage = deal.prop("dealstage").unwrap_or_default();
                let pipeline = deal.prop("pipeline");
                let mut closed = stages.is_closed(pipeline.as_deref(), &stage);
                if closed.is_none() && !refreshed {
                    stages = self.stage_index(true).await?;
                    refreshed = true;
                    closed = stages.is_closed(pipeline.as_deref(), &stage);
                }
                // A stage no pipeline knows is reported as open: better to mention a deal than to
                // hide one.
                if closed != Some(true) {
                    open_deals.push(CrmDeal {
                        id: deal.id.clone(),
                        name: deal.prop("dealname").unwrap_or_default(),
                        stage,
                        amount: deal.prop("amount"),
                        close_date: deal.prop("closedate"),
                    });
                }
            }
        }
        Ok(CrmContext { contact: to_contact(&contact), open_deals })
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
        let associations = association(contact_id, CALL_TO_CONTACT);
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
        let associations = association(contact_id, MEETING_TO_CONTACT);
        self.create_idempotent("meetings", properties, associations, idempotency_key).await
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
    }
}

// ----- response types -----------------------------------------------------------------------------

struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

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
    metadata: StageMetadata,
}

#[derive(Debug, Default, Deserialize)]
struct StageMetadata {
    #[serde(rename = "isClosed")]
    is_closed: Option<String>,
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

        hubspot.read_context(&contact).await.unwrap();
        assert_eq!(state.request_count(RouteKind::Pipelines), 1, "pipelines are cached");
        assert_eq!(state.total_requests(), 5);
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
