//! The one query behind alerts (`crate::alerts`): a tenant's write-back health — attempts and
//! failures in a recent window (from the audit trail), the backlog and its oldest step, parked
//! steps. Tenant-scoped like every query.

use jiff::Timestamp;
use sqlx::Row;

use super::{Store, StoreError, ms};

/// A tenant's write-back health at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantHealth {
    /// CRM step attempts recorded since the window's start.
    pub attempts: i64,
    /// Of those, the ones that failed (retried or dead-lettered).
    pub failures: i64,
    /// Steps waiting in the outbox.
    pub pending: i64,
    /// When the oldest of them was planned (ms since the epoch).
    pub oldest_pending_at: Option<i64>,
    /// Steps parked on a revoked connection.
    pub parked: i64,
}

impl Store {
    /// The tenant's write-back health: attempts and failures since `since`, backlog, parked steps.
    pub async fn tenant_health(&self, tenant: &str, since: Timestamp) -> Result<TenantHealth, StoreError> {
        let result = self.backend.json_text("detail", "result");
        let attempts = sqlx::query(&format!(
            "SELECT COUNT(*) AS n,
                    COALESCE(SUM(CASE WHEN {result} IN ('retry', 'dead') THEN 1 ELSE 0 END), 0) AS failed
             FROM audit WHERE tenant = $1 AND at >= $2 AND action LIKE 'crm.%'"
        ))
        .bind(tenant)
        .bind(ms(since))
        .fetch_one(&self.pool)
        .await?;
        // A pending step's age counts from when its call was closed (the plan's commit).
        let steps = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN s.status = 'pending' THEN 1 ELSE 0 END), 0) AS pending,
                    MIN(CASE WHEN s.status = 'pending' THEN c.ended_at END) AS oldest,
                    COALESCE(SUM(CASE WHEN s.status = 'parked' THEN 1 ELSE 0 END), 0) AS parked
             FROM steps s JOIN calls c ON c.call_id = s.call_id
             WHERE s.tenant = $1 AND s.status IN ('pending', 'parked')",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok(TenantHealth {
            attempts: attempts.try_get("n")?,
            failures: attempts.try_get("failed")?,
            pending: steps.try_get("pending")?,
            oldest_pending_at: steps.try_get("oldest")?,
            parked: steps.try_get("parked")?,
        })
    }
}
