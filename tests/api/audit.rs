//! `callside audit` (issue 9, item 8): seed 000's monthly checklist run over a tenant's store and
//! vendors. A seeded month — a synced call, a dead-lettered one, a duplicate contact planted in
//! the CRM for a caller callside created, a foreign event over an event callside created — is
//! found section by section with its evidence, by the function and by the binary; a clean tenant
//! has no problem; bad arguments are refused with exit code 2.

use std::path::Path;

use callside::audit::{self, AuditReport, PosCheck, Verdict};
use callside::clock::Clock as _;
use callside::connectors::calendar::NewEvent;
use callside::sandbox::{GOOGLE_TOKEN, HUBSPOT_TOKEN, SQUARE_TOKEN};
use callside::writeback::{CallOutcome, EndReason, build_plan};
use jiff::{SignedDuration, Timestamp};

use crate::console::{DEAD, PORTAL, SYNCED, seed_call, wait_steps};
use crate::helpers::*;

/// Ana López, the demo caller known to the CRM and the till.
const ANA: &str = "+14155550134";
const ANA_CALL: &str = "call-ana";
/// The synced caller, new to the CRM: callside creates their contact.
const DANA: &str = "+12125550111";
/// Alex's calendar (config/tenants/demo.toml).
const ALEX: &str = "alex@demo-salon.example";

fn server() -> callside::config::ServerFile {
    server_file("[writeback]\nretry_window_secs = 30\nmax_backoff_secs = 5\n")
}

fn demo_with_portal() -> callside::config::TenantFile {
    let mut demo = demo_tenant();
    demo.crm.portal_id = Some(PORTAL);
    demo
}

/// Two seconds before the clock's START: each synced call settles at START, 2 s after hangup.
fn two_seconds_before(app: &TestApp) -> String {
    (app.clock.now() - SignedDuration::from_secs(2)).to_string()
}

async fn audit_now(app: &TestApp) -> AuditReport {
    let tenant = app.core.tenants.by_id("demo").unwrap();
    audit::run(&app.core.store, &tenant, Some(&app.core.budgets), app.clock.now(), 30).await.unwrap()
}

/// Ana calls and gives her name: matched to her record (no new contact), written back.
async fn ana_calls(app: &TestApp, at: &str) {
    let at: Timestamp = at.parse().unwrap();
    let store = &app.core.store;
    assert!(store.record_call_start(ANA_CALL, "demo", Some(ANA), DEMO_NUMBER, at).await.unwrap());
    let outcome = CallOutcome {
        call_id: ANA_CALL.into(),
        end_reason: EndReason::EndCall,
        started_at: at,
        duration_secs: 60,
        caller_phone: Some(ANA.into()),
        dialed: DEMO_NUMBER.into(),
        summary: "Asked about opening hours.".into(),
        disposition: Some("question answered".into()),
        caller_name: Some("Ana López".into()),
        caller_email: Some("ana.lopez@example.com".into()),
        ..Default::default()
    };
    let steps = build_plan(&outcome);
    let outcome = serde_json::to_value(&outcome).unwrap();
    assert!(store.close_call_with_plan(ANA_CALL, "demo", "end_call", &outcome, &steps, at).await.unwrap());
    app.core.worker.wake();
    assert_eq!(app.wait_for_sync(ANA_CALL).await, "synced");
}

/// The seeded month. Returns (the contact callside created for Dana, the planted duplicate,
/// callside's calendar event, the foreign event over it).
async fn seeded_month(app: &TestApp) -> (String, String, String, String) {
    let at = two_seconds_before(app);
    seed_call(app, SYNCED, DANA, &at, "booked").await;
    assert_eq!(app.wait_for_sync(SYNCED).await, "synced");
    ana_calls(app, &at).await;
    let created = app.core.store.steps_for_call("demo", SYNCED).await.unwrap()[0].external_id.clone().unwrap();

    app.hubspot.set_down(true);
    seed_call(app, DEAD, "+12125550133", &at, "callback requested").await;
    wait_steps(app, DEAD, |s| s[0].attempts >= 1).await;
    app.clock.advance(SignedDuration::from_secs(60));
    assert_eq!(app.wait_for_sync(DEAD).await, "failed");
    app.hubspot.set_down(false);

    // Someone enters Dana again by hand, the number typed another way.
    let planted =
        app.hubspot.insert_contact([("firstname", "Dana"), ("lastname", "Example"), ("phone", "(212) 555-0111")]);

    // An appointment callside created (through the tenant's connector, with its call id) and a
    // direct booking on top of it; a later event that touches neither.
    let tenant = app.core.tenants.by_id("demo").unwrap();
    let start: Timestamp = "2026-11-24T15:00:00Z".parse().unwrap();
    let ours = tenant
        .calendar
        .create_event(
            ALEX,
            &NewEvent {
                id: "auditours0001".into(),
                summary: "Haircut".into(),
                description: String::new(),
                start,
                end: start + SignedDuration::from_mins(45),
                time_zone: "America/New_York".into(),
                attendee_email: None,
                reminder_minutes: vec![],
                call_id: SYNCED.into(),
                service_id: "haircut".into(),
            },
        )
        .await
        .unwrap();
    let foreign = app.google.insert_foreign_event(
        ALEX,
        start + SignedDuration::from_mins(30),
        start + SignedDuration::from_mins(90),
        "Walk-in",
    );
    app.google.insert_foreign_event(
        ALEX,
        start + SignedDuration::from_mins(90),
        start + SignedDuration::from_mins(120),
        "Next one",
    );
    (created, planted, ours.id, foreign)
}

#[tokio::test]
async fn the_audit_finds_the_dead_letter_the_duplicate_contact_and_the_double_booking_with_their_evidence() {
    let app = spawn_app_with(server(), vec![demo_with_portal()]).await;
    let (created, planted, ours, foreign) = seeded_month(&app).await;
    let report = audit_now(&app).await;
    let [sync, dup, cal, pos] = report.assessments();

    // 1. Sync and delivery log: by the console's statuses, the dead letter, the error rate.
    let s = &report.sync;
    assert_eq!(s.calls, 3);
    assert_eq!(s.by_status, vec![("synced", 2), ("failed (dead-lettered)", 1)]);
    // The contact step, and the call log that depended on it, dead-lettered with it.
    let dead: Vec<(&str, &str, i64)> =
        s.dead_letters.iter().map(|d| (d.call_id.as_str(), d.kind.as_str(), d.attempts)).collect();
    assert_eq!(dead, [(DEAD, "call_log", 0), (DEAD, "contact", 2)]);
    assert!(s.steps["contact"].done == 2 && s.steps["contact"].dead == 1, "{:?}", s.steps);
    let latency = s.latency.expect("two synced calls");
    assert_eq!(
        (latency.samples, latency.p50, latency.p95),
        (2, SignedDuration::from_secs(2), SignedDuration::from_secs(2))
    );
    assert!(s.failed_attempts >= 2 && s.attempts > s.failed_attempts, "{} of {}", s.failed_attempts, s.attempts);
    assert_eq!(sync.verdict, Verdict::Problem);
    assert!(sync.reasons.iter().any(|r| r.contains("above seed 000's 1 % target")), "{:?}", sync.reasons);
    assert!(sync.reasons.iter().any(|r| r.contains("2 dead-lettered step(s)")), "{:?}", sync.reasons);

    // 2. The planted duplicate of the contact callside created, with both ids and deep links.
    let d = &report.duplicates;
    assert_eq!(d.identities, 4, "three caller numbers and Ana's email");
    assert_eq!(d.searched, 4);
    assert!(d.requests.is_some_and(|n| n >= 4), "{:?}", d.requests);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.duplicates.len(), 1, "{:?}", d.duplicates);
    let found = &d.duplicates[0];
    assert_eq!((found.by, found.value.as_str(), found.calls.clone()), ("phone", "+1***11", vec![SYNCED.to_owned()]));
    let mut ids: Vec<(&str, bool)> = found.records.iter().map(|r| (r.id.as_str(), r.created_by_callside)).collect();
    ids.sort();
    let mut want = vec![(created.as_str(), true), (planted.as_str(), false)];
    want.sort();
    assert_eq!(ids, want);
    for r in &found.records {
        assert_eq!(
            r.url.as_deref(),
            Some(format!("https://app.hubspot.com/contacts/{PORTAL}/record/0-1/{}", r.id).as_str())
        );
    }
    assert_eq!(dup.verdict, Verdict::Problem, "{:?}", dup.reasons);

    // 3. The double booking, callside's side marked with its call.
    let c = &report.calendar;
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.overlaps.len(), 1, "{:?}", c.overlaps);
    let o = &c.overlaps[0];
    assert_eq!(
        (o.staff_id.as_str(), o.first.event_id.as_str(), o.second.event_id.as_str()),
        ("alex", ours.as_str(), foreign.as_str())
    );
    assert_eq!((o.first.call_id.as_deref(), o.second.call_id.as_deref()), (Some(SYNCED), None));
    assert_eq!(cal.verdict, Verdict::Problem, "{:?}", cal.reasons);

    // 4. The till answers for Ana with her visit of 12 November.
    match &report.pos {
        PosCheck::Checked { vendor, tries, failed, .. } => {
            assert_eq!((vendor.as_str(), *failed), ("square", 0));
            let ana = tries.iter().find(|t| t.result == "found").expect("Ana is a customer");
            assert_eq!(ana.caller, "+1***34");
            assert_eq!(ana.newest_order, Some("2026-11-12T15:00:00Z".parse().unwrap()));
        }
        other => panic!("the demo has a POS: {other:?}"),
    }
    assert_eq!(pos.verdict, Verdict::Ok, "{:?}", pos.reasons);
    assert!(report.has_problem());

    // The Markdown carries the evidence and no caller's number.
    let md = report.markdown();
    for needle in [
        "| 1. Sync and delivery log | problem |",
        "| 2. Duplicate contacts in the CRM | problem |",
        "| 3. Calendar overlaps | problem |",
        "| 4. POS data freshness | ok |",
        "| synced | 2 |",
        DEAD,
        &format!("[{created}](https://app.hubspot.com/contacts/{PORTAL}/record/0-1/{created}) (created by callside)"),
        &format!("{ours} (callside, call {SYNCED})"),
        &foreign,
        "p50 2.0 s, p95 2.0 s",
        "Inventory counts are not something callside reads",
    ] {
        assert!(md.contains(needle), "the report lacks {needle:?}:\n{md}");
    }
    for number in ["2125550111", "555-0111", "4155550134", "2125550133", "ana.lopez"] {
        assert!(!md.contains(number), "the report shows a caller's number {number}:\n{md}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_clean_tenant_has_no_problem() {
    let app = spawn_app_with(server(), vec![demo_with_portal()]).await;
    let at = two_seconds_before(&app);
    seed_call(&app, SYNCED, DANA, &at, "booked").await;
    assert_eq!(app.wait_for_sync(SYNCED).await, "synced");
    ana_calls(&app, &at).await;
    let report = audit_now(&app).await;
    for (name, a) in audit::SECTIONS.iter().zip(report.assessments()) {
        assert_eq!(a.verdict, Verdict::Ok, "{name}: {:?}", a.reasons);
    }
    assert_eq!((report.sync.calls, report.sync.failed_attempts), (2, 0));
    assert_eq!(report.duplicates.searched, 3, "two numbers and Ana's email");
    assert!(report.duplicates.duplicates.is_empty() && report.calendar.overlaps.is_empty());
    assert!(!report.has_problem());
    app.shutdown().await;
}

/// The config the binary reads: the demo tenant pointed at the running emulators' URLs (as a
/// tenant is pointed at its vendors), tokens from the environment.
fn write_config(dir: &Path, app: &TestApp) -> std::path::PathBuf {
    let tenants = dir.join("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    let demo = std::fs::read_to_string(repo_path("config/tenants/demo.toml")).unwrap();
    let mut urls = [
        (app.sandbox.hubspot.base_url(), "AUDIT_HUBSPOT_TOKEN", format!("portal_id = {PORTAL}\n")),
        (app.sandbox.google.base_url(), "AUDIT_GOOGLE_TOKEN", String::new()),
        (app.sandbox.square.base_url(), "AUDIT_SQUARE_TOKEN", String::new()),
    ]
    .into_iter();
    let mut out = String::new();
    for line in demo.lines() {
        if line.trim() == "base_url = \"sandbox\"" {
            let (url, var, extra) = urls.next().expect("three sandbox sections");
            out.push_str(&format!("base_url = \"{url}\"\naccess_token_env = \"{var}\"\n{extra}"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(urls.next().is_none(), "every sandbox section was pointed at its emulator");
    std::fs::write(tenants.join("demo.toml"), out).unwrap();
    let server = dir.join("callside.toml");
    std::fs::write(&server, "[server]\nsandbox = false\ntenants_dir = \"tenants\"\n").unwrap();
    server
}

/// Runs the binary without blocking the runtime the emulators it reads are served on.
async fn audit_cli(config: &Path, data_dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_callside"))
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("AUDIT_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
        .env("AUDIT_GOOGLE_TOKEN", GOOGLE_TOKEN)
        .env("AUDIT_SQUARE_TOKEN", SQUARE_TOKEN)
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_command_writes_the_report_exits_1_on_a_problem_and_2_on_bad_arguments() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_owned();
    let app = spawn_app_in(server(), vec![demo_with_portal()], data).await;
    let (created, planted, ours, foreign) = seeded_month(&app).await;
    let conf = tempfile::tempdir().unwrap();
    let config = write_config(conf.path(), &app);
    let until = app.clock.now().to_string();
    let report = conf.path().join("audit.md");

    // Bad arguments: exit 2, a clear message, no report written.
    let bad: [(&[&str], &str); 4] = [
        (&["--tenant", "nobody"], "no tenant \"nobody\""),
        (&["--tenant", "demo", "--days", "0"], "--days"),
        (&["--tenant", "demo", "--until", "last tuesday"], "--until"),
        (&["--tenant", "demo", "--days", "400"], "--days"),
    ];
    for (args, message) in bad {
        let mut args = args.to_vec();
        args.extend(["--report", report.to_str().unwrap()]);
        let (code, _, stderr) = audit_cli(&config, &data_dir, &args).await;
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!report.exists(), "{args:?} wrote a report");
    }
    // The repository's demo config keeps the tenant on the in-process sandbox: refused, clearly.
    let (code, _, stderr) = audit_cli(&repo_path("config/callside.toml"), &data_dir, &["--tenant", "demo"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("uses the in-process sandbox"), "{stderr}");

    let (code, stdout, stderr) =
        audit_cli(&config, &data_dir, &["--tenant", "demo", "--until", &until, "--report", report.to_str().unwrap()])
            .await;
    assert_eq!(code, Some(1), "a problem section exits 1: {stdout}\n{stderr}");
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(stdout.contains("1. Sync and delivery log: problem"), "{stdout}");
    assert!(stdout.contains("4. POS data freshness: ok"), "{stdout}\n{md}");
    for needle in [
        DEAD,
        "| synced | 2 |",
        "| failed (dead-lettered) | 1 |",
        &format!("{created}](https://app.hubspot.com/contacts/{PORTAL}/record/0-1/{created}) (created by callside)"),
        &format!("[{planted}](https://app.hubspot.com/contacts/{PORTAL}/record/0-1/{planted})"),
        &format!("{ours} (callside, call {SYNCED})"),
        &foreign,
        "Searched 4 of 4 distinct caller phone(s)/email(s)",
    ] {
        assert!(md.contains(needle), "the report lacks {needle:?}:\n{md}");
    }
    app.shutdown().await;
}
