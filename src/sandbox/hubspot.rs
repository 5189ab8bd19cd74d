//! An in-process HubSpot emulator: the CRM v3 object, search, batch-read and pipeline endpoints,
//! the v4 association list, HubSpot's error bodies and headers, search-index lag and fault
//! injection. The same [`crate::connectors::crm::hubspot::HubSpotConnector`] that talks to
//! `api.hubapi.com` talks to this server; only the base URL and the token differ.
//!
//! Behaviour follows HubSpot's developer documentation; the pages are cited where the behaviour
//! is surprising:
//!
//! - Search (<https://developers.hubspot.com/docs/api-reference/legacy/crm/search-the-crm>):
//!   filter groups are ORed, filters inside a group ANDed; at most five groups, six filters per
//!   group and 18 filters in total, otherwise `VALIDATION_ERROR`. Filter values are
//!   case-insensitive, except that `IN` on a string property matches only lowercase values. `EQ`
//!   on `phone` compares the stored string as typed — HubSpot does not normalize it — while the
//!   calculated `hs_searchable_calculated_phone_number` / `..._mobile_number` properties hold
//!   "only the area code and local number" (the national significant number). Newly created or
//!   updated objects "may take a few moments to appear in search results": here they stay
//!   invisible until [`HubSpotState::flush_search_index`] while the lag switch is on.
//! - Objects (<https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/guide>):
//!   `GET /crm/v3/objects/{type}/{id}?properties=..&associations=..&idProperty=..`, create with
//!   inline `associations`, `PATCH` to update, `batch/read` (`207` with `errors` when some ids do
//!   not exist).
//! - Calls (<https://developers.hubspot.com/docs/api-reference/legacy/crm/activities/calls/guide>):
//!   call→contact association type 194, `hs_call_duration` in milliseconds, dispositions are
//!   GUIDs, recording URLs must be HTTPS. Meetings
//!   (<https://developers.hubspot.com/docs/api-reference/latest/crm/activities/meetings/guide>):
//!   meeting→contact type 200, outcomes `SCHEDULED`, `COMPLETED`, `RESCHEDULED`, `NO_SHOW`,
//!   `CANCELED`.
//! - Pipelines (<https://developers.hubspot.com/docs/api-reference/legacy/crm/pipelines/guide>):
//!   each stage carries `metadata.isClosed` as the string `"true"`/`"false"`.
//! - Errors (<https://developers.hubspot.com/docs/api-reference/error-handling>):
//!   `{status, message, correlationId, category, errors:[{message, code, context:{propertyName:[..]}}]}`.
//!   429 bodies and `X-HubSpot-RateLimit-*` headers follow
//!   <https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>.
//! - Unique-value properties (`hasUniqueValue: true`,
//!   <https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/guide>): the
//!   idempotency marker `callside_idempotency_key` is one on contacts, calls and meetings; a
//!   second create with a taken value answers `409` whose message names the property and ends in
//!   `Existing ID: <id>` (the format HubSpot uses for its contact-exists conflict), and the object
//!   can be read back with `?idProperty=callside_idempotency_key`.
//!
//! - Notes, tasks and tickets (<https://developers.hubspot.com/docs/api-reference/legacy/crm/activities/notes/guide>,
//!   <https://developers.hubspot.com/docs/api-reference/legacy/crm/activities/tasks/guide>): `hs_timestamp`
//!   is a note's time and a task's *due date*; `hs_task_status` `NOT_STARTED`…`COMPLETED`; tickets
//!   move through ticket pipelines (`hs_pipeline`, `hs_pipeline_stage`), whose stages carry
//!   `metadata.isClosed` like deal stages. Associations: note→contact 202, task→contact 204,
//!   ticket→contact 16 (and the reverse ids), listed by
//!   `GET /crm/v4/associations/{from}/{to}/labels` with `"label": null` for the unlabeled default
//!   (<https://developers.hubspot.com/docs/api-reference/latest/crm/associations/associations-schema/guide>);
//!   `PUT /crm/v4/objects/{from}/{id}/associations/default/{to}/{toId}` associates without a label.
//! - Properties API (`GET /crm/v3/properties/{object}/{name}`, type / fieldType / options /
//!   `modificationMetadata.readOnlyValue`): writes are checked against the definitions —
//!   enumeration values must be an option's internal value, `number`s numeric, a `date` property
//!   holds midnight UTC only (`YYYY-MM-DD` or epoch ms at midnight), `datetime`s ISO 8601 or epoch ms
//!   (<https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/guide>).
//! - `propertiesWithHistory`: every version, newest first, with `sourceType` (`INTEGRATION` for
//!   writes through the API with the app's token, `CRM_UI` with `updatedByUserId` for a person's
//!   edit), `sourceId` and `timestamp` (objects guide, "Retrieve records";
//!   <https://developers.hubspot.com/changelog/crm-property-change-source-will-show-owner-id-instead-of-owner-email>).
//! - Owners (`GET /crm/v3/owners/{id}`, <https://developers.hubspot.com/docs/api-reference/legacy/crm/owners/guide>).
//! - OAuth (<https://developers.hubspot.com/docs/api-reference/legacy/authentication/oauth-tokens/v1/guide>):
//!   `GET /oauth/authorize` approves at once and redirects to `redirect_uri?code&state` (PKCE
//!   `S256` challenge remembered); `POST /oauth/v1/token` (form-encoded) exchanges a single-use
//!   code — checking `redirect_uri` and the `code_verifier` — or a refresh token, answering
//!   `{token_type, refresh_token, access_token, expires_in: 1800}`; refresh tokens rotate (switchable);
//!   an unusable refresh token answers 400 `{"status": "BAD_REFRESH_TOKEN", ...}` (plus RFC 6749's
//!   `"error": "invalid_grant"`); `DELETE /oauth/v1/refresh-tokens/{token}` revokes. Expired
//!   access tokens answer 401 `EXPIRED_AUTHENTICATION`; after the grant is revoked (the app
//!   uninstalled) issued tokens answer 401 `INVALID_AUTHENTICATION`.
//! - Search rate: "The search endpoints are rate limited to five requests per second" (search
//!   guide, Limits) — enforced when switched on, answering 429 `SECONDLY`.
//!
//! Fault injection (down, slow, the next N responses failing — a 429 storm, 500s — a response
//! dropped after the write was applied, one property rejected, a property silently ignored) is
//! driven by tests through [`HubSpotState`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::serve::{IncomingStream, Listener};
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The custom property the connector writes its idempotency key into. A unique-value property on
/// contacts, calls and meetings.
pub const IDEMPOTENCY_PROPERTY: &str = "callside_idempotency_key";
/// The custom contact property holding the lead source label (`hs_analytics_source` is
/// HubSpot-calculated and read-only).
pub const SOURCE_PROPERTY: &str = "callside_source";

/// Custom contact properties of the emulated portal, one per value type, for typed writes:
/// `date` ("midnight UTC", written as `YYYY-MM-DD`), `datetime`, `number` and `enumeration`
/// (<https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/guide>, "Property
/// type and fieldType values").
pub const CUSTOM_DATE_PROPERTY: &str = "callside_next_visit_date";
pub const CUSTOM_DATETIME_PROPERTY: &str = "callside_last_call_at";
pub const CUSTOM_NUMBER_PROPERTY: &str = "callside_call_count";
pub const CUSTOM_ENUM_PROPERTY: &str = "callside_preferred_channel";
/// The options of [`CUSTOM_ENUM_PROPERTY`] (internal values).
pub const CUSTOM_ENUM_OPTIONS: [&str; 3] = ["phone", "email", "sms"];
/// Custom contact properties the write-back rules map captured data into (see
/// `writeback::settings`): what the caller wanted, their urgency and sentiment (enumerations),
/// a qualification answer as text and one as a number, and the "last written by callside" stamp.
pub const INTENT_PROPERTY: &str = "callside_intent";
/// The test portal's own account properties (a business names its own in `[account_flags]`).
pub const ACCOUNT_PROPERTIES: [&str; 4] = ["vip_tier", "overdue_balance", "do_not_call", "no_show_count"];
pub const URGENCY_PROPERTY: &str = "callside_urgency";
pub const URGENCY_OPTIONS: [&str; 3] = ["low", "medium", "high"];
pub const SENTIMENT_PROPERTY: &str = "callside_sentiment";
pub const SENTIMENT_OPTIONS: [&str; 3] = ["positive", "neutral", "negative"];
pub const SERVICE_INTEREST_PROPERTY: &str = "callside_service_interest";
pub const BUDGET_PROPERTY: &str = "callside_budget";
pub const LAST_WRITTEN_PROPERTY: &str = "callside_last_written_at";
/// HubSpot's default "Preferred language" contact property (`hs_language`), an enumeration of
/// language codes.
pub const LANGUAGE_OPTIONS: [&str; 8] = ["en", "es", "fr", "de", "pt", "it", "nl", "zh"];
/// The `sourceId` recorded in property history for writes made with the sandbox's tokens, the way
/// HubSpot records the app that wrote a value.
pub const SANDBOX_APP_ID: &str = "callside-sandbox-app";
/// The sandbox OAuth app's credentials.
pub const OAUTH_CLIENT_ID: &str = "sandbox-client-id";
pub const OAUTH_CLIENT_SECRET: &str = "sandbox-client-secret";
/// Access tokens issued by the sandbox's token endpoint live this long ("expires_in" seconds;
/// HubSpot's are 30 minutes: <https://developers.hubspot.com/docs/api-reference/legacy/authentication/oauth-tokens/v1/guide>).
pub const ACCESS_TOKEN_TTL_SECS: u64 = 1800;

/// HubSpot's default call outcomes and their internal GUIDs, as listed in the calls guide.
pub const DEFAULT_CALL_DISPOSITIONS: [(&str, &str); 6] = [
    ("Busy", "9d9162e7-6cf3-4944-bf63-4dff82258764"),
    ("Connected", "f240bbac-87c9-4f6e-bf70-924b57d47db7"),
    ("Left live message", "a4c4c377-d246-4b32-a13b-75a56a4cd0ff"),
    ("Left voicemail", "b2cf5968-551e-4856-9783-52b3da59a7d0"),
    ("No answer", "73a0d17f-1163-4015-bdd5-ec830791da20"),
    ("Wrong number", "17b47fee-58de-441e-a44c-c6300d46f273"),
];

const CALL_STATUSES: [&str; 10] = [
    "BUSY",
    "CALLING_CRM_USER",
    "CANCELED",
    "COMPLETED",
    "CONNECTING",
    "FAILED",
    "IN_PROGRESS",
    "NO_ANSWER",
    "QUEUED",
    "RINGING",
];
const MEETING_OUTCOMES: [&str; 5] = ["SCHEDULED", "COMPLETED", "RESCHEDULED", "NO_SHOW", "CANCELED"];

const MAX_FILTER_GROUPS: usize = 5;
const MAX_FILTERS_PER_GROUP: usize = 6;
const MAX_FILTERS_TOTAL: usize = 18;

/// The object types the emulator stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectType {
    Contacts,
    Deals,
    Calls,
    Meetings,
    Notes,
    Tasks,
    Tickets,
}

/// Every object type, for lookups by association type.
const ALL_TYPES: [ObjectType; 7] = [
    ObjectType::Contacts,
    ObjectType::Deals,
    ObjectType::Calls,
    ObjectType::Meetings,
    ObjectType::Notes,
    ObjectType::Tasks,
    ObjectType::Tickets,
];

impl ObjectType {
    /// Accepts the names HubSpot accepts in paths: plural, singular, or the object type id.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "contacts" | "contact" | "0-1" => Some(Self::Contacts),
            "deals" | "deal" | "0-3" => Some(Self::Deals),
            "calls" | "call" | "0-48" => Some(Self::Calls),
            "meetings" | "meeting" | "0-47" => Some(Self::Meetings),
            "notes" | "note" | "0-46" => Some(Self::Notes),
            "tasks" | "task" | "0-27" => Some(Self::Tasks),
            "tickets" | "ticket" | "0-5" => Some(Self::Tickets),
            _ => None,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Contacts => "contacts",
            Self::Deals => "deals",
            Self::Calls => "calls",
            Self::Meetings => "meetings",
            Self::Notes => "notes",
            Self::Tasks => "tasks",
            Self::Tickets => "tickets",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Self::Contacts => "contact",
            Self::Deals => "deal",
            Self::Calls => "call",
            Self::Meetings => "meeting",
            Self::Notes => "note",
            Self::Tasks => "task",
            Self::Tickets => "ticket",
        }
    }

    /// Properties every read returns when the request names none (the search guide's table of
    /// default properties).
    fn default_properties(self) -> &'static [&'static str] {
        match self {
            Self::Contacts => &["createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"],
            Self::Deals => &[
                "amount",
                "closedate",
                "createdate",
                "dealname",
                "dealstage",
                "hs_lastmodifieddate",
                "hs_object_id",
                "pipeline",
            ],
            Self::Tickets => &[
                "content",
                "createdate",
                "hs_lastmodifieddate",
                "hs_object_id",
                "hs_pipeline",
                "hs_pipeline_stage",
                "hs_ticket_category",
                "hs_ticket_priority",
                "subject",
            ],
            Self::Calls | Self::Meetings | Self::Notes | Self::Tasks => {
                &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"]
            }
        }
    }

    /// Writable properties of the emulated portal (defaults plus the callside custom ones).
    fn writable(self) -> &'static [&'static str] {
        match self {
            Self::Contacts => &[
                "email",
                "firstname",
                "lastname",
                "phone",
                "mobilephone",
                "zip",
                "city",
                "state",
                "country",
                "company",
                "jobtitle",
                "hubspot_owner_id",
                "lifecyclestage",
                "hs_lead_status",
                SOURCE_PROPERTY,
                IDEMPOTENCY_PROPERTY,
                CUSTOM_DATE_PROPERTY,
                CUSTOM_DATETIME_PROPERTY,
                CUSTOM_NUMBER_PROPERTY,
                CUSTOM_ENUM_PROPERTY,
                INTENT_PROPERTY,
                URGENCY_PROPERTY,
                SENTIMENT_PROPERTY,
                SERVICE_INTEREST_PROPERTY,
                BUDGET_PROPERTY,
                LAST_WRITTEN_PROPERTY,
                "hs_language",
            ],
            Self::Deals => &["dealname", "dealstage", "amount", "closedate", "pipeline", "hubspot_owner_id"],
            Self::Calls => &[
                "hs_timestamp",
                "hs_call_title",
                "hs_call_body",
                "hs_call_callee_object_id",
                "hs_call_callee_object_type",
                "hs_call_direction",
                "hs_call_disposition",
                "hs_call_duration",
                "hs_call_from_number",
                "hs_call_to_number",
                "hs_call_recording_url",
                "hs_call_status",
                "hs_call_source",
                "hubspot_owner_id",
                "hs_activity_type",
                "hs_attachment_ids",
                IDEMPOTENCY_PROPERTY,
            ],
            Self::Meetings => &[
                "hs_timestamp",
                "hs_meeting_title",
                "hubspot_owner_id",
                "hs_meeting_body",
                "hs_internal_meeting_notes",
                "hs_meeting_external_url",
                "hs_meeting_location",
                "hs_meeting_start_time",
                "hs_meeting_end_time",
                "hs_meeting_outcome",
                "hs_activity_type",
                "hs_attachment_ids",
                IDEMPOTENCY_PROPERTY,
            ],
            Self::Notes => {
                &["hs_timestamp", "hs_note_body", "hubspot_owner_id", "hs_attachment_ids", IDEMPOTENCY_PROPERTY]
            }
            Self::Tasks => &[
                "hs_timestamp",
                "hs_task_subject",
                "hs_task_body",
                "hs_task_status",
                "hs_task_priority",
                "hs_task_type",
                "hubspot_owner_id",
                IDEMPOTENCY_PROPERTY,
            ],
            Self::Tickets => &[
                "subject",
                "content",
                "hs_pipeline",
                "hs_pipeline_stage",
                "hs_ticket_priority",
                "hs_ticket_category",
                "hubspot_owner_id",
            ],
        }
    }

    /// Properties HubSpot calculates; writes to them are ignored, as the object guides say for
    /// read-only properties.
    fn read_only(self, name: &str) -> bool {
        name == "hs_object_id"
            || name == "createdate"
            || name == "lastmodifieddate"
            || name == "hs_createdate"
            || name == "hs_lastmodifieddate"
            || name == "hs_merged_object_ids"
            || name.starts_with("hs_searchable_calculated_")
            || name.starts_with("hs_analytics_")
    }

    fn has_idempotency_marker(self) -> bool {
        !matches!(self, Self::Deals | Self::Tickets)
    }

    /// The created / last-modified property names of this object type.
    fn date_properties(self) -> (&'static str, &'static str) {
        match self {
            Self::Contacts => ("createdate", "lastmodifieddate"),
            Self::Deals | Self::Tickets => ("createdate", "hs_lastmodifieddate"),
            _ => ("hs_createdate", "hs_lastmodifieddate"),
        }
    }
}

/// The HubSpot-defined association type id for a direction, as listed in the associations guide.
fn association_type_id(from: ObjectType, to: ObjectType) -> Option<u32> {
    use ObjectType::*;
    match (from, to) {
        (Contacts, Deals) => Some(4),
        (Deals, Contacts) => Some(3),
        (Calls, Contacts) => Some(194),
        (Contacts, Calls) => Some(193),
        (Meetings, Contacts) => Some(200),
        (Contacts, Meetings) => Some(199),
        (Contacts, Tickets) => Some(15),
        (Tickets, Contacts) => Some(16),
        (Notes, Contacts) => Some(202),
        (Contacts, Notes) => Some(201),
        (Tasks, Contacts) => Some(204),
        (Contacts, Tasks) => Some(203),
        // Notes on a ticket's timeline (associations guide, "Association type IDs").
        (Notes, Tickets) => Some(228),
        (Tickets, Notes) => Some(227),
        _ => None,
    }
}

/// Families of routes, for the per-family request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `POST /crm/v3/objects/{type}/search`
    Search,
    /// `GET /crm/v3/objects/{type}/{id}`
    Read,
    /// `POST /crm/v3/objects/{type}`
    Create,
    /// `PATCH /crm/v3/objects/{type}/{id}`
    Update,
    /// `DELETE /crm/v3/objects/{type}/{id}`
    Delete,
    /// `POST /crm/v3/objects/{type}/batch/read`
    Batch,
    /// `GET /crm/v3/pipelines/{type}`
    Pipelines,
    /// `GET /crm/v4/objects/{type}/{id}/associations/{toType}`
    Associations,
    Other,
}

impl RouteKind {
    fn classify(method: &Method, path: &str) -> Self {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::POST, ["crm", "v3", "objects", _, "search"]) => Self::Search,
            (&Method::POST, ["crm", "v3", "objects", _, "batch", "read"]) => Self::Batch,
            (&Method::POST, ["crm", "v3", "objects", _]) => Self::Create,
            (&Method::GET, ["crm", "v3", "objects", _, _]) => Self::Read,
            (&Method::PATCH, ["crm", "v3", "objects", _, _]) => Self::Update,
            (&Method::DELETE, ["crm", "v3", "objects", _, _]) => Self::Delete,
            (&Method::GET, ["crm", "v3", "pipelines", ..]) => Self::Pipelines,
            (&Method::GET, ["crm", "v4", "objects", _, _, "associations", _]) => Self::Associations,
            _ => Self::Other,
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Self::Create | Self::Update | Self::Delete)
    }
}

/// One request as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub kind: RouteKind,
    pub status: u16,
}

/// A failure to answer instead of handling the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFailure {
    pub status: u16,
    /// The `Retry-After` header value, sent verbatim (seconds or an HTTP date).
    pub retry_after: Option<String>,
    /// `(max, remaining, interval_ms)` for the `X-HubSpot-RateLimit-Max`, `-Remaining` and
    /// `-Interval-Milliseconds` headers.
    pub rate_limit_window: Option<(u32, u32, u64)>,
    /// `policyName` of a 429 body: `SECONDLY` or `DAILY`.
    pub policy: String,
}

impl InjectedFailure {
    /// A plain status with HubSpot's body for it; a 429 gets the secondly-limit body and an
    /// exhausted 10-second window, as HubSpot sends on its burst limit.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            rate_limit_window: (status == 429).then_some((100, 0, 10_000)),
            policy: "SECONDLY".into(),
        }
    }

    /// A 429 whose `Retry-After` is a number of seconds.
    pub fn rate_limited_secs(secs: u64) -> Self {
        Self { retry_after: Some(secs.to_string()), ..Self::status(429) }
    }

    /// A 429 whose `Retry-After` is an HTTP date (RFC 9110 IMF-fixdate), e.g.
    /// `Mon, 23 Nov 2026 14:00:30 GMT`.
    pub fn rate_limited_until(http_date: &str) -> Self {
        Self { retry_after: Some(http_date.to_string()), ..Self::status(429) }
    }

    pub fn with_window(mut self, window: Option<(u32, u32, u64)>) -> Self {
        self.rate_limit_window = window;
        self
    }

    pub fn with_policy(mut self, policy: &str) -> Self {
        self.policy = policy.to_string();
        self
    }
}

/// An object as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxObject {
    pub id: String,
    pub properties: BTreeMap<String, String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl SandboxObject {
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }
}

#[derive(Debug, Clone)]
struct StoredObject {
    id: u64,
    properties: BTreeMap<String, String>,
    created_at: Timestamp,
    updated_at: Timestamp,
    /// Every value each property had, oldest first (`propertiesWithHistory`).
    history: BTreeMap<String, Vec<HistoryEntry>>,
}

/// Who set a property value, as `propertiesWithHistory` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSource {
    pub source_type: String,
    pub source_id: Option<String>,
    pub user_id: Option<String>,
}

impl ChangeSource {
    /// A write through the API with an app's token.
    pub fn integration() -> Self {
        Self { source_type: "INTEGRATION".into(), source_id: Some(SANDBOX_APP_ID.into()), user_id: None }
    }

    /// A person editing the record in HubSpot.
    pub fn crm_ui(user_id: &str) -> Self {
        Self {
            source_type: "CRM_UI".into(),
            source_id: Some(format!("userId:{user_id}")),
            user_id: Some(user_id.into()),
        }
    }

    fn import() -> Self {
        Self { source_type: "IMPORT".into(), source_id: None, user_id: None }
    }
}

#[derive(Debug, Clone)]
struct HistoryEntry {
    value: String,
    at: Timestamp,
    source: ChangeSource,
}

impl StoredObject {
    fn view(&self) -> SandboxObject {
        SandboxObject {
            id: self.id.to_string(),
            properties: self.properties.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[derive(Debug, Clone)]
struct Stage {
    id: String,
    label: String,
    closed: bool,
    probability: &'static str,
}

#[derive(Debug, Clone)]
struct Owner {
    id: u64,
    first_name: String,
    last_name: String,
    email: String,
}

/// An authorization code handed out by the authorize endpoint.
#[derive(Debug, Clone)]
struct AuthCode {
    redirect_uri: String,
    code_challenge: Option<String>,
    scopes: String,
}

#[derive(Debug, Clone, Default)]
struct OAuthState {
    codes: HashMap<String, AuthCode>,
    /// refresh token → still valid
    refresh_tokens: HashMap<String, bool>,
    /// access token → expired
    access_tokens: HashMap<String, bool>,
    rotate_refresh_tokens: bool,
    refreshes: u64,
    exchanges: u64,
}

#[derive(Debug, Clone)]
struct Pipeline {
    id: String,
    label: String,
    stages: Vec<Stage>,
}

/// An association edge, stored once; both directions are answered from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edge {
    a: (ObjectType, u64),
    b: (ObjectType, u64),
}

#[derive(Debug)]
struct Inner {
    next_id: u64,
    objects: BTreeMap<ObjectType, BTreeMap<u64, StoredObject>>,
    edges: Vec<Edge>,
    /// What search sees: a snapshot of each object's properties (plus calculated ones) as of its
    /// last indexing.
    search_index: HashMap<(ObjectType, u64), BTreeMap<String, String>>,
    search_lag: bool,
    pipelines: Vec<Pipeline>,
    ticket_pipelines: Vec<Pipeline>,
    owners: Vec<Owner>,
    oauth: OAuthState,
    rejected_properties: Vec<String>,
    ignored_properties: Vec<String>,
    search_per_second: Option<u32>,
    search_times: VecDeque<std::time::Instant>,
    down: bool,
    failures: VecDeque<InjectedFailure>,
    /// The next N answers are a 200 whose body is not the route's (`garble_next_responses`).
    garbled: u32,
    drop_after_apply: u32,
    latency: Duration,
    token: String,
    token_expired: bool,
    calculated_phone: bool,
    conflict_ids: bool,
    counts: HashMap<RouteKind, u64>,
    log: Vec<LoggedRequest>,
    /// The app's webhook subscriptions, once a target is set (`deliver_webhooks_to`).
    webhook: Option<super::hubspot_webhooks::WebhookSink>,
    /// Archived (deleted) objects with when, listed by `GET /crm/v3/objects/{type}?archived=true`.
    archived: BTreeMap<ObjectType, BTreeMap<u64, (StoredObject, Timestamp)>>,
}

/// The emulator's state, shared by the server and the test that drives it.
#[derive(Debug)]
pub struct HubSpotState {
    inner: Mutex<Inner>,
    /// While on, every request waits unanswered (a hung portal; `stall`).
    stall: super::faults::Stall,
}

impl HubSpotState {
    pub fn new(token: &str) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                next_id: 101,
                objects: BTreeMap::new(),
                edges: Vec::new(),
                search_index: HashMap::new(),
                search_lag: false,
                pipelines: vec![default_deal_pipeline()],
                ticket_pipelines: vec![default_ticket_pipeline()],
                owners: Vec::new(),
                oauth: OAuthState { rotate_refresh_tokens: true, ..OAuthState::default() },
                rejected_properties: Vec::new(),
                ignored_properties: Vec::new(),
                search_per_second: None,
                search_times: VecDeque::new(),
                down: false,
                failures: VecDeque::new(),
                garbled: 0,
                drop_after_apply: 0,
                latency: Duration::ZERO,
                token: token.to_string(),
                token_expired: false,
                calculated_phone: true,
                conflict_ids: true,
                counts: HashMap::new(),
                log: Vec::new(),
                webhook: None,
                archived: BTreeMap::new(),
            }),
            stall: super::faults::Stall::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ----- seeding ---------------------------------------------------------------------------

    /// Inserts a pre-existing contact (already indexed for search, whatever the lag switch says).
    pub fn insert_contact<K, V>(&self, props: impl IntoIterator<Item = (K, V)>) -> String
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut inner = self.lock();
        let props = props.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let id = inner.insert(ObjectType::Contacts, props, &ChangeSource::import());
        inner.index(ObjectType::Contacts, id);
        id.to_string()
    }

    /// Inserts a pre-existing deal associated with the contact. `dealstage` should name a stage of
    /// one of the deal pipelines (`pipeline` defaults to `default`).
    pub fn insert_deal<K, V>(&self, props: impl IntoIterator<Item = (K, V)>, contact_id: &str) -> String
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut inner = self.lock();
        let mut props: BTreeMap<String, String> = props.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        props.entry("pipeline".into()).or_insert_with(|| "default".into());
        let id = inner.insert(ObjectType::Deals, props, &ChangeSource::import());
        inner.index(ObjectType::Deals, id);
        if let Ok(contact) = contact_id.parse::<u64>() {
            inner.edges.push(Edge { a: (ObjectType::Contacts, contact), b: (ObjectType::Deals, id) });
        }
        id.to_string()
    }

    /// Inserts a pre-existing object of any type, associated with the contact (HubSpot-defined
    /// unlabeled association). Indexed for search at once.
    pub fn insert_associated<K, V>(
        &self,
        object_type: ObjectType,
        props: impl IntoIterator<Item = (K, V)>,
        contact_id: &str,
    ) -> String
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut inner = self.lock();
        let mut props: BTreeMap<String, String> = props.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        if object_type == ObjectType::Tickets {
            props.entry("hs_pipeline".into()).or_insert_with(|| "0".into());
        }
        let id = inner.insert(object_type, props, &ChangeSource::import());
        inner.index(object_type, id);
        if let Ok(contact) = contact_id.parse::<u64>() {
            inner.edges.push(Edge { a: (object_type, id), b: (ObjectType::Contacts, contact) });
        }
        id.to_string()
    }

    /// A HubSpot user who can own records (`GET /crm/v3/owners/{id}`).
    /// Objects of type `to` associated with an object of any type.
    pub fn associated_with(&self, from: ObjectType, id: &str, to: ObjectType) -> Vec<SandboxObject> {
        let Ok(id) = id.parse::<u64>() else {
            return Vec::new();
        };
        let inner = self.lock();
        inner
            .associated_ids((from, id), to)
            .into_iter()
            .filter_map(|i| inner.objects.get(&to).and_then(|m| m.get(&i)).map(StoredObject::view))
            .collect()
    }

    pub fn insert_owner(&self, first_name: &str, last_name: &str, email: &str) -> String {
        let mut inner = self.lock();
        let id = inner.allocate_id();
        inner.owners.push(Owner {
            id,
            first_name: first_name.into(),
            last_name: last_name.into(),
            email: email.into(),
        });
        id.to_string()
    }

    /// Turns on the app's webhook subscriptions (`contact.propertyChange`, `contact.creation`,
    /// `deal.propertyChange`): from now on every change is POSTed, signed with `client_secret`,
    /// to `target` for portal `portal_id` (see [`super::hubspot_webhooks`]). Must be called from
    /// within a tokio runtime.
    pub fn deliver_webhooks_to(
        &self,
        target: url::Url,
        client_secret: &str,
        portal_id: u64,
        clock: crate::clock::SharedClock,
    ) -> tokio::sync::watch::Receiver<super::hubspot_webhooks::WebhookStats> {
        let (sink, stats, _task) =
            super::hubspot_webhooks::start_delivery(target, client_secret.to_owned(), portal_id, clock);
        // The task ends when the sink (its sender) is dropped with the emulator's state.
        self.lock().webhook = Some(sink);
        stats
    }

    /// The webhook delivery's progress (`None` until [`HubSpotState::deliver_webhooks_to`]):
    /// what tests wait on before reading what the receiver counted.
    pub fn webhook_stats(&self) -> Option<tokio::sync::watch::Receiver<super::hubspot_webhooks::WebhookStats>> {
        self.lock().webhook.as_ref().map(|sink| sink.stats())
    }

    /// A person edits a property in HubSpot's UI (recorded as `CRM_UI` by `user_id`).
    pub fn rep_edit(&self, object_type: ObjectType, id: &str, property: &str, value: &str, user_id: &str) {
        let Ok(id) = id.parse::<u64>() else {
            return;
        };
        let mut inner = self.lock();
        let props = BTreeMap::from([(property.to_string(), value.to_string())]);
        inner.apply_update(object_type, id, props, &ChangeSource::crm_ui(user_id));
        inner.index_after_write(object_type, id);
    }

    /// A person deletes (archives) a record in HubSpot. False when there is no such record.
    pub fn archive_directly(&self, object_type: ObjectType, id: &str) -> bool {
        id.parse::<u64>().is_ok_and(|id| self.lock().archive(object_type, id))
    }

    /// A person merges contact `secondary` into `primary`: the secondary leaves reads, search and
    /// the archived list, its associations move to the primary, the primary keeps its values
    /// and takes the secondary's where it has none, and its `hs_merged_object_ids` lists the
    /// secondary (`;`-separated). False when either is absent.
    pub fn merge_contacts(&self, primary: &str, secondary: &str) -> bool {
        let (Ok(primary), Ok(secondary)) = (primary.parse::<u64>(), secondary.parse::<u64>()) else { return false };
        let mut inner = self.lock();
        let contacts = ObjectType::Contacts;
        if primary == secondary || !inner.objects.get(&contacts).is_some_and(|m| m.contains_key(&primary)) {
            return false;
        }
        let Some(gone) = inner.objects.get_mut(&contacts).and_then(|m| m.remove(&secondary)) else { return false };
        inner.search_index.remove(&(contacts, secondary));
        for edge in &mut inner.edges {
            for end in [&mut edge.a, &mut edge.b] {
                if *end == (contacts, secondary) {
                    *end = (contacts, primary);
                }
            }
        }
        let current = inner.objects[&contacts][&primary].properties.clone();
        let mut props: BTreeMap<String, String> = gone
            .properties
            .iter()
            .filter(|(k, _)| {
                ObjectType::Contacts.writable().contains(&k.as_str())
                    && k.as_str() != IDEMPOTENCY_PROPERTY
                    && !current.contains_key(*k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut merged: Vec<String> =
            current.get("hs_merged_object_ids").map(|v| v.split(';').map(str::to_owned).collect()).unwrap_or_default();
        merged.push(secondary.to_string());
        props.insert("hs_merged_object_ids".into(), merged.join(";"));
        inner.apply_update(contacts, primary, props, &ChangeSource::crm_ui("merge"));
        inner.index_after_write(contacts, primary);
        true
    }

    /// Adds a deal pipeline. `stages` are `(id, label, is_closed)`.
    pub fn add_deal_pipeline(&self, id: &str, label: &str, stages: &[(&str, &str, bool)]) {
        let pipeline = Pipeline {
            id: id.to_string(),
            label: label.to_string(),
            stages: stages
                .iter()
                .map(|(id, label, closed)| Stage {
                    id: id.to_string(),
                    label: label.to_string(),
                    closed: *closed,
                    probability: if *closed { "1.0" } else { "0.5" },
                })
                .collect(),
        };
        self.lock().pipelines.push(pipeline);
    }

    // ----- inspection ------------------------------------------------------------------------

    pub fn contact(&self, id: &str) -> Option<SandboxObject> {
        self.object(ObjectType::Contacts, id)
    }

    pub fn contacts(&self) -> Vec<SandboxObject> {
        self.objects(ObjectType::Contacts)
    }

    pub fn deal(&self, id: &str) -> Option<SandboxObject> {
        self.object(ObjectType::Deals, id)
    }

    pub fn call(&self, id: &str) -> Option<SandboxObject> {
        self.object(ObjectType::Calls, id)
    }

    pub fn calls(&self) -> Vec<SandboxObject> {
        self.objects(ObjectType::Calls)
    }

    pub fn meeting(&self, id: &str) -> Option<SandboxObject> {
        self.object(ObjectType::Meetings, id)
    }

    pub fn meetings(&self) -> Vec<SandboxObject> {
        self.objects(ObjectType::Meetings)
    }

    /// Objects of a type associated with the contact.
    pub fn associated_with_contact(&self, contact_id: &str, to: ObjectType) -> Vec<SandboxObject> {
        self.associated(contact_id, to)
    }

    /// Calls associated with the contact.
    pub fn calls_for_contact(&self, contact_id: &str) -> Vec<SandboxObject> {
        self.associated(contact_id, ObjectType::Calls)
    }

    /// Meetings associated with the contact.
    pub fn meetings_for_contact(&self, contact_id: &str) -> Vec<SandboxObject> {
        self.associated(contact_id, ObjectType::Meetings)
    }

    pub fn object(&self, object_type: ObjectType, id: &str) -> Option<SandboxObject> {
        let id = id.parse::<u64>().ok()?;
        self.lock().objects.get(&object_type)?.get(&id).map(StoredObject::view)
    }

    pub fn objects(&self, object_type: ObjectType) -> Vec<SandboxObject> {
        self.lock().objects.get(&object_type).map(|m| m.values().map(StoredObject::view).collect()).unwrap_or_default()
    }

    fn associated(&self, contact_id: &str, to: ObjectType) -> Vec<SandboxObject> {
        let Ok(contact) = contact_id.parse::<u64>() else {
            return Vec::new();
        };
        let inner = self.lock();
        inner
            .associated_ids((ObjectType::Contacts, contact), to)
            .into_iter()
            .filter_map(|id| inner.objects.get(&to)?.get(&id).map(StoredObject::view))
            .collect()
    }

    /// Requests of one family received so far (failed ones included).
    pub fn request_count(&self, kind: RouteKind) -> u64 {
        self.lock().counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.lock().counts.values().sum()
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    pub fn reset_request_log(&self) {
        let mut inner = self.lock();
        inner.counts.clear();
        inner.log.clear();
    }

    // ----- switches --------------------------------------------------------------------------

    /// Every request answers 503 with an HTML body, as a load balancer in front of a dead
    /// backend would.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The next `n` requests (of any kind) answer `status` with HubSpot's body for it.
    pub fn fail_next(&self, status: u16, n: usize) {
        self.fail_next_with(InjectedFailure::status(status), n);
    }

    pub fn fail_next_with(&self, failure: InjectedFailure, n: usize) {
        let mut inner = self.lock();
        inner.failures.extend(std::iter::repeat_n(failure, n));
    }

    /// The next `n` writes (creates and updates) are applied, then the connection is closed
    /// before any byte of the response is written.
    /// The next `n` answers are `200 OK` with a JSON body that is not what the route returns (a
    /// proxy or a half-deployed change answering for the portal): a reader must not take it for
    /// an answer.
    pub fn garble_next_responses(&self, n: u32) {
        self.lock().garbled = n;
    }

    pub fn drop_next_responses_after_apply(&self, n: u32) {
        self.lock().drop_after_apply = n;
    }

    /// While on, creates and updates are invisible to search until [`Self::flush_search_index`].
    pub fn set_search_lag(&self, lag: bool) {
        let mut inner = self.lock();
        inner.search_lag = lag;
        if !lag {
            inner.flush();
        }
    }

    /// Indexes every object as it is now.
    pub fn flush_search_index(&self) {
        self.lock().flush();
    }

    /// While on, every request waits unanswered until it is turned off (a hung portal).
    pub fn set_stalled(&self, stalled: bool) {
        self.stall.set(stalled);
    }

    /// How many requests the stall holds right now; changes as they arrive and leave.
    pub fn stalled_requests(&self) -> tokio::sync::watch::Receiver<usize> {
        self.stall.held()
    }

    /// Real delay added before answering each request.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// From now on the configured token and every access token issued so far answer 401
    /// `EXPIRED_AUTHENTICATION`.
    pub fn expire_token(&self) {
        let mut inner = self.lock();
        inner.token_expired = true;
        for expired in inner.oauth.access_tokens.values_mut() {
            *expired = true;
        }
    }

    /// Whether search sees HubSpot's calculated `hs_searchable_calculated_*` phone properties.
    /// Off simulates records whose numbers HubSpot could not parse (only the raw strings are
    /// searchable). Re-indexes everything.
    pub fn set_calculated_phone_properties(&self, on: bool) {
        let mut inner = self.lock();
        inner.calculated_phone = on;
        inner.search_index.clear();
        inner.flush();
    }

    /// Whether unique-value conflicts end in `Existing ID: <id>`. Off exercises clients that must
    /// find the existing record another way.
    pub fn set_conflict_message_ids(&self, on: bool) {
        self.lock().conflict_ids = on;
    }

    /// Every write naming `property` is refused with a property-level `VALIDATION_ERROR` (as a
    /// portal whose property rules reject the value would), until cleared.
    pub fn reject_property(&self, property: &str) {
        self.lock().rejected_properties.push(property.to_string());
    }

    /// Writes naming `property` succeed but the value is silently not stored (a portal workflow or
    /// a read-only-in-practice property), until cleared.
    pub fn ignore_property(&self, property: &str) {
        self.lock().ignored_properties.push(property.to_string());
    }

    pub fn clear_property_faults(&self) {
        let mut inner = self.lock();
        inner.rejected_properties.clear();
        inner.ignored_properties.clear();
    }

    /// Enforces HubSpot's search limit ("The search endpoints are rate limited to five requests
    /// per second", search guide, Limits): a search past it answers 429 `SECONDLY`.
    pub fn limit_search_rate(&self, per_second: Option<u32>) {
        self.lock().search_per_second = per_second;
    }

    /// Whether a refresh hands out a new refresh token and retires the old one (default on; the
    /// connector must then persist every refresh's token).
    pub fn set_refresh_rotation(&self, on: bool) {
        self.lock().oauth.rotate_refresh_tokens = on;
    }

    /// The user uninstalls the app: every refresh token stops working (`BAD_REFRESH_TOKEN`) and
    /// every issued access token answers 401.
    pub fn revoke_grant(&self) {
        let mut inner = self.lock();
        for valid in inner.oauth.refresh_tokens.values_mut() {
            *valid = false;
        }
        inner.oauth.access_tokens.clear();
    }

    /// Token-endpoint refreshes served so far.
    pub fn refresh_count(&self) -> u64 {
        self.lock().oauth.refreshes
    }

    /// Authorization codes exchanged so far.
    pub fn code_exchange_count(&self) -> u64 {
        self.lock().oauth.exchanges
    }

    /// Accepts a new token (e.g. after a refresh) and clears the expiry.
    pub fn set_token(&self, token: &str) {
        let mut inner = self.lock();
        inner.token = token.to_string();
        inner.token_expired = false;
    }
}

impl Inner {
    fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn insert(
        &mut self,
        object_type: ObjectType,
        mut properties: BTreeMap<String, String>,
        source: &ChangeSource,
    ) -> u64 {
        let id = self.allocate_id();
        let now = Timestamp::now();
        let history = properties
            .iter()
            .map(|(k, v)| (k.clone(), vec![HistoryEntry { value: v.clone(), at: now, source: source.clone() }]))
            .collect();
        properties.insert("hs_object_id".into(), id.to_string());
        let (created, modified) = object_type.date_properties();
        properties.insert(created.into(), iso(now));
        properties.insert(modified.into(), iso(now));
        let object = StoredObject { id, properties, created_at: now, updated_at: now, history };
        self.objects.entry(object_type).or_default().insert(id, object);
        if let (ObjectType::Contacts, Some(sink)) = (object_type, self.webhook.as_mut()) {
            sink.emit("contact.creation", id, None, source, now);
        }
        id
    }

    /// Applies a property update (an empty value clears) and records its history.
    fn apply_update(
        &mut self,
        object_type: ObjectType,
        id: u64,
        props: BTreeMap<String, String>,
        source: &ChangeSource,
    ) -> Option<StoredObject> {
        let (_, modified) = object_type.date_properties();
        let object = self.objects.get_mut(&object_type)?.get_mut(&id)?;
        // Versions of one object are strictly ordered in time, as HubSpot's history is: two
        // writes within the same millisecond still get distinct, increasing timestamps.
        let now = Timestamp::now().max(object.updated_at + jiff::SignedDuration::from_millis(1));
        let changed: Vec<String> = props.keys().cloned().collect();
        for (k, v) in props {
            object.history.entry(k.clone()).or_default().push(HistoryEntry {
                value: v.clone(),
                at: now,
                source: source.clone(),
            });
            if v.is_empty() {
                object.properties.remove(&k); // "To clear a property value, pass an empty string."
            } else {
                object.properties.insert(k, v);
            }
        }
        object.updated_at = now;
        object.properties.insert(modified.into(), iso(now));
        let object = object.clone();
        let subscription = match object_type {
            ObjectType::Contacts => Some("contact.propertyChange"),
            ObjectType::Deals => Some("deal.propertyChange"),
            _ => None,
        };
        if let (Some(subscription), Some(sink)) = (subscription, self.webhook.as_mut()) {
            for name in &changed {
                let value = object.properties.get(name).map(String::as_str).unwrap_or("");
                sink.emit(subscription, id, Some((name, value)), source, now);
            }
        }
        Some(object)
    }

    /// Archives an object: it leaves reads, search and associations, and is listed with
    /// `archived=true` from now on. False when there is no such object.
    fn archive(&mut self, object_type: ObjectType, id: u64) -> bool {
        let Some(object) = self.objects.get_mut(&object_type).and_then(|m| m.remove(&id)) else {
            return false;
        };
        self.search_index.remove(&(object_type, id));
        self.edges.retain(|e| e.a != (object_type, id) && e.b != (object_type, id));
        self.archived.entry(object_type).or_default().insert(id, (object, Timestamp::now()));
        true
    }

    /// Puts the object's current state into the search index.
    fn index(&mut self, object_type: ObjectType, id: u64) {
        let Some(object) = self.objects.get(&object_type).and_then(|m| m.get(&id)) else {
            return;
        };
        let mut props = object.properties.clone();
        if object_type == ObjectType::Contacts && self.calculated_phone {
            for (raw, calculated) in [
                ("phone", "hs_searchable_calculated_phone_number"),
                ("mobilephone", "hs_searchable_calculated_mobile_number"),
            ] {
                if let Some(national) = props.get(raw).and_then(|v| searchable_national_number(v)) {
                    props.insert(calculated.into(), national);
                }
            }
        }
        self.search_index.insert((object_type, id), props);
    }

    /// Indexes after a write unless search lags.
    fn index_after_write(&mut self, object_type: ObjectType, id: u64) {
        if !self.search_lag {
            self.index(object_type, id);
        }
    }

    fn flush(&mut self) {
        let keys: Vec<(ObjectType, u64)> =
            self.objects.iter().flat_map(|(t, m)| m.keys().map(move |id| (*t, *id))).collect();
        for (t, id) in keys {
            self.index(t, id);
        }
    }

    fn associated_ids(&self, from: (ObjectType, u64), to: ObjectType) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .edges
            .iter()
            .filter_map(|e| {
                if e.a == from && e.b.0 == to {
                    Some(e.b.1)
                } else if e.b == from && e.a.0 == to {
                    Some(e.a.1)
                } else {
                    None
                }
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn find_by_property(&self, object_type: ObjectType, name: &str, value: &str) -> Option<u64> {
        self.objects.get(&object_type)?.values().find_map(|o| {
            let stored = o.properties.get(name)?;
            let equal = if name == "email" { stored.eq_ignore_ascii_case(value) } else { stored == value };
            equal.then_some(o.id)
        })
    }
}

/// HubSpot's default support pipeline (`0`) and its stages; "Closed" is the closed one
/// (<https://developers.hubspot.com/docs/api-reference/legacy/crm/pipelines/guide>).
fn default_ticket_pipeline() -> Pipeline {
    let stage = |id: &str, label: &str, closed: bool| Stage {
        id: id.into(),
        label: label.into(),
        closed,
        probability: if closed { "1.0" } else { "0.0" },
    };
    Pipeline {
        id: "0".into(),
        label: "Support Pipeline".into(),
        stages: vec![
            stage("1", "New", false),
            stage("2", "Waiting on contact", false),
            stage("3", "Waiting on us", false),
            stage("4", "Closed", true),
        ],
    }
}

fn default_deal_pipeline() -> Pipeline {
    // HubSpot's default sales pipeline and its internal stage ids.
    let stage = |id: &str, label: &str, closed: bool, probability: &'static str| Stage {
        id: id.into(),
        label: label.into(),
        closed,
        probability,
    };
    Pipeline {
        id: "default".into(),
        label: "Sales Pipeline".into(),
        stages: vec![
            stage("appointmentscheduled", "Appointment Scheduled", false, "0.2"),
            stage("qualifiedtobuy", "Qualified To Buy", false, "0.4"),
            stage("presentationscheduled", "Presentation Scheduled", false, "0.6"),
            stage("decisionmakerboughtin", "Decision Maker Bought-In", false, "0.8"),
            stage("contractsent", "Contract Sent", false, "0.9"),
            stage("closedwon", "Closed Won", true, "1.0"),
            stage("closedlost", "Closed Lost", true, "0.0"),
        ],
    }
}

/// What HubSpot's `hs_searchable_calculated_*` properties hold: the national significant number
/// ("only the area code and local number"). Numbers typed without a country code are read in
/// the emulated portal's default country, the US.
fn searchable_national_number(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('+') {
        let parsed = rlibphonenumber::PhoneNumber::parse(raw, None).ok()?;
        return Some(parsed.get_national_significant_number());
    }
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    match digits.len() {
        10 => Some(digits),
        11 if digits.starts_with('1') => Some(digits[1..].to_string()),
        0 => None,
        _ => Some(digits),
    }
}

fn iso(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

// ----- the server ----------------------------------------------------------------------------

/// A running emulator.
#[derive(Debug)]
pub struct HubSpotSandbox {
    pub addr: SocketAddr,
    pub state: Arc<HubSpotState>,
    task: JoinHandle<()>,
}

impl HubSpotSandbox {
    /// Binds `127.0.0.1:0` and serves the emulator on the current tokio runtime. Must be called
    /// from within a runtime. Requests must carry `Authorization: Bearer <token>`.
    pub fn start(token: &str) -> io::Result<Self> {
        Self::start_on(token, 0)
    }

    /// [`HubSpotSandbox::start`] on a given loopback port (0: any free one).
    pub fn start_on(token: &str, port: u16) -> io::Result<Self> {
        let state = HubSpotState::new(token);
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = KillableListener { inner: TcpListener::from_std(std_listener)? };
        let app = Self::router(state.clone()).into_make_service_with_connect_info::<ConnCtl>();
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "hubspot sandbox stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:<port>/`, the base URL to give the connector.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("socket address forms a valid URL")
    }

    /// The emulator's routes, for embedding in another server. Served this way (without
    /// [`HubSpotSandbox::start`]'s listener), a dropped response is simulated by a response body
    /// that fails right after the headers instead of closing the connection before them.
    pub fn router(state: Arc<HubSpotState>) -> Router {
        Router::new()
            .route("/crm/v3/objects/{object}", get(list_objects).post(create_object))
            .route("/crm/v3/objects/{object}/search", post(search_objects))
            .route("/crm/v3/objects/{object}/batch/read", post(batch_read))
            .route("/crm/v3/objects/{object}/{id}", get(read_object).patch(update_object).delete(archive_object))
            .route("/crm/v3/pipelines/{object}", get(list_pipelines))
            .route("/crm/v4/objects/{object}/{id}/associations/{to}", get(list_associations))
            .route("/crm/v4/objects/{object}/{id}/associations/default/{to}/{to_id}", put(associate_default))
            .route("/crm/v4/associations/{from}/{to}/labels", get(association_labels))
            .route("/crm/v3/properties/{object}/{name}", get(read_property))
            .route("/crm/v3/owners/{id}", get(read_owner))
            .route("/oauth/authorize", get(oauth_authorize))
            .route("/oauth/v1/token", post(oauth_token))
            .route("/oauth/v1/refresh-tokens/{token}", delete(oauth_revoke))
            .fallback(not_found_route)
            .layer(middleware::from_fn_with_state(state.clone(), gatekeeper))
            .with_state(state)
    }
}

impl Drop for HubSpotSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per-connection handle: lets a request close its own connection without answering.
#[derive(Debug, Clone)]
pub struct ConnCtl {
    pub remote: SocketAddr,
    kill: Arc<AtomicBool>,
}

impl ConnCtl {
    fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnCtl {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections can be aborted from inside a request: once killed, every
/// read and write of the connection fails, so hyper drops it without writing the response.
struct KillableListener {
    inner: TcpListener,
}

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = ConnCtl;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, remote)) => {
                    let kill = Arc::new(AtomicBool::new(false));
                    return (KillableIo { stream, kill: kill.clone() }, ConnCtl { remote, kill });
                }
                Err(err) => {
                    tracing::debug!(error = %err, "hubspot sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnCtl { remote: self.inner.local_addr()?, kill: Arc::new(AtomicBool::new(false)) })
    }
}

struct KillableIo {
    stream: TcpStream,
    kill: Arc<AtomicBool>,
}

impl KillableIo {
    fn killed(&self) -> Option<io::Error> {
        self.kill
            .load(Ordering::SeqCst)
            .then(|| io::Error::new(io::ErrorKind::ConnectionAborted, "response dropped by the sandbox"))
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// ----- cross-cutting behaviour -----------------------------------------------------------------

/// Logs and counts every request, adds latency, answers outages, auth failures and injected
/// failures, and drops responses after writes when told to.
async fn gatekeeper(State(state): State<Arc<HubSpotState>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let kind = RouteKind::classify(&method, &path);
    state.stall.pass().await;
    let latency = state.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let early = {
        let mut inner = state.lock();
        if inner.down {
            Some(service_unavailable())
        } else if path.starts_with("/oauth/") {
            // The OAuth endpoints authenticate with the app's client credentials, not a bearer
            // token, and are not subject to the injected API faults.
            None
        } else if let Some(response) = check_auth(&inner, &request) {
            Some(response)
        } else if let Some(failure) = inner.failures.pop_front() {
            Some(injected_failure(failure))
        } else if inner.garbled > 0 {
            inner.garbled -= 1;
            Some((StatusCode::OK, axum::Json(json!({"status": "ok", "results": "unavailable"}))).into_response())
        } else {
            None
        }
    };
    if let Some(response) = early {
        record(&state, &method, &path, kind, response.status());
        return response;
    }

    let drop_response = {
        let mut inner = state.lock();
        let drop = kind.is_write() && inner.drop_after_apply > 0;
        if drop {
            inner.drop_after_apply -= 1;
        }
        drop
    };
    let conn = request.extensions().get::<ConnectInfo<ConnCtl>>().map(|c| c.0.clone());
    let response = next.run(request).await;
    record(&state, &method, &path, kind, response.status());
    if !drop_response {
        return response;
    }
    match conn {
        Some(conn) => {
            conn.kill();
            response
        }
        None => {
            // Embedded router: the headers go out, then the body fails and hyper aborts the
            // connection.
            let (parts, _) = response.into_parts();
            let failing = futures::stream::once(async {
                Err::<Bytes, io::Error>(io::Error::new(io::ErrorKind::ConnectionAborted, "response dropped"))
            });
            Response::from_parts(parts, Body::from_stream(failing))
        }
    }
}

fn record(state: &HubSpotState, method: &Method, path: &str, kind: RouteKind, status: StatusCode) {
    let mut inner = state.lock();
    *inner.counts.entry(kind).or_insert(0) += 1;
    inner.log.push(LoggedRequest { method: method.to_string(), path: path.to_string(), kind, status: status.as_u16() });
}

fn check_auth(inner: &Inner, request: &Request) -> Option<Response> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let issued = presented.and_then(|t| inner.oauth.access_tokens.get(t).copied());
    match presented {
        Some(token) if token == inner.token && !inner.token_expired => None,
        Some(_) if issued == Some(false) => None,
        Some(token) if token == inner.token || issued == Some(true) => Some(error_response(
            StatusCode::UNAUTHORIZED,
            "EXPIRED_AUTHENTICATION",
            "The OAuth token used to make this call expired 5 minute(s) ago.",
            None,
        )),
        _ => Some(error_response(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more \
             details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            None,
        )),
    }
}

fn service_unavailable() -> Response {
    let body = "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>\
                <h1>503 Service Temporarily Unavailable</h1></center></body></html>";
    (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/html")], body).into_response()
}

fn injected_failure(failure: InjectedFailure) -> Response {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = if status == StatusCode::TOO_MANY_REQUESTS {
        // The 429 body documented in HubSpot's usage guidelines.
        let message = if failure.policy == "DAILY" {
            "You have reached your daily limit."
        } else {
            "You have reached your secondly limit."
        };
        let body = json!({
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": uuid::Uuid::new_v4().to_string(),
            "policyName": failure.policy,
            "requestId": uuid::Uuid::new_v4().to_string(),
        });
        (status, axum::Json(body)).into_response()
    } else {
        let (category, message) = match failure.status {
            500..=599 => ("INTERNAL_ERROR", "internal error"),
            404 => ("OBJECT_NOT_FOUND", "resource not found"),
            403 => ("MISSING_SCOPES", "This app hasn't been granted all required scopes to make this call."),
            _ => ("VALIDATION_ERROR", "injected failure"),
        };
        error_response(status, category, message, None)
    };
    let headers = response.headers_mut();
    if let Some(retry_after) = failure.retry_after.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(header::RETRY_AFTER, retry_after);
    }
    if let Some((max, remaining, interval)) = failure.rate_limit_window {
        headers.insert("x-hubspot-ratelimit-max", HeaderValue::from(max));
        headers.insert("x-hubspot-ratelimit-remaining", HeaderValue::from(remaining));
        headers.insert("x-hubspot-ratelimit-interval-milliseconds", HeaderValue::from(interval));
    }
    response
}

fn error_body(category: &str, message: &str, errors: Option<Value>) -> Value {
    let mut body = json!({
        "status": "error",
        "message": message,
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "category": category,
    });
    if let Some(errors) = errors {
        body["errors"] = errors;
    }
    body
}

fn error_response(status: StatusCode, category: &str, message: &str, errors: Option<Value>) -> Response {
    (status, axum::Json(error_body(category, message, errors))).into_response()
}

fn not_found(message: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND", message, None)
}

async fn not_found_route() -> Response {
    not_found("resource not found")
}

/// A property-level validation failure, shaped as HubSpot's object APIs answer it: the
/// `Property values were not valid: [...]` message (a JSON list of per-property results) plus the
/// documented `errors[].context.propertyName`.
struct PropertyError {
    name: String,
    code: &'static str,
    message: String,
}

fn validation_response(problems: Vec<PropertyError>) -> Response {
    let list: Vec<Value> = problems
        .iter()
        .map(|p| json!({"isValid": false, "message": p.message, "error": p.code, "name": p.name}))
        .collect();
    let message = format!("Property values were not valid: {}", Value::Array(list));
    let errors: Vec<Value> = problems
        .iter()
        .map(|p| json!({"message": p.message, "code": p.code, "context": {"propertyName": [p.name]}}))
        .collect();
    error_response(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &message, Some(Value::Array(errors)))
}

fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message, None)
}

/// An early answer from a request helper (boxed: a `Response` is large).
struct Reject(Box<Response>);

impl From<Response> for Reject {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn parse_json(body: &Bytes) -> Result<Value, Reject> {
    serde_json::from_slice(body)
        .map_err(|_| bad_request("Invalid input JSON on line 1: could not parse the request body").into())
}

fn object_type(name: &str) -> Result<ObjectType, Reject> {
    ObjectType::parse(name).ok_or_else(|| not_found(&format!("Unable to infer object type from: {name}")).into())
}

// ----- object rendering -----------------------------------------------------------------------

fn render(
    object_type: ObjectType,
    object: &StoredObject,
    props: &BTreeMap<String, String>,
    wanted: Option<&[String]>,
) -> Value {
    let mut properties = Map::new();
    match wanted {
        Some(names) if !names.is_empty() => {
            // Requested properties that exist are returned, `null` when empty; the ids and dates
            // always come along.
            for name in names {
                if is_known_property(object_type, name) {
                    properties.insert(name.clone(), props.get(name).map_or(Value::Null, |v| Value::String(v.clone())));
                }
            }
        }
        _ => {
            for name in object_type.default_properties() {
                properties.insert(name.to_string(), props.get(*name).map_or(Value::Null, |v| Value::String(v.clone())));
            }
        }
    }
    for always in ["hs_object_id", "createdate", "lastmodifieddate", "hs_createdate", "hs_lastmodifieddate"] {
        if let Some(v) = props.get(always) {
            properties.insert(always.into(), Value::String(v.clone()));
        }
    }
    json!({
        "id": object.id.to_string(),
        "properties": properties,
        "createdAt": iso(object.created_at),
        "updatedAt": iso(object.updated_at),
        "archived": false,
    })
}

fn is_known_property(object_type: ObjectType, name: &str) -> bool {
    object_type.writable().contains(&name)
        || (object_type == ObjectType::Contacts && ACCOUNT_PROPERTIES.contains(&name))
        || object_type.read_only(name)
        || object_type.default_properties().contains(&name)
}

fn csv(query: &HashMap<String, String>, key: &str) -> Vec<String> {
    query
        .get(key)
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

fn string_list(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect()).unwrap_or_default()
}

/// Property values from a request body: HubSpot accepts strings, numbers and booleans.
fn property_map(value: Option<&Value>) -> Result<BTreeMap<String, String>, Reject> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let Some(obj) = value.as_object() else {
        return Err(bad_request("Invalid input JSON: `properties` must be an object").into());
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => String::new(),
            _ => {
                return Err(bad_request(&format!("Invalid input JSON: property {k} must be a scalar")).into());
            }
        };
        out.insert(k.clone(), s);
    }
    Ok(out)
}

/// Checks values the way the portal's property definitions would; read-only properties are
/// dropped silently.
fn validate_properties(
    object_type: ObjectType,
    props: &mut BTreeMap<String, String>,
    creating: bool,
) -> Result<(), Reject> {
    props.retain(|name, _| !object_type.read_only(name));
    let mut problems = Vec::new();
    for (name, value) in props.iter() {
        if !object_type.writable().contains(&name.as_str()) {
            problems.push(PropertyError {
                name: name.clone(),
                code: "PROPERTY_DOESNT_EXIST",
                message: format!("Property \"{name}\" does not exist"),
            });
            continue;
        }
        if value.is_empty() {
            continue; // clears the value
        }
        let problem = match name.as_str() {
            "email" if !looks_like_email(value) => Some(("INVALID_EMAIL", format!("Email address {value} is invalid"))),
            "hs_timestamp" | "hs_meeting_start_time" | "hs_meeting_end_time" | "closedate"
                if !is_hubspot_datetime(value) =>
            {
                Some(("INVALID_DATE", format!("{value} was not a valid long or ISO 8601 datetime")))
            }
            "hs_call_duration" | "amount" if value.parse::<f64>().is_err() => {
                Some(("INVALID_INTEGER", format!("{value} was not a valid number")))
            }
            "hs_call_direction" if value != "INBOUND" && value != "OUTBOUND" => {
                Some(("INVALID_OPTION", format!("{value} was not one of the allowed options: [INBOUND, OUTBOUND]")))
            }
            "hs_call_status" if !CALL_STATUSES.contains(&value.as_str()) => {
                Some(("INVALID_OPTION", format!("{value} was not one of the allowed options")))
            }
            "hs_call_disposition" if !DEFAULT_CALL_DISPOSITIONS.iter().any(|(_, guid)| guid == value) => {
                Some(("INVALID_OPTION", format!("{value} was not one of the allowed options")))
            }
            "hs_call_recording_url" if !value.starts_with("https://") => {
                Some(("INVALID_URL", format!("{value} is not a secure (HTTPS) URL")))
            }
            "hs_call_source" if value != "INTEGRATIONS_PLATFORM" => {
                Some(("INVALID_OPTION", format!("{value} was not one of the allowed options: [INTEGRATIONS_PLATFORM]")))
            }
            "hs_meeting_outcome" if !MEETING_OUTCOMES.contains(&value.as_str()) => {
                Some(("INVALID_OPTION", format!("{value} was not one of the allowed options")))
            }
            _ => check_by_definition(object_type, name, value),
        };
        if let Some((code, message)) = problem {
            problems.push(PropertyError { name: name.clone(), code, message });
        }
    }
    if creating {
        let missing_timestamp = match object_type {
            ObjectType::Calls => !props.contains_key("hs_timestamp"),
            // "When the property value is missing, the value will default to hs_meeting_start_time."
            ObjectType::Meetings => !props.contains_key("hs_timestamp") && !props.contains_key("hs_meeting_start_time"),
            _ => false,
        };
        if missing_timestamp {
            problems.push(PropertyError {
                name: "hs_timestamp".into(),
                code: "REQUIRED_FIELD",
                message: "Property \"hs_timestamp\" is required".into(),
            });
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(validation_response(problems).into()) }
}

/// A property's definition as the properties API describes it: `(type, fieldType, options)`.
fn property_definition(
    object_type: ObjectType,
    name: &str,
) -> Option<(&'static str, &'static str, &'static [&'static str])> {
    const LIFECYCLE: &[&str] = &[
        "subscriber",
        "lead",
        "marketingqualifiedlead",
        "salesqualifiedlead",
        "opportunity",
        "customer",
        "evangelist",
        "other",
    ];
    const LEAD_STATUS: &[&str] =
        &["NEW", "OPEN", "IN_PROGRESS", "OPEN_DEAL", "UNQUALIFIED", "ATTEMPTED_TO_CONTACT", "CONNECTED", "BAD_TIMING"];
    const TASK_STATUS: &[&str] = &["NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"];
    const PRIORITY: &[&str] = &["LOW", "MEDIUM", "HIGH"];
    const TASK_TYPE: &[&str] = &["EMAIL", "CALL", "TODO"];
    if !is_known_property(object_type, name) {
        return None;
    }
    Some(match name {
        "lifecyclestage" => ("enumeration", "radio", LIFECYCLE),
        "hs_lead_status" => ("enumeration", "radio", LEAD_STATUS),
        CUSTOM_ENUM_PROPERTY => ("enumeration", "select", &CUSTOM_ENUM_OPTIONS),
        URGENCY_PROPERTY => ("enumeration", "select", &URGENCY_OPTIONS),
        SENTIMENT_PROPERTY => ("enumeration", "select", &SENTIMENT_OPTIONS),
        "hs_language" => ("enumeration", "select", &LANGUAGE_OPTIONS),
        LAST_WRITTEN_PROPERTY => ("datetime", "date", &[]),
        BUDGET_PROPERTY => ("number", "number", &[]),
        "hs_task_status" => ("enumeration", "select", TASK_STATUS),
        "hs_task_priority" | "hs_ticket_priority" => ("enumeration", "select", PRIORITY),
        "hs_task_type" => ("enumeration", "select", TASK_TYPE),
        "hs_call_direction" => ("enumeration", "select", &["INBOUND", "OUTBOUND"]),
        "hs_call_status" => ("enumeration", "select", &CALL_STATUSES),
        "hs_meeting_outcome" => ("enumeration", "select", &MEETING_OUTCOMES),
        CUSTOM_DATE_PROPERTY => ("date", "date", &[]),
        "hs_timestamp" | "hs_meeting_start_time" | "hs_meeting_end_time" | "closedate" | CUSTOM_DATETIME_PROPERTY => {
            ("datetime", "date", &[])
        }
        "amount" | "hs_call_duration" | CUSTOM_NUMBER_PROPERTY => ("number", "number", &[]),
        "hs_note_body" | "hs_task_body" | "hs_call_body" | "content" => ("string", "html", &[]),
        _ => ("string", "text", &[]),
    })
}

/// Type and option checks from the property definition. A `date` property holds "midnight UTC"
/// only: `YYYY-MM-DD` or epoch milliseconds at midnight (properties guide, "date").
fn check_by_definition(object_type: ObjectType, name: &str, value: &str) -> Option<(&'static str, String)> {
    let (kind, _, options) = property_definition(object_type, name)?;
    match kind {
        "enumeration" if !options.contains(&value) => {
            Some(("INVALID_OPTION", format!("{value} was not one of the allowed options: [{}]", options.join(", "))))
        }
        "number" if value.parse::<f64>().is_err() => {
            Some(("INVALID_INTEGER", format!("{value} was not a valid number")))
        }
        "datetime" if !is_hubspot_datetime(value) => {
            Some(("INVALID_DATE", format!("{value} was not a valid long or ISO 8601 datetime")))
        }
        "date" => {
            let midnight_ms = value.parse::<i64>().is_ok_and(|ms| ms.rem_euclid(86_400_000) == 0);
            (!midnight_ms && value.parse::<jiff::civil::Date>().is_err())
                .then(|| ("INVALID_DATE", format!("{value} is not a valid date at midnight UTC")))
        }
        _ => None,
    }
}

fn looks_like_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !value.contains(char::is_whitespace)
}

fn is_hubspot_datetime(value: &str) -> bool {
    value.parse::<i64>().is_ok() || value.parse::<Timestamp>().is_ok() || value.parse::<jiff::civil::Date>().is_ok()
}

// ----- handlers -------------------------------------------------------------------------------

async fn create_object(State(state): State<Arc<HubSpotState>>, Path(object): Path<String>, body: Bytes) -> Response {
    let object_type = match object_type(&object) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let mut props = match property_map(body.get("properties")) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = validate_properties(object_type, &mut props, true) {
        return r.into_response();
    }
    if object_type == ObjectType::Meetings
        && !props.contains_key("hs_timestamp")
        && let Some(start) = props.get("hs_meeting_start_time").cloned()
    {
        props.insert("hs_timestamp".into(), start);
    }
    props.retain(|_, v| !v.is_empty());

    let mut inner = state.lock();

    // Associations named in the body must be HubSpot-defined types for this direction and point
    // at existing records.
    let mut edges = Vec::new();
    for assoc in body.get("associations").and_then(Value::as_array).into_iter().flatten() {
        let to_id = match assoc.pointer("/to/id") {
            Some(Value::String(s)) => s.parse::<u64>().ok(),
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        let Some(to_id) = to_id else {
            return bad_request("Invalid association: `to.id` is required");
        };
        for t in assoc.get("types").and_then(Value::as_array).into_iter().flatten() {
            let category = t.get("associationCategory").and_then(Value::as_str).unwrap_or_default();
            let type_id = t.get("associationTypeId").and_then(Value::as_u64);
            let target = ALL_TYPES.into_iter().find(|to| {
                category == "HUBSPOT_DEFINED" && association_type_id(object_type, *to).map(u64::from) == type_id
            });
            let Some(target) = target else {
                return bad_request(&format!(
                    "association type id {} ({category}) is not valid from {}",
                    type_id.map_or_else(|| "null".to_string(), |v| v.to_string()),
                    object_type.plural()
                ));
            };
            if !inner.objects.get(&target).is_some_and(|m| m.contains_key(&to_id)) {
                return bad_request(&format!("The {} with id {to_id} does not exist", target.singular()));
            }
            edges.push(Edge { a: (object_type, 0), b: (target, to_id) });
        }
    }

    // Unique values: the idempotency marker on every object that carries it, email on contacts.
    if object_type.has_idempotency_marker()
        && let Some(key) = props.get(IDEMPOTENCY_PROPERTY)
        && let Some(existing) = inner.find_by_property(object_type, IDEMPOTENCY_PROPERTY, key)
    {
        let mut message = format!(
            "A {} with {IDEMPOTENCY_PROPERTY} \"{key}\" already exists: {IDEMPOTENCY_PROPERTY} already \
             has that value.",
            object_type.singular()
        );
        if inner.conflict_ids {
            message.push_str(&format!(" Existing ID: {existing}"));
        }
        let errors = json!([{"message": message, "in": IDEMPOTENCY_PROPERTY}]);
        return error_response(StatusCode::CONFLICT, "CONFLICT", &message, Some(errors));
    }
    if object_type == ObjectType::Contacts
        && let Some(email) = props.get("email")
        && let Some(existing) = inner.find_by_property(ObjectType::Contacts, "email", email)
    {
        let errors = json!([{
            "message": format!("A contact with email {email} already exists. Existing ID: {existing}"),
            "in": "email",
        }]);
        let mut body = error_body(
            "OBJECT_ALREADY_EXISTS",
            &format!("Contact already exists. Existing ID: {existing}"),
            Some(errors),
        );
        body["error"] = json!("CONTACT_EXISTS");
        return (StatusCode::CONFLICT, axum::Json(body)).into_response();
    }

    if let Some(rejected) = property_faults(&inner, &mut props) {
        return rejected;
    }
    let id = inner.insert(object_type, props, &ChangeSource::integration());
    for mut edge in edges {
        edge.a.1 = id;
        inner.edges.push(edge);
    }
    inner.index_after_write(object_type, id);
    let object = inner.objects[&object_type][&id].clone();
    let rendered =
        render(object_type, &object, &object.properties, Some(&object.properties.keys().cloned().collect::<Vec<_>>()));
    (StatusCode::CREATED, axum::Json(rendered)).into_response()
}

async fn read_object(
    State(state): State<Arc<HubSpotState>>,
    Path((object, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let object_type = match object_type(&object) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let inner = state.lock();
    let found = match query.get("idProperty").map(String::as_str) {
        None | Some("hs_object_id") => {
            id.parse::<u64>().ok().filter(|id| inner.objects.get(&object_type).is_some_and(|m| m.contains_key(id)))
        }
        Some(prop) if prop == IDEMPOTENCY_PROPERTY && object_type.has_idempotency_marker() => {
            inner.find_by_property(object_type, prop, &id)
        }
        Some("email") if object_type == ObjectType::Contacts => inner.find_by_property(object_type, "email", &id),
        Some(other) => {
            return bad_request(&format!("{other} is not a unique identifier property of {}", object_type.plural()));
        }
    };
    let Some(found) = found else {
        return not_found("resource not found");
    };
    let object = &inner.objects[&object_type][&found];
    let wanted = csv(&query, "properties");
    let mut rendered = render(object_type, object, &object.properties, Some(&wanted));
    let history_wanted = csv(&query, "propertiesWithHistory");
    if !history_wanted.is_empty() {
        let mut with_history = Map::new();
        for name in &history_wanted {
            let Some(entries) = object.history.get(name) else {
                continue;
            };
            // Newest first, as HubSpot lists versions.
            let versions: Vec<Value> = entries
                .iter()
                .rev()
                .map(|e| {
                    let mut v = json!({"value": e.value, "timestamp": iso(e.at), "sourceType": e.source.source_type});
                    if let Some(id) = &e.source.source_id {
                        v["sourceId"] = json!(id);
                    }
                    if let Some(user) = e.source.user_id.as_deref().and_then(|u| u.parse::<u64>().ok()) {
                        v["updatedByUserId"] = json!(user);
                    }
                    v
                })
                .collect();
            with_history.insert(name.clone(), Value::Array(versions));
        }
        rendered["propertiesWithHistory"] = Value::Object(with_history);
    }
    let mut associations = Map::new();
    for to_name in csv(&query, "associations") {
        let Some(to) = ObjectType::parse(&to_name) else {
            continue;
        };
        let ids = inner.associated_ids((object_type, found), to);
        if ids.is_empty() {
            continue; // "Any specified associations that don't exist will not be returned."
        }
        let kind = format!("{}_to_{}", object_type.singular(), to.singular());
        let results: Vec<Value> = ids.iter().map(|id| json!({"id": id.to_string(), "type": kind})).collect();
        associations.insert(to.plural().to_string(), json!({"results": results}));
    }
    if !associations.is_empty() {
        rendered["associations"] = Value::Object(associations);
    }
    (StatusCode::OK, axum::Json(rendered)).into_response()
}

/// `DELETE /crm/v3/objects/{type}/{id}`: archives the object (it leaves reads, search and
/// associations) and answers `204 No Content`; an unknown id answers 404 (objects guide, "Delete
/// records", <https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/guide>).
async fn archive_object(
    State(state): State<Arc<HubSpotState>>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    let object_type = match object_type(&object) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let mut inner = state.lock();
    let Some(id) = id.parse::<u64>().ok() else {
        return not_found("resource not found");
    };
    if !inner.archive(object_type, id) {
        return not_found("resource not found");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /crm/v3/objects/{type}?limit=&after=&archived=&properties=`: the records of a type by id,
/// `limit` at most 100 (default 10), paged with `paging.next.after`; `archived=true` lists the
/// archived ones instead, each with `archived: true` and `archivedAt` (objects guide, "Retrieve
/// records",
/// <https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/guide>).
async fn list_objects(
    State(state): State<Arc<HubSpotState>>,
    Path(object): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let object_type = match object_type(&object) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return bad_request("limit must be a number from 1 to 100"),
    };
    let after = match query.get("after").map(|a| a.parse::<u64>()) {
        None => 0,
        Some(Ok(a)) => a,
        Some(Err(_)) => return bad_request("after must be a paging cursor from a previous answer"),
    };
    let archived = match query.get("archived").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return bad_request("archived must be true or false"),
    };
    let wanted = csv(&query, "properties");
    let inner = state.lock();
    let mut rows: Vec<Value> = Vec::new();
    let mut next = None;
    if archived {
        for (id, (object, at)) in inner.archived.get(&object_type).into_iter().flatten().filter(|(id, _)| **id >= after)
        {
            if rows.len() == limit {
                next = Some(*id);
                break;
            }
            let mut rendered = render(object_type, object, &object.properties, Some(&wanted));
            rendered["archived"] = json!(true);
            rendered["archivedAt"] = json!(iso(*at));
            rows.push(rendered);
        }
    } else {
        for (id, object) in inner.objects.get(&object_type).into_iter().flatten().filter(|(id, _)| **id >= after) {
            if rows.len() == limit {
                next = Some(*id);
                break;
            }
            rows.push(render(object_type, object, &object.properties, Some(&wanted)));
        }
    }
    let mut answer = json!({ "results": rows });
    if let Some(next) = next {
        answer["paging"] = json!({"next": {"after": next.to_string(), "link": format!("?after={next}")}});
    }
    (StatusCode::OK, axum::Json(answer)).into_response()
}

async fn update_object(
    State(state): State<Arc<HubSpotState>>,
    Path((object, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let object_type = match object_type(&object) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let mut props = match property_map(body.get("properties")) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = validate_properties(object_type, &mut props, false) {
        return r.into_response();
    }
    let mut inner = state.lock();
    let Some(id) =
        id.parse::<u64>().ok().filter(|id| inner.objects.get(&object_type).is_some_and(|m| m.contains_key(id)))
    else {
        return not_found("resource not found");
    };
    if object_type.has_idempotency_marker()
        && let Some(key) = props.get(IDEMPOTENCY_PROPERTY).filter(|k| !k.is_empty())
        && let Some(existing) = inner.find_by_property(object_type, IDEMPOTENCY_PROPERTY, key).filter(|e| *e != id)
    {
        let message = format!("{IDEMPOTENCY_PROPERTY} already has that value. Existing ID: {existing}");
        return error_response(StatusCode::CONFLICT, "CONFLICT", &message, None);
    }
    if object_type == ObjectType::Deals
        && let Some(stage) = props.get("dealstage").filter(|s| !s.is_empty())
    {
        let pipeline = props
            .get("pipeline")
            .cloned()
            .or_else(|| inner.objects.get(&ObjectType::Deals)?.get(&id)?.properties.get("pipeline").cloned());
        let known = inner
            .pipelines
            .iter()
            .filter(|p| pipeline.as_deref().is_none_or(|id| p.id == id))
            .any(|p| p.stages.iter().any(|s| s.id == *stage));
        if !known {
            return validation_response(vec![PropertyError {
                name: "dealstage".into(),
                code: "INVALID_OPTION",
                message: format!("{stage} was not one of the allowed options"),
            }]);
        }
    }
    if let Some(rejected) = property_faults(&inner, &mut props) {
        return rejected;
    }
    let object = inner.apply_update(object_type, id, props, &ChangeSource::integration()).expect("checked above");
    inner.index_after_write(object_type, id);
    let rendered =
        render(object_type, &object, &object.properties, Some(&object.properties.keys().cloned().collect::<Vec<_>>()));
    (StatusCode::OK, axum::Json(rendered)).into_response()
}

async fn batch_read(State(state): State<Arc<HubSpotState>>, Path(object): Path<String>, body: Bytes) -> Response {
    let object_type = match object_type(&object) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let inputs: Vec<String> = body
        .get("inputs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| match i.get("id") {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if inputs.len() > 100 {
        return bad_request("Batch input cannot exceed 100 inputs");
    }
    let wanted = body.get("properties").map(string_list).unwrap_or_default();
    let id_property = body.get("idProperty").and_then(Value::as_str);
    let started = Timestamp::now();
    let inner = state.lock();
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in &inputs {
        let found = match id_property {
            None | Some("hs_object_id") => input
                .parse::<u64>()
                .ok()
                .filter(|id| inner.objects.get(&object_type).is_some_and(|m| m.contains_key(id))),
            Some(prop) => inner.find_by_property(object_type, prop, input),
        };
        match found {
            Some(id) => {
                let object = &inner.objects[&object_type][&id];
                results.push(render(object_type, object, &object.properties, Some(&wanted)));
            }
            None => missing.push(input.clone()),
        }
    }
    let mut response = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": iso(started),
        "completedAt": iso(Timestamp::now()),
    });
    if missing.is_empty() {
        return (StatusCode::OK, axum::Json(response)).into_response();
    }
    response["numErrors"] = json!(1);
    response["errors"] = json!([{
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": format!(
            "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
            object_type.singular().to_ascii_uppercase()
        ),
        "context": {"ids": missing},
    }]);
    (StatusCode::MULTI_STATUS, axum::Json(response)).into_response()
}

async fn search_objects(State(state): State<Arc<HubSpotState>>, Path(object): Path<String>, body: Bytes) -> Response {
    let object_type = match object_type(&object) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    if body.len() > 3_000 {
        return bad_request("The request body exceeds the maximum of 3000 characters");
    }
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let groups: Vec<Vec<Value>> = body
        .get("filterGroups")
        .and_then(Value::as_array)
        .map(|groups| {
            groups.iter().map(|g| g.get("filters").and_then(Value::as_array).cloned().unwrap_or_default()).collect()
        })
        .unwrap_or_default();
    let total_filters: usize = groups.iter().map(Vec::len).sum();
    if groups.len() > MAX_FILTER_GROUPS
        || groups.iter().any(|g| g.len() > MAX_FILTERS_PER_GROUP)
        || total_filters > MAX_FILTERS_TOTAL
    {
        return bad_request(&format!(
            "Too many filters: at most {MAX_FILTER_GROUPS} filterGroups with {MAX_FILTERS_PER_GROUP} filters each and \
             {MAX_FILTERS_TOTAL} filters in total are allowed"
        ));
    }
    let mut filters = Vec::new();
    for group in &groups {
        let mut parsed = Vec::new();
        for f in group {
            match Filter::parse(f) {
                Ok(filter) => parsed.push(filter),
                Err(message) => return bad_request(&message),
            }
        }
        filters.push(parsed);
    }
    let limit = body.get("limit").and_then(Value::as_u64).unwrap_or(10).clamp(1, 200) as usize;
    let after = match body.get("after") {
        Some(Value::String(s)) => s.parse::<usize>().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as usize,
        _ => 0,
    };
    let wanted = body.get("properties").map(string_list).unwrap_or_default();
    // "The search endpoints are limited to 10,000 total results for any given query. Attempting
    // to page beyond 10,000 will result in a 400 error" (search guide, Limits).
    if after + limit > 10_000 {
        return bad_request("Paging beyond 10,000 results is not supported for search");
    }
    let mut sorts: Vec<(String, bool)> = Vec::new();
    for sort in body.get("sorts").and_then(Value::as_array).into_iter().flatten() {
        let (property, direction) = match sort {
            Value::String(p) => {
                (p.trim_start_matches('-').to_owned(), if p.starts_with('-') { "DESCENDING" } else { "ASCENDING" })
            }
            Value::Object(o) => (
                o.get("propertyName").and_then(Value::as_str).unwrap_or_default().to_owned(),
                o.get("direction").and_then(Value::as_str).unwrap_or("ASCENDING"),
            ),
            _ => return bad_request("Invalid sort"),
        };
        if property.is_empty() || !matches!(direction, "ASCENDING" | "DESCENDING") {
            return bad_request("Invalid sort: propertyName and a direction of ASCENDING or DESCENDING are required");
        }
        sorts.push((property, direction == "DESCENDING"));
    }

    let mut inner = state.lock();
    if let Some(limit) = inner.search_per_second {
        let now = std::time::Instant::now();
        while inner.search_times.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            inner.search_times.pop_front();
        }
        if inner.search_times.len() >= limit as usize {
            let mut response = injected_failure(InjectedFailure::status(429).with_window(None));
            response.headers_mut().insert("x-hubspot-ratelimit-secondly-remaining", HeaderValue::from(0));
            return response;
        }
        inner.search_times.push_back(now);
    }
    let inner = inner;
    let mut matches: Vec<(u64, &BTreeMap<String, String>)> = inner
        .search_index
        .iter()
        .filter(|((t, _), _)| *t == object_type)
        .filter(|(_, props)| filters.is_empty() || filters.iter().any(|group| group.iter().all(|f| f.matches(props))))
        .map(|((_, id), props)| (*id, props))
        .collect();
    matches.sort_by_key(|(id, _)| *id); // oldest first, as HubSpot orders by default
    // `sorts`: one property, ascending or descending (ties keep id order).
    if let Some((property, descending)) = sorts.first() {
        matches.sort_by(|(a_id, a), (b_id, b)| {
            let ord = match (a.get(property), b.get(property)) {
                (Some(x), Some(y)) => compare_values(x, y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            (if *descending { ord.reverse() } else { ord }).then(a_id.cmp(b_id))
        });
    }
    let total = matches.len();
    let page: Vec<Value> = matches
        .iter()
        .skip(after)
        .take(limit)
        .filter_map(|(id, indexed)| {
            let object = inner.objects.get(&object_type)?.get(id)?;
            // Search answers from the index, so a lagging index returns stale values.
            let mut rendered = render(object_type, object, indexed, Some(&wanted));
            if let Some(props) = rendered.get_mut("properties").and_then(Value::as_object_mut) {
                for name in &wanted {
                    if name.starts_with("hs_searchable_calculated_") {
                        props.insert(name.clone(), indexed.get(name).map_or(Value::Null, |v| json!(v)));
                    }
                }
            }
            Some(rendered)
        })
        .collect();
    let mut response = json!({"total": total, "results": page});
    if after + limit < total {
        response["paging"] = json!({"next": {"after": (after + limit).to_string()}});
    }
    (StatusCode::OK, axum::Json(response)).into_response()
}

/// One search filter.
struct Filter {
    property: String,
    op: FilterOp,
}

enum FilterOp {
    Eq(String),
    Neq(String),
    /// `GT`, `GTE`, `LT`, `LTE`: datetimes (ISO 8601 or epoch milliseconds, both accepted by
    /// HubSpot for datetime properties), then numbers, then strings.
    Cmp(std::cmp::Ordering, bool, String),
    In(Vec<String>),
    ContainsToken(String),
    HasProperty,
    NotHasProperty,
}

impl Filter {
    fn parse(value: &Value) -> Result<Self, String> {
        let property = value
            .get("propertyName")
            .and_then(Value::as_str)
            .ok_or("Invalid filter: propertyName is required")?
            .to_string();
        let operator = value.get("operator").and_then(Value::as_str).unwrap_or("EQ");
        let single = || {
            value
                .get("value")
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .ok_or_else(|| format!("Invalid filter: operator {operator} requires a value"))
        };
        let op = match operator {
            "EQ" => FilterOp::Eq(single()?),
            "NEQ" => FilterOp::Neq(single()?),
            "GT" => FilterOp::Cmp(std::cmp::Ordering::Greater, false, single()?),
            "GTE" => FilterOp::Cmp(std::cmp::Ordering::Greater, true, single()?),
            "LT" => FilterOp::Cmp(std::cmp::Ordering::Less, false, single()?),
            "LTE" => FilterOp::Cmp(std::cmp::Ordering::Less, true, single()?),
            "IN" => FilterOp::In(value.get("values").map(string_list).ok_or("Invalid filter: IN requires values")?),
            "CONTAINS_TOKEN" => FilterOp::ContainsToken(single()?),
            "HAS_PROPERTY" => FilterOp::HasProperty,
            "NOT_HAS_PROPERTY" => FilterOp::NotHasProperty,
            other => return Err(format!("Unsupported filter operator: {other}")),
        };
        Ok(Self { property, op })
    }

    fn matches(&self, props: &BTreeMap<String, String>) -> bool {
        let stored = props.get(&self.property).filter(|v| !v.is_empty());
        match &self.op {
            // "Values in filters are case-insensitive" — and compared with the stored string as
            // typed: no phone normalization.
            FilterOp::Eq(v) => stored.is_some_and(|s| s.to_lowercase() == v.to_lowercase()),
            FilterOp::Neq(v) => stored.is_none_or(|s| s.to_lowercase() != v.to_lowercase()),
            FilterOp::Cmp(want, or_equal, v) => stored.is_some_and(|s| {
                let ord = compare_values(s, v);
                ord == *want || (*or_equal && ord == std::cmp::Ordering::Equal)
            }),
            // "When searching a string property with this operator, values must be lowercase."
            FilterOp::In(values) => stored.is_some_and(|s| values.iter().any(|v| *v == s.to_lowercase())),
            FilterOp::ContainsToken(pattern) => stored.is_some_and(|s| contains_token(s, pattern)),
            FilterOp::HasProperty => stored.is_some(),
            FilterOp::NotHasProperty => stored.is_none(),
        }
    }
}

/// Orders a stored value against a filter value: as instants when both read as one (ISO 8601 or
/// epoch milliseconds), else as numbers, else as strings.
fn compare_values(stored: &str, value: &str) -> std::cmp::Ordering {
    let instant = |v: &str| {
        v.parse::<Timestamp>()
            .ok()
            .or_else(|| v.parse::<i64>().ok().and_then(|ms| Timestamp::from_millisecond(ms).ok()))
    };
    if let (Some(a), Some(b)) = (instant(stored), instant(value))
        && (stored.contains('T') || value.contains('T'))
    {
        return a.cmp(&b);
    }
    match (stored.parse::<f64>(), value.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
        _ => stored.cmp(value),
    }
}

/// Tokens are runs of characters that are not whitespace or common punctuation; `*` in the
/// pattern matches any run of characters.
fn contains_token(stored: &str, pattern: &str) -> bool {
    let pattern = pattern.to_lowercase();
    let stored = stored.to_lowercase();
    if glob(&pattern, &stored) {
        return true;
    }
    stored
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '-' | '/'))
        .filter(|t| !t.is_empty())
        .any(|token| glob(&pattern, token))
}

fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(stripped) = rest.strip_prefix(part) else {
                return false;
            };
            rest = stripped;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

async fn list_pipelines(State(state): State<Arc<HubSpotState>>, Path(object): Path<String>) -> Response {
    let inner = state.lock();
    let pipelines = match ObjectType::parse(&object) {
        Some(ObjectType::Deals) => &inner.pipelines,
        Some(ObjectType::Tickets) => &inner.ticket_pipelines,
        _ => return not_found(&format!("Unable to infer object type from: {object}")),
    };
    let created = "2021-02-26T17:07:33.457Z";
    let results: Vec<Value> = pipelines
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stages: Vec<Value> = p
                .stages
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    json!({
                        "label": s.label,
                        "displayOrder": j,
                        "metadata": {"isClosed": if s.closed { "true" } else { "false" }, "probability": s.probability},
                        "id": s.id,
                        "createdAt": created,
                        "updatedAt": created,
                        "archived": false,
                        "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
                    })
                })
                .collect();
            json!({
                "label": p.label,
                "displayOrder": i,
                "id": p.id,
                "stages": stages,
                "createdAt": created,
                "updatedAt": created,
                "archived": false,
            })
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({"results": results}))).into_response()
}

async fn list_associations(
    State(state): State<Arc<HubSpotState>>,
    Path((object, id, to)): Path<(String, String, String)>,
) -> Response {
    let (Some(from), Some(to)) = (ObjectType::parse(&object), ObjectType::parse(&to)) else {
        return not_found("Unable to infer object type");
    };
    let inner = state.lock();
    let Some(id) = id.parse::<u64>().ok().filter(|id| inner.objects.get(&from).is_some_and(|m| m.contains_key(id)))
    else {
        return not_found("resource not found");
    };
    let type_id = association_type_id(from, to);
    let results: Vec<Value> = inner
        .associated_ids((from, id), to)
        .into_iter()
        .map(|to_id| {
            json!({
                "toObjectId": to_id,
                "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": null}],
            })
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({"results": results}))).into_response()
}

/// The fault switches on properties: a rejected one fails the write with a property-level
/// validation error; an ignored one is dropped silently and the write succeeds.
fn property_faults(inner: &Inner, props: &mut BTreeMap<String, String>) -> Option<Response> {
    let rejected: Vec<PropertyError> = props
        .keys()
        .filter(|k| inner.rejected_properties.contains(k))
        .map(|name| PropertyError {
            name: name.clone(),
            code: "INVALID_OPTION",
            message: format!("The value of {name} was rejected by the portal's property rules"),
        })
        .collect();
    if !rejected.is_empty() {
        return Some(validation_response(rejected));
    }
    props.retain(|k, _| !inner.ignored_properties.contains(k));
    None
}

/// `PUT /crm/v4/objects/{from}/{id}/associations/default/{to}/{toId}`: an unlabeled,
/// HubSpot-defined association
/// (<https://developers.hubspot.com/docs/api-reference/crm-associations-v4/guide>, "Associate
/// records without a label").
async fn associate_default(
    State(state): State<Arc<HubSpotState>>,
    Path((from, id, to, to_id)): Path<(String, String, String, String)>,
) -> Response {
    let (Some(from), Some(to)) = (ObjectType::parse(&from), ObjectType::parse(&to)) else {
        return not_found("Unable to infer object type");
    };
    let mut inner = state.lock();
    let exists = |inner: &Inner, t: ObjectType, id: &str| {
        id.parse::<u64>().ok().filter(|id| inner.objects.get(&t).is_some_and(|m| m.contains_key(id)))
    };
    let (Some(a), Some(b)) = (exists(&inner, from, &id), exists(&inner, to, &to_id)) else {
        return not_found("resource not found");
    };
    let Some(type_id) = association_type_id(from, to) else {
        return bad_request("No default association type between these objects");
    };
    let edge = Edge { a: (from, a), b: (to, b) };
    let reverse = Edge { a: (to, b), b: (from, a) };
    if !inner.edges.contains(&edge) && !inner.edges.contains(&reverse) {
        inner.edges.push(edge);
    }
    let body = json!({
        "status": "COMPLETE",
        "results": [{
            "from": {"id": a.to_string()},
            "to": {"id": b.to_string()},
            "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id},
        }],
        "startedAt": iso(Timestamp::now()),
        "completedAt": iso(Timestamp::now()),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `GET /crm/v4/associations/{from}/{to}/labels`: the association types between two objects;
/// the unlabeled default has `"label": null`
/// (<https://developers.hubspot.com/docs/api-reference/latest/crm/associations/associations-schema/guide>).
async fn association_labels(
    State(_state): State<Arc<HubSpotState>>,
    Path((from, to)): Path<(String, String)>,
) -> Response {
    let (Some(from), Some(to)) = (ObjectType::parse(&from), ObjectType::parse(&to)) else {
        return not_found("Unable to infer object type");
    };
    let results: Vec<Value> = association_type_id(from, to)
        .map(|id| json!({"category": "HUBSPOT_DEFINED", "typeId": id, "label": null}))
        .into_iter()
        .collect();
    (StatusCode::OK, axum::Json(json!({"results": results}))).into_response()
}

/// `GET /crm/v3/properties/{object}/{name}`: the property definition with its enumeration
/// options (<https://developers.hubspot.com/docs/api-reference/legacy/crm/properties/guide>).
async fn read_property(
    State(_state): State<Arc<HubSpotState>>,
    Path((object, name)): Path<(String, String)>,
) -> Response {
    let object_type = match object_type(&object) {
        Ok(t) => t,
        Err(r) => return r.into_response(),
    };
    let Some((kind, field_type, options)) = property_definition(object_type, &name) else {
        return not_found(&format!("Unable to find property {name} on {}", object_type.plural()));
    };
    let options: Vec<Value> = options
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"label": v, "value": v, "displayOrder": i, "hidden": false}))
        .collect();
    let read_only = object_type.read_only(&name);
    let body = json!({
        "name": name,
        "label": name,
        "type": kind,
        "fieldType": field_type,
        "groupName": "contactinformation",
        "options": options,
        "hasUniqueValue": name == IDEMPOTENCY_PROPERTY || name == "email",
        "hidden": false,
        "calculated": read_only,
        "modificationMetadata": {"archivable": true, "readOnlyDefinition": true, "readOnlyValue": read_only},
        "formField": true,
        "archived": false,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `GET /crm/v3/owners/{ownerId}`
/// (<https://developers.hubspot.com/docs/api-reference/legacy/crm/owners/guide>).
async fn read_owner(State(state): State<Arc<HubSpotState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    let Some(owner) = inner.owners.iter().find(|o| o.id.to_string() == id) else {
        return not_found("resource not found");
    };
    let body = json!({
        "id": owner.id.to_string(),
        "email": owner.email,
        "firstName": owner.first_name,
        "lastName": owner.last_name,
        "userId": owner.id,
        "createdAt": "2024-01-01T00:00:00.000Z",
        "updatedAt": "2024-01-01T00:00:00.000Z",
        "archived": false,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// The app install page, approved at once: redirects to `redirect_uri` with `code` and the
/// caller's `state`, as HubSpot does after the user grants access
/// (<https://developers.hubspot.com/docs/api-reference/legacy/authentication/oauth-tokens/v1/guide>,
/// "Initiating OAuth access"). PKCE (`code_challenge`, method `S256`) is accepted and checked at
/// the token exchange.
async fn oauth_authorize(
    State(state): State<Arc<HubSpotState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
    if get("client_id") != OAUTH_CLIENT_ID {
        return (StatusCode::BAD_REQUEST, "Authorization failed because the client_id is unknown").into_response();
    }
    let Ok(mut redirect) = url::Url::parse(get("redirect_uri")) else {
        return (StatusCode::BAD_REQUEST, "Authorization failed because redirect_uri is missing or invalid")
            .into_response();
    };
    let challenge = query.get("code_challenge").cloned();
    if challenge.is_some() && get("code_challenge_method") != "S256" {
        return (StatusCode::BAD_REQUEST, "Only the S256 code challenge method is supported").into_response();
    }
    let code = uuid::Uuid::new_v4().to_string();
    state.lock().oauth.codes.insert(
        code.clone(),
        AuthCode {
            redirect_uri: get("redirect_uri").to_string(),
            code_challenge: challenge,
            scopes: get("scope").into(),
        },
    );
    redirect.query_pairs_mut().append_pair("code", &code);
    if let Some(st) = query.get("state") {
        redirect.query_pairs_mut().append_pair("state", st);
    }
    (StatusCode::FOUND, [(header::LOCATION, redirect.to_string())]).into_response()
}

/// HubSpot's token-endpoint error: `{"status": "BAD_REFRESH_TOKEN", "message": ...}` with 400
/// (the body reported for an unusable refresh token), plus the RFC 6749 §5.2 `error` field
/// (`invalid_grant`) that OAuth clients look for.
fn oauth_error(status: &str, message: &str, error: &str) -> Response {
    let body = json!({
        "status": status,
        "message": message,
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "error": error,
        "error_description": message,
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// `POST /oauth/v1/token`, form-encoded: `grant_type=authorization_code` (with `code`,
/// `redirect_uri`, `code_verifier`) or `grant_type=refresh_token`; both with the app's
/// `client_id` and `client_secret`. Answers `{token_type, refresh_token, access_token,
/// expires_in}` (v1 tokens guide). Refresh tokens rotate when the switch says so.
async fn oauth_token(State(state): State<Arc<HubSpotState>>, body: Bytes) -> Response {
    use base64::Engine as _;
    use sha2::Digest as _;
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if get("client_id") != OAUTH_CLIENT_ID || get("client_secret") != OAUTH_CLIENT_SECRET {
        return oauth_error("BAD_CLIENT_ID", "missing or unknown client id or secret", "invalid_client");
    }
    let mut inner = state.lock();
    let refresh_token = match get("grant_type") {
        "authorization_code" => {
            let Some(code) = inner.oauth.codes.remove(get("code")) else {
                return oauth_error("BAD_AUTH_CODE", "missing or unknown auth code", "invalid_grant");
            };
            if code.redirect_uri != get("redirect_uri") {
                return oauth_error("BAD_REDIRECT_URI", "redirect_uri does not match", "invalid_grant");
            }
            if let Some(challenge) = &code.code_challenge {
                let digest = sha2::Sha256::digest(get("code_verifier").as_bytes());
                let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
                if computed != *challenge {
                    return oauth_error("BAD_AUTH_CODE", "code_verifier does not match the challenge", "invalid_grant");
                }
            }
            let _ = code.scopes;
            inner.oauth.exchanges += 1;
            let refresh = format!("sandbox-refresh-{}", uuid::Uuid::new_v4());
            inner.oauth.refresh_tokens.insert(refresh.clone(), true);
            refresh
        }
        "refresh_token" => {
            let presented = get("refresh_token").to_string();
            if inner.oauth.refresh_tokens.get(&presented) != Some(&true) {
                return oauth_error("BAD_REFRESH_TOKEN", "missing or invalid refresh token", "invalid_grant");
            }
            inner.oauth.refreshes += 1;
            if inner.oauth.rotate_refresh_tokens {
                inner.oauth.refresh_tokens.insert(presented, false);
                let refresh = format!("sandbox-refresh-{}", uuid::Uuid::new_v4());
                inner.oauth.refresh_tokens.insert(refresh.clone(), true);
                refresh
            } else {
                presented
            }
        }
        other => {
            return oauth_error("BAD_GRANT_TYPE", &format!("unsupported grant_type {other}"), "unsupported_grant_type");
        }
    };
    let access = format!("sandbox-access-{}", uuid::Uuid::new_v4());
    inner.oauth.access_tokens.insert(access.clone(), false);
    let body = json!({
        "token_type": "bearer",
        "refresh_token": refresh_token,
        "access_token": access,
        "expires_in": ACCESS_TOKEN_TTL_SECS,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `DELETE /oauth/v1/refresh-tokens/{token}`: the refresh token stops working (204).
async fn oauth_revoke(State(state): State<Arc<HubSpotState>>, Path(token): Path<String>) -> Response {
    let mut inner = state.lock();
    match inner.oauth.refresh_tokens.get_mut(&token) {
        Some(valid) => {
            *valid = false;
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found("refresh token not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searchable_number_keeps_only_area_code_and_local_number() {
        for raw in ["+14155550134", "(415) 555-0134", "415-555-0134", "4155550134", "+1 415 555 0134", "1-415-555-0134"]
        {
            assert_eq!(searchable_national_number(raw).as_deref(), Some("4155550134"), "{raw}");
        }
        assert_eq!(searchable_national_number("+44 20 7946 0958").as_deref(), Some("2079460958"));
    }

    #[test]
    fn tokens_and_wildcards() {
        assert!(contains_token("ada@hubspot.com", "*@hubspot.com"));
        assert!(contains_token("(415) 555-0134", "555"));
        assert!(!contains_token("(415) 555-0134", "5550134"));
    }

    const TOKEN: &str = "sandbox-token";

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    async fn post(sandbox: &HubSpotSandbox, path: &str, body: Value) -> (u16, Value) {
        let url = sandbox.base_url().join(path).unwrap();
        let response = client().post(url).bearer_auth(TOKEN).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get_json(sandbox: &HubSpotSandbox, path: &str) -> (u16, Value) {
        let url = sandbox.base_url().join(path).unwrap();
        let response = client().get(url).bearer_auth(TOKEN).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn a_dropped_response_closes_the_connection_before_any_byte() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        sandbox.state.drop_next_responses_after_apply(1);
        let body = r#"{"properties":{"firstname":"Ada"}}"#;
        let request = format!(
            "POST /crm/v3/objects/contacts HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(sandbox.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "the connection must be closed, not left hanging");
        assert!(received.is_empty(), "no response byte: {:?}", String::from_utf8_lossy(&received));
        assert_eq!(sandbox.state.contacts().len(), 1, "the write was applied");

        // The next write is answered normally.
        let (status, _) = post(&sandbox, "crm/v3/objects/contacts", json!({"properties": {"firstname": "Bo"}})).await;
        assert_eq!(status, 201);
    }

    #[tokio::test]
    async fn embedded_router_fails_the_body_instead() {
        let state = HubSpotState::new(TOKEN);
        state.drop_next_responses_after_apply(1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, HubSpotSandbox::router(state.clone())).into_future());
        let response = client()
            .post(format!("http://{addr}/crm/v3/objects/contacts"))
            .bearer_auth(TOKEN)
            .json(&json!({"properties": {"firstname": "Ada"}}))
            .send()
            .await;
        let failed = match response {
            Err(_) => true,
            Ok(response) => response.bytes().await.is_err(),
        };
        assert!(failed);
        assert_eq!(state.contacts().len(), 1);
        server.abort();
    }

    #[tokio::test]
    async fn wire_shapes_follow_hubspot() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let state = &sandbox.state;
        let contact = state.insert_contact([("firstname", "Ada"), ("phone", "(415) 555-0134")]);

        // Auth failures carry HubSpot's error body.
        let url = sandbox.base_url().join("crm/v3/objects/contacts/1").unwrap();
        let response = client().get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["category"], "INVALID_AUTHENTICATION");
        assert_eq!(body["status"], "error");

        // Too many filter groups is a VALIDATION_ERROR.
        let group = json!({"filters": [{"propertyName": "phone", "operator": "EQ", "value": "x"}]});
        let (status, body) =
            post(&sandbox, "crm/v3/objects/contacts/search", json!({"filterGroups": vec![group; 6]})).await;
        assert_eq!(status, 400);
        assert_eq!(body["category"], "VALIDATION_ERROR");

        // EQ on the raw property compares the string as typed.
        let eq = |value: &str| json!({"filterGroups": [{"filters": [{"propertyName": "phone", "operator": "EQ", "value": value}]}]});
        let (_, body) = post(&sandbox, "crm/v3/objects/contacts/search", eq("4155550134")).await;
        assert_eq!(body["total"], 0);
        let (_, body) = post(&sandbox, "crm/v3/objects/contacts/search", eq("(415) 555-0134")).await;
        assert_eq!(body["total"], 1);
        assert_eq!(body["results"][0]["id"], contact.as_str());

        // Calls are created with their association, listed through v4.
        let create = json!({
            "properties": {"hs_timestamp": "1795442400000", "hs_call_body": "hi", IDEMPOTENCY_PROPERTY: "k"},
            "associations": [{"to": {"id": contact}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}]}],
        });
        let (status, call) = post(&sandbox, "crm/v3/objects/calls", create.clone()).await;
        assert_eq!(status, 201);
        let (status, conflict) = post(&sandbox, "crm/v3/objects/calls", create).await;
        assert_eq!(status, 409);
        assert!(
            conflict["message"].as_str().unwrap().ends_with(&format!("Existing ID: {}", call["id"].as_str().unwrap()))
        );
        let (status, listed) =
            get_json(&sandbox, &format!("crm/v4/objects/contacts/{contact}/associations/calls")).await;
        assert_eq!(status, 200);
        assert_eq!(listed["results"][0]["toObjectId"].to_string(), call["id"].as_str().unwrap());
        assert_eq!(listed["results"][0]["associationTypes"][0]["typeId"], 193);

        // A wrong association type is rejected.
        let bad = json!({
            "properties": {"hs_timestamp": "1795442400000"},
            "associations": [{"to": {"id": contact}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 200}]}],
        });
        assert_eq!(post(&sandbox, "crm/v3/objects/calls", bad).await.0, 400);

        // Read back by the unique property.
        let (status, by_key) =
            get_json(&sandbox, &format!("crm/v3/objects/calls/k?idProperty={IDEMPOTENCY_PROPERTY}")).await;
        assert_eq!(status, 200);
        assert_eq!(by_key["id"], call["id"]);

        // Batch reads of missing ids answer 207 with the found ones.
        let deal = state.insert_deal([("dealname", "D"), ("dealstage", "closedwon")], &contact);
        let (status, batch) = post(
            &sandbox,
            "crm/v3/objects/deals/batch/read",
            json!({"inputs": [{"id": deal}, {"id": "424242"}], "properties": ["dealname"]}),
        )
        .await;
        assert_eq!(status, 207);
        assert_eq!(batch["results"][0]["properties"]["dealname"], "D");
        assert_eq!(batch["errors"][0]["context"]["ids"][0], "424242");

        let (_, contact_json) =
            get_json(&sandbox, &format!("crm/v3/objects/contacts/{contact}?associations=deals")).await;
        assert_eq!(contact_json["associations"]["deals"]["results"][0]["id"], deal.as_str());
        assert_eq!(contact_json["associations"]["deals"]["results"][0]["type"], "contact_to_deal");
    }

    #[tokio::test]
    async fn schema_owner_history_and_oauth_wire_shapes() {
        let sandbox = HubSpotSandbox::start(TOKEN).unwrap();
        let (status, def) = get_json(&sandbox, &format!("crm/v3/properties/contacts/{CUSTOM_ENUM_PROPERTY}")).await;
        assert_eq!(status, 200);
        assert_eq!(def["type"], "enumeration");
        assert_eq!(def["options"][0]["value"], CUSTOM_ENUM_OPTIONS[0]);
        assert_eq!(get_json(&sandbox, "crm/v3/properties/contacts/nope").await.0, 404);
        let (_, labels) = get_json(&sandbox, "crm/v4/associations/notes/contacts/labels").await;
        assert_eq!(labels["results"][0]["typeId"], 202);
        assert!(labels["results"][0]["label"].is_null());

        let owner = sandbox.state.insert_owner("Rita", "Rep", "rita@example.com");
        let (_, o) = get_json(&sandbox, &format!("crm/v3/owners/{owner}")).await;
        assert_eq!(o["firstName"], "Rita");

        // An enumeration value outside the options is refused with the property named.
        let contact = sandbox.state.insert_contact([("firstname", "Ada")]);
        let url = sandbox.base_url().join(&format!("crm/v3/objects/contacts/{contact}")).unwrap();
        let bad = client()
            .patch(url.clone())
            .bearer_auth(TOKEN)
            .json(&json!({"properties": {CUSTOM_ENUM_PROPERTY: "fax"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status().as_u16(), 400);
        let body: Value = bad.json().await.unwrap();
        assert_eq!(body["errors"][0]["context"]["propertyName"][0], CUSTOM_ENUM_PROPERTY);
        let ok = client().patch(url).bearer_auth(TOKEN).json(&json!({"properties": {"firstname": "Ana"}})).send().await;
        assert_eq!(ok.unwrap().status().as_u16(), 200);
        sandbox.state.rep_edit(ObjectType::Contacts, &contact, "firstname", "Anna", "77");
        let (_, read) =
            get_json(&sandbox, &format!("crm/v3/objects/contacts/{contact}?propertiesWithHistory=firstname")).await;
        let versions = &read["propertiesWithHistory"]["firstname"];
        assert_eq!(versions[0]["value"], "Anna");
        assert_eq!(versions[0]["sourceType"], "CRM_UI");
        assert_eq!(versions[0]["updatedByUserId"], 77);
        assert_eq!(versions[1]["sourceType"], "INTEGRATION");
        assert_eq!(versions[2]["sourceType"], "IMPORT");

        // The token endpoint refuses an unknown refresh token the way HubSpot does.
        let token_url = sandbox.base_url().join("oauth/v1/token").unwrap();
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", OAUTH_CLIENT_ID),
            ("client_secret", OAUTH_CLIENT_SECRET),
            ("refresh_token", "unknown"),
        ];
        let refused = client().post(token_url).form(&form).send().await.unwrap();
        assert_eq!(refused.status().as_u16(), 400);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["status"], "BAD_REFRESH_TOKEN");
        assert_eq!(body["error"], "invalid_grant");
    }

    #[test]
    fn routes_are_classified_by_family() {
        assert_eq!(RouteKind::classify(&Method::POST, "/crm/v3/objects/contacts/search"), RouteKind::Search);
        assert_eq!(RouteKind::classify(&Method::POST, "/crm/v3/objects/deals/batch/read"), RouteKind::Batch);
        assert_eq!(RouteKind::classify(&Method::POST, "/crm/v3/objects/calls"), RouteKind::Create);
        assert_eq!(RouteKind::classify(&Method::GET, "/crm/v3/objects/contacts/12"), RouteKind::Read);
        assert_eq!(RouteKind::classify(&Method::PATCH, "/crm/v3/objects/contacts/12"), RouteKind::Update);
        assert_eq!(RouteKind::classify(&Method::GET, "/crm/v3/pipelines/deals"), RouteKind::Pipelines);
        assert_eq!(
            RouteKind::classify(&Method::GET, "/crm/v4/objects/contacts/12/associations/calls"),
            RouteKind::Associations
        );
    }
}
