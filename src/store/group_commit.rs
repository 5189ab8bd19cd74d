//! Group commit of hangups: every `close_call_with_plan` goes through one writer task that takes
//! whatever closes are queued (up to a batch limit) and commits them in ONE transaction — one WAL
//! fsync for the batch instead of one per call — then answers each caller. A caller is answered
//! only after the transaction holding its plan has committed, so `end_call` is still acknowledged
//! only once its own plan is durable. Each close runs in its own savepoint: a close that fails
//! (or finds the call already closed) does not undo the others in its batch.
//!
//! Under no load a batch is a single close: nothing waits for a batch to fill.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use serde_json::Value;
use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{NewStep, StoreError, ms};

/// One call's close: the row update plus its plan.
#[derive(Debug, Clone)]
pub(super) struct ClosePlan {
    pub call_id: String,
    pub tenant: String,
    pub end_reason: String,
    pub outcome: Value,
    pub steps: Vec<NewStep>,
    pub at: Timestamp,
}

/// Batches and closes committed so far (for tests and the bench).
#[derive(Debug, Default)]
pub struct GroupCommitStats {
    pub batches: AtomicU64,
    pub closes: AtomicU64,
}

struct Job {
    close: ClosePlan,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// The sending side; cloned with the store. The writer task stops when every clone is dropped.
#[derive(Clone, Debug)]
pub(super) struct PlanWriter {
    jobs: mpsc::Sender<Job>,
    pub(super) stats: Arc<GroupCommitStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("call_id", &self.close.call_id).finish()
    }
}

impl PlanWriter {
    /// Starts the writer task on the current runtime. `max_batch` 1 is a commit per call.
    pub(super) fn spawn(pool: AnyPool, max_batch: usize) -> PlanWriter {
        let max_batch = max_batch.max(1);
        let (jobs, mut rx) = mpsc::channel::<Job>(max_batch * 4);
        let stats = Arc::new(GroupCommitStats::default());
        let counters = stats.clone();
        tokio::spawn(async move {
            let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut batch, max_batch).await > 0 {
                let closes: Vec<&ClosePlan> = batch.iter().map(|j| &j.close).collect();
                match commit_batch(&pool, &closes).await {
                    Ok(results) => {
                        counters.batches.fetch_add(1, Ordering::Relaxed);
                        counters.closes.fetch_add(results.len() as u64, Ordering::Relaxed);
                        for (job, result) in batch.drain(..).zip(results) {
                            let _ = job.reply.send(result);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, closes = batch.len(), "committing a batch of hangups failed");
                        for job in batch.drain(..) {
                            let _ = job.reply.send(Err(StoreError::Other(format!("commit failed: {e}"))));
                        }
                    }
                }
            }
        });
        PlanWriter { jobs, stats }
    }

    pub(super) async fn submit(&self, close: ClosePlan) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { close, reply })
            .await
            .map_err(|_| StoreError::Other("the plan writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Other("the plan writer stopped before answering".into()))?
    }
}

/// Commits every close in one transaction, each in its own savepoint. The outer `Err` is a
/// failure of the transaction itself (nothing of the batch is durable).
async fn commit_batch(pool: &AnyPool, closes: &[&ClosePlan]) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(closes.len());
    for close in closes {
        let mut sp = sqlx::Acquire::begin(&mut *tx).await?;
        match close_one(&mut sp, close).await {
            Ok(closed) => {
                sp.commit().await?;
                results.push(Ok(closed));
            }
            Err(e) => {
                sp.rollback().await?;
                results.push(Err(e));
            }
        }
    }
    crate::failpoint::hit(crate::failpoint::GROUP_COMMIT_BEFORE_COMMIT);
    tx.commit().await?;
    Ok(results)
}

/// Closes the call and inserts its plan; `false` (and nothing written) if it was already closed.
async fn close_one(tx: &mut Transaction<'_, Any>, c: &ClosePlan) -> Result<bool, StoreError> {
    let now = ms(c.at);
    let closed = sqlx::query(
        "UPDATE calls SET ended_at = $1, end_reason = $2, outcome = $3, sync_status = $4
         WHERE call_id = $5 AND tenant = $6 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(&c.end_reason)
    .bind(c.outcome.to_string())
    .bind(if c.steps.is_empty() { "synced" } else { "pending" })
    .bind(&c.call_id)
    .bind(&c.tenant)
    .execute(&mut **tx)
    .await?;
    if closed.rows_affected() == 0 {
        return Ok(false);
    }
    let mut ids: Vec<(i64, i64)> = Vec::with_capacity(c.steps.len());
    for s in &c.steps {
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
        .bind(&c.call_id)
        .bind(&c.tenant)
        .bind(s.seq)
        .bind(&s.kind)
        .bind(s.payload.to_string())
        .bind(depends_on)
        .bind(&s.idempotency_key)
        .bind(now)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        ids.push((s.seq, id));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde_json::json;

    fn plan(call: &str, depends_on: Option<i64>) -> Vec<NewStep> {
        vec![
            NewStep {
                seq: 0,
                kind: "contact".into(),
                payload: json!({}),
                depends_on: None,
                idempotency_key: format!("{call}:0"),
            },
            NewStep {
                seq: 1,
                kind: "call_log".into(),
                payload: json!({}),
                depends_on,
                idempotency_key: format!("{call}:1"),
            },
        ]
    }

    async fn a_burst_commits_in_batches_and_a_bad_close_does_not_undo_its_batch(store: &Store) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        for i in 0..50 {
            store.record_call_start(&format!("c{i}"), "demo", None, "+15550100000", t0).await.unwrap();
        }
        // 50 concurrent hangups; call 7's plan is malformed (depends on a step that does not exist).
        let closes = (0..50).map(|i| {
            let store = store.clone();
            async move {
                let call = format!("c{i}");
                let deps = if i == 7 { Some(9) } else { Some(0) };
                store.close_call_with_plan(&call, "demo", "end_call", &json!({}), &plan(&call, deps), t0).await
            }
        });
        let results = futures::future::join_all(closes).await;
        for (i, r) in results.iter().enumerate() {
            if i == 7 {
                assert!(matches!(r, Err(StoreError::Other(m)) if m.contains("unknown seq")), "{r:?}");
            } else {
                assert!(matches!(r, Ok(true)), "c{i}: {r:?}");
            }
        }
        // Every acknowledged close is durable with its whole plan; the bad one left nothing.
        for i in 0..50 {
            let call = store.call("demo", &format!("c{i}")).await.unwrap().unwrap();
            let steps = store.steps_for_call("demo", &format!("c{i}")).await.unwrap();
            if i == 7 {
                assert_eq!((call.ended_at, steps.len()), (None, 0));
            } else {
                assert_eq!((call.sync_status.as_str(), steps.len()), ("pending", 2), "c{i}");
            }
        }
        // The burst was queued before the writer ran (one task polls them all): one batch, one
        // commit, for 50 hangups.
        let stats = store.group_commit_stats();
        assert_eq!((stats.batches.load(Ordering::Relaxed), stats.closes.load(Ordering::Relaxed)), (1, 50));
        // A second close of the same call is refused, batched or not.
        assert!(!store.close_call_with_plan("c1", "demo", "disconnected", &json!({}), &[], t0).await.unwrap());
    }

    both_backends!(a_burst_commits_in_batches_and_a_bad_close_does_not_undo_its_batch);
}
