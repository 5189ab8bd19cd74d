//! The shared fixture: `spawn_app()` builds the real application from the demo tenant file, on
//! port 0, with a temporary data dir, the sandbox emulators and a manual clock.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use callside::app::Application;
use callside::clock::ManualClock;
use callside::config::{Config, Overrides, ServerFile, TenantFile};
use callside::sandbox::google_calendar::GoogleCalendarState;
use callside::sandbox::graph::GraphState;
use callside::sandbox::hubspot::HubSpotState;
use callside::sandbox::pipedrive::PipedriveState;
use callside::sandbox::salesforce::SalesforceState;
use callside::sandbox::shopify::ShopifyState;
use callside::sandbox::square::SquareState;
use callside::session::Core;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The demo tenant's development key (its digest is in config/tenants/demo.toml).
pub const DEMO_KEY: &str = "cs_demo_not_secret_5d0c2a91";
/// The demo tenant's dialed number.
pub const DEMO_NUMBER: &str = "+12125550100";
/// A second tenant for isolation tests: same shape as the demo, its own number and key.
pub const OTHER_KEY: &str = "cs_other_tenant_key_77e1";
pub const OTHER_NUMBER: &str = "+12125550199";
/// The second tenant's own Vapi server-URL secret (a credential identifies one tenant).
pub const OTHER_VAPI_SECRET: &str = "vapi_other_not_secret_9c41d2";

pub fn other_tenant() -> TenantFile {
    let mut t = demo_tenant();
    t.id = "other".into();
    t.name = "Other Clinic".into();
    t.numbers = vec![OTHER_NUMBER.into()];
    t.api_key_sha256 = vec![hex::encode(callside::config::api_key_digest(OTHER_KEY))];
    t.vapi_secret_sha256 = Some(hex::encode(callside::config::api_key_digest(OTHER_VAPI_SECRET)));
    t
}

/// Monday 2026-11-23 08:00 in New York.
pub const START: &str = "2026-11-23T13:00:00Z";

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub core: Arc<Core>,
    pub alerter: Arc<callside::alerts::Alerter>,
    /// The config reloader (`POST /v1/admin/reload` and SIGHUP call it).
    pub reloader: Arc<callside::reload::Reloader>,
    /// Counts finished retention sweeps.
    pub retention_rounds: tokio::sync::watch::Receiver<u64>,
    /// Counts finished rounds of identity pulls (with their changes applied to live calls).
    pub identity_rounds: tokio::sync::watch::Receiver<u64>,
    pub clock: ManualClock,
    pub hubspot: Arc<HubSpotState>,
    pub google: Arc<GoogleCalendarState>,
    pub graph: Arc<GraphState>,
    pub salesforce: Arc<SalesforceState>,
    pub pipedrive: Arc<PipedriveState>,
    /// The emulators, shared by every instance started beside this one ([`spawn_instance`]).
    pub sandbox: Arc<callside::sandbox::Sandbox>,
    pub square: Arc<SquareState>,
    pub shopify: Arc<ShopifyState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn demo_tenant() -> TenantFile {
    let path = repo_path("config/tenants/demo.toml");
    toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub fn server_file(extra: &str) -> ServerFile {
    // The identity pull is off unless a test turns it on: its searches would blur request counts.
    let identity = if extra.contains("[identity]") { "" } else { "[identity]\npull_interval_secs = 0\n" };
    toml::from_str(&format!("[server]\nsandbox = true\nshutdown_grace_secs = 1\n{identity}{extra}")).unwrap()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(server_file(""), vec![demo_tenant()]).await
}

pub async fn spawn_app_with(server: ServerFile, tenants: Vec<TenantFile>) -> TestApp {
    spawn_app_in(server, tenants, tempfile::tempdir().unwrap()).await
}

/// Starts the application on an existing data dir (a restart: see [`TestApp::stop_keeping_data`]).
pub async fn spawn_app_in(server: ServerFile, tenants: Vec<TenantFile>, dir: tempfile::TempDir) -> TestApp {
    spawn_app_configured_in(server, tenants, dir, |_| {}).await
}

/// Like [`spawn_app_with`], with a last edit of the validated config (for what a file cannot say
/// in a test, e.g. a secret that would otherwise come from the environment).
pub async fn spawn_app_configured(
    server: ServerFile,
    tenants: Vec<TenantFile>,
    edit: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_app_configured_in(server, tenants, tempfile::tempdir().unwrap(), edit).await
}

async fn spawn_app_configured_in(
    server: ServerFile,
    tenants: Vec<TenantFile>,
    dir: tempfile::TempDir,
    edit: impl FnOnce(&mut Config),
) -> TestApp {
    let overrides =
        Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(dir.path().to_owned()), store_url: None };
    let mut config = Config::from_parts(
        Path::new("test.toml"),
        server,
        tenants.into_iter().map(|t| (PathBuf::from(format!("{}.toml", t.id)), t)).collect(),
        &overrides,
        dir.path().to_owned(),
    )
    .expect("test config is valid");
    edit(&mut config);
    start(config, dir, None).await
}

/// One instance of a deployment on a shared store (a PostgreSQL test schema's URL): the demo
/// tenant, its own port and data dir; `beside` another instance, it shares that one's emulators
/// (one CRM and calendar behind both) and its domain clock.
pub async fn spawn_instance(store_url: &str, beside: Option<&TestApp>) -> TestApp {
    spawn_instance_with(store_url, beside, server_file(""), demo_tenant()).await
}

/// [`spawn_instance`] with a server file and tenant of the test's own.
pub async fn spawn_instance_with(
    store_url: &str,
    beside: Option<&TestApp>,
    server: ServerFile,
    tenant: TenantFile,
) -> TestApp {
    spawn_instance_configured(store_url, beside, server, tenant, |_| {}).await
}

/// [`spawn_instance_with`], the built config edited before start (values a file cannot hold).
pub async fn spawn_instance_configured(
    store_url: &str,
    beside: Option<&TestApp>,
    server: ServerFile,
    tenant: TenantFile,
    edit: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_owned()),
        store_url: Some(store_url.to_owned()),
    };
    let tenants = vec![tenant];
    let mut config = Config::from_parts(
        Path::new("test.toml"),
        server,
        tenants.into_iter().map(|t| (PathBuf::from(format!("{}.toml", t.id)), t)).collect(),
        &overrides,
        dir.path().to_owned(),
    )
    .expect("test config is valid");
    edit(&mut config);
    let clock = beside.map(|b| b.clock.clone()).unwrap_or_else(|| ManualClock::new(START.parse().unwrap()));
    start_on(config, dir, None, clock, beside.map(|b| b.sandbox.clone())).await
}

/// Starts the application from a server file on disk and makes it reloadable from that file,
/// as `callside serve` does.
pub async fn spawn_app_from_file(path: &Path, dir: tempfile::TempDir) -> TestApp {
    let overrides =
        Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(dir.path().to_owned()), store_url: None };
    let config = Config::load(path, &overrides).expect("test config is valid");
    start(config, dir, Some((path.to_owned(), overrides))).await
}

async fn start(config: Config, dir: tempfile::TempDir, source: Option<(PathBuf, Overrides)>) -> TestApp {
    start_on(config, dir, source, ManualClock::new(START.parse().unwrap()), None).await
}

async fn start_on(
    config: Config,
    dir: tempfile::TempDir,
    source: Option<(PathBuf, Overrides)>,
    clock: ManualClock,
    sandbox: Option<Arc<callside::sandbox::Sandbox>>,
) -> TestApp {
    let app = Application::build_with_sandbox(config, Arc::new(clock.clone()), sandbox).await.expect("app builds");
    if let Some((path, overrides)) = source {
        app.reloader().set_source(path, overrides);
    }
    let addr = app.local_addr();
    let core = app.core();
    let alerter = app.alerter();
    let retention_rounds = app.retention_rounds();
    let identity_rounds = app.identity_rounds();
    let reloader = app.reloader();
    let sandbox = app.sandbox().expect("sandbox runs");
    let hubspot = sandbox.hubspot.state.clone();
    let google = sandbox.google.state.clone();
    let graph = sandbox.graph.state.clone();
    let salesforce = sandbox.salesforce.state.clone();
    let pipedrive = sandbox.pipedrive.state.clone();
    let sandbox = app.shared_sandbox().expect("sandbox runs");
    let square = sandbox.square.state.clone();
    let shopify = sandbox.shopify.state.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        core,
        alerter,
        retention_rounds,
        identity_rounds,
        reloader,
        clock,
        hubspot,
        google,
        graph,
        salesforce,
        pipedrive,
        sandbox,
        square,
        shopify,
        shutdown: Some(tx),
        server: Some(server),
        _dir: dir,
    }
}

impl TestApp {
    pub fn ws_url(&self, call_id: &str, from: &str, to: &str) -> String {
        format!("ws://{}/v1/calls/ws?call_id={}&from={}&to={}", self.addr, call_id, urlencode(from), urlencode(to))
    }

    /// Connects a call with the demo key as a Bearer header.
    pub async fn connect(&self, call_id: &str, from: &str) -> Client {
        self.connect_with(&self.ws_url(call_id, from, DEMO_NUMBER), Some(DEMO_KEY)).await.expect("handshake accepted")
    }

    /// Connects with an explicit URL and optional bearer key; returns the HTTP status on refusal.
    pub async fn connect_with(&self, url: &str, bearer: Option<&str>) -> Result<Client, u16> {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
        if let Some(k) = bearer {
            req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {k}")).unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, resp)) => {
                assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "mcp");
                Ok(Client { ws, next_id: 1, notifications: vec![] })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("unexpected connect error: {e}"),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{}", self.addr, path)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Waits until the call's write-back has finished (synced or failed), woken by the worker's
    /// progress signal — never by sleeping.
    pub async fn wait_for_sync(&self, call_id: &str) -> String {
        self.wait_for_sync_of("demo", call_id).await
    }

    /// [`TestApp::wait_for_sync`] for a call of another tenant.
    pub async fn wait_for_sync_of(&self, tenant: &str, call_id: &str) -> String {
        let mut progress = self.core.worker.progress();
        let wait = async {
            loop {
                if let Some(call) = self.core.store.call(tenant, call_id).await.unwrap()
                    && (call.sync_status == "synced" || call.sync_status == "failed")
                {
                    return call.sync_status;
                }
                progress.changed().await.expect("worker alive");
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait).await.expect("write-back finished in time")
    }

    /// Waits until the call has been closed in the store (end_call or disconnect processed).
    pub async fn wait_for_close(&self, call_id: &str) {
        let mut progress = self.core.worker.progress();
        let wait = async {
            loop {
                if let Some(call) = self.core.store.call("demo", call_id).await.unwrap()
                    && call.ended_at.is_some()
                {
                    return;
                }
                progress.changed().await.expect("worker alive");
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait).await.expect("call closed in time");
    }

    /// Starts the graceful shutdown and returns the server task to await.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("server running")
    }

    /// Kills the instance as a crash would: its server task is aborted, which stops its worker
    /// mid-step and its heartbeat at once — no drain, no outbox flush. Its emulators keep running
    /// for the instances started beside it.
    pub async fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            assert!(server.await.unwrap_err().is_cancelled(), "the instance was killed, not shut down");
        }
        // Only now: dropping the sender earlier would have started a graceful shutdown.
        self.shutdown.take();
    }

    /// Shuts down gracefully and hands back the data dir, for a restart on the same store.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self._dir, dir)
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pub notifications: Vec<Value>,
}

/// What arrived in answer to a frame.
#[derive(Debug)]
pub enum Reply {
    Message(Value),
    Closed(Option<u16>),
}

impl Client {
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next non-notification message, or the close.
    pub async fn next_reply(&mut self) -> Reply {
        let read = async {
            loop {
                match self.ws.next().await {
                    None => return Reply::Closed(None),
                    Some(Err(_)) => return Reply::Closed(None),
                    Some(Ok(Message::Close(frame))) => return Reply::Closed(frame.map(|f| u16::from(f.code))),
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v.get("id").is_none() {
                            self.notifications.push(v);
                            continue;
                        }
                        return Reply::Message(v);
                    }
                    Some(Ok(_)) => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("reply in time")
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()).await;
        match self.next_reply().await {
            Reply::Message(v) => {
                assert_eq!(v["id"], json!(id), "reply to the request just sent");
                v
            }
            Reply::Closed(code) => panic!("socket closed ({code:?}) instead of answering {method}"),
        }
    }

    pub async fn initialize(&mut self) -> Value {
        let r = self
            .request("initialize", json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}))
            .await;
        self.send_text(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string()).await;
        r["result"].clone()
    }

    /// Calls a tool and returns the MCP result object (`content`, `structuredContent`, `isError`).
    pub async fn tool(&mut self, name: &str, args: Value) -> Value {
        let r = self.request("tools/call", json!({"name": name, "arguments": args})).await;
        assert!(r.get("error").is_none(), "{name} answered a protocol error: {r}");
        r["result"].clone()
    }

    /// Reads the socket until a notification with `method` arrives (the signal a test waits
    /// on); other notifications are kept in `notifications`.
    pub async fn next_notification(&mut self, method: &str) -> Value {
        if let Some(i) = self.notifications.iter().position(|n| n["method"] == method) {
            return self.notifications.remove(i);
        }
        let read = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["method"] == method {
                            return v;
                        }
                        self.notifications.push(v);
                    }
                    Some(Ok(_)) => {}
                    other => panic!("socket ended while waiting for {method}: {other:?}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("notification arrived")
    }

    /// Drops the connection without a close handshake (the caller's network vanished).
    pub async fn drop_abruptly(self) {
        let stream = self.ws.into_inner();
        drop(stream);
    }
}

/// POSTs a Google push notification with `headers` to the instance; status and JSON body.
pub async fn post_push(app: &TestApp, headers: &[(&str, String)]) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(format!("http://{}/v1/inbound/google", app.addr));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// The headers Google sends on `channel` (token only when given).
pub fn push_headers(
    channel: &callside::sandbox::google_calendar::WatchChannel,
    token: Option<&str>,
    state: &str,
    number: &str,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("X-Goog-Channel-ID", channel.id.clone()),
        ("X-Goog-Resource-ID", channel.resource_id.clone()),
        ("X-Goog-Resource-State", state.to_owned()),
        ("X-Goog-Message-Number", number.to_owned()),
    ];
    if let Some(t) = token {
        h.push(("X-Goog-Channel-Token", t.to_owned()));
    }
    h
}
