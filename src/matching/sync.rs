//! The identity index's incremental pull: each tenant's contacts changed since the last pull,
//! page by page, into the index (phones as E.164, emails normalized), and the watermark moved to
//! the newest change seen. Runs at start and then every `identity.pull_interval_secs`, on the
//! injected clock.

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
/// Contacts after which a query is restarted from the newest time seen (vendors cap one query:
/// HubSpot at 10,000 results).
const RESTART_AFTER: usize = 9_900;

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
}

/// One pull for one tenant.
pub async fn pull_once(store: &Store, tenant: &Tenant, now: Timestamp) -> Result<PullReport, PullError> {
    let vendor = tenant.crm.vendor();
    let start =
        store.identity_watermark(tenant.id(), vendor).await?.and_then(|ms| Timestamp::from_millisecond(ms).ok());
    let mut report = PullReport { watermark: start, ..Default::default() };
    let mut since = start;
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
        }
        report.records += page.contacts.len();
        in_query += page.contacts.len();
        if let Some(newest) = page.newest {
            report.watermark = Some(report.watermark.map_or(newest, |w| w.max(newest)));
        }
        match page.next_cursor {
            Some(next) if in_query < RESTART_AFTER => cursor = Some(next),
            Some(_) => {
                // Past the vendor's per-query cap: a new query from the newest change seen.
                since = report.watermark;
                cursor = None;
                in_query = 0;
            }
            None => break,
        }
    }
    store
        .set_identity_watermark(
            tenant.id(),
            vendor,
            report.watermark.map(|w| w.as_millisecond()),
            report.records as i64,
            now.as_millisecond(),
        )
        .await?;
    Ok(report)
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
    let task = tokio::spawn(async move {
        loop {
            for tenant in tenants.all() {
                // Background work: metered in the write-back lane, never ahead of live calls.
                match crate::connectors::rate::writeback_lane(pull_once(&store, &tenant, clock.now())).await {
                    Ok(r) => tracing::debug!(tenant = %tenant.id(), records = r.records, "identity index pulled"),
                    Err(e) => tracing::warn!(tenant = %tenant.id(), error = %e, "identity index pull failed"),
                }
            }
            tx.send_modify(|n| *n += 1);
            let next = clock.now() + interval;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = clock.sleep_until(next) => {}
            }
        }
    });
    (task, rx)
}
