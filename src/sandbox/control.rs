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

use super::hubspot::{HubSpotState, ObjectType};

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
}
