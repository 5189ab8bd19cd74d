//! The commit protocol's two races on the Google and Microsoft 365 emulators, through the
//! service: the customer books the same time directly (a) after the hold, before the commit
//! re-reads free/busy, and (b) after our event was created, before the verify. In both cases the
//! service yields and offers alternatives; in (b) it withdraws its own event. The direct booking
//! is made by the commit hook at the exact point, not by timing. (Radicale: `caldav_booking.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use callside::booking::{CommitHook, CommitHookArgs, CommitPoint};
use jiff::Timestamp;
use serde_json::json;

use crate::helpers::{TestApp, demo_tenant, server_file, spawn_app_with};

const ALEX: &str = "alex@demo-salon.example";

#[derive(Clone, Copy, Debug)]
enum Vendor {
    Google,
    Microsoft,
}

fn insert_direct(app: &TestApp, vendor: Vendor, args: &CommitHookArgs) {
    match vendor {
        Vendor::Google => app.google.insert_foreign_event(&args.calendar_id, args.slot.start, args.slot.end, "Direct"),
        Vendor::Microsoft => {
            app.graph.insert_foreign_event(&args.calendar_id, args.slot.start, args.slot.end, "Direct")
        }
    };
}

/// Busy events overlapping `[start, end)` on Alex's calendar: (ours?, still there).
fn at_that_time(app: &TestApp, vendor: Vendor, start: Timestamp, end: Timestamp) -> Vec<bool> {
    match vendor {
        Vendor::Google => app
            .google
            .events(ALEX)
            .into_iter()
            .filter(|e| e.is_busy() && e.start < end && start < e.end)
            .map(|e| e.summary.as_deref() != Some("Direct"))
            .collect(),
        Vendor::Microsoft => app
            .graph
            .events(ALEX)
            .into_iter()
            .filter(|e| !e.is_cancelled && e.start < end && start < e.end)
            .map(|e| !e.foreign)
            .collect(),
    }
}

#[tokio::test]
async fn on_the_emulators_a_direct_booking_during_the_commit_wins() {
    for vendor in [Vendor::Google, Vendor::Microsoft] {
        let mut tenant = demo_tenant();
        if let Vendor::Microsoft = vendor {
            tenant.calendar.vendor = "microsoft".into();
        }
        let app = Arc::new(spawn_app_with(server_file(""), vec![tenant]).await);
        for point in [CommitPoint::BeforeRecheck, CommitPoint::BeforeVerify] {
            let fired = Arc::new(AtomicBool::new(false));
            let (flag, handle) = (fired.clone(), Arc::downgrade(&app));
            let hook: CommitHook = Arc::new(move |args: CommitHookArgs| {
                if args.point == point
                    && !flag.swap(true, Ordering::SeqCst)
                    && let Some(app) = handle.upgrade()
                {
                    insert_direct(&app, vendor, &args);
                }
                Box::pin(async {})
            });
            app.core.booking.set_commit_hook(Some(hook));
            let call = format!("race-{vendor:?}-{point:?}");
            let mut c = app.connect(&call, "+14155550134").await;
            c.initialize().await;
            let slots = c.tool("find_slots", json!({"service": "color"})).await;
            let slot = slots["structuredContent"]["slots"][0].clone();
            let hold = c.tool("hold_slot", json!({"service": "color", "start": slot["start"]})).await;
            let booked = c.tool("book_slot", json!({"hold_id": hold["structuredContent"]["hold_id"]})).await;
            app.core.booking.set_commit_hook(None);
            assert!(fired.load(Ordering::SeqCst), "{vendor:?} {point:?}: the hook ran");
            assert_eq!(booked["structuredContent"]["error"], "slot_taken", "{vendor:?} {point:?}: {booked}");
            let alternatives = booked["structuredContent"]["alternatives"].as_array().unwrap();
            assert!(!alternatives.is_empty(), "{vendor:?} {point:?}: alternatives offered");
            assert!(alternatives.iter().all(|a| a["start"] != slot["start"]), "{vendor:?} {point:?}");
            let start: Timestamp = slot["start"].as_str().unwrap().parse().unwrap();
            let end: Timestamp = slot["end"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                at_that_time(&app, vendor, start, end),
                vec![false],
                "{vendor:?} {point:?}: only the direct one"
            );
            let audit = app.core.store.audit_for_call("demo", &call).await.unwrap();
            let created = audit.iter().any(|(a, _)| a == "calendar.create_event");
            let withdrawn = audit.iter().find(|(a, _)| a == "calendar.withdraw_event");
            match point {
                CommitPoint::BeforeRecheck => assert!(!created && withdrawn.is_none(), "{audit:?}"),
                CommitPoint::BeforeVerify => {
                    assert!(created, "{audit:?}");
                    assert_eq!(withdrawn.expect("withdrawn").1["ok"], true, "{audit:?}");
                }
            }
            c.tool("end_call", json!({"summary": "Lost the race."})).await;
        }
        match Arc::try_unwrap(app) {
            Ok(app) => app.shutdown().await,
            Err(_) => panic!("the hook keeps only a weak handle"),
        }
    }
}
