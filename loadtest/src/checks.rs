//! The invariants checked at the end of a run, from the sandbox admin endpoint's snapshot (the
//! calendar and CRM emulators' data, the service's store and hold ledger).

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::setup::TenantSpec;

/// One invariant's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    /// Counts behind the verdict, and up to a few examples of violations.
    pub detail: Value,
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Runs every check over a drained snapshot.
pub fn check_all(state: &Value, acked_calls: &[String], tenants: &[TenantSpec], drained: bool) -> Vec<Check> {
    vec![
        no_overlapping_bookings(state),
        acked_end_calls_reached_crm(state, acked_calls),
        no_duplicate_known_contacts(state, tenants),
        no_leaked_holds(state),
        backlog_drained(state, drained),
    ]
}

/// No two busy events of one calendar overlap (half-open intervals).
pub fn no_overlapping_bookings(state: &Value) -> Check {
    let mut by_calendar: HashMap<&str, Vec<(i64, i64, &str)>> = HashMap::new();
    let empty = vec![];
    let events = state["calendar_events"].as_array().unwrap_or(&empty);
    for e in events {
        if e["status"] == json!("cancelled") || e["busy"] != json!(true) {
            continue;
        }
        let parse = |k: &str| e[k].as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()).map(|t| t.as_millisecond());
        let (Some(start), Some(end)) = (parse("start"), parse("end")) else {
            continue;
        };
        by_calendar.entry(e["calendar_id"].as_str().unwrap_or("")).or_default().push((
            start,
            end,
            e["id"].as_str().unwrap_or(""),
        ));
    }
    let mut overlaps = 0u64;
    let mut examples = Vec::new();
    let mut busy_events = 0;
    for (cal, evs) in &mut by_calendar {
        busy_events += evs.len();
        evs.sort();
        // Sweep: any event starting before the furthest end seen so far overlaps it.
        let mut furthest: Option<(i64, &str)> = None;
        for &(start, end, id) in evs.iter() {
            if let Some((fend, fid)) = furthest
                && start < fend
            {
                overlaps += 1;
                if examples.len() < 5 {
                    examples.push(json!({"calendar": cal, "event": id, "overlaps": fid}));
                }
            }
            if furthest.is_none_or(|(fend, _)| end > fend) {
                furthest = Some((end, id));
            }
        }
    }
    Check {
        name: "no overlapping bookings",
        passed: overlaps == 0,
        detail: json!({"calendars": by_calendar.len(), "busy_events": busy_events, "overlaps": overlaps, "examples": examples}),
    }
}

/// Every call whose end_call was acknowledged is in the CRM (its call log exists) or is
/// dead-lettered (sync status `failed`, visible in the store).
pub fn acked_end_calls_reached_crm(state: &Value, acked: &[String]) -> Check {
    let keys: HashSet<&str> =
        state["crm_call_keys"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let status: HashMap<&str, &str> = state["calls"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| Some((c["call_id"].as_str()?, c["sync_status"].as_str()?))).collect())
        .unwrap_or_default();
    let (mut in_crm, mut dead, mut missing) = (0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    for id in acked {
        let key = format!("{id}:call");
        if keys.contains(key.as_str()) {
            in_crm += 1;
        } else if status.get(id.as_str()) == Some(&"failed") {
            dead += 1;
        } else {
            missing += 1;
            if examples.len() < 5 {
                examples.push(json!({"call_id": id, "sync_status": status.get(id.as_str())}));
            }
        }
    }
    Check {
        name: "every acked end_call reached the CRM or is dead-lettered",
        passed: missing == 0,
        detail: json!({"acked": acked.len(), "in_crm": in_crm, "dead_lettered": dead, "missing": missing, "examples": examples}),
    }
}

/// Each seeded known caller is still one contact: no second contact with their number or email.
pub fn no_duplicate_known_contacts(state: &Value, tenants: &[TenantSpec]) -> Check {
    let mut by_phone: HashMap<String, u64> = HashMap::new();
    let mut by_email: HashMap<String, u64> = HashMap::new();
    for c in state["contacts"].as_array().into_iter().flatten() {
        if let Some(p) = c["phone"].as_str() {
            let d = digits(p);
            *by_phone.entry(d.strip_prefix('1').map(str::to_owned).unwrap_or(d)).or_default() += 1;
        }
        if let Some(e) = c["email"].as_str() {
            *by_email.entry(e.to_lowercase()).or_default() += 1;
        }
    }
    let (mut known, mut duplicated) = (0u64, 0u64);
    let mut examples = Vec::new();
    for t in tenants {
        for (phone, email, _) in &t.known {
            known += 1;
            let d = digits(phone);
            let national = d.strip_prefix('1').unwrap_or(&d);
            let np = by_phone.get(national).copied().unwrap_or(0);
            let ne = by_email.get(&email.to_lowercase()).copied().unwrap_or(0);
            if np > 1 || ne > 1 {
                duplicated += 1;
                if examples.len() < 5 {
                    examples.push(
                        json!({"tenant": t.id, "email": email, "contacts_with_phone": np, "contacts_with_email": ne}),
                    );
                }
            }
        }
    }
    Check {
        name: "no duplicate contact for a known caller",
        passed: duplicated == 0 && known > 0,
        detail: json!({"known_callers": known, "duplicated": duplicated, "contacts": state["contacts"].as_array().map_or(0, Vec::len), "examples": examples}),
    }
}

/// Once every call has ended, no hold is left in the ledger.
pub fn no_leaked_holds(state: &Value) -> Check {
    let holds = state["outstanding_holds"].as_u64();
    let open = state["open_sessions"].as_u64();
    Check {
        name: "no hold leaked",
        passed: holds == Some(0) && open == Some(0),
        detail: json!({"outstanding_holds": holds, "open_sessions": open}),
    }
}

/// The write-back outbox is empty (nothing pending) when the run ends.
pub fn backlog_drained(state: &Value, drained_in_time: bool) -> Check {
    let pending = state["steps"]["pending"].as_u64();
    Check {
        name: "backlog drained",
        passed: pending == Some(0) && drained_in_time,
        detail: json!({"steps": state["steps"], "drained_within_timeout": drained_in_time}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(cal: &str, id: &str, start: &str, end: &str) -> Value {
        json!({"calendar_id": cal, "id": id, "status": "confirmed", "busy": true, "start": start, "end": end})
    }

    #[test]
    fn overlap_check_flags_overlaps_and_passes_back_to_back_events() {
        let ok = json!({"calendar_events": [
            event("a", "1", "2026-11-24T14:00:00Z", "2026-11-24T14:30:00Z"),
            event("a", "2", "2026-11-24T14:30:00Z", "2026-11-24T15:00:00Z"),
            event("b", "3", "2026-11-24T14:00:00Z", "2026-11-24T14:30:00Z"),
        ]});
        assert!(no_overlapping_bookings(&ok).passed);
        let bad = json!({"calendar_events": [
            event("a", "1", "2026-11-24T14:00:00Z", "2026-11-24T16:00:00Z"),
            event("a", "2", "2026-11-24T14:30:00Z", "2026-11-24T15:00:00Z"),
            event("a", "3", "2026-11-24T15:30:00Z", "2026-11-24T15:45:00Z"),
        ]});
        let c = no_overlapping_bookings(&bad);
        assert!(!c.passed);
        assert_eq!(c.detail["overlaps"], json!(2), "a long event overlaps both later ones: {}", c.detail);
    }

    #[test]
    fn cancelled_and_free_events_do_not_count() {
        let mut cancelled = event("a", "2", "2026-11-24T14:00:00Z", "2026-11-24T14:30:00Z");
        cancelled["status"] = json!("cancelled");
        let s =
            json!({"calendar_events": [event("a", "1", "2026-11-24T14:00:00Z", "2026-11-24T14:30:00Z"), cancelled]});
        assert!(no_overlapping_bookings(&s).passed);
    }

    #[test]
    fn acked_call_missing_from_crm_and_not_dead_fails() {
        let s = json!({"crm_call_keys": ["c1:call"], "calls": [
            {"call_id": "c1", "sync_status": "synced"},
            {"call_id": "c2", "sync_status": "failed"},
            {"call_id": "c3", "sync_status": "pending"}]});
        let ok = acked_end_calls_reached_crm(&s, &["c1".into(), "c2".into()]);
        assert!(ok.passed, "{}", ok.detail);
        let bad = acked_end_calls_reached_crm(&s, &["c1".into(), "c3".into()]);
        assert!(!bad.passed);
        assert_eq!(bad.detail["missing"], json!(1));
    }

    #[test]
    fn duplicate_known_contact_is_found_by_phone_or_email() {
        let tenants = crate::setup::tenant_specs(1, 2);
        let (p0, e0, _) = tenants[0].known[0].clone();
        let (p1, e1, _) = tenants[0].known[1].clone();
        let one_each = json!({"contacts": [{"phone": p0, "email": e0}, {"phone": p1, "email": e1}]});
        assert!(no_duplicate_known_contacts(&one_each, &tenants).passed);
        let dup_email = json!({"contacts": [{"phone": p0, "email": e0}, {"phone": p1, "email": e1}, {"phone": "+17732001234", "email": e1.to_uppercase()}]});
        assert!(!no_duplicate_known_contacts(&dup_email, &tenants).passed);
        let dup_phone = json!({"contacts": [{"phone": p0, "email": e0}, {"phone": p1, "email": e1}, {"phone": "(312) 200-0000", "email": null}]});
        assert!(!no_duplicate_known_contacts(&dup_phone, &tenants).passed);
    }

    #[test]
    fn leaked_hold_or_pending_backlog_fails() {
        assert!(no_leaked_holds(&json!({"outstanding_holds": 0, "open_sessions": 0})).passed);
        assert!(!no_leaked_holds(&json!({"outstanding_holds": 1, "open_sessions": 0})).passed);
        assert!(backlog_drained(&json!({"steps": {"pending": 0}}), true).passed);
        assert!(!backlog_drained(&json!({"steps": {"pending": 3}}), false).passed);
    }
}
