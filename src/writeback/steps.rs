//! The write-back steps the tenant's rules add to a plan — mapped fields, a note for unmapped
//! answers, escalation tasks, the deal stage and the tenant's webhook — how they are planned and
//! how the worker applies them. Every property value written is recorded with the value it
//! replaced (the undo's source); every object created is recorded too.

use std::sync::OnceLock;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::mapping::{self, FieldRejection, PlannedField};
use super::plan::{CallOutcome, kind};
use super::rules::{self, Decision};
use super::settings::{Webhook, WritebackRules};
use crate::clock::SharedClock;
use crate::connectors::ConnectorError;
use crate::connectors::crm::{
    CrmObjectType, NoteRecord, PropertyValue, PropertyWrite, PropertyWriteStatus, TaskRecord,
};
use crate::store::{StepRow, Store};
use crate::tenant::Tenant;

/// The fields step's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldsStep {
    pub fields: Vec<PlannedField>,
    /// Captured data that could not be typed (not sent; shown to the operator).
    #[serde(default)]
    pub rejected: Vec<FieldRejection>,
    /// See [`CallOutcome::read_watermark`].
    pub watermark: Option<Timestamp>,
    pub last_written_property: Option<String>,
}

/// The task step's payload: the task, and who owns it if neither a routing rule nor the
/// contact's owner decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStep {
    pub task: TaskRecord,
    pub fallback_owner_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealStageStep {
    pub deal_id: String,
    pub stage: String,
}

/// The fields step, if the tenant maps anything the call captured.
pub fn fields_step(
    outcome: &CallOutcome,
    rules: &WritebackRules,
    region: rlibphonenumber::enums::Region,
) -> Option<FieldsStep> {
    let (fields, rejected) = mapping::planned_fields(outcome, rules, region);
    (!fields.is_empty() || !rejected.is_empty()).then(|| FieldsStep {
        fields,
        rejected,
        watermark: outcome.read_watermark,
        last_written_property: rules.last_written_property.clone(),
    })
}

const MAX_SUBJECT_CHARS: usize = 120;

/// The ticket step's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketUpdateStep {
    pub ticket_id: String,
    pub note: NoteRecord,
}

/// Note, tasks, deal stage and ticket update, in that order, as `(kind, payload)`.
pub fn follow_up_steps(outcome: &CallOutcome, rules: &WritebackRules) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let unmapped = mapping::unmapped_answers(outcome, rules);
    if !unmapped.is_empty() {
        let body = unmapped.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n");
        let note = NoteRecord { body: format!("Answers given on the call:\n{body}"), at: outcome.started_at };
        out.push((kind::NOTE, json!(note)));
    }
    for e in &outcome.escalations {
        let due = e.at + SignedDuration::from_mins(i64::from(rules.escalation.due_in_minutes(&e.urgency)));
        let routed = rules
            .escalation
            .routes
            .iter()
            .find(|(words, _)| {
                let reason = mapping::fold(&e.reason);
                words.iter().any(|w| reason.contains(w.as_str()))
            })
            .map(|(_, owner)| owner.clone());
        let subject: String = format!("Call back: {}", e.reason).chars().take(MAX_SUBJECT_CHARS).collect();
        let task = TaskRecord {
            subject,
            body: Some(format!(
                "Escalated by the AI receptionist ({} urgency): {}\n\n{}",
                e.urgency, e.reason, outcome.summary
            )),
            due,
            owner_id: routed.or_else(|| outcome.contact_owner_id.clone()),
            priority: Some(e.urgency.to_ascii_uppercase()),
        };
        out.push((kind::TASK, json!(TaskStep { task, fallback_owner_id: rules.escalation.owner_id.clone() })));
    }
    if let Some(stage) = outcome.disposition.as_deref().and_then(|d| rules.deal_stage_on.get(d))
        && let [deal_id] = outcome.open_deal_ids.as_slice()
    {
        out.push((kind::DEAL_STAGE, json!(DealStageStep { deal_id: deal_id.clone(), stage: stage.clone() })));
    }
    if let Some(ticket) = outcome.related_ticket_id.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        let mut body = format!("Call {} (AI receptionist): {}", outcome.call_id, outcome.summary);
        for e in &outcome.escalations {
            body.push_str(&format!("\nEscalated ({} urgency): {}", e.urgency, e.reason));
        }
        let note = NoteRecord { body, at: outcome.started_at };
        out.push((kind::TICKET_UPDATE, json!(TicketUpdateStep { ticket_id: ticket.to_owned(), note })));
    }
    out
}

/// The webhook's body: the call and its mapped fields (by CRM property), no transcript.
pub fn webhook_body(outcome: &CallOutcome, fields: Option<&FieldsStep>) -> Value {
    let mapped: serde_json::Map<String, Value> = fields
        .map(|f| f.fields.iter().map(|p| (p.property.clone(), Value::String(comparable(&p.value)))).collect())
        .unwrap_or_default();
    json!({
        "event": "call.completed",
        "call_id": outcome.call_id,
        "started_at": outcome.started_at,
        "duration_secs": outcome.duration_secs,
        "caller_phone": outcome.caller_phone,
        "summary": outcome.summary,
        "disposition": outcome.disposition,
        "intent": outcome.intent,
        "language": outcome.language,
        "related_ticket_id": outcome.related_ticket_id,
        "escalations": outcome.escalations,
        "fields": mapped,
        "recording_url": outcome.recording_url,
        "transcript_url": outcome.transcript_url,
    })
}

/// A property value in the string form the CRM holds it in (for comparing with history).
pub fn comparable(value: &PropertyValue) -> String {
    match value {
        PropertyValue::Text(s) | PropertyValue::Enumeration(s) => s.clone(),
        PropertyValue::Number(n) => n.to_string(),
        PropertyValue::Bool(b) => b.to_string(),
        PropertyValue::Date(d) => d.to_string(),
        PropertyValue::DateTime(t) => t.to_string(),
        PropertyValue::Clear => String::new(),
    }
}

/// Applies a step of one of this module's kinds; `None` if the kind is not one of them.
pub async fn apply(
    store: &Store,
    clock: &SharedClock,
    tenant: &Tenant,
    step: &StepRow,
) -> Option<Result<Option<String>, ConnectorError>> {
    let applier = Applier { store, clock, tenant, step };
    Some(match step.kind.as_str() {
        kind::FIELDS => applier.fields().await,
        kind::NOTE => applier.note().await,
        kind::TASK => applier.task().await,
        kind::DEAL_STAGE => applier.deal_stage().await,
        kind::TICKET_UPDATE => applier.ticket_update().await,
        kind::WEBHOOK => applier.webhook().await,
        _ => return None,
    })
}

struct Applier<'a> {
    store: &'a Store,
    clock: &'a SharedClock,
    tenant: &'a Tenant,
    step: &'a StepRow,
}

fn bad_payload(e: serde_json::Error) -> ConnectorError {
    ConnectorError::Permanent(format!("step payload: {e}"))
}

fn store_error(e: crate::store::StoreError) -> ConnectorError {
    ConnectorError::Transient(format!("store: {e}"))
}

impl Applier<'_> {
    fn contact(&self) -> Result<&str, ConnectorError> {
        self.step
            .parent_external_id
            .as_deref()
            .ok_or_else(|| ConnectorError::Permanent("no contact id from the contact step".into()))
    }

    /// Reads the fields' history, decides each under its rule, records what will be written
    /// (with the value it replaces) and the conflicts, writes, then records each field's result.
    /// A field configured for verification that the CRM accepted but did not keep fails the step.
    async fn fields(&self) -> Result<Option<String>, ConnectorError> {
        let payload: FieldsStep = serde_json::from_value(self.step.payload.clone()).map_err(bad_payload)?;
        let contact = self.contact()?.to_owned();
        let crm = &self.tenant.crm;
        let mut names: Vec<String> = payload.fields.iter().map(|f| f.property.clone()).collect();
        if let Some(p) = &payload.last_written_property {
            names.push(p.clone());
        }
        let histories = crm.property_history(&contact, &names).await?;
        let history = |name: &str| histories.iter().find(|h| h.name == name);
        let current = |name: &str| {
            history(name).and_then(|h| h.versions.first()).map(|v| v.value.clone()).filter(|v| !v.is_empty())
        };
        let now = self.clock.now();
        let (tenant, call, step_id) = (self.tenant.id(), self.step.call_id.as_str(), self.step.id);
        let mut writes = Vec::new();
        let mut decisions = Vec::new();
        for f in &payload.fields {
            let sending = comparable(&f.value);
            let decision = rules::decide(f.rule, history(&f.property), payload.watermark, &sending);
            match &decision {
                Decision::Write => {
                    let before = current(&f.property);
                    self.store
                        .record_field_intent(
                            tenant,
                            call,
                            step_id,
                            "contact",
                            &contact,
                            &f.property,
                            before.as_deref(),
                            &sending,
                            now,
                        )
                        .await
                        .map_err(store_error)?;
                    writes.push(PropertyWrite { name: f.property.clone(), value: f.value.clone() });
                }
                Decision::Conflict { crm_value, edited_at, edited_by } => {
                    self.store
                        .record_conflict(
                            tenant,
                            call,
                            step_id,
                            &contact,
                            &f.property,
                            &sending,
                            crm_value,
                            *edited_at,
                            edited_by.as_deref(),
                            now,
                        )
                        .await
                        .map_err(store_error)?;
                }
                Decision::Skip { .. } => {}
            }
            decisions.push(json!({"property": f.property, "decision": decision_label(&decision)}));
        }
        if !writes.is_empty()
            && let Some(p) = &payload.last_written_property
        {
            let stamp = PropertyValue::DateTime(now);
            self.store
                .record_field_intent(
                    tenant,
                    call,
                    step_id,
                    "contact",
                    &contact,
                    p,
                    current(p).as_deref(),
                    &comparable(&stamp),
                    now,
                )
                .await
                .map_err(store_error)?;
            writes.push(PropertyWrite { name: p.clone(), value: stamp });
        }
        let results = if writes.is_empty() { Vec::new() } else { crm.update_properties(&contact, &writes).await? };
        let mut not_kept = Vec::new();
        let mut outcome = Vec::new();
        for r in &results {
            let (status, reason) = match &r.status {
                PropertyWriteStatus::Written => ("written", None),
                PropertyWriteStatus::Rejected { reason } => ("rejected", Some(reason.as_str())),
                PropertyWriteStatus::Ignored => ("ignored", Some("accepted but not kept by the CRM")),
            };
            self.store.set_field_status(step_id, &contact, &r.name, status, reason).await.map_err(store_error)?;
            let verify = payload.fields.iter().any(|f| f.property == r.name && f.verify);
            if verify && r.status == PropertyWriteStatus::Ignored {
                not_kept.push(r.name.clone());
            }
            outcome.push(json!({"property": r.name, "status": status}));
        }
        for r in &payload.rejected {
            outcome.push(json!({"property": r.property, "status": "invalid", "reason": r.reason}));
        }
        let _ = self
            .store
            .audit(
                tenant,
                Some(call),
                Some(step_id),
                "crm.fields",
                &json!({"decisions": decisions, "results": outcome}),
                now,
            )
            .await;
        if !not_kept.is_empty() {
            // Read-after-write: a 200 whose value did not stick is a failure, not a success.
            return Err(ConnectorError::Permanent(format!(
                "the CRM accepted but did not keep: {}",
                not_kept.join(", ")
            )));
        }
        Ok(Some(contact))
    }

    async fn note(&self) -> Result<Option<String>, ConnectorError> {
        let note: NoteRecord = serde_json::from_value(self.step.payload.clone()).map_err(bad_payload)?;
        let id = self.tenant.crm.log_note(self.contact()?, &note, &self.step.idempotency_key).await?;
        self.created(CrmObjectType::Note, &id).await;
        Ok(Some(id))
    }

    /// The task goes to the planned owner (a routing rule or the contact's owner at ring time),
    /// else the contact's owner now (a contact created or found after the call), else the
    /// tenant's default owner.
    async fn task(&self) -> Result<Option<String>, ConnectorError> {
        let mut t: TaskStep = serde_json::from_value(self.step.payload.clone()).map_err(bad_payload)?;
        let contact = self.contact()?;
        if t.task.owner_id.is_none() {
            let ctx = self.tenant.crm.read_context(contact).await?;
            t.task.owner_id = ctx.contact.owner_id.or(t.fallback_owner_id);
        }
        let id = self.tenant.crm.create_task(contact, &t.task, &self.step.idempotency_key).await?;
        self.created(CrmObjectType::Task, &id).await;
        Ok(Some(id))
    }

    /// Only a ticket of the caller's own is updated: the AI names the ticket, and a wrong or
    /// hostile id must not put a note on someone else's work order.
    async fn ticket_update(&self) -> Result<Option<String>, ConnectorError> {
        let t: TicketUpdateStep = serde_json::from_value(self.step.payload.clone()).map_err(bad_payload)?;
        let contact = self.contact()?;
        let ctx = self.tenant.crm.read_context(contact).await?;
        if !ctx.open_tickets.iter().any(|open| open.id == t.ticket_id) {
            return Err(ConnectorError::Permanent(format!(
                "ticket {} is not one of the caller's open tickets; not updated",
                t.ticket_id
            )));
        }
        let id = self.tenant.crm.log_ticket_note(&t.ticket_id, &t.note, &self.step.idempotency_key).await?;
        self.created(CrmObjectType::Note, &id).await;
        Ok(Some(id))
    }

    async fn deal_stage(&self) -> Result<Option<String>, ConnectorError> {
        let d: DealStageStep = serde_json::from_value(self.step.payload.clone()).map_err(bad_payload)?;
        let crm = &self.tenant.crm;
        let names = ["dealstage".to_string()];
        let before = crm
            .object_history(CrmObjectType::Deal, &d.deal_id, &names)
            .await?
            .into_iter()
            .next()
            .and_then(|h| h.versions.into_iter().next())
            .map(|v| v.value);
        let now = self.clock.now();
        let (tenant, call, step_id) = (self.tenant.id(), self.step.call_id.as_str(), self.step.id);
        self.store
            .record_field_intent(
                tenant,
                call,
                step_id,
                "deal",
                &d.deal_id,
                "dealstage",
                before.as_deref(),
                &d.stage,
                now,
            )
            .await
            .map_err(store_error)?;
        crm.set_deal_stage(&d.deal_id, &d.stage).await?;
        // The stage is stored by id: record what the CRM now holds so undo compares like with like.
        let after = crm
            .object_history(CrmObjectType::Deal, &d.deal_id, &names)
            .await?
            .into_iter()
            .next()
            .and_then(|h| h.versions.into_iter().next())
            .map(|v| v.value)
            .unwrap_or_default();
        self.store
            .record_field_intent(tenant, call, step_id, "deal", &d.deal_id, "dealstage", before.as_deref(), &after, now)
            .await
            .map_err(store_error)?;
        self.store.set_field_status(step_id, &d.deal_id, "dealstage", "written", None).await.map_err(store_error)?;
        Ok(Some(d.deal_id))
    }

    async fn webhook(&self) -> Result<Option<String>, ConnectorError> {
        let Some(hook) = &self.tenant.config.writeback_rules.webhook else {
            return Err(ConnectorError::Permanent("the tenant no longer has a webhook configured".into()));
        };
        let mut body = self.step.payload.clone();
        // The contact is known now (it may have been created by this plan).
        let steps = self.store.steps_for_call(self.tenant.id(), &self.step.call_id).await.map_err(store_error)?;
        body["contact_id"] = json!(steps.iter().find(|s| s.kind == kind::CONTACT).and_then(|s| s.external_id.clone()));
        body["call_log_id"] = json!(self.step.parent_external_id);
        deliver_webhook(hook, &body, &self.step.idempotency_key, self.clock.now()).await?;
        Ok(None)
    }

    async fn created(&self, object: CrmObjectType, id: &str) {
        if let Err(e) = self
            .store
            .record_created_object(
                self.tenant.id(),
                &self.step.call_id,
                self.step.id,
                object.as_str(),
                id,
                self.clock.now(),
            )
            .await
        {
            tracing::warn!(error = %e, "could not record a created object; undo will not see it");
        }
    }
}

fn decision_label(d: &Decision) -> &'static str {
    match d {
        Decision::Write => "write",
        Decision::Conflict { .. } => "conflict",
        Decision::Skip { .. } => "skip",
    }
}

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client builds")
    })
}

/// POSTs the body, signed the same way as the tenant's notification webhook
/// ([`crate::notify::signature`]: `X-Callside-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>">`), with `X-Callside-Event-Id` stable across retries so the receiver can drop a
/// redelivery. 2xx is delivered; 408, 429 and 5xx are retried; other answers are permanent.
pub async fn deliver_webhook(hook: &Webhook, body: &Value, key: &str, now: Timestamp) -> Result<(), ConnectorError> {
    use secrecy::ExposeSecret;
    let bytes = serde_json::to_vec(body).expect("JSON serializes");
    let signature = crate::notify::signature(hook.secret.expose_secret().as_bytes(), now.as_second(), &bytes);
    let resp = http()
        .post(hook.url.clone())
        .header("content-type", "application/json")
        .header(crate::notify::SIGNATURE_HEADER, signature)
        .header(crate::notify::EVENT_ID_HEADER, key)
        .body(bytes)
        .send()
        .await
        .map_err(|e| ConnectorError::Transient(format!("webhook: {e}")))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let what = format!("webhook answered {status}");
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Err(ConnectorError::Transient(what))
    } else {
        Err(ConnectorError::Permanent(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeback::plan::{EscalationRecord, build_plan_with};
    use crate::writeback::settings::WritebackRulesFile;

    fn rules(text: &str) -> WritebackRules {
        #[derive(Deserialize)]
        struct Wrap {
            writeback: WritebackRulesFile,
        }
        toml::from_str::<Wrap>(text).unwrap().writeback.validate().unwrap()
    }

    fn outcome() -> CallOutcome {
        CallOutcome {
            call_id: "c9".into(),
            started_at: "2026-11-23T14:00:00Z".parse().unwrap(),
            caller_phone: Some("+14155550134".into()),
            summary: "Wants a color appointment.".into(),
            caller_name: Some("maría de la cruz".into()),
            urgency: Some("urgencia: alta".into()),
            language: Some("es".into()),
            answers: [("budget".to_string(), "$1,200".to_string()), ("pets".to_string(), "two cats".to_string())]
                .into_iter()
                .collect(),
            escalations: vec![EscalationRecord {
                reason: "Allergic reaction after last visit".into(),
                urgency: "high".into(),
                at: "2026-11-23T14:03:00Z".parse().unwrap(),
            }],
            disposition: Some("escalated".into()),
            open_deal_ids: vec!["77".into()],
            contact_owner_id: None,
            ..Default::default()
        }
    }

    const RULES: &str = r#"
        [writeback]
        last_written_property = "callside_last_written_at"
        deal_stage_on = { escalated = "qualifiedtobuy" }
        [[writeback.fields]]
        datum = "urgency"
        property = "callside_urgency"
        type = "enumeration"
        values = { alta = "high" }
        [[writeback.fields]]
        datum = "answer.budget"
        property = "callside_budget"
        type = "number"
        [[writeback.fields]]
        datum = "intent"
        property = "callside_intent"
        [[writeback.fields]]
        datum = "last_name"
        property = "lastname"
        type = "name"
        rule = "rep"
        [writeback.escalation]
        owner_id = "900"
        due_minutes = { high = 30 }
    "#;

    #[test]
    fn the_plan_follows_the_dependency_order_and_leaves_uncaptured_fields_out() {
        let steps = build_plan_with(&outcome(), &rules(RULES), rlibphonenumber::enums::Region::US);
        let kinds: Vec<&str> = steps.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["contact", "fields", "call_log", "note", "task", "deal_stage"]);
        assert!(steps[1..].iter().all(|s| s.depends_on == Some(0)));
        let fields: FieldsStep = serde_json::from_value(steps[1].payload.clone()).unwrap();
        let props: Vec<(&str, &PropertyValue)> =
            fields.fields.iter().map(|f| (f.property.as_str(), &f.value)).collect();
        // Urgency mapped to its canonical value, the budget typed; intent was not captured and
        // the rep-owned last name is never planned.
        assert_eq!(
            props,
            [
                ("callside_urgency", &PropertyValue::Enumeration("high".into())),
                ("callside_budget", &PropertyValue::Number(1200.into()))
            ]
        );
        // Only the unmapped answer goes to the note.
        let note: NoteRecord = serde_json::from_value(steps[3].payload.clone()).unwrap();
        assert!(note.body.contains("pets: two cats") && !note.body.contains("budget"), "{}", note.body);
        let task: TaskStep = serde_json::from_value(steps[4].payload.clone()).unwrap();
        assert_eq!(task.task.due, "2026-11-23T14:33:00Z".parse().unwrap(), "due 30 minutes after the escalation");
        assert_eq!(task.task.priority.as_deref(), Some("HIGH"));
        assert_eq!(task.task.owner_id, None, "no route and no known owner: decided when written");
        assert_eq!(task.fallback_owner_id.as_deref(), Some("900"));
        let log: crate::connectors::crm::CallLog = serde_json::from_value(steps[2].payload.clone()).unwrap();
        assert!(log.summary.contains("Escalated (high urgency): Allergic reaction"), "{}", log.summary);
    }

    #[tokio::test]
    async fn the_webhook_is_delivered_signed_and_failures_are_classified() {
        use axum::http::{HeaderMap, StatusCode};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HeaderMap, axum::body::Bytes)>();
        let status = std::sync::Arc::new(std::sync::Mutex::new(StatusCode::OK));
        let answer = status.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                let answer = *answer.lock().unwrap();
                async move {
                    let _ = tx.send((headers, body));
                    answer
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let hook = Webhook {
            url: format!("http://{addr}/hook").parse().unwrap(),
            secret: secrecy::SecretString::from("a-long-webhook-secret".to_string()),
        };
        let now: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let body = webhook_body(&outcome(), None);
        deliver_webhook(&hook, &body, "c9:webhook", now).await.unwrap();
        let (headers, got) = rx.recv().await.unwrap();
        let signature = headers["x-callside-signature"].to_str().unwrap();
        assert!(signature.starts_with(&format!("t={},", now.as_second())), "{signature}");
        assert!(crate::notify::verify(b"a-long-webhook-secret", signature, &got));
        assert!(!crate::notify::verify(b"another-secret-entirely", signature, &got));
        assert_eq!(headers["x-callside-event-id"], "c9:webhook");
        let sent: Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(sent["call_id"], "c9");
        *status.lock().unwrap() = StatusCode::SERVICE_UNAVAILABLE;
        assert!(matches!(deliver_webhook(&hook, &body, "k", now).await, Err(ConnectorError::Transient(_))));
        *status.lock().unwrap() = StatusCode::UNPROCESSABLE_ENTITY;
        assert!(matches!(deliver_webhook(&hook, &body, "k", now).await, Err(ConnectorError::Permanent(_))));
        server.abort();
    }
}
