//! The crash test: the real `callside` binary is killed over and over — at each failpoint
//! (`CALLSIDE_FAILPOINTS`, the process exits right there) and at random points (SIGKILL after a
//! seeded random number of log lines) — and restarted on the same data dir, while the CRM
//! emulator runs in its own process (`callside sandbox`) and keeps its state across the kills.
//! At the end every acknowledged call must be synced and the CRM must hold no duplicate.
//!
//! Reproduce a run with `CALLSIDE_CRASH_SEED=<seed printed> cargo test --test api crash`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use callside::failpoint::{self, FAILPOINT_EXIT_CODE};
use callside::store::Store;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{DEMO_KEY, DEMO_NUMBER, repo_path, urlencode};

const BIN: &str = env!("CARGO_BIN_EXE_callside");
const RUNS: usize = 50;
const CALLS_PER_RUN: usize = 2;
/// A guard against a hung child, not a synchronization: every wait below is on an event.
const STUCK: Duration = Duration::from_secs(60);

/// How a run ends.
#[derive(Debug, Clone)]
enum Kill {
    /// The named failpoint is armed to exit the process on its `n`th hit.
    Failpoint(&'static str, u64),
    /// SIGKILL once the service has written this many log lines (or its calls are all driven).
    AfterLines(usize),
}

/// The sandbox process: emulators plus the control port.
struct SandboxProc {
    _child: Child,
    urls: Value,
}

impl SandboxProc {
    async fn start() -> SandboxProc {
        let mut child = Command::new(BIN)
            .arg("sandbox")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sandbox starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let urls = tokio::time::timeout(STUCK, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v.get("control").is_some()
                {
                    return v;
                }
            }
            panic!("sandbox exited before printing its URLs");
        })
        .await
        .expect("sandbox printed its URLs");
        // Keep draining its stdout so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        SandboxProc { _child: child, urls }
    }

    fn url(&self, name: &str) -> String {
        self.urls[name].as_str().unwrap().to_owned()
    }

    async fn objects(&self, kind: &str) -> Vec<Value> {
        let url = format!("{}hubspot/objects/{kind}", self.url("control"));
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }
}

/// One run of the service: the child, its log lines as they arrive, its address.
struct ServiceProc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    addr: String,
}

impl ServiceProc {
    /// Starts the service; `Err` with its exit status if it died before listening (a failpoint
    /// armed on the recovery of calls left open by the previous run fires during start-up).
    async fn start(
        config: &Path,
        failpoints: &str,
        sandbox: &SandboxProc,
    ) -> Result<ServiceProc, std::process::ExitStatus> {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .env("CALLSIDE_FAILPOINTS", failpoints)
            .env("CRASH_HUBSPOT_TOKEN", sandbox.urls["tokens"]["hubspot"].as_str().unwrap())
            .env("CRASH_GOOGLE_TOKEN", sandbox.urls["tokens"]["google"].as_str().unwrap())
            .env("CRASH_SQUARE_TOKEN", sandbox.urls["tokens"]["square"].as_str().unwrap())
            .env("RUST_LOG", "info")
            .env_remove("CALLSIDE_SECRET_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("service starts");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let addr = tokio::time::timeout(STUCK, async {
            while let Some(line) = rx.recv().await {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if v["fields"]["message"] == "callside listening" {
                    return Some(v["fields"]["addr"].as_str().unwrap().to_owned());
                }
            }
            None
        })
        .await
        .expect("service listening or exited");
        match addr {
            Some(addr) => Ok(ServiceProc { child, lines: rx, addr }),
            None => Err(child.wait().await.unwrap()),
        }
    }
}

/// Drives one call over the WebSocket up to `end_call`. `Ok(true)` when `end_call` was
/// acknowledged; `Err` when the service went away first.
async fn drive_call(addr: &str, call_id: &str, phone: &str) -> Result<bool, String> {
    let url =
        format!("ws://{addr}/v1/calls/ws?call_id={call_id}&from={}&to={}", urlencode(phone), urlencode(DEMO_NUMBER));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
    req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {DEMO_KEY}")).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| e.to_string())?;
    let frames = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "crash", "version": "0"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "end_call", "arguments": {
            "summary": "Asked about opening hours.",
            "caller_name": "Crash Tester",
            "caller_email": format!("{call_id}@example.com"),
        }}}),
    ];
    for frame in frames {
        let expects_reply = frame.get("id").cloned();
        ws.send(Message::Text(frame.to_string().into())).await.map_err(|e| e.to_string())?;
        let Some(id) = expects_reply else { continue };
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                    if v.get("id") == Some(&id) {
                        if id == json!(2) {
                            return Ok(v["result"]["isError"] == json!(false));
                        }
                        break;
                    }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed".into()),
            }
        }
    }
    unreachable!("end_call answers or the socket fails")
}

async fn drive_calls(addr: String, calls: Vec<(String, String)>) -> Vec<String> {
    let mut acked = Vec::new();
    for (call_id, phone) in calls {
        match drive_call(&addr, &call_id, &phone).await {
            Ok(true) => acked.push(call_id),
            Ok(false) => panic!("end_call answered an error for {call_id}"),
            Err(_) => break,
        }
    }
    acked
}

fn write_config(dir: &Path, sandbox: &SandboxProc) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("tenants")).unwrap();
    let demo = std::fs::read_to_string(repo_path("config/tenants/demo.toml")).unwrap();
    let mut tenant: toml::Table = toml::from_str(&demo).unwrap();
    for (section, vendor, url, env) in [
        ("crm", "hubspot", sandbox.url("hubspot"), "CRASH_HUBSPOT_TOKEN"),
        ("calendar", "google", sandbox.url("google"), "CRASH_GOOGLE_TOKEN"),
    ] {
        let mut t = toml::Table::new();
        t.insert("vendor".into(), vendor.into());
        t.insert("base_url".into(), url.into());
        t.insert("access_token_env".into(), env.into());
        tenant.insert(section.into(), toml::Value::Table(t));
    }
    // The till: the out-of-process sandbox's Square emulator.
    let pos = tenant.get_mut("pos").and_then(toml::Value::as_table_mut).expect("the demo tenant has a [pos]");
    pos.insert("base_url".into(), sandbox.url("square").into());
    pos.insert("access_token_env".into(), "CRASH_SQUARE_TOKEN".into());
    std::fs::write(dir.join("tenants/demo.toml"), toml::to_string(&tenant).unwrap()).unwrap();
    let server = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\ntenants_dir = \"tenants\"\nsandbox = false\nshutdown_grace_secs = 1\n",
        dir.join("data").display().to_string()
    );
    let path = dir.join("callside.toml");
    std::fs::write(&path, server).unwrap();
    path
}

/// Waits for a run's end: the process died (failpoint or kill), or — when the armed failpoint
/// can no longer be reached because the outbox is empty — kills it. Returns whether the armed
/// failpoint is what stopped it.
async fn finish_run(
    svc: &mut ServiceProc,
    kill: &Kill,
    calls: Vec<(String, String)>,
    store: &Store,
) -> (Vec<String>, bool) {
    let driver = tokio::spawn(drive_calls(svc.addr.clone(), calls));
    tokio::pin!(driver);
    let mut driver_done: Option<Vec<String>> = None;
    let mut lines_seen = 0usize;
    let mut killed = false;
    let status = loop {
        let idle_worker = driver_done.is_some() && store.pending_step_count().await.unwrap() == 0;
        let should_kill = match kill {
            Kill::AfterLines(k) => lines_seen >= *k || driver_done.is_some(),
            Kill::Failpoint(..) => idle_worker,
        };
        if should_kill && !killed {
            svc.child.start_kill().unwrap();
            killed = true;
        }
        tokio::select! {
            status = svc.child.wait() => break status.unwrap(),
            line = svc.lines.recv() => if line.is_some() { lines_seen += 1 },
            acked = &mut driver, if driver_done.is_none() => driver_done = Some(acked.unwrap()),
        }
    };
    let acked = match driver_done {
        Some(a) => a,
        None => driver.await.unwrap(),
    };
    (acked, status.code() == Some(FAILPOINT_EXIT_CODE))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_failpoint_and_at_random_no_acked_call_is_lost_or_duplicated() {
    let seed: u64 =
        std::env::var("CALLSIDE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random());
    println!("crash test seed: {seed} (CALLSIDE_CRASH_SEED={seed} reproduces the kill schedule)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let sandbox = SandboxProc::start().await;
    let config = write_config(dir.path(), &sandbox);
    let db = format!("sqlite://{}", dir.path().join("data/callside.db").display());

    let mut acked_all: Vec<(String, String)> = Vec::new();
    let mut fired: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut store: Option<Store> = None;
    for run in 0..RUNS {
        let cycle = failpoint::ALL.len() + 1;
        let kill = if run % cycle == failpoint::ALL.len() {
            Kill::AfterLines(rng.random_range(1..=12))
        } else {
            Kill::Failpoint(failpoint::ALL[run % cycle], rng.random_range(1..=2))
        };
        let spec = match &kill {
            Kill::Failpoint(name, n) => format!("{name}=exit@{n}"),
            Kill::AfterLines(_) => String::new(),
        };
        let mut svc = match ServiceProc::start(&config, &spec, &sandbox).await {
            Ok(svc) => svc,
            Err(status) => {
                let by_failpoint = status.code() == Some(FAILPOINT_EXIT_CODE);
                assert!(by_failpoint, "run {run}: the service died at start-up: {status}");
                if let Kill::Failpoint(name, _) = &kill {
                    *fired.entry(name).or_default() += 1;
                }
                println!("run {run}: {kill:?} → fired during start-up (recovery)");
                continue;
            }
        };
        // The service created the database on its first start; the test reads it alongside.
        let s = match &store {
            Some(s) => s.clone(),
            None => store.insert(Store::open(&db).await.unwrap()).clone(),
        };
        let calls: Vec<(String, String)> = (0..CALLS_PER_RUN)
            .map(|j| {
                let n = run * CALLS_PER_RUN + j;
                (format!("crash-{seed}-{n}"), format!("+1415555{:04}", 2000 + n))
            })
            .collect();
        let phones: BTreeMap<String, String> = calls.iter().cloned().collect();
        let (acked, by_failpoint) =
            tokio::time::timeout(STUCK, finish_run(&mut svc, &kill, calls, &s)).await.expect("run ended");
        if let (Kill::Failpoint(name, _), true) = (&kill, by_failpoint) {
            *fired.entry(name).or_default() += 1;
        }
        println!("run {run}: {kill:?} → fired: {by_failpoint}, acked: {acked:?}");
        acked_all.extend(acked.into_iter().map(|id| {
            let phone = phones[&id].clone();
            (id, phone)
        }));
    }
    for name in failpoint::ALL {
        assert!(fired.get(name).copied().unwrap_or(0) > 0, "failpoint {name} never fired: {fired:?}");
    }
    assert!(acked_all.len() >= RUNS / 4, "too few calls acknowledged to prove anything: {}", acked_all.len());

    // The last start, unarmed: the outbox drains.
    let store = store.unwrap();
    let mut svc = ServiceProc::start(&config, "", &sandbox).await.expect("the unarmed service starts");
    tokio::time::timeout(STUCK, async {
        while store.pending_step_count().await.unwrap() > 0 {
            svc.lines.recv().await.expect("the service keeps running while steps are pending");
        }
    })
    .await
    .expect("the outbox drained");
    svc.child.start_kill().unwrap();
    svc.child.wait().await.unwrap();

    for (call_id, _) in &acked_all {
        let call = store.call("demo", call_id).await.unwrap().expect("an acked call is in the store");
        assert_eq!(call.sync_status, "synced", "{call_id}: {:?}", store.steps_for_call("demo", call_id).await);
    }

    // No duplicates at the CRM: one object per idempotency key, one contact per phone.
    let key = callside::connectors::crm::hubspot::IDEMPOTENCY_PROPERTY;
    for kind in ["contacts", "calls"] {
        let objects = sandbox.objects(kind).await;
        let mut seen = HashSet::new();
        for o in &objects {
            if let Some(k) = o["properties"][key].as_str() {
                assert!(seen.insert(k.to_owned()), "{kind}: two objects carry the key {k}");
            }
        }
    }
    let contacts = sandbox.objects("contacts").await;
    let calls = sandbox.objects("calls").await;
    for (call_id, phone) in &acked_all {
        let with_phone = contacts.iter().filter(|c| c["properties"]["phone"].as_str() == Some(phone.as_str())).count();
        assert_eq!(with_phone, 1, "{call_id}: {with_phone} contacts with {phone}");
        // By prefix: a key that drifted between attempts would show up as a second log.
        let prefix = format!("{call_id}:call");
        let logs =
            calls.iter().filter(|c| c["properties"][key].as_str().is_some_and(|k| k.starts_with(&prefix))).count();
        assert_eq!(logs, 1, "{call_id}: {logs} call logs");
    }
}
