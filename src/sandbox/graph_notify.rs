//! The Microsoft Graph emulator's change notifications: subscriptions opened by
//! `POST /v1.0/subscriptions`, the validation handshake, and the task that POSTs notifications.
//!
//! As documented ("Set up notifications for changes in resource data",
//! <https://learn.microsoft.com/en-us/graph/change-notifications-delivery-webhooks>; the
//! subscription resource, <https://learn.microsoft.com/en-us/graph/api/resources/subscription>):
//!
//! - Creating a subscription first *validates* the `notificationUrl`: Graph POSTs to
//!   `{notificationUrl}?validationToken={opaque token}` and requires, within 10 seconds, a 200
//!   with `Content-Type: text/plain` whose body is the token (URL-decoded). Anything else refuses
//!   the subscription (400).
//! - A subscription to Outlook events lives at most 10,080 minutes (under 7 days); its
//!   `expirationDateTime` must be in the future and within that bound. It is renewed by
//!   `PATCH /subscriptions/{id}` with a new `expirationDateTime` and ended by `DELETE`.
//! - Each change of a subscribed mailbox's events is POSTed as a `changeNotificationCollection`:
//!   `{"value":[{subscriptionId, subscriptionExpirationDateTime, changeType, resource,
//!   resourceData, clientState, tenantId}]}`. `clientState` is what the subscriber set, echoed
//!   so it can tell Graph's notifications from forgeries. The subscriber answers 2xx (202).
//! - A subscription created with a `lifecycleNotificationUrl` (validated by the same handshake)
//!   gets lifecycle notifications there — `reauthorizationRequired`, `subscriptionRemoved`,
//!   `missed` — sent on demand by tests (`GraphState::send_lifecycle_event`)
//!   (<https://learn.microsoft.com/en-us/graph/change-notifications-lifecycle-events>).
//!
//! This is written independently of the receiver (`crate::inbound::graph`), so the two check
//! each other. The emulator's deviations: the `resource` names the mailbox by its UPN (Graph
//! uses the user's object id), and `http` loopback URLs are accepted (Graph requires https).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use tokio::sync::mpsc;

/// The emulated Microsoft Entra tenant id notifications carry.
pub const TENANT_ID: &str = "5a2b4c1d-7e8f-4a90-b1c2-d3e4f5a6b7c8";

/// The longest a subscription to Outlook events may live: 10,080 minutes (the subscription
/// resource's "maximum length of subscription per resource type").
pub const MAX_EVENT_SUBSCRIPTION_MINUTES: i64 = 10_080;

/// One subscription (deleted ones included, for tests to inspect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSubscription {
    pub id: String,
    /// The mailbox whose events are watched (lowercased UPN).
    pub user: String,
    /// The `resource` as sent.
    pub resource: String,
    /// `created`, `updated`, `deleted`.
    pub change_types: Vec<String>,
    pub notification_url: String,
    /// Where lifecycle notifications go, when the subscriber gave one.
    pub lifecycle_notification_url: Option<String>,
    pub client_state: Option<String>,
    pub expiration: Timestamp,
    /// PATCH renewals received.
    pub renewals: u32,
    pub deleted: bool,
}

/// One validation handshake the emulator performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub notification_url: String,
    pub token: String,
    /// The endpoint answered 200 text/plain with the token in time.
    pub passed: bool,
}

/// One notification to POST.
#[derive(Debug, Clone)]
pub(crate) struct Notification {
    pub url: String,
    pub body: serde_json::Value,
}

/// What the delivery task has done so far.
#[derive(Debug, Default)]
pub struct NotificationStats {
    /// Notifications answered 2xx.
    pub delivered: AtomicU64,
    /// Notifications answered otherwise or not at all.
    pub failed: AtomicU64,
    /// Notifications dropped on purpose (`drop_next_notifications`): "the webhook was missed".
    pub dropped: AtomicU64,
}

impl NotificationStats {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// The notification body for one change of one event under one subscription.
pub(crate) fn notification_body(
    subscription: &GraphSubscription,
    event_id: &str,
    etag: Option<&str>,
    change_type: &str,
) -> serde_json::Value {
    let resource = format!("Users/{}/Events/{event_id}", subscription.user);
    let mut resource_data = serde_json::json!({
        "@odata.type": "#Microsoft.Graph.Event",
        "@odata.id": resource,
        "id": event_id,
    });
    if let Some(etag) = etag {
        resource_data["@odata.etag"] = serde_json::json!(etag);
    }
    serde_json::json!({
        "value": [{
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": graph_instant(subscription.expiration),
            "changeType": change_type,
            "resource": resource,
            "resourceData": resource_data,
            "clientState": subscription.client_state,
            "tenantId": TENANT_ID,
        }]
    })
}

/// A lifecycle notification for a subscription: the same collection, with `lifecycleEvent` in
/// place of `changeType` (the two are mutually exclusive,
/// <https://learn.microsoft.com/en-us/graph/api/resources/changenotification>) and the
/// subscription itself as the resource; Graph names the tenant `organizationId` here.
pub(crate) fn lifecycle_body(subscription: &GraphSubscription, event: &str) -> serde_json::Value {
    serde_json::json!({
        "value": [{
            "lifecycleEvent": event,
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": graph_instant(subscription.expiration),
            "resource": subscription.resource,
            "resourceData": {
                "@odata.type": "#microsoft.graph.subscription",
                "@odata.id": format!("subscriptions/{}", subscription.id),
                "id": subscription.id,
            },
            "clientState": subscription.client_state,
            "organizationId": TENANT_ID,
            "sequence": null,
        }]
    })
}

/// Graph's `DateTimeOffset` rendering, e.g. `2026-11-24T13:00:00.0000000+00:00`.
pub(crate) fn graph_instant(ts: Timestamp) -> String {
    ts.to_zoned_datetime(jiff::tz::TimeZone::UTC).strftime("%Y-%m-%dT%H:%M:%S%.7f+00:00").to_string()
}

/// Starts the delivery task; notifications sent to the returned sender are POSTed in order.
/// Must be called inside a tokio runtime.
pub(crate) fn start_delivery(stats: Arc<NotificationStats>) -> mpsc::UnboundedSender<Notification> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Notification>();
    // Every outbound request has a deadline: a receiver that never answers must not wedge the
    // delivery task.
    let client = crate::connectors::http_client();
    tokio::spawn(async move {
        while let Some(n) = rx.recv().await {
            match client.post(&n.url).json(&n.body).send().await {
                Ok(r) if r.status().is_success() => stats.delivered.fetch_add(1, Ordering::SeqCst),
                _ => stats.failed.fetch_add(1, Ordering::SeqCst),
            };
        }
    });
    tx
}

/// The validation handshake: POST `{url}?validationToken=…` and require a 200 `text/plain`
/// echo of the token within 10 seconds.
pub(crate) async fn validate_endpoint(notification_url: &str, token: &str) -> bool {
    let Ok(mut url) = url::Url::parse(notification_url) else { return false };
    url.query_pairs_mut().append_pair("validationToken", token);
    let client = crate::connectors::http_client();
    let answer = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    let Ok(response) = answer else { return false };
    let plain = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/plain"));
    if response.status() != reqwest::StatusCode::OK || !plain {
        return false;
    }
    response.text().await.is_ok_and(|body| body == token)
}
