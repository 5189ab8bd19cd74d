//! `callside pilot` (issue 15): seed 002's ten test calls and seed 003's pilot scenario, placed
//! through the real service path (the voice AI's WebSocket + MCP tool calls), each outcome
//! verified by reading the CRM and the calendar back through the tenant's connectors — never
//! from callside's own store — and scored on seed 003's five dimensions with the evidence.
//!
//! The plan (call numbers as in the report):
//!
//! | # | call | seed |
//! |---|---|---|
//! | 1 | new caller, full info | 002 #1 |
//! | 2 | new caller, partial info | 002 #2 |
//! | 3 | known caller by phone (the seeded contact: open deal, note, task) | 002 #3, 003 known number |
//! | 4 | known caller from a new number, by email | 002 #4, 003 unknown number + known email |
//! | 5–7 | booking, reschedule, cancellation (known number) | 002 #5–7, 003 known number |
//! | 8 | escalation (known number) | 002 #8, 003 known number |
//! | 9 | Spanish-language caller | 002 #9 |
//! | 10 | CRM unreachable during the call, then restored | 002 #10, 003 degraded |
//! | 11–12 | two more unknown numbers with the known email | 003 |
//! | 13 | CRM token revoked, then restored | 003 degraded |
//! | 14–16 | a burst of three concurrent calls from one new number while the CRM's search index lags | 003 burst |
//!
//! Everything it creates carries the run's tag (`[pilot <run>]` in summaries, `pilot.<run>.*`
//! emails) and is removed afterwards: each call's write-back is undone (`writeback::undo` through
//! `POST /v1/calls/{id}/undo`) and the seeded records are deleted through the connector.

pub mod client;
pub mod report;
pub mod score;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

pub use client::{CallClient, ServiceAccess};
use report::{CallRecord, Cleanup, PilotReport};
use score::{Check, Depth, Dimension};

use crate::clock::SharedClock;
use crate::connectors::ConnectorError;
use crate::connectors::crm::{
    ActivityKind, ContactFields, CrmContact, CrmContext, CrmObjectType, DealRecord, NoteRecord, TaskRecord,
};
use crate::identity::{ParsedPhone, Phone};
use crate::sandbox::hubspot::HubSpotState;
use crate::tenant::Tenant;

/// How long the pilot waits for one call's write-back to settle.
const SETTLE: Duration = Duration::from_secs(30);
/// Between two reads of the sync log while waiting: from the first, doubling to the second (each
/// read is several queries on the service's store; a tight loop would compete with the calls).
const POLL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(160));

/// The integration degradations the scenario needs. In the sandbox they are the emulators' fault
/// switches; against a real vendor there are none, and the degraded calls report "not run".
pub trait Degrade: Send + Sync {
    fn crm_down(&self, down: bool) -> Result<(), String>;
    fn crm_token_revoked(&self, revoked: bool) -> Result<(), String>;
    fn crm_search_lag(&self, lag: bool) -> Result<(), String>;
}

/// The fault switches every CRM emulator has, under its own names.
pub trait CrmSwitches: Send + Sync + 'static {
    fn set_down(&self, down: bool);
    /// Replaces the token the emulator accepts (a different one revokes the service's).
    fn set_accepted_token(&self, token: &str);
    fn set_search_lag(&self, lag: bool);
}

impl CrmSwitches for HubSpotState {
    fn set_down(&self, down: bool) {
        HubSpotState::set_down(self, down);
    }

    fn set_accepted_token(&self, token: &str) {
        self.set_token(token);
    }

    fn set_search_lag(&self, lag: bool) {
        HubSpotState::set_search_lag(self, lag);
    }
}

impl CrmSwitches for crate::sandbox::salesforce::SalesforceState {
    fn set_down(&self, down: bool) {
        crate::sandbox::salesforce::SalesforceState::set_down(self, down);
    }

    fn set_accepted_token(&self, token: &str) {
        self.set_token(token);
    }

    fn set_search_lag(&self, lag: bool) {
        crate::sandbox::salesforce::SalesforceState::set_search_lag(self, lag);
    }
}

impl CrmSwitches for crate::sandbox::pipedrive::PipedriveState {
    fn set_down(&self, down: bool) {
        crate::sandbox::pipedrive::PipedriveState::set_down(self, down);
    }

    fn set_accepted_token(&self, token: &str) {
        self.set_api_token(token);
    }

    fn set_search_lag(&self, lag: bool) {
        crate::sandbox::pipedrive::PipedriveState::set_search_lag(self, lag);
    }
}

/// An in-process CRM emulator's switches (a static-token tenant).
pub struct SandboxCrm<S> {
    pub state: Arc<S>,
    /// The token the service is configured with (restored after the revocation).
    pub token: String,
}

impl<S: CrmSwitches> Degrade for SandboxCrm<S> {
    fn crm_down(&self, down: bool) -> Result<(), String> {
        self.state.set_down(down);
        Ok(())
    }

    fn crm_token_revoked(&self, revoked: bool) -> Result<(), String> {
        // The CRM stops knowing the service's token (401 that is not an expiry: revoked).
        self.state.set_accepted_token(if revoked { "pilot-revoked-token" } else { &self.token });
        Ok(())
    }

    fn crm_search_lag(&self, lag: bool) -> Result<(), String> {
        self.state.set_search_lag(lag);
        Ok(())
    }
}

/// The in-process HubSpot emulator's switches.
pub type SandboxHubSpot = SandboxCrm<HubSpotState>;
/// The in-process Salesforce emulator's switches.
pub type SandboxSalesforce = SandboxCrm<crate::sandbox::salesforce::SalesforceState>;
/// The in-process Pipedrive emulator's switches (a personal-API-token tenant).
pub type SandboxPipedrive = SandboxCrm<crate::sandbox::pipedrive::PipedriveState>;

/// The in-process sandbox's switches for a tenant on the sandbox CRM of `vendor` (with the
/// sandbox's static token); none for a vendor the sandbox does not emulate.
pub fn sandbox_switches(sandbox: &crate::sandbox::Sandbox, vendor: &str) -> Arc<dyn Degrade> {
    match vendor {
        "hubspot" => Arc::new(SandboxHubSpot {
            state: sandbox.hubspot.state.clone(),
            token: crate::sandbox::HUBSPOT_TOKEN.to_owned(),
        }),
        "salesforce" => Arc::new(SandboxSalesforce {
            state: sandbox.salesforce.state.clone(),
            token: crate::sandbox::SALESFORCE_TOKEN.to_owned(),
        }),
        "pipedrive" => Arc::new(SandboxPipedrive {
            state: sandbox.pipedrive.state.clone(),
            token: crate::sandbox::PIPEDRIVE_TOKEN.to_owned(),
        }),
        _ => Arc::new(NoDegrade),
    }
}

/// No switches: a real vendor cannot be degraded from here.
pub struct NoDegrade;

impl Degrade for NoDegrade {
    fn crm_down(&self, _: bool) -> Result<(), String> {
        Err("the CRM is not the in-process sandbox, so it cannot be taken down from here".into())
    }

    fn crm_token_revoked(&self, _: bool) -> Result<(), String> {
        Err("the CRM is not the in-process sandbox, so its token cannot be revoked from here".into())
    }

    fn crm_search_lag(&self, _: bool) -> Result<(), String> {
        Err("the CRM is not the in-process sandbox".into())
    }
}

/// The seeded known caller (seed 003: "one test contact with a known phone number, an open
/// opportunity, a recent note, and a task").
struct Known {
    id: String,
    phone: String,
    email: String,
    first_name: String,
    deal: Option<String>,
}

/// One run of the plan against one tenant.
pub struct Pilot {
    access: ServiceAccess,
    tenant: Arc<Tenant>,
    degrade: Arc<dyn Degrade>,
    clock: SharedClock,
    run: String,
    phones: Vec<String>,
    checks: Vec<Check>,
    calls: Vec<CallRecord>,
    seeded: Vec<(CrmObjectType, String)>,
    /// Events booked by the plan: (calendar id, event id).
    events: Vec<(String, String)>,
    progress: Box<dyn FnMut(&str) + Send>,
}

/// Area codes for the run's caller numbers (all in the 555-01xx range set aside for fiction).
const AREAS: [&str; 6] = ["646", "332", "917", "347", "929", "718"];
const CALLS: usize = 16;

impl Pilot {
    pub fn new(access: ServiceAccess, tenant: Arc<Tenant>, degrade: Arc<dyn Degrade>, clock: SharedClock) -> Self {
        let seed: u32 = rand::random();
        let run = format!("{:06x}", seed & 0xff_ffff);
        let area = AREAS[(seed >> 24) as usize % AREAS.len()];
        let offset = 100 + (seed % 81) as usize;
        let phones = (0..=CALLS).map(|k| format!("+1{area}5550{}", offset + k)).collect();
        Self {
            access,
            tenant,
            degrade,
            clock,
            run,
            phones,
            checks: Vec::new(),
            calls: Vec::new(),
            seeded: Vec::new(),
            events: Vec::new(),
            progress: Box::new(|line| println!("{line}")),
        }
    }

    /// Where the progress lines go (stdout by default).
    pub fn on_progress(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.progress = Box::new(f);
        self
    }

    fn tag(&self, n: usize) -> String {
        format!("[pilot {} #{n}]", self.run)
    }

    fn email(&self, who: &str) -> String {
        format!("pilot.{}.{who}@callside-pilot.example", self.run)
    }

    fn check(&mut self, dimension: Dimension, call: &str, passed: bool, fails_to: Depth, evidence: impl Into<String>) {
        self.checks.push(Check { dimension, call: call.to_owned(), passed, fails_to, evidence: evidence.into() });
    }

    /// Runs the whole plan, then cleans up. `Err` only when the plan could not start (the
    /// service or the CRM refused the setup); everything after that is scored.
    pub async fn run(mut self) -> anyhow::Result<PilotReport> {
        let started_at = self.clock.now();
        (self.progress)(&format!(
            "pilot {} on tenant {} (CRM {}, calendar {}): {CALLS} calls",
            self.run,
            self.tenant.id(),
            self.tenant.crm.vendor(),
            self.tenant.calendar.provider()
        ));
        let known = self.seed().await.context("seeding the test contact")?;
        let mut call_ids = Vec::new();
        for n in 1..=CALLS {
            if (14..=16).contains(&n) {
                if n == 14 {
                    call_ids.extend(self.burst(&known).await);
                }
                continue;
            }
            let call_id = format!("pilot-{}-{n}", self.run);
            if let Err(e) = self.one_call(n, &call_id, &known).await {
                let label = label(n);
                self.check(
                    Dimension::Observability,
                    &format!("#{n} {label}"),
                    false,
                    Depth::None,
                    format!("the call could not be completed: {e:#}"),
                );
                self.record(n, &call_id, "not completed");
            }
            call_ids.push(call_id);
        }
        let cleanup = self.cleanup(&call_ids).await;
        let finished_at = self.clock.now();
        let dimensions = score::score(&self.checks);
        Ok(PilotReport {
            tenant: self.tenant.id().to_owned(),
            crm: self.tenant.crm.vendor().to_owned(),
            calendar: self.tenant.calendar.provider().to_owned(),
            run: self.run.clone(),
            started_at: started_at.to_string(),
            finished_at: finished_at.to_string(),
            dimensions,
            calls: self.calls,
            checks: self.checks,
            cleanup,
        })
    }

    async fn seed(&mut self) -> anyhow::Result<Known> {
        let crm = self.tenant.crm.clone();
        let phone = self.phones[0].clone();
        let email = self.email("known");
        let fields = ContactFields {
            first_name: Some("Morgan".into()),
            last_name: Some(format!("Quill-{}", self.run)),
            email: Some(email.clone()),
            phone: Some(phone.clone()),
            zip: None,
            source: Some("callside pilot".into()),
        };
        let id = crm.create_contact(&fields, &format!("pilot-{}-known", self.run)).await?;
        self.seeded.push((CrmObjectType::Contact, id.clone()));
        let deal_name = format!("Kitchen remodel quote {}", self.tag(0));
        let deal = DealRecord { name: deal_name.clone(), stage: None, amount: Some("4800".into()) };
        let deal = match crm.create_deal(&id, &deal, &format!("pilot-{}-deal", self.run)).await {
            Ok(d) => {
                self.seeded.push((CrmObjectType::Deal, d));
                Some(deal_name)
            }
            Err(e) => {
                self.check(
                    Dimension::ReadParity,
                    "setup",
                    false,
                    Depth::Shallow,
                    format!("no open deal could be seeded: {e}"),
                );
                None
            }
        };
        let now = self.clock.now();
        let note = NoteRecord { body: format!("{} Prefers morning appointments.", self.tag(0)), at: now };
        let note = crm.log_note(&id, &note, &format!("pilot-{}-note", self.run)).await?;
        self.seeded.push((CrmObjectType::Note, note));
        let task = TaskRecord {
            subject: format!("{} Send the revised quote", self.tag(0)),
            body: None,
            due: now + jiff::SignedDuration::from_hours(24),
            owner_id: None,
            priority: Some("MEDIUM".into()),
        };
        let task = crm.create_task(&id, &task, &format!("pilot-{}-task", self.run)).await?;
        self.seeded.push((CrmObjectType::Task, task));
        (self.progress)(&format!("[setup] seeded contact {id} with an open deal, a note and a task"));
        Ok(Known { id, phone, email, first_name: "Morgan".into(), deal })
    }

    fn record(&mut self, n: usize, call_id: &str, sync_status: &str) {
        let prefix = format!("#{n} ");
        let mine: Vec<&Check> = self.checks.iter().filter(|c| c.call.starts_with(&prefix)).collect();
        let passed = mine.iter().filter(|c| c.passed).count();
        let total = mine.len();
        let from = match n {
            3 | 5..=8 | 13 => redact(&self.phones[0]),
            15 | 16 => redact(&self.phones[14]),
            _ => redact(&self.phones[n]),
        };
        let line = format!(
            "[{n:>2}/{CALLS}] {:<44} {:<10} {passed}/{total} checks{}",
            label(n),
            sync_status,
            if passed == total { "" } else { "  <- FAILED" }
        );
        (self.progress)(&line);
        self.calls.push(CallRecord {
            n,
            label: label(n).to_owned(),
            call_id: call_id.to_owned(),
            from,
            sync_status: sync_status.to_owned(),
            checks_passed: passed,
            checks_total: total,
        });
    }

    async fn open(&self, call_id: &str, from: &str) -> anyhow::Result<CallClient> {
        self.access.open_call(call_id, from).await
    }

    /// `end_call`, hang up, and wait for the write-back to settle; the final sync log.
    async fn end(&mut self, mut c: CallClient, call_id: &str, args: Value) -> anyhow::Result<Value> {
        let ended = c.tool_ok("end_call", args).await?;
        anyhow::ensure!(ended["saved"] == json!(true), "end_call did not save the call: {ended}");
        c.hang_up().await;
        self.settled(call_id).await
    }

    async fn settled(&self, call_id: &str) -> anyhow::Result<Value> {
        self.wait_log(call_id, "the write-back to settle", settled).await
    }

    /// Polls the call's sync log (the console API) until `done` holds, within [`SETTLE`].
    async fn wait_log(&self, call_id: &str, what: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        let mut pause = POLL.0;
        loop {
            if let Some(log) = self.access.sync_log(call_id).await?
                && done(&log)
            {
                return Ok(log);
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "gave up waiting for {what} on {call_id}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL.1);
        }
    }

    /// Contacts that really hold this number (the vendor's search may be loose).
    async fn contacts_by_phone(&self, e164: &str) -> Result<Vec<CrmContact>, ConnectorError> {
        let region = self.tenant.config.default_region;
        let ParsedPhone::Number(p) = Phone::parse(e164, region) else {
            return Ok(vec![]);
        };
        let found = self.tenant.crm.find_contacts_by_phone(&p.query()).await?;
        Ok(found.into_iter().filter(|c| c.phones.iter().any(|s| crate::identity::same_number(&p, s, region))).collect())
    }

    /// The one contact that holds `e164` after call `n`, with its context; a write or match
    /// check fails when there is none or several.
    async fn the_contact(&mut self, n: usize, e164: &str) -> Option<CrmContext> {
        let call = format!("#{n} {}", label(n));
        match self.contacts_by_phone(e164).await {
            Ok(list) if list.len() == 1 => match self.tenant.crm.read_context(&list[0].id).await {
                Ok(ctx) => Some(ctx),
                Err(e) => {
                    self.check(
                        Dimension::WriteParity,
                        &call,
                        false,
                        Depth::None,
                        format!("contact {} could not be read back: {e}", list[0].id),
                    );
                    None
                }
            },
            Ok(list) if list.is_empty() => {
                self.check(
                    Dimension::WriteParity,
                    &call,
                    false,
                    Depth::None,
                    format!("no contact in the CRM holds {}", redact(e164)),
                );
                None
            }
            Ok(list) => {
                let ids: Vec<&str> = list.iter().map(|c| c.id.as_str()).collect();
                self.check(
                    Dimension::MatchLogic,
                    &call,
                    false,
                    Depth::Shallow,
                    format!("{} contacts hold {} (duplicates): {ids:?}", list.len(), redact(e164)),
                );
                None
            }
            Err(e) => {
                self.check(Dimension::WriteParity, &call, false, Depth::None, format!("the CRM search failed: {e}"));
                None
            }
        }
    }

    /// The call log of call `n` on the contact (found by its tag), checked for write parity, and
    /// both the contact and the call log checked against the sync log (observability).
    async fn verify_logged(&mut self, n: usize, contact_id: &str, log: &Value, extra: Option<&str>) -> Option<String> {
        let call = format!("#{n} {}", label(n));
        let tag = self.tag(n);
        let ctx = match self.tenant.crm.read_context(contact_id).await {
            Ok(ctx) => ctx,
            Err(e) => {
                self.check(
                    Dimension::WriteParity,
                    &call,
                    false,
                    Depth::None,
                    format!("contact {contact_id} could not be read back: {e}"),
                );
                return None;
            }
        };
        let found = ctx.recent_activity.iter().find(|a| a.kind == ActivityKind::Call && a.summary.contains(&tag));
        let call_log = found.map(|a| a.id.clone());
        let extra_ok = match (found, extra) {
            (Some(a), Some(text)) => a.summary.contains(text),
            _ => true,
        };
        self.check(
            Dimension::WriteParity,
            &call,
            found.is_some() && extra_ok,
            Depth::Shallow,
            match (&call_log, extra) {
                (Some(id), Some(text)) if extra_ok => {
                    format!("call log {id} on contact {contact_id}, with \"{text}\" as said")
                }
                (Some(id), Some(text)) => format!("call log {id} on contact {contact_id} lacks \"{text}\""),
                (Some(id), None) => format!("call log {id} on contact {contact_id}"),
                (None, _) => format!("no call log tagged {tag} on contact {contact_id}"),
            },
        );
        // Observability: every record the CRM shows for this call is in the call's sync log.
        let steps = log["steps"].as_array().cloned().unwrap_or_default();
        let logged = |id: &str| steps.iter().any(|s| s["external_id"].as_str() == Some(id) && s["status"] == "done");
        let mut missing = Vec::new();
        if !logged(contact_id) {
            missing.push(format!("contact {contact_id}"));
        }
        if let Some(id) = &call_log
            && !logged(id)
        {
            missing.push(format!("call log {id}"));
        }
        let status = log["status"].as_str().unwrap_or("?").to_owned();
        self.check(
            Dimension::Observability,
            &call,
            missing.is_empty(),
            Depth::Shallow,
            if missing.is_empty() {
                format!("sync log: {status}, {} step(s), each CRM record listed with its step", steps.len())
            } else {
                format!("the CRM holds {} but the call's sync log ({status}) has no step for it", missing.join(" and "))
            },
        );
        call_log
    }

    fn sync_status(log: &Value) -> String {
        log["status"].as_str().unwrap_or("?").to_owned()
    }

    async fn one_call(&mut self, n: usize, call_id: &str, known: &Known) -> anyhow::Result<()> {
        let call = format!("#{n} {}", label(n));
        let tag = self.tag(n);
        let status = match n {
            1 => {
                let from = self.phones[1].clone();
                let email = self.email("riley");
                let mut c = self.open(call_id, &from).await?;
                let ctx = c.tool_ok("get_caller_context", json!({})).await?;
                self.check(
                    Dimension::MatchLogic,
                    &call,
                    ctx["status"] == "new",
                    Depth::None,
                    format!("an unknown number is {}", ctx["status"]),
                );
                let log = self
                    .end(
                        c,
                        call_id,
                        json!({"summary": format!("{tag} Asked for a kitchen remodel quote."), "disposition": "info",
                        "duration_secs": 95, "caller_name": "Riley Stone", "caller_email": email, "caller_zip": "10002",
                        "intent": "quote", "language": "en"}),
                    )
                    .await?;
                if let Some(ctx) = self.the_contact(n, &from).await {
                    let c = &ctx.contact;
                    let want = [
                        ("first name", c.first_name.as_deref(), Some("Riley")),
                        ("last name", c.last_name.as_deref(), Some("Stone")),
                        ("email", c.email.as_deref(), Some(email.as_str())),
                        ("zip", c.zip.as_deref(), Some("10002")),
                    ];
                    let wrong: Vec<&str> = want.iter().filter(|(_, got, w)| got != w).map(|(f, _, _)| *f).collect();
                    self.check(
                        Dimension::WriteParity,
                        &call,
                        wrong.is_empty(),
                        Depth::Shallow,
                        if wrong.is_empty() {
                            format!(
                                "new contact {} with first name, last name, email, zip and phone in their own fields",
                                c.id
                            )
                        } else {
                            format!("contact {}: {} not written to its field", c.id, wrong.join(", "))
                        },
                    );
                    self.verify_logged(n, &ctx.contact.id.clone(), &log, None).await;
                }
                Self::sync_status(&log)
            }
            2 => {
                let from = self.phones[2].clone();
                let c = self.open(call_id, &from).await?;
                let log = self
                    .end(
                        c,
                        call_id,
                        json!({"summary": format!("{tag} Asked about opening hours."), "caller_name": "Casey"}),
                    )
                    .await?;
                if let Some(ctx) = self.the_contact(n, &from).await {
                    let c = &ctx.contact;
                    let ok = c.first_name.as_deref() == Some("Casey")
                        && c.last_name.is_none()
                        && c.email.is_none()
                        && c.zip.is_none();
                    self.check(
                        Dimension::WriteParity,
                        &call,
                        ok,
                        Depth::Shallow,
                        format!(
                            "contact {}: first name {:?}, last name {:?}, email {}, zip {:?} (optional fields must stay empty)",
                            c.id,
                            c.first_name,
                            c.last_name,
                            if c.email.is_some() { "set" } else { "empty" },
                            c.zip
                        ),
                    );
                    self.verify_logged(n, &ctx.contact.id.clone(), &log, None).await;
                }
                Self::sync_status(&log)
            }
            3 => {
                let mut c = self.open(call_id, &known.phone).await?;
                let ctx = c.tool_ok("get_caller_context", json!({})).await?;
                let matched = ctx["status"] == "matched" && ctx["contact"]["id"].as_str() == Some(known.id.as_str());
                self.check(
                    Dimension::MatchLogic,
                    &call,
                    matched,
                    Depth::None,
                    format!("the known number is {} (contact {})", ctx["status"], ctx["contact"]["id"]),
                );
                let name_ok = ctx["contact"]["first_name"].as_str() == Some(known.first_name.as_str());
                self.check(
                    Dimension::ReadParity,
                    &call,
                    matched && name_ok,
                    Depth::None,
                    format!("the AI was given the caller's name: {}", name_ok),
                );
                let deals: Vec<String> = ctx["open_deals"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|d| d["name"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                let deal_ok = known.deal.as_ref().is_some_and(|d| deals.contains(d));
                self.check(
                    Dimension::ReadParity,
                    &call,
                    deal_ok,
                    Depth::Shallow,
                    if deal_ok {
                        "the AI was given the open deal".to_owned()
                    } else {
                        format!("the open deal was not in the context ({} open deal(s) given)", deals.len())
                    },
                );
                let touch = ctx["last_touchpoint"]["summary"].as_str().unwrap_or_default().to_owned();
                let touch_ok = touch.contains(&self.tag(0));
                self.check(
                    Dimension::ReadParity,
                    &call,
                    touch_ok,
                    Depth::Shallow,
                    if touch_ok {
                        "the AI was given the last touchpoint (the seeded note)".to_owned()
                    } else {
                        "the last touchpoint was missing".to_owned()
                    },
                );
                let log = self
                    .end(c, call_id, json!({"summary": format!("{tag} Asked about the quote."), "caller_zip": "10003", "disposition": "info"}))
                    .await?;
                if let Some(ctx) = self.the_contact(n, &known.phone).await {
                    let same = ctx.contact.id == known.id;
                    self.check(
                        Dimension::MatchLogic,
                        &call,
                        same,
                        Depth::None,
                        format!("the number still belongs to one contact ({})", ctx.contact.id),
                    );
                    let zip_ok = ctx.contact.zip.as_deref() == Some("10003");
                    self.check(
                        Dimension::WriteParity,
                        &call,
                        zip_ok,
                        Depth::Shallow,
                        format!("the zip the caller gave filled the empty zip field: {:?}", ctx.contact.zip),
                    );
                }
                self.verify_logged(n, &known.id, &log, None).await;
                Self::sync_status(&log)
            }
            4 | 11 | 12 => {
                let from = self.phones[n].clone();
                let mut c = self.open(call_id, &from).await?;
                c.tool_ok("get_caller_context", json!({})).await?;
                let ctx = c.tool_ok("get_caller_context", json!({"email": known.email})).await?;
                let matched = ctx["status"] == "matched" && ctx["contact"]["id"].as_str() == Some(known.id.as_str());
                self.check(
                    Dimension::MatchLogic,
                    &call,
                    matched,
                    Depth::Shallow,
                    format!(
                        "an unknown number with the known email is {} (contact {})",
                        ctx["status"], ctx["contact"]["id"]
                    ),
                );
                let log = self
                    .end(
                        c,
                        call_id,
                        json!({"summary": format!("{tag} Called from another phone."), "caller_email": known.email}),
                    )
                    .await?;
                match self.contacts_by_phone(&from).await {
                    Ok(list) => {
                        let strangers: Vec<&str> =
                            list.iter().filter(|c| c.id != known.id).map(|c| c.id.as_str()).collect();
                        self.check(
                            Dimension::MatchLogic,
                            &call,
                            strangers.is_empty(),
                            Depth::Shallow,
                            if strangers.is_empty() {
                                "no new contact for the new number".to_owned()
                            } else {
                                format!("a duplicate contact was created for the known caller: {strangers:?}")
                            },
                        );
                    }
                    Err(e) => self.check(
                        Dimension::MatchLogic,
                        &call,
                        false,
                        Depth::None,
                        format!("the CRM search failed: {e}"),
                    ),
                }
                match self.tenant.crm.find_contacts_by_email(&known.email).await {
                    Ok(list) => {
                        let n_found = list.len();
                        self.check(
                            Dimension::MatchLogic,
                            &call,
                            n_found == 1,
                            Depth::Shallow,
                            format!("{n_found} contact(s) hold the known email"),
                        );
                    }
                    Err(e) => self.check(
                        Dimension::MatchLogic,
                        &call,
                        false,
                        Depth::None,
                        format!("the CRM search failed: {e}"),
                    ),
                }
                self.verify_logged(n, &known.id, &log, None).await;
                Self::sync_status(&log)
            }
            5 => {
                let mut c = self.open(call_id, &known.phone).await?;
                let service = self.tenant.config.services.first().context("the tenant offers no service")?.clone();
                let slots = c.tool_ok("find_slots", json!({"service": service.id})).await?;
                let slot = slots["slots"].get(0).cloned().context("no slot offered")?;
                let hold = c
                    .tool_ok(
                        "hold_slot",
                        json!({"service": service.id, "start": slot["start"], "staff_id": slot["staff_id"]}),
                    )
                    .await?;
                let booked = c
                    .tool_ok(
                        "book_slot",
                        json!({"hold_id": hold["hold_id"], "name": "Morgan Quill", "email": known.email}),
                    )
                    .await?;
                let event_id = booked["event_id"].as_str().context("book_slot gave no event id")?.to_owned();
                let staff = booked["staff_id"].as_str().unwrap_or_default().to_owned();
                let log = self
                    .end(
                        c,
                        call_id,
                        json!({"summary": format!("{tag} Booked a {}.", service.name), "disposition": "booked"}),
                    )
                    .await?;
                match self.event(&staff, &event_id).await {
                    Some((cal, e)) => {
                        let minutes = e.end.duration_since(e.start).as_mins();
                        let ok = minutes == i64::from(service.duration_minutes) && e.status != "cancelled";
                        self.check(
                            Dimension::WriteParity,
                            &call,
                            ok,
                            Depth::Shallow,
                            format!(
                                "calendar event {event_id} in {cal}: {minutes} min (service: {} min), {}",
                                service.duration_minutes, e.status
                            ),
                        );
                        self.events.push((cal, event_id));
                    }
                    None => self.check(
                        Dimension::WriteParity,
                        &call,
                        false,
                        Depth::Shallow,
                        format!("the calendar has no event {event_id}"),
                    ),
                }
                self.verify_logged(n, &known.id, &log, None).await;
                Self::sync_status(&log)
            }
            6 | 7 => {
                let (cal, event_id) = self.events.first().cloned().context("no booking from call 5 to change")?;
                let mut c = self.open(call_id, &known.phone).await?;
                let found = c.tool_ok("find_appointments", json!({})).await?;
                let listed = found["appointments"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["appointment_id"] == json!(event_id)));
                anyhow::ensure!(listed, "find_appointments did not list the booking: {found}");
                let before = self.tenant.calendar.get_event(&cal, &event_id).await?;
                if n == 6 {
                    let service = found["appointments"][0]["service_id"].as_str().unwrap_or_default().to_owned();
                    let slots = c.tool_ok("find_slots", json!({"service": service})).await?;
                    let new_start = slots["slots"]
                        .as_array()
                        .and_then(|a| {
                            a.iter().find(|s| {
                                s["start"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok())
                                    != Some(before.start)
                            })
                        })
                        .map(|s| s["start"].clone())
                        .context("no other slot to move to")?;
                    c.tool_ok("reschedule_appointment", json!({"appointment_id": event_id, "start": new_start}))
                        .await?;
                    let log = self
                        .end(
                            c,
                            call_id,
                            json!({"summary": format!("{tag} Moved the appointment."), "disposition": "rescheduled"}),
                        )
                        .await?;
                    let want: Option<jiff::Timestamp> = new_start.as_str().and_then(|t| t.parse().ok());
                    match self.tenant.calendar.get_event(&cal, &event_id).await {
                        Ok(e) => self.check(
                            Dimension::WriteParity,
                            &call,
                            Some(e.start) == want
                                && e.status != "cancelled"
                                && e.end.duration_since(e.start) == before.end.duration_since(before.start),
                            Depth::Shallow,
                            format!("event {event_id} moved in place to {} ({}), same duration", e.start, e.status),
                        ),
                        Err(e) => self.check(
                            Dimension::WriteParity,
                            &call,
                            false,
                            Depth::Shallow,
                            format!("event {event_id} is gone after the reschedule (deleted and recreated?): {e}"),
                        ),
                    }
                    self.verify_logged(n, &known.id, &log, None).await;
                    Self::sync_status(&log)
                } else {
                    c.tool_ok("cancel_appointment", json!({"appointment_id": event_id, "reason": "Cannot make it"}))
                        .await?;
                    let log = self
                        .end(
                            c,
                            call_id,
                            json!({"summary": format!("{tag} Cancelled the appointment."), "disposition": "cancelled"}),
                        )
                        .await?;
                    let cancelled = match self.tenant.calendar.get_event(&cal, &event_id).await {
                        Ok(e) => e.status == "cancelled",
                        Err(ConnectorError::NotFound(_)) => true,
                        Err(_) => false,
                    };
                    self.check(
                        Dimension::WriteParity,
                        &call,
                        cancelled,
                        Depth::Shallow,
                        format!("event {event_id} cancelled in the calendar: {cancelled}"),
                    );
                    self.verify_logged(n, &known.id, &log, None).await;
                    Self::sync_status(&log)
                }
            }
            8 => {
                let mut c = self.open(call_id, &known.phone).await?;
                let reason = format!("{tag} wants to dispute an invoice");
                c.tool_ok("escalate", json!({"reason": reason, "urgency": "high"})).await?;
                let log = self
                    .end(
                        c,
                        call_id,
                        json!({"summary": format!("{tag} Escalated to the team."), "disposition": "escalated"}),
                    )
                    .await?;
                match self.tenant.crm.read_context(&known.id).await {
                    Ok(ctx) => {
                        let task = ctx.open_tasks.iter().find(|t| t.subject.contains(&tag));
                        self.check(
                            Dimension::WriteParity,
                            &call,
                            task.is_some(),
                            Depth::Shallow,
                            match task {
                                Some(t) => format!("task {} \"{}\" on the contact", t.id, t.subject),
                                None => "no task with the escalation reason on the contact".to_owned(),
                            },
                        );
                    }
                    Err(e) => self.check(
                        Dimension::WriteParity,
                        &call,
                        false,
                        Depth::None,
                        format!("contact could not be read back: {e}"),
                    ),
                }
                self.verify_logged(n, &known.id, &log, Some("dispute an invoice")).await;
                Self::sync_status(&log)
            }
            9 => {
                let from = self.phones[9].clone();
                let mut c = self.open(call_id, &from).await?;
                let slots = c.tool("find_slots", json!({"service": "corte de pelo"})).await?;
                let spanish_service = !slots.0;
                let log = self
                    .end(c, call_id, json!({"summary": format!("{tag} Llamó para pedir una cita de corte de pelo; prefiere el sábado."),
                        "caller_name": "José Núñez", "caller_email": self.email("jose"), "language": "es"}))
                    .await?;
                if let Some(ctx) = self.the_contact(n, &from).await {
                    let c = &ctx.contact;
                    let ok = c.first_name.as_deref() == Some("José") && c.last_name.as_deref() == Some("Núñez");
                    self.check(
                        Dimension::WriteParity,
                        &call,
                        ok && spanish_service,
                        Depth::Shallow,
                        format!(
                            "contact {}: name with its accents intact: {ok}; the Spanish service name was understood: {spanish_service}",
                            c.id
                        ),
                    );
                    self.verify_logged(n, &ctx.contact.id.clone(), &log, Some("corte de pelo")).await;
                }
                Self::sync_status(&log)
            }
            10 | 13 => self.degraded(n, call_id, known).await?,
            _ => unreachable!("call {n} is not in the plan"),
        };
        self.record(n, call_id, &status);
        Ok(())
    }

    /// Calls 10 (CRM unreachable) and 13 (token revoked): the call must be acknowledged, the
    /// failed write kept for retry (not swallowed, not dropped), visible in the sync log, and
    /// land once the integration is restored and the operator re-syncs.
    async fn degraded(&mut self, n: usize, call_id: &str, known: &Known) -> anyhow::Result<String> {
        let call = format!("#{n} {}", label(n));
        let tag = self.tag(n);
        let down = n == 10;
        let switched = if down { self.degrade.crm_down(true) } else { self.degrade.crm_token_revoked(true) };
        if let Err(why) = switched {
            self.check(Dimension::ErrorHandling, &call, false, Depth::None, format!("not run: {why}"));
            return Ok("not run".into());
        }
        let from = if down { self.phones[10].clone() } else { known.phone.clone() };
        let result = async {
            let mut c = self.open(call_id, &from).await?;
            let ctx = c.tool_ok("get_caller_context", json!({})).await?;
            let mut args = json!({"summary": format!("{tag} Called while the CRM was degraded.")});
            if down {
                args["caller_name"] = json!("Dana Reyes");
                args["caller_email"] = json!(self.email("dana"));
            }
            let ended = c.tool("end_call", args).await?;
            c.hang_up().await;
            // The degraded CRM has been met: a step waits for its retry or is parked — or the
            // write-back ended (whatever it recorded, it is no longer running).
            let first = self
                .wait_log(call_id, "the first write attempt", |log| {
                    settled(log)
                        || log["steps"].as_array().is_some_and(|s| {
                            s.iter().any(|x| {
                                (x["attempts"].as_i64().unwrap_or(0) >= 1 && x["status"] == "pending")
                                    || x["status"] == "parked"
                            })
                        })
                })
                .await?;
            anyhow::Ok((ctx, ended, first))
        }
        .await;
        let restored = if down { self.degrade.crm_down(false) } else { self.degrade.crm_token_revoked(false) };
        let (ctx, ended, first) = result?;
        restored.map_err(|e| anyhow::anyhow!("restoring the CRM: {e}"))?;
        if down {
            let graceful = ctx["status"] == "unavailable";
            self.check(
                Dimension::ErrorHandling,
                &call,
                graceful,
                Depth::Shallow,
                format!("with the CRM down the AI was told the context is {}", ctx["status"]),
            );
        }
        let saved = !ended.0 && ended.1["saved"] == json!(true);
        self.check(
            Dimension::ErrorHandling,
            &call,
            saved,
            Depth::None,
            format!("end_call during the outage was acknowledged: {saved}"),
        );
        // What the service did with the failed write.
        let steps = first["steps"].as_array().cloned().unwrap_or_default();
        // The steps that met the degraded CRM (the others wait on them).
        let tried: Vec<&Value> =
            steps.iter().filter(|s| s["attempts"].as_i64().unwrap_or(0) >= 1 || s["status"] == "parked").collect();
        let kept: Vec<&Value> =
            tried.iter().copied().filter(|s| matches!(s["status"].as_str(), Some("pending" | "parked"))).collect();
        let done_blind: Vec<&Value> =
            steps.iter().filter(|s| s["status"] == "done" && s["external_id"].is_null()).collect();
        let ok = !kept.is_empty() && done_blind.is_empty();
        let first_status = tried.first().and_then(|s| s["status"].as_str()).unwrap_or("none").to_owned();
        self.check(
            Dimension::ErrorHandling,
            &call,
            ok,
            Depth::None,
            if ok {
                format!(
                    "the failed write was kept ({}) for retry, not dropped",
                    kept.iter().filter_map(|s| s["status"].as_str()).collect::<Vec<_>>().join(", ")
                )
            } else if !done_blind.is_empty() {
                format!(
                    "a write failure was swallowed: {} step(s) recorded done with no CRM record while the CRM was {}",
                    done_blind.len(),
                    if down { "unreachable" } else { "refusing the token" }
                )
            } else {
                format!("the failed write was not kept for retry (first step: {first_status})")
            },
        );
        // Observability: a failure the service recorded is visible in the call's sync log.
        if !kept.is_empty() {
            let shown = first["status"] != "synced"
                && kept.iter().all(|s| s["last_error"].as_str().is_some_and(|e| !e.is_empty()));
            self.check(
                Dimension::Observability,
                &call,
                shown,
                Depth::Shallow,
                format!(
                    "during the outage the sync log said {} with the error \"{}\"",
                    first["status"].as_str().unwrap_or("?"),
                    kept[0]["last_error"].as_str().unwrap_or("")
                ),
            );
        }
        // Restored: the operator's re-sync (seed 003: "Can you manually re-sync?").
        self.access.action(call_id, "resync").await?;
        let log = self.settled(call_id).await?;
        let contact =
            if down { self.the_contact(n, &from).await.map(|c| c.contact.id) } else { Some(known.id.clone()) };
        let landed = match &contact {
            Some(id) => self.verify_logged(n, id, &log, None).await.is_some(),
            None => false,
        };
        self.check(
            Dimension::ErrorHandling,
            &call,
            landed,
            Depth::None,
            if landed {
                "after the CRM was restored and the call re-synced, its record landed"
            } else {
                "the call's record never reached the CRM"
            },
        );
        Ok(Self::sync_status(&log))
    }

    /// Calls 14–16: three concurrent calls from one new number while the CRM's search index
    /// lags (a naive integration searches, finds nothing, and creates a contact per call).
    async fn burst(&mut self, _known: &Known) -> Vec<String> {
        let from = self.phones[14].clone();
        let ids: Vec<String> = (14..=16).map(|n| format!("pilot-{}-{n}", self.run)).collect();
        let lag = self.degrade.crm_search_lag(true);
        let calls = ids.iter().enumerate().map(|(i, id)| {
            let access = self.access.clone();
            let from = from.clone();
            let summary = format!("{} Asked about prices.", self.tag(14 + i));
            let id = id.clone();
            async move {
                let mut c = access.open_call(&id, &from).await?;
                c.tool_ok("get_caller_context", json!({})).await?;
                let ended = c.tool_ok("end_call", json!({"summary": summary, "caller_name": "Jordan Vale"})).await?;
                c.hang_up().await;
                anyhow::ensure!(ended["saved"] == json!(true), "not saved: {ended}");
                anyhow::Ok(())
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut logs = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let log = match &results[i] {
                Ok(()) => self.settled(id).await,
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            };
            logs.push(log);
        }
        if lag.is_ok() {
            let _ = self.degrade.crm_search_lag(false);
        }
        let lag_note = match &lag {
            Ok(()) => "while the CRM's search index lagged",
            Err(_) => "(the search lag could not be simulated)",
        };
        let contact = match self.contacts_by_phone(&from).await {
            Ok(list) => {
                let ok = list.len() == 1;
                self.check(
                    Dimension::MatchLogic,
                    "#14 burst",
                    ok,
                    Depth::Shallow,
                    format!("three concurrent calls from one new number {lag_note}: {} contact(s) hold it", list.len()),
                );
                if ok { Some(list[0].id.clone()) } else { None }
            }
            Err(e) => {
                self.check(
                    Dimension::MatchLogic,
                    "#14 burst",
                    false,
                    Depth::None,
                    format!("the CRM search failed: {e}"),
                );
                None
            }
        };
        for (i, id) in ids.iter().enumerate() {
            let n = 14 + i;
            let status = match &logs[i] {
                Ok(log) => {
                    if let Some(contact) = &contact {
                        self.verify_logged(n, contact, log, None).await;
                    }
                    Self::sync_status(log)
                }
                Err(e) => {
                    self.check(
                        Dimension::Observability,
                        &format!("#{n} {}", label(n)),
                        false,
                        Depth::None,
                        format!("the call could not be completed: {e}"),
                    );
                    "not completed".into()
                }
            };
            self.record(n, id, &status);
        }
        ids
    }

    /// A booked event, looked up in the staff member's calendars.
    async fn event(&self, staff: &str, event_id: &str) -> Option<(String, crate::connectors::calendar::CalendarEvent)> {
        let member = self.tenant.config.staff.iter().find(|s| s.id == staff)?;
        for cal in &member.calendar_ids {
            if let Ok(e) = self.tenant.calendar.get_event(cal, event_id).await {
                return Some((cal.clone(), e));
            }
        }
        None
    }

    /// Undoes every call's write-back (newest first), deletes the seeded records and cancels any
    /// event the plan left booked; then checks no contact holds a pilot number any more.
    async fn cleanup(&mut self, call_ids: &[String]) -> Cleanup {
        let mut out = Cleanup::default();
        for id in call_ids.iter().rev() {
            match self.access.action(id, "undo").await {
                Ok(report) => {
                    out.calls_undone += 1;
                    for s in report["skipped"].as_array().into_iter().flatten() {
                        out.left.push(format!("{id}: {} {} ({})", s["object_type"], s["object_id"], s["reason"]));
                    }
                }
                Err(e) => out.left.push(format!("{id}: undo failed: {e:#}")),
            }
        }
        for (kind, id) in self.seeded.iter().rev() {
            match self.tenant.crm.delete_object(*kind, id).await {
                Ok(()) => out.objects_deleted += 1,
                Err(e) => out.left.push(format!("seeded {} {id}: {e}", kind.as_str())),
            }
        }
        for (cal, id) in &self.events {
            if let Ok(e) = self.tenant.calendar.get_event(cal, id).await
                && e.status != "cancelled"
            {
                match self.tenant.calendar.cancel_event(cal, id, false).await {
                    Ok(()) => out.events_cancelled += 1,
                    Err(err) => out.left.push(format!("event {id}: {err}")),
                }
            }
        }
        for phone in self.phones.clone() {
            if let Ok(list) = self.contacts_by_phone(&phone).await {
                for c in list {
                    out.left.push(format!("contact {} still holds {}", c.id, redact(&phone)));
                }
            }
        }
        (self.progress)(&format!(
            "[cleanup] {} call(s) undone, {} seeded record(s) deleted, {} left",
            out.calls_undone,
            out.objects_deleted,
            out.left.len()
        ));
        out
    }
}

/// Whether the call's write-back has nothing left running (the sync log's status).
fn settled(log: &Value) -> bool {
    matches!(log["status"].as_str(), Some("synced" | "partial" | "failed" | "shadow" | "needs_review" | "rejected"))
}

fn label(n: usize) -> &'static str {
    match n {
        1 => "new caller, full info",
        2 => "new caller, partial info",
        3 => "existing caller by phone",
        4 => "existing caller by email, new number",
        5 => "booking",
        6 => "reschedule",
        7 => "cancellation",
        8 => "escalation",
        9 => "Spanish-language caller",
        10 => "CRM down, then restored",
        11 | 12 => "unknown number, known email",
        13 => "CRM token revoked, then restored",
        14..=16 => "burst: concurrent calls, search lag",
        _ => "?",
    }
}

/// `+1646…0123` → `…23`: the report names numbers without spelling them out.
fn redact(phone: &str) -> String {
    let tail: String = phone.chars().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect();
    format!("…{tail}")
}
