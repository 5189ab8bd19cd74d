//! Rate-limit visibility (issue 9, item 4): per connected account, the budget left in each lane,
//! the write-back backlog waiting on it, the age of its oldest step and when it drains.
//!
//! The drain ETA is the backlog beyond the lane's tokens at hand divided by the lane's sustained
//! rate (`connectors::rate`: `100 - live_reserve_percent` % of the account's limit). It counts one
//! request per step, so it is a lower bound: a contact step that searches before it creates sends
//! two or three. The backlog is the tenant's CRM write-back (every step writes to the CRM); the
//! calendar's budget is shown for its live reads and has no backlog.

use serde::Serialize;

use crate::connectors::rate::BudgetView;
use crate::observe::AccountLabels;
use crate::session::Core;
use crate::store::StoreError;
use crate::tenant::Tenant;

/// One account's budget and the backlog drawing on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitRow {
    /// `crm` or `calendar`.
    pub role: &'static str,
    #[serde(flatten)]
    pub budget: BudgetView,
    /// Whether the account is metered at all (`requests_per_10s` 0, or an emulator: no).
    pub metered: bool,
    /// Write-back steps waiting for this account.
    pub backlog: i64,
    /// Seconds since the oldest of them was planned.
    pub oldest_age_secs: Option<i64>,
    /// Seconds until the backlog drains at the lane's rate; `None` when unmetered (as fast as
    /// the vendor answers) and 0 with no backlog.
    pub drain_eta_secs: Option<f64>,
}

/// The tenant's accounts (CRM, then calendar), at the injected clock's now.
pub async fn for_tenant(core: &Core, tenant: &Tenant) -> Result<Vec<RateLimitRow>, StoreError> {
    let now = core.clock.now();
    let health = core.store.tenant_health(tenant.id(), now).await?;
    let oldest_age_secs = health.oldest_pending_at.map(|at| ((now.as_millisecond() - at) / 1000).max(0));
    let mut rows = Vec::with_capacity(2);
    for (role, section) in [("crm", &tenant.config.crm), ("calendar", &tenant.config.calendar)] {
        let per_10s = section.requests_per_10s();
        let budget = core.budgets.view(&section.vendor, tenant.id(), per_10s);
        let backlog = if role == "crm" { health.pending } else { 0 };
        let metered = per_10s > 0;
        let drain_eta_secs = metered.then(|| {
            let beyond = (backlog as f64 - budget.lane_remaining.max(0.0).floor()).max(0.0);
            beyond / budget.lane_per_sec
        });
        rows.push(RateLimitRow {
            role,
            budget,
            metered,
            backlog,
            oldest_age_secs: if role == "crm" { oldest_age_secs } else { None },
            drain_eta_secs,
        });
    }
    Ok(rows)
}

/// Every tenant's rows, written into the scrape's gauges (`/metrics`).
pub async fn export(core: &Core) -> Result<(), StoreError> {
    let m = &core.metrics;
    let mut oldest = 0i64;
    for tenant in core.tenants.all() {
        for row in for_tenant(core, &tenant).await? {
            oldest = oldest.max(row.oldest_age_secs.unwrap_or(0));
            if !row.metered {
                continue;
            }
            let labels = |lane: &str| AccountLabels {
                vendor: row.budget.vendor.clone(),
                account: row.budget.account.clone(),
                lane: lane.to_owned(),
            };
            m.rate_budget_remaining.get_or_create(&labels("shared")).set(row.budget.remaining);
            m.rate_budget_remaining.get_or_create(&labels("writeback")).set(row.budget.lane_remaining);
            if let Some(eta) = row.drain_eta_secs {
                m.writeback_drain_eta.get_or_create(&labels("writeback")).set(eta);
            }
        }
    }
    m.writeback_backlog_age.set(oldest as f64);
    Ok(())
}

/// "2 min 5 s" for the console.
pub fn human_secs(secs: f64) -> String {
    let s = secs.ceil() as i64;
    match s {
        0 => "now".to_owned(),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}
