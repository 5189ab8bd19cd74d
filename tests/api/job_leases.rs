//! Cluster-wide periodic jobs on several instances (issue 13, `callside::leader`): two instances
//! on one PostgreSQL store run each singleton job once, not once each; when the leader is killed,
//! the other takes the job over once the lease's TTL has passed on the shared manual clock. Every
//! wait is on a signal (the jobs' pass decisions, the identity rounds, calendar sync progress).

use std::time::Duration;

use callside::leader::{Job, JobPasses};
use callside::sandbox::hubspot::RouteKind;
use callside::store::testing::TestSchema;
use jiff::SignedDuration;

use crate::helpers::{
    TestApp, demo_tenant, post_push, push_headers, server_file, spawn_instance_configured, spawn_instance_with,
};

const PULL_EVERY: SignedDuration = SignedDuration::from_secs(60);
/// The HubSpot searches of one incremental identity round: the changed contacts and the
/// survivors of merges (`hs_merged_object_ids`); archived contacts are listed, not searched.
const SEARCHES_PER_ROUND: u64 = 2;

async fn instance(url: &str, beside: Option<&TestApp>, extra: &str) -> TestApp {
    spawn_instance_with(url, beside, server_file(extra), demo_tenant()).await
}

/// Waits until the instance's job decisions satisfy `done`; returns them.
async fn passes(app: &TestApp, what: &str, done: impl Fn(&JobPasses) -> bool) -> JobPasses {
    let mut rx = app.core.jobs.passes();
    let seen = match tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|p| done(p))).await {
        Ok(seen) => seen.expect("jobs alive"),
        Err(_) => {
            panic!("{what}: {:?} at {}", *app.core.jobs.passes().borrow(), callside::clock::Clock::now(&app.clock))
        }
    };
    seen.clone()
}

async fn rounds(app: &mut TestApp, at_least: u64) {
    tokio::time::timeout(Duration::from_secs(20), app.identity_rounds.wait_for(|n| *n >= at_least))
        .await
        .expect("an identity round finished")
        .expect("identity pull alive");
}

/// The identity pull of two instances: one search of the CRM per round between them, the
/// follower's passes skipped (and exported); A killed, B keeps skipping until A's lease has run
/// out on the clock, then pulls — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_pull_the_crm_once_per_round_and_the_survivor_takes_over_after_the_ttl() {
    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let extra = "[identity]\npull_interval_secs = 60\n";
    let mut a = instance(&schema.url, None, extra).await;
    rounds(&mut a, 1).await;
    let mut b = instance(&schema.url, Some(&a), extra).await;
    passes(&b, "B decided its first pass", |p| p.skipped(Job::IdentityPull) >= 1).await;
    let lease = a.core.store.job_lease("identity_pull").await.unwrap().unwrap();
    assert_eq!(lease.holder, a.core.store.instance_id(), "A leads");

    // One round: both instances wake; A pulls, B skips.
    a.hubspot.reset_request_log();
    a.clock.advance(PULL_EVERY);
    rounds(&mut a, 2).await;
    passes(&b, "B decided its second pass", |p| p.skipped(Job::IdentityPull) >= 2).await;
    assert_eq!(a.hubspot.request_count(RouteKind::Search), SEARCHES_PER_ROUND, "one round's searches, not two rounds'");
    assert_eq!(*b.identity_rounds.borrow(), 0, "B never pulled");
    let metrics = b.core.metrics.render();
    assert!(metrics.contains("callside_job_leader{job=\"identity_pull\"} 0"), "{metrics}");
    assert!(metrics.contains("callside_job_passes_skipped_total{job=\"identity_pull\"} 2"), "{metrics}");
    assert!(a.core.metrics.render().contains("callside_job_leader{job=\"identity_pull\"} 1"));

    // A dies without releasing its lease: B takes the job only once the lease has run out.
    let expires = a.core.store.job_lease("identity_pull").await.unwrap().unwrap().expires_at;
    a.kill().await;
    a.hubspot.reset_request_log();
    loop {
        let decided = |p: &JobPasses| p.led(Job::IdentityPull) + p.skipped(Job::IdentityPull);
        let before = decided(&b.core.jobs.passes().borrow());
        a.clock.advance(PULL_EVERY);
        let seen = passes(&b, "B passes every interval", |p| decided(p) > before).await;
        let now = callside::clock::Clock::now(&a.clock);
        if now < expires {
            assert_eq!(seen.led(Job::IdentityPull), 0, "A's lease still runs at {now}");
            continue;
        }
        assert_eq!(seen.led(Job::IdentityPull), 1, "taken over at the first pass past {expires}");
        break;
    }
    rounds(&mut b, 1).await;
    assert_eq!(b.hubspot.request_count(RouteKind::Search), SEARCHES_PER_ROUND, "the survivor pulls, once");
    assert_eq!(b.core.store.job_lease("identity_pull").await.unwrap().unwrap().holder, b.core.store.instance_id());
    assert!(b.core.metrics.render().contains("callside_job_leader{job=\"identity_pull\"} 1"));

    // A graceful stop hands the lease back at once.
    b.shutdown().await;
    let store = callside::store::Store::open(&schema.url).await.unwrap();
    assert_eq!(store.job_lease("identity_pull").await.unwrap(), None, "released at shutdown");
    store.close().await;
    schema.drop_now().await.unwrap();
}

/// Calendar sync of two instances: one Google push channel per calendar, not two; B opens its
/// own only after A is killed and A's lease has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_open_one_google_push_channel_and_the_survivor_subscribes_after_the_ttl() {
    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let extra = "[inbound.calendar]\npoll_interval_secs = 30\n";
    let mut a = instance(&schema.url, None, extra).await;
    let mut started = a.core.calendar_sync.progress();
    tokio::time::timeout(Duration::from_secs(20), started.wait_for(|p| p.started)).await.unwrap().unwrap();
    let channels = a.google.channels();
    assert!(!channels.is_empty(), "A subscribed the demo calendars");
    let b = instance(&schema.url, Some(&a), extra).await;
    passes(&b, "B decided its first pass", |p| p.skipped(Job::CalendarSync) >= 1).await;
    assert_eq!(a.google.channels().len(), channels.len(), "B opened no channel of its own");
    assert!(!b.core.calendar_sync.progress().borrow().started, "B neither synced nor subscribed");

    let expires = a.core.store.job_lease("calendar_sync").await.unwrap().unwrap().expires_at;
    a.kill().await;
    let recheck = callside::leader::RECHECK_EVERY;
    loop {
        let before = b.core.jobs.passes().borrow().skipped(Job::CalendarSync);
        let now = callside::clock::Clock::now(&a.clock);
        a.clock.advance(recheck);
        if now + recheck >= expires {
            break;
        }
        passes(&b, "B rechecks", |p| p.skipped(Job::CalendarSync) > before).await;
    }
    let mut started = b.core.calendar_sync.progress();
    tokio::time::timeout(Duration::from_secs(20), started.wait_for(|p| p.started)).await.unwrap().unwrap();
    assert_eq!(b.core.jobs.passes().borrow().led(Job::CalendarSync), 1);
    let after = a.google.channels();
    let mine: Vec<_> = after.iter().filter(|c| !channels.iter().any(|o| o.id == c.id)).collect();
    assert_eq!(mine.len(), channels.len(), "B opened one channel per calendar: {after:?}");
    b.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// Alerts of two instances: an incident (failed write-back attempts in the shared audit trail,
/// whichever instance's worker recorded them) is posted to the tenant's webhook once, by the
/// leader; the follower's evaluator skips its passes and opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_post_one_alert_per_incident() {
    use std::sync::{Arc, Mutex};

    use callside::alerts::{ALERT_TICK, AlertsFile};
    use callside::clock::Clock;

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let posts: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let kept = posts.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = url::Url::parse(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let mut tenant = demo_tenant();
    tenant.alerts = Some(AlertsFile {
        webhook_url_env: None,
        error_rate_percent: 50,
        min_attempts: 3,
        window_secs: 300,
        backlog_age_secs: 3600,
    });
    let with_hook = |c: &mut callside::config::Config| {
        let demo = c.tenants.iter_mut().find(|t| t.id == "demo").unwrap();
        demo.alerts.as_mut().unwrap().webhook = Some(hook.clone());
    };
    let a = spawn_instance_configured(&schema.url, None, server_file(""), tenant.clone(), with_hook).await;
    passes(&a, "A evaluated", |p| p.led(Job::Alerts) >= 1).await;
    let b = spawn_instance_configured(&schema.url, Some(&a), server_file(""), tenant, with_hook).await;
    passes(&b, "B decided its first pass", |p| p.skipped(Job::Alerts) >= 1).await;

    // Four failed CRM attempts, as the workers record them.
    let now = a.clock.now();
    for i in 0..4 {
        let call = format!("failing-{i}");
        let detail = serde_json::json!({"result": "retry"});
        a.core.store.audit("demo", Some(&call), None, "crm.create_contact", &detail, now).await.unwrap();
    }
    let (led, skipped) = {
        let (pa, pb) = (a.core.jobs.passes().borrow().clone(), b.core.jobs.passes().borrow().clone());
        (pa.led(Job::Alerts), pb.skipped(Job::Alerts))
    };
    a.clock.advance(ALERT_TICK);
    passes(&a, "A ticked", |p| p.led(Job::Alerts) > led).await;
    passes(&b, "B ticked", |p| p.skipped(Job::Alerts) > skipped).await;
    let mut progress = a.alerter.progress();
    let delivered = async {
        loop {
            if a.alerter.incidents("demo").iter().any(|i| i.delivered.is_some()) {
                return;
            }
            progress.changed().await.expect("alerter alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), delivered).await.expect("A posted the alert");
    assert_eq!(a.alerter.open_incidents("demo").len(), 1);
    assert!(b.alerter.incidents("demo").is_empty(), "B opened nothing");
    let posted = posts.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "one alert for the incident, not one per instance: {posted:?}");
    assert_eq!(posted[0]["callside"]["kind"], "sync_errors");
    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// A leader that finds its lease taken at its next pass (as after a pause past its TTL) stops:
/// its Google channels are stopped and forgotten, and it neither renews nor polls while another
/// instance leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_leader_that_lost_its_lease_stops_its_channels_at_its_next_pass() {
    use callside::clock::Clock;

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = instance(&schema.url, None, "[inbound.calendar]\npoll_interval_secs = 30\n").await;
    let mut progress = a.core.calendar_sync.progress();
    tokio::time::timeout(Duration::from_secs(20), progress.wait_for(|p| p.started)).await.unwrap().unwrap();
    let channels = a.google.channels();
    assert!(!channels.is_empty() && channels.iter().all(|c| !c.stopped), "{channels:?}");
    let store = &a.core.store;
    assert!(store.release_job("calendar_sync", store.instance_id()).await.unwrap());
    let long = SignedDuration::from_hours(1);
    assert!(store.try_lead("calendar_sync", "another-instance", a.clock.now(), long).await.unwrap());
    let syncs = a.core.calendar_sync.progress().borrow().syncs;

    // The next pass (the poll is due too) finds the lease gone; the one after it is already
    // a follower's, so two skipped passes mean the channels were stopped in between.
    a.clock.advance(callside::leader::RECHECK_EVERY);
    passes(&a, "A passed twice as a follower", |p| p.skipped(Job::CalendarSync) >= 2).await;
    let after = a.google.channels();
    assert!(after.iter().all(|c| c.stopped), "A stopped its channels: {after:?}");
    assert_eq!(a.core.calendar_sync.progress().borrow().syncs, syncs, "no poll without the lease");
    assert!(a.core.metrics.render().contains("callside_job_leader{job=\"calendar_sync\"} 0"));
    assert_eq!(store.job_lease("calendar_sync").await.unwrap().unwrap().holder, "another-instance");
    a.shutdown().await;
    let store = callside::store::Store::open(&schema.url).await.unwrap();
    let lease = store.job_lease("calendar_sync").await.unwrap().unwrap();
    assert_eq!(lease.holder, "another-instance", "a graceful stop releases only the leases it holds");
    store.close().await;
    schema.drop_now().await.unwrap();
}

/// Pending bookings of two instances: the leader retries the calendar and confirms the booking;
/// the follower's retrier, awake at the same moment, skips its pass, so the event is created
/// once — not once per instance (a second create would be a request the calendar answers 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_retry_a_pending_booking_once() {
    use callside::sandbox::google_calendar::GoogleCalendarMethod;

    use crate::pending_bookings::{book_while_calendar_down, wait_pending};

    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let a = instance(&schema.url, None, "").await;
    passes(&a, "A leads pending bookings", |p| p.led(Job::PendingBookings) >= 1).await;
    let b = instance(&schema.url, Some(&a), "").await;
    passes(&b, "B decided its first pass", |p| p.skipped(Job::PendingBookings) >= 1).await;

    let (_, slot, key) = book_while_calendar_down(&a, "pend-two").await;
    a.google.set_down(false);
    // The first retry is due in 15 s, B's recheck in 30 s: both retriers wake at once.
    let skipped = b.core.jobs.passes().borrow().skipped(Job::PendingBookings);
    a.clock.advance(callside::leader::RECHECK_EVERY);
    let row = wait_pending(&a, &key, |r| r.status == "confirmed").await;
    passes(&b, "B rechecked", |p| p.skipped(Job::PendingBookings) > skipped).await;
    assert_eq!(b.core.jobs.passes().borrow().led(Job::PendingBookings), 0, "B never led");
    assert_eq!(*b.core.booking.pending.subscribe().borrow(), 0, "B's retrier never ran a pass");

    let alex = "alex@demo-salon.example";
    assert_eq!(a.google.request_count(GoogleCalendarMethod::Insert), 1, "created once, by one instance");
    let events = a.google.events(alex);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].id.as_str(), events[0].start), (row.event_id.as_str(), slot.start));
    b.shutdown().await;
    a.shutdown().await;
    schema.drop_now().await.unwrap();
}

/// Behind one shared URL a Google push lands on any instance, but the channels live in the
/// calendar leader's memory: the follower, holding none, hands a well-formed push for a channel
/// it does not know to the leader over the bus and answers 202 `forwarded`; the leader checks it
/// as its own — a wrong token is refused there and syncs nothing, the right one syncs. A push
/// for a channel the leader does not know is still refused by the leader itself, and a malformed
/// one by the follower, without forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_push_landing_on_the_follower_is_checked_and_applied_by_the_leader() {
    let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
    let extra = "[inbound.calendar]\npoll_interval_secs = 30\n";
    let a = instance(&schema.url, None, extra).await;
    let mut started = a.core.calendar_sync.progress();
    tokio::time::timeout(Duration::from_secs(20), started.wait_for(|p| p.started)).await.unwrap().unwrap();
    let b = instance(&schema.url, Some(&a), extra).await;
    passes(&b, "B decided its first pass", |p| p.skipped(Job::CalendarSync) >= 1).await;
    let channel = a.google.channels().into_iter().next().expect("A opened a channel");
    let token = channel.token.clone().expect("channels carry a token");
    let syncs = a.core.calendar_sync.progress().borrow().syncs;
    let mut applied = a.core.bus.progress();

    let (status, body) = post_push(&b, &push_headers(&channel, Some("0123456789abcdef"), "exists", "900")).await;
    assert_eq!((status, body["forwarded"].as_bool()), (202, Some(true)), "{body}");
    tokio::time::timeout(Duration::from_secs(20), applied.wait_for(|p| p.pushes >= 1)).await.unwrap().unwrap();
    assert_eq!(a.core.metrics.inbound_request_count("google", "forged"), 1, "the leader refused the forged push");
    assert_eq!(a.core.calendar_sync.progress().borrow().syncs, syncs, "a forged push syncs nothing");

    let (status, _) = post_push(&b, &push_headers(&channel, Some(&token), "exists", "901")).await;
    assert_eq!(status, 202);
    tokio::time::timeout(Duration::from_secs(20), applied.wait_for(|p| p.pushes >= 2)).await.unwrap().unwrap();
    assert_eq!(a.core.calendar_sync.progress().borrow().syncs, syncs + 1, "the genuine push synced its calendar");
    assert_eq!(b.core.metrics.inbound_request_count("google", "forwarded"), 2);
    assert_eq!(b.core.metrics.inbound_request_count("google", "accepted"), 0, "B applied nothing itself");

    let mut unknown = channel.clone();
    unknown.id = "not-our-channel".into();
    let (status, _) = post_push(&a, &push_headers(&unknown, Some(&token), "exists", "902")).await;
    assert_eq!(status, 404, "the leader knows every channel there is");
    let (status, _) = post_push(&b, &[]).await;
    assert_eq!(status, 400, "a malformed push is refused where it lands");
    assert_eq!(b.core.metrics.inbound_request_count("google", "forwarded"), 2);

    a.shutdown().await;
    b.shutdown().await;
    schema.drop_now().await.unwrap();
}
