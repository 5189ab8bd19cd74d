//! The shared hold ledger (PostgreSQL only, migration 0014): the rows behind
//! `booking::holds::Holds::Shared`. Its semantics are the in-memory ledger's
//! (`booking/ledger.rs`); overlap is refused by the table's exclusion constraint on
//! `(tenant, staff_id, during)`, so no interleaving of instances can admit two overlapping holds.
//! Each insert (one statement, `Store::insert_hold`) first takes a transaction-scoped advisory
//! lock on its (tenant, staff): inserts for one staff member queue on it instead of deadlocking
//! over the expired rows they delete, and a refused overlap costs one round trip, not a wait for
//! another transaction's outcome.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Store, StoreError};

/// One hold or booking; times in ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    pub id: String,
    pub tenant: String,
    pub staff_id: String,
    pub call_id: String,
    pub slot_start: i64,
    pub slot_end: i64,
    pub blocked_start: i64,
    pub blocked_end: i64,
    pub expires_at: i64,
    pub confirmed: bool,
}

/// Counts across tenants (tests, the sandbox admin page).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldCounts {
    /// Unconfirmed holds not yet expired.
    pub live: i64,
    pub bookings: i64,
    /// Unconfirmed holds, expired-but-unpurged included.
    pub outstanding: i64,
}

const HOLD_COLUMNS: &str =
    "id, tenant, staff_id, call_id, slot_start, slot_end, blocked_start, blocked_end, expires_at, confirmed";

fn hold_from_row(r: AnyRow) -> Result<HoldRow, StoreError> {
    Ok(HoldRow {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        staff_id: r.try_get("staff_id")?,
        call_id: r.try_get("call_id")?,
        slot_start: r.try_get("slot_start")?,
        slot_end: r.try_get("slot_end")?,
        blocked_start: r.try_get("blocked_start")?,
        blocked_end: r.try_get("blocked_end")?,
        expires_at: r.try_get("expires_at")?,
        confirmed: r.try_get("confirmed")?,
    })
}

impl Store {
    fn require_shared_holds(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => Ok(()),
            Backend::Sqlite => Err(StoreError::Other("shared holds need PostgreSQL".into())),
        }
    }

    /// Inserts `hold` unless its blocked time overlaps a live hold or a booking of the same
    /// tenant and staff member (`Ok(false)`). The staff member's expired holds are deleted first,
    /// by the same statement.
    ///
    /// One statement in autocommit, one round trip (it was five: begin, lock, delete, insert,
    /// commit — most of a hold's latency under concurrency, BENCHMARKS.md). Its CTEs run in
    /// order because each reads the one before: the advisory lock on (tenant, staff) and
    /// `synchronous_commit` first (the DELETE's one-time filter), then the DELETE of the expired
    /// holds (the INSERT reads its count), then the INSERT. The DELETE's rows are gone for the
    /// exclusion check of the INSERT that follows in the same statement. `ON CONFLICT DO NOTHING`
    /// with no conflict target takes the exclusion constraint as its arbiter
    /// (https://www.postgresql.org/docs/current/sql-insert.html#SQL-ON-CONFLICT): an overlap
    /// inserts no row instead of raising, so the constraint still decides, and a refusal costs no
    /// error and no rollback. (The primary key is an arbiter too; ids are fresh UUIDs.)
    ///
    /// A hold is soft state (the in-memory ledger's, shared): the statement commits without
    /// waiting for its WAL flush (`set_config(…, true)` lasts to the end of the statement's own
    /// transaction, so the connection goes back to the pool unchanged). Its row is visible to
    /// every other transaction at commit, so the exclusion constraint holds across instances all
    /// the same; only a crash of the database server itself could lose a just-taken hold, as a
    /// restart loses the in-memory ledger's — a booking is never a hold alone (the bookings table
    /// is written with the usual durable commit), and the booking commit re-reads the calendar
    /// before it writes. https://www.postgresql.org/docs/current/wal-async-commit.html
    pub async fn insert_hold(&self, hold: &HoldRow, now_ms: i64) -> Result<bool, StoreError> {
        self.require_shared_holds()?;
        let inserted = sqlx::query(&format!(
            "WITH settings AS MATERIALIZED (
                 SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock(hashtextextended($11, 0))
             ), purged AS (
                 DELETE FROM holds
                 WHERE tenant = $2 AND staff_id = $3 AND NOT confirmed AND expires_at <= $12
                   AND EXISTS (SELECT 1 FROM settings)
                 RETURNING 1
             )
             INSERT INTO holds ({HOLD_COLUMNS})
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM (SELECT count(*) FROM purged) AS after_purge
             ON CONFLICT DO NOTHING"
        ))
        .bind(&hold.id)
        .bind(&hold.tenant)
        .bind(&hold.staff_id)
        .bind(&hold.call_id)
        .bind(hold.slot_start)
        .bind(hold.slot_end)
        .bind(hold.blocked_start)
        .bind(hold.blocked_end)
        .bind(hold.expires_at)
        .bind(hold.confirmed)
        .bind(format!("holds:{}:{}", hold.tenant, hold.staff_id))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// The hold (or booking) with this id.
    pub async fn hold(&self, tenant: &str, id: &str) -> Result<Option<HoldRow>, StoreError> {
        self.require_shared_holds()?;
        let row = sqlx::query(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE tenant = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(hold_from_row).transpose()
    }

    /// Runs one conditional statement on a hold and returns the row it touched, if any.
    async fn hold_statement(&self, sql: &str, binds: HoldBinds<'_>) -> Result<Option<HoldRow>, StoreError> {
        self.require_shared_holds()?;
        let mut q = sqlx::query(sql).bind(binds.tenant).bind(binds.id).bind(binds.call_id);
        for v in binds.times {
            q = q.bind(*v);
        }
        if let Some(to) = binds.to_owner {
            q = q.bind(to);
        }
        let row = q.fetch_optional(&self.pool).await?;
        row.map(hold_from_row).transpose()
    }

    /// Deletes the call's unconfirmed hold; the deleted row, or `None` if nothing matched.
    /// Committed without waiting for the WAL flush, as an insert is ([`Store::insert_hold`]): a
    /// release lost to a crash of the database server keeps the time held until the hold's
    /// expiry, never longer, and anything written after it is lost with it (the WAL is replayed
    /// in order).
    pub async fn release_hold(&self, tenant: &str, id: &str, call_id: &str) -> Result<Option<HoldRow>, StoreError> {
        let sql = format!(
            "WITH settings AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
             DELETE FROM holds WHERE tenant = $1 AND id = $2 AND call_id = $3 AND NOT confirmed
               AND EXISTS (SELECT 1 FROM settings)
             RETURNING {HOLD_COLUMNS}"
        );
        self.hold_statement(&sql, HoldBinds { tenant, id, call_id, times: &[], to_owner: None }).await
    }

    /// Moves a live hold's expiry to `until` (never shorter; a booking is returned unchanged).
    pub async fn extend_hold(
        &self,
        tenant: &str,
        id: &str,
        call_id: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<HoldRow>, StoreError> {
        let sql = format!(
            "UPDATE holds SET expires_at = CASE WHEN confirmed THEN expires_at ELSE GREATEST(expires_at, $4) END
             WHERE tenant = $1 AND id = $2 AND call_id = $3 AND (confirmed OR expires_at > $5) RETURNING {HOLD_COLUMNS}"
        );
        self.hold_statement(&sql, HoldBinds { tenant, id, call_id, times: &[until_ms, now_ms], to_owner: None }).await
    }

    /// Hands a live, unconfirmed hold to another owner, kept until at least `until`.
    pub async fn transfer_hold(
        &self,
        tenant: &str,
        id: &str,
        from_call: &str,
        to_owner: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<HoldRow>, StoreError> {
        let sql = format!(
            "UPDATE holds SET call_id = $6, expires_at = GREATEST(expires_at, $4)
             WHERE tenant = $1 AND id = $2 AND call_id = $3 AND NOT confirmed AND expires_at > $5 RETURNING {HOLD_COLUMNS}"
        );
        let binds = HoldBinds { tenant, id, call_id: from_call, times: &[until_ms, now_ms], to_owner: Some(to_owner) };
        self.hold_statement(&sql, binds).await
    }

    /// Turns the call's live hold into a booking (idempotent for a booking).
    pub async fn confirm_hold(
        &self,
        tenant: &str,
        id: &str,
        call_id: &str,
        now_ms: i64,
    ) -> Result<Option<HoldRow>, StoreError> {
        let sql = format!(
            "UPDATE holds SET confirmed = TRUE
             WHERE tenant = $1 AND id = $2 AND call_id = $3 AND (confirmed OR expires_at > $4) RETURNING {HOLD_COLUMNS}"
        );
        self.hold_statement(&sql, HoldBinds { tenant, id, call_id, times: &[now_ms], to_owner: None }).await
    }

    /// Frees one booking of the staff member with exactly this blocked interval.
    pub async fn remove_booked_hold(
        &self,
        tenant: &str,
        staff_id: &str,
        blocked: (i64, i64),
    ) -> Result<bool, StoreError> {
        self.require_shared_holds()?;
        let r = sqlx::query(
            "DELETE FROM holds WHERE id = (SELECT id FROM holds WHERE tenant = $1 AND staff_id = $2 AND confirmed
                                            AND blocked_start = $3 AND blocked_end = $4 LIMIT 1)",
        )
        .bind(tenant)
        .bind(staff_id)
        .bind(blocked.0)
        .bind(blocked.1)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes every unconfirmed hold of the owner; returns how many.
    /// Committed without waiting for the WAL flush, as [`Store::release_hold`].
    pub async fn release_owner_holds(&self, tenant: &str, owner: &str) -> Result<u64, StoreError> {
        self.require_shared_holds()?;
        let r = sqlx::query(
            "WITH settings AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
             DELETE FROM holds WHERE tenant = $1 AND call_id = $2 AND NOT confirmed
               AND EXISTS (SELECT 1 FROM settings)",
        )
        .bind(tenant)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Blocked intervals of the staff member's live holds and bookings overlapping the window.
    pub async fn held_intervals(
        &self,
        tenant: &str,
        staff_id: &str,
        window: (i64, i64),
        now_ms: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        self.require_shared_holds()?;
        let rows = sqlx::query(
            "SELECT blocked_start, blocked_end FROM holds
             WHERE tenant = $1 AND staff_id = $2 AND (confirmed OR expires_at > $3)
               AND blocked_start < $5 AND blocked_end > $4
             ORDER BY blocked_start",
        )
        .bind(tenant)
        .bind(staff_id)
        .bind(now_ms)
        .bind(window.0)
        .bind(window.1)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("blocked_start")?, r.try_get("blocked_end")?))).collect()
    }

    pub async fn hold_counts(&self, now_ms: i64) -> Result<HoldCounts, StoreError> {
        self.require_shared_holds()?;
        let r = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN NOT confirmed AND expires_at > $1 THEN 1 ELSE 0 END), 0) AS live,
                    COALESCE(SUM(CASE WHEN confirmed THEN 1 ELSE 0 END), 0) AS bookings,
                    COALESCE(SUM(CASE WHEN NOT confirmed THEN 1 ELSE 0 END), 0) AS outstanding
             FROM holds",
        )
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(HoldCounts {
            live: r.try_get("live")?,
            bookings: r.try_get("bookings")?,
            outstanding: r.try_get("outstanding")?,
        })
    }

    /// Drops every expired hold; returns how many.
    pub async fn purge_expired_holds(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.require_shared_holds()?;
        let r = sqlx::query("DELETE FROM holds WHERE NOT confirmed AND expires_at <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Flags the staff member's live holds and bookings whose slot overlaps `taken` and returns
    /// those flagged now (each is flagged once, whichever instance saw the event).
    pub async fn flag_overlapping_holds(
        &self,
        tenant: &str,
        staff_id: &str,
        taken: (i64, i64),
        now_ms: i64,
    ) -> Result<Vec<HoldRow>, StoreError> {
        self.require_shared_holds()?;
        let rows = sqlx::query(&format!(
            "UPDATE holds SET flagged = TRUE
             WHERE tenant = $1 AND staff_id = $2 AND NOT flagged AND (confirmed OR expires_at > $3)
               AND slot_start < $5 AND slot_end > $4
             RETURNING {HOLD_COLUMNS}"
        ))
        .bind(tenant)
        .bind(staff_id)
        .bind(now_ms)
        .bind(taken.0)
        .bind(taken.1)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(hold_from_row).collect()
    }

    pub async fn hold_flagged(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        self.require_shared_holds()?;
        let flagged: Option<bool> = sqlx::query_scalar("SELECT flagged FROM holds WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(flagged.unwrap_or(false))
    }

    /// Every row of one staff member (tests check them for overlaps).
    pub async fn holds_of_staff(&self, tenant: &str, staff_id: &str) -> Result<Vec<HoldRow>, StoreError> {
        self.require_shared_holds()?;
        let rows = sqlx::query(&format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE tenant = $1 AND staff_id = $2 ORDER BY blocked_start"
        ))
        .bind(tenant)
        .bind(staff_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(hold_from_row).collect()
    }
}

/// The binds of [`Store::hold_statement`]: `$1` tenant, `$2` id, `$3` owner, then the times,
/// then the new owner.
struct HoldBinds<'a> {
    tenant: &'a str,
    id: &'a str,
    call_id: &'a str,
    times: &'a [i64],
    to_owner: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, staff: &str, blocked: (i64, i64), expires_at: i64, confirmed: bool) -> HoldRow {
        HoldRow {
            id: id.into(),
            tenant: "demo".into(),
            staff_id: staff.into(),
            call_id: format!("call-{id}"),
            slot_start: blocked.0,
            slot_end: blocked.1,
            blocked_start: blocked.0,
            blocked_end: blocked.1,
            expires_at,
            confirmed,
        }
    }

    async fn ids(s: &Store, staff: &str) -> Vec<String> {
        s.holds_of_staff("demo", staff).await.unwrap().into_iter().map(|h| h.id).collect()
    }

    /// The one-statement insert keeps the ledger's rules: an overlap with a live hold or a
    /// booking is refused (and changes nothing), the staff member's expired holds are purged by
    /// the next insert whether they overlap it or not, a booking never expires, and another
    /// staff member's holds are untouched. On SQLite the shared ledger is a clear error.
    async fn a_hold_insert_purges_expired_holds_and_refuses_overlaps(s: &Store) {
        let live = row("live", "alex", (1_000, 2_000), 500, false);
        if s.backend() == Backend::Sqlite {
            let err = s.insert_hold(&live, 100).await.unwrap_err();
            assert!(err.to_string().contains("shared holds need PostgreSQL"), "{err}");
            return;
        }
        assert!(s.insert_hold(&live, 100).await.unwrap());
        assert!(s.insert_hold(&row("booked", "alex", (3_000, 4_000), 0, true), 100).await.unwrap());
        assert!(s.insert_hold(&row("old", "alex", (5_000, 6_000), 200, false), 100).await.unwrap());
        assert!(s.insert_hold(&row("other-staff", "sam", (1_000, 2_000), 200, false), 100).await.unwrap());
        // Overlapping a live hold, then a booking: refused, nothing purged or inserted.
        assert!(!s.insert_hold(&row("x1", "alex", (1_500, 2_500), 900, false), 100).await.unwrap());
        assert!(!s.insert_hold(&row("x2", "alex", (3_500, 3_600), 900, false), 100).await.unwrap());
        assert_eq!(ids(s, "alex").await, ["live", "booked", "old"]);
        // At 300 "old" has expired: an insert elsewhere purges it; the booking stays.
        assert!(s.insert_hold(&row("new", "alex", (7_000, 8_000), 900, false), 300).await.unwrap());
        assert_eq!(ids(s, "alex").await, ["live", "booked", "new"]);
        // At 600 "live" has expired: its time is free for the next caller.
        assert!(s.insert_hold(&row("taker", "alex", (1_500, 2_500), 900, false), 600).await.unwrap());
        assert_eq!(ids(s, "alex").await, ["taker", "booked", "new"]);
        assert_eq!(ids(s, "sam").await, ["other-staff"], "another staff member's holds are untouched");
        // Touching ends do not overlap ('[)' ranges).
        assert!(s.insert_hold(&row("adjacent", "alex", (2_500, 3_000), 900, false), 600).await.unwrap());
        // The same id again is refused, not an error.
        assert!(!s.insert_hold(&row("adjacent", "alex", (9_000, 9_500), 900, false), 600).await.unwrap());
        // Releases: only the owner's unconfirmed hold; a booking stays.
        assert_eq!(s.release_hold("demo", "taker", "call-other").await.unwrap(), None, "not the owner");
        let released = s.release_hold("demo", "taker", "call-taker").await.unwrap().expect("released");
        assert_eq!((released.id.as_str(), released.blocked_start), ("taker", 1_500));
        assert_eq!(s.release_hold("demo", "booked", "call-booked").await.unwrap(), None, "a booking");
        assert_eq!(s.release_owner_holds("demo", "call-new").await.unwrap(), 1);
        assert_eq!(s.release_owner_holds("demo", "call-booked").await.unwrap(), 0, "a booking");
        assert_eq!(ids(s, "alex").await, ["adjacent", "booked"]);
    }

    both_backends!(a_hold_insert_purges_expired_holds_and_refuses_overlaps);
}
