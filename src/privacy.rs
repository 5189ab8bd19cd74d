//! Personal data kept by callside itself (issue 14, item 5): the retention sweep that removes or
//! redacts transcripts, outcome payloads and audit data past their age, and the erasure of one
//! caller (`callside erase --phone`).
//!
//! What callside keeps about a caller: the call rows (caller number, the outcome the AI saved:
//! name, email, notes, the platform's report and the transcript link), the outbox steps (payloads
//! with the same data, the call log body with the transcript), held plans, bookings and pending
//! bookings (phone, email, name), the identity index (phone/email → CRM record id), the field
//! writes and conflicts (the values written and the values they replaced) and the audit trail.
//! The CRM and the calendar are the business's own records: callside does not delete from them,
//! it says which record ids hold the caller there.

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::TenantConfig;
use crate::identity::{ParsedPhone, Phone};
use crate::store::{EraseReport, RetentionReport, Store, StoreError};

/// `[retention]` in the server file: how long personal data is kept, in days (0: kept forever).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Calls ended longer ago than this have their saved outcome reduced to the disposition, and
    /// the payloads of their written steps (the call log body with the transcript, the contact's
    /// fields) and finished pending bookings' attendee details replaced by a redaction marker.
    /// Steps still to deliver (pending, parked, dead-lettered) keep their payload so they can
    /// still be written; `callside erase` removes those.
    pub transcripts_days: u32,
    /// Audit rows older than this are deleted; the values recorded by field writes (the value
    /// set and the one it replaced, which undo restores) and by resolved conflicts are redacted.
    pub audit_days: u32,
    /// Seconds between two sweeps (the first runs at start).
    pub sweep_interval_secs: u64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self { transcripts_days: 30, audit_days: 365, sweep_interval_secs: 3600 }
    }
}

/// The longest retention accepted (ten years): a larger number is a typo, not a policy.
pub const MAX_RETENTION_DAYS: u32 = 3650;

impl RetentionSection {
    /// Every problem, as (key, reason).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        for (key, days) in
            [("retention.transcripts_days", self.transcripts_days), ("retention.audit_days", self.audit_days)]
        {
            if days > MAX_RETENTION_DAYS {
                issues.push((
                    key.to_owned(),
                    format!("{days} is more than {MAX_RETENTION_DAYS} days (ten years); use 0 to keep forever"),
                ));
            }
        }
        if !(60..=86_400).contains(&self.sweep_interval_secs) {
            issues.push((
                "retention.sweep_interval_secs".to_owned(),
                format!("{} must be between 60 and 86400 seconds", self.sweep_interval_secs),
            ));
        }
        issues
    }

    fn cutoff(days: u32, now: Timestamp) -> Option<Timestamp> {
        (days > 0).then(|| now - SignedDuration::from_hours(24 * i64::from(days)))
    }
}

/// One sweep: everything past its retention at `now`.
pub async fn sweep_once(
    store: &Store,
    settings: &RetentionSection,
    now: Timestamp,
) -> Result<RetentionReport, StoreError> {
    store
        .apply_retention(
            RetentionSection::cutoff(settings.transcripts_days, now),
            RetentionSection::cutoff(settings.audit_days, now),
            now,
        )
        .await
}

/// Sweeps at start and then every `sweep_interval_secs` of the injected clock, until `stop`.
/// Each finished sweep bumps `rounds` (the explicit signal tests wait on).
pub fn spawn_sweeper(
    store: Store,
    settings: RetentionSection,
    clock: SharedClock,
    rounds: watch::Sender<u64>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let interval = SignedDuration::from_secs(settings.sweep_interval_secs as i64);
    tokio::spawn(async move {
        loop {
            match sweep_once(&store, &settings, clock.now()).await {
                Ok(r) if r.is_empty() => {}
                Ok(r) => tracing::info!(report = ?r, "retention sweep"),
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
            rounds.send_modify(|n| *n += 1);
            let next = clock.now() + interval;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = clock.sleep_until(next) => {}
            }
        }
    })
}

/// What `callside erase` did for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantErasure {
    pub tenant: String,
    /// The number as the identity key (E.164) in this tenant's default region.
    pub phone: String,
    pub report: EraseReport,
}

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("{0:?} is not a phone number")]
    NotAPhone(String),
    #[error("no tenant {0:?} in the configuration")]
    NoTenant(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Removes what callside stores about the caller at `phone` (any format; read in each tenant's
/// default region, as the service reads a caller's number) for `only` one tenant or every tenant.
pub async fn erase_caller(
    store: &Store,
    tenants: &[TenantConfig],
    phone: &str,
    only: Option<&str>,
) -> Result<Vec<TenantErasure>, EraseError> {
    let chosen: Vec<&TenantConfig> = match only {
        Some(id) => vec![tenants.iter().find(|t| t.id == id).ok_or_else(|| EraseError::NoTenant(id.to_owned()))?],
        None => tenants.iter().collect(),
    };
    let mut out = Vec::new();
    for t in chosen {
        let e164 = match Phone::parse(phone, t.default_region) {
            ParsedPhone::Number(p) => p.e164,
            _ => return Err(EraseError::NotAPhone(phone.to_owned())),
        };
        let report = store.erase_caller(&t.id, &e164).await?;
        out.push(TenantErasure { tenant: t.id.clone(), phone: e164, report });
    }
    Ok(out)
}

/// The text `callside erase` prints: per tenant, what was removed and what remains with the
/// business (CRM record ids, calendar event ids). No personal data beyond the number asked about.
pub fn render_erasure(erasures: &[TenantErasure]) -> String {
    let mut s = String::new();
    for e in erasures {
        let r = &e.report;
        s.push_str(&format!("tenant {}: caller {}\n", e.tenant, e.phone));
        s.push_str(&format!(
            "  removed from callside: {} call(s), {} write-back step(s), {} booking(s), {} pending booking(s), \
             {} identity index row(s), {} audit row(s), {} field write(s), {} conflict(s), {} held plan(s)\n",
            r.calls,
            r.steps,
            r.bookings,
            r.pending_bookings,
            r.identity_rows,
            r.audit_rows,
            r.field_writes,
            r.conflicts,
            r.held_plans
        ));
        if r.crm_records.is_empty() && r.calendar_events.is_empty() {
            s.push_str("  remains with the business: nothing callside knows of\n");
            continue;
        }
        s.push_str("  remains with the business (its own records; erase them there if the request covers them):\n");
        for (kind, id) in &r.crm_records {
            s.push_str(&format!("    CRM {kind} {id}\n"));
        }
        for (calendar, event) in &r.calendar_events {
            s.push_str(&format!("    calendar {calendar} event {event}\n"));
        }
    }
    s
}
