//! The MCP handshake: protocol versions and the `initialize` result.
//! Spec: https://modelcontextprotocol.io/specification/2025-11-25/basic/lifecycle

use serde_json::{Value, json};

/// Newest first; the server answers with the client's version when it supports it, otherwise with
/// its own latest (the lifecycle spec's negotiation rule).
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
pub const LATEST: &str = "2025-11-25";

pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested.and_then(|r| SUPPORTED_VERSIONS.iter().find(|v| **v == r).copied()).unwrap_or(LATEST)
}

pub fn initialize_result(version: &str, instructions: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "callside", "version": env!("CARGO_PKG_VERSION")},
        "instructions": instructions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_echoes_supported_versions_and_falls_back_to_latest() {
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("2024-11-05")), LATEST);
        assert_eq!(negotiate(None), LATEST);
    }
}
