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
