//! Durable state behind one `Store`: SQLite is the embedded default (WAL, `synchronous=FULL`),
//! PostgreSQL serves several instances sharing one database (`store.url = "postgres://…"`). The
//! outbox of write-back steps, calls, bookings and the audit trail live here; everything the
//! service acknowledges is committed here first.
//!
//! One set of SQL serves both backends through sqlx's `Any` driver (`$N` placeholders, `ON
//! CONFLICT`, `RETURNING`); [`Backend`] branches only where the engines differ (JSON functions,
//! and PostgreSQL's shared holds, lease claims, advisory locks and notifications).
//!
//! Times are stored as milliseconds since the Unix epoch from the injected clock.

#[cfg(test)]
#[macro_use]
mod contract;

mod alerts;
mod audit_scan;
pub mod bus;
mod connections;
mod console;
mod group_commit;
mod holds;
mod identity_index;
mod inbound;
mod job_lease;
mod lease;
mod loadtest;
mod outbox;
mod outcomes;
mod pending_bookings;
mod privacy;
mod rate;
pub mod testing;
mod writeback_rules;

pub use alerts::TenantHealth;
pub use audit_scan::{InboundCount, StepOutcome};
pub use connections::{ConnectionLock, ConnectionRow, OAuthStateRow};
pub use console::AuditRow;
pub use group_commit::GroupCommitStats;
pub use holds::{HoldCounts, HoldRow};
pub use identity_index::IdentityKind;
pub use job_lease::JobLease;
pub use lease::{HEARTBEAT_EVERY, INSTANCE_DEAD_AFTER, InstanceRow, LEASE, StepLease, TAKEOVER_EVERY, Takeover};
pub use outbox::{DeadLetter, Requeue, StepSchedule};
pub use outcomes::{AppointmentOutcome, AwaitingOutcome, OutcomeHistory, OutcomeSource, RecordedOutcome};
pub use pending_bookings::{OPEN_STATUSES as OPEN_PENDING_STATUSES, PendingBookingRow};
pub use privacy::{EraseReport, RetentionReport};
pub use rate::{RateBucket, RateLevels, RateTake};
pub use writeback_rules::{ConflictRow, CreatedObjectRow, Decided, FieldWriteRow, HeldPlan};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: {0}")]
    Other(String),
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Hangups are committed in groups by one writer task (`group_commit.rs`).
    plans: group_commit::PlanWriter,
    /// Answers of [`Store::upcoming_bookings_for_caller`], valid while `bookings_generation` is
    /// unchanged. Every warm `get_caller_context` asks for the caller's upcoming bookings; without
    /// this each one was a SQLite round trip through sqlx's worker thread (the load test's profile:
    /// about a quarter of the service's time in those cross-thread wake-ups).
    upcoming: Arc<moka::future::Cache<UpcomingKey, Arc<UpcomingEntry>>>,
    /// Answers of [`Store::outcome_history_for_caller`], valid while `bookings_generation` is
    /// unchanged (an outcome is a write to `bookings`).
    histories: Arc<moka::future::Cache<UpcomingKey, Arc<outcomes::HistoryEntry>>>,
    /// Bumped after every write to `bookings` (insert, move, status) through this store, and
    /// when another instance on the same PostgreSQL database says it wrote one (`bus.rs`: each
    /// write here is published as `What::Bookings`).
    bookings_generation: Arc<AtomicU64>,
    /// This instance's id (a UUID chosen at open): the owner of the steps it claims, the calls it
    /// opens and its heartbeat row (`lease.rs`), and its name on the invalidation bus (`bus.rs`).
    instance: Arc<str>,
    /// Bumped after every heartbeat this instance records: the signal tests wait on.
    beats: Arc<tokio::sync::watch::Sender<u64>>,
    /// Beats (after this instance's first) that found its `instances` row gone: another instance
    /// had claimed it as dead and recovered its open calls (`lease.rs`).
    presumed_dead: Arc<AtomicU64>,
    /// The PostgreSQL schema the store works in (empty on SQLite): the bus's scope.
    scope: Arc<str>,
}

type UpcomingKey = (String, Option<String>, Option<String>);

#[derive(Debug)]
struct UpcomingEntry {
    generation: u64,
    /// The `now` (ms) the rows were read at: they are every confirmed booking starting after it.
    as_of: i64,
    rows: Vec<BookingRow>,
}

/// The most hangups committed in one transaction.
pub const PLAN_BATCH: usize = 64;

/// A step to persist as part of a plan. `depends_on` is the `seq` of an earlier step.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStep {
    pub seq: i64,
    pub kind: String,
    pub payload: Value,
    pub depends_on: Option<i64>,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub id: i64,
    pub call_id: String,
    pub tenant: String,
    pub seq: i64,
    pub kind: String,
    pub payload: Value,
    pub depends_on: Option<i64>,
    pub idempotency_key: String,
    pub status: String,
    pub attempts: i64,
    pub first_attempt_at: Option<i64>,
    pub external_id: Option<String>,
    pub last_error: Option<String>,
    /// The external id produced by the step this one depends on.
    pub parent_external_id: Option<String>,
    /// The instance holding the step's lease when it was read (a claim: this instance). A
    /// result is recorded only while the lease is still as read ([`Store::record_attempt`]).
    pub lease_owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallRow {
    pub call_id: String,
    pub tenant: String,
    pub caller: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub sync_status: String,
    pub outcome: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BookingRow {
    pub idempotency_key: String,
    pub tenant: String,
    pub call_id: String,
    pub staff_id: String,
    pub calendar_id: String,
    pub event_id: String,
    pub service_id: String,
    pub start_at: i64,
    pub end_at: i64,
    pub status: String,
    pub caller_phone: Option<String>,
    pub caller_email: Option<String>,
}

/// The result of one write-back attempt, as recorded by [`Store::record_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Done { external_id: Option<String> },
    Retry { next_at: Timestamp, error: String },
    Dead { error: String },
}

/// A call's sync status from its steps. Final (`failed` / `synced`) only once every step is
/// terminal: any parked (its connection was revoked) → parked, any pending → pending, then any
/// dead → failed, else synced. A dead step's dependants are dead-lettered with it
/// ([`Store::record_attempt`]), so a dead parent never leaves the call pending forever.
const CALL_STATUS_SQL: &str = "UPDATE calls SET sync_status = CASE
         WHEN EXISTS (SELECT 1 FROM steps WHERE call_id = $1 AND status = 'parked') THEN 'parked'
         WHEN EXISTS (SELECT 1 FROM steps WHERE call_id = $1 AND status = 'pending') THEN 'pending'
         WHEN EXISTS (SELECT 1 FROM steps WHERE call_id = $1 AND status = 'dead') THEN 'failed'
         ELSE 'synced' END
     WHERE call_id = $1";

pub fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

impl Store {
    /// Opens the store at `url` and applies migrations: `sqlite://PATH` (the file and its folder
    /// are created if needed) or `postgres://…` (the database must exist).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_with_plan_batch(url, PLAN_BATCH).await
    }

    /// [`Store::open`] with a given group-commit limit (1: a commit per hangup, for comparison).
    pub async fn open_with_plan_batch(url: &str, plan_batch: usize) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, pool) = match Backend::of_url(url)? {
            Backend::Sqlite => (Backend::Sqlite, open_sqlite(url).await?),
            Backend::Postgres => (Backend::Postgres, open_postgres(url).await?),
        };
        let plans = group_commit::PlanWriter::spawn(pool.clone(), plan_batch);
        // The generation counter invalidates on this process's writes; the TTL bounds how long a
        // change made by another process (`callside erase` on the same file) stays unseen.
        // Behind an `Arc` each: a `Store` is cloned into every component and held inline by
        // enums such as `booking::Holds`; the caches' handles would make it several hundred bytes.
        fn cache<V: Clone + Send + Sync + 'static>() -> Arc<moka::future::Cache<UpcomingKey, V>> {
            Arc::new(
                moka::future::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(std::time::Duration::from_secs(300))
                    .build(),
            )
        }
        let upcoming = cache();
        let scope: String = match backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => sqlx::query_scalar("SELECT current_schema()::text").fetch_one(&pool).await?,
        };
        Ok(Store {
            pool,
            backend,
            plans,
            upcoming,
            histories: cache(),
            bookings_generation: Arc::new(AtomicU64::new(0)),
            instance: uuid::Uuid::new_v4().to_string().into(),
            beats: Arc::new(tokio::sync::watch::Sender::new(0)),
            presumed_dead: Arc::default(),
            scope: scope.into(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn bump_bookings_generation(&self) {
        self.bookings_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// After a write to `bookings` of `tenant`: this instance's cached upcoming bookings are
    /// stale, and so are the other instances' (told over the bus on PostgreSQL).
    async fn bookings_changed(&self, tenant: &str) {
        self.bump_bookings_generation();
        self.publish(tenant, bus::What::Bookings).await;
    }

    /// Whether the database answers `SELECT 1` within [`PING_TIMEOUT`]: `/readyz` must answer
    /// 503 quickly when PostgreSQL hangs, not hang with it.
    pub async fn ping(&self) -> bool {
        ping_within(&self.pool, PING_TIMEOUT).await
    }

    pub async fn record_call_start(
        &self,
        call_id: &str,
        tenant: &str,
        caller: Option<&str>,
        dialed: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO calls (call_id, tenant, caller, dialed, started_at, instance_id) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(call_id)
        .bind(tenant)
        .bind(caller)
        .bind(dialed)
        .bind(ms(at))
        .bind(&*self.instance)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Closes the call and persists its write-back plan atomically, committed together with
    /// other hangups queued at the same moment (group commit): returns once the transaction
    /// holding this plan is durable. Returns `false` (and writes nothing) if the call was already
    /// closed: a call has exactly one plan.
    pub async fn close_call_with_plan(
        &self,
        call_id: &str,
        tenant: &str,
        end_reason: &str,
        outcome: &Value,
        steps: &[NewStep],
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.plans
            .submit(group_commit::ClosePlan {
                call_id: call_id.to_owned(),
                tenant: tenant.to_owned(),
                end_reason: end_reason.to_owned(),
                outcome: outcome.clone(),
                steps: steps.to_vec(),
                at,
            })
            .await
    }

    pub fn group_commit_stats(&self) -> &GroupCommitStats {
        &self.plans.stats
    }

    /// Pending steps whose time has come, whose dependency is done and which no instance holds
    /// a live lease on, oldest first. A read: the worker takes steps with [`Store::claim_steps`].
    pub async fn due_steps(&self, now: Timestamp, limit: i64) -> Result<Vec<StepRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_COLUMNS}
             FROM steps s LEFT JOIN steps p ON p.id = s.depends_on
             WHERE s.status = 'pending' AND s.next_attempt_at <= $1
               AND (s.lease_until IS NULL OR s.lease_until <= $1)
               AND (s.depends_on IS NULL OR p.status = 'done')
             ORDER BY s.next_attempt_at, s.id LIMIT $2"
        ))
        .bind(ms(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(step_from_row).collect()
    }

    /// The earliest time any pending step becomes due for this instance, if any: a step another
    /// instance holds a lease on is due when that lease runs out (a dead instance's steps are
    /// taken over then); this instance's own leases are its work in hand, not a wake-up.
    pub async fn next_due_at(&self) -> Result<Option<Timestamp>, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN s.lease_owner IS NOT NULL AND s.lease_owner <> $1 AND s.lease_until > s.next_attempt_at
                             THEN s.lease_until ELSE s.next_attempt_at END)
             FROM steps s LEFT JOIN steps p ON p.id = s.depends_on
             WHERE s.status = 'pending' AND (s.depends_on IS NULL OR p.status = 'done')",
        )
        .bind(&*self.instance)
        .fetch_one(&self.pool)
        .await?;
        Ok(v.and_then(|m| Timestamp::from_millisecond(m).ok()))
    }

    pub async fn pending_step_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM steps WHERE status = 'pending'").fetch_one(&self.pool).await?)
    }

    /// Records an external id the moment it is known, before anything else can fail — while the
    /// step's lease is still as `step` was read (a worker whose lease was taken over records
    /// nothing: the new owner finds the same object under the step's idempotency key).
    pub async fn record_external_id(&self, step: &StepRow, external_id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(&format!("UPDATE steps SET external_id = $1 WHERE id = $2 AND {LEASE_HELD}"))
            .bind(external_id)
            .bind(step.id)
            .bind(step.lease_owner.as_deref().unwrap_or(""))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records one attempt's result, the call's resulting sync status and the audit entry in a
    /// single transaction: one fsync per attempt instead of one per statement, which is what lets
    /// a backlog drain at the vendor's pace rather than the disk's. The step's lease is released.
    ///
    /// Only while the lease is still as `step` was read: a worker whose lease ran out and was
    /// taken over by another instance (which may have finished the step since) records nothing
    /// and gets `false` — the new owner's result stands.
    pub async fn record_attempt(
        &self,
        step: &StepRow,
        result: &AttemptResult,
        audit_action: &str,
        audit_detail: &Value,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let now = ms(at);
        let holder = step.lease_owner.as_deref().unwrap_or("");
        let mut tx = self.pool.begin().await?;
        let updated = match result {
            AttemptResult::Done { external_id } => {
                sqlx::query(&format!(
                    "UPDATE steps SET status = 'done', attempts = attempts + 1, last_error = NULL,
                                      external_id = COALESCE($1, external_id), updated_at = $2, {LEASE_RELEASED}
                     WHERE id = $3 AND {LEASE_HELD_4}"
                ))
                .bind(external_id)
                .bind(now)
                .bind(step.id)
                .bind(holder)
                .execute(&mut *tx)
                .await?
            }
            AttemptResult::Retry { next_at, error } => {
                sqlx::query(&format!(
                    "UPDATE steps SET attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, $1),
                                      next_attempt_at = $2, last_error = $3, updated_at = $4, {LEASE_RELEASED}
                     WHERE id = $5 AND {LEASE_HELD_6}"
                ))
                .bind(now)
                .bind(ms(*next_at))
                .bind(error)
                .bind(now)
                .bind(step.id)
                .bind(holder)
                .execute(&mut *tx)
                .await?
            }
            AttemptResult::Dead { error } => {
                sqlx::query(&format!(
                    "UPDATE steps SET status = 'dead', attempts = attempts + 1, last_error = $1, updated_at = $2, {LEASE_RELEASED}
                     WHERE id = $3 AND {LEASE_HELD_4}"
                ))
                .bind(error)
                .bind(now)
                .bind(step.id)
                .bind(holder)
                .execute(&mut *tx)
                .await?
            }
        };
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("INSERT INTO audit (tenant, call_id, step_id, at, action, detail) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&step.tenant)
            .bind(&step.call_id)
            .bind(step.id)
            .bind(now)
            .bind(audit_action)
            .bind(audit_detail.to_string())
            .execute(&mut *tx)
            .await?;
        if matches!(result, AttemptResult::Dead { .. }) {
            // Its dependants can never run (they need the parent `done`): dead-lettered with it,
            // in the same transaction, so the call reaches a final status.
            outbox::dead_letter_dependants(&mut tx, Some(&step.call_id), now).await?;
        }
        if !matches!(result, AttemptResult::Retry { .. }) {
            sqlx::query(CALL_STATUS_SQL).bind(&step.call_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn call(&self, tenant: &str, call_id: &str) -> Result<Option<CallRow>, StoreError> {
        let row = sqlx::query(
            "SELECT call_id, tenant, caller, started_at, ended_at, end_reason, sync_status, outcome
             FROM calls WHERE call_id = $1 AND tenant = $2",
        )
        .bind(call_id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| -> Result<CallRow, StoreError> {
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
        .transpose()
    }

    pub async fn steps_for_call(&self, tenant: &str, call_id: &str) -> Result<Vec<StepRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_COLUMNS}
             FROM steps s LEFT JOIN steps p ON p.id = s.depends_on
             WHERE s.call_id = $1 AND s.tenant = $2 ORDER BY s.seq"
        ))
        .bind(call_id)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(step_from_row).collect()
    }

    /// The tenant a call id belongs to, if the call is known (call ids are unique across tenants).
    pub async fn call_tenant(&self, call_id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT tenant FROM calls WHERE call_id = $1")
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Replaces the payload of a step that has not been applied yet. Returns `false` (and changes
    /// nothing) if the step is no longer pending: the caller then plans an update instead.
    pub async fn update_pending_step_payload(
        &self,
        step_id: i64,
        payload: &Value,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE steps SET payload = $1, updated_at = $2 WHERE id = $3 AND status = 'pending'")
            .bind(payload.to_string())
            .bind(ms(at))
            .bind(step_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Adds one step to a call's existing plan (after the call was closed), depending on an
    /// existing step by id, and marks the call pending again. `seq` is the next free one.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_step(
        &self,
        call_id: &str,
        tenant: &str,
        kind: &str,
        payload: &Value,
        depends_on_step: Option<i64>,
        idempotency_key: &str,
        at: Timestamp,
    ) -> Result<i64, StoreError> {
        // The first statement writes, so the transaction takes the write lock at once (a read
        // first would fail with SQLITE_BUSY_SNAPSHOT under WAL if the worker wrote meanwhile).
        let mut tx = self.pool.begin().await?;
        let now = ms(at);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO steps (call_id, tenant, seq, kind, payload, depends_on, idempotency_key, next_attempt_at, updated_at)
             VALUES ($1, $2, (SELECT COALESCE(MAX(seq), -1) + 1 FROM steps WHERE call_id = $1), $3, $4, $5, $6, $7, $7)
             RETURNING id",
        )
        .bind(call_id)
        .bind(tenant)
        .bind(kind)
        .bind(payload.to_string())
        .bind(depends_on_step)
        .bind(idempotency_key)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE calls SET sync_status = 'pending' WHERE call_id = $1 AND tenant = $2")
            .bind(call_id)
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        // Appended under a step already dead-lettered: it could never run, so it is dead too.
        if !outbox::dead_letter_dependants(&mut tx, Some(call_id), now).await?.is_empty() {
            sqlx::query(CALL_STATUS_SQL).bind(call_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Records the platform's report on a closed call's saved outcome (kept for the operator).
    pub async fn set_call_report(&self, call_id: &str, tenant: &str, report: &Value) -> Result<(), StoreError> {
        let set = match self.backend {
            Backend::Sqlite => "json_set(COALESCE(outcome, '{}'), '$.platform_report', json($1))",
            Backend::Postgres => "jsonb_set(COALESCE(outcome, '{}')::jsonb, '{platform_report}', $1::jsonb)::text",
        };
        sqlx::query(&format!("UPDATE calls SET outcome = {set} WHERE call_id = $2 AND tenant = $3"))
            .bind(report.to_string())
            .bind(call_id)
            .bind(tenant)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Calls opened but never closed by an instance that is gone (it died mid-call): closed at
    /// start-up as disconnected so their write-back still happens. Never this instance's own. On
    /// SQLite one instance runs at a time, so every other run's open call is one; on PostgreSQL
    /// only the calls of instances whose heartbeat is older than `dead_after` at `now` (or of no
    /// recorded instance: opened before migration 0015) — a live instance's calls are its own.
    pub async fn open_calls(
        &self,
        now: Timestamp,
        dead_after: jiff::SignedDuration,
    ) -> Result<Vec<CallRow>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT call_id, tenant FROM calls
                 WHERE ended_at IS NULL AND (instance_id IS NULL OR instance_id <> $1)"
            }
            Backend::Postgres => {
                "SELECT call_id, tenant FROM calls
                 WHERE ended_at IS NULL AND (instance_id IS NULL OR (instance_id <> $1 AND NOT EXISTS (
                     SELECT 1 FROM instances i WHERE i.id = calls.instance_id AND i.heartbeat_at > $2)))"
            }
        };
        let mut query = sqlx::query(sql).bind(&*self.instance);
        if self.backend == Backend::Postgres {
            query = query.bind(ms(now) - dead_after.as_millis() as i64);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for r in rows {
            let call_id: String = r.try_get("call_id")?;
            let tenant: String = r.try_get("tenant")?;
            if let Some(c) = self.call(&tenant, &call_id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    pub async fn insert_booking(&self, b: &BookingRow, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO bookings (idempotency_key, tenant, call_id, staff_id, calendar_id, event_id, service_id, start_at, end_at, status, created_at, caller_phone, caller_email)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (idempotency_key) DO UPDATE SET status = excluded.status, event_id = excluded.event_id",
        )
        .bind(&b.idempotency_key)
        .bind(&b.tenant)
        .bind(&b.call_id)
        .bind(&b.staff_id)
        .bind(&b.calendar_id)
        .bind(&b.event_id)
        .bind(&b.service_id)
        .bind(b.start_at)
        .bind(b.end_at)
        .bind(&b.status)
        .bind(ms(at))
        .bind(&b.caller_phone)
        .bind(&b.caller_email)
        .execute(&self.pool)
        .await?;
        self.bookings_changed(&b.tenant).await;
        Ok(())
    }

    /// Confirmed bookings for a caller (by phone or email) that have not started yet.
    pub async fn upcoming_bookings_for_caller(
        &self,
        tenant: &str,
        phone: Option<&str>,
        email: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<BookingRow>, StoreError> {
        if phone.is_none() && email.is_none() {
            return Ok(vec![]);
        }
        let now_ms = ms(now);
        let key: UpcomingKey = (tenant.to_owned(), phone.map(str::to_owned), email.map(str::to_owned));
        // Read before the query: a write that lands meanwhile bumps past it, so what is cached
        // under this generation is never newer-looking than it is.
        let generation = self.bookings_generation.load(Ordering::Acquire);
        if let Some(hit) = self.upcoming.get(&key).await
            && hit.generation == generation
            && now_ms >= hit.as_of
        {
            return Ok(hit.rows.iter().filter(|b| b.start_at > now_ms).cloned().collect());
        }
        let rows = self.query_upcoming_bookings(tenant, phone, email, now_ms).await?;
        self.upcoming.insert(key, Arc::new(UpcomingEntry { generation, as_of: now_ms, rows: rows.clone() })).await;
        Ok(rows)
    }

    async fn query_upcoming_bookings(
        &self,
        tenant: &str,
        phone: Option<&str>,
        email: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<BookingRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BOOKING_COLUMNS} FROM bookings
             WHERE tenant = $1 AND status = 'confirmed' AND start_at > $2
               AND (($3 IS NOT NULL AND caller_phone = $4) OR ($5 IS NOT NULL AND caller_email = $6))
             ORDER BY start_at"
        ))
        .bind(tenant)
        .bind(now_ms)
        .bind(phone)
        .bind(phone)
        .bind(email)
        .bind(email)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(booking_from_row).collect()
    }

    pub async fn booking_by_event(&self, tenant: &str, event_id: &str) -> Result<Option<BookingRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {BOOKING_COLUMNS} FROM bookings WHERE tenant = $1 AND event_id = $2"))
            .bind(tenant)
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(booking_from_row).transpose()
    }

    /// Moves a booking in place (reschedule): same key, same event, new times.
    pub async fn move_booking(
        &self,
        tenant: &str,
        key: &str,
        start: Timestamp,
        end: Timestamp,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE bookings SET start_at = $1, end_at = $2, updated_at = $3 WHERE tenant = $4 AND idempotency_key = $5",
        )
        .bind(ms(start))
        .bind(ms(end))
        .bind(ms(at))
        .bind(tenant)
        .bind(key)
        .execute(&self.pool)
        .await?;
        self.bookings_changed(tenant).await;
        Ok(())
    }

    pub async fn set_booking_status(
        &self,
        tenant: &str,
        key: &str,
        status: &str,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE bookings SET status = $1, updated_at = $2 WHERE tenant = $3 AND idempotency_key = $4")
            .bind(status)
            .bind(ms(at))
            .bind(tenant)
            .bind(key)
            .execute(&self.pool)
            .await?;
        self.bookings_changed(tenant).await;
        Ok(())
    }

    pub async fn bookings_for_call(&self, tenant: &str, call_id: &str) -> Result<Vec<BookingRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {BOOKING_COLUMNS} FROM bookings WHERE tenant = $1 AND call_id = $2 ORDER BY start_at"
        ))
        .bind(tenant)
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(booking_from_row).collect()
    }

    /// Appends to the audit trail. `detail` must not contain personal data.
    pub async fn audit(
        &self,
        tenant: &str,
        call_id: Option<&str>,
        step_id: Option<i64>,
        action: &str,
        detail: &Value,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit (tenant, call_id, step_id, at, action, detail) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(tenant)
            .bind(call_id)
            .bind(step_id)
            .bind(ms(at))
            .bind(action)
            .bind(detail.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn audit_for_call(&self, tenant: &str, call_id: &str) -> Result<Vec<(String, Value)>, StoreError> {
        let rows = sqlx::query("SELECT action, detail FROM audit WHERE tenant = $1 AND call_id = $2 ORDER BY id")
            .bind(tenant)
            .bind(call_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok((r.try_get("action")?, serde_json::from_str(&detail).unwrap_or(Value::Null)))
            })
            .collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Which engine a store runs on. The SQL is shared; this names the few places it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a store URL names, or a clear error for anything else.
    pub fn of_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Other(format!(
                "unsupported store URL (expected sqlite://PATH or postgres://…): {}",
                redact_url(url)
            )))
        }
    }

    /// SQL reading the text of a top-level key of a JSON text column.
    fn json_text(self, column: &str, key: &str) -> String {
        match self {
            Backend::Sqlite => format!("json_extract({column}, '$.{key}')"),
            Backend::Postgres => format!("({column}::jsonb ->> '{key}')"),
        }
    }
}

/// A store URL without its password, for errors and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `$start, $start+1, …` — `n` placeholders for an `IN (…)` list.
fn placeholders(start: usize, n: usize) -> String {
    (start..start + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

async fn open_sqlite(url: &str) -> Result<AnyPool, StoreError> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Other(format!("not a sqlite URL: {url}")))?;
    if let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", parent.display())))?;
    }
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // FULL: an acknowledged end_call survives power loss, not only a process crash.
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; \
                     PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        })
        .connect(&format!("sqlite://{path}?mode=rwc"))
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    Ok(pool)
}

/// Connections per instance: holds, claims and hangups of one instance share them.
const PG_MAX_CONNECTIONS: u32 = 16;

async fn open_postgres(url: &str) -> Result<AnyPool, StoreError> {
    let pool = AnyPoolOptions::new().max_connections(PG_MAX_CONNECTIONS).connect(url).await?;
    // Two instances starting together: sqlx's migrator serializes them on an advisory lock.
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(pool)
}

/// A step's columns as [`step_from_row`] reads them (`s`: the step, `p`: its parent).
const STEP_COLUMNS: &str = "s.id, s.call_id, s.tenant, s.seq, s.kind, s.payload, s.depends_on, s.idempotency_key,
     s.status, s.attempts, s.first_attempt_at, s.external_id, s.last_error, s.lease_owner,
     p.external_id AS parent_external_id";

/// The step's lease is still as the worker read it (`$3` the holder it read, `''` for none).
const LEASE_HELD: &str = "COALESCE(lease_owner, '') = $3";
const LEASE_HELD_4: &str = "COALESCE(lease_owner, '') = $4";
const LEASE_HELD_6: &str = "COALESCE(lease_owner, '') = $6";
/// A finished attempt frees the step for whoever's turn is next.
const LEASE_RELEASED: &str = "lease_owner = NULL, lease_until = NULL";

/// How long `/readyz` waits for the database (a hung PostgreSQL answers 503, not a hang).
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `SELECT 1` on `pool` within `limit`: false on an error or a timeout.
async fn ping_within(pool: &AnyPool, limit: std::time::Duration) -> bool {
    matches!(tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(pool)).await, Ok(Ok(_)))
}

const BOOKING_COLUMNS: &str = "idempotency_key, tenant, call_id, staff_id, calendar_id, event_id, service_id, start_at, end_at, status, caller_phone, caller_email";

fn booking_from_row(r: sqlx::any::AnyRow) -> Result<BookingRow, StoreError> {
    Ok(BookingRow {
        idempotency_key: r.try_get("idempotency_key")?,
        tenant: r.try_get("tenant")?,
        call_id: r.try_get("call_id")?,
        staff_id: r.try_get("staff_id")?,
        calendar_id: r.try_get("calendar_id")?,
        event_id: r.try_get("event_id")?,
        service_id: r.try_get("service_id")?,
        start_at: r.try_get("start_at")?,
        end_at: r.try_get("end_at")?,
        status: r.try_get("status")?,
        caller_phone: r.try_get("caller_phone")?,
        caller_email: r.try_get("caller_email")?,
    })
}

fn step_from_row(r: sqlx::any::AnyRow) -> Result<StepRow, StoreError> {
    let payload: String = r.try_get("payload")?;
    Ok(StepRow {
        id: r.try_get("id")?,
        call_id: r.try_get("call_id")?,
        tenant: r.try_get("tenant")?,
        seq: r.try_get("seq")?,
        kind: r.try_get("kind")?,
        payload: serde_json::from_str(&payload).map_err(|e| StoreError::Other(format!("step payload: {e}")))?,
        depends_on: r.try_get("depends_on")?,
        idempotency_key: r.try_get("idempotency_key")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        first_attempt_at: r.try_get("first_attempt_at")?,
        external_id: r.try_get("external_id")?,
        last_error: r.try_get("last_error")?,
        parent_external_id: r.try_get("parent_external_id")?,
        lease_owner: r.try_get("lease_owner")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn booking(key: &str, phone: &str, start: Timestamp) -> BookingRow {
        BookingRow {
            idempotency_key: key.into(),
            tenant: "demo".into(),
            call_id: format!("call-{key}"),
            staff_id: "ann".into(),
            calendar_id: "cal".into(),
            event_id: format!("ev-{key}"),
            service_id: "consult".into(),
            start_at: ms(start),
            end_at: ms(start) + 30 * 60_000,
            status: "confirmed".into(),
            caller_phone: Some(phone.into()),
            caller_email: None,
        }
    }

    async fn upcoming_bookings_are_served_from_memory_until_a_booking_write_and_filtered_by_the_clock(s: &Store) {
        let now: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let hour = jiff::SignedDuration::from_hours(1);
        let keys = |rows: Vec<BookingRow>| rows.into_iter().map(|b| b.idempotency_key).collect::<Vec<_>>();
        let upcoming = |at: Timestamp| s.upcoming_bookings_for_caller("demo", Some("+14155550134"), None, at);
        s.insert_booking(&booking("a", "+14155550134", now + hour), now).await.unwrap();
        s.insert_booking(&booking("b", "+14155550134", now + hour * 3), now).await.unwrap();
        s.insert_booking(&booking("other", "+14155550199", now + hour), now).await.unwrap();
        assert_eq!(keys(upcoming(now).await.unwrap()), ["a", "b"]);

        // A change behind the store's back (no generation bump) is not seen: the answer is cached.
        sqlx::query("UPDATE bookings SET status = 'cancelled' WHERE idempotency_key = 'b'")
            .execute(&s.pool)
            .await
            .unwrap();
        assert_eq!(keys(upcoming(now).await.unwrap()), ["a", "b"], "served from memory");
        // As the clock passes a booking's start, the cached answer drops it without a query.
        assert_eq!(keys(upcoming(now + hour * 2).await.unwrap()), ["b"]);
        // A clock set back is never answered from a later read.
        assert_eq!(keys(upcoming(now - hour).await.unwrap()), ["a"], "re-read: b is cancelled in the table");

        // Every write through the store invalidates: insert, move, status.
        s.insert_booking(&booking("c", "+14155550134", now + hour * 5), now).await.unwrap();
        assert_eq!(keys(upcoming(now).await.unwrap()), ["a", "c"]);
        s.move_booking("demo", "a", now - hour * 2, now - hour, now).await.unwrap();
        assert_eq!(keys(upcoming(now).await.unwrap()), ["c"]);
        s.set_booking_status("demo", "c", "cancelled", now).await.unwrap();
        assert!(upcoming(now).await.unwrap().is_empty());
    }

    async fn a_call_gets_exactly_one_plan_and_steps_wait_for_their_dependency(s: &Store) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        assert!(s.record_call_start("c1", "demo", Some("+14155550134"), "+15550100000", t0).await.unwrap());
        assert!(!s.record_call_start("c1", "demo", None, "+15550100000", t0).await.unwrap());
        let steps = vec![
            NewStep {
                seq: 0,
                kind: "contact".into(),
                payload: json!({}),
                depends_on: None,
                idempotency_key: "c1:0".into(),
            },
            NewStep {
                seq: 1,
                kind: "call_log".into(),
                payload: json!({}),
                depends_on: Some(0),
                idempotency_key: "c1:1".into(),
            },
        ];
        assert!(s.close_call_with_plan("c1", "demo", "end_call", &json!({}), &steps, t0).await.unwrap());
        assert!(!s.close_call_with_plan("c1", "demo", "disconnected", &json!({}), &steps, t0).await.unwrap());
        let due = s.due_steps(t0, 10).await.unwrap();
        assert_eq!(due.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![0]);
        s.record_external_id(&due[0], "contact-9").await.unwrap();
        s.record_attempt(&due[0], &AttemptResult::Done { external_id: None }, "test", &json!({}), t0).await.unwrap();
        let due = s.due_steps(t0, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].parent_external_id.as_deref(), Some("contact-9"));
        assert_eq!(s.call("demo", "c1").await.unwrap().unwrap().sync_status, "pending");
        s.record_attempt(&due[0], &AttemptResult::Done { external_id: None }, "test", &json!({}), t0).await.unwrap();
        assert_eq!(s.call("demo", "c1").await.unwrap().unwrap().sync_status, "synced");
        // Tenant scoping: another tenant cannot read the call.
        assert!(s.call("other", "c1").await.unwrap().is_none());
    }

    async fn retried_steps_are_not_due_before_their_time(s: &Store) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        s.record_call_start("c2", "demo", None, "+15550100000", t0).await.unwrap();
        let steps = vec![NewStep {
            seq: 0,
            kind: "contact".into(),
            payload: json!({}),
            depends_on: None,
            idempotency_key: "k".into(),
        }];
        s.close_call_with_plan("c2", "demo", "end_call", &json!({}), &steps, t0).await.unwrap();
        let step = s.due_steps(t0, 10).await.unwrap().remove(0);
        let later = t0 + jiff::SignedDuration::from_secs(2);
        s.record_attempt(
            &step,
            &AttemptResult::Retry { next_at: later, error: "transient".into() },
            "test",
            &json!({}),
            t0,
        )
        .await
        .unwrap();
        assert!(s.due_steps(t0, 10).await.unwrap().is_empty());
        assert_eq!(s.next_due_at().await.unwrap(), Some(later));
        assert_eq!(s.due_steps(later, 10).await.unwrap().len(), 1);
        s.record_attempt(&step, &AttemptResult::Dead { error: "gave up".into() }, "test", &json!({}), later)
            .await
            .unwrap();
        assert_eq!(s.call("demo", "c2").await.unwrap().unwrap().sync_status, "failed");
    }

    /// A database that accepts the connection and never answers (a hung PostgreSQL): the ping
    /// gives up after [`PING_TIMEOUT`] and says no, so `/readyz` answers 503 instead of hanging.
    /// The pool itself would wait an hour for a connection; the guard only keeps a regression
    /// from hanging the test run.
    #[tokio::test]
    async fn a_database_that_never_answers_fails_the_ping_instead_of_hanging_it() {
        sqlx::any::install_default_drivers();
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let holder = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                open.push(conn);
            }
        });
        let pool = AnyPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(3600))
            .connect_lazy(&format!("postgres://postgres@{addr}/test"))
            .unwrap();
        let answered = tokio::time::timeout(std::time::Duration::from_secs(60), ping_within(&pool, PING_TIMEOUT)).await;
        assert_eq!(answered, Ok(false), "the ping answers (no) on its own");
        holder.abort();
    }

    both_backends!(
        upcoming_bookings_are_served_from_memory_until_a_booking_write_and_filtered_by_the_clock,
        a_call_gets_exactly_one_plan_and_steps_wait_for_their_dependency,
        retried_steps_are_not_due_before_their_time
    );
}
