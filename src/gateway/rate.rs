//! Tool calls per second, per call and per tenant (`[limits] tool_calls_per_call_per_sec`,
//! `tool_calls_per_tenant_per_sec`). A fixed one-second window on the injected clock: simple,
//! deterministic under the tests' manual clock, and at most twice the rate across a window edge,
//! which is enough to stop a runaway or hostile client from flooding the CRM through us.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use serde_json::json;

use crate::protocol::jsonrpc::{self, RpcError};

/// Windows kept before stale ones are swept.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    Call,
    Tenant,
}

pub struct ToolRate {
    per_call: u32,
    per_tenant: u32,
    /// (is_tenant, key) → (second, count in that second).
    windows: Mutex<HashMap<(bool, String), (i64, u32)>>,
}

impl ToolRate {
    pub fn new(per_call: u32, per_tenant: u32) -> Self {
        Self { per_call, per_tenant, windows: Mutex::default() }
    }

    /// Counts one tool call of `call_id` (of `tenant`) at `now`, or says which limit it is past.
    /// A refused call consumes nothing.
    pub fn admit(&self, tenant: &str, call_id: &str, now: Timestamp) -> Result<(), RateScope> {
        let second = now.as_second();
        let mut w = self.windows.lock().expect("rate lock");
        if w.len() > SWEEP_AT {
            w.retain(|_, (s, _)| *s == second);
        }
        let used = |w: &HashMap<(bool, String), (i64, u32)>, key: &(bool, String)| match w.get(key) {
            Some((s, n)) if *s == second => *n,
            _ => 0,
        };
        let call_key = (false, call_id.to_owned());
        let tenant_key = (true, tenant.to_owned());
        if used(&w, &call_key) >= self.per_call {
            return Err(RateScope::Call);
        }
        if used(&w, &tenant_key) >= self.per_tenant {
            return Err(RateScope::Tenant);
        }
        for key in [call_key, tenant_key] {
            let e = w.entry(key).or_insert((second, 0));
            if e.0 != second {
                *e = (second, 0);
            }
            e.1 += 1;
        }
        Ok(())
    }

    /// The JSON-RPC error a refused tool call gets (stable code and message).
    pub fn error(&self, scope: RateScope) -> RpcError {
        let (limit, scope_name, message) = match scope {
            RateScope::Call => (self.per_call, "call", "rate limited: too many tool calls per second for this call"),
            RateScope::Tenant => {
                (self.per_tenant, "tenant", "rate limited: too many tool calls per second for this business")
            }
        };
        let mut e = RpcError::new(jsonrpc::RATE_LIMITED, message);
        e.data = Some(json!({"scope": scope_name, "limit_per_sec": limit, "retry_after_ms": 1000}));
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_admits_the_limit_and_a_refusal_consumes_nothing() {
        let rate = ToolRate::new(2, 3);
        let t0: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
        assert_eq!(rate.admit("a", "c1", t0), Ok(()));
        assert_eq!(rate.admit("a", "c1", t0), Ok(()));
        assert_eq!(rate.admit("a", "c1", t0), Err(RateScope::Call));
        // c1's refusal did not use the tenant's budget: one more call of the tenant fits.
        assert_eq!(rate.admit("a", "c2", t0), Ok(()));
        assert_eq!(rate.admit("a", "c3", t0), Err(RateScope::Tenant));
        assert_eq!(rate.admit("b", "c4", t0), Ok(()), "another tenant has its own budget");
        let t1 = t0 + jiff::SignedDuration::from_secs(1);
        assert_eq!(rate.admit("a", "c1", t1), Ok(()), "a new second is a new window");
        assert_eq!(rate.error(RateScope::Tenant).code, jsonrpc::RATE_LIMITED);
    }
}
