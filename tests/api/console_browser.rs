//! The console in a real browser: headless Chromium driven over WebDriver (`fantoccini` talking
//! to `chromedriver`, which this test starts on a free port). `.ci/run` installs Debian's
//! `chromium` and `chromium-driver`; without them this test fails with a message saying so.
//! A screenshot of each page is saved under `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::console::*;
use crate::helpers::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// What every failure to get a browser says: the packages CI installs, and how.
const INSTALL: &str = "the console browser test needs Debian's chromium and chromium-driver, of the same \
                       version (`apt-get update && apt-get install -y chromium chromium-driver`; .ci/run does this)";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_driver() -> Driver {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(std::path::Path::new(bin).exists(), "{bin} is missing: {INSTALL}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{CHROMEDRIVER} does not start ({e}): {INSTALL}"));
    // Ready when it says so on stdout (an explicit signal, not a sleep).
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("started successfully") {
                return;
            }
        }
        panic!("{CHROMEDRIVER} exited before it was ready: {INSTALL}");
    };
    tokio::time::timeout(Duration::from_secs(30), ready).await.expect("chromedriver ready in time");
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Driver { child, url: format!("http://127.0.0.1:{port}"), profile: tempfile::tempdir().unwrap() }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                format!("--user-data-dir={}", driver.profile.path().display()),
                "--window-size=1280,900",
            ],
        }),
    );
    // WebDriver on loopback is plain HTTP: no TLS stack in the test build.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("chromedriver gave no browser session ({e}); {INSTALL}"))
}

fn screenshots_dir() -> PathBuf {
    let dir = repo_path("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

async fn badge(c: &Client, call_id: &str) -> (String, String) {
    let card = c.find(Locator::Css(&format!("[data-call-id='{call_id}']"))).await.unwrap();
    let status = card.attr("data-status").await.unwrap().unwrap();
    let label = card.find(Locator::Css(".badge")).await.unwrap().text().await.unwrap();
    (status, label)
}

async fn links(c: &Client, call_id: &str) -> Vec<String> {
    let card = c.find(Locator::Css(&format!("[data-call-id='{call_id}']"))).await.unwrap();
    let mut out = vec![];
    for a in card.find_all(Locator::Css("a.crm-link")).await.unwrap() {
        out.push(a.attr("href").await.unwrap().unwrap());
    }
    out
}

/// The CRM deep links the store's steps imply for a call (the ids the CRM really has).
async fn expected_links(app: &TestApp, call_id: &str) -> Vec<String> {
    let mut out = vec![];
    for s in app.core.store.steps_for_call("demo", call_id).await.unwrap() {
        if s.status != "done" {
            continue;
        }
        let id = s.external_id.unwrap();
        let type_id = match s.kind.as_str() {
            "contact" => {
                assert!(app.hubspot.contact(&id).is_some());
                "0-1"
            }
            "call_log" => {
                assert!(app.hubspot.call(&id).is_some());
                "0-48"
            }
            other => panic!("unexpected step {other}"),
        };
        out.push(format!("https://app.hubspot.com/contacts/{PORTAL}/record/{type_id}/{id}"));
    }
    out
}

#[tokio::test]
async fn the_console_in_headless_chromium() {
    let driver = start_driver().await;
    let app = seeded_day().await;
    let base = format!("http://{}", app.addr);
    let c = browser(&driver).await;

    // Log in.
    c.goto(&format!("{base}/console")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/console/login"));
    screenshot(&c, "01-login").await;
    c.find(Locator::Id("username")).await.unwrap().send_keys("ana").await.unwrap();
    c.find(Locator::Id("password")).await.unwrap().send_keys(ANA_PASSWORD).await.unwrap();
    c.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    // A click does not wait for the navigation it starts: wait for the next page's URL.
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_url(&url::Url::parse(&format!("{base}/console/t/demo/calls")).unwrap())
        .await
        .unwrap();

    // Yesterday's day view (the default): each badge and each CRM link.
    let url = c.current_url().await.unwrap();
    assert_eq!(url.path(), "/console/t/demo/calls", "{url}");
    let h1 = c.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert!(h1.contains("2026-11-22"), "{h1}");
    screenshot(&c, "02-day").await;
    assert_eq!(badge(&c, SYNCED).await, ("synced".into(), "synced".into()));
    assert_eq!(badge(&c, PARTIAL).await, ("partial".into(), "partial".into()));
    assert_eq!(badge(&c, DEAD).await, ("failed".into(), "failed (dead-lettered)".into()));
    for call in [SYNCED, PARTIAL, DEAD] {
        assert_eq!(links(&c, call).await, expected_links(&app, call).await, "{call}");
    }
    assert_eq!(links(&c, SYNCED).await.len(), 2);
    assert_eq!(links(&c, PARTIAL).await.len(), 1);
    assert!(links(&c, DEAD).await.is_empty());

    // At a phone's 390×844 the day view has no horizontal scroll.
    c.set_window_size(390, 844).await.unwrap();
    c.refresh().await.unwrap();
    let dims: Value =
        c.execute("return [document.documentElement.scrollWidth, window.innerWidth];", vec![]).await.unwrap();
    let (scroll, inner) = (dims[0].as_u64().unwrap(), dims[1].as_u64().unwrap());
    assert!(inner <= 390, "the viewport is phone-sized: {inner}");
    assert!(scroll <= inner, "no horizontal scroll at 390×844: scrollWidth {scroll} > innerWidth {inner}");
    screenshot(&c, "03-day-phone").await;

    // The dead-lettered call's page; the CRM recovers; re-sync; it turns synced.
    c.find(Locator::Css(&format!("[data-call-id='{DEAD}'] a.open-call"))).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(20)).for_element(Locator::Id("status")).await.unwrap();
    assert_eq!(c.find(Locator::Id("status")).await.unwrap().text().await.unwrap(), "failed (dead-lettered)");
    let error = c.find(Locator::Css(".step-error")).await.unwrap().text().await.unwrap();
    assert!(!error.is_empty());
    let scroll: Value =
        c.execute("return document.documentElement.scrollWidth <= window.innerWidth;", vec![]).await.unwrap();
    assert_eq!(scroll, json!(true), "no horizontal scroll on the call page either");
    screenshot(&c, "04-call-dead").await;
    app.hubspot.set_down(false);
    c.find(Locator::Id("resync")).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(20)).for_element(Locator::Id("notice")).await.unwrap();
    assert_eq!(c.find(Locator::Id("notice")).await.unwrap().text().await.unwrap(), "Re-sync queued.");
    assert_eq!(app.wait_for_sync(DEAD).await, "synced");
    c.refresh().await.unwrap();
    assert_eq!(c.find(Locator::Id("status")).await.unwrap().text().await.unwrap(), "synced");
    screenshot(&c, "05-call-synced").await;
    c.find(Locator::Id("back-to-day")).await.unwrap().click().await.unwrap();
    c.wait().at_most(Duration::from_secs(20)).for_element(Locator::Id("summary")).await.unwrap();
    assert_eq!(badge(&c, DEAD).await.0, "synced");
    assert_eq!(links(&c, DEAD).await, expected_links(&app, DEAD).await);
    assert_eq!(links(&c, DEAD).await.len(), 2);
    screenshot(&c, "06-day-after-resync").await;

    c.close().await.unwrap();
    app.shutdown().await;
}
