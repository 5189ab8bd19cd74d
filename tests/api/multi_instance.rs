//! Several instances on one PostgreSQL store (issue 13). Each test makes its own schema on the
//! machine's server (`callside::store::testing::TestSchema`, started by `.ci/run`) and drops it;
//! a missing server fails the test. Instances started `beside` another share its emulators and
//! its domain clock, as instances of one deployment share the vendors and the time.

use callside::store::Backend;
use callside::store::testing::TestSchema;
use serde_json::json;

use crate::helpers::{TestApp, demo_tenant, server_file, spawn_instance, spawn_instance_with};

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
    assert_eq!(lb.remove_booking("demo", "alex", slot).await, Ok(true));
    assert!(la.busy("demo", "alex", slot, far).await.unwrap().is_empty());
    assert_eq!(la.outstanding_holds().await.unwrap(), 0);

    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// Waits (on the instance's worker progress, never a sleep) until `done` holds.
macro_rules! wait_on_progress {
    ($app:expr, $what:expr, $done:expr) => {{
        let mut progress = $app.core.worker.progress();
        let wait = async {
            loop {
                if $done {
                    break;
                }
                progress.changed().await.expect("worker alive");
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), wait).await.expect($what);
    }};
}

/// Issue 13's "one instance killed mid-drain → the other finishes its steps with no duplicates".
/// Instance A's worker claims write-back steps and is killed while HubSpot holds its request; B
/// leaves A's claimed steps alone while A's lease runs, then — the clock past the lease — takes
/// them over. Every step ends done, recorded once, and HubSpot holds one contact and one call log
/// per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_steps_are_taken_over_after_its_lease_without_duplicates() {
    use callside::store::LEASE;

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let mut a = spawn_instance(&schema.url, None).await;
    let calls: Vec<(String, String)> =
        (0..6).map(|i| (format!("kill-{i}"), format!("+1415555{:04}", 4200 + i))).collect();
    let mut clients = Vec::new();
    for (id, phone) in &calls {
        // The ring-time read first, so the next requests HubSpot sees are the write-back's.
        let mut c = a.connect(id, phone).await;
        c.initialize().await;
        c.tool("get_caller_context", json!({})).await;
        clients.push(c);
    }
    a.hubspot.set_stalled(true);
    let mut held = a.hubspot.stalled_requests();
    for c in &mut clients {
        let r = c.tool("end_call", json!({"summary": "Asked about prices.", "caller_name": "Rita Ames"})).await;
        assert_eq!(r["structuredContent"]["saved"], true, "{r}");
    }
    tokio::time::timeout(std::time::Duration::from_secs(20), held.wait_for(|n| *n >= 1))
        .await
        .expect("A's worker reaches HubSpot")
        .unwrap();
    let a_id = a.core.store.instance_id().to_owned();
    let store = a.core.store.clone();
    let mut leased_by_a = Vec::new();
    for (id, _) in &calls {
        for step in store.steps_for_call("demo", id).await.unwrap() {
            if store.step_lease(step.id).await.unwrap().unwrap().owner.as_deref() == Some(a_id.as_str()) {
                leased_by_a.push(step.id);
            }
        }
    }
    assert!(!leased_by_a.is_empty(), "A holds the step it is applying");

    a.kill().await;
    a.hubspot.set_stalled(false);
    let b = spawn_instance(&schema.url, Some(&a)).await;
    assert_ne!(b.core.store.instance_id(), a_id);
    // B applies what A had not claimed; A's claimed steps (and what depends on them) wait.
    let settled = || async {
        for (id, _) in &calls {
            let steps = store.steps_for_call("demo", id).await.unwrap();
            let blocked = leased_by_a.contains(&steps[0].id);
            if !blocked && steps.iter().any(|s| s.status != "done") {
                return false;
            }
        }
        true
    };
    wait_on_progress!(b, "B drained the steps A had not claimed", settled().await);
    for id in &leased_by_a {
        let lease = store.step_lease(*id).await.unwrap().unwrap();
        assert_eq!(lease.owner.as_deref(), Some(a_id.as_str()), "not taken over while A's lease runs");
        let sched = store.step_schedule(*id).await.unwrap().unwrap();
        assert_eq!((sched.status.as_str(), sched.attempts), ("pending", 0), "A recorded nothing");
    }

    // Past A's lease, B's worker (asleep until the lease's end) takes A's steps over.
    a.clock.advance(LEASE);
    for (id, phone) in &calls {
        assert_eq!(b.wait_for_sync(id).await, "synced", "{id}");
        let steps = store.steps_for_call("demo", id).await.unwrap();
        assert!(steps.iter().all(|s| s.status == "done" && s.attempts == 1), "{id}: {steps:?}");
        let contacts: Vec<_> = b.hubspot.contacts().into_iter().filter(|c| c.prop("phone") == Some(phone)).collect();
        assert_eq!(contacts.len(), 1, "{id}: one contact, no duplicate");
        assert_eq!(b.hubspot.calls_for_contact(&contacts[0].id).len(), 1, "{id}: one call log, no duplicate");
    }
    assert!(store.next_due_at().await.unwrap().is_none(), "nothing left in the outbox");
    b.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// Waits until the call is synced, woken by either instance's worker (either may claim its steps).
async fn synced_on_either(a: &crate::helpers::TestApp, b: &crate::helpers::TestApp, call_id: &str) {
    let (mut pa, mut pb) = (a.core.worker.progress(), b.core.worker.progress());
    let synced = async {
        loop {
            let call = a.core.store.call("demo", call_id).await.unwrap().unwrap();
            if call.sync_status == "synced" {
                return;
            }
            tokio::select! {
                r = pa.changed() => r.expect("A's worker alive"),
                r = pb.changed() => r.expect("B's worker alive"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), synced).await.expect("the call is written back");
}

/// Recovery on a shared store closes only the calls of instances that stopped beating: a crashed
/// instance's open call is closed as disconnected and written back by whichever instance claims
/// the crashed one first — the one that starts, or A's takeover pass on its heartbeat — while a
/// live instance's call stays open and ends normally through its own instance.
#[tokio::test]
async fn a_starting_instance_recovers_only_the_calls_of_instances_that_stopped_beating() {
    use callside::clock::Clock;
    use callside::store::INSTANCE_DEAD_AFTER;
    use jiff::SignedDuration;

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = spawn_instance(&schema.url, None).await;
    let mut live = a.connect("live-call", "+14155550134").await;
    live.initialize().await;
    live.tool("get_caller_context", json!({})).await;
    // A crashed instance's leftovers: its last heartbeat now, a call it never closed.
    let crashed = a.core.store.as_instance("crashed-instance");
    let t0 = a.clock.now();
    crashed.heartbeat(t0).await.unwrap();
    assert!(crashed.record_call_start("orphan-call", "demo", Some("+14155550177"), "+12125550100", t0).await.unwrap());
    // Past the dead-instance timeout; A, alive, beats on the clock meanwhile.
    let mut beats = a.core.store.heartbeats();
    beats.borrow_and_update();
    a.clock.advance(INSTANCE_DEAD_AFTER + SignedDuration::from_secs(1));
    tokio::time::timeout(std::time::Duration::from_secs(20), beats.changed())
        .await
        .expect("A beats after the clock moved")
        .unwrap();

    let b = spawn_instance(&schema.url, Some(&a)).await;
    synced_on_either(&a, &b, "orphan-call").await;
    let orphan = b.core.store.call("demo", "orphan-call").await.unwrap().unwrap();
    assert_eq!(orphan.end_reason.as_deref(), Some("disconnected"));
    assert_eq!(orphan.outcome.as_ref().unwrap()["recovered"], true);
    let still = b.core.store.call("demo", "live-call").await.unwrap().unwrap();
    assert_eq!(still.ended_at, None, "A's live call is A's, not recovered");

    let end = live.tool("end_call", json!({"summary": "Booked nothing.", "caller_name": "Ana López"})).await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    synced_on_either(&a, &b, "live-call").await;
    let ended = a.core.store.call("demo", "live-call").await.unwrap().unwrap();
    assert_eq!(ended.end_reason.as_deref(), Some("end_call"));
    assert!(ended.outcome.as_ref().unwrap().get("recovered").is_none());

    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// Steps the shared clock one heartbeat at a time, `beats` times, waiting after each step for
/// every instance given to record its beat (its heartbeat task wakes on the clock), so no live
/// instance's heartbeat ever looks older than one beat to another. `between` runs after each
/// step, before the wait (the step's number, from 1).
async fn step_beats<F: AsyncFnMut(u32)>(apps: &[&crate::helpers::TestApp], beats: u32, mut between: F) {
    use callside::store::HEARTBEAT_EVERY;
    let mut watches: Vec<_> = apps.iter().map(|a| a.core.store.heartbeats()).collect();
    for step in 1..=beats {
        for w in &mut watches {
            w.borrow_and_update();
        }
        apps[0].clock.advance(HEARTBEAT_EVERY);
        between(step).await;
        for w in &mut watches {
            tokio::time::timeout(std::time::Duration::from_secs(20), w.changed())
                .await
                .expect("the instance beats after the clock moved")
                .unwrap();
        }
    }
}

/// Waits until the instance has finished `passes` takeover passes (its progress signal).
async fn takeover_passes(app: &crate::helpers::TestApp, passes: u64) -> callside::instance::Takeovers {
    let mut progress = app.core.takeovers.subscribe();
    let done = tokio::time::timeout(std::time::Duration::from_secs(20), progress.wait_for(|t| t.passes >= passes))
        .await
        .expect("the takeover pass ran")
        .unwrap();
    *done
}

/// Issue 13: live instances take over a dead instance's open calls without waiting for an
/// instance to start. Two live instances run their takeover passes at the same beats; the dead
/// instance is claimed by exactly one, which closes each of its open calls as disconnected with
/// one plan, written back once; its `instances` row is pruned. A slow instance — beating every
/// 50 s, inside the 60 s window — keeps its row and its open call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_instances_take_over_a_dead_instances_calls_exactly_once_but_not_a_slow_ones() {
    use callside::clock::Clock;
    use callside::store::{HEARTBEAT_EVERY, INSTANCE_DEAD_AFTER, TAKEOVER_EVERY};

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = spawn_instance(&schema.url, None).await;
    let b = spawn_instance(&schema.url, Some(&a)).await;
    let store = a.core.store.clone();
    let t0 = a.clock.now();
    // A dead instance's leftovers (after A and B started, so no start-up recovery saw them): its
    // last beat now, three calls it never closed, one of them with no caller id.
    let dead = store.as_instance("dead-instance");
    dead.heartbeat(t0).await.unwrap();
    let orphans = [("dead-1", Some("+14155550181")), ("dead-2", Some("+14155550182")), ("dead-3", None)];
    for (id, caller) in orphans {
        assert!(dead.record_call_start(id, "demo", caller, "+12125550100", t0).await.unwrap());
    }
    let slow = store.as_instance("slow-instance");
    slow.heartbeat(t0).await.unwrap();
    assert!(slow.record_call_start("slow-1", "demo", Some("+14155550183"), "+12125550100", t0).await.unwrap());

    // Six beats: passes at +30 s (nothing dead yet) and +60 s (the dead instance's last beat is
    // INSTANCE_DEAD_AFTER old). The slow instance beats once, at +50 s.
    let beats = (INSTANCE_DEAD_AFTER.as_secs() / HEARTBEAT_EVERY.as_secs()) as u32;
    let passes = (INSTANCE_DEAD_AFTER.as_secs() / TAKEOVER_EVERY.as_secs()) as u64;
    step_beats(&[&a, &b], beats, async |step| {
        if step == 5 {
            slow.heartbeat(a.clock.now()).await.unwrap();
        }
    })
    .await;
    let (by_a, by_b) = (takeover_passes(&a, passes).await, takeover_passes(&b, passes).await);
    assert_eq!(by_a.instances + by_b.instances, 1, "claimed once: {by_a:?} {by_b:?}");
    assert_eq!(by_a.calls + by_b.calls, 3, "each open call recovered once: {by_a:?} {by_b:?}");
    assert!(by_a.calls == 0 || by_b.calls == 0, "all by the one claimant: {by_a:?} {by_b:?}");

    for (id, caller) in orphans {
        let call = store.call("demo", id).await.unwrap().unwrap();
        assert_eq!(call.end_reason.as_deref(), Some("disconnected"), "{id}");
        assert_eq!(call.outcome.as_ref().unwrap()["recovered"], true, "{id}");
        let steps = store.steps_for_call("demo", id).await.unwrap();
        let seqs: Vec<i64> = steps.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (0..steps.len() as i64).collect::<Vec<_>>(), "{id}: one plan, no step twice");
        assert_eq!(steps.is_empty(), caller.is_none(), "{id}: a plan when the caller is known");
        if let Some(phone) = caller {
            synced_on_either(&a, &b, id).await;
            let contacts: Vec<_> =
                a.hubspot.contacts().into_iter().filter(|c| c.prop("phone") == Some(phone)).collect();
            assert_eq!(contacts.len(), 1, "{id}: one contact");
            assert_eq!(a.hubspot.calls_for_contact(&contacts[0].id).len(), 1, "{id}: one call log");
        }
    }
    let rows: Vec<String> = store.instances().await.unwrap().into_iter().map(|r| r.id).collect();
    assert!(!rows.iter().any(|r| r == "dead-instance"), "the dead row is pruned: {rows:?}");
    for live in [a.core.store.instance_id(), b.core.store.instance_id(), "slow-instance"] {
        assert!(rows.iter().any(|r| r == live), "{live} keeps its row: {rows:?}");
    }
    assert_eq!(rows.len(), 3, "{rows:?}");
    let slow_call = store.call("demo", "slow-1").await.unwrap().unwrap();
    assert_eq!(slow_call.ended_at, None, "a slow instance's call is its own");

    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// Issue 13: a draining instance (graceful shutdown, its call still live within the grace
/// period) keeps beating until its outbox is flushed, so the other instance's takeover passes
/// leave it alone however long the drain lasts on the domain clock; its call ends through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_that_still_beats_is_not_taken_over() {
    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let mut server = server_file("");
    // Real time, and far more than the test takes: the call stays live through the drain.
    server.server.shutdown_grace_secs = 600;
    let mut a = spawn_instance_with(&schema.url, None, server, demo_tenant()).await;
    let b = spawn_instance(&schema.url, Some(&a)).await;
    let mut call = a.connect("draining-call", ANA).await;
    call.initialize().await;
    call.tool("get_caller_context", json!({})).await;
    let a_id = a.core.store.instance_id().to_owned();
    let (a_core, store) = (a.core.clone(), b.core.store.clone());

    let draining = a.begin_shutdown();
    // Seven beats: B's passes at +30 s and +60 s, A past INSTANCE_DEAD_AFTER since it started.
    let beats_a = a_core.store.heartbeats();
    let watched = [&a, &b];
    step_beats(&watched, 7, async |_| {}).await;
    let by_b = takeover_passes(&b, 2).await;
    assert_eq!((by_b.instances, by_b.calls), (0, 0), "{by_b:?}");
    assert!(*beats_a.borrow() >= 8, "A beat at start and at every step while draining");
    let open = store.call("demo", "draining-call").await.unwrap().unwrap();
    assert_eq!(open.ended_at, None, "A's call is A's while A beats");
    assert!(store.instances().await.unwrap().iter().any(|r| r.id == a_id), "A keeps its row");

    // The caller finishes on A, which then completes its shutdown.
    let end = call.tool("end_call", json!({"summary": "Asked about prices.", "caller_name": "Ana López"})).await;
    assert_eq!(end["structuredContent"]["saved"], true, "{end}");
    drop(call);
    draining.await.unwrap().unwrap();
    let ended = store.call("demo", "draining-call").await.unwrap().unwrap();
    assert_eq!(ended.end_reason.as_deref(), Some("end_call"));
    assert!(ended.outcome.as_ref().unwrap().get("recovered").is_none(), "{:?}", ended.outcome);

    b.shutdown().await;
    schema.drop_now().await.unwrap();
}

const PORTAL: u64 = 62_515_001;
const SECRET_ENV: &str = "CALLSIDE_TEST_HUBSPOT_APP_SECRET";
const ANA: &str = "+14155550134";

/// An instance whose demo tenant names the HubSpot portal and which accepts the HubSpot app's
/// webhooks. The first one started (no `beside`) owns the emulators, so the emulator's app
/// delivers its webhooks to that one only.
async fn instance_with_webhooks(url: &str, beside: Option<&TestApp>) -> TestApp {
    let server = server_file(&format!(
        "[inbound.hubspot]\nclient_secret_env = \"{SECRET_ENV}\"\napp_id = \"{}\"\n",
        callside::sandbox::hubspot::SANDBOX_APP_ID
    ));
    let mut tenant = demo_tenant();
    tenant.crm.portal_id = Some(PORTAL);
    spawn_instance_with(url, beside, server, tenant).await
}

/// Waits until the instance's invalidation listener has done what `done` asks — on its
/// progress signal, never by sleeping.
async fn bus_reaches(app: &TestApp, what: &str, done: impl Fn(&callside::invalidation::BusProgress) -> bool) {
    let mut progress = app.core.bus.progress();
    let wait = async {
        loop {
            if done(&progress.borrow_and_update()) {
                return;
            }
            progress.changed().await.expect("the listener's progress is kept");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), wait).await.unwrap_or_else(|_| {
        panic!("the invalidation listener never reached: {what}; {:?}", *app.core.bus.progress().borrow())
    });
}

/// Issue 13, item 5: a rep's edit in HubSpot reaches instance A as a signed webhook; instance
/// B, which holds the caller's live call and cached context, learns it over LISTEN/NOTIFY —
/// its cache is dropped, the call re-reads and gets the fresh context pushed, and the AI's next
/// read there shows the edit. A skips its own message.
#[tokio::test]
async fn a_webhook_landing_on_one_instance_refreshes_the_live_call_and_cache_on_another() {
    use callside::sandbox::hubspot::ObjectType;

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = instance_with_webhooks(&schema.url, None).await;
    let b = instance_with_webhooks(&schema.url, Some(&a)).await;
    let ana = a.hubspot.contacts().into_iter().find(|c| c.prop("firstname") == Some("Ana")).expect("demo seed");
    let ana = ana.prop("hs_object_id").expect("id").to_owned();

    let mut call = b.connect("b-live", ANA).await;
    call.initialize().await;
    let before = call.tool("get_caller_context", json!({})).await;
    assert_eq!(before["structuredContent"]["contact"]["first_name"], "Ana", "{before}");
    assert!(b.core.context.is_cached("demo", ANA));
    assert!(!a.core.context.is_cached("demo", ANA), "A holds nothing of Ana: only the bus can tell B");

    // The emulator's app signs and POSTs the webhook to A (the instance that owns it).
    a.hubspot.rep_edit(ObjectType::Contacts, &ana, "firstname", "Anita", "77");
    let note = call.next_notification("notifications/callside/context_changed").await;
    assert_eq!(note["params"]["call_id"], "b-live");
    assert_eq!(note["params"]["context"]["contact"]["first_name"], "Anita", "{note}");
    bus_reaches(&b, "the CRM change applied", |p| p.crm >= 1).await;
    let after = call.tool("get_caller_context", json!({})).await;
    assert_eq!(after["structuredContent"]["contact"]["first_name"], "Anita", "{after}");

    // The webhook landed on A alone; A skipped its own message and applied none.
    assert_eq!(a.core.metrics.inbound_request_count("hubspot", "accepted"), 1);
    assert_eq!(b.core.metrics.inbound_request_count("hubspot", "accepted"), 0);
    bus_reaches(&a, "its own message skipped", |p| p.own >= 1).await;
    let on_a = a.core.bus.progress().borrow().clone();
    assert_eq!((on_a.crm, on_a.callers, on_a.bookings), (0, 0, 0), "{on_a:?}");

    drop(call);
    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// Issue 13, item 5: B answers a caller's upcoming bookings from memory; a booking made through
/// A (the shared bookings table) reaches B's next read because A's write is published.
#[tokio::test]
async fn a_booking_written_by_one_instance_invalidates_the_others_cached_upcoming_bookings() {
    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = spawn_instance(&schema.url, None).await;
    let b = spawn_instance(&schema.url, Some(&a)).await;

    let mut on_b = b.connect("b-appointments", ANA).await;
    on_b.initialize().await;
    let none = on_b.tool("find_appointments", json!({})).await;
    assert_eq!(none["structuredContent"]["appointments"], json!([]), "{none}");

    // The same caller books on another call, through A.
    let mut on_a = a.connect("a-books", ANA).await;
    on_a.initialize().await;
    let slots = on_a.tool("find_slots", json!({"service": "color"})).await;
    let first = slots["structuredContent"]["slots"][0].clone();
    let hold = on_a.tool("hold_slot", json!({"service": "color", "start": first["start"]})).await;
    assert_eq!(hold["isError"], false, "{hold}");
    let booked = on_a.tool("book_slot", json!({"hold_id": hold["structuredContent"]["hold_id"]})).await;
    assert_eq!(booked["structuredContent"]["booked"], true, "{booked}");
    let event_id = booked["structuredContent"]["event_id"].clone();

    bus_reaches(&b, "A's bookings write applied", |p| p.bookings >= 1).await;
    let found = on_b.tool("find_appointments", json!({})).await;
    let list = found["structuredContent"]["appointments"].as_array().expect("a list").clone();
    assert_eq!(list.len(), 1, "{found}");
    assert_eq!(list[0]["appointment_id"], event_id);
    // B also dropped the staff member's busy time A's booking changed.
    assert!(b.core.bus.progress().borrow().staff_busy >= 1);

    drop((on_a, on_b));
    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// A listener whose connection is cut (the server ends its backend) opens a new one and drops
/// every cache, since what was published meanwhile is lost; it then receives again.
#[tokio::test]
async fn a_listener_that_loses_its_connection_reconnects_and_drops_every_cache() {
    use callside::clock::Clock;
    use sqlx::Connection;

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = spawn_instance(&schema.url, None).await;
    let b = spawn_instance(&schema.url, Some(&a)).await;
    let mut call = b.connect("b-cached", ANA).await;
    call.initialize().await;
    call.tool("get_caller_context", json!({})).await;
    assert!(b.core.context.is_cached("demo", ANA));

    bus_reaches(&b, "listening", |p| p.listener_pid != 0).await;
    let pid = b.core.bus.progress().borrow().listener_pid;
    let mut admin = sqlx::PgConnection::connect(&schema.url).await.unwrap();
    let ended: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&mut admin).await.unwrap();
    assert!(ended, "the listener's backend was ended");
    bus_reaches(&b, "reconnected", |p| p.reconnects == 1).await;
    assert_ne!(b.core.bus.progress().borrow().listener_pid, pid, "a new connection");
    assert!(!b.core.context.is_cached("demo", ANA), "every cached context was dropped");

    // The new connection listens: A's next bookings write reaches B.
    let booking = callside::store::BookingRow {
        idempotency_key: "k-after-gap".into(),
        tenant: "demo".into(),
        call_id: "a-direct".into(),
        staff_id: "alex".into(),
        calendar_id: "alex@demo-salon.example".into(),
        event_id: "e-after-gap".into(),
        service_id: "color".into(),
        start_at: 0,
        end_at: 0,
        status: "confirmed".into(),
        caller_phone: None,
        caller_email: None,
    };
    a.core.store.insert_booking(&booking, a.clock.now()).await.unwrap();
    bus_reaches(&b, "A's write after the gap", |p| p.bookings >= 1).await;

    admin.close().await.unwrap();
    drop(call);
    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}
