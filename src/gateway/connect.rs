//! Connecting a tenant's CRM: `GET /v1/connect/{vendor}/start` (authenticated with the tenant's
//! API key as a Bearer header) answers the vendor's authorize URL — with `state` and a PKCE
//! challenge — for the operator's browser; `GET /v1/connect/{vendor}/callback?code&state` is the
//! redirect URI registered with the vendor: the `state` is the proof (single use, ten minutes),
//! the code is exchanged and the tokens are stored encrypted. Starting again for a revoked
//! connection is the re-authorize path.
//!
//! The routes need a [`ConnectService`] in the router's extensions
//! (`.layer(Extension(Arc<ConnectService>))`); without one they answer 404 "not configured".

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::connections::{ConnectionError, Connections, OAuthApp};

/// The OAuth apps by vendor and the connection store.
pub struct ConnectService {
    pub connections: Arc<Connections>,
    pub apps: HashMap<String, Arc<OAuthApp>>,
    /// Woken after a (re-)authorization, so write-back parked on a revoked grant resumes now.
    pub worker: Option<crate::writeback::WorkerHandle>,
}

fn not_configured() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"error": "connections are not configured for this vendor"})))
        .into_response()
}

/// `GET /v1/connect/{vendor}/start`
pub async fn start(
    State(app): State<Arc<AppState>>,
    service: Option<Extension<Arc<ConnectService>>>,
    Path(vendor): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(Extension(service)) = service else {
        return not_configured();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let Some(tenant) = (!presented.is_empty()).then(|| app.core.tenants.by_api_key(presented)).flatten() else {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "a valid tenant API key is required"})))
            .into_response();
    };
    start_for(&service, tenant.id(), &vendor).await
}

/// The authorize URL for a tenant (the route minus authentication).
pub async fn start_for(service: &ConnectService, tenant: &str, vendor: &str) -> Response {
    let Some(oauth) = service.apps.get(vendor) else {
        return not_configured();
    };
    match service.connections.start(oauth, tenant).await {
        Ok(url) => (StatusCode::OK, axum::Json(json!({"authorize_url": url.as_str()}))).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "starting an OAuth connection failed");
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": "could not start the connection"})))
                .into_response()
        }
    }
}

/// `GET /v1/connect/{vendor}/callback`
pub async fn callback(
    service: Option<Extension<Arc<ConnectService>>>,
    Path(vendor): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(Extension(service)) = service else {
        return not_configured();
    };
    finish(&service, &vendor, &query).await
}

/// The callback's work (the route minus extraction).
pub async fn finish(service: &ConnectService, vendor: &str, query: &HashMap<String, String>) -> Response {
    let Some(oauth) = service.apps.get(vendor) else {
        return not_configured();
    };
    if let Some(error) = query.get("error") {
        // The user declined, or the vendor refused the request (RFC 6749 §4.1.2.1).
        return (StatusCode::BAD_REQUEST, format!("The connection was not authorized ({error}).")).into_response();
    }
    let (Some(state), Some(code)) = (query.get("state"), query.get("code")) else {
        return (StatusCode::BAD_REQUEST, "The callback needs both `code` and `state`.").into_response();
    };
    match service.connections.callback(oauth, state, code).await {
        Ok(info) => {
            tracing::info!(tenant = %info.tenant, vendor = %info.vendor, "connection authorized");
            if let Some(worker) = &service.worker {
                worker.wake();
            }
            (StatusCode::OK, format!("Connected {} for {}. You can close this window.", info.vendor, info.tenant))
                .into_response()
        }
        Err(ConnectionError::UnknownState | ConnectionError::StateExpired | ConnectionError::WrongVendor(_)) => {
            (StatusCode::BAD_REQUEST, "This authorization link is invalid or expired; start again.").into_response()
        }
        Err(ConnectionError::Vendor(e)) => {
            tracing::warn!(error = %e, "the vendor refused the authorization code");
            (StatusCode::BAD_GATEWAY, "The CRM refused the authorization; start again.").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "completing an OAuth connection failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Could not store the connection.").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::connections::TokenCipher;
    use crate::connectors::http_client;
    use crate::sandbox::hubspot::{HubSpotSandbox, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET};
    use crate::store::Store;

    #[tokio::test]
    async fn start_then_callback_connects_and_a_replayed_callback_is_refused() {
        let sandbox = HubSpotSandbox::start("static").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("c.db").display())).await.unwrap();
        let base = sandbox.base_url();
        let oauth = OAuthApp::hubspot(
            OAUTH_CLIENT_ID,
            OAUTH_CLIENT_SECRET.to_string().into(),
            "https://callside.example.com/v1/connect/hubspot/callback",
            &base,
            &base,
        )
        .unwrap();
        let connections = Arc::new(Connections::new(
            store.clone(),
            Arc::new(TokenCipher::generate()),
            http_client(),
            Arc::new(SystemClock),
        ));
        let service = ConnectService {
            connections,
            apps: HashMap::from([("hubspot".to_string(), Arc::new(oauth))]),
            worker: None,
        };

        assert_eq!(start_for(&service, "acme", "salesforce").await.status(), StatusCode::NOT_FOUND);
        let started = start_for(&service, "acme", "hubspot").await;
        assert_eq!(started.status(), StatusCode::OK);
        let body = axum::body::to_bytes(started.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let authorize = url::Url::parse(body["authorize_url"].as_str().unwrap()).unwrap();
        let redirect = http_client().get(authorize).send().await.unwrap();
        let location = url::Url::parse(redirect.headers()["location"].to_str().unwrap()).unwrap();
        let query: HashMap<String, String> = location.query_pairs().into_owned().collect();

        assert_eq!(finish(&service, "hubspot", &query).await.status(), StatusCode::OK);
        assert_eq!(store.connection("acme:hubspot").await.unwrap().unwrap().status, "active");
        assert_eq!(finish(&service, "hubspot", &query).await.status(), StatusCode::BAD_REQUEST, "state is single use");
        let denied = HashMap::from([("error".to_string(), "access_denied".to_string())]);
        assert_eq!(finish(&service, "hubspot", &denied).await.status(), StatusCode::BAD_REQUEST);
    }
}
