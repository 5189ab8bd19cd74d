//! The HubSpot emulator's webhooks: when a contact or deal changes (a rep's edit in the UI, or a
//! write through the API), the emulated app's subscriptions POST a batch of events to the app's
//! one target URL, signed the way HubSpot signs them (v3).
//!
//! As documented (<https://developers.hubspot.com/docs/api/webhooks/validating-requests>,
//! "Validate the v3 request signature"; <https://developers.hubspot.com/changelog/introducing-version-3-of-webhook-signatures>):
//! `X-HubSpot-Signature-v3` is the base64 HMAC-SHA256, keyed with the app's client secret, of
//! `method + URI + body + timestamp`, and `X-HubSpot-Request-Timestamp` is that timestamp in
//! epoch milliseconds. The body is a JSON array of events with `eventId`, `subscriptionId`,
//! `portalId`, `appId`, `occurredAt`, `subscriptionType` (`contact.propertyChange`,
//! `contact.creation`, `deal.propertyChange`), `attemptNumber`, `objectId`, `propertyName` /
//! `propertyValue` for property changes, `changeSource` (`CRM_UI` for a person, `INTEGRATION`
//! for an app) and `sourceId` (`userId:<id>` for a person, the app for an integration).
//! A delivery answered with anything but 2xx is retried once (HubSpot retries with backoff; one
//! retry is enough for the tests and keeps the emulator simple), with `attemptNumber` 1.
//!
//! This signing is written independently of the receiver's (`crate::inbound::hubspot`), so the
//! two check each other.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};

use super::hubspot::ChangeSource;
use crate::clock::SharedClock;

/// The numeric app id the emulated app's events carry in `appId`.
pub const SANDBOX_APP_NUMERIC_ID: u64 = 4_242_001;
/// The subscription ids of the emulated app's subscriptions.
const SUBSCRIPTION_IDS: [(&str, u64); 3] =
    [("contact.propertyChange", 7001), ("contact.creation", 7002), ("deal.propertyChange", 7003)];

/// Where the emulator's events go, and the counters tests read.
#[derive(Debug)]
pub struct WebhookSink {
    tx: mpsc::UnboundedSender<Value>,
    portal_id: u64,
    next_event_id: u64,
    stats: watch::Receiver<WebhookStats>,
}

/// What the delivery task has done so far: the signal tests wait on
/// (`HubSpotState::webhook_stats`). A request is settled once the receiver answered it (or its
/// last attempt failed), so whatever the receiver counts for it is counted by then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Requests answered 2xx.
    pub delivered: u64,
    /// Requests answered otherwise (or not at all), retries included.
    pub failed: u64,
    /// Requests whose delivery is over: answered 2xx, or failed on their last attempt.
    pub settled: u64,
}

impl WebhookSink {
    /// Queues one event (called under the emulator's lock: never blocks).
    pub(crate) fn emit(
        &mut self,
        subscription_type: &str,
        object_id: u64,
        property: Option<(&str, &str)>,
        source: &ChangeSource,
        at: Timestamp,
    ) {
        self.next_event_id += 1;
        let subscription_id =
            SUBSCRIPTION_IDS.iter().find(|(t, _)| *t == subscription_type).map(|(_, id)| *id).unwrap_or(7000);
        let mut event = json!({
            "eventId": self.next_event_id,
            "subscriptionId": subscription_id,
            "portalId": self.portal_id,
            "appId": SANDBOX_APP_NUMERIC_ID,
            "occurredAt": at.as_millisecond(),
            "subscriptionType": subscription_type,
            "attemptNumber": 0,
            "objectId": object_id,
            "changeSource": source.source_type,
        });
        if let Some(id) = &source.source_id {
            event["sourceId"] = json!(id);
        }
        if let Some((name, value)) = property {
            event["propertyName"] = json!(name);
            event["propertyValue"] = json!(value);
        }
        let _ = self.tx.send(event);
    }

    /// The delivery task's progress, and every change of it.
    pub fn stats(&self) -> watch::Receiver<WebhookStats> {
        self.stats.clone()
    }
}

/// The v3 signature of a request, as HubSpot computes it.
pub fn sign_v3(secret: &str, method: &str, uri: &str, body: &[u8], timestamp_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp_ms.to_string().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Starts the delivery task: events queued by [`WebhookSink::emit`] are POSTed in batches (what
/// is queued at the moment, up to 100 — HubSpot's batch limit) to `target`, signed with
/// `secret` at the time `clock` says.
pub fn start_delivery(
    target: url::Url,
    secret: String,
    portal_id: u64,
    clock: SharedClock,
) -> (WebhookSink, watch::Receiver<WebhookStats>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let (task_stats, stats) = watch::channel(WebhookStats::default());
    // Every outbound request has a deadline, the emulator's included: a receiver that never
    // answers must not wedge the delivery task.
    let client = crate::connectors::http_client();
    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 100 {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            for attempt in 0..2u64 {
                for e in &mut batch {
                    e["attemptNumber"] = json!(attempt);
                }
                let body = serde_json::to_vec(&batch).expect("events serialize");
                let t = clock.now().as_millisecond();
                let signature = sign_v3(&secret, "POST", target.as_str(), &body, t);
                let sent = client
                    .post(target.clone())
                    .header("Content-Type", "application/json")
                    .header("X-HubSpot-Signature-v3", signature)
                    .header("X-HubSpot-Signature-Version", "v3")
                    .header("X-HubSpot-Request-Timestamp", t.to_string())
                    .body(body)
                    .send()
                    .await;
                // Counted once the answer is in: the receiver has finished with the request.
                let delivered = matches!(&sent, Ok(r) if r.status().is_success());
                task_stats.send_modify(|s| {
                    if delivered {
                        s.delivered += 1;
                    } else {
                        s.failed += 1;
                    }
                    if delivered || attempt == 1 {
                        s.settled += 1;
                    }
                });
                if delivered {
                    break;
                }
            }
        }
    });
    (WebhookSink { tx, portal_id, next_event_id: 0, stats: stats.clone() }, stats, task)
}
