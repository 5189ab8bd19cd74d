//! Deliveries of vendors' change notifications already accepted (migration 0012): the replay
//! and redelivery guard of `crate::inbound`.

use jiff::Timestamp;

use super::{Store, StoreError, ms};

impl Store {
    /// Records a delivery key; `true` the first time, `false` if it was already recorded (a
    /// replay or a redelivery). One statement, so two concurrent deliveries cannot both win.
    pub async fn record_inbound_delivery(
        &self,
        vendor: &str,
        key: &str,
        tenant: Option<&str>,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO inbound_deliveries (vendor, delivery_key, tenant, received_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (vendor, delivery_key) DO NOTHING",
        )
        .bind(vendor)
        .bind(key)
        .bind(tenant)
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the guard's keys recorded before their cutoff: request signatures (`sig:`) before
    /// `signatures_before`, event and push-message keys (`event:`, `channel:`) before
    /// `events_before` (`None`: kept). Any other key (the calendar's conflict-task markers) is
    /// not a replay guard and stays. Returns how many rows were removed. The policy is
    /// `crate::inbound::GuardRetention`.
    pub async fn prune_inbound_deliveries(
        &self,
        signatures_before: Timestamp,
        events_before: Option<Timestamp>,
    ) -> Result<u64, StoreError> {
        // Prefixes without LIKE wildcards (`%`, `_`), so each pattern is a plain prefix match.
        let mut removed =
            sqlx::query("DELETE FROM inbound_deliveries WHERE received_at < $1 AND delivery_key LIKE 'sig:%'")
                .bind(ms(signatures_before))
                .execute(&self.pool)
                .await?
                .rows_affected();
        if let Some(before) = events_before {
            removed += sqlx::query(
                "DELETE FROM inbound_deliveries
                 WHERE received_at < $1 AND (delivery_key LIKE 'event:%' OR delivery_key LIKE 'channel:%')",
            )
            .bind(ms(before))
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(removed)
    }

    /// Whether a delivery key was recorded (tests and the operator).
    pub async fn inbound_delivery_seen(&self, vendor: &str, key: &str) -> Result<bool, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM inbound_deliveries WHERE vendor = $1 AND delivery_key = $2")
                .bind(vendor)
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    async fn old_guard_keys_are_pruned_by_kind_and_the_rest_stay(s: &Store) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let later = t0 + SignedDuration::from_mins(30);
        for (vendor, key, tenant, at) in [
            ("hubspot", "sig:old", None, t0),
            ("hubspot", "sig:new", None, later),
            ("hubspot", "event:1:7", Some("demo"), t0),
            ("pipedrive", "event:9:x", Some("demo"), later),
            ("google", "channel:ch:3", Some("demo"), t0),
            ("calendar", "conflict:k:1:2", Some("demo"), t0),
        ] {
            assert!(s.record_inbound_delivery(vendor, key, tenant, at).await.unwrap(), "{key}");
        }
        let seen = move |vendor: &'static str, key: &'static str| async move {
            s.inbound_delivery_seen(vendor, key).await.unwrap()
        };

        // Signatures only: the cutoff is exclusive, event keys are kept without a cutoff.
        assert_eq!(s.prune_inbound_deliveries(later, None).await.unwrap(), 1);
        assert!(!seen("hubspot", "sig:old").await);
        assert!(seen("hubspot", "sig:new").await, "recorded at the cutoff: kept");
        assert!(seen("hubspot", "event:1:7").await && seen("google", "channel:ch:3").await);
        // A key still in the table still refuses its replay.
        assert!(!s.record_inbound_delivery("hubspot", "sig:new", None, later).await.unwrap());

        // Events and push messages before their cutoff go; the conflict marker is not a guard key.
        assert_eq!(s.prune_inbound_deliveries(later, Some(later)).await.unwrap(), 2);
        assert!(!seen("hubspot", "event:1:7").await && !seen("google", "channel:ch:3").await);
        assert!(seen("pipedrive", "event:9:x").await && seen("hubspot", "sig:new").await);
        assert!(seen("calendar", "conflict:k:1:2").await);
        // A pruned key is new again.
        assert!(s.record_inbound_delivery("hubspot", "event:1:7", Some("demo"), later).await.unwrap());
    }

    both_backends!(old_guard_keys_are_pruned_by_kind_and_the_rest_stay);
}
