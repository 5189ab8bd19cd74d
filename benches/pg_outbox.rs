//! Issue 13's PostgreSQL figures: the shared hold ledger's latency (target: hold p99 ≤ 5 ms), the
//! outbox's claim + record throughput with one and with two instances claiming at once, and what
//! a shared rate budget adds to each vendor request.
//!
//! Run: `CALLSIDE_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench pg_outbox`
//! (each run makes its own schema on that server and drops it). Figures go to BENCHMARKS.md.
//!
//! 1. Holds: `Holds::Shared` (the `holds` table, its exclusion constraint, the per-(tenant, staff)
//!    advisory lock) — insert and release, each timed into an HDR histogram; one caller at a time,
//!    then eight concurrent callers on eight staff members.
//! 2. Outbox: N single-step plans committed, then drained by claimants taking batches of 16 with
//!    `Store::claim_steps` (`FOR UPDATE SKIP LOCKED` + lease) and recording each step done with
//!    `Store::record_attempt` (its own transaction, as the worker does). The vendor request is left
//!    out — a zero-latency vendor — so the figure is what the store lets the outbox do; each
//!    claimant is a `Store` of its own (its own pool, its own instance id), as instances are.
//!
//! 3. Rate budgets: one live request's charge to its account's bucket, in memory (SQLite),
//!    through the shared `rate_buckets` row (PostgreSQL) and through the shared bucket on the
//!    machine's Redis (`RedisBuckets`, `[rate_budgets] url`) — the latency sharing adds per request.
//!
//! Real time on purpose (the system clock); percentiles over many operations, not criterion means.

use std::sync::Arc;
use std::time::Instant;

use callside::booking::holds::Holds;
use callside::booking::ledger::HoldRequest;
use callside::connectors::calendar::Interval;
use callside::store::testing::TestSchema;
use callside::store::{AttemptResult, NewStep, Store};
use hdrhistogram::Histogram;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn report(what: &str, h: &Histogram<u64>) {
    let us = |v: u64| format!("{:.2} ms", v as f64 / 1000.0);
    println!(
        "{what:<56} {:>7} {:>9} {:>9} {:>9} {:>9}",
        h.len(),
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max())
    );
}

fn request(staff: &str, call: &str, n: i64, now: Timestamp) -> HoldRequest {
    // Every hold at its own 30-minute slot of the staff member's future, so none overlaps.
    let start = now + SignedDuration::from_hours(24) + SignedDuration::from_mins(30 * n);
    let slot = Interval::new(start, start + SignedDuration::from_mins(30));
    HoldRequest {
        tenant: "bench".into(),
        staff_id: staff.into(),
        call_id: call.into(),
        slot,
        blocked: slot,
        ttl: SignedDuration::from_mins(5),
    }
}

/// `ops` hold + release pairs on one staff member; returns (insert, release) latencies in µs.
async fn holds(ledger: Arc<Holds>, staff: String, ops: i64) -> (Histogram<u64>, Histogram<u64>) {
    let (mut insert, mut release) = (histogram(), histogram());
    let now = Timestamp::now();
    for n in 0..ops {
        let t = Instant::now();
        let hold = ledger.try_hold(request(&staff, "bench-call", n, now), now).await.unwrap();
        insert.record(t.elapsed().as_micros() as u64).unwrap();
        let t = Instant::now();
        ledger.release("bench", hold.id, "bench-call").await.unwrap();
        release.record(t.elapsed().as_micros() as u64).unwrap();
    }
    (insert, release)
}

async fn hold_latency(url: &str, ops: i64) {
    let store = Store::open(url).await.unwrap();
    let ledger = Arc::new(Holds::for_store(&store));
    // A thousand live holds on the staff members first, as on a busy afternoon.
    let now = Timestamp::now();
    for n in 0..1_000 {
        ledger.try_hold(request(&format!("s{}", n % 8), "standing", 1_000_000 + n, now), now).await.unwrap();
    }
    let (insert, release) = holds(ledger.clone(), "s0".into(), ops).await;
    report("hold insert (PostgreSQL, 1 caller)", &insert);
    report("hold release (PostgreSQL, 1 caller)", &release);
    let tasks: Vec<_> = (0..8).map(|s| tokio::spawn(holds(ledger.clone(), format!("s{s}"), ops / 8))).collect();
    let (mut insert, mut release) = (histogram(), histogram());
    for t in tasks {
        let (i, r) = t.await.unwrap();
        insert.add(i).unwrap();
        release.add(r).unwrap();
    }
    report("hold insert (PostgreSQL, 8 concurrent callers)", &insert);
    report("hold release (PostgreSQL, 8 concurrent callers)", &release);
    store.close().await;
}

async fn outbox_throughput(url: &str, steps: usize, claimants: usize) {
    let store = Store::open(url).await.unwrap();
    let t0 = Timestamp::now();
    assert_drained(&store).await;
    for i in 0..steps {
        let call = format!("ob-{claimants}-{i}");
        store.record_call_start(&call, "bench", None, "+12125550100", t0).await.unwrap();
        let step = NewStep {
            seq: 0,
            kind: "note".into(),
            payload: json!({"body": "x".repeat(200)}),
            depends_on: None,
            idempotency_key: format!("{call}:0"),
        };
        store.close_call_with_plan(&call, "bench", "end_call", &json!({}), &[step], t0).await.unwrap();
    }
    let mut instances = Vec::new();
    for _ in 0..claimants {
        instances.push(Store::open(url).await.unwrap());
    }
    let started = Instant::now();
    let tasks: Vec<_> = instances
        .into_iter()
        .map(|me| {
            tokio::spawn(async move {
                let mut done = 0usize;
                loop {
                    let now = Timestamp::now();
                    let batch = me.claim_steps(now, 16).await.unwrap();
                    if batch.is_empty() {
                        return done;
                    }
                    for step in &batch {
                        let ok = AttemptResult::Done { external_id: Some("1".into()) };
                        assert!(me.record_attempt(step, &ok, "bench", &json!({}), now).await.unwrap());
                        done += 1;
                    }
                }
            })
        })
        .collect();
    let mut per = Vec::new();
    for t in tasks {
        per.push(t.await.unwrap());
    }
    let wall = started.elapsed();
    assert_eq!(per.iter().sum::<usize>(), steps, "every step claimed and recorded exactly once");
    println!(
        "outbox claim + record, {steps} steps, {claimants} claimant(s): {:.0} ms wall, {:.0} steps/s (split {per:?})",
        wall.as_secs_f64() * 1000.0,
        steps as f64 / wall.as_secs_f64()
    );
    store.close().await;
}

/// Leaves nothing pending from an earlier round (each round's steps are its own calls).
async fn assert_drained(store: &Store) {
    assert_eq!(store.pending_step_count().await.unwrap(), 0, "the previous round drained");
}

/// One live request's charge to its account's budget: in this process's memory (SQLite, one
/// instance), through the shared `rate_buckets` row (PostgreSQL, every instance), and through the
/// shared bucket on Redis (`connectors::rate_redis`: one `EVALSHA` of the take script on a
/// multiplexed connection) — one caller, and eight at once on one account (they contend for its
/// row / key). Redis at `CALLSIDE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); when it
/// does not answer, its rows are skipped with a line saying so (a take would fall back to memory).
async fn rate_take_latency(url: &str, ops: usize) {
    use callside::connectors::rate::{Lane, RateBudgets};
    use callside::connectors::rate_redis::RedisBuckets;
    let clock: callside::clock::SharedClock = Arc::new(callside::clock::SystemClock);
    let store = Store::open(url).await.unwrap();
    let redis_url = std::env::var("CALLSIDE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("callside-bench-{}:", std::process::id());
    let redis = RedisBuckets::open(&redis_url, &prefix, std::time::Duration::from_secs(1)).unwrap();
    for what in ["in memory", "PostgreSQL row", "Redis script"] {
        let budgets = RateBudgets::new(clock.clone(), 30, 0);
        match what {
            "PostgreSQL row" => budgets.share_through(store.clone()),
            "Redis script" => budgets.share_through_redis(redis.clone()),
            _ => {}
        }
        // A limit no run reaches: every take succeeds, so the figure is the charge alone.
        let meter = budgets.meter("hubspot", "bench", 1_000_000_000);
        assert!(meter.try_acquire_now(Lane::Live).await);
        if budgets.fallbacks() > 0 {
            println!("{what}: not answering at {}; skipped", callside::store::redact_url(&redis_url));
            continue;
        }
        let mut h = histogram();
        for _ in 0..ops {
            let t = Instant::now();
            assert!(meter.try_acquire_now(Lane::Live).await);
            h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
        }
        report(&format!("rate token, {what} (1 caller)"), &h);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let meter = meter.clone();
                tokio::spawn(async move {
                    let mut h = histogram();
                    for _ in 0..ops / 8 {
                        let t = Instant::now();
                        assert!(meter.try_acquire_now(Lane::Live).await);
                        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                    }
                    h
                })
            })
            .collect();
        let mut all = histogram();
        for t in tasks {
            all.add(t.await.unwrap()).unwrap();
        }
        report(&format!("rate token, {what} (8 callers, one account)"), &all);
        assert_eq!(budgets.fallbacks(), 0, "{what}: every take was served by the shared backend");
    }
    store.close().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs a smoke round.
    let full = std::env::args().any(|a| a == "--bench");
    let (hold_ops, steps) = if full { (4_000, 4_000) } else { (80, 200) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!("load average: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
        println!("{:<56} {:>7} {:>9} {:>9} {:>9} {:>9}", "operation", "ops", "p50", "p99", "p99.9", "max");
        let schema = TestSchema::create().await.expect("PostgreSQL answers at CALLSIDE_TEST_PG_URL");
        hold_latency(&schema.url, hold_ops).await;
        rate_take_latency(&schema.url, hold_ops as usize).await;
        for claimants in [1, 2] {
            outbox_throughput(&schema.url, steps, claimants).await;
        }
        schema.drop_now().await.unwrap();
    });
}
