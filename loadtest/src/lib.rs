//! `loadtest`: open-loop load against callside with the echo floor measured in the same run,
//! server RSS/CPU from /proc, invariant checks at the end (non-zero exit when one fails), and a
//! table, a JSON report and an SVG chart. See README.md ("Load test") and BENCHMARKS.md.

pub mod checks;
pub mod load;
pub mod report;
pub mod setup;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use load::{Arrivals, Counters, Plan, Target};
use report::Sample;
use setup::{Admin, ServerKnobs, Service};

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Target a running service (`ws://host:port`) started with a config from `loadtest
    /// write-config` (pass the same --tenants/--known-callers); default: start one.
    #[arg(long)]
    pub url: Option<String>,
    /// Binary to start as the service (`<bin> serve --config … --listen …`): a `callside`
    /// binary, or by default this binary's own `serve`, which runs the same application.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Tenants (businesses), each with its own number, key, calendars and known callers.
    #[arg(long, default_value_t = 20)]
    pub tenants: usize,
    /// Known callers seeded in the CRM per tenant.
    #[arg(long, default_value_t = 20)]
    pub known_callers: usize,
    /// Calls arriving per second (constant profile).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Calls in total (constant profile); default: rate × duration.
    #[arg(long)]
    pub calls: Option<u64>,
    /// Seconds of arrivals (constant profile) when --calls is not given.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Burst profile: this many calls arriving evenly within --burst-window-ms.
    #[arg(long)]
    pub burst: Option<u64>,
    #[arg(long, default_value_t = 1000)]
    pub burst_window_ms: u64,
    /// Scheduled time between two steps of a call; 0 = send each step when the previous answer
    /// arrives.
    #[arg(long, default_value_t = 200)]
    pub think_ms: u64,
    /// Idle time after the handshake before the first tool call (holds calls open).
    #[arg(long, default_value_t = 0)]
    pub hold_open_ms: u64,
    /// get_caller_context calls per `warm` flow.
    #[arg(long, default_value_t = 100)]
    pub warm_steps: u32,
    /// Weighted flows: known_context, new_books, known_by_email, reschedule, cancel, hang_up, warm.
    #[arg(long, default_value = "known_context=30,new_books=25,known_by_email=10,reschedule=10,cancel=10,hang_up=15")]
    pub mix: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Per-step timeout (a step past it counts as a failure).
    #[arg(long, default_value_t = 15_000)]
    pub step_timeout_ms: u64,
    /// Loopback source addresses (127.0.0.1..N) for client sockets: more ephemeral ports.
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// Skip the echo floor.
    #[arg(long)]
    pub no_floor: bool,
    /// CRM outage: `START+SECS`, seconds after the first arrival, e.g. `10+60`.
    #[arg(long)]
    pub crm_outage: Option<String>,
    /// Added latency of every CRM (HubSpot emulator) response.
    #[arg(long)]
    pub crm_latency_ms: Option<u64>,
    /// Added latency of every calendar emulator response.
    #[arg(long)]
    pub calendar_latency_ms: Option<u64>,
    /// A 429 storm: the first N CRM responses after the load starts answer 429.
    #[arg(long)]
    pub crm_429: Option<usize>,
    /// TEST ONLY: start the service with its hold ledger bypassed (sandbox only); the overlap
    /// check is then expected to fail.
    #[arg(long)]
    pub unsafe_bypass_hold_ledger: bool,
    /// The service's longest write-back retry backoff (short, so the backlog drains in the run).
    #[arg(long, default_value_t = 5)]
    pub max_backoff_secs: u64,
    /// Each sandbox tenant's CRM rate budget (`[crm] requests_per_10s`, shared by live reads and
    /// the write-back lane); unset, the sandbox is unmetered and the backlog drains at the
    /// machine's pace. Set it (e.g. 100, HubSpot's) to load-test the write-back lane's throttling.
    #[arg(long)]
    pub crm_requests_per_10s: Option<u32>,
    /// How long to wait after the last call for the backlog to drain.
    #[arg(long, default_value_t = 180)]
    pub drain_timeout_secs: u64,
    #[arg(long, default_value_t = 250)]
    pub sample_ms: u64,
    /// Report directory (report.json, report.svg, the server log); default target/loadtest/<time>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// What `run` found; `passed` is false when an invariant failed.
pub struct RunResult {
    pub report: Value,
    pub passed: bool,
}

fn parse_outage(s: &str) -> anyhow::Result<(f64, f64)> {
    let (a, b) = s.split_once('+').context("--crm-outage is START+SECS, e.g. 10+60")?;
    Ok((a.trim().parse()?, b.trim().parse()?))
}

/// Raises RLIMIT_NOFILE to the hard limit (a child service inherits it).
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

pub async fn run(args: RunArgs) -> anyhow::Result<RunResult> {
    if args.tenants == 0 || args.tenants > setup::MAX_TENANTS {
        bail!("--tenants must be 1..={}", setup::MAX_TENANTS);
    }
    if args.known_callers == 0 {
        bail!("--known-callers must be at least 1");
    }
    let outage = args.crm_outage.as_deref().map(parse_outage).transpose()?;
    let nofile = raise_nofile();
    let out = args.out.clone().unwrap_or_else(|| {
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        PathBuf::from(format!("target/loadtest/{ts}"))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let tenants = setup::tenant_specs(args.tenants, args.known_callers);
    let config_dir = tempfile::tempdir()?;
    let knobs = ServerKnobs {
        unsafe_bypass_hold_ledger: args.unsafe_bypass_hold_ledger,
        max_backoff_secs: args.max_backoff_secs,
        max_concurrent_calls: 20_000,
        crm_requests_per_10s: args.crm_requests_per_10s,
    };
    let mut service = match &args.url {
        Some(url) => Service::at(url).await?,
        None => {
            let config = setup::write_config(config_dir.path(), &tenants, &knobs)?;
            let bin = match &args.server_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?,
            };
            Service::spawn(&bin, &config, &out).await?
        }
    };
    let admin = Admin::new(&service.http_url);
    let before = admin.state().await?;
    let hubspot_url = before["emulator_urls"]["hubspot"].as_str().context("admin state without emulator URLs")?;
    let seeded = admin.seed_known_callers(hubspot_url, &tenants).await?;
    let mut faults = json!({});
    if let Some(ms) = args.crm_latency_ms {
        faults["crm_latency_ms"] = json!(ms);
    }
    if let Some(ms) = args.calendar_latency_ms {
        faults["calendar_latency_ms"] = json!(ms);
    }
    let arrivals = match args.burst {
        Some(count) => Arrivals::Burst { count, window: Duration::from_millis(args.burst_window_ms) },
        None => {
            if args.rate <= 0.0 {
                bail!("--rate must be positive");
            }
            Arrivals::Constant { rate: args.rate, count: args.calls.unwrap_or((args.rate * args.duration) as u64) }
        }
    };
    let plan = Arc::new(Plan {
        arrivals,
        hold_open: Duration::from_millis(args.hold_open_ms),
        think: Duration::from_millis(args.think_ms),
        warm_steps: args.warm_steps,
        mix: load::parse_mix(&args.mix)?,
        tenants: tenants.clone(),
        seed: args.seed,
        step_timeout: Duration::from_millis(args.step_timeout_ms),
        source_ips: args.source_ips.max(1),
    });
    let load_avg_start = setup::load_average();
    eprintln!(
        "loadtest: {} calls, {} tenants, {seeded} known callers seeded, server pid {:?}, RLIMIT_NOFILE {nofile}, load average {load_avg_start}",
        arrivals.count(),
        args.tenants,
        service.pid
    );
    let baseline = service.pid.and_then(setup::read_proc);

    // ---- the service phase ----
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    if faults.as_object().is_some_and(|o| !o.is_empty()) {
        admin.faults(faults.clone()).await?;
    }
    if let Some(n) = args.crm_429 {
        admin.faults(json!({"crm_fail_next": {"status": 429, "count": n}})).await?;
    }
    let sampler = spawn_sampler(service.pid, counters.clone(), started, args.sample_ms, args.quiet);
    let outage_task = outage.map(|(at, secs)| {
        let admin = admin.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(at)).await;
            let down = admin.faults(json!({"crm_down": true})).await;
            eprintln!("loadtest: CRM outage starts at {:.1}s ({down:?})", started.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let up = admin.faults(json!({"crm_down": false})).await;
            eprintln!("loadtest: CRM outage ends at {:.1}s ({up:?})", started.elapsed().as_secs_f64());
        })
    });
    let target = Target::Service { ws_url: service.ws_url.clone() };
    let outcome = load::run(plan.clone(), target, counters.clone()).await;
    let load_secs = started.elapsed().as_secs_f64();
    let load_avg_end = setup::load_average();
    if let Some(t) = outage_task {
        // The outage is part of the run: the backlog must drain after it ends.
        t.await?;
    }
    // Drain: every call ended, the outbox empty.
    let drain_started = Instant::now();
    let mut state;
    let drained = loop {
        state = admin.state().await?;
        let pending = state["steps"]["pending"].as_u64().unwrap_or(u64::MAX);
        if pending == 0 && state["open_sessions"].as_u64() == Some(0) {
            break true;
        }
        if drain_started.elapsed() > Duration::from_secs(args.drain_timeout_secs) {
            break false;
        }
        // Another process's outbox: polled, there is no signal to wait on.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let timeline = sampler.stop().await;
    let peak_rss = timeline.iter().map(|s| s.rss_mb).fold(0.0, f64::max);
    let checks = checks::check_all(&state, &outcome.acked_calls, &tenants, drained);

    // ---- the floor ----
    let floor = if args.no_floor {
        None
    } else {
        let traces = Arc::new(outcome.traces.clone());
        let mut echo = EchoProcess::spawn().await?;
        let fcounters = Arc::new(Counters::default());
        let fstarted = Instant::now();
        let fsampler = spawn_sampler(Some(echo.pid), fcounters.clone(), fstarted, args.sample_ms, true);
        let f = load::run(plan.clone(), Target::Echo { addr: echo.addr, traces }, fcounters.clone()).await;
        let ftimeline = fsampler.stop().await;
        echo.stop().await;
        Some((f, fstarted.elapsed().as_secs_f64(), ftimeline, fcounters))
    };

    // A service that does not shut down cleanly is reported, not allowed to lose the report.
    let shutdown = if args.url.is_none() {
        match service.stop().await {
            Ok(()) => "clean".to_owned(),
            Err(e) => format!("{e:#}"),
        }
    } else {
        "not ours".to_owned()
    };

    // ---- the report ----
    let total_requests = counters.requests.load(Ordering::Relaxed);
    let tool_calls: u64 = outcome.latency.iter().filter(|(t, _)| **t != "connect").map(|(_, h)| h.len()).sum();
    let mut tools = json!({});
    let mut names: Vec<&&str> = outcome.latency.keys().collect();
    names.sort();
    for t in names {
        let mut v = report::percentiles(&outcome.latency[*t]);
        if let Some((f, ..)) = &floor
            && let Some(fh) = f.latency.get(*t)
        {
            v["floor"] = report::percentiles(fh);
            for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
                let a = outcome.latency[*t].value_at_quantile(q) as f64;
                let b = fh.value_at_quantile(q).max(1) as f64;
                v[format!("ratio_{name}")] = json!((a / b * 100.0).round() / 100.0);
            }
        }
        tools[*t] = v;
    }
    let warm = report::warm_tools(&outcome.latency);
    let warm_floor = floor.as_ref().and_then(|(f, ..)| report::warm_tools(&f.latency));
    let warm_json = warm.as_ref().map(|w| {
        let mut v = report::percentiles(w);
        if let Some(fw) = &warm_floor {
            v["floor"] = report::percentiles(fw);
            for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
                v[format!("ratio_{name}")] = json!(
                    ((w.value_at_quantile(q) as f64 / fw.value_at_quantile(q).max(1) as f64) * 100.0).round() / 100.0
                );
            }
        }
        v
    });
    let peak_open = counters.peak_open.load(Ordering::Relaxed);
    let baseline_mb = baseline.map(|b| b.rss_kb as f64 / 1024.0);
    // Memory per open call: the RSS at the sample with the most open calls, less the baseline.
    let per_call_kb = baseline_mb.and_then(|base| {
        let s = timeline.iter().max_by_key(|s| s.open_calls)?;
        (s.open_calls > 0).then(|| ((s.rss_mb - base) * 1024.0 / s.open_calls as f64 * 10.0).round() / 10.0)
    });
    let cpu_mean = {
        let busy: Vec<f64> = timeline.iter().filter(|s| s.t_secs <= load_secs).map(|s| s.cpu_pct).collect();
        if busy.is_empty() { 0.0 } else { busy.iter().sum::<f64>() / busy.len() as f64 }
    };
    let passed = checks.iter().all(|c| c.passed);
    let report = json!({
        "args": format!("{args:?}"),
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                    "load_average_start": load_avg_start, "load_average_end": load_avg_end},
        "calls": {"scheduled": arrivals.count(), "started": counters.started.load(Ordering::Relaxed),
                  "failed": counters.failed.load(Ordering::Relaxed),
                  "connect_failures": counters.connect_failures.load(Ordering::Relaxed),
                  "acked_end_calls": outcome.acked_calls.len(), "bookings": outcome.bookings,
                  "peak_open": peak_open, "flows": outcome.flows},
        "failures": outcome.failures,
        "tool_errors": outcome.tool_errors,
        "throughput": {"load_secs": load_secs, "requests": total_requests, "tool_calls": tool_calls,
                       "tool_calls_per_sec": (tool_calls as f64 / load_secs).round()},
        "latency_us": tools,
        "warm_tool_calls_us": warm_json,
        "server": {"pid": service.pid, "baseline_rss_mb": baseline_mb, "peak_rss_mb": peak_rss,
                   "rss_per_open_call_kb": per_call_kb, "mean_cpu_pct_during_load": (cpu_mean * 10.0).round() / 10.0,
                   "shutdown": shutdown},
        "emulator_requests": state["emulator_requests"],
        "drain_secs": drain_secs,
        "floor": floor.as_ref().map(|(f, secs, tl, fc)| json!({
            "load_secs": secs,
            "failed": fc.failed.load(Ordering::Relaxed),
            "failures": f.failures,
            "peak_rss_mb": tl.iter().map(|s| s.rss_mb).fold(0.0, f64::max),
        })),
        "timeline": timeline.iter().map(|s| json!([s.t_secs, s.rss_mb, s.cpu_pct, s.open_calls, s.requests_per_sec])).collect::<Vec<_>>(),
        "timeline_columns": ["t_secs", "rss_mb", "cpu_pct", "open_calls", "requests_per_sec"],
        "invariants": checks.iter().map(|c| json!({"name": c.name, "passed": c.passed, "detail": c.detail})).collect::<Vec<_>>(),
        "passed": passed,
    });
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    report::write_svg(&out.join("report.svg"), &outcome.latency, &timeline)?;

    println!(
        "\n{} calls ({} failed, {} connect failures) in {load_secs:.1}s; {} tool calls ({:.0}/s); peak open calls {peak_open}",
        arrivals.count(),
        counters.failed.load(Ordering::Relaxed),
        counters.connect_failures.load(Ordering::Relaxed),
        tool_calls,
        tool_calls as f64 / load_secs
    );
    if !outcome.failures.is_empty() {
        println!("failures: {:?}", outcome.failures);
    }
    println!(
        "server: baseline RSS {:.1} MB, peak RSS {peak_rss:.1} MB, {} KB per open call, mean CPU {cpu_mean:.0}% during load; load average {load_avg_start} → {load_avg_end}",
        baseline_mb.unwrap_or(0.0),
        per_call_kb.map(|k| k.to_string()).unwrap_or_else(|| "?".into())
    );
    if shutdown != "clean" && shutdown != "not ours" {
        println!("server shutdown: {shutdown}");
    }
    println!("latency from scheduled send time (µs); floor = echo server, same sizes and schedule:");
    report::print_table(&outcome.latency, floor.as_ref().map(|(f, ..)| &f.latency));
    println!("invariants:");
    for c in &checks {
        println!("  [{}] {} {}", if c.passed { "ok" } else { "FAIL" }, c.name, c.detail);
    }
    println!("report: {}/report.json, chart: {}/report.svg", out.display(), out.display());
    drop(config_dir);
    Ok(RunResult { report, passed })
}

struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Samples the server process and the counters every `every_ms`; prints a progress line a second.
fn spawn_sampler(pid: Option<u32>, counters: Arc<Counters>, started: Instant, every_ms: u64, quiet: bool) -> Sampler {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(every_ms.max(10)));
        let mut last = (Instant::now(), pid.and_then(setup::read_proc).map(|p| p.cpu_ticks).unwrap_or(0), 0u64);
        let mut last_print = Instant::now();
        loop {
            tokio::select! {
                _ = &mut rx => break,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let proc_ = pid.and_then(setup::read_proc);
            let ticks = proc_.map(|p| p.cpu_ticks).unwrap_or(last.1);
            let reqs = counters.requests.load(Ordering::Relaxed);
            let dt = now.duration_since(last.0).as_secs_f64().max(1e-6);
            let s = Sample {
                t_secs: started.elapsed().as_secs_f64(),
                rss_mb: proc_.map(|p| p.rss_kb as f64 / 1024.0).unwrap_or(0.0),
                cpu_pct: (ticks.saturating_sub(last.1)) as f64 / setup::CLOCK_TICKS / dt * 100.0,
                open_calls: counters.open.load(Ordering::Relaxed),
                requests_per_sec: (reqs - last.2) as f64 / dt,
            };
            last = (now, ticks, reqs);
            if !quiet && last_print.elapsed() >= Duration::from_secs(1) {
                last_print = now;
                eprintln!(
                    "[{:>6.1}s] started {} open {} finished {} failed {} | {:.0} req/s | server RSS {:.1} MB CPU {:.0}%",
                    s.t_secs,
                    counters.started.load(Ordering::Relaxed),
                    s.open_calls,
                    counters.finished.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                    s.requests_per_sec,
                    s.rss_mb,
                    s.cpu_pct
                );
            }
            out.push(s);
        }
        out
    });
    Sampler { stop: tx, task }
}

/// The echo server as a child process (`loadtest echo-server`).
struct EchoProcess {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    pid: u32,
}

impl EchoProcess {
    async fn spawn() -> anyhow::Result<EchoProcess> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("echo-server")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("echo server pid")?;
        let stdout = child.stdout.take().context("echo server stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("echo server did not start")??
            .context("echo server exited")?;
        let addr = line.strip_prefix("LISTENING ").context("echo server's first line")?.parse()?;
        Ok(EchoProcess { child, addr, pid })
    }

    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}
