//! Several instances on one PostgreSQL store (issue 13). Each test makes its own schema on the
//! machine's server (`callside::store::testing::TestSchema`, started by `.ci/run`) and drops it;
//! a missing server fails the test. Instances started `beside` another share its emulators and
//! its domain clock, as instances of one deployment share the vendors and the time.

use callside::store::Backend;
use callside::store::testing::TestSchema;
use serde_json::json;

use crate::helpers::spawn_instance;

#[tokio::test]
async fn a_service_on_postgresql_takes_a_call_and_writes_it_back() {
    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let app = spawn_instance(&schema.url, None).await;
    assert_eq!(app.core.store.backend(), Backend::Postgres);
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    let mut c = app.connect("pg-call-1", "+14155550134").await;
    c.initialize().await;
    let ctx = c.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "{ctx}");
    let contact = ctx["structuredContent"]["contact"]["id"].as_str().unwrap().to_owned();
    let end = c
        .tool(
            "end_call",
            json!({"summary": "Asked about opening hours.", "disposition": "info", "caller_name": "Ana López"}),
        )
        .await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    assert_eq!(app.wait_for_sync("pg-call-1").await, "synced");
    assert_eq!(app.hubspot.calls_for_contact(&contact).len(), 1, "one call log on the contact");
    let steps = app.core.store.steps_for_call("demo", "pg-call-1").await.unwrap();
    assert!(!steps.is_empty() && steps.iter().all(|s| s.status == "done"), "{steps:?}");
    app.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// Issue 13's race: two instances share one store; 1,000 holds for one staff member's afternoon,
/// at random 5-minute starts, half through each instance, all at once. The shared ledger's
/// exclusion constraint decides: every hold admitted is a row, no two rows overlap, and every
/// refusal is an overlap with an admitted hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_racing_holds_on_two_instances_never_overlap() {
    use callside::booking::ledger::{HoldError, HoldRequest};
    use callside::clock::Clock;
    use callside::connectors::calendar::Interval;
    use jiff::SignedDuration;
    use rand::{Rng, SeedableRng};

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = spawn_instance(&schema.url, None).await;
    let b = spawn_instance(&schema.url, Some(&a)).await;
    let now = a.clock.now();
    let afternoon = now + SignedDuration::from_hours(24);
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let requests: Vec<HoldRequest> = (0..1_000)
        .map(|i| {
            let start = afternoon + SignedDuration::from_mins(5 * rng.random_range(0..96));
            let slot = Interval::new(start, start + SignedDuration::from_mins(30));
            HoldRequest {
                tenant: "demo".into(),
                staff_id: "alex".into(),
                call_id: format!("race-{i}"),
                slot,
                blocked: slot,
                ttl: SignedDuration::from_mins(5),
            }
        })
        .collect();
    let racers = requests.into_iter().enumerate().map(|(i, req)| {
        let core = if i % 2 == 0 { a.core.clone() } else { b.core.clone() };
        tokio::spawn(async move { core.booking.ledger.try_hold(req, now).await })
    });
    let results: Vec<_> = futures::future::join_all(racers).await.into_iter().map(|r| r.unwrap()).collect();
    let held: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for r in &results {
        assert!(matches!(r, Ok(_) | Err(HoldError::Overlap)), "{r:?}");
    }
    assert!(held.len() > 1, "some holds were admitted: {}", held.len());

    let rows = a.core.store.holds_of_staff("demo", "alex").await.unwrap();
    assert_eq!(rows.len(), held.len(), "every admitted hold is a row, and only those");
    for pair in rows.windows(2) {
        assert!(pair[0].blocked_end <= pair[1].blocked_start, "overlapping holds: {pair:?}");
    }
    // Each instance now offers neither its own nor the other's held time.
    let window = Interval::new(afternoon, afternoon + SignedDuration::from_hours(9));
    let seen_by_b = b.core.booking.ledger.busy("demo", "alex", window, now).await.unwrap();
    assert_eq!(seen_by_b.len(), rows.len());

    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// The shared ledger answers like the in-memory one: owner checks, expiry on the domain clock,
/// confirm → a booking that never expires and is not released, transfer to a pending booking,
/// an expired hold's time taken by the next caller on the other instance.
#[tokio::test]
async fn the_shared_ledger_keeps_the_in_memory_ledgers_semantics() {
    use callside::booking::ledger::{HoldError, HoldRequest};
    use callside::clock::Clock;
    use callside::connectors::calendar::Interval;
    use jiff::SignedDuration;

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = spawn_instance(&schema.url, None).await;
    let b = spawn_instance(&schema.url, Some(&a)).await;
    let (la, lb) = (&a.core.booking.ledger, &b.core.booking.ledger);
    let now = a.clock.now();
    let start = now + SignedDuration::from_hours(24);
    let slot = Interval::new(start, start + SignedDuration::from_mins(30));
    let req = |call: &str| HoldRequest {
        tenant: "demo".into(),
        staff_id: "alex".into(),
        call_id: call.into(),
        slot,
        blocked: slot,
        ttl: SignedDuration::from_mins(5),
    };
    let h1 = la.try_hold(req("c1"), now).await.unwrap();
    assert_eq!(lb.try_hold(req("c2"), now).await, Err(HoldError::Overlap));
    assert_eq!(lb.get("demo", h1.id, now).await.unwrap(), h1, "B sees A's hold");
    assert_eq!(lb.release("demo", h1.id, "c2").await, Err(HoldError::NotOwner));
    assert_eq!(lb.get("other", h1.id, now).await, Err(HoldError::NotFound), "tenant-scoped");
    // A foreign calendar event over the slot, seen by B: flagged once, visible to A.
    assert_eq!(lb.flag_overlapping("demo", "alex", slot, now).await, vec![(h1.clone(), false)]);
    assert!(lb.flag_overlapping("demo", "alex", slot, now).await.is_empty(), "flagged once");
    assert!(la.is_flagged("demo", h1.id).await);
    // Expired at exactly expires_at; the next caller on B takes the time.
    let expiry = h1.expires_at;
    assert_eq!(la.get("demo", h1.id, expiry).await, Err(HoldError::Expired));
    assert_eq!(la.confirm("demo", h1.id, "c1", expiry).await, Err(HoldError::Expired));
    let h2 = lb.try_hold(req("c2"), expiry).await.unwrap();
    assert_eq!(la.get("demo", h1.id, expiry).await, Err(HoldError::NotFound), "purged by the insert");
    // Transfer to a pending booking, then confirm: a booking is not released and never expires.
    let later = expiry + SignedDuration::from_hours(1);
    let moved = la.transfer("demo", h2.id, "c2", "pending:k", later, expiry).await.unwrap();
    assert_eq!((moved.call_id.as_str(), moved.expires_at), ("pending:k", later));
    let booked = lb.confirm("demo", h2.id, "pending:k", expiry).await.unwrap();
    assert_eq!(la.release("demo", booked.id, "pending:k").await, Err(HoldError::NotFound));
    let far = later + SignedDuration::from_hours(48);
    assert_eq!(la.busy("demo", "alex", slot, far).await.unwrap(), vec![slot]);
    assert_eq!(la.release_all_for_call("demo", "pending:k").await, 0, "bookings stay");
    assert!(lb.remove_booking("demo", "alex", slot).await);
    assert!(la.busy("demo", "alex", slot, far).await.unwrap().is_empty());
    assert_eq!(la.outstanding_holds().await, 0);

    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}
