//! The outbox's less travelled states: parked steps (their CRM connection was revoked — kept,
//! never dropped, resumed once the connection is re-authorized) and dead letters (visible,
//! replayable). Status values of `steps.status`: `pending | done | dead | parked`.

use jiff::Timestamp;
use serde_json::{Value, json};
use sqlx::{AnyConnection, Row};

use super::{CALL_STATUS_SQL, StepRow, Store, StoreError, ms};

/// Which of a call's steps [`Store::requeue_call`] puts back into the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// The dead-lettered and parked steps, and the steps waiting on them (a replay).
    Failed,
    /// Every step: applying a done step again is safe, since each step writes under its
    /// idempotency key and reuses a recorded external id (a re-sync).
    All,
}

/// A step's retry bookkeeping, for the operator and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSchedule {
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Timestamp,
}

/// A dead-lettered step as the operator sees it (no payload: it may hold personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub step_id: i64,
    pub call_id: String,
    pub tenant: String,
    pub kind: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub updated_at: Timestamp,
}

fn ts(v: i64) -> Timestamp {
    Timestamp::from_millisecond(v).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Store {
    /// Parks a step whose connection was revoked: counted as an attempt, kept out of the due
    /// queue until [`Store::unpark_reauthorized`] (or a replay) puts it back. Its call shows
    /// `parked`. One transaction with the audit entry.
    pub async fn park_step(
        &self,
        step: &StepRow,
        error: &str,
        audit_detail: &Value,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let now = ms(at);
        let mut tx = self.pool.begin().await?;
        // Only while the lease is as the worker read it (see `Store::record_attempt`).
        let parked = sqlx::query(
            "UPDATE steps SET status = 'parked', attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, $1),
                              last_error = $2, updated_at = $3, lease_owner = NULL, lease_until = NULL
             WHERE id = $4 AND COALESCE(lease_owner, '') = $5",
        )
        .bind(now)
        .bind(error)
        .bind(now)
        .bind(step.id)
        .bind(step.lease_owner.as_deref().unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        if parked.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(CALL_STATUS_SQL).bind(&step.call_id).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO audit (tenant, call_id, step_id, at, action, detail) VALUES ($1, $2, $3, $4, 'writeback.parked', $5)")
            .bind(&step.tenant)
            .bind(&step.call_id)
            .bind(step.id)
            .bind(now)
            .bind(audit_detail.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Puts back in the due queue every parked step whose tenant has an active connection that
    /// changed since the step was parked (it was re-authorized). The retry window restarts: the
    /// outage was the grant's, not the vendor's. Returns how many steps resumed.
    pub async fn unpark_reauthorized(&self, at: Timestamp) -> Result<u64, StoreError> {
        let any: i64 = sqlx::query_scalar(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM steps WHERE status = 'parked') THEN 1 ELSE 0 END",
        )
        .fetch_one(&self.pool)
        .await?;
        if any == 0 {
            return Ok(0);
        }
        let now = ms(at);
        let mut tx = self.pool.begin().await?;
        let calls: Vec<String> = sqlx::query_scalar(
            "UPDATE steps SET status = 'pending', next_attempt_at = $1, first_attempt_at = NULL, updated_at = $1
             WHERE status = 'parked' AND EXISTS (
                 SELECT 1 FROM connections c
                 WHERE c.tenant = steps.tenant AND c.status = 'active' AND c.updated_at >= steps.updated_at)
             RETURNING call_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for call in dedup(&calls) {
            sqlx::query(CALL_STATUS_SQL).bind(call).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(calls.len() as u64)
    }

    /// Dead-lettered steps, newest first.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, StoreError> {
        self.steps_in_status(None, "dead", limit).await
    }

    /// One tenant's (or, with `None`, every tenant's) steps in `status` (`dead`, `parked`), newest
    /// first, without payloads.
    pub async fn steps_in_status(
        &self,
        tenant: Option<&str>,
        status: &str,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        // No `$3 IS NULL` test: PostgreSQL cannot type an untyped NULL parameter.
        let scope = if tenant.is_some() { " AND tenant = $3" } else { "" };
        let sql = format!(
            "SELECT id, call_id, tenant, kind, attempts, last_error, updated_at FROM steps
             WHERE status = $1{scope} ORDER BY updated_at DESC, id DESC LIMIT $2"
        );
        let mut query = sqlx::query(&sql).bind(status).bind(limit);
        if let Some(t) = tenant {
            query = query.bind(t);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|r| {
                Ok(DeadLetter {
                    step_id: r.try_get("id")?,
                    call_id: r.try_get("call_id")?,
                    tenant: r.try_get("tenant")?,
                    kind: r.try_get("kind")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    updated_at: ts(r.try_get("updated_at")?),
                })
            })
            .collect()
    }

    /// Puts a call's steps back into the outbox, due now, with a fresh retry window (attempt
    /// counts are kept for the record; idempotency keys are unchanged, so a step the vendor did
    /// apply is not applied twice, and a recorded external id is reused). [`Requeue::Failed`]: the
    /// dead-lettered and parked steps and the steps waiting on them (a replay: the CLI's
    /// `callside replay`, the console's "replay"); [`Requeue::All`]: every step (the console's
    /// "re-sync"). The audit entry (`action`, `detail` plus the requeued step ids) is written in
    /// the same transaction. `tenant` limits it to that tenant's call (the console); the CLI
    /// operates the whole store. Returns `None` for an unknown call, else how many steps were
    /// requeued; 0 changes nothing (no audit entry either) — a call still open has no plan yet.
    pub async fn requeue_call(
        &self,
        tenant: Option<&str>,
        call_id: &str,
        what: Requeue,
        action: &str,
        detail: &Value,
        at: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let now = ms(at);
        let mut tx = self.pool.begin().await?;
        let call = match tenant {
            Some(t) => {
                sqlx::query("SELECT tenant, ended_at FROM calls WHERE call_id = $1 AND tenant = $2")
                    .bind(call_id)
                    .bind(t)
                    .fetch_optional(&mut *tx)
                    .await?
            }
            None => {
                sqlx::query("SELECT tenant, ended_at FROM calls WHERE call_id = $1")
                    .bind(call_id)
                    .fetch_optional(&mut *tx)
                    .await?
            }
        };
        let Some(call) = call else {
            tx.rollback().await?;
            return Ok(None);
        };
        let owner: String = call.try_get("tenant")?;
        let ended: Option<i64> = call.try_get("ended_at")?;
        let failed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM steps WHERE call_id = $1 AND status IN ('dead', 'parked')")
                .bind(call_id)
                .fetch_one(&mut *tx)
                .await?;
        if ended.is_none() || (what == Requeue::Failed && failed == 0) {
            tx.rollback().await?;
            return Ok(Some(0));
        }
        let filter = match what {
            Requeue::Failed => "AND status IN ('dead', 'parked', 'pending')",
            Requeue::All => "",
        };
        let requeued: Vec<i64> = sqlx::query_scalar(&format!(
            "UPDATE steps SET status = 'pending', next_attempt_at = $1, first_attempt_at = NULL, last_error = NULL,
                              updated_at = $1
             WHERE call_id = $2 {filter} RETURNING id"
        ))
        .bind(now)
        .bind(call_id)
        .fetch_all(&mut *tx)
        .await?;
        if requeued.is_empty() {
            tx.rollback().await?;
            return Ok(Some(0));
        }
        sqlx::query(CALL_STATUS_SQL).bind(call_id).execute(&mut *tx).await?;
        let mut detail = detail.clone();
        if let Some(map) = detail.as_object_mut() {
            map.insert("steps".into(), json!(requeued));
        }
        sqlx::query(
            "INSERT INTO audit (tenant, call_id, step_id, at, action, detail) VALUES ($1, $2, NULL, $3, $4, $5)",
        )
        .bind(&owner)
        .bind(call_id)
        .bind(now)
        .bind(action)
        .bind(detail.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(requeued.len() as u64))
    }

    pub async fn step_schedule(&self, step_id: i64) -> Result<Option<StepSchedule>, StoreError> {
        let row = sqlx::query("SELECT status, attempts, next_attempt_at FROM steps WHERE id = $1")
            .bind(step_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(StepSchedule {
                status: r.try_get("status")?,
                attempts: r.try_get("attempts")?,
                next_attempt_at: ts(r.try_get("next_attempt_at")?),
            })
        })
        .transpose()
    }
}

/// Dead-letters every pending step whose parent is dead, transitively (of one call, or of all),
/// without counting an attempt: such a step can never become due (it needs its parent `done`).
/// Each parent gets one `writeback.dependants_dead` audit entry naming it and the steps it took
/// down. A replay of the call puts parent and dependants back together. Returns the calls touched
/// (their status is the caller's to recompute, in the same transaction).
pub(super) async fn dead_letter_dependants(
    conn: &mut AnyConnection,
    call_id: Option<&str>,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut calls = Vec::new();
    loop {
        let rows = sqlx::query(
            "SELECT s.id, s.call_id, s.tenant, p.id AS parent, p.kind AS parent_kind
             FROM steps s JOIN steps p ON p.id = s.depends_on
             WHERE s.status = 'pending' AND p.status = 'dead' AND ($1 IS NULL OR s.call_id = $1)
             ORDER BY p.id, s.id",
        )
        .bind(call_id)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        // Grouped by parent: (parent, kind, call, tenant, dependants).
        let mut groups: Vec<(i64, String, String, String, Vec<i64>)> = Vec::new();
        for r in rows {
            let (id, parent): (i64, i64) = (r.try_get("id")?, r.try_get("parent")?);
            match groups.last_mut() {
                Some(g) if g.0 == parent => g.4.push(id),
                _ => groups.push((
                    parent,
                    r.try_get("parent_kind")?,
                    r.try_get("call_id")?,
                    r.try_get("tenant")?,
                    vec![id],
                )),
            }
        }
        for (parent, parent_kind, call, tenant, ids) in groups {
            for id in &ids {
                sqlx::query(
                    "UPDATE steps SET status = 'dead', last_error = $1, updated_at = $2 WHERE id = $3 AND status = 'pending'",
                )
                .bind(format!("not attempted: step {parent} ({parent_kind}) it depends on was dead-lettered"))
                .bind(now)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query(
                "INSERT INTO audit (tenant, call_id, step_id, at, action, detail)
                 VALUES ($1, $2, $3, $4, 'writeback.dependants_dead', $5)",
            )
            .bind(&tenant)
            .bind(&call)
            .bind(parent)
            .bind(now)
            .bind(json!({"parent_step": parent, "parent_kind": parent_kind, "steps": ids}).to_string())
            .execute(&mut *conn)
            .await?;
            calls.push(call);
        }
    }
    calls.sort();
    calls.dedup();
    Ok(calls)
}

impl Store {
    /// Dead-letters steps left waiting on a dead parent (by a store written before dependants
    /// were dead-lettered with their parent) and settles their calls. Returns how many calls.
    pub async fn dead_letter_blocked_steps(&self, at: Timestamp) -> Result<usize, StoreError> {
        let any: i64 = sqlx::query_scalar(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM steps s JOIN steps p ON p.id = s.depends_on
                                      WHERE s.status = 'pending' AND p.status = 'dead') THEN 1 ELSE 0 END",
        )
        .fetch_one(&self.pool)
        .await?;
        if any == 0 {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let calls = dead_letter_dependants(&mut tx, None, ms(at)).await?;
        for call in &calls {
            sqlx::query(CALL_STATUS_SQL).bind(call).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(calls.len())
    }
}

fn dedup(v: &[String]) -> Vec<&String> {
    let mut out: Vec<&String> = v.iter().collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AttemptResult, NewStep};

    async fn dead_letters_are_listed_and_replayed_and_unknown_calls_are_reported(s: &Store) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        s.record_call_start("c1", "demo", None, "+15550100000", t0).await.unwrap();
        let steps = vec![NewStep {
            seq: 0,
            kind: "contact".into(),
            payload: json!({}),
            depends_on: None,
            idempotency_key: "c1:contact".into(),
        }];
        s.close_call_with_plan("c1", "demo", "end_call", &json!({}), &steps, t0).await.unwrap();
        let step = s.due_steps(t0, 10).await.unwrap().remove(0);
        s.record_attempt(&step, &AttemptResult::Dead { error: "400 bad".into() }, "t", &json!({}), t0).await.unwrap();
        assert_eq!(s.call("demo", "c1").await.unwrap().unwrap().sync_status, "failed");
        let dead = s.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].call_id.as_str(), dead[0].kind.as_str()), ("c1", "contact"));
        assert_eq!(dead[0].last_error.as_deref(), Some("400 bad"));

        let later = t0 + jiff::SignedDuration::from_secs(3600);
        assert_eq!(
            s.requeue_call(None, "c1", Requeue::Failed, "writeback.replay", &json!({}), later).await.unwrap(),
            Some(1)
        );
        assert_eq!(s.call("demo", "c1").await.unwrap().unwrap().sync_status, "pending");
        assert!(s.dead_letters(10).await.unwrap().is_empty());
        let due = s.due_steps(later, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].idempotency_key, "c1:contact", "a replay keeps the idempotency key");
        assert!(s.audit_for_call("demo", "c1").await.unwrap().iter().any(|(a, _)| a == "writeback.replay"));
        // Nothing left to replay; an unknown call is told apart from that.
        assert_eq!(
            s.requeue_call(None, "c1", Requeue::Failed, "writeback.replay", &json!({}), later).await.unwrap(),
            Some(0)
        );
        assert_eq!(
            s.requeue_call(None, "nope", Requeue::Failed, "writeback.replay", &json!({}), later).await.unwrap(),
            None
        );
    }

    async fn a_parked_step_waits_for_its_connection_to_be_reauthorized(s: &Store) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        s.record_call_start("c2", "demo", None, "+15550100000", t0).await.unwrap();
        let steps = vec![
            NewStep {
                seq: 0,
                kind: "contact".into(),
                payload: json!({}),
                depends_on: None,
                idempotency_key: "a".into(),
            },
            NewStep {
                seq: 1,
                kind: "call_log".into(),
                payload: json!({}),
                depends_on: Some(0),
                idempotency_key: "b".into(),
            },
        ];
        s.close_call_with_plan("c2", "demo", "end_call", &json!({}), &steps, t0).await.unwrap();
        let step = s.due_steps(t0, 10).await.unwrap().remove(0);
        let row = crate::store::ConnectionRow {
            id: "demo:hubspot".into(),
            tenant: "demo".into(),
            vendor: "hubspot".into(),
            status: "revoked".into(),
            key_id: "k".into(),
            access_token_ct: "x".into(),
            refresh_token_ct: "y".into(),
            expires_at: 0,
            scopes: String::new(),
            updated_at: ms(t0),
            api_base_url: None,
        };
        s.upsert_connection(&row).await.unwrap();
        let t1 = t0 + jiff::SignedDuration::from_secs(1);
        s.park_step(&step, "revoked", &json!({}), t1).await.unwrap();
        assert_eq!(s.call("demo", "c2").await.unwrap().unwrap().sync_status, "parked");
        assert!(s.due_steps(t1 + jiff::SignedDuration::from_secs(86_400 * 30), 10).await.unwrap().is_empty());
        // Still revoked (or active but unchanged since the park): nothing resumes.
        assert_eq!(s.unpark_reauthorized(t1).await.unwrap(), 0);
        let t2 = t1 + jiff::SignedDuration::from_secs(600);
        s.upsert_connection(&crate::store::ConnectionRow { status: "active".into(), updated_at: ms(t2), ..row })
            .await
            .unwrap();
        assert_eq!(s.unpark_reauthorized(t2).await.unwrap(), 1);
        assert_eq!(s.call("demo", "c2").await.unwrap().unwrap().sync_status, "pending");
        let due = s.due_steps(t2, 10).await.unwrap();
        assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), vec![step.id]);
        assert_eq!(s.step_schedule(step.id).await.unwrap().unwrap().attempts, 1);
    }

    async fn a_dead_step_takes_its_dependants_down_transitively_and_the_call_settles_only_then(s: &Store) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        s.record_call_start("c3", "demo", None, "+15550100000", t0).await.unwrap();
        let step = |seq: i64, kind: &str, depends_on: Option<i64>| NewStep {
            seq,
            kind: kind.into(),
            payload: json!({}),
            depends_on,
            idempotency_key: format!("c3:{kind}"),
        };
        // contact ← call_log ← call_log_update, and a webhook that depends on nothing.
        let steps = vec![
            step(0, "contact", None),
            step(1, "call_log", Some(0)),
            step(2, "call_log_update", Some(1)),
            step(3, "webhook", None),
        ];
        s.close_call_with_plan("c3", "demo", "end_call", &json!({}), &steps, t0).await.unwrap();
        let due = s.due_steps(t0, 10).await.unwrap();
        let contact = due.iter().find(|d| d.kind == "contact").unwrap().clone();
        s.record_attempt(&contact, &AttemptResult::Dead { error: "400".into() }, "t", &json!({}), t0).await.unwrap();
        let status = |kind: &'static str| {
            let s = s.clone();
            async move {
                let all = s.steps_for_call("demo", "c3").await.unwrap();
                all.into_iter().find(|x| x.kind == kind).unwrap()
            }
        };
        assert_eq!(status("call_log").await.status, "dead");
        assert_eq!(status("call_log_update").await.status, "dead", "transitively");
        assert_eq!(status("call_log_update").await.attempts, 0);
        assert_eq!(status("webhook").await.status, "pending", "an independent step still runs");
        // Not final while the webhook runs.
        assert_eq!(s.call("demo", "c3").await.unwrap().unwrap().sync_status, "pending");
        let audit = s.audit_for_call("demo", "c3").await.unwrap();
        let cascade: Vec<&Value> =
            audit.iter().filter(|(a, _)| a == "writeback.dependants_dead").map(|(_, d)| d).collect();
        let call_log_id = status("call_log").await.id;
        assert_eq!(cascade.len(), 2, "one entry per parent: {cascade:?}");
        assert_eq!(cascade[0]["parent_step"], contact.id);
        assert_eq!(cascade[0]["steps"], json!([call_log_id]));
        assert_eq!(cascade[1]["parent_step"], call_log_id);
        let webhook = status("webhook").await;
        s.record_attempt(&webhook, &AttemptResult::Done { external_id: None }, "t", &json!({}), t0).await.unwrap();
        assert_eq!(s.call("demo", "c3").await.unwrap().unwrap().sync_status, "failed", "final now");

        // A step appended under the dead contact (a booking confirmed late) is dead at once.
        let appended = s.append_step("c3", "demo", "appointment", &json!({}), Some(contact.id), "c3:appt", t0).await;
        let appended = appended.unwrap();
        let appt = status("appointment").await;
        assert_eq!((appt.id, appt.status.as_str()), (appended, "dead"));
        assert_eq!(s.call("demo", "c3").await.unwrap().unwrap().sync_status, "failed");

        // A replay puts the whole chain back.
        assert_eq!(
            s.requeue_call(None, "c3", Requeue::Failed, "writeback.replay", &json!({}), t0).await.unwrap(),
            Some(4)
        );
        assert_eq!(s.call("demo", "c3").await.unwrap().unwrap().sync_status, "pending");

        // A store left with a step waiting on a dead parent (written before this rule) is settled
        // by the worker's sweep.
        sqlx::query("UPDATE steps SET status = 'dead' WHERE id = $1").bind(contact.id).execute(&s.pool).await.unwrap();
        assert_eq!(s.dead_letter_blocked_steps(t0).await.unwrap(), 1);
        assert_eq!(status("call_log").await.status, "dead");
        assert_eq!(s.dead_letter_blocked_steps(t0).await.unwrap(), 0, "nothing left to settle");
    }

    both_backends!(
        dead_letters_are_listed_and_replayed_and_unknown_calls_are_reported,
        a_parked_step_waits_for_its_connection_to_be_reauthorized,
        a_dead_step_takes_its_dependants_down_transitively_and_the_call_settles_only_then
    );
}
