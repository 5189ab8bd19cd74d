//! Google Calendar API v3 connector.
//!
//! Paths, parameters and bodies follow the discovery document
//! (`/work/shared/vendor-specs/google/calendar.v3.json`). Error classification follows
//! <https://developers.google.com/workspace/calendar/api/guides/errors>: the body is
//! `{"error":{"errors":[{"domain","reason","message"}],"code","message"}}` and the `reason` tells
//! a rate limit (403/429 `rateLimitExceeded`, `userRateLimitExceeded`, `quotaExceeded`) from a
//! permission problem (other 403s).
//!
//! Idempotency: events are created with a client-chosen id ([`event_id_from_key`]). Google keeps
//! a deleted event (status `cancelled`) and its id, so inserting that id again answers 409
//! `duplicate` even after a delete (<https://stackoverflow.com/questions/27542721>); a 409 on
//! create is reported as `Conflict` carrying the id we sent, and the caller reads it back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use super::{
    CalendarConnector, CalendarEvent, EventChange, Interval, NewEvent, SubscribeRequest, Subscription, SyncResult,
    merge_intervals,
};
use crate::connectors::{ConnectorError, encode_path_segment, longest, parse_retry_after};

/// Private extended property holding the call id on events callside creates.
pub const CALL_ID_PROPERTY: &str = "callside_call_id";
/// Private extended property holding the service id on events callside creates.
pub const SERVICE_PROPERTY: &str = "callside_service";

/// events.list page size (Google's default; the maximum is 2500).
const DEFAULT_PAGE_SIZE: u32 = 250;
const MAX_PAGE_SIZE: u32 = 2500;
/// Safety valve against a pagination loop.
const MAX_PAGES: usize = 200;
/// FreeBusyRequest `calendarExpansionMax`: "Maximum value is 50".
const FREEBUSY_BATCH: usize = 50;

/// Derives a valid Google event id from an idempotency key: the lowercase base32hex (RFC 4648
/// §7, alphabet `0-9a-v`, no padding) of the first 160 bits of a domain-separated SHA-256 of the
/// key. 32 characters, inside Google's rules (base32hex characters, length 5–1024; discovery
/// doc, `Event.id`). The same hold always yields the same event id.
pub fn event_id_from_key(key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"callside/google-event-id/v1\0");
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    data_encoding::BASE32HEX_NOPAD.encode(&digest[..20]).to_ascii_lowercase()
}

/// Google Calendar v3 over HTTPS (or the in-process sandbox).
#[derive(Debug)]
pub struct GoogleCalendarConnector {
    base_url: Url,
    access_token: RwLock<SecretString>,
    client: reqwest::Client,
    page_size: u32,
    /// Every request is charged to the account's rate budget (`crate::connectors::rate`).
    meter: crate::connectors::rate::Meter,
}

impl GoogleCalendarConnector {
    /// `base_url` is the API host root, e.g. `https://www.googleapis.com/`; the connector appends
    /// `calendar/v3/...`.
    pub fn new(base_url: Url, access_token: SecretString, client: reqwest::Client) -> Self {
        let mut base_url = base_url;
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        Self {
            base_url,
            access_token: RwLock::new(access_token),
            client,
            page_size: DEFAULT_PAGE_SIZE,
            meter: crate::connectors::rate::Meter::unmetered(),
        }
    }

    /// Charges every request to this rate budget.
    pub fn with_meter(mut self, meter: crate::connectors::rate::Meter) -> Self {
        self.meter = meter;
        self
    }

    /// Replaces the access token after a refresh (following `AuthExpired`).
    pub fn set_access_token(&self, token: SecretString) {
        *self.access_token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// events.list page size, clamped to Google's 1..=2500.
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// `<base>/calendar/v3/<segments...>`, every segment percent-encoded (calendar ids are
    /// usually email addresses).
    fn url(&self, segments: &[&str]) -> Result<Url, ConnectorError> {
        let mut path = String::from("calendar/v3");
        for segment in segments {
            // URL parsing resolves `.`/`..` (even percent-encoded) as dot segments, so such an
            // id could address another path; no Google id looks like that.
            if matches!(*segment, "" | "." | "..") {
                return Err(ConnectorError::Validation {
                    message: "empty or dot-segment identifier in a Google Calendar path".to_owned(),
                    fields: Vec::new(),
                });
            }
            path.push('/');
            path.push_str(&encode_path_segment(segment));
        }
        self.base_url.join(&path).map_err(|_| ConnectorError::Permanent("invalid Google Calendar URL".to_owned()))
    }

    fn authorization(&self) -> Result<HeaderValue, ConnectorError> {
        let token = self.access_token.read().unwrap_or_else(|p| p.into_inner());
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| ConnectorError::Permanent("access token is not a valid header value".to_owned()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Sends a request and classifies any non-2xx answer. `existing_id` is what a 409 reports
    /// as the existing object's id (the id we tried to create).
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
        existing_id: Option<&str>,
    ) -> Result<reqwest::Response, ConnectorError> {
        let mut request = self
            .client
            .request(method, url)
            .header(header::AUTHORIZATION, self.authorization()?)
            .header(header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(etag) = if_match {
            let value = HeaderValue::from_str(etag).map_err(|_| ConnectorError::Validation {
                message: "etag is not a valid header value".to_owned(),
                fields: vec!["etag".to_owned()],
            })?;
            request = request.header(header::IF_MATCH, value);
        }
        self.meter.acquire().await;
        let response = request.send().await.map_err(|err| ConnectorError::from_transport(&err))?;
        self.meter.observe(response.status().as_u16());
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Timestamp::now()));
        let body = response.text().await.unwrap_or_default();
        Err(classify(status, retry_after, &body, existing_id))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
        existing_id: Option<&str>,
    ) -> Result<T, ConnectorError> {
        let response = self.send(method, url, body, if_match, existing_id).await?;
        let text = response.text().await.map_err(|err| ConnectorError::from_transport(&err))?;
        serde_json::from_str(&text)
            .map_err(|_| ConnectorError::Permanent("unexpected response body from Google Calendar".to_owned()))
    }

    async fn free_busy_batch(
        &self,
        calendar_ids: &[String],
        window: Interval,
    ) -> Result<Vec<Interval>, ConnectorError> {
        let body = serde_json::to_value(FreeBusyRequest {
            time_min: rfc3339_utc(window.start),
            time_max: rfc3339_utc(window.end),
            time_zone: "UTC",
            items: calendar_ids.iter().map(|id| FreeBusyItem { id: id.as_str() }).collect(),
        })
        .map_err(|_| ConnectorError::Permanent("free/busy request did not serialize".to_owned()))?;
        let url = self.url(&["freeBusy"])?;
        let response: FreeBusyResponse = self.get_json(Method::POST, url, Some(&body), None, None).await?;
        let mut busy = Vec::new();
        for id in calendar_ids {
            let calendar = response
                .calendars
                .get(id)
                .or_else(|| response.calendars.iter().find(|(k, _)| k.eq_ignore_ascii_case(id)).map(|(_, v)| v))
                .ok_or_else(|| ConnectorError::Permanent("free/busy response lacks a requested calendar".to_owned()))?;
            // A calendar whose free/busy could not be computed must not read as "free".
            if let Some(error) = calendar.errors.first() {
                return Err(match error.reason.as_deref() {
                    Some("notFound") => {
                        ConnectorError::NotFound("a requested calendar was not found (free/busy)".to_owned())
                    }
                    Some("internalError" | "backendError") => {
                        ConnectorError::Transient("free/busy could not be computed for a calendar".to_owned())
                    }
                    other => ConnectorError::Permanent(format!(
                        "free/busy error for a calendar: {}",
                        other.unwrap_or("unknown")
                    )),
                });
            }
            for period in &calendar.busy {
                let start = parse_timestamp(&period.start)?;
                let end = parse_timestamp(&period.end)?;
                if start < end {
                    busy.push(Interval::new(start, end));
                }
            }
        }
        Ok(busy)
    }
}

#[async_trait]
impl CalendarConnector for GoogleCalendarConnector {
    fn provider(&self) -> &'static str {
        "google"
    }

    async fn free_busy(&self, calendar_ids: &[String], window: Interval) -> Result<Vec<Interval>, ConnectorError> {
        if calendar_ids.is_empty() || window.start >= window.end {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        for batch in calendar_ids.chunks(FREEBUSY_BATCH) {
            all.extend(self.free_busy_batch(batch, window).await?);
        }
        Ok(merge_intervals(all, window))
    }

    async fn create_event(&self, calendar_id: &str, event: &NewEvent) -> Result<CalendarEvent, ConnectorError> {
        let body = insert_body(event)?;
        let mut url = self.url(&["calendars", calendar_id, "events"])?;
        if event.attendee_email.is_some() {
            // Email the invitation to the caller. Without attendees there is nobody to notify
            // and the parameter is left out (the discovery doc warns against `none`).
            url.query_pairs_mut().append_pair("sendUpdates", "all");
        }
        let resource: EventResource = self.get_json(Method::POST, url, Some(&body), None, Some(&event.id)).await?;
        resource.into_calendar_event(Some(&event.time_zone))
    }

    async fn get_event(&self, calendar_id: &str, event_id: &str) -> Result<CalendarEvent, ConnectorError> {
        let url = self.url(&["calendars", calendar_id, "events", event_id])?;
        let resource: EventResource = self.get_json(Method::GET, url, None, None, None).await?;
        resource.into_calendar_event(None)
    }

    async fn list_events(&self, calendar_id: &str, window: Interval) -> Result<Vec<CalendarEvent>, ConnectorError> {
        if window.start >= window.end {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        let mut page_token: Option<String> = None;
        let mut seen_tokens = HashSet::new();
        for _ in 0..MAX_PAGES {
            let mut url = self.url(&["calendars", calendar_id, "events"])?;
            {
                let mut query = url.query_pairs_mut();
                // timeMin bounds the event END and timeMax the START (both exclusive): exactly
                // the events overlapping [start, end).
                query
                    .append_pair("timeMin", &rfc3339_utc(window.start))
                    .append_pair("timeMax", &rfc3339_utc(window.end))
                    .append_pair("singleEvents", "true")
                    .append_pair("orderBy", "startTime")
                    .append_pair("showDeleted", "false")
                    .append_pair("maxResults", &self.page_size.to_string());
                if let Some(token) = &page_token {
                    query.append_pair("pageToken", token);
                }
            }
            let page: EventsPage = self.get_json(Method::GET, url, None, None, None).await?;
            for item in page.items {
                if item.status.as_deref() == Some("cancelled") {
                    continue;
                }
                let event = item.into_calendar_event(page.time_zone.as_deref())?;
                if event.end > window.start && event.start < window.end {
                    events.push(event);
                }
            }
            match page.next_page_token {
                Some(token) if !token.is_empty() => {
                    if !seen_tokens.insert(token.clone()) {
                        return Err(ConnectorError::Permanent("events.list returned a page token twice".to_owned()));
                    }
                    page_token = Some(token);
                }
                _ => return Ok(events),
            }
        }
        Err(ConnectorError::Permanent("events.list returned too many pages".to_owned()))
    }

    async fn move_event(
        &self,
        calendar_id: &str,
        event_id: &str,
        start: Timestamp,
        end: Timestamp,
        etag: Option<&str>,
    ) -> Result<CalendarEvent, ConnectorError> {
        // Patch semantics: only start/end dateTime change; the event keeps its id, its
        // time zone and everything else. Attendees are told about the new time.
        let body = serde_json::to_value(PatchTimes {
            start: DateTimeOut { date_time: rfc3339_utc(start), time_zone: None },
            end: DateTimeOut { date_time: rfc3339_utc(end), time_zone: None },
        })
        .map_err(|_| ConnectorError::Permanent("patch body did not serialize".to_owned()))?;
        let mut url = self.url(&["calendars", calendar_id, "events", event_id])?;
        url.query_pairs_mut().append_pair("sendUpdates", "all");
        let resource: EventResource = self.get_json(Method::PATCH, url, Some(&body), etag, None).await?;
        resource.into_calendar_event(None)
    }

    async fn cancel_event(&self, calendar_id: &str, event_id: &str, notify: bool) -> Result<(), ConnectorError> {
        let mut url = self.url(&["calendars", calendar_id, "events", event_id])?;
        url.query_pairs_mut().append_pair("sendUpdates", if notify { "all" } else { "none" });
        self.send(Method::DELETE, url, None, None, None).await?;
        Ok(())
    }

    /// events.list with `syncToken` (<https://developers.google.com/workspace/calendar/api/guides/sync>):
    /// the full sync bounds events by `timeMin` (the only filter the guide allows beside a
    /// token's query), the incremental one repeats the other parameters and always gets the
    /// deleted entries; `nextSyncToken` comes on the last page only; 410 Gone means the token
    /// expired and a full sync is due.
    async fn sync_events(
        &self,
        calendar_id: &str,
        cursor: Option<&str>,
        since: Timestamp,
    ) -> Result<SyncResult, ConnectorError> {
        let mut changes = Vec::new();
        let mut page_token: Option<String> = None;
        let mut seen_tokens = HashSet::new();
        for _ in 0..MAX_PAGES {
            let mut url = self.url(&["calendars", calendar_id, "events"])?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("singleEvents", "true").append_pair("maxResults", &self.page_size.to_string());
                match cursor {
                    Some(token) => query.append_pair("syncToken", token),
                    None => query.append_pair("timeMin", &rfc3339_utc(since)),
                };
                if let Some(token) = &page_token {
                    query.append_pair("pageToken", token);
                }
            }
            let page: EventsPage = match self.get_json(Method::GET, url, None, None, None).await {
                Ok(page) => page,
                // classify() reports 410 as "deleted: …".
                Err(ConnectorError::NotFound(m)) if cursor.is_some() && m.starts_with("deleted:") => {
                    return Ok(SyncResult::Expired);
                }
                Err(e) => return Err(e),
            };
            for item in page.items {
                if item.status.as_deref() == Some("cancelled") && (item.start.is_none() || item.end.is_none()) {
                    let id = item.id.ok_or_else(|| unexpected("deleted event without an id"))?;
                    changes.push(EventChange::Removed { id });
                    continue;
                }
                changes.push(EventChange::Upserted(item.into_calendar_event(page.time_zone.as_deref())?));
            }
            match (page.next_page_token, page.next_sync_token) {
                (Some(token), _) if !token.is_empty() => {
                    if !seen_tokens.insert(token.clone()) {
                        return Err(ConnectorError::Permanent("events.list returned a page token twice".to_owned()));
                    }
                    page_token = Some(token);
                }
                (_, Some(cursor)) => return Ok(SyncResult::Changes { changes, cursor }),
                _ => return Err(unexpected("the last events.list page has no nextSyncToken")),
            }
        }
        Err(ConnectorError::Permanent("events.list returned too many pages".to_owned()))
    }

    fn syncs_changes(&self) -> bool {
        true
    }

    fn pushes_changes(&self) -> bool {
        true
    }

    /// events.watch (<https://developers.google.com/workspace/calendar/api/guides/push>): a
    /// `web_hook` channel whose `token` comes back in `X-Goog-Channel-Token`.
    async fn subscribe(
        &self,
        calendar_id: &str,
        request: &SubscribeRequest<'_>,
    ) -> Result<Subscription, ConnectorError> {
        let url = self.url(&["calendars", calendar_id, "events", "watch"])?;
        let body = serde_json::json!({
            "id": request.id,
            "type": "web_hook",
            "address": request.address,
            "token": request.secret,
            "expiration": request.expires_at.as_millisecond().to_string(),
        });
        let channel: ChannelResource = self.get_json(Method::POST, url, Some(&body), None, None).await?;
        let expires_at = channel
            .expiration
            .as_deref()
            .and_then(|ms| ms.parse::<i64>().ok())
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            // Google may shorten the requested lifetime; without an answer assume what was asked.
            .unwrap_or(request.expires_at);
        Ok(Subscription {
            id: channel.id.unwrap_or_else(|| request.id.to_owned()),
            resource_id: channel.resource_id,
            expires_at,
        })
    }

    /// channels.stop with the channel's id and resource id.
    async fn unsubscribe(&self, subscription: &Subscription) -> Result<(), ConnectorError> {
        let url = self.url(&["channels", "stop"])?;
        let body = serde_json::json!({"id": subscription.id, "resourceId": subscription.resource_id});
        match self.send(Method::POST, url, Some(&body), None, None).await {
            // Already gone is what we wanted.
            Ok(_) | Err(ConnectorError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Error classification
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
    message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorItem {
    reason: Option<String>,
    message: Option<String>,
    location: Option<String>,
}

/// Classifies a non-2xx answer from status, `error.errors[0].reason` and `Retry-After`.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    existing_id: Option<&str>,
) -> ConnectorError {
    let envelope: ErrorEnvelope = serde_json::from_str(body).unwrap_or_default();
    let error = envelope.error.unwrap_or_default();
    let first = error.errors.first();
    let reason = first.and_then(|e| e.reason.as_deref());
    let mut message = error
        .message
        .clone()
        .or_else(|| first.and_then(|e| e.message.clone()))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    if message.len() > 300 {
        let mut cut = 300;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let is_rate_reason = matches!(reason, Some("rateLimitExceeded" | "userRateLimitExceeded" | "quotaExceeded"));
    // Google signals rate limits as 403 *or* 429; only the reason tells a 403 rate limit from a
    // permission problem. https://developers.google.com/workspace/calendar/api/guides/errors
    if status == StatusCode::TOO_MANY_REQUESTS || (status == StatusCode::FORBIDDEN && is_rate_reason) {
        return ConnectorError::RateLimited {
            retry_after: longest([retry_after]),
            detail: format!("{} {}", status.as_u16(), reason.unwrap_or("rate limited")),
        };
    }
    if status.is_server_error() || reason == Some("backendError") {
        return ConnectorError::Transient(format!("{}: {message}", status.as_u16()));
    }
    match status {
        StatusCode::UNAUTHORIZED => ConnectorError::AuthExpired,
        StatusCode::NOT_FOUND => ConnectorError::NotFound(message),
        StatusCode::CONFLICT => ConnectorError::Conflict { message, existing_id: existing_id.map(str::to_owned) },
        // 410 Gone: the event was already deleted (or a sync token expired).
        StatusCode::GONE => ConnectorError::NotFound(format!("deleted: {message}")),
        StatusCode::PRECONDITION_FAILED => ConnectorError::PreconditionFailed(message),
        s if s.is_client_error() => ConnectorError::Validation {
            message,
            fields: error.errors.iter().filter_map(|e| e.location.clone()).collect(),
        },
        s => ConnectorError::Permanent(format!("unexpected status {}: {message}", s.as_u16())),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InsertEvent<'a> {
    id: &'a str,
    summary: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    start: DateTimeOut,
    end: DateTimeOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attendees: Vec<AttendeeOut<'a>>,
    reminders: RemindersOut,
    extended_properties: ExtendedPropertiesOut<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DateTimeOut {
    date_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
}

#[derive(Debug, Serialize)]
struct AttendeeOut<'a> {
    email: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RemindersOut {
    use_default: bool,
    overrides: Vec<ReminderOut>,
}

#[derive(Debug, Serialize)]
struct ReminderOut {
    method: &'static str,
    minutes: u32,
}

#[derive(Debug, Serialize)]
struct ExtendedPropertiesOut<'a> {
    private: BTreeMap<&'static str, &'a str>,
}

#[derive(Debug, Serialize)]
struct PatchTimes {
    start: DateTimeOut,
    end: DateTimeOut,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FreeBusyRequest<'a> {
    time_min: String,
    time_max: String,
    time_zone: &'static str,
    items: Vec<FreeBusyItem<'a>>,
}

#[derive(Debug, Serialize)]
struct FreeBusyItem<'a> {
    id: &'a str,
}

#[derive(Debug, Default, Deserialize)]
struct FreeBusyResponse {
    #[serde(default)]
    calendars: HashMap<String, FreeBusyCalendar>,
}

#[derive(Debug, Default, Deserialize)]
struct FreeBusyCalendar {
    #[serde(default)]
    busy: Vec<TimePeriod>,
    #[serde(default)]
    errors: Vec<FreeBusyError>,
}

#[derive(Debug, Deserialize)]
struct TimePeriod {
    start: String,
    end: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChannelResource {
    id: Option<String>,
    resource_id: Option<String>,
    expiration: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FreeBusyError {
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsPage {
    #[serde(default)]
    items: Vec<EventResource>,
    next_page_token: Option<String>,
    /// On the last page of a list that sync can follow.
    next_sync_token: Option<String>,
    /// The calendar's time zone: the zone of all-day (`date`) events.
    time_zone: Option<String>,
}

/// The Event resource fields callside reads (unknown fields are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventResource {
    id: Option<String>,
    etag: Option<String>,
    status: Option<String>,
    summary: Option<String>,
    start: Option<EventDateTime>,
    end: Option<EventDateTime>,
    transparency: Option<String>,
    extended_properties: Option<ExtendedProperties>,
    updated: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventDateTime {
    date: Option<String>,
    date_time: Option<String>,
    time_zone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ExtendedProperties {
    #[serde(default)]
    private: HashMap<String, String>,
}

impl EventDateTime {
    /// The instant this start/end denotes. `fallback_zone` (the calendar's zone) applies to
    /// all-day events and offset-less times that carry no zone of their own.
    fn resolve(&self, fallback_zone: Option<&str>) -> Result<Timestamp, ConnectorError> {
        let zone = || -> TimeZone {
            self.time_zone.as_deref().or(fallback_zone).and_then(|z| TimeZone::get(z).ok()).unwrap_or(TimeZone::UTC)
        };
        if let Some(value) = &self.date_time {
            if let Ok(ts) = value.parse::<Timestamp>() {
                return Ok(ts);
            }
            let civil = value.parse::<jiff::civil::DateTime>().map_err(|_| unexpected("event dateTime"))?;
            return civil.to_zoned_datetime(zone()).map(|z| z.timestamp()).map_err(|_| unexpected("event dateTime"));
        }
        if let Some(value) = &self.date {
            let date = value.parse::<jiff::civil::Date>().map_err(|_| unexpected("event date"))?;
            return date.to_zoned_datetime(zone()).map(|z| z.timestamp()).map_err(|_| unexpected("event date"));
        }
        Err(unexpected("event time without date or dateTime"))
    }
}

impl EventResource {
    fn into_calendar_event(self, fallback_zone: Option<&str>) -> Result<CalendarEvent, ConnectorError> {
        let id = self.id.ok_or_else(|| unexpected("event without an id"))?;
        let status = self.status.unwrap_or_else(|| "confirmed".to_owned());
        let (Some(start), Some(end)) = (&self.start, &self.end) else {
            // "Deleted events are only guaranteed to have the id field populated." (Event.status)
            if status == "cancelled" {
                return Err(ConnectorError::NotFound("deleted: event is cancelled".to_owned()));
            }
            return Err(unexpected("event without start or end"));
        };
        let start = start.resolve(fallback_zone)?;
        let end = end.resolve(fallback_zone)?;
        Ok(CalendarEvent {
            id,
            summary: self.summary,
            start,
            end,
            status,
            etag: self.etag,
            call_id: self.extended_properties.and_then(|mut p| p.private.remove(CALL_ID_PROPERTY)),
            busy: self.transparency.as_deref() != Some("transparent"),
            updated: self.updated.as_deref().and_then(|u| u.parse::<Timestamp>().ok()),
        })
    }
}

fn unexpected(what: &str) -> ConnectorError {
    ConnectorError::Permanent(format!("unexpected response from Google Calendar: {what}"))
}

fn insert_body(event: &NewEvent) -> Result<serde_json::Value, ConnectorError> {
    let mut minutes: Vec<u32> = event.reminder_minutes.clone();
    minutes.sort_unstable();
    minutes.dedup();
    let body = InsertEvent {
        id: &event.id,
        summary: &event.summary,
        description: &event.description,
        start: DateTimeOut {
            date_time: rfc3339_in_zone(event.start, &event.time_zone),
            time_zone: Some(event.time_zone.clone()),
        },
        end: DateTimeOut {
            date_time: rfc3339_in_zone(event.end, &event.time_zone),
            time_zone: Some(event.time_zone.clone()),
        },
        attendees: event.attendee_email.iter().map(|email| AttendeeOut { email }).collect(),
        reminders: RemindersOut {
            use_default: false,
            overrides: minutes.into_iter().map(|minutes| ReminderOut { method: "popup", minutes }).collect(),
        },
        extended_properties: ExtendedPropertiesOut {
            private: BTreeMap::from([
                (CALL_ID_PROPERTY, event.call_id.as_str()),
                (SERVICE_PROPERTY, event.service_id.as_str()),
            ]),
        },
    };
    serde_json::to_value(body).map_err(|_| ConnectorError::Permanent("event body did not serialize".to_owned()))
}

/// RFC 3339 in UTC (`...Z`), as events.list `timeMin`/`timeMax` and free/busy require (an offset
/// is mandatory).
fn rfc3339_utc(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
}

/// RFC 3339 with the zone's offset, so the event reads naturally in the business's calendar;
/// UTC when the zone is unknown (Google then validates the `timeZone` field itself).
fn rfc3339_in_zone(ts: Timestamp, zone: &str) -> String {
    match TimeZone::get(zone) {
        Ok(tz) => ts.to_zoned_datetime(tz).strftime("%Y-%m-%dT%H:%M:%S%.f%:z").to_string(),
        Err(_) => rfc3339_utc(ts),
    }
}

fn parse_timestamp(value: &str) -> Result<Timestamp, ConnectorError> {
    value.parse::<Timestamp>().map_err(|_| unexpected("free/busy time"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::google_calendar::{GoogleCalendarMethod, GoogleCalendarSandbox};
    use serde_json::{Value, json};

    const TOKEN: &str = "test-access-token";
    const CAL: &str = "front+desk@example.com";
    const DISCOVERY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vendor-specs/google/calendar.v3.json");

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    async fn setup() -> (GoogleCalendarSandbox, GoogleCalendarConnector) {
        let sandbox = GoogleCalendarSandbox::start(TOKEN).await.unwrap();
        let connector = GoogleCalendarConnector::new(
            sandbox.base_url(),
            SecretString::from(TOKEN.to_owned()),
            crate::connectors::http_client(),
        );
        (sandbox, connector)
    }

    fn new_event(key: &str, start: &str, end: &str) -> NewEvent {
        NewEvent {
            id: event_id_from_key(key),
            summary: "Haircut — Ada".to_owned(),
            description: "Booked by phone".to_owned(),
            start: ts(start),
            end: ts(end),
            time_zone: "America/New_York".to_owned(),
            attendee_email: Some("ada@example.com".to_owned()),
            reminder_minutes: vec![60, 15],
            call_id: "call-1".to_owned(),
            service_id: "haircut".to_owned(),
        }
    }

    #[tokio::test]
    async fn create_then_get_round_trips_times_and_zone() {
        let (sandbox, connector) = setup().await;
        let ev = new_event("hold-1", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        let created = connector.create_event(CAL, &ev).await.unwrap();
        assert_eq!(created.id, ev.id);
        assert_eq!(created.start, ev.start);
        assert_eq!(created.end, ev.end);
        assert_eq!(created.status, "confirmed");
        assert_eq!(created.call_id.as_deref(), Some("call-1"));
        assert!(created.busy);
        assert!(created.etag.is_some());

        let got = connector.get_event(CAL, &ev.id).await.unwrap();
        assert_eq!(got, created);

        // The calendar id (with '@' and '+') reached the emulator intact.
        let stored = sandbox.state.events(CAL);
        assert_eq!(stored.len(), 1);
        let stored = &stored[0];
        assert_eq!(stored.start_time_zone.as_deref(), Some("America/New_York"));
        assert_eq!(stored.end_time_zone.as_deref(), Some("America/New_York"));
        assert_eq!(stored.attendees, vec!["ada@example.com".to_owned()]);
        assert!(!stored.reminders_use_default);
        assert_eq!(stored.reminder_overrides, vec![("popup".to_owned(), 15), ("popup".to_owned(), 60)]);
        assert_eq!(stored.private_properties[CALL_ID_PROPERTY], "call-1");
        assert_eq!(stored.private_properties[SERVICE_PROPERTY], "haircut");
        assert_eq!(stored.send_updates_of(GoogleCalendarMethod::Insert), Some("all"));
    }

    #[tokio::test]
    async fn create_without_attendee_sends_no_send_updates() {
        let (sandbox, connector) = setup().await;
        let mut ev = new_event("hold-quiet", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        ev.attendee_email = None;
        connector.create_event(CAL, &ev).await.unwrap();
        let stored = sandbox.state.event(CAL, &ev.id).unwrap();
        assert!(stored.attendees.is_empty());
        assert_eq!(stored.send_updates_of(GoogleCalendarMethod::Insert), None);
    }

    #[tokio::test]
    async fn creating_the_same_id_twice_is_a_conflict_naming_it() {
        let (sandbox, connector) = setup().await;
        let ev = new_event("hold-2", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        connector.create_event(CAL, &ev).await.unwrap();
        let err = connector.create_event(CAL, &ev).await.unwrap_err();
        match err {
            ConnectorError::Conflict { existing_id, .. } => {
                assert_eq!(existing_id.as_deref(), Some(ev.id.as_str()))
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(sandbox.state.events(CAL).len(), 1);

        // Still a conflict once the event is deleted: Google keeps the id.
        connector.cancel_event(CAL, &ev.id, false).await.unwrap();
        assert!(matches!(connector.create_event(CAL, &ev).await, Err(ConnectorError::Conflict { .. })));
    }

    #[tokio::test]
    async fn free_busy_merges_calendars_and_ignores_transparent_and_cancelled() {
        let (sandbox, connector) = setup().await;
        let s = &sandbox.state;
        let a = "stylist-a@example.com";
        let b = "stylist-b@example.com";
        s.insert_foreign_event(a, ts("2026-11-23T09:00:00Z"), ts("2026-11-23T10:00:00Z"), "x");
        s.insert_foreign_event(b, ts("2026-11-23T09:30:00Z"), ts("2026-11-23T11:00:00Z"), "y");
        s.insert_foreign_event(b, ts("2026-11-23T13:00:00Z"), ts("2026-11-23T14:00:00Z"), "z");
        s.insert_transparent_event(a, ts("2026-11-23T15:00:00Z"), ts("2026-11-23T16:00:00Z"), "t");
        let gone = s.insert_foreign_event(a, ts("2026-11-23T16:00:00Z"), ts("2026-11-23T17:00:00Z"), "c");
        s.cancel_directly(a, &gone);
        // Straddles the window end: clipped.
        s.insert_foreign_event(a, ts("2026-11-23T17:30:00Z"), ts("2026-11-23T19:00:00Z"), "late");

        let window = Interval::new(ts("2026-11-23T08:00:00Z"), ts("2026-11-23T18:00:00Z"));
        let busy = connector.free_busy(&[a.to_owned(), b.to_owned()], window).await.unwrap();
        assert_eq!(
            busy,
            vec![
                Interval::new(ts("2026-11-23T09:00:00Z"), ts("2026-11-23T11:00:00Z")),
                Interval::new(ts("2026-11-23T13:00:00Z"), ts("2026-11-23T14:00:00Z")),
                Interval::new(ts("2026-11-23T17:30:00Z"), ts("2026-11-23T18:00:00Z")),
            ]
        );
        assert_eq!(sandbox.state.request_count(GoogleCalendarMethod::FreeBusy), 1);
    }

    #[tokio::test]
    async fn free_busy_fails_closed_on_a_calendar_error() {
        let (sandbox, connector) = setup().await;
        sandbox.state.mark_calendar_missing("gone@example.com");
        let window = Interval::new(ts("2026-11-23T08:00:00Z"), ts("2026-11-23T18:00:00Z"));
        let err = connector.free_busy(&[CAL.to_owned(), "gone@example.com".to_owned()], window).await.unwrap_err();
        assert!(matches!(err, ConnectorError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn list_events_returns_exactly_the_overlapping_events_across_pages() {
        let (sandbox, connector) = setup().await;
        let connector = connector.with_page_size(2);
        let s = &sandbox.state;
        s.insert_foreign_event(CAL, ts("2026-11-23T08:00:00Z"), ts("2026-11-23T09:00:00Z"), "ends at start");
        let a = s.insert_foreign_event(CAL, ts("2026-11-23T08:30:00Z"), ts("2026-11-23T09:15:00Z"), "a");
        let ours = new_event("hold-3", "2026-11-23T09:15:00Z", "2026-11-23T09:45:00Z");
        connector.create_event(CAL, &ours).await.unwrap();
        let t = s.insert_transparent_event(CAL, ts("2026-11-23T09:00:00Z"), ts("2026-11-23T10:00:00Z"), "t");
        let around = s.insert_foreign_event(CAL, ts("2026-11-23T07:00:00Z"), ts("2026-11-23T12:00:00Z"), "around");
        let c = s.insert_foreign_event(CAL, ts("2026-11-23T09:30:00Z"), ts("2026-11-23T09:40:00Z"), "cancelled");
        s.cancel_directly(CAL, &c);
        s.insert_foreign_event(CAL, ts("2026-11-23T10:00:00Z"), ts("2026-11-23T11:00:00Z"), "starts at end");

        let window = Interval::new(ts("2026-11-23T09:00:00Z"), ts("2026-11-23T10:00:00Z"));
        let events = connector.list_events(CAL, window).await.unwrap();
        let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        let mut expected = vec![a.as_str(), ours.id.as_str(), t.as_str(), around.as_str()];
        expected.sort_unstable();
        assert_eq!(ids, expected);
        let transparent = events.iter().find(|e| e.id == t).unwrap();
        assert!(!transparent.busy);
        let mine = events.iter().find(|e| e.id == ours.id).unwrap();
        assert_eq!(mine.call_id.as_deref(), Some("call-1"));
        assert!(events.iter().all(|e| e.status != "cancelled"));
        // 4 matching events at 2 per page.
        assert_eq!(sandbox.state.request_count(GoogleCalendarMethod::List), 2);
    }

    #[tokio::test]
    async fn a_foreign_booking_during_our_insert_shows_up_in_the_verify_listing() {
        let (sandbox, connector) = setup().await;
        let foreign =
            sandbox.state.insert_foreign_on_next_insert(CAL, ts("2026-11-23T15:15:00Z"), ts("2026-11-23T16:00:00Z"));
        let ev = new_event("hold-race", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        connector.create_event(CAL, &ev).await.unwrap();
        let events = connector.list_events(CAL, Interval::new(ev.start, ev.end)).await.unwrap();
        let foreign_event = events.iter().find(|e| e.id == foreign).expect("foreign event listed");
        assert_eq!(foreign_event.call_id, None);
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn move_needs_the_current_etag_and_keeps_the_id() {
        let (sandbox, connector) = setup().await;
        let ev = new_event("hold-4", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        let created = connector.create_event(CAL, &ev).await.unwrap();
        let stale = created.etag.clone().unwrap();
        // Someone else edits the event: its etag changes.
        connector.move_event(CAL, &ev.id, ts("2026-11-23T15:05:00Z"), ts("2026-11-23T15:50:00Z"), None).await.unwrap();

        let new_start = ts("2026-11-24T10:00:00Z");
        let new_end = ts("2026-11-24T10:45:00Z");
        let err = connector.move_event(CAL, &ev.id, new_start, new_end, Some(&stale)).await.unwrap_err();
        assert!(matches!(err, ConnectorError::PreconditionFailed(_)), "{err:?}");

        let fresh = connector.get_event(CAL, &ev.id).await.unwrap().etag.unwrap();
        assert_ne!(fresh, stale);
        let moved = connector.move_event(CAL, &ev.id, new_start, new_end, Some(&fresh)).await.unwrap();
        assert_eq!(moved.id, ev.id);
        assert_eq!((moved.start, moved.end), (new_start, new_end));
        assert_ne!(moved.etag.as_deref(), Some(fresh.as_str()));
        let stored = sandbox.state.events(CAL);
        assert_eq!(stored.len(), 1, "moved in place, not recreated");
        assert_eq!(stored[0].start_time_zone.as_deref(), Some("America/New_York"));
        assert_eq!(stored[0].writes.last().unwrap().if_match.as_deref(), Some(fresh.as_str()));
    }

    #[tokio::test]
    async fn cancel_records_the_notification_choice() {
        let (sandbox, connector) = setup().await;
        let a = new_event("hold-5", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        let b = new_event("hold-6", "2026-11-23T16:00:00Z", "2026-11-23T16:45:00Z");
        connector.create_event(CAL, &a).await.unwrap();
        connector.create_event(CAL, &b).await.unwrap();
        connector.cancel_event(CAL, &a.id, true).await.unwrap();
        connector.cancel_event(CAL, &b.id, false).await.unwrap();
        let sa = sandbox.state.event(CAL, &a.id).unwrap();
        let sb = sandbox.state.event(CAL, &b.id).unwrap();
        assert_eq!(sa.status, "cancelled");
        assert_eq!(sa.send_updates_of(GoogleCalendarMethod::Delete), Some("all"));
        assert_eq!(sb.send_updates_of(GoogleCalendarMethod::Delete), Some("none"));
        // Deleting again: 410 Gone → NotFound.
        let err = connector.cancel_event(CAL, &a.id, true).await.unwrap_err();
        assert!(matches!(err, ConnectorError::NotFound(_)), "{err:?}");
        // Unknown event: 404 → NotFound.
        let err = connector.get_event(CAL, "nosuchevent").await.unwrap_err();
        assert!(matches!(err, ConnectorError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn rate_limits_outages_and_bad_tokens_are_classified() {
        let (sandbox, connector) = setup().await;
        let window = Interval::new(ts("2026-11-23T08:00:00Z"), ts("2026-11-23T18:00:00Z"));

        sandbox.state.fail_next(403, "rateLimitExceeded", 1);
        let err = connector.list_events(CAL, window).await.unwrap_err();
        assert!(matches!(err, ConnectorError::RateLimited { retry_after: None, .. }), "{err:?}");

        sandbox.state.fail_next(403, "userRateLimitExceeded", 1);
        let err = connector.list_events(CAL, window).await.unwrap_err();
        assert!(matches!(err, ConnectorError::RateLimited { .. }), "{err:?}");

        sandbox.state.fail_next_with_retry_after(429, "rateLimitExceeded", 1, 7);
        let err = connector.list_events(CAL, window).await.unwrap_err();
        assert_eq!(
            err,
            ConnectorError::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
                detail: "429 rateLimitExceeded".to_owned()
            }
        );

        sandbox.state.fail_next(500, "backendError", 1);
        let err = connector.get_event(CAL, "whatever1").await.unwrap_err();
        assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");

        sandbox.state.set_down(true);
        let err = connector.free_busy(&[CAL.to_owned()], window).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
        assert!(err.is_retryable());
        sandbox.state.set_down(false);

        sandbox.state.fail_next(403, "forbiddenForNonOrganizer", 1);
        let err = connector.list_events(CAL, window).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Validation { .. }), "{err:?}");

        connector.set_access_token(SecretString::from("stale".to_owned()));
        let err = connector.list_events(CAL, window).await.unwrap_err();
        assert_eq!(err, ConnectorError::AuthExpired);
        connector.set_access_token(SecretString::from(TOKEN.to_owned()));
        assert!(connector.list_events(CAL, window).await.is_ok());
    }

    #[tokio::test]
    async fn a_slow_vendor_is_a_transient_failure() {
        let (sandbox, _) = setup().await;
        sandbox.state.set_latency(Duration::from_millis(500));
        let client = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
        let connector = GoogleCalendarConnector::new(sandbox.base_url(), SecretString::from(TOKEN.to_owned()), client);
        let err = connector.get_event(CAL, "slowevent").await.unwrap_err();
        assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    }

    #[tokio::test]
    async fn invalid_input_is_a_validation_error() {
        let (_sandbox, connector) = setup().await;
        let mut ev = new_event("x", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        ev.id = "Not-Base32hex!".to_owned();
        let err = connector.create_event(CAL, &ev).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Validation { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn sync_lists_everything_then_only_changes_deletions_included_and_reports_an_expired_token() {
        let (sandbox, connector) = setup().await;
        let connector = connector.with_page_size(1);
        let cal = "owner@example.com";
        let since = ts("2026-11-23T00:00:00Z");
        let past =
            sandbox.state.insert_foreign_event(cal, ts("2026-11-20T10:00:00Z"), ts("2026-11-20T11:00:00Z"), "Old");
        let a = sandbox.state.insert_foreign_event(cal, ts("2026-11-24T10:00:00Z"), ts("2026-11-24T11:00:00Z"), "A");
        let b = sandbox.state.insert_foreign_event(cal, ts("2026-11-25T10:00:00Z"), ts("2026-11-25T11:00:00Z"), "B");
        // Full sync: the events ending after `since`, over pages; the token comes on the last.
        let SyncResult::Changes { changes, cursor } = connector.sync_events(cal, None, since).await.unwrap() else {
            panic!("a full sync has changes")
        };
        let ids: Vec<_> = changes
            .iter()
            .map(|c| match c {
                EventChange::Upserted(e) => e.id.clone(),
                EventChange::Removed { id } => id.clone(),
            })
            .collect();
        assert_eq!(ids, vec![a.clone(), b.clone()], "not {past}");
        // Nothing changed: nothing listed, a cursor again.
        let SyncResult::Changes { changes, cursor } = connector.sync_events(cal, Some(&cursor), since).await.unwrap()
        else {
            panic!("incremental")
        };
        assert!(changes.is_empty(), "{changes:?}");
        // One new event and one deletion: exactly those, the deletion with its cancelled status.
        let c = sandbox.state.insert_foreign_event(cal, ts("2026-11-26T10:00:00Z"), ts("2026-11-26T11:00:00Z"), "C");
        assert!(sandbox.state.cancel_directly(cal, &a));
        let SyncResult::Changes { changes, cursor } = connector.sync_events(cal, Some(&cursor), since).await.unwrap()
        else {
            panic!("incremental")
        };
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(&changes[0], EventChange::Upserted(e) if e.id == c && e.status == "confirmed"));
        assert!(matches!(&changes[1], EventChange::Upserted(e) if e.id == a && e.status == "cancelled"));
        // The provider drops its tokens: 410, reported as Expired (not an error).
        sandbox.state.expire_sync_tokens();
        assert_eq!(connector.sync_events(cal, Some(&cursor), since).await.unwrap(), SyncResult::Expired);
        // A token that was never issued is the vendor's 400, an error.
        assert!(connector.sync_events(cal, Some("not-a-token"), since).await.is_err());
    }

    #[tokio::test]
    async fn watch_opens_a_channel_that_pushes_and_stop_closes_it() {
        let (sandbox, connector) = setup().await;
        // The channel expires on the emulator's clock: a day before the expiration asked below.
        let clock = crate::clock::ManualClock::new(ts("2026-11-23T13:00:00Z"));
        sandbox.state.set_clock(std::sync::Arc::new(clock));
        let cal = "owner@example.com";
        // A receiver standing in for ours: it reports each notification's headers.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<axum::http::HeaderMap>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(headers);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, receiver).await });
        let expires_at = ts("2026-11-24T13:00:00Z");
        let request = SubscribeRequest { id: "chan-1", address: &address, secret: "s3cret-token", expires_at };
        let subscription = connector.subscribe(cal, &request).await.unwrap();
        assert_eq!(subscription.id, "chan-1");
        assert_eq!(subscription.expires_at, expires_at);
        let resource = subscription.resource_id.clone().expect("Google names the watched resource");
        let header = |h: &axum::http::HeaderMap, name: &str| h.get(name).unwrap().to_str().unwrap().to_owned();
        let sync = rx.recv().await.unwrap();
        assert_eq!(header(&sync, "X-Goog-Resource-State"), "sync");
        assert_eq!(header(&sync, "X-Goog-Message-Number"), "1");
        assert_eq!(header(&sync, "X-Goog-Channel-Token"), "s3cret-token");
        assert_eq!(header(&sync, "X-Goog-Resource-ID"), resource);
        sandbox.state.insert_foreign_event(cal, ts("2026-11-24T10:00:00Z"), ts("2026-11-24T11:00:00Z"), "A");
        let change = rx.recv().await.unwrap();
        assert_eq!(header(&change, "X-Goog-Resource-State"), "exists");
        assert_eq!(header(&change, "X-Goog-Channel-ID"), "chan-1");
        assert!(header(&change, "X-Goog-Message-Number").parse::<u64>().unwrap() > 1);
        // Another calendar's change is not this channel's business.
        sandbox.state.insert_foreign_event(
            "other@example.com",
            ts("2026-11-24T10:00:00Z"),
            ts("2026-11-24T11:00:00Z"),
            "B",
        );
        let sent = sandbox.state.channels()[0].message_number;
        connector.unsubscribe(&subscription).await.unwrap();
        assert!(sandbox.state.channels()[0].stopped);
        sandbox.state.insert_foreign_event(cal, ts("2026-11-24T12:00:00Z"), ts("2026-11-24T12:30:00Z"), "C");
        assert_eq!(sandbox.state.channels()[0].message_number, sent, "nothing is sent after the stop");
        // Stopping twice is fine (already gone).
        connector.unsubscribe(&subscription).await.unwrap();
        server.abort();
    }

    #[test]
    fn event_ids_from_keys_are_valid_and_stable() {
        let id = event_id_from_key("hold:7f1c2a");
        assert_eq!(id, event_id_from_key("hold:7f1c2a"));
        assert_ne!(id, event_id_from_key("hold:7f1c2b"));
        assert_eq!(id.len(), 32);
        assert!((5..=1024).contains(&id.len()));
        assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b)), "{id}");
        assert!(event_id_from_key("").bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b)));
        // Pinned: the derivation must never change, or retried holds would create duplicates.
        assert_eq!(event_id_from_key("hold:7f1c2a"), PINNED_ID);
    }

    const PINNED_ID: &str = "foh7omv4b2n1kkh0e2hqnj78q2grpjf1";

    #[test]
    fn calendar_ids_are_percent_encoded_in_paths() {
        let connector = GoogleCalendarConnector::new(
            Url::parse("https://www.googleapis.com").unwrap(),
            SecretString::from("t".to_owned()),
            reqwest::Client::new(),
        );
        let url = connector.url(&["calendars", "front+desk@example.com", "events", "abc/..?#"]).unwrap();
        assert_eq!(
            url.as_str(),
            "https://www.googleapis.com/calendar/v3/calendars/front%2Bdesk%40example.com/events/abc%2F..%3F%23"
        );
        for bad in ["", ".", ".."] {
            assert!(matches!(connector.url(&["calendars", bad, "events"]), Err(ConnectorError::Validation { .. })));
        }
    }

    #[test]
    fn errors_from_googles_guide_are_classified() {
        // Bodies verbatim in shape from
        // https://developers.google.com/workspace/calendar/api/guides/errors
        let bad_request = r#"{"error":{"errors":[{"domain":"calendar","reason":"timeRangeEmpty","message":"The specified time range is empty.","locationType":"parameter","location":"timeMax"}],"code":400,"message":"The specified time range is empty."}}"#;
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, None, bad_request, None),
            ConnectorError::Validation {
                message: "The specified time range is empty.".to_owned(),
                fields: vec!["timeMax".to_owned()],
            }
        );
        let auth = r#"{"error":{"errors":[{"domain":"global","reason":"authError","message":"Invalid Credentials","locationType":"header","location":"Authorization"}],"code":401,"message":"Invalid Credentials"}}"#;
        assert_eq!(classify(StatusCode::UNAUTHORIZED, None, auth, None), ConnectorError::AuthExpired);
        let user_rate = r#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403,"message":"User Rate Limit Exceeded"}}"#;
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, Some(Duration::from_secs(3)), user_rate, None),
            ConnectorError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        let quota = r#"{"error":{"errors":[{"domain":"usageLimits","reason":"quotaExceeded","message":"Calendar usage limits exceeded."}],"code":403,"message":"Calendar usage limits exceeded."}}"#;
        assert!(matches!(classify(StatusCode::FORBIDDEN, None, quota, None), ConnectorError::RateLimited { .. }));
        let duplicate = r#"{"error":{"errors":[{"domain":"global","reason":"duplicate","message":"The requested identifier already exists."}],"code":409,"message":"The requested identifier already exists."}}"#;
        assert_eq!(
            classify(StatusCode::CONFLICT, None, duplicate, Some("abcde")),
            ConnectorError::Conflict {
                message: "The requested identifier already exists.".to_owned(),
                existing_id: Some("abcde".to_owned()),
            }
        );
        let gone = r#"{"error":{"errors":[{"domain":"global","reason":"deleted","message":"Resource has been deleted"}],"code":410,"message":"Resource has been deleted"}}"#;
        assert!(matches!(classify(StatusCode::GONE, None, gone, None), ConnectorError::NotFound(_)));
        let precondition = r#"{"error":{"errors":[{"domain":"global","reason":"conditionNotMet","message":"Precondition Failed","locationType":"header","location":"If-Match"}],"code":412,"message":"Precondition Failed"}}"#;
        assert!(matches!(
            classify(StatusCode::PRECONDITION_FAILED, None, precondition, None),
            ConnectorError::PreconditionFailed(_)
        ));
        let too_many = r#"{"error":{"errors":[{"domain":"usageLimits","reason":"rateLimitExceeded","message":"Rate Limit Exceeded"}],"code":429,"message":"Rate Limit Exceeded"}}"#;
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, None, too_many, None),
            ConnectorError::RateLimited { .. }
        ));
        let backend = r#"{"error":{"errors":[{"domain":"global","reason":"backendError","message":"Backend Error"}],"code":500,"message":"Backend Error"}}"#;
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, None, backend, None),
            ConnectorError::Transient(_)
        ));
        // A proxy's HTML page is still classified by status.
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, "<html>bad gateway</html>", None),
            ConnectorError::Transient(_)
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, None, "", None),
            ConnectorError::NotFound(m) if m == "Not Found"
        ));
    }

    /// Golden: the Event example from Google's "Create events" guide,
    /// <https://developers.google.com/workspace/calendar/api/guides/create-events>
    /// (the JavaScript object there, as JSON; `24 * 60` written out as 1440). Google's docs show
    /// no complete server response, so the server-assigned `id`, `etag` and `status` are absent
    /// here; the conversion must say so rather than invent them.
    const GOOGLE_CREATE_EVENTS_EXAMPLE: &str = r#"{
      "summary": "Google I/O 2015",
      "location": "800 Howard St., San Francisco, CA 94103",
      "description": "A chance to hear more about Google's developer products.",
      "start": {
        "dateTime": "2015-05-28T09:00:00-07:00",
        "timeZone": "America/Los_Angeles"
      },
      "end": {
        "dateTime": "2015-05-28T17:00:00-07:00",
        "timeZone": "America/Los_Angeles"
      },
      "recurrence": [
        "RRULE:FREQ=DAILY;COUNT=2"
      ],
      "attendees": [
        {"email": "lpage@example.com"},
        {"email": "sbrin@example.com"}
      ],
      "reminders": {
        "useDefault": false,
        "overrides": [
          {"method": "email", "minutes": 1440},
          {"method": "popup", "minutes": 10}
        ]
      }
    }"#;

    #[test]
    fn golden_event_from_googles_create_events_guide() {
        let event: EventResource = serde_json::from_str(GOOGLE_CREATE_EVENTS_EXAMPLE).unwrap();
        assert_eq!(event.summary.as_deref(), Some("Google I/O 2015"));
        assert_eq!(event.transparency, None, "opaque by default");
        assert!(event.extended_properties.is_none());
        let start = event.start.as_ref().unwrap();
        assert_eq!(start.time_zone.as_deref(), Some("America/Los_Angeles"));
        assert_eq!(start.resolve(None).unwrap(), ts("2015-05-28T16:00:00Z"));
        assert_eq!(event.end.as_ref().unwrap().resolve(None).unwrap(), ts("2015-05-29T00:00:00Z"));
        // Without the server-assigned id the resource is not a stored event.
        assert!(matches!(event.into_calendar_event(None), Err(ConnectorError::Permanent(_))));

        // The same example as a server response would carry it (id, etag, status added).
        let mut value: Value = serde_json::from_str(GOOGLE_CREATE_EVENTS_EXAMPLE).unwrap();
        value["id"] = json!("abcdef0123");
        value["etag"] = json!("\"3181161784712000\"");
        value["status"] = json!("confirmed");
        let event: EventResource = serde_json::from_value(value).unwrap();
        let event = event.into_calendar_event(None).unwrap();
        assert_eq!(event.start, ts("2015-05-28T16:00:00Z"));
        assert_eq!(event.end, ts("2015-05-29T00:00:00Z"));
        assert_eq!(event.etag.as_deref(), Some("\"3181161784712000\""));
        assert_eq!(event.status, "confirmed");
        assert_eq!(event.summary.as_deref(), Some("Google I/O 2015"));
        assert!(event.busy);
        assert_eq!(event.call_id, None);
    }

    #[test]
    fn all_day_and_zone_only_times_resolve() {
        let page: EventsPage = serde_json::from_value(json!({
            "timeZone": "Europe/Berlin",
            "items": [
                {"id": "allday01", "start": {"date": "2026-11-23"}, "end": {"date": "2026-11-24"}},
                {"id": "zoned001", "start": {"dateTime": "2026-11-23T10:00:00", "timeZone": "America/New_York"},
                 "end": {"dateTime": "2026-11-23T11:00:00", "timeZone": "America/New_York"},
                 "transparency": "transparent"}
            ]
        }))
        .unwrap();
        let zone = page.time_zone.clone();
        let mut items = page.items.into_iter();
        let all_day = items.next().unwrap().into_calendar_event(zone.as_deref()).unwrap();
        assert_eq!(all_day.start, ts("2026-11-22T23:00:00Z"));
        assert_eq!(all_day.end, ts("2026-11-23T23:00:00Z"));
        let zoned = items.next().unwrap().into_calendar_event(zone.as_deref()).unwrap();
        assert_eq!(zoned.start, ts("2026-11-23T15:00:00Z"));
        assert!(!zoned.busy);
        let deleted: EventResource = serde_json::from_value(json!({"id": "gone0001", "status": "cancelled"})).unwrap();
        assert!(matches!(deleted.into_calendar_event(None), Err(ConnectorError::NotFound(_))));
    }

    #[test]
    fn merge_clips_sorts_and_joins() {
        let w = Interval::new(ts("2026-11-23T09:00:00Z"), ts("2026-11-23T17:00:00Z"));
        let got = merge_intervals(
            vec![
                Interval::new(ts("2026-11-23T12:00:00Z"), ts("2026-11-23T13:00:00Z")),
                Interval::new(ts("2026-11-23T08:00:00Z"), ts("2026-11-23T10:00:00Z")),
                Interval::new(ts("2026-11-23T10:00:00Z"), ts("2026-11-23T10:30:00Z")),
                Interval::new(ts("2026-11-23T12:30:00Z"), ts("2026-11-23T12:45:00Z")),
                Interval::new(ts("2026-11-23T18:00:00Z"), ts("2026-11-23T19:00:00Z")),
            ],
            w,
        );
        assert_eq!(
            got,
            vec![
                Interval::new(ts("2026-11-23T09:00:00Z"), ts("2026-11-23T10:30:00Z")),
                Interval::new(ts("2026-11-23T12:00:00Z"), ts("2026-11-23T13:00:00Z")),
            ]
        );
    }

    /// Every field the connector sends exists in the discovery document's request schema.
    #[test]
    fn request_bodies_use_only_discovery_fields() {
        let text = std::fs::read_to_string(DISCOVERY)
            .unwrap_or_else(|err| panic!("discovery document missing at {DISCOVERY}: {err}"));
        let doc: Value = serde_json::from_str(&text).unwrap();
        fn check(value: &Value, schema: &Value, doc: &Value, path: &str, errors: &mut Vec<String>) {
            let schema = match schema.get("$ref").and_then(Value::as_str) {
                Some(name) => &doc["schemas"][name],
                None => schema,
            };
            match value {
                Value::Object(map) => {
                    for (key, child) in map {
                        let sub = schema["properties"].get(key).or_else(|| schema.get("additionalProperties"));
                        match sub {
                            Some(sub) => check(child, sub, doc, &format!("{path}.{key}"), errors),
                            None => errors.push(format!("{path}.{key}")),
                        }
                    }
                }
                Value::Array(items) => {
                    for item in items {
                        check(item, &schema["items"], doc, &format!("{path}[]"), errors);
                    }
                }
                _ => {}
            }
        }
        let mut errors = Vec::new();
        let ev = new_event("k", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        check(&insert_body(&ev).unwrap(), &json!({"$ref": "Event"}), &doc, "insert", &mut errors);
        let patch = serde_json::to_value(PatchTimes {
            start: DateTimeOut { date_time: "x".into(), time_zone: None },
            end: DateTimeOut { date_time: "x".into(), time_zone: None },
        })
        .unwrap();
        check(&patch, &json!({"$ref": "Event"}), &doc, "patch", &mut errors);
        let fb = serde_json::to_value(FreeBusyRequest {
            time_min: "x".into(),
            time_max: "y".into(),
            time_zone: "UTC",
            items: vec![FreeBusyItem { id: "a" }],
        })
        .unwrap();
        check(&fb, &json!({"$ref": "FreeBusyRequest"}), &doc, "freeBusy", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");

        // The dateTime we send is RFC 3339 with the zone's offset.
        let body = insert_body(&ev).unwrap();
        assert_eq!(body["start"]["dateTime"], "2026-11-23T10:00:00-05:00");
        assert_eq!(body["start"]["timeZone"], "America/New_York");
        assert_eq!(
            body["reminders"],
            json!({"useDefault": false, "overrides": [
            {"method": "popup", "minutes": 15}, {"method": "popup", "minutes": 60}]})
        );
    }
}
