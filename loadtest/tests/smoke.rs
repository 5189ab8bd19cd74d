//! The invariant checker can fail: the smoke profile (200 calls arriving within two seconds over
//! two tenants, mostly bookings) run against the service with its hold ledger bypassed must make
//! the harness exit non-zero for overlapping bookings, and the same profile with the ledger on
//! must pass every invariant. Each run starts the service as its own process (`loadtest serve`).

use std::process::Command;

use serde_json::Value;

/// Booking-heavy, every flow that changes a calendar or the CRM's contacts, and hang-ups (the
/// hold-leak check).
const MIX: &str = "new_books=55,known_context=10,known_by_email=10,cancel=10,reschedule=5,hang_up=10";

/// The two runs take turns: each starts a service, and the 2-core CI has no room for both at once.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn smoke(bypass: bool) -> (i32, Value) {
    let _turn = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.args([
        "run",
        "--tenants",
        "2",
        "--known-callers",
        "5",
        "--burst",
        "200",
        "--burst-window-ms",
        // The bypassed run must make callers race for one slot: its overlaps need two callers
        // offered the same slot before either books (a booking drops the staff member's busy
        // cache, so a later caller is offered another). Spread over two seconds, a fast run can
        // serve the bookings one after another and overlap nothing; within 200 ms they race.
        if bypass { "200" } else { "2000" },
        "--think-ms",
        "0",
        "--mix",
        MIX,
        "--no-floor",
        "--quiet",
        "--drain-timeout-secs",
        "120",
        "--out",
    ])
    .arg(out.path());
    if bypass {
        cmd.arg("--unsafe-bypass-hold-ledger");
    }
    let output = cmd.output().expect("loadtest runs");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json"))
            .unwrap_or_else(|e| panic!("no report ({e}); stderr: {}", String::from_utf8_lossy(&output.stderr))),
    )
    .unwrap();
    (output.status.code().expect("exited normally"), report)
}

fn invariant<'a>(report: &'a Value, prefix: &str) -> &'a Value {
    report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no invariant {prefix:?} in {report}"))
}

#[test]
fn bypassed_ledger_fails_the_run_for_overlapping_bookings() {
    let (code, report) = smoke(true);
    assert_eq!(code, 1, "the harness must exit non-zero: {}", report["invariants"]);
    let overlap = invariant(&report, "no overlapping bookings");
    assert_eq!(overlap["passed"], Value::Bool(false));
    assert!(overlap["detail"]["overlaps"].as_u64().unwrap() > 0, "{overlap}");
    // The failure is the overlap, not a broken run: the other invariants still hold.
    for name in ["every acked end_call", "no duplicate contact", "no hold leaked", "backlog drained"] {
        assert_eq!(invariant(&report, name)["passed"], Value::Bool(true), "{name}: {}", report["invariants"]);
    }
}

#[test]
fn ledger_on_passes_every_invariant() {
    let (code, report) = smoke(false);
    assert_eq!(code, 0, "the harness must pass: {}", report["invariants"]);
    assert_eq!(report["passed"], Value::Bool(true));
    let overlap = invariant(&report, "no overlapping bookings");
    // The checks saw real bookings and acknowledged calls, so passing means something. (No
    // counts tied to speed: on a loaded machine some tool calls meet the service's deadline.)
    assert!(overlap["detail"]["busy_events"].as_u64().unwrap() > 0, "{overlap}");
    let acked = invariant(&report, "every acked end_call");
    assert!(acked["detail"]["acked"].as_u64().unwrap() > 0, "{acked}");
}
