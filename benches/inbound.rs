//! Inbound calendar sync latency (issue 12). Run: `cargo bench --bench inbound`; figures go to
//! BENCHMARKS.md.
//!
//! The whole service with `[inbound.calendar]` against the in-process Google Calendar emulator:
//! an event is put straight into a staff calendar (as the business would), the emulator pushes
//! its notification to the service, which lists the change with its sync token and drops the
//! staff member's cached busy time. Measured: from the event's insertion to the sync's progress
//! signal saying the foreign change was applied (the cache is dropped before that signal).
//!
//! Not a criterion bench: percentiles over a paced workload are the figure. Real time on
//! purpose (the system clock; the 30 s poll never fires inside a run of a few seconds).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callside::app::Application;
use callside::clock::SystemClock;
use callside::config::{Config, Overrides, ServerFile, TenantFile};

const EVENTS: usize = 300;
const ALEX: &str = "alex@demo-salon.example";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tenant: TenantFile =
        toml::from_str(&std::fs::read_to_string(repo.join("config/tenants/demo.toml")).unwrap()).unwrap();
    let server: ServerFile = toml::from_str(
        "[server]\nsandbox = true\nshutdown_grace_secs = 1\n[identity]\npull_interval_secs = 0\n[inbound.calendar]\npoll_interval_secs = 30\n",
    )
    .unwrap();
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
    let core = app.core();
    let google = app.sandbox().unwrap().google.state.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let mut progress = core.calendar_sync.progress();
    progress.wait_for(|p| p.started).await.unwrap();

    let base = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let mut latencies = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let before = progress.borrow().foreign_changes;
        let start = base + jiff::SignedDuration::from_mins(30 * i as i64);
        let t0 = Instant::now();
        google.insert_foreign_event(ALEX, start, start + jiff::SignedDuration::from_mins(30), "Walk-in");
        progress.wait_for(|p| p.foreign_changes > before).await.unwrap();
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "calendar notification -> busy cache dropped, {EVENTS} events one at a time: p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
    );
    let _ = stop.send(());
    let _ = server.await;
}
