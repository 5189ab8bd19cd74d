//! The write-back rules through the whole service: seed 002's test calls 1–4 and 8–10 on every
//! CRM (HubSpot, Salesforce, Pipedrive — each read back from the vendor's emulator), then, on
//! HubSpot, field mapping and normalization, the hybrid rule against a rep's edit, shadow and
//! review modes, read-after-write verification, escalation and undo.

use callside::config::TenantFile;
use callside::sandbox::hubspot::{ObjectType, SandboxObject};
use serde_json::{Value, json};

use crate::crms::{Crm, Field};
use crate::helpers::{DEMO_KEY, TestApp, demo_tenant, server_file, spawn_app_configured, spawn_app_with};

/// The demo tenant on `crm` with a field mapping covering every kind of rule and type, each datum
/// mapped to that CRM's own field.
fn rules_tenant(crm: Crm, mode: &str) -> TenantFile {
    let mut t = crm.tenant(demo_tenant());
    let p = |f: Field| crm.property(f);
    let (default_owner, route_owner) = match crm {
        Crm::HubSpot => ("555".to_owned(), crm.standing_user()),
        _ => (crm.standing_user(), crm.standing_user()),
    };
    let table = format!(
        r#"
        mode = "{mode}"
        last_written_property = "{last_written}"
        deal_stage_on = {{ booked = "Qualified To Buy" }}
        [[fields]]
        datum = "intent"
        property = "{intent}"
        rule = "ai"
        [[fields]]
        datum = "urgency"
        property = "{urgency}"
        type = "enumeration"
        rule = "hybrid"
        verify = true
        values = {{ alta = "high", urgente = "high", media = "medium", baja = "low" }}
        [[fields]]
        datum = "sentiment"
        property = "{sentiment}"
        type = "enumeration"
        rule = "ai"
        values = {{ positivo = "positive", negativo = "negative" }}
        [[fields]]
        datum = "language"
        property = "{language}"
        type = "enumeration"
        rule = "ai"
        [[fields]]
        datum = "answer.service"
        property = "{service}"
        rule = "hybrid"
        [[fields]]
        datum = "answer.budget"
        property = "{budget}"
        type = "number"
        rule = "ai"
        [[fields]]
        datum = "zip"
        property = "{zip}"
        rule = "rep"
        [escalation]
        owner_id = "{default_owner}"
        due_minutes = {{ high = 60, medium = 240 }}
        routes = [{{ reason_contains = ["refund", "reembolso"], owner_id = "{route_owner}" }}]
        "#,
        last_written = p(Field::LastWritten),
        intent = p(Field::Intent),
        urgency = p(Field::Urgency),
        sentiment = p(Field::Sentiment),
        language = p(Field::Language),
        service = p(Field::ServiceInterest),
        budget = p(Field::Budget),
        zip = p(Field::Zip),
    );
    t.writeback = toml::from_str(&table).expect("writeback table parses");
    t
}

async fn app(mode: &str) -> TestApp {
    app_on(Crm::HubSpot, mode).await
}

async fn app_on(crm: Crm, mode: &str) -> TestApp {
    spawn_app_with(server_file(""), vec![rules_tenant(crm, mode)]).await
}

fn ana(app: &TestApp) -> SandboxObject {
    let found: Vec<_> = app.hubspot.contacts().into_iter().filter(|c| c.prop("firstname") == Some("Ana")).collect();
    assert_eq!(found.len(), 1, "exactly one Ana");
    found.into_iter().next().unwrap()
}

fn contact_by_phone(app: &TestApp, e164: &str) -> Vec<SandboxObject> {
    app.hubspot.contacts().into_iter().filter(|c| c.prop("phone") == Some(e164)).collect()
}

/// The one person the CRM holds with this number.
fn the_person(crm: Crm, app: &TestApp, e164: &str) -> String {
    let found = crm.with_phone(app, e164);
    assert_eq!(found.len(), 1, "{}: exactly one person holds {e164}: {found:?}", crm.name());
    found.into_iter().next().unwrap()
}

/// One call over the WebSocket: context first (the service's read), then `end_call`.
async fn call(app: &TestApp, call_id: &str, from: &str, end: Value) -> Value {
    let mut c = app.connect(call_id, from).await;
    c.initialize().await;
    c.tool("get_caller_context", json!({})).await;
    let r = c.tool("end_call", end).await;
    assert_eq!(r["structuredContent"]["saved"], true, "{r}");
    r
}

/// Waits until none of the call's steps is pending, woken by the worker's progress signal.
async fn wait_settled(app: &TestApp, call_id: &str) -> Vec<callside::store::StepRow> {
    let mut progress = app.core.worker.progress();
    let wait = async {
        loop {
            let steps = app.core.store.steps_for_call("demo", call_id).await.unwrap();
            if steps.iter().all(|s| s.status != "pending") {
                return steps;
            }
            progress.changed().await.expect("worker alive");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), wait).await.expect("steps settled in time")
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", app.addr));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn seed_call_1_a_new_caller_with_full_info_gets_a_contact_with_every_mapped_field() {
    for crm in Crm::ALL {
        let app = app_on(crm, "auto").await;
        let before = crm.people(&app);
        call(
            &app,
            "seed-1",
            "+13125550111",
            json!({
                "summary": "Wants a haircut next week.",
                "disposition": "info_only",
                "caller_name": "liam o'brien",
                "caller_email": " Liam.OBrien@Example.com ",
                "caller_zip": "60601",
                "intent": "haircut",
                "sentiment": "positive",
                "urgency": "media",
                "language": "en",
                "answers": {"service": "Haircut", "budget": "$80"}
            }),
        )
        .await;
        let name = crm.name();
        assert_eq!(app.wait_for_sync("seed-1").await, "synced", "{name}");
        assert_eq!(crm.people(&app), before + 1, "{name}: one new contact");
        let id = the_person(crm, &app, "+13125550111");
        let field = |f: Field| crm.field(&app, &id, f);
        assert_eq!(field(Field::FirstName).as_deref(), Some("Liam"), "{name}");
        assert_eq!(field(Field::LastName).as_deref(), Some("O'Brien"), "{name}: capitalized as people write it");
        assert_eq!(field(Field::Email).as_deref(), Some("liam.obrien@example.com"), "{name}");
        assert_eq!(field(Field::Zip).as_deref(), Some("60601"), "{name}");
        assert_eq!(field(Field::Intent).as_deref(), Some("haircut"), "{name}");
        assert_eq!(field(Field::Urgency).as_deref(), Some("medium"), "{name}: 'media' mapped to the canonical option");
        assert_eq!(field(Field::Sentiment).as_deref(), Some("positive"), "{name}");
        assert_eq!(field(Field::Language).as_deref(), Some("en"), "{name}");
        assert_eq!(field(Field::ServiceInterest).as_deref(), Some("Haircut"), "{name}");
        assert_eq!(field(Field::Budget).as_deref(), Some("80"), "{name}");
        assert!(field(Field::LastWritten).is_some(), "{name}: last-written stamp set");
        assert_eq!(crm.call_logs(&app, &id).len(), 1, "{name}: the call is logged on the contact");
        // Every mapped answer had a field: no note blob.
        assert!(crm.notes(&app, &id).is_empty(), "{name}: {:?}", crm.notes(&app, &id));
        let writes = app.core.store.field_writes_for_call("demo", "seed-1").await.unwrap();
        assert!(writes.iter().all(|w| w.status == "written"), "{name}: {writes:?}");
        assert_eq!(writes.len(), 7, "{name}: six mapped fields plus the stamp: {writes:?}");
        if crm == Crm::HubSpot {
            let source = contact_by_phone(&app, "+13125550111")[0].prop("callside_source").map(str::to_owned);
            assert_eq!(source.as_deref(), Some("AI receptionist"));
        }
        app.shutdown().await;
    }
}

#[tokio::test]
async fn seed_call_2_a_new_caller_with_partial_info_leaves_optional_fields_empty() {
    for crm in Crm::ALL {
        let app = app_on(crm, "auto").await;
        call(&app, "seed-2", "+13125550122", json!({"summary": "Asked about prices.", "caller_name": "NOAH"})).await;
        let name = crm.name();
        assert_eq!(app.wait_for_sync("seed-2").await, "synced", "{name}");
        let id = the_person(crm, &app, "+13125550122");
        assert_eq!(crm.field(&app, &id, Field::FirstName).as_deref(), Some("Noah"), "{name}");
        for empty in [
            Field::LastName,
            Field::Email,
            Field::Zip,
            Field::Intent,
            Field::Urgency,
            Field::Sentiment,
            Field::Language,
            Field::ServiceInterest,
            Field::Budget,
            Field::LastWritten,
        ] {
            assert_eq!(crm.field(&app, &id, empty), None, "{name}: {empty:?} must stay empty, not garbage");
        }
        assert_eq!(crm.call_logs(&app, &id).len(), 1, "{name}");
        app.shutdown().await;
    }
}

#[tokio::test]
async fn seed_call_3_an_existing_caller_by_phone_is_updated_and_the_call_logged_without_a_new_contact() {
    for crm in Crm::ALL {
        let app = app_on(crm, "auto").await;
        let name = crm.name();
        let ana = crm.ana(&app);
        let before = crm.people(&app);
        call(
            &app,
            "seed-3",
            "+14155550134",
            json!({"summary": "Asked to move her color appointment.", "intent": "reschedule", "urgency": "baja",
                   "caller_zip": "10001", "sentiment": "furiosa"}),
        )
        .await;
        assert_eq!(app.wait_for_sync("seed-3").await, "synced", "{name}");
        assert_eq!(crm.people(&app), before, "{name}: no new contact");
        assert_eq!(crm.ana(&app), ana);
        assert_eq!(crm.field(&app, &ana, Field::Intent).as_deref(), Some("reschedule"), "{name}");
        assert_eq!(crm.field(&app, &ana, Field::Urgency).as_deref(), Some("low"), "{name}");
        assert_eq!(
            crm.field(&app, &ana, Field::Zip).as_deref(),
            Some("94110"),
            "{name}: zip is rep-owned: never written"
        );
        assert_eq!(crm.call_logs(&app, &ana).len(), 1, "{name}");
        // A value that is not one of the picklist's options is refused before sending and
        // recorded; the other fields are written.
        assert_eq!(crm.field(&app, &ana, Field::Sentiment), None, "{name}");
        let writes = app.core.store.field_writes_for_call("demo", "seed-3").await.unwrap();
        let sentiment = writes.iter().find(|w| w.property == crm.property(Field::Sentiment)).unwrap();
        assert_eq!(sentiment.status, "rejected", "{name}");
        assert!(sentiment.reason.as_deref().unwrap_or_default().contains("furiosa"), "{name}: {sentiment:?}");
        app.shutdown().await;
    }
}

/// A known caller from an unknown number who gives their email is matched by the email (the
/// identity index, issue 6): the call lands on her contact and no contact is created.
#[tokio::test]
async fn seed_call_4_an_existing_caller_by_email_never_gets_a_duplicate() {
    for crm in Crm::ALL {
        let app = app_on(crm, "auto").await;
        let name = crm.name();
        let before = crm.people(&app);
        call(
            &app,
            "seed-4",
            "+16465550144",
            json!({"summary": "Calling from work about her deal.", "caller_name": "Ana López",
                   "caller_email": "ANA.LOPEZ@example.com", "intent": "deal question"}),
        )
        .await;
        let status = app.wait_for_sync("seed-4").await;
        assert_eq!(crm.people(&app), before, "{name}: no duplicate contact for a known email");
        let steps = app.core.store.steps_for_call("demo", "seed-4").await.unwrap();
        let contact_step = steps.iter().find(|s| s.kind == "contact").unwrap();
        assert_eq!(status, "synced", "{name}: {steps:?}");
        assert_eq!(contact_step.external_id.as_deref(), Some(crm.ana(&app).as_str()), "{name}: the call is on Ana");
        assert_eq!(crm.call_logs(&app, &crm.ana(&app)).len(), 1, "{name}");
        // Seed 003's diagnostic: the new number is added to her record as an additional phone.
        assert_eq!(crm.with_phone(&app, "+16465550144"), vec![crm.ana(&app)], "{name}: the new number is Ana's now");
        app.shutdown().await;
    }
}

#[tokio::test]
async fn seed_call_8_an_escalation_becomes_a_task_for_the_right_owner_with_the_reason_on_the_call_log() {
    for crm in Crm::ALL {
        let app = app_on(crm, "auto").await;
        let name = crm.name();
        // Ana has an owner: the escalation is hers; a refund goes to the billing route.
        let owner = crm.add_owner(&app);
        let ana_id = crm.ana(&app);
        crm.give_owner(&app, &ana_id, &owner);
        let tasks_before = crm.tasks(&app, &ana_id).len();
        let mut c = app.connect("seed-8", "+14155550134").await;
        c.initialize().await;
        let tools = c.request("tools/list", json!({})).await;
        let names: Vec<&str> =
            tools["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"escalate"), "{names:?}");
        c.tool("get_caller_context", json!({})).await;
        let e =
            c.tool("escalate", json!({"reason": "Skin reaction after last color treatment", "urgency": "high"})).await;
        assert_eq!(e["isError"], false, "{name}: {e}");
        assert_eq!(e["structuredContent"]["escalated"], true);
        assert_eq!(e["structuredContent"]["due_at"], "2026-11-23T14:00:00Z", "high: due in 60 minutes");
        let bad = c.tool("escalate", json!({"urgency": "high"})).await;
        assert_eq!(bad["isError"], true, "a missing reason is a tool error: {bad}");
        let refund = c.tool("escalate", json!({"reason": "Wants a refund for the last visit"})).await;
        assert_eq!(refund["isError"], false);
        c.tool("end_call", json!({"summary": "Reported a reaction; asked for a refund.", "disposition": "escalated"}))
            .await;
        assert_eq!(app.wait_for_sync("seed-8").await, "synced", "{name}");

        let tasks = crm.tasks(&app, &ana_id);
        let reaction = tasks.iter().find(|t| t.subject.contains("Skin reaction"));
        let refund = tasks.iter().find(|t| t.subject.contains("refund"));
        let (Some(reaction), Some(refund)) = (reaction, refund) else {
            panic!("{name}: one task per escalation: {tasks:?}")
        };
        assert_eq!(tasks.len(), tasks_before + 2, "{name}: one task per escalation: {tasks:?}");
        assert_eq!(reaction.owner.as_deref(), Some(owner.as_str()), "{name}: the contact's owner");
        assert_eq!(reaction.priority.as_deref(), Some("HIGH"), "{name}");
        assert_eq!(reaction.due, Some("2026-11-23T14:00:00Z".parse().unwrap()), "{name}");
        assert_eq!(refund.owner, Some(crm.standing_user()), "{name}: the tenant's routing rule");
        assert_eq!(refund.priority.as_deref(), Some("MEDIUM"), "{name}");
        let calls = crm.call_logs(&app, &ana_id);
        assert_eq!(calls.len(), 1, "{name}");
        assert!(
            calls[0].contains("Skin reaction after last color treatment"),
            "{name}: the reason is on the call log: {}",
            calls[0]
        );
        app.shutdown().await;
    }
}

#[tokio::test]
async fn seed_call_9_a_spanish_call_populates_fields_with_canonical_values_and_names_intact() {
    for crm in Crm::ALL {
        let app = app_on(crm, "auto").await;
        let name = crm.name();
        call(
            &app,
            "seed-9",
            "+13055550199",
            json!({
                "summary": "Quiere un corte de pelo el sábado.",
                "caller_name": "maría de la cruz",
                "caller_email": "Maria.DelaCruz@Example.com",
                "intent": "corte de pelo",
                "urgency": "urgencia: alta",
                "sentiment": "positivo",
                "language": "es",
                "answers": {"service": "corte de pelo", "budget": "45", "alergias": "ninguna"}
            }),
        )
        .await;
        assert_eq!(app.wait_for_sync("seed-9").await, "synced", "{name}");
        let id = the_person(crm, &app, "+13055550199");
        let field = |f: Field| crm.field(&app, &id, f);
        assert_eq!(field(Field::FirstName).as_deref(), Some("María"), "{name}: accent kept");
        assert_eq!(field(Field::LastName).as_deref(), Some("de la Cruz"), "{name}: particles kept in lower case");
        assert_eq!(field(Field::Email).as_deref(), Some("maria.delacruz@example.com"), "{name}");
        assert_eq!(field(Field::Urgency).as_deref(), Some("high"), "{name}: \"urgencia: alta\" → high");
        assert_eq!(field(Field::Sentiment).as_deref(), Some("positive"), "{name}");
        assert_eq!(field(Field::Language).as_deref(), Some("es"), "{name}");
        assert_eq!(field(Field::Intent).as_deref(), Some("corte de pelo"), "{name}");
        assert_eq!(field(Field::ServiceInterest).as_deref(), Some("corte de pelo"), "{name}");
        assert_eq!(field(Field::Budget).as_deref(), Some("45"), "{name}");
        // The one answer without a field goes to a note; nothing mapped does.
        let notes = crm.notes(&app, &id);
        assert_eq!(notes.len(), 1, "{name}: {notes:?}");
        assert!(notes[0].contains("alergias: ninguna") && !notes[0].contains("budget"), "{name}: {}", notes[0]);
        app.shutdown().await;
    }
}

/// Seed 002, call 10: the CRM is down for the whole call. The call goes on without context, the
/// hangup is acknowledged with the plan stored (the fallback queue is the outbox), nothing reaches
/// the CRM while it is down, and once it is back the queued write-back lands exactly once.
#[tokio::test]
async fn seed_call_10_a_call_while_the_crm_is_down_lands_in_the_fallback_queue_then_syncs() {
    for crm in Crm::ALL {
        let app = app_on(crm, "auto").await;
        let name = crm.name();
        let phone = "+17735550110";
        let (people_before, calls_before) = (crm.people(&app), crm.all_call_logs(&app).len());
        crm.set_down(&app, true);
        let mut c = app.connect("seed-10", phone).await;
        c.initialize().await;
        let ctx = c.tool("get_caller_context", json!({})).await;
        assert_eq!(ctx["isError"], false, "{ctx}");
        assert_eq!(
            ctx["structuredContent"]["status"], "unavailable",
            "{name}: the call goes on without context: {ctx}"
        );
        let end = c
            .tool(
                "end_call",
                json!({"summary": "Wants a beard trim on Friday.", "disposition": "callback_requested",
                       "caller_name": "noah mcdonald", "caller_email": "Noah.McDonald@Example.com",
                       "intent": "beard trim", "urgency": "media"}),
            )
            .await;
        assert_eq!(
            end["structuredContent"]["saved"], true,
            "{name}: the hangup is acknowledged while the CRM is down: {end}"
        );
        // The plan waits in the outbox: attempted, refused by the dead CRM, nothing written.
        let mut progress = app.core.worker.progress();
        let attempted = async {
            loop {
                let steps = app.core.store.steps_for_call("demo", "seed-10").await.unwrap();
                if steps.iter().any(|s| s.attempts >= 1) {
                    return steps;
                }
                progress.changed().await.expect("worker alive");
            }
        };
        let steps = tokio::time::timeout(std::time::Duration::from_secs(20), attempted).await.expect("attempted");
        assert!(steps.iter().all(|s| s.status == "pending"), "{name}: kept, not dropped: {steps:?}");
        assert_eq!(app.core.store.call("demo", "seed-10").await.unwrap().unwrap().sync_status, "pending");
        assert_eq!(crm.people(&app), people_before, "{name}: nothing written while down");
        assert_eq!(crm.all_call_logs(&app).len(), calls_before, "{name}");

        // The CRM comes back; the retry is due once the backoff has passed on the injected clock.
        crm.set_down(&app, false);
        app.clock.advance(jiff::SignedDuration::from_secs(60));
        app.core.worker.wake();
        assert_eq!(app.wait_for_sync("seed-10").await, "synced", "{name}");
        let noah = the_person(crm, &app, phone);
        assert_eq!(crm.people(&app), people_before + 1, "{name}");
        let field = |f: Field| crm.field(&app, &noah, f);
        assert_eq!(field(Field::FirstName).as_deref(), Some("Noah"), "{name}");
        assert_eq!(field(Field::LastName).as_deref(), Some("McDonald"), "{name}");
        assert_eq!(field(Field::Email).as_deref(), Some("noah.mcdonald@example.com"), "{name}");
        assert_eq!(field(Field::Intent).as_deref(), Some("beard trim"), "{name}");
        assert_eq!(field(Field::Urgency).as_deref(), Some("medium"), "{name}");
        assert_eq!(crm.call_logs(&app, &noah).len(), 1, "{name}: exactly one call log");
        assert_eq!(crm.all_call_logs(&app).len(), calls_before + 1, "{name}");
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_rep_edit_after_the_services_read_keeps_the_hybrid_field_and_records_a_conflict() {
    let app = app("auto").await;
    let ana_id = ana(&app).id;
    // Edited by a person before the call: the service reads it, so its hybrid write may replace it.
    app.hubspot.rep_edit(ObjectType::Contacts, &ana_id, "callside_service_interest", "Color", "42");
    let mut c = app.connect("hybrid-1", "+14155550134").await;
    c.initialize().await;
    assert_eq!(c.tool("get_caller_context", json!({})).await["structuredContent"]["status"], "matched");
    // During the call, after the service's read, a rep sets the urgency.
    app.hubspot.rep_edit(ObjectType::Contacts, &ana_id, "callside_urgency", "low", "42");
    c.tool(
        "end_call",
        json!({"summary": "Urgent color fix.", "urgency": "alta", "intent": "color fix",
               "answers": {"service": "Color correction"}}),
    )
    .await;
    assert_eq!(app.wait_for_sync("hybrid-1").await, "synced");
    let a = ana(&app);
    assert_eq!(a.prop("callside_urgency"), Some("low"), "the rep's value stands");
    assert_eq!(a.prop("callside_service_interest"), Some("Color correction"), "an edit the service had read");
    assert_eq!(a.prop("callside_intent"), Some("color fix"), "AI-owned: written");
    let conflicts = app.core.store.conflicts("demo", Some("hybrid-1")).await.unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].property, "callside_urgency");
    assert_eq!((conflicts[0].ai_value.as_str(), conflicts[0].crm_value.as_str()), ("high", "low"));
    assert_eq!(conflicts[0].edited_by.as_deref(), Some("42"));
    // The operator sees it over the API.
    let (status, body) = admin(&app, reqwest::Method::GET, "/v1/writeback/conflicts", Some(DEMO_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(body["conflicts"][0]["property"], "callside_urgency");
    app.shutdown().await;
}

#[tokio::test]
async fn shadow_mode_builds_and_shows_the_plan_and_writes_nothing() {
    let app = app("shadow").await;
    let before = app.hubspot.contacts().len();
    call(
        &app,
        "shadow-1",
        "+13125550177",
        json!({"summary": "New client.", "caller_name": "Zoe Park", "intent": "consult", "urgency": "high"}),
    )
    .await;
    app.wait_for_close("shadow-1").await;
    assert_eq!(app.core.worker.progress().borrow().to_owned(), 0, "the worker applied nothing");
    assert_eq!(app.hubspot.contacts().len(), before);
    for kind in [
        callside::sandbox::hubspot::RouteKind::Create,
        callside::sandbox::hubspot::RouteKind::Update,
        callside::sandbox::hubspot::RouteKind::Delete,
    ] {
        assert_eq!(app.hubspot.request_count(kind), 0, "{kind:?} requests reached the CRM");
    }
    let (status, plan) = admin(&app, reqwest::Method::GET, "/v1/writeback/calls/shadow-1", Some(DEMO_KEY)).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["mode"], "shadow");
    assert_eq!(plan["sync_status"], "shadow");
    let kinds: Vec<&str> =
        plan["held_plan"]["steps"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["contact", "fields", "call_log"]);
    // A shadow plan cannot be approved into the CRM.
    let (status, _) = admin(&app, reqwest::Method::POST, "/v1/writeback/calls/shadow-1/approve", Some(DEMO_KEY)).await;
    assert_eq!(status, 409);
    assert_eq!(app.hubspot.contacts().len(), before);
    app.shutdown().await;
}

#[tokio::test]
async fn review_mode_writes_a_plan_only_once_an_operator_approves_it() {
    let app = app("review").await;
    call(&app, "review-1", "+13125550188", json!({"summary": "New client.", "caller_name": "Ivy Chen"})).await;
    app.wait_for_close("review-1").await;
    assert!(contact_by_phone(&app, "+13125550188").is_empty(), "nothing written before approval");
    let (status, _) = admin(&app, reqwest::Method::GET, "/v1/writeback/review", None).await;
    assert_eq!(status, 401, "the API needs the tenant's key");
    let (status, list) = admin(&app, reqwest::Method::GET, "/v1/writeback/review", Some(DEMO_KEY)).await;
    assert_eq!((status, list["awaiting_review"].clone()), (200, json!(["review-1"])));
    let (status, unknown) =
        admin(&app, reqwest::Method::POST, "/v1/writeback/calls/no-such-call/approve", Some(DEMO_KEY)).await;
    assert_eq!(status, 404, "an unknown call is 404 as on every route: {unknown}");
    let (status, ok) = admin(&app, reqwest::Method::POST, "/v1/writeback/calls/review-1/approve", Some(DEMO_KEY)).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(app.wait_for_sync("review-1").await, "synced");
    assert_eq!(contact_by_phone(&app, "+13125550188").len(), 1, "written after approval");
    let (status, _) = admin(&app, reqwest::Method::POST, "/v1/writeback/calls/review-1/approve", Some(DEMO_KEY)).await;
    assert_eq!(status, 409, "a plan is approved once");
    app.shutdown().await;
}

#[tokio::test]
async fn a_write_the_crm_accepted_but_did_not_keep_fails_the_fields_step() {
    let app = app("auto").await;
    app.hubspot.ignore_property("callside_urgency");
    call(&app, "verify-1", "+14155550134", json!({"summary": "Urgent.", "urgency": "alta", "intent": "color fix"}))
        .await;
    assert_eq!(app.wait_for_sync("verify-1").await, "failed");
    let steps = wait_settled(&app, "verify-1").await;
    let fields = steps.iter().find(|s| s.kind == "fields").unwrap();
    assert_eq!(fields.status, "dead");
    assert!(fields.last_error.as_deref().unwrap_or_default().contains("callside_urgency"), "{fields:?}");
    // The other field was written and the call log still landed.
    assert_eq!(ana(&app).prop("callside_intent"), Some("color fix"));
    assert!(steps.iter().any(|s| s.kind == "call_log" && s.status == "done"));
    let writes = app.core.store.field_writes_for_call("demo", "verify-1").await.unwrap();
    let urgency = writes.iter().find(|w| w.property == "callside_urgency").unwrap();
    assert_eq!(urgency.status, "ignored");
    app.shutdown().await;
}

#[tokio::test]
async fn undo_restores_what_the_call_wrote_and_skips_a_field_a_person_edited_since() {
    let app = app("auto").await;
    let ana_id = ana(&app).id;
    app.hubspot.rep_edit(ObjectType::Contacts, &ana_id, "callside_intent", "old intent", "42");
    call(
        &app,
        "undo-1",
        "+14155550134",
        json!({"summary": "Budget question.", "intent": "new intent", "answers": {"budget": "120"}}),
    )
    .await;
    assert_eq!(app.wait_for_sync("undo-1").await, "synced");
    assert_eq!(ana(&app).prop("callside_intent"), Some("new intent"));
    assert_eq!(app.hubspot.calls_for_contact(&ana_id).len(), 1);
    // After the write-back, a person corrects the budget.
    app.hubspot.rep_edit(ObjectType::Contacts, &ana_id, "callside_budget", "75", "43");

    // Through the CLI, which calls the service's API.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_callside"))
        .args(["undo", "--call", "undo-1", "--url", &format!("http://{}", app.addr)])
        .env("CALLSIDE_API_KEY", DEMO_KEY)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &answer["report"];
    let a = ana(&app);
    assert_eq!(a.prop("callside_intent"), Some("old intent"), "restored from the audit trail");
    assert_eq!(a.prop("callside_budget"), Some("75"), "the person's edit is not touched");
    assert_eq!(a.prop("callside_last_written_at"), None, "the stamp had no value before");
    assert!(app.hubspot.calls_for_contact(&ana_id).is_empty(), "the call log it created is deleted");
    assert!(app.hubspot.contact(&ana_id).is_some(), "a matched contact is never deleted");
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{report}");
    assert_eq!(skipped[0]["property"], "callside_budget");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("user 43"), "{report}");
    // A second undo finds nothing left to do.
    let (status, again) = admin(&app, reqwest::Method::POST, "/v1/writeback/calls/undo-1/undo", Some(DEMO_KEY)).await;
    assert_eq!(status, 200);
    assert!(again["report"]["restored"].as_array().unwrap().is_empty(), "{again}");
    assert!(again["report"]["deleted"].as_array().unwrap().is_empty(), "{again}");
    app.shutdown().await;
}

#[tokio::test]
async fn undo_deletes_a_contact_the_call_created_unless_a_person_edited_it() {
    let app = app("auto").await;
    call(&app, "undo-2", "+13125550155", json!({"summary": "New.", "caller_name": "Kai Lee", "intent": "consult"}))
        .await;
    call(&app, "undo-3", "+13125550166", json!({"summary": "New.", "caller_name": "Mo Diaz"})).await;
    assert_eq!(app.wait_for_sync("undo-2").await, "synced");
    assert_eq!(app.wait_for_sync("undo-3").await, "synced");
    let kai = contact_by_phone(&app, "+13125550155").remove(0);
    let mo = contact_by_phone(&app, "+13125550166").remove(0);
    app.hubspot.rep_edit(ObjectType::Contacts, &mo.id, "lastname", "Díaz", "42");
    let (status, r) = admin(&app, reqwest::Method::POST, "/v1/writeback/calls/undo-2/undo", Some(DEMO_KEY)).await;
    assert_eq!(status, 200, "{r}");
    assert!(app.hubspot.contact(&kai.id).is_none(), "created by the call: deleted");
    assert!(app.hubspot.calls_for_contact(&kai.id).is_empty());
    let (status, r) = admin(&app, reqwest::Method::POST, "/v1/writeback/calls/undo-3/undo", Some(DEMO_KEY)).await;
    assert_eq!(status, 200, "{r}");
    assert!(app.hubspot.contact(&mo.id).is_some(), "a person edited it: kept and reported");
    assert_eq!(r["report"]["skipped"][0]["object_type"], "contact", "{r}");
    let (status, _) = admin(&app, reqwest::Method::POST, "/v1/writeback/calls/nope/undo", Some(DEMO_KEY)).await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

#[tokio::test]
async fn a_booked_call_moves_the_deal_and_the_tenant_webhook_gets_the_signed_mapped_fields() {
    use axum::http::HeaderMap;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, axum::body::Bytes)>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let _ = tx.send((headers, body));
            async { "ok" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = tokio::spawn(async move { axum::serve(listener, receiver).await });
    const SECRET: &str = "test-webhook-secret-0123456789";
    let app = spawn_app_configured(server_file(""), vec![rules_tenant(Crm::HubSpot, "auto")], |config| {
        // A test cannot put the secret in the environment safely (tests share the process), so
        // it is set on the validated config, as the file's `secret_env` would have.
        config.tenants[0].writeback_rules.webhook = Some(callside::writeback::settings::Webhook {
            url: hook_url.parse().unwrap(),
            secret: secrecy::SecretString::from(SECRET.to_string()),
        });
    })
    .await;
    let ana_id = ana(&app).id;
    let deal = app.hubspot.associated_with_contact(&ana_id, ObjectType::Deals).remove(0);
    assert_eq!(deal.prop("dealstage"), Some("appointmentscheduled"));
    call(
        &app,
        "deal-1",
        "+14155550134",
        json!({"summary": "Booked the color correction.", "disposition": "booked", "intent": "color correction"}),
    )
    .await;
    assert_eq!(app.wait_for_sync("deal-1").await, "synced");
    assert_eq!(
        app.hubspot.deal(&deal.id).unwrap().prop("dealstage"),
        Some("qualifiedtobuy"),
        "label resolved to the id"
    );

    let (headers, body) = rx.recv().await.expect("webhook delivered");
    let signature = headers["x-callside-signature"].to_str().unwrap();
    assert!(callside::notify::verify(SECRET.as_bytes(), signature, &body), "signed with the tenant's secret");
    assert_eq!(headers["x-callside-event-id"], "deal-1:webhook", "stable across retries");
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["call_id"], "deal-1");
    assert_eq!(sent["contact_id"], json!(ana_id));
    assert_eq!(sent["fields"]["callside_intent"], "color correction");
    let call_log = &app.hubspot.calls_for_contact(&ana_id)[0];
    assert_eq!(sent["call_log_id"], json!(call_log.id), "sent after the call log landed");

    // Undo puts the deal back where the call found it.
    let (status, r) = admin(&app, reqwest::Method::POST, "/v1/writeback/calls/deal-1/undo", Some(DEMO_KEY)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(app.hubspot.deal(&deal.id).unwrap().prop("dealstage"), Some("appointmentscheduled"));
    receiver.abort();
    app.shutdown().await;
}

#[tokio::test]
async fn a_call_about_an_open_ticket_notes_that_ticket_and_never_someone_elses() {
    let app = app("auto").await;
    let ana_id = ana(&app).id;
    let ticket = app.hubspot.insert_associated(
        ObjectType::Tickets,
        [("subject", "Color came out uneven"), ("hs_pipeline_stage", "1")],
        &ana_id,
    );
    let bo = app.hubspot.insert_contact([("firstname", "Bo"), ("phone", "+13125550000")]);
    let foreign =
        app.hubspot.insert_associated(ObjectType::Tickets, [("subject", "Not Ana's"), ("hs_pipeline_stage", "1")], &bo);
    call(
        &app,
        "ticket-1",
        "+14155550134",
        json!({"summary": "Follow-up on the uneven color; wants it fixed.", "related_ticket_id": ticket}),
    )
    .await;
    assert_eq!(app.wait_for_sync("ticket-1").await, "synced");
    let notes = app.hubspot.associated_with(ObjectType::Tickets, &ticket, ObjectType::Notes);
    assert_eq!(notes.len(), 1, "the ticket gets the call's note");
    assert!(notes[0].prop("hs_note_body").unwrap_or_default().contains("wants it fixed"));

    call(&app, "ticket-2", "+14155550134", json!({"summary": "Asked about a ticket.", "related_ticket_id": foreign}))
        .await;
    let steps = wait_settled(&app, "ticket-2").await;
    let step = steps.iter().find(|s| s.kind == "ticket_update").unwrap();
    assert_eq!(step.status, "dead", "{step:?}");
    assert!(step.last_error.as_deref().unwrap_or_default().contains("not one of the caller's"), "{step:?}");
    assert!(app.hubspot.associated_with(ObjectType::Tickets, &foreign, ObjectType::Notes).is_empty());
    app.shutdown().await;
}
