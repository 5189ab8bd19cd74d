//! Microsoft Graph change notifications (`POST /v1/inbound/microsoft`), for the subscriptions
//! `super::calendar` opens on each watched Microsoft 365 calendar.
//!
//! As documented ("Receive change notifications through webhooks",
//! <https://learn.microsoft.com/en-us/graph/change-notifications-delivery-webhooks>):
//!
//! - **Validation.** When a subscription is created, Graph POSTs
//!   `{notificationUrl}?validationToken={token}` and expects, within 10 seconds, a 200 with
//!   `Content-Type: text/plain` whose body is the URL-decoded token. [`validation_echo`] answers
//!   that before anything else; the token is opaque text, echoed as plain text only (never HTML).
//! - **Notifications** are a `changeNotificationCollection`, `{"value": [{subscriptionId,
//!   clientState, changeType, resource, subscriptionExpirationDateTime, tenantId, …}]}`, to be
//!   acknowledged with a 2xx within about 3 seconds; Graph retries failed deliveries. Each item
//!   names a subscription of ours and echoes the `clientState` we set on it (a random secret per
//!   subscription): that echo is what tells Graph's notifications from forgeries, as Graph's
//!   webhooks carry no signature.
//!
//! A batch is refused whole, counted and changes nothing when: the body is not such a
//! collection (400); an item names no subscription of ours (404); its `clientState` is missing
//! or not the subscription's (401, compared in constant time); the subscription has expired
//! (401: stale). An accepted batch is answered 202 at once, and each calendar it concerns is
//! synced in the background with its delta token (`super::calendar::sync_calendar`): the
//! notification is a hint, never the data. A replayed notification therefore costs one
//! incremental sync that finds nothing new, so no replay guard is kept (unlike Google's message
//! numbers, Graph's items carry no sequence to key one on).
//!
//! **Lifecycle notifications** ("Reduce missing subscriptions and change notifications",
//! <https://learn.microsoft.com/en-us/graph/change-notifications-lifecycle-events>): our
//! subscriptions set `lifecycleNotificationUrl` to this same route (the docs allow one endpoint
//! for both; Graph validates each URL with its own handshake, answered by [`validation_echo`]).
//! A lifecycle item carries `lifecycleEvent` instead of `changeType` (the two are mutually
//! exclusive, <https://learn.microsoft.com/en-us/graph/api/resources/changenotification>; an
//! item with both or neither is malformed) and is checked exactly as a change: known
//! subscription, its `clientState`, not expired. Then, in the background:
//! `reauthorizationRequired` → the calendar's subscription is renewed now (our renewal: a new
//! subscription, then the old one deleted); `subscriptionRemoved` → a new subscription and a
//! delta sync (changes during the gap are in the delta); `missed` → a delta sync. A lifecycle
//! event about a subscription that is no longer the calendar's current one (already replaced)
//! renews nothing.
//!
//! Not handled: rich notifications with encrypted resource data (not requested).

use std::sync::Arc;

use serde::Deserialize;

use super::calendar::{lifecycle_applied, resubscribe, secret_matches, sync_calendar, tenant_of};
use super::{Rejection, counted};
use crate::session::Core;
use crate::tenant::Tenant;

/// The counted vendor label: the calendar provider's name.
pub const VENDOR: &str = "microsoft";
/// The route subscriptions are opened with (`{connect.public_url}/v1/inbound/microsoft`).
pub const PATH: &str = "/v1/inbound/microsoft";
/// The query parameter of the validation handshake.
pub const VALIDATION_PARAM: &str = "validationToken";
/// A validation token longer than this is refused (Graph's is a short sentence with an id).
const MAX_VALIDATION_TOKEN: usize = 1024;

#[derive(Debug, Deserialize)]
struct Collection {
    value: Vec<Notified>,
}

/// One notification of a batch, as far as callside reads it (the rest is ignored: the
/// notification is a hint, the data comes from the delta).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notified {
    pub subscription_id: String,
    pub client_state: Option<String>,
    pub change_type: Option<String>,
    /// Set on lifecycle notifications only (then `change_type` is absent).
    pub lifecycle_event: Option<String>,
}

/// A lifecycle notification's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// Renew (or reauthorize) the subscription before Graph stops delivering.
    ReauthorizationRequired,
    /// Graph removed the subscription: create another and catch up.
    SubscriptionRemoved,
    /// Some change notifications were not delivered: catch up.
    Missed,
}

impl LifecycleEvent {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "reauthorizationRequired" => Some(Self::ReauthorizationRequired),
            "subscriptionRemoved" => Some(Self::SubscriptionRemoved),
            "missed" => Some(Self::Missed),
            _ => None,
        }
    }
}

impl Notified {
    /// The lifecycle event, when this is a lifecycle notification (validated by
    /// [`parse_notifications`]).
    pub fn lifecycle(&self) -> Option<LifecycleEvent> {
        self.lifecycle_event.as_deref().and_then(LifecycleEvent::parse)
    }
}

/// Parses a `changeNotificationCollection` without touching any state: its items, each with a
/// known `changeType`, or why the body is malformed.
pub fn parse_notifications(body: &[u8]) -> Result<Vec<Notified>, Rejection> {
    let batch: Collection = serde_json::from_slice(body)
        .map_err(|_| Rejection::Malformed("body is not a change notification collection".to_owned()))?;
    if batch.value.is_empty() {
        return Err(Rejection::Malformed("no notifications in the collection".to_owned()));
    }
    for item in &batch.value {
        match (&item.change_type, &item.lifecycle_event) {
            (Some(change), None) => {
                if !change.split(',').all(|k| matches!(k.trim(), "created" | "updated" | "deleted")) {
                    return Err(Rejection::Malformed("changeType unknown".to_owned()));
                }
            }
            (None, Some(event)) => {
                if LifecycleEvent::parse(event).is_none() {
                    return Err(Rejection::Malformed("lifecycleEvent unknown".to_owned()));
                }
            }
            (Some(_), Some(_)) => {
                return Err(Rejection::Malformed("changeType and lifecycleEvent are exclusive".to_owned()));
            }
            (None, None) => return Err(Rejection::Malformed("changeType or lifecycleEvent missing".to_owned())),
        }
    }
    Ok(batch.value)
}

/// What an accepted batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// Notifications in the batch.
    pub notifications: usize,
    /// Calendars whose sync was started.
    pub calendars: usize,
    /// Lifecycle notifications in the batch (acted on in the background).
    pub lifecycle: usize,
}

/// The validation handshake: the token to echo (already URL-decoded). Counted.
pub fn validation_echo(core: &Core, token: &str) -> Result<String, Rejection> {
    let result = if token.is_empty() || token.len() > MAX_VALIDATION_TOKEN {
        Err(Rejection::Malformed("validationToken empty or too long".to_owned()))
    } else {
        Ok(token.to_owned())
    };
    let outcome = if result.is_ok() { "validation" } else { "malformed" };
    core.metrics.count_inbound_request(VENDOR, outcome);
    result
}

/// Validates a notification batch and starts the sync of each calendar it concerns. Counts
/// the request.
pub async fn receive(core: &Arc<Core>, body: &[u8]) -> Result<Accepted, Rejection> {
    counted(core, VENDOR, receive_uncounted(core, body))
}

fn receive_uncounted(core: &Arc<Core>, body: &[u8]) -> Result<Accepted, Rejection> {
    let items = parse_notifications(body)?;
    let now = core.clock.now();
    let mut targets: Vec<(Arc<Tenant>, String)> = Vec::new();
    let mut lifecycle: Vec<(Arc<Tenant>, String, String, LifecycleEvent)> = Vec::new();
    for item in &items {
        let channel = core.calendar_sync.channel(&item.subscription_id).ok_or(Rejection::UnknownChannel)?;
        if !item.client_state.as_deref().is_some_and(|c| secret_matches(&channel.secret, c)) {
            return Err(Rejection::Forged);
        }
        if now >= channel.subscription.expires_at {
            return Err(Rejection::Stale);
        }
        let tenant = tenant_of(core, &channel).ok_or(Rejection::UnknownChannel)?;
        if let Some(event) = item.lifecycle() {
            lifecycle.push((tenant, channel.calendar_id.clone(), item.subscription_id.clone(), event));
            continue;
        }
        if !targets.iter().any(|(t, c)| t.id() == tenant.id() && *c == channel.calendar_id) {
            targets.push((tenant, channel.calendar_id.clone()));
        }
    }
    let calendars = targets.len();
    for (tenant, calendar_id) in targets {
        let core = core.clone();
        // Answered at once (Graph wants the 2xx within seconds); the sync runs behind it and
        // its failures are the next poll's to retry.
        tokio::spawn(async move {
            if let Err(e) = sync_calendar(&core, &tenant, &calendar_id).await {
                tracing::warn!(tenant = %tenant.id(), error = %e, "calendar sync after a Graph notification failed; the next poll retries");
            }
        });
    }
    let lifecycle_count = lifecycle.len();
    for (tenant, calendar_id, subscription_id, event) in lifecycle {
        let core = core.clone();
        tokio::spawn(async move {
            apply_lifecycle(&core, &tenant, &calendar_id, &subscription_id, event).await;
            lifecycle_applied(&core);
        });
    }
    Ok(Accepted { notifications: items.len(), calendars, lifecycle: lifecycle_count })
}

/// Acts on one lifecycle notification (see the module comment).
async fn apply_lifecycle(
    core: &Arc<Core>,
    tenant: &Arc<Tenant>,
    calendar_id: &str,
    subscription_id: &str,
    event: LifecycleEvent,
) {
    let current = core.calendar_sync.subscription(tenant.id(), calendar_id).is_some_and(|s| s.id == subscription_id);
    let renew =
        current && matches!(event, LifecycleEvent::ReauthorizationRequired | LifecycleEvent::SubscriptionRemoved);
    if renew && !resubscribe(core, tenant, calendar_id).await {
        tracing::warn!(tenant = %tenant.id(), ?event, "renewing a Graph subscription after a lifecycle notification failed; the renewal loop and polling carry on");
    }
    if matches!(event, LifecycleEvent::SubscriptionRemoved | LifecycleEvent::Missed)
        && let Err(e) = sync_calendar(core, tenant, calendar_id).await
    {
        tracing::warn!(tenant = %tenant.id(), error = %e, "calendar sync after a Graph lifecycle notification failed; the next poll retries");
    }
}
