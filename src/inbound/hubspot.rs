//! HubSpot webhooks: one target URL for the app (`POST /v1/inbound/hubspot`), the tenant named
//! by each event's `portalId` (the tenant file's `crm.portal_id`).
//!
//! Validation follows HubSpot's v3 request signature
//! (<https://developers.hubspot.com/docs/api/webhooks/validating-requests>, "Validate the v3
//! request signature"; <https://developers.hubspot.com/changelog/introducing-version-3-of-webhook-signatures>):
//! reject a request whose `X-HubSpot-Request-Timestamp` (epoch milliseconds) is older than five
//! minutes; compute HMAC-SHA256, keyed with the app's client secret, over the UTF-8 string
//! `method + URI + body + timestamp`; base64 it; compare with `X-HubSpot-Signature-v3` in
//! constant time. The URI is the full URL HubSpot was configured with, so it is rebuilt from the
//! service's public URL (`connect.public_url`) and the request's path and query — a proxy in
//! front must not rewrite the path.
//!
//! Beyond the signature: a request whose signature was already accepted is a replay (409); an
//! event whose `eventId` was already applied is a redelivery (acknowledged, not applied again);
//! an event of a portal no tenant has is not applied (404 when no event names a known portal).
//! Events written by this service itself (`changeSource: INTEGRATION` with our app as
//! `sourceId`) are acknowledged without a refetch, so a write-back never loops.

use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::{Affected, Rejection, apply_once};
use crate::config::HubSpotWebhookSection;
use crate::session::Core;

pub const VENDOR: &str = "hubspot";
pub const SIGNATURE_HEADER: &str = "X-HubSpot-Signature-v3";
pub const TIMESTAMP_HEADER: &str = "X-HubSpot-Request-Timestamp";
/// "Reject the request if the timestamp is older than 5 minutes" (v3 validation).
pub const MAX_AGE: SignedDuration = SignedDuration::from_mins(5);
/// The route the app's target URL points at.
pub const PATH: &str = "/v1/inbound/hubspot";

/// Contact properties that decide who a phone number matches.
const MATCHING_PROPERTIES: [&str; 3] = ["phone", "mobilephone", "hs_whatsapp_phone_number"];

/// The receiver of one HubSpot app's webhooks.
pub struct HubSpotReceiver {
    secret_env: String,
    app_id: String,
    /// `scheme://host[:port]` as HubSpot addresses this service.
    public_url: String,
}

/// One request as received.
pub struct Delivery<'a> {
    pub method: &'a str,
    /// Path and query as received (e.g. `/v1/inbound/hubspot`).
    pub path_and_query: &'a str,
    pub body: &'a [u8],
    pub signature: Option<&'a str>,
    pub timestamp: Option<&'a str>,
}

/// What an accepted request did, per event.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    pub applied: usize,
    /// Written by this service (not refetched).
    pub own: usize,
    /// Already applied (a redelivery).
    pub duplicate: usize,
    /// For a portal no tenant has.
    pub unknown_portal: usize,
    /// Of a kind that changes nothing callside keeps.
    pub ignored: usize,
    /// Live calls that got a fresh context pushed.
    pub notified: usize,
}

/// One event of the batch (fields as HubSpot names them; unknown ones are ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    event_id: u64,
    portal_id: u64,
    subscription_type: String,
    object_id: u64,
    #[serde(default)]
    property_name: Option<String>,
    #[serde(default)]
    change_source: Option<String>,
    #[serde(default)]
    source_id: Option<String>,
    /// `contact.merge`: the surviving contact and the ones merged into it
    /// (<https://developers.hubspot.com/changelog/new-subscription-types-for-webhooks>). Read
    /// leniently (numbers or strings): a shape we do not expect changes nothing.
    #[serde(default)]
    primary_object_id: Option<Value>,
    #[serde(default)]
    merged_object_ids: Option<Value>,
}

/// An id HubSpot sent as a number or a string.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Some(s.clone()),
        _ => None,
    }
}

/// The v3 signature (base64) of a request.
pub fn signature_v3(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac_v3(secret, method, uri, body, timestamp).finalize().into_bytes())
}

fn mac_v3(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac
}

/// Checks a presented v3 signature in constant time (`Mac::verify_slice`).
pub fn verify_v3(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp: &str, presented: &str) -> bool {
    let Ok(presented) = base64::engine::general_purpose::STANDARD.decode(presented.trim()) else {
        return false;
    };
    mac_v3(secret, method, uri, body, timestamp).verify_slice(&presented).is_ok()
}

/// The event batch of a delivery (after its signature was checked): at least one event.
pub fn parse_events(body: &[u8]) -> Result<Vec<Event>, Rejection> {
    let events: Vec<Event> = serde_json::from_slice(body)
        .map_err(|e| Rejection::Malformed(crate::connectors::truncate_bytes(&e.to_string(), 200)))?;
    if events.is_empty() {
        return Err(Rejection::Malformed("no events".into()));
    }
    Ok(events)
}

impl HubSpotReceiver {
    pub fn new(section: &HubSpotWebhookSection, public_url: &str) -> Self {
        Self {
            secret_env: section.client_secret_env.clone(),
            app_id: section.app_id.clone(),
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The URL to give HubSpot as the app's target URL.
    pub fn target_url(&self) -> String {
        format!("{}{PATH}", self.public_url)
    }

    /// Validates a request and applies its events. Counts the request (and each event).
    pub async fn receive(&self, core: &Arc<Core>, delivery: Delivery<'_>) -> Result<Accepted, Rejection> {
        super::counted(core, VENDOR, self.receive_uncounted(core, delivery).await)
    }

    async fn receive_uncounted(&self, core: &Arc<Core>, d: Delivery<'_>) -> Result<Accepted, Rejection> {
        // The secret is read at request time, so it rotates without a restart (as notify does).
        let secret = std::env::var(&self.secret_env)
            .map(SecretString::from)
            .map_err(|_| Rejection::Unavailable(format!("environment variable {} is not set", self.secret_env)))?;
        let (Some(signature), Some(timestamp)) = (d.signature, d.timestamp) else {
            return Err(if d.signature.is_none() { Rejection::Forged } else { Rejection::Stale });
        };
        let sent_at = timestamp
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .ok_or(Rejection::Stale)?;
        let now = core.clock.now();
        // Older than five minutes is refused as documented; as far in the future too (a clock
        // that far ahead is not HubSpot's, and it would stretch the replay window).
        if now.duration_since(sent_at).abs() > MAX_AGE {
            return Err(Rejection::Stale);
        }
        let uri = format!("{}{}", self.public_url, d.path_and_query);
        if !verify_v3(secret.expose_secret().as_bytes(), d.method, &uri, d.body, timestamp, signature) {
            return Err(Rejection::Forged);
        }
        let events = parse_events(d.body)?;
        let tenants: Vec<_> = events
            .iter()
            .map(|e| {
                core.tenants
                    .all()
                    .into_iter()
                    .find(|t| t.config.crm.vendor == VENDOR && t.config.crm.portal_id == Some(e.portal_id))
            })
            .collect();
        if tenants.iter().all(Option::is_none) {
            return Err(Rejection::UnknownPortal);
        }
        // Within the window a captured request could be sent again as is: the signature (which
        // covers the timestamp) is accepted once.
        let replay_key = format!("sig:{signature}");
        let fresh = core
            .store
            .record_inbound_delivery(VENDOR, &replay_key, None, now)
            .await
            .map_err(|e| Rejection::Unavailable(format!("store: {e}")))?;
        if !fresh {
            return Err(Rejection::Replayed);
        }
        let mut accepted = Accepted::default();
        for (event, tenant) in events.iter().zip(tenants) {
            let outcome = self.apply(core, event, tenant.as_ref(), now, &mut accepted).await;
            core.metrics.count_inbound_event(VENDOR, outcome);
        }
        Ok(accepted)
    }

    async fn apply(
        &self,
        core: &Arc<Core>,
        event: &Event,
        tenant: Option<&Arc<crate::tenant::Tenant>>,
        now: Timestamp,
        accepted: &mut Accepted,
    ) -> &'static str {
        let Some(tenant) = tenant else {
            accepted.unknown_portal += 1;
            return "unknown_portal";
        };
        // A deleted contact leaves the identity index whoever deleted it (our own undo too);
        // idempotent, so a redelivery changes nothing more.
        if matches!(event.subscription_type.as_str(), "contact.deletion" | "contact.privacyDeletion") {
            super::unindex_deleted(core, tenant, &event.object_id.to_string()).await;
        }
        // A merge: the merged contacts' index rows point at the survivor from now on.
        if event.subscription_type == "contact.merge"
            && let Some(primary) = event.primary_object_id.as_ref().and_then(id_text)
        {
            let merged = event.merged_object_ids.as_ref().and_then(Value::as_array).cloned().unwrap_or_default();
            for id in merged.iter().filter_map(id_text).filter(|id| *id != primary) {
                super::repoint_merged(core, tenant, &id, &primary, now).await;
            }
        }
        let own =
            event.change_source.as_deref() == Some("INTEGRATION") && event.source_id.as_deref() == Some(&self.app_id);
        if own {
            accepted.own += 1;
            return "own";
        }
        let Some(affected) = affected_by(event) else {
            accepted.ignored += 1;
            return "ignored";
        };
        let key = format!("event:{}:{}", event.portal_id, event.event_id);
        let Some(notified) = apply_once(core, VENDOR, &key, tenant, &affected, now).await else {
            accepted.duplicate += 1;
            return "duplicate";
        };
        accepted.notified += notified;
        accepted.applied += 1;
        "applied"
    }
}

/// What a HubSpot event concerns, or `None` for kinds callside keeps nothing of.
fn affected_by(event: &Event) -> Option<Affected> {
    let id = event.object_id.to_string();
    let (object, action) = event.subscription_type.split_once('.')?;
    match (object, action) {
        ("contact", "propertyChange")
            if event.property_name.as_deref().is_some_and(|p| MATCHING_PROPERTIES.contains(&p)) =>
        {
            Some(Affected::Matching(id))
        }
        ("contact", "propertyChange" | "associationChange") => Some(Affected::Contact(id)),
        ("contact", "creation" | "deletion" | "merge" | "restore" | "privacyDeletion") => Some(Affected::Matching(id)),
        ("deal", _) => Some(Affected::Deal(id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vector computed outside this code (Python's `hmac` + `base64`, see the test body), so a
    /// mistake in the concatenation order would show.
    #[test]
    fn the_v3_signature_matches_an_independently_computed_vector() {
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"test-app-secret-0123456789",
        //   b"POSThttps://example.com/v1/inbound/hubspot[{\"eventId\":1}]1700000000000", hashlib.sha256).digest()).decode())'
        let sig = signature_v3(
            b"test-app-secret-0123456789",
            "POST",
            "https://example.com/v1/inbound/hubspot",
            br#"[{"eventId":1}]"#,
            "1700000000000",
        );
        assert_eq!(sig, "rR4lBU48lanntt4h0drss7brofIiWgOsrPBsEhC8AsI=");
        assert!(verify_v3(
            b"test-app-secret-0123456789",
            "POST",
            "https://example.com/v1/inbound/hubspot",
            br#"[{"eventId":1}]"#,
            "1700000000000",
            &sig
        ));
        for (secret, uri, body, ts) in [
            (
                &b"test-app-secret-012345678X"[..],
                "https://example.com/v1/inbound/hubspot",
                &br#"[{"eventId":1}]"#[..],
                "1700000000000",
            ),
            (
                &b"test-app-secret-0123456789"[..],
                "https://example.com/v1/inbound/hubspoT",
                &br#"[{"eventId":1}]"#[..],
                "1700000000000",
            ),
            (
                &b"test-app-secret-0123456789"[..],
                "https://example.com/v1/inbound/hubspot",
                &br#"[{"eventId":2}]"#[..],
                "1700000000000",
            ),
            (
                &b"test-app-secret-0123456789"[..],
                "https://example.com/v1/inbound/hubspot",
                &br#"[{"eventId":1}]"#[..],
                "1700000000001",
            ),
        ] {
            assert!(!verify_v3(secret, "POST", uri, body, ts, &sig), "secret, URI, body and timestamp are all signed");
        }
        assert!(!verify_v3(b"test-app-secret-0123456789", "POST", "u", b"b", "1", "not base64!"));
    }

    #[test]
    fn merge_ids_are_read_as_numbers_or_digit_strings_only() {
        assert_eq!(id_text(&serde_json::json!(123)), Some("123".into()));
        assert_eq!(id_text(&serde_json::json!("456")), Some("456".into()));
        for bad in [serde_json::json!(-1), serde_json::json!("12a"), serde_json::json!(""), serde_json::json!(null)] {
            assert_eq!(id_text(&bad), None, "{bad}");
        }
    }

    #[test]
    fn events_map_to_what_they_concern() {
        let e = |t: &str, p: Option<&str>| Event {
            event_id: 1,
            portal_id: 2,
            subscription_type: t.into(),
            object_id: 42,
            property_name: p.map(str::to_owned),
            change_source: None,
            source_id: None,
            primary_object_id: None,
            merged_object_ids: None,
        };
        assert_eq!(affected_by(&e("contact.propertyChange", Some("firstname"))), Some(Affected::Contact("42".into())));
        assert_eq!(affected_by(&e("contact.propertyChange", Some("phone"))), Some(Affected::Matching("42".into())));
        assert_eq!(affected_by(&e("contact.creation", None)), Some(Affected::Matching("42".into())));
        assert_eq!(affected_by(&e("deal.propertyChange", Some("dealstage"))), Some(Affected::Deal("42".into())));
        assert_eq!(affected_by(&e("company.propertyChange", Some("name"))), None);
        assert_eq!(affected_by(&e("nonsense", None)), None);
    }
}
