//! Slot computation and hold-ledger benchmarks (issue 7's targets: slots ≤ 1 ms for a 30-day
//! horizon × 10 staff × 3 services; hold insert/release p99 ≤ 1 ms on one node).
//! Run: `cargo bench --bench booking`; figures go to BENCHMARKS.md. Percentiles (criterion
//! reports means) come from `cargo bench --bench booking_latency`.

use std::hint::black_box;

use callside::schedule;
use criterion::{Criterion, criterion_group, criterion_main};

mod fixture;

fn slots(c: &mut Criterion) {
    let f = fixture::slot_fixture();
    c.bench_function("find_slots: 30 days x 10 staff x 3 services (enumerate + pick 3 each)", |b| {
        b.iter(|| black_box(f.find_slots_all_services()))
    });
    c.bench_function("enumerate_slots (owned): 30 days x 10 staff, one service", |b| {
        b.iter(|| black_box(schedule::enumerate_slots(&f.rules, &f.staff, &f.services[0], &f.busy, f.window, f.now)))
    });
}

fn holds(c: &mut Criterion) {
    let ledger = fixture::held_ledger();
    let now = fixture::hold_now();
    let mut n = 0i64;
    c.bench_function("hold insert + release (1,000 live holds)", |b| {
        b.iter(|| {
            n += 1;
            let hold = ledger.try_hold(fixture::hold_request("s7", "bench", fixture::bench_slot(n)), now).unwrap();
            black_box(ledger.release(fixture::HOLD_TENANT, hold.id, "bench").unwrap());
        })
    });
}

criterion_group!(benches, slots, holds);
criterion_main!(benches);
