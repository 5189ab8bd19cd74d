//! Write-back durability benchmarks (issue 8). Run: `cargo bench --bench writeback`; figures go
//! to BENCHMARKS.md.
//!
//! 1. Group commit: a burst of hangups committed with the writer's batching (64) against one
//!    commit per hangup (batch 1), SQLite `synchronous=FULL` on the local disk: wall time, acks/s,
//!    commits (fsyncs), and each close's ack latency p50/p99.
//! 2. Hangup → CRM record landed: the whole service (WebSocket, store, worker) against the HubSpot
//!    emulator answering every request after 50 ms; calls hang up at a steady rate, and the time
//!    from sending `end_call` to the call being synced (its CRM call log created) is measured.
//!
//! Not a criterion bench: percentiles over a paced workload are the figure, not a mean per
//! iteration. Real time is used on purpose (the system clock, real sleeps for pacing).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use callside::app::Application;
use callside::clock::SystemClock;
use callside::config::{Config, Overrides, ServerFile, TenantFile};
use callside::store::{NewStep, Store};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const DEMO_KEY: &str = "cs_demo_not_secret_5d0c2a91";
const DEMO_NUMBER: &str = "+12125550100";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn group_commit(burst: usize, batch: usize) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store =
        Store::open_with_plan_batch(&format!("sqlite://{}", dir.path().join("b.db").display()), batch).await.unwrap();
    let t0 = jiff::Timestamp::now();
    for i in 0..burst {
        store.record_call_start(&format!("c{i}"), "demo", Some("+14155550134"), DEMO_NUMBER, t0).await.unwrap();
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..burst)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let call = format!("c{i}");
                let steps = vec![
                    NewStep {
                        seq: 0,
                        kind: "contact".into(),
                        payload: json!({"phone": "+14155550134"}),
                        depends_on: None,
                        idempotency_key: format!("{call}:contact"),
                    },
                    NewStep {
                        seq: 1,
                        kind: "call_log".into(),
                        payload: json!({"summary": "x".repeat(400)}),
                        depends_on: Some(0),
                        idempotency_key: format!("{call}:call"),
                    },
                ];
                let begun = Instant::now();
                assert!(store.close_call_with_plan(&call, "demo", "end_call", &json!({}), &steps, t0).await.unwrap());
                begun.elapsed()
            })
        })
        .collect();
    let mut acks = Vec::with_capacity(burst);
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    let wall = start.elapsed();
    acks.sort();
    let commits = store.group_commit_stats().batches.load(Ordering::Relaxed);
    println!(
        "group commit, burst {burst}, batch ≤ {batch:>2}: {} wall, {:>6.0} hangups/s, {commits:>4} commits, ack p50 {} p99 {}",
        ms(wall),
        burst as f64 / wall.as_secs_f64(),
        ms(percentile(&acks, 0.5)),
        ms(percentile(&acks, 0.99)),
    );
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

async fn end_to_end(calls: usize, every: Duration, latency: Duration, account_per_10s: u32) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut tenant: TenantFile =
        toml::from_str(&std::fs::read_to_string(repo("config/tenants/demo.toml")).unwrap()).unwrap();
    // The account's budget, shared by live reads and the write-back lane (set explicitly: the
    // sandbox is unmetered by default).
    tenant.crm.requests_per_10s = Some(account_per_10s);
    let server: ServerFile = toml::from_str("[server]\nsandbox = true\nshutdown_grace_secs = 1\n").unwrap();
    let overrides =
        Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(dir.path().to_owned()), store_url: None };
    let config = Config::from_parts(
        Path::new("bench.toml"),
        server,
        vec![(PathBuf::from("demo.toml"), tenant)],
        &overrides,
        dir.path().to_owned(),
    )
    .unwrap();
    let app = Application::build(config, Arc::new(SystemClock)).await.unwrap();
    let addr = app.local_addr();
    let core = app.core();
    app.sandbox().unwrap().hubspot.state.set_latency(latency);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));

    let mut pacing = tokio::time::interval(every);
    let mut calls_in_flight = Vec::new();
    for i in 0..calls {
        pacing.tick().await;
        let core = core.clone();
        calls_in_flight.push(tokio::spawn(async move {
            let call_id = format!("bench-{i}");
            let phone = format!("+1415556{:04}", i);
            let url = format!("ws://{addr}/v1/calls/ws?call_id={call_id}&from=%2B{}&to=%2B{}", &phone[1..], &DEMO_NUMBER[1..]);
            let mut req = url.into_client_request().unwrap();
            req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
            req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {DEMO_KEY}")).unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let mut progress = core.worker.progress();
            let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}});
            ws.send(Message::Text(init.to_string().into())).await.unwrap();
            reply(&mut ws, 1).await;
            let end = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "end_call", "arguments": {"summary": "Asked about prices.", "caller_name": "Bench Caller"}}});
            let hangup = Instant::now();
            ws.send(Message::Text(end.to_string().into())).await.unwrap();
            reply(&mut ws, 2).await;
            loop {
                let call = core.store.call("demo", &call_id).await.unwrap().unwrap();
                match call.sync_status.as_str() {
                    "synced" => return hangup.elapsed(),
                    "failed" => panic!("{call_id} failed"),
                    _ => progress.changed().await.unwrap(),
                }
            }
        }));
    }
    let mut landed = Vec::with_capacity(calls);
    for c in calls_in_flight {
        landed.push(c.await.unwrap());
    }
    landed.sort();
    println!(
        "hangup → CRM landed, {calls} calls, one every {} ms, emulator latency {} ms, budget {account_per_10s}/10 s: p50 {} p99 {} max {}",
        every.as_millis(),
        latency.as_millis(),
        ms(percentile(&landed, 0.5)),
        ms(percentile(&landed, 0.99)),
        ms(*landed.last().unwrap()),
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

async fn reply(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    id: u64,
) -> Value {
    loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == json!(id) {
                return v;
            }
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if quick {
            group_commit(20, 64).await;
            end_to_end(3, Duration::from_millis(100), Duration::from_millis(5), 100).await;
            return;
        }
        for batch in [1, 64] {
            group_commit(1000, batch).await;
        }
        // HubSpot's default OAuth budget (100 per 10 s per account, 30 % kept for live calls)
        // holds one hangup a second; the Professional tier's 190 per 10 s holds two.
        end_to_end(60, Duration::from_millis(1000), Duration::from_millis(50), 100).await;
        end_to_end(100, Duration::from_millis(500), Duration::from_millis(50), 190).await;
    });
}
