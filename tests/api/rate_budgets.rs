//! `[rate_budgets] url`: the service draws its vendors' rate budgets from Redis (issue 13).

use serde_json::json;

use crate::helpers::{demo_tenant, server_file, spawn_app_with};

/// With a Redis URL configured, the live reads of a call are charged to the account's bucket on
/// Redis (read back from Redis under the configured key prefix), none of them falls back to the
/// instance's memory, and `/metrics` exports the fallback counter.
#[tokio::test]
async fn with_a_redis_url_the_service_charges_its_vendor_requests_to_redis() {
    let url = std::env::var("CALLSIDE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("callside-test:{}:", uuid::Uuid::new_v4());
    let mut tenant = demo_tenant();
    tenant.crm.requests_per_10s = Some(10);
    let server = server_file(&format!("[rate_budgets]\nurl = \"{url}\"\nkey_prefix = \"{prefix}\"\n"));
    let app = spawn_app_with(server, vec![tenant]).await;
    let budgets = app.core.budgets.clone();
    assert_eq!(budgets.shared_backend(), Some("redis"));

    let mut c = app.connect("redis-budget", "+14155550134").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "{ctx}");
    let live = budgets.sent("hubspot", "demo").live;
    assert!(live > 0, "the context read reached the CRM");
    assert_eq!(budgets.fallbacks(), 0);

    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis for the tests is not answering at {url} ({e}); `.ci/run` starts it"));
    let level: Option<f64> = redis::cmd("HGET")
        .arg(format!("{prefix}rate:{{hubspot}}|demo"))
        .arg("level")
        .query_async(&mut redis)
        .await
        .unwrap();
    // The manual clock stood still: no refill, one token per request.
    assert_eq!(level, Some(10.0 - live as f64), "the account's bucket on Redis");

    let metrics = app.get("/metrics").await.1;
    assert!(metrics.contains("callside_rate_budget_fallbacks_total 0"), "{metrics}");
}
