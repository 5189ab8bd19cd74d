//! Pipedrive webhooks v2: one URL for every tenant (`POST /v1/inbound/pipedrive`), the tenant
//! named by each notification's `meta.company_id` (the tenant file's `crm.company_id`).
//!
//! Pipedrive does not sign webhooks. A webhook is created (`POST /v1/webhooks`, `version: "2.0"`)
//! with `http_auth_user` / `http_auth_password`, and Pipedrive sends them as HTTP Basic on every
//! notification (<https://developers.pipedrive.com/docs/api/v1/Webhooks#addWebhook>); that is
//! the only proof a request is Pipedrive's, so it is checked first, in constant time, and the
//! password is read from the environment at request time (`[inbound.pipedrive]` names the
//! variable). The body is `{meta, data, previous}`
//! (<https://pipedrive.readme.io/docs/guide-for-webhooks-v2>): `meta.action` (`create`,
//! `change`, `delete`), `meta.entity` (`person`, `deal`, ...), `meta.entity_id`,
//! `meta.company_id`, `meta.user_id` (who made the change), `meta.id` (the notification's id,
//! kept across retries), `meta.change_source` (`app` or `api`), `meta.version` (`2.0`).
//!
//! Beyond the credentials: a body that is not a v2 notification is 400; a company no tenant
//! has is 404; a notification whose `meta.id` was already applied is a redelivery (Pipedrive
//! retries until it gets a 2xx), acknowledged 200 and not applied again. Without a signature a
//! timestamp proves nothing, so there is no freshness window: anyone holding the credentials
//! can send anything — which is why a notification is only a hint: the record is re-read from
//! Pipedrive, never taken from `data`.
//!
//! The service's own writes: `change_source` alone only says `api`
//! (<https://developers.pipedrive.com/changelog/post/new-field-for-webhooks>), and every
//! integration writes through the API. A change is taken for ours when it came through the API
//! *and* its `meta.user_id` is the user the tenant's connection acts as (`GET /v1/users/me`,
//! `CrmConnector::acting_user_id`) — the user field means the actor since Pipedrive's fix
//! (<https://developers.pipedrive.com/changelog/post/bug-fixes-in-webhooks-v2-payload>). Another
//! integration connected as the same Pipedrive user is indistinguishable from us; its changes
//! then reach live calls through the identity pull (the polling safety net), not the webhook.
//! Either way a notification only ever causes reads, so no notification can start a loop.

use std::sync::Arc;

use base64::Engine as _;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use super::{Affected, Rejection, apply_once};
use crate::config::PipedriveWebhookSection;
use crate::session::Core;
use crate::tenant::Tenant;

pub const VENDOR: &str = "pipedrive";
/// The route every tenant's webhook points at (`subscription_url`).
pub const PATH: &str = "/v1/inbound/pipedrive";

/// The receiver of the tenants' Pipedrive webhooks.
pub struct PipedriveReceiver {
    user: String,
    password_env: String,
}

/// What an accepted notification did (one notification, so at most one of them is 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    pub applied: usize,
    /// Written by this service (not refetched).
    pub own: usize,
    /// Already applied (a redelivery).
    pub duplicate: usize,
    /// Of a kind that changes nothing callside keeps.
    pub ignored: usize,
    /// Live calls that got a fresh context pushed.
    pub notified: usize,
}

/// An id Pipedrive may send as a string or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(u64),
}

impl Id {
    fn text(&self) -> String {
        match self {
            Id::Text(s) => s.trim().to_owned(),
            Id::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Meta {
    action: String,
    entity: String,
    entity_id: Id,
    company_id: Id,
    id: Id,
    #[serde(default)]
    user_id: Option<Id>,
    #[serde(default)]
    change_source: Option<String>,
    version: String,
}

/// One notification (fields as Pipedrive names them; unknown ones are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Notification {
    meta: Meta,
    #[serde(default)]
    previous: Value,
}

/// Parses a notification (after its credentials were checked).
pub fn parse(body: &[u8]) -> Result<Notification, Rejection> {
    let n: Notification = serde_json::from_slice(body)
        .map_err(|e| Rejection::Malformed(crate::connectors::truncate_bytes(&e.to_string(), 200)))?;
    if n.meta.version != "2.0" {
        return Err(Rejection::Malformed(format!("meta.version {:?}: only webhooks v2 are received", n.meta.version)));
    }
    if n.meta.id.text().is_empty() {
        return Err(Rejection::Malformed("meta.id is empty".into()));
    }
    if n.meta.entity_id.text().is_empty() {
        return Err(Rejection::Malformed("meta.entity_id is empty".into()));
    }
    Ok(n)
}

/// Whether `authorization` is HTTP Basic with exactly `user:password` (constant time over the
/// decoded credentials).
pub fn basic_matches(authorization: Option<&str>, user: &str, password: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let Some(encoded) = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
    }) else {
        return false;
    };
    let Ok(presented) = base64::engine::general_purpose::STANDARD.decode(encoded) else { return false };
    let expected = format!("{user}:{password}");
    presented.len() == expected.len() && bool::from(presented.as_slice().ct_eq(expected.as_bytes()))
}

impl PipedriveReceiver {
    pub fn new(section: &PipedriveWebhookSection) -> Self {
        Self { user: section.http_auth_user.clone(), password_env: section.http_auth_password_env.clone() }
    }

    /// Validates a request and applies its notification. Counts the request (and the event).
    pub async fn receive(
        &self,
        core: &Arc<Core>,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<Accepted, Rejection> {
        super::counted(core, VENDOR, self.receive_uncounted(core, authorization, body).await)
    }

    async fn receive_uncounted(
        &self,
        core: &Arc<Core>,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<Accepted, Rejection> {
        // Read at request time, so it rotates without a restart (as the HubSpot secret does).
        let password = std::env::var(&self.password_env)
            .map(SecretString::from)
            .map_err(|_| Rejection::Unavailable(format!("environment variable {} is not set", self.password_env)))?;
        if !basic_matches(authorization, &self.user, password.expose_secret()) {
            return Err(Rejection::Forged);
        }
        let notification = parse(body)?;
        let meta = &notification.meta;
        let company = meta.company_id.text();
        let tenant = core
            .tenants
            .all()
            .into_iter()
            .find(|t| {
                t.config.crm.vendor == VENDOR && t.config.crm.company_id.is_some_and(|c| c.to_string() == company)
            })
            .ok_or(Rejection::UnknownPortal)?;
        let now = core.clock.now();
        let mut accepted = Accepted::default();
        let outcome = self.apply(core, &notification, &tenant, now, &mut accepted).await;
        core.metrics.count_inbound_event(VENDOR, outcome);
        Ok(accepted)
    }

    async fn apply(
        &self,
        core: &Arc<Core>,
        n: &Notification,
        tenant: &Arc<Tenant>,
        now: Timestamp,
        accepted: &mut Accepted,
    ) -> &'static str {
        let Some(affected) = affected_by(n) else {
            accepted.ignored += 1;
            return "ignored";
        };
        // A deleted person leaves the identity index whoever deleted it (our own undo too);
        // idempotent, so a redelivery changes nothing more.
        if (n.meta.entity.as_str(), n.meta.action.as_str()) == ("person", "delete") {
            super::unindex_deleted(core, tenant, &n.meta.entity_id.text()).await;
        }
        if is_own(n, tenant).await {
            accepted.own += 1;
            return "own";
        }
        let key = format!("event:{}:{}", n.meta.company_id.text(), n.meta.id.text());
        let Some(notified) = apply_once(core, VENDOR, &key, tenant, &affected, now).await else {
            accepted.duplicate += 1;
            return "duplicate";
        };
        accepted.notified += notified;
        accepted.applied += 1;
        "applied"
    }
}

/// A change through the API by the user the tenant's connection acts as.
async fn is_own(n: &Notification, tenant: &Tenant) -> bool {
    if n.meta.change_source.as_deref() != Some("api") {
        return false;
    }
    let Some(actor) = n.meta.user_id.as_ref().map(Id::text) else { return false };
    match tenant.crm.acting_user_id().await {
        Ok(Some(ours)) => ours == actor,
        Ok(None) => false,
        Err(e) => {
            // Unknown: treat it as someone else's change (a re-read too many, never one too few).
            tracing::warn!(tenant = %tenant.id(), error = %e, "could not read the Pipedrive user the connection acts as");
            false
        }
    }
}

/// What a notification concerns, or `None` for kinds callside keeps nothing of.
fn affected_by(n: &Notification) -> Option<Affected> {
    let id = n.meta.entity_id.text();
    match (n.meta.entity.as_str(), n.meta.action.as_str()) {
        // A phone edit can change who a number matches; `previous` names the changed fields.
        ("person", "change") if n.previous.get("phones").is_some() => Some(Affected::Matching(id)),
        ("person", "change") => Some(Affected::Contact(id)),
        // A merge arrives as a delete of the merged-away person (`merged_to_id`) and a change.
        ("person", "create" | "delete") => Some(Affected::Matching(id)),
        ("deal", "create" | "change" | "delete") => Some(Affected::Deal(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(entity: &str, action: &str, previous: Value) -> Notification {
        let body = serde_json::json!({
            "meta": {"action": action, "entity": entity, "entity_id": "42", "company_id": 7, "id": "e-1",
                     "version": "2.0"},
            "data": null, "previous": previous,
        });
        parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn notifications_map_to_what_they_concern() {
        let c = |e, a, p| affected_by(&notification(e, a, p));
        assert_eq!(c("person", "change", serde_json::json!({"name": "Ana"})), Some(Affected::Contact("42".into())));
        assert_eq!(c("person", "change", serde_json::json!({"phones": []})), Some(Affected::Matching("42".into())));
        assert_eq!(c("person", "create", Value::Null), Some(Affected::Matching("42".into())));
        assert_eq!(c("person", "delete", Value::Null), Some(Affected::Matching("42".into())));
        assert_eq!(c("deal", "change", Value::Null), Some(Affected::Deal("42".into())));
        assert_eq!(c("organization", "change", Value::Null), None);
        assert_eq!(c("person", "merge", Value::Null), None);
    }

    #[test]
    fn only_v2_notifications_with_ids_are_read() {
        let v1 = br#"{"meta": {"action": "updated", "entity": "person", "entity_id": 1, "company_id": 7, "id": 3, "version": "1.0"}}"#;
        assert!(matches!(parse(v1), Err(Rejection::Malformed(m)) if m.contains("webhooks v2")));
        let no_id = br#"{"meta": {"action": "change", "entity": "person", "entity_id": 1, "company_id": 7, "id": " ", "version": "2.0"}}"#;
        assert!(matches!(parse(no_id), Err(Rejection::Malformed(_))));
        for bad in [&b"[]"[..], b"{}", b"{\"meta\": 5}", b"not json"] {
            assert!(matches!(parse(bad), Err(Rejection::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// `Basic` + base64 of `user:password` (RFC 7617), scheme case-insensitive.
    #[test]
    fn basic_credentials_must_match_exactly() {
        // python3 -c 'import base64;print(base64.b64encode(b"callside:s3cret-password-123").decode())'
        let good = "Basic Y2FsbHNpZGU6czNjcmV0LXBhc3N3b3JkLTEyMw==";
        assert!(basic_matches(Some(good), "callside", "s3cret-password-123"));
        assert!(basic_matches(
            Some("basic Y2FsbHNpZGU6czNjcmV0LXBhc3N3b3JkLTEyMw=="),
            "callside",
            "s3cret-password-123"
        ));
        assert!(!basic_matches(Some(good), "callside", "s3cret-password-124"));
        assert!(!basic_matches(Some(good), "callsid", "es3cret-password-123"), "the split point is part of the secret");
        assert!(!basic_matches(
            Some("Bearer Y2FsbHNpZGU6czNjcmV0LXBhc3N3b3JkLTEyMw=="),
            "callside",
            "s3cret-password-123"
        ));
        assert!(!basic_matches(Some("Basic %%%"), "callside", "s3cret-password-123"));
        assert!(!basic_matches(None, "callside", "s3cret-password-123"));
    }
}
