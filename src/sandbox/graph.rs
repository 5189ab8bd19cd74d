//! In-process emulator of Microsoft Graph v1.0 calendars (the subset callside uses) and of the
//! Microsoft identity platform's v2 token endpoint, served by axum on `127.0.0.1:0`.
//!
//! Routes (paths as Graph spells them):
//!
//! - `POST /v1.0/users/{upn}/calendar/getSchedule` — free/busy for up to many `schedules`
//!   (<https://learn.microsoft.com/en-us/graph/api/calendar-getschedule?view=graph-rest-1.0>):
//!   per schedule the overlapping, not-cancelled events as `scheduleItems` with their `showAs`
//!   as `status` (free items included), an `availabilityView` string (one digit per
//!   `availabilityViewInterval` minutes: 0 free, 1 tentative, 2 busy, 3 oof, 4 workingElsewhere,
//!   the strongest status in the slot), and an `error` object for an unknown mailbox.
//! - `POST /v1.0/users/{upn}/calendar/events` — create (201). `transactionId` dedup: a repeat
//!   POST with the `transactionId` of an event that still exists answers 201 with that event and
//!   creates nothing (<https://blog.rykoma.net/2020/10/05/1559/>).
//! - `GET /v1.0/users/{upn}/calendar/events` — with the one `$filter` form callside sends,
//!   `singleValueExtendedProperties/Any(ep: ep/id eq '…' and ep/value eq '…')` (value compared
//!   case-insensitively, as documented for string properties); other filters answer 400.
//! - `GET|PATCH|DELETE /v1.0/users/{upn}/calendar/events/{id}` and
//!   `POST …/events/{id}/cancel` (202; organizer-only, 400 otherwise). PATCH honours `If-Match`
//!   against the event's `@odata.etag` and changes the etag on every write. A mismatch answers
//!   412 with Exchange's change-key error code `ErrorIrresolvableConflict` (Graph's reference does
//!   not show this answer; the emulator's choice).
//!   Deleted and cancelled-by-organizer events are gone (404 `ErrorItemNotFound`).
//! - `GET /v1.0/users/{upn}/calendarView?startDateTime&endDateTime` — events with
//!   `start < endDateTime && end > startDateTime` (an event ending exactly at the window start is
//!   outside), sorted by start, paged with `$top` (default 10) and `@odata.nextLink`
//!   (<https://learn.microsoft.com/en-us/graph/paging>). Attendee-side cancelled meetings stay
//!   visible with `isCancelled: true`.
//! - `GET /v1.0/users/{upn}/calendarView/delta?startDateTime&endDateTime` — the events delta
//!   (<https://learn.microsoft.com/en-us/graph/delta-query-events>): a round of pages
//!   (`Prefer: odata.maxpagesize`, `@odata.nextLink` with `$skiptoken`) ending with an
//!   `@odata.deltaLink` (`$deltatoken`); the next round lists changed events and deletions
//!   (`@removed`). `expire_delta_tokens` makes every issued token answer 410 `SyncStateNotFound`.
//! - `POST /v1.0/subscriptions`, `PATCH|DELETE /v1.0/subscriptions/{id}` — change notification
//!   subscriptions on `users/{upn}/events`, validated by the `validationToken` handshake, expiring
//!   on the emulator's clock (`set_clock`), and their notifications (`super::graph_notify`).
//! - `POST /{tenant}/oauth2/v2.0/token` — the refresh-token grant. Every refresh issues a new
//!   access token and a new refresh token; the old refresh token is spent and answers 400
//!   `invalid_grant` if used again. (Microsoft itself "doesn't revoke old refresh tokens when
//!   used", <https://learn.microsoft.com/en-us/entra/identity-platform/refresh-tokens>; the
//!   emulator is stricter so a client that keeps using a stale token is caught.)
//!
//! `$expand=singleValueExtendedProperties($filter=id eq '…' or …)` returns the named extended
//! properties; without it none are returned. `Prefer: outlook.timezone="…"` (UTC or an IANA name)
//! picks the zone of every `dateTimeTimeZone` in responses; the default is UTC. Errors have
//! Graph's shape `{"error":{"code","message","innerError":{"date","request-id",
//! "client-request-id"}}}` (<https://learn.microsoft.com/en-us/graph/errors>).
//!
//! The handle injects faults (`set_down`, `fail_next`, `fail_next_with_retry_after`,
//! `set_latency`, `expire_access_tokens`), books foreign events as a customer booking directly
//! would, counts requests per method and exposes the stored events. The state lock is a
//! `std::sync::Mutex` never held across an `.await`.

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
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::EmulatorClock;
pub use super::graph_notify::{GraphSubscription, NotificationStats, Validation};
use super::graph_notify::{Notification, notification_body, start_delivery, validate_endpoint};

/// The API methods the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GraphMethod {
    GetSchedule,
    Create,
    /// `GET …/calendar/events` (the extended-property lookup).
    Find,
    Get,
    Patch,
    Delete,
    Cancel,
    CalendarView,
    /// `GET …/calendarView/delta` (a delta round's pages).
    Delta,
    /// `POST /v1.0/subscriptions`.
    CreateSubscription,
    /// `PATCH /v1.0/subscriptions/{id}`.
    RenewSubscription,
    /// `DELETE /v1.0/subscriptions/{id}`.
    DeleteSubscription,
    Token,
}

/// One write the API received for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedWrite {
    pub method: GraphMethod,
    pub if_match: Option<String>,
}

/// How an event left the calendar through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub user: String,
    pub id: String,
    /// `Delete` or `Cancel` (the latter notified the attendees).
    pub method: GraphMethod,
    pub comment: Option<String>,
}

/// An event as the emulator stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSandboxEvent {
    pub user: String,
    pub id: String,
    /// The `changeKey`; `@odata.etag` is `W/"<changeKey>"`.
    pub change_key: String,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub original_start_time_zone: String,
    pub original_end_time_zone: String,
    /// `free`, `tentative`, `busy`, `oof`, `workingElsewhere` or `unknown`.
    pub show_as: String,
    /// A meeting the organizer cancelled, still on an attendee's calendar.
    pub is_cancelled: bool,
    pub is_organizer: bool,
    pub attendees: Vec<String>,
    pub is_reminder_on: bool,
    pub reminder_minutes_before_start: i64,
    pub transaction_id: Option<String>,
    /// Single-value extended properties, by id as sent.
    pub extended: BTreeMap<String, String>,
    pub created: Timestamp,
    pub last_modified: Timestamp,
    /// Booked through the handle ("the customer booked directly"), not through the API.
    pub foreign: bool,
    pub writes: Vec<RecordedWrite>,
    /// The change number of the event's last change (delta queries list changes after one).
    pub seq: u64,
}

impl GraphSandboxEvent {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.change_key)
    }

    /// Whether the event blocks time in getSchedule.
    pub fn is_busy(&self) -> bool {
        !self.is_cancelled && !matches!(self.show_as.as_str(), "free" | "workingElsewhere")
    }

    /// An extended property's value, matched case-insensitively on the id.
    pub fn property(&self, id: &str) -> Option<&str> {
        self.extended.iter().find(|(k, _)| k.eq_ignore_ascii_case(id)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
struct Fault {
    status: StatusCode,
    code: String,
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
struct OAuthClient {
    current: String,
    spent: HashSet<String>,
}

/// A deleted event, remembered for delta queries.
#[derive(Debug, Clone)]
struct Tombstone {
    user: String,
    id: String,
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    clock: EmulatorClock,
    access_tokens: HashSet<String>,
    /// Events per mailbox (lowercased UPN), in insertion order.
    users: HashMap<String, Vec<GraphSandboxEvent>>,
    missing_users: HashSet<String>,
    removals: Vec<Removal>,
    counts: HashMap<GraphMethod, u64>,
    down: bool,
    faults: VecDeque<Fault>,
    latency: Duration,
    pending_foreign: HashMap<String, VecDeque<PendingForeign>>,
    oauth: HashMap<String, OAuthClient>,
    seq: u64,
    tombstones: Vec<Tombstone>,
    /// Delta and skip tokens carry the epoch they were issued in; `expire_delta_tokens` starts a
    /// new one, and older tokens answer 410.
    delta_epoch: u64,
    subscriptions: Vec<GraphSubscription>,
    validations: Vec<Validation>,
    /// The notification delivery queue, started by the first subscription.
    notify_tx: Option<mpsc::UnboundedSender<Notification>>,
    notification_stats: Arc<NotificationStats>,
    /// Notifications still to drop (`drop_next_notifications`).
    drop_notifications: usize,
}

impl Inner {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn next_change_key(&mut self) -> String {
        let n = self.next_seq();
        data_encoding::BASE64.encode(format!("callside-ck-{n:08}").as_bytes())
    }

    /// Graph event ids are long base64url strings starting `AAMk`.
    fn next_id(&mut self) -> String {
        let n = self.next_seq();
        let mut bytes = n.to_be_bytes().to_vec();
        bytes.extend_from_slice(&uuid::Uuid::new_v4().as_bytes()[..12]);
        format!("AAMkAG{}", data_encoding::BASE64URL_NOPAD.encode(&bytes))
    }

    /// An event was created, updated or deleted (`change_type`): its change number moves on (for
    /// delta queries) and every live subscription to the mailbox's events is notified.
    fn touched(&mut self, user: &str, id: &str, change_type: &'static str) {
        let seq = self.next_seq();
        let user = user.to_ascii_lowercase();
        let mut etag = None;
        if change_type == "deleted" {
            self.tombstones.push(Tombstone { user: user.clone(), id: id.to_owned(), seq });
        } else if let Some(event) = self.event_mut(&user, id) {
            event.seq = seq;
            etag = Some(event.etag());
        }
        let now = self.clock.now();
        let bodies: Vec<Notification> = self
            .subscriptions
            .iter()
            .filter(|s| {
                !s.deleted && s.user == user && s.expiration > now && s.change_types.iter().any(|c| c == change_type)
            })
            .map(|s| Notification {
                url: s.notification_url.clone(),
                body: notification_body(s, id, etag.as_deref(), change_type),
            })
            .collect();
        for n in bodies {
            if self.drop_notifications > 0 {
                self.drop_notifications -= 1;
                self.notification_stats.dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
            if let Some(tx) = &self.notify_tx {
                let _ = tx.send(n);
            }
        }
    }

    fn events_mut(&mut self, user: &str) -> &mut Vec<GraphSandboxEvent> {
        self.users.entry(user.to_ascii_lowercase()).or_default()
    }

    fn event_mut(&mut self, user: &str, id: &str) -> Option<&mut GraphSandboxEvent> {
        self.users.get_mut(&user.to_ascii_lowercase())?.iter_mut().find(|e| e.id == id)
    }

    fn push_foreign(&mut self, user: &str, id: String, start: Timestamp, end: Timestamp, subject: &str, show_as: &str) {
        let now = self.clock.now();
        let change_key = self.next_change_key();
        let event = GraphSandboxEvent {
            user: user.to_ascii_lowercase(),
            id,
            change_key,
            subject: Some(subject.to_owned()),
            body: None,
            start,
            end,
            original_start_time_zone: "UTC".to_owned(),
            original_end_time_zone: "UTC".to_owned(),
            show_as: show_as.to_owned(),
            is_cancelled: false,
            is_organizer: true,
            attendees: Vec::new(),
            is_reminder_on: true,
            reminder_minutes_before_start: 15,
            transaction_id: None,
            extended: BTreeMap::new(),
            created: now,
            last_modified: now,
            foreign: true,
            writes: Vec::new(),
            seq: 0,
        };
        let id = event.id.clone();
        self.events_mut(user).push(event);
        self.touched(user, &id, "created");
    }
}

/// Shared emulator state; every method is callable from tests while the server runs.
#[derive(Debug)]
pub struct GraphState {
    inner: Mutex<Inner>,
}

impl GraphState {
    /// A fresh, empty world that accepts `Authorization: Bearer <token>`.
    pub fn new(token: &str) -> Arc<Self> {
        let inner = Inner { access_tokens: HashSet::from([token.to_owned()]), ..Inner::default() };
        Arc::new(Self { inner: Mutex::new(inner) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not cascade into every other test.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every issued access token invalid (they "expired"); only a refresh helps.
    pub fn expire_access_tokens(&self) {
        self.lock().access_tokens.clear();
    }

    /// Accepts one more access token.
    pub fn add_access_token(&self, token: &str) {
        self.lock().access_tokens.insert(token.to_owned());
    }

    /// Registers an OAuth client with its first refresh token.
    pub fn register_oauth_client(&self, client_id: &str, refresh_token: &str) {
        self.lock()
            .oauth
            .insert(client_id.to_owned(), OAuthClient { current: refresh_token.to_owned(), spent: HashSet::new() });
    }

    /// The refresh token the token endpoint currently accepts for `client_id`.
    pub fn current_refresh_token(&self, client_id: &str) -> Option<String> {
        self.lock().oauth.get(client_id).map(|c| c.current.clone())
    }

    /// Every event of the mailbox, in insertion order.
    pub fn events(&self, user: &str) -> Vec<GraphSandboxEvent> {
        self.lock().users.get(&user.to_ascii_lowercase()).cloned().unwrap_or_default()
    }

    /// One stored event by Graph id.
    pub fn event(&self, user: &str, id: &str) -> Option<GraphSandboxEvent> {
        self.lock().users.get(&user.to_ascii_lowercase())?.iter().find(|e| e.id == id).cloned()
    }

    /// Events removed through the API (DELETE or cancel), in order.
    pub fn removals(&self) -> Vec<Removal> {
        self.lock().removals.clone()
    }

    /// Books a `busy` event as if the customer booked directly (no API request is counted).
    /// Returns its Graph id.
    pub fn insert_foreign_event(&self, user: &str, start: Timestamp, end: Timestamp, subject: &str) -> String {
        self.insert_foreign_event_as(user, start, end, subject, "busy")
    }

    /// Like [`insert_foreign_event`](Self::insert_foreign_event) with a given `showAs`
    /// (`free`, `tentative`, `busy`, `oof`, `workingElsewhere`).
    pub fn insert_foreign_event_as(
        &self,
        user: &str,
        start: Timestamp,
        end: Timestamp,
        subject: &str,
        show_as: &str,
    ) -> String {
        let mut inner = self.lock();
        let id = inner.next_id();
        inner.push_foreign(user, id.clone(), start, end, subject, show_as);
        id
    }

    /// Marks a stored event as a meeting its organizer cancelled (`isCancelled: true`): it stays
    /// on the calendar and in calendarView, and no longer blocks time. False when absent.
    pub fn cancel_directly(&self, user: &str, id: &str) -> bool {
        // The guard is dropped at the end of this statement, before cancel_directly_at locks.
        let now = self.lock().clock.now();
        self.cancel_directly_at(user, id, now)
    }

    /// [`Self::cancel_directly`] at a given time (`lastModifiedDateTime`).
    pub fn cancel_directly_at(&self, user: &str, id: &str, at: Timestamp) -> bool {
        let mut inner = self.lock();
        let change_key = inner.next_change_key();
        let Some(event) = inner.event_mut(user, id) else { return false };
        event.is_cancelled = true;
        event.is_organizer = false;
        event.change_key = change_key;
        event.last_modified = at;
        inner.touched(user, id, "updated");
        true
    }

    /// Deletes a stored event as its owner would in Outlook (no API request is counted; delta
    /// queries report it `@removed`, subscriptions are notified). False when absent.
    pub fn delete_directly(&self, user: &str, id: &str) -> bool {
        let mut inner = self.lock();
        let events = inner.events_mut(user);
        let Some(pos) = events.iter().position(|e| e.id == id) else { return false };
        events.remove(pos);
        inner.touched(user, id, "deleted");
        true
    }

    /// Drives subscription expiry (and validation of `expirationDateTime`) from `clock`.
    pub fn set_clock(&self, clock: crate::clock::SharedClock) {
        self.lock().clock = EmulatorClock::injected(clock);
    }

    /// Every subscription created so far (deleted ones included), in order.
    pub fn subscriptions(&self) -> Vec<GraphSubscription> {
        self.lock().subscriptions.clone()
    }

    /// Every validation handshake performed, in order.
    pub fn validations(&self) -> Vec<Validation> {
        self.lock().validations.clone()
    }

    /// What the notification delivery task has done.
    pub fn notification_stats(&self) -> Arc<NotificationStats> {
        self.lock().notification_stats.clone()
    }

    /// Sends a lifecycle notification (`reauthorizationRequired`, `subscriptionRemoved` or
    /// `missed`) for a subscription to its `lifecycleNotificationUrl`, as Graph does
    /// (<https://learn.microsoft.com/en-us/graph/change-notifications-lifecycle-events>). A
    /// removed subscription is deleted first (it notifies nothing more). False when the
    /// subscription is unknown, deleted, or has no lifecycle URL.
    pub fn send_lifecycle_event(&self, subscription_id: &str, event: &str) -> bool {
        let mut inner = self.lock();
        let Some(s) = inner.subscriptions.iter_mut().find(|s| s.id == subscription_id && !s.deleted) else {
            return false;
        };
        let Some(url) = s.lifecycle_notification_url.clone() else { return false };
        if event == "subscriptionRemoved" {
            s.deleted = true;
        }
        let body = super::graph_notify::lifecycle_body(s, event);
        if inner.notify_tx.is_none() {
            inner.notify_tx = Some(start_delivery(inner.notification_stats.clone()));
        }
        if let Some(tx) = &inner.notify_tx {
            let _ = tx.send(Notification { url, body });
        }
        true
    }

    /// The next `n` notifications are not sent ("the webhook was missed").
    pub fn drop_next_notifications(&self, n: usize) {
        self.lock().drop_notifications = n;
    }

    /// Every delta and skip token issued so far answers 410 Gone from now on (the service lost
    /// the sync state): the client must sync fully again.
    pub fn expire_delta_tokens(&self) {
        self.lock().delta_epoch += 1;
    }

    /// Arms a foreign booking that lands in `user`'s calendar while the next create for that
    /// mailbox is processed. Returns the id the foreign event will have.
    pub fn insert_foreign_on_next_insert(&self, user: &str, start: Timestamp, end: Timestamp) -> String {
        let mut inner = self.lock();
        let id = inner.next_id();
        inner.pending_foreign.entry(user.to_ascii_lowercase()).or_default().push_back(PendingForeign {
            id: id.clone(),
            start,
            end,
        });
        id
    }

    /// Makes the mailbox unknown: its endpoints answer 404 `ErrorInvalidUser` and getSchedule
    /// reports an error for it.
    pub fn mark_user_missing(&self, user: &str) {
        self.lock().missing_users.insert(user.to_ascii_lowercase());
    }

    /// Requests received for `method`, whatever their outcome.
    pub fn request_count(&self, method: GraphMethod) -> u64 {
        self.lock().counts.get(&method).copied().unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.lock().counts.values().sum()
    }

    /// While down, every Graph request answers 503 `ServiceNotAvailable`.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The next `n` Graph requests answer `status` with error `code` (e.g. 429
    /// `TooManyRequests`, 503 `ServiceNotAvailable`, 409 `ErrorIrresolvableConflict`).
    pub fn fail_next(&self, status: u16, code: &str, n: usize) {
        self.push_fault(status, code, n, None);
    }

    /// Like [`fail_next`](Self::fail_next) with `Retry-After: <secs>`, as Graph sends on 429
    /// (<https://learn.microsoft.com/en-us/graph/throttling>).
    pub fn fail_next_with_retry_after(&self, status: u16, code: &str, n: usize, retry_after_secs: u64) {
        self.push_fault(status, code, n, Some(retry_after_secs));
    }

    fn push_fault(&self, status: u16, code: &str, n: usize, retry_after_secs: Option<u64>) {
        if n == 0 {
            return;
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.lock().faults.push_back(Fault { status, code: code.to_owned(), remaining: n, retry_after_secs });
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
pub struct GraphSandbox {
    pub addr: SocketAddr,
    pub state: Arc<GraphState>,
    task: tokio::task::JoinHandle<()>,
}

impl GraphSandbox {
    /// Starts an emulator on `127.0.0.1:0` accepting `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> std::io::Result<Self> {
        Self::serve(GraphState::new(token)).await
    }

    /// Starts an emulator over existing state.
    pub async fn serve(state: Arc<GraphState>) -> std::io::Result<Self> {
        Self::serve_on(state, 0).await
    }

    /// [`Self::serve`] on a given loopback port (0: any free one).
    pub async fn serve_on(state: Arc<GraphState>, port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let app = Self::router(state.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(error = %err, "graph sandbox stopped");
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The base URL to give a connector (`http://127.0.0.1:<port>/`), the equivalent of
    /// `https://graph.microsoft.com/`.
    pub fn base_url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("socket address is a valid host")
    }

    /// The identity authority root, the equivalent of `https://login.microsoftonline.com/`
    /// (same server).
    pub fn authority_url(&self) -> url::Url {
        self.base_url()
    }

    /// The emulator's routes, for embedding in another server.
    pub fn router(state: Arc<GraphState>) -> Router {
        Router::new()
            .route("/v1.0/users/{user}/calendar/getSchedule", post(get_schedule))
            .route("/v1.0/users/{user}/calendar/events", post(create_event).get(find_events))
            .route("/v1.0/users/{user}/calendar/events/{id}", get(get_event).patch(patch_event).delete(delete_event))
            .route("/v1.0/users/{user}/calendar/events/{id}/cancel", post(cancel_event))
            .route("/v1.0/users/{user}/calendarView", get(calendar_view))
            .route("/v1.0/users/{user}/calendarView/delta", get(calendar_view_delta))
            .route("/v1.0/subscriptions", post(create_subscription))
            .route("/v1.0/subscriptions/{id}", axum::routing::patch(renew_subscription).delete(delete_subscription))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .fallback(|| async {
                graph_error(StatusCode::BAD_REQUEST, "BadRequest", "Resource not found for the segment.")
            })
            .with_state(state)
    }
}

impl Drop for GraphSandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

type Handled<T> = Result<T, Rejection>;

fn reject<T>(response: Response) -> Handled<T> {
    Err(Rejection::from(response))
}

/// Graph's error body: `{"error":{"code","message","innerError":{date,request-id,client-request-id}}}`.
fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    });
    json_response(status, &body)
}

fn bad_request(code: &str, message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, code, message)
}

fn not_found() -> Response {
    graph_error(StatusCode::NOT_FOUND, "ErrorItemNotFound", "The specified object was not found in the store.")
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("emulator responses serialize");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json; odata.metadata=minimal"))], bytes)
        .into_response()
}

fn fault_response(fault: &Fault) -> Response {
    let message = match fault.status.as_u16() {
        429 => "Please retry again later.",
        503 => "Service unavailable.",
        _ => "Injected fault.",
    };
    let mut response = graph_error(fault.status, &fault.code, message);
    if let Some(secs) = fault.retry_after_secs {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Outage, injected faults, latency and bearer authentication; counts the request.
async fn admit(state: &GraphState, method: GraphMethod, headers: &HeaderMap) -> Handled<()> {
    let (latency, fault, authorised) = {
        let mut inner = state.lock();
        *inner.counts.entry(method).or_default() += 1;
        let fault = if inner.down {
            Some(Fault {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "ServiceNotAvailable".to_owned(),
                remaining: 1,
                retry_after_secs: None,
            })
        } else if let Some(fault) = inner.faults.front_mut() {
            fault.remaining -= 1;
            let taken = fault.clone();
            if fault.remaining == 0 {
                inner.faults.pop_front();
            }
            Some(taken)
        } else {
            None
        };
        let presented =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let authorised = presented.is_some_and(|t| inner.access_tokens.contains(t));
        (inner.latency, fault, authorised)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = fault {
        return reject(fault_response(&fault));
    }
    if !authorised {
        let mut response = graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"",
            ),
        );
        return reject(response);
    }
    Ok(())
}

fn check_user(state: &GraphState, user: &str) -> Handled<()> {
    if state.lock().missing_users.contains(&user.to_ascii_lowercase()) {
        return reject(graph_error(
            StatusCode::NOT_FOUND,
            "ErrorInvalidUser",
            &format!("The requested user '{user}' is invalid."),
        ));
    }
    Ok(())
}

/// The zone named by `Prefer: outlook.timezone="…"` (UTC or IANA; anything else is UTC).
fn preferred_zone(headers: &HeaderMap) -> (TimeZone, String) {
    for value in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
        for part in value.split(',') {
            let part = part.trim();
            if let Some(rest) = part.strip_prefix("outlook.timezone=") {
                let name = rest.trim_matches('"');
                if name != "UTC"
                    && let Ok(tz) = TimeZone::get(name)
                {
                    return (tz, name.to_owned());
                }
            }
        }
    }
    (TimeZone::UTC, "UTC".to_owned())
}

/// Graph's `dateTimeTimeZone`: local time with 7 fractional digits and no offset.
fn date_time_time_zone(ts: Timestamp, zone: &(TimeZone, String)) -> Value {
    let local = ts.to_zoned_datetime(zone.0.clone()).strftime("%Y-%m-%dT%H:%M:%S").to_string();
    json!({"dateTime": format!("{local}.0000000"), "timeZone": zone.1})
}

fn format_instant(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.7fZ").to_string()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DateTimeTimeZoneBody {
    date_time: Option<String>,
    time_zone: Option<String>,
}

/// Resolves a request `dateTimeTimeZone` (UTC or IANA zone; an explicit offset also works).
fn resolve_time(value: Option<&DateTimeTimeZoneBody>, which: &str) -> Handled<Timestamp> {
    let Some(value) = value else {
        return reject(bad_request("ErrorInvalidRequest", &format!("The {which} time is required.")));
    };
    let Some(date_time) = &value.date_time else {
        return reject(bad_request("ErrorInvalidRequest", &format!("The {which} dateTime is required.")));
    };
    let zone_name = value.time_zone.as_deref().unwrap_or("UTC");
    let zone = match zone_name {
        "UTC" | "Etc/UTC" => TimeZone::UTC,
        other => TimeZone::get(other).map_err(|_| {
            bad_request(
                "TimeZoneNotSupportedException",
                &format!("A valid TimeZone value must be specified. The following TimeZone value is not supported: '{other}'."),
            )
        })?,
    };
    if let Ok(ts) = date_time.parse::<Timestamp>() {
        return Ok(ts);
    }
    let civil = date_time
        .parse::<jiff::civil::DateTime>()
        .map_err(|_| bad_request("ErrorInvalidRequest", &format!("Cannot convert the literal '{date_time}'.")))?;
    civil
        .to_zoned_datetime(zone)
        .map(|z| z.timestamp())
        .map_err(|_| bad_request("ErrorInvalidRequest", "Invalid date.").into())
}

/// A query time (`startDateTime` etc.): RFC 3339, or a civil time read as UTC.
fn parse_query_time(value: &str) -> Option<Timestamp> {
    value.parse::<Timestamp>().ok().or_else(|| {
        value
            .parse::<jiff::civil::DateTime>()
            .ok()
            .and_then(|c| c.to_zoned_datetime(TimeZone::UTC).ok())
            .map(|z| z.timestamp())
    })
}

fn query_value<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// OData string literals in a query: every `'…'` with `''` unescaped.
fn quoted_literals(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut literal = String::new();
        loop {
            match chars.next() {
                Some('\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    literal.push('\'');
                }
                Some('\'') | None => break,
                Some(other) => literal.push(other),
            }
        }
        out.push(literal);
    }
    out
}

/// The extended-property ids requested by
/// `$expand=singleValueExtendedProperties($filter=id eq '…' or id eq '…')`; `None` without an
/// expand, an error for any other expand.
fn expanded_properties(params: &[(String, String)]) -> Handled<Option<Vec<String>>> {
    let Some(expand) = query_value(params, "$expand") else { return Ok(None) };
    let Some(inner) = expand.strip_prefix("singleValueExtendedProperties($filter=").and_then(|s| s.strip_suffix(')'))
    else {
        return reject(bad_request("BadRequest", &format!("Parsing OData Select and Expand failed: '{expand}'")));
    };
    Ok(Some(quoted_literals(inner)))
}

fn valid_property_id(id: &str) -> bool {
    // `String {GUID} Name <name>` or `String 0x<tag>` (MAPI named / tagged string properties).
    let Some(rest) = id.strip_prefix("String ") else { return false };
    if let Some(rest) = rest.strip_prefix('{') {
        let Some((guid, name)) = rest.split_once("} Name ") else { return false };
        return uuid::Uuid::parse_str(guid).is_ok() && !name.is_empty();
    }
    rest.starts_with("0x") && rest.len() > 2
}

fn event_json(event: &GraphSandboxEvent, zone: &(TimeZone, String), expand: Option<&[String]>) -> Value {
    let organizer = json!({"emailAddress": {"name": event.user, "address": event.user}});
    let mut value = json!({
        "@odata.etag": event.etag(),
        "id": event.id,
        "createdDateTime": format_instant(event.created),
        "lastModifiedDateTime": format_instant(event.last_modified),
        "changeKey": event.change_key,
        "transactionId": event.transaction_id,
        "originalStartTimeZone": event.original_start_time_zone,
        "originalEndTimeZone": event.original_end_time_zone,
        "iCalUId": format!("040000008200E00074C5B7101A82E008{}", hex::encode(event.id.as_bytes()).to_uppercase()),
        "reminderMinutesBeforeStart": event.reminder_minutes_before_start,
        "isReminderOn": event.is_reminder_on,
        "subject": event.subject,
        "bodyPreview": event.body.as_deref().unwrap_or("").chars().take(255).collect::<String>(),
        "isAllDay": false,
        "isCancelled": event.is_cancelled,
        "isOrganizer": event.is_organizer,
        "showAs": event.show_as,
        "type": "singleInstance",
        "responseStatus": {
            "response": if event.is_organizer { "organizer" } else { "accepted" },
            "time": "0001-01-01T00:00:00Z"
        },
        "body": {"contentType": "text", "content": event.body.as_deref().unwrap_or("")},
        "start": date_time_time_zone(event.start, zone),
        "end": date_time_time_zone(event.end, zone),
        "attendees": event.attendees.iter().map(|a| json!({
            "type": "required",
            "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
            "emailAddress": {"name": a, "address": a}
        })).collect::<Vec<_>>(),
        "organizer": organizer,
    });
    if let Some(ids) = expand {
        let props: Vec<Value> = event
            .extended
            .iter()
            .filter(|(k, _)| ids.iter().any(|id| id.eq_ignore_ascii_case(k)))
            .map(|(k, v)| json!({"id": k, "value": v}))
            .collect();
        value["singleValueExtendedProperties"] = json!(props);
    }
    value
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Handled<T> {
    serde_json::from_slice(body)
        .map_err(|err| bad_request("BadRequest", &format!("Invalid request body: {err}")).into())
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScheduleBody {
    #[serde(default)]
    schedules: Vec<String>,
    start_time: Option<DateTimeTimeZoneBody>,
    end_time: Option<DateTimeTimeZoneBody>,
    availability_view_interval: Option<i64>,
}

async fn get_schedule(
    State(state): State<Arc<GraphState>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(get_schedule_inner(&state, &user, &headers, &body).await)
}

fn finish(result: Handled<Response>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// freeBusyStatus digits of `availabilityView` and their strength when slots overlap.
fn status_digit(status: &str) -> (u8, char) {
    match status {
        "oof" => (4, '3'),
        "busy" => (3, '2'),
        "tentative" => (2, '1'),
        "workingElsewhere" => (1, '4'),
        _ => (0, '0'),
    }
}

async fn get_schedule_inner(state: &GraphState, user: &str, headers: &HeaderMap, body: &Bytes) -> Handled<Response> {
    admit(state, GraphMethod::GetSchedule, headers).await?;
    check_user(state, user)?;
    let req: ScheduleBody = parse_body(body)?;
    let start = resolve_time(req.start_time.as_ref(), "startTime")?;
    let end = resolve_time(req.end_time.as_ref(), "endTime")?;
    if start >= end {
        return reject(bad_request("ErrorInvalidParameter", "The end time must be after the start time."));
    }
    if req.schedules.is_empty() {
        return reject(bad_request("ErrorInvalidParameter", "Schedules cannot be empty."));
    }
    let interval = req.availability_view_interval.unwrap_or(30);
    if !(5..=1440).contains(&interval) {
        return reject(bad_request("ErrorInvalidParameter", "availabilityViewInterval must be between 5 and 1440."));
    }
    let zone = preferred_zone(headers);
    let inner = state.lock();
    let mut value = Vec::new();
    for schedule in &req.schedules {
        let key = schedule.to_ascii_lowercase();
        if inner.missing_users.contains(&key) {
            value.push(json!({
                "scheduleId": schedule,
                "availabilityView": "",
                "error": {"message": format!("The requested user '{schedule}' is invalid."), "responseCode": "ErrorInvalidUser"}
            }));
            continue;
        }
        let mut items: Vec<&GraphSandboxEvent> = inner
            .users
            .get(&key)
            .map(|events| {
                events.iter().filter(|e| !e.is_cancelled && e.start < end && e.end > start).collect::<Vec<_>>()
            })
            .unwrap_or_default();
        items.sort_by_key(|e| (e.start, e.end));
        let slot = jiff::SignedDuration::from_mins(interval);
        let mut view = String::new();
        let mut slot_start = start;
        while slot_start < end {
            let slot_end = slot_start.checked_add(slot).unwrap_or(end).min(end);
            let strongest = items
                .iter()
                .filter(|e| e.start < slot_end && e.end > slot_start)
                .map(|e| status_digit(&e.show_as))
                .max()
                .unwrap_or((0, '0'));
            view.push(strongest.1);
            slot_start = slot_end;
        }
        value.push(json!({
            "scheduleId": schedule,
            "availabilityView": view,
            "scheduleItems": items.iter().map(|e| json!({
                "isPrivate": false,
                "status": e.show_as,
                "subject": e.subject,
                "location": "",
                "start": date_time_time_zone(e.start, &zone),
                "end": date_time_time_zone(e.end, &zone),
            })).collect::<Vec<_>>(),
            "workingHours": {
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                "startTime": "08:00:00.0000000",
                "endTime": "17:00:00.0000000",
                "timeZone": {"name": "UTC"}
            }
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.scheduleInformation)", "value": value}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventBody {
    subject: Option<String>,
    body: Option<ItemBodyIn>,
    start: Option<DateTimeTimeZoneBody>,
    end: Option<DateTimeTimeZoneBody>,
    show_as: Option<String>,
    attendees: Option<Vec<AttendeeIn>>,
    is_reminder_on: Option<bool>,
    reminder_minutes_before_start: Option<i64>,
    transaction_id: Option<String>,
    single_value_extended_properties: Option<Vec<PropertyIn>>,
}

#[derive(Debug, Deserialize)]
struct ItemBodyIn {
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttendeeIn {
    email_address: Option<EmailIn>,
}

#[derive(Debug, Deserialize)]
struct EmailIn {
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PropertyIn {
    id: String,
    value: Option<String>,
}

fn validate_show_as(value: Option<&String>) -> Handled<()> {
    match value.map(String::as_str) {
        None | Some("free" | "tentative" | "busy" | "oof" | "workingElsewhere" | "unknown") => Ok(()),
        Some(other) => reject(bad_request("BadRequest", &format!("Requested value '{other}' was not found."))),
    }
}

async fn create_event(
    State(state): State<Arc<GraphState>>,
    Path(user): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(create_event_inner(&state, &user, &params, &headers, &body).await)
}

async fn create_event_inner(
    state: &GraphState,
    user: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
    body: &Bytes,
) -> Handled<Response> {
    admit(state, GraphMethod::Create, headers).await?;
    check_user(state, user)?;
    let expand = expanded_properties(params)?;
    let req: EventBody = parse_body(body)?;
    let start = resolve_time(req.start.as_ref(), "start")?;
    let end = resolve_time(req.end.as_ref(), "end")?;
    if end < start {
        return reject(bad_request("ErrorInvalidRequest", "The end time must not precede the start time."));
    }
    validate_show_as(req.show_as.as_ref())?;
    let mut extended = BTreeMap::new();
    for p in req.single_value_extended_properties.iter().flatten() {
        if !valid_property_id(&p.id) {
            return reject(bad_request("ErrorInvalidProperty", &format!("The property id '{}' is invalid.", p.id)));
        }
        extended.insert(p.id.clone(), p.value.clone().unwrap_or_default());
    }
    let zone = preferred_zone(headers);
    let mut inner = state.lock();
    // The pending foreign booking lands "while" this create is processed.
    if let Some(pending) = inner.pending_foreign.get_mut(&user.to_ascii_lowercase()).and_then(VecDeque::pop_front) {
        inner.push_foreign(user, pending.id, pending.start, pending.end, "Booked directly", "busy");
    }
    if let Some(tx) = &req.transaction_id
        && let Some(existing) = inner.events_mut(user).iter().find(|e| e.transaction_id.as_deref() == Some(tx.as_str()))
    {
        // Dedup: answer 201 with the event that already has this transactionId.
        let body = event_json(existing, &zone, expand.as_deref());
        return Ok(json_response(StatusCode::CREATED, &body));
    }
    let now = inner.clock.now();
    let id = inner.next_id();
    let change_key = inner.next_change_key();
    let event = GraphSandboxEvent {
        user: user.to_ascii_lowercase(),
        id,
        change_key,
        subject: req.subject,
        body: req.body.and_then(|b| b.content),
        start,
        end,
        original_start_time_zone: req.start.and_then(|s| s.time_zone).unwrap_or_else(|| "UTC".to_owned()),
        original_end_time_zone: req.end.and_then(|s| s.time_zone).unwrap_or_else(|| "UTC".to_owned()),
        show_as: req.show_as.unwrap_or_else(|| "busy".to_owned()),
        is_cancelled: false,
        is_organizer: true,
        attendees: req
            .attendees
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| a.email_address.and_then(|e| e.address))
            .collect(),
        is_reminder_on: req.is_reminder_on.unwrap_or(true),
        reminder_minutes_before_start: req.reminder_minutes_before_start.unwrap_or(15),
        transaction_id: req.transaction_id,
        extended,
        created: now,
        last_modified: now,
        foreign: false,
        writes: vec![RecordedWrite { method: GraphMethod::Create, if_match: None }],
        seq: 0,
    };
    let body = event_json(&event, &zone, expand.as_deref());
    let id = event.id.clone();
    inner.events_mut(user).push(event);
    inner.touched(user, &id, "created");
    Ok(json_response(StatusCode::CREATED, &body))
}

/// Parses `singleValueExtendedProperties/Any(ep: ep/id eq '…' and ep/value eq '…')`.
fn parse_property_filter(filter: &str) -> Option<(String, String)> {
    let rest = filter.trim().strip_prefix("singleValueExtendedProperties/Any(")?.strip_suffix(')')?;
    let (var, condition) = rest.split_once(':')?;
    let var = var.trim();
    let condition = condition.trim();
    let expected_id = format!("{var}/id eq '");
    let after_id = condition.strip_prefix(&expected_id)?;
    let literals = quoted_literals(&format!("'{after_id}"));
    if literals.len() != 2 || !condition.contains(&format!(" and {var}/value eq '")) {
        return None;
    }
    Some((literals[0].clone(), literals[1].clone()))
}

async fn find_events(
    State(state): State<Arc<GraphState>>,
    Path(user): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    finish(find_events_inner(&state, &user, &params, &headers).await)
}

async fn find_events_inner(
    state: &GraphState,
    user: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Handled<Response> {
    admit(state, GraphMethod::Find, headers).await?;
    check_user(state, user)?;
    let expand = expanded_properties(params)?;
    let filter = match query_value(params, "$filter") {
        None => None,
        Some(f) => Some(parse_property_filter(f).ok_or_else(|| {
            bad_request("ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
        })?),
    };
    let top = top_of(params, 10)?;
    let zone = preferred_zone(headers);
    let inner = state.lock();
    let value: Vec<Value> = inner
        .users
        .get(&user.to_ascii_lowercase())
        .into_iter()
        .flatten()
        .filter(|e| match &filter {
            None => true,
            Some((id, value)) => e.property(id).is_some_and(|v| v.eq_ignore_ascii_case(value)),
        })
        .take(top)
        .map(|e| event_json(e, &zone, expand.as_deref()))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"value": value})))
}

fn top_of(params: &[(String, String)], default: usize) -> Handled<usize> {
    match query_value(params, "$top") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => reject(bad_request("ErrorInvalidParameter", "Invalid $top value.")),
        },
    }
}

async fn get_event(
    State(state): State<Arc<GraphState>>,
    Path((user, id)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    finish(get_event_inner(&state, &user, &id, &params, &headers).await)
}

async fn get_event_inner(
    state: &GraphState,
    user: &str,
    id: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Handled<Response> {
    admit(state, GraphMethod::Get, headers).await?;
    check_user(state, user)?;
    let expand = expanded_properties(params)?;
    let zone = preferred_zone(headers);
    let mut inner = state.lock();
    let Some(event) = inner.event_mut(user, id) else { return reject(not_found()) };
    Ok(json_response(StatusCode::OK, &event_json(event, &zone, expand.as_deref())))
}

async fn patch_event(
    State(state): State<Arc<GraphState>>,
    Path((user, id)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(patch_event_inner(&state, &user, &id, &params, &headers, &body).await)
}

async fn patch_event_inner(
    state: &GraphState,
    user: &str,
    id: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
    body: &Bytes,
) -> Handled<Response> {
    admit(state, GraphMethod::Patch, headers).await?;
    check_user(state, user)?;
    let expand = expanded_properties(params)?;
    let req: EventBody = parse_body(body)?;
    let start = req.start.as_ref().map(|s| resolve_time(Some(s), "start")).transpose()?;
    let end = req.end.as_ref().map(|s| resolve_time(Some(s), "end")).transpose()?;
    validate_show_as(req.show_as.as_ref())?;
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let zone = preferred_zone(headers);
    let mut inner = state.lock();
    let change_key = inner.next_change_key();
    let now = inner.clock.now();
    let Some(event) = inner.event_mut(user, id) else { return reject(not_found()) };
    if let Some(expected) = &if_match
        && expected != "*"
        && *expected != event.etag()
    {
        return reject(graph_error(
            StatusCode::PRECONDITION_FAILED,
            "ErrorIrresolvableConflict",
            "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
        ));
    }
    let new_start = start.unwrap_or(event.start);
    let new_end = end.unwrap_or(event.end);
    if new_end < new_start {
        return reject(bad_request("ErrorInvalidRequest", "The end time must not precede the start time."));
    }
    event.start = new_start;
    event.end = new_end;
    if let Some(subject) = req.subject {
        event.subject = Some(subject);
    }
    if let Some(show_as) = req.show_as {
        event.show_as = show_as;
    }
    event.change_key = change_key;
    event.last_modified = now;
    event.writes.push(RecordedWrite { method: GraphMethod::Patch, if_match });
    let body = event_json(event, &zone, expand.as_deref());
    inner.touched(user, id, "updated");
    Ok(json_response(StatusCode::OK, &body))
}

async fn delete_event(
    State(state): State<Arc<GraphState>>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    finish(remove_event(&state, &user, &id, &headers, GraphMethod::Delete, None).await)
}

#[derive(Debug, Default, Deserialize)]
struct CancelBody {
    #[serde(alias = "Comment")]
    comment: Option<String>,
}

async fn cancel_event(
    State(state): State<Arc<GraphState>>,
    Path((user, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let comment = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<CancelBody>(&body) {
            Ok(b) => b.comment,
            Err(_) => return bad_request("BadRequest", "Invalid request body."),
        }
    };
    finish(remove_event(&state, &user, &id, &headers, GraphMethod::Cancel, comment).await)
}

async fn remove_event(
    state: &GraphState,
    user: &str,
    id: &str,
    headers: &HeaderMap,
    method: GraphMethod,
    comment: Option<String>,
) -> Handled<Response> {
    admit(state, method, headers).await?;
    check_user(state, user)?;
    let mut inner = state.lock();
    let events = inner.events_mut(user);
    let Some(pos) = events.iter().position(|e| e.id == id) else { return reject(not_found()) };
    if method == GraphMethod::Cancel && !events[pos].is_organizer {
        // https://learn.microsoft.com/en-us/graph/api/event-cancel?view=graph-rest-1.0
        return reject(bad_request(
            "ErrorAccessDenied",
            "Your request can't be completed. You need to be an organizer to cancel a meeting.",
        ));
    }
    events.remove(pos);
    inner.removals.push(Removal { user: user.to_ascii_lowercase(), id: id.to_owned(), method, comment });
    inner.touched(user, id, "deleted");
    let status = if method == GraphMethod::Cancel { StatusCode::ACCEPTED } else { StatusCode::NO_CONTENT };
    Ok(status.into_response())
}

async fn calendar_view(
    State(state): State<Arc<GraphState>>,
    Path(user): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    finish(calendar_view_inner(&state, &user, &params, &headers).await)
}

async fn calendar_view_inner(
    state: &GraphState,
    user: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Handled<Response> {
    admit(state, GraphMethod::CalendarView, headers).await?;
    check_user(state, user)?;
    let expand = expanded_properties(params)?;
    let (Some(start_raw), Some(end_raw)) = (query_value(params, "startDateTime"), query_value(params, "endDateTime"))
    else {
        return reject(bad_request(
            "ErrorInvalidParameter",
            "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
        ));
    };
    let (Some(start), Some(end)) = (parse_query_time(start_raw), parse_query_time(end_raw)) else {
        return reject(bad_request("ErrorInvalidParameter", "Invalid StartDateTime or EndDateTime."));
    };
    let top = top_of(params, 10)?;
    let skip = match query_value(params, "$skip") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| bad_request("ErrorInvalidParameter", "Invalid $skip value."))?,
    };
    let zone = preferred_zone(headers);
    let inner = state.lock();
    let mut matching: Vec<&GraphSandboxEvent> = inner
        .users
        .get(&user.to_ascii_lowercase())
        .into_iter()
        .flatten()
        .filter(|e| e.start < end && e.end > start)
        .collect();
    matching.sort_by_key(|e| (e.start, e.end));
    let page: Vec<Value> =
        matching.iter().skip(skip).take(top).map(|e| event_json(e, &zone, expand.as_deref())).collect();
    let mut body = json!({"value": page});
    if skip + top < matching.len() {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1");
        let mut next = url::Url::parse(&format!("http://{host}/v1.0/users/")).expect("static URL");
        next.path_segments_mut().expect("http URL").pop_if_empty().push(user).push("calendarView");
        {
            let mut q = next.query_pairs_mut();
            q.append_pair("startDateTime", start_raw).append_pair("endDateTime", end_raw);
            q.append_pair("$top", &top.to_string()).append_pair("$skip", &(skip + top).to_string());
            if let Some(expand) = query_value(params, "$expand") {
                q.append_pair("$expand", expand);
            }
        }
        body["@odata.nextLink"] = json!(next.to_string());
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// The page size a request asks for with `Prefer: odata.maxpagesize=N` (delta queries page
/// by this header, <https://learn.microsoft.com/en-us/graph/delta-query-events>).
fn preferred_page_size(headers: &HeaderMap, default: usize) -> usize {
    for value in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
        for part in value.split(',') {
            if let Some(n) = part.trim().strip_prefix("odata.maxpagesize=")
                && let Ok(n) = n.trim().parse::<usize>()
            {
                return n.clamp(1, 1000);
            }
        }
    }
    default
}

/// What a delta or skip token stands for. Opaque to clients (base64url of this JSON).
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
struct DeltaState {
    /// The mailbox (lowercased).
    u: String,
    /// The calendar view's window, epoch milliseconds.
    s: i64,
    e: i64,
    /// Changes after this change number (none: a full round).
    since: Option<u64>,
    /// The round's snapshot: changes up to this number (a deltaLink resumes from here).
    upto: u64,
    /// Items up to this change number were already paged out in this round.
    after: u64,
    /// Tokens from before `expire_delta_tokens` answer 410.
    epoch: u64,
}

fn encode_delta_state(state: &DeltaState) -> String {
    data_encoding::BASE64URL_NOPAD.encode(&serde_json::to_vec(state).expect("delta state serializes"))
}

fn decode_delta_state(token: &str) -> Option<DeltaState> {
    let raw = data_encoding::BASE64URL_NOPAD.decode(token.as_bytes()).ok()?;
    serde_json::from_slice(&raw).ok()
}

async fn calendar_view_delta(
    State(state): State<Arc<GraphState>>,
    Path(user): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    finish(calendar_view_delta_inner(&state, &user, &params, &headers).await)
}

/// `GET /users/{upn}/calendarView/delta` (<https://learn.microsoft.com/en-us/graph/api/event-delta?view=graph-rest-1.0>,
/// <https://learn.microsoft.com/en-us/graph/delta-query-events>): the first request names the
/// window (`startDateTime`, `endDateTime`) and lists every event in it; pages continue with
/// `@odata.nextLink` (`$skiptoken`) and the last page carries `@odata.deltaLink`
/// (`$deltatoken`), which lists what changed since: changed events in the window, and deleted
/// ones (or ones moved out of the window) as `{"id", "@removed": {"reason": "deleted"}}`. A token
/// the service no longer honours answers 410 Gone (`expire_delta_tokens`); one it never issued
/// answers 400.
async fn calendar_view_delta_inner(
    state: &GraphState,
    user: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Handled<Response> {
    admit(state, GraphMethod::Delta, headers).await?;
    check_user(state, user)?;
    let page_size = preferred_page_size(headers, 10);
    let zone = preferred_zone(headers);
    let key = user.to_ascii_lowercase();
    let inner = state.lock();
    let epoch = inner.delta_epoch;
    let token = query_value(params, "$deltatoken").or_else(|| query_value(params, "$skiptoken"));
    let round = match token {
        Some(token) => {
            let Some(mut round) = decode_delta_state(token).filter(|r| r.u == key) else {
                return reject(bad_request("ErrorInvalidUrlQuery", "The delta or skip token is malformed."));
            };
            if round.epoch != epoch {
                return reject(graph_error(
                    StatusCode::GONE,
                    "SyncStateNotFound",
                    "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
                ));
            }
            if query_value(params, "$deltatoken").is_some() {
                // A new round: the changes after the last round's snapshot.
                round = DeltaState { since: Some(round.upto), upto: inner.seq, after: round.upto, ..round };
            }
            round
        }
        None => {
            let (Some(start_raw), Some(end_raw)) =
                (query_value(params, "startDateTime"), query_value(params, "endDateTime"))
            else {
                return reject(bad_request(
                    "ErrorInvalidParameter",
                    "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
                ));
            };
            let (Some(start), Some(end)) = (parse_query_time(start_raw), parse_query_time(end_raw)) else {
                return reject(bad_request("ErrorInvalidParameter", "Invalid StartDateTime or EndDateTime."));
            };
            DeltaState {
                u: key.clone(),
                s: start.as_millisecond(),
                e: end.as_millisecond(),
                since: None,
                upto: inner.seq,
                after: 0,
                epoch,
            }
        }
    };
    let (start, end) = (
        Timestamp::from_millisecond(round.s).unwrap_or(Timestamp::UNIX_EPOCH),
        Timestamp::from_millisecond(round.e).unwrap_or(Timestamp::UNIX_EPOCH),
    );
    let in_round = |seq: u64| seq > round.after && seq <= round.upto;
    // (change number, item) in change order: a page boundary is a change number.
    let mut items: Vec<(u64, Value)> = Vec::new();
    for event in inner.users.get(&key).into_iter().flatten().filter(|e| in_round(e.seq)) {
        let inside = event.start < end && event.end > start;
        let mut item = event_json(event, &zone, None);
        item["@odata.type"] = json!("#microsoft.graph.event");
        match (inside, round.since) {
            (true, _) => items.push((event.seq, item)),
            // Changed out of the window since the last round: gone from the view.
            (false, Some(_)) => items.push((event.seq, removed_json(&event.id))),
            (false, None) => {}
        }
    }
    if round.since.is_some() {
        for t in inner.tombstones.iter().filter(|t| t.user == key && in_round(t.seq)) {
            items.push((t.seq, removed_json(&t.id)));
        }
    }
    items.sort_by_key(|(seq, _)| *seq);
    let more = items.len() > page_size;
    items.truncate(page_size);
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1");
    let mut link = url::Url::parse(&format!("http://{host}/v1.0/users/")).expect("static URL");
    link.path_segments_mut().expect("http URL").pop_if_empty().push(user).push("calendarView").push("delta");
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(event)",
        "value": items.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
    });
    if more {
        let after = items.last().map_or(round.after, |(seq, _)| *seq);
        link.query_pairs_mut().append_pair("$skiptoken", &encode_delta_state(&DeltaState { after, ..round }));
        body["@odata.nextLink"] = json!(link.to_string());
    } else {
        link.query_pairs_mut().append_pair("$deltatoken", &encode_delta_state(&round));
        body["@odata.deltaLink"] = json!(link.to_string());
    }
    Ok(json_response(StatusCode::OK, &body))
}

fn removed_json(id: &str) -> Value {
    json!({"@odata.type": "#microsoft.graph.event", "id": id, "@removed": {"reason": "deleted"}})
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionBody {
    change_type: Option<String>,
    notification_url: Option<String>,
    lifecycle_notification_url: Option<String>,
    resource: Option<String>,
    expiration_date_time: Option<String>,
    client_state: Option<String>,
}

fn invalid_subscription(message: &str) -> Response {
    bad_request("InvalidRequest", message)
}

/// The mailbox a subscription `resource` watches: `users/{upn}/events` or
/// `users/{upn}/calendar/events` (a leading `/` allowed).
fn subscribed_mailbox(resource: &str) -> Option<String> {
    let segments: Vec<&str> = resource.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        [users, upn, events] | [users, upn, _, events]
            if users.eq_ignore_ascii_case("users")
                && events.eq_ignore_ascii_case("events")
                && !upn.is_empty()
                && (segments.len() == 3 || segments[2].eq_ignore_ascii_case("calendar")) =>
        {
            Some(upn.to_ascii_lowercase())
        }
        _ => None,
    }
}

/// `expirationDateTime` must be in the future and at most 10,080 minutes away.
fn subscription_expiry(value: Option<&str>, now: Timestamp) -> Handled<Timestamp> {
    let Some(at) = value.and_then(|v| v.parse::<Timestamp>().ok()) else {
        return reject(invalid_subscription("expirationDateTime is required and must be a DateTimeOffset."));
    };
    let max = now + jiff::SignedDuration::from_mins(super::graph_notify::MAX_EVENT_SUBSCRIPTION_MINUTES);
    if at <= now || at > max {
        return reject(invalid_subscription(&format!(
            "Subscription expiration can only be {} minutes in the future.",
            super::graph_notify::MAX_EVENT_SUBSCRIPTION_MINUTES
        )));
    }
    Ok(at)
}

fn subscription_json(s: &GraphSubscription) -> Value {
    json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
        "id": s.id,
        "resource": s.resource,
        "applicationId": "24d3b144-21ae-4080-943f-7067b395b913",
        "changeType": s.change_types.join(","),
        "clientState": s.client_state,
        "notificationUrl": s.notification_url,
        "lifecycleNotificationUrl": s.lifecycle_notification_url,
        "expirationDateTime": format_instant(s.expiration),
        "creatorId": "8ee44408-0679-472c-bc2a-692812af3437",
        "latestSupportedTlsVersion": "v1_2",
        "includeResourceData": null,
    })
}

async fn create_subscription(State(state): State<Arc<GraphState>>, headers: HeaderMap, body: Bytes) -> Response {
    finish(create_subscription_inner(&state, &headers, &body).await)
}

/// `POST /subscriptions` (<https://learn.microsoft.com/en-us/graph/api/subscription-post-subscriptions?view=graph-rest-1.0>).
async fn create_subscription_inner(state: &GraphState, headers: &HeaderMap, body: &Bytes) -> Handled<Response> {
    admit(state, GraphMethod::CreateSubscription, headers).await?;
    let req: SubscriptionBody = parse_body(body)?;
    let change_types: Vec<String> =
        req.change_type.as_deref().unwrap_or("").split(',').map(|c| c.trim().to_owned()).collect();
    if change_types.iter().any(|c| !matches!(c.as_str(), "created" | "updated" | "deleted")) {
        return reject(invalid_subscription("changeType must be created, updated and/or deleted."));
    }
    let resource = req.resource.unwrap_or_default();
    let Some(user) = subscribed_mailbox(&resource) else {
        return reject(invalid_subscription(&format!("Resource '{resource}' is not supported.")));
    };
    check_user(state, &user)?;
    let notification_url = req.notification_url.unwrap_or_default();
    if url::Url::parse(&notification_url).map(|u| !matches!(u.scheme(), "https" | "http")).unwrap_or(true) {
        return reject(invalid_subscription("notificationUrl must be an absolute https URL."));
    }
    let lifecycle_url = req.lifecycle_notification_url.filter(|u| !u.is_empty());
    if lifecycle_url
        .as_deref()
        .is_some_and(|l| url::Url::parse(l).map(|u| !matches!(u.scheme(), "https" | "http")).unwrap_or(true))
    {
        return reject(invalid_subscription("lifecycleNotificationUrl must be an absolute https URL."));
    }
    if req.client_state.as_ref().is_some_and(|c| c.chars().count() > 128) {
        return reject(invalid_subscription("clientState must be at most 128 characters."));
    }
    let now = state.lock().clock.now();
    let expiration = subscription_expiry(req.expiration_date_time.as_deref(), now)?;
    // The handshake, with no lock held: the endpoint may call back into this emulator.
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let main_ok = validate_endpoint(&notification_url, &token).await;
    // Both endpoints are validated when a lifecycle URL is given (it may be the same one):
    // <https://learn.microsoft.com/en-us/graph/change-notifications-lifecycle-events>.
    let lifecycle_check = match (&lifecycle_url, main_ok) {
        (Some(url), true) => {
            let token = format!(
                "Validation: Testing client application reachability for subscription Request-Id: {}",
                uuid::Uuid::new_v4()
            );
            let ok = validate_endpoint(url, &token).await;
            Some(Validation { notification_url: url.clone(), token, passed: ok })
        }
        _ => None,
    };
    let passed = main_ok && lifecycle_check.as_ref().is_none_or(|c| c.passed);
    let mut inner = state.lock();
    inner.validations.push(Validation { notification_url: notification_url.clone(), token, passed: main_ok });
    inner.validations.extend(lifecycle_check);
    if !passed {
        return reject(invalid_subscription(
            "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
        ));
    }
    let subscription = GraphSubscription {
        id: uuid::Uuid::new_v4().to_string(),
        user,
        resource,
        change_types,
        notification_url,
        lifecycle_notification_url: lifecycle_url,
        client_state: req.client_state,
        expiration,
        renewals: 0,
        deleted: false,
    };
    if inner.notify_tx.is_none() {
        inner.notify_tx = Some(start_delivery(inner.notification_stats.clone()));
    }
    let body = subscription_json(&subscription);
    inner.subscriptions.push(subscription);
    Ok(json_response(StatusCode::CREATED, &body))
}

fn subscription_not_found(id: &str) -> Response {
    graph_error(StatusCode::NOT_FOUND, "ResourceNotFound", &format!("The object '{id}' was not found."))
}

async fn renew_subscription(
    State(state): State<Arc<GraphState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    finish(renew_subscription_inner(&state, &id, &headers, &body).await)
}

/// `PATCH /subscriptions/{id}` with a new `expirationDateTime`
/// (<https://learn.microsoft.com/en-us/graph/api/subscription-update?view=graph-rest-1.0>).
async fn renew_subscription_inner(
    state: &GraphState,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Handled<Response> {
    admit(state, GraphMethod::RenewSubscription, headers).await?;
    let req: SubscriptionBody = parse_body(body)?;
    let mut inner = state.lock();
    let now = inner.clock.now();
    let expiration = subscription_expiry(req.expiration_date_time.as_deref(), now)?;
    let Some(s) = inner.subscriptions.iter_mut().find(|s| s.id == id && !s.deleted && s.expiration > now) else {
        return reject(subscription_not_found(id));
    };
    s.expiration = expiration;
    s.renewals += 1;
    Ok(json_response(StatusCode::OK, &subscription_json(s)))
}

async fn delete_subscription(
    State(state): State<Arc<GraphState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&state, GraphMethod::DeleteSubscription, &headers).await {
        return r.into_response();
    }
    let mut inner = state.lock();
    match inner.subscriptions.iter_mut().find(|s| s.id == id && !s.deleted) {
        Some(s) => {
            s.deleted = true;
            StatusCode::NO_CONTENT.into_response()
        }
        None => subscription_not_found(&id),
    }
}

fn oauth_error(error: &str, description: &str, codes: &[u32]) -> Response {
    let body = json!({
        "error": error,
        "error_description": description,
        "error_codes": codes,
        "timestamp": Timestamp::now().strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
    });
    json_response(StatusCode::BAD_REQUEST, &body)
}

async fn token(State(state): State<Arc<GraphState>>, Path(_tenant): Path<String>, body: Bytes) -> Response {
    {
        let mut inner = state.lock();
        *inner.counts.entry(GraphMethod::Token).or_default() += 1;
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
            &[70003],
        );
    }
    let Some(client_id) = form.get("client_id") else {
        return oauth_error(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
            &[900144],
        );
    };
    let Some(presented) = form.get("refresh_token") else {
        return oauth_error(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'refresh_token'.",
            &[900144],
        );
    };
    let mut inner = state.lock();
    let seq = inner.next_seq();
    let Some(client) = inner.oauth.get_mut(client_id) else {
        return oauth_error(
            "unauthorized_client",
            &format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory."),
            &[700016],
        );
    };
    if *presented != client.current {
        let spent = client.spent.contains(presented);
        let description = if spent {
            "AADSTS70000: Provided grant is invalid or malformed. The refresh token has already been redeemed."
        } else {
            "AADSTS70000: Provided grant is invalid or malformed."
        };
        return oauth_error("invalid_grant", description, &[70000]);
    }
    let new_refresh = format!("sandbox-graph-rt-{seq}-{}", uuid::Uuid::new_v4().simple());
    let access = format!("sandbox-graph-at-{seq}-{}", uuid::Uuid::new_v4().simple());
    let old = std::mem::replace(&mut client.current, new_refresh.clone());
    client.spent.insert(old);
    inner.access_tokens.insert(access.clone());
    let scope = form.get("scope").cloned().unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": access,
            "refresh_token": new_refresh,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const TOKEN: &str = "sandbox-token";
    const USER: &str = "desk@contoso.example";
    const KEY: &str = "String {4f3c8a52-1d2e-4b8a-9c67-0b6a1f6ad3e1} Name callside_event_key";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let body = match body {
            Some(v) => {
                request = request.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, headers, value)
    }

    fn event_body(tx: &str) -> Value {
        json!({
            "subject": "Haircut",
            "start": {"dateTime": "2026-11-23T10:00:00", "timeZone": "America/New_York"},
            "end": {"dateTime": "2026-11-23T10:45:00", "timeZone": "America/New_York"},
            "transactionId": tx,
            "singleValueExtendedProperties": [{"id": KEY, "value": tx}]
        })
    }

    #[tokio::test]
    async fn auth_errors_have_graphs_shape() {
        let sandbox = GraphSandbox::start(TOKEN).await.unwrap();
        let url = format!(
            "http://{}/v1.0/users/{USER}/calendarView?startDateTime=2026-11-23T00:00:00Z&endDateTime=2026-11-24T00:00:00Z",
            sandbox.addr
        );
        let resp = reqwest::Client::new().get(&url).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
        assert!(body["error"]["innerError"]["request-id"].is_string());
        let resp = reqwest::Client::new().get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(sandbox.state.request_count(GraphMethod::CalendarView), 2);
    }

    #[tokio::test]
    async fn create_dedups_by_transaction_id_and_times_follow_prefer() {
        let state = GraphState::new(TOKEN);
        let app = GraphSandbox::router(state.clone());
        let uri = format!("/v1.0/users/{USER}/calendar/events");
        let (status, _, first) = call(&app, "POST", &uri, Some(event_body("tx-1")), &[]).await;
        assert_eq!(status, StatusCode::CREATED, "{first}");
        assert_eq!(first["start"], json!({"dateTime": "2026-11-23T15:00:00.0000000", "timeZone": "UTC"}));
        assert_eq!(first["originalStartTimeZone"], "America/New_York");
        assert!(first.get("singleValueExtendedProperties").is_none(), "only returned when expanded");
        let (status, _, again) = call(&app, "POST", &uri, Some(event_body("tx-1")), &[]).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(again["id"], first["id"]);
        assert_eq!(state.events(USER).len(), 1);
        let id = first["id"].as_str().unwrap();
        let (_, _, got) =
            call(&app, "GET", &format!("{uri}/{id}"), None, &[("prefer", "outlook.timezone=\"Europe/Berlin\"")]).await;
        assert_eq!(got["start"], json!({"dateTime": "2026-11-23T16:00:00.0000000", "timeZone": "Europe/Berlin"}));
        let mut bad = event_body("tx-2");
        bad["start"]["timeZone"] = json!("Nowhere/Special");
        let (status, _, err) = call(&app, "POST", &uri, Some(bad), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(err["error"]["code"], "TimeZoneNotSupportedException");
    }

    #[tokio::test]
    async fn extended_property_filter_and_expand() {
        let state = GraphState::new(TOKEN);
        let app = GraphSandbox::router(state.clone());
        let uri = format!("/v1.0/users/{USER}/calendar/events");
        call(&app, "POST", &uri, Some(event_body("Key-A")), &[]).await;
        call(&app, "POST", &uri, Some(event_body("key-b")), &[]).await;
        let filter = format!("singleValueExtendedProperties/Any(ep: ep/id eq '{KEY}' and ep/value eq 'key-a')");
        let expand = format!("singleValueExtendedProperties($filter=id eq '{KEY}')");
        let mut url = url::Url::parse("http://x/").unwrap().join(&uri).unwrap();
        url.query_pairs_mut().append_pair("$filter", &filter).append_pair("$expand", &expand);
        let (status, _, page) = call(&app, "GET", &format!("{}?{}", url.path(), url.query().unwrap()), None, &[]).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let value = page["value"].as_array().unwrap();
        assert_eq!(value.len(), 1, "value match is case-insensitive, one event");
        assert_eq!(value[0]["singleValueExtendedProperties"], json!([{"id": KEY, "value": "Key-A"}]));
        let (status, _, err) = call(&app, "GET", &format!("{uri}?$filter=subject%20eq%20'x'"), None, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(err["error"]["code"], "ErrorInvalidUrlQueryFilter");
        assert_eq!(
            parse_property_filter("singleValueExtendedProperties/Any(ep: ep/id eq 'a' and ep/value eq 'it''s')"),
            Some(("a".to_owned(), "it's".to_owned()))
        );
    }

    #[tokio::test]
    async fn calendar_view_overlap_and_paging() {
        let state = GraphState::new(TOKEN);
        let app = GraphSandbox::router(state.clone());
        state.insert_foreign_event(USER, ts("2026-11-23T08:00:00Z"), ts("2026-11-23T09:00:00Z"), "ends at start");
        for i in 0..3 {
            let start = ts("2026-11-23T09:00:00Z").checked_add(jiff::SignedDuration::from_mins(10 * i)).unwrap();
            state.insert_foreign_event(
                USER,
                start,
                start.checked_add(jiff::SignedDuration::from_mins(5)).unwrap(),
                "in",
            );
        }
        state.insert_foreign_event(USER, ts("2026-11-23T10:00:00Z"), ts("2026-11-23T11:00:00Z"), "starts at end");
        let uri = format!(
            "/v1.0/users/{USER}/calendarView?startDateTime=2026-11-23T09:00:00Z&endDateTime=2026-11-23T10:00:00Z&$top=2"
        );
        let (status, _, page) = call(&app, "GET", &uri, None, &[("host", "graph.test")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["value"].as_array().unwrap().len(), 2);
        let next = page["@odata.nextLink"].as_str().unwrap();
        assert!(
            next.starts_with("http://graph.test/v1.0/users/desk%40contoso.example/calendarView?")
                || next.starts_with("http://graph.test/v1.0/users/desk@contoso.example/calendarView?"),
            "{next}"
        );
        let next = url::Url::parse(next).unwrap();
        let (_, _, page2) = call(&app, "GET", &format!("{}?{}", next.path(), next.query().unwrap()), None, &[]).await;
        assert_eq!(page2["value"].as_array().unwrap().len(), 1);
        assert!(page2.get("@odata.nextLink").is_none());
        let (status, _, err) = call(&app, "GET", &format!("/v1.0/users/{USER}/calendarView"), None, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(err["error"]["code"], "ErrorInvalidParameter");
    }

    #[tokio::test]
    async fn patch_honours_if_match_and_cancel_is_organizer_only() {
        let state = GraphState::new(TOKEN);
        let app = GraphSandbox::router(state.clone());
        let uri = format!("/v1.0/users/{USER}/calendar/events");
        let (_, _, created) = call(&app, "POST", &uri, Some(event_body("tx-p")), &[]).await;
        let id = created["id"].as_str().unwrap();
        let etag = created["@odata.etag"].as_str().unwrap().to_owned();
        let patch = json!({"start": {"dateTime": "2026-11-23T16:00:00", "timeZone": "UTC"},
                           "end": {"dateTime": "2026-11-23T16:45:00", "timeZone": "UTC"}});
        let (status, _, _) =
            call(&app, "PATCH", &format!("{uri}/{id}"), Some(patch.clone()), &[("if-match", "W/\"old\"")]).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        let (status, _, moved) = call(&app, "PATCH", &format!("{uri}/{id}"), Some(patch), &[("if-match", &etag)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(moved["@odata.etag"], json!(etag));
        assert_eq!(moved["id"], created["id"]);
        let theirs = state.insert_foreign_event(USER, ts("2026-11-23T08:00:00Z"), ts("2026-11-23T09:00:00Z"), "x");
        state.cancel_directly(USER, &theirs);
        let (status, _, err) = call(&app, "POST", &format!("{uri}/{theirs}/cancel"), Some(json!({})), &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(err["error"]["code"], "ErrorAccessDenied");
        let (status, _, _) =
            call(&app, "POST", &format!("{uri}/{id}/cancel"), Some(json!({"comment": "sorry"})), &[]).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (status, _, err) = call(&app, "GET", &format!("{uri}/{id}"), None, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(err["error"]["code"], "ErrorItemNotFound");
        assert_eq!(state.removals()[0].comment.as_deref(), Some("sorry"));
    }

    #[tokio::test]
    async fn get_schedule_reports_items_views_and_unknown_users() {
        let state = GraphState::new(TOKEN);
        let app = GraphSandbox::router(state.clone());
        state.insert_foreign_event(USER, ts("2026-11-23T09:00:00Z"), ts("2026-11-23T10:00:00Z"), "busy");
        state.insert_foreign_event_as(USER, ts("2026-11-23T09:30:00Z"), ts("2026-11-23T10:30:00Z"), "t", "tentative");
        state.insert_foreign_event_as(USER, ts("2026-11-23T11:00:00Z"), ts("2026-11-23T11:30:00Z"), "f", "free");
        state.mark_user_missing("ghost@contoso.example");
        let (status, _, body) = call(
            &app,
            "POST",
            &format!("/v1.0/users/{USER}/calendar/getSchedule"),
            Some(json!({
                "schedules": [USER, "ghost@contoso.example"],
                "startTime": {"dateTime": "2026-11-23T09:00:00", "timeZone": "UTC"},
                "endTime": {"dateTime": "2026-11-23T12:00:00", "timeZone": "UTC"},
                "availabilityViewInterval": 30
            })),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ours = &body["value"][0];
        assert_eq!(ours["availabilityView"], "221000");
        assert_eq!(ours["scheduleItems"].as_array().unwrap().len(), 3);
        assert_eq!(ours["scheduleItems"][2]["status"], "free");
        assert_eq!(body["value"][1]["error"]["responseCode"], "ErrorInvalidUser");
    }

    #[tokio::test]
    async fn token_endpoint_rotates_refresh_tokens() {
        let state = GraphState::new(TOKEN);
        let app = GraphSandbox::router(state.clone());
        state.register_oauth_client("app", "rt-0");
        let form = |rt: &str| format!("client_id=app&grant_type=refresh_token&scope=offline_access&refresh_token={rt}");
        let post = |body: String| {
            let app = app.clone();
            async move {
                let request = Request::builder()
                    .method("POST")
                    .uri("/contoso.example/oauth2/v2.0/token")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Body::from(body))
                    .unwrap();
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
                (status, serde_json::from_slice::<Value>(&bytes).unwrap())
            }
        };
        let (status, first) = post(form("rt-0")).await;
        assert_eq!(status, StatusCode::OK);
        let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rt1, "rt-0");
        assert_eq!(first["token_type"], "Bearer");
        let (status, reused) = post(form("rt-0")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(reused["error"], "invalid_grant");
        assert_eq!(reused["error_codes"], json!([70000]));
        let (status, _) = post(form(&rt1)).await;
        assert_eq!(status, StatusCode::OK);
        // The new access token works against the API.
        let at = first["access_token"].as_str().unwrap();
        state.expire_access_tokens();
        state.add_access_token(at);
        let request = Request::builder()
            .uri(format!(
                "/v1.0/users/{USER}/calendarView?startDateTime=2026-11-23T00:00:00Z&endDateTime=2026-11-24T00:00:00Z"
            ))
            .header("authorization", format!("Bearer {at}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(request).await.unwrap().status(), StatusCode::OK);
        assert_eq!(state.request_count(GraphMethod::Token), 3);
    }

    #[tokio::test]
    async fn faults_are_injected_in_order() {
        let state = GraphState::new(TOKEN);
        let app = GraphSandbox::router(state.clone());
        let uri = format!("/v1.0/users/{USER}/calendar/events");
        state.fail_next_with_retry_after(429, "TooManyRequests", 1, 9);
        state.fail_next(503, "ServiceNotAvailable", 1);
        let (status, headers, body) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers["retry-after"], "9");
        assert_eq!(body["error"]["code"], "TooManyRequests");
        let (status, _, _) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _, _) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::OK);
        state.set_down(true);
        let (status, _, body) = call(&app, "GET", &uri, None, &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "ServiceNotAvailable");
        state.clear_faults();
        let foreign = state.insert_foreign_on_next_insert(USER, ts("2026-11-23T14:00:00Z"), ts("2026-11-23T14:30:00Z"));
        call(&app, "POST", &uri, Some(event_body("tx-f")), &[]).await;
        let events = state.events(USER);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, foreign);
        assert!(events[0].foreign && !events[1].foreign);
    }
}
