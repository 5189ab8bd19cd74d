//! The tenant's notification webhook: customer-facing events the calendar cannot deliver itself
//! (a CalDAV server without scheduling sends nobody an email), POSTed as JSON to the tenant's
//! own endpoint, which sends the email or text.
//!
//! Every request is signed: `X-Callside-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! the bytes `"<t>.<body>"` with the secret named by `notifications.webhook_secret_env`. Putting
//! the timestamp under the MAC lets a receiver refuse replays (reject an old `t`); comparing in
//! constant time is the receiver's part. `X-Callside-Event-Id` is stable across retries of one
//! event, so a receiver can drop duplicates.

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::Sha256;

use crate::config::WebhookConfig;
use crate::connectors::{ConnectorError, truncate_bytes};

pub const SIGNATURE_HEADER: &str = "X-Callside-Signature";
pub const EVENT_ID_HEADER: &str = "X-Callside-Event-Id";

/// The signature header value for `body` sent at `t` (unix seconds).
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature header against `body` in constant time (what a receiver does; used by
/// the tests and documented for tenants).
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

/// Sends signed webhook events.
#[derive(Clone)]
pub struct Notifier {
    client: reqwest::Client,
}

impl Default for Notifier {
    fn default() -> Self {
        Self { client: crate::connectors::http_client() }
    }
}

impl Notifier {
    /// POSTs one event; a 2xx answer is delivery. The secret is read from the environment at
    /// send time, so it can be rotated without a restart. Transport failures, 429 and 5xx are
    /// `Transient`; other answers `Permanent`.
    pub async fn send(
        &self,
        webhook: &WebhookConfig,
        event_id: &str,
        event: &Value,
        now: Timestamp,
    ) -> Result<(), ConnectorError> {
        let secret = std::env::var(&webhook.secret_env).map(SecretString::from).map_err(|_| {
            ConnectorError::Permanent(format!("environment variable {} is not set", webhook.secret_env))
        })?;
        let body = serde_json::to_vec(event).expect("a JSON value serializes");
        let t = now.as_second();
        let response = self
            .client
            .post(webhook.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature(secret.expose_secret().as_bytes(), t, &body))
            .header(EVENT_ID_HEADER, event_id)
            .body(body)
            .send()
            .await
            .map_err(|e| ConnectorError::from_transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let detail = format!("webhook answered {status}: {}", truncate_bytes(&text, 200));
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(ConnectorError::Transient(detail))
        } else {
            Err(ConnectorError::Permanent(detail))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_same_secret_time_and_body() {
        let header = signature(b"0123456789abcdef", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert!(verify(b"0123456789abcdef", &header, b"{\"a\":1}"));
        assert!(!verify(b"0123456789abcdeX", &header, b"{\"a\":1}"), "other secret");
        assert!(!verify(b"0123456789abcdef", &header, b"{\"a\":2}"), "other body");
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert!(!verify(b"0123456789abcdef", &moved, b"{\"a\":1}"), "the time is under the MAC");
        assert!(!verify(b"0123456789abcdef", "v1=zz", b"{\"a\":1}"), "malformed header");
    }
}
