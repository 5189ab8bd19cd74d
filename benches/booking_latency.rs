//! Per-operation latency distributions for issue 7's targets, which criterion (means only)
//! cannot show: hold insert + release p50/p99/p99.9 on one node, alone and with a second thread
//! hammering the same ledger, and the slot computation's per-call distribution.
//!
//! Run: `cargo bench --bench booking_latency` (prints a table; figures go to BENCHMARKS.md).
//!
//! `--slots N` instead runs the slot computation of `benches/booking.rs` exactly N times and
//! exits: a fixed amount of work for `valgrind --tool=callgrind`, whose instruction counts do not
//! depend on how loaded the machine is (see BENCHMARKS.md for the command).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use callside::booking::ledger::HoldLedger;
use hdrhistogram::Histogram;

mod fixture;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--slots") {
        let n: usize = args.get(i + 1).and_then(|n| n.parse().ok()).expect("--slots N");
        let f = fixture::slot_fixture();
        let offers: usize = (0..n).map(|_| f.find_slots_all_services()).sum();
        println!("{n} runs, {offers} offers");
        return;
    }
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) is a smoke run.
    let full = args.iter().any(|a| a == "--bench");
    let (hold_ops, slot_runs) = if full { (200_000, 1_000) } else { (2_000, 5) };

    println!("load average: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    println!("{:<58} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}", "operation", "ops", "p50", "p90", "p99", "p99.9", "max");

    let ledger = fixture::held_ledger();
    let [insert, release, pair] = holds(&ledger, "s7", hold_ops);
    report("hold insert (1,000 live holds, 1 thread)", &insert);
    report("hold release (1,000 live holds, 1 thread)", &release);
    report("hold insert + release (1,000 live holds, 1 thread)", &pair);

    // A second thread inserting and releasing on another staff member of the same tenant: every
    // operation contends for the ledger's one mutex.
    let ledger = Arc::new(fixture::held_ledger());
    let stop = Arc::new(AtomicBool::new(false));
    let rival = {
        let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let hold = ledger
                    .try_hold(fixture::hold_request("s8", "rival", fixture::bench_slot(n)), fixture::hold_now())
                    .unwrap();
                ledger.release(fixture::HOLD_TENANT, hold.id, "rival").unwrap();
            }
            n
        })
    };
    let [insert, release, pair] = holds(&ledger, "s7", hold_ops);
    stop.store(true, Ordering::Relaxed);
    let rival_ops = rival.join().expect("rival thread");
    report("hold insert (same, 2nd thread contending)", &insert);
    report("hold release (same, 2nd thread contending)", &release);
    report("hold insert + release (same, 2nd thread contending)", &pair);
    println!("(the contending thread did {rival_ops} insert + release pairs meanwhile)");

    let f = fixture::slot_fixture();
    let mut slots = histogram();
    for _ in 0..slot_runs {
        let t0 = Instant::now();
        black_box(f.find_slots_all_services());
        record(&mut slots, t0.elapsed());
    }
    report("find_slots, 3 services x 10 staff x 30 days (per run)", &slots);
}

/// `ops` insert + release pairs on `staff_id` after a warm-up: [insert, release, pair] in ns.
fn holds(ledger: &HoldLedger, staff_id: &str, ops: i64) -> [Histogram<u64>; 3] {
    let now = fixture::hold_now();
    let [mut insert, mut release, mut pair] = [histogram(), histogram(), histogram()];
    let warm_up = ops / 10;
    for n in 0..warm_up + ops {
        let req = fixture::hold_request(staff_id, "bench", fixture::bench_slot(n));
        let t0 = Instant::now();
        let hold = ledger.try_hold(req, now).unwrap();
        let t1 = Instant::now();
        black_box(ledger.release(fixture::HOLD_TENANT, hold.id, "bench").unwrap());
        let t2 = Instant::now();
        if n >= warm_up {
            record(&mut insert, t1 - t0);
            record(&mut release, t2 - t1);
            record(&mut pair, t2 - t0);
        }
    }
    [insert, release, pair]
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 10 s, 3 significant digits.
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds")
}

fn record(h: &mut Histogram<u64>, d: std::time::Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

fn report(name: &str, h: &Histogram<u64>) {
    let us = |ns: u64| format!("{:.2} µs", ns as f64 / 1_000.0);
    println!(
        "{:<58} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        name,
        h.len(),
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.9)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max())
    );
}
