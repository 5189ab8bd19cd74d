//! From a call's outcome to a plan of steps with dependencies:
//! resolve or create the contact (with its fields) → log the call → record each appointment.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::settings::WritebackRules;
use crate::booking::Booked;
use crate::connectors::crm::{AppointmentRecord, CallLog, ContactFields};
use crate::store::NewStep;

pub const SOURCE: &str = "AI receptionist";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The AI called `end_call`.
    #[default]
    EndCall,
    /// The socket dropped (or the service restarted) before `end_call`.
    Disconnected,
    /// A call reached over HTTP (no socket) went quiet past the idle timeout without `end_call`.
    Abandoned,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::EndCall => "end_call",
            EndReason::Disconnected => "disconnected",
            EndReason::Abandoned => "abandoned",
        }
    }
}

/// Everything the call produced that belongs in the CRM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallOutcome {
    pub call_id: String,
    pub end_reason: EndReason,
    pub started_at: jiff::Timestamp,
    pub duration_secs: u64,
    /// Caller's number in E.164, `None` when withheld.
    pub caller_phone: Option<String>,
    pub dialed: String,
    /// The contact matched at ring time, if the match was certain.
    pub matched_contact_id: Option<String>,
    pub summary: String,
    pub disposition: Option<String>,
    pub recording_url: Option<String>,
    pub transcript_url: Option<String>,
    pub caller_name: Option<String>,
    pub caller_email: Option<String>,
    pub caller_zip: Option<String>,
    pub bookings: Vec<BookedSummary>,
    pub service_names: Vec<(String, String)>,
    /// Reschedules and cancellations made during the call, as sentences for the call log.
    #[serde(default)]
    pub appointment_changes: Vec<String>,
    /// Why the caller called, in the assistant's words (e.g. "book a color consultation").
    #[serde(default)]
    pub intent: Option<String>,
    /// Qualification answers by question key, as the caller gave them.
    #[serde(default)]
    pub answers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub sentiment: Option<String>,
    /// The caller's stated urgency, as said ("alta", "high", ...).
    #[serde(default)]
    pub urgency: Option<String>,
    /// The call's language (BCP 47, e.g. `es`).
    #[serde(default)]
    pub language: Option<String>,
    /// A CRM ticket (work order) the call was about.
    #[serde(default)]
    pub related_ticket_id: Option<String>,
    /// `escalate` calls made during the call.
    #[serde(default)]
    pub escalations: Vec<EscalationRecord>,
    /// The matched contact's owner, as read at ring time.
    #[serde(default)]
    pub contact_owner_id: Option<String>,
    /// The matched contact's open deals, as read at ring time.
    #[serde(default)]
    pub open_deal_ids: Vec<String>,
    /// The matched contact's last change in the CRM's time, as of the service's read: the
    /// hybrid rule's watermark.
    #[serde(default)]
    pub read_watermark: Option<jiff::Timestamp>,
}

/// One `escalate(reason, urgency)` made during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationRecord {
    pub reason: String,
    /// `low`, `medium` or `high`.
    pub urgency: String,
    pub at: jiff::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookedSummary {
    pub event_id: String,
    pub service_name: String,
    pub start: jiff::Timestamp,
    pub end: jiff::Timestamp,
}

impl BookedSummary {
    pub fn from_booked(b: &Booked, service_name: &str) -> Self {
        Self { event_id: b.event_id.clone(), service_name: service_name.to_owned(), start: b.start, end: b.end }
    }
}

/// The contact step's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactStep {
    pub known_contact_id: Option<String>,
    pub phone: Option<String>,
    pub fields: ContactFields,
}

pub mod kind {
    pub const CONTACT: &str = "contact";
    pub const CALL_LOG: &str = "call_log";
    pub const APPOINTMENT: &str = "appointment";
    /// Rewrites an already-written call log (its parent is the call_log step, whose external id
    /// is the CRM call object): a platform's end-of-call report that arrived after the write.
    pub const CALL_LOG_UPDATE: &str = "call_log_update";
    /// Mapped properties on the contact, under the tenant's write rules (see `writeback::steps`).
    pub const FIELDS: &str = "fields";
    /// Qualification answers that have no mapped property.
    pub const NOTE: &str = "note";
    /// A follow-up task (an escalation).
    pub const TASK: &str = "task";
    pub const DEAL_STAGE: &str = "deal_stage";
    /// A note on the ticket (work order) the call was about.
    pub const TICKET_UPDATE: &str = "ticket_update";
    /// The tenant's own structured webhook, HMAC-signed.
    pub const WEBHOOK: &str = "webhook";
}

/// What a voice platform reports once the call is over (Vapi's `end-of-call-report`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformReport {
    pub summary: Option<String>,
    pub transcript: Option<String>,
    pub recording_url: Option<String>,
    pub duration_secs: Option<u64>,
    /// The platform's verdict, e.g. Vapi's `analysis.successEvaluation`.
    pub evaluation: Option<String>,
    /// Why the call ended, as the platform says it (e.g. `customer-ended-call`).
    pub ended_reason: Option<String>,
}

/// The longest transcript copied into a call log body.
const MAX_TRANSCRIPT_CHARS: usize = 8_000;

/// Merges a platform's report into a call log: the report's summary replaces a placeholder
/// summary (or is added to the assistant's own), the transcript and the platform's evaluation go
/// into the body, and the recording URL and duration are filled when missing. One call, one log:
/// this is applied to the pending call_log step or, once written, to an update of that object.
pub fn merge_report(log: &mut CallLog, report: &PlatformReport) {
    let mut summary = match report.summary.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(platform) if log.summary.starts_with("Call ended without a wrap-up") => platform.to_owned(),
        Some(platform) if !log.summary.contains(platform) => format!("{} {}", log.summary, platform),
        _ => log.summary.clone(),
    };
    if let Some(e) = report.evaluation.as_deref().filter(|e| !e.trim().is_empty())
        && !summary.contains("Platform evaluation:")
    {
        summary.push_str(&format!(" Platform evaluation: {}.", e.trim()));
    }
    if let Some(r) = report.ended_reason.as_deref().filter(|e| !e.trim().is_empty())
        && !summary.contains("Ended:")
    {
        summary.push_str(&format!(" Ended: {}.", r.trim()));
    }
    if let Some(t) = report.transcript.as_deref().map(str::trim).filter(|t| !t.is_empty())
        && !summary.contains("Transcript:")
    {
        let t: String = t.chars().take(MAX_TRANSCRIPT_CHARS).collect();
        summary.push_str(&format!("\n\nTranscript:\n{t}"));
    }
    log.summary = summary;
    if log.recording_url.is_none() {
        log.recording_url = report.recording_url.clone();
    }
    if let Some(d) = report.duration_secs
        && d > log.duration_secs
    {
        log.duration_secs = d;
    }
}

/// Splits a spoken full name into first and last (the last word is the family name unless the
/// name has particles such as "de la" — kept with the family name).
pub fn split_name(full: &str) -> (Option<String>, Option<String>) {
    let words: Vec<&str> = full.split_whitespace().collect();
    match words.len() {
        0 => (None, None),
        1 => (Some(words[0].to_owned()), None),
        _ => {
            let particles = ["de", "del", "la", "van", "von", "der", "da", "di", "du", "le"];
            let mut split = words.len() - 1;
            while split > 1 && particles.contains(&words[split - 1].to_lowercase().as_str()) {
                split -= 1;
            }
            (Some(words[..split].join(" ")), Some(words[split..].join(" ")))
        }
    }
}

/// Builds the plan with no tenant rules (no mapped fields, no webhook).
pub fn build_plan(outcome: &CallOutcome) -> Vec<NewStep> {
    build_plan_with(outcome, &WritebackRules::default(), rlibphonenumber::enums::Region::US)
}

/// Builds the plan under a tenant's rules: contact → fields → call log → note → tasks → deal
/// stage → ticket update → appointments → webhook. Idempotency keys are derived from the call id and the step's
/// place in the plan, so a replayed step carries the same key to the vendor.
pub fn build_plan_with(
    outcome: &CallOutcome,
    rules: &WritebackRules,
    region: rlibphonenumber::enums::Region,
) -> Vec<NewStep> {
    let mut steps = Vec::new();
    // Names as people write them ("o'brien" → "O'Brien"); an email that is not one stays out.
    let (first_name, last_name) =
        outcome.caller_name.as_deref().map(|n| split_name(&super::mapping::capitalize_name(n))).unwrap_or((None, None));
    let email = outcome.caller_email.as_deref().and_then(|e| super::mapping::normalize_email(e).ok());
    let has_identity = outcome.matched_contact_id.is_some()
        || outcome.caller_phone.is_some()
        || email.is_some()
        || first_name.is_some();
    if !has_identity {
        // Withheld number and nothing captured: there is no one to write about. The call itself
        // stays in callside's own log.
        return steps;
    }
    let contact = ContactStep {
        known_contact_id: outcome.matched_contact_id.clone(),
        phone: outcome.caller_phone.clone(),
        fields: ContactFields {
            first_name,
            last_name,
            email,
            phone: outcome.caller_phone.clone(),
            zip: outcome.caller_zip.clone(),
            source: Some(SOURCE.into()),
        },
    };
    steps.push(NewStep {
        seq: 0,
        kind: kind::CONTACT.into(),
        payload: json!(contact),
        depends_on: None,
        idempotency_key: format!("{}:contact", outcome.call_id),
    });
    let fields = super::steps::fields_step(outcome, rules, region);
    let mut seq = 1;
    if let Some(fields) = &fields {
        steps.push(NewStep {
            seq,
            kind: kind::FIELDS.into(),
            payload: json!(fields),
            depends_on: Some(0),
            idempotency_key: format!("{}:fields", outcome.call_id),
        });
        seq += 1;
    }
    let mut summary = match outcome.end_reason {
        EndReason::EndCall => outcome.summary.clone(),
        EndReason::Disconnected => format!("{} (the call disconnected before it was wrapped up)", outcome.summary),
        EndReason::Abandoned => {
            format!("{} (the assistant stopped responding before it was wrapped up)", outcome.summary)
        }
    };
    // Reschedules and cancellations made on the call are part of its log.
    for change in &outcome.appointment_changes {
        summary.push('\n');
        summary.push_str(change);
    }
    // Escalation reasons belong on the call log (and become tasks below).
    for e in &outcome.escalations {
        summary.push_str(&format!("\nEscalated ({} urgency): {}", e.urgency, e.reason));
    }
    if let Some(ticket) = &outcome.related_ticket_id {
        summary.push_str(&format!("\nAbout ticket {ticket}."));
    }
    let log = CallLog {
        call_id: outcome.call_id.clone(),
        started_at: outcome.started_at,
        duration_secs: outcome.duration_secs,
        from: outcome.caller_phone.clone(),
        to: outcome.dialed.clone(),
        summary,
        disposition: outcome.disposition.clone(),
        recording_url: outcome.recording_url.clone(),
        transcript_url: outcome.transcript_url.clone(),
        source: SOURCE.into(),
    };
    let call_log_seq = seq;
    steps.push(NewStep {
        seq,
        kind: kind::CALL_LOG.into(),
        payload: json!(log),
        depends_on: Some(0),
        idempotency_key: format!("{}:call", outcome.call_id),
    });
    seq += 1;
    for (k, payload) in super::steps::follow_up_steps(outcome, rules) {
        steps.push(NewStep {
            seq,
            kind: k.into(),
            payload,
            depends_on: Some(0),
            idempotency_key: format!("{}:{k}:{seq}", outcome.call_id),
        });
        seq += 1;
    }
    for b in &outcome.bookings {
        let appt = AppointmentRecord {
            title: b.service_name.clone(),
            start: b.start,
            end: b.end,
            calendar_event_id: b.event_id.clone(),
            notes: Some(format!("Booked by the AI receptionist during call {}", outcome.call_id)),
        };
        steps.push(NewStep {
            seq,
            kind: kind::APPOINTMENT.into(),
            payload: json!(appt),
            depends_on: Some(0),
            idempotency_key: format!("{}:appointment:{}", outcome.call_id, b.event_id),
        });
        seq += 1;
    }
    if rules.webhook.is_some() {
        steps.push(NewStep {
            seq,
            kind: kind::WEBHOOK.into(),
            payload: super::steps::webhook_body(outcome, fields.as_ref()),
            depends_on: Some(call_log_seq),
            idempotency_key: format!("{}:webhook", outcome.call_id),
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> CallOutcome {
        CallOutcome {
            call_id: "c1".into(),
            end_reason: EndReason::EndCall,
            started_at: "2026-11-23T14:00:00Z".parse().unwrap(),
            duration_secs: 120,
            caller_phone: Some("+14155550134".into()),
            dialed: "+15550100000".into(),
            matched_contact_id: None,
            summary: "Booked a consult".into(),
            disposition: Some("booked".into()),
            recording_url: None,
            transcript_url: None,
            caller_name: Some("María de la Cruz".into()),
            caller_email: Some(" Maria@Example.com ".into()),
            caller_zip: None,
            bookings: vec![],
            service_names: vec![],
            appointment_changes: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn names_split_with_particles_kept() {
        assert_eq!(split_name("María de la Cruz"), (Some("María".into()), Some("de la Cruz".into())));
        assert_eq!(split_name("Ana"), (Some("Ana".into()), None));
        assert_eq!(split_name("Mary Ann O'Brien"), (Some("Mary Ann".into()), Some("O'Brien".into())));
    }

    #[test]
    fn plan_orders_contact_first_and_keeps_optional_fields_empty() {
        let steps = build_plan(&outcome());
        assert_eq!(steps.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(), vec!["contact", "call_log"]);
        let c: ContactStep = serde_json::from_value(steps[0].payload.clone()).unwrap();
        assert_eq!(c.fields.email.as_deref(), Some("maria@example.com"));
        assert_eq!(c.fields.zip, None);
        assert_eq!(steps[1].depends_on, Some(0));
    }

    #[test]
    fn a_platform_report_merges_into_the_one_call_log() {
        let mut o = outcome();
        o.summary = "Call ended without a wrap-up from the assistant.".into();
        o.end_reason = EndReason::Abandoned;
        let steps = build_plan(&o);
        let mut log: CallLog = serde_json::from_value(steps[1].payload.clone()).unwrap();
        assert!(log.summary.contains("stopped responding"), "{}", log.summary);
        let report = PlatformReport {
            summary: Some("Booked a consult for Monday.".into()),
            transcript: Some("AI: Hello\nUser: Hi".into()),
            recording_url: Some("https://r.example/1.wav".into()),
            duration_secs: Some(245),
            evaluation: Some("true".into()),
            ended_reason: Some("customer-ended-call".into()),
        };
        merge_report(&mut log, &report);
        // The placeholder is replaced, the rest is added once.
        assert!(log.summary.starts_with("Booked a consult for Monday."), "{}", log.summary);
        assert!(log.summary.contains("Platform evaluation: true.") && log.summary.contains("Transcript:\nAI: Hello"));
        assert_eq!(log.recording_url.as_deref(), Some("https://r.example/1.wav"));
        assert_eq!(log.duration_secs, 245);
        let once = log.clone();
        merge_report(&mut log, &report);
        assert_eq!(log, once, "a re-delivered report changes nothing");
        // The assistant's own summary is kept, the platform's added after it.
        let mut own = CallLog { summary: "Booked.".into(), recording_url: Some("https://a/b".into()), ..once };
        merge_report(&mut own, &PlatformReport { summary: Some("Ana booked.".into()), ..Default::default() });
        assert!(own.summary.starts_with("Booked. Ana booked."), "{}", own.summary);
        assert_eq!(own.recording_url.as_deref(), Some("https://a/b"));
    }

    #[test]
    fn withheld_caller_with_nothing_captured_writes_nothing() {
        let mut o = outcome();
        o.caller_phone = None;
        o.caller_name = None;
        o.caller_email = None;
        assert!(build_plan(&o).is_empty());
    }
}
