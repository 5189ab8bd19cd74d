//! Queries behind the operator console and its JSON API (issue 9): a tenant's calls in a time
//! range with their steps, the audit trail with times, and the operator actions that put a call's
//! write-back back into the outbox (re-sync, dead-letter replay). Every query is tenant-scoped.

use jiff::Timestamp;
use serde_json::Value;
use sqlx::Row;

use super::{CallRow, Store, StoreError, ms};

/// One audit entry with its id, time and step.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub step_id: Option<i64>,
    pub at: i64,
    pub action: String,
    pub detail: Value,
}

fn audit_row(r: &sqlx::any::AnyRow) -> Result<AuditRow, StoreError> {
    let detail: String = r.try_get("detail")?;
    Ok(AuditRow {
        id: r.try_get("id")?,
        step_id: r.try_get("step_id")?,
        at: r.try_get("at")?,
        action: r.try_get("action")?,
        detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
    })
}

impl Store {
    /// The tenant's calls that started in `[from, to)`, oldest first.
    pub async fn calls_started_between(
        &self,
        tenant: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<CallRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT call_id, tenant, caller, started_at, ended_at, end_reason, sync_status, outcome
             FROM calls WHERE tenant = $1 AND started_at >= $2 AND started_at < $3 ORDER BY started_at, call_id",
        )
        .bind(tenant)
        .bind(ms(from))
        .bind(ms(to))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let outcome: Option<String> = r.try_get("outcome")?;
                Ok(CallRow {
                    call_id: r.try_get("call_id")?,
                    tenant: r.try_get("tenant")?,
                    caller: r.try_get("caller")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    end_reason: r.try_get("end_reason")?,
                    sync_status: r.try_get("sync_status")?,
                    outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
                })
            })
            .collect()
    }

    /// The tenant's audit entries with `action` since `since`, oldest first, with their call.
    pub async fn audit_entries_since(
        &self,
        tenant: &str,
        action: &str,
        since: Timestamp,
    ) -> Result<Vec<(Option<String>, AuditRow)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, call_id, step_id, at, action, detail FROM audit
             WHERE tenant = $1 AND action = $2 AND at >= $3 ORDER BY id",
        )
        .bind(tenant)
        .bind(action)
        .bind(ms(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("call_id")?, audit_row(r)?))).collect()
    }

    /// The steps of many calls at once (for a day view), grouped by the caller.
    pub async fn steps_for_calls(&self, tenant: &str, call_ids: &[String]) -> Result<Vec<super::StepRow>, StoreError> {
        let mut out = Vec::new();
        // Both backends' bound-parameter limits are far above a day's calls per chunk.
        for chunk in call_ids.chunks(200) {
            let marks = super::placeholders(2, chunk.len());
            let sql = format!(
                "SELECT {}
                 FROM steps s LEFT JOIN steps p ON p.id = s.depends_on
                 WHERE s.tenant = $1 AND s.call_id IN ({marks}) ORDER BY s.call_id, s.seq",
                super::STEP_COLUMNS
            );
            let mut q = sqlx::query(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(super::step_from_row(r)?);
            }
        }
        Ok(out)
    }

    /// Per call, how many property writes the CRM rejected (the write-back rules' field results).
    pub async fn rejected_field_counts(
        &self,
        tenant: &str,
        call_ids: &[String],
    ) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for chunk in call_ids.chunks(200) {
            let marks = super::placeholders(2, chunk.len());
            let sql = format!(
                "SELECT call_id, COUNT(*) AS n FROM field_writes
                 WHERE tenant = $1 AND status = 'rejected' AND call_id IN ({marks}) GROUP BY call_id"
            );
            let mut q = sqlx::query(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(r.try_get("call_id")?, r.try_get("n")?);
            }
        }
        Ok(out)
    }

    /// The objects the write-back created, as (call id, object type, object id), for many calls.
    pub async fn created_objects_for_calls(
        &self,
        tenant: &str,
        call_ids: &[String],
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in call_ids.chunks(200) {
            let marks = super::placeholders(2, chunk.len());
            let sql = format!(
                "SELECT call_id, object_type, object_id FROM created_objects
                 WHERE tenant = $1 AND call_id IN ({marks}) ORDER BY at"
            );
            let mut q = sqlx::query(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((r.try_get("call_id")?, r.try_get("object_type")?, r.try_get("object_id")?));
            }
        }
        Ok(out)
    }

    /// The call's audit trail with ids and times, oldest first.
    pub async fn audit_rows_for_call(&self, tenant: &str, call_id: &str) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, step_id, at, action, detail FROM audit WHERE tenant = $1 AND call_id = $2 ORDER BY id",
        )
        .bind(tenant)
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptResult, NewStep, Requeue};
    use serde_json::json;

    fn step(seq: i64, depends_on: Option<i64>) -> NewStep {
        NewStep { seq, kind: "contact".into(), payload: json!({}), depends_on, idempotency_key: format!("k{seq}") }
    }

    async fn replay_requeues_dead_and_blocked_steps_and_resync_requeues_everything(s: &Store) {
        let t0: Timestamp = "2026-11-22T15:00:00Z".parse().unwrap();
        s.record_call_start("c1", "demo", None, "+12125550100", t0).await.unwrap();
        // An open call has no plan: nothing to requeue.
        assert_eq!(s.requeue_call(Some("demo"), "c1", Requeue::All, "t", &json!({}), t0).await.unwrap(), Some(0));
        s.close_call_with_plan("c1", "demo", "end_call", &json!({}), &[step(0, None), step(1, Some(0))], t0)
            .await
            .unwrap();
        let first = s.due_steps(t0, 10).await.unwrap().remove(0);
        s.record_attempt(&first, &AttemptResult::Dead { error: "400".into() }, "crm.contact", &json!({}), t0)
            .await
            .unwrap();
        assert_eq!(s.call("demo", "c1").await.unwrap().unwrap().sync_status, "failed");
        // Another tenant cannot requeue it.
        assert_eq!(s.requeue_call(Some("other"), "c1", Requeue::Failed, "t", &json!({}), t0).await.unwrap(), None);
        assert_eq!(
            s.requeue_call(Some("demo"), "c1", Requeue::Failed, "console.replay", &json!({}), t0).await.unwrap(),
            Some(2)
        );
        assert_eq!(s.call("demo", "c1").await.unwrap().unwrap().sync_status, "pending");
        assert_eq!(s.due_steps(t0, 10).await.unwrap().len(), 1);
        // Nothing dead any more: a replay is a no-op and leaves no audit entry.
        assert_eq!(
            s.requeue_call(Some("demo"), "c1", Requeue::Failed, "console.replay", &json!({}), t0).await.unwrap(),
            Some(0)
        );
        let audit = s.audit_rows_for_call("demo", "c1").await.unwrap();
        assert_eq!(
            audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
            vec!["crm.contact", "writeback.dependants_dead", "console.replay"]
        );
        let day = s.calls_started_between("demo", t0, t0 + jiff::SignedDuration::from_secs(1)).await.unwrap();
        assert_eq!(day.len(), 1);
        assert!(
            s.calls_started_between("other", t0, t0 + jiff::SignedDuration::from_secs(1)).await.unwrap().is_empty()
        );
        let steps = s.steps_for_calls("demo", &["c1".into()]).await.unwrap();
        assert_eq!(steps.len(), 2);
    }

    both_backends!(replay_requeues_dead_and_blocked_steps_and_resync_requeues_everything);
}
