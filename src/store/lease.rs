//! Several instances on one store (issue 13): every instance has an id (a UUID chosen when its
//! `Store` opens), leaves a heartbeat in `instances`, and takes outbox steps with a lease.
//!
//! A claim marks due steps as this instance's until `now + LEASE` in one statement — on
//! PostgreSQL `UPDATE … WHERE id IN (SELECT … FOR UPDATE OF s SKIP LOCKED LIMIT n)`, so two
//! workers claiming at once lock different rows and neither waits for the other; on SQLite (one
//! writer) the same conditional UPDATE is atomic as it stands. A step whose lease ran out is
//! claimable by anyone: that is how a dead instance's steps are taken over. A result is recorded
//! only while the lease is still the one the worker read (`Store::record_attempt`), so a worker
//! that lost its lease cannot overwrite the new owner's result.
//!
//! Leases are renewed by the heartbeat ([`Store::heartbeat`], every [`HEARTBEAT_EVERY`] of the
//! domain clock, `crate::instance`) rather than sized to the longest step: a step may wait on
//! its rate budget and make several requests of up to 10 s each, which no fixed lease bounds,
//! while a live instance's heartbeat keeps its work in hand whatever it takes, and a dead one's
//! steps are free at most [`LEASE`] after its last beat.
//!
//! A dead instance's open calls are taken over by a claim ([`Store::claim_dead_instances`]):
//! one statement deletes the `instances` rows whose heartbeat is older than
//! [`INSTANCE_DEAD_AFTER`] and hands those instances' open calls to the claimant. Two instances
//! claiming at once contend on the row lock of the `DELETE`: the second re-checks the row after
//! the first commits, finds it gone and gets nothing, so each dead instance's calls go to exactly
//! one claimant, and its row is pruned by the same statement.

use jiff::{SignedDuration, Timestamp};
use sqlx::Row;

use super::{Backend, CallRow, STEP_COLUMNS, StepRow, Store, StoreError, ms, placeholders, step_from_row};

/// How long a claim holds a step without being renewed.
pub const LEASE: SignedDuration = SignedDuration::from_secs(60);
/// How often a live instance records its heartbeat and renews its leases.
pub const HEARTBEAT_EVERY: SignedDuration = SignedDuration::from_secs(10);
/// An instance whose heartbeat is this old is dead: its open calls are recovered by the live or
/// starting instance that claims them first (six missed beats).
pub const INSTANCE_DEAD_AFTER: SignedDuration = SignedDuration::from_secs(60);
/// How often (domain time) a live instance's heartbeat task looks for dead instances to take
/// over: a dead instance's open calls are recovered between [`INSTANCE_DEAD_AFTER`] and
/// `INSTANCE_DEAD_AFTER + TAKEOVER_EVERY + HEARTBEAT_EVERY` after its last beat.
pub const TAKEOVER_EVERY: SignedDuration = SignedDuration::from_secs(30);

/// What one [`Store::claim_dead_instances`] took: the dead instances whose rows it deleted and
/// their open calls, now this instance's to recover.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Takeover {
    pub instances: Vec<String>,
    pub calls: Vec<CallRow>,
}

/// One instance's row in `instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
}

/// Who holds a step's lease and until when (none once the step's attempt was recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLease {
    pub owner: Option<String>,
    pub until: Option<Timestamp>,
}

impl Store {
    /// This instance's id: the owner of its claims, its calls and its heartbeat row.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// The same store (same pool) acting as another instance: for tests and benchmarks that
    /// need two claimants, or a dead instance's leftovers, without a second process.
    pub fn as_instance(&self, id: &str) -> Store {
        Store {
            instance: id.into(),
            beats: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
            presumed_dead: std::sync::Arc::default(),
            ..self.clone()
        }
    }

    /// Claims up to `limit` steps due at `now` (pending, time come, dependency done, no live
    /// lease) for this instance until `now + LEASE`, oldest first. Two instances claiming at once
    /// never get the same step.
    pub async fn claim_steps(&self, now: Timestamp, limit: i64) -> Result<Vec<StepRow>, StoreError> {
        const DUE: &str = "SELECT s.id FROM steps s LEFT JOIN steps p ON p.id = s.depends_on
             WHERE s.status = 'pending' AND s.next_attempt_at <= $3
               AND (s.lease_until IS NULL OR s.lease_until <= $3)
               AND (s.depends_on IS NULL OR p.status = 'done')
             ORDER BY s.next_attempt_at, s.id LIMIT $4";
        let sql = match self.backend {
            // Rows another claim has locked are skipped, not waited for: concurrent workers take
            // disjoint batches (https://www.postgresql.org/docs/current/sql-select.html#SQL-FOR-UPDATE-SHARE).
            // Picked once in a materialized CTE: as an `IN (subquery)` the planner may run the
            // subquery more than once and claim more than `LIMIT` rows (seen in the tests).
            Backend::Postgres => format!(
                "WITH picked AS MATERIALIZED ({DUE} FOR UPDATE OF s SKIP LOCKED)
                 UPDATE steps SET lease_owner = $1, lease_until = $2 FROM picked
                 WHERE steps.id = picked.id AND steps.status = 'pending'
                   AND (steps.lease_until IS NULL OR steps.lease_until <= $3)
                 RETURNING steps.id"
            ),
            // One writer at a time: the statement is atomic as it stands.
            Backend::Sqlite => format!(
                "UPDATE steps SET lease_owner = $1, lease_until = $2
                 WHERE id IN ({DUE}) AND status = 'pending' AND (lease_until IS NULL OR lease_until <= $3)
                 RETURNING id"
            ),
        };
        let ids: Vec<i64> = sqlx::query_scalar(&sql)
            .bind(&*self.instance)
            .bind(ms(now + LEASE))
            .bind(ms(now))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM steps s LEFT JOIN steps p ON p.id = s.depends_on
             WHERE s.id IN ({}) AND s.lease_owner = $1 ORDER BY s.next_attempt_at, s.id",
            placeholders(2, ids.len())
        );
        let mut query = sqlx::query(&sql).bind(&*self.instance);
        for id in &ids {
            query = query.bind(id);
        }
        query.fetch_all(&self.pool).await?.into_iter().map(step_from_row).collect()
    }

    /// Records this instance's heartbeat at `now` and renews every lease it holds on a step
    /// still pending to `now + LEASE`. Returns how many leases were renewed.
    ///
    /// A beat after the first that finds the instance's row gone means another instance claimed
    /// this one as dead (it stopped beating for [`INSTANCE_DEAD_AFTER`]: a stall, a partition)
    /// and closed its open calls as disconnected: the row is recorded again, the event is logged
    /// and counted ([`Store::times_presumed_dead`]) — those calls' own end, when it comes, finds
    /// them closed and their recovered plan stands.
    pub async fn heartbeat(&self, now: Timestamp) -> Result<u64, StoreError> {
        let at = ms(now);
        let mut tx = self.pool.begin().await?;
        let beat = sqlx::query("UPDATE instances SET heartbeat_at = $2 WHERE id = $1")
            .bind(&*self.instance)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if beat == 0 {
            sqlx::query(
                "INSERT INTO instances (id, started_at, heartbeat_at) VALUES ($1, $2, $2)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            )
            .bind(&*self.instance)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        let renewed = sqlx::query(
            "UPDATE steps SET lease_until = $1 WHERE lease_owner = $2 AND status = 'pending' AND lease_until < $1",
        )
        .bind(ms(now + LEASE))
        .bind(&*self.instance)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if beat == 0 && *self.beats.borrow() > 0 {
            self.presumed_dead.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The instance id is a UUID chosen at start: no personal data.
            tracing::error!(
                instance = %self.instance,
                "this instance was presumed dead by another (no heartbeat for {INSTANCE_DEAD_AFTER:?}); its open calls were recovered there"
            );
        }
        self.beats.send_modify(|n| *n += 1);
        Ok(renewed)
    }

    /// How many of this instance's beats found it claimed as dead by another ([`Store::heartbeat`]).
    pub fn times_presumed_dead(&self) -> u64 {
        self.presumed_dead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// On SQLite one instance runs at a time, so a lease that is not this instance's was left
    /// by a run that died: released at start rather than waited out (a restart after a crash
    /// resumes its steps at once). On PostgreSQL another instance's lease may be a live one's:
    /// it is left to run out. Returns how many leases were released.
    pub async fn release_leftover_leases(&self) -> Result<u64, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        let r = sqlx::query(
            "UPDATE steps SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL AND lease_owner <> $1",
        )
        .bind(&*self.instance)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Claims every other instance whose heartbeat is [`INSTANCE_DEAD_AFTER`] old or older at
    /// `now`: deletes its row (pruning) and makes its open calls this instance's, in one
    /// statement, then returns those calls for recovery. Each dead instance is claimed by exactly
    /// one claimant, however many claim at once (module docs). An instance that still beats —
    /// serving, or draining its last calls at shutdown (its heartbeat stops last) — is never
    /// claimed. On SQLite one instance runs at a time and start-up recovery covers every other
    /// run's calls (`Store::open_calls`): nothing to claim.
    pub async fn claim_dead_instances(&self, now: Timestamp) -> Result<Takeover, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(Takeover::default());
        }
        let cutoff = ms(now) - INSTANCE_DEAD_AFTER.as_millis() as i64;
        // The UPDATE reads the DELETE's output, so it runs after it, on the rows it removed:
        // https://www.postgresql.org/docs/current/queries-with.html#QUERIES-WITH-MODIFYING
        let rows = sqlx::query(
            "WITH dead AS (DELETE FROM instances WHERE id <> $1 AND heartbeat_at <= $2 RETURNING id),
                  adopted AS (UPDATE calls SET instance_id = $1 FROM dead
                              WHERE calls.instance_id = dead.id AND calls.ended_at IS NULL
                              RETURNING calls.call_id, calls.tenant)
             SELECT 'instance' AS kind, id AS name, '' AS tenant FROM dead
             UNION ALL SELECT 'call', call_id, tenant FROM adopted",
        )
        .bind(&*self.instance)
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        let mut taken = Takeover::default();
        for r in rows {
            let (kind, name, tenant): (String, String, String) =
                (r.try_get("kind")?, r.try_get("name")?, r.try_get("tenant")?);
            if kind == "instance" {
                taken.instances.push(name);
            } else if let Some(call) = self.call(&tenant, &name).await? {
                taken.calls.push(call);
            }
        }
        taken.instances.sort();
        taken.calls.sort_by(|a, b| (&a.tenant, &a.call_id).cmp(&(&b.tenant, &b.call_id)));
        Ok(taken)
    }

    /// Every instance's row, by id (operators and tests).
    pub async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        let rows =
            sqlx::query("SELECT id, started_at, heartbeat_at FROM instances ORDER BY id").fetch_all(&self.pool).await?;
        let at = |m: i64| Timestamp::from_millisecond(m).unwrap_or(Timestamp::UNIX_EPOCH);
        rows.into_iter()
            .map(|r| {
                Ok(InstanceRow {
                    id: r.try_get("id")?,
                    started_at: at(r.try_get("started_at")?),
                    heartbeat_at: at(r.try_get("heartbeat_at")?),
                })
            })
            .collect()
    }

    /// Changes after every heartbeat this instance records (tests wait on it).
    pub fn heartbeats(&self) -> tokio::sync::watch::Receiver<u64> {
        self.beats.subscribe()
    }

    /// A step's lease as it stands.
    pub async fn step_lease(&self, step_id: i64) -> Result<Option<StepLease>, StoreError> {
        let row = sqlx::query("SELECT lease_owner, lease_until FROM steps WHERE id = $1")
            .bind(step_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let until: Option<i64> = r.try_get("lease_until")?;
            Ok(StepLease {
                owner: r.try_get("lease_owner")?,
                until: until.and_then(|m| Timestamp::from_millisecond(m).ok()),
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;
    use crate::store::{AttemptResult, NewStep};

    fn t0() -> Timestamp {
        "2026-11-23T14:00:00Z".parse().unwrap()
    }

    /// `calls` closed calls of two steps each (a contact, a call log depending on it).
    async fn plans(s: &Store, calls: usize) {
        for c in 0..calls {
            let id = format!("lease-{c}");
            s.record_call_start(&id, "demo", Some("+14155550134"), "+15550100000", t0()).await.unwrap();
            let steps: Vec<NewStep> = (0..2)
                .map(|seq| NewStep {
                    seq,
                    kind: if seq == 0 { "contact".into() } else { "call_log".into() },
                    payload: json!({}),
                    depends_on: (seq == 1).then_some(0),
                    idempotency_key: format!("{id}:{seq}"),
                })
                .collect();
            assert!(s.close_call_with_plan(&id, "demo", "end_call", &json!({}), &steps, t0()).await.unwrap());
        }
    }

    async fn done(s: &Store, step: &StepRow) -> bool {
        s.record_attempt(step, &AttemptResult::Done { external_id: Some("x".into()) }, "t", &json!({}), t0())
            .await
            .unwrap()
    }

    /// Two instances drain 200 steps, claiming small batches at the same moments: every step
    /// is claimed exactly once and every claim's result is recorded.
    async fn two_instances_claiming_at_once_never_get_the_same_step(s: &Store) {
        plans(s, 100).await;
        let (a, b) = (s.as_instance("a"), s.as_instance("b"));
        let drain = |me: Store| async move {
            let mut mine = Vec::new();
            loop {
                let batch = me.claim_steps(t0(), 7).await.unwrap();
                if batch.is_empty() && me.next_due_at().await.unwrap().is_none_or(|at| at > t0()) {
                    return mine;
                }
                for step in batch {
                    assert_eq!(step.lease_owner.as_deref(), Some(me.instance_id()));
                    assert!(done(&me, &step).await, "the claimant's result is recorded");
                    mine.push(step.id);
                }
                tokio::task::yield_now().await;
            }
        };
        let (ta, tb) = (tokio::spawn(drain(a)), tokio::spawn(drain(b)));
        let (got_a, got_b) = (ta.await.unwrap(), tb.await.unwrap());
        let all: HashSet<i64> = got_a.iter().chain(&got_b).copied().collect();
        assert_eq!(got_a.len() + got_b.len(), 200, "no step claimed twice: {} + {}", got_a.len(), got_b.len());
        assert_eq!(all.len(), 200, "every step claimed");
        assert!(s.due_steps(t0(), 1000).await.unwrap().is_empty());
        for c in 0..100 {
            assert_eq!(s.call("demo", &format!("lease-{c}")).await.unwrap().unwrap().sync_status, "synced");
        }
    }

    /// A claim holds until its lease runs out; then another instance takes the step over, and the
    /// first claimant's late result is refused in favour of the new owner's.
    async fn an_expired_lease_is_taken_over_and_the_old_owners_result_is_refused(s: &Store) {
        plans(s, 1).await;
        let (a, b) = (s.as_instance("a"), s.as_instance("b"));
        let claimed = a.claim_steps(t0(), 10).await.unwrap();
        assert_eq!(claimed.iter().map(|c| c.seq).collect::<Vec<_>>(), [0], "the call log waits for its contact");
        let step = claimed[0].clone();
        let lease = s.step_lease(step.id).await.unwrap().unwrap();
        assert_eq!(lease, StepLease { owner: Some("a".into()), until: Some(t0() + LEASE) });
        assert!(b.claim_steps(t0(), 10).await.unwrap().is_empty(), "a live lease is not claimable");
        assert!(b.due_steps(t0(), 10).await.unwrap().is_empty());
        // B's worker wakes when A's lease runs out; A's own leases are not a wake-up for A.
        assert_eq!(b.next_due_at().await.unwrap(), Some(t0() + LEASE));
        assert_eq!(a.next_due_at().await.unwrap(), Some(t0()));

        let expired = t0() + LEASE;
        let taken = b.claim_steps(expired, 10).await.unwrap();
        assert_eq!(taken.iter().map(|t| t.id).collect::<Vec<_>>(), [step.id]);
        // A finishes late: nothing it records lands.
        assert!(!a.record_external_id(&step, "from-a").await.unwrap());
        assert!(!done(&a, &step).await, "A lost the lease");
        let retry = AttemptResult::Retry { next_at: expired, error: "late".into() };
        assert!(!a.record_attempt(&step, &retry, "t", &json!({}), expired).await.unwrap());
        let row = &s.steps_for_call("demo", "lease-0").await.unwrap()[0];
        assert_eq!((row.status.as_str(), row.attempts, row.external_id.as_deref()), ("pending", 0, None));
        // The new owner's result stands, and the lease is released with it.
        assert!(b.record_external_id(&taken[0], "from-b").await.unwrap());
        assert!(done(&b, &taken[0]).await);
        assert!(!done(&a, &step).await, "still refused after the step is done");
        let row = &s.steps_for_call("demo", "lease-0").await.unwrap()[0];
        assert_eq!((row.status.as_str(), row.attempts, row.external_id.as_deref()), ("done", 1, Some("x")));
        assert_eq!(s.step_lease(step.id).await.unwrap().unwrap(), StepLease { owner: None, until: None });
        // Its dependant is claimable now, by anyone.
        assert_eq!(a.claim_steps(expired, 10).await.unwrap().len(), 1);
    }

    /// A live instance's heartbeat renews its leases, so a long step is not taken over; a step
    /// leased by an instance that stopped beating is free once the lease runs out.
    async fn the_heartbeat_renews_a_live_instances_leases(s: &Store) {
        plans(s, 2).await;
        let (a, b) = (s.as_instance("a"), s.as_instance("b"));
        let mine = a.claim_steps(t0(), 1).await.unwrap();
        let theirs = b.claim_steps(t0(), 1).await.unwrap();
        assert_eq!((mine.len(), theirs.len()), (1, 1));
        let beats = a.heartbeats();
        let half = t0() + LEASE / 2;
        assert_eq!(a.heartbeat(half).await.unwrap(), 1, "A renews its one lease");
        assert!(beats.has_changed().unwrap());
        let past_first_lease = t0() + LEASE;
        let free = a.claim_steps(past_first_lease, 10).await.unwrap();
        assert_eq!(free.iter().map(|f| f.id).collect::<Vec<_>>(), [theirs[0].id], "B stopped beating");
        assert!(b.claim_steps(past_first_lease, 10).await.unwrap().is_empty(), "A's renewed lease holds");
        assert_eq!(s.step_lease(mine[0].id).await.unwrap().unwrap().until, Some(half + LEASE));
    }

    /// Recovery closes only calls of instances that are gone: on SQLite every other run's, on
    /// PostgreSQL those whose instance stopped beating.
    async fn open_calls_to_recover_are_other_instances_and_on_postgresql_only_dead_ones(s: &Store) {
        let (live, dead) = (s.as_instance("live"), s.as_instance("dead"));
        live.heartbeat(t0()).await.unwrap();
        dead.heartbeat(t0() - INSTANCE_DEAD_AFTER).await.unwrap();
        live.record_call_start("on-live", "demo", None, "+15550100000", t0()).await.unwrap();
        dead.record_call_start("on-dead", "demo", None, "+15550100000", t0()).await.unwrap();
        s.record_call_start("on-me", "demo", None, "+15550100000", t0()).await.unwrap();
        let ids = |calls: Vec<crate::store::CallRow>| {
            let mut ids = calls.into_iter().map(|c| c.call_id).collect::<Vec<_>>();
            ids.sort();
            ids
        };
        let recovered = ids(s.open_calls(t0(), INSTANCE_DEAD_AFTER).await.unwrap());
        match s.backend() {
            Backend::Sqlite => assert_eq!(recovered, ["on-dead", "on-live"]),
            Backend::Postgres => assert_eq!(recovered, ["on-dead"]),
        }
        assert_eq!(ids(live.open_calls(t0(), INSTANCE_DEAD_AFTER).await.unwrap()).len(), 2, "never its own");
    }

    /// A restart on SQLite resumes a dead run's claimed steps at once; on PostgreSQL another
    /// instance's lease is left to run out (that instance may be alive).
    async fn a_restart_releases_a_previous_runs_leases_only_on_sqlite(s: &Store) {
        plans(s, 1).await;
        let gone = s.as_instance("previous-run");
        assert_eq!(gone.claim_steps(t0(), 10).await.unwrap().len(), 1);
        let released = s.release_leftover_leases().await.unwrap();
        let claimable = s.claim_steps(t0(), 10).await.unwrap().len();
        match s.backend() {
            Backend::Sqlite => assert_eq!((released, claimable), (1, 1)),
            Backend::Postgres => assert_eq!((released, claimable), (0, 0)),
        }
        assert_eq!(gone.release_leftover_leases().await.unwrap(), u64::from(s.backend() == Backend::Sqlite));
    }

    /// Two live instances claim at once: the dead instances (heartbeat at the cutoff or older) go
    /// to exactly one of them, with their open calls (not their closed ones), and their rows are
    /// pruned; an instance beating within the window — slow, or draining its last calls — keeps
    /// its row and its calls. On SQLite there is nothing to claim.
    async fn dead_instances_are_claimed_once_with_their_open_calls_and_pruned(s: &Store) {
        let (a, b) = (s.as_instance("a"), s.as_instance("b"));
        let (dead, edge, slow) = (s.as_instance("dead"), s.as_instance("edge"), s.as_instance("slow"));
        let cutoff = t0() - INSTANCE_DEAD_AFTER;
        a.heartbeat(t0()).await.unwrap();
        b.heartbeat(t0()).await.unwrap();
        dead.heartbeat(cutoff - SignedDuration::from_secs(30)).await.unwrap();
        edge.heartbeat(cutoff).await.unwrap();
        slow.heartbeat(cutoff + SignedDuration::from_millis(1)).await.unwrap();
        for (who, call) in [(&dead, "d-1"), (&dead, "d-2"), (&dead, "d-closed"), (&edge, "e-1"), (&slow, "s-1")] {
            assert!(who.record_call_start(call, "demo", Some("+14155550134"), "+15550100000", t0()).await.unwrap());
        }
        assert!(dead.close_call_with_plan("d-closed", "demo", "end_call", &json!({}), &[], t0()).await.unwrap());

        let (got_a, got_b) = tokio::join!(a.claim_dead_instances(t0()), b.claim_dead_instances(t0()));
        let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
        let ids = |v: &[&Takeover]| {
            let mut ids: Vec<String> = v.iter().flat_map(|t| t.calls.iter().map(|c| c.call_id.clone())).collect();
            ids.sort();
            ids
        };
        let instances: Vec<&String> = got_a.instances.iter().chain(&got_b.instances).collect();
        let rows: Vec<String> = s.instances().await.unwrap().into_iter().map(|r| r.id).collect();
        match s.backend() {
            Backend::Sqlite => {
                assert_eq!((&got_a, &got_b), (&Takeover::default(), &Takeover::default()));
                assert_eq!(rows, ["a", "b", "dead", "edge", "slow"], "nothing pruned");
                return;
            }
            Backend::Postgres => {
                let mut instances = instances;
                instances.sort();
                assert_eq!(instances, ["dead", "edge"], "each dead instance claimed once");
                assert_eq!(ids(&[&got_a, &got_b]), ["d-1", "d-2", "e-1"], "each open call adopted once");
                assert_eq!(rows, ["a", "b", "slow"], "the dead rows are pruned");
            }
        }
        // An adopted call belongs to its claimant now: nobody else's start-up recovery lists it,
        // and its claimant does not list its own.
        for taken in [&got_a, &got_b] {
            for call in &taken.calls {
                assert_eq!(call.ended_at, None, "{}: still open, to be recovered", call.call_id);
            }
        }
        let leftovers = s.open_calls(t0(), INSTANCE_DEAD_AFTER).await.unwrap();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Nothing is claimed twice, and a slow instance is claimed only once it is past the window.
        assert_eq!(a.claim_dead_instances(t0()).await.unwrap(), Takeover::default());
        let later = t0() + SignedDuration::from_millis(1);
        let slow_taken = b.claim_dead_instances(later).await.unwrap();
        assert_eq!(slow_taken.instances, ["slow"]);
        assert_eq!(slow_taken.calls.iter().map(|c| c.call_id.as_str()).collect::<Vec<_>>(), ["s-1"]);
        // A claimant never claims itself, however old its own heartbeat.
        let far = t0() + INSTANCE_DEAD_AFTER * 10;
        let taken = a.claim_dead_instances(far).await.unwrap();
        assert_eq!(taken.instances, ["b"]);
        assert_eq!(s.instances().await.unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>(), ["a"]);
        // B was only stalled: its next beat finds it was claimed, records its row again and
        // counts it; A, never claimed, counts nothing.
        assert_eq!(b.times_presumed_dead(), 0);
        b.heartbeat(far).await.unwrap();
        a.heartbeat(far).await.unwrap();
        assert_eq!((a.times_presumed_dead(), b.times_presumed_dead()), (0, 1));
        assert_eq!(s.instances().await.unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>(), ["a", "b"]);
    }

    both_backends!(
        dead_instances_are_claimed_once_with_their_open_calls_and_pruned,
        a_restart_releases_a_previous_runs_leases_only_on_sqlite,
        two_instances_claiming_at_once_never_get_the_same_step,
        an_expired_lease_is_taken_over_and_the_old_owners_result_is_refused,
        the_heartbeat_renews_a_live_instances_leases,
        open_calls_to_recover_are_other_instances_and_on_postgresql_only_dead_ones
    );
}
