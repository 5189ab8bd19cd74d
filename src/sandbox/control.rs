//! The control side of an out-of-process sandbox (`callside sandbox`): what a test needs to look
//! into and steer the emulators from another process, so the CRM's state outlives the service
//! under test (a crash test kills and restarts the service, never the CRM).
//!
//! Loopback only; not part of any vendor API, so it is served on its own port:
//!
//! - `GET /hubspot/objects/{type}` → `[{"id", "properties": {..}}]` (`type` as HubSpot names it:
//!   `contacts`, `calls`, `meetings`, …)
//! - `POST /hubspot/faults` with any of `{"down": bool, "latency_ms": n,
//!   "drop_next_responses_after_apply": n}` → 204
//! - `POST /square/faults` and `POST /shopify/faults` with any of `{"down": bool, "latency_ms": n,
//!   "fail_next": {"status": s, "count": n}, "stalled": bool}` (Shopify also `"throttle_next": n`)
//!   → 204; `GET /square/requests`, `GET /shopify/requests` → `{"total": n}`
//! - `GET /healthz` → 200

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::faults::FaultSwitches;
use super::hubspot::{HubSpotState, ObjectType};
use super::shopify::ShopifyState;
use super::square::SquareState;

/// Fault switches settable from another process.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    pub down: Option<bool>,
    pub latency_ms: Option<u64>,
    pub drop_next_responses_after_apply: Option<u32>,
}

pub fn router(hubspot: Arc<HubSpotState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/hubspot/objects/{object}", get(objects))
        .route("/hubspot/faults", post(faults))
        .with_state(hubspot)
}

/// Fault switches of a point-of-sale emulator ([`FaultSwitches`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosFaults {
    pub down: Option<bool>,
    pub latency_ms: Option<u64>,
    pub fail_next: Option<FailNext>,
    pub stalled: Option<bool>,
    /// Shopify only: the next N queries are answered `THROTTLED`.
    pub throttle_next: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailNext {
    pub status: u16,
    pub count: usize,
}

impl PosFaults {
    /// Applies the switches; refuses a status outside 400–599 before changing anything.
    pub fn apply(&self, switches: &FaultSwitches) -> Result<(), String> {
        if let Some(f) = &self.fail_next
            && !(400..=599).contains(&f.status)
        {
            return Err("fail_next.status must be 400..=599".into());
        }
        if let Some(down) = self.down {
            switches.set_down(down);
        }
        if let Some(ms) = self.latency_ms {
            switches.set_latency(std::time::Duration::from_millis(ms));
        }
        if let Some(f) = &self.fail_next {
            switches.fail_next(f.status, f.count);
        }
        if let Some(stalled) = self.stalled {
            switches.set_stalled(stalled);
        }
        Ok(())
    }
}

/// The control routes of the point-of-sale emulators.
pub fn pos_router(square: Arc<SquareState>, shopify: Arc<ShopifyState>) -> Router {
    let square_requests = square.clone();
    let shopify_requests = shopify.clone();
    Router::new()
        .route(
            "/square/faults",
            post(move |body: Result<Json<PosFaults>, JsonRejection>| async move {
                pos_faults(body, |f| {
                    if f.throttle_next.is_some() {
                        return Err("throttle_next is a Shopify switch".into());
                    }
                    f.apply(&square.faults)
                })
            }),
        )
        .route(
            "/shopify/faults",
            post(move |body: Result<Json<PosFaults>, JsonRejection>| async move {
                pos_faults(body, |f| {
                    f.apply(&shopify.faults)?;
                    if let Some(n) = f.throttle_next {
                        shopify.throttle_next(n);
                    }
                    Ok(())
                })
            }),
        )
        .route(
            "/square/requests",
            get(move || async move { Json(json!({"total": square_requests.faults.requests()})) }),
        )
        .route(
            "/shopify/requests",
            get(move || async move { Json(json!({"total": shopify_requests.faults.requests()})) }),
        )
}

fn pos_faults(
    body: Result<Json<PosFaults>, JsonRejection>,
    apply: impl FnOnce(&PosFaults) -> Result<(), String>,
) -> Response {
    let result = match body {
        Ok(Json(f)) => apply(&f),
        Err(e) => Err(e.body_text()),
    };
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": format!("faults: {e}")}))).into_response(),
    }
}

async fn objects(State(hubspot): State<Arc<HubSpotState>>, Path(object): Path<String>) -> Response {
    let Some(kind) = ObjectType::parse(&object) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": format!("unknown object type {object:?}")})))
            .into_response();
    };
    let list: Vec<_> = hubspot
        .objects(kind)
        .into_iter()
        .map(|o| json!({"id": o.id, "properties": o.properties, "createdAt": o.created_at.to_string()}))
        .collect();
    Json(list).into_response()
}

async fn faults(State(hubspot): State<Arc<HubSpotState>>, body: Result<Json<Faults>, JsonRejection>) -> Response {
    let Json(f) = match body {
        Ok(b) => b,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": format!("faults: {}", e.body_text())})))
                .into_response();
        }
    };
    if let Some(down) = f.down {
        hubspot.set_down(down);
    }
    if let Some(ms) = f.latency_ms {
        hubspot.set_latency(std::time::Duration::from_millis(ms));
    }
    if let Some(n) = f.drop_next_responses_after_apply {
        hubspot.drop_next_responses_after_apply(n);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn send(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn lists_objects_sets_faults_and_refuses_bad_input_clearly() {
        let state = HubSpotState::new("t");
        let id = state.insert_contact([("firstname", "Ada")]);
        let app = router(state.clone());
        let (status, body) = send(&app, "GET", "/hubspot/objects/contacts", "").await;
        assert_eq!(status, StatusCode::OK);
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list[0]["id"], json!(id));
        assert_eq!(list[0]["properties"]["firstname"], json!("Ada"));

        let (status, body) = send(&app, "GET", "/hubspot/objects/unicorns", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("unknown object type"), "{body}");

        let (status, _) = send(&app, "POST", "/hubspot/faults", r#"{"down": true}"#).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // Down: the emulator answers its outage for the vendor routes.
        let vendor = crate::sandbox::hubspot::HubSpotSandbox::router(state.clone());
        let (status, _) = send(&vendor, "GET", &format!("/crm/v3/objects/contacts/{id}"), "").await;
        assert_eq!(status.as_u16() / 100, 5, "{status}");

        for bad in [r#"{"down": "yes"}"#, r#"{"explode": 1}"#, "not json", r#"{"latency_ms": -1}"#] {
            let (status, body) = send(&app, "POST", "/hubspot/faults", bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(body.contains("faults:"), "{body}");
        }
        // Still serving after the bad input.
        assert_eq!(send(&app, "GET", "/healthz", "").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn pos_faults_are_set_per_emulator_and_bad_input_changes_nothing() {
        let square = SquareState::new("t");
        let shopify = ShopifyState::new("t");
        let app = pos_router(square.clone(), shopify.clone());
        let (status, _) = send(&app, "POST", "/square/faults", r#"{"fail_next": {"status": 429, "count": 1}}"#).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(square.faults.admit("/x").await, super::super::faults::Admission::Fail(429));
        let (status, _) = send(&app, "POST", "/shopify/faults", r#"{"down": true, "throttle_next": 2}"#).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(shopify.faults.admit("/x").await, super::super::faults::Admission::Down);
        for (path, bad) in [
            ("/square/faults", r#"{"throttle_next": 1}"#),
            ("/square/faults", r#"{"fail_next": {"status": 200, "count": 1}}"#),
            ("/shopify/faults", r#"{"stalled": "yes"}"#),
            ("/shopify/faults", "not json"),
        ] {
            let (status, body) = send(&app, "POST", path, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(body.contains("faults:"), "{body}");
        }
        assert_eq!(square.faults.admit("/x").await, super::super::faults::Admission::Pass, "the bad input set nothing");
        let (status, body) = send(&app, "GET", "/square/requests", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"total":2}"#));
    }
}
