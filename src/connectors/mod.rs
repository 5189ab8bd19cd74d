//! Outbound connectors: one folder per kind (`crm/`, `calendar/`, `pos/`), one file per vendor, and the
//! pieces every vendor shares — the error classification and the HTTP client settings.
//!
//! Connectors speak each vendor's real API; the same code talks to the in-process sandbox
//! emulators (tests, demo) and to the vendor, only the base URL and credentials differ.

pub mod calendar;
pub mod crm;
pub mod pos;
pub mod rate;
pub mod rate_redis;

use std::time::Duration;

use jiff::Timestamp;

/// Every vendor failure, classified once at the connector edge so the write-back worker and the
/// tools decide on retries without knowing vendor details.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConnectorError {
    /// The vendor asked us to slow down. `retry_after` is the longest of every signal the vendor
    /// sent (Retry-After in seconds or as an HTTP date, vendor-specific reset headers).
    #[error("rate limited by the vendor ({detail})")]
    RateLimited { retry_after: Option<Duration>, detail: String },
    /// 5xx, timeouts, connection resets: worth retrying with backoff.
    #[error("transient vendor failure: {0}")]
    Transient(String),
    /// The access token expired; refresh and retry once.
    #[error("access token expired")]
    AuthExpired,
    /// The grant was revoked (`invalid_grant`); the connection must be re-authorized.
    #[error("authorization revoked: {0}")]
    AuthRevoked(String),
    /// The vendor rejected the request's content. Not retried; `fields` names the offending
    /// properties when the vendor says which.
    #[error("rejected by the vendor: {message}")]
    Validation { message: String, fields: Vec<String> },
    #[error("not found: {0}")]
    NotFound(String),
    /// The object already exists (idempotency marker hit, client-chosen id taken). Carries the
    /// existing object's id when the vendor returns it.
    #[error("conflict: {message}")]
    Conflict { message: String, existing_id: Option<String> },
    /// A precondition failed (ETag mismatch): re-read and retry.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// Anything else the vendor said that will not get better by retrying.
    #[error("vendor error: {0}")]
    Permanent(String),
}

impl ConnectorError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectorError::RateLimited { .. } | ConnectorError::Transient(_) | ConnectorError::AuthExpired)
    }

    /// Classifies a transport failure (no HTTP status) from reqwest.
    pub fn from_transport(err: &reqwest::Error) -> Self {
        // Timeouts, refused connections and resets all mean "try again later"; the message is
        // kept without the URL, which may carry identifiers.
        let kind = if err.is_timeout() {
            "timeout"
        } else if err.is_connect() {
            "connect"
        } else if err.is_body() || err.is_decode() {
            "body"
        } else {
            "request"
        };
        ConnectorError::Transient(format!("{kind} error talking to the vendor"))
    }
}

/// Parses an HTTP `Retry-After` value, which RFC 9110 §10.2.3 allows as either delay-seconds or
/// an HTTP-date. Returns the delay from `now`; a date in the past is a zero delay.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let delta = at.duration_since(now);
    Some(Duration::try_from(delta).unwrap_or(Duration::ZERO))
}

/// The longest of several optional delays: when a vendor sends more than one signal, obeying the
/// longest is the only choice that cannot violate any of them.
pub fn longest(delays: impl IntoIterator<Item = Option<Duration>>) -> Option<Duration> {
    delays.into_iter().flatten().max()
}

/// Percent-encodes one URL path segment: everything but RFC 3986 unreserved characters, so an
/// id like `owner@example.com` becomes `owner%40example.com`, as the vendors' client libraries
/// send it.
pub(crate) fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// At most `max` bytes of `value`, cut on a character boundary (for vendor messages kept in
/// errors and logs).
pub(crate) fn truncate_bytes(value: &str, max: usize) -> String {
    let mut cut = max.min(value.len());
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    value[..cut].to_owned()
}

/// A vendor's answer, read whole (status and headers for classification, the body to decode).
pub(crate) struct Raw {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// Charges one request to the account's rate budget (`rate.rs`), sends it and reads the answer
/// whole; a transport failure is classified ([`ConnectorError::from_transport`]).
pub(crate) async fn send_metered(meter: &rate::Meter, request: reqwest::RequestBuilder) -> Result<Raw, ConnectorError> {
    meter.acquire().await;
    let response = request.send().await.map_err(|e| ConnectorError::from_transport(&e))?;
    let status = response.status();
    meter.observe(status.as_u16());
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| ConnectorError::from_transport(&e))?.to_vec();
    Ok(Raw { status, headers, body })
}

/// The outbound HTTP client every connector uses: bounded timeouts so no vendor call can hang a
/// tool or a worker, and no automatic redirects to other hosts.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("callside/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static reqwest configuration is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Mon, 23 Nov 2026 14:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Mon, 23 Nov 2026 13:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn longest_signal_wins() {
        let got = longest([Some(Duration::from_secs(1)), None, Some(Duration::from_secs(10))]);
        assert_eq!(got, Some(Duration::from_secs(10)));
        assert_eq!(longest([None, None]), None);
    }
}
