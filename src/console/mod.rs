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
pub mod view;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use serde_json::json;

pub use auth::{ConsoleSection, Operators, validate};

use crate::session::Core;
use crate::store::StoreError;

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
}

impl ConsoleState {
    pub fn new(core: Arc<Core>, section: &ConsoleSection, public_url: &str) -> ConsoleState {
        let operators = Operators::new(section, core.clock.clone());
        ConsoleState {
            core,
            operators,
            templates: pages::templates(),
            secure_cookies: public_url.starts_with("https://"),
        }
    }

    /// Records an operator action and wakes the outbox: the audit entry is written with the
    /// requeue in one transaction.
    pub(crate) async fn requeue(
        &self,
        tenant: &str,
        call_id: &str,
        dead_only: bool,
        who: &str,
    ) -> Result<u64, StoreError> {
        let action = if dead_only { "console.replay" } else { "console.resync" };
        let n = self
            .core
            .store
            .requeue_call_steps(tenant, call_id, dead_only, action, &json!({"by": who}), self.core.clock.now())
            .await?;
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
        .route("/console", get(pages::home))
        .route("/console/login", get(pages::login_form).post(pages::login))
        .route("/console/logout", post(pages::logout))
        .route("/console/t/{tenant}/calls", get(pages::day))
        .route("/console/t/{tenant}/calls/{call_id}", get(pages::call))
        .route("/console/t/{tenant}/calls/{call_id}/resync", post(pages::resync))
        .route("/console/t/{tenant}/calls/{call_id}/replay", post(pages::replay))
        .route("/console/t/{tenant}/connect/{vendor}", post(pages::reauthorize))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(state)
}
