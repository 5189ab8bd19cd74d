//! The Pipedrive emulator's webhooks v2: subscriptions registered through `POST /v1/webhooks`
//! and the notifications they send when a person changes (a rep's edit in the web app, or a
//! write through the API).
//!
//! As documented (<https://developers.pipedrive.com/docs/api/v1/Webhooks#addWebhook>,
//! <https://pipedrive.readme.io/docs/guide-for-webhooks-v2>,
//! <https://pipedrive.readme.io/docs/list-of-webhooks-v2>): a subscription names
//! `subscription_url`, `event_action` (`create`, `change`, `delete` or `*`), `event_object`
//! (`person`, `deal`, ... or `*`), optionally `http_auth_user` + `http_auth_password` (sent as
//! HTTP Basic on every notification) and `version` (`2.0` unless `1.0` is asked). A notification
//! is a `POST` with a JSON body `{meta, data, previous}`; `meta` carries `action`, `entity`,
//! `entity_id`, `company_id`, `user_id` (who made the change), `id` (the notification's own id,
//! the same on a retry), `correlation_id`, `timestamp`, `change_source` (`app` for the web app,
//! `api` for the API), `attempt`, `webhook_id`, `webhook_owner_id`, `version`, `type`, `host`.
//! `previous` holds the changed fields' former values (`null` for a creation); a deletion's
//! `data` is `null`. A notification answered with anything but 2xx is retried (Pipedrive
//! retries a few times with backoff; one immediate retry, `attempt` 2, is enough here).
//!
//! Tests can drop the next notifications (`drop_next_webhooks`) to exercise the polling safety
//! net. Written independently of the receiver (`crate::inbound::pipedrive`).

use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

use super::pipedrive::{AUTHORIZING_USER_ID, SANDBOX_COMPANY_ID};

/// Event actions a v2 subscription may name.
pub const ACTIONS_V2: [&str; 4] = ["create", "change", "delete", "*"];
/// Event objects a subscription may name (the list of webhooks v2).
pub const OBJECTS: [&str; 12] =
    ["activity", "deal", "lead", "note", "organization", "person", "pipeline", "product", "stage", "user", "task", "*"];

/// One registered webhook.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: u64,
    pub subscription_url: url::Url,
    pub event_action: String,
    pub event_object: String,
    pub http_auth: Option<(String, String)>,
    pub version: String,
    pub user_id: u64,
    pub add_time: Timestamp,
}

impl Subscription {
    /// The answer shape of `POST/GET /v1/webhooks` (the password is never echoed).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "company_id": SANDBOX_COMPANY_ID,
            "owner_id": AUTHORIZING_USER_ID,
            "user_id": self.user_id,
            "event_action": self.event_action,
            "event_object": self.event_object,
            "subscription_url": self.subscription_url.as_str(),
            "http_auth_user": self.http_auth.as_ref().map(|(u, _)| u.clone()),
            "is_active": 1,
            "add_time": self.add_time.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            "remove_time": null,
            "type": "general",
            "version": self.version,
        })
    }

    fn wants(&self, action: &str, entity: &str) -> bool {
        (self.event_action == "*" || self.event_action == action)
            && (self.event_object == "*" || self.event_object == entity)
    }
}

/// One change to notify about.
#[derive(Debug, Clone)]
pub struct Change {
    pub action: &'static str,
    pub entity: &'static str,
    pub entity_id: u64,
    pub data: Value,
    pub previous: Value,
    /// `app` (a person in the web app) or `api`.
    pub change_source: &'static str,
    pub user_id: u64,
    pub at: Timestamp,
}

struct Outgoing {
    url: url::Url,
    auth: Option<(String, String)>,
    body: Value,
}

/// What the delivery task has done, for tests to wait on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Requests answered 2xx.
    pub delivered: u64,
    /// Requests answered otherwise or not at all (retries included).
    pub failed: u64,
    /// Notifications dropped by `drop_next_webhooks` (never sent).
    pub dropped: u64,
    /// Notifications queued for sending.
    pub queued: u64,
    /// Notifications whose delivery is over (answered 2xx, or failed on its last attempt):
    /// `settled == queued` means nothing is in flight.
    pub settled: u64,
    /// Statuses of every answered request, in order.
    pub statuses: Vec<u16>,
}

/// The company's webhooks and their delivery.
pub struct Webhooks {
    subscriptions: Vec<Subscription>,
    next_id: u64,
    next_event: u64,
    drop_next: u32,
    tx: Option<mpsc::UnboundedSender<Outgoing>>,
    stats: watch::Sender<WebhookStats>,
    host: String,
}

impl Webhooks {
    pub fn new(host: String) -> Self {
        Self {
            subscriptions: Vec::new(),
            next_id: 0,
            next_event: 0,
            drop_next: 0,
            tx: None,
            stats: watch::Sender::new(WebhookStats::default()),
            host,
        }
    }

    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    pub fn stats(&self) -> watch::Receiver<WebhookStats> {
        self.stats.subscribe()
    }

    pub fn drop_next(&mut self, n: u32) {
        self.drop_next = n;
    }

    /// Registers a subscription (already validated); starts the delivery task on first use
    /// (called from a request handler, so on the emulator's runtime).
    pub fn register(&mut self, mut subscription: Subscription) -> Subscription {
        self.next_id += 1;
        subscription.id = self.next_id;
        if self.tx.is_none() {
            self.tx = Some(start_delivery(self.stats.clone()));
        }
        self.subscriptions.push(subscription.clone());
        subscription
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|s| s.id != id);
        self.subscriptions.len() != before
    }

    /// Queues a notification per subscription that wants this change (called under the
    /// emulator's lock: never blocks).
    pub fn emit(&mut self, change: Change) {
        let wanting: Vec<Subscription> =
            self.subscriptions.iter().filter(|s| s.wants(change.action, change.entity)).cloned().collect();
        for subscription in wanting {
            self.next_event += 1;
            if self.drop_next > 0 {
                self.drop_next -= 1;
                self.stats.send_modify(|s| s.dropped += 1);
                continue;
            }
            let n = self.next_event;
            let body = json!({
                "meta": {
                    "action": change.action,
                    "entity": change.entity,
                    "entity_id": change.entity_id.to_string(),
                    "company_id": SANDBOX_COMPANY_ID.to_string(),
                    "user_id": change.user_id.to_string(),
                    "id": format!("{n:08x}-5a1d-4c2e-9b7f-{:012x}", subscription.id),
                    "correlation_id": format!("c0{n:06x}-7e3a-4f10-8d2b-{:012x}", change.entity_id),
                    "is_bulk_edit": false,
                    "timestamp": change.at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    "type": "general",
                    "version": "2.0",
                    "webhook_id": subscription.id.to_string(),
                    "webhook_owner_id": AUTHORIZING_USER_ID.to_string(),
                    "change_source": change.change_source,
                    "permitted_user_ids": [AUTHORIZING_USER_ID.to_string()],
                    "attempt": 1,
                    "host": self.host,
                },
                "data": change.data,
                "previous": change.previous,
            });
            if let Some(tx) = &self.tx {
                self.stats.send_modify(|s| s.queued += 1);
                let _ = tx.send(Outgoing {
                    url: subscription.subscription_url.clone(),
                    auth: subscription.http_auth.clone(),
                    body,
                });
            }
        }
    }
}

/// The previous values of the changed fields, in the v2 data shape (custom fields under
/// `custom_fields`).
pub fn previous_of(changes: &[(String, Value)], custom: impl Fn(&str) -> bool) -> Value {
    let mut previous = Map::new();
    let mut custom_fields = Map::new();
    for (key, old) in changes {
        if custom(key) {
            custom_fields.insert(key.clone(), old.clone());
        } else {
            previous.insert(key.clone(), old.clone());
        }
    }
    if !custom_fields.is_empty() {
        previous.insert("custom_fields".into(), Value::Object(custom_fields));
    }
    Value::Object(previous)
}

fn start_delivery(stats: watch::Sender<WebhookStats>) -> mpsc::UnboundedSender<Outgoing> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    // Every outbound request has a deadline: a receiver that never answers must not wedge it.
    let client = crate::connectors::http_client();
    tokio::spawn(async move {
        while let Some(mut out) = rx.recv().await {
            for attempt in 1..=2u64 {
                out.body["meta"]["attempt"] = json!(attempt);
                let mut request = client
                    .post(out.url.clone())
                    .header("Content-Type", "application/json")
                    .header("User-Agent", "Pipedrive-Webhook")
                    .body(serde_json::to_vec(&out.body).expect("notifications serialize"));
                if let Some((user, password)) = &out.auth {
                    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                    request = request.header("Authorization", format!("Basic {basic}"));
                }
                let answer = request.send().await;
                let status = answer.as_ref().map(|r| r.status().as_u16()).ok();
                let ok = status.is_some_and(|s| (200..300).contains(&s));
                stats.send_modify(|s| {
                    if ok {
                        s.delivered += 1;
                    } else {
                        s.failed += 1;
                    }
                    if let Some(status) = status {
                        s.statuses.push(status);
                    }
                });
                if ok {
                    break;
                }
            }
            stats.send_modify(|s| s.settled += 1);
        }
    });
    tx
}

/// For tests: the Basic header Pipedrive would send for these credentials.
pub fn basic_header(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}
