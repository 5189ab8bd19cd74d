//! Resolving a hybrid-field conflict (issue 9: "resolve a review item"). A conflict is the AI's
//! value kept back because a person edited the field after the service read it
//! (`writeback::rules`). An operator settles it one of two ways: keep the person's value (nothing
//! is written), or write the AI's value — but only while the CRM still holds the value the
//! conflict recorded, so a second edit by a person is never overwritten either.

use serde::Serialize;
use serde_json::json;

use super::undo::same_stored;
use crate::clock::SharedClock;
use crate::connectors::ConnectorError;
use crate::connectors::crm::{PropertyValue, PropertyWrite, PropertyWriteStatus};
use crate::store::{Store, StoreError};
use crate::tenant::Tenant;

/// The operator's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The person's value stays; the AI's is dropped.
    Crm,
    /// The AI's value is written over the person's.
    Ai,
}

impl Keep {
    pub fn parse(s: &str) -> Option<Keep> {
        match s {
            "crm" => Some(Keep::Crm),
            "ai" => Some(Keep::Ai),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Keep::Crm => "crm",
            Keep::Ai => "ai",
        }
    }

    /// The conflict's status once settled this way.
    pub fn status(self) -> &'static str {
        match self {
            Keep::Crm => "kept_crm",
            Keep::Ai => "applied_ai",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub conflict_id: i64,
    pub call_id: String,
    pub object_id: String,
    pub property: String,
    pub status: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no such conflict")]
    Unknown,
    #[error("the conflict is already settled ({0})")]
    Settled(String),
    #[error(
        "the CRM's value changed again since the conflict was recorded; nothing was written — look at the record in the CRM"
    )]
    ChangedSince,
    #[error("the CRM did not take the AI's value: {0}")]
    NotWritten(String),
    #[error(
        "the AI's value was written, but another operator settled the conflict at the same moment; check the record"
    )]
    RacedAfterWrite,
    #[error("the CRM refused: {0}")]
    Crm(#[from] ConnectorError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settles conflict `id` of `tenant` for operator `who`, audited as `conflict.resolved`.
pub async fn resolve_conflict(
    store: &Store,
    clock: &SharedClock,
    tenant: &Tenant,
    id: i64,
    keep: Keep,
    who: &str,
) -> Result<Resolved, ResolveError> {
    let c = store.conflict(tenant.id(), id).await?.ok_or(ResolveError::Unknown)?;
    if c.status != "open" {
        return Err(ResolveError::Settled(c.status));
    }
    if keep == Keep::Ai {
        let history = tenant.crm.property_history(&c.object_id, std::slice::from_ref(&c.property)).await?;
        let current = history.first().and_then(|h| h.versions.first()).map(|v| v.value.as_str());
        if !current.is_some_and(|v| same_stored(v, &c.crm_value)) {
            return Err(ResolveError::ChangedSince);
        }
        let write = PropertyWrite { name: c.property.clone(), value: PropertyValue::Text(c.ai_value.clone()) };
        let results = tenant.crm.update_properties(&c.object_id, &[write]).await?;
        match results.into_iter().next().map(|r| r.status) {
            Some(PropertyWriteStatus::Written) => {}
            Some(PropertyWriteStatus::Rejected { reason }) => return Err(ResolveError::NotWritten(reason)),
            other => return Err(ResolveError::NotWritten(format!("{other:?}"))),
        }
    }
    // The audit detail names the field and the record, never the values (they are the caller's data).
    let detail =
        json!({"by": who, "conflict_id": id, "kept": keep.name(), "property": c.property, "object_id": c.object_id});
    let now = clock.now();
    if !store.settle_conflict(tenant.id(), id, keep.status(), &detail, now).await? {
        if keep == Keep::Ai {
            store.audit(tenant.id(), Some(&c.call_id), None, "conflict.applied_after_settled", &detail, now).await?;
            return Err(ResolveError::RacedAfterWrite);
        }
        return Err(ResolveError::Settled("settled meanwhile".into()));
    }
    tracing::info!(tenant = tenant.id(), call_id = %c.call_id, conflict_id = id, kept = keep.name(), "conflict resolved");
    Ok(Resolved {
        conflict_id: id,
        call_id: c.call_id,
        object_id: c.object_id,
        property: c.property,
        status: keep.status(),
    })
}
