//! The identity index's incremental pull: each tenant's contacts changed since the last pull,
//! page by page, into the index (phones as E.164, emails normalized), and the watermark moved to
//! the newest change seen. Runs at start and then every `identity.pull_interval_secs`, on the
//! injected clock.
//!
//! The pull is also the inbound sync's polling safety net (issue 12): the records a pull sees
//! changed since the previous watermark are handed to an [`OnChanged`] hook (the application
//! passes `crate::inbound::refresh_on_pull`, which drops cached contexts showing them and
//! re-reads live calls they concern), so a missed webhook — or a vendor without webhooks,
//! Salesforce here — reaches live calls by the next pull at the latest. This module knows nothing
//! of sessions: the hook is the seam.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::connectors::ConnectorError;
use crate::identity::{ParsedPhone, Phone, normalize_email};
use crate::store::{Store, StoreError};
use crate::tenant::{Tenant, Tenants};

/// Pages per pull at most: a safety bound (100 contacts a page), the next pull goes on.
const MAX_PAGES: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    pub records: usize,
    pub pages: usize,
    pub watermark: Option<Timestamp>,
    /// Records changed after the watermark the pull started from (empty on a first, full pull:
    /// nothing is known to have *changed* then), each once, oldest change first; records
    /// removed (deleted, merged away) come first.
    pub changed: Vec<ChangedRecord>,
    /// Records deleted or merged away in the CRM since the last pull, dropped from the index
    /// or repointed to their survivor.
    pub removed: usize,
}

/// A record a pull saw changed: its id and its phones in E.164 (a live call from one of these
/// numbers may now match it, or no longer match it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRecord {
    pub id: String,
    pub numbers: Vec<String>,
}

/// What a pull hands its changed records to (see the module comment).
pub type OnChanged =
    Arc<dyn Fn(Arc<Tenant>, Vec<ChangedRecord>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The `identity_sync` key of a vendor's removals window (the start of the next "deleted since"
/// question), beside the vendor's own change watermark.
fn removals_key(vendor: &str) -> String {
    format!("{vendor}:removed")
}

/// One pull for one tenant: removals first (a record deleted, then restored within the window,
/// is re-added by the change pull that follows), then changes.
pub async fn pull_once(store: &Store, tenant: &Tenant, now: Timestamp) -> Result<PullReport, PullError> {
    let vendor = tenant.crm.vendor();
    let start =
        store.identity_watermark(tenant.id(), vendor).await?.and_then(|ms| Timestamp::from_millisecond(ms).ok());
    let mut report = PullReport { watermark: start, ..Default::default() };
    let removals = pull_removals(store, tenant, start, now, &mut report).await?;
    // The vendor's delete log no longer covers the window: list everything, then drop what the
    // listing did not refresh.
    let resync = removals == Removals::Incomplete;
    let mut since = if resync { None } else { start };
    let mut finished = false;
    let mut cursor: Option<String> = None;
    let mut in_query = 0usize;
    while report.pages < MAX_PAGES {
        let page = tenant.crm.contacts_changed_since(since, cursor.as_deref()).await?;
        report.pages += 1;
        for c in &page.contacts {
            let phones: Vec<String> = c
                .phones
                .iter()
                .filter_map(|raw| match Phone::parse(raw, tenant.config.default_region) {
                    ParsedPhone::Number(p) => Some(p.e164),
                    _ => None,
                })
                .collect();
            let email = c.email.as_deref().and_then(normalize_email);
            store.index_record(tenant.id(), &c.id, &phones, email.as_deref(), now.as_millisecond()).await?;
            // At or after the starting watermark. Vendors stamp in whole seconds (Pipedrive) or
            // milliseconds, so a change in the watermark's own instant after the previous pull
            // looks like the record that pull saw: it is reported again rather than missed. The
            // cost is a re-read, each pull, of live calls showing the newest record.
            let after_start = match (start, c.updated_at) {
                (Some(start), Some(at)) => at >= start,
                // A vendor that gives no modification time: every record it lists is news.
                (Some(_), None) => true,
                (None, _) => false,
            };
            if after_start {
                report.changed.push(ChangedRecord { id: c.id.clone(), numbers: phones.clone() });
            }
        }
        report.records += page.contacts.len();
        in_query += page.contacts.len();
        if let Some(newest) = page.newest {
            report.watermark = Some(report.watermark.map_or(newest, |w| w.max(newest)));
        }
        let cap = tenant.crm.pull_query_cap();
        match page.next_cursor {
            Some(next) if cap.is_none_or(|cap| in_query < cap) => cursor = Some(next),
            Some(_) => {
                // Past the vendor's per-query cap: a new query from the newest change seen.
                since = report.watermark;
                cursor = None;
                in_query = 0;
            }
            None => {
                finished = true;
                break;
            }
        }
    }
    if resync && finished {
        for (id, numbers) in store.prune_unrefreshed(tenant.id(), now.as_millisecond()).await? {
            report.removed += 1;
            report.changed.push(ChangedRecord { id, numbers });
        }
    }
    // A record changed twice during the pull is listed twice: keep its latest numbers, once.
    let mut seen = std::collections::HashSet::new();
    report.changed.reverse();
    report.changed.retain(|r| seen.insert(r.id.clone()));
    report.changed.reverse();
    store
        .set_identity_watermark(
            tenant.id(),
            vendor,
            report.watermark.map(|w| w.as_millisecond()),
            report.records as i64,
            now.as_millisecond(),
        )
        .await?;
    // After a resync, removals are asked from its time on (the full listing showed the state as
    // of then); one cut short by the page bound resyncs again next time.
    let next_window = match removals {
        Removals::Asked(next) => next,
        Removals::Incomplete if finished => Some(now),
        Removals::Incomplete | Removals::NotAsked => None,
    };
    if next_window.is_some() {
        let next_ms = next_window.map(|t| t.as_millisecond());
        store.set_identity_watermark(tenant.id(), &removals_key(vendor), next_ms, 0, now.as_millisecond()).await?;
    }
    Ok(report)
}

/// What [`pull_removals`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removals {
    /// The vendor cannot list removals (or this is the first pull, which lists everything).
    NotAsked,
    /// Applied; the next window starts here (`None`: where this one started).
    Asked(Option<Timestamp>),
    /// The vendor's log does not reach back to the window's start.
    Incomplete,
}

/// Applies the records deleted or merged away since the last pull to the index: a deleted one
/// leaves it, a merged one points at the survivor; each is reported changed, with the phones
/// it held, so cached contexts and live calls showing it are refreshed.
async fn pull_removals(
    store: &Store,
    tenant: &Tenant,
    start: Option<Timestamp>,
    now: Timestamp,
    report: &mut PullReport,
) -> Result<Removals, PullError> {
    let vendor = tenant.crm.vendor();
    let key = removals_key(vendor);
    let window = store.identity_watermark(tenant.id(), &key).await?.and_then(|ms| Timestamp::from_millisecond(ms).ok());
    // A first pull reads everything there is: removals are asked from its time on. A store
    // written before removals were pulled asks from the change watermark.
    let Some(since) = window.or(start) else { return Ok(Removals::Asked(Some(now))) };
    let Some(page) = tenant.crm.contacts_removed_since(since, now).await? else { return Ok(Removals::NotAsked) };
    if !page.complete {
        return Ok(Removals::Incomplete);
    }
    for removed in page.removed {
        let numbers = match &removed.merged_into {
            Some(survivor) => store.repoint_record(tenant.id(), &removed.id, survivor, now.as_millisecond()).await?,
            None => store.unindex_record(tenant.id(), &removed.id).await?,
        };
        report.removed += 1;
        report.changed.push(ChangedRecord { id: removed.id, numbers });
    }
    Ok(Removals::Asked(page.covered_until.or(Some(since))))
}

/// Pulls every tenant now and then every `interval`, until `stop`. Each finished round bumps
/// the returned counter (an explicit signal for tests and the console).
pub fn spawn(
    store: Store,
    tenants: Arc<Tenants>,
    clock: SharedClock,
    interval: SignedDuration,
    stop: CancellationToken,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<u64>) {
    let (tx, rx) = watch::channel(0u64);
    (spawn_with(store, tenants, clock, interval, stop, None, tx, None), rx)
}

/// [`spawn`] with the hook that applies each pull's changed records, counting rounds on `rounds`,
/// each round run only while `leader` (when given) holds the job's lease (`crate::leader`).
#[allow(clippy::too_many_arguments)]
pub fn spawn_with(
    store: Store,
    tenants: Arc<Tenants>,
    clock: SharedClock,
    interval: SignedDuration,
    stop: CancellationToken,
    on_changed: Option<OnChanged>,
    rounds: watch::Sender<u64>,
    leader: Option<crate::leader::JobGate>,
) -> tokio::task::JoinHandle<()> {
    let tx = rounds;
    tokio::spawn(async move {
        loop {
            // The next round is due an interval after this one started (read before the lease
            // is decided, so a test that advances the clock on that signal wakes the next one).
            let next = clock.now() + interval;
            // One instance pulls for the cluster: N pulls would spend N times the vendor's rate
            // budget; what the leader sees changed reaches the others' live calls over the bus.
            if crate::leader::leads(leader.as_ref()).await {
                for tenant in tenants.all() {
                    // Background work: metered in the write-back lane, never ahead of live calls.
                    match crate::connectors::rate::writeback_lane(pull_once(&store, &tenant, clock.now())).await {
                        Ok(r) => {
                            tracing::debug!(tenant = %tenant.id(), records = r.records, changed = r.changed.len(), "identity index pulled");
                            if let (Some(hook), false) = (&on_changed, r.changed.is_empty()) {
                                hook(tenant.clone(), r.changed).await;
                            }
                        }
                        Err(e) => tracing::warn!(tenant = %tenant.id(), error = %e, "identity index pull failed"),
                    }
                }
                tx.send_modify(|n| *n += 1);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = clock.sleep_until(next) => {}
            }
        }
    })
}
