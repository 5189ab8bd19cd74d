//! The store contract: every store test is one async case taking a `&Store`, run once on SQLite
//! (a temp file) and once on PostgreSQL (a schema of its own on the machine's server, dropped at
//! the end) by `both_backends!`. A store test written once therefore holds both backends to the
//! same behaviour; the cases live beside the code they test (`store/*.rs`) and here.

use jiff::Timestamp;
use serde_json::json;

use super::testing::TestSchema;
use super::*;

/// A store on one backend plus what must outlive it (the temp dir, the PG schema).
pub(super) struct Harness {
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
    schema: Option<TestSchema>,
}

impl Harness {
    pub async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        Harness { store, _dir: Some(dir), schema: None }
    }

    /// Fails (never skips) when the machine's PostgreSQL does not answer.
    pub async fn postgres() -> Harness {
        let schema = TestSchema::create().await.unwrap();
        let store = Store::open(&schema.url).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        Harness { store, _dir: None, schema: Some(schema) }
    }

    pub async fn finish(self) {
        self.store.close().await;
        if let Some(schema) = self.schema {
            schema.drop_now().await.unwrap();
        }
    }
}

/// `both_backends!(case, …)` in a test module: for each `async fn case(s: &Store)` there, a test
/// `on_sqlite::case` and a test `on_postgres::case`.
macro_rules! both_backends {
    ($($case:ident),+ $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let h = crate::store::contract::Harness::sqlite().await;
                    super::$case(&h.store).await;
                    h.finish().await;
                }
            )+
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let h = crate::store::contract::Harness::postgres().await;
                    super::$case(&h.store).await;
                    h.finish().await;
                }
            )+
        }
    };
}

fn t0() -> Timestamp {
    "2026-11-23T14:00:00Z".parse().unwrap()
}

fn step(seq: i64, depends_on: Option<i64>) -> NewStep {
    NewStep {
        seq,
        kind: "contact".into(),
        payload: json!({"seq": seq}),
        depends_on,
        idempotency_key: format!("k{seq}"),
    }
}

async fn a_platform_report_is_merged_into_the_saved_outcome(s: &Store) {
    s.record_call_start("c1", "demo", None, "+15550100000", t0()).await.unwrap();
    s.close_call_with_plan("c1", "demo", "end_call", &json!({"summary": "booked"}), &[], t0()).await.unwrap();
    s.set_call_report("c1", "demo", &json!({"cost": 0.12})).await.unwrap();
    // Another tenant's report on the same call id changes nothing.
    s.set_call_report("c1", "other", &json!({"cost": 9})).await.unwrap();
    let outcome = s.call("demo", "c1").await.unwrap().unwrap().outcome.unwrap();
    assert_eq!(outcome, json!({"summary": "booked", "platform_report": {"cost": 0.12}}));
}

async fn tenant_health_counts_failed_attempts_pending_and_parked_steps(s: &Store) {
    s.record_call_start("c1", "demo", None, "+15550100000", t0()).await.unwrap();
    s.close_call_with_plan("c1", "demo", "end_call", &json!({}), &[step(0, None), step(1, None)], t0()).await.unwrap();
    s.audit("demo", Some("c1"), None, "crm.contact", &json!({"result": "retry"}), t0()).await.unwrap();
    s.audit("demo", Some("c1"), None, "crm.contact", &json!({"result": "done"}), t0()).await.unwrap();
    s.audit("demo", Some("c1"), None, "crm.note", &json!({"result": "dead"}), t0()).await.unwrap();
    s.audit("demo", Some("c1"), None, "plan.approved", &json!({"result": "dead"}), t0()).await.unwrap();
    s.audit("other", Some("c9"), None, "crm.contact", &json!({"result": "dead"}), t0()).await.unwrap();
    let first = s.due_steps(t0(), 1).await.unwrap().remove(0);
    s.park_step(&first, "revoked", &json!({}), t0()).await.unwrap();
    let health = s.tenant_health("demo", t0()).await.unwrap();
    assert_eq!(
        health,
        TenantHealth { attempts: 3, failures: 2, pending: 1, oldest_pending_at: Some(ms(t0())), parked: 1 }
    );
    assert_eq!(s.tenant_health("nobody", t0()).await.unwrap(), TenantHealth::default());
}

async fn an_inbound_delivery_is_recorded_once(s: &Store) {
    assert!(!s.inbound_delivery_seen("hubspot", "event:1:7").await.unwrap());
    assert!(s.record_inbound_delivery("hubspot", "event:1:7", Some("demo"), t0()).await.unwrap());
    assert!(!s.record_inbound_delivery("hubspot", "event:1:7", None, t0()).await.unwrap());
    assert!(s.inbound_delivery_seen("hubspot", "event:1:7").await.unwrap());
    assert!(!s.inbound_delivery_seen("salesforce", "event:1:7").await.unwrap());
}

async fn a_pending_booking_is_recorded_once_and_updated_until_it_settles(s: &Store) {
    let row = PendingBookingRow {
        idempotency_key: "demo:h1".into(),
        tenant: "demo".into(),
        call_id: "c1".into(),
        staff_id: "ann".into(),
        calendar_id: "cal".into(),
        event_id: "evh1".into(),
        service_id: "consult".into(),
        start_at: ms(t0()),
        end_at: ms(t0()) + 1_800_000,
        blocked_start: ms(t0()) - 600_000,
        blocked_end: ms(t0()) + 2_400_000,
        attendee: json!({"name": "Ana"}),
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: ms(t0()),
        deadline_at: ms(t0()) + 600_000,
        last_error: None,
        task_id: None,
    };
    s.insert_pending_booking(&row, t0()).await.unwrap();
    // A second book_slot for the same hold keeps the first record.
    s.insert_pending_booking(&PendingBookingRow { status: "escalated".into(), ..row.clone() }, t0()).await.unwrap();
    assert_eq!(s.pending_booking("demo:h1").await.unwrap(), Some(row.clone()));
    assert_eq!(s.next_pending_due_at().await.unwrap(), Some(t0()));
    let retry_at = t0() + jiff::SignedDuration::from_secs(30);
    s.update_pending_booking("demo:h1", "pending", 1, retry_at, Some("calendar down"), None, t0()).await.unwrap();
    let later = PendingBookingRow {
        attempts: 1,
        next_attempt_at: ms(retry_at),
        last_error: Some("calendar down".into()),
        ..row.clone()
    };
    assert_eq!(s.pending_booking("demo:h1").await.unwrap(), Some(later.clone()));
    assert!(s.due_pending_bookings(t0(), 10).await.unwrap().is_empty());
    assert_eq!(s.due_pending_bookings(retry_at, 10).await.unwrap(), vec![later]);
    // The task id is kept once known; a settled booking is no longer open.
    s.update_pending_booking("demo:h1", "escalated", 2, retry_at, None, Some("task-7"), t0()).await.unwrap();
    s.update_pending_booking("demo:h1", "escalated", 2, retry_at, None, None, t0()).await.unwrap();
    assert_eq!(s.pending_booking("demo:h1").await.unwrap().unwrap().task_id.as_deref(), Some("task-7"));
    assert!(s.open_pending_bookings().await.unwrap().is_empty());
    assert_eq!(s.next_pending_due_at().await.unwrap(), None);
}

async fn retention_redacts_old_content_and_erasure_leaves_no_trace_of_the_number(s: &Store) {
    let phone = "+14155550134";
    s.record_call_start("c1", "demo", Some(phone), "+15550100000", t0()).await.unwrap();
    let outcome = json!({"disposition": "booked", "summary": "Ana at +14155550134"});
    s.close_call_with_plan("c1", "demo", "end_call", &outcome, &[step(0, None)], t0()).await.unwrap();
    let due = s.due_steps(t0(), 1).await.unwrap().remove(0);
    s.record_attempt(&due, &AttemptResult::Done { external_id: Some("9".into()) }, "crm.contact", &json!({}), t0())
        .await
        .unwrap();
    s.index_identity("demo", IdentityKind::Phone, phone, "9", 1).await.unwrap();
    let later = t0() + jiff::SignedDuration::from_hours(24);
    let report = s.apply_retention(Some(later), None, later).await.unwrap();
    assert_eq!((report.outcomes_redacted, report.step_payloads_redacted), (1, 1), "{report:?}");
    let kept = s.call("demo", "c1").await.unwrap().unwrap().outcome.unwrap();
    assert_eq!(kept, json!({"disposition": "booked", "redacted_at": ms(later)}));
    assert!(s.apply_retention(Some(later), None, later).await.unwrap().is_empty(), "a second sweep changes nothing");
    assert!(!s.tables_mentioning(phone).await.unwrap().is_empty(), "the call and the index still name the number");
    let erased = s.erase_caller("demo", phone).await.unwrap();
    assert_eq!((erased.calls, erased.steps, erased.identity_rows), (1, 1, 1), "{erased:?}");
    assert_eq!(s.tables_mentioning(phone).await.unwrap(), Vec::<(String, String)>::new());
}

both_backends!(
    retention_redacts_old_content_and_erasure_leaves_no_trace_of_the_number,
    a_platform_report_is_merged_into_the_saved_outcome,
    tenant_health_counts_failed_attempts_pending_and_parked_steps,
    an_inbound_delivery_is_recorded_once,
    a_pending_booking_is_recorded_once_and_updated_until_it_settles,
);
