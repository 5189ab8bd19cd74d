//! The operator console and the JSON API behind it (issue 9): which calls synced, which did not,
//! which CRM records they wrote, and the buttons that fix it (re-sync a call, replay its dead
//! letters, re-authorize the CRM connection).
//!
//! - `/v1/calls?date=YYYY-MM-DD`, `/v1/calls/{id}`, `POST /v1/calls/{id}/resync|replay`: JSON,
//!   authenticated by a tenant API key (Bearer) or an operator session (cookie + `X-CSRF-Token`
//!   on POST). Described by the hand-written OpenAPI document at `/v1/openapi.json`.
//! - `/console/...`: server-rendered HTML (minijinja templates compiled into the binary), operator
//!   login, one page per day and per call; every POST carries the session's CSRF token.
//!
//! An operator sees only the tenants listed for them in `[console]`; any other tenant's pages and
//! calls answer 404, the same as a call that does not exist.

mod api;
pub mod auth;
mod pages;
pub mod reconcile;
pub mod view;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use serde_json::json;

pub use auth::{ConsoleSection, Operators, validate};

use crate::session::Core;
use crate::store::{Decided, Requeue, StoreError};
use crate::tenant::Tenant;
pub use crate::writeback::conflicts::{Keep, ResolveError, Resolved};
use crate::writeback::undo::{UndoError, undo_call};

/// An operator action on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Every step again (idempotent at the CRM).
    Resync,
    /// The dead-lettered steps (and those waiting on them).
    Replay,
    /// A plan held by review mode: written now.
    Approve,
    /// A plan held by review mode: never written.
    Reject,
    /// Revert what the call's write-back wrote (`writeback::undo`).
    Undo,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Resync => "resync",
            Action::Replay => "replay",
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::Undo => "undo",
        }
    }
}

/// What an action did.
pub enum ActionResult {
    Done(serde_json::Value),
    /// Nothing to do (no dead letter, no plan awaiting review, call still open, …).
    Nothing(&'static str),
    /// Refused by the CRM or by the state of the write-back; the message is safe to show.
    Refused(String),
}

/// The hand-written OpenAPI document (a reviewed file rather than a generator: no derive-macro
/// crate in the build, and the document is the contract the tests check the routes against).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Everything the console's routes need.
pub struct ConsoleState {
    pub core: Arc<Core>,
    pub operators: Operators,
    pub templates: minijinja::Environment<'static>,
    /// Cookies get `Secure` when the service is reached over HTTPS.
    pub secure_cookies: bool,
    /// Open and recent alert incidents, shown on the day view and in `/v1/calls`.
    pub alerts: Arc<crate::alerts::Alerter>,
    /// TEST ONLY (`[sandbox_options] integration_fault = "omit_sync_step"`): the call's sync log
    /// leaves out its call-log step, as a dashboard that shows a pass/fail flag without detail.
    pub omit_call_log_step: bool,
}

impl ConsoleState {
    pub fn new(
        core: Arc<Core>,
        section: &ConsoleSection,
        public_url: &str,
        alerts: Arc<crate::alerts::Alerter>,
    ) -> ConsoleState {
        let operators = Operators::new(section, core.clock.clone());
        ConsoleState {
            core,
            operators,
            templates: pages::templates(),
            secure_cookies: public_url.starts_with("https://"),
            alerts,
            omit_call_log_step: false,
        }
    }

    /// A call's detail as the console shows it (with the test-only omission applied).
    pub(crate) async fn call_detail(
        &self,
        tenant: &crate::config::TenantConfig,
        call_id: &str,
    ) -> Result<Option<view::CallDetail>, StoreError> {
        let mut detail = view::call(&self.core.store, tenant, call_id).await?;
        if self.omit_call_log_step
            && let Some(d) = detail.as_mut()
        {
            d.steps.retain(|s| s.kind != crate::writeback::plan::kind::CALL_LOG);
        }
        Ok(detail)
    }

    /// Runs an action for `who` (already authorized for the tenant) and audits it.
    pub(crate) async fn perform(
        &self,
        tenant: &Tenant,
        call_id: &str,
        action: Action,
        who: &str,
    ) -> Result<ActionResult, StoreError> {
        let store = &self.core.store;
        let now = self.core.clock.now();
        let result = match action {
            Action::Resync | Action::Replay => {
                match self.requeue(tenant.id(), call_id, action == Action::Replay, who).await? {
                    0 if action == Action::Replay => {
                        ActionResult::Nothing("the call has no dead-lettered or parked steps")
                    }
                    0 => ActionResult::Nothing("the call has nothing to write back yet"),
                    n => return Ok(ActionResult::Done(json!({"call_id": call_id, "requeued_steps": n}))),
                }
            }
            Action::Approve | Action::Reject => {
                match store.decide_held_plan(tenant.id(), call_id, action == Action::Approve, who, now).await? {
                    Decided::Approved { steps } => {
                        self.core.worker.wake();
                        ActionResult::Done(json!({"call_id": call_id, "approved": true, "steps": steps}))
                    }
                    Decided::Rejected => ActionResult::Done(json!({"call_id": call_id, "rejected": true})),
                    Decided::NotAwaiting => ActionResult::Nothing("no plan is awaiting review for this call"),
                }
            }
            Action::Undo => match undo_call(store, &self.core.clock, tenant, call_id).await {
                Ok(report) => ActionResult::Done(json!({"call_id": call_id, "undone": true, "report": report})),
                Err(UndoError::UnknownCall) => ActionResult::Nothing("unknown call"),
                Err(UndoError::StillRunning) => ActionResult::Refused(UndoError::StillRunning.to_string()),
                Err(UndoError::Crm(e)) => {
                    tracing::warn!(call_id, error = %e, "undo stopped by the CRM");
                    ActionResult::Refused(format!("the CRM refused: {e}; nothing further was changed, retry later"))
                }
                Err(UndoError::Store(e)) => return Err(e),
            },
        };
        if let ActionResult::Done(_) = &result {
            store
                .audit(
                    tenant.id(),
                    Some(call_id),
                    None,
                    &format!("console.{}", action.name()),
                    &json!({"by": who}),
                    now,
                )
                .await?;
            tracing::info!(call_id, tenant = tenant.id(), action = action.name(), "operator action");
        }
        Ok(result)
    }

    /// Settles one of the tenant's hybrid-field conflicts for `who` (already authorized).
    pub(crate) async fn resolve_conflict(
        &self,
        tenant: &Tenant,
        id: i64,
        keep: Keep,
        who: &str,
    ) -> Result<Resolved, ResolveError> {
        let result =
            crate::writeback::conflicts::resolve_conflict(&self.core.store, &self.core.clock, tenant, id, keep, who)
                .await;
        if let Err(e @ (ResolveError::Crm(_) | ResolveError::Store(_))) = &result {
            tracing::warn!(tenant = tenant.id(), conflict_id = id, error = %e, "resolving a conflict failed");
        }
        result
    }

    /// Puts a call's steps back into the outbox and wakes the worker: the audit entry is written
    /// with the requeue in one transaction.
    pub(crate) async fn requeue(
        &self,
        tenant: &str,
        call_id: &str,
        dead_only: bool,
        who: &str,
    ) -> Result<u64, StoreError> {
        let action = if dead_only { "console.replay" } else { "console.resync" };
        let what = if dead_only { Requeue::Failed } else { Requeue::All };
        let n = self
            .core
            .store
            .requeue_call(Some(tenant), call_id, what, action, &json!({"by": who}), self.core.clock.now())
            .await?
            .unwrap_or(0);
        if n > 0 {
            tracing::info!(call_id, tenant, action, steps = n, "operator requeued a call's write-back");
            self.core.worker.wake();
        }
        Ok(n)
    }
}

/// The console's routes (merged into the service's router by `app.rs`).
pub fn router(state: Arc<ConsoleState>) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(api::openapi))
        .route("/v1/calls", get(api::list_calls))
        .route("/v1/calls/{call_id}", get(api::get_call))
        .route("/v1/calls/{call_id}/resync", post(api::resync))
        .route("/v1/calls/{call_id}/replay", post(api::replay))
        .route("/v1/calls/{call_id}/approve", post(api::approve))
        .route("/v1/calls/{call_id}/reject", post(api::reject))
        .route("/v1/calls/{call_id}/undo", post(api::undo))
        .route("/v1/reconciliation", get(api::reconciliation))
        .route("/v1/conflicts/{id}/resolve", post(api::resolve_conflict))
        .route("/v1/rate-limits", get(api::rate_limits))
        .route("/console", get(pages::home))
        .route("/console/login", get(pages::login_form).post(pages::login))
        .route("/console/logout", post(pages::logout))
        .route("/console/t/{tenant}/calls", get(pages::day))
        .route("/console/t/{tenant}/calls/{call_id}", get(pages::call))
        .route("/console/t/{tenant}/operations", get(pages::operations))
        .route("/console/t/{tenant}/calls/{call_id}/resync", post(pages::resync))
        .route("/console/t/{tenant}/calls/{call_id}/replay", post(pages::replay))
        .route("/console/t/{tenant}/calls/{call_id}/approve", post(pages::approve))
        .route("/console/t/{tenant}/calls/{call_id}/reject", post(pages::reject))
        .route("/console/t/{tenant}/calls/{call_id}/undo", post(pages::undo))
        .route("/console/t/{tenant}/connect/{vendor}", post(pages::reauthorize))
        .route("/console/t/{tenant}/conflicts/{id}/resolve", post(pages::resolve_conflict))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(state)
}
