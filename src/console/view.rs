//! What the console and its JSON API show, built from the store: a call's sync status, its
//! records at the CRM with deep links into the tenant's CRM instance, steps, attempts and audit
//! entries. One model for both the HTML pages and the JSON, so they cannot disagree.

use std::collections::HashMap;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::Value;

use crate::config::TenantConfig;
use crate::observe::redact_phone;
use crate::store::{AuditRow, CallRow, StepRow, Store, StoreError};
use crate::writeback::plan::kind;

/// A call's sync status as the operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// The call is still in progress: nothing planned yet.
    Open,
    /// Steps are waiting in the outbox (first attempt or retrying).
    Pending,
    /// Every step is done (or there was nothing to write).
    Synced,
    /// Some steps are done, at least one is dead-lettered.
    Partial,
    /// Dead-lettered with nothing written.
    Failed,
    /// Waiting on a revoked CRM connection: kept, not retried, until it is re-authorized.
    Parked,
    /// The tenant's review mode holds the plan until an operator approves it.
    NeedsReview,
    /// Shadow mode: the plan is shown, never written.
    Shadow,
    /// An operator rejected the held plan: nothing is written.
    Rejected,
}

impl SyncStatus {
    /// Derived from the steps, the store's record of the truth; `open` and the held-plan states
    /// from the call row; a done call with property writes the CRM rejected is partial.
    pub fn of(call: &CallRow, steps: &[&StepRow], rejected_fields: i64) -> SyncStatus {
        if call.ended_at.is_none() {
            return SyncStatus::Open;
        }
        match call.sync_status.as_str() {
            "awaiting_review" => return SyncStatus::NeedsReview,
            "shadow" => return SyncStatus::Shadow,
            "rejected" => return SyncStatus::Rejected,
            _ => {}
        }
        // Parked steps wait on an operator (re-authorize), which says more than any other state.
        if steps.iter().any(|s| s.status == "parked") {
            return SyncStatus::Parked;
        }
        let dead = steps.iter().any(|s| s.status == "dead");
        let done = steps.iter().any(|s| s.status == "done");
        let pending = steps.iter().any(|s| s.status == "pending");
        // Final only once every step is terminal (a dead step's dependants are dead-lettered
        // with it, so nothing waits forever behind it).
        match (dead, done, pending) {
            (_, _, true) => SyncStatus::Pending,
            (true, true, false) => SyncStatus::Partial,
            (true, false, false) => SyncStatus::Failed,
            _ if rejected_fields > 0 => SyncStatus::Partial,
            _ => SyncStatus::Synced,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SyncStatus::Open => "in progress",
            SyncStatus::Pending => "pending",
            SyncStatus::Synced => "synced",
            SyncStatus::Partial => "partial",
            SyncStatus::Failed => "failed (dead-lettered)",
            SyncStatus::Parked => "parked (re-authorize the CRM)",
            SyncStatus::NeedsReview => "needs review",
            SyncStatus::Shadow => "shadow (not written)",
            SyncStatus::Rejected => "rejected",
        }
    }
}

/// A record at the CRM that a step wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordLink {
    pub object_type: &'static str,
    pub id: String,
    /// `created` by this call's write-back, or `updated` (an existing record it wrote to).
    pub action: &'static str,
    /// Deep link into the tenant's CRM instance, when the instance is known.
    pub url: Option<String>,
}

/// HubSpot's object type ids as used in record URLs (`/contacts/{portal}/record/{type}/{id}`):
/// <https://developers.hubspot.com/docs/guides/api/crm/understanding-the-crm> ("Object type IDs").
fn hubspot_type_id(object_type: &str) -> Option<&'static str> {
    Some(match object_type {
        "contact" => "0-1",
        "company" => "0-2",
        "deal" => "0-3",
        "task" => "0-27",
        "note" => "0-46",
        "meeting" => "0-47",
        "call" => "0-48",
        _ => return None,
    })
}

/// The deep link to a record in the tenant's CRM instance.
pub fn crm_record_url(tenant: &TenantConfig, object_type: &str, id: &str) -> Option<String> {
    match tenant.crm.vendor.as_str() {
        "hubspot" => {
            let portal = tenant.crm.portal_id?;
            let type_id = hubspot_type_id(object_type)?;
            let id: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
            Some(format!("https://app.hubspot.com/contacts/{portal}/record/{type_id}/{id}"))
        }
        _ => None,
    }
}

/// The CRM object a step kind writes.
fn step_object(step_kind: &str) -> Option<&'static str> {
    Some(match step_kind {
        kind::CONTACT => "contact",
        kind::CALL_LOG | kind::CALL_LOG_UPDATE => "call",
        kind::APPOINTMENT => "meeting",
        kind::FIELDS => "contact",
        kind::NOTE => "note",
        kind::TASK => "task",
        kind::DEAL_STAGE => "deal",
        _ => return None,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    pub call_id: String,
    pub tenant: String,
    /// RFC 3339 in the tenant's zone.
    pub started_at: String,
    /// `HH:MM` in the tenant's zone.
    pub time: String,
    /// Redacted: the console is for sync status, not a phone book.
    pub caller: String,
    pub disposition: Option<String>,
    pub end_reason: Option<String>,
    pub status: SyncStatus,
    pub status_label: &'static str,
    pub records: Vec<RecordLink>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub id: i64,
    pub seq: i64,
    pub kind: String,
    pub status: String,
    pub attempts: i64,
    pub external_id: Option<String>,
    pub record: Option<RecordLink>,
    pub last_error: Option<String>,
    pub depends_on: Option<i64>,
    /// Pending but waiting on a dead-lettered step: it runs only after a replay or re-sync.
    pub blocked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    pub id: i64,
    pub at: String,
    pub step_id: Option<i64>,
    pub action: String,
    pub detail: Value,
}

/// One request to the CRM as the audit trail recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub step_id: i64,
    pub at: String,
    pub action: String,
    pub result: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallDetail {
    #[serde(flatten)]
    pub summary: CallSummary,
    pub ended_at: Option<String>,
    pub recording_url: Option<String>,
    pub transcript_url: Option<String>,
    pub steps: Vec<StepView>,
    pub attempts: Vec<AttemptView>,
    pub audit: Vec<AuditView>,
    /// What an operator can do now.
    pub actions: Vec<&'static str>,
    /// `auto`, or the tenant mode that held the plan (`review`, `shadow`).
    pub mode: String,
    /// Each property write and its result (values are left out: they are the caller's data).
    pub fields: Vec<FieldView>,
    /// Hybrid fields not written because a person edited them after the write-back read them.
    pub conflicts: Vec<ConflictView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldView {
    pub step_id: i64,
    pub object_type: String,
    pub object_id: String,
    pub property: String,
    /// `sending | written | rejected | ignored | undone | kept`
    pub status: String,
    /// The CRM's message for a rejection, or why a write was skipped.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConflictView {
    pub object_id: String,
    pub property: String,
    pub status: String,
}

fn zoned(ms: i64, tz: &TimeZone) -> Option<jiff::ZonedDateTime> {
    Timestamp::from_millisecond(ms).ok().map(|t| t.to_zoned_datetime(tz.clone()))
}

pub(crate) fn rfc3339(ms: i64, tz: &TimeZone) -> String {
    zoned(ms, tz).map(|z| z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()).unwrap_or_default()
}

/// Only http(s) links are shown: an outcome is written by the AI and could carry anything.
fn web_link(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?;
    let u = url::Url::parse(s).ok()?;
    matches!(u.scheme(), "https" | "http").then(|| u.to_string())
}

/// Whether the call's write-back created this object (rather than writing to an existing one).
fn created(step_kind: &str, object_type: &str, id: &str, created: &[(&str, &str)]) -> bool {
    // Call logs and meetings are always created by their step (as `writeback::undo` relies on).
    matches!(step_kind, kind::CALL_LOG | kind::APPOINTMENT)
        || created.iter().any(|(t, c)| *t == object_type && *c == id)
}

fn record(tenant: &TenantConfig, s: &StepRow, created_objects: &[(&str, &str)]) -> Option<RecordLink> {
    let (object_type, id) = step_object(&s.kind).zip(s.external_id.as_deref())?;
    Some(RecordLink {
        object_type,
        id: id.to_owned(),
        action: if created(&s.kind, object_type, id, created_objects) { "created" } else { "updated" },
        url: crm_record_url(tenant, object_type, id),
    })
}

fn summarize(
    tenant: &TenantConfig,
    call: &CallRow,
    steps: &[&StepRow],
    rejected_fields: i64,
    created_objects: &[(&str, &str)],
) -> CallSummary {
    let tz = &tenant.time_zone;
    let status = SyncStatus::of(call, steps, rejected_fields);
    let mut records: Vec<RecordLink> = Vec::new();
    for s in steps.iter().filter(|s| s.status == "done") {
        if let Some(r) = record(tenant, s, created_objects)
            && !records.iter().any(|x| x.object_type == r.object_type && x.id == r.id)
        {
            records.push(r);
        }
    }
    let disposition = call.outcome.as_ref().and_then(|o| o.get("disposition")).and_then(Value::as_str);
    CallSummary {
        call_id: call.call_id.clone(),
        tenant: call.tenant.clone(),
        started_at: rfc3339(call.started_at, tz),
        time: zoned(call.started_at, tz).map(|z| z.strftime("%H:%M").to_string()).unwrap_or_default(),
        caller: call.caller.as_deref().map(redact_phone).unwrap_or_else(|| "withheld".into()),
        disposition: disposition.map(str::to_owned),
        end_reason: call.end_reason.clone(),
        status,
        status_label: status.label(),
        records,
    }
}

/// The `[start, end)` of a civil day in the tenant's zone (DST days are 23 or 25 hours).
pub fn day_bounds(date: Date, tz: &TimeZone) -> Result<(Timestamp, Timestamp), jiff::Error> {
    let start = date.to_zoned_datetime(tz.clone())?;
    let end = date.tomorrow()?.to_zoned_datetime(tz.clone())?;
    Ok((start.timestamp(), end.timestamp()))
}

/// Yesterday in the tenant's zone, by the injected clock.
pub fn yesterday(now: Timestamp, tz: &TimeZone) -> Date {
    let today = now.to_zoned_datetime(tz.clone()).date();
    today.yesterday().unwrap_or(today)
}

/// Every call the tenant had on `date` (its zone), with status and records.
pub async fn day(store: &Store, tenant: &TenantConfig, date: Date) -> Result<Vec<CallSummary>, StoreError> {
    let (from, to) = day_bounds(date, &tenant.time_zone).map_err(|e| StoreError::Other(e.to_string()))?;
    between(store, tenant, from, to).await
}

/// Every call the tenant had that started in `[from, to)`, with status and records.
pub async fn between(
    store: &Store,
    tenant: &TenantConfig,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<CallSummary>, StoreError> {
    let calls = store.calls_started_between(&tenant.id, from, to).await?;
    let ids: Vec<String> = calls.iter().map(|c| c.call_id.clone()).collect();
    let steps = store.steps_for_calls(&tenant.id, &ids).await?;
    let rejected = store.rejected_field_counts(&tenant.id, &ids).await?;
    let created_rows = store.created_objects_for_calls(&tenant.id, &ids).await?;
    let mut by_call: HashMap<&str, Vec<&StepRow>> = HashMap::new();
    for s in &steps {
        by_call.entry(s.call_id.as_str()).or_default().push(s);
    }
    let mut created_by_call: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for (call, t, id) in &created_rows {
        created_by_call.entry(call.as_str()).or_default().push((t.as_str(), id.as_str()));
    }
    Ok(calls
        .iter()
        .map(|c| {
            let id = c.call_id.as_str();
            summarize(
                tenant,
                c,
                by_call.get(id).map_or(&[][..], Vec::as_slice),
                rejected.get(id).copied().unwrap_or(0),
                created_by_call.get(id).map_or(&[][..], Vec::as_slice),
            )
        })
        .collect())
}

/// One call in full, or `None` if the tenant has no such call.
pub async fn call(store: &Store, tenant: &TenantConfig, call_id: &str) -> Result<Option<CallDetail>, StoreError> {
    let Some(call) = store.call(&tenant.id, call_id).await? else {
        return Ok(None);
    };
    let tz = &tenant.time_zone;
    let steps = store.steps_for_call(&tenant.id, call_id).await?;
    let refs: Vec<&StepRow> = steps.iter().collect();
    let field_rows = store.field_writes_for_call(&tenant.id, call_id).await?;
    let rejected = field_rows.iter().filter(|f| f.status == "rejected").count() as i64;
    let created_rows = store.created_objects_for_call(&tenant.id, call_id).await?;
    let created_refs: Vec<(&str, &str)> =
        created_rows.iter().map(|o| (o.object_type.as_str(), o.object_id.as_str())).collect();
    let summary = summarize(tenant, &call, &refs, rejected, &created_refs);
    let held = store.held_plan(&tenant.id, call_id).await?;
    let conflicts = store.conflicts(&tenant.id, Some(call_id)).await?;
    let audit: Vec<AuditRow> = store.audit_rows_for_call(&tenant.id, call_id).await?;
    let attempts = audit
        .iter()
        .filter(|a| a.action.starts_with("crm."))
        .filter_map(|a| {
            Some(AttemptView {
                step_id: a.step_id?,
                at: rfc3339(a.at, tz),
                action: a.action.clone(),
                result: a.detail.get("result").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect();
    let mut actions = Vec::new();
    if call.ended_at.is_some() && !steps.is_empty() {
        actions.push("resync");
    }
    if steps.iter().any(|s| s.status == "dead") {
        actions.push("replay");
    }
    if held.as_ref().is_some_and(|h| h.status == "awaiting_review") {
        actions.extend(["approve", "reject"]);
    }
    // Undo reverts what was written; it refuses while steps are still running.
    if steps.iter().any(|s| s.status == "done") && !steps.iter().any(|s| s.status == "pending") {
        actions.push("undo");
    }
    let outcome = call.outcome.as_ref();
    Ok(Some(CallDetail {
        ended_at: call.ended_at.map(|m| rfc3339(m, tz)),
        recording_url: web_link(outcome.and_then(|o| o.get("recording_url"))),
        transcript_url: web_link(outcome.and_then(|o| o.get("transcript_url"))),
        steps: steps
            .iter()
            .map(|s| StepView {
                id: s.id,
                seq: s.seq,
                kind: s.kind.clone(),
                status: s.status.clone(),
                attempts: s.attempts,
                external_id: s.external_id.clone(),
                record: record(tenant, s, &created_refs),
                last_error: s.last_error.clone(),
                depends_on: s.depends_on,
                blocked: s.status == "pending"
                    && s.depends_on.is_some_and(|d| steps.iter().any(|p| p.id == d && p.status == "dead")),
            })
            .collect(),
        attempts,
        audit: audit
            .into_iter()
            .map(|a| AuditView {
                id: a.id,
                at: rfc3339(a.at, tz),
                step_id: a.step_id,
                action: a.action,
                detail: a.detail,
            })
            .collect(),
        actions,
        mode: held.as_ref().map(|h| h.mode.clone()).unwrap_or_else(|| "auto".into()),
        fields: field_rows
            .iter()
            .map(|f| FieldView {
                step_id: f.step_id,
                object_type: f.object_type.clone(),
                object_id: f.object_id.clone(),
                property: f.property.clone(),
                status: f.status.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
        conflicts: conflicts
            .iter()
            .map(|c| ConflictView {
                object_id: c.object_id.clone(),
                property: c.property.clone(),
                status: c.status.clone(),
            })
            .collect(),
        summary,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ended: bool) -> CallRow {
        CallRow {
            call_id: "c".into(),
            tenant: "demo".into(),
            caller: None,
            started_at: 0,
            ended_at: ended.then_some(1),
            end_reason: None,
            sync_status: "pending".into(),
            outcome: None,
        }
    }

    fn step(status: &str) -> StepRow {
        StepRow {
            id: 1,
            call_id: "c".into(),
            tenant: "demo".into(),
            seq: 0,
            kind: "contact".into(),
            payload: Value::Null,
            depends_on: None,
            idempotency_key: "k".into(),
            status: status.into(),
            attempts: 1,
            first_attempt_at: None,
            external_id: None,
            last_error: None,
            parent_external_id: None,
            lease_owner: None,
        }
    }

    #[test]
    fn status_follows_the_steps() {
        let (done, dead, pending) = (step("done"), step("dead"), step("pending"));
        assert_eq!(SyncStatus::of(&call(false), &[], 0), SyncStatus::Open);
        assert_eq!(SyncStatus::of(&call(true), &[], 0), SyncStatus::Synced);
        assert_eq!(SyncStatus::of(&call(true), &[&done], 0), SyncStatus::Synced);
        assert_eq!(SyncStatus::of(&call(true), &[&done], 1), SyncStatus::Partial, "a field was rejected");
        assert_eq!(SyncStatus::of(&call(true), &[&done, &pending], 0), SyncStatus::Pending);
        assert_eq!(SyncStatus::of(&call(true), &[&done, &dead], 0), SyncStatus::Partial);
        // Not final while a step still runs: a dead step and an independent pending one.
        assert_eq!(SyncStatus::of(&call(true), &[&dead, &pending], 0), SyncStatus::Pending);
        assert_eq!(SyncStatus::of(&call(true), &[&dead, &dead], 0), SyncStatus::Failed);
        let parked = step("parked");
        assert_eq!(SyncStatus::of(&call(true), &[&done, &parked, &pending], 0), SyncStatus::Parked);
        assert_eq!(SyncStatus::of(&call(true), &[&dead, &parked], 0), SyncStatus::Parked);
        assert_eq!(SyncStatus::Parked.label(), "parked (re-authorize the CRM)");
        let mut held = call(true);
        held.sync_status = "awaiting_review".into();
        assert_eq!(SyncStatus::of(&held, &[], 0), SyncStatus::NeedsReview);
    }

    #[test]
    fn a_day_in_new_york_is_25_hours_when_the_clocks_go_back() {
        let tz = TimeZone::get("America/New_York").unwrap();
        let (a, b) = day_bounds(jiff::civil::date(2026, 11, 1), &tz).unwrap();
        assert_eq!(b.duration_since(a), jiff::SignedDuration::from_hours(25));
        assert_eq!(a.to_string(), "2026-11-01T04:00:00Z");
        let now: Timestamp = "2026-11-23T03:00:00Z".parse().unwrap(); // 22:00 on the 22nd in New York
        assert_eq!(yesterday(now, &tz), jiff::civil::date(2026, 11, 21));
    }

    #[test]
    fn only_web_links_are_shown() {
        assert_eq!(web_link(Some(&Value::from("javascript:alert(1)"))), None);
        assert_eq!(web_link(Some(&Value::from("https://r.example/1.wav"))).as_deref(), Some("https://r.example/1.wav"));
    }
}
