//! In-process emulator of the Google Calendar API v3 (the subset callside uses), served by axum
//! on `127.0.0.1:0` under the real base path `/calendar/v3/`.
//!
//! Paths, parameters and body shapes follow the discovery document
//! (`/work/shared/vendor-specs/google/calendar.v3.json`; a test below checks every route and every
//! emitted field against it). Behaviour the discovery document does not state follows Google's
//! guides, cited where it is surprising:
//!
//! - error bodies `{"error":{"errors":[{domain,reason,message}],code,message}}` and the reasons
//!   per status: <https://developers.google.com/workspace/calendar/api/guides/errors>;
//! - a deleted event keeps its id: inserting it again answers 409 `duplicate`
//!   (<https://stackoverflow.com/questions/27542721>), deleting it again answers 410 `deleted`;
//! - `timeMin` filters on the event END and `timeMax` on the START (events.list parameters).
//!
//! The handle injects faults (`set_down`, `fail_next`, `set_latency`), books foreign events as a
//! customer booking directly would (`insert_foreign_event`, `insert_foreign_on_next_insert`),
//! counts requests per method and exposes the stored events, including the `sendUpdates` value
//! every write used. The state lock is a `std::sync::Mutex` never held across an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use super::EmulatorClock;
use super::google_push::{Push, start_delivery};
pub use super::google_push::{PushStats, WatchChannel};

/// The discovery document's `servicePath`, as an absolute path.
pub const SERVICE_PATH: &str = "/calendar/v3/";

/// Google's default and maximum page sizes for events.list (discovery doc, `maxResults`).
const DEFAULT_PAGE_SIZE: usize = 250;
const MAX_PAGE_SIZE: usize = 2500;
/// FreeBusyRequest `calendarExpansionMax`: "Maximum value is 50".
const MAX_FREEBUSY_CALENDARS: usize = 50;
/// EventReminder `minutes`: "Valid values are between 0 and 40320"; at most 5 overrides.
const MAX_REMINDER_MINUTES: i64 = 40_320;
const MAX_REMINDER_OVERRIDES: usize = 5;

/// The API methods the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GoogleCalendarMethod {
    FreeBusy,
    Insert,
    Get,
    List,
    Patch,
    Delete,
    Watch,
    StopChannel,
}

impl GoogleCalendarMethod {
    pub const ALL: [GoogleCalendarMethod; 8] = [
        GoogleCalendarMethod::FreeBusy,
        GoogleCalendarMethod::Insert,
        GoogleCalendarMethod::Get,
        GoogleCalendarMethod::List,
        GoogleCalendarMethod::Patch,
        GoogleCalendarMethod::Delete,
        GoogleCalendarMethod::Watch,
        GoogleCalendarMethod::StopChannel,
    ];

    /// The method's `id` in the discovery document.
    pub fn discovery_id(self) -> &'static str {
        match self {
            GoogleCalendarMethod::FreeBusy => "calendar.freebusy.query",
            GoogleCalendarMethod::Insert => "calendar.events.insert",
            GoogleCalendarMethod::Get => "calendar.events.get",
            GoogleCalendarMethod::List => "calendar.events.list",
            GoogleCalendarMethod::Patch => "calendar.events.patch",
            GoogleCalendarMethod::Delete => "calendar.events.delete",
            GoogleCalendarMethod::Watch => "calendar.events.watch",
            GoogleCalendarMethod::StopChannel => "calendar.channels.stop",
        }
    }

    pub fn http_method(self) -> &'static str {
        match self {
            GoogleCalendarMethod::FreeBusy
            | GoogleCalendarMethod::Insert
            | GoogleCalendarMethod::Watch
            | GoogleCalendarMethod::StopChannel => "POST",
            GoogleCalendarMethod::Get | GoogleCalendarMethod::List => "GET",
            GoogleCalendarMethod::Patch => "PATCH",
            GoogleCalendarMethod::Delete => "DELETE",
        }
    }

    /// The path template relative to [`SERVICE_PATH`], spelled as in the discovery document.
    /// The router is built from these strings.
    pub fn path(self) -> &'static str {
        match self {
            GoogleCalendarMethod::FreeBusy => "freeBusy",
            GoogleCalendarMethod::Insert | GoogleCalendarMethod::List => "calendars/{calendarId}/events",
            GoogleCalendarMethod::Get | GoogleCalendarMethod::Patch | GoogleCalendarMethod::Delete => {
                "calendars/{calendarId}/events/{eventId}"
            }
            GoogleCalendarMethod::Watch => "calendars/{calendarId}/events/watch",
            GoogleCalendarMethod::StopChannel => "channels/stop",
        }
    }
}

/// One write the API received for an event, with the notification choice it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedWrite {
    pub method: GoogleCalendarMethod,
    /// The `sendUpdates` query parameter as sent (`all`, `externalOnly`, `none`), if any.
    pub send_updates: Option<String>,
    /// The `If-Match` header as sent, if any.
    pub if_match: Option<String>,
}

/// An event as the emulator stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEvent {
    pub calendar_id: String,
    pub id: String,
    /// `confirmed`, `tentative` or `cancelled` (deleted events stay, cancelled).
    pub status: String,
    pub summary: Option<String>,
    pub description: Option<String>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub start_time_zone: Option<String>,
    pub end_time_zone: Option<String>,
    pub attendees: Vec<String>,
    pub reminders_use_default: bool,
    /// `(method, minutes)` reminder overrides.
    pub reminder_overrides: Vec<(String, i64)>,
    pub private_properties: BTreeMap<String, String>,
    pub shared_properties: BTreeMap<String, String>,
    /// `opaque` (the default) or `transparent`.
    pub transparency: String,
    pub etag: String,
    pub sequence: i64,
    pub created: Timestamp,
    pub updated: Timestamp,
    pub organizer_email: String,
    /// Booked through the handle ("the customer booked directly"), not through the API.
    pub foreign: bool,
    /// Every API write to this event, in order.
    pub writes: Vec<RecordedWrite>,
}

impl SandboxEvent {
    /// Whether the event blocks time in free/busy.
    pub fn is_busy(&self) -> bool {
        self.status != "cancelled" && self.transparency != "transparent"
    }

    /// The `sendUpdates` value of the last write by `method`; `None` when there was no such
    /// write or it carried no `sendUpdates`.
    pub fn send_updates_of(&self, method: GoogleCalendarMethod) -> Option<&str> {
        self.writes.iter().rev().find(|w| w.method == method).and_then(|w| w.send_updates.as_deref())
    }

    /// The emulator's change sequence number of the event's last change: every change takes a
    /// fresh etag from [`Inner::next_etag`], which is that number plus a constant. Sync tokens
    /// are positions in the same sequence.
    fn change_seq(&self) -> u64 {
        self.etag.trim_matches('"').parse::<u64>().map(|n| n.saturating_sub(ETAG_BASE)).unwrap_or(0)
    }
}

/// Etags are `ETAG_BASE + change sequence number`, quoted.
const ETAG_BASE: u64 = 3_000_000_000_000_000;

#[derive(Debug, Clone)]
struct Fault {
    method: Option<GoogleCalendarMethod>,
    status: StatusCode,
    reason: String,
    remaining: usize,
    retry_after_secs: Option<u64>,
}

#[derive(Debug, Clone)]
struct PendingForeign {
    id: String,
    start: Timestamp,
    end: Timestamp,
}

#[derive(Debug, Default)]
struct Inner {
    token: String,
    /// Events per calendar, in insertion order (the "unspecified, stable order" of events.list).
    calendars: HashMap<String, Vec<SandboxEvent>>,
    missing_calendars: HashSet<String>,
    counts: HashMap<GoogleCalendarMethod, u64>,
    down: bool,
    faults: VecDeque<Fault>,
    latency: Duration,
    pending_foreign: HashMap<String, VecDeque<PendingForeign>>,
    seq: u64,
    /// Push channels opened by events.watch (`super::google_push`).
    channels: Vec<WatchChannel>,
    /// The push delivery queue, started by the first events.watch.
    push_tx: Option<mpsc::UnboundedSender<Push>>,
    /// Notifications still to drop on purpose ("the webhook was missed").
    drop_pushes: usize,
    /// Sync tokens older than this change number answer 410 (`expire_sync_tokens`).
    sync_floor: u64,
    /// What events are dated and channels expire by (`set_clock`).
    clock: EmulatorClock,
}

impl Inner {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A fresh etag. Google's event etags are quoted decimal strings such as `"3181161784712000"`.
    fn next_etag(&mut self) -> String {
        let n = self.next_seq();
        format!("\"{}\"", ETAG_BASE + n)
    }

    /// A collection changed: every open channel watching it gets an `exists` notification. A
    /// channel past its expiration sends nothing more: a channel lives until its `expiration`
    /// and is then replaced, never renewed
    /// (<https://developers.google.com/workspace/calendar/api/guides/push>, "Renew notification channels").
    fn changed(&mut self, calendar_id: &str, stats: &PushStats) {
        let now = self.clock.now();
        let open = |c: &&mut WatchChannel| !c.stopped && c.calendar_id == calendar_id && c.expiration > now;
        for channel in self.channels.iter_mut().filter(open) {
            channel.message_number += 1;
            if self.drop_pushes > 0 {
                self.drop_pushes -= 1;
                stats.dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
            if let Some(tx) = &self.push_tx {
                let _ = tx.send(push_of(channel, "exists"));
            }
        }
    }

    fn event_mut(&mut self, calendar_id: &str, event_id: &str) -> Option<&mut SandboxEvent> {
        self.calendars.get_mut(calendar_id)?.iter_mut().find(|e| e.id == event_id)
    }

    fn push_foreign(
        &mut self,
        calendar_id: &str,
        id: String,
        start: Timestamp,
        end: Timestamp,
        summary: &str,
        transparent: bool,
    ) {
        let now = self.clock.now();
        let etag = self.next_etag();
        let event = SandboxEvent {
            calendar_id: calendar_id.to_owned(),
            id,
            status: "confirmed".to_owned(),
            summary: Some(summary.to_owned()),
            description: None,
            start,
            end,
            start_time_zone: None,
            end_time_zone: None,
            attendees: Vec::new(),
            reminders_use_default: true,
            reminder_overrides: Vec::new(),
            private_properties: BTreeMap::new(),
            shared_properties: BTreeMap::new(),
            transparency: if transparent { "transparent" } else { "opaque" }.to_owned(),
            etag,
            sequence: 0,
            created: now,
            updated: now,
            organizer_email: organizer_for(calendar_id),
            foreign: true,
            writes: Vec::new(),
        };
        self.calendars.entry(calendar_id.to_owned()).or_default().push(event);
    }
}

fn push_of(channel: &WatchChannel, state: &'static str) -> Push {
    Push {
        address: channel.address.clone(),
        channel_id: channel.id.clone(),
        token: channel.token.clone(),
        resource_id: channel.resource_id.clone(),
        resource_uri: format!(
            "https://www.googleapis.com/calendar/v3/calendars/{}/events?alt=json",
            crate::connectors::encode_path_segment(&channel.calendar_id)
        ),
        state,
        message_number: channel.message_number,
        expiration: channel.expiration,
    }
}

/// Shared emulator state; every method is callable from tests while the server runs.
#[derive(Debug)]
pub struct GoogleCalendarState {
    inner: Mutex<Inner>,
    push_stats: Arc<PushStats>,
}

impl GoogleCalendarState {
    /// A fresh, empty calendar world that accepts `Authorization: Bearer <token>`.
    pub fn new(token: &str) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner { token: token.to_owned(), ..Inner::default() }),
            push_stats: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not cascade into every other test.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every push channel opened so far (stopped ones included), in order.
    pub fn channels(&self) -> Vec<WatchChannel> {
        self.lock().channels.clone()
    }

    /// What the push delivery task has done.
    pub fn push_stats(&self) -> Arc<PushStats> {
        self.push_stats.clone()
    }

    /// The next `n` notifications are not sent (a missed webhook); the change is still made and
    /// the message number still advances, as when Google's delivery is lost.
    pub fn drop_next_pushes(&self, n: usize) {
        self.lock().drop_pushes = n;
    }

    /// Invalidates every sync token issued so far: the next incremental events.list answers
    /// 410 Gone and the client must fully sync again.
    pub fn expire_sync_tokens(&self) {
        let mut inner = self.lock();
        inner.sync_floor = inner.seq + 1;
    }

    /// Dates events and expires push channels by `clock` (the service's) instead of the system's.
    pub fn set_clock(&self, clock: crate::clock::SharedClock) {
        self.lock().clock = EmulatorClock::injected(clock);
    }

    /// Replaces the accepted access token (e.g. to simulate expiry and refresh).
    pub fn set_token(&self, token: &str) {
        self.lock().token = token.to_owned();
    }

    /// Every event of the calendar, cancelled ones included, in insertion order.
    pub fn events(&self, calendar_id: &str) -> Vec<SandboxEvent> {
        self.lock().calendars.get(calendar_id).cloned().unwrap_or_default()
    }

    /// Every event of every calendar, cancelled ones included (for the load test's overlap check).
    pub fn all_events(&self) -> Vec<SandboxEvent> {
        self.lock().calendars.values().flatten().cloned().collect()
    }

    /// One stored event, whatever its status.
    pub fn event(&self, calendar_id: &str, event_id: &str) -> Option<SandboxEvent> {
        self.lock().calendars.get(calendar_id)?.iter().find(|e| e.id == event_id).cloned()
    }

    /// Books an opaque event as if the customer booked directly with the business (no API
    /// request is counted). Returns the new event's id.
    pub fn insert_foreign_event(&self, calendar_id: &str, start: Timestamp, end: Timestamp, summary: &str) -> String {
        let mut inner = self.lock();
        let id = generated_id(&mut inner);
        inner.push_foreign(calendar_id, id.clone(), start, end, summary, false);
        inner.changed(calendar_id, &self.push_stats);
        id
    }

    /// Like [`insert_foreign_event`](Self::insert_foreign_event) but "Show me as: Available"
    /// (`transparency: transparent`): visible in events.list, absent from free/busy.
    pub fn insert_transparent_event(
        &self,
        calendar_id: &str,
        start: Timestamp,
        end: Timestamp,
        summary: &str,
    ) -> String {
        let mut inner = self.lock();
        let id = generated_id(&mut inner);
        inner.push_foreign(calendar_id, id.clone(), start, end, summary, true);
        inner.changed(calendar_id, &self.push_stats);
        id
    }

    /// Cancels a stored event directly (as the business deleting it in the Calendar UI).
    /// Returns false when there is no such event.
    pub fn cancel_directly(&self, calendar_id: &str, event_id: &str) -> bool {
        // The guard is dropped at the end of this statement, before cancel_directly_at locks.
        let now = self.lock().clock.now();
        self.cancel_directly_at(calendar_id, event_id, now)
    }

    /// [`Self::cancel_directly`] at a given time: the event's `updated` says when it was
    /// cancelled (the outcome reader tells a late cancellation by it).
    pub fn cancel_directly_at(&self, calendar_id: &str, event_id: &str, at: Timestamp) -> bool {
        let mut inner = self.lock();
        let etag = inner.next_etag();
        match inner.event_mut(calendar_id, event_id) {
            Some(event) => {
                event.status = "cancelled".to_owned();
                event.etag = etag;
                event.updated = at;
                inner.changed(calendar_id, &self.push_stats);
                true
            }
            None => false,
        }
    }

    /// Arms a foreign booking that lands in `calendar_id` at the moment the next events.insert
    /// for that calendar is processed, just before the insert answers: "a foreign event appeared
    /// between our create and our verify". Returns the id the foreign event will have.
    pub fn insert_foreign_on_next_insert(&self, calendar_id: &str, start: Timestamp, end: Timestamp) -> String {
        let mut inner = self.lock();
        let id = generated_id(&mut inner);
        inner.pending_foreign.entry(calendar_id.to_owned()).or_default().push_back(PendingForeign {
            id: id.clone(),
            start,
            end,
        });
        id
    }

    /// Makes the calendar unknown: events endpoints answer 404 and free/busy reports a
    /// `notFound` error for it.
    pub fn mark_calendar_missing(&self, calendar_id: &str) {
        self.lock().missing_calendars.insert(calendar_id.to_owned());
    }

    /// Requests received for `method`, whatever their outcome (faults and auth failures
    /// included).
    pub fn request_count(&self, method: GoogleCalendarMethod) -> u64 {
        self.lock().counts.get(&method).copied().unwrap_or(0)
    }

    /// Total requests received across all methods.
    pub fn total_requests(&self) -> u64 {
        self.lock().counts.values().sum()
    }

    /// While down, every request answers 503 `backendError`.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The next `n` requests (any method) answer `status` with Google's error body for
    /// `reason` (e.g. 403 `rateLimitExceeded`, 429 `rateLimitExceeded`, 500 `backendError`).
    pub fn fail_next(&self, status: u16, reason: &str, n: usize) {
        self.push_fault(None, status, reason, n, None);
    }

    /// Like [`fail_next`](Self::fail_next), only for requests to `method`.
    pub fn fail_next_for(&self, method: GoogleCalendarMethod, status: u16, reason: &str, n: usize) {
        self.push_fault(Some(method), status, reason, n, None);
    }

    /// Like [`fail_next`](Self::fail_next), with a `Retry-After: <secs>` header. (Google's
    /// Calendar guide does not promise Retry-After on rate limits; this exercises clients that
    /// honour it when present.)
    pub fn fail_next_with_retry_after(&self, status: u16, reason: &str, n: usize, retry_after_secs: u64) {
        self.push_fault(None, status, reason, n, Some(retry_after_secs));
    }

    fn push_fault(
        &self,
        method: Option<GoogleCalendarMethod>,
        status: u16,
        reason: &str,
        n: usize,
        retry_after_secs: Option<u64>,
    ) {
        if n == 0 {
            return;
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.lock().faults.push_back(Fault {
            method,
            status,
            reason: reason.to_owned(),
            remaining: n,
            retry_after_secs,
        });
    }

    /// Clears injected faults, the down flag and latency.
    pub fn clear_faults(&self) {
        let mut inner = self.lock();
        inner.faults.clear();
        inner.down = false;
        inner.latency = Duration::ZERO;
    }

    /// Delay applied to every request before it is answered.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }
}

/// A running emulator. Dropping the handle stops the server.
#[derive(Debug)]
pub struct GoogleCalendarSandbox {
    pub addr: SocketAddr,
    pub state: Arc<GoogleCalendarState>,
    task: tokio::task::JoinHandle<()>,
}

impl GoogleCalendarSandbox {
    /// Starts an emulator on `127.0.0.1:0` accepting `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> std::io::Result<Self> {
        Self::serve(GoogleCalendarState::new(token)).await
    }

    /// Starts an emulator over existing state.
    pub async fn serve(state: Arc<GoogleCalendarState>) -> std::io::Result<Self> {
        Self::serve_on(state, 0).await
    }

    /// [`Self::serve`] on a given loopback port (0: any free one).
    pub async fn serve_on(state: Arc<GoogleCalendarState>, port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let app = Self::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "google calendar sandbox stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The base URL to give a connector (`http://127.0.0.1:<port>/`), the equivalent of
    /// `https://www.googleapis.com/`.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("socket address is a valid host")
    }

    /// The emulator's routes, for embedding in another server.
    pub fn router(state: Arc<GoogleCalendarState>) -> Router {
        use GoogleCalendarMethod as M;
        let at = |m: M| format!("{SERVICE_PATH}{}", m.path());
        debug_assert_eq!(at(M::Insert), at(M::List));
        debug_assert_eq!(at(M::Get), at(M::Patch));
        debug_assert_eq!(at(M::Get), at(M::Delete));
        Router::new()
            .route(&at(M::FreeBusy), post(free_busy))
            .route(&at(M::Insert), post(insert_event).get(list_events))
            .route(&at(M::Get), get(get_event).patch(patch_event).delete(delete_event))
            .route(&at(M::Watch), post(watch_events))
            .route(&at(M::StopChannel), post(stop_channel))
            .fallback(|| async { google_error(StatusCode::NOT_FOUND, "global", "notFound", "Not Found", None) })
            .with_state(state)
    }
}

impl Drop for GoogleCalendarSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventBody {
    id: Option<String>,
    status: Option<String>,
    summary: Option<String>,
    description: Option<String>,
    start: Option<DateTimeBody>,
    end: Option<DateTimeBody>,
    attendees: Option<Vec<AttendeeBody>>,
    reminders: Option<RemindersBody>,
    extended_properties: Option<ExtendedPropertiesBody>,
    transparency: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DateTimeBody {
    date: Option<String>,
    date_time: Option<String>,
    time_zone: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AttendeeBody {
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RemindersBody {
    use_default: Option<bool>,
    overrides: Option<Vec<ReminderBody>>,
}

#[derive(Debug, Deserialize)]
struct ReminderBody {
    method: Option<String>,
    minutes: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ExtendedPropertiesBody {
    private: Option<BTreeMap<String, String>>,
    shared: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FreeBusyBody {
    time_min: Option<String>,
    time_max: Option<String>,
    time_zone: Option<String>,
    #[serde(default)]
    items: Vec<FreeBusyItemBody>,
}

#[derive(Debug, Deserialize)]
struct FreeBusyItemBody {
    id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventJson {
    kind: &'static str,
    etag: String,
    id: String,
    status: String,
    html_link: String,
    created: String,
    updated: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    creator: PersonJson,
    organizer: PersonJson,
    start: DateTimeJson,
    end: DateTimeJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    transparency: Option<String>,
    #[serde(rename = "iCalUID")]
    ical_uid: String,
    sequence: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attendees: Vec<AttendeeJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_properties: Option<ExtendedPropertiesJson>,
    reminders: RemindersJson,
    event_type: &'static str,
}

#[derive(Debug, Serialize)]
struct PersonJson {
    email: String,
    #[serde(rename = "self")]
    is_self: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DateTimeJson {
    date_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_zone: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AttendeeJson {
    email: String,
    response_status: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RemindersJson {
    use_default: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    overrides: Vec<ReminderJson>,
}

#[derive(Debug, Serialize)]
struct ReminderJson {
    method: String,
    minutes: i64,
}

#[derive(Debug, Serialize)]
struct ExtendedPropertiesJson {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    private: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    shared: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsJson {
    kind: &'static str,
    etag: String,
    summary: String,
    updated: String,
    time_zone: &'static str,
    access_role: &'static str,
    default_reminders: Vec<ReminderJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_sync_token: Option<String>,
    items: Vec<EventJson>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FreeBusyJson {
    kind: &'static str,
    time_min: String,
    time_max: String,
    calendars: BTreeMap<String, FreeBusyCalendarJson>,
}

#[derive(Debug, Serialize)]
struct FreeBusyCalendarJson {
    busy: Vec<TimePeriodJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FreeBusyErrorJson>,
}

#[derive(Debug, Serialize)]
struct TimePeriodJson {
    start: String,
    end: String,
}

#[derive(Debug, Serialize)]
struct FreeBusyErrorJson {
    domain: &'static str,
    reason: &'static str,
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A rejected request, boxed: handlers' helpers return `Result<_, Rejection>`.
#[derive(Debug)]
struct Rejection(Box<Response>);

impl From<Response> for Rejection {
    fn from(response: Response) -> Self {
        Rejection(Box::new(response))
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn reject<T>(response: Response) -> Result<T, Rejection> {
    Err(Rejection::from(response))
}

/// Google's error body: `{"error":{"errors":[{domain,reason,message,...}],"code","message"}}`.
/// <https://developers.google.com/workspace/calendar/api/guides/errors>
fn google_error(
    status: StatusCode,
    domain: &str,
    reason: &str,
    message: &str,
    location: Option<(&str, &str)>,
) -> Response {
    let mut item = json!({ "domain": domain, "reason": reason, "message": message });
    if let Some((location_type, location)) = location {
        item["locationType"] = json!(location_type);
        item["location"] = json!(location);
    }
    let body = json!({
        "error": { "errors": [item], "code": status.as_u16(), "message": message }
    });
    json_response(status, &body)
}

fn bad_request(reason: &str, message: &str) -> Response {
    google_error(StatusCode::BAD_REQUEST, "global", reason, message, None)
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("emulator responses serialize");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"))], bytes)
        .into_response()
}

fn fault_response(fault: &Fault) -> Response {
    let (domain, message) = match fault.reason.as_str() {
        "rateLimitExceeded" => ("usageLimits", "Rate Limit Exceeded"),
        "userRateLimitExceeded" => ("usageLimits", "User Rate Limit Exceeded"),
        "quotaExceeded" => ("usageLimits", "Calendar usage limits exceeded."),
        "dailyLimitExceeded" => ("usageLimits", "Daily Limit Exceeded"),
        "backendError" => ("global", "Backend Error"),
        "internalError" => ("global", "Internal Error"),
        other => ("global", other),
    };
    let mut response = google_error(fault.status, domain, &fault.reason, message, None);
    if let Some(secs) = fault.retry_after_secs {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Event ids Google generates look like base32hex; ours are 26 characters of `[0-9a-v]`.
fn generated_id(inner: &mut Inner) -> String {
    // The sequence number keeps ids unique even if the random source repeated.
    let mut bytes = inner.next_seq().to_be_bytes().to_vec();
    bytes.extend_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
    data_encoding::BASE32HEX_NOPAD.encode(&bytes).to_ascii_lowercase()
}

/// Google event id rules (discovery doc, `Event.id`): base32hex characters, i.e. lowercase
/// `a`-`v` and digits, 5 to 1024 characters.
fn is_valid_event_id(id: &str) -> bool {
    (5..=1024).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b))
}

fn organizer_for(calendar_id: &str) -> String {
    if calendar_id.contains('@') { calendar_id.to_owned() } else { format!("{calendar_id}@group.calendar.google.com") }
}

/// RFC 3339 with a numeric offset, rendered in `zone` when it is a known IANA zone, else UTC
/// with `Z` (how Google renders `dateTime`).
fn format_date_time(ts: Timestamp, zone: Option<&str>) -> String {
    match zone.and_then(|z| TimeZone::get(z).ok()) {
        Some(tz) if tz.iana_name() != Some("UTC") => {
            ts.to_zoned_datetime(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
        }
        _ => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }
}

/// `created` / `updated` style: UTC with milliseconds.
fn format_instant(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Parses an RFC 3339 timestamp with a mandatory offset, as events.list's `timeMin`/`timeMax`
/// and FreeBusyRequest require.
fn parse_rfc3339(value: &str) -> Option<Timestamp> {
    // A civil datetime without offset must be rejected: jiff's Timestamp parser requires one.
    value.parse::<Timestamp>().ok()
}

fn resolve_time(dt: &DateTimeBody, which: &str) -> Result<Timestamp, Rejection> {
    if let Some(zone) = &dt.time_zone
        && TimeZone::get(zone).is_err()
    {
        return reject(bad_request("invalid", &format!("Invalid time zone definition for {which} time.")));
    }
    if let Some(value) = &dt.date_time {
        if let Ok(ts) = value.parse::<Timestamp>() {
            return Ok(ts);
        }
        // "A time zone offset is required unless a time zone is explicitly specified in
        // timeZone." (EventDateTime.dateTime)
        let civil = value
            .parse::<jiff::civil::DateTime>()
            .map_err(|_| bad_request("invalid", &format!("Invalid {which} time.")))?;
        let Some(zone) = &dt.time_zone else {
            return reject(bad_request("required", &format!("Missing time zone definition for {which} time.")));
        };
        let tz = TimeZone::get(zone).map_err(|_| bad_request("invalid", "Invalid time zone"))?;
        return civil
            .to_zoned_datetime(tz)
            .map(|z| z.timestamp())
            .map_err(|_| bad_request("invalid", &format!("Invalid {which} time.")).into());
    }
    if dt.date.is_some() {
        return reject(bad_request(
            "invalid",
            "All-day events (start.date) are not supported by the callside sandbox.",
        ));
    }
    reject(bad_request("required", &format!("Missing {which} time.")))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|err| {
        match err.classify() {
            serde_json::error::Category::Data => bad_request("invalid", &format!("Invalid value: {err}")),
            _ => bad_request("parseError", "Parse Error"),
        }
        .into()
    })
}

fn validate_send_updates(value: Option<&String>) -> Result<(), Rejection> {
    match value.map(String::as_str) {
        None | Some("all" | "externalOnly" | "none") => Ok(()),
        Some(other) => reject(google_error(
            StatusCode::BAD_REQUEST,
            "global",
            "invalidParameter",
            &format!(
                "Invalid value '{other}'. Values must match the following regular expression: '(all|externalOnly|none)'"
            ),
            Some(("parameter", "sendUpdates")),
        )),
    }
}

fn query_value<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a String> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn query_bool(params: &[(String, String)], name: &str) -> Result<bool, Rejection> {
    match query_value(params, name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => reject(google_error(
            StatusCode::BAD_REQUEST,
            "global",
            "invalidParameter",
            &format!("Invalid boolean value: '{other}'."),
            Some(("parameter", name)),
        )),
    }
}

fn event_json(event: &SandboxEvent) -> EventJson {
    let html_link = format!(
        "https://www.google.com/calendar/event?eid={}",
        data_encoding::BASE64URL_NOPAD.encode(format!("{} {}", event.id, event.calendar_id).as_bytes())
    );
    let extended_properties = if event.private_properties.is_empty() && event.shared_properties.is_empty() {
        None
    } else {
        Some(ExtendedPropertiesJson {
            private: event.private_properties.clone(),
            shared: event.shared_properties.clone(),
        })
    };
    EventJson {
        kind: "calendar#event",
        etag: event.etag.clone(),
        id: event.id.clone(),
        status: event.status.clone(),
        html_link,
        created: format_instant(event.created),
        updated: format_instant(event.updated),
        summary: event.summary.clone(),
        description: event.description.clone(),
        creator: PersonJson { email: event.organizer_email.clone(), is_self: true },
        organizer: PersonJson { email: event.organizer_email.clone(), is_self: true },
        start: DateTimeJson {
            date_time: format_date_time(event.start, event.start_time_zone.as_deref()),
            time_zone: event.start_time_zone.clone(),
        },
        end: DateTimeJson {
            date_time: format_date_time(event.end, event.end_time_zone.as_deref()),
            time_zone: event.end_time_zone.clone(),
        },
        // "opaque" is the default and Google leaves defaults out of responses.
        transparency: (event.transparency != "opaque").then(|| event.transparency.clone()),
        ical_uid: format!("{}@google.com", event.id),
        sequence: event.sequence,
        attendees: event
            .attendees
            .iter()
            .map(|email| AttendeeJson { email: email.clone(), response_status: "needsAction" })
            .collect(),
        extended_properties,
        reminders: RemindersJson {
            use_default: event.reminders_use_default,
            overrides: event
                .reminder_overrides
                .iter()
                .map(|(method, minutes)| ReminderJson { method: method.clone(), minutes: *minutes })
                .collect(),
        },
        event_type: "default",
    }
}

fn validate_reminders(reminders: &RemindersBody) -> Result<(bool, Vec<(String, i64)>), Rejection> {
    let use_default = reminders.use_default.unwrap_or(false);
    let mut overrides = Vec::new();
    for r in reminders.overrides.iter().flatten() {
        let method = r.method.clone().unwrap_or_default();
        if method != "email" && method != "popup" {
            return reject(bad_request("invalid", "Invalid reminder method."));
        }
        let minutes = r.minutes.ok_or_else(|| bad_request("required", "Missing reminder minutes."))?;
        if !(0..=MAX_REMINDER_MINUTES).contains(&minutes) {
            return reject(bad_request("invalid", "Invalid reminder minutes."));
        }
        overrides.push((method, minutes));
    }
    if overrides.len() > MAX_REMINDER_OVERRIDES {
        return reject(bad_request("invalid", "Too many reminder overrides."));
    }
    if use_default && !overrides.is_empty() {
        return reject(bad_request(
            "cannotUseDefaultRemindersAndSpecifyOverride",
            "Cannot specify both default reminders and overrides at the same time.",
        ));
    }
    Ok((use_default, overrides))
}

fn validate_status(status: Option<&String>) -> Result<(), Rejection> {
    match status.map(String::as_str) {
        None | Some("confirmed" | "tentative" | "cancelled") => Ok(()),
        Some(_) => reject(bad_request("invalid", "Invalid event status.")),
    }
}

fn validate_transparency(value: Option<&String>) -> Result<(), Rejection> {
    match value.map(String::as_str) {
        None | Some("opaque" | "transparent") => Ok(()),
        Some(_) => reject(bad_request("invalid", "Invalid transparency value.")),
    }
}

/// Applies latency, outage, injected faults and authentication, and counts the request.
async fn admit(
    state: &GoogleCalendarState,
    method: GoogleCalendarMethod,
    headers: &HeaderMap,
) -> Result<(), Rejection> {
    let (latency, fault, token) = {
        let mut inner = state.lock();
        *inner.counts.entry(method).or_default() += 1;
        let fault = if inner.down {
            Some(Fault {
                method: None,
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "backendError".to_owned(),
                remaining: 1,
                retry_after_secs: None,
            })
        } else if let Some(pos) = inner.faults.iter().position(|f| f.method.is_none_or(|m| m == method)) {
            let fault = &mut inner.faults[pos];
            fault.remaining -= 1;
            let taken = fault.clone();
            if fault.remaining == 0 {
                inner.faults.remove(pos);
            }
            Some(taken)
        } else {
            None
        };
        (inner.latency, fault, inner.token.clone())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = fault {
        return reject(fault_response(&fault));
    }
    let presented =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(token.as_str()) {
        let mut response = google_error(
            StatusCode::UNAUTHORIZED,
            "global",
            "authError",
            "Invalid Credentials",
            Some(("header", "Authorization")),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
        );
        return reject(response);
    }
    Ok(())
}

fn calendar_not_found() -> Response {
    google_error(StatusCode::NOT_FOUND, "global", "notFound", "Not Found", None)
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn free_busy(State(state): State<Arc<GoogleCalendarState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admit(&state, GoogleCalendarMethod::FreeBusy, &headers).await {
        return r.into_response();
    }
    let req: FreeBusyBody = match parse_body(&body) {
        Ok(req) => req,
        Err(r) => return r.into_response(),
    };
    let (Some(min_raw), Some(max_raw)) = (&req.time_min, &req.time_max) else {
        return bad_request("required", "Missing timeMin or timeMax.");
    };
    let (Some(time_min), Some(time_max)) = (parse_rfc3339(min_raw), parse_rfc3339(max_raw)) else {
        return bad_request("invalid", "Bad Request");
    };
    if time_min >= time_max {
        return google_error(
            StatusCode::BAD_REQUEST,
            "calendar",
            "timeRangeEmpty",
            "The specified time range is empty.",
            Some(("parameter", "timeMax")),
        );
    }
    let zone = req.time_zone.clone();
    if let Some(z) = &zone
        && TimeZone::get(z).is_err()
    {
        return bad_request("invalid", "Invalid time zone definition.");
    }
    let zone = zone.as_deref();

    let inner = state.lock();
    let mut calendars = BTreeMap::new();
    for (index, item) in req.items.iter().enumerate() {
        if index >= MAX_FREEBUSY_CALENDARS {
            calendars.insert(
                item.id.clone(),
                FreeBusyCalendarJson {
                    busy: Vec::new(),
                    errors: vec![FreeBusyErrorJson { domain: "calendar", reason: "tooManyCalendarsRequested" }],
                },
            );
            continue;
        }
        if inner.missing_calendars.contains(&item.id) {
            calendars.insert(
                item.id.clone(),
                FreeBusyCalendarJson {
                    busy: Vec::new(),
                    errors: vec![FreeBusyErrorJson { domain: "global", reason: "notFound" }],
                },
            );
            continue;
        }
        // Busy = confirmed/tentative opaque events overlapping the window, clipped to it and
        // merged where they touch or overlap.
        let mut spans: Vec<(Timestamp, Timestamp)> = inner
            .calendars
            .get(&item.id)
            .into_iter()
            .flatten()
            .filter(|e| e.is_busy() && e.start < time_max && e.end > time_min)
            .map(|e| (e.start.max(time_min), e.end.min(time_max)))
            .filter(|(s, e)| s < e)
            .collect();
        spans.sort();
        let mut merged: Vec<(Timestamp, Timestamp)> = Vec::new();
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        calendars.insert(
            item.id.clone(),
            FreeBusyCalendarJson {
                busy: merged
                    .into_iter()
                    .map(|(s, e)| TimePeriodJson { start: format_date_time(s, zone), end: format_date_time(e, zone) })
                    .collect(),
                errors: Vec::new(),
            },
        );
    }
    drop(inner);
    json_response(
        StatusCode::OK,
        &FreeBusyJson {
            kind: "calendar#freeBusy",
            time_min: format_instant(time_min),
            time_max: format_instant(time_max),
            calendars,
        },
    )
}

async fn insert_event(
    State(state): State<Arc<GoogleCalendarState>>,
    Path(calendar_id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&state, GoogleCalendarMethod::Insert, &headers).await {
        return r.into_response();
    }
    let send_updates = query_value(&params, "sendUpdates").cloned();
    if let Err(r) = validate_send_updates(send_updates.as_ref()) {
        return r.into_response();
    }
    let req: EventBody = match parse_body(&body) {
        Ok(req) => req,
        Err(r) => return r.into_response(),
    };
    if let Some(id) = &req.id
        && !is_valid_event_id(id)
    {
        return bad_request("invalid", "Invalid resource id value.");
    }
    let start_body = req.start.as_ref();
    let end_body = req.end.as_ref();
    let start = match start_body.map(|s| resolve_time(s, "start")) {
        Some(Ok(t)) => t,
        Some(Err(r)) => return r.into_response(),
        None => return bad_request("required", "Missing start time."),
    };
    let end = match end_body.map(|e| resolve_time(e, "end")) {
        Some(Ok(t)) => t,
        Some(Err(r)) => return r.into_response(),
        None => return bad_request("required", "Missing end time."),
    };
    if end < start {
        return google_error(
            StatusCode::BAD_REQUEST,
            "calendar",
            "timeRangeEmpty",
            "The specified time range is empty.",
            None,
        );
    }
    if let Err(r) = validate_status(req.status.as_ref()) {
        return r.into_response();
    }
    if let Err(r) = validate_transparency(req.transparency.as_ref()) {
        return r.into_response();
    }
    let (use_default, overrides) = match &req.reminders {
        Some(reminders) => match validate_reminders(reminders) {
            Ok(v) => v,
            Err(r) => return r.into_response(),
        },
        None => (true, Vec::new()),
    };
    let mut attendees = Vec::new();
    for a in req.attendees.iter().flatten() {
        match &a.email {
            Some(email) if email.contains('@') => attendees.push(email.clone()),
            _ => return bad_request("invalid", "Invalid attendee email."),
        }
    }

    let mut inner = state.lock();
    if inner.missing_calendars.contains(&calendar_id) {
        return calendar_not_found();
    }
    // The armed "foreign booking" lands while this insert is being processed.
    if let Some(queue) = inner.pending_foreign.get_mut(&calendar_id)
        && let Some(pending) = queue.pop_front()
    {
        inner.push_foreign(&calendar_id, pending.id, pending.start, pending.end, "Booked directly", false);
    }
    let id = match req.id.clone() {
        Some(id) => {
            // A deleted (cancelled) event still owns its id: re-inserting it is a 409 too.
            // https://stackoverflow.com/questions/27542721 and
            // https://developers.google.com/workspace/calendar/api/guides/errors (409 duplicate)
            let taken = inner.calendars.get(&calendar_id).is_some_and(|events| events.iter().any(|e| e.id == id));
            if taken {
                return google_error(
                    StatusCode::CONFLICT,
                    "global",
                    "duplicate",
                    "The requested identifier already exists.",
                    None,
                );
            }
            id
        }
        None => generated_id(&mut inner),
    };
    let now = inner.clock.now();
    let etag = inner.next_etag();
    let ext = req.extended_properties.as_ref();
    let event = SandboxEvent {
        calendar_id: calendar_id.clone(),
        id,
        status: req.status.clone().unwrap_or_else(|| "confirmed".to_owned()),
        summary: req.summary.clone(),
        description: req.description.clone(),
        start,
        end,
        start_time_zone: start_body.and_then(|s| s.time_zone.clone()),
        end_time_zone: end_body.and_then(|e| e.time_zone.clone()),
        attendees,
        reminders_use_default: use_default,
        reminder_overrides: overrides,
        private_properties: ext.and_then(|e| e.private.clone()).unwrap_or_default(),
        shared_properties: ext.and_then(|e| e.shared.clone()).unwrap_or_default(),
        transparency: req.transparency.clone().unwrap_or_else(|| "opaque".to_owned()),
        etag,
        sequence: 0,
        created: now,
        updated: now,
        organizer_email: organizer_for(&calendar_id),
        foreign: false,
        writes: vec![RecordedWrite { method: GoogleCalendarMethod::Insert, send_updates, if_match: None }],
    };
    let json = event_json(&event);
    inner.calendars.entry(calendar_id.clone()).or_default().push(event);
    inner.changed(&calendar_id, &state.push_stats);
    drop(inner);
    json_response(StatusCode::OK, &json)
}

async fn get_event(
    State(state): State<Arc<GoogleCalendarState>>,
    Path((calendar_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&state, GoogleCalendarMethod::Get, &headers).await {
        return r.into_response();
    }
    let inner = state.lock();
    if inner.missing_calendars.contains(&calendar_id) {
        return calendar_not_found();
    }
    // "The get method always returns [cancelled events]" (Event.status).
    let found =
        inner.calendars.get(&calendar_id).and_then(|events| events.iter().find(|e| e.id == event_id)).map(event_json);
    drop(inner);
    match found {
        Some(json) => json_response(StatusCode::OK, &json),
        None => calendar_not_found(),
    }
}

async fn list_events(
    State(state): State<Arc<GoogleCalendarState>>,
    Path(calendar_id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&state, GoogleCalendarMethod::List, &headers).await {
        return r.into_response();
    }
    // Incremental sync (https://developers.google.com/workspace/calendar/api/guides/sync and the
    // discovery doc's `syncToken`): only entries changed since the token, deleted ones always
    // included; the filters below cannot be combined with it; an expired token answers 410.
    let sync_from = match query_value(&params, "syncToken") {
        None => None,
        Some(token) => {
            const INCOMPATIBLE: [&str; 8] = [
                "iCalUID",
                "orderBy",
                "privateExtendedProperty",
                "q",
                "sharedExtendedProperty",
                "timeMin",
                "timeMax",
                "updatedMin",
            ];
            if let Some((name, _)) = params.iter().find(|(k, _)| INCOMPATIBLE.contains(&k.as_str())) {
                return bad_request("invalid", &format!("{name} cannot be specified together with syncToken."));
            }
            if query_value(&params, "showDeleted").is_some_and(|v| v == "false") {
                return bad_request("invalid", "showDeleted cannot be false together with syncToken.");
            }
            let Some(seq) = decode_sync_token(token) else {
                return bad_request("invalid", "Invalid sync token value.");
            };
            let inner = state.lock();
            if seq > inner.seq {
                return bad_request("invalid", "Invalid sync token value.");
            }
            if seq < inner.sync_floor {
                // https://developers.google.com/workspace/calendar/api/guides/errors (410: Gone)
                return google_error(
                    StatusCode::GONE,
                    "calendar",
                    "fullSyncRequired",
                    "Sync token is no longer valid, a full sync is required.",
                    None,
                );
            }
            Some(seq)
        }
    };
    let time_bound = |name: &str| -> Result<Option<Timestamp>, Rejection> {
        match query_value(&params, name) {
            None => Ok(None),
            Some(raw) => parse_rfc3339(raw).map(Some).ok_or_else(|| {
                google_error(StatusCode::BAD_REQUEST, "global", "invalid", "Bad Request", Some(("parameter", name)))
                    .into()
            }),
        }
    };
    let time_min = match time_bound("timeMin") {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let time_max = match time_bound("timeMax") {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    if let (Some(min), Some(max)) = (time_min, time_max)
        && min >= max
    {
        return google_error(
            StatusCode::BAD_REQUEST,
            "calendar",
            "timeRangeEmpty",
            "The specified time range is empty.",
            Some(("parameter", "timeMax")),
        );
    }
    let single_events = match query_bool(&params, "singleEvents") {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let show_deleted = match query_bool(&params, "showDeleted") {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let order_by = query_value(&params, "orderBy").map(String::as_str);
    match order_by {
        None | Some("updated") => {}
        // "Order by the start date/time (ascending). This is only available when querying
        // single events (i.e. the parameter singleEvents is True)".
        Some("startTime") if single_events => {}
        Some("startTime") => {
            return bad_request("badRequest", "The requested ordering is not available for the particular query.");
        }
        Some(_) => return bad_request("invalidParameter", "Invalid value for orderBy."),
    }
    let page_size = match query_value(&params, "maxResults") {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(MAX_PAGE_SIZE),
            _ => return bad_request("invalidParameter", "Invalid value for maxResults."),
        },
    };
    let offset = match query_value(&params, "pageToken") {
        None => 0,
        Some(token) => match decode_page_token(token) {
            Some(n) => n,
            None => return bad_request("invalid", "Invalid page token."),
        },
    };
    let mut constraints = Vec::new();
    for (k, v) in &params {
        if k == "privateExtendedProperty" {
            match v.split_once('=') {
                Some((name, value)) => constraints.push((name.to_owned(), value.to_owned())),
                None => {
                    return bad_request("invalid", "Invalid privateExtendedProperty constraint.");
                }
            }
        }
    }

    let inner = state.lock();
    if inner.missing_calendars.contains(&calendar_id) {
        return calendar_not_found();
    }
    let mut matching: Vec<&SandboxEvent> = inner
        .calendars
        .get(&calendar_id)
        .into_iter()
        .flatten()
        .filter(|e| sync_from.is_none_or(|seq| e.change_seq() > seq))
        .filter(|e| show_deleted || sync_from.is_some() || e.status != "cancelled")
        // timeMin: "Lower bound (exclusive) for an event's end time"; timeMax: "Upper bound
        // (exclusive) for an event's start time".
        .filter(|e| time_min.is_none_or(|min| e.end > min))
        .filter(|e| time_max.is_none_or(|max| e.start < max))
        .filter(|e| constraints.iter().all(|(k, v)| e.private_properties.get(k) == Some(v)))
        .collect();
    match order_by {
        Some("startTime") => matching.sort_by(|a, b| a.start.cmp(&b.start).then(a.id.cmp(&b.id))),
        Some("updated") => matching.sort_by(|a, b| a.updated.cmp(&b.updated).then(a.id.cmp(&b.id))),
        _ if sync_from.is_some() => matching.sort_by_key(|e| e.change_seq()),
        _ => {}
    }
    // A sync token comes with the last page of a query that sync can follow: one without the
    // filters sync cannot be combined with (time bounds excepted, for the initial full sync).
    let syncable = order_by.is_none() && constraints.is_empty() && query_value(&params, "q").is_none();
    let total = matching.len();
    let items: Vec<EventJson> = matching.into_iter().skip(offset).take(page_size).map(event_json).collect();
    let next = offset + page_size;
    let latest = inner
        .calendars
        .get(&calendar_id)
        .into_iter()
        .flatten()
        .map(|e| e.updated)
        .max()
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let etag = format!("\"{}\"", inner.seq);
    let sync_seq = inner.seq;
    drop(inner);
    json_response(
        StatusCode::OK,
        &EventsJson {
            kind: "calendar#events",
            etag,
            summary: calendar_id,
            updated: format_instant(latest),
            time_zone: "UTC",
            access_role: "owner",
            default_reminders: vec![ReminderJson { method: "popup".to_owned(), minutes: 10 }],
            next_page_token: (next < total).then(|| encode_page_token(next)),
            next_sync_token: (next >= total && syncable).then(|| encode_sync_token(sync_seq)),
            items,
        },
    )
}

fn encode_sync_token(seq: u64) -> String {
    data_encoding::BASE64URL_NOPAD.encode(format!("sync:{seq}").as_bytes())
}

fn decode_sync_token(token: &str) -> Option<u64> {
    let raw = data_encoding::BASE64URL_NOPAD.decode(token.as_bytes()).ok()?;
    String::from_utf8(raw).ok()?.strip_prefix("sync:")?.parse().ok()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChannelBody {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    address: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
    resource_id: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
}

/// Channel TTL when the request names none: one week (Google's default for Calendar channels;
/// `params.ttl` or `expiration` override it).
const DEFAULT_CHANNEL_TTL_SECS: i64 = 7 * 24 * 3600;

/// events.watch: opens a push channel on a calendar's events and sends its `sync` message.
async fn watch_events(
    State(state): State<Arc<GoogleCalendarState>>,
    Path(calendar_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&state, GoogleCalendarMethod::Watch, &headers).await {
        return r.into_response();
    }
    let req: ChannelBody = match parse_body(&body) {
        Ok(req) => req,
        Err(r) => return r.into_response(),
    };
    let (Some(id), Some(address)) = (req.id.filter(|i| !i.is_empty()), req.address.filter(|a| !a.is_empty())) else {
        return bad_request("required", "Channel id and address are required.");
    };
    if !matches!(req.kind.as_deref(), Some("web_hook" | "webhook")) {
        return bad_request("invalid", "Invalid channel type.");
    }
    // Google requires an https address with a valid certificate; the emulator also takes the
    // loopback http addresses of the tests.
    if url::Url::parse(&address).map(|u| u.scheme() != "https" && u.scheme() != "http").unwrap_or(true) {
        return bad_request("invalid", "Invalid channel address.");
    }
    // Domain time: the channel expires on the emulator's clock (the service's, when injected).
    let now = state.lock().clock.now();
    let expiration = match (&req.expiration, req.params.get("ttl")) {
        (Some(ms), _) => match ms.parse::<i64>().ok().and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
            Some(t) => t,
            None => return bad_request("invalid", "Invalid channel expiration."),
        },
        (None, Some(ttl)) => {
            match ttl
                .parse::<i64>()
                .ok()
                .filter(|secs| *secs > 0)
                .and_then(|secs| now.checked_add(jiff::SignedDuration::from_secs(secs)).ok())
            {
                Some(t) => t,
                None => return bad_request("invalid", "Invalid channel ttl."),
            }
        }
        (None, None) => now + jiff::SignedDuration::from_secs(DEFAULT_CHANNEL_TTL_SECS),
    };
    let mut inner = state.lock();
    if inner.missing_calendars.contains(&calendar_id) {
        return calendar_not_found();
    }
    if inner.channels.iter().any(|c| c.id == id) {
        return bad_request("channelIdNotUnique", "Channel id not unique.");
    }
    let resource_id = format!(
        "res-{}",
        crate::connectors::truncate_bytes(
            &data_encoding::BASE32HEX_NOPAD.encode(calendar_id.as_bytes()).to_ascii_lowercase(),
            24
        )
    );
    let channel = WatchChannel {
        id,
        resource_id,
        calendar_id,
        address,
        token: req.token,
        expiration,
        message_number: 1,
        stopped: false,
    };
    if inner.push_tx.is_none() {
        inner.push_tx = Some(start_delivery(state.push_stats.clone()));
    }
    if let Some(tx) = &inner.push_tx {
        let _ = tx.send(push_of(&channel, "sync"));
    }
    let answer = json!({
        "kind": "api#channel",
        "id": channel.id,
        "resourceId": channel.resource_id,
        "resourceUri": push_of(&channel, "sync").resource_uri,
        "token": channel.token,
        "expiration": channel.expiration.as_millisecond().to_string(),
    });
    inner.channels.push(channel);
    drop(inner);
    json_response(StatusCode::OK, &answer)
}

/// channels.stop: stops a channel named by its `id` and `resourceId`.
async fn stop_channel(State(state): State<Arc<GoogleCalendarState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = admit(&state, GoogleCalendarMethod::StopChannel, &headers).await {
        return r.into_response();
    }
    let req: ChannelBody = match parse_body(&body) {
        Ok(req) => req,
        Err(r) => return r.into_response(),
    };
    let mut inner = state.lock();
    match inner
        .channels
        .iter_mut()
        .find(|c| Some(&c.id) == req.id.as_ref() && Some(&c.resource_id) == req.resource_id.as_ref())
    {
        Some(channel) => {
            channel.stopped = true;
            StatusCode::NO_CONTENT.into_response()
        }
        None => google_error(StatusCode::NOT_FOUND, "global", "notFound", "Channel not found.", None),
    }
}

fn encode_page_token(offset: usize) -> String {
    data_encoding::BASE64URL_NOPAD.encode(format!("offset:{offset}").as_bytes())
}

fn decode_page_token(token: &str) -> Option<usize> {
    let raw = data_encoding::BASE64URL_NOPAD.decode(token.as_bytes()).ok()?;
    String::from_utf8(raw).ok()?.strip_prefix("offset:")?.parse().ok()
}

async fn patch_event(
    State(state): State<Arc<GoogleCalendarState>>,
    Path((calendar_id, event_id)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&state, GoogleCalendarMethod::Patch, &headers).await {
        return r.into_response();
    }
    let send_updates = query_value(&params, "sendUpdates").cloned();
    if let Err(r) = validate_send_updates(send_updates.as_ref()) {
        return r.into_response();
    }
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let req: EventBody = match parse_body(&body) {
        Ok(req) => req,
        Err(r) => return r.into_response(),
    };
    let new_start = match req.start.as_ref().map(|s| resolve_time(s, "start")) {
        Some(Ok(t)) => Some(t),
        Some(Err(r)) => return r.into_response(),
        None => None,
    };
    let new_end = match req.end.as_ref().map(|e| resolve_time(e, "end")) {
        Some(Ok(t)) => Some(t),
        Some(Err(r)) => return r.into_response(),
        None => None,
    };
    if let Err(r) = validate_status(req.status.as_ref()) {
        return r.into_response();
    }
    if let Err(r) = validate_transparency(req.transparency.as_ref()) {
        return r.into_response();
    }
    let reminders = match &req.reminders {
        Some(r) => match validate_reminders(r) {
            Ok(v) => Some(v),
            Err(resp) => return resp.into_response(),
        },
        None => None,
    };

    let mut inner = state.lock();
    if inner.missing_calendars.contains(&calendar_id) {
        return calendar_not_found();
    }
    let etag = inner.next_etag();
    let now = inner.clock.now();
    let Some(event) = inner.event_mut(&calendar_id, &event_id) else {
        return calendar_not_found();
    };
    // Conditional modification: If-Match with the event's etag, 412 on mismatch.
    // https://developers.google.com/workspace/calendar/api/guides/errors (412)
    if let Some(expected) = &if_match
        && expected != "*"
        && expected != &event.etag
    {
        return google_error(
            StatusCode::PRECONDITION_FAILED,
            "global",
            "conditionNotMet",
            "Precondition Failed",
            Some(("header", "If-Match")),
        );
    }
    let start = new_start.unwrap_or(event.start);
    let end = new_end.unwrap_or(event.end);
    if end < start {
        return google_error(
            StatusCode::BAD_REQUEST,
            "calendar",
            "timeRangeEmpty",
            "The specified time range is empty.",
            None,
        );
    }
    // Patch semantics: absent fields keep their value; nested objects merge; arrays replace.
    if start != event.start || end != event.end {
        event.sequence += 1;
    }
    event.start = start;
    event.end = end;
    if let Some(tz) = req.start.as_ref().and_then(|s| s.time_zone.clone()) {
        event.start_time_zone = Some(tz);
    }
    if let Some(tz) = req.end.as_ref().and_then(|e| e.time_zone.clone()) {
        event.end_time_zone = Some(tz);
    }
    if let Some(summary) = req.summary {
        event.summary = Some(summary);
    }
    if let Some(description) = req.description {
        event.description = Some(description);
    }
    if let Some(status) = req.status {
        event.status = status;
    }
    if let Some(transparency) = req.transparency {
        event.transparency = transparency;
    }
    if let Some(attendees) = req.attendees {
        event.attendees = attendees.into_iter().filter_map(|a| a.email).collect();
    }
    if let Some((use_default, overrides)) = reminders {
        event.reminders_use_default = use_default;
        event.reminder_overrides = overrides;
    }
    if let Some(ext) = req.extended_properties {
        event.private_properties.extend(ext.private.unwrap_or_default());
        event.shared_properties.extend(ext.shared.unwrap_or_default());
    }
    event.etag = etag;
    event.updated = now;
    event.writes.push(RecordedWrite { method: GoogleCalendarMethod::Patch, send_updates, if_match });
    let json = event_json(event);
    inner.changed(&calendar_id, &state.push_stats);
    drop(inner);
    json_response(StatusCode::OK, &json)
}

async fn delete_event(
    State(state): State<Arc<GoogleCalendarState>>,
    Path((calendar_id, event_id)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&state, GoogleCalendarMethod::Delete, &headers).await {
        return r.into_response();
    }
    let send_updates = query_value(&params, "sendUpdates").cloned();
    if let Err(r) = validate_send_updates(send_updates.as_ref()) {
        return r.into_response();
    }
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut inner = state.lock();
    if inner.missing_calendars.contains(&calendar_id) {
        return calendar_not_found();
    }
    let etag = inner.next_etag();
    let now = inner.clock.now();
    let Some(event) = inner.event_mut(&calendar_id, &event_id) else {
        return calendar_not_found();
    };
    if event.status == "cancelled" {
        // Deleting an already deleted event answers 410 Gone, reason `deleted`.
        // https://developers.google.com/workspace/calendar/api/guides/errors (410: Gone)
        return google_error(StatusCode::GONE, "global", "deleted", "Resource has been deleted", None);
    }
    if let Some(expected) = &if_match
        && expected != "*"
        && expected != &event.etag
    {
        return google_error(
            StatusCode::PRECONDITION_FAILED,
            "global",
            "conditionNotMet",
            "Precondition Failed",
            Some(("header", "If-Match")),
        );
    }
    // Deletion keeps the event, cancelled: its id stays taken.
    event.status = "cancelled".to_owned();
    event.etag = etag;
    event.updated = now;
    event.writes.push(RecordedWrite { method: GoogleCalendarMethod::Delete, send_updates, if_match });
    inner.changed(&calendar_id, &state.push_stats);
    drop(inner);
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use tower::ServiceExt;

    const TOKEN: &str = "sandbox-token";
    const DISCOVERY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vendor-specs/google/calendar.v3.json");

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn discovery() -> Value {
        let text = std::fs::read_to_string(DISCOVERY)
            .unwrap_or_else(|err| panic!("the Google Calendar discovery document must exist at {DISCOVERY}: {err}"));
        serde_json::from_str(&text).expect("discovery document is JSON")
    }

    /// Every method of the discovery document, as `(id, httpMethod, path)`.
    fn discovery_methods(doc: &Value) -> Vec<(String, String, String)> {
        fn walk(resources: &Value, out: &mut Vec<(String, String, String)>) {
            let Some(resources) = resources.as_object() else {
                return;
            };
            for resource in resources.values() {
                if let Some(methods) = resource["methods"].as_object() {
                    for m in methods.values() {
                        out.push((
                            m["id"].as_str().unwrap().to_owned(),
                            m["httpMethod"].as_str().unwrap().to_owned(),
                            m["path"].as_str().unwrap().to_owned(),
                        ));
                    }
                }
                walk(&resource["resources"], out);
            }
        }
        let mut out = Vec::new();
        walk(&doc["resources"], &mut out);
        out
    }

    /// Checks that every field of `value` is declared by `schema` (following `$ref`, `items`,
    /// `properties` and `additionalProperties`), and that scalar types agree.
    fn check_fields(value: &Value, schema: &Value, doc: &Value, path: &str, errors: &mut Vec<String>) {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(name) => &doc["schemas"][name],
            None => schema,
        };
        if schema.is_null() {
            errors.push(format!("{path}: no schema"));
            return;
        }
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let child_path = format!("{path}.{key}");
                    if let Some(prop) = schema["properties"].get(key) {
                        check_fields(child, prop, doc, &child_path, errors);
                    } else if let Some(additional) = schema.get("additionalProperties") {
                        check_fields(child, additional, doc, &child_path, errors);
                    } else {
                        errors.push(format!("{child_path}: not in the discovery schema"));
                    }
                }
            }
            Value::Array(items) => match schema.get("items") {
                Some(item_schema) => {
                    for (i, item) in items.iter().enumerate() {
                        check_fields(item, item_schema, doc, &format!("{path}[{i}]"), errors);
                    }
                }
                None => errors.push(format!("{path}: array where the schema has no items")),
            },
            Value::String(_) => {
                let ok =
                    matches!(schema["type"].as_str(), Some("string")) || schema["format"].as_str() == Some("int64");
                if !ok {
                    errors.push(format!("{path}: string where the schema says {}", schema["type"]));
                }
            }
            Value::Bool(_) => {
                if schema["type"].as_str() != Some("boolean") {
                    errors.push(format!("{path}: boolean where the schema says {}", schema["type"]));
                }
            }
            Value::Number(_) => {
                if !matches!(schema["type"].as_str(), Some("integer" | "number")) {
                    errors.push(format!("{path}: number where the schema says {}", schema["type"]));
                }
            }
            Value::Null => errors.push(format!("{path}: null emitted")),
        }
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut builder = Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in extra {
            builder = builder.header(*k, *v);
        }
        let body = match body {
            Some(b) => {
                builder = builder.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&b).unwrap())
            }
            None => Body::empty(),
        };
        let response = app.clone().oneshot(builder.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, headers, json)
    }

    fn full_event_body(id: &str) -> Value {
        json!({
            "id": id,
            "summary": "Haircut",
            "description": "Booked by phone",
            "start": {"dateTime": "2026-11-23T15:00:00+01:00", "timeZone": "Europe/Berlin"},
            "end": {"dateTime": "2026-11-23T15:30:00+01:00", "timeZone": "Europe/Berlin"},
            "attendees": [{"email": "caller@example.com"}],
            "reminders": {"useDefault": false, "overrides": [{"method": "popup", "minutes": 30}]},
            "extendedProperties": {"private": {"callside_call_id": "c1"}, "shared": {"k": "v"}},
            "transparency": "transparent"
        })
    }

    #[test]
    fn every_route_is_a_discovery_method() {
        let doc = discovery();
        let service_path = doc["servicePath"].as_str().expect("servicePath");
        assert_eq!(format!("/{service_path}"), SERVICE_PATH);
        let methods = discovery_methods(&doc);
        for m in GoogleCalendarMethod::ALL {
            let found = methods
                .iter()
                .find(|(id, _, _)| id == m.discovery_id())
                .unwrap_or_else(|| panic!("{} is not in the discovery document", m.discovery_id()));
            assert_eq!(found.1, m.http_method(), "{:?} HTTP method", m);
            assert_eq!(format!("/{service_path}{}", found.2), format!("{SERVICE_PATH}{}", m.path()), "{m:?} path");
        }
    }

    #[tokio::test]
    async fn the_router_serves_exactly_those_routes() {
        // Every (method, path) above reaches a handler (401 without credentials, not 404/405).
        let app = GoogleCalendarSandbox::router(GoogleCalendarState::new(TOKEN));
        for m in GoogleCalendarMethod::ALL {
            let uri = format!(
                "{SERVICE_PATH}{}",
                m.path().replace("{calendarId}", "owner%40example.com").replace("{eventId}", "abcde12345")
            );
            let req = Request::builder().method(m.http_method()).uri(&uri).body(Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{m:?} {uri}");
        }
        let req = Request::builder()
            .method("PUT")
            .uri(format!("{SERVICE_PATH}calendars/x/events/abcde"))
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn emitted_fields_exist_in_the_discovery_schemas() {
        let doc = discovery();
        let app = GoogleCalendarSandbox::router(GoogleCalendarState::new(TOKEN));
        let base = format!("{SERVICE_PATH}calendars/owner%40example.com/events");
        let mut errors = Vec::new();

        let (status, _, inserted) = call(&app, "POST", &base, Some(full_event_body("abcdef0123")), &[]).await;
        assert_eq!(status, StatusCode::OK, "{inserted}");
        check_fields(&inserted, &json!({"$ref": "Event"}), &doc, "insert", &mut errors);

        let (_, _, got) = call(&app, "GET", &format!("{base}/abcdef0123"), None, &[]).await;
        check_fields(&got, &json!({"$ref": "Event"}), &doc, "get", &mut errors);

        let (_, _, patched) =
            call(&app, "PATCH", &format!("{base}/abcdef0123"), Some(json!({"summary": "Colour"})), &[]).await;
        check_fields(&patched, &json!({"$ref": "Event"}), &doc, "patch", &mut errors);

        for i in 0..3 {
            let mut body = full_event_body(&format!("pagedevent{i}"));
            body["transparency"] = json!("opaque");
            call(&app, "POST", &base, Some(body), &[]).await;
        }
        let (_, _, listed) = call(&app, "GET", &format!("{base}?maxResults=2"), None, &[]).await;
        assert!(listed["nextPageToken"].is_string());
        check_fields(&listed, &json!({"$ref": "Events"}), &doc, "list", &mut errors);

        let state = GoogleCalendarState::new(TOKEN);
        state.mark_calendar_missing("gone@example.com");
        let app = GoogleCalendarSandbox::router(state.clone());
        state.insert_foreign_event(
            "owner@example.com",
            ts("2026-11-23T09:00:00Z"),
            ts("2026-11-23T10:00:00Z"),
            "Walk-in",
        );
        let (status, _, fb) = call(
            &app,
            "POST",
            &format!("{SERVICE_PATH}freeBusy"),
            Some(json!({
                "timeMin": "2026-11-23T00:00:00Z",
                "timeMax": "2026-11-24T00:00:00Z",
                "items": [{"id": "owner@example.com"}, {"id": "gone@example.com"}]
            })),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fb["calendars"]["gone@example.com"]["errors"][0]["reason"], "notFound");
        check_fields(&fb, &json!({"$ref": "FreeBusyResponse"}), &doc, "freeBusy", &mut errors);

        assert!(errors.is_empty(), "fields outside the discovery schemas: {errors:#?}");
        // And the walk itself catches an unknown field.
        let mut caught = Vec::new();
        check_fields(&json!({"bogus": 1}), &json!({"$ref": "Event"}), &doc, "x", &mut caught);
        assert_eq!(caught.len(), 1);
    }

    #[tokio::test]
    async fn auth_is_required_and_errors_have_googles_shape() {
        let sandbox = GoogleCalendarSandbox::start(TOKEN).await.unwrap();
        let client = reqwest::Client::new();
        let url = format!("http://{}/calendar/v3/calendars/primary/events", sandbox.addr);
        let resp = client.get(&url).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], 401);
        assert_eq!(body["error"]["errors"][0]["reason"], "authError");
        assert_eq!(body["error"]["message"], "Invalid Credentials");
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let resp = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(sandbox.state.request_count(GoogleCalendarMethod::List), 3);
    }

    #[tokio::test]
    async fn event_ids_follow_googles_rules_and_stay_taken_after_delete() {
        let app = GoogleCalendarSandbox::router(GoogleCalendarState::new(TOKEN));
        let base = format!("{SERVICE_PATH}calendars/primary/events");
        for bad in ["abcd", "ABCDEF", "abcdwxyz", "abc-def", &"a".repeat(1025)] {
            let (status, _, body) = call(&app, "POST", &base, Some(full_event_body(bad)), &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(body["error"]["errors"][0]["reason"], "invalid");
        }
        let (status, _, _) =
            call(&app, "POST", &base, Some(full_event_body("0123456789abcdefghijklmnopqrstuv")), &[]).await;
        assert_eq!(status, StatusCode::OK);

        let (status, _, _) = call(&app, "POST", &base, Some(full_event_body("vvvvv")), &[]).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) = call(&app, "POST", &base, Some(full_event_body("vvvvv")), &[]).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"]["errors"][0]["reason"], "duplicate");

        let (status, _, _) = call(&app, "DELETE", &format!("{base}/vvvvv?sendUpdates=none"), None, &[]).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _, body) = call(&app, "DELETE", &format!("{base}/vvvvv"), None, &[]).await;
        assert_eq!(status, StatusCode::GONE);
        assert_eq!(body["error"]["errors"][0]["reason"], "deleted");
        let (status, _, body) = call(&app, "POST", &base, Some(full_event_body("vvvvv")), &[]).await;
        assert_eq!(status, StatusCode::CONFLICT, "a deleted event's id stays taken");
        assert_eq!(body["error"]["errors"][0]["reason"], "duplicate");
        let (status, _, body) = call(&app, "GET", &format!("{base}/vvvvv"), None, &[]).await;
        assert_eq!(status, StatusCode::OK, "get returns cancelled events");
        assert_eq!(body["status"], "cancelled");
    }

    /// Push channels and events live on the emulator's clock once one is injected (the
    /// service's): expirations count from its now, events are dated by it, and a channel past
    /// its expiration is sent nothing more. A TTL that is not a positive, representable number
    /// of seconds is refused.
    #[tokio::test]
    async fn channels_expire_and_events_are_dated_on_the_injected_clock() {
        let state = GoogleCalendarState::new(TOKEN);
        let start = ts("2026-11-23T13:00:00Z");
        let clock = crate::clock::ManualClock::new(start);
        state.set_clock(Arc::new(clock.clone()));
        let app = GoogleCalendarSandbox::router(state.clone());
        let watch = format!("{SERVICE_PATH}calendars/primary/events/watch");
        let channel = |id: &str, params: Value| json!({"id": id, "type": "web_hook", "address": "http://127.0.0.1:9/hook", "params": params});
        let hours = |h: i64| start + jiff::SignedDuration::from_hours(h);
        let (status, _, answer) =
            call(&app, "POST", &watch, Some(channel("ch-ttl", json!({"ttl": "3600"}))), &[]).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["expiration"], hours(1).as_millisecond().to_string());
        let (_, _, answer) = call(&app, "POST", &watch, Some(channel("ch-default", json!({}))), &[]).await;
        assert_eq!(answer["expiration"], hours(7 * 24).as_millisecond().to_string(), "a week by default");
        for ttl in ["0", "-5", "soon", "9223372036854775807"] {
            let body = channel(&format!("ch-bad{ttl}"), json!({ "ttl": ttl }));
            let (status, _, err) = call(&app, "POST", &watch, Some(body), &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "ttl {ttl}: {err}");
        }
        let sent = |id: &str| state.channels().into_iter().find(|c| c.id == id).expect("opened").message_number;

        clock.advance(jiff::SignedDuration::from_mins(30));
        let base = format!("{SERVICE_PATH}calendars/primary/events");
        let (status, _, _) = call(&app, "POST", &base, Some(full_event_body("clocked1")), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(state.event("primary", "clocked1").unwrap().updated, start + jiff::SignedDuration::from_mins(30));
        assert_eq!((sent("ch-ttl"), sent("ch-default")), (2, 2), "both channels are told");

        // An hour and a minute on, the one-hour channel has expired: only the other is told.
        clock.advance(jiff::SignedDuration::from_mins(31));
        assert!(state.cancel_directly("primary", "clocked1"));
        assert_eq!(state.event("primary", "clocked1").unwrap().updated, start + jiff::SignedDuration::from_mins(61));
        assert_eq!((sent("ch-ttl"), sent("ch-default")), (2, 3), "an expired channel is sent nothing");
    }

    #[tokio::test]
    async fn patch_honours_if_match_and_changes_the_etag() {
        let state = GoogleCalendarState::new(TOKEN);
        let app = GoogleCalendarSandbox::router(state.clone());
        let base = format!("{SERVICE_PATH}calendars/primary/events");
        let (_, _, created) = call(&app, "POST", &base, Some(full_event_body("etagtest1")), &[]).await;
        let etag = created["etag"].as_str().unwrap().to_owned();
        let url = format!("{base}/etagtest1?sendUpdates=all");
        let body = json!({"start": {"dateTime": "2026-11-23T16:00:00Z"}, "end": {"dateTime": "2026-11-23T16:30:00Z"}});
        let (status, _, err) = call(&app, "PATCH", &url, Some(body.clone()), &[("if-match", "\"1\"")]).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(err["error"]["errors"][0]["reason"], "conditionNotMet");
        let (status, _, moved) = call(&app, "PATCH", &url, Some(body), &[("if-match", &etag)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(moved["etag"], created["etag"]);
        // The zone given at creation is kept; the instant moved.
        assert_eq!(moved["start"]["timeZone"], "Europe/Berlin");
        assert_eq!(moved["start"]["dateTime"], "2026-11-23T17:00:00+01:00");
        assert_eq!(moved["sequence"], 1);
        let stored = state.event("primary", "etagtest1").unwrap();
        assert_eq!(stored.start, ts("2026-11-23T16:00:00Z"));
        assert_eq!(stored.send_updates_of(GoogleCalendarMethod::Patch), Some("all"));
        assert_eq!(stored.writes.len(), 2);
    }

    #[tokio::test]
    async fn list_filters_by_end_after_time_min_and_start_before_time_max() {
        let state = GoogleCalendarState::new(TOKEN);
        let app = GoogleCalendarSandbox::router(state.clone());
        let cal = "primary";
        let before =
            state.insert_foreign_event(cal, ts("2026-11-23T08:00:00Z"), ts("2026-11-23T09:00:00Z"), "ends at min");
        let overlap_start =
            state.insert_foreign_event(cal, ts("2026-11-23T08:30:00Z"), ts("2026-11-23T09:30:00Z"), "a");
        let inside = state.insert_foreign_event(cal, ts("2026-11-23T09:15:00Z"), ts("2026-11-23T09:45:00Z"), "b");
        let after =
            state.insert_foreign_event(cal, ts("2026-11-23T10:00:00Z"), ts("2026-11-23T11:00:00Z"), "starts at max");
        let cancelled = state.insert_foreign_event(cal, ts("2026-11-23T09:00:00Z"), ts("2026-11-23T10:00:00Z"), "c");
        assert!(state.cancel_directly(cal, &cancelled));
        let uri = format!(
            "{SERVICE_PATH}calendars/primary/events?timeMin=2026-11-23T09:00:00Z&timeMax=2026-11-23T10:00:00Z&singleEvents=true&orderBy=startTime"
        );
        let (status, _, body) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ids: Vec<&str> = body["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![overlap_start.as_str(), inside.as_str()]);
        assert!(!ids.contains(&before.as_str()) && !ids.contains(&after.as_str()));

        let (_, _, body) = call(&app, "GET", &format!("{uri}&showDeleted=true"), None, &[]).await;
        assert_eq!(body["items"].as_array().unwrap().len(), 3);

        let bad_order = format!("{SERVICE_PATH}calendars/primary/events?orderBy=startTime");
        let (status, _, _) = call(&app, "GET", &bad_order, None, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn private_extended_property_filter_and_pagination() {
        let app = GoogleCalendarSandbox::router(GoogleCalendarState::new(TOKEN));
        let base = format!("{SERVICE_PATH}calendars/primary/events");
        for i in 0..5 {
            let mut body = full_event_body(&format!("paged{i}0000"));
            body["extendedProperties"]["private"]["callside_call_id"] = json!(if i % 2 == 0 { "even" } else { "odd" });
            call(&app, "POST", &base, Some(body), &[]).await;
        }
        let (_, _, body) =
            call(&app, "GET", &format!("{base}?privateExtendedProperty=callside_call_id%3Deven"), None, &[]).await;
        assert_eq!(body["items"].as_array().unwrap().len(), 3);

        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let uri = match &token {
                Some(t) => format!("{base}?maxResults=2&pageToken={t}"),
                None => format!("{base}?maxResults=2"),
            };
            let (_, _, page) = call(&app, "GET", &uri, None, &[]).await;
            for item in page["items"].as_array().unwrap() {
                seen.push(item["id"].as_str().unwrap().to_owned());
            }
            match page["nextPageToken"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 5);
    }

    #[tokio::test]
    async fn faults_are_injected_in_order_and_counted() {
        let state = GoogleCalendarState::new(TOKEN);
        let app = GoogleCalendarSandbox::router(state.clone());
        let uri = format!("{SERVICE_PATH}calendars/primary/events");
        state.fail_next(403, "rateLimitExceeded", 1);
        state.fail_next_with_retry_after(429, "rateLimitExceeded", 1, 7);
        let (status, _, body) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["errors"][0]["domain"], "usageLimits");
        assert_eq!(body["error"]["errors"][0]["reason"], "rateLimitExceeded");
        let (status, headers, _) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers["retry-after"], "7");
        let (status, _, _) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::OK);
        state.set_down(true);
        let (status, _, body) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["errors"][0]["reason"], "backendError");
        state.set_down(false);
        state.fail_next_for(GoogleCalendarMethod::Insert, 500, "backendError", 1);
        let (status, _, _) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::OK, "an insert-only fault spares list");
        assert_eq!(state.request_count(GoogleCalendarMethod::List), 5);
        assert_eq!(state.request_count(GoogleCalendarMethod::Insert), 0);
    }

    #[tokio::test]
    async fn a_foreign_event_lands_during_the_next_insert() {
        let state = GoogleCalendarState::new(TOKEN);
        let app = GoogleCalendarSandbox::router(state.clone());
        let foreign =
            state.insert_foreign_on_next_insert("primary", ts("2026-11-23T14:00:00Z"), ts("2026-11-23T14:30:00Z"));
        assert!(state.events("primary").is_empty());
        let base = format!("{SERVICE_PATH}calendars/primary/events");
        let (status, _, _) = call(&app, "POST", &base, Some(full_event_body("ourevent1")), &[]).await;
        assert_eq!(status, StatusCode::OK);
        let events = state.events("primary");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, foreign);
        assert!(events[0].foreign);
        assert_eq!(events[1].id, "ourevent1");
        // Armed once only.
        call(&app, "POST", &base, Some(full_event_body("ourevent2")), &[]).await;
        assert_eq!(state.events("primary").len(), 3);
    }

    #[tokio::test]
    async fn free_busy_skips_transparent_and_cancelled_and_merges() {
        let state = GoogleCalendarState::new(TOKEN);
        let app = GoogleCalendarSandbox::router(state.clone());
        let cal = "staff@example.com";
        state.insert_foreign_event(cal, ts("2026-11-23T09:00:00Z"), ts("2026-11-23T10:00:00Z"), "a");
        state.insert_foreign_event(cal, ts("2026-11-23T09:30:00Z"), ts("2026-11-23T10:30:00Z"), "b");
        state.insert_transparent_event(cal, ts("2026-11-23T12:00:00Z"), ts("2026-11-23T13:00:00Z"), "free");
        let c = state.insert_foreign_event(cal, ts("2026-11-23T14:00:00Z"), ts("2026-11-23T15:00:00Z"), "c");
        state.cancel_directly(cal, &c);
        let (status, _, body) = call(
            &app,
            "POST",
            &format!("{SERVICE_PATH}freeBusy"),
            Some(json!({
                "timeMin": "2026-11-23T00:00:00Z",
                "timeMax": "2026-11-24T00:00:00Z",
                "timeZone": "Europe/Berlin",
                "items": [{"id": cal}]
            })),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["kind"], "calendar#freeBusy");
        assert_eq!(
            body["calendars"][cal]["busy"],
            json!([{"start": "2026-11-23T10:00:00+01:00", "end": "2026-11-23T11:30:00+01:00"}])
        );
        assert_eq!(state.request_count(GoogleCalendarMethod::FreeBusy), 1);
    }
}
