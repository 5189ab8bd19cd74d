//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz on nightly), one per decoder that reads
//! bytes from outside: the JSON-RPC/MCP decoder, the Vapi payload parser, the config parser,
//! phone parsing and each webhook verifier. `tests/api/fuzz_corpus.rs` replays the committed
//! corpora through these same functions on stable, so every `cargo test` exercises them.
//!
//! Each function must return normally for any input: a panic is a bug. Where a decoder has a
//! property worth more than "does not crash" (a signature it made verifies, a parsed number
//! re-parses to itself) it is asserted here.

use rlibphonenumber::enums::Region;
use serde_json::Value;

use crate::identity::{ParsedPhone, Phone, normalize_email};
use crate::protocol::{jsonrpc, mcp, tools};

/// A secret for the verifiers (any bytes work; this one is not a secret).
const FUZZ_SECRET: &[u8] = b"fuzz-only-secret-not-a-secret";

/// One WebSocket text frame or MCP HTTP body: framing, the handshake's version negotiation and
/// typed tool arguments, as the gateway runs them.
pub fn jsonrpc(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match jsonrpc::parse_limited(text, 32) {
        Ok(req) => {
            let _ = mcp::negotiate(req.params.get("protocolVersion").and_then(Value::as_str));
            if let Some(name) = req.params.get("name").and_then(Value::as_str) {
                let args = req.params.get("arguments").cloned().unwrap_or(Value::Null);
                let _ = tools::parse_call(name, &args);
            }
            let id = req.id.clone().unwrap_or(Value::Null);
            let answer = jsonrpc::response(&id, req.params);
            assert!(serde_json::from_str::<Value>(&answer).is_ok(), "a response is JSON");
        }
        Err((id, err)) => {
            let answer = jsonrpc::error_response(&id, &err);
            assert!(serde_json::from_str::<Value>(&answer).is_ok(), "an error response is JSON");
        }
    }
}

/// One `/v1/vapi` body: the envelope, the tool-call list with each call's arguments, and the
/// end-of-call report.
pub fn vapi(data: &[u8]) {
    use crate::gateway::vapi;
    let Ok(envelope) = vapi::parse_envelope(data, 32, None) else { return };
    if let Ok(list) = vapi::tool_call_list(&envelope.message) {
        for item in &list {
            if let Ok(call) = vapi::tool_call_parts(item, 32)
                && let Ok(args) = &call.arguments
            {
                let _ = tools::parse_call(&call.name, args);
            }
        }
    }
    let _ = vapi::parse_report(&envelope.message);
}

/// A server file or a tenant file as TOML, then validation (every problem reported, no panic).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let server = toml::from_str::<crate::config::ServerFile>(text);
    let tenant = toml::from_str::<crate::config::TenantFile>(text);
    if server.is_err() && tenant.is_err() {
        return;
    }
    let server = server.unwrap_or_else(|_| toml::from_str("").expect("an empty server file is valid TOML"));
    let tenants = tenant.map(|t| vec![(std::path::PathBuf::from("tenants/fuzz.toml"), t)]).unwrap_or_default();
    let _ = crate::config::Config::from_parts(
        std::path::Path::new("callside.toml"),
        server,
        tenants,
        &crate::config::Overrides::default(),
        std::path::PathBuf::from("data"),
    );
}

/// A caller's number as a carrier or a person wrote it, and an email: a parsed number is E.164
/// and parses again to itself.
pub fn phone(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for region in [Region::US, Region::GB, Region::MX] {
        if let ParsedPhone::Number(p) = Phone::parse(text, region) {
            assert!(p.e164.starts_with('+'), "E.164: {}", p.e164);
            match Phone::parse(&p.e164, region) {
                ParsedPhone::Number(again) => assert_eq!(again.e164, p.e164, "stable under re-parsing"),
                other => panic!("{} parsed, then did not: {other:?}", p.e164),
            }
        }
    }
    if let Some(e) = normalize_email(text) {
        assert_eq!(normalize_email(&e).as_deref(), Some(e.as_str()), "normalization is idempotent");
    }
}

/// HubSpot's v3 webhook signature and the event batch behind it. The input is split at the
/// first two newlines into the presented signature, the timestamp and the body: a forged
/// signature never verifies, the one we compute always does, and the body parses or is refused.
pub fn hubspot_webhook(data: &[u8]) {
    use crate::inbound::hubspot::{parse_events, signature_v3, verify_v3};
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let presented = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let timestamp = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let uri = "https://callside.example/v1/inbound/hubspot";
    let good = signature_v3(FUZZ_SECRET, "POST", uri, body, &timestamp);
    assert!(verify_v3(FUZZ_SECRET, "POST", uri, body, &timestamp, &good));
    if presented.trim() != good {
        assert!(!verify_v3(FUZZ_SECRET, "POST", uri, body, &timestamp, &presented), "a forged signature verified");
    }
    let _ = parse_events(body);
}

/// Microsoft Graph's change notification collection: it parses or is refused as malformed,
/// never panics, and what parses has at least one item, each with either a known `changeType`
/// or a known `lifecycleEvent`, never both.
pub fn graph_notification(data: &[u8]) {
    if let Ok(items) = crate::inbound::graph::parse_notifications(data) {
        assert!(!items.is_empty(), "an empty collection parsed");
        for item in items {
            match (&item.change_type, item.lifecycle()) {
                (Some(kinds), None) => {
                    assert!(kinds.split(',').all(|k| matches!(k.trim(), "created" | "updated" | "deleted")), "{kinds}")
                }
                (None, Some(_)) => {}
                other => panic!("a parsed item has exactly one known kind: {other:?}"),
            }
        }
    }
}

/// Pipedrive's webhooks v2: HTTP Basic credentials and the notification behind them. The first
/// line is the presented `Authorization` header, the rest the body: only the exact credentials
/// match, and the body parses or is refused.
pub fn pipedrive_webhook(data: &[u8]) {
    use crate::inbound::pipedrive::{basic_matches, parse};
    let mut parts = data.splitn(2, |b| *b == b'\n');
    let presented = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let (user, password) = ("callside", "fuzz-password-0123456789");
    let good = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{password}"))
    );
    assert!(basic_matches(Some(&good), user, password));
    if basic_matches(Some(&presented), user, password) {
        let decoded = presented
            .trim()
            .split_once(' ')
            .and_then(|(_, b)| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim()).ok());
        assert_eq!(decoded.as_deref(), Some(format!("{user}:{password}").as_bytes()), "other credentials matched");
    }
    let _ = parse(body);
}

/// The notification/write-back webhook signature (`X-Callside-Signature: t=…,v1=…`) as a
/// receiver checks it: the first line is the header, the rest the body.
pub fn notify_webhook(data: &[u8]) {
    use crate::notify::{signature, verify};
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let header = String::from_utf8_lossy(header);
    let t = 1_795_000_000;
    let good = signature(FUZZ_SECRET, t, body);
    assert!(verify(FUZZ_SECRET, &good, body));
    let verified = verify(FUZZ_SECRET, &header, body);
    if verified {
        // Only a header carrying the right MAC for some `t` can verify.
        assert!(header.contains("v1="), "verified without a MAC: {header}");
    }
}
