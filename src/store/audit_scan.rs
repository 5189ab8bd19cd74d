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

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use serde_json::json;

    use super::*;
    use crate::store::{AttemptResult, NewStep};

    fn step(seq: i64, kind: &str) -> NewStep {
        NewStep { seq, kind: kind.into(), payload: json!({}), depends_on: None, idempotency_key: format!("k{seq}") }
    }

    async fn the_window_s_steps_and_inbound_deliveries_are_read_for_one_tenant_only(s: &Store) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let later = t0 + SignedDuration::from_secs(3);
        s.record_call_start("c1", "demo", Some("+14155550134"), "+12125550100", t0).await.unwrap();
        s.close_call_with_plan("c1", "demo", "end_call", &json!({}), &[step(0, "contact"), step(1, "webhook")], t0)
            .await
            .unwrap();
        s.record_call_start("c9", "other", None, "+12125550199", t0).await.unwrap();
        s.close_call_with_plan("c9", "other", "end_call", &json!({}), &[step(0, "contact")], t0).await.unwrap();
        let first = s.due_steps(t0, 10).await.unwrap().into_iter().find(|x| x.call_id == "c1").unwrap();
        s.record_attempt(
            &first,
            &AttemptResult::Done { external_id: Some("7".into()) },
            "crm.contact",
            &json!({}),
            later,
        )
        .await
        .unwrap();

        let window = (t0, t0 + SignedDuration::from_secs(60));
        let got = s.step_outcomes_between("demo", window.0, window.1).await.unwrap();
        let outcome = |kind: &str, status: &str, attempts: i64, updated_at: Timestamp| StepOutcome {
            call_id: "c1".into(),
            kind: kind.into(),
            status: status.into(),
            attempts,
            updated_at: ms(updated_at),
            call_ended_at: Some(ms(t0)),
        };
        assert_eq!(got, [outcome("contact", "done", 1, later), outcome("webhook", "pending", 0, t0)]);
        // A window that ends before the call started has none of it.
        assert!(s.step_outcomes_between("demo", t0 - SignedDuration::from_secs(60), t0).await.unwrap().is_empty());

        s.record_inbound_delivery("hubspot", "event:1:7", Some("demo"), t0).await.unwrap();
        s.record_inbound_delivery("hubspot", "event:1:8", Some("demo"), t0).await.unwrap();
        s.record_inbound_delivery("google", "channel:ch:3", Some("demo"), t0).await.unwrap();
        s.record_inbound_delivery("hubspot", "sig:abc", None, t0).await.unwrap();
        s.record_inbound_delivery("hubspot", "event:2:1", Some("other"), t0).await.unwrap();
        s.record_inbound_delivery("hubspot", "event:1:9", Some("demo"), window.1).await.unwrap();
        let counts = s.inbound_counts_between("demo", window.0, window.1).await.unwrap();
        let counts: Vec<(&str, &str, i64)> =
            counts.iter().map(|c| (c.vendor.as_str(), c.kind.as_str(), c.count)).collect();
        assert_eq!(counts, [("google", "channel", 1), ("hubspot", "event", 2)]);
    }

    both_backends!(the_window_s_steps_and_inbound_deliveries_are_read_for_one_tenant_only);
}
