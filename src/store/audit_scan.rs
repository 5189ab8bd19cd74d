//! The queries behind `callside audit` (`crate::audit`): a tenant's write-back steps of the calls
//! in a window with the times they settled, and the inbound deliveries it accepted. Tenant-scoped
//! like every query; read-only.

use jiff::Timestamp;
use sqlx::Row;

use super::{Store, StoreError, ms};

/// One write-back step of a call in the window, with the times the sync latency is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    pub call_id: String,
    pub kind: String,
    /// `pending | done | dead | parked`
    pub status: String,
    pub attempts: i64,
    /// When the step last changed (for a done step: when it was written), ms.
    pub updated_at: i64,
    /// When the call was closed (the plan's commit: the hangup), ms.
    pub call_ended_at: Option<i64>,
}

/// Inbound deliveries the store kept for a tenant, counted per vendor and kind of key
/// (`event`: a HubSpot event applied once, `channel`: a Google push message, `conflict`: a calendar
/// conflict turned into a staff task).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InboundCount {
    pub vendor: String,
    pub kind: String,
    pub count: i64,
}

impl Store {
    /// The steps of the tenant's calls that started in `[from, to)`, by call and sequence.
    pub async fn step_outcomes_between(
        &self,
        tenant: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<StepOutcome>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.call_id, s.kind, s.status, s.attempts, s.updated_at, c.ended_at
             FROM steps s JOIN calls c ON c.call_id = s.call_id
             WHERE c.tenant = $1 AND s.tenant = $1 AND c.started_at >= $2 AND c.started_at < $3
             ORDER BY c.started_at, s.call_id, s.seq",
        )
        .bind(tenant)
        .bind(ms(from))
        .bind(ms(to))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StepOutcome {
                    call_id: r.try_get("call_id")?,
                    kind: r.try_get("kind")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    updated_at: r.try_get("updated_at")?,
                    call_ended_at: r.try_get("ended_at")?,
                })
            })
            .collect()
    }

    /// The inbound deliveries recorded for the tenant in `[from, to)`, per vendor and key kind.
    /// Requests refused before their tenant was known (a bad signature) are not in the store:
    /// they are counted in `callside_inbound_requests{vendor,outcome}` only.
    pub async fn inbound_counts_between(
        &self,
        tenant: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<InboundCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT vendor, delivery_key FROM inbound_deliveries
             WHERE tenant = $1 AND received_at >= $2 AND received_at < $3",
        )
        .bind(tenant)
        .bind(ms(from))
        .bind(ms(to))
        .fetch_all(&self.pool)
        .await?;
        let mut counts: std::collections::BTreeMap<(String, String), i64> = std::collections::BTreeMap::new();
        for r in rows {
            let vendor: String = r.try_get("vendor")?;
            let key: String = r.try_get("delivery_key")?;
            let kind = key.split_once(':').map_or(key.as_str(), |(k, _)| k).to_owned();
            *counts.entry((vendor, kind)).or_default() += 1;
        }
        Ok(counts.into_iter().map(|((vendor, kind), count)| InboundCount { vendor, kind, count }).collect())
    }
}
