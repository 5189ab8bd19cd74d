//! Health, metrics, the concurrent-call cap and graceful shutdown.

use serde_json::json;

use crate::helpers::{Reply, demo_tenant, server_file, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await, (200, "ok".into()));
    assert_eq!(app.get("/readyz").await, (200, "ready".into()));
    let mut c = app.connect("m-1", "+14155550134").await;
    c.initialize().await;
    c.tool("list_services", json!({})).await;
    let (status, body) = app.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("callside_open_calls 1"), "{body}");
    assert!(body.contains(r#"callside_tool_calls_total{tool="list_services",outcome="ok"} 1"#), "{body}");
    assert!(body.contains("callside_tool_latency_seconds_bucket"), "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn past_the_concurrent_call_cap_the_answer_is_busy_not_a_hang() {
    let app = spawn_app_with(server_file("[limits]\nmax_concurrent_calls = 2\n"), vec![demo_tenant()]).await;
    let _a = app.connect("cap-1", "+14155550134").await;
    let _b = app.connect("cap-2", "+14155550135").await;
    let url = app.ws_url("cap-3", "+14155550136", crate::helpers::DEMO_NUMBER);
    assert_eq!(app.connect_with(&url, Some(crate::helpers::DEMO_KEY)).await.err(), Some(503));
    drop(_a);
    // The permit is returned when the first call's socket task ends; a new call then fits.
    app.wait_for_close("cap-1").await;
    let mut c = loop {
        // The permit is released just after the call is closed in the store; retry the
        // handshake on each worker progress signal until it is accepted.
        match app
            .connect_with(
                &app.ws_url("cap-4", "+14155550137", crate::helpers::DEMO_NUMBER),
                Some(crate::helpers::DEMO_KEY),
            )
            .await
        {
            Ok(c) => break c,
            Err(503) => tokio::task::yield_now().await,
            Err(other) => panic!("unexpected refusal {other}"),
        }
    };
    c.initialize().await;
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_a_live_call_finish_and_flushes_its_write_back() {
    let mut app = spawn_app_with(server_file("").tap_grace(60), vec![demo_tenant()]).await;
    let mut c = app.connect("sd-1", "+1 646 555 0142").await;
    c.initialize().await;
    let server = app.begin_shutdown();
    // The call is still served during the grace period.
    let end = c.tool("end_call", json!({"summary": "Asked about prices.", "caller_name": "Lee Park"})).await;
    assert_eq!(end["structuredContent"]["saved"], true);
    drop(c);
    server.await.unwrap().unwrap();
    let created: Vec<_> =
        app.hubspot.contacts().into_iter().filter(|c| c.prop("phone") == Some("+16465550142")).collect();
    assert_eq!(created.len(), 1, "written back before the process exited");
    assert_eq!(app.hubspot.calls_for_contact(&created[0].id).len(), 1);
}

#[tokio::test]
async fn past_the_grace_period_live_calls_are_closed_and_still_written_back() {
    let mut app = spawn_app_with(server_file("").tap_grace(0), vec![demo_tenant()]).await;
    let mut c = app.connect("sd-2", "+1 646 555 0143").await;
    c.initialize().await;
    let server = app.begin_shutdown();
    match c.next_reply().await {
        Reply::Closed(code) => assert_eq!(code, Some(1001)),
        other => panic!("expected a going-away close, got {other:?}"),
    }
    server.await.unwrap().unwrap();
    let created: Vec<_> =
        app.hubspot.contacts().into_iter().filter(|c| c.prop("phone") == Some("+16465550143")).collect();
    assert_eq!(created.len(), 1, "the cut-off call was written back as disconnected");
}

trait TapGrace {
    fn tap_grace(self, secs: u64) -> Self;
}

impl TapGrace for callside::config::ServerFile {
    fn tap_grace(mut self, secs: u64) -> Self {
        self.server.shutdown_grace_secs = secs;
        self
    }
}
