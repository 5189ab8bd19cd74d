//! Inbound sync: vendors tell callside what changed, so a live call is not contradicted by a
//! stale cache and the next call starts from the CRM's current record.
//!
//! One file per vendor. Each receiver checks the request is the vendor's (signature, timestamp
//! window, replay guard) and names its tenant before it touches anything: a rejected request is
//! answered with its status, counted (`callside_inbound_requests{vendor,outcome}`) and changes
//! no state. Accepted events are applied once (redeliveries are recognized by event id in the
//! store, migration 0012), the service's own writes are recognized and not refetched, and the
//! effects are the same for every vendor (`refresh_callers`): cached contexts showing the record
//! are dropped, and a live call whose caller it concerns re-reads its context and gets it pushed
//! (`notifications/callside/context_changed`).

pub mod calendar;
pub mod google;
pub mod graph;
pub mod hubspot;
pub mod pipedrive;

use std::sync::Arc;
use std::time::Duration;

use jiff::SignedDuration;

use crate::context::CallerContext;
use crate::session::Core;
use crate::tenant::Tenant;

/// How long one live call's re-read may take inside a webhook request: vendors time deliveries
/// out (HubSpot after 5 s), and the cache is already invalidated if the re-read is abandoned.
const REFRESH_DEADLINE: Duration = Duration::from_secs(3);

/// How long the replay and redelivery guard (`crate::store` migration 0012) must keep what it
/// recorded; the retention sweep (`crate::privacy::sweep_once`) removes older keys. Each kind of
/// key is needed for as long as a vendor can send its request again and have it otherwise
/// accepted:
///
/// - A request signature (`sig:`, HubSpot) can only be replayed while its timestamp is inside
///   the five-minute window ([`hubspot::MAX_AGE`]), either side of now: at most ten minutes
///   after it was first accepted. Kept an hour.
/// - An event (`event:`, HubSpot and Pipedrive) can be redelivered while the vendor retries:
///   HubSpot retries a failed delivery up to 10 times with a backoff doubling from 2 minutes
///   (<https://developers.hubspot.com/docs/methods/webhooks/webhooks-overview>, "Retries"), so
///   the last retry comes about 34 hours after the first attempt; Pipedrive retries after a
///   failed first attempt too (<https://pipedrive.readme.io/docs/webhooks-for-apps>, "Webhooks
///   policy"). Kept three days. A redelivery after that would only re-read a context.
/// - A push message (`channel:`, Google) can be replayed while its channel is open: refused as
///   stale past the channel's expiration. Kept at least as long as a channel is asked to live
///   (`inbound.calendar.subscription_ttl_secs`).
///
/// Tenant-scoped keys (`event:`, `channel:`) are also what `callside audit` counts as inbound
/// deliveries, so the sweep keeps them as long as the audit data (`retention.audit_days`) when
/// that is longer. Other keys in the table (the calendar's conflict-task markers) are not a
/// replay guard: the sweep leaves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRetention {
    /// How long a request signature (`sig:`) is kept.
    pub signatures: SignedDuration,
    /// How long an event or push-message key (`event:`, `channel:`) is kept at least.
    pub events: SignedDuration,
}

impl GuardRetention {
    /// Request signatures: twice the replay window (both sides of now), plus a margin.
    pub const SIGNATURES: SignedDuration = SignedDuration::from_hours(1);
    /// Events: the longest vendor retry schedule (HubSpot's, about 34 hours), plus a margin.
    pub const EVENTS: SignedDuration = SignedDuration::from_hours(72);

    /// The retention for a service whose calendar push channels live `calendar`'s TTL.
    pub fn new(calendar: Option<&crate::config::CalendarSyncSection>) -> Self {
        let channel_life = calendar.map_or(SignedDuration::ZERO, |c| {
            SignedDuration::from_secs(i64::try_from(c.subscription_ttl_secs).unwrap_or(i64::MAX))
        });
        Self { signatures: Self::SIGNATURES, events: Self::EVENTS.max(channel_life) }
    }
}

impl Default for GuardRetention {
    fn default() -> Self {
        Self::new(None)
    }
}

/// Why a notification was refused. Nothing was changed by it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("signature or token missing or wrong")]
    Forged,
    #[error("timestamp missing, malformed or outside the accepted window, or the channel expired")]
    Stale,
    #[error("this request was already received")]
    Replayed,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("no tenant has this portal or company")]
    UnknownPortal,
    #[error("no open notification channel has this id")]
    UnknownChannel,
    #[error("the secret is not available: {0}")]
    Unavailable(String),
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Forged | Rejection::Stale => 401,
            Rejection::Replayed => 409,
            Rejection::Malformed(_) => 400,
            Rejection::UnknownPortal | Rejection::UnknownChannel => 404,
            Rejection::Unavailable(_) => 503,
        }
    }

    /// The `outcome` label it is counted under.
    pub fn outcome(&self) -> &'static str {
        match self {
            Rejection::Forged => "forged",
            Rejection::Stale => "stale",
            Rejection::Replayed => "replayed",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnknownPortal => "unknown_portal",
            Rejection::UnknownChannel => "unknown_channel",
            Rejection::Unavailable(_) => "unavailable",
        }
    }
}

/// Counts a receiver's answer (`callside_inbound_requests{vendor,outcome}`) and logs a refusal,
/// then hands the answer back: every vendor's receiver ends here.
pub(crate) fn counted<T>(core: &Core, vendor: &str, result: Result<T, Rejection>) -> Result<T, Rejection> {
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(r) => r.outcome(),
    };
    core.metrics.count_inbound_request(vendor, outcome);
    if result.is_err() {
        // Only the outcome: a malformed body's parse error can quote the body (phones, names).
        tracing::warn!(vendor, outcome, "inbound notification refused");
    }
    result
}

/// Which cached contexts and live calls a CRM change concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affected {
    /// A contact: contexts showing it.
    Contact(String),
    /// A deal: contexts listing it among the caller's open deals.
    Deal(String),
    /// A change that can alter who a number matches (a new contact, a phone edited, a merge, a
    /// deletion): every live call of the tenant with a number re-reads, besides the contexts
    /// showing the contact.
    Matching(String),
    /// A record an incremental pull saw changed (the polling safety net): contexts showing it,
    /// and live calls from one of the numbers it now holds (E.164) — a pull knows the record's
    /// phones, so it need not re-read every live call the way [`Affected::Matching`] does.
    Pulled { id: String, numbers: Vec<String> },
}

impl Affected {
    fn concerns(&self, ctx: &CallerContext) -> bool {
        match self {
            Affected::Contact(id) | Affected::Matching(id) | Affected::Pulled { id, .. } => {
                ctx.contact_id() == Some(id.as_str())
            }
            Affected::Deal(id) => ctx.open_deal_ids().iter().any(|d| d == id),
        }
    }

    /// Whether a live call from `e164` is concerned whatever its context shows.
    fn concerns_number(&self, e164: &str) -> bool {
        match self {
            Affected::Matching(_) => true,
            Affected::Pulled { numbers, .. } => numbers.iter().any(|n| n == e164),
            Affected::Contact(_) | Affected::Deal(_) => false,
        }
    }
}

/// The hook the identity pull hands its changed records to (`crate::matching::sync::OnChanged`):
/// each goes through [`refresh_callers`] as [`Affected::Pulled`], counted as the event outcome
/// `polled` of the tenant's CRM vendor. This is how a change whose webhook was missed — or a
/// vendor polled rather than pushed (Salesforce) — reaches live calls.
pub fn refresh_on_pull(core: std::sync::Weak<Core>) -> crate::matching::sync::OnChanged {
    Arc::new(move |tenant: Arc<Tenant>, changed: Vec<crate::matching::sync::ChangedRecord>| {
        let core = core.clone();
        let applied: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async move {
            // The application is shutting down when its core is gone.
            let Some(core) = core.upgrade() else { return };
            let vendor = tenant.crm.vendor();
            for record in changed {
                let affected = Affected::Pulled { id: record.id, numbers: record.numbers };
                refresh_callers(&core, &tenant, &affected).await;
                core.metrics.count_inbound_event(vendor, "polled");
            }
        });
        applied
    })
}

/// A CRM's webhook says a record was deleted: it leaves the identity index now rather than at
/// the next pull (or when a read of it answers 404). A store error is logged: the pull's
/// removals, or that 404, drop it later.
pub(crate) async fn unindex_deleted(core: &Core, tenant: &Tenant, record_id: &str) {
    if let Err(e) = core.store.unindex_record(tenant.id(), record_id).await {
        tracing::warn!(tenant = %tenant.id(), error = %e, "could not drop a deleted record from the identity index");
    }
}

/// A CRM's webhook says record `from` was merged into `to`: its index rows point at `to` now.
pub(crate) async fn repoint_merged(core: &Core, tenant: &Tenant, from: &str, to: &str, now: jiff::Timestamp) {
    if let Err(e) = core.store.repoint_record(tenant.id(), from, to, now.as_millisecond()).await {
        tracing::warn!(tenant = %tenant.id(), error = %e, "could not repoint a merged record in the identity index");
    }
}

/// An accepted CRM event, applied once: its delivery `key` is recorded for `vendor` first
/// (`None` when it was seen before — a redelivery), then the callers it concerns are refreshed;
/// `Some(live calls notified)`. A store error records nothing and applies the event anyway:
/// applying twice only re-reads a context, better than dropping the change.
pub(crate) async fn apply_once(
    core: &Arc<Core>,
    vendor: &str,
    key: &str,
    tenant: &Arc<Tenant>,
    affected: &Affected,
    now: jiff::Timestamp,
) -> Option<usize> {
    match core.store.record_inbound_delivery(vendor, key, Some(tenant.id()), now).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => tracing::warn!(error = %e, "could not record an inbound event; applying it anyway"),
    }
    Some(refresh_callers(core, tenant, affected).await)
}

/// Applies one CRM change: tells the other instances on a shared PostgreSQL store (which apply
/// it with [`refresh_callers_here`], `crate::invalidation`), then applies it here. Returns how
/// many of this instance's live calls were notified.
pub async fn refresh_callers(core: &Arc<Core>, tenant: &Arc<Tenant>, affected: &Affected) -> usize {
    core.store.publish(tenant.id(), crate::invalidation::what_of(affected)).await;
    refresh_callers_here(core, tenant, affected).await
}

/// Applies one CRM change on this instance: drops the cached contexts it concerns and re-reads
/// the context of the tenant's live calls it concerns, pushing the fresh one where it differs.
/// Returns how many live calls were notified.
pub async fn refresh_callers_here(core: &Arc<Core>, tenant: &Arc<Tenant>, affected: &Affected) -> usize {
    core.context.invalidate_where(tenant.id(), |ctx| affected.concerns(ctx)).await;
    let mut notified = 0;
    for session in core.sessions.live_for_tenant(tenant.id()) {
        if session.is_ended() {
            continue;
        }
        let Some(e164) = session.caller_e164().map(str::to_owned) else { continue };
        let concerned = match session.context_now() {
            Some(ctx) => affected.concerns(&ctx) || affected.concerns_number(&e164),
            // The prefetch is still running: it may have read the record before the change.
            None => true,
        };
        if !concerned {
            continue;
        }
        core.context.invalidate(tenant.id(), &e164).await;
        let fresh = match tokio::time::timeout(REFRESH_DEADLINE, core.context.fetch(tenant, &session.caller)).await {
            Ok(fresh) => fresh,
            Err(_) => {
                tracing::warn!(call_id = %session.call_id, tenant = %tenant.id(), "re-reading the caller's context after a CRM change timed out");
                continue;
            }
        };
        if let CallerContext::Unavailable { reason } = fresh.as_ref() {
            // Keep what the call has: an outage is not news about the caller.
            tracing::warn!(call_id = %session.call_id, tenant = %tenant.id(), %reason, "could not re-read the caller's context after a CRM change");
            continue;
        }
        if session.replace_context(fresh) {
            notified += 1;
        }
    }
    notified
}
