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
use crate::inbound::GuardRetention;
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

/// One sweep: everything past its retention at `now`, and the inbound guard's keys past
/// theirs (`guard`).
pub async fn sweep_once(
    store: &Store,
    settings: &RetentionSection,
    guard: GuardRetention,
    now: Timestamp,
) -> Result<RetentionReport, StoreError> {
    let audit_before = RetentionSection::cutoff(settings.audit_days, now);
    let mut report =
        store.apply_retention(RetentionSection::cutoff(settings.transcripts_days, now), audit_before, now).await?;
    // A cutoff before the start of time keeps everything (a TTL of centuries is a choice too).
    let before = |keep: SignedDuration| now.checked_sub(keep).ok();
    if let Some(signatures_before) = before(guard.signatures) {
        // Event keys are what the audit counts as inbound deliveries: they go with the audit
        // data (never, when that is kept forever), and never while the guard needs them.
        let events_before = audit_before.zip(before(guard.events)).map(|(audit, kept)| audit.min(kept));
        report.inbound_keys_deleted = store.prune_inbound_deliveries(signatures_before, events_before).await?;
    }
    Ok(report)
}

/// Sweeps at start and then every `sweep_interval_secs` of the injected clock, until `stop`.
/// Each finished sweep bumps `rounds` (the explicit signal tests wait on).
pub fn spawn_sweeper(
    store: Store,
    settings: RetentionSection,
    guard: GuardRetention,
    clock: SharedClock,
    rounds: watch::Sender<u64>,
    stop: CancellationToken,
    leader: Option<crate::leader::JobGate>,
) -> tokio::task::JoinHandle<()> {
    let interval = SignedDuration::from_secs(settings.sweep_interval_secs as i64);
    tokio::spawn(async move {
        loop {
            // Due an interval after this sweep started (read before the lease is decided), so a
            // test that advances the clock once it sees the round's signal always wakes the next.
            let next = clock.now() + interval;
            // One instance sweeps for the cluster (`crate::leader`); the others skip the pass.
            if crate::leader::leads(leader.as_ref()).await {
                match sweep_once(&store, &settings, guard, clock.now()).await {
                    Ok(r) if r.is_empty() => {}
                    Ok(r) => tracing::info!(report = ?r, "retention sweep"),
                    Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
                }
                rounds.send_modify(|n| *n += 1);
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    /// Advances the clock and waits for the sweep it wakes (the sweeper's round signal).
    async fn sweep_after(clock: &ManualClock, seen: &mut watch::Receiver<u64>, by: SignedDuration) {
        let before = *seen.borrow_and_update();
        clock.advance(by);
        // The timeout only bounds a broken sweeper; the wait itself is on the round signal.
        let swept = tokio::time::timeout(std::time::Duration::from_secs(20), seen.wait_for(|n| *n > before));
        swept.await.expect("a sweep ran in time").expect("sweeper alive");
    }

    /// The guard's keys go with the sweep once past their windows on the injected clock: a
    /// signature an hour after it was accepted (its replay window is long closed), an event
    /// after three days (the vendors' retries are over, and the audit data of one day is gone);
    /// until then a replay is still refused, and the conflict-task marker is never swept.
    #[tokio::test]
    async fn the_sweep_prunes_inbound_guard_keys_past_their_windows_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let clock = ManualClock::new(t0);
        store.record_inbound_delivery("hubspot", "sig:abc", None, t0).await.unwrap();
        store.record_inbound_delivery("hubspot", "event:1:7", Some("demo"), t0).await.unwrap();
        store.record_inbound_delivery("calendar", "conflict:k:1:2", Some("demo"), t0).await.unwrap();
        let settings = RetentionSection { transcripts_days: 0, audit_days: 1, sweep_interval_secs: 60 };
        let (rounds, mut seen) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let sweeper = spawn_sweeper(
            store.clone(),
            settings,
            GuardRetention::default(),
            Arc::new(clock.clone()),
            rounds,
            stop.clone(),
            None,
        );
        let first = tokio::time::timeout(std::time::Duration::from_secs(20), seen.wait_for(|n| *n >= 1));
        first.await.expect("the first sweep runs at start").expect("sweeper alive");
        // Five minutes on: the signature is inside its window, and its replay is refused.
        sweep_after(&clock, &mut seen, SignedDuration::from_mins(5)).await;
        assert!(store.inbound_delivery_seen("hubspot", "sig:abc").await.unwrap());
        assert!(!store.record_inbound_delivery("hubspot", "sig:abc", None, clock.now()).await.unwrap());

        // An hour and a minute after it was accepted, the signature is gone; the event stays.
        sweep_after(&clock, &mut seen, SignedDuration::from_mins(56)).await;
        assert!(!store.inbound_delivery_seen("hubspot", "sig:abc").await.unwrap());
        assert!(store.inbound_delivery_seen("hubspot", "event:1:7").await.unwrap());
        assert!(!store.record_inbound_delivery("hubspot", "event:1:7", Some("demo"), clock.now()).await.unwrap());

        // Three days on, the event is gone too; the conflict marker is not the guard's.
        sweep_after(&clock, &mut seen, SignedDuration::from_hours(71)).await;
        assert!(!store.inbound_delivery_seen("hubspot", "event:1:7").await.unwrap());
        assert!(store.inbound_delivery_seen("calendar", "conflict:k:1:2").await.unwrap());

        stop.cancel();
        sweeper.await.unwrap();
    }

    #[test]
    fn the_guard_keeps_signatures_past_the_replay_window_and_channels_for_their_life() {
        let window = crate::inbound::hubspot::MAX_AGE;
        assert!(GuardRetention::SIGNATURES > window * 2, "a timestamp may be five minutes ahead");
        assert_eq!(GuardRetention::default().events, GuardRetention::EVENTS);
        let long = crate::config::CalendarSyncSection { subscription_ttl_secs: 7 * 86_400, ..Default::default() };
        assert_eq!(GuardRetention::new(Some(&long)).events, SignedDuration::from_hours(7 * 24));
        let short = crate::config::CalendarSyncSection::default();
        assert_eq!(GuardRetention::new(Some(&short)).events, GuardRetention::EVENTS);
    }
}
