//! Typed configuration: one server file plus one file per tenant (a directory of `*.toml`).
//!
//! Everything is parsed and validated at start and every problem is reported at once, each with
//! its file, key and reason, so an operator fixes a config in one pass. Secrets never live in
//! these files: credentials are named by environment variable (`*_env` keys) and API keys are
//! stored as SHA-256 digests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::identity;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
    }
}

/// All problems found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.issues.len())?;
        for issue in &self.issues {
            writeln!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub writeback: WritebackSection,
    #[serde(default)]
    pub connect: ConnectSection,
    #[serde(default)]
    pub identity: IdentitySection,
    /// Operator console logins (issue 9).
    #[serde(default)]
    pub console: crate::console::ConsoleSection,
    /// Sandbox-only switches for the load test (admin endpoint, ledger bypass).
    #[serde(default)]
    pub sandbox_options: crate::sandbox::admin::SandboxOptions,
    /// Inbound sync: vendors' change notifications (`crate::inbound`).
    #[serde(default)]
    pub inbound: InboundSection,
    /// How long personal data is kept (`crate::privacy`).
    #[serde(default)]
    pub retention: crate::privacy::RetentionSection,
    /// Where the rate budgets several instances share live (`connectors::rate`).
    #[serde(default)]
    pub rate_budgets: RateBudgetsSection,
}

/// Where the vendor rate budgets several instances share live (`connectors::rate`): Redis when
/// `url` is set (recommended for several instances: a take costs ≈ 0.07 ms there against 0.55 ms
/// on PostgreSQL, BENCHMARKS.md), else PostgreSQL when the store is, else this instance's memory.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateBudgetsSection {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path`; empty: no Redis.
    pub url: String,
    /// Prefix of every key written (several deployments on one Redis keep apart).
    pub key_prefix: String,
    /// Longest a take waits for Redis (connecting included) before it falls back to this
    /// instance's own bucket, ms (1–1000).
    pub timeout_ms: u64,
}

/// The URL's password never printed (a reload's report, logs).
impl std::fmt::Debug for RateBudgetsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateBudgetsSection")
            .field("url", &crate::store::redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl Default for RateBudgetsSection {
    fn default() -> Self {
        Self { url: String::new(), key_prefix: "callside:".into(), timeout_ms: 50 }
    }
}

/// The identity index's incremental pull from each tenant's CRM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// Seconds between pulls (the first runs at start); 0 turns the pull off (the index then
    /// learns only from the service's own matches and writes).
    pub pull_interval_secs: u64,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self { pull_interval_secs: 300 }
    }
}

/// Receivers of vendors' change notifications. Only the names of environment variables holding
/// secrets live here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundSection {
    pub hubspot: Option<HubSpotWebhookSection>,
    /// Pipedrive webhooks v2 at `POST /v1/inbound/pipedrive` (`crate::inbound::pipedrive`).
    pub pipedrive: Option<PipedriveWebhookSection>,
    /// Calendar changes: push subscriptions where the provider has them, and polling for
    /// every calendar (`crate::inbound::calendar`). Absent: busy time is only re-read when its
    /// cache lapses (30 s) and at commit.
    pub calendar: Option<CalendarSyncSection>,
}

/// How callside learns of changes in the tenants' calendars.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalendarSyncSection {
    /// Seconds between incremental syncs of every calendar: the polling of CalDAV and the
    /// safety net that catches a missed push for the others.
    pub poll_interval_secs: u64,
    /// Subscribe to push notifications (Google channels, Graph subscriptions) at
    /// `{connect.public_url}/v1/inbound/{vendor}`.
    pub push: bool,
    /// Lifetime asked for a subscription.
    pub subscription_ttl_secs: u64,
    /// A subscription is replaced this long before it expires.
    pub renew_before_secs: u64,
}

/// Microsoft Graph's longest subscription to Outlook events: 10,080 minutes.
pub const GRAPH_MAX_SUBSCRIPTION_SECS: u64 = 10_080 * 60;

impl Default for CalendarSyncSection {
    fn default() -> Self {
        Self { poll_interval_secs: 30, push: true, subscription_ttl_secs: 86_400, renew_before_secs: 3_600 }
    }
}

/// The HubSpot app whose webhooks `POST /v1/inbound/hubspot` receives: one URL for the app,
/// the tenant named by each event's `portalId` (the tenant file's `crm.portal_id`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSpotWebhookSection {
    /// Environment variable holding the app's client secret (the v3 signature key).
    pub client_secret_env: String,
    /// The app's id: events whose `changeSource` is `INTEGRATION` with this `sourceId` are this
    /// service's own writes and are not refetched.
    pub app_id: String,
}

/// The HTTP Basic credentials every tenant's Pipedrive webhook is created with
/// (`http_auth_user` / `http_auth_password` of `POST /v1/webhooks`); the tenant is named by each
/// notification's `meta.company_id` (the tenant file's `crm.company_id`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipedriveWebhookSection {
    pub http_auth_user: String,
    /// Environment variable holding the password (at least 16 characters).
    pub http_auth_password_env: String,
}

/// OAuth apps for connecting tenants' CRMs (`/v1/connect/{vendor}/start`). Only the names of the
/// environment variables holding the app credentials live here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectSection {
    /// This service's public base URL; redirect URIs are `{public_url}/v1/connect/{vendor}/callback`.
    /// Empty: `http://{listen}`.
    pub public_url: String,
    pub hubspot: Option<OAuthAppSection>,
    /// A Salesforce connected app; `authorize_base_url` is the login host for both the authorize
    /// page and the token endpoint (default `https://login.salesforce.com/`; a sandbox org uses
    /// `https://test.salesforce.com/`). `api_base_url` is not used: each org's API host comes with
    /// its tokens (`instance_url`).
    pub salesforce: Option<OAuthAppSection>,
    /// Pipedrive's OAuth server is `authorize_base_url` (default `https://oauth.pipedrive.com/`)
    /// for both the authorize page and the token endpoint; `api_base_url` is unused (each
    /// connection's API base is the `api_domain` Pipedrive returns).
    pub pipedrive: Option<OAuthAppSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthAppSection {
    pub client_id_env: String,
    pub client_secret_env: String,
    /// Where the vendor's authorize page lives (HubSpot: `https://app.hubspot.com/`).
    #[serde(default)]
    pub authorize_base_url: Option<String>,
    /// The vendor's API (token endpoint) base (HubSpot: `https://api.hubapi.com/`).
    #[serde(default)]
    pub api_base_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    pub data_dir: PathBuf,
    /// Directory of tenant files, relative to the server file.
    pub tenants_dir: PathBuf,
    /// Start the in-process vendor emulators for tenants whose `base_url = "sandbox"`.
    pub sandbox: bool,
    pub shutdown_grace_secs: u64,
    /// Hex SHA-256 of the admin key that may `POST /v1/admin/reload` (optional; SIGHUP needs none).
    pub admin_key_sha256: Option<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            tenants_dir: PathBuf::from("tenants"),
            sandbox: true,
            shutdown_grace_secs: 20,
            admin_key_sha256: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket message accepted; larger frames close the socket with 1009.
    pub max_message_bytes: usize,
    /// Calls open at once across all tenants; the next one is answered "busy" (503).
    pub max_concurrent_calls: usize,
    /// Server-side deadline per tool call; kept below the 5 s client defaults.
    pub tool_deadline_ms: u64,
    /// Explicit WebSocket buffer sizes: axum's 128 KiB defaults cost ~1.3 GB per 10k sockets.
    pub ws_read_buffer_bytes: usize,
    pub ws_write_buffer_bytes: usize,
    /// A call reached over HTTP (MCP Streamable HTTP, Vapi) has no socket to drop: after this
    /// long without a request it is finished as abandoned and written back.
    pub http_session_idle_secs: u64,
    /// Deepest nesting of arrays and objects accepted in a JSON message or body; deeper is
    /// refused with a clear error before it is parsed (serde_json's own backstop is 128).
    pub max_json_depth: usize,
    /// Tool calls one call may make per second (domain clock); past it: JSON-RPC error -32005.
    pub tool_calls_per_call_per_sec: u32,
    /// Tool calls all of one tenant's calls may make per second; past it: JSON-RPC error -32005.
    pub tool_calls_per_tenant_per_sec: u32,
    /// Calls one tenant may have open at once, every transport counted; past it: "busy".
    pub max_concurrent_calls_per_tenant: usize,
    /// Largest HTTP body accepted by `/v1/vapi` (end-of-call reports carry the transcript).
    pub max_http_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_concurrent_calls: 20_000,
            tool_deadline_ms: 4_000,
            ws_read_buffer_bytes: 4 * 1024,
            ws_write_buffer_bytes: 4 * 1024,
            http_session_idle_secs: 900,
            max_json_depth: 32,
            tool_calls_per_call_per_sec: 10,
            tool_calls_per_tenant_per_sec: 2_000,
            max_concurrent_calls_per_tenant: 2_000,
            max_http_body_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite://PATH`; empty means `<data_dir>/callside.db`.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WritebackSection {
    /// How long a failing step keeps being retried before it is dead-lettered.
    pub retry_window_secs: u64,
    /// Longest wait between two attempts.
    pub max_backoff_secs: u64,
    /// Requests per 10 s across all accounts of one vendor app (a per-project quota); 0: none.
    /// The per-account limit is the tenant's `[crm]` / `[calendar]` `requests_per_10s`.
    pub app_requests_per_10s: u32,
    /// Percent of each budget the write-back lane leaves to live calls' reads (0-90).
    pub live_reserve_percent: u32,
}

impl Default for WritebackSection {
    fn default() -> Self {
        Self { retry_window_secs: 24 * 3600, max_backoff_secs: 300, app_requests_per_10s: 0, live_reserve_percent: 30 }
    }
}

/// A tenant file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    pub id: String,
    pub name: String,
    pub time_zone: String,
    #[serde(default = "default_region")]
    pub default_region: String,
    /// The numbers callers dial to reach this business; the dialed number selects the tenant.
    pub numbers: Vec<String>,
    /// Hex SHA-256 digests of the tenant's API keys (two during a rotation).
    pub api_key_sha256: Vec<String>,
    /// Hex SHA-256 digest of the secret Vapi sends in `X-Vapi-Secret` to `/v1/vapi` (optional).
    #[serde(default)]
    pub vapi_secret_sha256: Option<String>,
    #[serde(default = "default_hold_ttl")]
    pub hold_ttl_secs: u64,
    pub crm: VendorSection,
    pub calendar: VendorSection,
    #[serde(default)]
    pub schedule: ScheduleSection,
    pub staff: Vec<StaffSection>,
    pub services: Vec<ServiceSection>,
    /// Where customer notifications go when the calendar cannot send them itself (CalDAV).
    #[serde(default)]
    pub notifications: Option<NotificationsSection>,
    /// Write-back rules: mode, field mapping, escalation, webhook (`crate::writeback::settings`).
    #[serde(default)]
    pub writeback: crate::writeback::settings::WritebackRulesFile,
    /// Alert thresholds and webhook (`crate::alerts`); alerts are evaluated only with this section.
    #[serde(default)]
    pub alerts: Option<crate::alerts::AlertsFile>,
    /// The business's point of sale (`[pos]`), read at ring time beside the CRM.
    #[serde(default)]
    pub pos: Option<PosSection>,
    /// Which CRM contact properties carry the account flags (`[account_flags]`).
    #[serde(default)]
    pub account_flags: AccountFlagsSection,
    /// Appointment outcomes read back after each booking ends (`[outcomes]`, `crate::outcomes`);
    /// not read without this section.
    #[serde(default)]
    pub outcomes: Option<OutcomesSection>,
}

/// `[outcomes]`: when and how the outcome of each appointment the service booked is read back
/// (attended, no-show, cancelled late) from the CRM, the calendar and the point of sale.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesSection {
    /// A cancellation less than this many hours before the start is late.
    #[serde(default = "default_late_cancel_hours")]
    pub late_cancel_hours: u32,
    /// How long after an appointment's end its outcome is first asked for (staff record it then).
    #[serde(default = "default_read_after_minutes")]
    pub read_after_minutes: u32,
    /// Days after the end past which the vendors are no longer asked and the outcome is `unknown`.
    #[serde(default = "default_give_up_after_days")]
    pub give_up_after_days: u32,
    /// The custom field of the CRM's appointment object that holds its outcome, for CRMs without
    /// a standard one: a Salesforce Event field (e.g. `Outcome__c`) or a Pipedrive activity
    /// field's key. Values read: `attended` / `completed` / `showed`, `no_show` / `no show`,
    /// `cancelled` / `canceled` (any case); anything else is not an outcome yet. Not for HubSpot,
    /// whose meetings have `hs_meeting_outcome`.
    #[serde(default)]
    pub crm_outcome_field: Option<String>,
}

fn default_late_cancel_hours() -> u32 {
    24
}

fn default_read_after_minutes() -> u32 {
    60
}

fn default_give_up_after_days() -> u32 {
    7
}

impl Default for OutcomesSection {
    fn default() -> Self {
        OutcomesSection {
            late_cancel_hours: default_late_cancel_hours(),
            read_after_minutes: default_read_after_minutes(),
            give_up_after_days: default_give_up_after_days(),
            crm_outcome_field: None,
        }
    }
}

impl OutcomesSection {
    pub fn late_cancel_window(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_hours(i64::from(self.late_cancel_hours))
    }

    pub fn read_after(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_mins(i64::from(self.read_after_minutes))
    }

    pub fn give_up_after(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_hours(24 * i64::from(self.give_up_after_days))
    }

    fn validate(&self, crm_vendor: &str, issue: &mut impl FnMut(&str, String)) {
        if self.late_cancel_hours > 24 * 30 {
            issue("outcomes.late_cancel_hours", format!("{} is more than 720 (30 days)", self.late_cancel_hours));
        }
        let read_after_ok = self.read_after_minutes <= 7 * 24 * 60;
        if !read_after_ok {
            issue("outcomes.read_after_minutes", format!("{} is more than 10080 (7 days)", self.read_after_minutes));
        }
        if self.give_up_after_days == 0 || self.give_up_after_days > 90 {
            issue("outcomes.give_up_after_days", format!("{} is not between 1 and 90", self.give_up_after_days));
        } else if read_after_ok && i64::from(self.read_after_minutes) >= 24 * 60 * i64::from(self.give_up_after_days) {
            issue(
                "outcomes.give_up_after_days",
                "must be later than read_after_minutes: the outcome would never be asked for".into(),
            );
        }
        if let Some(field) = &self.crm_outcome_field {
            let ok = !field.is_empty()
                && field.len() <= 100
                && field.starts_with(|c: char| c.is_ascii_alphanumeric())
                && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                issue("outcomes.crm_outcome_field", format!("{field:?} is not a field's API name or key"));
            } else if crm_vendor == "hubspot" {
                issue(
                    "outcomes.crm_outcome_field",
                    "HubSpot meetings carry their outcome in hs_meeting_outcome; no custom field is read".into(),
                );
            }
        }
    }
}

/// `[account_flags]`: the CRM contact properties (internal names) that say the caller is a VIP,
/// has an overdue balance, must not be called, and how many appointments they missed. CRMs have
/// no standard properties for these, so each business names its own; they are read with the
/// contact, in the same request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountFlagsSection {
    /// Yes/no (`true`, `yes`, `1`, `on`, or an enumeration value listed in `vip_values`).
    pub vip: Option<String>,
    /// Option values of the `vip` property that mean VIP (e.g. `["gold", "platinum"]`).
    #[serde(default)]
    pub vip_values: Vec<String>,
    /// Yes/no, or an amount (overdue when above zero).
    pub overdue_balance: Option<String>,
    /// Yes/no.
    pub do_not_call: Option<String>,
    /// A count of missed appointments.
    pub past_no_shows: Option<String>,
}

impl AccountFlagsSection {
    /// The property names to read with the contact.
    pub fn properties(&self) -> Vec<String> {
        [&self.vip, &self.overdue_balance, &self.do_not_call, &self.past_no_shows]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn validate(&self, crm_vendor: &str, issue: &mut impl FnMut(&str, String)) {
        for (key, name) in [
            ("vip", &self.vip),
            ("overdue_balance", &self.overdue_balance),
            ("do_not_call", &self.do_not_call),
            ("past_no_shows", &self.past_no_shows),
        ] {
            let Some(name) = name else { continue };
            let ok = name.len() <= 100
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                issue(&format!("account_flags.{key}"), format!("{name:?} is not a property's internal name"));
            }
        }
        if !self.vip_values.is_empty() && self.vip.is_none() {
            issue("account_flags.vip_values", "needs account_flags.vip (the property they are values of)".into());
        }
        if !self.properties().is_empty() && crm_vendor != "hubspot" {
            issue("account_flags", "account flags are read from HubSpot CRMs only so far".into());
        }
    }
}

/// `[pos]`: the tenant's point of sale (`crate::connectors::pos`). The token is named by
/// environment variable, never written here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosSection {
    /// `square` or `shopify`.
    pub vendor: String,
    /// `sandbox` for the in-process emulator; otherwise the API base URL. Default: Square's
    /// `https://connect.squareup.com/`, Shopify's `https://{shop_domain}/`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the access token (Square: an access token; Shopify: the
    /// app's Admin API token). Not needed for the sandbox.
    #[serde(default)]
    pub access_token_env: Option<String>,
    /// Never accepted: present only so a token written into the file gets a clear error.
    #[serde(default)]
    pub access_token: Option<String>,
    /// Square: the locations whose orders are read (1 to 10, Square's limit per search).
    #[serde(default)]
    pub location_ids: Vec<String>,
    /// Shopify: the shop, `name.myshopify.com`.
    #[serde(default)]
    pub shop_domain: Option<String>,
    /// Square's `Square-Version` (`YYYY-MM-DD`) or Shopify's Admin API version (`YYYY-MM`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Shopify: read each order's staff member (needs the `read_users` scope: Plus / Advanced).
    #[serde(default)]
    pub read_staff: bool,
    /// Requests per 10 s charged to the rate budget (0 or absent: unmetered; neither vendor
    /// publishes a request-count limit — Shopify's is cost-based, handled from its answers).
    #[serde(default)]
    pub requests_per_10s: Option<u32>,
    /// How long the ring-time read may take before the context is served without it.
    #[serde(default = "default_pos_budget_ms")]
    pub ring_budget_ms: u64,
}

fn default_pos_budget_ms() -> u64 {
    1500
}

impl PosSection {
    /// The API version to send: the configured one or the connector's default.
    pub fn version(&self) -> &str {
        match (self.api_version.as_deref(), self.vendor.as_str()) {
            (Some(v), _) => v,
            (None, "shopify") => crate::connectors::pos::shopify::DEFAULT_API_VERSION,
            (None, _) => crate::connectors::pos::square::DEFAULT_SQUARE_VERSION,
        }
    }

    /// The API base URL (`None` for the sandbox).
    pub fn base_url(&self) -> Option<String> {
        match (self.base_url.as_deref(), self.vendor.as_str()) {
            (Some("sandbox"), _) => None,
            (Some(url), _) => Some(url.to_owned()),
            (None, "shopify") => Some(format!("https://{}/", self.shop_domain.as_deref().unwrap_or_default())),
            (None, _) => Some("https://connect.squareup.com/".to_owned()),
        }
    }
}

/// Every problem with a `[pos]` section.
fn validate_pos(p: &PosSection, sandbox: bool, issue: &mut impl FnMut(&str, String)) {
    if p.access_token.is_some() {
        issue(
            "pos.access_token",
            "secrets never live in tenant files: put the token in an environment variable and name it in \
             access_token_env"
                .into(),
        );
    }
    let shopify = match p.vendor.as_str() {
        "square" => false,
        "shopify" => true,
        other => {
            issue("pos.vendor", format!("{other:?} is not supported (supported: square, shopify)"));
            return;
        }
    };
    if shopify {
        if !p.location_ids.is_empty() {
            issue("pos.location_ids", "only used with vendor = \"square\"".into());
        }
        let domain_ok = p.shop_domain.as_deref().is_some_and(|d| {
            d.strip_suffix(".myshopify.com")
                .is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        });
        if !domain_ok {
            issue("pos.shop_domain", "required for Shopify: the shop's \"name.myshopify.com\" domain".into());
        }
    } else {
        if p.location_ids.is_empty() || p.location_ids.len() > 10 {
            issue("pos.location_ids", "Square needs 1 to 10 location ids (its limit per orders search)".into());
        } else if p.location_ids.iter().any(|l| l.is_empty() || !l.bytes().all(|b| b.is_ascii_alphanumeric())) {
            issue("pos.location_ids", "a location id is letters and digits only".into());
        }
        if p.shop_domain.is_some() {
            issue("pos.shop_domain", "only used with vendor = \"shopify\"".into());
        }
        if p.read_staff {
            issue("pos.read_staff", "Square orders carry no staff member; only used with vendor = \"shopify\"".into());
        }
    }
    if let Some(v) = &p.api_version {
        // Shopify names versions by month (`2025-10`), Square by day (`2025-10-16`).
        let (len, full) = if shopify { (7, format!("{v}-01")) } else { (10, v.clone()) };
        if v.len() != len || full.parse::<jiff::civil::Date>().is_err() {
            let example = if shopify { "2025-10" } else { "2025-10-16" };
            issue("pos.api_version", format!("{v:?} is not a version like {example:?}"));
        }
    }
    if !(50..=4000).contains(&p.ring_budget_ms) {
        issue("pos.ring_budget_ms", "must be between 50 and 4000 (tool calls have 5 s in all)".into());
    }
    match p.base_url.as_deref() {
        Some("sandbox") => {
            if !sandbox {
                issue("pos.base_url", "\"sandbox\" needs server.sandbox = true".into());
            }
            return;
        }
        Some(url) => match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "https" | "http") => {}
            _ => issue("pos.base_url", format!("{url:?} is not an http(s) URL")),
        },
        None => {}
    }
    match &p.access_token_env {
        None => issue("pos.access_token_env", "required for a real POS".into()),
        Some(var) if std::env::var_os(var).is_none() => {
            issue("pos.access_token_env", format!("environment variable {var} is not set"))
        }
        Some(_) => {}
    }
}

/// The tenant's notification webhook: callside POSTs JSON events (e.g. `appointment.cancelled`)
/// signed with HMAC-SHA256 (`X-Callside-Signature: t=<unix seconds>,v1=<hex>` over
/// `"<t>.<body>"`); the secret is named by environment variable, never written here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsSection {
    pub webhook_url: String,
    pub webhook_secret_env: String,
}

/// The validated webhook of a tenant.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: url::Url,
    pub secret_env: String,
}

fn default_region() -> String {
    "US".into()
}

fn default_hold_ttl() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorSection {
    /// `hubspot` for a CRM, `google` for a calendar.
    pub vendor: String,
    /// The vendor's API base URL, or `sandbox` for the in-process emulator.
    pub base_url: String,
    /// Environment variable holding the access token (not needed for the sandbox or OAuth).
    #[serde(default)]
    pub access_token_env: Option<String>,
    /// `token` (a static token from `access_token_env`, or the sandbox's) or `oauth` (the tenant
    /// connects through `/v1/connect/{vendor}/start`; tokens live encrypted in the store).
    #[serde(default = "default_auth")]
    pub auth: String,
    /// CalDAV: the HTTP Basic user name (with `password_env`); omit both for a server that needs
    /// no authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// CalDAV: environment variable holding the password (an app password for iCloud/Fastmail).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Never accepted: present only so a password written into the file gets a clear error.
    #[serde(default)]
    pub password: Option<String>,
    /// CalDAV: the `ORGANIZER` written on events (the business's address), e.g. `bookings@salon.example`.
    #[serde(default)]
    pub organizer_email: Option<String>,
    /// The HubSpot portal (hub) id: deep links from the console into the CRM, and the tenant of
    /// the app's webhooks (`portalId`, `crate::inbound::hubspot`).
    #[serde(default)]
    pub portal_id: Option<u64>,
    /// The Pipedrive company id: the tenant of the company's webhooks (`meta.company_id`,
    /// `crate::inbound::pipedrive`).
    #[serde(default)]
    pub company_id: Option<u64>,
    /// Salesforce only: which object a new caller becomes, `lead` (default) or `contact`.
    #[serde(default)]
    pub new_callers: Option<crate::connectors::crm::salesforce::NewCallerObject>,
    /// Requests per 10 s the vendor allows this connected account, shared by live reads and the
    /// write-back lane (`crate::connectors::rate`); 0: unmetered. Default: the vendor's documented
    /// limit (HubSpot 100, Google Calendar 100), unmetered for the sandbox and loopback emulators.
    #[serde(default)]
    pub requests_per_10s: Option<u32>,
}

impl VendorSection {
    /// The account's rate budget in requests per 10 s (0: unmetered).
    pub fn requests_per_10s(&self) -> u32 {
        if let Some(n) = self.requests_per_10s {
            return n;
        }
        let emulated = self.base_url == "sandbox"
            || url::Url::parse(&self.base_url).is_ok_and(|u| match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            });
        if emulated { 0 } else { crate::connectors::rate::vendor_default(&self.vendor) }
    }
}

fn default_auth() -> String {
    "token".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    pub slot_interval_minutes: u32,
    pub min_notice_minutes: u32,
    pub horizon_days: u32,
    pub reminder_minutes: Vec<u32>,
    /// Ask the calendar provider to email the customer when an appointment is cancelled.
    pub notify_on_cancel: bool,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            slot_interval_minutes: 15,
            min_notice_minutes: 60,
            horizon_days: 30,
            reminder_minutes: vec![60],
            notify_on_cancel: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffSection {
    pub id: String,
    pub name: String,
    /// Defaults to the tenant's zone.
    #[serde(default)]
    pub time_zone: Option<String>,
    pub calendar_ids: Vec<String>,
    /// Weekday (`mon`…`sun`) → ranges like `"09:00-12:00"`.
    pub hours: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub closed_dates: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub id: String,
    pub name: String,
    pub duration_minutes: u32,
    #[serde(default)]
    pub buffer_before_minutes: u32,
    #[serde(default)]
    pub buffer_after_minutes: u32,
    #[serde(default)]
    pub synonyms: Vec<String>,
    #[serde(default)]
    pub staff: Vec<String>,
}

/// The validated configuration the service runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store_url: String,
    pub sandbox: bool,
    pub shutdown_grace: std::time::Duration,
    /// Digest of the admin key (`server.admin_key_sha256`), when set.
    pub admin_key_digest: Option<[u8; 32]>,
    pub limits: Limits,
    pub writeback: WritebackSection,
    pub connect: ConnectSection,
    pub identity: IdentitySection,
    pub console: crate::console::ConsoleSection,
    pub sandbox_options: crate::sandbox::admin::SandboxOptions,
    pub inbound: InboundSection,
    pub retention: crate::privacy::RetentionSection,
    pub rate_budgets: RateBudgetsSection,
    pub tenants: Vec<TenantConfig>,
}

/// One tenant, validated: zones parsed, numbers normalized, hours parsed.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: String,
    pub name: String,
    pub time_zone: jiff::tz::TimeZone,
    pub time_zone_name: String,
    pub default_region: rlibphonenumber::enums::Region,
    /// Dialed numbers in E.164.
    pub numbers: Vec<String>,
    /// API key digests (32 bytes each).
    pub api_key_digests: Vec<[u8; 32]>,
    /// Digest of the tenant's Vapi server-URL secret, if Vapi is connected.
    pub vapi_secret_digest: Option<[u8; 32]>,
    pub hold_ttl: jiff::SignedDuration,
    pub crm: VendorSection,
    pub calendar: VendorSection,
    pub rules: crate::schedule::ScheduleRules,
    pub reminder_minutes: Vec<u32>,
    pub notify_on_cancel: bool,
    /// The notification webhook, when configured (`[notifications]`).
    pub webhook: Option<WebhookConfig>,
    pub staff: Vec<crate::schedule::StaffMember>,
    pub services: Vec<crate::schedule::ServiceType>,
    pub writeback_rules: crate::writeback::settings::WritebackRules,
    /// Alert thresholds and webhook, when the tenant has an `[alerts]` section.
    pub alerts: Option<crate::alerts::AlertSettings>,
    /// The point of sale, when the tenant has a `[pos]` section.
    pub pos: Option<PosSection>,
    /// The CRM properties the account flags are read from.
    pub account_flags: AccountFlagsSection,
    /// Appointment outcomes are read back when the tenant has an `[outcomes]` section.
    pub outcomes: Option<OutcomesSection>,
}

/// Overrides given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub store_url: Option<String>,
}

impl Config {
    /// Reads the server file and every tenant file it points to, validating everything.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut issues = Vec::new();
        let server_text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            issues: vec![ConfigIssue { file: path.to_owned(), key: "-".into(), reason: format!("cannot read: {e}") }],
        })?;
        let server: ServerFile = match toml::from_str(&server_text) {
            Ok(s) => s,
            Err(e) => {
                return Err(ConfigError { issues: vec![toml_issue(path, &e)] });
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let tenants_dir = base.join(&server.server.tenants_dir);
        let mut tenant_files = Vec::new();
        match std::fs::read_dir(&tenants_dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                paths.sort();
                for p in paths {
                    match std::fs::read_to_string(&p) {
                        Ok(text) => match toml::from_str::<TenantFile>(&text) {
                            Ok(t) => tenant_files.push((p, t)),
                            Err(e) => issues.push(toml_issue(&p, &e)),
                        },
                        Err(e) => issues.push(ConfigIssue {
                            file: p.clone(),
                            key: "-".into(),
                            reason: format!("cannot read: {e}"),
                        }),
                    }
                }
            }
            Err(e) => issues.push(ConfigIssue {
                file: path.to_owned(),
                key: "server.tenants_dir".into(),
                reason: format!("cannot read {}: {e}", tenants_dir.display()),
            }),
        }
        let data_dir_from_file = base.join(&server.server.data_dir);
        match Self::from_parts(path, server, tenant_files, overrides, data_dir_from_file) {
            Ok(config) if issues.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError { issues }),
            Err(mut e) => {
                issues.append(&mut e.issues);
                Err(ConfigError { issues })
            }
        }
    }

    /// Validates already-parsed files (used by `load` and by tests that build configs in code).
    pub fn from_parts(
        server_path: &Path,
        server: ServerFile,
        tenants: Vec<(PathBuf, TenantFile)>,
        overrides: &Overrides,
        data_dir: PathBuf,
    ) -> Result<Config, ConfigError> {
        let mut issues = Vec::new();
        let mut issue = |file: &Path, key: &str, reason: String| {
            issues.push(ConfigIssue { file: file.to_owned(), key: key.into(), reason })
        };
        let listen_text = overrides.listen.clone().unwrap_or(server.server.listen.clone());
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                issue(server_path, "server.listen", format!("{listen_text:?} is not an address: {e}"));
                None
            }
        };
        let admin_key_digest = match &server.server.admin_key_sha256 {
            None => None,
            Some(d) => match hex::decode(d) {
                Ok(bytes) if bytes.len() == 32 => {
                    let mut a = [0u8; 32];
                    a.copy_from_slice(&bytes);
                    Some(a)
                }
                _ => {
                    issue(server_path, "server.admin_key_sha256", "must be 64 hex digits (a SHA-256 digest)".into());
                    None
                }
            },
        };
        let limits = server.limits.clone();
        if limits.max_message_bytes < 1024 {
            issue(server_path, "limits.max_message_bytes", "must be at least 1024".into());
        }
        if !(30..=86_400).contains(&limits.http_session_idle_secs) {
            issue(server_path, "limits.http_session_idle_secs", "must be between 30 and 86400".into());
        }
        if limits.max_concurrent_calls == 0 {
            issue(server_path, "limits.max_concurrent_calls", "must be at least 1".into());
        }
        if limits.max_concurrent_calls_per_tenant == 0 {
            issue(server_path, "limits.max_concurrent_calls_per_tenant", "must be at least 1".into());
        }
        if !(4..=128).contains(&limits.max_json_depth) {
            issue(server_path, "limits.max_json_depth", "must be between 4 and 128".into());
        }
        if limits.tool_calls_per_call_per_sec == 0 {
            issue(server_path, "limits.tool_calls_per_call_per_sec", "must be at least 1".into());
        }
        if limits.tool_calls_per_tenant_per_sec == 0 {
            issue(server_path, "limits.tool_calls_per_tenant_per_sec", "must be at least 1".into());
        }
        if limits.max_http_body_bytes < 1024 {
            issue(server_path, "limits.max_http_body_bytes", "must be at least 1024".into());
        }
        if !(100..5_000).contains(&limits.tool_deadline_ms) {
            issue(
                server_path,
                "limits.tool_deadline_ms",
                "must be between 100 and 4999 (voice clients give up at 5 s)".into(),
            );
        }
        for (key, reason) in server.retention.validate() {
            issue(server_path, &key, reason);
        }
        if server.writeback.live_reserve_percent > 90 {
            issue(server_path, "writeback.live_reserve_percent", "must be between 0 and 90".into());
        }
        if !server.rate_budgets.url.is_empty()
            && let Err(reason) = crate::connectors::rate_redis::check_url(&server.rate_budgets.url)
        {
            issue(server_path, "rate_budgets.url", reason);
        }
        if !(1..=1000).contains(&server.rate_budgets.timeout_ms) {
            issue(server_path, "rate_budgets.timeout_ms", "must be between 1 and 1000".into());
        }
        for (vendor, app) in [
            ("hubspot", &server.connect.hubspot),
            ("salesforce", &server.connect.salesforce),
            ("pipedrive", &server.connect.pipedrive),
        ] {
            let Some(app) = app else { continue };
            for (k, var) in [("client_id_env", &app.client_id_env), ("client_secret_env", &app.client_secret_env)] {
                if std::env::var_os(var).is_none() {
                    issue(
                        server_path,
                        &format!("connect.{vendor}.{k}"),
                        format!("environment variable {var} is not set"),
                    );
                }
            }
        }
        if let Some(h) = &server.inbound.hubspot {
            match std::env::var(&h.client_secret_env) {
                Ok(v) if v.len() >= 16 => {}
                Ok(_) => issue(
                    server_path,
                    "inbound.hubspot.client_secret_env",
                    format!("the secret in {} must be at least 16 characters", h.client_secret_env),
                ),
                Err(_) => issue(
                    server_path,
                    "inbound.hubspot.client_secret_env",
                    format!("environment variable {} is not set", h.client_secret_env),
                ),
            }
            if h.app_id.trim().is_empty() {
                issue(server_path, "inbound.hubspot.app_id", "must not be empty".into());
            }
        }
        if let Some(p) = &server.inbound.pipedrive {
            match std::env::var(&p.http_auth_password_env) {
                Ok(v) if v.len() >= 16 => {}
                Ok(_) => issue(
                    server_path,
                    "inbound.pipedrive.http_auth_password_env",
                    format!("the password in {} must be at least 16 characters", p.http_auth_password_env),
                ),
                Err(_) => issue(
                    server_path,
                    "inbound.pipedrive.http_auth_password_env",
                    format!("environment variable {} is not set", p.http_auth_password_env),
                ),
            }
            // Basic auth's user-id may not contain a colon (RFC 7617, section 2).
            if p.http_auth_user.trim().is_empty() || p.http_auth_user.contains(':') {
                issue(server_path, "inbound.pipedrive.http_auth_user", "must be non-empty, without ':'".into());
            }
        }
        if let Some(c) = &server.inbound.calendar {
            if c.poll_interval_secs == 0 {
                issue(server_path, "inbound.calendar.poll_interval_secs", "must be at least 1".into());
            }
            if c.renew_before_secs >= c.subscription_ttl_secs {
                issue(
                    server_path,
                    "inbound.calendar.renew_before_secs",
                    "must be less than subscription_ttl_secs".into(),
                );
            }
            // Microsoft Graph refuses an event subscription living longer than 10,080 minutes
            // (https://learn.microsoft.com/en-us/graph/api/resources/subscription, maximum length
            // of subscription per resource type).
            let graph_tenant = tenants.iter().any(|(_, t)| t.calendar.vendor == "microsoft");
            if c.push && graph_tenant && c.subscription_ttl_secs > GRAPH_MAX_SUBSCRIPTION_SECS {
                issue(
                    server_path,
                    "inbound.calendar.subscription_ttl_secs",
                    format!(
                        "must be at most {GRAPH_MAX_SUBSCRIPTION_SECS} (Microsoft Graph's 10,080 minutes for event subscriptions) while a tenant's calendar is on Microsoft 365"
                    ),
                );
            }
        }
        if !server.connect.public_url.is_empty() && url::Url::parse(&server.connect.public_url).is_err() {
            issue(server_path, "connect.public_url", format!("{:?} is not a URL", server.connect.public_url));
        }
        for i in server.sandbox_options.validate(server_path, server.server.sandbox, &tenants) {
            issue(&i.file, &i.key, i.reason);
        }
        let data_dir = overrides.data_dir.clone().unwrap_or(data_dir);
        let store_url = overrides.store_url.clone().unwrap_or(server.store.url.clone());
        let store_url = if store_url.is_empty() {
            format!("sqlite://{}", data_dir.join("callside.db").display())
        } else {
            store_url
        };
        if let Err(e) = crate::store::Backend::of_url(&store_url) {
            issue(server_path, "store.url", e.to_string());
        }

        let mut seen_ids = HashSet::new();
        let mut seen_numbers = HashSet::new();
        let mut seen_portals = HashSet::new();
        let mut seen_companies = HashSet::new();
        // A credential identifies one tenant: `by_api_key` / `by_vapi_secret` would otherwise
        // pick one of the tenants sharing it.
        let mut key_owner: HashMap<[u8; 32], String> = HashMap::new();
        let mut vapi_owner: HashMap<[u8; 32], String> = HashMap::new();
        let mut out = Vec::new();
        for (file, t) in tenants {
            let before = issues.len();
            let mut issue =
                |key: &str, reason: String| issues.push(ConfigIssue { file: file.clone(), key: key.into(), reason });
            if t.id.is_empty() || !t.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                issue("id", "must be non-empty and use only letters, digits, '-' and '_'".into());
            }
            if !seen_ids.insert(t.id.clone()) {
                issue("id", format!("tenant id {:?} is used by another file", t.id));
            }
            if let Some(portal) = t.crm.portal_id {
                if t.crm.vendor != "hubspot" {
                    issue("crm.portal_id", "only a HubSpot CRM has a portal id".into());
                } else if !seen_portals.insert(portal) {
                    issue("crm.portal_id", format!("portal {portal} belongs to another tenant"));
                }
            }
            if let Some(company) = t.crm.company_id {
                if t.crm.vendor != "pipedrive" {
                    issue("crm.company_id", "only a Pipedrive CRM has a company id".into());
                } else if !seen_companies.insert(company) {
                    issue("crm.company_id", format!("company {company} belongs to another tenant"));
                }
            }
            let tz = match jiff::tz::TimeZone::get(&t.time_zone) {
                Ok(tz) => Some(tz),
                Err(_) => {
                    issue("time_zone", format!("{:?} is not an IANA time zone", t.time_zone));
                    None
                }
            };
            let region = match t.default_region.parse::<rlibphonenumber::enums::Region>() {
                Ok(r) => Some(r),
                Err(_) => {
                    issue("default_region", format!("{:?} is not a region code", t.default_region));
                    None
                }
            };
            let mut numbers = Vec::new();
            if t.numbers.is_empty() {
                issue("numbers", "at least one dialed number is required".into());
            }
            for (i, n) in t.numbers.iter().enumerate() {
                match identity::Phone::parse(n, region.unwrap_or(rlibphonenumber::enums::Region::US)) {
                    identity::ParsedPhone::Number(p) => {
                        if !seen_numbers.insert(p.e164.clone()) {
                            issue(&format!("numbers[{i}]"), format!("{n} belongs to another tenant"));
                        }
                        numbers.push(p.e164);
                    }
                    _ => issue(&format!("numbers[{i}]"), format!("{n:?} is not a phone number")),
                }
            }
            let mut digests = Vec::new();
            if t.api_key_sha256.is_empty() {
                issue("api_key_sha256", "at least one API key digest is required".into());
            }
            for (i, d) in t.api_key_sha256.iter().enumerate() {
                match hex::decode(d) {
                    Ok(bytes) if bytes.len() == 32 => {
                        let mut a = [0u8; 32];
                        a.copy_from_slice(&bytes);
                        if key_owner.entry(a).or_insert_with(|| t.id.clone()) != &t.id {
                            issue(&format!("api_key_sha256[{i}]"), "this key belongs to another tenant".into());
                        }
                        digests.push(a);
                    }
                    _ => issue(
                        &format!("api_key_sha256[{i}]"),
                        "must be 64 hex characters (the SHA-256 of the key, never the key)".into(),
                    ),
                }
            }
            let mut vapi_secret_digest = None;
            if let Some(d) = &t.vapi_secret_sha256 {
                match hex::decode(d) {
                    Ok(bytes) if bytes.len() == 32 => {
                        let mut a = [0u8; 32];
                        a.copy_from_slice(&bytes);
                        if vapi_owner.entry(a).or_insert_with(|| t.id.clone()) != &t.id {
                            issue("vapi_secret_sha256", "this secret belongs to another tenant".into());
                        }
                        vapi_secret_digest = Some(a);
                    }
                    _ => issue(
                        "vapi_secret_sha256",
                        "must be 64 hex characters (the SHA-256 of the secret, never the secret)".into(),
                    ),
                }
            }
            if t.hold_ttl_secs < 30 || t.hold_ttl_secs > 3600 {
                issue("hold_ttl_secs", "must be between 30 and 3600".into());
            }
            for (key, v, kinds) in [
                ("crm", &t.crm, &["hubspot", "salesforce", "pipedrive"][..]),
                ("calendar", &t.calendar, &["google", "microsoft", "caldav"][..]),
            ] {
                if v.password.is_some() {
                    issue(
                        &format!("{key}.password"),
                        "secrets never live in tenant files: put the password in an environment variable and \
                         name it in password_env"
                            .into(),
                    );
                }
                if v.vendor == "caldav" {
                    validate_caldav(v, &t.staff, &mut issue);
                    continue;
                }
                for (field, set) in [
                    ("username", v.username.is_some()),
                    ("password_env", v.password_env.is_some()),
                    ("organizer_email", v.organizer_email.is_some()),
                ] {
                    if set {
                        issue(&format!("{key}.{field}"), "only used with vendor = \"caldav\"".into());
                    }
                }
                if !kinds.contains(&v.vendor.as_str()) {
                    issue(
                        &format!("{key}.vendor"),
                        format!("{:?} is not supported (supported: {})", v.vendor, kinds.join(", ")),
                    );
                }
                if v.new_callers.is_some() && (key != "crm" || v.vendor != "salesforce") {
                    issue(&format!("{key}.new_callers"), "only a Salesforce CRM has this setting".into());
                }
                if !["token", "oauth"].contains(&v.auth.as_str()) {
                    issue(&format!("{key}.auth"), format!("{:?} must be \"token\" or \"oauth\"", v.auth));
                } else if v.auth == "oauth" {
                    let app = match v.vendor.as_str() {
                        "hubspot" => Some(&server.connect.hubspot),
                        "salesforce" => Some(&server.connect.salesforce),
                        "pipedrive" => Some(&server.connect.pipedrive),
                        _ => None,
                    };
                    match app {
                        Some(app) if key == "crm" => {
                            if v.base_url != "sandbox" && app.is_none() {
                                issue(
                                    &format!("{key}.auth"),
                                    format!("oauth needs a [connect.{}] app in the server file", v.vendor),
                                );
                            }
                        }
                        _ => issue(
                            &format!("{key}.auth"),
                            "oauth connections are supported for the HubSpot, Salesforce and Pipedrive CRMs only so far".into(),
                        ),
                    }
                    continue;
                }
                if v.base_url == "sandbox" {
                    if !server.server.sandbox {
                        issue(&format!("{key}.base_url"), "\"sandbox\" needs server.sandbox = true".into());
                    }
                } else {
                    if url::Url::parse(&v.base_url).is_err() {
                        issue(&format!("{key}.base_url"), format!("{:?} is not a URL", v.base_url));
                    }
                    match &v.access_token_env {
                        None => issue(&format!("{key}.access_token_env"), "required for a real vendor".into()),
                        Some(var) if std::env::var_os(var).is_none() => {
                            issue(&format!("{key}.access_token_env"), format!("environment variable {var} is not set"))
                        }
                        Some(_) => {}
                    }
                }
            }
            let mut webhook = None;
            if let Some(n) = &t.notifications {
                match url::Url::parse(&n.webhook_url) {
                    Ok(u) if matches!(u.scheme(), "https" | "http") => {
                        webhook = Some(WebhookConfig { url: u, secret_env: n.webhook_secret_env.clone() })
                    }
                    _ => issue("notifications.webhook_url", format!("{:?} is not an http(s) URL", n.webhook_url)),
                }
                match std::env::var(&n.webhook_secret_env) {
                    Ok(v) if v.len() >= 16 => {}
                    Ok(_) => issue(
                        "notifications.webhook_secret_env",
                        format!("the secret in {} must be at least 16 characters", n.webhook_secret_env),
                    ),
                    Err(_) => issue(
                        "notifications.webhook_secret_env",
                        format!("environment variable {} is not set", n.webhook_secret_env),
                    ),
                }
            }
            let alerts = t.alerts.as_ref().and_then(|a| crate::alerts::validate(a, &mut issue));
            if let Some(p) = &t.pos {
                validate_pos(p, server.server.sandbox, &mut issue);
            }
            t.account_flags.validate(&t.crm.vendor, &mut issue);
            if let Some(o) = &t.outcomes {
                o.validate(&t.crm.vendor, &mut issue);
            }
            if t.calendar.vendor == "caldav" && t.schedule.notify_on_cancel && t.notifications.is_none() {
                issue(
                    "notifications",
                    "CalDAV servers send no invitations: notify_on_cancel needs a [notifications] webhook \
                     (or set schedule.notify_on_cancel = false)"
                        .into(),
                );
            }
            let s = &t.schedule;
            if s.slot_interval_minutes == 0 || s.slot_interval_minutes > 240 {
                issue("schedule.slot_interval_minutes", "must be between 1 and 240".into());
            }
            if s.horizon_days == 0 || s.horizon_days > 366 {
                issue("schedule.horizon_days", "must be between 1 and 366".into());
            }
            let mut staff = Vec::new();
            let mut staff_ids = HashSet::new();
            if t.staff.is_empty() {
                issue("staff", "at least one staff member is required".into());
            }
            for (i, st) in t.staff.iter().enumerate() {
                if !staff_ids.insert(st.id.clone()) {
                    issue(&format!("staff[{i}].id"), format!("duplicate staff id {:?}", st.id));
                }
                let stz = match &st.time_zone {
                    None => tz.clone(),
                    Some(name) => match jiff::tz::TimeZone::get(name) {
                        Ok(z) => Some(z),
                        Err(_) => {
                            issue(&format!("staff[{i}].time_zone"), format!("{name:?} is not an IANA time zone"));
                            None
                        }
                    },
                };
                if st.calendar_ids.is_empty() {
                    issue(&format!("staff[{i}].calendar_ids"), "at least one calendar is required".into());
                }
                let mut days: [Vec<crate::schedule::OpeningHours>; 7] = Default::default();
                for (day, ranges) in &st.hours {
                    let Some(idx) = weekday_index(day) else {
                        issue(
                            &format!("staff[{i}].hours.{day}"),
                            "weekday must be mon, tue, wed, thu, fri, sat or sun".into(),
                        );
                        continue;
                    };
                    for (j, r) in ranges.iter().enumerate() {
                        match parse_range(r) {
                            Some((open, close)) => days[idx].push(crate::schedule::OpeningHours { open, close }),
                            None => issue(
                                &format!("staff[{i}].hours.{day}[{j}]"),
                                format!("{r:?} must look like \"09:00-17:00\" with open before close"),
                            ),
                        }
                    }
                }
                let mut closed = Vec::new();
                for (j, d) in st.closed_dates.iter().enumerate() {
                    match d.parse::<jiff::civil::Date>() {
                        Ok(d) => closed.push(d),
                        Err(_) => {
                            issue(&format!("staff[{i}].closed_dates[{j}]"), format!("{d:?} is not a YYYY-MM-DD date"))
                        }
                    }
                }
                if let Some(stz) = stz {
                    staff.push(crate::schedule::StaffMember {
                        id: st.id.clone(),
                        name: st.name.clone(),
                        time_zone: stz,
                        hours: crate::schedule::WeeklyHours::new(days),
                        calendar_ids: st.calendar_ids.clone(),
                        closed_dates: closed,
                    });
                }
            }
            let mut services = Vec::new();
            let mut service_ids = HashSet::new();
            if t.services.is_empty() {
                issue("services", "at least one service is required".into());
            }
            for (i, sv) in t.services.iter().enumerate() {
                if !service_ids.insert(sv.id.clone()) {
                    issue(&format!("services[{i}].id"), format!("duplicate service id {:?}", sv.id));
                }
                if sv.duration_minutes == 0 || sv.duration_minutes > 24 * 60 {
                    issue(&format!("services[{i}].duration_minutes"), "must be between 1 and 1440".into());
                }
                for s in &sv.staff {
                    if !t.staff.iter().any(|st| &st.id == s) {
                        issue(&format!("services[{i}].staff"), format!("unknown staff id {s:?}"));
                    }
                }
                services.push(crate::schedule::ServiceType {
                    id: sv.id.clone(),
                    name: sv.name.clone(),
                    duration_minutes: sv.duration_minutes,
                    buffer_before_minutes: sv.buffer_before_minutes,
                    buffer_after_minutes: sv.buffer_after_minutes,
                    synonyms: sv.synonyms.clone(),
                    staff_ids: sv.staff.clone(),
                });
            }
            let writeback_rules = match t.writeback.validate() {
                Ok(r) => Some(r),
                Err(problems) => {
                    for (key, reason) in problems {
                        issue(&key, reason);
                    }
                    None
                }
            };
            if issues.len() == before
                && let (Some(tz), Some(region), Some(writeback_rules)) = (tz, region, writeback_rules)
            {
                out.push(TenantConfig {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    time_zone: tz,
                    time_zone_name: t.time_zone.clone(),
                    default_region: region,
                    numbers,
                    api_key_digests: digests,
                    vapi_secret_digest,
                    hold_ttl: jiff::SignedDuration::from_secs(t.hold_ttl_secs as i64),
                    crm: t.crm.clone(),
                    calendar: t.calendar.clone(),
                    rules: crate::schedule::ScheduleRules {
                        slot_interval_minutes: s.slot_interval_minutes,
                        min_notice_minutes: s.min_notice_minutes,
                        horizon_days: s.horizon_days,
                    },
                    reminder_minutes: s.reminder_minutes.clone(),
                    notify_on_cancel: s.notify_on_cancel,
                    webhook,
                    staff,
                    services,
                    writeback_rules,
                    alerts,
                    pos: t.pos.clone(),
                    account_flags: t.account_flags.clone(),
                    outcomes: t.outcomes.clone(),
                });
            }
        }
        for (key, reason) in crate::console::validate(&server.console, &seen_ids) {
            issues.push(ConfigIssue { file: server_path.to_owned(), key, reason });
        }
        if issues.is_empty() && out.is_empty() {
            issues.push(ConfigIssue {
                file: server_path.to_owned(),
                key: "server.tenants_dir".into(),
                reason: "no tenant files found".into(),
            });
        }
        match (issues.is_empty(), listen) {
            (true, Some(listen)) => Ok(Config {
                listen,
                data_dir,
                store_url,
                sandbox: server.server.sandbox,
                shutdown_grace: std::time::Duration::from_secs(server.server.shutdown_grace_secs),
                admin_key_digest,
                limits,
                writeback: server.writeback,
                connect: server.connect.clone(),
                identity: server.identity.clone(),
                console: server.console.clone(),
                sandbox_options: server.sandbox_options.clone(),
                inbound: server.inbound.clone(),
                retention: server.retention.clone(),
                rate_budgets: server.rate_budgets.clone(),
                tenants: out,
            }),
            _ => Err(ConfigError { issues }),
        }
    }
}

/// A CalDAV calendar: a URL, Basic credentials named by environment variable (or none), an
/// optional organizer address, and staff calendar ids that resolve to collections on the same
/// origin (credentials never travel to another host).
fn validate_caldav(v: &VendorSection, staff: &[StaffSection], issue: &mut impl FnMut(&str, String)) {
    if v.auth != "token" {
        issue("calendar.auth", "CalDAV uses username + password_env (HTTP Basic); auth must be left out".into());
    }
    if v.access_token_env.is_some() {
        issue("calendar.access_token_env", "CalDAV uses username + password_env, not a bearer token".into());
    }
    let base = match url::Url::parse(&v.base_url) {
        Ok(u) if matches!(u.scheme(), "https" | "http") => Some(u),
        _ => {
            let hint = if v.base_url == "sandbox" { " (there is no CalDAV sandbox; point it at a server)" } else { "" };
            issue("calendar.base_url", format!("{:?} is not an http(s) URL{hint}", v.base_url));
            None
        }
    };
    match (&v.username, &v.password_env) {
        (None, None) => {}
        (Some(u), Some(var)) => {
            if u.is_empty() || u.contains(':') {
                issue("calendar.username", "must be non-empty and contain no ':'".into());
            }
            if std::env::var_os(var).is_none() {
                issue("calendar.password_env", format!("environment variable {var} is not set"));
            }
        }
        (Some(_), None) => issue("calendar.password_env", "required with username".into()),
        (None, Some(_)) => issue("calendar.username", "required with password_env".into()),
    }
    if let Some(e) = &v.organizer_email
        && identity::normalize_email(e).is_none()
    {
        issue("calendar.organizer_email", format!("{e:?} is not an email address"));
    }
    if let Some(base) = base {
        let base = crate::connectors::calendar::caldav::with_trailing_slash(base);
        for (i, st) in staff.iter().enumerate() {
            for (j, id) in st.calendar_ids.iter().enumerate() {
                if crate::connectors::calendar::caldav::collection_url(&base, id).is_err() {
                    issue(
                        &format!("staff[{i}].calendar_ids[{j}]"),
                        format!("{id:?} is not a calendar collection path on the CalDAV server's origin"),
                    );
                }
            }
        }
    }
}

fn toml_issue(file: &Path, e: &toml::de::Error) -> ConfigIssue {
    ConfigIssue {
        file: file.to_owned(),
        key: e.span().map(|s| format!("bytes {}..{}", s.start, s.end)).unwrap_or_else(|| "-".into()),
        reason: e.message().to_string(),
    }
}

fn weekday_index(day: &str) -> Option<usize> {
    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].iter().position(|d| *d == day)
}

fn parse_range(r: &str) -> Option<(jiff::civil::Time, jiff::civil::Time)> {
    let (a, b) = r.split_once('-')?;
    let open: jiff::civil::Time = a.trim().parse().ok()?;
    let close: jiff::civil::Time = b.trim().parse().ok()?;
    (open < close).then_some((open, close))
}

/// SHA-256 of an API key, as stored in tenant files.
pub fn api_key_digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}
