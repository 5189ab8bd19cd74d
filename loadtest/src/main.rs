//! `loadtest`: drives concurrent calls against a running callside over real WebSockets and
//! reports per-tool latency (hdrhistogram). This is the first profile (connect → initialize →
//! get_caller_context → list_services → end_call); the open-loop generator, the invariant checks
//! and the echo floor arrive with the load-test issue.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser, Debug)]
#[command(about = "Concurrent-call load against a running callside")]
struct Args {
    /// Base WebSocket URL of the service.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// The tenant's API key.
    #[arg(long, default_value = "cs_demo_not_secret_5d0c2a91")]
    key: String,
    /// The dialed number that selects the tenant.
    #[arg(long, default_value = "+12125550100")]
    to: String,
    /// Calls to run.
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
}

struct Timings {
    per_tool: Vec<(String, Histogram<u64>)>,
    errors: usize,
}

impl Timings {
    fn record(&mut self, tool: &str, micros: u64) {
        let h = match self.per_tool.iter_mut().find(|(t, _)| t == tool) {
            Some((_, h)) => h,
            None => {
                self.per_tool
                    .push((tool.to_owned(), Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")));
                &mut self.per_tool.last_mut().expect("just pushed").1
            }
        };
        let _ = h.record(micros.max(1));
    }
}

async fn one_call(args: &Args, n: usize) -> anyhow::Result<Vec<(String, u64)>> {
    let url = format!(
        "{}/v1/calls/ws?call_id=load-{}-{n}&from=%2B1415555{:04}&to={}",
        args.url,
        std::process::id(),
        n % 10_000,
        args.to.replace('+', "%2B")
    );
    let mut req = url.into_client_request()?;
    req.headers_mut().insert("Sec-WebSocket-Protocol", "mcp".parse()?);
    req.headers_mut().insert("Authorization", format!("Bearer {}", args.key).parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.context("connect")?;
    let mut timings = Vec::new();
    let steps: [(&str, Value); 4] = [
        (
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "loadtest", "version": "0"}}),
        ),
        ("get_caller_context", json!({})),
        ("list_services", json!({})),
        ("end_call", json!({"summary": "load test call"})),
    ];
    for (i, (tool, params)) in steps.into_iter().enumerate() {
        let (method, params) = if tool == "initialize" {
            ("initialize", params)
        } else {
            ("tools/call", json!({"name": tool, "arguments": params}))
        };
        let started = Instant::now();
        ws.send(Message::Text(
            json!({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).to_string().into(),
        ))
        .await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v.get("id") == Some(&json!(i)) {
                        if v.get("error").is_some() || v["result"]["isError"] == json!(true) {
                            bail!("{tool} failed: {t}");
                        }
                        break;
                    }
                }
                Some(Ok(_)) => continue,
                other => bail!("socket ended during {tool}: {other:?}"),
            }
        }
        timings.push((tool.to_owned(), started.elapsed().as_micros() as u64));
    }
    let _ = ws.close(None).await;
    Ok(timings)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = std::sync::Arc::new(Args::parse());
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.calls {
        let permit = sem.clone().acquire_owned().await?;
        let args = args.clone();
        tasks.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(30), one_call(&args, n)).await;
            drop(permit);
            r.map_err(|_| anyhow::anyhow!("call timed out")).and_then(|r| r)
        });
    }
    let mut t = Timings { per_tool: Vec::new(), errors: 0 };
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(v) => v.into_iter().for_each(|(tool, us)| t.record(&tool, us)),
            Err(e) => {
                t.errors += 1;
                eprintln!("call failed: {e:#}");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{} calls in {secs:.2}s ({:.0} calls/s), {} failed", args.calls, args.calls as f64 / secs, t.errors);
    println!("{:<20} {:>10} {:>10} {:>10} {:>10}", "tool", "count", "p50 µs", "p99 µs", "max µs");
    for (tool, h) in &t.per_tool {
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>10}",
            tool,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    if t.errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
