//! Appointment outcomes read back (issue 12, item 4): after each appointment the service booked
//! has ended (plus the tenant's `[outcomes] read_after_minutes`), ask — in this order — the CRM
//! object the write-back created (HubSpot meeting `hs_meeting_outcome`, Pipedrive activity
//! `done` or a mapped field, a mapped Salesforce Event field), the calendar event (cancelled, and
//! when) and the point of sale (a purchase by the same customer that day, at or after the
//! start). The first source that knows says what became of it; a source that answers with
//! something unreadable leaves the booking pending for the next pass (the error is counted).
//! After `give_up_after_days` the vendors are no longer asked and the outcome is `unknown`.
//!
//! Outcomes are read, never guessed: no source → no outcome until the give-up, which records
//! `unknown`, never attended or missed. A booking's outcome is written once
//! ([`crate::store::Store::record_booking_outcome`]). The service's own cancellations
//! (`cancel_appointment`) are classified at once by the booking service, with
//! [`cancellation_outcome`].
//!
//! The reader runs on the injected clock ([`run`]): a pass at start and then every
//! [`PASS_EVERY`], a booking still unknown asked again [`ASK_AGAIN_AFTER`] later; each finished pass is published on [`OutcomeReader::progress`] with the
//! domain time it read at (the signal tests wait on).

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::OutcomesSection;
use crate::connectors::ConnectorError;
use crate::connectors::crm::CrmAppointmentStatus;
use crate::connectors::pos::PosMatch;
use crate::session::Core;
pub use crate::store::{AppointmentOutcome, AwaitingOutcome, OutcomeHistory, OutcomeSource};
use crate::tenant::Tenant;

/// How often the reader looks for bookings whose outcome is due (domain time).
pub const PASS_EVERY: SignedDuration = SignedDuration::from_secs(300);

/// How long a booking nobody has recorded yet (or whose answer could not be read) waits before
/// it is asked about again: a week of pending bookings costs each vendor a few requests an hour
/// each, not one every pass.
pub const ASK_AGAIN_AFTER: SignedDuration = SignedDuration::from_secs(3600);

/// The most bookings one pass reads per tenant (the rest wait for the next pass).
const PASS_BATCH: i64 = 200;

/// A cancellation's outcome: late when it came less than the tenant's window before the start.
/// Without its time (a deleted calendar event, a CRM that does not say) it is not called late:
/// lateness is read, never assumed.
pub fn cancellation_outcome(
    start: Timestamp,
    cancelled_at: Option<Timestamp>,
    late_window: SignedDuration,
) -> AppointmentOutcome {
    match cancelled_at {
        Some(at) if start.duration_since(at) < late_window => AppointmentOutcome::CancelledLate,
        _ => AppointmentOutcome::Cancelled,
    }
}

/// What the reader has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeProgress {
    /// Finished passes.
    pub passes: u64,
    /// The domain time the last finished pass read at.
    pub as_of: Option<Timestamp>,
    /// Outcomes recorded, in total.
    pub recorded: u64,
    /// Source reads that failed (the booking stayed pending), in total.
    pub errors: u64,
}

/// The reader's shared state: its progress signal.
#[derive(Debug)]
pub struct OutcomeReader {
    progress: watch::Sender<OutcomeProgress>,
}

impl Default for OutcomeReader {
    fn default() -> Self {
        Self { progress: watch::Sender::new(OutcomeProgress::default()) }
    }
}

impl OutcomeReader {
    /// Changes after every finished pass.
    pub fn progress(&self) -> watch::Receiver<OutcomeProgress> {
        self.progress.subscribe()
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub recorded: u64,
    pub errors: u64,
    /// Bookings still without an outcome after the pass.
    pub pending: u64,
}

/// A source's failed read: which source, and why.
#[derive(Debug)]
struct ReadError {
    source: OutcomeSource,
    error: ConnectorError,
}

/// Passes at start and then every [`PASS_EVERY`] of the injected clock, until `stop`.
pub async fn run(core: Arc<Core>, stop: CancellationToken) {
    // One instance reads outcomes for the cluster (`crate::leader`): two would ask the vendors
    // about the same bookings (the outcome is written once either way, the reads are wasted).
    let gate = core.jobs.gate(crate::leader::Job::Outcomes, PASS_EVERY);
    loop {
        let now = core.clock.now();
        if gate.lead().await {
            let report = pass(&core, now).await;
            core.outcomes.progress.send_modify(|p| {
                p.passes += 1;
                p.as_of = Some(now);
                p.recorded += report.recorded;
                p.errors += report.errors;
            });
        }
        // From the pass's start: a clock moved past it while the pass ran wakes the next at once.
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = core.clock.sleep_until(now + PASS_EVERY) => {}
        }
    }
}

/// One pass over every tenant with an `[outcomes]` section, at domain time `now`.
pub async fn pass(core: &Core, now: Timestamp) -> PassReport {
    let mut report = PassReport::default();
    for tenant in core.tenants.all() {
        let Some(settings) = tenant.config.outcomes.clone() else { continue };
        let ended_by = now - settings.read_after();
        let due = match core
            .store
            .bookings_awaiting_outcome(tenant.id(), ended_by, now - ASK_AGAIN_AFTER, PASS_BATCH)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(tenant = tenant.id(), error = %e, "outcome reader: reading due bookings failed");
                report.errors += 1;
                continue;
            }
        };
        for item in due {
            read_booking(core, &tenant, &settings, &item, now, &mut report).await;
        }
    }
    report
}

async fn read_booking(
    core: &Core,
    tenant: &Arc<Tenant>,
    settings: &OutcomesSection,
    item: &AwaitingOutcome,
    now: Timestamp,
    report: &mut PassReport,
) {
    let b = &item.booking;
    let end = Timestamp::from_millisecond(b.end_at).unwrap_or(now);
    let given_up = now >= end + settings.give_up_after();
    // Background reads draw on the write-back lane's share of each vendor budget: a live call's
    // read never waits behind them (design invariant 4).
    let read = crate::connectors::rate::writeback_lane(read_sources(tenant, settings, item)).await;
    let found = match read {
        Ok(found) => found,
        Err(ReadError { source, error }) => {
            report.errors += 1;
            core.metrics
                .appointment_outcome_errors
                .get_or_create(&crate::observe::OutcomeSourceLabel { source: source.as_str().into() })
                .inc();
            // The booking key and event id name no person.
            tracing::warn!(
                tenant = tenant.id(),
                booking = %b.idempotency_key,
                source = source.as_str(),
                error = %error,
                "outcome reader: a source could not be read; the booking stays pending"
            );
            None
        }
    };
    let (outcome, source) = match found {
        Some(found) => found,
        // Stop asking: nothing the vendors said (or could say) within the window.
        None if given_up => (AppointmentOutcome::Unknown, OutcomeSource::Callside),
        None => {
            report.pending += 1;
            if let Err(e) = core.store.record_outcome_check(tenant.id(), &b.idempotency_key, now).await {
                tracing::warn!(tenant = tenant.id(), error = %e, "outcome reader: recording a check failed");
            }
            return;
        }
    };
    match core.store.record_booking_outcome(tenant.id(), &b.idempotency_key, outcome, source, now).await {
        Ok(true) => {
            report.recorded += 1;
            core.metrics
                .appointment_outcomes
                .get_or_create(&crate::observe::AppointmentOutcomeLabels {
                    outcome: outcome.as_str().into(),
                    source: source.as_str().into(),
                })
                .inc();
            let detail = json!({
                "booking": b.idempotency_key,
                "event_id": b.event_id,
                "outcome": outcome.as_str(),
                "source": source.as_str(),
            });
            if let Err(e) = core.store.audit(tenant.id(), Some(&b.call_id), None, "booking.outcome", &detail, now).await
            {
                tracing::warn!(tenant = tenant.id(), error = %e, "outcome reader: audit entry not written");
            }
            // The store's history is read through the bookings generation this write bumped; the
            // caller's cached CRM context goes too, so a CRM-side counter is re-read with it.
            if let Some(phone) = &b.caller_phone {
                core.context.invalidate(tenant.id(), phone).await;
            }
        }
        // Another pass or instance wrote it first: written once, theirs stands.
        Ok(false) => {}
        Err(e) => {
            report.errors += 1;
            tracing::warn!(tenant = tenant.id(), error = %e, "outcome reader: recording an outcome failed");
        }
    }
}

/// The first source that knows, in order: CRM, calendar, point of sale.
async fn read_sources(
    tenant: &Tenant,
    settings: &OutcomesSection,
    item: &AwaitingOutcome,
) -> Result<Option<(AppointmentOutcome, OutcomeSource)>, ReadError> {
    let b = &item.booking;
    let start = Timestamp::from_millisecond(b.start_at).unwrap_or(Timestamp::UNIX_EPOCH);
    let window = settings.late_cancel_window();
    if let Some(object_id) = &item.crm_object_id {
        match tenant.crm.appointment_status(object_id, settings.crm_outcome_field.as_deref()).await {
            Ok(CrmAppointmentStatus::Attended) => return Ok(Some((AppointmentOutcome::Attended, OutcomeSource::Crm))),
            Ok(CrmAppointmentStatus::NoShow) => return Ok(Some((AppointmentOutcome::NoShow, OutcomeSource::Crm))),
            Ok(CrmAppointmentStatus::Cancelled { at }) => {
                return Ok(Some((cancellation_outcome(start, at, window), OutcomeSource::Crm)));
            }
            // Moved elsewhere in the CRM, not recorded yet, or not kept there: ask the others.
            Ok(
                CrmAppointmentStatus::Rescheduled
                | CrmAppointmentStatus::NotYetKnown
                | CrmAppointmentStatus::NotTracked,
            )
            | Err(ConnectorError::NotFound(_)) => {}
            Err(error) => return Err(ReadError { source: OutcomeSource::Crm, error }),
        }
    }
    match tenant.calendar.get_event(&b.calendar_id, &b.event_id).await {
        Ok(event) if event.status == "cancelled" => {
            return Ok(Some((cancellation_outcome(start, event.updated, window), OutcomeSource::Calendar)));
        }
        Ok(_) => {}
        // Deleted from the calendar (CalDAV deletes; Google answers a purged event 404): cancelled,
        // when unknown.
        Err(ConnectorError::NotFound(_)) => {
            return Ok(Some((AppointmentOutcome::Cancelled, OutcomeSource::Calendar)));
        }
        Err(error) => return Err(ReadError { source: OutcomeSource::Calendar, error }),
    }
    if let Some(pos) = &tenant.pos
        && attended_by_purchase(tenant, pos.as_ref(), b.caller_phone.as_deref(), b.caller_email.as_deref(), start)
            .await
            .map_err(|error| ReadError { source: OutcomeSource::Pos, error })?
    {
        return Ok(Some((AppointmentOutcome::Attended, OutcomeSource::Pos)));
    }
    Ok(None)
}

/// Whether the customer (one till profile by phone, else by email) made a purchase on the
/// appointment's local day at or after its start.
async fn attended_by_purchase(
    tenant: &Tenant,
    pos: &dyn crate::connectors::pos::PosConnector,
    phone: Option<&str>,
    email: Option<&str>,
    start: Timestamp,
) -> Result<bool, ConnectorError> {
    let mut found = PosMatch::NotFound;
    if let Some(phone) = phone {
        found = pos.by_phone(phone).await?;
    }
    if matches!(found, PosMatch::NotFound)
        && let Some(email) = email
    {
        found = pos.by_email(email).await?;
    }
    // Several profiles on one number: whose purchase it was is not known.
    let PosMatch::Found(summary) = found else { return Ok(false) };
    let zone = &tenant.config.time_zone;
    let day = start.to_zoned_datetime(zone.clone()).date();
    Ok(summary
        .last_purchases
        .iter()
        .filter_map(|p| p.at)
        .any(|at| at >= start && at.to_zoned_datetime(zone.clone()).date() == day))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancellation_is_late_only_inside_the_window_and_only_when_its_time_is_known() {
        let start: Timestamp = "2026-11-24T17:00:00Z".parse().unwrap();
        let day = SignedDuration::from_hours(24);
        let at = |hours_before: i64| Some(start - SignedDuration::from_hours(hours_before));
        assert_eq!(cancellation_outcome(start, at(2), day), AppointmentOutcome::CancelledLate);
        assert_eq!(cancellation_outcome(start, at(23), day), AppointmentOutcome::CancelledLate);
        assert_eq!(cancellation_outcome(start, at(24), day), AppointmentOutcome::Cancelled, "the window's edge");
        assert_eq!(cancellation_outcome(start, at(72), day), AppointmentOutcome::Cancelled);
        assert_eq!(cancellation_outcome(start, at(-1), day), AppointmentOutcome::CancelledLate, "after the start");
        assert_eq!(cancellation_outcome(start, None, day), AppointmentOutcome::Cancelled, "time unknown");
        assert_eq!(cancellation_outcome(start, at(2), SignedDuration::ZERO), AppointmentOutcome::Cancelled);
    }
}
