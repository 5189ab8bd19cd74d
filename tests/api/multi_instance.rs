//! Several instances on one PostgreSQL store (issue 13). Each test makes its own schema on the
//! machine's server (`callside::store::testing::TestSchema`, started by `.ci/run`) and drops it;
//! a missing server fails the test. Instances started `beside` another share its emulators and
//! its domain clock, as instances of one deployment share the vendors and the time.

use callside::store::Backend;
use callside::store::testing::TestSchema;
use serde_json::json;

use crate::helpers::spawn_instance;

#[tokio::test]
async fn a_service_on_postgresql_takes_a_call_and_writes_it_back() {
    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let app = spawn_instance(&schema.url, None).await;
    assert_eq!(app.core.store.backend(), Backend::Postgres);
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    let mut c = app.connect("pg-call-1", "+14155550134").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "{ctx}");
    let contact = ctx["structuredContent"]["contact"]["id"].as_str().unwrap().to_owned();
    let end = c
        .tool(
            "end_call",
            json!({"summary": "Asked about opening hours.", "disposition": "info", "caller_name": "Ana López"}),
        )
        .await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync("pg-call-1").await, "synced");
    assert_eq!(app.hubspot.calls_for_contact(&contact).len(), 1, "one call log on the contact");
    let steps = app.core.store.steps_for_call("demo", "pg-call-1").await.unwrap();
    assert!(!steps.is_empty() && steps.iter().all(|s| s.status == "done"), "{steps:?}");
    app.shutdown().await;
    schema.drop_now().await.unwrap();
}
