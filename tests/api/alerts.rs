//! Alerts (issue 9, item 6): a CRM outage that fails many write-back attempts posts ONE alert to
//! the tenant's webhook (Slack-compatible body) and shows it on the console; the incident
//! resolves when the error rate falls, and the next outage is a new incident with a new alert.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callside::alerts::{AlertsFile, Incident};
use reqwest::StatusCode;
use serde_json::Value;

use crate::console::{console_server, seed_call, tenants, wait_steps};
use crate::helpers::*;

type Posts = Arc<Mutex<Vec<Value>>>;

/// A local webhook receiver that keeps every JSON body it is sent.
async fn receiver() -> (String, Posts) {
    let posts: Posts = Arc::default();
    let kept = posts.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/hook"), posts)
}

/// Waits on the alerter's progress signal until `done` holds for the demo tenant's incidents.
async fn wait_incidents(app: &TestApp, done: impl Fn(&[Incident]) -> bool) -> Vec<Incident> {
    let mut progress = app.alerter.progress();
    let wait = async {
        loop {
            let now = app.alerter.incidents("demo");
            if done(&now) {
                return now;
            }
            progress.changed().await.expect("alerter alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("alerts progressed in time")
}

/// An outage while `calls` are written back: each call's first step fails `rounds` times, then
/// is dead-lettered past the 30 s retry window.
async fn outage(app: &TestApp, calls: &[&str]) {
    app.hubspot.set_down(true);
    let now = callside::clock::Clock::now(&app.clock).to_string();
    for (i, call) in calls.iter().enumerate() {
        seed_call(app, call, &format!("+1212555017{i}"), &now, "callback requested").await;
    }
    for n in 1..=3 {
        for call in calls {
            wait_steps(app, call, |s| s[0].attempts >= n).await;
        }
        app.clock.advance(jiff::SignedDuration::from_secs(6));
    }
    app.clock.advance(jiff::SignedDuration::from_secs(60));
    for call in calls {
        assert_eq!(app.wait_for_sync(call).await, "failed");
    }
}

#[tokio::test]
async fn an_outage_is_one_alert_not_one_per_failure_and_the_next_outage_another() {
    let (url, posts) = receiver().await;
    let mut tenant_files = tenants();
    tenant_files[0].alerts = Some(AlertsFile {
        webhook_url_env: None,
        error_rate_percent: 50,
        min_attempts: 3,
        window_secs: 300,
        backlog_age_secs: 3600,
    });
    let app = spawn_app_configured(console_server(), tenant_files, |c| {
        let demo = c.tenants.iter_mut().find(|t| t.id == "demo").unwrap();
        demo.alerts.as_mut().unwrap().webhook = Some(url::Url::parse(&url).unwrap());
    })
    .await;

    // First outage: three calls, at least four failed attempts each.
    outage(&app, &["out-1", "out-2", "out-3"]).await;
    app.alerter.evaluate().await.unwrap();
    app.alerter.evaluate().await.unwrap();
    let incidents = wait_incidents(&app, |i| i.len() == 1 && i[0].delivered.is_some()).await;
    let first = &incidents[0];
    assert_eq!(first.delivered, Some(true));
    assert_eq!(first.kind.as_str(), "sync_errors");
    assert!(first.resolved_at.is_none());
    let failures = app.hubspot.total_requests();
    assert!(failures >= 12, "many failures: {failures}");
    {
        let posts = posts.lock().unwrap();
        assert_eq!(posts.len(), 1, "one alert for the incident, not one per failure: {posts:?}");
        let text = posts[0]["text"].as_str().expect("a Slack-compatible `text`");
        assert!(text.contains("error rate 100%"), "{text}");
        assert_eq!(posts[0]["callside"]["incident_id"], first.id.as_str());
        assert_eq!(posts[0]["callside"]["tenant"], "demo");
        assert!(!text.contains("2125550"), "no caller data in an alert: {text}");
    }
    // On the console: the day view shows the open alert, the API lists it.
    let http = reqwest::Client::new();
    let day: Value = http
        .get(format!("http://{}/v1/calls", app.addr))
        .bearer_auth(DEMO_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(day["alerts"][0]["id"], first.id.as_str());
    assert_eq!(day["alerts"][0]["kind"], "sync_errors");
    let mut ana = crate::console::Browser::new(&app);
    ana.login("ana", crate::console::ANA_PASSWORD).await;
    let page = ana.get("/console/t/demo/calls").await;
    assert!(page.body.contains("data-kind=\"sync_errors\""), "{}", page.body);
    // The other tenant has no alerts section: nothing about it.
    assert!(app.alerter.incidents("other").is_empty());

    // Recovery: the CRM is back, the dead letters are replayed and written.
    app.hubspot.set_down(false);
    for call in ["out-1", "out-2", "out-3"] {
        let r = http
            .post(format!("http://{}/v1/calls/{call}/replay", app.addr))
            .bearer_auth(DEMO_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(app.wait_for_sync(call).await, "synced");
    }
    // Once the failures are out of the window the incident resolves (recorded, not posted).
    app.clock.advance(jiff::SignedDuration::from_secs(301));
    app.alerter.evaluate().await.unwrap();
    let incidents = wait_incidents(&app, |i| i.iter().all(|x| x.resolved_at.is_some())).await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(posts.lock().unwrap().len(), 1);

    // A second outage is a second incident: one more alert.
    outage(&app, &["out-4", "out-5"]).await;
    app.alerter.evaluate().await.unwrap();
    let incidents = wait_incidents(&app, |i| i.len() == 2 && i[0].delivered.is_some()).await;
    assert_ne!(incidents[0].id, first.id);
    assert!(incidents[0].resolved_at.is_none());
    assert_eq!(posts.lock().unwrap().len(), 2);
    let metrics = app.get("/metrics").await.1;
    assert!(metrics.contains("callside_alerts_total{kind=\"sync_errors\"} 2"), "{metrics}");
    app.shutdown().await;
}
