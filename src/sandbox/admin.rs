//! Sandbox-only switches for the load-test harness (`loadtest/`): an admin endpoint that reads
//! the emulators' and the service's state for the harness's invariant checks and flips the
//! emulators' fault switches, and the deliberately unsafe hold-ledger bypass that proves those
//! checks can fail.
//!
//! Everything here is refused by config validation unless the service runs the sandbox and every
//! tenant's CRM and calendar are the sandbox: none of it can be switched on against real vendors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Sandbox;
use super::google_calendar::GoogleCalendarState;
use super::graph::GraphState;
use super::hubspot::{HubSpotState, InjectedFailure};
use crate::config::{ConfigIssue, TenantFile};
use crate::connectors::crm::hubspot::IDEMPOTENCY_PROPERTY;
use crate::session::Core;

/// `[sandbox_options]` in the server file. Both switches default to off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxOptions {
    /// Serve `GET /v1/sandbox/state` and `POST /v1/sandbox/faults` (no authentication: the data
    /// behind them is the emulators' fake data, and the switch is refused outside the sandbox).
    pub admin_endpoint: bool,
    /// TEST ONLY. Holds no longer exclude each other and a commit skips its calendar re-check
    /// and its verification read, so concurrent callers can be booked into the same time. Exists
    /// so the load test can show its overlap check fails; refused outside the sandbox.
    pub unsafe_bypass_hold_ledger: bool,
    /// TEST ONLY. Makes callside's own path behave like a naive integration in one way, so the
    /// pilot's test can show `callside pilot` scores exactly that dimension down. Refused
    /// outside the sandbox.
    pub integration_fault: Option<IntegrationFault>,
}

/// The broken-integration behaviours `callside pilot` must detect (issue 15). Each is a hook in
/// callside's own code, because each describes an integration's failure, not a CRM's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationFault {
    /// Read parity: the context given to the AI leaves out the caller's open deals.
    DropOpenDeals,
    /// Match logic: caller lookups and the write-back's contact step skip the identity index and
    /// trust the vendor's search alone, so a lagging search index duplicates a repeat caller.
    NaiveCreate,
    /// Error handling: a failed write-back step is recorded done (no retry, no dead letter).
    SwallowWriteFailures,
    /// Observability: the call's sync log leaves out its call-log step.
    OmitSyncStep,
}

impl SandboxOptions {
    /// Problems with these options given the rest of the configuration: each switch needs the
    /// sandbox running and every tenant on it.
    pub fn validate(&self, server_path: &Path, sandbox: bool, tenants: &[(PathBuf, TenantFile)]) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        for (on, key) in [
            (self.admin_endpoint, "sandbox_options.admin_endpoint"),
            (self.unsafe_bypass_hold_ledger, "sandbox_options.unsafe_bypass_hold_ledger"),
            (self.integration_fault.is_some(), "sandbox_options.integration_fault"),
        ] {
            if !on {
                continue;
            }
            if !sandbox {
                issues.push(ConfigIssue {
                    file: server_path.to_owned(),
                    key: key.into(),
                    reason: "only allowed with server.sandbox = true".into(),
                });
            }
            for (file, t) in tenants {
                let pos_real = t.pos.as_ref().is_some_and(|p| p.base_url.as_deref() != Some("sandbox"));
                if t.crm.base_url != "sandbox" || t.calendar.base_url != "sandbox" || pos_real {
                    issues.push(ConfigIssue {
                        file: file.clone(),
                        key: key.into(),
                        reason: format!(
                            "only allowed when every tenant uses the sandbox; tenant {:?} uses a real vendor",
                            t.id
                        ),
                    });
                }
            }
        }
        issues
    }
}

#[derive(Clone)]
struct AdminState {
    hubspot: Arc<HubSpotState>,
    google: Arc<GoogleCalendarState>,
    graph: Arc<GraphState>,
    /// The emulators' base URLs, so the harness can seed data through the vendors' APIs.
    urls: Value,
    core: Arc<Core>,
}

/// The admin routes over a running sandbox and the service's core.
pub fn router(sandbox: &Sandbox, core: Arc<Core>) -> Router {
    let state = AdminState {
        hubspot: sandbox.hubspot.state.clone(),
        google: sandbox.google.state.clone(),
        graph: sandbox.graph.state.clone(),
        urls: json!({
            "hubspot": sandbox.hubspot.base_url().to_string(),
            "google": sandbox.google.base_url().to_string(),
            "graph": sandbox.graph.base_url().to_string(),
        }),
        core,
    };
    Router::new()
        .route("/v1/sandbox/state", get(state_handler))
        .route("/v1/sandbox/faults", post(faults_handler))
        .with_state(state)
}

/// Everything the harness's invariant checks read, in one snapshot per source.
async fn state_handler(State(s): State<AdminState>) -> Response {
    let calls = match s.core.store.loadtest_call_statuses().await {
        Ok(c) => c,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
    };
    let steps = match s.core.store.loadtest_step_counts().await {
        Ok(c) => c,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
    };
    let Ok(outstanding_holds) = s.core.booking.ledger.outstanding_holds().await else {
        let error = "the shared hold ledger is unavailable";
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": error}))).into_response();
    };
    let events: Vec<Value> = s
        .google
        .all_events()
        .into_iter()
        .map(|e| {
            json!({"calendar_id": e.calendar_id, "id": e.id, "status": e.status, "busy": e.is_busy(),
                   "foreign": e.foreign, "start": e.start.to_string(), "end": e.end.to_string()})
        })
        .collect();
    let contacts: Vec<Value> = s
        .hubspot
        .contacts()
        .into_iter()
        .map(|c| json!({"id": c.id, "phone": c.prop("phone"), "email": c.prop("email")}))
        .collect();
    let crm_call_keys: Vec<String> =
        s.hubspot.calls().into_iter().filter_map(|c| c.prop(IDEMPOTENCY_PROPERTY).map(str::to_owned)).collect();
    Json(json!({
        "calendar_events": events,
        "contacts": contacts,
        "crm_call_keys": crm_call_keys,
        "calls": calls.into_iter().map(|(id, reason, status)| json!({"call_id": id, "end_reason": reason, "sync_status": status})).collect::<Vec<_>>(),
        "steps": steps,
        "outstanding_holds": outstanding_holds,
        "open_sessions": s.core.sessions.len(),
        "emulator_urls": s.urls,
        "emulator_requests": {
            "hubspot": s.hubspot.total_requests(),
            "google": s.google.total_requests(),
            "graph": s.graph.total_requests(),
        },
    }))
    .into_response()
}

/// Fault switches of the emulators, each optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Faults {
    /// CRM outage: every HubSpot request answers 503 while true.
    crm_down: Option<bool>,
    /// Calendar outage (Google and Graph).
    calendar_down: Option<bool>,
    crm_latency_ms: Option<u64>,
    calendar_latency_ms: Option<u64>,
    /// The next `count` HubSpot responses fail with `status` (429 gives HubSpot's secondly-limit
    /// body and headers: a 429 storm).
    crm_fail_next: Option<FailNext>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailNext {
    status: u16,
    count: usize,
}

async fn faults_handler(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({"error": e.to_string()}))).into_response(),
    };
    if let Some(f) = &faults.crm_fail_next
        && !(400..=599).contains(&f.status)
    {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "crm_fail_next.status must be 400..=599"})))
            .into_response();
    }
    if let Some(down) = faults.crm_down {
        s.hubspot.set_down(down);
    }
    if let Some(down) = faults.calendar_down {
        s.google.set_down(down);
        s.graph.set_down(down);
    }
    if let Some(ms) = faults.crm_latency_ms {
        s.hubspot.set_latency(Duration::from_millis(ms));
    }
    if let Some(ms) = faults.calendar_latency_ms {
        s.google.set_latency(Duration::from_millis(ms));
        s.graph.set_latency(Duration::from_millis(ms));
    }
    if let Some(f) = &faults.crm_fail_next {
        s.hubspot.fail_next_with(InjectedFailure::status(f.status), f.count);
    }
    tracing::warn!(?faults, "sandbox faults changed");
    Json(json!({"ok": true})).into_response()
}
