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
//! 3. Rate budgets: one live request's charge to its account's bucket, in memory (SQLite) and
//!    through the shared `rate_buckets` row (PostgreSQL) — the latency sharing adds per request —
//!    and, for comparison, the same take as a Lua script on the machine's Redis.
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
/// instance) and through the shared `rate_buckets` row (PostgreSQL, every instance), one caller
/// and eight at once on one account (they contend for its row).
async fn rate_take_latency(url: &str, ops: usize) {
    use callside::connectors::rate::{Lane, RateBudgets};
    let clock: callside::clock::SharedClock = Arc::new(callside::clock::SystemClock);
    let store = Store::open(url).await.unwrap();
    for (what, shared) in [("in memory", false), ("PostgreSQL row", true)] {
        let budgets = RateBudgets::new(clock.clone(), 30, 0);
        if shared {
            budgets.share_through(store.clone());
        }
        // A limit no run reaches: every take succeeds, so the figure is the charge alone.
        let meter = budgets.meter("hubspot", "bench", 1_000_000_000);
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
    }
    store.close().await;
}

/// The same take as a Redis Lua script (one `EVALSHA` round trip on a connection of its own per
/// caller), for the comparison ARCHITECTURE.md asks for: the refill + take of `store/rate.rs`
/// for a live request. Spoken in raw RESP over TCP so the bench needs no Redis client crate.
/// Skipped (with a line saying so) when nothing answers at `CALLSIDE_BENCH_REDIS` (default
/// `127.0.0.1:6379`).
async fn redis_take_latency(ops: usize) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    const SCRIPT: &str = "local cap = tonumber(ARGV[1]) local now = tonumber(ARGV[2]) local window = tonumber(ARGV[3]) \
        local b = redis.call('HMGET', KEYS[1], 'level', 'at') \
        local level = tonumber(b[1]) or cap local at = tonumber(b[2]) or now \
        level = math.min(cap, level + math.max(0, now - at) * cap / window) \
        level = math.max(level - 1, -cap) \
        redis.call('HSET', KEYS[1], 'level', level, 'at', math.max(at, now)) \
        return tostring(level)";

    struct Conn(BufReader<TcpStream>);
    impl Conn {
        async fn call(&mut self, args: &[&str]) -> String {
            let mut out = format!("*{}\r\n", args.len());
            for a in args {
                out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            self.0.get_mut().write_all(out.as_bytes()).await.unwrap();
            let mut line = String::new();
            self.0.read_line(&mut line).await.unwrap();
            match line.as_bytes().first() {
                Some(b'$') => {
                    let len: usize = line[1..].trim().parse().unwrap();
                    let mut buf = vec![0; len + 2];
                    self.0.read_exact(&mut buf).await.unwrap();
                    String::from_utf8_lossy(&buf[..len]).into_owned()
                }
                Some(b'+') | Some(b':') => line[1..].trim().to_owned(),
                _ => panic!("redis answered {line:?}"),
            }
        }
    }
    let addr = std::env::var("CALLSIDE_BENCH_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let Ok(stream) = TcpStream::connect(&addr).await else {
        println!("redis: nothing answers at {addr}; comparison skipped");
        return;
    };
    let mut first = Conn(BufReader::new(stream));
    let sha = first.call(&["SCRIPT", "LOAD", SCRIPT]).await;
    let key = format!("callside-bench-{}", std::process::id());
    let mut h = histogram();
    for _ in 0..ops {
        let now = Timestamp::now().as_millisecond().to_string();
        let t = Instant::now();
        let level = first.call(&["EVALSHA", &sha, "1", &key, "1000000000", &now, "10000"]).await;
        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
        assert!(level.parse::<f64>().is_ok(), "{level}");
    }
    report("rate token, Redis EVALSHA (1 caller)", &h);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = Conn(BufReader::new(TcpStream::connect(&addr).await.unwrap()));
        let (sha, key) = (sha.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            for _ in 0..ops / 8 {
                let now = Timestamp::now().as_millisecond().to_string();
                let t = Instant::now();
                let level = c.call(&["EVALSHA", &sha, "1", &key, "1000000000", &now, "10000"]).await;
                h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                assert!(level.parse::<f64>().is_ok(), "{level}");
            }
            h
        }));
    }
    let mut all = histogram();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    report("rate token, Redis EVALSHA (8 callers, one account)", &all);
    first.call(&["DEL", &key]).await;
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
        redis_take_latency(hold_ops as usize).await;
        for claimants in [1, 2] {
            outbox_throughput(&schema.url, steps, claimants).await;
        }
        schema.drop_now().await.unwrap();
    });
}
