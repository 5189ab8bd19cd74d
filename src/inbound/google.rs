//! Google Calendar push notifications (`POST /v1/inbound/google`).
//!
//! As documented (<https://developers.google.com/workspace/calendar/api/guides/push>, "Receiving
//! notifications"): a notification has no body; `X-Goog-Channel-ID` names the channel we opened
//! (`super::calendar` opens one per watched calendar with events.watch), `X-Goog-Channel-Token`
//! echoes the token we gave it, `X-Goog-Resource-ID` the watched resource, and
//! `X-Goog-Resource-State` says `sync` (the channel was just opened: nothing changed) or
//! `exists` / `not_exists` (something changed: list it with the sync token).
//! `X-Goog-Message-Number` increases per channel.
//!
//! A notification is refused, counted and changes nothing when: a header is missing or
//! malformed (400); the channel is not one of ours (404); the token or resource id is not the
//! channel's (401, compared in constant time); the channel has expired (401: a stale
//! notification); the same channel and message number were already received (409, the replay
//! guard of `store/inbound.rs`).

use std::sync::Arc;

use super::calendar::{SyncReport, secret_matches, sync_calendar, tenant_of};
use super::{Rejection, counted};
use crate::session::Core;

pub const VENDOR: &str = "google";
/// The route channels are opened with (`{connect.public_url}/v1/inbound/google`).
pub const PATH: &str = "/v1/inbound/google";
pub const CHANNEL_ID_HEADER: &str = "X-Goog-Channel-ID";
pub const CHANNEL_TOKEN_HEADER: &str = "X-Goog-Channel-Token";
pub const RESOURCE_ID_HEADER: &str = "X-Goog-Resource-ID";
pub const RESOURCE_STATE_HEADER: &str = "X-Goog-Resource-State";
pub const MESSAGE_NUMBER_HEADER: &str = "X-Goog-Message-Number";

/// The headers of one notification, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Push<'a> {
    pub channel_id: Option<&'a str>,
    pub token: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub state: Option<&'a str>,
    pub message_number: Option<&'a str>,
}

/// What an accepted notification did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// `sync`, `exists` or `not_exists`.
    pub state: String,
    /// The sync it ran (none for `sync` messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncReport>,
    /// The sync failed at the provider; the next poll retries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Validates a notification and runs its calendar's sync. Counts the request.
pub async fn receive(core: &Arc<Core>, push: Push<'_>) -> Result<Accepted, Rejection> {
    counted(core, VENDOR, receive_uncounted(core, push).await)
}

/// What the route does: [`receive`], except that on a store shared by several instances an
/// instance that does not lead the calendar sync — so holds no channel — hands a well-formed
/// notification for a channel it does not know to the instance that does, over the invalidation
/// bus (`What::GooglePush`), and answers 202 `forwarded` (counted under that outcome). Behind one
/// shared URL a push lands on any instance; the channels live in the leader's memory. The leader
/// checks token, resource id, expiry and replay exactly as for a direct push, so a forged one
/// changes nothing there either; one for a channel no instance holds is dropped by all.
pub async fn receive_or_forward(core: &Arc<Core>, push: Push<'_>) -> Result<Forwarded, Rejection> {
    let result = receive_uncounted(core, push).await;
    let forward = matches!(result, Err(Rejection::UnknownChannel))
        && core.store.backend() == crate::store::Backend::Postgres
        && !core.jobs.holds(crate::leader::Job::CalendarSync);
    if !forward {
        return counted(core, VENDOR, result).map(Forwarded::Here);
    }
    let what = crate::store::bus::What::GooglePush {
        channel_id: push.channel_id.unwrap_or_default().to_owned(),
        token: push.token.map(str::to_owned),
        resource_id: push.resource_id.map(str::to_owned),
        state: push.state.map(str::to_owned),
        message_number: push.message_number.map(str::to_owned),
    };
    core.store.publish(crate::store::bus::ALL_TENANTS, what).await;
    core.metrics.count_inbound_request(VENDOR, "forwarded");
    Ok(Forwarded::ToLeader)
}

/// Where an accepted notification was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// Here: what it did.
    Here(Accepted),
    /// Handed to the instance holding the channel.
    ToLeader,
}

async fn receive_uncounted(core: &Arc<Core>, push: Push<'_>) -> Result<Accepted, Rejection> {
    let malformed = |what: &str| Rejection::Malformed(format!("{what} header missing or invalid"));
    let channel_id = push.channel_id.filter(|c| !c.is_empty()).ok_or_else(|| malformed(CHANNEL_ID_HEADER))?;
    let state = match push.state {
        Some(s @ ("sync" | "exists" | "not_exists")) => s,
        _ => return Err(malformed(RESOURCE_STATE_HEADER)),
    };
    let message_number = push
        .message_number
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or_else(|| malformed(MESSAGE_NUMBER_HEADER))?;
    let channel = core.calendar_sync.channel(channel_id).ok_or(Rejection::UnknownChannel)?;
    let token_ok = push.token.is_some_and(|t| secret_matches(&channel.secret, t));
    // The resource id is known once events.watch answered; the `sync` message may come first.
    let resource_ok = match (&channel.subscription.resource_id, push.resource_id) {
        (Some(expected), Some(presented)) => secret_matches(expected, presented),
        (Some(_), None) => false,
        (None, _) => true,
    };
    if !token_ok || !resource_ok {
        return Err(Rejection::Forged);
    }
    let now = core.clock.now();
    if now >= channel.subscription.expires_at {
        return Err(Rejection::Stale);
    }
    let Some(tenant) = tenant_of(core, &channel) else {
        return Err(Rejection::UnknownChannel);
    };
    let key = format!("channel:{channel_id}:{message_number}");
    let fresh = core
        .store
        .record_inbound_delivery(VENDOR, &key, Some(tenant.id()), now)
        .await
        .map_err(|e| Rejection::Unavailable(format!("store: {e}")))?;
    if !fresh {
        return Err(Rejection::Replayed);
    }
    if state == "sync" {
        return Ok(Accepted { state: state.to_owned(), ..Accepted::default() });
    }
    match sync_calendar(core, &tenant, &channel.calendar_id).await {
        Ok(report) => Ok(Accepted { state: state.to_owned(), sync: Some(report), error: None }),
        // Acknowledged anyway: Google would only resend the same "something changed", and the
        // poll retries the sync from the same cursor.
        Err(e) => Ok(Accepted { state: state.to_owned(), sync: None, error: Some(e.to_string()) }),
    }
}
