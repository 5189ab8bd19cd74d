//! Slot computation and hold-ledger benchmarks (issue 7's targets: slots ≤ 1 ms for a 30-day
//! horizon × 10 staff × 3 services; hold insert/release p99 ≤ 1 ms on one node).
//! Run: `cargo bench --bench booking`; figures go to BENCHMARKS.md.

use std::hint::black_box;

use callside::booking::ledger::{HoldLedger, HoldRequest};
use callside::connectors::calendar::Interval;
use callside::schedule::{
    self, Busy, OpeningHours, ScheduleRules, ServiceType, SlotPreference, StaffMember, WeeklyHours,
};
use criterion::{Criterion, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};

fn t(s: &str) -> jiff::civil::Time {
    s.parse().unwrap()
}

fn fixture() -> (ScheduleRules, Vec<StaffMember>, Vec<ServiceType>, Vec<Busy>, Interval, Timestamp) {
    let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let day = || {
        vec![OpeningHours { open: t("09:00"), close: t("12:00") }, OpeningHours { open: t("13:00"), close: t("18:00") }]
    };
    let staff: Vec<StaffMember> = (0..10)
        .map(|i| StaffMember {
            id: format!("staff-{i}"),
            name: format!("Staff {i}"),
            time_zone: tz.clone(),
            hours: WeeklyHours::new([
                day(),
                day(),
                day(),
                day(),
                day(),
                vec![OpeningHours { open: t("10:00"), close: t("14:00") }],
                vec![],
            ]),
            calendar_ids: vec![format!("staff-{i}@example.com")],
            closed_dates: vec![],
        })
        .collect();
    let services = vec![
        ServiceType {
            id: "consult".into(),
            name: "Consultation".into(),
            duration_minutes: 30,
            buffer_before_minutes: 0,
            buffer_after_minutes: 5,
            synonyms: vec![],
            staff_ids: vec![],
        },
        ServiceType {
            id: "haircut".into(),
            name: "Haircut".into(),
            duration_minutes: 45,
            buffer_before_minutes: 0,
            buffer_after_minutes: 10,
            synonyms: vec![],
            staff_ids: vec![],
        },
        ServiceType {
            id: "color".into(),
            name: "Color".into(),
            duration_minutes: 120,
            buffer_before_minutes: 5,
            buffer_after_minutes: 15,
            synonyms: vec![],
            staff_ids: vec![],
        },
    ];
    let now: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
    // About 40 % of opening hours busy: 300 one-hour appointments spread over staff and days.
    let mut busy = Vec::new();
    for k in 0..300i64 {
        let start =
            now + SignedDuration::from_hours(2 + (k * 7) % (24 * 30)) + SignedDuration::from_mins((k * 15) % 60);
        busy.push(Busy {
            staff_id: format!("staff-{}", k % 10),
            interval: Interval::new(start, start + SignedDuration::from_hours(1)),
        });
    }
    let rules = ScheduleRules { slot_interval_minutes: 15, min_notice_minutes: 60, horizon_days: 30 };
    let window = Interval::new(now, now + SignedDuration::from_hours(24 * 30));
    (rules, staff, services, busy, window, now)
}

fn slots(c: &mut Criterion) {
    let (rules, staff, services, busy, window, now) = fixture();
    let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let pref = SlotPreference { day: None, part_of_day: None, not_before: None };
    c.bench_function("find_slots: 30 days x 10 staff x 3 services (enumerate + pick 3 each)", |b| {
        b.iter(|| {
            for service in &services {
                let refs = schedule::enumerate_slot_refs(&rules, &staff, service, &busy, window, now);
                black_box(schedule::pick_options_from_refs(&refs, 3, &pref, &tz));
            }
        })
    });
    c.bench_function("enumerate_slots (owned): 30 days x 10 staff, one service", |b| {
        b.iter(|| black_box(schedule::enumerate_slots(&rules, &staff, &services[0], &busy, window, now)))
    });
}

fn holds(c: &mut Criterion) {
    let ledger = HoldLedger::new();
    let now: Timestamp = "2026-11-23T13:00:00Z".parse().unwrap();
    // A ledger that already holds 1,000 live holds across 100 staff.
    for i in 0..1000i64 {
        let start = now + SignedDuration::from_mins(30 * (i / 100));
        let slot = Interval::new(start, start + SignedDuration::from_mins(30));
        ledger
            .try_hold(
                HoldRequest {
                    tenant: "t".into(),
                    staff_id: format!("s{}", i % 100),
                    call_id: format!("c{i}"),
                    slot,
                    blocked: slot,
                    ttl: SignedDuration::from_mins(5),
                },
                now,
            )
            .unwrap();
    }
    let mut n = 0i64;
    c.bench_function("hold insert + release (1,000 live holds)", |b| {
        b.iter(|| {
            n += 1;
            let start = now + SignedDuration::from_hours(100 + n % 1000);
            let slot = Interval::new(start, start + SignedDuration::from_mins(30));
            let hold = ledger
                .try_hold(
                    HoldRequest {
                        tenant: "t".into(),
                        staff_id: "s7".into(),
                        call_id: "bench".into(),
                        slot,
                        blocked: slot,
                        ttl: SignedDuration::from_mins(5),
                    },
                    now,
                )
                .unwrap();
            black_box(ledger.release("t", hold.id, "bench").unwrap());
        })
    });
}

criterion_group!(benches, slots, holds);
criterion_main!(benches);
