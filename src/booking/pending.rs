//! Pending bookings: `book_slot` found the calendar unreachable (outage, rate limit). Nothing is
//! promised and nothing is lost:
//!
//! 1. the booking is recorded in the store (`pending_bookings`) *before* the caller hears that it
//!    is not confirmed yet;
//! 2. its hold is handed from the call to the pending booking (`pending:<key>`) and kept until the
//!    deadline — the slot start minus the tenant's minimum notice — so nobody else is offered it;
//! 3. the retrier (`session::pending`) tries again with backoff on the injected clock, using the
//!    same derived event id, so however many attempts reach the calendar there is one event;
//! 4. confirmed → recorded like any booking (and added to the call's write-back); taken by a
//!    direct booking, refused, or still unreachable at the deadline → a staff task in the CRM and
//!    the hold released.
//!
//! After a restart the open rows are re-held in the (in-memory) ledger before any call is served
//! ([`BookingService::recover_pending`]).

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use super::{Attendee, Booked, BookingError, BookingService, new_event};
use crate::connectors::ConnectorError;
use crate::connectors::calendar::Interval;
use crate::schedule::ServiceType;
use crate::store::{PendingBookingRow, ms};
use crate::tenant::Tenant;

use super::ledger::{Hold, HoldRequest};

/// First retry after this long; doubled per attempt up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: SignedDuration = SignedDuration::from_secs(15);
pub const MAX_BACKOFF: SignedDuration = SignedDuration::from_secs(300);

/// The owner name of a pending booking's hold in the ledger.
pub fn owner(key: &str) -> String {
    format!("pending:{key}")
}

/// The delay before attempt `attempts + 1`.
pub fn backoff(attempts: i64) -> SignedDuration {
    let factor = 1i64 << attempts.clamp(0, 16);
    SignedDuration::from_secs((FIRST_BACKOFF.as_secs() * factor).min(MAX_BACKOFF.as_secs()))
}

/// In-memory side of pending bookings.
#[derive(Default)]
pub struct PendingState {
    /// Ledger hold id per pending key.
    holds: Mutex<HashMap<String, Uuid>>,
    /// Wakes the retrier when a booking becomes pending.
    pub wake: Notify,
    /// Bumped after every retrier pass (tests wait on it instead of sleeping).
    pub progress: watch::Sender<u64>,
}

impl PendingState {
    fn hold_of(&self, key: &str) -> Option<Uuid> {
        self.holds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key).copied()
    }

    fn set_hold(&self, key: &str, id: Uuid) {
        self.holds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.to_owned(), id);
    }

    fn forget(&self, key: &str) {
        self.holds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }
}

/// What the event needs, stored with the pending booking.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredAttendee {
    pub phone: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub notes: Option<String>,
}

impl From<&Attendee> for StoredAttendee {
    fn from(a: &Attendee) -> Self {
        Self { phone: a.phone.clone(), name: a.name.clone(), email: a.email.clone(), notes: a.notes.clone() }
    }
}

impl From<StoredAttendee> for Attendee {
    fn from(a: StoredAttendee) -> Self {
        Attendee { phone: a.phone, name: a.name, email: a.email, notes: a.notes }
    }
}

/// One retry's result.
#[derive(Debug)]
pub enum Attempt {
    Confirmed(Booked),
    /// A direct booking took the time (seen at the re-check or the verify; ours withdrawn).
    Taken,
    /// The calendar refused for good (e.g. authorization revoked): retrying will not help.
    Refused(ConnectorError),
    /// Still unreachable.
    Retry(ConnectorError),
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl BookingService {
    /// Records the booking as pending and hands its hold over (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn make_pending(
        &self,
        tenant: &Tenant,
        call_id: &str,
        key: &str,
        calendar_id: &str,
        event_id: &str,
        hold: &Hold,
        service: &ServiceType,
        attendee: &Attendee,
        cause: ConnectorError,
    ) -> Result<Booked, BookingError> {
        let now = self.clock.now();
        let deadline = hold.slot.start - SignedDuration::from_mins(tenant.config.rules.min_notice_minutes as i64);
        if deadline <= now + FIRST_BACKOFF {
            // Too close to the appointment to retry meaningfully: the caller hears it is not
            // booked and the call keeps its hold (it can try again while on the line).
            return Err(BookingError::Unconfirmed(cause));
        }
        let row = PendingBookingRow {
            idempotency_key: key.to_owned(),
            tenant: tenant.id().to_owned(),
            call_id: call_id.to_owned(),
            staff_id: hold.staff_id.clone(),
            calendar_id: calendar_id.to_owned(),
            event_id: event_id.to_owned(),
            service_id: service.id.clone(),
            start_at: ms(hold.slot.start),
            end_at: ms(hold.slot.end),
            blocked_start: ms(hold.blocked.start),
            blocked_end: ms(hold.blocked.end),
            attendee: serde_json::to_value(StoredAttendee::from(attendee)).expect("attendee serializes"),
            status: "pending".into(),
            attempts: 0,
            next_attempt_at: ms(now + FIRST_BACKOFF),
            deadline_at: ms(deadline),
            last_error: Some(cause.to_string()),
            task_id: None,
        };
        // Durable first: once the caller is told "pending", the record exists.
        self.store.insert_pending_booking(&row, now).await?;
        match self.ledger.transfer(tenant.id(), hold.id, call_id, &owner(key), deadline, now).await {
            Ok(_) => self.pending.set_hold(key, hold.id),
            // The hold lapsed this very moment: the retrier re-holds the slot before confirming,
            // and the verify step still protects a direct booking made meanwhile.
            Err(e) => tracing::warn!(key, error = %e, "pending booking's hold could not be kept"),
        }
        self.store
            .audit(
                tenant.id(),
                Some(call_id),
                None,
                "booking.pending",
                &serde_json::json!({"key": key, "event_id": event_id, "deadline": deadline.to_string(), "error": cause.to_string()}),
                now,
            )
            .await?;
        self.pending.wake.notify_one();
        Err(BookingError::Pending { key: key.to_owned(), deadline, cause })
    }

    /// Re-holds the slots of open pending bookings after a start (the ledger is in memory).
    /// Returns how many were re-held.
    pub async fn recover_pending(&self) -> Result<usize, BookingError> {
        let now = self.clock.now();
        let mut n = 0;
        for row in self.store.open_pending_bookings().await? {
            if row.status == "escalating" {
                continue;
            }
            let slot = Interval::new(ts(row.start_at), ts(row.end_at));
            let blocked = Interval::new(ts(row.blocked_start), ts(row.blocked_end));
            let until = ts(row.deadline_at).max(now + SignedDuration::from_secs(1));
            let req = HoldRequest {
                tenant: row.tenant.clone(),
                staff_id: row.staff_id.clone(),
                call_id: owner(&row.idempotency_key),
                slot,
                blocked,
                ttl: until.duration_since(now),
            };
            match self.ledger.try_hold(req, now).await {
                Ok(h) => {
                    if row.status == "booked" {
                        let _ = self.ledger.confirm(&row.tenant, h.id, &owner(&row.idempotency_key), now).await;
                    }
                    self.pending.set_hold(&row.idempotency_key, h.id);
                    n += 1;
                }
                Err(e) => {
                    tracing::warn!(key = %row.idempotency_key, error = %e, "pending booking could not be re-held")
                }
            }
        }
        Ok(n)
    }

    /// One retry of a pending booking's commit: the same protocol as `book_slot` (re-check,
    /// create under the derived id, verify), except that an event already created by an earlier
    /// attempt is found first and verified instead of created again.
    pub async fn attempt_pending(
        &self,
        tenant: &Tenant,
        row: &PendingBookingRow,
        service: &ServiceType,
    ) -> Result<Attempt, BookingError> {
        let now = self.clock.now();
        let Some(staff) = tenant.config.staff.iter().find(|s| s.id == row.staff_id) else {
            return Ok(Attempt::Refused(ConnectorError::Permanent("the staff member is no longer configured".into())));
        };
        let attendee: Attendee =
            serde_json::from_value::<StoredAttendee>(row.attendee.clone()).unwrap_or_default().into();
        let slot = Interval::new(ts(row.start_at), ts(row.end_at));
        let blocked = Interval::new(ts(row.blocked_start), ts(row.blocked_end));
        let classify = |e: ConnectorError| if e.is_retryable() { Attempt::Retry(e) } else { Attempt::Refused(e) };
        let exists = match tenant.calendar.get_event(&row.calendar_id, &row.event_id).await {
            Ok(e) => e.status != "cancelled",
            Err(ConnectorError::NotFound(_)) => false,
            Err(e) => return Ok(classify(e)),
        };
        if !exists {
            match tenant.calendar.free_busy(&staff.calendar_ids, blocked).await {
                Ok(busy) if busy.iter().any(|b| b.overlaps(&blocked)) => return Ok(Attempt::Taken),
                Ok(_) => {}
                Err(e) => return Ok(classify(e)),
            }
            let event = new_event(tenant, &row.call_id, service, &attendee, &row.event_id, slot);
            if let Err(e) = self.create_or_adopt(tenant, &row.call_id, &row.calendar_id, &event, now).await {
                return Ok(classify(e));
            }
        }
        match self.foreign_overlap(tenant, &row.call_id, &row.calendar_id, &row.event_id, blocked).await {
            Ok(true) => return Ok(Attempt::Taken),
            Ok(false) => {}
            Err(e) => return Ok(classify(e)),
        }
        let hold = self.pending_hold(row, slot, blocked, now).await;
        let booked = self
            .record_booking(
                tenant,
                &row.call_id,
                &row.idempotency_key,
                &row.calendar_id,
                &row.event_id,
                &hold,
                service,
                &attendee,
            )
            .await?;
        Ok(Attempt::Confirmed(booked))
    }

    /// Turns the pending booking's hold into a booking in the ledger (re-holding it if it was
    /// lost, e.g. past its deadline) and returns it.
    async fn pending_hold(&self, row: &PendingBookingRow, slot: Interval, blocked: Interval, now: Timestamp) -> Hold {
        let who = owner(&row.idempotency_key);
        if let Some(id) = self.pending.hold_of(&row.idempotency_key)
            && let Ok(h) = self.ledger.confirm(&row.tenant, id, &who, now).await
        {
            return h;
        }
        let req = HoldRequest {
            tenant: row.tenant.clone(),
            staff_id: row.staff_id.clone(),
            call_id: who.clone(),
            slot,
            blocked,
            ttl: SignedDuration::from_mins(1),
        };
        match self.ledger.try_hold(req, now).await {
            Ok(h) => {
                let _ = self.ledger.confirm(&row.tenant, h.id, &who, now).await;
                self.pending.set_hold(&row.idempotency_key, h.id);
                h
            }
            // The calendar has our event; the ledger only mirrors it for this instance.
            Err(_) => Hold {
                id: Uuid::nil(),
                tenant: row.tenant.clone(),
                staff_id: row.staff_id.clone(),
                call_id: who,
                slot,
                blocked,
                expires_at: now,
            },
        }
    }

    /// Frees a pending booking's hold (escalated or confirmed elsewhere).
    pub async fn release_pending_hold(&self, tenant: &str, key: &str) {
        self.ledger.release_all_for_call(tenant, &owner(key)).await;
        self.pending.forget(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), SignedDuration::from_secs(15));
        assert_eq!(backoff(1), SignedDuration::from_secs(30));
        assert_eq!(backoff(4), SignedDuration::from_secs(240));
        assert_eq!(backoff(5), MAX_BACKOFF);
        assert_eq!(backoff(60), MAX_BACKOFF);
    }
}
