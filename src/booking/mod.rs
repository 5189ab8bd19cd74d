//! Holds and commits. A hold is an atomic insert into the hold ledger ([`holds::Holds`]: this
//! instance's [`ledger::HoldLedger`], or the table shared on PostgreSQL); a commit
//! re-checks the provider's free/busy (bypassing any cache), creates the event with an id derived
//! from the hold (so a retry cannot create a second event), then lists events overlapping the
//! slot: if a foreign event appeared concurrently, ours is withdrawn — the customer who booked
//! directly wins (design invariant 3).

pub mod holds;
pub mod ledger;
pub mod pending;

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
use holds::Holds;
use ledger::{Hold, HoldError, HoldRequest};

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
    /// The calendar did not answer: the booking is recorded as pending and retried in the
    /// background until `deadline`; it is NOT confirmed.
    #[error("the booking is pending (calendar unreachable: {cause})")]
    Pending { key: String, deadline: Timestamp, cause: ConnectorError },
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
    /// The caller's number in E.164, when known: find_appointments looks bookings up by it.
    pub phone: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub notes: Option<String>,
}

pub struct BookingService {
    pub ledger: Holds,
    store: Store,
    clock: SharedClock,
    /// Busy time per (tenant, staff) read from the provider, so find_slots answers from memory.
    /// Commits always re-read the provider; our own writes invalidate the entry.
    busy_cache: moka::future::Cache<(String, String), Arc<CachedBusy>>,
    notifier: crate::notify::Notifier,
    commit_hook: std::sync::Mutex<Option<CommitHook>>,
    /// Pending bookings: the ledger hold each keeps, and the retrier's wake-up and progress.
    pub pending: pending::PendingState,
}

/// Busy intervals of one staff member over the window they were read for.
#[derive(Debug)]
pub struct CachedBusy {
    window: Interval,
    busy: Vec<Interval>,
}

/// How long provider busy time is trusted for offering slots. A direct booking made in the
/// calendar meanwhile is still caught at commit time (free/busy re-read past the cache).
const BUSY_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl BookingService {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self {
            ledger: Holds::for_store(&store),
            store,
            clock,
            busy_cache: moka::future::Cache::builder().max_capacity(100_000).time_to_live(BUSY_TTL).build(),
            notifier: crate::notify::Notifier::default(),
            commit_hook: std::sync::Mutex::new(None),
            pending: pending::PendingState::default(),
        }
    }

    /// Forgets the cached busy time of one staff member (after our own calendar writes, or when
    /// the calendar tells us it changed), here and — over the store's invalidation bus — on the
    /// other instances sharing a PostgreSQL store.
    pub async fn invalidate_busy(&self, tenant: &str, staff_id: &str) {
        self.drop_busy_here(tenant, staff_id).await;
        self.store.publish(tenant, crate::store::bus::What::StaffBusy { staff_id: staff_id.to_owned() }).await;
    }

    /// Forgets one staff member's cached busy time on this instance only (another instance said
    /// it changed: `crate::invalidation`).
    pub async fn drop_busy_here(&self, tenant: &str, staff_id: &str) {
        self.busy_cache.invalidate(&(tenant.to_owned(), staff_id.to_owned())).await;
    }

    /// Forgets every cached busy time on this instance (the invalidation listener was away).
    pub fn forget_busy(&self) {
        self.busy_cache.invalidate_all();
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

    /// Up to three other times near `around` (same day first, then the days after), for a caller
    /// whose time was just taken. Searches a few days, not the whole horizon: this runs on every
    /// lost race, so it must stay cheap under a burst.
    async fn alternatives(
        &self,
        tenant: &Tenant,
        service: &ServiceType,
        around: Timestamp,
    ) -> Result<Vec<Slot>, BookingError> {
        let now = self.clock.now();
        let horizon = self.horizon(tenant);
        let start = now.max(around - SignedDuration::from_hours(24));
        let end = horizon.end.min(around + SignedDuration::from_hours(72));
        if start < end {
            let window = Interval::new(start, end);
            let busy = self.busy(tenant, window, now).await?;
            let slots =
                schedule::enumerate_slot_refs(&tenant.config.rules, &tenant.config.staff, service, &busy, window, now);
            if !slots.is_empty() {
                return Ok(schedule::pick_options_from_refs(
                    &slots,
                    3,
                    &near(around, tenant),
                    &tenant.config.time_zone,
                ));
            }
        }
        self.find(tenant, service, &near(around, tenant), 3).await
    }

    async fn busy(&self, tenant: &Tenant, window: Interval, now: Timestamp) -> Result<Vec<Busy>, BookingError> {
        let reads = tenant.config.staff.iter().map(|staff| self.staff_busy(tenant, staff, window));
        let provider = futures::future::try_join_all(reads).await?;
        let mut busy = Vec::new();
        for (staff, intervals) in tenant.config.staff.iter().zip(provider) {
            busy.extend(
                intervals
                    .busy
                    .iter()
                    .filter(|b| b.overlaps(&window))
                    .map(|interval| Busy { staff_id: staff.id.clone(), interval: *interval }),
            );
            busy.extend(
                self.ledger
                    .busy(tenant.id(), &staff.id, window, now)
                    .await?
                    .into_iter()
                    .map(|interval| Busy { staff_id: staff.id.clone(), interval }),
            );
        }
        Ok(busy)
    }

    /// One staff member's provider busy time covering `window`. Reads are single-flight per
    /// (tenant, staff): a burst of callers asking at once makes one provider request, not one
    /// each. The read covers the horizon padded by a day on both sides, so the entry stays valid
    /// while "now" moves for the length of its TTL.
    async fn staff_busy(
        &self,
        tenant: &Tenant,
        staff: &crate::schedule::StaffMember,
        window: Interval,
    ) -> Result<Arc<CachedBusy>, BookingError> {
        let key = (tenant.id().to_owned(), staff.id.clone());
        let horizon = self.horizon(tenant);
        let day = SignedDuration::from_hours(24);
        let read_window = Interval::new(window.start.min(horizon.start - day), window.end.max(horizon.end + day));
        let fetch = || async {
            tenant
                .calendar
                .free_busy(&staff.calendar_ids, read_window)
                .await
                .map(|busy| Arc::new(CachedBusy { window: read_window, busy }))
        };
        let entry = self
            .busy_cache
            .try_get_with(key.clone(), fetch())
            .await
            .map_err(|e| BookingError::Calendar((*e).clone()))?;
        if entry.window.start <= window.start && entry.window.end >= window.end {
            return Ok(entry);
        }
        // A window outside what is cached (rare: a question past the horizon): read it directly.
        let fresh = fetch().await.map_err(BookingError::Calendar)?;
        self.busy_cache.insert(key, fresh.clone()).await;
        Ok(fresh)
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
            match self.ledger.try_hold(req, now).await {
                Ok(hold) => return Ok(hold),
                Err(HoldError::Overlap) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let alternatives = self.alternatives(tenant, service, start).await?;
        Err(BookingError::NotAvailable { alternatives })
    }

    /// Commits a hold to the calendar. Idempotent: the event id is derived from the hold id.
    /// A calendar that does not answer (outage, rate limit) makes the booking *pending*: it is
    /// recorded durably, its hold is handed to the pending booking until its deadline, and the
    /// caller is told it is not confirmed yet (`BookingError::Pending`).
    pub async fn commit(
        &self,
        tenant: &Tenant,
        call_id: &str,
        hold_id: Uuid,
        service: &ServiceType,
        attendee: &Attendee,
    ) -> Result<Booked, BookingError> {
        let now = self.clock.now();
        let hold = self.ledger.get(tenant.id(), hold_id, now).await?;
        if hold.call_id != call_id {
            return Err(HoldError::NotOwner.into());
        }
        let staff = tenant
            .config
            .staff
            .iter()
            .find(|s| s.id == hold.staff_id)
            .expect("holds are only made for configured staff");
        let calendar_id = staff.calendar_ids[0].clone();
        let idempotency_key = format!("{}:{}", tenant.id(), hold_id);
        let event_id = event_id_from_key(&idempotency_key);
        let pending = |e: ConnectorError| PendingCause { error: e, key: idempotency_key.clone() };
        let outcome = async {
            self.hook(CommitPoint::BeforeRecheck, tenant, &calendar_id, &hold).await;
            // 1. Re-check the provider, bypassing every cache: a direct booking made since the
            //    hold was taken wins. (Steps 1 and 3 are skipped only under the test-only ledger
            //    bypass: see `HoldLedger::set_unsafe_bypass`.)
            let guarded = !self.ledger.unsafe_bypassed();
            let busy = if guarded {
                tenant.calendar.free_busy(&staff.calendar_ids, hold.blocked).await.map_err(pending)?
            } else {
                Vec::new()
            };
            if busy.iter().any(|b| b.overlaps(&hold.blocked)) {
                return Ok(Step::Taken);
            }
            // 2. Create with an id derived from the hold: a retry after a lost response answers
            //    409 and we adopt the existing event instead of creating a second one.
            let event = new_event(tenant, call_id, service, attendee, &event_id, hold.slot);
            self.create_or_adopt(tenant, call_id, &calendar_id, &event, now).await.map_err(pending)?;
            self.hook(CommitPoint::BeforeVerify, tenant, &calendar_id, &hold).await;
            // 3. Verify: a foreign event that appeared concurrently means the customer who
            //    booked directly wins; withdraw ours.
            if guarded
                && self
                    .foreign_overlap(tenant, call_id, &calendar_id, &event_id, hold.blocked)
                    .await
                    .map_err(pending)?
            {
                return Ok(Step::Taken);
            }
            Ok(Step::Created)
        }
        .await;
        match outcome {
            Ok(Step::Taken) => {
                self.ledger.release(tenant.id(), hold_id, call_id).await?;
                // The cache did not know of the direct booking: neither the alternatives nor the
                // next caller may be offered that time again.
                self.invalidate_busy(tenant.id(), &hold.staff_id).await;
                let alternatives = self.alternatives(tenant, service, hold.slot.start).await?;
                Err(BookingError::NotAvailable { alternatives })
            }
            Ok(Step::Created) => {
                self.ledger.confirm(tenant.id(), hold_id, call_id, self.clock.now()).await?;
                self.record_booking(
                    tenant,
                    call_id,
                    &idempotency_key,
                    &calendar_id,
                    &event_id,
                    &hold,
                    service,
                    attendee,
                )
                .await
            }
            Err(PendingCause { error, key }) if error.is_retryable() => {
                self.make_pending(tenant, call_id, &key, &calendar_id, &event_id, &hold, service, attendee, error).await
            }
            Err(PendingCause { error, .. }) => Err(BookingError::Unconfirmed(error)),
        }
    }

    /// Creates the event; a 409 for our derived id means an earlier attempt created it: adopt it.
    pub(crate) async fn create_or_adopt(
        &self,
        tenant: &Tenant,
        call_id: &str,
        calendar_id: &str,
        event: &NewEvent,
        now: Timestamp,
    ) -> Result<(), ConnectorError> {
        match tenant.calendar.create_event(calendar_id, event).await {
            Ok(_) => {}
            Err(ConnectorError::Conflict { .. }) => {
                tenant.calendar.get_event(calendar_id, &event.id).await?;
            }
            Err(e) => return Err(e),
        }
        let audited = self
            .store
            .audit(
                tenant.id(),
                Some(call_id),
                None,
                "calendar.create_event",
                &json!({"provider": tenant.calendar.provider(), "calendar_id": calendar_id, "event_id": event.id, "start": event.start.to_string(), "end": event.end.to_string()}),
                now,
            )
            .await;
        if let Err(e) = audited {
            tracing::error!(error = %e, "audit write failed");
        }
        Ok(())
    }

    /// Whether a foreign busy event overlaps `blocked`; if so ours is withdrawn (audited).
    pub(crate) async fn foreign_overlap(
        &self,
        tenant: &Tenant,
        call_id: &str,
        calendar_id: &str,
        event_id: &str,
        blocked: Interval,
    ) -> Result<bool, ConnectorError> {
        let overlapping = tenant.calendar.list_events(calendar_id, blocked).await?;
        let foreign = overlapping.iter().any(|e| e.id != event_id && e.busy && e.call_id.as_deref() != Some(call_id));
        if foreign {
            let withdrawn = tenant.calendar.cancel_event(calendar_id, event_id, false).await;
            let audited = self
                .store
                .audit(
                    tenant.id(),
                    Some(call_id),
                    None,
                    "calendar.withdraw_event",
                    &json!({"event_id": event_id, "reason": "foreign event overlaps", "ok": withdrawn.is_ok()}),
                    self.clock.now(),
                )
                .await;
            if let Err(e) = audited {
                tracing::error!(error = %e, "audit write failed");
            }
        }
        Ok(foreign)
    }

    /// Records a confirmed booking (store row, busy cache) once its event exists and verified.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record_booking(
        &self,
        tenant: &Tenant,
        call_id: &str,
        idempotency_key: &str,
        calendar_id: &str,
        event_id: &str,
        hold: &Hold,
        service: &ServiceType,
        attendee: &Attendee,
    ) -> Result<Booked, BookingError> {
        self.invalidate_busy(tenant.id(), &hold.staff_id).await;
        self.store
            .insert_booking(
                &BookingRow {
                    idempotency_key: idempotency_key.to_owned(),
                    tenant: tenant.id().to_owned(),
                    call_id: call_id.to_owned(),
                    staff_id: hold.staff_id.clone(),
                    calendar_id: calendar_id.to_owned(),
                    event_id: event_id.to_owned(),
                    service_id: service.id.clone(),
                    start_at: ms(hold.slot.start),
                    end_at: ms(hold.slot.end),
                    status: "confirmed".into(),
                    caller_phone: attendee.phone.clone(),
                    caller_email: attendee.email.clone(),
                },
                self.clock.now(),
            )
            .await?;
        Ok(Booked {
            event_id: event_id.to_owned(),
            calendar_id: calendar_id.to_owned(),
            staff_id: hold.staff_id.clone(),
            service_id: service.id.clone(),
            start: hold.slot.start,
            end: hold.slot.end,
        })
    }

    /// Arms the test hook (see [`CommitPoint`]); `None` disarms it.
    pub fn set_commit_hook(&self, hook: Option<CommitHook>) {
        *self.commit_hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = hook;
    }

    async fn hook(&self, point: CommitPoint, tenant: &Tenant, calendar_id: &str, hold: &Hold) {
        let hook = self.commit_hook.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(hook) = hook {
            hook(CommitHookArgs {
                point,
                tenant: tenant.id().to_owned(),
                calendar_id: calendar_id.to_owned(),
                slot: hold.slot,
                blocked: hold.blocked,
            })
            .await;
        }
    }
}

/// Where a commit stands, inside [`BookingService::commit`].
enum Step {
    Created,
    Taken,
}

/// A calendar failure during a commit, with the booking's key.
struct PendingCause {
    error: ConnectorError,
    key: String,
}

/// The event callside writes for a booking.
pub(crate) fn new_event(
    tenant: &Tenant,
    call_id: &str,
    service: &ServiceType,
    attendee: &Attendee,
    event_id: &str,
    slot: Interval,
) -> NewEvent {
    let summary = match &attendee.name {
        Some(n) => format!("{} — {}", service.name, n),
        None => service.name.clone(),
    };
    NewEvent {
        id: event_id.to_owned(),
        summary,
        description: format!(
            "Booked by the AI receptionist (callside) during call {call_id}.{}",
            attendee.notes.as_deref().map(|n| format!("\nNotes: {n}")).unwrap_or_default()
        ),
        start: slot.start,
        end: slot.end,
        time_zone: tenant.config.time_zone_name.clone(),
        attendee_email: attendee.email.clone(),
        reminder_minutes: tenant.config.reminder_minutes.clone(),
        call_id: call_id.to_owned(),
        service_id: service.id.clone(),
    }
}

/// The two points in the commit protocol where a race with a direct booking matters. Tests arm
/// a hook ([`BookingService::set_commit_hook`]) that runs at the exact point, e.g. to insert a
/// customer's own event into the calendar — no sleeps, no timing. Unarmed in production (one
/// uncontended mutex read per commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPoint {
    /// The hold is taken and the commit started; the provider's free/busy is not re-read yet.
    BeforeRecheck,
    /// Our event was created; the overlap check has not listed the calendar yet.
    BeforeVerify,
}

/// What a commit hook is told.
#[derive(Debug, Clone)]
pub struct CommitHookArgs {
    pub point: CommitPoint,
    pub tenant: String,
    pub calendar_id: String,
    pub slot: Interval,
    pub blocked: Interval,
}

pub type CommitHook = Arc<dyn Fn(CommitHookArgs) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

impl BookingService {
    /// Confirmed bookings of this caller that have not started yet.
    pub async fn upcoming(
        &self,
        tenant: &Tenant,
        phone: Option<&str>,
        email: Option<&str>,
    ) -> Result<Vec<BookingRow>, BookingError> {
        Ok(self.store.upcoming_bookings_for_caller(tenant.id(), phone, email, self.clock.now()).await?)
    }

    /// Moves a booking to `new_start` with the same staff member, modifying the calendar event in
    /// place (never delete-and-recreate). The new time is held first; the old time is freed only
    /// after the provider accepted the move, and restored if it did not.
    pub async fn reschedule(
        &self,
        tenant: &Tenant,
        call_id: &str,
        booking: &BookingRow,
        service: &ServiceType,
        new_start: Timestamp,
    ) -> Result<Booked, BookingError> {
        let now = self.clock.now();
        let staff = tenant.config.staff.iter().find(|s| s.id == booking.staff_id).ok_or_else(|| {
            BookingError::Unconfirmed(ConnectorError::Permanent(
                "the booking's staff member is no longer configured".into(),
            ))
        })?;
        let old_slot = Interval::new(ts(booking.start_at), ts(booking.end_at));
        let old_blocked = schedule::blocked_interval(service, old_slot.start);
        let new_slot = Interval::new(new_start, new_start + SignedDuration::from_mins(service.duration_minutes as i64));
        let new_blocked = schedule::blocked_interval(service, new_start);
        // Fresh provider read (we are about to write), without the event being moved.
        let read = Interval::new(new_blocked.start.min(old_slot.start), new_blocked.end.max(old_slot.end));
        let provider = tenant.calendar.free_busy(&staff.calendar_ids, read).await.map_err(BookingError::Calendar)?;
        let provider = subtract(&provider, old_slot);
        // Nothing is changed yet: a ledger that cannot free the old time fails the move here,
        // rather than have the old time count as busy and the new one refused as taken.
        self.ledger.remove_booking(tenant.id(), &staff.id, old_blocked).await?;
        let mut busy: Vec<Busy> =
            provider.into_iter().map(|interval| Busy { staff_id: staff.id.clone(), interval }).collect();
        busy.extend(
            self.ledger
                .busy(tenant.id(), &staff.id, read, now)
                .await?
                .into_iter()
                .map(|interval| Busy { staff_id: staff.id.clone(), interval }),
        );
        let offered =
            schedule::enumerate_slots(&tenant.config.rules, std::slice::from_ref(staff), service, &busy, new_slot, now);
        let hold = if offered.iter().any(|s| s.start == new_start) {
            self.ledger
                .try_hold(
                    HoldRequest {
                        tenant: tenant.id().to_owned(),
                        staff_id: staff.id.clone(),
                        call_id: call_id.to_owned(),
                        slot: new_slot,
                        blocked: new_blocked,
                        ttl: tenant.config.hold_ttl,
                    },
                    now,
                )
                .await
                .ok()
        } else {
            None
        };
        let Some(hold) = hold else {
            self.restore_block(tenant, staff, call_id, old_slot, old_blocked, now).await;
            let alternatives = self.alternatives(tenant, service, new_start).await?;
            return Err(BookingError::NotAvailable { alternatives });
        };
        match self.move_in_place(tenant, booking, new_slot).await {
            Ok(()) => {
                self.ledger.confirm(tenant.id(), hold.id, call_id, self.clock.now()).await?;
                self.store
                    .move_booking(tenant.id(), &booking.idempotency_key, new_slot.start, new_slot.end, self.clock.now())
                    .await?;
                self.store
                    .audit(
                        tenant.id(),
                        Some(call_id),
                        None,
                        "calendar.move_event",
                        &json!({"provider": tenant.calendar.provider(), "event_id": booking.event_id, "from": old_slot.start.to_string(), "to": new_slot.start.to_string()}),
                        self.clock.now(),
                    )
                    .await?;
                self.invalidate_busy(tenant.id(), &staff.id).await;
                Ok(Booked {
                    event_id: booking.event_id.clone(),
                    calendar_id: booking.calendar_id.clone(),
                    staff_id: staff.id.clone(),
                    service_id: service.id.clone(),
                    start: new_slot.start,
                    end: new_slot.end,
                })
            }
            Err(e) => {
                let _ = self.ledger.release(tenant.id(), hold.id, call_id).await;
                self.restore_block(tenant, staff, call_id, old_slot, old_blocked, self.clock.now()).await;
                Err(BookingError::Unconfirmed(e))
            }
        }
    }

    /// PATCH the event's times conditionally on its current ETag; a 412 (someone edited it
    /// meanwhile) re-reads and tries once more.
    async fn move_in_place(&self, tenant: &Tenant, booking: &BookingRow, to: Interval) -> Result<(), ConnectorError> {
        let mut last = None;
        for _ in 0..2 {
            let current = tenant.calendar.get_event(&booking.calendar_id, &booking.event_id).await?;
            match tenant
                .calendar
                .move_event(&booking.calendar_id, &booking.event_id, to.start, to.end, current.etag.as_deref())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e @ ConnectorError::PreconditionFailed(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnectorError::Permanent("move failed".into())))
    }

    /// Puts a booking's block back in the ledger after a failed move.
    async fn restore_block(
        &self,
        tenant: &Tenant,
        staff: &crate::schedule::StaffMember,
        call_id: &str,
        slot: Interval,
        blocked: Interval,
        now: Timestamp,
    ) {
        let req = HoldRequest {
            tenant: tenant.id().to_owned(),
            staff_id: staff.id.clone(),
            call_id: call_id.to_owned(),
            slot,
            blocked,
            ttl: tenant.config.hold_ttl,
        };
        if let Ok(h) = self.ledger.try_hold(req, now).await {
            let _ = self.ledger.confirm(tenant.id(), h.id, call_id, now).await;
        }
    }

    /// Cancels a booking in the calendar and frees its time. When `notify`, the customer is told:
    /// by the provider where it does that itself (Google `sendUpdates`, Graph's cancel action),
    /// otherwise (CalDAV) through the tenant's signed notification webhook.
    pub async fn cancel(
        &self,
        tenant: &Tenant,
        call_id: &str,
        booking: &BookingRow,
        service: Option<&ServiceType>,
        notify: bool,
    ) -> Result<CancelNotice, BookingError> {
        let native = notify && tenant.calendar.notifies_attendees();
        match tenant.calendar.cancel_event(&booking.calendar_id, &booking.event_id, native).await {
            // Already gone from the calendar (cancelled directly): the end state is the same.
            Ok(()) | Err(ConnectorError::NotFound(_)) => {}
            Err(e) => return Err(BookingError::Unconfirmed(e)),
        }
        if let Some(service) = service {
            // The event is cancelled at the provider, which is what the caller is told; a ledger
            // that cannot free the time (logged by the ledger) only keeps it blocked until the
            // booking's end, so other callers are refused that time rather than double-booked.
            let freed = self
                .ledger
                .remove_booking(
                    tenant.id(),
                    &booking.staff_id,
                    schedule::blocked_interval(service, ts(booking.start_at)),
                )
                .await;
            if freed.is_err() {
                tracing::warn!(call_id, tenant = %tenant.id(), staff_id = %booking.staff_id,
                    "the cancelled booking's time could not be freed in the hold ledger");
            }
        }
        let now = self.clock.now();
        // The service's own cancellation is known at once: late or not by the tenant's window
        // (`[outcomes]`, or its default), recorded with the time (`crate::outcomes`).
        let window = tenant.config.outcomes.clone().unwrap_or_default().late_cancel_window();
        let outcome = crate::outcomes::cancellation_outcome(ts(booking.start_at), Some(now), window);
        self.store.record_booking_cancellation(tenant.id(), &booking.idempotency_key, outcome, now).await?;
        self.store
            .audit(
                tenant.id(),
                Some(call_id),
                None,
                "calendar.cancel_event",
                &json!({"provider": tenant.calendar.provider(), "event_id": booking.event_id, "notify": native}),
                now,
            )
            .await?;
        self.invalidate_busy(tenant.id(), &booking.staff_id).await;
        let notice = match (notify, native, &tenant.config.webhook) {
            (false, _, _) => CancelNotice::None,
            (true, true, _) => CancelNotice::Provider,
            (true, false, None) => CancelNotice::None,
            (true, false, Some(webhook)) => {
                let event = json!({
                    "type": "appointment.cancelled",
                    "tenant": tenant.id(),
                    "business": tenant.config.name,
                    "appointment_id": booking.event_id,
                    "service_id": booking.service_id,
                    "service": service.map(|s| s.name.as_str()),
                    "staff_id": booking.staff_id,
                    "start": ts(booking.start_at).to_string(),
                    "end": ts(booking.end_at).to_string(),
                    "time_zone": tenant.config.time_zone_name,
                    "customer": {"phone": booking.caller_phone, "email": booking.caller_email},
                    "call_id": call_id,
                });
                let event_id = format!("cancel:{}", booking.idempotency_key);
                // One retry for a transient failure; the call is live, so no longer than that.
                let mut result = self.notifier.send(webhook, &event_id, &event, now).await;
                if result.as_ref().is_err_and(|e| e.is_retryable()) {
                    result = self.notifier.send(webhook, &event_id, &event, self.clock.now()).await;
                }
                self.store
                    .audit(
                        tenant.id(),
                        Some(call_id),
                        None,
                        "notify.webhook",
                        &json!({"type": "appointment.cancelled", "event_id": event_id, "ok": result.is_ok(), "error": result.as_ref().err().map(|e| e.to_string())}),
                        self.clock.now(),
                    )
                    .await?;
                match result {
                    Ok(()) => CancelNotice::Webhook,
                    Err(e) => {
                        tracing::warn!(call_id, error = %e, "cancellation webhook not delivered");
                        CancelNotice::Failed
                    }
                }
            }
        };
        Ok(notice)
    }
}

/// How the customer hears of a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelNotice {
    /// Not asked for (or nowhere to send it).
    None,
    /// The calendar provider emails the attendee.
    Provider,
    /// The tenant's webhook accepted the notification.
    Webhook,
    /// The webhook did not accept it; the cancellation itself stands.
    Failed,
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `busy` minus `cut` (both half-open).
fn subtract(busy: &[Interval], cut: Interval) -> Vec<Interval> {
    let mut out = Vec::with_capacity(busy.len() + 1);
    for b in busy {
        if !b.overlaps(&cut) {
            out.push(*b);
            continue;
        }
        if b.start < cut.start {
            out.push(Interval::new(b.start, cut.start));
        }
        if cut.end < b.end {
            out.push(Interval::new(cut.end, b.end));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{OpeningHours, ScheduleRules, StaffMember, WeeklyHours};
    use jiff::civil::Time;
    use proptest::prelude::*;

    const ZONES: [&str; 4] = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "America/Havana"];

    fn staff(id: &str, zone: &str) -> StaffMember {
        let t = |h: i8| Time::new(h, 0, 0, 0).unwrap();
        StaffMember {
            id: id.into(),
            name: id.into(),
            time_zone: jiff::tz::TimeZone::get(zone).unwrap(),
            // Small hours too, where most zones change their offset.
            hours: WeeklyHours::every_day(vec![
                OpeningHours { open: t(0), close: t(3) },
                OpeningHours { open: t(8), close: t(18) },
            ]),
            calendar_ids: vec![format!("{id}@example.com")],
            closed_dates: vec![],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The engine and the ledger agree through any sequence of holds and releases, across
        /// DST dates: every slot the engine offers (given the provider's busy time and the live
        /// holds) can be held, and the ledger's holds never overlap one another.
        #[test]
        fn offered_slots_can_be_held_and_holds_never_overlap(
            zone in 0usize..ZONES.len(),
            transition in 0usize..3,
            (duration, before, after) in (15u32..=120, 0u32..=20, 0u32..=20),
            interval in prop_oneof![Just(0u32), Just(15), Just(30)],
            provider in prop::collection::vec((0usize..2, 0i64..4320, 15i64..=180), 0..6),
            steps in prop::collection::vec((any::<usize>(), 0usize..3, any::<bool>()), 1..30),
        ) {
            let tz = jiff::tz::TimeZone::get(ZONES[zone]).unwrap();
            let jan: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
            let anchor = if transition < 2 {
                tz.following(jan).nth(transition).map(|t| t.timestamp()).unwrap_or(jan)
            } else {
                "2026-06-15T12:00:00Z".parse().unwrap()
            };
            let window = Interval::new(anchor - SignedDuration::from_hours(24), anchor + SignedDuration::from_hours(48));
            let now = window.start - SignedDuration::from_hours(1);
            let team = [staff("ann", ZONES[zone]), staff("bob", "America/New_York")];
            let rules = ScheduleRules { slot_interval_minutes: interval, min_notice_minutes: 0, horizon_days: 5 };
            let service = ServiceType {
                id: "s".into(),
                name: "S".into(),
                duration_minutes: duration,
                buffer_before_minutes: before,
                buffer_after_minutes: after,
                synonyms: vec![],
                staff_ids: vec![],
            };
            let provider: Vec<Busy> = provider
                .into_iter()
                .map(|(who, at, len)| {
                    let start = window.start + SignedDuration::from_mins(at);
                    Busy { staff_id: team[who].id.clone(), interval: Interval::new(start, start + SignedDuration::from_mins(len)) }
                })
                .collect();
            let ledger = ledger::HoldLedger::new();
            let calls = ["c0", "c1", "c2"];
            let mut held: Vec<(Uuid, &str)> = Vec::new();
            for (pick, call, release) in steps {
                let mut busy = provider.clone();
                for m in &team {
                    busy.extend(ledger.busy("t", &m.id, window, now).into_iter().map(|interval| Busy { staff_id: m.id.clone(), interval }));
                }
                let slots = schedule::enumerate_slots(&rules, &team, &service, &busy, window, now);
                if slots.is_empty() {
                    break;
                }
                let slot = &slots[pick % slots.len()];
                let got = ledger.try_hold(
                    HoldRequest {
                        tenant: "t".into(),
                        staff_id: slot.staff_id.clone(),
                        call_id: calls[call].into(),
                        slot: Interval::new(slot.start, slot.end),
                        blocked: schedule::blocked_interval(&service, slot.start),
                        ttl: SignedDuration::from_mins(5),
                    },
                    now,
                );
                prop_assert!(got.is_ok(), "an offered slot could not be held: {:?} {:?}", slot, got);
                held.push((got.unwrap().id, calls[call]));
                if release && held.len() > 1 {
                    let (id, owner) = held.remove(pick % held.len());
                    prop_assert!(ledger.release("t", id, owner).is_ok());
                }
                for m in &team {
                    let live = ledger.busy("t", &m.id, window, now);
                    for pair in live.windows(2) {
                        prop_assert!(pair[0].end <= pair[1].start, "holds overlap: {:?}", pair);
                    }
                    for b in provider.iter().filter(|b| b.staff_id == m.id) {
                        prop_assert!(live.iter().all(|h| !h.overlaps(&b.interval)), "a hold overlaps the provider's busy time");
                    }
                }
            }
        }
    }

    fn t(h: i64) -> Timestamp {
        Timestamp::from_second(h * 3600).unwrap()
    }

    #[test]
    fn subtracting_cuts_holes_and_keeps_the_rest() {
        let busy = [Interval::new(t(1), t(5)), Interval::new(t(6), t(7))];
        assert_eq!(
            subtract(&busy, Interval::new(t(2), t(3))),
            vec![Interval::new(t(1), t(2)), Interval::new(t(3), t(5)), Interval::new(t(6), t(7))]
        );
        assert_eq!(subtract(&busy, Interval::new(t(0), t(10))), vec![]);
        assert_eq!(subtract(&busy, Interval::new(t(5), t(6))), busy.to_vec());
    }
}
