//! Holds and commits. A hold is an atomic insert into the [`ledger::HoldLedger`]; a commit
//! re-checks the provider's free/busy (bypassing any cache), creates the event with an id derived
//! from the hold (so a retry cannot create a second event), then lists events overlapping the
//! slot: if a foreign event appeared concurrently, ours is withdrawn — the customer who booked
//! directly wins (design invariant 3).

pub mod ledger;

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::connectors::ConnectorError;
use crate::connectors::calendar::{Interval, NewEvent, google::event_id_from_key};
use crate::schedule::{self, Busy, ServiceType, Slot, SlotPreference};
use crate::store::{BookingRow, Store, ms};
use crate::tenant::Tenant;
use ledger::{Hold, HoldError, HoldLedger, HoldRequest};

#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    #[error("the calendar could not be read: {0}")]
    Calendar(ConnectorError),
    #[error("that time is not available")]
    NotAvailable { alternatives: Vec<Slot> },
    #[error("hold: {0}")]
    Hold(#[from] HoldError),
    #[error("the booking could not be confirmed: {0}")]
    Unconfirmed(ConnectorError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// A confirmed booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Booked {
    pub event_id: String,
    pub calendar_id: String,
    pub staff_id: String,
    pub service_id: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Who the appointment is for, as captured on the call.
#[derive(Debug, Clone, Default)]
pub struct Attendee {
    pub name: Option<String>,
    pub email: Option<String>,
    pub notes: Option<String>,
}

pub struct BookingService {
    pub ledger: HoldLedger,
    store: Store,
    clock: SharedClock,
}

impl BookingService {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self { ledger: HoldLedger::new(), store, clock }
    }

    /// Every bookable slot of `service` in `window`, given the calendars' busy time and the
    /// live holds and bookings of this instance.
    pub async fn available(
        &self,
        tenant: &Tenant,
        service: &ServiceType,
        window: Interval,
    ) -> Result<Vec<Slot>, BookingError> {
        let now = self.clock.now();
        let busy = self.busy(tenant, window, now).await?;
        Ok(schedule::enumerate_slots(&tenant.config.rules, &tenant.config.staff, service, &busy, window, now))
    }

    /// The search window: from now to the tenant's horizon.
    pub fn horizon(&self, tenant: &Tenant) -> Interval {
        let now = self.clock.now();
        let end = now + SignedDuration::from_hours(24 * tenant.config.rules.horizon_days as i64);
        Interval::new(now, end)
    }

    pub async fn find(
        &self,
        tenant: &Tenant,
        service: &ServiceType,
        preference: &SlotPreference,
        count: usize,
    ) -> Result<Vec<Slot>, BookingError> {
        let window = self.horizon(tenant);
        let now = self.clock.now();
        let busy = self.busy(tenant, window, now).await?;
        // The borrowed enumeration avoids one String per candidate slot (the hot path of
        // find_slots enumerates the whole horizon to pick 2–3 options).
        let slots =
            schedule::enumerate_slot_refs(&tenant.config.rules, &tenant.config.staff, service, &busy, window, now);
        Ok(schedule::pick_options_from_refs(&slots, count, preference, &tenant.config.time_zone))
    }

    async fn busy(&self, tenant: &Tenant, window: Interval, now: Timestamp) -> Result<Vec<Busy>, BookingError> {
        let mut busy = Vec::new();
        for staff in &tenant.config.staff {
            let intervals =
                tenant.calendar.free_busy(&staff.calendar_ids, window).await.map_err(BookingError::Calendar)?;
            busy.extend(intervals.into_iter().map(|interval| Busy { staff_id: staff.id.clone(), interval }));
            busy.extend(
                self.ledger
                    .busy(tenant.id(), &staff.id, window, now)
                    .into_iter()
                    .map(|interval| Busy { staff_id: staff.id.clone(), interval }),
            );
        }
        Ok(busy)
    }

    /// Holds `start` for the caller. The start must be a slot the engine would offer now.
    pub async fn hold(
        &self,
        tenant: &Tenant,
        call_id: &str,
        service: &ServiceType,
        start: Timestamp,
        staff_id: Option<&str>,
    ) -> Result<Hold, BookingError> {
        let slot_end = start + SignedDuration::from_mins(service.duration_minutes as i64);
        let window = Interval::new(start, slot_end);
        let slots = self.available(tenant, service, window).await?;
        let candidates: Vec<&Slot> =
            slots.iter().filter(|s| s.start == start && staff_id.is_none_or(|id| s.staff_id == id)).collect();
        let now = self.clock.now();
        for slot in candidates {
            let req = HoldRequest {
                tenant: tenant.id().to_owned(),
                staff_id: slot.staff_id.clone(),
                call_id: call_id.to_owned(),
                slot: Interval::new(slot.start, slot.end),
                blocked: schedule::blocked_interval(service, slot.start),
                ttl: tenant.config.hold_ttl,
            };
            match self.ledger.try_hold(req, now) {
                Ok(hold) => return Ok(hold),
                Err(HoldError::Overlap) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let alternatives = self.find(tenant, service, &near(start, tenant), 3).await?;
        Err(BookingError::NotAvailable { alternatives })
    }

    /// Commits a hold to the calendar. Idempotent: the event id is derived from the hold id.
    pub async fn commit(
        &self,
        tenant: &Tenant,
        call_id: &str,
        hold_id: Uuid,
        service: &ServiceType,
        attendee: &Attendee,
    ) -> Result<Booked, BookingError> {
        let now = self.clock.now();
        let hold = self.ledger.get(tenant.id(), hold_id, now)?;
        if hold.call_id != call_id {
            return Err(HoldError::NotOwner.into());
        }
        let staff = tenant
            .config
            .staff
            .iter()
            .find(|s| s.id == hold.staff_id)
            .expect("holds are only made for configured staff");
        // 1. Re-check the provider, bypassing every cache: a direct booking made since the hold
        //    was taken wins.
        let busy =
            tenant.calendar.free_busy(&staff.calendar_ids, hold.blocked).await.map_err(BookingError::Unconfirmed)?;
        if busy.iter().any(|b| b.overlaps(&hold.blocked)) {
            self.ledger.release(tenant.id(), hold_id, call_id)?;
            let alternatives = self.find(tenant, service, &near(hold.slot.start, tenant), 3).await?;
            return Err(BookingError::NotAvailable { alternatives });
        }
        // 2. Create with an id derived from the hold: a retry after a lost response answers 409
        //    and we adopt the existing event instead of creating a second one.
        let calendar_id = staff.calendar_ids[0].clone();
        let idempotency_key = format!("{}:{}", tenant.id(), hold_id);
        let event_id = event_id_from_key(&idempotency_key);
        let summary = match &attendee.name {
            Some(n) => format!("{} — {}", service.name, n),
            None => service.name.clone(),
        };
        let event = NewEvent {
            id: event_id.clone(),
            summary,
            description: format!(
                "Booked by the AI receptionist (callside) during call {call_id}.{}",
                attendee.notes.as_deref().map(|n| format!("\nNotes: {n}")).unwrap_or_default()
            ),
            start: hold.slot.start,
            end: hold.slot.end,
            time_zone: tenant.config.time_zone_name.clone(),
            attendee_email: attendee.email.clone(),
            reminder_minutes: tenant.config.reminder_minutes.clone(),
            call_id: call_id.to_owned(),
            service_id: service.id.clone(),
        };
        match tenant.calendar.create_event(&calendar_id, &event).await {
            Ok(_) => {}
            Err(ConnectorError::Conflict { .. }) => {
                // Ours from an earlier attempt (same derived id): adopt it.
                tenant.calendar.get_event(&calendar_id, &event_id).await.map_err(BookingError::Unconfirmed)?;
            }
            Err(e) => return Err(BookingError::Unconfirmed(e)),
        }
        self.store
            .audit(
                tenant.id(),
                Some(call_id),
                None,
                "calendar.create_event",
                &json!({"provider": tenant.calendar.provider(), "calendar_id": calendar_id, "event_id": event_id, "start": hold.slot.start.to_string(), "end": hold.slot.end.to_string()}),
                now,
            )
            .await?;
        // 3. Verify: a foreign event that appeared concurrently means the customer who booked
        //    directly wins; withdraw ours and offer alternatives.
        let overlapping =
            tenant.calendar.list_events(&calendar_id, hold.blocked).await.map_err(BookingError::Unconfirmed)?;
        let foreign = overlapping.iter().any(|e| e.id != event_id && e.busy && e.call_id.as_deref() != Some(call_id));
        if foreign {
            let withdrawn = tenant.calendar.cancel_event(&calendar_id, &event_id, false).await;
            self.store
                .audit(
                    tenant.id(),
                    Some(call_id),
                    None,
                    "calendar.withdraw_event",
                    &json!({"event_id": event_id, "reason": "foreign event overlaps", "ok": withdrawn.is_ok()}),
                    self.clock.now(),
                )
                .await?;
            self.ledger.release(tenant.id(), hold_id, call_id)?;
            let alternatives = self.find(tenant, service, &near(hold.slot.start, tenant), 3).await?;
            return Err(BookingError::NotAvailable { alternatives });
        }
        self.ledger.confirm(tenant.id(), hold_id, call_id, self.clock.now())?;
        let booked = Booked {
            event_id: event_id.clone(),
            calendar_id: calendar_id.clone(),
            staff_id: hold.staff_id.clone(),
            service_id: service.id.clone(),
            start: hold.slot.start,
            end: hold.slot.end,
        };
        self.store
            .insert_booking(
                &BookingRow {
                    idempotency_key,
                    tenant: tenant.id().to_owned(),
                    call_id: call_id.to_owned(),
                    staff_id: hold.staff_id,
                    calendar_id,
                    event_id,
                    service_id: service.id.clone(),
                    start_at: ms(hold.slot.start),
                    end_at: ms(hold.slot.end),
                    status: "confirmed".into(),
                },
                self.clock.now(),
            )
            .await?;
        Ok(booked)
    }
}

/// Alternatives for a time that was taken: prefer the same local day.
fn near(start: Timestamp, tenant: &Tenant) -> SlotPreference {
    SlotPreference {
        day: Some(start.to_zoned_datetime(tenant.config.time_zone.clone()).date()),
        part_of_day: None,
        not_before: None,
    }
}

/// Shared handle.
pub type SharedBooking = Arc<BookingService>;
