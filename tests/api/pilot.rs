//! `callside pilot` (issue 15) against the sandbox: deep on all five dimensions for every CRM ×
//! calendar pair that exists, its records removed afterwards; and five faults — one per
//! dimension — each scoring exactly its dimension down on every CRM, with the evidence naming the fault.

use std::sync::Arc;

use callside::config::TenantFile;
use callside::pilot::report::PilotReport;
use callside::pilot::score::{Depth, Dimension};
use callside::pilot::{Pilot, ServiceAccess};

use crate::crms::Crm;
use crate::helpers::{DEMO_KEY, DEMO_NUMBER, TestApp, demo_tenant, server_file, spawn_app_with};

/// Runs the whole plan against the app's demo tenant; the progress lines are collected.
async fn pilot(app: &TestApp, crm: Crm) -> (PilotReport, Vec<String>) {
    let tenant = app.core.tenants.by_id("demo").expect("the demo tenant");
    let access = ServiceAccess::new(&format!("http://{}", app.addr), DEMO_KEY, DEMO_NUMBER);
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    let report = Pilot::new(access, tenant, crm.degrade(app), app.core.clock.clone())
        .on_progress(move |l| sink.lock().unwrap().push(l.to_owned()))
        .run()
        .await
        .expect("the pilot runs");
    let lines = lines.lock().unwrap().clone();
    (report, lines)
}

fn failed(report: &PilotReport) -> String {
    report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{:?} {}: {}\n", c.dimension, c.call, c.evidence))
        .collect()
}

async fn app_for(tenant: TenantFile, extra: &str) -> TestApp {
    spawn_app_with(server_file(extra), vec![tenant]).await
}

/// Every CRM × every calendar that exists.
async fn pairs() -> Vec<(String, Crm, TenantFile)> {
    let mut out = Vec::new();
    for crm in Crm::ALL {
        let google = crm.tenant(demo_tenant());
        let mut graph = crm.tenant(demo_tenant());
        graph.calendar.vendor = "microsoft".into();
        let (caldav, _, _) = crate::caldav_booking::caldav_tenant(None).await;
        let caldav = crm.tenant(caldav);
        out.push((format!("{} × google", crm.name()), crm, google));
        out.push((format!("{} × microsoft", crm.name()), crm, graph));
        out.push((format!("{} × caldav (radicale)", crm.name()), crm, caldav));
    }
    out
}

#[tokio::test]
async fn the_pilot_scores_deep_on_every_dimension_for_every_crm_and_calendar_pair_and_cleans_up() {
    for (pair, crm, tenant) in pairs().await {
        let app = app_for(tenant, "").await;
        let people_before = crm.people(&app);
        let (report, lines) = pilot(&app, crm).await;
        for d in Dimension::ALL {
            assert_eq!(report.depth(d), Depth::Deep, "{pair}: {d:?}\n{}", failed(&report));
        }
        assert!(report.all_deep());
        // Every dimension was really tested, and every call of the plan was placed.
        assert!(report.dimensions.iter().all(|d| d.checks_total >= 3), "{pair}: {:?}", report.dimensions);
        assert_eq!(report.calls.len(), 16, "{pair}");
        assert!(report.calls.iter().all(|c| c.sync_status == "synced"), "{pair}: {:?}", report.calls);
        // A progress line per call, then the cleanup line.
        assert_eq!(lines.iter().filter(|l| l.starts_with('[') && l.contains("/16]")).count(), 16, "{lines:?}");
        // Cleanup: every call undone, the seeded records deleted, nothing left in the CRM.
        assert!(report.cleanup.left.is_empty(), "{pair}: {:?}", report.cleanup.left);
        assert_eq!(report.cleanup.calls_undone, 16, "{pair}");
        assert_eq!(report.cleanup.objects_deleted, 4, "{pair}: contact, deal, note and task");
        assert_eq!(crm.people(&app), people_before, "{pair}: only the demo's own contacts remain");
        let left = crm.all_call_logs(&app).into_iter().filter(|log| log.contains("[pilot ")).count();
        assert_eq!(left, 0, "{pair}: a pilot call log remains");
        // The reports carry the same scores.
        let md = report.markdown();
        assert!(md.contains("| Read parity | **deep** |"), "{md}");
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["dimensions"].as_array().unwrap().len(), 5);
        assert!(json["dimensions"].as_array().unwrap().iter().all(|d| d["depth"] == "deep"));
        app.shutdown().await;
    }
}

/// One broken thing, and the dimension it must (alone) bring down, with a word of its evidence.
struct Fault {
    name: &'static str,
    server: &'static str,
    /// A CRM-side fault applied to the emulator before the run.
    crm: Option<fn(Crm, &TestApp)>,
    dimension: Dimension,
    evidence: &'static str,
}

#[tokio::test]
async fn each_of_five_faults_scores_exactly_its_dimension_down_with_the_evidence() {
    let faults = [
        Fault {
            name: "context read drops the open deal",
            server: "[sandbox_options]\nintegration_fault = \"drop_open_deals\"\n",
            crm: None,
            dimension: Dimension::ReadParity,
            evidence: "the open deal was not in the context",
        },
        Fault {
            name: "a write silently ignores a field",
            server: "",
            crm: Some(Crm::ignore_zip),
            dimension: Dimension::WriteParity,
            evidence: "zip not written to its field",
        },
        Fault {
            name: "search lag duplicates on a naive create",
            server: "[sandbox_options]\nintegration_fault = \"naive_create\"\n",
            crm: None,
            dimension: Dimension::MatchLogic,
            evidence: "3 contact(s) hold it",
        },
        Fault {
            name: "a write failure is swallowed",
            server: "[sandbox_options]\nintegration_fault = \"swallow_write_failures\"\n",
            crm: None,
            dimension: Dimension::ErrorHandling,
            evidence: "a write failure was swallowed",
        },
        Fault {
            name: "the sync log omits a step",
            server: "[sandbox_options]\nintegration_fault = \"omit_sync_step\"\n",
            crm: None,
            dimension: Dimension::Observability,
            evidence: "has no step for it",
        },
    ];
    for (crm, f) in Crm::ALL.into_iter().flat_map(|crm| faults.iter().map(move |f| (crm, f))) {
        let app = app_for(crm.tenant(demo_tenant()), f.server).await;
        if let Some(apply) = f.crm {
            apply(crm, &app);
        }
        let (report, _) = pilot(&app, crm).await;
        for d in Dimension::ALL {
            if d == f.dimension {
                assert_ne!(report.depth(d), Depth::Deep, "{} on {}: {d:?} should be down", f.name, crm.name());
                let score = report.dimensions.iter().find(|s| s.dimension == d).unwrap();
                assert!(
                    score.evidence.iter().any(|e| e.contains(f.evidence)),
                    "{} on {}: evidence {:?} lacks {:?}",
                    f.name,
                    crm.name(),
                    score.evidence,
                    f.evidence
                );
            } else {
                assert_eq!(
                    report.depth(d),
                    Depth::Deep,
                    "{} on {}: only {:?} may be down\n{}",
                    f.name,
                    crm.name(),
                    f.dimension,
                    failed(&report)
                );
            }
        }
        assert!(!report.all_deep(), "{} on {}: the command would exit non-zero", f.name, crm.name());
        app.shutdown().await;
    }
}

#[test]
fn the_command_refuses_an_unknown_tenant_and_a_wrong_key_clearly() {
    let config = crate::helpers::repo_path("config/callside.toml");
    let run = |tenant: &str, key: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_callside"))
            .args(["pilot", "--tenant", tenant, "--config"])
            .arg(&config)
            .arg("--report")
            .arg(std::env::temp_dir().join("callside-pilot-refused.md"))
            .env("CALLSIDE_API_KEY", key)
            .env("RUST_LOG", "off")
            .output()
            .expect("the binary runs");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run("nobody", DEMO_KEY);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no tenant \"nobody\""), "{stderr}");
    let (code, stderr) = run("demo", "not-the-demo-key");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("CALLSIDE_API_KEY is not an API key of tenant \"demo\""), "{stderr}");
    assert!(!stderr.contains("not-the-demo-key"), "the key is never echoed: {stderr}");
}
