//! Undo: reverts what one call's write-back did — restores the values its field writes replaced
//! (from the recorded "before" values) and deletes the objects it created — but never touches a
//! field or an object a person has edited since; those are reported instead.

use serde::Serialize;
use serde_json::json;

use super::plan::kind;
use crate::clock::SharedClock;
use crate::connectors::ConnectorError;
use crate::connectors::crm::{CrmObjectType, PropertyHistory, PropertyValue, PropertyWrite, PropertyWriteStatus};
use crate::store::{Store, StoreError};
use crate::tenant::Tenant;

/// What an undo did, item by item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UndoReport {
    pub restored: Vec<UndoItem>,
    pub deleted: Vec<UndoItem>,
    /// Left alone, with the reason (a person edited it since, it changed again, the CRM refused).
    pub skipped: Vec<UndoItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UndoItem {
    pub object_type: String,
    pub object_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("unknown call")]
    UnknownCall,
    #[error("the call's write-back is still running; undo it once it has finished")]
    StillRunning,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crm(#[from] ConnectorError),
}

/// Properties whose history tells whether a person touched an object the write-back created.
fn watched_properties(object: CrmObjectType) -> &'static [&'static str] {
    match object {
        CrmObjectType::Contact => {
            &["firstname", "lastname", "email", "phone", "mobilephone", "zip", "hubspot_owner_id", "lifecyclestage"]
        }
        CrmObjectType::Call => &["hs_call_body", "hs_call_title", "hs_call_disposition", "hubspot_owner_id"],
        CrmObjectType::Meeting => {
            &["hs_meeting_title", "hs_meeting_body", "hs_meeting_outcome", "hs_meeting_start_time"]
        }
        CrmObjectType::Note => &["hs_note_body", "hubspot_owner_id"],
        CrmObjectType::Task => {
            &["hs_task_subject", "hs_task_body", "hs_task_status", "hs_timestamp", "hubspot_owner_id"]
        }
        CrmObjectType::Deal => &["dealname", "dealstage", "amount", "hubspot_owner_id"],
    }
}

/// Whether two stored values are the same value (times and numbers compare by value, since the
/// CRM may store them in another layout than the one sent).
pub(crate) fn same_stored(a: &str, b: &str) -> bool {
    a == b
        || matches!((a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()), (Ok(x), Ok(y)) if x == y)
        || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
}

fn human_edited(histories: &[PropertyHistory]) -> Option<String> {
    histories.iter().find(|h| h.versions.iter().any(|v| v.is_human_edit())).map(|h| h.name.clone())
}

/// Undoes one call's write-back. Safe to run twice: restored fields and deleted objects are
/// marked, and a second run finds nothing left to do.
pub async fn undo_call(
    store: &Store,
    clock: &SharedClock,
    tenant: &Tenant,
    call_id: &str,
) -> Result<UndoReport, UndoError> {
    let tid = tenant.id();
    store.call(tid, call_id).await?.ok_or(UndoError::UnknownCall)?;
    let steps = store.steps_for_call(tid, call_id).await?;
    if steps.iter().any(|s| s.status == "pending") {
        return Err(UndoError::StillRunning);
    }
    let crm = &tenant.crm;
    let mut report = UndoReport::default();
    let mut created: Vec<(CrmObjectType, String)> = store
        .created_objects_for_call(tid, call_id)
        .await?
        .into_iter()
        .filter(|o| !o.undone)
        .filter_map(|o| CrmObjectType::parse(&o.object_type).map(|t| (t, o.object_id)))
        .collect();
    // Call logs and meetings are always created by their step (never matched).
    for s in steps.iter().filter(|s| s.status == "done") {
        let t = match s.kind.as_str() {
            kind::CALL_LOG => CrmObjectType::Call,
            kind::APPOINTMENT => CrmObjectType::Meeting,
            _ => continue,
        };
        if let Some(id) = &s.external_id
            && !created.iter().any(|(ct, cid)| *ct == t && cid == id)
        {
            store.record_created_object(tid, call_id, s.id, t.as_str(), id, clock.now()).await?;
            created.push((t, id.clone()));
        }
    }
    let deleted_contact = |id: &str| created.iter().any(|(t, cid)| *t == CrmObjectType::Contact && cid == id);

    // 1. Field values, newest write first.
    let writes = store.field_writes_for_call(tid, call_id).await?;
    for w in writes.iter().rev().filter(|w| w.status == "written") {
        let item = |reason: Option<String>| UndoItem {
            object_type: w.object_type.clone(),
            object_id: w.object_id.clone(),
            property: Some(w.property.clone()),
            reason,
        };
        if w.object_type == "contact" && deleted_contact(&w.object_id) {
            continue; // The contact itself is deleted below (or reported).
        }
        let object = CrmObjectType::parse(&w.object_type).unwrap_or(CrmObjectType::Contact);
        let history = crm.object_history(object, &w.object_id, std::slice::from_ref(&w.property)).await?;
        let newest = history.first().and_then(|h| h.versions.first());
        match newest {
            Some(v) if v.is_human_edit() => {
                report.skipped.push(item(Some(format!(
                    "a person edited it since ({})",
                    v.updated_by_user_id
                        .as_deref()
                        .map(|u| format!("user {u}"))
                        .unwrap_or_else(|| v.source_type.clone())
                ))));
                store.set_field_status(w.step_id, &w.object_id, &w.property, "kept", Some("edited since")).await?;
                continue;
            }
            Some(v) if !same_stored(&v.value, &w.after_value) => {
                report.skipped.push(item(Some("it changed again since".into())));
                continue;
            }
            _ => {}
        }
        let restored = match (object, &w.before_value) {
            (CrmObjectType::Deal, Some(stage)) => crm.set_deal_stage(&w.object_id, stage).await.map(|()| true),
            (CrmObjectType::Deal, None) => Ok(false),
            (_, before) => {
                let value = before.clone().map(PropertyValue::Text).unwrap_or(PropertyValue::Clear);
                let results =
                    crm.update_properties(&w.object_id, &[PropertyWrite { name: w.property.clone(), value }]).await?;
                Ok(results.first().is_some_and(|r| r.status == PropertyWriteStatus::Written))
            }
        };
        match restored {
            Ok(true) => {
                store.set_field_status(w.step_id, &w.object_id, &w.property, "undone", None).await?;
                report.restored.push(item(None));
            }
            Ok(false) => report.skipped.push(item(Some("the CRM did not accept the old value".into()))),
            Err(e) => report.skipped.push(item(Some(e.to_string()))),
        }
    }

    // 2. Created objects: engagements first, the contact last.
    created.sort_by_key(|(t, _)| *t == CrmObjectType::Contact);
    for (object, id) in created {
        let item = |reason: Option<String>| UndoItem {
            object_type: object.as_str().into(),
            object_id: id.clone(),
            property: None,
            reason,
        };
        let names: Vec<String> = watched_properties(object).iter().map(|s| s.to_string()).collect();
        let histories = match crm.object_history(object, &id, &names).await {
            Ok(h) => h,
            Err(ConnectorError::NotFound(_)) => {
                store.mark_object_undone(object.as_str(), &id, clock.now()).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(property) = human_edited(&histories) {
            report.skipped.push(item(Some(format!("a person edited it since ({property})"))));
            continue;
        }
        crm.delete_object(object, &id).await?;
        store.mark_object_undone(object.as_str(), &id, clock.now()).await?;
        report.deleted.push(item(None));
    }
    let detail = json!({
        "restored": report.restored.len(),
        "deleted": report.deleted.len(),
        "skipped": report.skipped.len(),
    });
    store.audit(tid, Some(call_id), None, "writeback.undo", &detail, clock.now()).await?;
    Ok(report)
}
