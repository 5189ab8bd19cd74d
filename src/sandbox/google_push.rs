//! The Google Calendar emulator's push notifications: channels opened by `events.watch` and the
//! task that POSTs their notifications.
//!
//! As documented (<https://developers.google.com/workspace/calendar/api/guides/push>): a channel
//! is opened with `{id, type: "web_hook", address, token, expiration}`; Google answers with the
//! channel, a `resourceId` and the `expiration` in epoch milliseconds, then POSTs a `sync`
//! message (message number 1) to the address; every later change of the watched collection is
//! an `exists` message. Notifications carry no body; the headers say everything:
//! `X-Goog-Channel-ID`, `X-Goog-Channel-Token` (when set), `X-Goog-Channel-Expiration`,
//! `X-Goog-Resource-ID`, `X-Goog-Resource-URI`, `X-Goog-Resource-State` (`sync`, `exists`,
//! `not_exists`) and `X-Goog-Message-Number` (increasing per channel, not sequential). The
//! receiver then lists what changed with its sync token. A channel is stopped by
//! `channels.stop` with its `id` and `resourceId`; nothing renews a channel, a new one is opened.
//!
//! This is written independently of the receiver (`crate::inbound::google`), so the two check
//! each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use tokio::sync::mpsc;

/// One open (or stopped) channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchChannel {
    pub id: String,
    pub resource_id: String,
    pub calendar_id: String,
    pub address: String,
    pub token: Option<String>,
    pub expiration: Timestamp,
    /// The last message number sent on the channel.
    pub message_number: u64,
    pub stopped: bool,
}

/// One notification to POST.
#[derive(Debug, Clone)]
pub(crate) struct Push {
    pub address: String,
    pub channel_id: String,
    pub token: Option<String>,
    pub resource_id: String,
    pub resource_uri: String,
    pub state: &'static str,
    pub message_number: u64,
    pub expiration: Timestamp,
}

/// What the delivery task has done so far.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Notifications answered 2xx.
    pub delivered: AtomicU64,
    /// Notifications answered otherwise or not at all.
    pub failed: AtomicU64,
    /// Notifications dropped on purpose (`drop_next_pushes`): "the webhook was missed".
    pub dropped: AtomicU64,
}

impl PushStats {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }
}

/// Starts the delivery task; pushes sent to the returned sender are POSTed in order. Must be
/// called inside a tokio runtime.
pub(crate) fn start_delivery(stats: Arc<PushStats>) -> mpsc::UnboundedSender<Push> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Push>();
    // Every outbound request has a deadline: a receiver that never answers must not wedge the
    // delivery task.
    let client = crate::connectors::http_client();
    tokio::spawn(async move {
        while let Some(push) = rx.recv().await {
            let mut request = client
                .post(&push.address)
                .header("X-Goog-Channel-ID", &push.channel_id)
                .header("X-Goog-Channel-Expiration", http_date(push.expiration))
                .header("X-Goog-Resource-ID", &push.resource_id)
                .header("X-Goog-Resource-URI", &push.resource_uri)
                .header("X-Goog-Resource-State", push.state)
                .header("X-Goog-Message-Number", push.message_number.to_string())
                .header("Content-Length", "0");
            if let Some(token) = &push.token {
                request = request.header("X-Goog-Channel-Token", token);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => stats.delivered.fetch_add(1, Ordering::SeqCst),
                _ => stats.failed.fetch_add(1, Ordering::SeqCst),
            };
        }
    });
    tx
}

/// `X-Goog-Channel-Expiration` is a human-readable date (RFC 1123), e.g.
/// `Tue, 19 Nov 2013 01:13:52 GMT`.
fn http_date(ts: Timestamp) -> String {
    ts.to_zoned_datetime(jiff::tz::TimeZone::UTC).strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}
