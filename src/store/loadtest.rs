//! Read-only queries for the load-test harness's invariant checks (served by the sandbox-only
//! admin endpoint, `crate::sandbox::admin`).

use serde_json::{Value, json};
use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// Every call: (call id, end reason, sync status).
    pub async fn loadtest_call_statuses(&self) -> Result<Vec<(String, Option<String>, String)>, StoreError> {
        let rows = sqlx::query("SELECT call_id, end_reason, sync_status FROM calls").fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get("call_id")?, r.try_get("end_reason")?, r.try_get("sync_status")?)))
            .collect()
    }

    /// Outbox steps by status: `{"pending": n, "done": n, "dead": n}`.
    pub async fn loadtest_step_counts(&self) -> Result<Value, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM steps GROUP BY status").fetch_all(&self.pool).await?;
        let mut out = json!({"pending": 0, "done": 0, "dead": 0});
        for r in rows {
            let status: String = r.try_get("status")?;
            let n: i64 = r.try_get("n")?;
            out[status] = json!(n);
        }
        Ok(out)
    }
}
