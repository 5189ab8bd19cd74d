//! Appointment outcomes (issue 12, item 4; migration 0017): what became of each booking the
//! service made — read back after it ended by `crate::outcomes`, or known at once when the
//! service cancelled it itself. A booking's outcome is written once (`WHERE outcome IS NULL`):
//! a second reader, another instance or a later pass never changes it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use jiff::Timestamp;
use serde::Serialize;
use sqlx::Row;

use super::{BOOKING_COLUMNS, BookingRow, Store, StoreError, UpcomingKey, booking_from_row, ms};

/// What became of an appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentOutcome {
    Attended,
    NoShow,
    /// Cancelled within the tenant's `late_cancel_hours` before the start.
    CancelledLate,
    Cancelled,
    /// Nothing was known after `give_up_after_days`: never guessed as attended or missed.
    Unknown,
}

impl AppointmentOutcome {
    pub const ALL: [AppointmentOutcome; 5] = [
        AppointmentOutcome::Attended,
        AppointmentOutcome::NoShow,
        AppointmentOutcome::CancelledLate,
        AppointmentOutcome::Cancelled,
        AppointmentOutcome::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AppointmentOutcome::Attended => "attended",
            AppointmentOutcome::NoShow => "no_show",
            AppointmentOutcome::CancelledLate => "cancelled_late",
            AppointmentOutcome::Cancelled => "cancelled",
            AppointmentOutcome::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Where an outcome was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeSource {
    Crm,
    Calendar,
    Pos,
    /// The service itself: its own cancellation, or the give-up that records `unknown`.
    Callside,
}

impl OutcomeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeSource::Crm => "crm",
            OutcomeSource::Calendar => "calendar",
            OutcomeSource::Pos => "pos",
            OutcomeSource::Callside => "callside",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Crm, Self::Calendar, Self::Pos, Self::Callside].into_iter().find(|o| o.as_str() == s)
    }
}

/// A confirmed booking whose outcome is not known yet, with the CRM object its write-back
/// created (the `appointment` step's external id), when that step is done.
#[derive(Debug, Clone, PartialEq)]
pub struct AwaitingOutcome {
    pub booking: BookingRow,
    pub crm_object_id: Option<String>,
}

/// A booking's recorded outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutcome {
    pub outcome: AppointmentOutcome,
    pub source: OutcomeSource,
    /// ms (domain clock).
    pub at: i64,
    /// ms (domain clock) when the service cancelled the booking, if it did.
    pub cancelled_at: Option<i64>,
}

/// A caller's appointment history with the business, from the store's own bookings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeHistory {
    pub attended: u32,
    pub no_shows: u32,
    pub late_cancellations: u32,
    pub cancellations: u32,
    /// Start (ms) of the latest missed appointment.
    pub last_no_show: Option<i64>,
}

#[derive(Debug)]
pub(super) struct HistoryEntry {
    generation: u64,
    history: OutcomeHistory,
}

impl Store {
    /// Confirmed bookings of `tenant` that ended at or before `ended_by`, have no outcome yet and
    /// were not asked about after `checked_by` ([`Store::record_outcome_check`]), earliest end
    /// first: a booking nobody has recorded yet is asked again only after a while, and the ones
    /// behind it in a long backlog get their turn.
    pub async fn bookings_awaiting_outcome(
        &self,
        tenant: &str,
        ended_by: Timestamp,
        checked_by: Timestamp,
        limit: i64,
    ) -> Result<Vec<AwaitingOutcome>, StoreError> {
        let columns: Vec<String> = BOOKING_COLUMNS.split(", ").map(|c| format!("b.{c}")).collect();
        // The appointment step's key is `{call_id}:appointment:{event_id}` (writeback::plan).
        let rows = sqlx::query(&format!(
            "SELECT {}, s.external_id AS crm_object_id FROM bookings b
             LEFT JOIN steps s ON s.call_id = b.call_id AND s.kind = 'appointment' AND s.status = 'done'
               AND s.idempotency_key = b.call_id || ':appointment:' || b.event_id
             WHERE b.tenant = $1 AND b.status = 'confirmed' AND b.outcome IS NULL AND b.end_at <= $2
               AND (b.outcome_checked_at IS NULL OR b.outcome_checked_at <= $3)
             ORDER BY b.end_at, b.idempotency_key
             LIMIT $4",
            columns.join(", ")
        ))
        .bind(tenant)
        .bind(ms(ended_by))
        .bind(ms(checked_by))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let crm_object_id: Option<String> = r.try_get("crm_object_id")?;
                Ok(AwaitingOutcome { booking: booking_from_row(r)?, crm_object_id })
            })
            .collect()
    }

    /// The reader asked about a booking at `at` and learnt nothing (or could not read the
    /// answer): it waits before being asked again. Changes no answer the service gives, so the
    /// bookings generation stays.
    pub async fn record_outcome_check(&self, tenant: &str, key: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE bookings SET outcome_checked_at = $1 WHERE tenant = $2 AND idempotency_key = $3 AND outcome IS NULL",
        )
        .bind(ms(at))
        .bind(tenant)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a booking's outcome unless it already has one. True when this call wrote it.
    pub async fn record_booking_outcome(
        &self,
        tenant: &str,
        key: &str,
        outcome: AppointmentOutcome,
        source: OutcomeSource,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE bookings SET outcome = $1, outcome_source = $2, outcome_at = $3
             WHERE tenant = $4 AND idempotency_key = $5 AND outcome IS NULL",
        )
        .bind(outcome.as_str())
        .bind(source.as_str())
        .bind(ms(at))
        .bind(tenant)
        .bind(key)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if done {
            self.bookings_changed(tenant).await;
        }
        Ok(done)
    }

    /// The service cancelled a booking (the `cancel_appointment` tool): its status, when, and —
    /// unless it already has one — its outcome, known at once (`cancelled` or `cancelled_late`,
    /// decided by the caller from the tenant's window). True when the outcome was written.
    pub async fn record_booking_cancellation(
        &self,
        tenant: &str,
        key: &str,
        outcome: AppointmentOutcome,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE bookings SET status = 'cancelled', updated_at = $1, cancelled_at = $1
             WHERE tenant = $2 AND idempotency_key = $3",
        )
        .bind(ms(at))
        .bind(tenant)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        let written = sqlx::query(
            "UPDATE bookings SET outcome = $1, outcome_source = 'callside', outcome_at = $2
             WHERE tenant = $3 AND idempotency_key = $4 AND outcome IS NULL",
        )
        .bind(outcome.as_str())
        .bind(ms(at))
        .bind(tenant)
        .bind(key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        self.bookings_changed(tenant).await;
        Ok(written)
    }

    /// A booking's recorded outcome (`None`: none yet, or no such booking).
    pub async fn booking_outcome(&self, tenant: &str, key: &str) -> Result<Option<RecordedOutcome>, StoreError> {
        let row = sqlx::query(
            "SELECT outcome, outcome_source, outcome_at, cancelled_at FROM bookings
             WHERE tenant = $1 AND idempotency_key = $2 AND outcome IS NOT NULL",
        )
        .bind(tenant)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let outcome: String = r.try_get("outcome")?;
        let source: String = r.try_get("outcome_source")?;
        Ok(Some(RecordedOutcome {
            outcome: AppointmentOutcome::parse(&outcome)
                .ok_or_else(|| StoreError::Other(format!("unknown booking outcome {outcome:?}")))?,
            source: OutcomeSource::parse(&source)
                .ok_or_else(|| StoreError::Other(format!("unknown outcome source {source:?}")))?,
            at: r.try_get("outcome_at")?,
            cancelled_at: r.try_get("cancelled_at")?,
        }))
    }

    /// The caller's outcome history by phone or email (the keys
    /// [`Store::upcoming_bookings_for_caller`] uses). Served from memory until a booking write
    /// (here, or another instance's over the bus) bumps the bookings generation: a warm
    /// `get_caller_context` stays off the database, and a new outcome is seen at once.
    pub async fn outcome_history_for_caller(
        &self,
        tenant: &str,
        phone: Option<&str>,
        email: Option<&str>,
    ) -> Result<OutcomeHistory, StoreError> {
        if phone.is_none() && email.is_none() {
            return Ok(OutcomeHistory::default());
        }
        let key: UpcomingKey = (tenant.to_owned(), phone.map(str::to_owned), email.map(str::to_owned));
        let generation = self.bookings_generation.load(Ordering::Acquire);
        if let Some(hit) = self.histories.get(&key).await
            && hit.generation == generation
        {
            return Ok(hit.history);
        }
        let rows = sqlx::query(
            "SELECT outcome, COUNT(*) AS n, MAX(start_at) AS latest FROM bookings
             WHERE tenant = $1 AND outcome IS NOT NULL
               AND (($2 IS NOT NULL AND caller_phone = $3) OR ($4 IS NOT NULL AND caller_email = $5))
             GROUP BY outcome",
        )
        .bind(tenant)
        .bind(phone)
        .bind(phone)
        .bind(email)
        .bind(email)
        .fetch_all(&self.pool)
        .await?;
        let mut history = OutcomeHistory::default();
        for r in rows {
            let outcome: String = r.try_get("outcome")?;
            let n: i64 = r.try_get("n")?;
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            match AppointmentOutcome::parse(&outcome) {
                Some(AppointmentOutcome::Attended) => history.attended = n,
                Some(AppointmentOutcome::NoShow) => {
                    history.no_shows = n;
                    history.last_no_show = r.try_get("latest")?;
                }
                Some(AppointmentOutcome::CancelledLate) => history.late_cancellations = n,
                Some(AppointmentOutcome::Cancelled) => history.cancellations = n,
                Some(AppointmentOutcome::Unknown) | None => {}
            }
        }
        self.histories.insert(key, Arc::new(HistoryEntry { generation, history })).await;
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        "2026-11-23T14:00:00Z".parse().unwrap()
    }

    fn booking(key: &str, phone: Option<&str>, email: Option<&str>, start: Timestamp) -> BookingRow {
        BookingRow {
            idempotency_key: key.into(),
            tenant: "demo".into(),
            call_id: format!("call-{key}"),
            staff_id: "ann".into(),
            calendar_id: "cal".into(),
            event_id: format!("ev{key}"),
            service_id: "consult".into(),
            start_at: ms(start),
            end_at: ms(start) + 3_600_000,
            status: "confirmed".into(),
            caller_phone: phone.map(str::to_owned),
            caller_email: email.map(str::to_owned),
        }
    }

    async fn bookings_await_their_outcome_once_ended_and_an_outcome_is_written_once(s: &Store) {
        let hour = jiff::SignedDuration::from_hours(1);
        let phone = Some("+14155550134");
        s.insert_booking(&booking("a", phone, None, t0()), t0()).await.unwrap();
        s.insert_booking(&booking("b", phone, None, t0() + hour * 3), t0()).await.unwrap();
        let mut withdrawn = booking("w", phone, None, t0());
        withdrawn.status = "withdrawn".into();
        s.insert_booking(&withdrawn, t0()).await.unwrap();
        // The appointment step of a's call is done: its CRM object comes with the booking.
        s.record_call_start("call-a", "demo", None, "+15550100000", t0()).await.unwrap();
        let step = super::super::NewStep {
            seq: 0,
            kind: "appointment".into(),
            payload: serde_json::json!({}),
            depends_on: None,
            idempotency_key: "call-a:appointment:eva".into(),
        };
        s.close_call_with_plan("call-a", "demo", "end_call", &serde_json::json!({}), &[step], t0()).await.unwrap();
        let due = s.due_steps(t0(), 1).await.unwrap().remove(0);
        s.record_attempt(
            &due,
            &super::super::AttemptResult::Done { external_id: Some("meeting-7".into()) },
            "crm.appointment",
            &serde_json::json!({}),
            t0(),
        )
        .await
        .unwrap();

        // Before its end nothing is due; the withdrawn booking never is; another tenant sees none.
        assert!(s.bookings_awaiting_outcome("demo", t0(), t0(), 10).await.unwrap().is_empty());
        let due = s.bookings_awaiting_outcome("demo", t0() + hour, t0(), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].booking.idempotency_key, "a");
        assert_eq!(due[0].crm_object_id.as_deref(), Some("meeting-7"));
        assert!(s.bookings_awaiting_outcome("other", t0() + hour * 9, t0(), 10).await.unwrap().is_empty());
        let both = s.bookings_awaiting_outcome("demo", t0() + hour * 9, t0(), 10).await.unwrap();
        assert_eq!(both.iter().map(|d| d.booking.idempotency_key.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(both[1].crm_object_id, None, "no done appointment step for b");
        // Asked at 5 h and nothing learnt: not asked again until the check is old enough.
        s.record_outcome_check("demo", "b", t0() + hour * 5).await.unwrap();
        let keys = |rows: Vec<AwaitingOutcome>| rows.into_iter().map(|d| d.booking.idempotency_key).collect::<Vec<_>>();
        assert_eq!(
            keys(s.bookings_awaiting_outcome("demo", t0() + hour * 9, t0() + hour * 4, 10).await.unwrap()),
            ["a"]
        );
        assert_eq!(
            keys(s.bookings_awaiting_outcome("demo", t0() + hour * 9, t0() + hour * 5, 10).await.unwrap()),
            ["a", "b"]
        );

        // Written once: a second outcome for the same booking is refused and changes nothing.
        let at = t0() + hour * 2;
        assert!(
            s.record_booking_outcome("demo", "a", AppointmentOutcome::NoShow, OutcomeSource::Crm, at).await.unwrap()
        );
        assert!(
            !s.record_booking_outcome("demo", "a", AppointmentOutcome::Attended, OutcomeSource::Pos, at).await.unwrap()
        );
        assert!(
            !s.record_booking_outcome("other", "b", AppointmentOutcome::Attended, OutcomeSource::Pos, at)
                .await
                .unwrap(),
            "another tenant's key writes nothing"
        );
        assert_eq!(
            s.booking_outcome("demo", "a").await.unwrap(),
            Some(RecordedOutcome {
                outcome: AppointmentOutcome::NoShow,
                source: OutcomeSource::Crm,
                at: ms(at),
                cancelled_at: None
            })
        );
        assert_eq!(s.booking_outcome("demo", "b").await.unwrap(), None);
        let left = s.bookings_awaiting_outcome("demo", t0() + hour * 9, t0() + hour * 9, 10).await.unwrap();
        assert_eq!(left.iter().map(|d| d.booking.idempotency_key.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    async fn a_callers_history_counts_outcomes_by_phone_or_email_and_sees_a_new_one_at_once(s: &Store) {
        let day = jiff::SignedDuration::from_hours(24);
        let (phone, email) = ("+14155550134", "ana@example.com");
        s.insert_booking(&booking("a", Some(phone), None, t0()), t0()).await.unwrap();
        s.insert_booking(&booking("b", None, Some(email), t0() + day), t0()).await.unwrap();
        s.insert_booking(&booking("c", Some(phone), None, t0() + day * 2), t0()).await.unwrap();
        s.insert_booking(&booking("d", Some(phone), None, t0() + day * 3), t0()).await.unwrap();
        s.insert_booking(&booking("e", Some("+14155550199"), None, t0()), t0()).await.unwrap();
        let history = |p: Option<&'static str>, e: Option<&'static str>| s.outcome_history_for_caller("demo", p, e);
        assert_eq!(history(Some(phone), Some(email)).await.unwrap(), OutcomeHistory::default());
        assert_eq!(history(None, None).await.unwrap(), OutcomeHistory::default());

        let at = t0() + day * 5;
        s.record_booking_outcome("demo", "a", AppointmentOutcome::NoShow, OutcomeSource::Crm, at).await.unwrap();
        s.record_booking_outcome("demo", "b", AppointmentOutcome::NoShow, OutcomeSource::Crm, at).await.unwrap();
        s.record_booking_outcome("demo", "c", AppointmentOutcome::Attended, OutcomeSource::Pos, at).await.unwrap();
        s.record_booking_outcome("demo", "e", AppointmentOutcome::NoShow, OutcomeSource::Crm, at).await.unwrap();
        // Cancelled by the service 2 h before the start: late, recorded with the cancellation.
        let cancel_at = t0() + day * 3 - jiff::SignedDuration::from_hours(2);
        assert!(
            s.record_booking_cancellation("demo", "d", AppointmentOutcome::CancelledLate, cancel_at).await.unwrap()
        );
        let d = s.booking_outcome("demo", "d").await.unwrap().unwrap();
        assert_eq!(
            (d.outcome, d.source, d.cancelled_at),
            (AppointmentOutcome::CancelledLate, OutcomeSource::Callside, Some(ms(cancel_at)))
        );
        assert!(
            s.upcoming_bookings_for_caller("demo", Some(phone), None, t0())
                .await
                .unwrap()
                .iter()
                .all(|b| b.idempotency_key != "d")
        );

        assert_eq!(
            history(Some(phone), Some(email)).await.unwrap(),
            OutcomeHistory {
                attended: 1,
                no_shows: 2,
                late_cancellations: 1,
                cancellations: 0,
                last_no_show: Some(ms(t0() + day)),
            }
        );
        // By phone alone the email's booking is not counted; another tenant has nothing.
        assert_eq!(history(Some(phone), None).await.unwrap().no_shows, 1);
        assert_eq!(history(Some(phone), None).await.unwrap().last_no_show, Some(ms(t0())));
        assert_eq!(s.outcome_history_for_caller("other", Some(phone), None).await.unwrap(), OutcomeHistory::default());

        // Served from memory, and a new outcome is seen at once (the write bumps the generation).
        s.insert_booking(&booking("f", Some(phone), None, t0() + day * 4), t0()).await.unwrap();
        s.record_booking_outcome("demo", "f", AppointmentOutcome::NoShow, OutcomeSource::Crm, at).await.unwrap();
        let after = history(Some(phone), None).await.unwrap();
        assert_eq!((after.no_shows, after.last_no_show), (2, Some(ms(t0() + day * 4))));
    }

    both_backends!(
        bookings_await_their_outcome_once_ended_and_an_outcome_is_written_once,
        a_callers_history_counts_outcomes_by_phone_or_email_and_sees_a_new_one_at_once,
    );
}
