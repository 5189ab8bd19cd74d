//! CalDAV calendar connector (RFC 4791) with a small iCalendar (RFC 5545) reader/writer.
//!
//! Calendar ids in tenant config are calendar collection URLs, absolute or relative to the
//! configured base URL (`/dav/front-desk/` or `https://dav.example.com/dav/front-desk/`); they
//! must stay on the base URL's origin so credentials never travel elsewhere. An event id is the
//! name of its resource without `.ics`; events callside creates have that id as their `UID` too.
//!
//! | Operation | Request |
//! |---|---|
//! | free/busy | `REPORT` `CALDAV:free-busy-query` with a `time-range` (RFC 4791 §7.10), per calendar; `FREEBUSY` periods with `FBTYPE` other than `FREE` are busy |
//! | create | `PUT {collection}/{id}.ics` with `If-None-Match: *` (RFC 4791 §5.3.2); 412 → `Conflict` with the id |
//! | get | `GET {collection}/{id}.ics`; the `ETag` header is the event's etag |
//! | list | `REPORT` `CALDAV:calendar-query` with `time-range` and `<C:expand>` (RFC 4791 §7.8, §9.6.5) |
//! | move | `GET`, rewrite `DTSTART`/`DTEND`, `PUT` with `If-Match` (the caller's etag, else the one just read); 412 → `PreconditionFailed` |
//! | cancel | `DELETE {collection}/{id}.ics` |
//! | sync | `REPORT` `DAV:sync-collection` (RFC 6578 §3.2) with the last `DAV:sync-token` (empty for a full sync) and `sync-level` 1; a response without 200 propstat is a removed resource; an invalid token (403/409 with `DAV:valid-sync-token`, §3.2) is `SyncResult::Expired` |
//!
//! Behaviour worth knowing:
//!
//! - Servers that do not implement `free-busy-query` (it is optional in practice; a 400, 403,
//!   405, 415 or 501 answer) are asked with `calendar-query` instead and busy time is computed
//!   from the events: not `TRANSP:TRANSPARENT`, not `STATUS:CANCELLED` — the same rules
//!   RFC 4791 §7.10 gives servers. Radicale 3.9 implements `free-busy-query` (verified in the
//!   tests against a real Radicale).
//! - `<C:expand>` asks the server to return recurring events as UTC instances with
//!   `RECURRENCE-ID`; Radicale does. A server that ignores it returns the master, and only its
//!   first occurrence is considered.
//! - Times are written in UTC (`DTSTART:20261123T150000Z`), which needs no `VTIMEZONE`
//!   (RFC 5545 §3.3.5 form #2). Read: UTC, `TZID=` with an IANA name (also as the suffix of a
//!   path-like TZID such as `/mozilla.org/20050126_1/Europe/Berlin`), floating and `VALUE=DATE`
//!   values are read in UTC; an unknown `TZID` (a Windows name with a custom `VTIMEZONE`) is read
//!   in UTC with a warning. A missing `DTEND` is `DTSTART + DURATION`, or one day for a date,
//!   or zero (RFC 5545 §3.6.1).
//! - Our markers are the properties `X-CALLSIDE-CALL-ID` and `X-CALLSIDE-SERVICE`.
//! - **Cancel does not notify anybody**: plain CalDAV servers such as Radicale have no
//!   scheduling (RFC 6638 is not implemented), so `notify` is ignored here and the caller sends
//!   the cancellation through the tenant's notification webhook. For the same reason the caller's
//!   email is written into `DESCRIPTION`, not as an `ATTENDEE` (an attendee without scheduling
//!   would never hear of the event, and some servers reject `ATTENDEE` without `ORGANIZER`).
//! - `DELETE` is unconditional: the trait's `cancel_event` carries no etag.

use std::time::Duration;

use async_trait::async_trait;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{CalendarConnector, CalendarEvent, EventChange, Interval, NewEvent, SyncResult, merge_intervals};
use crate::connectors::{ConnectorError, encode_path_segment, longest, parse_retry_after, truncate_bytes};

/// Property carrying the call id on events callside creates.
pub const CALL_ID_PROPERTY: &str = "X-CALLSIDE-CALL-ID";
/// Property carrying the service id on events callside creates.
pub const SERVICE_PROPERTY: &str = "X-CALLSIDE-SERVICE";
const PRODID: &str = concat!("-//callside//callside ", env!("CARGO_PKG_VERSION"), "//EN");

/// How the connector authenticates.
#[derive(Debug, Clone)]
pub enum CalDavAuth {
    None,
    /// HTTP Basic (most CalDAV servers; app passwords for iCloud/Fastmail).
    Basic {
        username: String,
        password: SecretString,
    },
    /// OAuth bearer token.
    Bearer(SecretString),
}

/// A CalDAV server.
#[derive(Debug)]
pub struct CalDavConnector {
    base_url: Url,
    auth: CalDavAuth,
    client: reqwest::Client,
    organizer: Option<Organizer>,
}

/// The organizer written on created events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organizer {
    pub name: String,
    pub email: String,
}

/// The base URL with its path ending in `/`, so relative calendar ids resolve below it.
pub fn with_trailing_slash(mut base_url: Url) -> Url {
    if !base_url.path().ends_with('/') {
        let path = format!("{}/", base_url.path());
        base_url.set_path(&path);
    }
    base_url
}

/// The collection URL of a calendar id (absolute, or relative to `base_url`), with a trailing
/// slash; an id leading to another origin is refused so credentials never travel elsewhere.
pub fn collection_url(base_url: &Url, calendar_id: &str) -> Result<Url, ConnectorError> {
    let invalid = || ConnectorError::Validation {
        message: "calendar id is not a collection URL on the CalDAV server".to_owned(),
        fields: vec!["calendar_id".to_owned()],
    };
    if calendar_id.trim().is_empty() {
        return Err(invalid());
    }
    let mut url = base_url.join(calendar_id).map_err(|_| invalid())?;
    if url.origin() != base_url.origin() {
        return Err(invalid());
    }
    url.set_query(None);
    url.set_fragment(None);
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// A raw answer the connector inspects itself.
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: String,
}

impl CalDavConnector {
    pub fn new(base_url: Url, auth: CalDavAuth, client: reqwest::Client) -> Self {
        Self { base_url: with_trailing_slash(base_url), auth, client, organizer: None }
    }

    /// Writes `ORGANIZER;CN=<name>:mailto:<email>` on the events this connector creates (the
    /// business). Without scheduling (RFC 6638) on the server nobody is invited by it; it tells
    /// whoever opens the event in a client who booked it.
    pub fn with_organizer(mut self, name: &str, email: &str) -> Self {
        self.organizer = Some(Organizer { name: name.to_owned(), email: email.to_owned() });
        self
    }

    /// The collection URL of a calendar id, with a trailing slash.
    pub fn collection_url(&self, calendar_id: &str) -> Result<Url, ConnectorError> {
        collection_url(&self.base_url, calendar_id)
    }

    /// The resource URL of an event: `{collection}{id}.ics`, the id percent-encoded.
    pub fn resource_url(&self, calendar_id: &str, event_id: &str) -> Result<Url, ConnectorError> {
        if matches!(event_id, "" | "." | "..") {
            return Err(ConnectorError::Validation {
                message: "empty or dot-segment event id".to_owned(),
                fields: vec!["id".to_owned()],
            });
        }
        let collection = self.collection_url(calendar_id)?;
        collection
            .join(&format!("{}.ics", encode_path_segment(event_id)))
            .map_err(|_| ConnectorError::Permanent("invalid CalDAV resource URL".to_owned()))
    }

    /// Creates the calendar collection (`MKCALENDAR`, RFC 4791 §5.3.1). 405 (it exists) is fine.
    pub async fn create_calendar(&self, calendar_id: &str, display_name: &str) -> Result<(), ConnectorError> {
        let url = self.collection_url(calendar_id)?;
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:set><D:prop>
    <D:displayname>{}</D:displayname>
    <C:supported-calendar-component-set><C:comp name="VEVENT"/></C:supported-calendar-component-set>
  </D:prop></D:set>
</C:mkcalendar>"#,
            xml_escape(display_name)
        );
        let method = Method::from_bytes(b"MKCALENDAR").expect("valid method");
        let answer = self.request(method, url, &[], Some(("application/xml; charset=utf-8", body))).await?;
        match answer.status {
            s if s.is_success() => Ok(()),
            StatusCode::METHOD_NOT_ALLOWED => Ok(()),
            s => Err(classify(s, None, &answer.body, None, &self.auth)),
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, ConnectorError> {
        Ok(match &self.auth {
            CalDavAuth::None => request,
            CalDavAuth::Basic { username, password } => request.basic_auth(username, Some(password.expose_secret())),
            CalDavAuth::Bearer(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                    .map_err(|_| ConnectorError::Permanent("access token is not a valid header value".to_owned()))?;
                value.set_sensitive(true);
                request.header(header::AUTHORIZATION, value)
            }
        })
    }

    /// Sends a request; transport failures and 429/5xx are errors, everything else is returned.
    async fn request(
        &self,
        method: Method,
        url: Url,
        headers: &[(&'static str, String)],
        body: Option<(&'static str, String)>,
    ) -> Result<Answer, ConnectorError> {
        let mut request = self.authorize(self.client.request(method, url))?;
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|_| ConnectorError::Validation {
                message: format!("{name} is not a valid header value"),
                fields: vec![(*name).to_owned()],
            })?;
            request = request.header(*name, value);
        }
        if let Some((content_type, body)) = body {
            request = request.header(header::CONTENT_TYPE, content_type).body(body);
        }
        let response = request.send().await.map_err(|err| ConnectorError::from_transport(&err))?;
        let status = response.status();
        let etag = response.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Timestamp::now()));
        let body = response.text().await.map_err(|err| ConnectorError::from_transport(&err))?;
        // 501 Not Implemented is an answer ("this server does not do that"), not an outage.
        if status == StatusCode::TOO_MANY_REQUESTS
            || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
        {
            return Err(classify(status, retry_after, &body, None, &self.auth));
        }
        Ok(Answer { status, etag, body })
    }

    async fn report(&self, url: Url, body: String) -> Result<Answer, ConnectorError> {
        let method = Method::from_bytes(b"REPORT").expect("valid method");
        self.request(method, url, &[("Depth", "1".to_owned())], Some(("application/xml; charset=utf-8", body))).await
    }

    /// `free-busy-query` for one calendar; `Ok(None)` when the server does not support it.
    async fn free_busy_query(
        &self,
        calendar_id: &str,
        window: Interval,
    ) -> Result<Option<Vec<Interval>>, ConnectorError> {
        let url = self.collection_url(calendar_id)?;
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<C:free-busy-query xmlns:C="urn:ietf:params:xml:ns:caldav">
  <C:time-range start="{}" end="{}"/>
</C:free-busy-query>"#,
            ical_utc(window.start),
            ical_utc(window.end)
        );
        let answer = self.report(url, body).await?;
        match answer.status {
            StatusCode::OK => parse_free_busy(&answer.body).map(Some),
            StatusCode::BAD_REQUEST
            | StatusCode::FORBIDDEN
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::NOT_IMPLEMENTED => Ok(None),
            s => Err(classify(s, None, &answer.body, None, &self.auth)),
        }
    }

    /// `calendar-query` with `time-range` and `expand`: every VEVENT instance with its resource.
    async fn query(&self, calendar_id: &str, window: Interval) -> Result<Vec<CalendarEvent>, ConnectorError> {
        let url = self.collection_url(calendar_id)?;
        let (start, end) = (ical_utc(window.start), ical_utc(window.end));
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:prop>
    <D:getetag/>
    <C:calendar-data><C:expand start="{start}" end="{end}"/></C:calendar-data>
  </D:prop>
  <C:filter>
    <C:comp-filter name="VCALENDAR">
      <C:comp-filter name="VEVENT"><C:time-range start="{start}" end="{end}"/></C:comp-filter>
    </C:comp-filter>
  </C:filter>
</C:calendar-query>"#
        );
        let answer = self.report(url, body).await?;
        if answer.status != StatusCode::MULTI_STATUS {
            return Err(classify(answer.status, None, &answer.body, None, &self.auth));
        }
        let mut events = Vec::new();
        for item in parse_multistatus(&answer.body)? {
            let Some(data) = item.calendar_data else { continue };
            let id = id_from_href(&item.href)?;
            let calendar = parse_calendar(&data)?;
            for vevent in calendar.components("VEVENT") {
                let event = vevent_to_event(vevent, &id, item.etag.clone())?;
                if event.status == "cancelled" {
                    continue;
                }
                if event.end > window.start && event.start < window.end
                    || (event.start == event.end && event.start >= window.start && event.start < window.end)
                {
                    events.push(event);
                }
            }
        }
        events.sort_by(|a, b| (a.start, a.end, &a.id).cmp(&(b.start, b.end, &b.id)));
        Ok(events)
    }

    async fn fetch(&self, calendar_id: &str, event_id: &str) -> Result<(Component, Option<String>), ConnectorError> {
        let url = self.resource_url(calendar_id, event_id)?;
        let answer = self.request(Method::GET, url, &[("Accept", "text/calendar".to_owned())], None).await?;
        if !answer.status.is_success() {
            return Err(classify(answer.status, None, &answer.body, None, &self.auth));
        }
        Ok((parse_calendar(&answer.body)?, answer.etag))
    }

    async fn etag_of(
        &self,
        calendar_id: &str,
        event_id: &str,
        etag: Option<String>,
    ) -> Result<Option<String>, ConnectorError> {
        if etag.is_some() {
            return Ok(etag);
        }
        // Servers may omit ETag on a PUT whose stored form differs from what was sent
        // (RFC 4791 §5.3.4); read it back.
        Ok(self.fetch(calendar_id, event_id).await?.1)
    }
}

#[async_trait]
impl CalendarConnector for CalDavConnector {
    fn provider(&self) -> &'static str {
        "caldav"
    }

    fn notifies_attendees(&self) -> bool {
        false
    }

    async fn free_busy(&self, calendar_ids: &[String], window: Interval) -> Result<Vec<Interval>, ConnectorError> {
        if calendar_ids.is_empty() || window.start >= window.end {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        for id in calendar_ids {
            match self.free_busy_query(id, window).await? {
                Some(busy) => all.extend(busy),
                None => {
                    let events = self.query(id, window).await?;
                    all.extend(events.into_iter().filter(|e| e.busy).map(|e| Interval::new(e.start, e.end)));
                }
            }
        }
        Ok(merge_intervals(all, window))
    }

    async fn create_event(&self, calendar_id: &str, event: &NewEvent) -> Result<CalendarEvent, ConnectorError> {
        if event.start >= event.end {
            return Err(ConnectorError::Validation {
                message: "event ends before it starts".to_owned(),
                fields: vec!["end".to_owned()],
            });
        }
        let url = self.resource_url(calendar_id, &event.id)?;
        let body = write_event_with(event, Timestamp::now(), self.organizer.as_ref());
        let answer = self
            .request(
                Method::PUT,
                url,
                &[("If-None-Match", "*".to_owned())],
                Some(("text/calendar; charset=utf-8", body)),
            )
            .await?;
        match answer.status {
            s if s.is_success() => {}
            StatusCode::PRECONDITION_FAILED => {
                return Err(ConnectorError::Conflict {
                    message: "an event with this id already exists".to_owned(),
                    existing_id: Some(event.id.clone()),
                });
            }
            // RFC 4791 §5.3.2.1: another resource in the collection already uses this UID.
            StatusCode::FORBIDDEN | StatusCode::CONFLICT if answer.body.contains("no-uid-conflict") => {
                return Err(ConnectorError::Conflict {
                    message: "another resource already uses this UID".to_owned(),
                    existing_id: None,
                });
            }
            s => return Err(classify(s, None, &answer.body, Some(&event.id), &self.auth)),
        }
        let etag = self.etag_of(calendar_id, &event.id, answer.etag).await?;
        Ok(CalendarEvent {
            id: event.id.clone(),
            summary: Some(event.summary.clone()),
            start: event.start,
            end: event.end,
            status: "confirmed".to_owned(),
            etag,
            call_id: Some(event.call_id.clone()),
            busy: true,
            updated: None,
        })
    }

    async fn get_event(&self, calendar_id: &str, event_id: &str) -> Result<CalendarEvent, ConnectorError> {
        let (calendar, etag) = self.fetch(calendar_id, event_id).await?;
        let master = master_event(&calendar)?;
        vevent_to_event(master, event_id, etag)
    }

    async fn list_events(&self, calendar_id: &str, window: Interval) -> Result<Vec<CalendarEvent>, ConnectorError> {
        if window.start >= window.end {
            return Ok(Vec::new());
        }
        self.query(calendar_id, window).await
    }

    async fn move_event(
        &self,
        calendar_id: &str,
        event_id: &str,
        start: Timestamp,
        end: Timestamp,
        etag: Option<&str>,
    ) -> Result<CalendarEvent, ConnectorError> {
        if start >= end {
            return Err(ConnectorError::Validation {
                message: "event ends before it starts".to_owned(),
                fields: vec!["end".to_owned()],
            });
        }
        let (mut calendar, current_etag) = self.fetch(calendar_id, event_id).await?;
        if let (Some(expected), Some(current)) = (etag, current_etag.as_deref())
            && expected != current
        {
            return Err(ConnectorError::PreconditionFailed("the event changed since it was read".to_owned()));
        }
        let condition = etag.map(str::to_owned).or(current_etag).ok_or_else(|| {
            ConnectorError::Permanent("the CalDAV server sent no ETag; cannot update safely".to_owned())
        })?;
        let master = master_event_mut(&mut calendar)?;
        if master.property("RRULE").is_some() || master.property("RDATE").is_some() {
            return Err(ConnectorError::Validation {
                message: "recurring events are not moved by callside".to_owned(),
                fields: vec!["id".to_owned()],
            });
        }
        let now = Timestamp::now();
        let sequence = master.property("SEQUENCE").and_then(|p| p.value.trim().parse::<i64>().ok()).unwrap_or(0);
        master.set("DTSTART", &ical_utc(start));
        master.set("DTEND", &ical_utc(end));
        master.remove("DURATION");
        master.set("SEQUENCE", &(sequence + 1).to_string());
        master.set("DTSTAMP", &ical_utc(now));
        master.set("LAST-MODIFIED", &ical_utc(now));
        let url = self.resource_url(calendar_id, event_id)?;
        let answer = self
            .request(
                Method::PUT,
                url,
                &[("If-Match", condition)],
                Some(("text/calendar; charset=utf-8", calendar.to_ical())),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(classify(answer.status, None, &answer.body, None, &self.auth));
        }
        let etag = self.etag_of(calendar_id, event_id, answer.etag).await?;
        let mut event = vevent_to_event(master_event(&calendar)?, event_id, etag)?;
        event.start = start;
        event.end = end;
        Ok(event)
    }

    async fn cancel_event(&self, calendar_id: &str, event_id: &str, _notify: bool) -> Result<(), ConnectorError> {
        // No scheduling on plain CalDAV: nobody is notified here (see the module docs).
        let url = self.resource_url(calendar_id, event_id)?;
        let answer = self.request(Method::DELETE, url, &[], None).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        Err(classify(answer.status, None, &answer.body, None, &self.auth))
    }

    fn syncs_changes(&self) -> bool {
        true
    }

    /// `sync-collection` (RFC 6578): every resource changed or removed since the token; the
    /// full sync (no token) lists the whole collection, so `since` does not narrow it. A
    /// recurring event's change is reported with its first instance's times.
    async fn sync_events(
        &self,
        calendar_id: &str,
        cursor: Option<&str>,
        _since: Timestamp,
    ) -> Result<SyncResult, ConnectorError> {
        let url = self.collection_url(calendar_id)?;
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<D:sync-collection xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:sync-token>{}</D:sync-token>
  <D:sync-level>1</D:sync-level>
  <D:prop>
    <D:getetag/>
    <C:calendar-data/>
  </D:prop>
</D:sync-collection>"#,
            xml_escape(cursor.unwrap_or(""))
        );
        let answer = self.report(url, body).await?;
        if cursor.is_some()
            && matches!(answer.status, StatusCode::FORBIDDEN | StatusCode::CONFLICT)
            && answer.body.contains("valid-sync-token")
        {
            return Ok(SyncResult::Expired);
        }
        if answer.status != StatusCode::MULTI_STATUS {
            return Err(classify(answer.status, None, &answer.body, None, &self.auth));
        }
        let token = sync_token_of(&answer.body)?.ok_or_else(|| unexpected("sync-collection without a sync-token"))?;
        let mut changes = Vec::new();
        for item in parse_multistatus(&answer.body)? {
            let id = id_from_href(&item.href)?;
            let Some(data) = item.calendar_data else {
                changes.push(EventChange::Removed { id });
                continue;
            };
            let calendar = parse_calendar(&data)?;
            if let Some(vevent) = calendar.components("VEVENT").next() {
                changes.push(EventChange::Upserted(vevent_to_event(vevent, &id, item.etag.clone())?));
            }
        }
        Ok(SyncResult::Changes { changes, cursor: token })
    }
}

/// The `DAV:sync-token` a `sync-collection` multistatus ends with (a child of `multistatus`).
fn sync_token_of(xml: &str) -> Result<Option<String>, ConnectorError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_event().map_err(|_| unexpected("malformed multistatus XML"))? {
            Event::Start(e) => {
                stack.push(e.local_name().as_ref().to_owned());
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                if name == "sync-token" && stack.last().map(String::as_str) == Some("multistatus") {
                    return Ok(Some(text.trim().to_owned()));
                }
                text.clear();
            }
            Event::Eof => return Ok(None),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Error classification
// ---------------------------------------------------------------------------------------------

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    existing_id: Option<&str>,
    auth: &CalDavAuth,
) -> ConnectorError {
    // Server bodies are text or a DAV:error element; keep a short first line only.
    let detail = body.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let detail = format!("{} {}", status.as_u16(), truncate_bytes(detail, 200));
    match status {
        StatusCode::TOO_MANY_REQUESTS => ConnectorError::RateLimited { retry_after: longest([retry_after]), detail },
        StatusCode::NOT_IMPLEMENTED => ConnectorError::Permanent(detail),
        s if s.is_server_error() => ConnectorError::Transient(detail),
        StatusCode::UNAUTHORIZED => match auth {
            CalDavAuth::Bearer(_) => ConnectorError::AuthExpired,
            _ => ConnectorError::AuthRevoked("the CalDAV server rejected the credentials".to_owned()),
        },
        StatusCode::NOT_FOUND | StatusCode::GONE => ConnectorError::NotFound(detail),
        StatusCode::PRECONDITION_FAILED => ConnectorError::PreconditionFailed(detail),
        StatusCode::CONFLICT => {
            ConnectorError::Conflict { message: detail, existing_id: existing_id.map(str::to_owned) }
        }
        StatusCode::FORBIDDEN => ConnectorError::Permanent(detail),
        s if s.is_client_error() => ConnectorError::Validation { message: detail, fields: Vec::new() },
        _ => ConnectorError::Permanent(format!("unexpected status {detail}")),
    }
}

fn unexpected(what: &str) -> ConnectorError {
    ConnectorError::Permanent(format!("unexpected response from the CalDAV server: {what}"))
}

// ---------------------------------------------------------------------------------------------
// WebDAV XML
// ---------------------------------------------------------------------------------------------

/// One `DAV:response` of a multistatus with a 200 propstat.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DavItem {
    pub href: String,
    pub etag: Option<String>,
    pub calendar_data: Option<String>,
}

/// Parses a `207 Multi-Status` body (RFC 4918 §13). Elements are matched by local name
/// (`response`, `href`, `propstat`, `status`, `getetag`, `calendar-data`): the DAV: and CalDAV
/// namespaces do not reuse these names, and servers differ in the prefixes they pick.
pub fn parse_multistatus(xml: &str) -> Result<Vec<DavItem>, ConnectorError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut items = Vec::new();
    let mut current: Option<DavItem> = None;
    // Properties of the propstat being read, applied only when its status is 200.
    let mut prop_etag: Option<String> = None;
    let mut prop_data: Option<String> = None;
    let mut prop_status: Option<String> = None;
    let mut text = String::new();
    loop {
        let event = reader.read_event().map_err(|_| unexpected("malformed multistatus XML"))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_owned();
                match name.as_str() {
                    "response" => current = Some(DavItem::default()),
                    "propstat" => {
                        prop_etag = None;
                        prop_data = None;
                        prop_status = None;
                    }
                    _ => {}
                }
                stack.push(name);
                text.clear();
            }
            Event::Empty(_) => {}
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::CData(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    text.push(c);
                } else {
                    match r.into_inner().as_ref() {
                        "amp" => text.push('&'),
                        "lt" => text.push('<'),
                        "gt" => text.push('>'),
                        "quot" => text.push('"'),
                        "apos" => text.push('\''),
                        _ => return Err(unexpected("unknown XML entity")),
                    }
                }
            }
            Event::End(_) => {
                let name = stack.pop().unwrap_or_default();
                let parent = stack.last().map(String::as_str);
                match name.as_str() {
                    "href" if parent == Some("response") => {
                        if let Some(item) = current.as_mut() {
                            item.href = text.trim().to_owned();
                        }
                    }
                    "getetag" => prop_etag = Some(text.trim().to_owned()),
                    "calendar-data" => prop_data = Some(text.clone()),
                    "status" if parent == Some("propstat") => prop_status = Some(text.trim().to_owned()),
                    "propstat" => {
                        let ok = prop_status.as_deref().is_some_and(|s| s.split_whitespace().nth(1) == Some("200"));
                        if ok && let Some(item) = current.as_mut() {
                            if prop_etag.is_some() {
                                item.etag = prop_etag.take();
                            }
                            if prop_data.is_some() {
                                item.calendar_data = prop_data.take();
                            }
                        }
                    }
                    "response" => {
                        if let Some(item) = current.take()
                            && !item.href.is_empty()
                        {
                            items.push(item);
                        }
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(items)
}

fn xml_escape(value: &str) -> String {
    value.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The event id of a resource href: its last segment, percent-decoded, without `.ics`.
fn id_from_href(href: &str) -> Result<String, ConnectorError> {
    let path = href.split(['?', '#']).next().unwrap_or("");
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let decoded = percent_decode(last).ok_or_else(|| unexpected("href is not valid percent-encoded UTF-8"))?;
    let id = decoded.strip_suffix(".ics").unwrap_or(&decoded).to_owned();
    if id.is_empty() {
        return Err(unexpected("empty resource name in href"));
    }
    Ok(id)
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// iCalendar (RFC 5545)
// ---------------------------------------------------------------------------------------------

/// One content line (RFC 5545 §3.1): `NAME *(";" param) ":" value`, unfolded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// Upper-cased name.
    pub name: String,
    /// Parameters with upper-cased names; values unquoted.
    pub params: Vec<(String, Vec<String>)>,
    /// The raw value (text values still escaped; see [`unescape_text`]).
    pub value: String,
}

impl Property {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.first()).map(String::as_str)
    }

    fn to_line(&self) -> String {
        let mut line = self.name.clone();
        for (name, values) in &self.params {
            line.push(';');
            line.push_str(name);
            line.push('=');
            let rendered: Vec<String> = values
                .iter()
                .map(|v| if v.contains([':', ';', ',']) { format!("\"{v}\"") } else { v.clone() })
                .collect();
            line.push_str(&rendered.join(","));
        }
        line.push(':');
        line.push_str(&self.value);
        line
    }
}

/// A component (`VCALENDAR`, `VEVENT`, `VALARM`, ...) with its properties and children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Component {
    pub name: String,
    pub properties: Vec<Property>,
    pub children: Vec<Component>,
}

impl Component {
    pub fn property(&self, name: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// Direct children named `name` (for a parsed document: inside the VCALENDAR).
    pub fn components<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Component> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    fn set(&mut self, name: &str, value: &str) {
        match self.properties.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.params.clear();
                p.value = value.to_owned();
            }
            None => {
                self.properties.push(Property { name: name.to_owned(), params: Vec::new(), value: value.to_owned() })
            }
        }
    }

    fn remove(&mut self, name: &str) {
        self.properties.retain(|p| p.name != name);
    }

    /// Serialises with CRLF line ends and folding at 75 octets.
    pub fn to_ical(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        push_folded(out, &format!("BEGIN:{}", self.name));
        for p in &self.properties {
            push_folded(out, &p.to_line());
        }
        for c in &self.children {
            c.write(out);
        }
        push_folded(out, &format!("END:{}", self.name));
    }
}

/// Unfolds (RFC 5545 §3.1: a line break followed by one space or tab continues the line) and
/// splits into logical lines. Accepts CRLF and bare LF.
pub fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = raw.strip_prefix([' ', '\t'])
            && let Some(last) = lines.last_mut()
        {
            last.push_str(rest);
            continue;
        }
        if !raw.is_empty() {
            lines.push(raw.to_owned());
        }
    }
    lines
}

/// Folds one logical line into `out`: at most 75 octets per physical line, never splitting a
/// UTF-8 character, continuation lines starting with a space; CRLF after each.
fn push_folded(out: &mut String, line: &str) {
    let mut limit = 75;
    let mut rest = line;
    let mut first = true;
    while !rest.is_empty() {
        if !first {
            out.push(' ');
        }
        let mut cut = rest.len().min(limit);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&rest[..cut]);
        out.push_str("\r\n");
        rest = &rest[cut..];
        first = false;
        limit = 74; // the leading space counts
    }
}

fn parse_property(line: &str) -> Option<Property> {
    // Name up to the first ';' or ':'; parameter values may be quoted and contain ':' ';' ','.
    let name_end = line.find([';', ':'])?;
    let name = line[..name_end].trim().to_ascii_uppercase();
    if name.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let bytes = line.as_bytes();
    let mut i = name_end;
    while i < bytes.len() && bytes[i] == b';' {
        i += 1;
        let eq = line[i..].find('=')? + i;
        let pname = line[i..eq].trim().to_ascii_uppercase();
        i = eq + 1;
        let mut values = Vec::new();
        loop {
            if i < bytes.len() && bytes[i] == b'"' {
                let close = line[i + 1..].find('"')? + i + 1;
                values.push(line[i + 1..close].to_owned());
                i = close + 1;
            } else {
                let end = line[i..].find([',', ';', ':']).map(|p| p + i).unwrap_or(line.len());
                values.push(line[i..end].to_owned());
                i = end;
            }
            if i < bytes.len() && bytes[i] == b',' {
                i += 1;
                continue;
            }
            break;
        }
        params.push((pname, values));
    }
    if i >= bytes.len() || bytes[i] != b':' {
        return None;
    }
    Some(Property { name, params, value: line[i + 1..].to_owned() })
}

/// Parses an iCalendar object into its VCALENDAR component.
pub fn parse_calendar(text: &str) -> Result<Component, ConnectorError> {
    let mut stack: Vec<Component> = Vec::new();
    let mut root: Option<Component> = None;
    for line in unfold(text) {
        let property = parse_property(&line).ok_or_else(|| unexpected("malformed iCalendar content line"))?;
        match property.name.as_str() {
            "BEGIN" => {
                stack.push(Component { name: property.value.trim().to_ascii_uppercase(), ..Component::default() })
            }
            "END" => {
                let done = stack.pop().ok_or_else(|| unexpected("unbalanced iCalendar END"))?;
                if done.name != property.value.trim().to_ascii_uppercase() {
                    return Err(unexpected("mismatched iCalendar END"));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => {
                        root.get_or_insert(done);
                    }
                }
            }
            _ => match stack.last_mut() {
                Some(component) => component.properties.push(property),
                None => return Err(unexpected("iCalendar property outside a component")),
            },
        }
    }
    if !stack.is_empty() {
        return Err(unexpected("unterminated iCalendar component"));
    }
    root.filter(|c| c.name == "VCALENDAR").ok_or_else(|| unexpected("no VCALENDAR"))
}

/// Escapes a TEXT value (RFC 5545 §3.3.11): backslash, `;`, `,` and newlines.
pub fn escape_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.replace("\r\n", "\n").chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' | '\r' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape_text`] (`\N` is accepted for a newline too).
pub fn unescape_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ`.
pub fn ical_utc(ts: Timestamp) -> String {
    ts.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// A DATE or DATE-TIME value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IcalTime {
    Instant(Timestamp),
    Date(Date),
}

impl IcalTime {
    fn timestamp(self) -> Result<Timestamp, ConnectorError> {
        match self {
            IcalTime::Instant(ts) => Ok(ts),
            IcalTime::Date(d) => {
                d.to_zoned_datetime(TimeZone::UTC).map(|z| z.timestamp()).map_err(|_| unexpected("date out of range"))
            }
        }
    }
}

/// Resolves a TZID to an IANA zone, also as the tail of a path-like id.
fn zone_for_tzid(tzid: &str) -> Option<TimeZone> {
    let tzid = tzid.trim();
    if let Ok(tz) = TimeZone::get(tzid) {
        return Some(tz);
    }
    let parts: Vec<&str> = tzid.split('/').filter(|p| !p.is_empty()).collect();
    (1..parts.len()).find_map(|skip| TimeZone::get(&parts[skip..].join("/")).ok())
}

fn parse_time(property: &Property) -> Result<IcalTime, ConnectorError> {
    let value = property.value.trim();
    let is_date = property.param("VALUE").is_some_and(|v| v.eq_ignore_ascii_case("DATE")) || value.len() == 8;
    if is_date {
        let date = Date::strptime("%Y%m%d", value).map_err(|_| unexpected("DATE value"))?;
        return Ok(IcalTime::Date(date));
    }
    if let Some(utc) = value.strip_suffix('Z') {
        let civil = DateTime::strptime("%Y%m%dT%H%M%S", utc).map_err(|_| unexpected("DATE-TIME value"))?;
        let ts = civil.to_zoned_datetime(TimeZone::UTC).map_err(|_| unexpected("DATE-TIME value"))?.timestamp();
        return Ok(IcalTime::Instant(ts));
    }
    let civil = DateTime::strptime("%Y%m%dT%H%M%S", value).map_err(|_| unexpected("DATE-TIME value"))?;
    let zone = match property.param("TZID") {
        Some(tzid) => zone_for_tzid(tzid).unwrap_or_else(|| {
            tracing::warn!(tzid, "unknown iCalendar TZID; reading the time in UTC");
            TimeZone::UTC
        }),
        // Floating time: no zone of its own; read in UTC.
        None => TimeZone::UTC,
    };
    let ts = civil.to_zoned_datetime(zone).map_err(|_| unexpected("DATE-TIME value"))?.timestamp();
    Ok(IcalTime::Instant(ts))
}

/// Parses a DURATION (RFC 5545 §3.3.6): `[+-]P(nW | nD[T[nH][nM][nS]] | T...)`.
pub fn parse_duration(value: &str) -> Option<SignedDuration> {
    let value = value.trim();
    let (sign, rest) = match value.as_bytes().first()? {
        b'-' => (-1, &value[1..]),
        b'+' => (1, &value[1..]),
        _ => (1, value),
    };
    let rest = rest.strip_prefix('P')?;
    let mut secs: i64 = 0;
    let mut number = String::new();
    let mut in_time = false;
    let mut any = false;
    for c in rest.chars() {
        match c {
            '0'..='9' => number.push(c),
            'T' if number.is_empty() && !in_time => in_time = true,
            'W' | 'D' | 'H' | 'M' | 'S' => {
                let n: i64 = number.parse().ok()?;
                number.clear();
                let unit = match (c, in_time) {
                    ('W', false) => 7 * 86_400,
                    ('D', false) => 86_400,
                    ('H', true) => 3_600,
                    ('M', true) => 60,
                    ('S', true) => 1,
                    _ => return None,
                };
                secs = secs.checked_add(n.checked_mul(unit)?)?;
                any = true;
            }
            _ => return None,
        }
    }
    (any && number.is_empty()).then(|| SignedDuration::from_secs(sign * secs))
}

/// The master VEVENT (no RECURRENCE-ID), else the first one.
fn master_event(calendar: &Component) -> Result<&Component, ConnectorError> {
    calendar
        .components("VEVENT")
        .find(|e| e.property("RECURRENCE-ID").is_none())
        .or_else(|| calendar.components("VEVENT").next())
        .ok_or_else(|| unexpected("calendar object without a VEVENT"))
}

fn master_event_mut(calendar: &mut Component) -> Result<&mut Component, ConnectorError> {
    let index = calendar
        .children
        .iter()
        .position(|e| e.name == "VEVENT" && e.property("RECURRENCE-ID").is_none())
        .or_else(|| calendar.children.iter().position(|e| e.name == "VEVENT"))
        .ok_or_else(|| unexpected("calendar object without a VEVENT"))?;
    Ok(&mut calendar.children[index])
}

/// Maps a VEVENT to the connector's event (`id` is the resource's id).
fn vevent_to_event(vevent: &Component, id: &str, etag: Option<String>) -> Result<CalendarEvent, ConnectorError> {
    let start_prop = vevent.property("DTSTART").ok_or_else(|| unexpected("VEVENT without DTSTART"))?;
    let start_value = parse_time(start_prop)?;
    let start = start_value.timestamp()?;
    let end = if let Some(end) = vevent.property("DTEND") {
        parse_time(end)?.timestamp()?
    } else if let Some(duration) = vevent.property("DURATION") {
        let d = parse_duration(&duration.value).ok_or_else(|| unexpected("DURATION value"))?;
        start.checked_add(d).map_err(|_| unexpected("DURATION out of range"))?
    } else if matches!(start_value, IcalTime::Date(_)) {
        start.checked_add(SignedDuration::from_hours(24)).map_err(|_| unexpected("date out of range"))?
    } else {
        start
    };
    let end = end.max(start);
    let status = match vevent.property("STATUS").map(|p| p.value.trim().to_ascii_uppercase()).as_deref() {
        Some("CANCELLED") => "cancelled",
        Some("TENTATIVE") => "tentative",
        _ => "confirmed",
    };
    let transparent = vevent.property("TRANSP").is_some_and(|p| p.value.trim().eq_ignore_ascii_case("TRANSPARENT"));
    Ok(CalendarEvent {
        id: id.to_owned(),
        summary: vevent.property("SUMMARY").map(|p| unescape_text(&p.value)),
        start,
        end,
        status: status.to_owned(),
        etag,
        call_id: vevent.property(CALL_ID_PROPERTY).map(|p| unescape_text(&p.value)),
        busy: status != "cancelled" && !transparent,
        updated: vevent.property("LAST-MODIFIED").and_then(|p| parse_time(p).ok()).and_then(|t| t.timestamp().ok()),
    })
}

/// The iCalendar object for a new event: UTC times, our markers, one display alarm per reminder.
pub fn write_event(event: &NewEvent, now: Timestamp) -> String {
    write_event_with(event, now, None)
}

/// [`write_event`] with an `ORGANIZER` (the business, see [`CalDavConnector::with_organizer`]).
pub fn write_event_with(event: &NewEvent, now: Timestamp, organizer: Option<&Organizer>) -> String {
    let mut description = event.description.clone();
    if let Some(email) = &event.attendee_email {
        if !description.is_empty() {
            description.push('\n');
        }
        description.push_str(&format!("Caller email: {email}"));
    }
    let prop = |name: &str, value: String| Property { name: name.to_owned(), params: Vec::new(), value };
    let mut vevent = Component {
        name: "VEVENT".to_owned(),
        properties: vec![
            prop("UID", event.id.clone()),
            prop("DTSTAMP", ical_utc(now)),
            prop("CREATED", ical_utc(now)),
            prop("LAST-MODIFIED", ical_utc(now)),
            prop("DTSTART", ical_utc(event.start)),
            prop("DTEND", ical_utc(event.end)),
            prop("SUMMARY", escape_text(&event.summary)),
            prop("STATUS", "CONFIRMED".to_owned()),
            prop("TRANSP", "OPAQUE".to_owned()),
            prop("SEQUENCE", "0".to_owned()),
            prop(CALL_ID_PROPERTY, escape_text(&event.call_id)),
            prop(SERVICE_PROPERTY, escape_text(&event.service_id)),
        ],
        children: Vec::new(),
    };
    if !description.is_empty() {
        vevent.properties.insert(7, prop("DESCRIPTION", escape_text(&description)));
    }
    if let Some(o) = organizer {
        // RFC 5545 §3.8.4.3: a cal-address with the common name as a (quoted) parameter.
        vevent.properties.push(Property {
            name: "ORGANIZER".to_owned(),
            params: vec![("CN".to_owned(), vec![o.name.replace('"', "'").replace(char::is_control, " ")])],
            value: format!("mailto:{}", o.email),
        });
    }
    let mut minutes = event.reminder_minutes.clone();
    minutes.sort_unstable();
    minutes.dedup();
    for m in minutes {
        vevent.children.push(Component {
            name: "VALARM".to_owned(),
            properties: vec![
                prop("ACTION", "DISPLAY".to_owned()),
                prop("DESCRIPTION", escape_text(&event.summary)),
                prop("TRIGGER", format!("-PT{m}M")),
            ],
            children: Vec::new(),
        });
    }
    Component {
        name: "VCALENDAR".to_owned(),
        properties: vec![
            prop("VERSION", "2.0".to_owned()),
            prop("PRODID", PRODID.to_owned()),
            prop("CALSCALE", "GREGORIAN".to_owned()),
        ],
        children: vec![vevent],
    }
    .to_ical()
}

/// Busy periods of a free-busy-query answer: every `FREEBUSY` value in the VFREEBUSY whose
/// `FBTYPE` is not `FREE` (`BUSY` is the default; `BUSY-TENTATIVE` and `BUSY-UNAVAILABLE`
/// block too). Periods are `start/end` or `start/duration` (RFC 5545 §3.3.9, §3.8.2.6).
pub fn parse_free_busy(text: &str) -> Result<Vec<Interval>, ConnectorError> {
    let calendar = parse_calendar(text)?;
    let mut busy = Vec::new();
    for vfreebusy in calendar.components("VFREEBUSY") {
        for property in vfreebusy.properties.iter().filter(|p| p.name == "FREEBUSY") {
            if property.param("FBTYPE").is_some_and(|t| t.eq_ignore_ascii_case("FREE")) {
                continue;
            }
            for period in property.value.split(',') {
                let (start, end) = period.split_once('/').ok_or_else(|| unexpected("FREEBUSY period"))?;
                let start_prop = Property { name: "X".into(), params: Vec::new(), value: start.to_owned() };
                let start = parse_time(&start_prop)?.timestamp()?;
                let end = if end.trim_start_matches(['+', '-']).starts_with('P') {
                    let d = parse_duration(end).ok_or_else(|| unexpected("FREEBUSY duration"))?;
                    start.checked_add(d).map_err(|_| unexpected("FREEBUSY duration"))?
                } else {
                    let end_prop = Property { name: "X".into(), params: Vec::new(), value: end.to_owned() };
                    parse_time(&end_prop)?.timestamp()?
                };
                if start < end {
                    busy.push(Interval::new(start, end));
                }
            }
        }
    }
    Ok(busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(a: &str, b: &str) -> Interval {
        Interval::new(ts(a), ts(b))
    }

    fn new_event(id: &str, start: &str, end: &str) -> NewEvent {
        NewEvent {
            id: id.to_owned(),
            summary: "Cut, colour; wash \\ & more".to_owned(),
            description: "Booked by phone.\nNotes: allergic to \"ammonia\"; prefers Ada. ".repeat(4),
            start: ts(start),
            end: ts(end),
            time_zone: "Europe/Berlin".to_owned(),
            attendee_email: Some("ana@example.com".to_owned()),
            reminder_minutes: vec![60, 15],
            call_id: "call-1".to_owned(),
            service_id: "haircut".to_owned(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Radicale
    // -----------------------------------------------------------------------------------------

    fn radicale_url() -> String {
        crate::sandbox::radicale::url()
    }

    /// A connector on Radicale plus a fresh calendar collection of its own.
    async fn radicale() -> (CalDavConnector, String) {
        let base = Url::parse(&radicale_url()).unwrap();
        let connector = CalDavConnector::new(
            base,
            CalDavAuth::Basic { username: "callside".to_owned(), password: SecretString::from("unused".to_owned()) },
            crate::connectors::http_client(),
        );
        let calendar = format!("callside/{}/", uuid::Uuid::new_v4().simple());
        connector.create_calendar(&calendar, "Front desk").await.unwrap();
        (connector, calendar)
    }

    /// Stores a calendar object as another client (the customer booking directly) would.
    async fn foreign_put(connector: &CalDavConnector, calendar: &str, name: &str, ics: &str) {
        let url = connector.collection_url(calendar).unwrap().join(name).unwrap();
        let response = reqwest::Client::new()
            .put(url)
            .basic_auth("callside", Some("unused"))
            .header("Content-Type", "text/calendar; charset=utf-8")
            .body(ics.replace('\n', "\r\n"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
    }

    fn foreign_ics(uid: &str, extra: &str) -> String {
        format!(
            "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//Other client//EN\nBEGIN:VEVENT\nUID:{uid}\nDTSTAMP:20261101T000000Z\n{extra}\nEND:VEVENT\nEND:VCALENDAR\n"
        )
    }

    #[tokio::test]
    async fn radicale_sync_collection_lists_everything_then_changes_and_removals_and_refuses_a_bad_token() {
        let (connector, calendar) = radicale().await;
        let since = ts("2026-11-23T00:00:00Z");
        foreign_put(
            &connector,
            &calendar,
            "a.ics",
            &foreign_ics("a", "DTSTART:20261124T100000Z\nDTEND:20261124T110000Z"),
        )
        .await;
        let SyncResult::Changes { changes, cursor } = connector.sync_events(&calendar, None, since).await.unwrap()
        else {
            panic!("a full sync has changes")
        };
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(
            matches!(&changes[0], EventChange::Upserted(e) if e.id == "a" && e.start == ts("2026-11-24T10:00:00Z"))
        );
        let SyncResult::Changes { changes, cursor } =
            connector.sync_events(&calendar, Some(&cursor), since).await.unwrap()
        else {
            panic!("incremental")
        };
        assert!(changes.is_empty(), "{changes:?}");
        foreign_put(
            &connector,
            &calendar,
            "b.ics",
            &foreign_ics("b", "DTSTART:20261125T100000Z\nDTEND:20261125T110000Z"),
        )
        .await;
        connector.cancel_event(&calendar, "a", false).await.unwrap();
        let SyncResult::Changes { mut changes, .. } =
            connector.sync_events(&calendar, Some(&cursor), since).await.unwrap()
        else {
            panic!("incremental")
        };
        changes.sort_by_key(|c| matches!(c, EventChange::Removed { .. }));
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(&changes[0], EventChange::Upserted(e) if e.id == "b"));
        assert_eq!(changes[1], EventChange::Removed { id: "a".into() });
        assert_eq!(
            connector.sync_events(&calendar, Some("http://radicale.org/ns/sync/not-a-token"), since).await.unwrap(),
            SyncResult::Expired
        );
    }

    #[tokio::test]
    async fn radicale_create_then_get_round_trips() {
        let (connector, cal) = radicale().await;
        let ev = new_event("hold-1", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        let created = connector.create_event(&cal, &ev).await.unwrap();
        assert_eq!(created.id, "hold-1");
        assert!(created.etag.is_some());
        let got = connector.get_event(&cal, "hold-1").await.unwrap();
        assert_eq!(got.start, ev.start);
        assert_eq!(got.end, ev.end);
        assert_eq!(got.etag, created.etag);
        assert_eq!(got.summary.as_deref(), Some(ev.summary.as_str()));
        assert_eq!(got.call_id.as_deref(), Some("call-1"));
        assert_eq!(got.status, "confirmed");
        assert!(got.busy);
        assert!(matches!(connector.get_event(&cal, "missing").await, Err(ConnectorError::NotFound(_))));
    }

    #[tokio::test]
    async fn radicale_second_create_with_the_same_id_is_a_conflict() {
        let (connector, cal) = radicale().await;
        let ev = new_event("hold-2", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        connector.create_event(&cal, &ev).await.unwrap();
        let mut again = ev.clone();
        again.summary = "Overwritten?".to_owned();
        let err = connector.create_event(&cal, &again).await.unwrap_err();
        assert!(matches!(&err, ConnectorError::Conflict { existing_id: Some(id), .. } if id == "hold-2"), "{err:?}");
        let listed = connector.list_events(&cal, window("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z")).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_ne!(listed[0].summary.as_deref(), Some("Overwritten?"), "If-None-Match kept the original");
    }

    #[tokio::test]
    async fn radicale_free_busy_merges_calendars_and_sees_direct_bookings() {
        let (connector, a) = radicale().await;
        let b = format!("callside/{}/", uuid::Uuid::new_v4().simple());
        connector.create_calendar(&b, "Stylist").await.unwrap();
        connector.create_event(&a, &new_event("ours", "2026-11-23T09:00:00Z", "2026-11-23T10:00:00Z")).await.unwrap();
        // A direct booking on the other calendar, in Berlin time with TZID (UTC+1 in November).
        foreign_put(
            &connector,
            &b,
            "direct.ics",
            &foreign_ics(
                "direct-1",
                "DTSTART;TZID=Europe/Berlin:20261123T103000\nDTEND;TZID=Europe/Berlin:20261123T113000\nSUMMARY:Walk-in",
            ),
        )
        .await;
        foreign_put(
            &connector,
            &a,
            "free.ics",
            &foreign_ics("free-1", "DTSTART:20261123T120000Z\nDTEND:20261123T130000Z\nTRANSP:TRANSPARENT"),
        )
        .await;
        foreign_put(
            &connector,
            &a,
            "gone.ics",
            &foreign_ics("gone-1", "DTSTART:20261123T140000Z\nDTEND:20261123T150000Z\nSTATUS:CANCELLED"),
        )
        .await;
        foreign_put(
            &connector,
            &b,
            "maybe.ics",
            &foreign_ics("maybe-1", "DTSTART:20261123T160000Z\nDURATION:PT30M\nSTATUS:TENTATIVE"),
        )
        .await;

        let w = window("2026-11-23T08:00:00Z", "2026-11-23T18:00:00Z");
        // Radicale answers free-busy-query itself (no fallback).
        assert!(connector.free_busy_query(&b, w).await.unwrap().is_some());
        let busy = connector.free_busy(&[a.clone(), b.clone()], w).await.unwrap();
        assert_eq!(
            busy,
            vec![
                window("2026-11-23T09:00:00Z", "2026-11-23T10:30:00Z"),
                window("2026-11-23T16:00:00Z", "2026-11-23T16:30:00Z"),
            ]
        );
        // The direct booking is visible to list_events too, at the right instant.
        let listed = connector.list_events(&b, w).await.unwrap();
        let direct = listed.iter().find(|e| e.id == "direct").expect("the direct booking is listed");
        assert_eq!((direct.start, direct.end), (ts("2026-11-23T09:30:00Z"), ts("2026-11-23T10:30:00Z")));
        assert_eq!(direct.call_id, None);
        assert!(direct.busy);
    }

    #[tokio::test]
    async fn radicale_list_has_overlap_semantics_and_expands_recurrences() {
        let (connector, cal) = radicale().await;
        let put = |name: &'static str, extra: &'static str| {
            let connector = &connector;
            let cal = cal.clone();
            async move { foreign_put(connector, &cal, &format!("{name}.ics"), &foreign_ics(name, extra)).await }
        };
        put("before", "DTSTART:20261123T080000Z\nDTEND:20261123T090000Z").await;
        put("overlapstart", "DTSTART:20261123T083000Z\nDTEND:20261123T093000Z").await;
        put("inside", "DTSTART:20261123T091500Z\nDTEND:20261123T094500Z").await;
        put("after", "DTSTART:20261123T100000Z\nDTEND:20261123T110000Z").await;
        put("cancelled", "DTSTART:20261123T090000Z\nDTEND:20261123T100000Z\nSTATUS:CANCELLED").await;
        put("transparent", "DTSTART:20261123T092000Z\nDTEND:20261123T094000Z\nTRANSP:TRANSPARENT").await;
        // Daily at 09:50 Berlin (08:50 UTC) since Nov 20: the Nov 23 instance overlaps.
        put(
            "daily",
            "DTSTART;TZID=Europe/Berlin:20261120T095000\nDTEND;TZID=Europe/Berlin:20261120T101000\nRRULE:FREQ=DAILY;COUNT=10",
        )
        .await;
        let listed = connector.list_events(&cal, window("2026-11-23T09:00:00Z", "2026-11-23T10:00:00Z")).await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec!["overlapstart", "daily", "inside", "transparent"]);
        let daily = &listed[1];
        assert_eq!((daily.start, daily.end), (ts("2026-11-23T08:50:00Z"), ts("2026-11-23T09:10:00Z")));
        assert!(!listed[3].busy);
        assert!(listed.iter().all(|e| e.etag.is_some()));
    }

    #[tokio::test]
    async fn radicale_move_needs_the_current_etag_and_moves_in_place() {
        let (connector, cal) = radicale().await;
        let created = connector
            .create_event(&cal, &new_event("hold-5", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z"))
            .await
            .unwrap();
        let stale = "\"0000\"";
        let err = connector
            .move_event(&cal, "hold-5", ts("2026-11-23T16:00:00Z"), ts("2026-11-23T16:45:00Z"), Some(stale))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectorError::PreconditionFailed(_)), "{err:?}");
        let moved = connector
            .move_event(&cal, "hold-5", ts("2026-11-23T16:00:00Z"), ts("2026-11-23T16:45:00Z"), created.etag.as_deref())
            .await
            .unwrap();
        assert_eq!(moved.id, "hold-5");
        assert_eq!((moved.start, moved.end), (ts("2026-11-23T16:00:00Z"), ts("2026-11-23T16:45:00Z")));
        assert_ne!(moved.etag, created.etag);
        assert_eq!(moved.call_id.as_deref(), Some("call-1"));
        let got = connector.get_event(&cal, "hold-5").await.unwrap();
        assert_eq!(got.start, ts("2026-11-23T16:00:00Z"));
        assert_eq!(got.etag, moved.etag);
        // The old etag is now stale too.
        let err = connector
            .move_event(&cal, "hold-5", ts("2026-11-23T17:00:00Z"), ts("2026-11-23T17:45:00Z"), created.etag.as_deref())
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectorError::PreconditionFailed(_)), "{err:?}");
        let listed = connector.list_events(&cal, window("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z")).await.unwrap();
        assert_eq!(listed.len(), 1, "moved in place, not copied");
    }

    #[tokio::test]
    async fn radicale_cancel_deletes_the_resource() {
        let (connector, cal) = radicale().await;
        connector
            .create_event(&cal, &new_event("hold-6", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z"))
            .await
            .unwrap();
        connector.cancel_event(&cal, "hold-6", true).await.unwrap();
        assert!(matches!(connector.get_event(&cal, "hold-6").await, Err(ConnectorError::NotFound(_))));
        assert!(matches!(connector.cancel_event(&cal, "hold-6", false).await, Err(ConnectorError::NotFound(_))));
        let busy = connector
            .free_busy(std::slice::from_ref(&cal), window("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"))
            .await
            .unwrap();
        assert!(busy.is_empty());
        // The id is free again (CalDAV keeps no tombstone, unlike Google).
        connector
            .create_event(&cal, &new_event("hold-6", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z"))
            .await
            .unwrap();
    }

    // -----------------------------------------------------------------------------------------
    // Vendor faults, against a stub server
    // -----------------------------------------------------------------------------------------

    async fn stub(status: u16, headers: &'static [(&'static str, &'static str)]) -> (Url, tokio::task::JoinHandle<()>) {
        use axum::http::StatusCode as S;
        let app = axum::Router::new().fallback(move || async move {
            let mut response = axum::response::IntoResponse::into_response((S::from_u16(status).unwrap(), "nope"));
            for (k, v) in headers {
                response.headers_mut().insert(*k, axum::http::HeaderValue::from_static(v));
            }
            response
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = Url::parse(&format!("http://{}/dav/", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (url, task)
    }

    #[tokio::test]
    async fn rate_limits_outages_and_auth_failures_are_classified() {
        let w = window("2026-11-23T09:00:00Z", "2026-11-23T10:00:00Z");
        let cal = vec!["cal/".to_owned()];
        let (url, task) = stub(429, &[("retry-after", "12")]).await;
        let connector = CalDavConnector::new(url, CalDavAuth::None, crate::connectors::http_client());
        let err = connector.free_busy(&cal, w).await.unwrap_err();
        assert!(
            matches!(&err, ConnectorError::RateLimited { retry_after: Some(d), .. } if *d == Duration::from_secs(12)),
            "{err:?}"
        );
        task.abort();
        let (url, task) = stub(503, &[]).await;
        let connector = CalDavConnector::new(url, CalDavAuth::None, crate::connectors::http_client());
        assert!(matches!(connector.list_events("cal/", w).await, Err(ConnectorError::Transient(_))));
        task.abort();
        let (url, task) = stub(401, &[("www-authenticate", "Bearer")]).await;
        let bearer = CalDavConnector::new(
            url.clone(),
            CalDavAuth::Bearer(SecretString::from("t".to_owned())),
            crate::connectors::http_client(),
        );
        assert_eq!(bearer.get_event("cal/", "x").await.unwrap_err(), ConnectorError::AuthExpired);
        let basic = CalDavConnector::new(
            url,
            CalDavAuth::Basic { username: "u".to_owned(), password: SecretString::from("p".to_owned()) },
            crate::connectors::http_client(),
        );
        assert!(matches!(basic.get_event("cal/", "x").await, Err(ConnectorError::AuthRevoked(_))));
        task.abort();
    }

    /// A server without free-busy-query: busy time comes from calendar-query, transparent and
    /// cancelled events excluded.
    #[tokio::test]
    async fn free_busy_falls_back_to_calendar_query() {
        let multistatus = r#"<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
<D:response><D:href>/dav/cal/a.ics</D:href><D:propstat><D:prop><D:getetag>"1"</D:getetag><C:calendar-data>BEGIN:VCALENDAR
BEGIN:VEVENT
UID:a
DTSTART:20261123T090000Z
DTEND:20261123T100000Z
END:VEVENT
BEGIN:VEVENT
UID:b
DTSTART:20261123T110000Z
DTEND:20261123T120000Z
TRANSP:TRANSPARENT
END:VEVENT
BEGIN:VEVENT
UID:c
DTSTART:20261123T130000Z
DTEND:20261123T140000Z
STATUS:CANCELLED
END:VEVENT
END:VCALENDAR
</C:calendar-data></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
</D:multistatus>"#;
        let app = axum::Router::new().fallback(move |body: String| async move {
            use axum::response::IntoResponse;
            if body.contains("free-busy-query") {
                (axum::http::StatusCode::NOT_IMPLEMENTED, "no").into_response()
            } else {
                (axum::http::StatusCode::MULTI_STATUS, multistatus).into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = Url::parse(&format!("http://{}/dav/", listener.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let connector = CalDavConnector::new(url, CalDavAuth::None, crate::connectors::http_client());
        let busy = connector
            .free_busy(&["cal/".to_owned()], window("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"))
            .await
            .unwrap();
        assert_eq!(busy, vec![window("2026-11-23T09:00:00Z", "2026-11-23T10:00:00Z")]);
        task.abort();
    }

    #[test]
    fn calendar_ids_resolve_to_collections_on_the_same_origin() {
        let c = CalDavConnector::new(
            Url::parse("https://dav.example.com/dav").unwrap(),
            CalDavAuth::None,
            reqwest::Client::new(),
        );
        assert_eq!(c.collection_url("front-desk").unwrap().as_str(), "https://dav.example.com/dav/front-desk/");
        assert_eq!(c.collection_url("/other/cal/").unwrap().as_str(), "https://dav.example.com/other/cal/");
        assert_eq!(
            c.collection_url("https://dav.example.com/dav/x").unwrap().as_str(),
            "https://dav.example.com/dav/x/"
        );
        assert!(c.collection_url("https://evil.example.com/dav/x/").is_err());
        assert!(c.collection_url(" ").is_err());
        assert_eq!(
            c.resource_url("cal/", "a b/../c").unwrap().as_str(),
            "https://dav.example.com/dav/cal/a%20b%2F..%2Fc.ics"
        );
        assert!(c.resource_url("cal/", "..").is_err());
        assert_eq!(id_from_href("/dav/cal/a%20b%2F..%2Fc.ics").unwrap(), "a b/../c");
        assert_eq!(id_from_href("/dav/cal/plain").unwrap(), "plain");
    }

    // -----------------------------------------------------------------------------------------
    // iCalendar and XML
    // -----------------------------------------------------------------------------------------

    #[test]
    fn written_events_fold_escape_and_parse_back() {
        let ev = new_event("k1", "2026-11-23T15:00:00Z", "2026-11-23T15:45:00Z");
        let text = write_event(&ev, ts("2026-11-23T14:00:00Z"));
        assert!(text.starts_with("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n"));
        assert!(text.contains("\r\nDTSTART:20261123T150000Z\r\n"));
        assert!(text.contains("\r\nSUMMARY:Cut\\, colour\\; wash \\\\ & more\r\n"));
        assert!(text.contains("\r\nTRIGGER:-PT15M\r\n") && text.contains("\r\nTRIGGER:-PT60M\r\n"));
        for line in text.split("\r\n") {
            assert!(line.len() <= 75, "unfolded line: {line:?}");
        }
        let calendar = parse_calendar(&text).unwrap();
        let vevent = master_event(&calendar).unwrap();
        assert_eq!(unescape_text(&vevent.property("SUMMARY").unwrap().value), ev.summary);
        let description = unescape_text(&vevent.property("DESCRIPTION").unwrap().value);
        assert!(description.starts_with(&ev.description));
        assert!(description.ends_with("Caller email: ana@example.com"));
        let event = vevent_to_event(vevent, "k1", None).unwrap();
        assert_eq!((event.start, event.end), (ev.start, ev.end));
        assert_eq!(event.call_id.as_deref(), Some("call-1"));
        assert_eq!(vevent.property(SERVICE_PROPERTY).unwrap().value, "haircut");
        assert_eq!(calendar.to_ical(), text, "serialising the parsed object is stable");
    }

    #[test]
    fn folding_never_splits_a_character() {
        let mut out = String::new();
        let line = format!("SUMMARY:{}", "ü€😀".repeat(40));
        push_folded(&mut out, &line);
        for physical in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(physical.len() <= 75);
        }
        assert_eq!(unfold(&out), vec![line]);
    }

    /// Golden: the folding and escaping examples of RFC 5545 §3.1 and §3.3.11, and a VEVENT in
    /// the style of §3.6.1's examples.
    #[test]
    fn golden_rfc5545_examples() {
        let folded = "DESCRIPTION:This is a lo\r\n ng description\r\n  that exists on a long line.\r\n";
        assert_eq!(unfold(folded), vec!["DESCRIPTION:This is a long description that exists on a long line."]);
        assert_eq!(
            unescape_text("Project XYZ Final Review\\nConference Room - 3B\\nCome Prepared."),
            "Project XYZ Final Review\nConference Room - 3B\nCome Prepared."
        );
        let text = "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//xyz Corp//NONSGML PDA Calendar Version 1.0//EN\n\
BEGIN:VEVENT\nUID:19970901T130000Z-123401@example.com\nDTSTAMP:19970901T130000Z\n\
DTSTART:19970903T163000Z\nDTEND:19970903T190000Z\nSUMMARY:Annual Employee Review\n\
CLASS:PRIVATE\nCATEGORIES:BUSINESS,HUMAN RESOURCES\nEND:VEVENT\nEND:VCALENDAR\n";
        let calendar = parse_calendar(text).unwrap();
        let event = vevent_to_event(master_event(&calendar).unwrap(), "x", None).unwrap();
        assert_eq!((event.start, event.end), (ts("1997-09-03T16:30:00Z"), ts("1997-09-03T19:00:00Z")));
        assert_eq!(event.summary.as_deref(), Some("Annual Employee Review"));
        // All-day, DURATION, quoted parameters and path-like TZIDs.
        let p = parse_property("ATTENDEE;CN=\"Doe, J: Jr\";ROLE=REQ-PARTICIPANT:mailto:j@example.com").unwrap();
        assert_eq!(p.param("CN"), Some("Doe, J: Jr"));
        assert_eq!(p.value, "mailto:j@example.com");
        let p = parse_property("DTSTART;TZID=/mozilla.org/20050126_1/America/New_York:20261123T100000").unwrap();
        assert_eq!(parse_time(&p).unwrap(), IcalTime::Instant(ts("2026-11-23T15:00:00Z")));
        let all_day =
            parse_calendar("BEGIN:VCALENDAR\nBEGIN:VEVENT\nDTSTART;VALUE=DATE:20261123\nEND:VEVENT\nEND:VCALENDAR\n")
                .unwrap();
        let e = vevent_to_event(master_event(&all_day).unwrap(), "d", None).unwrap();
        assert_eq!((e.start, e.end), (ts("2026-11-23T00:00:00Z"), ts("2026-11-24T00:00:00Z")));
        assert_eq!(parse_duration("PT1H30M"), Some(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("P1W"), Some(SignedDuration::from_hours(168)));
        assert_eq!(parse_duration("-P1DT2S"), Some(SignedDuration::from_secs(-86_402)));
        assert_eq!(parse_duration("P1H"), None);
        assert_eq!(parse_duration("P"), None);
        assert!(parse_calendar("BEGIN:VCALENDAR\nBEGIN:VEVENT\nEND:VCALENDAR\n").is_err());
    }

    /// A cancelled event says when it last changed (`LAST-MODIFIED`, RFC 5545 §3.8.7.3): the
    /// outcome reader's cancellation time. Absent: unknown, never "now".
    #[test]
    fn a_cancelled_events_last_modified_time_is_read() {
        let text = "BEGIN:VCALENDAR\nVERSION:2.0\nBEGIN:VEVENT\nUID:c1\nDTSTAMP:20261125T100000Z\n\
DTSTART:20261127T150000Z\nDTEND:20261127T153000Z\nSTATUS:CANCELLED\nLAST-MODIFIED:20261127T130000Z\n\
END:VEVENT\nEND:VCALENDAR\n";
        let calendar = parse_calendar(text).unwrap();
        let event = vevent_to_event(master_event(&calendar).unwrap(), "c1", None).unwrap();
        assert_eq!(event.status, "cancelled");
        assert_eq!(event.updated, Some(ts("2026-11-27T13:00:00Z")));
        let plain = parse_calendar(&text.replace("LAST-MODIFIED:20261127T130000Z\n", "")).unwrap();
        assert_eq!(vevent_to_event(master_event(&plain).unwrap(), "c1", None).unwrap().updated, None);
    }

    /// Golden: the free-busy-query response of RFC 4791 §7.10.2 (example in the RFC, abridged).
    #[test]
    fn golden_free_busy_query_response() {
        let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Example Corp.//CalDAV Server//EN\r\n\
BEGIN:VFREEBUSY\r\nDTSTAMP:20050125T090000Z\r\nDTSTART:20060104T140000Z\r\nDTEND:20060105T000000Z\r\n\
FREEBUSY;FBTYPE=BUSY-TENTATIVE:20060104T150000Z/PT1H\r\n\
FREEBUSY:20060104T190000Z/PT1H\r\nFREEBUSY;FBTYPE=FREE:20060104T200000Z/20060104T210000Z\r\n\
FREEBUSY;FBTYPE=BUSY-UNAVAILABLE:20060104T220000Z/20060104T223000Z,20060104T230000Z/PT15M\r\n\
END:VFREEBUSY\r\nEND:VCALENDAR\r\n";
        assert_eq!(
            parse_free_busy(text).unwrap(),
            vec![
                window("2006-01-04T15:00:00Z", "2006-01-04T16:00:00Z"),
                window("2006-01-04T19:00:00Z", "2006-01-04T20:00:00Z"),
                window("2006-01-04T22:00:00Z", "2006-01-04T22:30:00Z"),
                window("2006-01-04T23:00:00Z", "2006-01-04T23:15:00Z"),
            ]
        );
    }

    #[test]
    fn multistatus_is_parsed_with_entities_cdata_and_failed_propstats() {
        let xml = r#"<?xml version="1.0" encoding="utf-8" ?>
<D:multistatus xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:response>
    <D:href>/cal/a%20b.ics</D:href>
    <D:propstat>
      <D:prop><D:getetag>"fffff-abcd2"</D:getetag>
        <C:calendar-data>BEGIN:VCALENDAR&#13;
SUMMARY:Tom &amp; Jerry &lt;3
END:VCALENDAR
</C:calendar-data></D:prop>
      <D:status>HTTP/1.1 200 OK</D:status>
    </D:propstat>
    <D:propstat><D:prop><D:displayname/></D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>
  </D:response>
  <response xmlns="DAV:"><href>/cal/b.ics</href><propstat><prop><getetag>"2"</getetag>
    <calendar-data xmlns="urn:ietf:params:xml:ns:caldav"><![CDATA[BEGIN:VCALENDAR
END:VCALENDAR]]></calendar-data></prop><status>HTTP/1.1 200 OK</status></propstat></response>
  <D:response><D:href>/cal/c.ics</D:href>
    <D:propstat><D:prop><D:getetag>"3"</D:getetag></D:prop><D:status>HTTP/1.1 403 Forbidden</D:status></D:propstat>
  </D:response>
</D:multistatus>"#;
        let items = parse_multistatus(xml).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].href, "/cal/a%20b.ics");
        assert_eq!(items[0].etag.as_deref(), Some("\"fffff-abcd2\""));
        assert_eq!(
            items[0].calendar_data.as_deref(),
            Some("BEGIN:VCALENDAR\r\nSUMMARY:Tom & Jerry <3\nEND:VCALENDAR\n")
        );
        assert_eq!(items[1].calendar_data.as_deref(), Some("BEGIN:VCALENDAR\nEND:VCALENDAR"));
        assert_eq!(items[2].etag, None, "a 403 propstat is ignored");
        assert!(parse_multistatus("<D:multistatus xmlns:D=\"DAV:\"><D:response>&bogus;</D:response>").is_err());
    }

    #[test]
    fn errors_are_classified() {
        let none = CalDavAuth::None;
        assert!(matches!(classify(StatusCode::NOT_FOUND, None, "", None, &none), ConnectorError::NotFound(_)));
        assert!(matches!(
            classify(StatusCode::PRECONDITION_FAILED, None, "", None, &none),
            ConnectorError::PreconditionFailed(_)
        ));
        assert!(matches!(
            classify(StatusCode::CONFLICT, None, "", Some("x"), &none),
            ConnectorError::Conflict { existing_id: Some(x), .. } if x == "x"
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, None, "bad", None, &none),
            ConnectorError::Validation { .. }
        ));
        assert!(matches!(classify(StatusCode::FORBIDDEN, None, "", None, &none), ConnectorError::Permanent(_)));
        assert!(matches!(
            classify(StatusCode::INSUFFICIENT_STORAGE, None, "", None, &none),
            ConnectorError::Transient(_)
        ));
    }
}
