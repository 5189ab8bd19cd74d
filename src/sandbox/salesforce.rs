//! An in-process Salesforce emulator: the REST API's sObject, query (SOQL), search (SOSL) and
//! describe resources, external-id upsert, field history, the OAuth 2.0 web server flow, and
//! Salesforce's error bodies, limit header and faults. The same
//! [`crate::connectors::crm::salesforce::SalesforceConnector`] that talks to an org talks to this
//! server; only the instance URL and the token differ.
//!
//! Behaviour follows Salesforce's documentation; the pages are cited where the behaviour is
//! surprising:
//!
//! - Errors (<https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm>):
//!   the body is a JSON *array* `[{"message", "errorCode", "fields"}]`; a create of an invalid body
//!   answers e.g. `[{"message":"The Id field should not be specified in the sobject data.",
//!   "errorCode":"INVALID_FIELD"}]`
//!   (<https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api/dome_sobject_create.htm>).
//!   An expired or unknown token answers 401 `INVALID_SESSION_ID` "Session expired or invalid"
//!   (<https://developer.salesforce.com/docs/atlas.en-us.198.0.api_rest.meta/api_rest/intro_understanding_refresh_token_oauth.htm>).
//!   A write is all-or-nothing: one bad field rejects the request, naming the field in `fields`.
//! - Limits: the org's daily API allowance is a rolling 24-hour count; past it every request
//!   answers **403** `REQUEST_LIMIT_EXCEEDED` "TotalRequests Limit exceeded." — no 429, no
//!   `Retry-After` (<https://sfdecoded.github.io/errors/request-limit-exceeded.html>,
//!   <https://success.salesforce.com/answers?id=90630000000gnuYAAQ>). Every REST answer carries
//!   `Sforce-Limit-Info: api-usage=<used>/<limit>`
//!   (<https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_api_usage.htm>).
//! - Create (`POST /sobjects/{T}`, 201 `{id, errors, success}`), read
//!   (`GET /sobjects/{T}/{id}?fields=`), update (`PATCH`, 204), describe
//!   (`GET /sobjects/{T}/describe`, `fields[].picklistValues`), and upsert by external id
//!   (`PATCH /sobjects/{T}/{ExternalIdField}/{value}`: 201 with `created: true` when new, 200 with
//!   `created: false` when it updated the match, 300 when the value matches several records)
//!   (<https://developer.salesforce.com/docs/platform/api-rest/guide/dome-upsert.html>).
//! - SOQL (`GET /query?q=`): `{totalSize, done, records}` with `attributes {type, url}` on every
//!   record; parent fields (`Owner.FirstName`) nest as objects (`null` without a parent); child
//!   subqueries (`(SELECT .. FROM Cases)`) nest as `{totalSize, done, records}` or `null` when
//!   empty. String comparisons are case-insensitive. `OpenActivities` / `ActivityHistories` are
//!   the open and closed tasks and events of a contact or lead.
//! - SOSL (`GET /search?q=FIND {..} IN PHONE FIELDS RETURNING Contact(..), Lead(..)`,
//!   <https://developer.salesforce.com/docs/platform/salesforce-soql-sosl/guide/sforce-api-calls-sosl-in.html>,
//!   <http://www.salesforce.com/us/developer/docs/api/Content/sforce_api_calls_sosl_find.htm>):
//!   answers `{"searchRecords": [...]}`; search is case-insensitive and words are delimited by
//!   spaces, punctuation and letter/digit changes, so a stored `(415) 555-0134` is found by
//!   `4155550134` (the partner-API sample searches phone fields with the `4155551212` layout,
//!   <https://developer.salesforce.com/docs/atlas.en-us.262.0.api.meta/api/sample_search_call.htm>).
//!   Here a phone is indexed as its digit string, its digit groups, and — for an 11-digit number
//!   starting with 1 — its 10-digit national number; a term matches a token by digits, `*` as a
//!   trailing wildcard. The index lags writes while the lag switch is on (SOQL never lags).
//! - Web-to-Lead fills a missing Last Name and Company with `[not provided]` because both are
//!   universally required on Lead (<https://help.salesforce.com/apex/HTViewSolution?id=000171026&language=en_US>);
//!   the API itself answers `REQUIRED_FIELD_MISSING` "Required fields are missing: [LastName]".
//! - OAuth (<https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_web_server_flow.htm>,
//!   <https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_refresh_token_flow.htm>):
//!   `GET /services/oauth2/authorize?response_type=code&..` approves at once and redirects with
//!   `code` and `state` (PKCE `S256` checked at the exchange); `POST /services/oauth2/token`
//!   answers `{access_token, refresh_token, signature, scope, instance_url, id, token_type,
//!   issued_at}` — **no `expires_in`**; a refresh answers without a new refresh token unless
//!   rotation is on; errors are RFC 6749 `{"error": "invalid_grant", "error_description":
//!   "expired access/refresh token"}`. `POST /services/oauth2/revoke` revokes.
//!   `GET /services/oauth2/userinfo` names the user behind the token (`user_id`).
//! - Field history (`ContactHistory`, `LeadHistory`: `Field`, `OldValue`, `NewValue`,
//!   `CreatedById`, `CreatedDate`) records every change to a tracked field.
//! - Deletes go to a delete log read by "Get Deleted Records"
//!   (`GET /sobjects/{T}/deleted/?start=&end=`, see `get_deleted` for its documented rules);
//!   `convert_lead` converts a Lead into a Contact as a person would (`IsConverted`,
//!   `ConvertedContactId`); `merge_records` merges a duplicate into a master (the loser deleted
//!   with `MasterRecordId`); deleted records stay in a recycle bin that `GET /queryAll` shows
//!   (`IsDeleted = true`) until a purge.
//!
//! Fault injection mirrors the HubSpot emulator: down, latency, the next N answers failing (500s,
//! `REQUEST_LIMIT_EXCEEDED`), a write applied whose answer is lost, a field rejected by a
//! validation rule, a field silently not stored, an expired session, a revoked grant, search lag.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The API version the connector speaks.
pub const API_VERSION: &str = "v62.0";
/// The External ID (unique) text field callside writes its idempotency key into, on Contact,
/// Lead, Task and Event. It must be created in the org when the connection is set up.
pub const EXTERNAL_ID_FIELD: &str = "Callside_Key__c";
/// Custom fields the typed-write checks use.
pub const CUSTOM_NUMBER_FIELD: &str = "Callside_Call_Count__c";
pub const CUSTOM_DATE_FIELD: &str = "Callside_Next_Visit__c";
pub const CUSTOM_DATETIME_FIELD: &str = "Callside_Last_Call_At__c";
pub const CUSTOM_PICKLIST_FIELD: &str = "Callside_Preferred_Channel__c";
pub const CUSTOM_PICKLIST_VALUES: [&str; 3] = ["Phone", "Email", "SMS"];
/// A custom Event picklist the org keeps each appointment's outcome in. Salesforce's Event has no
/// standard outcome field, so a business that tracks no-shows adds one like this; the tenant
/// names it in `[outcomes] crm_outcome_field`.
pub const EVENT_OUTCOME_FIELD: &str = "Outcome__c";
pub const EVENT_OUTCOME_VALUES: [&str; 3] = ["Attended", "No Show", "Cancelled"];
/// Custom Contact and Lead fields the write-back rules map captured data into (as the HubSpot
/// emulator's `callside_*` properties): what the caller wanted, their urgency, sentiment and
/// language (picklists), a qualification answer as text and one as a number, and the "last
/// written by callside" stamp.
pub const INTENT_FIELD: &str = "Callside_Intent__c";
pub const URGENCY_FIELD: &str = "Callside_Urgency__c";
pub const URGENCY_VALUES: [&str; 3] = ["low", "medium", "high"];
pub const SENTIMENT_FIELD: &str = "Callside_Sentiment__c";
pub const SENTIMENT_VALUES: [&str; 3] = ["positive", "neutral", "negative"];
pub const LANGUAGE_FIELD: &str = "Callside_Language__c";
pub const LANGUAGE_VALUES: [&str; 4] = ["en", "es", "fr", "de"];
pub const SERVICE_INTEREST_FIELD: &str = "Callside_Service_Interest__c";
pub const BUDGET_FIELD: &str = "Callside_Budget__c";
pub const LAST_WRITTEN_FIELD: &str = "Callside_Last_Written_At__c";
/// The lead-source label the service writes (a text field of ours: `LeadSource` is a picklist).
pub const SOURCE_FIELD: &str = "Callside_Source__c";
pub const OAUTH_CLIENT_ID: &str = "sandbox-consumer-key";
pub const OAUTH_CLIENT_SECRET: &str = "sandbox-consumer-secret";
/// Opportunity stages: `(value, label, closed)`. Standard values have label = value.
pub const OPPORTUNITY_STAGES: [(&str, &str, bool); 6] = [
    ("Prospecting", "Prospecting", false),
    ("Qualification", "Qualification", false),
    ("Needs Analysis", "Needs Analysis", false),
    ("Proposal/Price Quote", "Proposal/Price Quote", false),
    ("Closed Won", "Closed Won", true),
    ("Closed Lost", "Closed Lost", true),
];
const API_DAILY_LIMIT: u64 = 15_000;
const ORG_ID: &str = "00D8d000000TfcRMAS";

// ----- schema ----------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldType {
    Id,
    Reference,
    Text,
    TextArea,
    Phone,
    Email,
    Double,
    Int,
    Date,
    DateTime,
    Picklist,
    Boolean,
}

impl FieldType {
    fn describe(self) -> &'static str {
        match self {
            FieldType::Id => "id",
            FieldType::Reference => "reference",
            FieldType::Text => "string",
            FieldType::TextArea => "textarea",
            FieldType::Phone => "phone",
            FieldType::Email => "email",
            FieldType::Double => "double",
            FieldType::Int => "int",
            FieldType::Date => "date",
            FieldType::DateTime => "datetime",
            FieldType::Picklist => "picklist",
            FieldType::Boolean => "boolean",
        }
    }
}

#[derive(Debug, Clone)]
struct FieldDef {
    name: &'static str,
    ty: FieldType,
    /// Settable by a create / an update.
    createable: bool,
    updateable: bool,
    picklist: Vec<(&'static str, &'static str)>,
    restricted: bool,
    external_id: bool,
}

fn f(name: &'static str, ty: FieldType) -> FieldDef {
    let writable = !matches!(ty, FieldType::Id);
    FieldDef {
        name,
        ty,
        createable: writable,
        updateable: writable,
        picklist: Vec::new(),
        restricted: false,
        external_id: false,
    }
}

fn read_only(name: &'static str, ty: FieldType) -> FieldDef {
    FieldDef { createable: false, updateable: false, ..f(name, ty) }
}

fn picklist(name: &'static str, values: &[&'static str], restricted: bool) -> FieldDef {
    FieldDef { picklist: values.iter().map(|v| (*v, *v)).collect(), restricted, ..f(name, FieldType::Picklist) }
}

fn system_fields() -> Vec<FieldDef> {
    vec![
        read_only("Id", FieldType::Id),
        read_only("CreatedDate", FieldType::DateTime),
        read_only("CreatedById", FieldType::Reference),
        read_only("LastModifiedDate", FieldType::DateTime),
        read_only("LastModifiedById", FieldType::Reference),
        read_only("SystemModstamp", FieldType::DateTime),
    ]
}

fn callside_fields() -> Vec<FieldDef> {
    vec![
        FieldDef { external_id: true, ..f(EXTERNAL_ID_FIELD, FieldType::Text) },
        f(SOURCE_FIELD, FieldType::Text),
        f(CUSTOM_NUMBER_FIELD, FieldType::Double),
        f(CUSTOM_DATE_FIELD, FieldType::Date),
        f(CUSTOM_DATETIME_FIELD, FieldType::DateTime),
        picklist(CUSTOM_PICKLIST_FIELD, &CUSTOM_PICKLIST_VALUES, true),
        f(INTENT_FIELD, FieldType::Text),
        picklist(URGENCY_FIELD, &URGENCY_VALUES, true),
        picklist(SENTIMENT_FIELD, &SENTIMENT_VALUES, true),
        picklist(LANGUAGE_FIELD, &LANGUAGE_VALUES, true),
        f(SERVICE_INTEREST_FIELD, FieldType::Text),
        f(BUDGET_FIELD, FieldType::Double),
        f(LAST_WRITTEN_FIELD, FieldType::DateTime),
    ]
}

const LEAD_SOURCES: [&str; 5] = ["Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"];

/// The fields of each sObject the emulator knows. Field names are case-insensitive in the API;
/// these are the canonical spellings answers use.
fn schema(sobject: &str) -> Option<Vec<FieldDef>> {
    use FieldType::*;
    let mut fields = system_fields();
    let specific = match sobject {
        "Contact" => {
            let mut v = vec![
                f("FirstName", Text),
                f("LastName", Text),
                read_only("Name", Text),
                f("Email", Email),
                f("Phone", Phone),
                f("MobilePhone", Phone),
                f("HomePhone", Phone),
                f("OtherPhone", Phone),
                f("MailingPostalCode", Text),
                f("Department", Text),
                picklist("LeadSource", &LEAD_SOURCES, false),
                f("OwnerId", Reference),
                f("AccountId", Reference),
                read_only("IsDeleted", Boolean),
                read_only("MasterRecordId", Reference),
            ];
            v.extend(callside_fields());
            v
        }
        "Lead" => {
            let mut v = vec![
                f("FirstName", Text),
                f("LastName", Text),
                read_only("Name", Text),
                f("Company", Text),
                f("Email", Email),
                f("Phone", Phone),
                f("MobilePhone", Phone),
                f("PostalCode", Text),
                picklist(
                    "Status",
                    &["Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted"],
                    true,
                ),
                picklist("LeadSource", &LEAD_SOURCES, false),
                f("OwnerId", Reference),
                read_only("IsConverted", Boolean),
                read_only("ConvertedContactId", Reference),
                read_only("IsDeleted", Boolean),
                read_only("MasterRecordId", Reference),
            ];
            v.extend(callside_fields());
            v
        }
        "User" => vec![
            f("FirstName", Text),
            f("LastName", Text),
            read_only("Name", Text),
            f("Email", Email),
            f("IsActive", Boolean),
        ],
        "Opportunity" => vec![
            f("Name", Text),
            FieldDef {
                picklist: OPPORTUNITY_STAGES.iter().map(|(v, l, _)| (*v, *l)).collect(),
                restricted: true,
                ..f("StageName", Picklist)
            },
            f("Amount", Double),
            f("CloseDate", Date),
            read_only("IsClosed", Boolean),
            read_only("IsWon", Boolean),
            f("OwnerId", Reference),
        ],
        "OpportunityContactRole" => {
            vec![f("OpportunityId", Reference), f("ContactId", Reference), f("Role", Text), f("IsPrimary", Boolean)]
        }
        "Case" => vec![
            read_only("CaseNumber", Text),
            f("Subject", Text),
            picklist("Status", &["New", "Working", "Escalated", "Closed"], true),
            picklist("Priority", &["High", "Medium", "Low"], true),
            read_only("IsClosed", Boolean),
            f("ContactId", Reference),
            f("OwnerId", Reference),
        ],
        "Task" => {
            let mut v = vec![
                f("Subject", Text),
                picklist(
                    "Status",
                    &["Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"],
                    true,
                ),
                picklist("Priority", &["High", "Normal", "Low"], true),
                f("ActivityDate", Date),
                f("Description", TextArea),
                f("WhoId", Reference),
                f("WhatId", Reference),
                f("OwnerId", Reference),
                picklist("TaskSubtype", &["Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"], true),
                f("CallDurationInSeconds", Int),
                f("CallDisposition", Text),
                picklist("CallType", &["Internal", "Inbound", "Outbound"], true),
                f("CallObject", Text),
                f("ReminderDateTime", DateTime),
                f("IsReminderSet", Boolean),
                read_only("IsClosed", Boolean),
            ];
            v.push(FieldDef { external_id: true, ..f(EXTERNAL_ID_FIELD, Text) });
            v
        }
        "Event" => vec![
            f("Subject", Text),
            f("StartDateTime", DateTime),
            f("EndDateTime", DateTime),
            f("ActivityDate", Date),
            f("Description", TextArea),
            f("Location", Text),
            f("WhoId", Reference),
            f("WhatId", Reference),
            f("OwnerId", Reference),
            picklist(EVENT_OUTCOME_FIELD, &EVENT_OUTCOME_VALUES, true),
            FieldDef { external_id: true, ..f(EXTERNAL_ID_FIELD, Text) },
        ],
        "ContactHistory" | "LeadHistory" => vec![
            read_only(if sobject == "ContactHistory" { "ContactId" } else { "LeadId" }, Reference),
            read_only("Field", Text),
            read_only("OldValue", Text),
            read_only("NewValue", Text),
        ],
        "OpenActivity" | "ActivityHistory" => vec![
            read_only("Subject", Text),
            read_only("Status", Text),
            read_only("Priority", Text),
            read_only("ActivityDate", Date),
            read_only("Description", TextArea),
            read_only("OwnerId", Reference),
            read_only("WhoId", Reference),
            read_only("IsTask", Boolean),
            read_only("ActivitySubtype", Text),
            read_only("CallDurationInSeconds", Int),
            read_only("CallDisposition", Text),
            read_only("StartDateTime", DateTime),
            read_only("EndDateTime", DateTime),
        ],
        _ => return None,
    };
    fields.extend(specific);
    Some(fields)
}

fn field_def(sobject: &str, name: &str) -> Option<FieldDef> {
    schema(sobject)?.into_iter().find(|d| d.name.eq_ignore_ascii_case(name))
}

/// The three-character key prefix of each sObject's ids.
fn key_prefix(sobject: &str) -> &'static str {
    match sobject {
        "Contact" => "003",
        "Lead" => "00Q",
        "User" => "005",
        "Opportunity" => "006",
        "OpportunityContactRole" => "00K",
        "Case" => "500",
        "Task" => "00T",
        "Event" => "00U",
        "ContactHistory" => "017",
        "LeadHistory" => "017",
        _ => "a00",
    }
}

/// A Salesforce 18-character id: the 15-character case-sensitive id plus the three-character
/// case-insensitivity checksum (each 5-character chunk's uppercase positions as a bitmask).
fn make_id(prefix: &str, n: u64) -> String {
    let base = format!("{prefix}8d{n:010}");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let mut suffix = String::new();
    for chunk in base.as_bytes().chunks(5) {
        let mut bits = 0usize;
        for (i, c) in chunk.iter().enumerate() {
            if c.is_ascii_uppercase() {
                bits |= 1 << i;
            }
        }
        suffix.push(alphabet[bits] as char);
    }
    base + &suffix
}

/// `2026-11-23T14:30:00.000+0000`, Salesforce's datetime format in answers.
fn sf_datetime(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

fn parse_sf_datetime(value: &str) -> Option<Timestamp> {
    value.parse::<Timestamp>().ok().or_else(|| {
        // `+0000` without the colon.
        let fixed = if value.len() > 5 && (value.ends_with("+0000") || value.ends_with("-0000")) {
            format!("{}Z", &value[..value.len() - 5])
        } else {
            return None;
        };
        fixed.parse().ok()
    })
}

// ----- state ------------------------------------------------------------------------------------------

/// One stored record: canonical field names to JSON values.
#[derive(Debug, Clone)]
pub struct Record {
    pub sobject: String,
    pub fields: BTreeMap<String, Value>,
}

impl Record {
    /// A field's value as text (`None` when null or absent); names are case-insensitive.
    pub fn text(&self, field: &str) -> Option<String> {
        let value = self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).map(|(_, v)| v)?;
        match value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    pub fn id(&self) -> String {
        self.text("Id").unwrap_or_default()
    }
}

/// Search-index entry of a record, as of the last indexing.
#[derive(Debug, Clone, Default)]
struct IndexEntry {
    phone: Vec<String>,
    email: Vec<String>,
    name: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    RequestLimit,
}

#[derive(Debug, Default)]
struct OAuthState {
    /// code → (redirect_uri, S256 challenge)
    codes: HashMap<String, (String, Option<String>)>,
    /// refresh token → usable
    refresh_tokens: HashMap<String, bool>,
    /// access token → expired
    access_tokens: HashMap<String, bool>,
    rotate: bool,
    refreshes: u64,
    exchanges: u64,
}

#[derive(Debug)]
struct Inner {
    token: String,
    token_expired: bool,
    instance_url: String,
    next_id: u64,
    records: BTreeMap<String, Record>,
    index: HashMap<String, IndexEntry>,
    search_lag: bool,
    down: bool,
    latency: Duration,
    faults: VecDeque<Fault>,
    drop_after_apply: u32,
    rejected_fields: Vec<String>,
    ignored_fields: Vec<String>,
    /// Fields without history tracking (lowercase): their changes leave no history rows.
    untracked_fields: Vec<String>,
    api_usage: u64,
    integration_user: String,
    oauth: OAuthState,
    requests: u64,
    /// Query locators: the rows of a query not yet returned, by locator.
    locators: HashMap<String, VecDeque<Value>>,
    next_locator: u64,
    /// The org's clock: record stamps (`SystemModstamp`, `LastModifiedDate`), activity
    /// open/closed, token issue times. The system clock unless a test drives a manual one.
    clock: OrgClock,
    /// The delete log "Get Deleted Records" reads: (sObject, id, deletedDate), oldest first.
    delete_log: Vec<(String, String, Timestamp)>,
    /// When the delete log was last purged (its `earliestDateAvailable`), if ever.
    delete_log_purged_at: Option<Timestamp>,
    /// Deleted records (`IsDeleted = true`), seen only by `queryAll`; emptied by a purge.
    recycle_bin: BTreeMap<String, Record>,
}

/// The org's clock (`Debug` for the state's derive).
struct OrgClock(crate::clock::SharedClock);

impl OrgClock {
    fn now(&self) -> Timestamp {
        self.0.now()
    }
}

impl std::fmt::Debug for OrgClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrgClock")
    }
}

/// The emulator's state, shared with the server and driven by tests.
#[derive(Debug)]
pub struct SalesforceState {
    inner: Mutex<Inner>,
}

impl SalesforceState {
    pub fn new(token: &str) -> Arc<Self> {
        let state = Arc::new(Self {
            inner: Mutex::new(Inner {
                token: token.to_string(),
                token_expired: false,
                instance_url: String::new(),
                next_id: 1,
                records: BTreeMap::new(),
                index: HashMap::new(),
                search_lag: false,
                down: false,
                latency: Duration::ZERO,
                faults: VecDeque::new(),
                drop_after_apply: 0,
                rejected_fields: Vec::new(),
                ignored_fields: Vec::new(),
                untracked_fields: Vec::new(),
                api_usage: 0,
                integration_user: String::new(),
                oauth: OAuthState::default(),
                requests: 0,
                locators: HashMap::new(),
                next_locator: 1,
                clock: OrgClock(Arc::new(crate::clock::SystemClock)),
                delete_log: Vec::new(),
                delete_log_purged_at: None,
                recycle_bin: BTreeMap::new(),
            }),
        });
        let user = state.insert_user("Callside", "Integration", "integration@callside.example.com");
        state.lock().integration_user = user;
        state
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ----- seeding and inspection ------------------------------------------------------------

    /// Inserts a record as a person would in the UI (validation is not applied; system fields
    /// and history are). Returns its id.
    pub fn insert(&self, sobject: &str, fields: &[(&str, Value)]) -> String {
        let mut inner = self.lock();
        let user = inner.integration_user.clone();
        let id = inner.allocate(sobject);
        let map: Map<String, Value> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        inner.apply(sobject, &id, &map, if user.is_empty() { &id } else { &user }, true);
        id
    }

    pub fn insert_user(&self, first: &str, last: &str, email: &str) -> String {
        self.insert("User", &[("FirstName", json!(first)), ("LastName", json!(last)), ("Email", json!(email))])
    }

    /// A person edits a field in the Salesforce UI (their user id in the history).
    pub fn rep_edit(&self, id: &str, field: &str, value: &str, user_id: &str) {
        let mut inner = self.lock();
        let Some(sobject) = inner.records.get(id).map(|r| r.sobject.clone()) else { return };
        let name = field_def(&sobject, field).map(|d| d.name.to_string()).unwrap_or_else(|| field.to_string());
        let mut map = Map::new();
        map.insert(name, json!(value));
        inner.apply(&sobject, id, &map, user_id, false);
    }

    /// A person deletes a record in the Salesforce UI: it leaves every query and is written to
    /// the delete log. False when there is no such record.
    pub fn delete_record(&self, id: &str) -> bool {
        self.lock().delete(id)
    }

    /// A person converts a Lead into an existing Contact: the Lead stays, with `IsConverted`,
    /// `ConvertedContactId` and the "Closed - Converted" status, and its `SystemModstamp` moves.
    pub fn convert_lead(&self, lead_id: &str, contact_id: &str) {
        let mut inner = self.lock();
        if inner.records.get(lead_id).is_none_or(|r| r.sobject != "Lead") {
            return;
        }
        let user = inner.integration_user.clone();
        let mut map = Map::new();
        map.insert("IsConverted".into(), json!(true));
        map.insert("ConvertedContactId".into(), json!(contact_id));
        map.insert("Status".into(), json!("Closed - Converted"));
        inner.apply("Lead", lead_id, &map, &user, true);
    }

    /// A person merges `loser` into `master` (Contacts, or Leads): the loser is deleted with
    /// `MasterRecordId` set to the master, and the master is updated (its empty phone and email
    /// fields take the loser's values), as "Triggers and Merge Statements" describes
    /// (<https://developer.salesforce.com/docs/atlas.en-us.apexcode.meta/apexcode/apex_triggers_merge_statements.htm>).
    /// False when either is absent or they are not the same object.
    pub fn merge_records(&self, master: &str, loser: &str) -> bool {
        let mut inner = self.lock();
        let (Some(m), Some(l)) = (inner.records.get(master).cloned(), inner.records.get(loser).cloned()) else {
            return false;
        };
        if master == loser || m.sobject != l.sobject || !matches!(m.sobject.as_str(), "Contact" | "Lead") {
            return false;
        }
        let user = inner.integration_user.clone();
        inner.delete_merged(loser, Some(master));
        let mut fill = Map::new();
        for field in ["Email", "Phone", "MobilePhone"] {
            if m.text(field).is_none()
                && let Some(value) = l.text(field)
            {
                fill.insert(field.into(), json!(value));
            }
        }
        inner.apply(&m.sobject, master, &fill, &user, true);
        true
    }

    /// An administrator empties the recycle bin: the delete log is purged, and "Get Deleted
    /// Records" refuses any window starting before now (`INVALID_REPLICATION_DATE`).
    pub fn purge_delete_log(&self) {
        let mut inner = self.lock();
        let now = inner.clock.now();
        inner.delete_log.clear();
        inner.recycle_bin.clear();
        inner.delete_log_purged_at = Some(now);
    }

    pub fn record(&self, id: &str) -> Option<Record> {
        self.lock().records.get(id).cloned()
    }

    pub fn records(&self, sobject: &str) -> Vec<Record> {
        self.lock().records.values().filter(|r| r.sobject == sobject).cloned().collect()
    }

    pub fn integration_user_id(&self) -> String {
        self.lock().integration_user.clone()
    }

    pub fn request_count(&self) -> u64 {
        self.lock().requests
    }

    // ----- switches --------------------------------------------------------------------------

    /// The clock the org stamps records with (tests drive a `ManualClock`).
    pub fn set_clock(&self, clock: crate::clock::SharedClock) {
        self.lock().clock = OrgClock(clock);
    }

    /// The static token the emulator accepts (the pilot revokes it by changing it).
    pub fn set_token(&self, token: &str) {
        self.lock().token = token.to_string();
    }

    /// Every request answers 503 (an HTML page, as a load balancer in front of a dead backend).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The next `n` API requests fail with `fault`.
    pub fn fail_next(&self, fault: Fault, n: usize) {
        self.lock().faults.extend(std::iter::repeat_n(fault, n));
    }

    /// The next `n` writes are applied, then their answers are lost (the body fails mid-way).
    pub fn drop_next_responses_after_apply(&self, n: u32) {
        self.lock().drop_after_apply = n;
    }

    /// While on, writes are invisible to SOSL until [`Self::flush_search_index`].
    pub fn set_search_lag(&self, lag: bool) {
        let mut inner = self.lock();
        inner.search_lag = lag;
        if !lag {
            inner.reindex_all();
        }
    }

    pub fn flush_search_index(&self) {
        self.lock().reindex_all();
    }

    /// Writes naming `field` fail a validation rule (`FIELD_CUSTOM_VALIDATION_EXCEPTION`).
    pub fn reject_field(&self, field: &str) {
        self.lock().rejected_fields.push(field.to_ascii_lowercase());
    }

    /// Writes naming `field` succeed but do not store it (a trigger or flow resets it).
    pub fn ignore_field(&self, field: &str) {
        self.lock().ignored_fields.push(field.to_ascii_lowercase());
    }

    /// Turns field history tracking off for `field` (orgs track at most 20 fields per object).
    pub fn untrack_field(&self, field: &str) {
        self.lock().untracked_fields.push(field.to_ascii_lowercase());
    }

    pub fn clear_field_faults(&self) {
        let mut inner = self.lock();
        inner.rejected_fields.clear();
        inner.ignored_fields.clear();
    }

    /// The session behind every issued access token (and the static token) times out.
    pub fn expire_sessions(&self) {
        let mut inner = self.lock();
        inner.token_expired = true;
        for expired in inner.oauth.access_tokens.values_mut() {
            *expired = true;
        }
    }

    /// The user revokes the connected app: refresh tokens stop working, sessions end.
    pub fn revoke_grant(&self) {
        let mut inner = self.lock();
        for ok in inner.oauth.refresh_tokens.values_mut() {
            *ok = false;
        }
        inner.oauth.access_tokens.clear();
    }

    /// Whether a refresh issues a new refresh token and retires the old one (off by default, as
    /// in a connected app without refresh token rotation).
    pub fn set_refresh_rotation(&self, on: bool) {
        self.lock().oauth.rotate = on;
    }

    pub fn refresh_count(&self) -> u64 {
        self.lock().oauth.refreshes
    }

    pub fn code_exchange_count(&self) -> u64 {
        self.lock().oauth.exchanges
    }

    /// The `instance_url` the next token answers name (an org moved to another instance, or a
    /// tampered answer); the emulator itself keeps serving on its own address.
    pub fn set_instance_url(&self, url: &str) {
        self.lock().instance_url = url.trim_end_matches('/').to_string();
    }
}

impl Inner {
    fn allocate(&mut self, sobject: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
        make_id(key_prefix(sobject), n)
    }

    /// Applies already-validated `values` to record `id` (creating it when absent), with system
    /// fields, computed fields, field history and indexing.
    fn apply(&mut self, sobject: &str, id: &str, values: &Map<String, Value>, user: &str, seed: bool) {
        let at = sf_datetime(self.clock.now());
        let created = !self.records.contains_key(id);
        let mut record = self
            .records
            .get(id)
            .cloned()
            .unwrap_or_else(|| Record { sobject: sobject.into(), fields: BTreeMap::new() });
        let mut changes = Vec::new();
        for (k, v) in values {
            let name = field_def(sobject, k).map(|d| d.name.to_string()).unwrap_or_else(|| k.clone());
            if !seed && self.ignored_fields.contains(&name.to_ascii_lowercase()) {
                continue;
            }
            let old = record.fields.get(&name).cloned().unwrap_or(Value::Null);
            if old != *v {
                changes.push((name.clone(), old, v.clone()));
            }
            record.fields.insert(name, v.clone());
        }
        if created {
            record.fields.insert("Id".into(), json!(id));
            record.fields.insert("CreatedDate".into(), json!(at));
            record.fields.insert("CreatedById".into(), json!(user));
            if matches!(sobject, "Contact" | "Lead" | "Opportunity" | "Case" | "Task" | "Event")
                && !record.fields.contains_key("OwnerId")
            {
                record.fields.insert("OwnerId".into(), json!(self.integration_user.clone()));
            }
            if sobject == "Lead" && !record.fields.contains_key("Status") {
                record.fields.insert("Status".into(), json!("Open - Not Contacted"));
            }
            if sobject == "Task" {
                for (k, v) in [("Status", "Not Started"), ("Priority", "Normal"), ("TaskSubtype", "Task")] {
                    record.fields.entry(k.into()).or_insert(json!(v));
                }
            }
            if sobject == "Case" {
                let number = format!("{:08}", self.next_id);
                record.fields.insert("CaseNumber".into(), json!(number));
            }
        }
        record.fields.insert("LastModifiedDate".into(), json!(at));
        record.fields.insert("LastModifiedById".into(), json!(user));
        record.fields.insert("SystemModstamp".into(), json!(at));
        compute(&mut record);
        self.records.insert(id.to_string(), record);
        // Field history: every change of a tracked field of a contact or lead.
        if matches!(sobject, "Contact" | "Lead") && !created {
            let (history, key) =
                if sobject == "Contact" { ("ContactHistory", "ContactId") } else { ("LeadHistory", "LeadId") };
            for (field, old, new) in changes {
                if matches!(field.as_str(), "LastModifiedDate" | "LastModifiedById" | "SystemModstamp")
                    || self.untracked_fields.contains(&field.to_ascii_lowercase())
                {
                    continue;
                }
                let hid = self.allocate(history);
                let mut fields = BTreeMap::new();
                fields.insert("Id".into(), json!(hid));
                fields.insert(key.into(), json!(id));
                fields.insert("Field".into(), json!(field));
                fields.insert("OldValue".into(), old);
                fields.insert("NewValue".into(), new);
                fields.insert("CreatedDate".into(), json!(at));
                fields.insert("CreatedById".into(), json!(user));
                self.records.insert(hid, Record { sobject: history.into(), fields });
            }
        } else if matches!(sobject, "Contact" | "Lead") && created {
            // A tracked record's history starts with one `created` row.
            let (history, key) =
                if sobject == "Contact" { ("ContactHistory", "ContactId") } else { ("LeadHistory", "LeadId") };
            let hid = self.allocate(history);
            let mut fields = BTreeMap::new();
            fields.insert("Id".into(), json!(hid));
            fields.insert(key.into(), json!(id));
            fields.insert("Field".into(), json!("created"));
            fields.insert("OldValue".into(), Value::Null);
            fields.insert("NewValue".into(), Value::Null);
            fields.insert("CreatedDate".into(), json!(at));
            fields.insert("CreatedById".into(), json!(user));
            self.records.insert(hid, Record { sobject: history.into(), fields });
        }
        if !self.search_lag {
            self.reindex(id);
        }
    }

    /// Deletes a record (to the recycle bin, which only `queryAll` shows, with `IsDeleted` and,
    /// after a merge, `MasterRecordId`) and logs it.
    fn delete(&mut self, id: &str) -> bool {
        self.delete_merged(id, None)
    }

    fn delete_merged(&mut self, id: &str, master: Option<&str>) -> bool {
        let Some(mut record) = self.records.remove(id) else { return false };
        self.index.remove(id);
        let at = self.clock.now();
        self.delete_log.push((record.sobject.clone(), id.to_owned(), at));
        record.fields.insert("IsDeleted".into(), json!(true));
        record.fields.insert("SystemModstamp".into(), json!(sf_datetime(at)));
        if let Some(master) = master {
            record.fields.insert("MasterRecordId".into(), json!(master));
        }
        self.recycle_bin.insert(id.to_owned(), record);
        true
    }

    fn reindex(&mut self, id: &str) {
        let Some(record) = self.records.get(id) else { return };
        if !matches!(record.sobject.as_str(), "Contact" | "Lead") {
            return;
        }
        let mut entry = IndexEntry::default();
        for def in schema(&record.sobject).unwrap_or_default() {
            let Some(value) = record.text(def.name) else { continue };
            match def.ty {
                FieldType::Phone => entry.phone.extend(phone_tokens(&value)),
                FieldType::Email => entry.email.extend(word_tokens(&value).into_iter().chain([value.to_lowercase()])),
                _ if matches!(def.name, "FirstName" | "LastName" | "Company") => entry.name.extend(word_tokens(&value)),
                _ => {}
            }
        }
        self.index.insert(id.to_string(), entry);
    }

    fn reindex_all(&mut self) {
        let ids: Vec<String> = self.records.keys().cloned().collect();
        for id in ids {
            self.reindex(&id);
        }
    }

    /// Checks a write against the schema and the injected validation rules; returns the values
    /// normalized (canonical names, Salesforce formats) or every error found.
    fn validate(
        &self,
        sobject: &str,
        body: &Map<String, Value>,
        creating: bool,
    ) -> Result<Map<String, Value>, Vec<Value>> {
        let mut errors = Vec::new();
        let mut out = Map::new();
        for (key, value) in body {
            if key == "attributes" {
                continue;
            }
            let Some(def) = field_def(sobject, key) else {
                errors.push(sf_error(
                    "INVALID_FIELD",
                    &format!("No such column '{key}' on sobject of type {sobject}"),
                    &[],
                ));
                continue;
            };
            if def.name == "Id" {
                errors.push(sf_error(
                    "INVALID_FIELD",
                    "The Id field should not be specified in the sobject data.",
                    &[],
                ));
                continue;
            }
            if (creating && !def.createable) || (!creating && !def.updateable) {
                errors.push(sf_error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    &format!(
                        "Unable to create/update fields: {}. Please check the security settings of this field and \
                         verify that it is read/write for your profile or permission set.",
                        def.name
                    ),
                    &[def.name],
                ));
                continue;
            }
            if self.rejected_fields.contains(&def.name.to_ascii_lowercase()) {
                errors.push(sf_error(
                    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                    &format!("{} does not meet this org's validation rule", def.name),
                    &[def.name],
                ));
                continue;
            }
            match normalize(&def, value, &self.records) {
                Ok(v) => {
                    out.insert(def.name.to_string(), v);
                }
                Err(e) => errors.push(e),
            }
        }
        if creating {
            let required: &[&str] = match sobject {
                "Contact" => &["LastName"],
                "Lead" => &["LastName", "Company"],
                "Opportunity" => &["Name", "StageName", "CloseDate"],
                "Event" => &["StartDateTime", "EndDateTime"],
                _ => &[],
            };
            let missing: Vec<&str> = required
                .iter()
                .copied()
                .filter(|r| out.get(*r).is_none_or(|v| v.is_null() || v.as_str() == Some("")))
                .collect();
            if !missing.is_empty() {
                errors.push(sf_error(
                    "REQUIRED_FIELD_MISSING",
                    &format!("Required fields are missing: [{}]", missing.join(", ")),
                    &missing,
                ));
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }
}

/// Checks one value against its field's type and converts it to the stored form.
fn normalize(def: &FieldDef, value: &Value, records: &BTreeMap<String, Record>) -> Result<Value, Value> {
    let parse_error = |what: &str| {
        sf_error(
            "JSON_PARSER_ERROR",
            &format!("Cannot deserialize instance of {what} from {} value {value}", json_kind(value)),
            &[],
        )
    };
    if value.is_null() {
        return Ok(Value::Null);
    }
    match def.ty {
        FieldType::Text | FieldType::TextArea | FieldType::Phone => {
            value.as_str().map(|s| json!(s)).ok_or_else(|| parse_error("string"))
        }
        FieldType::Email => {
            let s = value.as_str().ok_or_else(|| parse_error("string"))?;
            let valid = s.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !s.contains(' '));
            if valid || s.is_empty() {
                Ok(json!(s))
            } else {
                Err(sf_error(
                    "INVALID_EMAIL_ADDRESS",
                    &format!("{}: invalid email address: {s}", def.name),
                    &[def.name],
                ))
            }
        }
        FieldType::Double | FieldType::Int => {
            if value.is_number() {
                Ok(value.clone())
            } else {
                Err(parse_error(if def.ty == FieldType::Int { "int" } else { "double" }))
            }
        }
        FieldType::Boolean => value.as_bool().map(Value::Bool).ok_or_else(|| parse_error("boolean")),
        FieldType::Date => {
            let s = value.as_str().ok_or_else(|| parse_error("date"))?;
            s.parse::<jiff::civil::Date>().map(|d| json!(d.to_string())).map_err(|_| parse_error("date"))
        }
        FieldType::DateTime => {
            let s = value.as_str().ok_or_else(|| parse_error("datetime"))?;
            parse_sf_datetime(s).map(|t| json!(sf_datetime(t))).ok_or_else(|| parse_error("datetime"))
        }
        FieldType::Picklist => {
            let s = value.as_str().ok_or_else(|| parse_error("string"))?;
            if def.restricted && !def.picklist.iter().any(|(v, _)| *v == s) {
                return Err(sf_error(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    &format!("{}: bad value for restricted picklist field: {s}", def.name),
                    &[def.name],
                ));
            }
            Ok(json!(s))
        }
        FieldType::Reference => {
            let s = value.as_str().ok_or_else(|| parse_error("string"))?;
            if records.contains_key(s) {
                Ok(json!(s))
            } else {
                Err(sf_error("INVALID_CROSS_REFERENCE_KEY", &format!("invalid cross reference id: {s}"), &[def.name]))
            }
        }
        FieldType::Id => Err(parse_error("id")),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "VALUE_STRING",
        Value::Number(_) => "VALUE_NUMBER_INT",
        Value::Bool(_) => "VALUE_TRUE",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
        Value::Null => "VALUE_NULL",
    }
}

/// Fields derived from others, as Salesforce computes them.
fn compute(record: &mut Record) {
    let text = |r: &Record, f: &str| r.text(f).unwrap_or_default();
    match record.sobject.as_str() {
        "Contact" | "Lead" | "User" => {
            let name = [text(record, "FirstName"), text(record, "LastName")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            record.fields.insert("Name".into(), json!(name));
            if record.sobject == "User" {
                record.fields.entry("IsActive".into()).or_insert(json!(true));
            }
            if record.sobject == "Lead" {
                record.fields.entry("IsConverted".into()).or_insert(json!(false));
            }
            if matches!(record.sobject.as_str(), "Contact" | "Lead") {
                record.fields.entry("IsDeleted".into()).or_insert(json!(false));
            }
        }
        "Opportunity" => {
            let stage = text(record, "StageName");
            let closed = OPPORTUNITY_STAGES.iter().any(|(v, _, c)| *v == stage && *c);
            record.fields.insert("IsClosed".into(), json!(closed));
            record.fields.insert("IsWon".into(), json!(stage == "Closed Won"));
        }
        "Case" => {
            let closed = text(record, "Status") == "Closed";
            record.fields.insert("IsClosed".into(), json!(closed));
        }
        "Task" => {
            let closed = text(record, "Status") == "Completed";
            record.fields.insert("IsClosed".into(), json!(closed));
        }
        _ => {}
    }
}

/// Index tokens of a phone value: the digit string, each digit group, and the national number
/// of an 11-digit NANP number.
fn phone_tokens(value: &str) -> Vec<String> {
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    let mut tokens: Vec<String> =
        value.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(String::from).collect();
    if !digits.is_empty() {
        tokens.push(digits.clone());
    }
    if digits.len() == 11 && digits.starts_with('1') {
        tokens.push(digits[1..].to_string());
    }
    tokens
}

/// Words split on spaces, punctuation and letter/digit changes, lowercased.
fn word_tokens(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut last_digit = None;
    for c in value.chars() {
        if c.is_alphanumeric() {
            let digit = c.is_ascii_digit();
            if last_digit.is_some_and(|d| d != digit) && !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            last_digit = Some(digit);
            current.extend(c.to_lowercase());
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
            last_digit = None;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn sf_error(code: &str, message: &str, fields: &[&str]) -> Value {
    json!({ "message": message, "errorCode": code, "fields": fields })
}

fn error_response(status: StatusCode, errors: Vec<Value>) -> Response {
    (status, axum::Json(Value::Array(errors))).into_response()
}

fn one_error(status: StatusCode, code: &str, message: &str) -> Response {
    error_response(status, vec![json!({ "message": message, "errorCode": code })])
}

fn not_found() -> Response {
    one_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist")
}

// ----- SOQL --------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    /// A dateTime literal, unquoted: `2026-11-23T14:30:00Z` or with a `±hh:mm` offset (the
    /// documented forms, <https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select_dateformats.htm>).
    DateTime(Timestamp),
    Punct(&'static str),
}

/// A dateTime literal at `chars[i..]`: `YYYY-MM-DDThh:mm:ss` then `Z` or `±hh:mm`. Returns it
/// and its length.
fn datetime_literal(chars: &[char]) -> Option<(Timestamp, usize)> {
    let text: String = chars.iter().take(25).collect();
    let shape = |t: &str| {
        t.len() >= 19
            && t.char_indices().take(19).all(|(i, c)| match i {
                4 | 7 => c == '-',
                10 => c == 'T',
                13 | 16 => c == ':',
                _ => c.is_ascii_digit(),
            })
    };
    if !shape(&text) {
        return None;
    }
    let len = match text[19..].chars().next() {
        Some('Z') => 20,
        Some('+' | '-') if text.len() >= 25 => 25,
        _ => return None,
    };
    let literal = &text[..len];
    let at = literal.parse::<Timestamp>().ok()?;
    Some((at, len))
}

fn tokenize(q: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.')) {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if let Some((at, len)) = c.is_ascii_digit().then(|| datetime_literal(&chars[i..])).flatten() {
            out.push(Tok::DateTime(at));
            i += len;
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Tok::Num(text.parse().map_err(|_| format!("bad number {text}"))?));
        } else if c == '\'' {
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some('\\') => {
                        let escaped = chars.get(i + 1).ok_or("unterminated escape")?;
                        match escaped {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            'r' => s.push('\r'),
                            // `\%` and `\_` keep the backslash: they mean a literal % or _ in LIKE.
                            '%' | '_' => {
                                s.push('\\');
                                s.push(*escaped);
                            }
                            other => s.push(*other),
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        s.push(*other);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let punct = match two.as_str() {
                "!=" => Some("!="),
                "<=" => Some("<="),
                ">=" => Some(">="),
                "<>" => Some("!="),
                _ => None,
            };
            if let Some(p) = punct {
                out.push(Tok::Punct(p));
                i += 2;
                continue;
            }
            let p = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                _ => return Err(format!("unexpected token: '{c}'")),
            };
            out.push(Tok::Punct(p));
            i += 1;
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
    DateTime(Timestamp),
    Null,
}

#[derive(Debug, Clone)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, &'static str, Lit),
    In(String, Vec<Lit>, bool),
    Like(String, String),
}

#[derive(Debug, Clone)]
enum SelectItem {
    Field(String),
    Sub(Box<Soql>),
}

#[derive(Debug, Clone)]
struct Soql {
    select: Vec<SelectItem>,
    from: String,
    filter: Option<Expr>,
    order: Vec<(String, bool)>,
    limit: Option<usize>,
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), String> {
        if self.keyword(kw) { Ok(()) } else { Err(format!("expecting {kw}, found {:?}", self.peek())) }
    }

    fn punct(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Punct(q)) if *q == p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s),
            other => Err(format!("expecting an identifier, found {other:?}")),
        }
    }

    fn query(&mut self) -> Result<Soql, String> {
        self.expect_keyword("SELECT")?;
        let mut select = Vec::new();
        loop {
            if self.punct("(") {
                let sub = self.query()?;
                if !self.punct(")") {
                    return Err("expecting ')' after a subquery".into());
                }
                select.push(SelectItem::Sub(Box::new(sub)));
            } else {
                select.push(SelectItem::Field(self.ident()?));
            }
            if !self.punct(",") {
                break;
            }
        }
        self.expect_keyword("FROM")?;
        let from = self.ident()?;
        let filter = if self.keyword("WHERE") { Some(self.or_expr()?) } else { None };
        let mut order = Vec::new();
        if self.keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                let field = self.ident()?;
                let desc = if self.keyword("DESC") {
                    true
                } else {
                    self.keyword("ASC");
                    false
                };
                if self.keyword("NULLS") {
                    let _ = self.keyword("FIRST") || self.keyword("LAST");
                }
                order.push((field, desc));
                if !self.punct(",") {
                    break;
                }
            }
        }
        let limit = if self.keyword("LIMIT") {
            match self.next() {
                Some(Tok::Num(n)) if n >= 0.0 => Some(n as usize),
                other => return Err(format!("bad LIMIT {other:?}")),
            }
        } else {
            None
        };
        Ok(Soql { select, from, filter, order, limit })
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and_expr()?;
        while self.keyword("OR") {
            left = Expr::Or(Box::new(left), Box::new(self.and_expr()?));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while self.keyword("AND") {
            left = Expr::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.factor()?)));
        }
        if self.punct("(") {
            let e = self.or_expr()?;
            if !self.punct(")") {
                return Err("expecting ')'".into());
            }
            return Ok(e);
        }
        let field = self.ident()?;
        if self.keyword("IN") {
            return self.in_list(field, false);
        }
        if self.keyword("NOT") {
            self.expect_keyword("IN")?;
            return self.in_list(field, true);
        }
        if self.keyword("LIKE") {
            return match self.next() {
                Some(Tok::Str(s)) => Ok(Expr::Like(field, s)),
                other => Err(format!("LIKE needs a string, found {other:?}")),
            };
        }
        let op = match self.next() {
            Some(Tok::Punct(p)) if matches!(p, "=" | "!=" | "<" | ">" | "<=" | ">=") => p,
            other => return Err(format!("unexpected token: {other:?}")),
        };
        Ok(Expr::Cmp(field, op, self.literal()?))
    }

    fn in_list(&mut self, field: String, negate: bool) -> Result<Expr, String> {
        if !self.punct("(") {
            return Err("expecting '(' after IN".into());
        }
        let mut values = Vec::new();
        loop {
            values.push(self.literal()?);
            if !self.punct(",") {
                break;
            }
        }
        if !self.punct(")") {
            return Err("expecting ')'".into());
        }
        Ok(Expr::In(field, values, negate))
    }

    fn literal(&mut self) -> Result<Lit, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Num(n)) => Ok(Lit::Num(n)),
            Some(Tok::DateTime(t)) => Ok(Lit::DateTime(t)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Ok(Lit::Bool(true)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Ok(Lit::Bool(false)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Ok(Lit::Null),
            other => Err(format!("expecting a literal, found {other:?}")),
        }
    }
}

fn parse_soql(q: &str) -> Result<Soql, String> {
    let mut p = Parser { toks: tokenize(q)?, pos: 0 };
    let query = p.query()?;
    if p.pos < p.toks.len() {
        return Err(format!("unexpected token: {:?}", p.toks[p.pos]));
    }
    Ok(query)
}

/// A query failure, with Salesforce's code.
struct QueryError(&'static str, String);

impl Inner {
    /// Resolves a (possibly dotted) path on a record: `Owner.FirstName` follows `OwnerId`.
    fn resolve(&self, record: &Record, path: &str) -> Result<Value, QueryError> {
        let mut current = record.clone();
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                let def = field_def(&current.sobject, part).ok_or_else(|| {
                    QueryError("INVALID_FIELD", format!("No such column '{part}' on entity '{}'", current.sobject))
                })?;
                return Ok(current.fields.get(def.name).cloned().unwrap_or(Value::Null));
            }
            let reference = field_def(&current.sobject, &format!("{part}Id")).ok_or_else(|| {
                QueryError("INVALID_FIELD", format!("Didn't understand relationship '{part}' in field path"))
            })?;
            let Some(target) = current.text(reference.name) else { return Ok(Value::Null) };
            let Some(next) = self.records.get(&target) else { return Ok(Value::Null) };
            current = next.clone();
        }
        Ok(Value::Null)
    }

    fn matches(&self, record: &Record, expr: &Expr) -> Result<bool, QueryError> {
        Ok(match expr {
            Expr::And(a, b) => self.matches(record, a)? && self.matches(record, b)?,
            Expr::Or(a, b) => self.matches(record, a)? || self.matches(record, b)?,
            Expr::Not(a) => !self.matches(record, a)?,
            Expr::Cmp(path, op, lit) => {
                let value = self.resolve(record, path)?;
                compare(&value, op, lit)
            }
            Expr::In(path, lits, negate) => {
                let value = self.resolve(record, path)?;
                lits.iter().any(|l| compare(&value, "=", l)) != *negate
            }
            Expr::Like(path, pattern) => {
                let value = self.resolve(record, path)?;
                value.as_str().is_some_and(|v| like(&pattern.to_lowercase(), &v.to_lowercase()))
            }
        })
    }

    /// The children of `parent` through a child relationship.
    fn children(&self, parent: &Record, relationship: &str) -> Result<(String, Vec<Record>), QueryError> {
        let id = parent.id();
        let by = |sobject: &str, key: &str| -> Vec<Record> {
            self.records
                .values()
                .filter(|r| r.sobject == sobject && r.text(key).as_deref() == Some(id.as_str()))
                .cloned()
                .collect()
        };
        let rel = relationship.to_ascii_lowercase();
        match (parent.sobject.as_str(), rel.as_str()) {
            ("Contact", "opportunitycontactroles") => {
                Ok(("OpportunityContactRole".into(), by("OpportunityContactRole", "ContactId")))
            }
            ("Contact", "cases") => Ok(("Case".into(), by("Case", "ContactId"))),
            ("Contact" | "Lead", "tasks") => Ok(("Task".into(), by("Task", "WhoId"))),
            ("Contact" | "Lead", "events") => Ok(("Event".into(), by("Event", "WhoId"))),
            ("Contact" | "Lead", "openactivities" | "activityhistories") => {
                let open = rel == "openactivities";
                let sobject = if open { "OpenActivity" } else { "ActivityHistory" };
                let now = self.clock.now();
                let mut out = Vec::new();
                for task in by("Task", "WhoId") {
                    let closed = task.text("IsClosed").as_deref() == Some("true");
                    if closed != open {
                        out.push(activity_view(&task, sobject, true));
                    }
                }
                for event in by("Event", "WhoId") {
                    let ended = event.text("EndDateTime").and_then(|e| parse_sf_datetime(&e)).is_some_and(|e| e < now);
                    if ended != open {
                        out.push(activity_view(&event, sobject, false));
                    }
                }
                Ok((sobject.into(), out))
            }
            _ => Err(QueryError(
                "INVALID_TYPE",
                format!("Didn't understand relationship '{relationship}' in FROM part of query call."),
            )),
        }
    }

    fn run(&self, query: &Soql, rows: Vec<Record>, sobject: &str) -> Result<Vec<Value>, QueryError> {
        let mut selected = Vec::new();
        for record in rows {
            if let Some(filter) = &query.filter
                && !self.matches(&record, filter)?
            {
                continue;
            }
            selected.push(record);
        }
        let mut keyed = Vec::new();
        for record in selected {
            let mut key = Vec::new();
            for (path, _) in &query.order {
                key.push(self.resolve(&record, path)?);
            }
            keyed.push((key, record));
        }
        keyed.sort_by(|(a, _), (b, _)| {
            for (i, (_, desc)) in query.order.iter().enumerate() {
                let ord = order_values(&a[i], &b[i]);
                let ord = if *desc { ord.reverse() } else { ord };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            std::cmp::Ordering::Equal
        });
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for (_, record) in keyed.into_iter().take(limit) {
            out.push(self.project(&record, &query.select, sobject)?);
        }
        Ok(out)
    }

    fn project(&self, record: &Record, select: &[SelectItem], sobject: &str) -> Result<Value, QueryError> {
        let mut obj = Map::new();
        obj.insert("attributes".into(), attributes(sobject, &record.id()));
        for item in select {
            match item {
                SelectItem::Field(path) => {
                    let value = self.resolve(record, path)?;
                    let parts: Vec<&str> = path.split('.').collect();
                    if parts.len() == 1 {
                        let name = field_def(&record.sobject, path).map(|d| d.name).unwrap_or(path);
                        obj.insert(name.to_string(), value);
                    } else {
                        // Nest `Owner.FirstName` as {"Owner": {"attributes":.., "FirstName":..}}.
                        self.nest(record, &parts, value, &mut obj)?;
                    }
                }
                SelectItem::Sub(sub) => {
                    let (child_type, rows) = self.children(record, &sub.from)?;
                    let records = self.run(sub, rows, &child_type)?;
                    let name = canonical_relationship(&sub.from);
                    obj.insert(
                        name,
                        if records.is_empty() {
                            Value::Null
                        } else {
                            json!({"totalSize": records.len(), "done": true, "records": records})
                        },
                    );
                }
            }
        }
        Ok(Value::Object(obj))
    }

    fn nest(
        &self,
        record: &Record,
        parts: &[&str],
        value: Value,
        obj: &mut Map<String, Value>,
    ) -> Result<(), QueryError> {
        let relationship = parts[0];
        let reference = field_def(&record.sobject, &format!("{relationship}Id"))
            .ok_or_else(|| QueryError("INVALID_FIELD", format!("Didn't understand relationship '{relationship}'")))?;
        let rel_name = reference.name.trim_end_matches("Id").to_string();
        let parent = record.text(reference.name).and_then(|id| self.records.get(&id).cloned());
        let Some(parent) = parent else {
            obj.insert(rel_name, Value::Null);
            return Ok(());
        };
        let entry = obj
            .entry(rel_name)
            .or_insert_with(|| {
                let mut m = Map::new();
                m.insert("attributes".into(), attributes(&parent.sobject, &parent.id()));
                Value::Object(m)
            })
            .as_object_mut();
        if let Some(entry) = entry {
            if parts.len() == 2 {
                let name = field_def(&parent.sobject, parts[1]).map(|d| d.name).unwrap_or(parts[1]);
                entry.insert(name.to_string(), value);
            } else {
                self.nest(&parent, &parts[1..], value, entry)?;
            }
        }
        Ok(())
    }
}

fn canonical_relationship(name: &str) -> String {
    for known in ["OpportunityContactRoles", "Cases", "Tasks", "Events", "OpenActivities", "ActivityHistories"] {
        if known.eq_ignore_ascii_case(name) {
            return known.into();
        }
    }
    name.into()
}

/// An `OpenActivity` / `ActivityHistory` row over a task or an event.
fn activity_view(source: &Record, sobject: &str, is_task: bool) -> Record {
    let mut fields = BTreeMap::new();
    for key in [
        "Id",
        "Subject",
        "Status",
        "Priority",
        "ActivityDate",
        "Description",
        "OwnerId",
        "WhoId",
        "CallDurationInSeconds",
        "CallDisposition",
        "StartDateTime",
        "EndDateTime",
        "CreatedDate",
        "CreatedById",
        "LastModifiedDate",
        "LastModifiedById",
        "SystemModstamp",
    ] {
        if let Some(v) = source.fields.get(key) {
            fields.insert(key.to_string(), v.clone());
        }
    }
    if !is_task && !fields.contains_key("ActivityDate") {
        let date = source.text("StartDateTime").and_then(|s| s.get(..10).map(String::from));
        fields.insert("ActivityDate".into(), date.map(Value::String).unwrap_or(Value::Null));
    }
    fields.insert("IsTask".into(), json!(is_task));
    let subtype = if is_task { source.text("TaskSubtype").unwrap_or_else(|| "Task".into()) } else { "Event".into() };
    fields.insert("ActivitySubtype".into(), json!(subtype));
    Record { sobject: sobject.into(), fields }
}

fn attributes(sobject: &str, id: &str) -> Value {
    json!({"type": sobject, "url": format!("/services/data/{API_VERSION}/sobjects/{sobject}/{id}")})
}

fn compare(value: &Value, op: &str, lit: &Lit) -> bool {
    use std::cmp::Ordering::*;
    let ord = match (value, lit) {
        (Value::Null, Lit::Null) => Some(Equal),
        (Value::Null, _) | (_, Lit::Null) => None,
        (Value::String(s), Lit::Str(l)) => Some(s.to_lowercase().cmp(&l.to_lowercase())),
        (Value::Number(n), Lit::Num(l)) => n.as_f64().and_then(|n| n.partial_cmp(l)),
        (Value::Bool(b), Lit::Bool(l)) => Some(b.cmp(l)),
        // A dateTime field against a dateTime literal compares instants, not text.
        (Value::String(s), Lit::DateTime(l)) => parse_sf_datetime(s).map(|v| v.cmp(l)),
        _ => None,
    };
    match op {
        "=" => ord == Some(Equal),
        "!=" => ord != Some(Equal),
        "<" => ord == Some(Less),
        ">" => ord == Some(Greater),
        "<=" => matches!(ord, Some(Less | Equal)),
        ">=" => matches!(ord, Some(Greater | Equal)),
        _ => false,
    }
}

fn order_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        // Nulls sort last ascending (Salesforce's default is NULLS FIRST; queries here ask for LAST).
        (Value::Null, Value::Null) => Equal,
        (Value::Null, _) => Less,
        (_, Value::Null) => Greater,
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Equal),
        (x, y) => x.to_string().cmp(&y.to_string()),
    }
}

/// SOQL `LIKE`: `%` any run, `_` one character.
fn like(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && go(&p[2..], &t[1..]),
            Some('%') => (0..=t.len()).any(|i| go(&p[1..], &t[i..])),
            Some('_') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

// ----- SOSL ----------------------------------------------------------------------------------------------

struct Sosl {
    terms: Vec<String>,
    group: String,
    returning: Vec<Soql>,
}

fn parse_sosl(q: &str) -> Result<Sosl, String> {
    let rest = q.trim();
    let rest = rest
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("FIND"))
        .map(|_| rest[4..].trim_start())
        .ok_or("expecting FIND")?;
    let rest = rest.strip_prefix('{').ok_or("the search string must be in braces")?;
    let close = rest.find('}').ok_or("missing '}'")?;
    let search = &rest[..close];
    let tail = &rest[close + 1..];
    let mut terms = Vec::new();
    for part in search.split(" OR ").flat_map(|p| p.split(" or ")) {
        let term = part.trim().trim_matches('"').trim();
        if !term.is_empty() {
            terms.push(term.to_string());
        }
    }
    if terms.is_empty() {
        return Err("search term must be longer than one character".into());
    }
    let mut p = Parser { toks: tokenize(tail)?, pos: 0 };
    let mut group = "ALL".to_string();
    if p.keyword("IN") {
        group = p.ident()?.to_ascii_uppercase();
        p.expect_keyword("FIELDS")?;
    }
    let mut returning = Vec::new();
    if p.keyword("RETURNING") {
        loop {
            let from = p.ident()?;
            let mut spec =
                Soql { select: vec![SelectItem::Field("Id".into())], from, filter: None, order: vec![], limit: None };
            if p.punct("(") {
                spec.select.clear();
                loop {
                    spec.select.push(SelectItem::Field(p.ident()?));
                    if !p.punct(",") {
                        break;
                    }
                }
                if p.keyword("WHERE") {
                    spec.filter = Some(p.or_expr()?);
                }
                if p.keyword("LIMIT")
                    && let Some(Tok::Num(n)) = p.next()
                {
                    spec.limit = Some(n as usize);
                }
                if !p.punct(")") {
                    return Err("expecting ')'".into());
                }
            }
            returning.push(spec);
            if !p.punct(",") {
                break;
            }
        }
    }
    if p.keyword("LIMIT") {
        let _ = p.next();
    }
    if p.pos < p.toks.len() {
        return Err(format!("unexpected token: {:?}", p.toks[p.pos]));
    }
    Ok(Sosl { terms, group, returning })
}

fn term_matches(term: &str, tokens: &[String], phone: bool) -> bool {
    let (stem, wildcard) = match term.strip_suffix('*') {
        Some(s) => (s, true),
        None => (term, false),
    };
    let stem = if phone { stem.chars().filter(char::is_ascii_digit).collect::<String>() } else { stem.to_lowercase() };
    if stem.is_empty() {
        return false;
    }
    tokens.iter().any(|t| if wildcard { t.starts_with(&stem) } else { *t == stem })
}

// ----- the server ----------------------------------------------------------------------------------------

/// A running emulator.
#[derive(Debug)]
pub struct SalesforceSandbox {
    pub addr: SocketAddr,
    pub state: Arc<SalesforceState>,
    task: JoinHandle<()>,
}

impl SalesforceSandbox {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime. Requests must carry
    /// `Authorization: Bearer <token>` (`token`, or one issued by the OAuth flow).
    pub fn start(token: &str) -> io::Result<Self> {
        Self::start_on(token, 0)
    }

    /// As [`SalesforceSandbox::start`], on the given loopback port (0: any free one).
    pub fn start_on(token: &str, port: u16) -> io::Result<Self> {
        let state = SalesforceState::new(token);
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        state.lock().instance_url = format!("http://{addr}");
        let listener = TcpListener::from_std(std_listener)?;
        let app = Self::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "salesforce sandbox stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:<port>/`: the instance URL (and the login host) to give the connector.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("socket address forms a valid URL")
    }

    pub fn router(state: Arc<SalesforceState>) -> Router {
        Router::new()
            .route("/services/data/{version}/query", get(query))
            .route("/services/data/{version}/query/{locator}", get(query_more))
            .route("/services/data/{version}/queryAll", get(query_all))
            .route("/services/data/{version}/search", get(search))
            .route("/services/data/{version}/sobjects/{sobject}", post(create))
            .route("/services/data/{version}/sobjects/{sobject}/deleted/", get(get_deleted))
            .route("/services/data/{version}/sobjects/{sobject}/{id}", get(read).patch(update).delete(remove))
            .route("/services/data/{version}/sobjects/{sobject}/{field}/{value}", get(read_by_external).patch(upsert))
            .route("/services/oauth2/authorize", get(oauth_authorize))
            .route("/services/oauth2/token", post(oauth_token))
            .route("/services/oauth2/revoke", post(oauth_revoke))
            .route("/services/oauth2/userinfo", get(userinfo))
            .fallback(|| async { not_found() })
            .layer(middleware::from_fn_with_state(state.clone(), gatekeeper))
            .with_state(state)
    }
}

impl Drop for SalesforceSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Latency, outages, authentication, injected faults, the limit header and lost answers.
async fn gatekeeper(State(state): State<Arc<SalesforceState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let latency = state.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let api = path.starts_with("/services/data/") || path == "/services/oauth2/userinfo";
    let early = {
        let mut inner = state.lock();
        inner.requests += 1;
        if inner.down {
            let body = "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1>\
                        </body></html>";
            Some((StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/html")], body).into_response())
        } else if !api {
            None
        } else if let Some(denied) = check_auth(&inner, &request) {
            Some(denied)
        } else {
            inner.api_usage += 1;
            inner.faults.pop_front().map(|fault| match fault {
                Fault::RequestLimit => {
                    one_error(StatusCode::FORBIDDEN, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
                }
                Fault::Status(status) => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let (code, message) = match status.as_u16() {
                        503 => ("SERVER_UNAVAILABLE", "Server temporarily unavailable"),
                        500..=599 => (
                            "UNKNOWN_EXCEPTION",
                            "An unexpected error occurred. Please include this ErrorId if you contact support: \
                             1426419137-48061 (-1883786485)",
                        ),
                        404 => ("NOT_FOUND", "The requested resource does not exist"),
                        _ => ("INVALID_OPERATION", "injected failure"),
                    };
                    one_error(status, code, message)
                }
            })
        }
    };
    let usage = {
        let inner = state.lock();
        format!("api-usage={}/{API_DAILY_LIMIT}", inner.api_usage)
    };
    let with_limit = |mut response: Response| {
        if api && let Ok(v) = HeaderValue::from_str(&usage) {
            response.headers_mut().insert("sforce-limit-info", v);
        }
        response
    };
    if let Some(response) = early {
        return with_limit(response);
    }
    let is_write =
        path.starts_with("/services/data/") && matches!(method, Method::POST | Method::PATCH | Method::DELETE);
    let drop_response = {
        let mut inner = state.lock();
        let drop = is_write && inner.drop_after_apply > 0;
        if drop {
            inner.drop_after_apply -= 1;
        }
        drop
    };
    let response = with_limit(next.run(request).await);
    if !drop_response {
        return response;
    }
    // The write is applied; the answer is lost on the way: the headers go out, the body fails
    // and the connection is aborted.
    let (parts, _) = response.into_parts();
    let failing = futures::stream::once(async {
        Err::<Bytes, io::Error>(io::Error::new(io::ErrorKind::ConnectionAborted, "response dropped"))
    });
    Response::from_parts(parts, Body::from_stream(failing))
}

fn check_auth(inner: &Inner, request: &Request) -> Option<Response> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("OAuth ")))
        .map(str::trim);
    let ok = match presented {
        Some(t) if t == inner.token => !inner.token_expired,
        Some(t) => inner.oauth.access_tokens.get(t) == Some(&false),
        None => false,
    };
    if ok {
        None
    } else {
        Some(one_error(StatusCode::UNAUTHORIZED, "INVALID_SESSION_ID", "Session expired or invalid"))
    }
}

fn check_version(version: &str) -> Option<Response> {
    let ok = version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| major.parse::<u32>().is_ok_and(|m| (20..=66).contains(&m)) && minor == "0");
    (!ok).then(not_found)
}

/// A route's API version and sObject, checked in that order (a bad version is a bare 404, an
/// unknown sObject Salesforce's `NOT_FOUND` error): the sObject's canonical name.
fn versioned_sobject(version: &str, sobject: &str) -> Result<String, Box<Response>> {
    if let Some(r) = check_version(version) {
        return Err(Box::new(r));
    }
    known_sobject(sobject)
}

fn known_sobject(sobject: &str) -> Result<String, Box<Response>> {
    for known in ["Contact", "Lead", "User", "Opportunity", "OpportunityContactRole", "Case", "Task", "Event"] {
        if known.eq_ignore_ascii_case(sobject) {
            return Ok(known.to_string());
        }
    }
    Err(Box::new(one_error(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist")))
}

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, Box<Response>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Box::new(one_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "Cannot deserialize instance of sobject from a non-object value",
        ))),
        Err(e) => Err(Box::new(one_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            &format!("Unexpected character: {e}"),
        ))),
    }
}

fn user_of(request_headers: &axum::http::HeaderMap, inner: &Inner) -> String {
    let _ = request_headers;
    inner.integration_user.clone()
}

/// The batch size a query answers when the request does not set one, and the range a
/// `Sforce-Query-Options: batchSize=n` header may ask for (Query Options Header:
/// <https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers_queryoptions.htm>).
const DEFAULT_BATCH: usize = 2000;
const MIN_BATCH: usize = 200;

/// The batch size asked for in `Sforce-Query-Options`, clamped to what Salesforce allows.
fn batch_size(headers: &axum::http::HeaderMap) -> usize {
    headers
        .get("Sforce-Query-Options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').find_map(|kv| kv.trim().strip_prefix("batchSize=")?.trim().parse::<usize>().ok()))
        .map_or(DEFAULT_BATCH, |n| n.clamp(MIN_BATCH, DEFAULT_BATCH))
}

/// One batch of a query's rows: `done`, and a `nextRecordsUrl` with a query locator while rows
/// remain (<https://developer.salesforce.com/docs/platform/api-rest/guide/resources-query.html>,
/// "Query More Results").
fn query_batch(inner: &mut Inner, version: &str, total: usize, mut rows: VecDeque<Value>, batch: usize) -> Response {
    let page: Vec<Value> = rows.drain(..batch.min(rows.len())).collect();
    let mut answer = json!({"totalSize": total, "done": rows.is_empty(), "records": page});
    if !rows.is_empty() {
        let locator = format!("01gSB{:013}-{}", inner.next_locator, total - rows.len());
        inner.next_locator += 1;
        answer["nextRecordsUrl"] = json!(format!("/services/data/{version}/query/{locator}"));
        inner.locators.insert(locator, rows);
    }
    axum::Json(answer).into_response()
}

async fn query(
    State(state): State<Arc<SalesforceState>>,
    Path(version): Path<String>,
    headers: axum::http::HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    run_query(&state, &version, &headers, &params, false)
}

/// `GET /services/data/vXX.X/queryAll?q=`: as `query`, deleted records (the recycle bin, with
/// `IsDeleted = true`) included
/// (<https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_queryall.htm>).
async fn query_all(
    State(state): State<Arc<SalesforceState>>,
    Path(version): Path<String>,
    headers: axum::http::HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    run_query(&state, &version, &headers, &params, true)
}

fn run_query(
    state: &SalesforceState,
    version: &str,
    headers: &axum::http::HeaderMap,
    params: &HashMap<String, String>,
    with_deleted: bool,
) -> Response {
    if let Some(r) = check_version(version) {
        return r;
    }
    let Some(q) = params.get("q") else {
        return one_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", "A query string has to be specified");
    };
    let parsed = match parse_soql(q) {
        Ok(p) => p,
        Err(e) => return one_error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &e),
    };
    let mut inner = state.lock();
    let from = match [
        "Contact",
        "Lead",
        "User",
        "Opportunity",
        "OpportunityContactRole",
        "Case",
        "Task",
        "Event",
        "ContactHistory",
        "LeadHistory",
    ]
    .iter()
    .find(|k| k.eq_ignore_ascii_case(&parsed.from))
    {
        Some(k) => k.to_string(),
        None => {
            return one_error(
                StatusCode::BAD_REQUEST,
                "INVALID_TYPE",
                &format!("sObject type '{}' is not supported.", parsed.from),
            );
        }
    };
    let bin = if with_deleted { Some(inner.recycle_bin.values()) } else { None };
    let rows: Vec<Record> =
        inner.records.values().chain(bin.into_iter().flatten()).filter(|r| r.sobject == from).cloned().collect();
    match inner.run(&parsed, rows, &from) {
        Ok(records) => {
            let total = records.len();
            query_batch(&mut inner, version, total, records.into(), batch_size(headers))
        }
        Err(QueryError(code, message)) => one_error(StatusCode::BAD_REQUEST, code, &message),
    }
}

/// `GET /services/data/vXX.X/query/{locator}`: the next batch of a query. A locator is used
/// once; an unknown (or used) one is `INVALID_QUERY_LOCATOR`.
async fn query_more(
    State(state): State<Arc<SalesforceState>>,
    Path((version, locator)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(r) = check_version(&version) {
        return r;
    }
    let mut inner = state.lock();
    let Some(rows) = inner.locators.remove(&locator) else {
        return one_error(StatusCode::BAD_REQUEST, "INVALID_QUERY_LOCATOR", "invalid query locator");
    };
    let served: usize = locator.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).unwrap_or(0);
    query_batch(&mut inner, &version, served + rows.len(), rows, batch_size(&headers))
}

async fn search(
    State(state): State<Arc<SalesforceState>>,
    Path(version): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = check_version(&version) {
        return r;
    }
    let Some(q) = params.get("q") else {
        return one_error(StatusCode::BAD_REQUEST, "MALFORMED_SEARCH", "A search string has to be specified");
    };
    let parsed = match parse_sosl(q) {
        Ok(p) => p,
        Err(e) => return one_error(StatusCode::BAD_REQUEST, "MALFORMED_SEARCH", &e),
    };
    let inner = state.lock();
    let mut out = Vec::new();
    for spec in &parsed.returning {
        let Some(sobject) = ["Contact", "Lead"].iter().find(|k| k.eq_ignore_ascii_case(&spec.from)) else {
            return one_error(
                StatusCode::BAD_REQUEST,
                "INVALID_TYPE",
                &format!("sObject type '{}' is not supported.", spec.from),
            );
        };
        let hits: Vec<Record> = inner
            .records
            .values()
            .filter(|r| r.sobject == *sobject)
            .filter(|r| {
                let Some(entry) = inner.index.get(&r.id()) else { return false };
                parsed.terms.iter().any(|term| match parsed.group.as_str() {
                    "PHONE" => term_matches(term, &entry.phone, true),
                    "EMAIL" => term_matches(term, &entry.email, false),
                    "NAME" => term_matches(term, &entry.name, false),
                    _ => {
                        term_matches(term, &entry.phone, true)
                            || term_matches(term, &entry.email, false)
                            || term_matches(term, &entry.name, false)
                    }
                })
            })
            .cloned()
            .collect();
        match inner.run(spec, hits, sobject) {
            Ok(records) => out.extend(records),
            Err(QueryError(code, message)) => return one_error(StatusCode::BAD_REQUEST, code, &message),
        }
    }
    axum::Json(json!({ "searchRecords": out })).into_response()
}

fn describe(sobject: &str) -> Response {
    let fields: Vec<Value> = schema(sobject)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "label": d.name.trim_end_matches("__c").replace('_', " "),
                "type": d.ty.describe(),
                "createable": d.createable,
                "updateable": d.updateable,
                "nillable": !matches!(d.name, "Id" | "LastName"),
                "externalId": d.external_id,
                "unique": d.external_id,
                "restrictedPicklist": d.restricted,
                "picklistValues": d.picklist.iter().map(|(v, l)| json!({
                    "active": true, "defaultValue": false, "label": l, "validFor": null, "value": v
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(json!({ "name": sobject, "custom": false, "fields": fields })).into_response()
}

async fn read(
    State(state): State<Arc<SalesforceState>>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let sobject = match versioned_sobject(&version, &sobject) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if id == "describe" {
        return describe(&sobject);
    }
    let inner = state.lock();
    let Some(record) = inner.records.get(&id).filter(|r| r.sobject == sobject) else {
        return not_found();
    };
    render_record(record, params.get("fields"))
}

fn render_record(record: &Record, fields: Option<&String>) -> Response {
    let mut obj = Map::new();
    obj.insert("attributes".into(), attributes(&record.sobject, &record.id()));
    match fields {
        Some(list) => {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some(def) = field_def(&record.sobject, name) else {
                    return one_error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_FIELD",
                        &format!("No such column '{name}' on entity '{}'", record.sobject),
                    );
                };
                obj.insert(def.name.into(), record.fields.get(def.name).cloned().unwrap_or(Value::Null));
            }
            obj.insert("Id".into(), json!(record.id()));
        }
        None => {
            for def in schema(&record.sobject).unwrap_or_default() {
                obj.insert(def.name.into(), record.fields.get(def.name).cloned().unwrap_or(Value::Null));
            }
        }
    }
    axum::Json(Value::Object(obj)).into_response()
}

async fn create(
    State(state): State<Arc<SalesforceState>>,
    Path((version, sobject)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let sobject = match versioned_sobject(&version, &sobject) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut inner = state.lock();
    let values = match inner.validate(&sobject, &body, true) {
        Ok(v) => v,
        Err(errors) => return error_response(StatusCode::BAD_REQUEST, errors),
    };
    let user = user_of(&headers, &inner);
    let id = inner.allocate(&sobject);
    inner.apply(&sobject, &id, &values, &user, false);
    (StatusCode::CREATED, axum::Json(json!({"id": id, "errors": [], "success": true}))).into_response()
}

async fn update(
    State(state): State<Arc<SalesforceState>>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let sobject = match versioned_sobject(&version, &sobject) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut inner = state.lock();
    if inner.records.get(&id).is_none_or(|r| r.sobject != sobject) {
        return not_found();
    }
    let values = match inner.validate(&sobject, &body, false) {
        Ok(v) => v,
        Err(errors) => return error_response(StatusCode::BAD_REQUEST, errors),
    };
    let user = user_of(&headers, &inner);
    inner.apply(&sobject, &id, &values, &user, false);
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /sobjects/{T}/{id}`: 204; the record leaves every query (Salesforce keeps it in the
/// recycle bin, which the API does not show without `queryAll`).
async fn remove(
    State(state): State<Arc<SalesforceState>>,
    Path((version, sobject, id)): Path<(String, String, String)>,
) -> Response {
    let sobject = match versioned_sobject(&version, &sobject) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut inner = state.lock();
    if inner.records.get(&id).is_none_or(|r| r.sobject != sobject) {
        return one_error(StatusCode::NOT_FOUND, "ENTITY_IS_DELETED", "entity is deleted");
    }
    inner.delete(&id);
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /sobjects/{T}/deleted/?start=&end=`, "Get Deleted Records"
/// (<https://developer.salesforce.com/docs/platform/api-rest/guide/resources-getdeleted.html>):
/// `{deletedRecords: [{id, deletedDate}], earliestDateAvailable, latestDateCovered}`. As the
/// getDeleted() rules say
/// (<https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_getdeleted.htm>):
/// seconds are ignored; `start` must precede `end` by more than one minute; a window starting
/// more than 15 days back, or before the last purge of the delete log, is refused — all
/// `INVALID_REPLICATION_DATE`. `latestDateCovered` is `end` to the minute (the emulator has no
/// deletion still in progress).
async fn get_deleted(
    State(state): State<Arc<SalesforceState>>,
    Path((version, sobject)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let sobject = match versioned_sobject(&version, &sobject) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let invalid = |message: &str| one_error(StatusCode::BAD_REQUEST, "INVALID_REPLICATION_DATE", message);
    let minute = |t: Timestamp| Timestamp::from_second(t.as_second().div_euclid(60) * 60).unwrap_or(t);
    let parse = |name: &str| params.get(name).and_then(|v| v.parse::<Timestamp>().ok()).map(minute);
    let (Some(start), Some(end)) = (parse("start"), parse("end")) else {
        return one_error(
            StatusCode::BAD_REQUEST,
            "MALFORMED_QUERY",
            "start and end are required, as dateTime values such as 2013-05-05T00:00:00+00:00",
        );
    };
    let inner = state.lock();
    let now = inner.clock.now();
    if end.duration_since(start) <= jiff::SignedDuration::from_mins(1) {
        return invalid("startDate must chronologically precede endDate by more than one minute");
    }
    if now.duration_since(start) > jiff::SignedDuration::from_hours(15 * 24)
        || inner.delete_log_purged_at.is_some_and(|p| p > start)
    {
        return invalid("startDate is before the earliest date available in the delete log");
    }
    let deleted: Vec<Value> = inner
        .delete_log
        .iter()
        .filter(|(t, _, at)| *t == sobject && *at >= start && *at < end)
        .map(|(_, id, at)| json!({ "id": id, "deletedDate": sf_datetime(*at) }))
        .collect();
    let earliest = inner
        .delete_log_purged_at
        .or_else(|| inner.delete_log.iter().filter(|(t, _, _)| *t == sobject).map(|(_, _, at)| *at).min())
        .unwrap_or(start);
    axum::Json(json!({
        "deletedRecords": deleted,
        "earliestDateAvailable": sf_datetime(minute(earliest).min(start)),
        "latestDateCovered": sf_datetime(end),
    }))
    .into_response()
}

fn external_matches(inner: &Inner, sobject: &str, field: &str, value: &str) -> Vec<String> {
    inner
        .records
        .values()
        .filter(|r| r.sobject == sobject && r.text(field).as_deref() == Some(value))
        .map(Record::id)
        .collect()
}

fn external_field(sobject: &str, field: &str) -> Result<FieldDef, Box<Response>> {
    field_def(sobject, field).filter(|d| d.external_id || d.name == "Id").ok_or_else(|| {
        Box::new(one_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Provided external ID field does not exist or is not accessible: {field}"),
        ))
    })
}

async fn read_by_external(
    State(state): State<Arc<SalesforceState>>,
    Path((version, sobject, field, value)): Path<(String, String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let sobject = match versioned_sobject(&version, &sobject) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let def = match external_field(&sobject, &field) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let inner = state.lock();
    match external_matches(&inner, &sobject, def.name, &value).as_slice() {
        [] => not_found(),
        [id] => render_record(&inner.records[id], params.get("fields")),
        many => multiple_choices(&sobject, many),
    }
}

fn multiple_choices(sobject: &str, ids: &[String]) -> Response {
    let urls: Vec<String> =
        ids.iter().map(|id| format!("/services/data/{API_VERSION}/sobjects/{sobject}/{id}")).collect();
    (StatusCode::MULTIPLE_CHOICES, axum::Json(json!(urls))).into_response()
}

/// `PATCH /sobjects/{T}/{ExternalIdField}/{value}`: 201 `created: true` for a new record, 200
/// `created: false` after updating the one match, 300 for several.
async fn upsert(
    State(state): State<Arc<SalesforceState>>,
    Path((version, sobject, field, value)): Path<(String, String, String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let sobject = match versioned_sobject(&version, &sobject) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let def = match external_field(&sobject, &field) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut inner = state.lock();
    let matches = external_matches(&inner, &sobject, def.name, &value);
    if matches.len() > 1 {
        return multiple_choices(&sobject, &matches);
    }
    let creating = matches.is_empty();
    let mut values = match inner.validate(&sobject, &body, creating) {
        Ok(v) => v,
        Err(errors) => return error_response(StatusCode::BAD_REQUEST, errors),
    };
    values.insert(def.name.to_string(), json!(value));
    let user = user_of(&headers, &inner);
    let id = matches.into_iter().next().unwrap_or_else(|| inner.allocate(&sobject));
    inner.apply(&sobject, &id, &values, &user, false);
    let status = if creating { StatusCode::CREATED } else { StatusCode::OK };
    (status, axum::Json(json!({"id": id, "errors": [], "success": true, "created": creating}))).into_response()
}

async fn userinfo(State(state): State<Arc<SalesforceState>>) -> Response {
    let inner = state.lock();
    let user = inner.integration_user.clone();
    let email = inner.records.get(&user).and_then(|r| r.text("Email"));
    axum::Json(json!({
        "sub": format!("{}/id/{ORG_ID}/{user}", inner.instance_url),
        "user_id": user,
        "organization_id": ORG_ID,
        "preferred_username": email,
        "email": email,
    }))
    .into_response()
}

// ----- OAuth ------------------------------------------------------------------------------------------------

fn oauth_error(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error, "error_description": description}))).into_response()
}

async fn oauth_authorize(
    State(state): State<Arc<SalesforceState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
    if get("response_type") != "code" {
        return oauth_error("unsupported_response_type", "response type not supported");
    }
    if get("client_id") != OAUTH_CLIENT_ID {
        return oauth_error("invalid_client_id", "client identifier invalid");
    }
    let Ok(mut redirect) = url::Url::parse(get("redirect_uri")) else {
        return oauth_error("redirect_uri_mismatch", "redirect_uri must match configuration");
    };
    let challenge = query.get("code_challenge").cloned();
    if challenge.is_some() && get("code_challenge_method") != "S256" {
        return oauth_error("invalid_request", "unsupported code challenge method");
    }
    let code = format!("aPrx{}", uuid::Uuid::new_v4().simple());
    state.lock().oauth.codes.insert(code.clone(), (get("redirect_uri").to_string(), challenge));
    redirect.query_pairs_mut().append_pair("code", &code);
    if let Some(st) = query.get("state") {
        redirect.query_pairs_mut().append_pair("state", st);
    }
    (StatusCode::FOUND, [(header::LOCATION, redirect.to_string())]).into_response()
}

/// `POST /services/oauth2/token`. The answer has no `expires_in`: the org's session timeout
/// decides, and the client learns of expiry from `INVALID_SESSION_ID`.
async fn oauth_token(State(state): State<Arc<SalesforceState>>, body: Bytes) -> Response {
    use base64::Engine as _;
    use sha2::Digest as _;
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if get("client_id") != OAUTH_CLIENT_ID {
        return oauth_error("invalid_client_id", "client identifier invalid");
    }
    if get("client_secret") != OAUTH_CLIENT_SECRET {
        return oauth_error("invalid_client", "invalid client credentials");
    }
    let mut inner = state.lock();
    let refresh = match get("grant_type") {
        "authorization_code" => {
            let Some((redirect_uri, challenge)) = inner.oauth.codes.remove(get("code")) else {
                return oauth_error("invalid_grant", "authentication failure");
            };
            if redirect_uri != get("redirect_uri") {
                return oauth_error("redirect_uri_mismatch", "redirect_uri must match configuration");
            }
            if let Some(challenge) = challenge {
                let digest = sha2::Sha256::digest(get("code_verifier").as_bytes());
                if base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) != challenge {
                    return oauth_error("invalid_grant", "invalid code verifier");
                }
            }
            inner.oauth.exchanges += 1;
            let token = format!("5Aep861sandbox-refresh-{}", uuid::Uuid::new_v4().simple());
            inner.oauth.refresh_tokens.insert(token.clone(), true);
            Some(token)
        }
        "refresh_token" => {
            let presented = get("refresh_token").to_string();
            if inner.oauth.refresh_tokens.get(&presented) != Some(&true) {
                return oauth_error("invalid_grant", "expired access/refresh token");
            }
            inner.oauth.refreshes += 1;
            if inner.oauth.rotate {
                inner.oauth.refresh_tokens.insert(presented, false);
                let token = format!("5Aep861sandbox-refresh-{}", uuid::Uuid::new_v4().simple());
                inner.oauth.refresh_tokens.insert(token.clone(), true);
                Some(token)
            } else {
                None
            }
        }
        _ => return oauth_error("unsupported_grant_type", "grant type not supported"),
    };
    let access = format!("{ORG_ID}!sandbox-access-{}", uuid::Uuid::new_v4().simple());
    inner.oauth.access_tokens.insert(access.clone(), false);
    let issued_at = inner.clock.now().as_millisecond().to_string();
    let mut body = json!({
        "access_token": access,
        "signature": base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(issued_at.as_bytes())),
        "scope": "api refresh_token",
        "instance_url": inner.instance_url,
        "id": format!("{}/id/{ORG_ID}/{}", inner.instance_url, inner.integration_user),
        "token_type": "Bearer",
        "issued_at": issued_at,
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = json!(refresh);
    }
    axum::Json(body).into_response()
}

async fn oauth_revoke(State(state): State<Arc<SalesforceState>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let token = form.get("token").cloned().unwrap_or_default();
    let mut inner = state.lock();
    if let Some(valid) = inner.oauth.refresh_tokens.get_mut(&token) {
        *valid = false;
        inner.oauth.access_tokens.clear();
    } else if inner.oauth.access_tokens.remove(&token).is_none() {
        return oauth_error("unsupported_token_type", "this token type is not supported");
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_case_checksum() {
        let id = make_id("003", 42);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("003"));
        // 15 chars "0038d0000000042" has no uppercase letters: every chunk's mask is 0 → "AAA".
        assert_eq!(&id[15..], "AAA");
        let upper = make_id("00Q", 1);
        // "00Q8d" has Q at position 2 → bit 2 → 'E'.
        assert_eq!(&upper[15..16], "E");
    }

    #[test]
    fn soql_parses_relationships_subqueries_and_filters() {
        let q = parse_soql(
            "SELECT Id, Owner.FirstName, (SELECT Id FROM Cases WHERE IsClosed = false ORDER BY CreatedDate DESC \
             LIMIT 5) FROM Contact WHERE Email = 'a\\'b@example.com' AND (Id IN ('1', '2') OR LastName != null)",
        )
        .unwrap();
        assert_eq!(q.from, "Contact");
        assert_eq!(q.select.len(), 3);
        assert!(matches!(&q.select[2], SelectItem::Sub(s) if s.from == "Cases" && s.limit == Some(5)));
        assert!(parse_soql("SELECT FROM Contact").is_err());
        assert!(parse_soql("SELECT Id FROM Contact WHERE Name = 'unterminated").is_err());
        assert!(parse_soql("SELECT Id FROM Contact LIMIT x").is_err());
    }

    #[test]
    fn phone_tokens_cover_typed_layouts() {
        for stored in ["+14155550134", "(415) 555-0134", "415-555-0134", "4155550134", "+1 415 555 0134"] {
            let tokens = phone_tokens(stored);
            assert!(term_matches("4155550134", &tokens, true), "{stored}: {tokens:?}");
        }
        assert!(!term_matches("4155550199", &phone_tokens("(415) 555-0134"), true));
        assert!(term_matches("415555*", &phone_tokens("(415) 555-0134"), true));
    }

    #[test]
    fn sosl_parses_find_in_returning() {
        let s = parse_sosl(
            "FIND {\"4155550134\" OR \"14155550134\"} IN PHONE FIELDS RETURNING Contact(Id, Phone), Lead(Id LIMIT 5)",
        )
        .unwrap();
        assert_eq!(s.terms, vec!["4155550134", "14155550134"]);
        assert_eq!(s.group, "PHONE");
        assert_eq!(s.returning.len(), 2);
        assert!(parse_sosl("FIND 4155550134").is_err());
        assert!(parse_sosl("FIND {} RETURNING Contact").is_err());
    }

    #[test]
    fn like_matches_sql_wildcards() {
        assert!(like("ada%", "ada lovelace"));
        assert!(like("a_a", "ada"));
        assert!(!like("a_a", "adda"));
        assert!(like("94\\_07%", "94_07-1"));
        assert!(!like("94\\_07%", "94x07"));
    }
}

/// The emulator's HTTP surface against the shapes in Salesforce's REST API guide.
#[cfg(test)]
mod http_tests {
    use serde_json::{Value, json};

    use super::*;

    const TOKEN: &str = "00Dtest!static";

    fn url(sandbox: &SalesforceSandbox, path: &str) -> String {
        format!("http://{}/services/data/{API_VERSION}/{path}", sandbox.addr)
    }

    async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = reqwest::Client::new().request(method, url).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Upsert by external id: 201 `created: true`, then 200 `created: false` on the same record;
    /// the answer shape of the guide's examples
    /// (<https://developer.salesforce.com/docs/platform/api-rest/guide/dome-upsert.html>).
    #[tokio::test]
    async fn upsert_creates_then_updates_the_same_record() {
        let sandbox = SalesforceSandbox::start(TOKEN).unwrap();
        let path = url(&sandbox, &format!("sobjects/Contact/{EXTERNAL_ID_FIELD}/key-1"));
        let (status, headers, first) = send(reqwest::Method::PATCH, &path, Some(json!({"LastName": "Hopper"}))).await;
        assert_eq!(status, 201);
        assert_eq!(first["created"], true);
        assert_eq!(first["success"], true);
        assert_eq!(first["errors"], json!([]));
        assert!(headers["sforce-limit-info"].to_str().unwrap().starts_with("api-usage="));
        let (status, _, second) = send(reqwest::Method::PATCH, &path, Some(json!({"FirstName": "Grace"}))).await;
        assert_eq!(status, 200);
        assert_eq!(second["created"], false);
        assert_eq!(second["id"], first["id"]);
        assert_eq!(sandbox.state.records("Contact").len(), 1);
        // Not an external id field: 404 NOT_FOUND.
        let (status, _, body) =
            send(reqwest::Method::PATCH, &url(&sandbox, "sobjects/Contact/Email/x"), Some(json!({}))).await;
        assert_eq!(status, 404);
        assert_eq!(body[0]["errorCode"], "NOT_FOUND");
    }

    /// Errors are arrays of `{message, errorCode, fields}`; a write with one bad field applies
    /// nothing.
    #[tokio::test]
    async fn errors_are_arrays_and_writes_all_or_nothing() {
        let sandbox = SalesforceSandbox::start(TOKEN).unwrap();
        let (status, _, body) =
            send(reqwest::Method::POST, &url(&sandbox, "sobjects/Contact"), Some(json!({"FirstName": "X"}))).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!([{"message": "Required fields are missing: [LastName]", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}])
        );
        let (status, _, body) = send(
            reqwest::Method::POST,
            &url(&sandbox, "sobjects/Contact"),
            Some(json!({"id": "001D000000IqhSLIAZ", "LastName": "Pies"})),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
        assert_eq!(body[0]["message"], "The Id field should not be specified in the sobject data.");
        let id = sandbox.state.insert("Contact", &[("LastName", json!("Kept"))]);
        let (status, _, body) = send(
            reqwest::Method::PATCH,
            &url(&sandbox, &format!("sobjects/Contact/{id}")),
            Some(json!({"LastName": "Changed", CUSTOM_PICKLIST_FIELD: "Pigeon"})),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(body[0]["errorCode"], "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
        assert_eq!(body[0]["fields"], json!([CUSTOM_PICKLIST_FIELD]));
        assert_eq!(sandbox.state.record(&id).unwrap().text("LastName").as_deref(), Some("Kept"));
        // Hostile bodies: not JSON, not an object.
        for raw in ["{not json", "[1,2]"] {
            let response = reqwest::Client::new()
                .post(url(&sandbox, "sobjects/Contact"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(raw)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 400);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body[0]["errorCode"], "JSON_PARSER_ERROR");
        }
    }

    /// The rate limit is 403 `REQUEST_LIMIT_EXCEEDED` without `Retry-After`; an unknown token is
    /// 401 `INVALID_SESSION_ID`.
    #[tokio::test]
    async fn limits_and_sessions_answer_as_salesforce_does() {
        let sandbox = SalesforceSandbox::start(TOKEN).unwrap();
        sandbox.state.fail_next(Fault::RequestLimit, 1);
        let (status, headers, body) =
            send(reqwest::Method::GET, &url(&sandbox, "query?q=SELECT+Id+FROM+Contact"), None).await;
        assert_eq!(status, 403);
        assert!(headers.get("retry-after").is_none());
        assert!(headers.contains_key("sforce-limit-info"));
        assert_eq!(body, json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]));
        let response = reqwest::Client::new()
            .get(url(&sandbox, "query?q=SELECT+Id+FROM+Contact"))
            .bearer_auth("someone-else")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]));
    }

    /// SOQL answers: `{totalSize, done, records}`, `attributes` on each record, a parent
    /// relationship nested (or `null`), an empty child subquery `null`; a malformed query is
    /// `MALFORMED_QUERY`.
    #[tokio::test]
    async fn soql_answers_nest_relationships() {
        let sandbox = SalesforceSandbox::start(TOKEN).unwrap();
        let owner = sandbox.state.insert_user("Rita", "Rep", "rita@example.com");
        let with_owner = sandbox.state.insert("Contact", &[("LastName", json!("A")), ("OwnerId", json!(owner))]);
        sandbox
            .state
            .insert("Case", &[("Subject", json!("Tap")), ("Status", json!("New")), ("ContactId", json!(with_owner))]);
        let q = format!(
            "SELECT Id, Owner.FirstName, (SELECT Subject FROM Cases), (SELECT Id FROM OpportunityContactRoles) \
             FROM Contact WHERE Id = '{with_owner}'"
        );
        let (status, _, body) =
            send(reqwest::Method::GET, &format!("{}?q={}", url(&sandbox, "query"), urlencode(&q)), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["totalSize"], 1);
        assert_eq!(body["done"], true);
        let record = &body["records"][0];
        assert_eq!(record["attributes"]["type"], "Contact");
        assert_eq!(record["Owner"]["FirstName"], "Rita");
        assert_eq!(record["Owner"]["attributes"]["type"], "User");
        assert_eq!(record["Cases"]["records"][0]["Subject"], "Tap");
        assert_eq!(record["OpportunityContactRoles"], Value::Null);
        let (status, _, body) =
            send(reqwest::Method::GET, &format!("{}?q={}", url(&sandbox, "query"), urlencode("SELECT FROM")), None)
                .await;
        assert_eq!(status, 400);
        assert_eq!(body[0]["errorCode"], "MALFORMED_QUERY");
        let (status, _, body) = send(
            reqwest::Method::GET,
            &format!("{}?q={}", url(&sandbox, "query"), urlencode("SELECT Nope FROM Contact")),
            None,
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    }

    /// The token endpoint answers with `instance_url` and without `expires_in`; a refresh
    /// answers without a refresh token (rotation off); a bad refresh token is `invalid_grant`.
    #[tokio::test]
    async fn token_answers_carry_instance_url_and_no_expiry() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let sandbox = SalesforceSandbox::start(TOKEN).unwrap();
        let base = sandbox.base_url();
        let verifier = "v".repeat(50);
        let challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let authorize = format!(
            "{base}services/oauth2/authorize?response_type=code&client_id={OAUTH_CLIENT_ID}&redirect_uri=https://x.example/cb&state=s1&code_challenge={challenge}&code_challenge_method=S256"
        );
        let answer = client.get(&authorize).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 302);
        let location = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
        let code = location.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
        let token = |form: Vec<(&'static str, String)>| {
            let client = client.clone();
            let base = base.clone();
            async move {
                let r = client.post(format!("{base}services/oauth2/token")).form(&form).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }
        };
        let creds = |mut v: Vec<(&'static str, String)>| {
            v.push(("client_id", OAUTH_CLIENT_ID.into()));
            v.push(("client_secret", OAUTH_CLIENT_SECRET.into()));
            v
        };
        let (status, body) = token(creds(vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.clone()),
            ("redirect_uri", "https://x.example/cb".into()),
            ("code_verifier", verifier.clone()),
        ]))
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["instance_url"], base.as_str().trim_end_matches('/'));
        assert!(body.get("expires_in").is_none());
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["issued_at"].as_str().unwrap().parse::<u64>().is_ok());
        let refresh = body["refresh_token"].as_str().unwrap().to_owned();
        // The code is single use.
        let (status, body) = token(creds(vec![
            ("grant_type", "authorization_code".into()),
            ("code", code),
            ("redirect_uri", "https://x.example/cb".into()),
            ("code_verifier", verifier),
        ]))
        .await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_grant");
        let (status, body) =
            token(creds(vec![("grant_type", "refresh_token".into()), ("refresh_token", refresh.clone())])).await;
        assert_eq!(status, 200);
        assert!(body.get("refresh_token").is_none());
        let (status, body) =
            token(creds(vec![("grant_type", "refresh_token".into()), ("refresh_token", "nope".into())])).await;
        assert_eq!(status, 400);
        assert_eq!(body, json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}));
    }

    fn urlencode(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }
}
