//! The calendar connector interface. One implementation per provider.

pub mod caldav;
pub mod google;
pub mod graph;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ConnectorError;

/// A half-open time interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interval {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Interval {
    pub fn new(start: Timestamp, end: Timestamp) -> Self {
        debug_assert!(start <= end, "interval ends before it starts");
        Self { start, end }
    }

    pub fn overlaps(&self, other: &Interval) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// Clips busy intervals to the window, sorts them and merges overlapping or touching ones: the
/// shape every provider's free/busy answer is normalized to.
pub(crate) fn merge_intervals(mut intervals: Vec<Interval>, window: Interval) -> Vec<Interval> {
    for i in &mut intervals {
        i.start = i.start.max(window.start);
        i.end = i.end.min(window.end);
    }
    intervals.retain(|i| i.start < i.end);
    intervals.sort();
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for i in intervals {
        match merged.last_mut() {
            Some(last) if i.start <= last.end => last.end = last.end.max(i.end),
            _ => merged.push(i),
        }
    }
    merged
}

/// An event to create. `id` is the idempotency key chosen by the service (for Google: base32hex,
/// 5–1024 characters), so a retried create can never produce a second event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub id: String,
    pub summary: String,
    pub description: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// IANA zone the event is shown in.
    pub time_zone: String,
    pub attendee_email: Option<String>,
    /// Reminder minutes before the start (popup).
    pub reminder_minutes: Vec<u32>,
    /// Private extended properties (Google) / single-value extended properties (Graph): the call
    /// id and service, so our own events are recognised.
    pub call_id: String,
    pub service_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarEvent {
    pub id: String,
    pub summary: Option<String>,
    pub start: Timestamp,
    pub end: Timestamp,
    /// `confirmed`, `tentative` or `cancelled`.
    pub status: String,
    pub etag: Option<String>,
    /// The call id from the event's private properties, when the service created it.
    pub call_id: Option<String>,
    /// Whether the event blocks time (Google `transparency` != `transparent`).
    pub busy: bool,
    /// When the event last changed, as the provider says (Google `updated`, Graph
    /// `lastModifiedDateTime`, iCalendar `LAST-MODIFIED`): for a cancelled event, when it was
    /// cancelled (the outcome reader's late-cancellation check).
    #[serde(default)]
    pub updated: Option<Timestamp>,
}

/// One entry of an incremental sync of a calendar's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventChange {
    /// Created or changed (a cancelled event with its times still known comes as this, with
    /// `status` `cancelled`).
    Upserted(CalendarEvent),
    /// Deleted; providers may send only the id of a deleted event.
    Removed { id: String },
}

/// What one sync of a calendar's events found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResult {
    /// The changes since the cursor (for a full sync: every event from `since` on) and the
    /// cursor to present next time.
    Changes { changes: Vec<EventChange>, cursor: String },
    /// The provider no longer honours the cursor (Google's 410 Gone, WebDAV's
    /// `valid-sync-token` precondition): forget what is known and sync fully again.
    Expired,
}

/// A push subscription to a calendar's changes (a Google channel, a Graph subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The id we chose (Google) or the provider assigned (Graph).
    pub id: String,
    /// The provider's id of the watched resource (Google `resourceId`), checked on every
    /// notification.
    pub resource_id: Option<String>,
    pub expires_at: Timestamp,
}

/// What a subscription asks for. `secret` comes back with every notification (Google's
/// channel token, Graph's `clientState`) and is how a notification is told from a forgery.
#[derive(Debug, Clone)]
pub struct SubscribeRequest<'a> {
    pub id: &'a str,
    pub address: &'a str,
    pub secret: &'a str,
    pub expires_at: Timestamp,
}

fn not_supported(what: &str) -> ConnectorError {
    ConnectorError::Permanent(format!("{what} is not supported by this calendar provider"))
}

#[async_trait]
pub trait CalendarConnector: Send + Sync + 'static {
    fn provider(&self) -> &'static str;

    /// Whether `cancel_event(.., notify = true)` makes the provider tell the attendees itself
    /// (Google `sendUpdates`, Graph's cancel action). CalDAV servers without scheduling do not;
    /// the service then notifies through the tenant's webhook.
    fn notifies_attendees(&self) -> bool {
        true
    }

    /// Busy intervals of the given calendars inside the window, merged across calendars.
    async fn free_busy(&self, calendar_ids: &[String], window: Interval) -> Result<Vec<Interval>, ConnectorError>;

    /// Creates an event with the caller-chosen id. A second create with the same id answers
    /// `Conflict` (Google 409 `duplicate`).
    async fn create_event(&self, calendar_id: &str, event: &NewEvent) -> Result<CalendarEvent, ConnectorError>;

    async fn get_event(&self, calendar_id: &str, event_id: &str) -> Result<CalendarEvent, ConnectorError>;

    /// Events (single instances) overlapping the window, cancelled ones excluded.
    async fn list_events(&self, calendar_id: &str, window: Interval) -> Result<Vec<CalendarEvent>, ConnectorError>;

    /// Moves an event in place; `etag` makes it conditional (412 → `PreconditionFailed`).
    async fn move_event(
        &self,
        calendar_id: &str,
        event_id: &str,
        start: Timestamp,
        end: Timestamp,
        etag: Option<&str>,
    ) -> Result<CalendarEvent, ConnectorError>;

    /// Cancels (deletes) an event; `notify` asks the provider to email attendees.
    async fn cancel_event(&self, calendar_id: &str, event_id: &str, notify: bool) -> Result<(), ConnectorError>;

    /// The calendar's event changes since `cursor`; without a cursor, a full sync of the events
    /// ending after `since`. Inbound sync (`crate::inbound::calendar`) calls it on every push
    /// notification and on its polling safety net.
    async fn sync_events(
        &self,
        _calendar_id: &str,
        _cursor: Option<&str>,
        _since: Timestamp,
    ) -> Result<SyncResult, ConnectorError> {
        Err(not_supported("incremental sync"))
    }

    /// Whether [`Self::sync_events`] is implemented (calendars of other providers are not
    /// watched).
    fn syncs_changes(&self) -> bool {
        false
    }

    /// Whether the provider pushes change notifications ([`Self::subscribe`]).
    fn pushes_changes(&self) -> bool {
        false
    }

    /// Asks the provider to notify `request.address` of changes to the calendar's events.
    async fn subscribe(
        &self,
        _calendar_id: &str,
        _request: &SubscribeRequest<'_>,
    ) -> Result<Subscription, ConnectorError> {
        Err(not_supported("push notification"))
    }

    /// Ends a subscription (after its replacement exists).
    async fn unsubscribe(&self, _subscription: &Subscription) -> Result<(), ConnectorError> {
        Ok(())
    }
}
