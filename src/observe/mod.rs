//! Metrics (Prometheus text via `prometheus-client`), log redaction helpers, and the operator's
//! views of the write-back's health: rate budgets with backlog and drain ETA (`rate_limits.rs`)
//! (the console's reconciliation lists are `console::reconcile`).

pub mod rate_limits;

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolNameLabel {
    pub tool: String,
}

/// The MCP protocol era (version) a call reached over HTTP used.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EraLabel {
    pub era: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub kind: String,
    pub outcome: String,
}

/// A vendor's change notification and what became of it (inbound sync).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabels {
    pub vendor: String,
    pub outcome: String,
}

/// An alert's incident kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabel {
    pub kind: String,
}

/// A vendor (`hubspot`, `google`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VendorLabel {
    pub vendor: String,
}

/// One connected account at one vendor, and a lane of its budget where it matters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabels {
    pub vendor: String,
    pub account: String,
    pub lane: String,
}

/// An appointment's outcome and where it was read (`crate::outcomes`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppointmentOutcomeLabels {
    pub outcome: String,
    pub source: String,
}

/// A source of appointment outcomes (`crm`, `calendar`, `pos`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeSourceLabel {
    pub source: String,
}

/// A cluster-wide periodic job (`crate::leader::Job`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

/// A gauge holding a float.
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// What became of an operation (a configuration reload).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Every metric the service exports. One instance per application (not global), so tests that
/// run several applications in one process see their own numbers.
pub struct Metrics {
    registry: Registry,
    pub tool_calls: Family<ToolLabels, Counter>,
    pub tool_latency: Family<ToolNameLabel, Histogram>,
    pub open_calls: Gauge,
    pub calls_refused: Family<ToolNameLabel, Counter>,
    pub writeback_steps: Family<StepLabels, Counter>,
    pub writeback_backlog: Gauge,
    /// Calls opened over MCP Streamable HTTP, by the protocol version of the opening request.
    pub mcp_sessions: Family<EraLabel, Counter>,
    /// Inbound webhook requests by vendor and outcome (accepted, forged, stale, replayed, ...).
    pub inbound_requests: Family<InboundLabels, Counter>,
    /// Events inside accepted inbound requests by vendor and outcome (applied, own, duplicate, ...).
    pub inbound_events: Family<InboundLabels, Counter>,
    /// Alert incidents opened, by kind (`crate::alerts`: one per incident, not per failure).
    pub alerts: Family<AlertLabel, Counter>,
    /// Configuration reloads by outcome (`applied`, `refused`).
    pub config_reloads: Family<OutcomeLabel, Counter>,
    /// Caller-context lookups by outcome (`hit`: answered from the cache, `miss`: read from the
    /// CRM); the hit ratio is `hit / (hit + miss)`.
    pub context_cache: Family<OutcomeLabel, Counter>,
    /// HTTP 429 answers per vendor (`connectors::rate::Meter::observe`).
    pub vendor_rate_limited: Family<VendorLabel, Counter>,
    /// Rate budget takes served by the instance's own buckets because the shared backend (Redis,
    /// PostgreSQL) failed or did not answer in time (`connectors::rate::RateBudgets::take`).
    pub rate_budget_fallbacks: Counter,
    /// OAuth token refreshes by vendor and outcome.
    pub token_refreshes: Family<InboundLabels, Counter>,
    /// Rate budget tokens left per account and lane (`shared`, `writeback`), set at each scrape.
    pub rate_budget_remaining: Family<AccountLabels, FloatGauge>,
    /// Seconds until the account's write-back backlog drains at its lane's rate (lane `writeback`).
    pub writeback_drain_eta: Family<AccountLabels, FloatGauge>,
    /// Age of the oldest pending write-back step, seconds (0: none), set at each scrape.
    pub writeback_backlog_age: FloatGauge,
    /// Appointment outcomes recorded, by outcome and source.
    pub appointment_outcomes: Family<AppointmentOutcomeLabels, Counter>,
    /// Outcome reads that failed (the booking stays pending), by source.
    pub appointment_outcome_errors: Family<OutcomeSourceLabel, Counter>,
    /// 1 while this instance leads the job (`crate::leader`), else 0.
    pub job_leader: Family<JobLabel, Gauge>,
    /// Passes of a job skipped because another instance leads it.
    pub job_passes_skipped: Family<JobLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("callside");
        let tool_calls = Family::<ToolLabels, Counter>::default();
        // 10 µs .. ~5 s
        let tool_latency = Family::<ToolNameLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00001, 3.0, 13))
        });
        let open_calls = Gauge::default();
        let calls_refused = Family::<ToolNameLabel, Counter>::default();
        let writeback_steps = Family::<StepLabels, Counter>::default();
        let writeback_backlog = Gauge::default();
        registry.register("tool_calls", "Tool calls by tool and outcome", tool_calls.clone());
        registry.register("tool_latency_seconds", "Server-side tool call latency", tool_latency.clone());
        registry.register("open_calls", "Calls currently connected", open_calls.clone());
        registry.register("calls_refused", "Connections refused, by reason", calls_refused.clone());
        registry.register("writeback_steps", "Write-back step attempts by kind and outcome", writeback_steps.clone());
        registry.register("writeback_backlog", "Write-back steps pending", writeback_backlog.clone());
        let mcp_sessions = Family::<EraLabel, Counter>::default();
        registry.register(
            "mcp_sessions",
            "Calls opened over MCP Streamable HTTP, by protocol version (era)",
            mcp_sessions.clone(),
        );
        let inbound_requests = Family::<InboundLabels, Counter>::default();
        registry.register(
            "inbound_requests",
            "Inbound change-notification requests by vendor and outcome",
            inbound_requests.clone(),
        );
        let inbound_events = Family::<InboundLabels, Counter>::default();
        registry.register("inbound_events", "Inbound change events by vendor and outcome", inbound_events.clone());
        let alerts = Family::<AlertLabel, Counter>::default();
        registry.register("alerts", "Alert incidents opened, by kind", alerts.clone());
        let config_reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register("config_reloads", "Configuration reloads by outcome", config_reloads.clone());
        let context_cache = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "context_cache_lookups",
            "Caller-context lookups by outcome (hit, miss)",
            context_cache.clone(),
        );
        let vendor_rate_limited = Family::<VendorLabel, Counter>::default();
        registry.register("vendor_rate_limited", "HTTP 429 answers per vendor", vendor_rate_limited.clone());
        let rate_budget_fallbacks = Counter::default();
        registry.register(
            "rate_budget_fallbacks",
            "Rate budget takes served by this instance's own buckets because the shared backend failed",
            rate_budget_fallbacks.clone(),
        );
        let token_refreshes = Family::<InboundLabels, Counter>::default();
        registry.register("token_refreshes", "OAuth token refreshes by vendor and outcome", token_refreshes.clone());
        let rate_budget_remaining = Family::<AccountLabels, FloatGauge>::default();
        registry.register(
            "rate_budget_remaining",
            "Requests left in each account's rate budget, per lane (shared, writeback)",
            rate_budget_remaining.clone(),
        );
        let writeback_drain_eta = Family::<AccountLabels, FloatGauge>::default();
        registry.register(
            "writeback_drain_eta_seconds",
            "Seconds until the write-back backlog drains at the account's write-back lane rate",
            writeback_drain_eta.clone(),
        );
        let writeback_backlog_age = FloatGauge::default();
        registry.register(
            "writeback_backlog_age_seconds",
            "Age of the oldest pending write-back step",
            writeback_backlog_age.clone(),
        );
        let appointment_outcomes = Family::<AppointmentOutcomeLabels, Counter>::default();
        registry.register(
            "appointment_outcomes",
            "Appointment outcomes recorded, by outcome and source",
            appointment_outcomes.clone(),
        );
        let appointment_outcome_errors = Family::<OutcomeSourceLabel, Counter>::default();
        registry.register(
            "appointment_outcome_errors",
            "Appointment outcome reads that failed (the booking stays pending), by source",
            appointment_outcome_errors.clone(),
        );
        let job_leader = Family::<JobLabel, Gauge>::default();
        registry.register("job_leader", "1 while this instance leads the cluster-wide job, else 0", job_leader.clone());
        let job_passes_skipped = Family::<JobLabel, Counter>::default();
        registry.register(
            "job_passes_skipped",
            "Passes of a cluster-wide job skipped because another instance leads it",
            job_passes_skipped.clone(),
        );
        Metrics {
            registry,
            appointment_outcomes,
            appointment_outcome_errors,
            job_leader,
            job_passes_skipped,
            context_cache,
            vendor_rate_limited,
            rate_budget_fallbacks,
            token_refreshes,
            rate_budget_remaining,
            writeback_drain_eta,
            writeback_backlog_age,
            alerts,
            config_reloads,
            tool_calls,
            tool_latency,
            open_calls,
            calls_refused,
            writeback_steps,
            writeback_backlog,
            mcp_sessions,
            inbound_requests,
            inbound_events,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Metrics {
    /// Counts one inbound request.
    pub fn count_inbound_request(&self, vendor: &str, outcome: &str) {
        self.inbound_requests.get_or_create(&InboundLabels { vendor: vendor.into(), outcome: outcome.into() }).inc();
    }

    /// Counts one inbound event.
    pub fn count_inbound_event(&self, vendor: &str, outcome: &str) {
        self.inbound_events.get_or_create(&InboundLabels { vendor: vendor.into(), outcome: outcome.into() }).inc();
    }

    /// The count of inbound requests with this outcome so far.
    pub fn inbound_request_count(&self, vendor: &str, outcome: &str) -> u64 {
        self.inbound_requests.get_or_create(&InboundLabels { vendor: vendor.into(), outcome: outcome.into() }).get()
    }

    /// Records whether this instance leads `job` at this pass (a skipped pass is counted).
    pub fn set_job_leader(&self, job: &str, leads: bool) {
        let label = JobLabel { job: job.into() };
        self.job_leader.get_or_create(&label).set(i64::from(leads));
        if !leads {
            self.job_passes_skipped.get_or_create(&label).inc();
        }
    }

    /// Counts one opened alert incident.
    pub fn count_alert(&self, kind: &str) {
        self.alerts.get_or_create(&AlertLabel { kind: kind.into() }).inc();
    }

    /// The count of inbound events with this outcome so far.
    pub fn inbound_event_count(&self, vendor: &str, outcome: &str) -> u64 {
        self.inbound_events.get_or_create(&InboundLabels { vendor: vendor.into(), outcome: outcome.into() }).get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A phone number for logs: country code and last two digits only.
/// Dependency targets capped whatever `RUST_LOG` says: at trace (and some at debug) they print
/// raw payloads — HTTP bodies and headers, WebSocket frames, SQL with bound values — which carry
/// callers' phone numbers and emails. Our own targets redact what they log; these cannot.
/// `tests/pii_logs.rs` runs the flows at `trace` through this filter and greps the output.
pub const CAPPED_TARGETS: &[(&str, &str)] = &[
    ("tungstenite", "info"),
    ("tokio_tungstenite", "info"),
    ("hyper", "info"),
    ("hyper_util", "info"),
    ("h2", "info"),
    ("reqwest", "info"),
    ("rustls", "info"),
    ("sqlx", "warn"),
    ("axum", "info"),
    ("tower_http", "info"),
    ("rlibphonenumber", "info"),
];

/// The log filter: `spec` (e.g. `RUST_LOG`) with the [`CAPPED_TARGETS`] capped.
pub fn log_filter(spec: &str) -> tracing_subscriber::EnvFilter {
    let mut filter =
        tracing_subscriber::EnvFilter::try_new(spec).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for (target, level) in CAPPED_TARGETS {
        if let Ok(d) = format!("{target}={level}").parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

pub fn redact_phone(e164: &str) -> String {
    let digits: Vec<char> = e164.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() < 4 {
        return "***".into();
    }
    let tail: String = digits[digits.len() - 2..].iter().collect();
    format!("+{}***{tail}", digits[0])
}

/// An email as `a***@example.com`: the first character of the local part and the domain.
pub fn redact_email(email: &str) -> String {
    match email.trim().split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
            format!("{}***@{domain}", local.chars().next().unwrap_or('*'))
        }
        _ => "***".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_redaction_keeps_the_first_character_and_the_domain() {
        assert_eq!(redact_email("ana.lopez@example.com"), "a***@example.com");
        assert_eq!(redact_email("not an address"), "***");
        assert_eq!(redact_email("@example.com"), "***");
    }

    #[test]
    fn redaction_keeps_no_more_than_three_digits() {
        let r = redact_phone("+14155550134");
        assert_eq!(r, "+1***34");
        assert!(!r.contains("555"));
    }
}
