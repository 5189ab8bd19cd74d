//! Store queries for the write-back rules: held plans (shadow and review modes), field writes
//! with the values they replaced, hybrid-field conflicts and the objects a call created.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;

use super::{NewStep, Store, StoreError, ms};

/// A plan kept out of the outbox: shown (shadow) or waiting for an operator (review).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldPlan {
    pub call_id: String,
    pub tenant: String,
    pub mode: String,
    pub status: String,
    pub steps: Value,
    pub decided_by: Option<String>,
}

/// One recorded property write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldWriteRow {
    pub id: i64,
    pub step_id: i64,
    pub object_type: String,
    pub object_id: String,
    pub property: String,
    pub before_value: Option<String>,
    pub after_value: String,
    pub status: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictRow {
    pub id: i64,
    pub call_id: String,
    pub object_id: String,
    pub property: String,
    pub ai_value: String,
    pub crm_value: String,
    pub edited_at: i64,
    pub edited_by: Option<String>,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreatedObjectRow {
    pub object_type: String,
    pub object_id: String,
    pub step_id: i64,
    pub undone: bool,
}

/// What deciding a held plan did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// Approved: its steps are in the outbox now.
    Approved {
        steps: usize,
    },
    Rejected,
    /// No plan awaiting review for that call (unknown, shadow, or already decided).
    NotAwaiting,
}

fn steps_json(steps: &[NewStep]) -> Value {
    Value::Array(
        steps
            .iter()
            .map(|s| {
                json!({"seq": s.seq, "kind": s.kind, "payload": s.payload, "depends_on": s.depends_on,
                       "idempotency_key": s.idempotency_key})
            })
            .collect(),
    )
}

fn steps_from_json(v: &Value) -> Result<Vec<NewStep>, StoreError> {
    let bad = || StoreError::Other("held plan steps are malformed".into());
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|s| {
            Ok(NewStep {
                seq: s["seq"].as_i64().ok_or_else(bad)?,
                kind: s["kind"].as_str().ok_or_else(bad)?.to_owned(),
                payload: s["payload"].clone(),
                depends_on: s["depends_on"].as_i64(),
                idempotency_key: s["idempotency_key"].as_str().ok_or_else(bad)?.to_owned(),
            })
        })
        .collect()
}

impl Store {
    /// Closes the call and keeps its plan out of the outbox, in one transaction: `shadow` (never
    /// written) or `review` (written once approved). The call's sync status says which. Returns
    /// `false` (writing nothing) if the call was already closed.
    #[allow(clippy::too_many_arguments)]
    pub async fn close_call_with_held_plan(
        &self,
        call_id: &str,
        tenant: &str,
        end_reason: &str,
        outcome: &Value,
        steps: &[NewStep],
        review: bool,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let now = ms(at);
        let (mode, status) = if review { ("review", "awaiting_review") } else { ("shadow", "shadow") };
        let sync_status = if steps.is_empty() { "synced" } else { status };
        let mut tx = self.pool.begin().await?;
        let closed = sqlx::query(
            "UPDATE calls SET ended_at = $1, end_reason = $2, outcome = $3, sync_status = $4
             WHERE call_id = $5 AND tenant = $6 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(end_reason)
        .bind(outcome.to_string())
        .bind(sync_status)
        .bind(call_id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        if closed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if !steps.is_empty() {
            sqlx::query(
                "INSERT INTO held_plans (call_id, tenant, mode, steps, status, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(call_id)
            .bind(tenant)
            .bind(mode)
            .bind(steps_json(steps).to_string())
            .bind(status)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn held_plan(&self, tenant: &str, call_id: &str) -> Result<Option<HeldPlan>, StoreError> {
        let row = sqlx::query(
            "SELECT call_id, tenant, mode, status, steps, decided_by FROM held_plans WHERE tenant = $1 AND call_id = $2",
        )
        .bind(tenant)
        .bind(call_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let steps: String = r.try_get("steps")?;
            Ok(HeldPlan {
                call_id: r.try_get("call_id")?,
                tenant: r.try_get("tenant")?,
                mode: r.try_get("mode")?,
                status: r.try_get("status")?,
                steps: serde_json::from_str(&steps).unwrap_or(Value::Null),
                decided_by: r.try_get("decided_by")?,
            })
        })
        .transpose()
    }

    /// Plans waiting for an operator, oldest first.
    pub async fn plans_awaiting_review(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT call_id FROM held_plans WHERE tenant = $1 AND status = 'awaiting_review' ORDER BY created_at",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Approves (its steps enter the outbox, the call becomes pending) or rejects a plan awaiting
    /// review, in one transaction; a plan is decided once.
    pub async fn decide_held_plan(
        &self,
        tenant: &str,
        call_id: &str,
        approve: bool,
        by: &str,
        at: Timestamp,
    ) -> Result<Decided, StoreError> {
        let now = ms(at);
        let mut tx = self.pool.begin().await?;
        // Writing first takes the write lock at once (see `append_step`).
        let decided = sqlx::query(
            "UPDATE held_plans SET status = $1, decided_by = $2, decided_at = $3
             WHERE tenant = $4 AND call_id = $5 AND status = 'awaiting_review' RETURNING steps",
        )
        .bind(if approve { "approved" } else { "rejected" })
        .bind(by)
        .bind(now)
        .bind(tenant)
        .bind(call_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = decided else {
            tx.rollback().await?;
            return Ok(Decided::NotAwaiting);
        };
        if !approve {
            sqlx::query("UPDATE calls SET sync_status = 'rejected' WHERE call_id = $1 AND tenant = $2")
                .bind(call_id)
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO audit (tenant, call_id, at, action, detail) VALUES ($1, $2, $3, 'plan.rejected', $4)",
            )
            .bind(tenant)
            .bind(call_id)
            .bind(now)
            .bind(json!({"by": by}).to_string())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Decided::Rejected);
        }
        let steps: String = row.try_get("steps")?;
        let steps = steps_from_json(&serde_json::from_str(&steps).map_err(|e| StoreError::Other(e.to_string()))?)?;
        let mut ids: Vec<(i64, i64)> = Vec::with_capacity(steps.len());
        for s in &steps {
            let depends_on = s
                .depends_on
                .map(|seq| {
                    ids.iter()
                        .find(|(q, _)| *q == seq)
                        .map(|(_, id)| *id)
                        .ok_or_else(|| StoreError::Other(format!("step {} depends on unknown seq {seq}", s.seq)))
                })
                .transpose()?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO steps (call_id, tenant, seq, kind, payload, depends_on, idempotency_key, next_attempt_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .bind(call_id)
            .bind(tenant)
            .bind(s.seq)
            .bind(&s.kind)
            .bind(s.payload.to_string())
            .bind(depends_on)
            .bind(&s.idempotency_key)
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            ids.push((s.seq, id));
        }
        sqlx::query("UPDATE calls SET sync_status = 'pending' WHERE call_id = $1 AND tenant = $2")
            .bind(call_id)
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO audit (tenant, call_id, at, action, detail) VALUES ($1, $2, $3, 'plan.approved', $4)")
            .bind(tenant)
            .bind(call_id)
            .bind(now)
            .bind(json!({"by": by, "steps": steps.len()}).to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Decided::Approved { steps: steps.len() })
    }

    /// Records a property write about to be sent, with the value it replaces. A retried step
    /// keeps the first record (its "before" is the value the call found, not our own).
    #[allow(clippy::too_many_arguments)]
    pub async fn record_field_intent(
        &self,
        tenant: &str,
        call_id: &str,
        step_id: i64,
        object_type: &str,
        object_id: &str,
        property: &str,
        before: Option<&str>,
        after: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO field_writes (tenant, call_id, step_id, object_type, object_id, property, before_value,
                                       after_value, status, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'sending', $9)
             ON CONFLICT (step_id, object_id, property) DO UPDATE SET after_value = excluded.after_value
             WHERE field_writes.status = 'sending'",
        )
        .bind(tenant)
        .bind(call_id)
        .bind(step_id)
        .bind(object_type)
        .bind(object_id)
        .bind(property)
        .bind(before)
        .bind(after)
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_field_status(
        &self,
        step_id: i64,
        object_id: &str,
        property: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE field_writes SET status = $1, reason = $2 WHERE step_id = $3 AND object_id = $4 AND property = $5",
        )
        .bind(status)
        .bind(reason)
        .bind(step_id)
        .bind(object_id)
        .bind(property)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn field_writes_for_call(&self, tenant: &str, call_id: &str) -> Result<Vec<FieldWriteRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, step_id, object_type, object_id, property, before_value, after_value, status, reason
             FROM field_writes WHERE tenant = $1 AND call_id = $2 ORDER BY id",
        )
        .bind(tenant)
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(FieldWriteRow {
                    id: r.try_get("id")?,
                    step_id: r.try_get("step_id")?,
                    object_type: r.try_get("object_type")?,
                    object_id: r.try_get("object_id")?,
                    property: r.try_get("property")?,
                    before_value: r.try_get("before_value")?,
                    after_value: r.try_get("after_value")?,
                    status: r.try_get("status")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn record_conflict(
        &self,
        tenant: &str,
        call_id: &str,
        step_id: i64,
        object_id: &str,
        property: &str,
        ai_value: &str,
        crm_value: &str,
        edited_at: Timestamp,
        edited_by: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO field_conflicts (tenant, call_id, step_id, object_id, property, ai_value, crm_value, edited_at,
                                          edited_by, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (step_id, property) DO NOTHING",
        )
        .bind(tenant)
        .bind(call_id)
        .bind(step_id)
        .bind(object_id)
        .bind(property)
        .bind(ai_value)
        .bind(crm_value)
        .bind(ms(edited_at))
        .bind(edited_by)
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Conflicts of a tenant (all calls) or of one call, open or settled.
    pub async fn conflicts(&self, tenant: &str, call_id: Option<&str>) -> Result<Vec<ConflictRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, call_id, object_id, property, ai_value, crm_value, edited_at, edited_by, status
             FROM field_conflicts WHERE tenant = $1 AND ($2 IS NULL OR call_id = $2) ORDER BY id",
        )
        .bind(tenant)
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conflict_from_row).collect()
    }

    /// One conflict of a tenant, whatever its status.
    pub async fn conflict(&self, tenant: &str, id: i64) -> Result<Option<ConflictRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, call_id, object_id, property, ai_value, crm_value, edited_at, edited_by, status
             FROM field_conflicts WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(conflict_from_row).transpose()
    }

    /// Closes an open conflict with `status` (`kept_crm` / `applied_ai`) and audits it, in one
    /// transaction. False when the conflict was no longer open (another operator was first).
    pub async fn settle_conflict(
        &self,
        tenant: &str,
        id: i64,
        status: &str,
        detail: &Value,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let call_id: Option<String> = sqlx::query_scalar(
            "UPDATE field_conflicts SET status = $1 WHERE tenant = $2 AND id = $3 AND status = 'open' RETURNING call_id",
        )
        .bind(status)
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(call_id) = call_id else {
            return Ok(false);
        };
        sqlx::query(
            "INSERT INTO audit (tenant, call_id, step_id, at, action, detail) VALUES ($1, $2, NULL, $3, $4, $5)",
        )
        .bind(tenant)
        .bind(&call_id)
        .bind(ms(at))
        .bind("conflict.resolved")
        .bind(detail.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn record_created_object(
        &self,
        tenant: &str,
        call_id: &str,
        step_id: i64,
        object_type: &str,
        object_id: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO created_objects (object_type, object_id, tenant, call_id, step_id, at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (object_type, object_id) DO NOTHING",
        )
        .bind(object_type)
        .bind(object_id)
        .bind(tenant)
        .bind(call_id)
        .bind(step_id)
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn created_objects_for_call(
        &self,
        tenant: &str,
        call_id: &str,
    ) -> Result<Vec<CreatedObjectRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT object_type, object_id, step_id, undone_at FROM created_objects WHERE tenant = $1 AND call_id = $2
             ORDER BY step_id",
        )
        .bind(tenant)
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let undone: Option<i64> = r.try_get("undone_at")?;
                Ok(CreatedObjectRow {
                    object_type: r.try_get("object_type")?,
                    object_id: r.try_get("object_id")?,
                    step_id: r.try_get("step_id")?,
                    undone: undone.is_some(),
                })
            })
            .collect()
    }

    pub async fn mark_object_undone(
        &self,
        object_type: &str,
        object_id: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE created_objects SET undone_at = $1 WHERE object_type = $2 AND object_id = $3")
            .bind(ms(at))
            .bind(object_type)
            .bind(object_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn conflict_from_row(r: &sqlx::any::AnyRow) -> Result<ConflictRow, StoreError> {
    Ok(ConflictRow {
        id: r.try_get("id")?,
        call_id: r.try_get("call_id")?,
        object_id: r.try_get("object_id")?,
        property: r.try_get("property")?,
        ai_value: r.try_get("ai_value")?,
        crm_value: r.try_get("crm_value")?,
        edited_at: r.try_get("edited_at")?,
        edited_by: r.try_get("edited_by")?,
        status: r.try_get("status")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<NewStep> {
        vec![
            NewStep {
                seq: 0,
                kind: "contact".into(),
                payload: json!({}),
                depends_on: None,
                idempotency_key: "k0".into(),
            },
            NewStep {
                seq: 1,
                kind: "call_log".into(),
                payload: json!({}),
                depends_on: Some(0),
                idempotency_key: "k1".into(),
            },
        ]
    }

    async fn a_reviewed_plan_enters_the_outbox_only_when_approved_and_only_once(s: &Store) {
        let t0: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
        s.record_call_start("c1", "demo", None, "+1", t0).await.unwrap();
        assert!(s.close_call_with_held_plan("c1", "demo", "end_call", &json!({}), &steps(), true, t0).await.unwrap());
        assert!(!s.close_call_with_held_plan("c1", "demo", "end_call", &json!({}), &steps(), true, t0).await.unwrap());
        assert!(s.due_steps(t0, 10).await.unwrap().is_empty(), "nothing due before approval");
        assert_eq!(s.call("demo", "c1").await.unwrap().unwrap().sync_status, "awaiting_review");
        assert_eq!(s.plans_awaiting_review("demo").await.unwrap(), vec!["c1".to_string()]);
        // Another tenant cannot decide it.
        assert_eq!(s.decide_held_plan("other", "c1", true, "op", t0).await.unwrap(), Decided::NotAwaiting);
        assert_eq!(s.decide_held_plan("demo", "c1", true, "op", t0).await.unwrap(), Decided::Approved { steps: 2 });
        assert_eq!(s.decide_held_plan("demo", "c1", true, "op", t0).await.unwrap(), Decided::NotAwaiting);
        let due = s.due_steps(t0, 10).await.unwrap();
        assert_eq!(due.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(), vec!["contact"], "dependency kept");
        assert_eq!(s.call("demo", "c1").await.unwrap().unwrap().sync_status, "pending");
    }

    async fn a_shadow_plan_is_kept_and_never_due(s: &Store) {
        let t0: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
        s.record_call_start("c1", "demo", None, "+1", t0).await.unwrap();
        s.close_call_with_held_plan("c1", "demo", "end_call", &json!({}), &steps(), false, t0).await.unwrap();
        assert!(s.due_steps(t0, 10).await.unwrap().is_empty());
        let held = s.held_plan("demo", "c1").await.unwrap().unwrap();
        assert_eq!((held.mode.as_str(), held.status.as_str()), ("shadow", "shadow"));
        assert_eq!(held.steps.as_array().unwrap().len(), 2);
        assert_eq!(s.decide_held_plan("demo", "c1", true, "op", t0).await.unwrap(), Decided::NotAwaiting);
    }

    async fn a_retried_field_write_keeps_the_first_before_value(s: &Store) {
        let t0: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
        s.record_field_intent("demo", "c1", 7, "contact", "101", "zip", Some("10001"), "94110", t0).await.unwrap();
        // The retry reads our own value back as the "before": it must not replace the original.
        s.record_field_intent("demo", "c1", 7, "contact", "101", "zip", Some("94110"), "94110", t0).await.unwrap();
        let rows = s.field_writes_for_call("demo", "c1").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].before_value.as_deref(), Some("10001"));
    }

    async fn a_conflict_is_settled_once_by_its_own_tenant_with_an_audit_entry(s: &Store) {
        let t0: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
        s.record_conflict("demo", "c1", 7, "101", "callside_urgency", "high", "low", t0, Some("42"), t0).await.unwrap();
        let id = s.conflicts("demo", Some("c1")).await.unwrap()[0].id;
        assert!(s.conflict("other", id).await.unwrap().is_none(), "another tenant's conflict is not found");
        assert!(!s.settle_conflict("other", id, "kept_crm", &json!({"by": "x"}), t0).await.unwrap());
        assert!(s.settle_conflict("demo", id, "applied_ai", &json!({"by": "op"}), t0).await.unwrap());
        assert!(!s.settle_conflict("demo", id, "kept_crm", &json!({"by": "op2"}), t0).await.unwrap(), "only once");
        assert_eq!(s.conflict("demo", id).await.unwrap().unwrap().status, "applied_ai");
        let audit = s.audit_for_call("demo", "c1").await.unwrap();
        assert_eq!(audit, vec![("conflict.resolved".to_string(), json!({"by": "op"}))]);
    }

    both_backends!(
        a_reviewed_plan_enters_the_outbox_only_when_approved_and_only_once,
        a_shadow_plan_is_kept_and_never_due,
        a_retried_field_write_keeps_the_first_before_value,
        a_conflict_is_settled_once_by_its_own_tenant_with_an_audit_entry
    );
}
