//! Tool dispatch: typed calls in, [`ToolResult`]s out. Every failure a caller can hit is a
//! result with a sentence the AI can say.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{CallSession, Core};
use crate::booking::{Attendee, BookingError, CancelNotice};
use crate::context::CallerContext;
use crate::protocol::ToolResult;
use crate::protocol::tools::{BookSlotArgs, FindSlotsArgs, HoldSlotArgs, IdentityArgs, ToolCall};
use crate::schedule::{self, PartOfDay, ServiceMatch, ServiceType, Slot, SlotPreference};
use crate::tenant::Tenant;
use crate::writeback::EndReason;
use crate::writeback::plan::BookedSummary;

pub(super) async fn dispatch(core: &Arc<Core>, s: &Arc<CallSession>, call: ToolCall) -> ToolResult {
    if s.is_ended() && !matches!(call, ToolCall::EndCall(_)) {
        return ToolResult::error(json!({"error": "call_ended"}), "This call has already ended.");
    }
    match call {
        ToolCall::StartCall => start_call(s),
        ToolCall::GetCallerContext(a) => caller_context(core, s, a).await,
        ToolCall::ListServices => list_services(&s.tenant),
        ToolCall::FindSlots(a) => find_slots(core, s, a).await,
        ToolCall::HoldSlot(a) => hold_slot(core, s, a).await,
        ToolCall::ReleaseHold { hold_id } => release_hold(core, s, &hold_id).await,
        ToolCall::BookSlot(a) => book_slot(core, s, a).await,
        ToolCall::FindAppointments => find_appointments(core, s).await,
        ToolCall::RescheduleAppointment { appointment_id, start } => reschedule(core, s, &appointment_id, &start).await,
        ToolCall::CancelAppointment { appointment_id, reason } => cancel(core, s, &appointment_id, reason).await,
        ToolCall::Escalate { reason, urgency } => escalate(core, s, reason, urgency),
        ToolCall::EndCall(a) => match core.finish_call(s, EndReason::EndCall, Some(a)).await {
            Ok(Some(steps)) => ToolResult::ok(json!({"saved": true, "steps": steps}), "Thanks, the call is saved."),
            Ok(None) => {
                ToolResult::ok(json!({"saved": true, "steps": 0, "already_ended": true}), "The call was already saved.")
            }
            Err(e) => {
                tracing::error!(call_id = %s.call_id, error = %e, "could not persist the write-back plan");
                ToolResult::error(json!({"saved": false}), "I couldn't save this call; please try ending it again.")
            }
        },
    }
}

/// Records the escalation on the call; the task (for the routed owner, the contact's owner or the
/// tenant's default) and the reason on the call log are written with the call's write-back.
fn escalate(core: &Arc<Core>, s: &CallSession, reason: String, urgency: String) -> ToolResult {
    let at = core.clock.now();
    let minutes = s.tenant.config.writeback_rules.escalation.due_in_minutes(&urgency);
    let due = at + jiff::SignedDuration::from_mins(i64::from(minutes));
    s.record_escalation(crate::writeback::plan::EscalationRecord { reason, urgency: urgency.clone(), at });
    let when = match minutes {
        0..=90 => "within the hour",
        91..=480 => "later today",
        _ => "soon",
    };
    ToolResult::ok(
        json!({"escalated": true, "urgency": urgency, "due_at": due.to_string()}),
        format!("I've passed this to the team; someone will call you back {when}."),
    )
}

fn start_call(s: &CallSession) -> ToolResult {
    let status = s.prefetch.peek().map(|c| c.status()).unwrap_or("pending");
    ToolResult::ok(
        json!({"call_id": s.call_id, "business": s.tenant.config.name, "caller_status": status}),
        format!("Connected to {}.", s.tenant.config.name),
    )
}

async fn caller_context(core: &Core, s: &CallSession, a: IdentityArgs) -> ToolResult {
    if !a.is_empty() {
        let email = match a.email.as_deref().map(crate::identity::normalize_email) {
            Some(None) => {
                return ToolResult::error(
                    json!({"error": "bad_argument", "argument": "email"}),
                    "That email address doesn't look right; could you spell it for me?",
                );
            }
            Some(Some(e)) => Some(e),
            None => None,
        };
        let (name, email) = {
            let mut st = s.state.lock().expect("call state lock");
            if a.name.is_some() {
                st.captured_name = a.name.clone();
            }
            if email.is_some() {
                st.captured_email = email.clone();
            }
            (st.captured_name.clone(), st.captured_email.clone())
        };
        let claims = crate::matching::Claims {
            phone: match &s.caller {
                crate::identity::ParsedPhone::Number(p) => Some(p.clone()),
                _ => None,
            },
            name,
            email,
            zip: a.zip.clone(),
        };
        let (ctx, _) = core.context.rematch(&s.tenant, &claims).await;
        // A failed re-match keeps what the call already knew.
        if !matches!(ctx.as_ref(), CallerContext::Unavailable { .. }) {
            s.state.lock().expect("call state lock").rematched = Some(ctx);
        }
    }
    let (ctx, pos) = futures::join!(s.context(), s.pos());
    let pos = crate::context::pos_for_caller(&ctx, &pos);
    let mut structured = json!({
        "status": ctx.status(),
        "greeting_hint": ctx.greeting_hint(),
        "contact": Value::Null,
        "open_deals": [],
        "open_tickets": [],
        "last_touchpoint": Value::Null,
        "upcoming_appointments": [],
        "new_number": Value::Null,
        "pos": pos,
        "pos_hint": pos.hint(),
        "account_flags": Value::Null,
        "past_no_shows": Value::Null,
        "late_cancellations": Value::Null,
        "last_no_show": Value::Null,
        "account_notes": [],
    });
    match ctx.as_ref() {
        CallerContext::Matched { contact, open_deals, open_tickets, last_touchpoint, new_number, flags } => {
            structured["account_flags"] =
                json!({"vip": flags.vip, "overdue_balance": flags.overdue_balance, "do_not_call": flags.do_not_call});
            // The appointments booked here and what became of them (`crate::outcomes`), by the
            // number they call from or the record's email; only for a certain match.
            let email = contact.email.as_deref().and_then(crate::identity::normalize_email);
            let history = core.store.outcome_history_for_caller(s.tenant.id(), s.caller_e164(), email.as_deref()).await;
            let history = history.unwrap_or_else(|e| {
                tracing::warn!(tenant = s.tenant.id(), error = %e, "appointment history not read; the context shows none");
                Default::default()
            });
            let mut flags = flags.clone();
            // The larger of the CRM's count and ours, never their sum: the two count overlapping
            // sets of the same missed appointments (the CRM's may include visits booked before
            // or outside callside, ours those read back that nobody has entered in the CRM yet),
            // so the maximum is the most either source knows and never counts one twice. No
            // mapped property and no missed booking here stays unknown (null), not zero.
            if flags.past_no_shows.is_some() || history.no_shows > 0 {
                flags.past_no_shows = Some(flags.past_no_shows.unwrap_or(0).max(history.no_shows));
            }
            structured["past_no_shows"] = json!(flags.past_no_shows);
            structured["late_cancellations"] = json!(history.late_cancellations);
            structured["last_no_show"] = json!(
                history
                    .last_no_show
                    .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                    .map(|t| t.to_zoned_datetime(s.tenant.config.time_zone.clone()).date().to_string())
            );
            structured["account_notes"] = json!(flags.notes());
            structured["contact"] = json!(contact);
            structured["open_deals"] = json!(open_deals);
            structured["open_tickets"] = json!(open_tickets);
            structured["last_touchpoint"] = json!(last_touchpoint);
            structured["new_number"] = json!(new_number);
            // Appointments booked here, by the number they call from or the record's email; only
            // for a certain match (a shared line's bookings may be someone else's).
            if let Ok(list) = core.booking.upcoming(&s.tenant, s.caller_e164(), email.as_deref()).await {
                structured["upcoming_appointments"] =
                    json!(list.iter().map(|b| appointment_json(&s.tenant, b)).collect::<Vec<_>>());
            }
        }
        CallerContext::Ambiguous { candidates, reason } => {
            structured["candidates"] = json!(candidates);
            structured["reason"] = json!(reason);
        }
        _ => {}
    }
    let text = match pos.hint() {
        Some(hint) => format!("{} {hint}", ctx.greeting_hint()),
        None => ctx.greeting_hint(),
    };
    ToolResult::ok(structured, text)
}

fn list_services(t: &Tenant) -> ToolResult {
    let services: Vec<Value> = t
        .config
        .services
        .iter()
        .map(|s| json!({"id": s.id, "name": s.name, "duration_minutes": s.duration_minutes}))
        .collect();
    let names: Vec<String> =
        t.config.services.iter().map(|s| format!("{} ({} minutes)", s.name, s.duration_minutes)).collect();
    ToolResult::ok(json!({"services": services}), format!("We offer: {}.", names.join(", ")))
}

fn resolve<'a>(t: &'a Tenant, spoken: &str) -> Result<&'a ServiceType, ToolResult> {
    match schedule::resolve_service(&t.config.services, spoken) {
        ServiceMatch::Found(s) => Ok(s),
        ServiceMatch::Ambiguous(options) => {
            let names: Vec<&str> = options.iter().map(|s| s.name.as_str()).collect();
            Err(ToolResult::error(
                json!({"error": "ambiguous_service", "options": options.iter().map(|s| &s.id).collect::<Vec<_>>()}),
                format!("Did you mean {}?", names.join(" or ")),
            ))
        }
        ServiceMatch::NotFound => {
            let names: Vec<&str> = t.config.services.iter().map(|s| s.name.as_str()).collect();
            Err(ToolResult::error(
                json!({"error": "unknown_service", "services": t.config.services.iter().map(|s| &s.id).collect::<Vec<_>>()}),
                format!("I couldn't find that service. We offer {}.", names.join(", ")),
            ))
        }
    }
}

/// "Tuesday, November 24 at 10:00 AM" in the business's zone.
fn label(t: &Tenant, at: Timestamp) -> String {
    at.to_zoned_datetime(t.config.time_zone.clone()).strftime("%A, %B %-d at %-I:%M %p").to_string()
}

fn slot_json(t: &Tenant, slot: &Slot) -> Value {
    let tz = t.config.time_zone.clone();
    json!({
        "start": slot.start.to_zoned_datetime(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "end": slot.end.to_zoned_datetime(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "staff_id": slot.staff_id,
        "label": label(t, slot.start),
    })
}

fn speak_options(t: &Tenant, slots: &[Slot]) -> String {
    let labels: Vec<String> = slots.iter().map(|s| label(t, s.start)).collect();
    match labels.len() {
        0 => String::new(),
        1 => labels[0].clone(),
        n => format!("{} or {}", labels[..n - 1].join(", "), labels[n - 1]),
    }
}

fn calendar_down() -> ToolResult {
    ToolResult::error(
        json!({"error": "calendar_unavailable"}),
        "I can't reach the calendar right now. Let me take your details and we'll call you back to confirm a time.",
    )
}

async fn find_slots(core: &Core, s: &CallSession, a: FindSlotsArgs) -> ToolResult {
    let t = &s.tenant;
    let service = match resolve(t, &a.service) {
        Ok(sv) => sv,
        Err(r) => return r,
    };
    let day = match a.day.as_deref().map(str::parse::<jiff::civil::Date>) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(_)) => {
            return ToolResult::error(
                json!({"error": "bad_argument", "argument": "day"}),
                "The day must be a date like 2026-11-24.",
            );
        }
    };
    let part_of_day = a.part_of_day.as_deref().map(|p| match p {
        "morning" => PartOfDay::Morning,
        "afternoon" => PartOfDay::Afternoon,
        _ => PartOfDay::Evening,
    });
    let pref = SlotPreference { day, part_of_day, not_before: None };
    match core.booking.find(t, service, &pref, a.count).await {
        Ok(slots) if slots.is_empty() => ToolResult::ok(
            json!({"service_id": service.id, "time_zone": t.config.time_zone_name, "slots": []}),
            format!(
                "I don't have any openings for a {} in the next {} days.",
                service.name, t.config.rules.horizon_days
            ),
        ),
        Ok(slots) => ToolResult::ok(
            json!({
                "service_id": service.id,
                "time_zone": t.config.time_zone_name,
                "slots": slots.iter().map(|sl| slot_json(t, sl)).collect::<Vec<_>>(),
            }),
            format!("I can offer {}.", speak_options(t, &slots)),
        ),
        Err(BookingError::Calendar(e)) => {
            tracing::warn!(call_id = %s.call_id, error = %e, "calendar read failed");
            calendar_down()
        }
        Err(e) => {
            tracing::error!(call_id = %s.call_id, error = %e, "find_slots failed");
            ToolResult::error(
                json!({"error": "internal"}),
                "Something went wrong looking up times; let me try that again.",
            )
        }
    }
}

fn taken(t: &Tenant, alternatives: &[Slot]) -> ToolResult {
    let structured = json!({
        "error": "slot_taken",
        "booked": false,
        "alternatives": alternatives.iter().map(|sl| slot_json(t, sl)).collect::<Vec<_>>(),
    });
    if alternatives.is_empty() {
        ToolResult::error(structured, "That time was just taken, and I don't see another opening soon.")
    } else {
        ToolResult::error(
            structured,
            format!("That time was just taken; I can offer {}.", speak_options(t, alternatives)),
        )
    }
}

async fn hold_slot(core: &Core, s: &CallSession, a: HoldSlotArgs) -> ToolResult {
    let t = &s.tenant;
    let service = match resolve(t, &a.service) {
        Ok(sv) => sv,
        Err(r) => return r,
    };
    let start = match parse_instant(&a.start) {
        Some(ts) => ts,
        None => {
            return ToolResult::error(
                json!({"error": "bad_argument", "argument": "start"}),
                "The start must be a time exactly as find_slots returned it.",
            );
        }
    };
    match core.booking.hold(t, &s.call_id, service, start, a.staff_id.as_deref()).await {
        Ok(hold) => {
            s.state.lock().expect("call state lock").holds.push((hold.id, service.id.clone()));
            ToolResult::ok(
                json!({
                    "hold_id": hold.id.to_string(),
                    "expires_at": hold.expires_at.to_string(),
                    "start": slot_json(t, &Slot { staff_id: hold.staff_id.clone(), start: hold.slot.start, end: hold.slot.end })["start"],
                    "staff_id": hold.staff_id,
                }),
                format!("I'm holding {} for you.", label(t, hold.slot.start)),
            )
        }
        Err(BookingError::NotAvailable { alternatives }) => taken(t, &alternatives),
        Err(BookingError::Calendar(_)) => calendar_down(),
        Err(e) => {
            tracing::error!(call_id = %s.call_id, error = %e, "hold failed");
            ToolResult::error(json!({"error": "internal"}), "I couldn't hold that time; let me try again.")
        }
    }
}

/// Accepts RFC 3339 with an offset (what find_slots returns) or a UTC `Z` timestamp.
fn parse_instant(text: &str) -> Option<Timestamp> {
    text.parse::<Timestamp>().ok()
}

async fn release_hold(core: &Core, s: &CallSession, hold_id: &str) -> ToolResult {
    let Ok(id) = Uuid::parse_str(hold_id) else {
        return ToolResult::error(
            json!({"error": "bad_argument", "argument": "hold_id"}),
            "I don't recognise that hold.",
        );
    };
    let released = core.booking.ledger.release(s.tenant.id(), id, &s.call_id).await.is_ok();
    s.state.lock().expect("call state lock").holds.retain(|(h, _)| *h != id);
    if released {
        ToolResult::ok(json!({"released": true}), "Okay, I've let that time go.")
    } else {
        ToolResult::error(
            json!({"released": false, "error": "unknown_hold"}),
            "That hold had already expired or been released.",
        )
    }
}

async fn book_slot(core: &Core, s: &CallSession, a: BookSlotArgs) -> ToolResult {
    let t = &s.tenant;
    let Ok(hold_id) = Uuid::parse_str(&a.hold_id) else {
        return ToolResult::error(
            json!({"error": "bad_argument", "argument": "hold_id"}),
            "I don't recognise that hold.",
        );
    };
    let service_id = {
        let st = s.state.lock().expect("call state lock");
        st.holds.iter().find(|(h, _)| *h == hold_id).map(|(_, sv)| sv.clone())
    };
    let Some(service) = service_id.and_then(|id| t.config.services.iter().find(|sv| sv.id == id)) else {
        return ToolResult::error(
            json!({"error": "unknown_hold", "booked": false}),
            "That hold has expired or isn't from this call; let me find the time again.",
        );
    };
    if let Some(email) = &a.email
        && crate::identity::normalize_email(email).is_none()
    {
        return ToolResult::error(
            json!({"error": "bad_argument", "argument": "email", "booked": false}),
            "That email address doesn't look right; could you spell it for me?",
        );
    }
    let attendee = Attendee {
        phone: s.caller_e164().map(str::to_owned),
        name: a.name.clone(),
        email: a.email.as_deref().and_then(crate::identity::normalize_email),
        notes: a.notes.clone(),
    };
    match core.booking.commit(t, &s.call_id, hold_id, service, &attendee).await {
        Ok(b) => {
            {
                let mut st = s.state.lock().expect("call state lock");
                st.holds.retain(|(h, _)| *h != hold_id);
                st.bookings.push(BookedSummary::from_booked(&b, &service.name));
                if a.name.is_some() {
                    st.captured_name = a.name.clone();
                }
                if attendee.email.is_some() {
                    st.captured_email = attendee.email.clone();
                }
            }
            let sl = Slot { staff_id: b.staff_id.clone(), start: b.start, end: b.end };
            let j = slot_json(t, &sl);
            ToolResult::ok(
                json!({"booked": true, "event_id": b.event_id, "start": j["start"], "end": j["end"], "staff_id": b.staff_id, "service_id": b.service_id}),
                format!("You're booked for a {} on {}.", service.name, label(t, b.start)),
            )
        }
        Err(BookingError::NotAvailable { alternatives }) => {
            s.state.lock().expect("call state lock").holds.retain(|(h, _)| *h != hold_id);
            taken(t, &alternatives)
        }
        Err(BookingError::Hold(_)) => {
            s.state.lock().expect("call state lock").holds.retain(|(h, _)| *h != hold_id);
            ToolResult::error(
                json!({"error": "hold_expired", "booked": false}),
                "That hold has expired; let me check the time again.",
            )
        }
        Err(BookingError::Pending { key, deadline, cause }) => {
            tracing::warn!(call_id = %s.call_id, error = %cause, "calendar unreachable; booking pending");
            // The hold now belongs to the pending booking, not to this call.
            s.state.lock().expect("call state lock").holds.retain(|(h, _)| *h != hold_id);
            ToolResult::error(
                json!({"error": "not_confirmed", "booked": false, "pending": true, "pending_id": key, "retry_until": deadline.to_string()}),
                "I can't reach the calendar right now, so this booking is NOT confirmed yet. I'm keeping the time for you and we'll confirm it as soon as the calendar is back; if we can't, someone will call you.",
            )
        }
        Err(BookingError::Unconfirmed(e)) => {
            tracing::warn!(call_id = %s.call_id, error = %e, "booking not confirmed");
            ToolResult::error(
                json!({"error": "not_confirmed", "booked": false, "hold_id": a.hold_id}),
                "I couldn't confirm that booking with the calendar yet, so it is not booked. I'm still holding the time; shall I try again?",
            )
        }
        Err(e) => {
            tracing::error!(call_id = %s.call_id, error = %e, "booking failed");
            ToolResult::error(
                json!({"error": "internal", "booked": false}),
                "Something went wrong booking that; it is not booked yet.",
            )
        }
    }
}

/// The caller's email as captured so far on this call or known from their CRM record.
async fn caller_email(s: &CallSession) -> Option<String> {
    if let Some(e) = s.state.lock().expect("call state lock").captured_email.clone() {
        return Some(e);
    }
    match s.context().await.as_ref() {
        CallerContext::Matched { contact, .. } => contact.email.as_deref().and_then(crate::identity::normalize_email),
        _ => None,
    }
}

fn appointment_json(t: &Tenant, b: &crate::store::BookingRow) -> Value {
    let service =
        t.config.services.iter().find(|sv| sv.id == b.service_id).map(|sv| sv.name.as_str()).unwrap_or("appointment");
    let start = Timestamp::from_millisecond(b.start_at).unwrap_or(Timestamp::UNIX_EPOCH);
    let end = Timestamp::from_millisecond(b.end_at).unwrap_or(Timestamp::UNIX_EPOCH);
    let j = slot_json(t, &Slot { staff_id: b.staff_id.clone(), start, end });
    json!({"appointment_id": b.event_id, "service": service, "service_id": b.service_id, "start": j["start"], "end": j["end"], "staff_id": b.staff_id, "label": j["label"]})
}

async fn find_appointments(core: &Core, s: &CallSession) -> ToolResult {
    let t = &s.tenant;
    let email = caller_email(s).await;
    match core.booking.upcoming(t, s.caller_e164(), email.as_deref()).await {
        Ok(list) if list.is_empty() => {
            ToolResult::ok(json!({"appointments": []}), "I don't see any upcoming appointments for you.")
        }
        Ok(list) => {
            let spoken: Vec<String> =
                list.iter().map(|b| appointment_json(t, b)["label"].as_str().unwrap_or_default().to_owned()).collect();
            ToolResult::ok(
                json!({"appointments": list.iter().map(|b| appointment_json(t, b)).collect::<Vec<_>>()}),
                format!(
                    "You have {} coming up: {}.",
                    if list.len() == 1 { "one appointment" } else { "appointments" },
                    spoken.join("; ")
                ),
            )
        }
        Err(e) => {
            tracing::error!(call_id = %s.call_id, error = %e, "find_appointments failed");
            ToolResult::error(json!({"error": "internal"}), "I couldn't look up your appointments just now.")
        }
    }
}

/// The booking behind an appointment id, if it is this caller's and still upcoming.
async fn callers_booking(
    core: &Core,
    s: &CallSession,
    appointment_id: &str,
) -> Result<crate::store::BookingRow, ToolResult> {
    let email = caller_email(s).await;
    let list = core.booking.upcoming(&s.tenant, s.caller_e164(), email.as_deref()).await.map_err(|e| {
        tracing::error!(call_id = %s.call_id, error = %e, "appointment lookup failed");
        ToolResult::error(json!({"error": "internal"}), "I couldn't look up your appointments just now.")
    })?;
    list.into_iter().find(|b| b.event_id == appointment_id).ok_or_else(|| {
        ToolResult::error(
            json!({"error": "unknown_appointment", "argument": "appointment_id"}),
            "I can't find that appointment under your details; let me look up your appointments again.",
        )
    })
}

async fn reschedule(core: &Core, s: &CallSession, appointment_id: &str, start: &str) -> ToolResult {
    let t = &s.tenant;
    let booking = match callers_booking(core, s, appointment_id).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(new_start) = parse_instant(start) else {
        return ToolResult::error(
            json!({"error": "bad_argument", "argument": "start"}),
            "The new time must be a start time exactly as find_slots returned it.",
        );
    };
    let Some(service) = t.config.services.iter().find(|sv| sv.id == booking.service_id) else {
        return ToolResult::error(
            json!({"error": "unknown_service"}),
            "That appointment's service is no longer offered; a colleague will call you back.",
        );
    };
    let old_label = label(t, Timestamp::from_millisecond(booking.start_at).unwrap_or(Timestamp::UNIX_EPOCH));
    match core.booking.reschedule(t, &s.call_id, &booking, service, new_start).await {
        Ok(b) => {
            let new_label = label(t, b.start);
            s.state
                .lock()
                .expect("call state lock")
                .appointment_changes
                .push(format!("Rescheduled {} from {old_label} to {new_label}.", service.name));
            let j = slot_json(t, &Slot { staff_id: b.staff_id.clone(), start: b.start, end: b.end });
            ToolResult::ok(
                json!({"rescheduled": true, "appointment_id": b.event_id, "start": j["start"], "end": j["end"]}),
                format!("Done: your {} is moved to {new_label}.", service.name),
            )
        }
        Err(BookingError::NotAvailable { alternatives }) => {
            let mut r = taken(t, &alternatives);
            r.structured["rescheduled"] = json!(false);
            r.say = r.say.replace("That time was just taken", "That time isn't available");
            r
        }
        Err(BookingError::Calendar(_)) | Err(BookingError::Unconfirmed(_)) => ToolResult::error(
            json!({"error": "calendar_unavailable", "rescheduled": false}),
            "I can't reach the calendar right now, so your appointment stays as it was. Shall I have someone call you back to move it?",
        ),
        Err(e) => {
            tracing::error!(call_id = %s.call_id, error = %e, "reschedule failed");
            ToolResult::error(
                json!({"error": "internal", "rescheduled": false}),
                "Something went wrong; your appointment stays as it was.",
            )
        }
    }
}

async fn cancel(core: &Core, s: &CallSession, appointment_id: &str, reason: Option<String>) -> ToolResult {
    let t = &s.tenant;
    let booking = match callers_booking(core, s, appointment_id).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let service = t.config.services.iter().find(|sv| sv.id == booking.service_id);
    let when = label(t, Timestamp::from_millisecond(booking.start_at).unwrap_or(Timestamp::UNIX_EPOCH));
    let name = service.map(|sv| sv.name.as_str()).unwrap_or("appointment");
    match core.booking.cancel(t, &s.call_id, &booking, service, t.config.notify_on_cancel).await {
        Ok(notice) => {
            let why = reason.as_deref().map(|r| format!(" Reason: {r}")).unwrap_or_default();
            s.state
                .lock()
                .expect("call state lock")
                .appointment_changes
                .push(format!("Cancelled {name} on {when}.{why}"));
            let said = match notice {
                CancelNotice::Provider | CancelNotice::Webhook => " You'll get a confirmation.",
                CancelNotice::Failed => " I couldn't send the confirmation message, but the cancellation is done.",
                CancelNotice::None => "",
            };
            ToolResult::ok(
                json!({"cancelled": true, "appointment_id": booking.event_id, "notified": notice}),
                format!("Your {name} on {when} is cancelled.{said}"),
            )
        }
        Err(e) => {
            tracing::warn!(call_id = %s.call_id, error = %e, "cancel failed");
            ToolResult::error(
                json!({"error": "calendar_unavailable", "cancelled": false}),
                "I can't reach the calendar right now, so the appointment is not cancelled yet. Shall I have someone confirm the cancellation with you?",
            )
        }
    }
}
