//! Pending bookings (see `migrations/sqlite/0007_pending_bookings.sql` and
//! `session::pending`): durable before the caller hears "not confirmed yet", so a restart
//! loses none of them.

use jiff::Timestamp;
use serde_json::Value;
use sqlx::Row;

use super::{Store, StoreError, ms};

/// Statuses that still need work from the retrier.
pub const OPEN_STATUSES: [&str; 3] = ["pending", "booked", "escalating"];

#[derive(Debug, Clone, PartialEq)]
pub struct PendingBookingRow {
    pub idempotency_key: String,
    pub tenant: String,
    pub call_id: String,
    pub staff_id: String,
    pub calendar_id: String,
    pub event_id: String,
    pub service_id: String,
    pub start_at: i64,
    pub end_at: i64,
    pub blocked_start: i64,
    pub blocked_end: i64,
    pub attendee: Value,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub deadline_at: i64,
    pub last_error: Option<String>,
    pub task_id: Option<String>,
}

const COLUMNS: &str = "idempotency_key, tenant, call_id, staff_id, calendar_id, event_id, service_id, start_at, end_at, \
     blocked_start, blocked_end, attendee, status, attempts, next_attempt_at, deadline_at, last_error, task_id";

fn from_row(r: sqlx::any::AnyRow) -> Result<PendingBookingRow, StoreError> {
    let attendee: String = r.try_get("attendee")?;
    Ok(PendingBookingRow {
        idempotency_key: r.try_get("idempotency_key")?,
        tenant: r.try_get("tenant")?,
        call_id: r.try_get("call_id")?,
        staff_id: r.try_get("staff_id")?,
        calendar_id: r.try_get("calendar_id")?,
        event_id: r.try_get("event_id")?,
        service_id: r.try_get("service_id")?,
        start_at: r.try_get("start_at")?,
        end_at: r.try_get("end_at")?,
        blocked_start: r.try_get("blocked_start")?,
        blocked_end: r.try_get("blocked_end")?,
        attendee: serde_json::from_str(&attendee).map_err(|e| StoreError::Other(format!("attendee json: {e}")))?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        deadline_at: r.try_get("deadline_at")?,
        last_error: r.try_get("last_error")?,
        task_id: r.try_get("task_id")?,
    })
}

impl Store {
    /// Records a pending booking. Idempotent on the key (a second `book_slot` for the same hold
    /// keeps the first record).
    pub async fn insert_pending_booking(&self, p: &PendingBookingRow, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO pending_bookings ({COLUMNS}, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
             ON CONFLICT (idempotency_key) DO NOTHING"
        ))
        .bind(&p.idempotency_key)
        .bind(&p.tenant)
        .bind(&p.call_id)
        .bind(&p.staff_id)
        .bind(&p.calendar_id)
        .bind(&p.event_id)
        .bind(&p.service_id)
        .bind(p.start_at)
        .bind(p.end_at)
        .bind(p.blocked_start)
        .bind(p.blocked_end)
        .bind(p.attendee.to_string())
        .bind(&p.status)
        .bind(p.attempts)
        .bind(p.next_attempt_at)
        .bind(p.deadline_at)
        .bind(&p.last_error)
        .bind(&p.task_id)
        .bind(ms(at))
        .bind(ms(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn pending_booking(&self, key: &str) -> Result<Option<PendingBookingRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM pending_bookings WHERE idempotency_key = $1"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(from_row).transpose()
    }

    /// Every pending booking still needing work (recovery at start re-holds their slots).
    pub async fn open_pending_bookings(&self) -> Result<Vec<PendingBookingRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM pending_bookings WHERE status IN ('pending', 'booked', 'escalating')
             ORDER BY next_attempt_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(from_row).collect()
    }

    /// Open pending bookings due at `now`.
    pub async fn due_pending_bookings(&self, now: Timestamp, limit: i64) -> Result<Vec<PendingBookingRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM pending_bookings
             WHERE status IN ('pending', 'booked', 'escalating') AND next_attempt_at <= $1
             ORDER BY next_attempt_at LIMIT $2"
        ))
        .bind(ms(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(from_row).collect()
    }

    /// When the next open pending booking is due.
    pub async fn next_pending_due_at(&self) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM pending_bookings WHERE status IN ('pending', 'booked', 'escalating')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(at.and_then(|a| Timestamp::from_millisecond(a).ok()))
    }

    /// Moves a pending booking on: new status, next attempt, error and task id (kept when `None`).
    #[allow(clippy::too_many_arguments)]
    pub async fn update_pending_booking(
        &self,
        key: &str,
        status: &str,
        attempts: i64,
        next_attempt_at: Timestamp,
        last_error: Option<&str>,
        task_id: Option<&str>,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pending_bookings SET status = $1, attempts = $2, next_attempt_at = $3, last_error = $4,
                 task_id = COALESCE($5, task_id), updated_at = $6
             WHERE idempotency_key = $7",
        )
        .bind(status)
        .bind(attempts)
        .bind(ms(next_attempt_at))
        .bind(last_error)
        .bind(task_id)
        .bind(ms(at))
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
