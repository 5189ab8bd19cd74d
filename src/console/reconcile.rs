//! Reconciliation (issue 9, item 2): what the write-back did not settle, each with the action
//! that resolves it — calls with no CRM record, possible duplicates from ambiguous matches,
//! hybrid-field conflicts, dead letters and steps parked on a revoked connection. Tenant-scoped
//! like every console query; no personal data beyond the redacted caller number.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::view::{self, SyncStatus, crm_record_url, rfc3339};
use crate::session::Core;
use crate::store::{DeadLetter, Store, StoreError};
use crate::tenant::Tenant;

/// How far back calls and ambiguous matches are listed (dead letters, parked steps and open
/// conflicts are listed whatever their age: they wait for an operator).
pub const WINDOW_DAYS: i64 = 7;
/// The most entries of one list.
const LIMIT: i64 = 200;

/// The action that resolves an entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fix {
    /// `replay`, `resync`, `approve` (the console's call actions), `resolve_conflict` (keep the
    /// person's value or write the AI's), `reauthorize` (the CRM
    /// connection), `replay_cli` (`callside replay`, for a static-token connection) or `in_crm`
    /// (done by a person in the CRM, at `link`).
    pub action: &'static str,
    /// One sentence for the operator.
    pub description: String,
    /// The JSON API's POST that performs it, when there is one.
    pub api: Option<String>,
    /// Where in the CRM to do it, when it is done there.
    pub link: Option<String>,
}

/// A CRM record named by an entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub object_type: String,
    pub id: String,
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub call_id: Option<String>,
    /// RFC 3339 in the tenant's zone: when the call started, or when the entry arose.
    pub at: String,
    pub detail: String,
    pub records: Vec<Record>,
    pub fix: Fix,
    /// A field conflict's two values, for the operator's choice (`fix.action` = `resolve_conflict`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictChoice>,
}

/// What an operator chooses between to settle a hybrid-field conflict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictChoice {
    pub id: i64,
    pub property: String,
    /// The value the AI would have written.
    pub ai_value: String,
    /// The person's value, kept in the CRM.
    pub crm_value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reconciliation {
    pub tenant: String,
    pub since: String,
    pub no_crm_record: Vec<Entry>,
    pub possible_duplicates: Vec<Entry>,
    pub conflicts: Vec<Entry>,
    pub dead_letters: Vec<Entry>,
    pub parked: Vec<Entry>,
}

impl Reconciliation {
    pub fn is_empty(&self) -> bool {
        self.no_crm_record.is_empty()
            && self.possible_duplicates.is_empty()
            && self.conflicts.is_empty()
            && self.dead_letters.is_empty()
            && self.parked.is_empty()
    }
}

fn call_action(action: &'static str, call_id: &str, description: String) -> Fix {
    Fix { action, description, api: Some(format!("/v1/calls/{call_id}/{action}")), link: None }
}

/// The fix for work parked on the tenant's CRM connection.
fn reconnect(tenant: &Tenant, call_id: &str) -> Fix {
    let vendor = &tenant.config.crm.vendor;
    if tenant.config.crm.auth == "oauth" {
        Fix {
            action: "reauthorize",
            description: format!("Re-authorize the {vendor} connection; parked steps resume by themselves."),
            api: None,
            link: None,
        }
    } else {
        Fix {
            action: "replay_cli",
            description: format!(
                "Replace the {vendor} access token (its environment variable), then run `callside replay --call {call_id}`."
            ),
            api: None,
            link: None,
        }
    }
}

fn step_entry(d: &DeadLetter, tz: &jiff::tz::TimeZone, detail: String, fix: Fix) -> Entry {
    Entry {
        conflict: None,
        call_id: Some(d.call_id.clone()),
        at: rfc3339(d.updated_at.as_millisecond(), tz),
        detail,
        records: vec![],
        fix,
    }
}

fn record(tenant: &Tenant, object_type: &str, id: &str) -> Record {
    Record {
        object_type: object_type.to_owned(),
        id: id.to_owned(),
        url: crm_record_url(&tenant.config, object_type, id),
    }
}

/// The tenant's reconciliation lists at the injected clock's now.
pub async fn reconcile(core: &Core, tenant: &Tenant) -> Result<Reconciliation, StoreError> {
    let now = core.clock.now();
    reconcile_between(&core.store, tenant, now - SignedDuration::from_hours(24 * WINDOW_DAYS), now).await
}

/// The reconciliation lists with calls and ambiguous matches from `[since, now)` (`callside
/// audit` uses its own window).
pub async fn reconcile_between(
    store: &Store,
    tenant: &Tenant,
    since: Timestamp,
    now: Timestamp,
) -> Result<Reconciliation, StoreError> {
    let tz = &tenant.config.time_zone;

    let mut no_crm_record = Vec::new();
    for c in view::between(store, &tenant.config, since, now).await? {
        if !c.records.is_empty() {
            continue;
        }
        let fix = match c.status {
            SyncStatus::Failed | SyncStatus::Partial => call_action(
                "replay",
                &c.call_id,
                "Replay the dead-lettered steps once their cause is fixed (see the call's last error).".into(),
            ),
            SyncStatus::Parked => reconnect(tenant, &c.call_id),
            SyncStatus::NeedsReview => {
                call_action("approve", &c.call_id, "Approve (or reject) the plan held for review.".into())
            }
            SyncStatus::Synced => call_action(
                "resync",
                &c.call_id,
                "Re-sync the call: every step runs again, idempotently at the CRM.".into(),
            ),
            // In progress, or deliberately not written (shadow, rejected).
            SyncStatus::Open | SyncStatus::Pending | SyncStatus::Shadow | SyncStatus::Rejected => continue,
        };
        no_crm_record.push(Entry {
            conflict: None,
            call_id: Some(c.call_id.clone()),
            at: c.started_at.clone(),
            detail: format!("Call from {} ({}) wrote no CRM record.", c.caller, c.status_label),
            records: vec![],
            fix,
        });
    }

    let mut possible_duplicates = Vec::new();
    for (call_id, row) in store.audit_entries_since(tenant.id(), "match.ambiguous", since).await? {
        let created = row.detail["created"].as_str().unwrap_or_default().to_owned();
        let candidates: Vec<&str> = row.detail["candidates"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let mut records = vec![record(tenant, "contact", &created)];
        records.extend(candidates.iter().map(|id| record(tenant, "contact", id)));
        possible_duplicates.push(Entry {
            conflict: None,
            call_id,
            at: rfc3339(row.at, tz),
            detail: format!(
                "The caller matched {} records equally well; contact {created} was created with a review task.",
                candidates.len()
            ),
            fix: Fix {
                action: "in_crm",
                description: format!(
                    "Merge contact {created} into the right one of {} in the CRM, or keep both if they are different people.",
                    candidates.join(", ")
                ),
                api: None,
                link: records[0].url.clone(),
            },
            records,
        });
    }

    let conflicts = store
        .conflicts(tenant.id(), None)
        .await?
        .into_iter()
        .filter(|c| c.status == "open")
        .map(|c| {
            let contact = record(tenant, "contact", &c.object_id);
            Entry {
                call_id: Some(c.call_id.clone()),
                at: rfc3339(c.edited_at, tz),
                detail: format!(
                    "{} was edited by {} after the AI read it; the person's value was kept.",
                    c.property,
                    c.edited_by.as_deref().unwrap_or("a person")
                ),
                fix: Fix {
                    action: "resolve_conflict",
                    description: format!(
                        "Keep the person's value of {}, or write the AI's (only while the CRM still holds the person's).",
                        c.property
                    ),
                    api: Some(format!("/v1/conflicts/{}/resolve", c.id)),
                    link: contact.url.clone(),
                },
                records: vec![contact],
                conflict: Some(ConflictChoice {
                    id: c.id,
                    property: c.property.clone(),
                    ai_value: c.ai_value.clone(),
                    crm_value: c.crm_value.clone(),
                }),
            }
        })
        .collect();

    let waiting = |status: &'static str| store.steps_in_status(Some(tenant.id()), status, LIMIT);
    let dead_letters = waiting("dead")
        .await?
        .into_iter()
        .map(|d| {
            let detail = format!(
                "Step {} ({}) dead-lettered after {} attempt(s): {}",
                d.step_id,
                d.kind,
                d.attempts,
                d.last_error.as_deref().unwrap_or("no error recorded")
            );
            let fix =
                call_action("replay", &d.call_id, "Replay the call's dead letters once the cause is fixed.".into());
            step_entry(&d, tz, detail, fix)
        })
        .collect();
    let parked = waiting("parked")
        .await?
        .into_iter()
        .map(|d| {
            let detail = format!(
                "Step {} ({}) waits on the revoked {} connection.",
                d.step_id, d.kind, tenant.config.crm.vendor
            );
            let fix = reconnect(tenant, &d.call_id);
            step_entry(&d, tz, detail, fix)
        })
        .collect();

    Ok(Reconciliation {
        tenant: tenant.id().to_owned(),
        since: rfc3339(since.as_millisecond(), tz),
        no_crm_record,
        possible_duplicates,
        conflicts,
        dead_letters,
        parked,
    })
}
