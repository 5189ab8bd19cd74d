//! Routes of the inbound sync (`crate::inbound`): vendors' change notifications. The handlers
//! only translate HTTP to the receivers and their answers back.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::inbound::Rejection;
use crate::inbound::google;
use crate::inbound::graph;
use crate::inbound::hubspot::{self, Delivery};
use crate::inbound::pipedrive;

/// Webhook bodies are small batches (HubSpot sends at most 100 events per request).
pub const INBOUND_BODY_LIMIT: usize = 256 * 1024;

/// `POST /v1/inbound/hubspot`: the HubSpot app's webhooks.
pub(super) async fn hubspot(
    State(app): State<Arc<AppState>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(receiver) = app.inbound_hubspot.as_ref() else {
        app.core.metrics.count_inbound_request(hubspot::VENDOR, "not_configured");
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"error": "not_configured", "message": "HubSpot webhooks are not configured on this service"}),
            ),
        )
            .into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or(uri.path());
    let delivery = Delivery {
        method: method.as_str(),
        path_and_query,
        body: &body,
        signature: header(hubspot::SIGNATURE_HEADER),
        timestamp: header(hubspot::TIMESTAMP_HEADER),
    };
    answer(receiver.receive(&app.core, delivery).await)
}

/// `POST /v1/inbound/pipedrive`: the tenants' Pipedrive webhooks (v2, HTTP Basic).
pub(super) async fn pipedrive(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(receiver) = app.inbound_pipedrive.as_ref() else {
        app.core.metrics.count_inbound_request(pipedrive::VENDOR, "not_configured");
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"error": "not_configured", "message": "Pipedrive webhooks are not configured on this service"}),
            ),
        )
            .into_response();
    };
    let authorization = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    answer(receiver.receive(&app.core, authorization, &body).await)
}

/// `POST /v1/inbound/google`: Google Calendar push notifications (no body; the headers say
/// which channel and what happened).
pub(super) async fn google(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let push = google::Push {
        channel_id: header(google::CHANNEL_ID_HEADER),
        token: header(google::CHANNEL_TOKEN_HEADER),
        resource_id: header(google::RESOURCE_ID_HEADER),
        state: header(google::RESOURCE_STATE_HEADER),
        message_number: header(google::MESSAGE_NUMBER_HEADER),
    };
    match google::receive_or_forward(&app.core, push).await {
        Ok(google::Forwarded::Here(accepted)) => (StatusCode::OK, axum::Json(json!(accepted))).into_response(),
        Ok(google::Forwarded::ToLeader) => {
            (StatusCode::ACCEPTED, axum::Json(json!({"forwarded": true}))).into_response()
        }
        Err(rejection) => refused(rejection),
    }
}

/// `POST /v1/inbound/microsoft`: Microsoft Graph's validation handshake (`?validationToken=…`,
/// answered 200 `text/plain` with the decoded token) and its change notifications (202).
pub(super) async fn graph(State(app): State<Arc<AppState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let token = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == graph::VALIDATION_PARAM)
            .map(|(_, v)| v.into_owned())
    });
    if let Some(token) = token {
        return match graph::validation_echo(&app.core, &token) {
            Ok(echo) => (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], echo)
                .into_response(),
            Err(rejection) => refused(rejection),
        };
    }
    match graph::receive(&app.core, &body).await {
        Ok(accepted) => (StatusCode::ACCEPTED, axum::Json(json!(accepted))).into_response(),
        Err(rejection) => refused(rejection),
    }
}

/// An accepted notification is 200 with what it did; a refused one its status and outcome.
fn answer<T: serde::Serialize>(result: Result<T, Rejection>) -> Response {
    match result {
        Ok(accepted) => (StatusCode::OK, axum::Json(json!(accepted))).into_response(),
        Err(rejection) => refused(rejection),
    }
}

fn refused(rejection: Rejection) -> Response {
    let status = StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(json!({"error": rejection.outcome(), "message": rejection.to_string()}))).into_response()
}
