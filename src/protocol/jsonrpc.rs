//! JSON-RPC 2.0 framing (https://www.jsonrpc.org/specification).

use serde::Serialize;
use serde_json::{Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Server-defined (the -32000..-32099 range): a request that needs `initialize` first.
pub const NOT_INITIALIZED: i64 = -32002;
/// Server-defined: too many calls open (in total or for this business); try again shortly.
pub const BUSY: i64 = -32004;
/// Server-defined: too many tool calls per second (for this call or this business).
pub const RATE_LIMITED: i64 = -32005;

/// A request or notification, validated for shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// `None` for a notification.
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// A protocol fault to answer with a JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }
}

/// True when `text` nests arrays/objects deeper than `max`. A byte scan that stops at the first
/// level past `max`, so a hostile message costs no parse and no recursion; strings (and escapes
/// in them) are skipped. Malformed JSON is left for the parser to classify.
pub fn exceeds_depth(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The error for a message nested past the limit.
pub fn too_deep(max: usize) -> RpcError {
    RpcError::new(INVALID_REQUEST, format!("Invalid Request: JSON nested deeper than {max} levels"))
}

/// [`parse`] after the nesting check.
pub fn parse_limited(text: &str, max_depth: usize) -> Result<Incoming, (Value, RpcError)> {
    if exceeds_depth(text.as_bytes(), max_depth) {
        return Err((Value::Null, too_deep(max_depth)));
    }
    parse(text)
}

/// Parses one text frame. On failure returns the error and the id to answer with (JSON-RPC says
/// `null` when the id could not be determined).
pub fn parse(text: &str) -> Result<Incoming, (Value, RpcError)> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| (Value::Null, RpcError::new(PARSE_ERROR, "Parse error: the message is not valid JSON")))?;
    let Value::Object(obj) = value else {
        // Batches were removed from MCP in 2025-06-18; an array is not a request here.
        return Err((
            Value::Null,
            RpcError::new(INVALID_REQUEST, "Invalid Request: expected a JSON-RPC request object"),
        ));
    };
    let id = obj.get("id").cloned();
    let id_for_error = match &id {
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        _ => Value::Null,
    };
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err((id_for_error, RpcError::new(INVALID_REQUEST, "Invalid Request: \"jsonrpc\" must be \"2.0\"")));
    }
    if let Some(id) = &id
        && !matches!(id, Value::String(_) | Value::Number(_))
    {
        return Err((
            Value::Null,
            RpcError::new(INVALID_REQUEST, "Invalid Request: \"id\" must be a string or a number"),
        ));
    }
    let Some(Value::String(method)) = obj.get("method") else {
        return Err((id_for_error, RpcError::new(INVALID_REQUEST, "Invalid Request: \"method\" must be a string")));
    };
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    if !matches!(params, Value::Null | Value::Object(_) | Value::Array(_)) {
        return Err((id_for_error, RpcError::new(INVALID_REQUEST, "Invalid Request: \"params\" must be an object")));
    }
    Ok(Incoming { id, method: method.clone(), params })
}

pub fn response(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

pub fn error_response(id: &Value, err: &RpcError) -> String {
    let mut e = json!({"code": err.code, "message": err.message});
    if let Some(d) = &err.data {
        e["data"] = d.clone();
    }
    json!({"jsonrpc": "2.0", "id": id, "error": e}).to_string()
}

pub fn notification(method: &str, params: impl Serialize) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_classified() {
        assert_eq!(parse("{").unwrap_err().1.code, PARSE_ERROR);
        assert_eq!(parse("[]").unwrap_err().1.code, INVALID_REQUEST);
        assert_eq!(
            parse(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#).unwrap_err(),
            (json!(1), RpcError::new(INVALID_REQUEST, "Invalid Request: \"jsonrpc\" must be \"2.0\""))
        );
        assert_eq!(parse(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#).unwrap_err().1.code, INVALID_REQUEST);
        assert_eq!(parse(r#"{"jsonrpc":"2.0","id":1,"method":7}"#).unwrap_err().1.code, INVALID_REQUEST);
        assert_eq!(parse(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#).unwrap_err().1.code, INVALID_REQUEST);
        let ok = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(ok.id, None);
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert!(!exceeds_depth(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(exceeds_depth(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(!exceeds_depth(br#"{"a":"[[[[[[[[{{{{{"}"#, 1));
        assert!(!exceeds_depth(br#"{"a":"\"[[[[[["}"#, 1), "an escaped quote does not end the string");
        assert!(exceeds_depth("[".repeat(10_000).as_bytes(), 32));
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":{}1{}}}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(parse_limited(&deep, 32).unwrap_err().1, too_deep(32));
        assert!(parse_limited(&deep, 64).is_ok());
    }
}
