//! Calendar changes (issue 12): what the tenants' calendars say changed reaches the busy cache,
//! the holds of live calls and the bookings callside made.
//!
//! Every watched calendar (each staff member's, per tenant) has a sync cursor (Google's
//! `nextSyncToken`, a WebDAV sync token). A sync lists what changed since the cursor through
//! [`CalendarConnector::sync_events`]; an expired cursor means a full sync (and everything may
//! have changed). Syncs run when a push notification arrives (Google channels,
//! `super::google`; Graph subscriptions, `super::graph`) and, for every calendar, every `poll_interval_secs` on the injected clock:
//! the polling of providers without push and the safety net that catches a missed push.
//! Subscriptions are replaced `renew_before_secs` before they expire (the replacement first,
//! then the old one is stopped), also on the injected clock.
//!
//! Effects of a foreign change (an event callside did not create): the staff member's cached
//! busy time is dropped, so the next `find_slots` re-reads it; a live hold under a foreign busy
//! event is flagged and its call told (`notifications/callside/slot_taken`); a booking callside
//! made under one is a conflict the calendar's owner must resolve — a task for staff in the CRM,
//! created once per (booking, event), never a silent cancellation. Events callside created carry
//! its call id (a private extended property) and change nothing here, so our own writes never
//! loop.
//!
//! The registry of cursors and subscriptions is in memory: after a restart every calendar is
//! fully synced and subscribed again (the busy cache it protects is in memory too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use rand::Rng as _;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::CalendarSyncSection;
use crate::connectors::calendar::{CalendarEvent, EventChange, Interval, SubscribeRequest, Subscription, SyncResult};
use crate::connectors::crm::TaskRecord;
use crate::session::{Core, Notification};
use crate::tenant::Tenant;

/// A watched calendar: (tenant id, calendar id).
type CalendarKey = (String, String);

/// What inbound calendar sync has done so far; tests and the benchmark wait on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Every calendar was synced (and subscribed) once since start.
    pub started: bool,
    /// Syncs completed (any outcome).
    pub syncs: u64,
    /// Foreign changes applied.
    pub foreign_changes: u64,
    /// Changes to events callside created (recognized, nothing re-read).
    pub own_changes: u64,
    /// Holds or bookings flagged under a foreign event.
    pub flagged: u64,
    /// Staff tasks created for conflicts with bookings callside made.
    pub conflict_tasks: u64,
    /// Subscriptions replaced before they expired (or when a lifecycle notification asked).
    pub renewals: u64,
    /// Graph lifecycle notifications acted on (`super::graph`), each after its renewal and sync.
    pub lifecycle: u64,
}

/// A watched calendar.
#[derive(Debug, Default)]
struct Watched {
    cursor: Option<String>,
    /// The current subscription and its secret.
    subscription: Option<(Subscription, String)>,
}

/// A subscription a notification may name: the current one of its calendar, or one replaced by
/// a renewal that is still open until the provider stops it.
#[derive(Debug, Clone)]
pub(crate) struct ChannelEntry {
    pub tenant: String,
    pub calendar_id: String,
    pub subscription: Subscription,
    pub secret: String,
}

/// The state of inbound calendar sync (one per service instance, in `Core`).
pub struct CalendarSync {
    settings: Option<CalendarSyncSection>,
    public_url: String,
    watched: Mutex<HashMap<CalendarKey, Watched>>,
    channels: Mutex<HashMap<String, ChannelEntry>>,
    /// One sync at a time per calendar (a push and the poll may coincide).
    locks: Mutex<HashMap<CalendarKey, Arc<tokio::sync::Mutex<()>>>>,
    progress: watch::Sender<SyncProgress>,
}

impl CalendarSync {
    /// `settings` absent: calendar sync is off. `public_url` is where providers reach us.
    pub fn new(settings: Option<CalendarSyncSection>, public_url: &str) -> Self {
        Self {
            settings,
            public_url: public_url.trim_end_matches('/').to_owned(),
            watched: Mutex::default(),
            channels: Mutex::default(),
            locks: Mutex::default(),
            progress: watch::channel(SyncProgress::default()).0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.is_some()
    }

    /// Progress so far, and every change of it.
    pub fn progress(&self) -> watch::Receiver<SyncProgress> {
        self.progress.subscribe()
    }

    /// The cursor of a watched calendar (tests).
    pub fn cursor(&self, tenant: &str, calendar_id: &str) -> Option<String> {
        self.lock_watched().get(&(tenant.to_owned(), calendar_id.to_owned())).and_then(|w| w.cursor.clone())
    }

    /// The current subscription of a watched calendar.
    pub fn subscription(&self, tenant: &str, calendar_id: &str) -> Option<Subscription> {
        self.lock_watched()
            .get(&(tenant.to_owned(), calendar_id.to_owned()))
            .and_then(|w| w.subscription.as_ref().map(|(s, _)| s.clone()))
    }

    pub(crate) fn channel(&self, id: &str) -> Option<ChannelEntry> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    fn lock_watched(&self) -> std::sync::MutexGuard<'_, HashMap<CalendarKey, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self, f: impl FnOnce(&mut SyncProgress)) {
        self.progress.send_modify(f);
    }

    fn sync_lock(&self, key: &CalendarKey) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().clone()
    }
}

/// The tenant's calendars, each with the staff members whose time it holds.
fn calendars_of(tenant: &Tenant) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for staff in &tenant.config.staff {
        for calendar in &staff.calendar_ids {
            match out.iter_mut().find(|(c, _)| c == calendar) {
                Some((_, ids)) => ids.push(staff.id.clone()),
                None => out.push((calendar.clone(), vec![staff.id.clone()])),
            }
        }
    }
    out
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub full: bool,
    pub foreign: usize,
    pub own: usize,
    pub flagged: usize,
    pub conflict_tasks: usize,
}

/// Syncs one calendar of a tenant and applies what changed. Errors are the provider's; the
/// cursor is kept so the next sync retries the same changes.
pub async fn sync_calendar(
    core: &Arc<Core>,
    tenant: &Arc<Tenant>,
    calendar_id: &str,
) -> Result<SyncReport, crate::connectors::ConnectorError> {
    let key = (tenant.id().to_owned(), calendar_id.to_owned());
    let lock = core.calendar_sync.sync_lock(&key);
    let _one_at_a_time = lock.lock().await;
    let result = sync_locked(core, tenant, &key).await;
    core.calendar_sync.bump(|p| p.syncs += 1);
    result
}

async fn sync_locked(
    core: &Arc<Core>,
    tenant: &Arc<Tenant>,
    key: &CalendarKey,
) -> Result<SyncReport, crate::connectors::ConnectorError> {
    let calendar_id = key.1.as_str();
    let cursor = core.calendar_sync.lock_watched().get(key).and_then(|w| w.cursor.clone());
    let now = core.clock.now();
    let mut full = cursor.is_none();
    let mut result = tenant.calendar.sync_events(calendar_id, cursor.as_deref(), now).await?;
    if result == SyncResult::Expired {
        // "Clear the client's store and perform a full synchronization" (Google's sync guide).
        tracing::info!(tenant = %tenant.id(), "calendar sync cursor expired; syncing fully");
        full = true;
        result = tenant.calendar.sync_events(calendar_id, None, now).await?;
    }
    let SyncResult::Changes { changes, cursor } = result else {
        return Err(crate::connectors::ConnectorError::Permanent(
            "the calendar refused a full sync's cursor".to_owned(),
        ));
    };
    let report = apply_changes(core, tenant, calendar_id, &changes, full).await;
    core.calendar_sync.lock_watched().entry(key.clone()).or_default().cursor = Some(cursor);
    Ok(report)
}

/// Whether callside created the event (its call id is on it).
fn own(event: &CalendarEvent) -> bool {
    event.call_id.is_some()
}

async fn apply_changes(
    core: &Arc<Core>,
    tenant: &Arc<Tenant>,
    calendar_id: &str,
    changes: &[EventChange],
    full: bool,
) -> SyncReport {
    let mut report = SyncReport { full, ..SyncReport::default() };
    let staff = calendars_of(tenant).into_iter().find(|(c, _)| c == calendar_id).map(|(_, s)| s).unwrap_or_default();
    let mut taken = Vec::new();
    for change in changes {
        match change {
            EventChange::Upserted(e) if own(e) => report.own += 1,
            EventChange::Upserted(e) => {
                report.foreign += 1;
                if e.busy && e.status != "cancelled" && e.start < e.end {
                    taken.push(Interval::new(e.start, e.end));
                }
            }
            EventChange::Removed { .. } => report.foreign += 1,
        }
    }
    // A full sync may stand for anything that changed while the cursor was lost.
    if report.foreign > 0 || full {
        for s in &staff {
            core.booking.invalidate_busy(tenant.id(), s).await;
        }
    }
    let now = core.clock.now();
    for s in &staff {
        for interval in &taken {
            for (hold, booked) in core.booking.ledger.flag_overlapping(tenant.id(), s, *interval, now).await {
                report.flagged += 1;
                let live = core.sessions.get(&hold.call_id).filter(|c| !c.is_ended());
                if let Some(call) = &live {
                    let _ = call.notifications.try_send(Notification::SlotTaken {
                        hold_id: hold.id,
                        start: hold.slot.start,
                        booked,
                    });
                }
                tracing::warn!(tenant = %tenant.id(), call_id = %hold.call_id, booked, "a foreign calendar event covers a slot callside holds or booked");
                if booked && conflict_task(core, tenant, &hold, *interval).await {
                    report.conflict_tasks += 1;
                }
            }
        }
    }
    core.metrics.count_inbound_event(tenant.calendar.provider(), if report.foreign > 0 { "applied" } else { "own" });
    core.calendar_sync.bump(|p| {
        p.foreign_changes += report.foreign as u64;
        p.own_changes += report.own as u64;
        p.flagged += report.flagged as u64;
        p.conflict_tasks += report.conflict_tasks as u64;
    });
    report
}

/// A foreign event over a booking callside made: a task for staff in the CRM (once per booking
/// and event interval, recorded in the inbound delivery guard), never a cancellation. Returns
/// whether a task was created now.
async fn conflict_task(
    core: &Arc<Core>,
    tenant: &Arc<Tenant>,
    hold: &crate::booking::ledger::Hold,
    taken: Interval,
) -> bool {
    let now = core.clock.now();
    let booking = match core.store.bookings_for_call(tenant.id(), &hold.call_id).await {
        Ok(rows) => {
            rows.into_iter().find(|b| b.staff_id == hold.staff_id && b.start_at == hold.slot.start.as_millisecond())
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the conflicting booking failed");
            return false;
        }
    };
    let Some(booking) = booking else {
        tracing::warn!(call_id = %hold.call_id, "a conflicting booking is not in the store");
        return false;
    };
    let key =
        format!("conflict:{}:{}:{}", booking.idempotency_key, taken.start.as_millisecond(), taken.end.as_millisecond());
    match core.store.inbound_delivery_seen("calendar", &key).await {
        Ok(true) => return false,
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "reading the conflict guard failed");
            return false;
        }
    }
    let attendee = crate::booking::pending::StoredAttendee {
        phone: booking.caller_phone.clone(),
        email: booking.caller_email.clone(),
        ..Default::default()
    };
    let contact = core.contact_for_booking(tenant, &booking.call_id, &attendee, &booking.idempotency_key).await;
    let contact_id = match contact {
        Ok(id) => id,
        Err(e) => {
            // The next sync or poll that sees the event again retries (the guard is unset).
            tracing::warn!(error = %e, "no contact for the conflict task yet");
            return false;
        }
    };
    let (service, when) = crate::session::pending::describe_booking(tenant, &booking.service_id, hold.slot.start);
    let task = TaskRecord {
        subject: format!("Double booking: {service} on {when} with {}", booking.staff_id),
        body: Some(format!(
            "During call {} callside booked a {service} on {when} with {} (calendar event {}). Another event was then put in the same calendar over that time. Nothing was cancelled: please decide which appointment stays and call the customer if theirs has to move.",
            booking.call_id, booking.staff_id, booking.event_id,
        )),
        due: now + SignedDuration::from_hours(1),
        owner_id: None,
        priority: Some("HIGH".into()),
    };
    match tenant.crm.create_task(&contact_id, &task, &format!("{key}:task")).await {
        Ok(task_id) => {
            let _ = core.store.record_inbound_delivery("calendar", &key, Some(tenant.id()), now).await;
            let _ = core
                .store
                .audit(
                    tenant.id(),
                    Some(&booking.call_id),
                    None,
                    "calendar.conflict_task",
                    &json!({"booking": booking.idempotency_key, "event_id": booking.event_id, "task_id": task_id}),
                    now,
                )
                .await;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "the conflict task was not created yet");
            false
        }
    }
}

/// A random secret for a subscription (Google's channel token, Graph's `clientState`).
fn new_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

/// Opens a subscription for a calendar and makes it current; the one it replaces stays valid
/// until stopped.
async fn subscribe(core: &Arc<Core>, tenant: &Arc<Tenant>, calendar_id: &str, settings: &CalendarSyncSection) -> bool {
    let sync = &core.calendar_sync;
    let id = format!("callside-{}", uuid::Uuid::new_v4());
    let secret = new_secret();
    let address = format!("{}/v1/inbound/{}", sync.public_url, tenant.calendar.provider());
    let expires_at = core.clock.now() + SignedDuration::from_secs(settings.subscription_ttl_secs as i64);
    let request = SubscribeRequest { id: &id, address: &address, secret: &secret, expires_at };
    // The channel is known before the provider's first (`sync`) message can arrive.
    let pending = Subscription { id: id.clone(), resource_id: None, expires_at };
    let entry = |subscription: Subscription| ChannelEntry {
        tenant: tenant.id().to_owned(),
        calendar_id: calendar_id.to_owned(),
        subscription,
        secret: secret.clone(),
    };
    sync.channels.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), entry(pending));
    match tenant.calendar.subscribe(calendar_id, &request).await {
        Ok(subscription) => {
            // Notifications name the provider's id (ours for Google, Graph's own for Graph).
            {
                let mut channels = sync.channels.lock().unwrap_or_else(|p| p.into_inner());
                channels.remove(&id);
                channels.insert(subscription.id.clone(), entry(subscription.clone()));
            }
            let old = sync
                .lock_watched()
                .entry((tenant.id().to_owned(), calendar_id.to_owned()))
                .or_default()
                .subscription
                .replace((subscription, secret.clone()));
            if let Some((old, _)) = old {
                if let Err(e) = tenant.calendar.unsubscribe(&old).await {
                    tracing::warn!(error = %e, "stopping a replaced calendar subscription failed");
                }
                sync.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(&old.id);
            }
            true
        }
        Err(e) => {
            sync.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            tracing::warn!(tenant = %tenant.id(), error = %e, "subscribing to calendar changes failed; polling only");
            false
        }
    }
}

/// Replaces a calendar's subscription now, as a provider's lifecycle notification asks
/// (`super::graph`); counted as a renewal. False when push is off or the provider refused (the
/// renewal loop and polling carry on).
pub(crate) async fn resubscribe(core: &Arc<Core>, tenant: &Arc<Tenant>, calendar_id: &str) -> bool {
    let Some(settings) = core.calendar_sync.settings.clone() else { return false };
    if !settings.push || !tenant.calendar.pushes_changes() {
        return false;
    }
    let renewed = subscribe(core, tenant, calendar_id, &settings).await;
    if renewed {
        core.calendar_sync.bump(|p| p.renewals += 1);
    }
    renewed
}

/// Counts one lifecycle notification acted on (the tests' signal).
pub(crate) fn lifecycle_applied(core: &Core) {
    core.calendar_sync.bump(|p| p.lifecycle += 1);
}

/// Every (tenant, calendar) to watch.
fn all_calendars(core: &Core) -> Vec<(Arc<Tenant>, String)> {
    core.tenants
        .all()
        .into_iter()
        .filter(|t| t.calendar.syncs_changes())
        .flat_map(|t| calendars_of(&t).into_iter().map(move |(c, _)| (t.clone(), c)))
        .collect()
}

async fn sync_logged(core: &Arc<Core>, tenant: &Arc<Tenant>, calendar_id: &str) {
    if let Err(e) = sync_calendar(core, tenant, calendar_id).await {
        tracing::warn!(tenant = %tenant.id(), error = %e, "calendar sync failed; the next poll retries");
    }
}

/// Runs until `stop`: syncs and subscribes every calendar, then polls every
/// `poll_interval_secs` and replaces subscriptions before they expire, on the injected clock.
///
/// On a shared store one instance does this for the cluster (`crate::leader`): N instances
/// would open N push channels per calendar and poll N times. Every wake first renews the job's
/// lease (the leader wakes at least every `RECHECK_EVERY` for it); an instance that is not the
/// leader checks as often whether it can take the job over, and then starts as at boot (full
/// sync, fresh subscriptions). A leader that lost its lease stops its subscriptions.
pub async fn run(core: Arc<Core>, stop: CancellationToken) {
    let Some(settings) = core.calendar_sync.settings.clone() else { return };
    let interval = SignedDuration::from_secs(settings.poll_interval_secs.max(1) as i64);
    let renew_before = SignedDuration::from_secs(settings.renew_before_secs as i64);
    let gate = core.jobs.gate(crate::leader::Job::CalendarSync, interval);
    let mut next_poll = core.clock.now() + interval;
    // After a failed renewal, the next attempt waits for this (not a tight loop).
    let mut renewal_retry_at: Option<Timestamp> = None;
    let mut leading = false;
    loop {
        // Read before the lease is decided: the next recheck is due from here.
        let started = core.clock.now();
        if !leading {
            if !gate.lead().await {
                let recheck = started + gate.recheck_every().unwrap_or(interval);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = core.clock.sleep_until(recheck) => {}
                }
                continue;
            }
            leading = true;
            for (tenant, calendar_id) in all_calendars(&core) {
                sync_logged(&core, &tenant, &calendar_id).await;
                if settings.push && tenant.calendar.pushes_changes() {
                    subscribe(&core, &tenant, &calendar_id, &settings).await;
                }
            }
            core.calendar_sync.bump(|p| p.started = true);
            next_poll = core.clock.now() + interval;
            renewal_retry_at = None;
        }
        let next_renewal = core
            .calendar_sync
            .lock_watched()
            .values()
            .filter_map(|w| w.subscription.as_ref().map(|(s, _)| s.expires_at - renew_before))
            .min()
            .map(|at| renewal_retry_at.map_or(at, |retry| at.max(retry)));
        let mut wake = next_renewal.map_or(next_poll, |r| r.min(next_poll));
        if let Some(every) = gate.recheck_every() {
            wake = wake.min(started + every);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = core.clock.sleep_until(wake) => {}
        }
        if !gate.lead().await {
            leading = false;
            stop_subscriptions(&core).await;
            continue;
        }
        let now = core.clock.now();
        if settings.push && renewal_retry_at.is_none_or(|retry| now >= retry) {
            renewal_retry_at = None;
            for (tenant, calendar_id) in all_calendars(&core) {
                let due = core
                    .calendar_sync
                    .subscription(tenant.id(), &calendar_id)
                    .is_some_and(|s| s.expires_at - renew_before <= now);
                if !due {
                    continue;
                }
                if subscribe(&core, &tenant, &calendar_id, &settings).await {
                    core.calendar_sync.bump(|p| p.renewals += 1);
                } else {
                    renewal_retry_at = Some(now + interval);
                }
            }
        }
        if now >= next_poll {
            for (tenant, calendar_id) in all_calendars(&core) {
                sync_logged(&core, &tenant, &calendar_id).await;
            }
            next_poll = now + interval;
        }
    }
}

/// Another instance leads calendar sync now: this one's subscriptions are stopped (best effort;
/// one the provider does not stop lapses at its expiry) and forgotten, so their notifications
/// are refused here and only the leader's channels remain.
async fn stop_subscriptions(core: &Arc<Core>) {
    let mine: Vec<(CalendarKey, Subscription)> = core
        .calendar_sync
        .lock_watched()
        .iter_mut()
        .filter_map(|(key, w)| w.subscription.take().map(|(s, _)| (key.clone(), s)))
        .collect();
    core.calendar_sync.channels.lock().unwrap_or_else(|p| p.into_inner()).clear();
    for ((tenant, _), subscription) in mine {
        let Some(tenant) = core.tenants.by_id(&tenant) else { continue };
        if let Err(e) = tenant.calendar.unsubscribe(&subscription).await {
            tracing::warn!(error = %e, "stopping a calendar subscription after losing the lead failed");
        }
    }
}

/// When a secret presented by a provider matches the subscription's (constant time).
pub(crate) fn secret_matches(expected: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// The tenant a channel belongs to, if it is still configured.
pub(crate) fn tenant_of(core: &Core, entry: &ChannelEntry) -> Option<Arc<Tenant>> {
    core.tenants.by_id(&entry.tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(secret_matches("abc123", "abc123"));
        assert!(!secret_matches("abc123", "abc124"));
        assert!(!secret_matches("abc123", "abc12"));
        assert!(!secret_matches("abc123", ""));
        assert_ne!(new_secret(), new_secret());
        assert_eq!(new_secret().len(), 48);
    }
}
