//! The retrier of pending bookings (see `booking::pending` for the life of one). It runs beside
//! the write-back worker, is woken when a booking becomes pending and otherwise sleeps on the
//! injected clock until the next one is due, so tests drive it with the manual clock.
//!
//! Statuses: `pending` (retrying the calendar) → `booked` (event confirmed and recorded; the
//! call's write-back still has to learn of it) → `confirmed`. Or `pending` → `escalating` (taken,
//! refused, or the deadline passed: a staff task must be created) → `escalated`.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Core;
use crate::booking::pending::{Attempt, StoredAttendee, backoff};
use crate::connectors::ConnectorError;
use crate::connectors::crm::{AppointmentRecord, ContactFields, TaskRecord};
use crate::identity::{self, MatchDecision, ParsedPhone, Phone};
use crate::store::PendingBookingRow;
use crate::tenant::Tenant;
use crate::writeback::plan::{BookedSummary, kind};

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A booking as a staff task names it: the service's name and the local time, e.g.
/// ("Consultation", "Monday, November 23 at 9:00 AM").
pub(crate) fn describe_booking<'a>(tenant: &'a Tenant, service_id: &str, start: Timestamp) -> (&'a str, String) {
    let service =
        tenant.config.services.iter().find(|s| s.id == service_id).map(|s| s.name.as_str()).unwrap_or("appointment");
    let when = start.to_zoned_datetime(tenant.config.time_zone.clone()).strftime("%A, %B %-d at %-I:%M %p").to_string();
    (service, when)
}

impl Core {
    /// Runs until `stop`: one pass over the due pending bookings, then sleep until the next is
    /// due or a new one arrives. On a shared store one instance works them for the cluster
    /// (`crate::leader`: two would retry one booking and create its staff task twice); it passes
    /// at least every `RECHECK_EVERY` to keep its lease, and so do the others to take it over. A
    /// booking confirmed by the leader for a call live on another instance reaches that call's
    /// write-back once the call has ended (`attach_to_call`'s closed-call path).
    pub async fn run_pending_bookings(self: Arc<Self>, stop: CancellationToken) {
        let gate = self.jobs.gate(crate::leader::Job::PendingBookings, crate::leader::RECHECK_EVERY);
        loop {
            let woken = self.booking.pending.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let started = self.clock.now();
            let leads = gate.lead().await;
            if leads {
                if let Err(e) = self.pending_pass().await {
                    tracing::error!(error = %e, "pending booking pass failed");
                }
                self.booking.pending.progress.send_modify(|n| *n += 1);
            }
            // Another instance's due bookings are its own: only the recheck wakes a follower.
            let due = if leads { self.store.next_pending_due_at().await.ok().flatten() } else { None };
            let recheck = gate.recheck_every().map(|every| started + every);
            let next = match (due, recheck) {
                (Some(d), Some(r)) => Some(d.min(r)),
                (d, r) => d.or(r),
            };
            let sleeper = next.map(|at| self.clock.sleep_until(at));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut woken => {},
                _ = async { match sleeper { Some(s) => s.await, None => std::future::pending().await } } => {},
            }
        }
    }

    /// Works every due pending booking once.
    pub async fn pending_pass(&self) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        for row in self.store.due_pending_bookings(now, 50).await? {
            let Some(tenant) = self.tenants.by_id(&row.tenant) else {
                tracing::error!(key = %row.idempotency_key, "pending booking of an unknown tenant");
                continue;
            };
            match row.status.as_str() {
                "pending" => self.retry_pending(&tenant, &row).await?,
                "booked" => self.attach_to_call(&tenant, &row).await?,
                "escalating" => self.escalate(&tenant, &row).await?,
                _ => {}
            }
        }
        Ok(())
    }

    async fn retry_pending(
        &self,
        tenant: &Arc<Tenant>,
        row: &PendingBookingRow,
    ) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        let key = &row.idempotency_key;
        let Some(service) = tenant.config.services.iter().find(|s| s.id == row.service_id) else {
            return self.to_escalating(row, "the service is no longer offered").await;
        };
        if now >= ts(row.deadline_at) {
            return self.to_escalating(row, "not confirmed before the deadline").await;
        }
        let attempt = match self.booking.attempt_pending(tenant, row, service).await {
            Ok(a) => a,
            Err(e) => Attempt::Retry(ConnectorError::Transient(e.to_string())),
        };
        let attempts = row.attempts + 1;
        match attempt {
            Attempt::Confirmed(_) => {
                self.store.update_pending_booking(key, "booked", attempts, now, None, None, now).await?;
                self.store
                    .audit(
                        &row.tenant,
                        Some(&row.call_id),
                        None,
                        "booking.pending_confirmed",
                        &json!({"key": key, "event_id": row.event_id, "attempts": attempts}),
                        now,
                    )
                    .await?;
                let mut booked = row.clone();
                booked.status = "booked".into();
                self.attach_to_call(tenant, &booked).await
            }
            Attempt::Taken => self.to_escalating(row, "the time was taken by a direct booking").await,
            Attempt::Refused(e) => self.to_escalating(row, &format!("the calendar refused: {e}")).await,
            Attempt::Retry(e) => {
                let next = (now + backoff(row.attempts)).min(ts(row.deadline_at));
                tracing::warn!(key = %key, attempts, error = %e, "pending booking still unconfirmed");
                self.store.update_pending_booking(key, "pending", attempts, next, Some(&e.to_string()), None, now).await
            }
        }
    }

    /// Adds a confirmed pending booking to its call's write-back: to the live call's outcome,
    /// or as an appointment step after the closed call's contact step.
    async fn attach_to_call(
        &self,
        tenant: &Arc<Tenant>,
        row: &PendingBookingRow,
    ) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        let service_name =
            tenant.config.services.iter().find(|s| s.id == row.service_id).map(|s| s.name.clone()).unwrap_or_default();
        let summary = BookedSummary {
            event_id: row.event_id.clone(),
            service_name: service_name.clone(),
            start: ts(row.start_at),
            end: ts(row.end_at),
        };
        if let Some(session) = self.sessions.get(&row.call_id)
            && session.add_booking_if_live(summary)
        {
            return self
                .store
                .update_pending_booking(&row.idempotency_key, "confirmed", row.attempts, now, None, None, now)
                .await;
        }
        let closed = self.store.call(&row.tenant, &row.call_id).await?.is_some_and(|c| c.ended_at.is_some());
        if !closed {
            // The call is ending right now (its plan is being written): look again shortly.
            let next = now + SignedDuration::from_secs(1);
            return self
                .store
                .update_pending_booking(&row.idempotency_key, "booked", row.attempts, next, None, None, now)
                .await;
        }
        let steps = self.store.steps_for_call(&row.tenant, &row.call_id).await?;
        if let Some(contact) = steps.iter().find(|s| s.kind == kind::CONTACT) {
            let appointment = AppointmentRecord {
                title: service_name,
                start: ts(row.start_at),
                end: ts(row.end_at),
                calendar_event_id: row.event_id.clone(),
                notes: Some(format!(
                    "Booked by the AI receptionist during call {} (confirmed after the call: the calendar was unreachable).",
                    row.call_id
                )),
            };
            let idem = format!("{}:appointment:{}", row.call_id, row.event_id);
            if !steps.iter().any(|s| s.idempotency_key == idem) {
                self.store
                    .append_step(
                        &row.call_id,
                        &row.tenant,
                        kind::APPOINTMENT,
                        &json!(appointment),
                        Some(contact.id),
                        &idem,
                        now,
                    )
                    .await?;
                self.worker.wake();
            }
        }
        self.store.update_pending_booking(&row.idempotency_key, "confirmed", row.attempts, now, None, None, now).await
    }

    async fn to_escalating(&self, row: &PendingBookingRow, why: &str) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        tracing::warn!(key = %row.idempotency_key, reason = why, "pending booking escalated to staff");
        self.booking.release_pending_hold(&row.tenant, &row.idempotency_key).await;
        // An earlier attempt may have created our event without confirming it: withdraw it, so
        // the calendar never shows what the caller was not promised (best effort: the calendar
        // may still be down, which the staff task then says).
        if let Some(tenant) = self.tenants.by_id(&row.tenant) {
            let withdrawn = tenant.calendar.cancel_event(&row.calendar_id, &row.event_id, false).await;
            let outcome = match &withdrawn {
                Ok(()) => "withdrawn",
                Err(ConnectorError::NotFound(_)) => "absent",
                Err(e) => {
                    tracing::warn!(key = %row.idempotency_key, error = %e, "could not withdraw a possible event");
                    "unreachable"
                }
            };
            self.store
                .audit(
                    &row.tenant,
                    Some(&row.call_id),
                    None,
                    "calendar.withdraw_event",
                    &json!({"event_id": row.event_id, "reason": "pending booking escalated", "outcome": outcome}),
                    now,
                )
                .await?;
        }
        self.booking.invalidate_busy(&row.tenant, &row.staff_id).await;
        self.store
            .update_pending_booking(&row.idempotency_key, "escalating", row.attempts, now, Some(why), None, now)
            .await?;
        self.store
            .audit(
                &row.tenant,
                Some(&row.call_id),
                None,
                "booking.pending_escalated",
                &json!({"key": row.idempotency_key, "reason": why}),
                now,
            )
            .await?;
        let mut r = row.clone();
        r.status = "escalating".into();
        r.last_error = Some(why.to_owned());
        if let Some(tenant) = self.tenants.by_id(&row.tenant) {
            self.escalate(&tenant, &r).await?;
        }
        Ok(())
    }

    /// Creates the staff task (retried with backoff while the CRM is down).
    async fn escalate(&self, tenant: &Arc<Tenant>, row: &PendingBookingRow) -> Result<(), crate::store::StoreError> {
        let now = self.clock.now();
        match self.create_staff_task(tenant, row).await {
            Ok(task_id) => {
                self.store
                    .update_pending_booking(
                        &row.idempotency_key,
                        "escalated",
                        row.attempts,
                        now,
                        row.last_error.as_deref(),
                        Some(&task_id),
                        now,
                    )
                    .await?;
                self.store
                    .audit(
                        &row.tenant,
                        Some(&row.call_id),
                        None,
                        "crm.create_task",
                        &json!({"key": row.idempotency_key, "task_id": task_id}),
                        now,
                    )
                    .await
            }
            Err(e) => {
                let attempts = row.attempts + 1;
                tracing::warn!(key = %row.idempotency_key, error = %e, "staff task not created yet");
                self.store
                    .update_pending_booking(
                        &row.idempotency_key,
                        "escalating",
                        attempts,
                        now + backoff(attempts.min(4)),
                        row.last_error.as_deref(),
                        None,
                        now,
                    )
                    .await
            }
        }
    }

    /// A task for the contact's owner: call the customer back, the booking was not confirmed.
    async fn create_staff_task(&self, tenant: &Arc<Tenant>, row: &PendingBookingRow) -> Result<String, ConnectorError> {
        let attendee: StoredAttendee = serde_json::from_value(row.attendee.clone()).unwrap_or_default();
        let contact_id = self.contact_for_booking(tenant, &row.call_id, &attendee, &row.idempotency_key).await?;
        let owner_id = tenant.crm.read_context(&contact_id).await?.owner.map(|o| o.id);
        let (service, when) = describe_booking(tenant, &row.service_id, ts(row.start_at));
        let task = TaskRecord {
            subject: format!("Call back: {service} on {when} was NOT booked"),
            body: Some(format!(
                "During call {} the caller asked for a {service} on {when} with {}. The calendar could not confirm it ({}), so it was not booked. Please call them back to book. If an event with id {} is in the calendar, it is an unconfirmed attempt of ours: remove it or keep it after talking to the customer.",
                row.call_id,
                row.staff_id,
                row.last_error.as_deref().unwrap_or("unreachable"),
                row.event_id,
            )),
            due: self.clock.now() + SignedDuration::from_hours(1),
            owner_id,
            priority: Some("HIGH".into()),
        };
        tenant.crm.create_task(&contact_id, &task, &format!("{}:staff-task", row.idempotency_key)).await
    }

    /// The contact a staff task about a booking goes on: the one the call's write-back
    /// resolved, else by phone, else by email, else created (under an idempotency key derived
    /// from `key`, the booking's). Pending bookings and calendar conflicts both use it.
    pub(crate) async fn contact_for_booking(
        &self,
        tenant: &Arc<Tenant>,
        call_id: &str,
        attendee: &StoredAttendee,
        key: &str,
    ) -> Result<String, ConnectorError> {
        if let Ok(steps) = self.store.steps_for_call(tenant.id(), call_id).await
            && let Some(id) = steps.iter().find(|s| s.kind == kind::CONTACT).and_then(|s| s.external_id.clone())
        {
            return Ok(id);
        }
        if let Some(raw) = &attendee.phone
            && let ParsedPhone::Number(phone) = Phone::parse(raw, tenant.config.default_region)
        {
            let candidates = tenant.crm.find_contacts_by_phone(&phone.query()).await?;
            if let MatchDecision::Matched(c) =
                identity::decide_by_phone(&phone, candidates, tenant.config.default_region)
            {
                return Ok(c.id);
            }
        }
        if let Some(email) = &attendee.email {
            let found = tenant.crm.find_contacts_by_email(email).await?;
            if found.len() == 1 {
                return Ok(found[0].id.clone());
            }
        }
        let (first_name, last_name) = match attendee.name.as_deref().map(|n| n.trim().split_once(' ')) {
            Some(Some((f, l))) => (Some(f.to_owned()), Some(l.to_owned())),
            Some(None) => (attendee.name.clone(), None),
            None => (None, None),
        };
        let fields = ContactFields {
            first_name,
            last_name,
            email: attendee.email.clone(),
            phone: attendee.phone.clone(),
            zip: None,
            source: Some("AI receptionist".into()),
        };
        tenant.crm.create_contact(&fields, &format!("{key}:contact")).await
    }
}
