//! The wire: JSON-RPC 2.0 framing, the MCP message set, tool schemas and tool-result shapes.
//! This is the only module that knows the JSON shapes of the wire; everything inward receives
//! typed requests ([`tools::ToolCall`]) and returns a [`ToolResult`].

pub mod jsonrpc;
pub mod mcp;
pub mod tools;

use serde_json::Value;

/// What a tool produced, before it is put on the wire: structured content plus one short
/// sentence the voice AI can say. `is_error` marks a tool failure the AI should speak about
/// (not a protocol fault).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub structured: Value,
    pub say: String,
    pub is_error: bool,
}

impl ToolResult {
    pub fn ok(structured: Value, say: impl Into<String>) -> Self {
        Self { structured, say: say.into(), is_error: false }
    }

    pub fn error(structured: Value, say: impl Into<String>) -> Self {
        Self { structured, say: say.into(), is_error: true }
    }

    /// The MCP `CallToolResult` JSON.
    pub fn to_mcp(&self) -> Value {
        serde_json::json!({
            "content": [{"type": "text", "text": self.say}],
            "structuredContent": self.structured,
            "isError": self.is_error,
        })
    }
}
