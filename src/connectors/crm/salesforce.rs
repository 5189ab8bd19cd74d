//! Salesforce CRM connector over the REST API (`/services/data/vXX.X`).
//!
//! People are Contacts or Leads (the id's key prefix, `003` or `00Q`, says which; Person Accounts
//! are not supported yet). A caller is looked up with one SOSL search,
//! `FIND {"4155550134" OR "14155550134"} IN PHONE FIELDS RETURNING Contact(..), Lead(..)`, across
//! both objects — Salesforce stores phones as typed, so the caller of the connector compares
//! normalized digits itself — plus SOQL for email and name + postal code. The context is one SOQL
//! query with relationship fields (`Owner.*`) and child subqueries: open opportunities through
//! `OpportunityContactRoles`, open `Cases`, `OpenActivities` and the latest `ActivityHistories`.
//!
//! Writes: contact fields and typed field updates (checked against the describe metadata:
//! picklist values, dates as `YYYY-MM-DD`, datetimes in ISO 8601 UTC), a call as a completed Task
//! with `TaskSubtype = Call` (`CallDurationInSeconds`, `CallDisposition`, `CallType`,
//! `CallObject`, `WhoId`), a note as a completed Task, a follow-up as an open Task for an owner
//! with `ActivityDate` and a reminder at the due time, an appointment as an Event, opportunity
//! stage changes. Everything the service creates is upserted on the External ID field
//! [`EXTERNAL_ID_FIELD`] (`PATCH /sobjects/{T}/Callside_Key__c/{key}`): a retry after a lost
//! answer updates the record the first attempt created instead of creating another, without
//! relying on the search index (which lags).
//! <https://developer.salesforce.com/docs/platform/api-rest/guide/dome-upsert.html>
//!
//! Errors are classified by the body's `errorCode`, not the status: Salesforce's rate limit is
//! **403** `REQUEST_LIMIT_EXCEEDED` (a rolling 24-hour allowance, no 429, no `Retry-After`; the
//! `Sforce-Limit-Info: api-usage=n/m` header goes into the detail), `INVALID_SESSION_ID` (401)
//! makes the token source refresh once, validation errors keep their `fields`.
//! <https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm>,
//! <https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm>.
//!
//! Field history (`ContactHistory` / `LeadHistory`, where history tracking is enabled for the
//! field) gives the conflict data: a change made by the user behind our token
//! (`/services/oauth2/userinfo`) is ours, any other user's is a person's — Salesforce does not
//! record the channel of a change, so another integration's user also counts as a person.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use reqwest::header::{ACCEPT, HeaderMap};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
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
use crate::connectors::{ConnectorError, truncate_bytes};

/// The REST API version spoken.
pub const API_VERSION: &str = "v62.0";
/// The External ID (unique, case-sensitive) text field holding the idempotency key on Contact,
/// Lead, Task and Event; created in the org when the connection is set up.
pub const EXTERNAL_ID_FIELD: &str = "Callside_Key__c";
/// Our lead-source label (a text field: the standard `LeadSource` is a picklist).
pub const SOURCE_FIELD: &str = "Callside_Source__c";
/// What Salesforce's own Web-to-Lead puts in a universally required name field left blank
/// (<https://help.salesforce.com/apex/HTViewSolution?id=000171026&language=en_US>); read back as
/// "no value".
pub const NOT_PROVIDED: &str = "[not provided]";

const RECENT_ACTIVITY: usize = 5;
const SUMMARY_BYTES: usize = 200;
/// Phone fields written by [`CrmConnector::add_secondary_phone`], in order.
const PHONE_SLOTS: [&str; 2] = ["Phone", "MobilePhone"];
/// The batch a pull's SOQL query asks for (`Sforce-Query-Options`, 200 to 2,000 rows; Salesforce
/// may answer fewer): <https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_queryoptions.htm>.
const PULL_QUERY_OPTIONS: (&str, &str) = ("Sforce-Query-Options", "batchSize=200");
/// How far back the delete log answers ("Results are returned for no more than 15 days previous
/// to the day the call is executed"):
/// <https://developer.salesforce.com/docs/platform/api-rest/guide/resources-getdeleted.html>.
const DELETE_LOG_DAYS: i64 = 15;

/// Which object a new caller becomes (a tenant setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NewCallerObject {
    #[default]
    Lead,
    Contact,
}

impl NewCallerObject {
    fn sobject(self) -> &'static str {
        match self {
            NewCallerObject::Lead => "Lead",
            NewCallerObject::Contact => "Contact",
        }
    }
}

/// A person record's object, from the id's key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Person {
    Contact,
    Lead,
}

impl Person {
    fn of(id: &str) -> Result<Self, ConnectorError> {
        let well_formed = matches!(id.len(), 15 | 18) && id.chars().all(|c| c.is_ascii_alphanumeric());
        match (well_formed, id.get(..3)) {
            (true, Some("003")) => Ok(Person::Contact),
            (true, Some("00Q")) => Ok(Person::Lead),
            _ => Err(ConnectorError::NotFound(format!("no Salesforce contact or lead has the id {id}"))),
        }
    }

    fn sobject(self) -> &'static str {
        match self {
            Person::Contact => "Contact",
            Person::Lead => "Lead",
        }
    }

    fn zip_field(self) -> &'static str {
        match self {
            Person::Contact => "MailingPostalCode",
            Person::Lead => "PostalCode",
        }
    }

    /// The field a write-back property name stands for on this object. Undo and the write rules
    /// speak the neutral (HubSpot-style) names `firstname`, `zip`, `hubspot_owner_id`, ...;
    /// anything else is already a Salesforce field name (a tenant's mapped field).
    fn field_name(self, property: &str) -> &str {
        match property {
            "firstname" => "FirstName",
            "lastname" => "LastName",
            "email" => "Email",
            "phone" => "Phone",
            "mobilephone" => "MobilePhone",
            "zip" => self.zip_field(),
            "hubspot_owner_id" => "OwnerId",
            "lifecyclestage" if self == Person::Lead => "Status",
            other => other,
        }
    }

    /// Fields read for a person.
    fn fields(self) -> &'static str {
        match self {
            Person::Contact => {
                "Id, FirstName, LastName, Email, Phone, MobilePhone, HomePhone, OtherPhone, MailingPostalCode, OwnerId, \
                 LastModifiedDate"
            }
            Person::Lead => {
                "Id, FirstName, LastName, Email, Phone, MobilePhone, PostalCode, OwnerId, Status, LastModifiedDate"
            }
        }
    }
}

/// One field of a describe answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FieldDescribe {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    updateable: bool,
    #[serde(default)]
    picklist_values: Vec<PicklistValue>,
}

#[derive(Debug, Clone, Deserialize)]
struct PicklistValue {
    value: String,
    label: Option<String>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct Describe {
    fields: Vec<FieldDescribe>,
}

impl Describe {
    fn field(&self, name: &str) -> Option<&FieldDescribe> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

use crate::connectors::Raw;

/// A [`CrmConnector`] for Salesforce.
pub struct SalesforceConnector {
    /// The instance URL to use when the token source names none (a static token).
    base_url: Url,
    tokens: Arc<dyn TokenSource>,
    client: reqwest::Client,
    new_callers: NewCallerObject,
    describes: Mutex<HashMap<String, Arc<Describe>>>,
    /// The user behind our token (`/services/oauth2/userinfo`), for telling our changes apart.
    own_user: tokio::sync::OnceCell<String>,
    /// Today, for the close date of a created opportunity.
    clock: SharedClock,
    /// Every request is charged to the account's rate budget (`crate::connectors::rate`).
    meter: crate::connectors::rate::Meter,
}

impl std::fmt::Debug for SalesforceConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceConnector").field("base_url", &self.base_url.as_str()).finish_non_exhaustive()
    }
}

impl SalesforceConnector {
    /// A connector with a fixed access token against `instance_url`.
    pub fn new(instance_url: Url, access_token: SecretString, client: reqwest::Client) -> Self {
        Self::with_token_source(instance_url, Arc::new(StaticToken::new(access_token)), client)
    }

    /// A connector whose token (and instance URL, from the token answers) come from an OAuth
    /// connection; `fallback_instance` is used until the connection names one.
    pub fn with_token_source(fallback_instance: Url, tokens: Arc<dyn TokenSource>, client: reqwest::Client) -> Self {
        Self {
            base_url: fallback_instance,
            tokens,
            client,
            new_callers: NewCallerObject::default(),
            describes: Mutex::new(HashMap::new()),
            own_user: tokio::sync::OnceCell::new(),
            clock: Arc::new(SystemClock),
            meter: crate::connectors::rate::Meter::unmetered(),
        }
    }

    /// Charges every request to this rate budget (the account's, shared by live reads and the
    /// write-back lane). Salesforce's own limit is a rolling 24-hour allowance per org, so there
    /// is no documented per-10-second default: unmetered unless `[crm] requests_per_10s` is set.
    pub fn with_meter(mut self, meter: crate::connectors::rate::Meter) -> Self {
        self.meter = meter;
        self
    }

    /// The clock that dates created opportunities (their `CloseDate`).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Which object a new caller becomes (default: Lead).
    pub fn with_new_callers(mut self, object: NewCallerObject) -> Self {
        self.new_callers = object;
        self
    }

    /// The `StageName` picklist value for a stage given by value or label (any case).
    async fn opportunity_stage(&self, stage: &str) -> Result<String, ConnectorError> {
        let resolve = |d: &Describe| {
            let field = d.field("StageName")?;
            let active = || field.picklist_values.iter().filter(|p| p.active);
            active()
                .find(|p| p.value == stage)
                .or_else(|| active().find(|p| p.value.eq_ignore_ascii_case(stage)))
                .or_else(|| active().find(|p| p.label.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(stage))))
                .map(|p| p.value.clone())
        };
        let mut value = resolve(&*self.describe("Opportunity", false).await?);
        if value.is_none() {
            // The picklist may have changed since it was cached.
            value = resolve(&*self.describe("Opportunity", true).await?);
        }
        value.ok_or_else(|| ConnectorError::Validation {
            message: format!("{stage} is not an opportunity stage"),
            fields: vec!["StageName".into()],
        })
    }

    // ----- HTTP plumbing ---------------------------------------------------------------------

    async fn instance(&self) -> Result<Url, ConnectorError> {
        Ok(self.tokens.api_base_url().await?.map(|u| u.into_url()).unwrap_or_else(|| self.base_url.clone()))
    }

    /// `{instance}/services/data/{version}/{segments..}?{query}`; `oauth2` resources are not
    /// versioned.
    async fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, ConnectorError> {
        let mut url = self.instance().await?;
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| ConnectorError::Permanent("the Salesforce instance URL cannot carry a path".into()))?;
            path.pop_if_empty();
            if segments.first() == Some(&"oauth2") {
                path.push("services");
            } else {
                path.extend(["services", "data", API_VERSION]);
            }
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Sends with the current token; `INVALID_SESSION_ID` (401) makes the source refresh once
    /// (single-flight) and the request go again — Salesforce applied nothing, so a resent write
    /// is safe.
    async fn send_with_headers(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Raw, ConnectorError> {
        let token = self.tokens.access_token().await?;
        let url = self.url(segments, query).await?;
        let raw = self.send_with(method.clone(), url, body, &token, headers).await?;
        if raw.status != StatusCode::UNAUTHORIZED {
            return Ok(raw);
        }
        match self.tokens.refreshed(&token).await {
            Ok(fresh) => {
                // A refresh may name another instance (an org moved).
                let url = self.url(segments, query).await?;
                self.send_with(method, url, body, &fresh, headers).await
            }
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
        headers: &[(&str, &str)],
    ) -> Result<Raw, ConnectorError> {
        let mut request =
            self.client.request(method, url).bearer_auth(token.expose_secret()).header(ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        crate::connectors::send_metered(&self.meter, request).await
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ConnectorError> {
        self.call_with_headers(method, segments, query, body, &[]).await
    }

    async fn call_with_headers(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Value, ConnectorError> {
        let raw = self.send_with_headers(method, segments, query, body, headers).await?;
        if !raw.status.is_success() {
            return Err(classify(&raw));
        }
        if raw.body.is_empty() {
            return Ok(Value::Null);
        }
        // A 2xx we cannot read may have been applied; every create is an upsert, so a retry is safe.
        serde_json::from_slice(&raw.body).map_err(|_| {
            ConnectorError::Transient(format!("unreadable Salesforce answer (HTTP {})", raw.status.as_u16()))
        })
    }

    /// The survivors of deleted records that lost a merge: their `MasterRecordId`, read with
    /// `queryAll` (deleted records are visible only there), 100 ids a query. "When a record is
    /// deleted after losing a merge operation, its MasterRecordId field is set to the ID of the
    /// winning record"
    /// (<https://developer.salesforce.com/docs/atlas.en-us.apexcode.meta/apexcode/apex_triggers_merge_statements.htm>;
    /// `queryAll`: <https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_queryall.htm>).
    async fn merge_masters(&self, person: Person, ids: &[String]) -> Result<HashMap<String, String>, ConnectorError> {
        let mut masters = HashMap::new();
        for chunk in ids.chunks(100) {
            let list = chunk.iter().map(|id| quote(id)).collect::<Vec<_>>().join(", ");
            let q = format!(
                "SELECT Id, MasterRecordId FROM {} WHERE Id IN ({list}) AND MasterRecordId != null",
                person.sobject()
            );
            let answer = self.call(Method::GET, &["queryAll"], &[("q", &q)], None).await?;
            for row in records(&answer) {
                if let (Some(id), Some(master)) = (text(&row, "Id"), text(&row, "MasterRecordId")) {
                    masters.insert(id, master);
                }
            }
        }
        Ok(masters)
    }

    async fn soql(&self, query: &str) -> Result<Vec<Value>, ConnectorError> {
        let answer = self.call(Method::GET, &["query"], &[("q", query)], None).await?;
        Ok(records(&answer))
    }

    async fn describe(&self, sobject: &str, refresh: bool) -> Result<Arc<Describe>, ConnectorError> {
        if !refresh && let Some(d) = self.describes.lock().unwrap_or_else(|p| p.into_inner()).get(sobject) {
            return Ok(d.clone());
        }
        let answer = self.call(Method::GET, &["sobjects", sobject, "describe"], &[], None).await?;
        let describe: Describe = serde_json::from_value(answer)
            .map_err(|_| ConnectorError::Transient(format!("unreadable describe of {sobject}")))?;
        let describe = Arc::new(describe);
        self.describes.lock().unwrap_or_else(|p| p.into_inner()).insert(sobject.to_string(), describe.clone());
        Ok(describe)
    }

    async fn own_user_id(&self) -> Result<String, ConnectorError> {
        self.own_user
            .get_or_try_init(|| async {
                let answer = self.call(Method::GET, &["oauth2", "userinfo"], &[], None).await?;
                answer
                    .get("user_id")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .ok_or_else(|| ConnectorError::Transient("userinfo without user_id".into()))
            })
            .await
            .cloned()
    }

    /// Upserts on the External ID field; returns the record id.
    async fn upsert(&self, sobject: &str, key: &str, body: Value) -> Result<String, ConnectorError> {
        if key.is_empty() || key.len() > 255 {
            return Err(ConnectorError::Validation {
                message: "the idempotency key must be 1 to 255 characters".into(),
                fields: vec![EXTERNAL_ID_FIELD.into()],
            });
        }
        let answer = self.call(Method::PATCH, &["sobjects", sobject, EXTERNAL_ID_FIELD, key], &[], Some(&body)).await?;
        answer
            .get("id")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| ConnectorError::Transient("upsert answer without an id".into()))
    }

    async fn patch(&self, sobject: &str, id: &str, body: &Value) -> Result<(), ConnectorError> {
        self.call(Method::PATCH, &["sobjects", sobject, id], &[], Some(body)).await.map(|_| ())
    }

    async fn read_fields(
        &self,
        sobject: &str,
        id: &str,
        fields: &[&str],
    ) -> Result<Map<String, Value>, ConnectorError> {
        let list = fields.join(",");
        let answer = self.call(Method::GET, &["sobjects", sobject, id], &[("fields", &list)], None).await?;
        Ok(answer.as_object().cloned().unwrap_or_default())
    }

    /// The people matching a SOQL condition, contacts first.
    async fn find_people(&self, contact_where: &str, lead_where: &str) -> Result<Vec<CrmContact>, ConnectorError> {
        let contacts = format!("SELECT {} FROM Contact WHERE {contact_where} LIMIT 50", Person::Contact.fields());
        let leads =
            format!("SELECT {} FROM Lead WHERE {lead_where} AND IsConverted = false LIMIT 50", Person::Lead.fields());
        let (contacts, leads) = tokio::join!(self.soql(&contacts), self.soql(&leads));
        let mut out: Vec<CrmContact> = contacts?.iter().map(|r| to_contact(r, Person::Contact)).collect();
        out.extend(leads?.iter().map(|r| to_contact(r, Person::Lead)));
        Ok(out)
    }

    fn person_fields(&self, person: Person, fields: &ContactFields, creating: bool) -> Map<String, Value> {
        let mut body = Map::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                body.insert(k.to_string(), json!(v));
            }
        };
        put("FirstName", &fields.first_name);
        put("LastName", &fields.last_name);
        put("Email", &fields.email);
        put("Phone", &fields.phone);
        put(person.zip_field(), &fields.zip);
        put(SOURCE_FIELD, &fields.source);
        if creating {
            // Universally required: Salesforce itself fills them with "[not provided]".
            body.entry("LastName").or_insert(json!(NOT_PROVIDED));
            if person == Person::Lead {
                body.entry("Company").or_insert(json!(NOT_PROVIDED));
            }
        }
        body
    }
}

fn records(answer: &Value) -> Vec<Value> {
    answer.get("records").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// A child subquery's rows (`null` when it has none).
fn child_records(record: &Value, relationship: &str) -> Vec<Value> {
    record.get(relationship).map(records).unwrap_or_default()
}

fn text(record: &Value, field: &str) -> Option<String> {
    match record.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn name_value(record: &Value, field: &str) -> Option<String> {
    text(record, field).filter(|v| v != NOT_PROVIDED)
}

fn to_contact(record: &Value, person: Person) -> CrmContact {
    let phone_fields: &[&str] = match person {
        Person::Contact => &["Phone", "MobilePhone", "HomePhone", "OtherPhone"],
        Person::Lead => &["Phone", "MobilePhone"],
    };
    CrmContact {
        id: text(record, "Id").unwrap_or_default(),
        first_name: name_value(record, "FirstName"),
        last_name: name_value(record, "LastName"),
        email: text(record, "Email"),
        phones: phone_fields.iter().filter_map(|f| text(record, f)).collect(),
        zip: text(record, person.zip_field()),
        owner_id: text(record, "OwnerId"),
        lifecycle_stage: match person {
            Person::Lead => Some(format!("lead: {}", text(record, "Status").unwrap_or_default())),
            Person::Contact => Some("contact".into()),
        },
        updated_at: text(record, "LastModifiedDate").and_then(|t| parse_sf_time(&t)),
    }
}

/// A SOQL string literal: backslash and quote escaped
/// (<https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_quotedstringescapes.htm>).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A quoted `LIKE` prefix pattern: `%` and `_` escaped as `\%` / `\_` (the only escapes that keep
/// their backslash inside a `LIKE` literal), quotes and backslashes as in [`quote`].
fn like_prefix(value: &str) -> String {
    let quoted = quote(value);
    let inner = &quoted[1..quoted.len() - 1];
    format!("'{}%'", inner.replace('%', "\\%").replace('_', "\\_"))
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn same_phone(a: &str, b: &str) -> bool {
    let (a, b) = (digits(a), digits(b));
    let tail = |s: &str| s.get(s.len().saturating_sub(10)..).unwrap_or(s).to_string();
    !a.is_empty() && (a == b || (a.len() >= 10 && b.len() >= 10 && tail(&a) == tail(&b)))
}

fn date_of(ts: Timestamp) -> String {
    ts.to_zoned_datetime(jiff::tz::TimeZone::UTC).date().to_string()
}

fn sf_datetime(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Salesforce answers datetimes as `2026-11-23T14:30:00.000+0000`.
fn parse_sf_time(value: &str) -> Option<Timestamp> {
    value.parse::<Timestamp>().ok().or_else(|| {
        let stripped = value.strip_suffix("+0000")?;
        format!("{stripped}Z").parse().ok()
    })
}

fn parse_date_start(value: &str) -> Option<Timestamp> {
    let date: jiff::civil::Date = value.parse().ok()?;
    date.to_datetime(jiff::civil::Time::midnight())
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

fn summary(subject: Option<String>, description: Option<String>) -> String {
    let text = match (subject, description) {
        (Some(s), Some(d)) => format!("{s}: {d}"),
        (Some(s), None) => s,
        (None, Some(d)) => d,
        (None, None) => String::new(),
    };
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_bytes(&flat, SUMMARY_BYTES)
}

fn task_priority(priority: Option<&str>) -> &'static str {
    match priority.map(str::to_ascii_uppercase).as_deref() {
        Some("HIGH") => "High",
        Some("LOW") => "Low",
        _ => "Normal",
    }
}

fn call_description(call: &CallLog) -> String {
    let mut description = call.summary.clone();
    if let Some(url) = &call.recording_url {
        description.push_str(&format!("\nRecording: {url}"));
    }
    if let Some(url) = &call.transcript_url {
        description.push_str(&format!("\nTranscript: {url}"));
    }
    description
}

fn call_fields(call: &CallLog) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("Subject".into(), json!(format!("Inbound call ({})", call.source)));
    body.insert("Status".into(), json!("Completed"));
    body.insert("ActivityDate".into(), json!(date_of(call.started_at)));
    body.insert("CallType".into(), json!("Inbound"));
    body.insert("CallDurationInSeconds".into(), json!(call.duration_secs.min(i32::MAX as u64)));
    body.insert("CallObject".into(), json!(truncate_bytes(&call.call_id, 255)));
    if let Some(d) = &call.disposition {
        body.insert("CallDisposition".into(), json!(truncate_bytes(d, 255)));
    }
    body.insert("Description".into(), json!(truncate_bytes(&call_description(call), 32_000)));
    body
}

/// Formats a typed value for a field of the describe's type, or says why it cannot be written.
fn format_value(field: &FieldDescribe, value: &PropertyValue) -> Result<Value, String> {
    let ty = field.ty.as_str();
    let textual = matches!(ty, "string" | "textarea" | "phone" | "email" | "url" | "encryptedstring");
    let numeric = matches!(ty, "double" | "int" | "currency" | "percent" | "long");
    match value {
        PropertyValue::Clear => Ok(Value::Null),
        PropertyValue::Text(s) if textual => Ok(json!(s)),
        PropertyValue::Number(n) if numeric => Ok(Value::Number(n.clone())),
        PropertyValue::Bool(b) if ty == "boolean" => Ok(json!(b)),
        PropertyValue::Date(d) if ty == "date" => Ok(json!(d.to_string())),
        PropertyValue::DateTime(t) if ty == "datetime" => Ok(json!(sf_datetime(*t))),
        PropertyValue::Enumeration(v) | PropertyValue::Text(v) if matches!(ty, "picklist" | "multipicklist") => {
            if field.picklist_values.iter().any(|p| p.active && p.value == *v) {
                Ok(json!(v))
            } else {
                Err(format!("{v} is not an active value of the picklist {}", field.name))
            }
        }
        other => Err(format!("a {} value cannot be written to the {ty} field {}", kind(other), field.name)),
    }
}

fn kind(value: &PropertyValue) -> &'static str {
    match value {
        PropertyValue::Text(_) => "text",
        PropertyValue::Number(_) => "number",
        PropertyValue::Bool(_) => "boolean",
        PropertyValue::Date(_) => "date",
        PropertyValue::DateTime(_) => "datetime",
        PropertyValue::Enumeration(_) => "picklist",
        PropertyValue::Clear => "empty",
    }
}

/// Whether the value read back is the one sent.
fn same_value(sent: &Value, stored: &Value) -> bool {
    match (sent, stored) {
        (Value::Null, Value::Null) => true,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => {
            a == b || matches!((parse_sf_time(a), parse_sf_time(b)), (Some(x), Some(y)) if x == y)
        }
        (a, b) => a == b,
    }
}

#[async_trait]
impl CrmConnector for SalesforceConnector {
    fn vendor(&self) -> &'static str {
        "salesforce"
    }

    async fn find_contacts_by_phone(&self, phone: &PhoneQuery) -> Result<Vec<CrmContact>, ConnectorError> {
        // Terms are digits only (no SOSL reserved characters); both the national number and the
        // full international digits, as typed records may hold either.
        let mut terms = vec![digits(&phone.national), digits(&phone.e164)];
        terms.retain(|t| t.len() >= 2);
        terms.dedup();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let find = terms.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(" OR ");
        let sosl = format!(
            "FIND {{{find}}} IN PHONE FIELDS RETURNING Contact({}), Lead({} WHERE IsConverted = false)",
            Person::Contact.fields(),
            Person::Lead.fields()
        );
        let answer = self.call(Method::GET, &["search"], &[("q", &sosl)], None).await?;
        let hits = answer.get("searchRecords").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(hits
            .iter()
            .filter_map(|r| {
                let ty = r.pointer("/attributes/type").and_then(Value::as_str)?;
                let person = match ty {
                    "Contact" => Person::Contact,
                    "Lead" => Person::Lead,
                    _ => return None,
                };
                Some(to_contact(r, person))
            })
            .collect())
    }

    async fn read_context(&self, contact_id: &str) -> Result<CrmContext, ConnectorError> {
        let person = Person::of(contact_id)?;
        let common = "(SELECT Id, Subject, Status, ActivityDate, OwnerId, IsTask FROM OpenActivities \
                      ORDER BY ActivityDate ASC LIMIT 20), \
                      (SELECT Id, Subject, Description, ActivityDate, ActivitySubtype, IsTask, LastModifiedDate \
                      FROM ActivityHistories ORDER BY ActivityDate DESC, LastModifiedDate DESC LIMIT 5)";
        let query = match person {
            Person::Contact => format!(
                "SELECT {}, Owner.FirstName, Owner.LastName, Owner.Email, \
                 (SELECT OpportunityId, Opportunity.Name, Opportunity.StageName, Opportunity.Amount, \
                 Opportunity.CloseDate FROM OpportunityContactRoles WHERE Opportunity.IsClosed = false), \
                 (SELECT Id, CaseNumber, Subject, Status, Priority FROM Cases WHERE IsClosed = false \
                 ORDER BY CreatedDate DESC LIMIT 20), {common} FROM Contact WHERE Id = {}",
                Person::Contact.fields(),
                quote(contact_id)
            ),
            Person::Lead => format!(
                "SELECT {}, Owner.FirstName, Owner.LastName, Owner.Email, {common} FROM Lead WHERE Id = {}",
                Person::Lead.fields(),
                quote(contact_id)
            ),
        };
        let rows = self.soql(&query).await?;
        let record =
            rows.first().ok_or_else(|| ConnectorError::NotFound(format!("{} {contact_id}", person.sobject())))?;
        let mut open_deals: Vec<CrmDeal> = Vec::new();
        for role in child_records(record, "OpportunityContactRoles") {
            let Some(opp) = role.get("Opportunity").filter(|o| o.is_object()) else { continue };
            let id = text(&role, "OpportunityId").unwrap_or_default();
            if open_deals.iter().any(|d| d.id == id) {
                continue;
            }
            open_deals.push(CrmDeal {
                id,
                name: text(opp, "Name").unwrap_or_default(),
                stage: text(opp, "StageName").unwrap_or_default(),
                amount: text(opp, "Amount"),
                close_date: text(opp, "CloseDate"),
            });
        }
        let open_tickets = child_records(record, "Cases")
            .iter()
            .map(|c| CrmTicket {
                id: text(c, "Id").unwrap_or_default(),
                subject: text(c, "Subject").unwrap_or_default(),
                stage: text(c, "Status").unwrap_or_default(),
                priority: text(c, "Priority"),
            })
            .collect();
        let open_tasks = child_records(record, "OpenActivities")
            .iter()
            .filter(|a| a.get("IsTask").and_then(Value::as_bool).unwrap_or(false))
            .map(|t| CrmTask {
                id: text(t, "Id").unwrap_or_default(),
                subject: text(t, "Subject").unwrap_or_default(),
                status: text(t, "Status").unwrap_or_default(),
                due: text(t, "ActivityDate").and_then(|d| parse_date_start(&d)),
                owner_id: text(t, "OwnerId"),
            })
            .collect();
        let recent_activity = child_records(record, "ActivityHistories")
            .iter()
            .take(RECENT_ACTIVITY)
            .map(|a| CrmActivity {
                id: text(a, "Id").unwrap_or_default(),
                kind: if text(a, "ActivitySubtype").as_deref() == Some("Call") {
                    ActivityKind::Call
                } else {
                    ActivityKind::Note
                },
                at: text(a, "ActivityDate").and_then(|d| parse_date_start(&d)),
                summary: summary(text(a, "Subject"), text(a, "Description")),
            })
            .collect();
        let owner = record.get("Owner").filter(|o| o.is_object()).map(|o| CrmOwner {
            id: text(record, "OwnerId").unwrap_or_default(),
            first_name: text(o, "FirstName"),
            last_name: text(o, "LastName"),
            email: text(o, "Email"),
        });
        Ok(CrmContext {
            contact: to_contact(record, person),
            open_deals,
            open_tickets,
            open_tasks,
            recent_activity,
            owner,
            // A Contact's Account is not read into the context yet (a Lead has only `Company`).
            organization: None,
            properties: Default::default(),
        })
    }

    async fn create_contact(&self, fields: &ContactFields, idempotency_key: &str) -> Result<String, ConnectorError> {
        let person = match self.new_callers {
            NewCallerObject::Lead => Person::Lead,
            NewCallerObject::Contact => Person::Contact,
        };
        let body = Value::Object(self.person_fields(person, fields, true));
        self.upsert(self.new_callers.sobject(), idempotency_key, body).await
    }

    async fn update_contact(&self, contact_id: &str, fields: &ContactFields) -> Result<(), ConnectorError> {
        let person = Person::of(contact_id)?;
        let body = self.person_fields(person, fields, false);
        if body.is_empty() {
            return Ok(());
        }
        self.patch(person.sobject(), contact_id, &Value::Object(body)).await
    }

    async fn log_call(
        &self,
        contact_id: &str,
        call: &CallLog,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        Person::of(contact_id)?;
        let mut body = call_fields(call);
        body.insert("TaskSubtype".into(), json!("Call"));
        body.insert("WhoId".into(), json!(contact_id));
        self.upsert("Task", idempotency_key, Value::Object(body)).await
    }

    async fn update_call_log(&self, call_object_id: &str, call: &CallLog) -> Result<(), ConnectorError> {
        self.patch("Task", call_object_id, &Value::Object(call_fields(call))).await
    }

    async fn record_appointment(
        &self,
        contact_id: &str,
        appointment: &AppointmentRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        Person::of(contact_id)?;
        let mut description = appointment.notes.clone().unwrap_or_default();
        if !description.is_empty() {
            description.push('\n');
        }
        description.push_str(&format!("Calendar event: {}", appointment.calendar_event_id));
        let body = json!({
            "Subject": truncate_bytes(&appointment.title, 255),
            "StartDateTime": sf_datetime(appointment.start),
            "EndDateTime": sf_datetime(appointment.end),
            "Description": description,
            "WhoId": contact_id,
        });
        self.upsert("Event", idempotency_key, body).await
    }

    async fn find_contacts_by_email(&self, email: &str) -> Result<Vec<CrmContact>, ConnectorError> {
        let email = email.trim();
        if email.is_empty() {
            return Ok(Vec::new());
        }
        let condition = format!("Email = {}", quote(email));
        self.find_people(&condition, &condition).await
    }

    async fn find_contacts_by_name_zip(&self, query: &NameZipQuery) -> Result<Vec<CrmContact>, ConnectorError> {
        let mut name = format!("LastName = {}", quote(query.last_name.trim()));
        if let Some(first) = query.first_name.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
            name.push_str(&format!(" AND FirstName = {}", quote(first)));
        }
        let zip = like_prefix(query.zip.trim());
        self.find_people(
            &format!("{name} AND MailingPostalCode LIKE {zip}"),
            &format!("{name} AND PostalCode LIKE {zip}"),
        )
        .await
    }

    async fn update_properties(
        &self,
        contact_id: &str,
        writes: &[PropertyWrite],
    ) -> Result<Vec<PropertyWriteResult>, ConnectorError> {
        let person = Person::of(contact_id)?;
        let describe = self.describe(person.sobject(), false).await?;
        let mut results: Vec<Option<PropertyWriteStatus>> = vec![None; writes.len()];
        let mut pending: Vec<(usize, String, Value)> = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            let Some(field) = describe.field(person.field_name(&write.name)) else {
                results[i] = Some(PropertyWriteStatus::Rejected {
                    reason: format!("no field {} on {}", write.name, person.sobject()),
                });
                continue;
            };
            if !field.updateable {
                results[i] = Some(PropertyWriteStatus::Rejected { reason: format!("{} is read-only", field.name) });
                continue;
            }
            match format_value(field, &write.value) {
                Ok(v) => pending.push((i, field.name.clone(), v)),
                Err(reason) => results[i] = Some(PropertyWriteStatus::Rejected { reason }),
            }
        }
        // A write is all-or-nothing: a field Salesforce rejects is dropped and the rest resent.
        while !pending.is_empty() {
            let body: Map<String, Value> = pending.iter().map(|(_, n, v)| (n.clone(), v.clone())).collect();
            match self.patch(person.sobject(), contact_id, &Value::Object(body)).await {
                Ok(()) => break,
                Err(ConnectorError::Validation { message, fields }) if !fields.is_empty() => {
                    let before = pending.len();
                    pending.retain(|(i, name, _)| {
                        let rejected = fields.iter().any(|f| f.eq_ignore_ascii_case(name));
                        if rejected {
                            results[*i] = Some(PropertyWriteStatus::Rejected { reason: message.clone() });
                        }
                        !rejected
                    });
                    if pending.len() == before {
                        return Err(ConnectorError::Validation { message, fields });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !pending.is_empty() {
            let names: Vec<&str> = pending.iter().map(|(_, n, _)| n.as_str()).collect();
            let stored = self.read_fields(person.sobject(), contact_id, &names).await?;
            for (i, name, sent) in &pending {
                let back = stored.get(name).cloned().unwrap_or(Value::Null);
                results[*i] = Some(if same_value(sent, &back) {
                    PropertyWriteStatus::Written
                } else {
                    PropertyWriteStatus::Ignored
                });
            }
        }
        Ok(writes
            .iter()
            .zip(results)
            .map(|(w, status)| PropertyWriteResult {
                name: w.name.clone(),
                status: status.unwrap_or(PropertyWriteStatus::Rejected { reason: "not written".into() }),
            })
            .collect())
    }

    async fn add_secondary_phone(&self, contact_id: &str, e164: &str) -> Result<SecondaryPhoneOutcome, ConnectorError> {
        let person = Person::of(contact_id)?;
        let all: &[&str] = match person {
            Person::Contact => &["Phone", "MobilePhone", "HomePhone", "OtherPhone"],
            Person::Lead => &["Phone", "MobilePhone"],
        };
        let stored = self.read_fields(person.sobject(), contact_id, all).await?;
        let value = |f: &str| stored.get(f).and_then(Value::as_str).filter(|s| !s.trim().is_empty()).map(String::from);
        if let Some(field) = all.iter().find(|f| value(f).is_some_and(|v| same_phone(&v, e164))) {
            return Ok(SecondaryPhoneOutcome::AlreadyPresent { property: field.to_string() });
        }
        let Some(free) = PHONE_SLOTS.iter().find(|f| value(f).is_none()) else {
            return Ok(SecondaryPhoneOutcome::NoFreeSlot);
        };
        self.patch(person.sobject(), contact_id, &json!({ *free: e164 })).await?;
        Ok(SecondaryPhoneOutcome::Added { property: free.to_string() })
    }

    async fn log_note(
        &self,
        contact_id: &str,
        note: &NoteRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        Person::of(contact_id)?;
        let body = json!({
            "Subject": "Note",
            "Status": "Completed",
            "TaskSubtype": "Task",
            "ActivityDate": date_of(note.at),
            "Description": truncate_bytes(&note.body, 32_000),
            "WhoId": contact_id,
        });
        self.upsert("Task", idempotency_key, body).await
    }

    async fn create_task(
        &self,
        contact_id: &str,
        task: &TaskRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        Person::of(contact_id)?;
        let mut body = json!({
            "Subject": truncate_bytes(&task.subject, 255),
            "Status": "Not Started",
            "TaskSubtype": "Task",
            "Priority": task_priority(task.priority.as_deref()),
            // ActivityDate is the due *date*; the reminder carries the time.
            "ActivityDate": date_of(task.due),
            "ReminderDateTime": sf_datetime(task.due),
            "IsReminderSet": true,
            "WhoId": contact_id,
        });
        if let Some(description) = &task.body {
            body["Description"] = json!(truncate_bytes(description, 32_000));
        }
        if let Some(owner) = &task.owner_id {
            body["OwnerId"] = json!(owner);
        }
        self.upsert("Task", idempotency_key, body).await
    }

    async fn set_deal_stage(&self, deal_id: &str, stage: &str) -> Result<(), ConnectorError> {
        let value = self.opportunity_stage(stage).await?;
        self.patch("Opportunity", deal_id, &json!({ "StageName": value })).await
    }

    /// An open Opportunity on a Contact, linked through an `OpportunityContactRole` (primary) —
    /// the relation the context reads open deals through. Salesforce requires `Name`,
    /// `StageName` and `CloseDate` on create
    /// (<https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_opportunity.htm>);
    /// without a stage the picklist's first active value (`Prospecting` in a standard org) is
    /// used, the close date is 30 days out. A Lead has no opportunities until it is converted
    /// (`OpportunityContactRole.ContactId` names a Contact), so a Lead is refused without a
    /// request. Opportunities carry no External ID field (only the records the write-back creates
    /// do): like HubSpot's, this is a plain create — only the pilot seeds deals, once per run.
    async fn create_deal(
        &self,
        contact_id: &str,
        deal: &DealRecord,
        _idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        if Person::of(contact_id)? == Person::Lead {
            return Err(ConnectorError::Validation {
                message: "a Lead has no opportunities until it is converted to a Contact".into(),
                fields: vec!["ContactId".into()],
            });
        }
        let amount = match deal.amount.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(a.parse::<f64>().ok().filter(|a| a.is_finite()).ok_or_else(|| {
                ConnectorError::Validation { message: format!("{a:?} is not an amount"), fields: vec!["Amount".into()] }
            })?),
        };
        let stage = match deal.stage.as_deref() {
            Some(stage) => self.opportunity_stage(stage).await?,
            None => self
                .describe("Opportunity", false)
                .await?
                .field("StageName")
                .and_then(|f| f.picklist_values.iter().find(|p| p.active))
                .map(|p| p.value.clone())
                .ok_or_else(|| {
                    ConnectorError::Permanent("the Opportunity stage picklist has no active value".into())
                })?,
        };
        let mut body = json!({
            "Name": truncate_bytes(&deal.name, 120),
            "StageName": stage,
            "CloseDate": date_of(self.clock.now() + jiff::SignedDuration::from_hours(24 * 30)),
        });
        if let Some(amount) = amount {
            body["Amount"] = json!(amount);
        }
        let created = self.call(Method::POST, &["sobjects", "Opportunity"], &[], Some(&body)).await?;
        let id = created
            .get("id")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| ConnectorError::Transient("create answer without an id".into()))?;
        let role = json!({ "OpportunityId": id, "ContactId": contact_id, "IsPrimary": true });
        if let Err(e) = self.call(Method::POST, &["sobjects", "OpportunityContactRole"], &[], Some(&role)).await {
            // Without its contact role the opportunity is invisible from the contact: undo it.
            let _ = self.delete_object(CrmObjectType::Deal, &id).await;
            return Err(e);
        }
        Ok(id)
    }

    async fn property_history(
        &self,
        contact_id: &str,
        properties: &[String],
    ) -> Result<Vec<PropertyHistory>, ConnectorError> {
        let person = Person::of(contact_id)?;
        if properties.is_empty() {
            return Ok(Vec::new());
        }
        let describe = self.describe(person.sobject(), false).await?;
        // A property the object does not have (a lead's `lifecyclestage` is its `Status`; a
        // contact has none) has no history, and is not asked for: naming it is INVALID_FIELD.
        let names: Vec<Option<String>> =
            properties.iter().map(|p| describe.field(person.field_name(p)).map(|f| f.name.clone())).collect();
        let known: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
        if known.is_empty() {
            return Ok(properties.iter().map(|p| PropertyHistory { name: p.clone(), versions: Vec::new() }).collect());
        }
        let (history, key) = match person {
            Person::Contact => ("ContactHistory", "ContactId"),
            Person::Lead => ("LeadHistory", "LeadId"),
        };
        let list = known.iter().map(|n| quote(n)).collect::<Vec<_>>().join(", ");
        let query = format!(
            "SELECT Id, Field, OldValue, NewValue, CreatedDate, CreatedById FROM {history} WHERE {key} = {} \
             AND Field IN ({list}) ORDER BY CreatedDate DESC, Id DESC LIMIT 500",
            quote(contact_id)
        );
        let (rows, own) = tokio::join!(self.soql(&query), self.own_user_id());
        let (rows, own) = (rows?, own?);
        let source = |by: &Option<String>| if by.as_deref() == Some(own.as_str()) { "INTEGRATION" } else { "CRM_UI" };
        let mut histories: Vec<PropertyHistory> = properties
            .iter()
            .zip(&names)
            .map(|(asked, name)| PropertyHistory {
                name: asked.clone(),
                versions: rows
                    .iter()
                    .filter(|r| {
                        name.as_deref().is_some_and(|n| text(r, "Field").is_some_and(|f| f.eq_ignore_ascii_case(n)))
                    })
                    .filter_map(|r| {
                        let by = text(r, "CreatedById");
                        Some(PropertyVersion {
                            value: value_text(r.get("NewValue")),
                            timestamp: parse_sf_time(&text(r, "CreatedDate")?)?,
                            // Salesforce records who, not through what: our own user is the
                            // integration, anyone else a person.
                            source_type: source(&by).into(),
                            source_id: None,
                            updated_by_user_id: by,
                        })
                    })
                    .collect(),
            })
            .collect();
        // A field without history tracking has no rows: its conflict data is the record's last
        // modification (who and when), with the field's current value. Coarser — any change to
        // the record counts — and so on the safe side: a person's recent edit of anything holds
        // our overwrite back.
        let untracked: Vec<(usize, &str)> = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((i, n.as_deref()?)))
            .filter(|(i, _)| histories[*i].versions.is_empty())
            .collect();
        if !untracked.is_empty() {
            let mut fields: Vec<&str> = untracked.iter().map(|(_, n)| *n).collect();
            fields.extend(["LastModifiedDate", "LastModifiedById"]);
            let record = self.read_fields(person.sobject(), contact_id, &fields).await?;
            let record = Value::Object(record);
            let by = text(&record, "LastModifiedById");
            if let Some(at) = text(&record, "LastModifiedDate").and_then(|t| parse_sf_time(&t)) {
                for (i, name) in untracked {
                    histories[i].versions.push(PropertyVersion {
                        value: value_text(record.get(name)),
                        timestamp: at,
                        source_type: source(&by).into(),
                        source_id: Some("LastModifiedById".into()),
                        updated_by_user_id: by.clone(),
                    });
                }
            }
        }
        Ok(histories)
    }

    /// A note on a Case: a completed Task whose `WhatId` is the case.
    async fn log_ticket_note(
        &self,
        ticket_id: &str,
        note: &NoteRecord,
        idempotency_key: &str,
    ) -> Result<String, ConnectorError> {
        let well_formed = matches!(ticket_id.len(), 15 | 18) && ticket_id.chars().all(|c| c.is_ascii_alphanumeric());
        if !well_formed || !ticket_id.starts_with("500") {
            return Err(ConnectorError::NotFound(format!("no Salesforce case has the id {ticket_id}")));
        }
        let body = json!({
            "Subject": "Note",
            "Status": "Completed",
            "TaskSubtype": "Task",
            "ActivityDate": date_of(note.at),
            "Description": truncate_bytes(&note.body, 32_000),
            "WhatId": ticket_id,
        });
        self.upsert("Task", idempotency_key, body).await
    }

    /// Contacts and Leads: their field history ([`CrmConnector::property_history`]). Other
    /// objects: the record's last modification (who, when) with each field's current value —
    /// activities have no field history in Salesforce, and `OpportunityFieldHistory` is not read
    /// yet. Neutral (HubSpot-style) deal property names are mapped to Opportunity fields.
    async fn object_history(
        &self,
        object: CrmObjectType,
        id: &str,
        properties: &[String],
    ) -> Result<Vec<PropertyHistory>, ConnectorError> {
        let sobject = match object {
            CrmObjectType::Contact => return self.property_history(id, properties).await,
            CrmObjectType::Deal => "Opportunity",
            CrmObjectType::Call | CrmObjectType::Note | CrmObjectType::Task => "Task",
            CrmObjectType::Meeting => "Event",
        };
        if !id.chars().all(|c| c.is_ascii_alphanumeric()) || !matches!(id.len(), 15 | 18) {
            return Err(ConnectorError::NotFound(format!("no Salesforce {sobject} has the id {id}")));
        }
        let describe = self.describe(sobject, false).await?;
        let field_of = |p: &str| {
            let mapped = match (object, p) {
                (CrmObjectType::Deal, "dealstage") => "StageName",
                (CrmObjectType::Deal, "dealname") => "Name",
                (CrmObjectType::Deal, "amount") => "Amount",
                (CrmObjectType::Deal, "closedate") => "CloseDate",
                (_, "hubspot_owner_id") => "OwnerId",
                _ => p,
            };
            describe.field(mapped).map(|f| f.name.clone())
        };
        let names: Vec<Option<String>> = properties.iter().map(|p| field_of(p)).collect();
        let mut fields: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
        fields.extend(["LastModifiedDate", "LastModifiedById"]);
        let (record, own) = tokio::join!(self.read_fields(sobject, id, &fields), self.own_user_id());
        let record = Value::Object(record?);
        let own = own?;
        let by = text(&record, "LastModifiedById");
        let at = text(&record, "LastModifiedDate").and_then(|t| parse_sf_time(&t));
        Ok(properties
            .iter()
            .zip(&names)
            .map(|(asked, name)| PropertyHistory {
                name: asked.clone(),
                versions: at
                    .map(|at| PropertyVersion {
                        value: name.as_deref().map(|n| value_text(record.get(n))).unwrap_or_default(),
                        timestamp: at,
                        source_type: if by.as_deref() == Some(own.as_str()) { "INTEGRATION" } else { "CRM_UI" }.into(),
                        source_id: Some("LastModifiedById".into()),
                        updated_by_user_id: by.clone(),
                    })
                    .into_iter()
                    .collect(),
            })
            .collect())
    }

    /// `DELETE /sobjects/{T}/{id}` (to the recycle bin); one already gone is not an error.
    /// Salesforce's Event has no standard outcome field (its fields: subject, times, `WhoId`,
    /// `WhatId`, description, … — nothing about attendance:
    /// https://developer.salesforce.com/docs/platform/object-reference/references/standard-objects/object-event.html),
    /// so without the tenant's custom field (`outcome_field`, e.g. `Outcome__c`) nothing is read.
    /// With it: `GET /sobjects/Event/{id}?fields=<field>`; an org without the field answers 400
    /// `INVALID_FIELD` (an error: the setting is wrong), an empty field is no outcome yet.
    async fn appointment_status(
        &self,
        object_id: &str,
        outcome_field: Option<&str>,
    ) -> Result<CrmAppointmentStatus, ConnectorError> {
        let Some(field) = outcome_field else {
            return Ok(CrmAppointmentStatus::NotTracked);
        };
        let record = self.read_fields("Event", object_id, &[field]).await?;
        let value = record
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(field))
            .map(|(_, v)| v)
            .ok_or_else(|| ConnectorError::Transient(format!("unreadable Salesforce Event: no {field}")))?;
        match value {
            Value::Null => Ok(CrmAppointmentStatus::NotYetKnown),
            Value::String(s) => Ok(CrmAppointmentStatus::of_custom_value(s)),
            _ => Err(ConnectorError::Transient(format!("unreadable Salesforce Event: {field} is not text"))),
        }
    }

    async fn delete_object(&self, object: CrmObjectType, id: &str) -> Result<(), ConnectorError> {
        let sobject = match object {
            CrmObjectType::Contact => match Person::of(id) {
                Ok(p) => p.sobject(),
                Err(_) => return Ok(()),
            },
            CrmObjectType::Deal => "Opportunity",
            CrmObjectType::Call | CrmObjectType::Note | CrmObjectType::Task => "Task",
            CrmObjectType::Meeting => "Event",
        };
        if !id.chars().all(|c| c.is_ascii_alphanumeric()) || !matches!(id.len(), 15 | 18) {
            return Ok(());
        }
        match self.call(Method::DELETE, &["sobjects", sobject, id], &[], None).await {
            Ok(_) | Err(ConnectorError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Contacts, then unconverted Leads, modified at or after `since`: one SOQL query per object,
    /// `WHERE SystemModstamp >= <since> ORDER BY SystemModstamp, Id`, followed through its query
    /// locator (`nextRecordsUrl`, "Query More Results":
    /// <https://developer.salesforce.com/docs/platform/api-rest/guide/resources-query.html>).
    /// `SystemModstamp` rather than `LastModifiedDate`: it is indexed and also moves on system
    /// changes, and Salesforce recommends it for replication-style polling
    /// (<https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/system_fields.htm>).
    /// A SOQL dateTime literal has whole seconds, so `since` is floored: the records of that
    /// second come again, which the index absorbs. The cursor is `Contact|<locator>`,
    /// `Lead|` (start the Lead query) or `Lead|<locator>`. Deleted and converted records are
    /// listed by [`CrmConnector::contacts_removed_since`].
    async fn contacts_changed_since(
        &self,
        since: Option<Timestamp>,
        cursor: Option<&str>,
    ) -> Result<ContactPage, ConnectorError> {
        let (person, locator) = match cursor {
            None => (Person::Contact, None),
            Some(c) => {
                let bad = || ConnectorError::Permanent(format!("not a Salesforce pull cursor: {c:?}"));
                let (object, locator) = c.split_once('|').ok_or_else(bad)?;
                let person = match object {
                    "Contact" => Person::Contact,
                    "Lead" => Person::Lead,
                    _ => return Err(bad()),
                };
                if !locator.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-') {
                    return Err(bad());
                }
                (person, Some(locator).filter(|l| !l.is_empty()))
            }
        };
        let answer = match locator {
            Some(locator) => {
                self.call_with_headers(Method::GET, &["query", locator], &[], None, &[PULL_QUERY_OPTIONS]).await?
            }
            None => {
                let mut conditions = Vec::new();
                if let Some(since) = since {
                    conditions.push(format!("SystemModstamp >= {}", since.strftime("%Y-%m-%dT%H:%M:%SZ")));
                }
                if person == Person::Lead {
                    conditions.push("IsConverted = false".to_string());
                }
                let filter =
                    if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
                let q = format!(
                    "SELECT {}, SystemModstamp FROM {}{filter} ORDER BY SystemModstamp ASC, Id ASC",
                    person.fields(),
                    person.sobject()
                );
                self.call_with_headers(Method::GET, &["query"], &[("q", &q)], None, &[PULL_QUERY_OPTIONS]).await?
            }
        };
        let rows = records(&answer);
        let newest = rows.iter().filter_map(|r| text(r, "SystemModstamp")).filter_map(|t| parse_sf_time(&t)).max();
        let next_locator = answer
            .get("nextRecordsUrl")
            .and_then(Value::as_str)
            .and_then(|u| u.rsplit_once("/query/"))
            .map(|(_, locator)| locator.to_string());
        let next_cursor = match (next_locator, person) {
            (Some(locator), _) => Some(format!("{}|{locator}", person.sobject())),
            (None, Person::Contact) => Some("Lead|".to_string()),
            (None, Person::Lead) => None,
        };
        Ok(ContactPage { contacts: rows.iter().map(|r| to_contact(r, person)).collect(), newest, next_cursor })
    }

    /// Deleted Contacts and Leads, from the "Get Deleted Records" resource
    /// (`GET /sobjects/{Contact|Lead}/deleted/?start=&end=`,
    /// <https://developer.salesforce.com/docs/platform/api-rest/guide/resources-getdeleted.html>),
    /// and Leads converted since `since` (`IsConverted = true AND SystemModstamp >= since`),
    /// reported as merged into their `ConvertedContactId`: a converted Lead stays readable by id,
    /// so without this the index would keep matching callers to it.
    ///
    /// The resource's rules (the SOAP guide's "getDeleted()" rules and guidelines,
    /// <https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_getdeleted.htm>):
    /// seconds are ignored, `start` must precede `end` by more than a minute (else
    /// `INVALID_REPLICATION_DATE`: a shorter window is not asked, and the next pull asks from the
    /// same start), and the delete log covers at most 15 days (less when it was purged:
    /// `earliestDateAvailable` later than `start`, or `INVALID_REPLICATION_DATE`). A window the
    /// log no longer covers answers `complete: false`, and the pull re-reads everything. The next
    /// window starts at the answer's `latestDateCovered`, as the guide asks. A merge deletes the
    /// losing records: those with a `MasterRecordId` (read by `queryAll`) are reported merged
    /// into it; the master itself changed, and the change pull re-reads it.
    async fn contacts_removed_since(
        &self,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<RemovedPage>, ConnectorError> {
        let minute = |t: Timestamp| Timestamp::from_second(t.as_second().div_euclid(60) * 60).unwrap_or(t);
        let (start, end) = (minute(since), minute(now));
        if end.duration_since(start) <= jiff::SignedDuration::from_mins(1) {
            return Ok(Some(RemovedPage { removed: Vec::new(), covered_until: None, complete: true }));
        }
        if now.duration_since(start) > jiff::SignedDuration::from_hours(DELETE_LOG_DAYS * 24) {
            return Ok(Some(RemovedPage { removed: Vec::new(), covered_until: Some(now), complete: false }));
        }
        let fmt = |t: Timestamp| t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string();
        let (start_text, end_text) = (fmt(start), fmt(end));
        let mut removed = Vec::new();
        let mut covered_until: Option<Timestamp> = None;
        for person in [Person::Contact, Person::Lead] {
            let raw = self
                .send_with_headers(
                    Method::GET,
                    &["sobjects", person.sobject(), "deleted", ""],
                    &[("start", &start_text), ("end", &end_text)],
                    None,
                    &[],
                )
                .await?;
            if !raw.status.is_success() {
                let purged = parse_errors(&raw.body).iter().any(|e| e.error_code == "INVALID_REPLICATION_DATE");
                if purged {
                    return Ok(Some(RemovedPage { removed: Vec::new(), covered_until: Some(now), complete: false }));
                }
                return Err(classify(&raw));
            }
            let answer: Value = serde_json::from_slice(&raw.body)
                .map_err(|_| ConnectorError::Transient("unreadable Salesforce deleted-records answer".into()))?;
            let earliest = answer.get("earliestDateAvailable").and_then(Value::as_str).and_then(parse_sf_time);
            if earliest.is_some_and(|e| e > start) {
                return Ok(Some(RemovedPage { removed: Vec::new(), covered_until: Some(now), complete: false }));
            }
            let latest = answer.get("latestDateCovered").and_then(Value::as_str).and_then(parse_sf_time).unwrap_or(end);
            covered_until = Some(covered_until.map_or(latest, |c| c.min(latest)));
            let ids: Vec<String> = answer
                .get("deletedRecords")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|row| row.get("id").and_then(Value::as_str))
                .filter(|id| Person::of(id).is_ok())
                .map(str::to_owned)
                .collect();
            let masters = self.merge_masters(person, &ids).await?;
            for id in ids {
                let merged_into = masters.get(&id).cloned();
                removed.push(RemovedContact { id, merged_into });
            }
        }
        let q = format!(
            "SELECT Id, ConvertedContactId, SystemModstamp FROM Lead WHERE IsConverted = true AND SystemModstamp >= {} \
             ORDER BY SystemModstamp ASC, Id ASC",
            since.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        let mut answer =
            self.call_with_headers(Method::GET, &["query"], &[("q", &q)], None, &[PULL_QUERY_OPTIONS]).await?;
        loop {
            for row in records(&answer) {
                if let Some(id) = text(&row, "Id") {
                    removed.push(RemovedContact { id, merged_into: text(&row, "ConvertedContactId") });
                }
            }
            let next = answer
                .get("nextRecordsUrl")
                .and_then(Value::as_str)
                .and_then(|u| u.rsplit_once("/query/"))
                .map(|(_, locator)| locator.to_string())
                .filter(|l| l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-'));
            let Some(locator) = next else { break };
            answer =
                self.call_with_headers(Method::GET, &["query", &locator], &[], None, &[PULL_QUERY_OPTIONS]).await?;
        }
        Ok(Some(RemovedPage { removed, covered_until, complete: true }))
    }

    /// A query locator pages to the end: no cap, so a long pull never restarts mid-way (which,
    /// with Contacts pulled before Leads, would skip Leads older than the newest Contact).
    fn pull_query_cap(&self) -> Option<usize> {
        None
    }
}

fn value_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

// ----- errors --------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SfError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    fields: Vec<String>,
}

/// The error array (or, from some resources, a single error object).
fn parse_errors(body: &[u8]) -> Vec<SfError> {
    serde_json::from_slice::<Vec<SfError>>(body)
        .or_else(|_| serde_json::from_slice::<SfError>(body).map(|e| vec![e]))
        .unwrap_or_default()
}

/// `api-usage=25/5000` from `Sforce-Limit-Info`.
fn limit_info(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("sforce-limit-info")?.to_str().ok()?;
    value.split(';').map(str::trim).find(|p| p.starts_with("api-usage=")).map(String::from)
}

/// Maps a non-2xx answer to a [`ConnectorError`], by the body's `errorCode` first.
fn classify(raw: &Raw) -> ConnectorError {
    let errors = parse_errors(&raw.body);
    let code = errors.first().map(|e| e.error_code.as_str()).unwrap_or_default();
    let message = {
        let joined = errors.iter().map(|e| format!("{}: {}", e.error_code, e.message)).collect::<Vec<_>>().join("; ");
        if joined.is_empty() { format!("HTTP {}", raw.status.as_u16()) } else { truncate_bytes(&joined, 300) }
    };
    let fields: Vec<String> = {
        let mut all: Vec<String> = errors.iter().flat_map(|e| e.fields.iter().cloned()).collect();
        all.dedup();
        all
    };
    match code {
        // A rolling 24-hour allowance: no hint of when it frees up, so no retry_after — the
        // write-back's own backoff decides.
        "REQUEST_LIMIT_EXCEEDED" => ConnectorError::RateLimited {
            retry_after: None,
            detail: match limit_info(&raw.headers) {
                Some(usage) => format!("REQUEST_LIMIT_EXCEEDED ({usage})"),
                None => "REQUEST_LIMIT_EXCEEDED".into(),
            },
        },
        "INVALID_SESSION_ID" => ConnectorError::AuthExpired,
        "UNABLE_TO_LOCK_ROW" => ConnectorError::RateLimited {
            retry_after: Some(Duration::from_secs(1)),
            detail: "UNABLE_TO_LOCK_ROW".into(),
        },
        "SERVER_UNAVAILABLE" | "UNKNOWN_EXCEPTION" => ConnectorError::Transient(format!("Salesforce answered {code}")),
        "NOT_FOUND" | "ENTITY_IS_DELETED" => ConnectorError::NotFound(message),
        "DUPLICATE_VALUE" | "DUPLICATES_DETECTED" => {
            ConnectorError::Conflict { existing_id: duplicate_id(&errors), message }
        }
        "API_DISABLED_FOR_ORG" | "API_CURRENTLY_DISABLED" => ConnectorError::AuthRevoked(message),
        _ => match raw.status.as_u16() {
            300 => ConnectorError::Conflict {
                message: "the external id matches several records".into(),
                existing_id: None,
            },
            400 => ConnectorError::Validation { message, fields },
            401 => ConnectorError::AuthRevoked(message),
            404 => ConnectorError::NotFound(message),
            408 | 500..=599 => ConnectorError::Transient(format!("Salesforce answered HTTP {}", raw.status.as_u16())),
            _ => ConnectorError::Permanent(format!("HTTP {}: {message}", raw.status.as_u16())),
        },
    }
}

/// `duplicate value found: Callside_Key__c duplicates value on record with id: 003...`
fn duplicate_id(errors: &[SfError]) -> Option<String> {
    errors.iter().find_map(|e| {
        let (_, tail) = e.message.rsplit_once("record with id: ")?;
        let id: String = tail.chars().take_while(char::is_ascii_alphanumeric).collect();
        (!id.is_empty()).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, headers: &[(&'static str, &str)], body: &str) -> Raw {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        Raw { status: StatusCode::from_u16(status).unwrap(), headers: map, body: body.as_bytes().to_vec() }
    }

    /// The rate limit is a 403 whose body says `REQUEST_LIMIT_EXCEEDED`: classified by the code,
    /// not the status, and carrying the `Sforce-Limit-Info` usage
    /// (<https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm>).
    #[test]
    fn golden_request_limit_exceeded_is_rate_limited() {
        let r = raw(
            403,
            &[("sforce-limit-info", "api-usage=15000/15000")],
            r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
        );
        match classify(&r) {
            ConnectorError::RateLimited { retry_after: None, detail } => {
                assert_eq!(detail, "REQUEST_LIMIT_EXCEEDED (api-usage=15000/15000)")
            }
            other => panic!("{other:?}"),
        }
        // Another 403 is not a rate limit.
        let forbidden = raw(403, &[], r#"[{"message":"no access","errorCode":"INSUFFICIENT_ACCESS_OR_READONLY"}]"#);
        assert!(matches!(classify(&forbidden), ConnectorError::Permanent(_)));
    }

    /// The create-error example of the REST API guide
    /// (<https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api/dome_sobject_create.htm>).
    #[test]
    fn golden_create_error_is_validation() {
        let r = raw(
            400,
            &[],
            r#"[{"message":"The Id field should not be specified in the sobject data.",
"errorCode":"INVALID_FIELD"}]"#,
        );
        match classify(&r) {
            ConnectorError::Validation { message, fields } => {
                assert!(message.contains("The Id field should not be specified"), "{message}");
                assert!(fields.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let missing = raw(
            400,
            &[],
            r#"[{"message":"Required fields are missing: [LastName]","errorCode":"REQUIRED_FIELD_MISSING","fields":["LastName"]}]"#,
        );
        assert!(matches!(classify(&missing), ConnectorError::Validation { fields, .. } if fields == ["LastName"]));
    }

    #[test]
    fn golden_session_expired_and_not_found() {
        let expired = raw(401, &[], r#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#);
        assert_eq!(classify(&expired), ConnectorError::AuthExpired);
        let gone = raw(404, &[], r#"[{"errorCode":"NOT_FOUND","message":"The requested resource does not exist"}]"#);
        assert!(matches!(classify(&gone), ConnectorError::NotFound(_)));
        let html = raw(503, &[], "<html>Service Unavailable</html>");
        assert!(matches!(classify(&html), ConnectorError::Transient(_)));
        let dup = raw(
            400,
            &[],
            r#"[{"message":"duplicate value found: Callside_Key__c duplicates value on record with id: 0038d0000000001AAA","errorCode":"DUPLICATE_VALUE","fields":[]}]"#,
        );
        assert!(
            matches!(classify(&dup), ConnectorError::Conflict { existing_id: Some(id), .. } if id == "0038d0000000001AAA")
        );
    }

    /// The upsert answers of the REST API guide: `{"id", "errors": [], "success": true,
    /// "created": true|false}` (<https://developer.salesforce.com/docs/platform/api-rest/guide/dome-upsert.html>).
    #[test]
    fn golden_upsert_answer_shape() {
        let created: Value =
            serde_json::from_str(r#"{"id" : "00190000001pPvHAAU", "errors" : [ ], "success" : true, "created": true}"#)
                .unwrap();
        assert_eq!(created.get("id").and_then(Value::as_str), Some("00190000001pPvHAAU"));
    }

    #[test]
    fn soql_literals_are_escaped() {
        assert_eq!(quote("O'Brien"), r"'O\'Brien'");
        assert_eq!(quote(r"back\slash"), r"'back\\slash'");
        assert_eq!(like_prefix("94_07%"), r"'94\_07\%%'");
        assert_eq!(like_prefix("O'B"), r"'O\'B%'");
    }

    #[test]
    fn ids_select_the_object_and_bad_ids_are_not_found() {
        assert_eq!(Person::of("0038d0000000001AAA").unwrap(), Person::Contact);
        assert_eq!(Person::of("00Q8d0000000001").unwrap(), Person::Lead);
        for bad in ["999999999", "0018d0000000001AAA", "003'; DROP", ""] {
            assert!(matches!(Person::of(bad), Err(ConnectorError::NotFound(_))), "{bad}");
        }
    }

    #[test]
    fn typed_values_follow_the_describe() {
        let field = |ty: &str, values: &[&str]| FieldDescribe {
            name: "F__c".into(),
            ty: ty.into(),
            updateable: true,
            picklist_values: values
                .iter()
                .map(|v| PicklistValue { value: v.to_string(), label: Some(v.to_string()), active: true })
                .collect(),
        };
        let date: jiff::civil::Date = "2026-12-01".parse().unwrap();
        assert_eq!(format_value(&field("date", &[]), &PropertyValue::Date(date)).unwrap(), json!("2026-12-01"));
        let at: Timestamp = "2026-11-23T14:30:00Z".parse().unwrap();
        assert_eq!(
            format_value(&field("datetime", &[]), &PropertyValue::DateTime(at)).unwrap(),
            json!("2026-11-23T14:30:00.000Z")
        );
        let pick = field("picklist", &["Phone", "Email"]);
        assert!(format_value(&pick, &PropertyValue::Enumeration("Phone".into())).is_ok());
        assert!(format_value(&pick, &PropertyValue::Enumeration("phone".into())).is_err());
        assert!(format_value(&field("double", &[]), &PropertyValue::Text("3".into())).is_err());
        assert!(same_value(&json!("2026-11-23T14:30:00.000Z"), &json!("2026-11-23T14:30:00.000+0000")));
        assert!(same_value(&json!(3), &json!(3.0)));
    }
}
