//! A call's lifetime: open (prefetch spawned at once), tool dispatch, hangup. The transport
//! (WebSocket today, MCP HTTP later) owns the connection; this module owns the call.

pub(crate) mod pending;
mod tools;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use jiff::Timestamp;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::booking::BookingService;
use crate::clock::SharedClock;
use crate::connectors::crm::CallLog;
use crate::context::{CallerContext, ContextService, PosContext};
use crate::identity::ParsedPhone;
use crate::observe::Metrics;
use crate::protocol::ToolResult;
use crate::protocol::tools::EndCallArgs;
use crate::protocol::tools::ToolCall;
use crate::store::Store;
use crate::tenant::{Tenant, Tenants};
use crate::writeback::plan::{BookedSummary, PlatformReport, kind, merge_report};
use crate::writeback::settings::Mode;
use crate::writeback::{CallOutcome, EndReason, WorkerHandle, build_plan_with};

/// Everything the call core needs, shared by every transport.
pub struct Core {
    pub tenants: Arc<Tenants>,
    pub store: Store,
    pub clock: SharedClock,
    pub context: ContextService,
    pub booking: BookingService,
    pub worker: WorkerHandle,
    pub metrics: Arc<Metrics>,
    pub sessions: Sessions,
    /// The vendor accounts' rate budgets (live reads and the write-back lane, `connectors::rate`).
    pub budgets: Arc<crate::connectors::rate::RateBudgets>,
    /// Inbound calendar sync: cursors, subscriptions and progress (`crate::inbound::calendar`).
    pub calendar_sync: crate::inbound::calendar::CalendarSync,
    /// The cross-instance invalidation listener's progress (`crate::invalidation`).
    pub bus: crate::invalidation::Bus,
    /// The appointment outcome reader's progress (`crate::outcomes`).
    pub outcomes: crate::outcomes::OutcomeReader,
    /// This instance's side of the cluster-wide jobs' leases (`crate::leader`).
    pub jobs: Arc<crate::leader::Jobs>,
    /// This instance's takeovers of dead instances (`crate::instance`): its progress signal.
    pub takeovers: tokio::sync::watch::Sender<crate::instance::Takeovers>,
}

/// Live calls on this instance, by call id, under the concurrent-call caps (in total and per
/// tenant, every transport counted).
pub struct Sessions {
    live: Mutex<HashMap<String, Arc<CallSession>>>,
    /// Wakes the idle sweeper when an HTTP call opens (its deadline may be the earliest).
    opened: Notify,
    max_total: usize,
    max_per_tenant: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::with_caps(usize::MAX, usize::MAX)
    }
}

/// Which concurrent-call cap refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyScope {
    Total,
    Tenant,
}

impl BusyScope {
    /// The stable, speakable message of the "busy" answer.
    pub fn message(self) -> &'static str {
        match self {
            BusyScope::Total => "busy: too many calls in progress, try again shortly",
            BusyScope::Tenant => "busy: too many calls in progress for this business, try again shortly",
        }
    }
}

impl Sessions {
    pub fn with_caps(max_total: usize, max_per_tenant: usize) -> Self {
        Self { live: Mutex::default(), opened: Notify::new(), max_total, max_per_tenant }
    }

    /// Whether a new call of `tenant` would fit now (the gateway answers "busy" before an
    /// upgrade; [`Core::open_call`] re-checks atomically).
    pub fn room_for(&self, tenant: &str) -> Result<(), BusyScope> {
        Self::check(&self.live.lock().expect("sessions lock"), tenant, self.max_total, self.max_per_tenant)
    }

    fn check(
        live: &HashMap<String, Arc<CallSession>>,
        tenant: &str,
        max_total: usize,
        max_per_tenant: usize,
    ) -> Result<(), BusyScope> {
        if max_per_tenant != usize::MAX && live.values().filter(|s| s.tenant.id() == tenant).count() >= max_per_tenant {
            return Err(BusyScope::Tenant);
        }
        if live.len() >= max_total {
            return Err(BusyScope::Total);
        }
        Ok(())
    }

    /// Live calls reached over HTTP (no socket), for the idle sweeper.
    fn http_calls(&self) -> Vec<Arc<CallSession>> {
        self.live.lock().expect("sessions lock").values().filter(|s| s.transport == Transport::Http).cloned().collect()
    }

    pub fn get(&self, call_id: &str) -> Option<Arc<CallSession>> {
        self.live.lock().expect("sessions lock").get(call_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.live.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tenant's live calls on this instance (inbound sync looks for the caller of a changed
    /// record among them).
    pub fn live_for_tenant(&self, tenant: &str) -> Vec<Arc<CallSession>> {
        self.live.lock().expect("sessions lock").values().filter(|s| s.tenant.id() == tenant).cloned().collect()
    }

    fn insert(&self, s: Arc<CallSession>) -> Result<(), OpenError> {
        let mut live = self.live.lock().expect("sessions lock");
        if live.contains_key(&s.call_id) {
            return Err(OpenError::DuplicateCall);
        }
        Self::check(&live, s.tenant.id(), self.max_total, self.max_per_tenant).map_err(OpenError::Busy)?;
        live.insert(s.call_id.clone(), s);
        Ok(())
    }

    fn remove(&self, call_id: &str) {
        self.live.lock().expect("sessions lock").remove(call_id);
    }
}

/// What the call has done so far.
#[derive(Default)]
struct CallState {
    ended: bool,
    /// Live holds of this call and the service each is for.
    holds: Vec<(Uuid, String)>,
    bookings: Vec<BookedSummary>,
    captured_name: Option<String>,
    captured_email: Option<String>,
    appointment_changes: Vec<String>,
    escalations: Vec<crate::writeback::plan::EscalationRecord>,
    /// The caller re-matched mid-call (they gave an email or a name): replaces the prefetch.
    rematched: Option<Arc<CallerContext>>,
}

/// How the voice AI reaches this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One WebSocket for the call: a dropped socket ends it.
    Socket,
    /// Independent HTTP requests naming the call (MCP Streamable HTTP, Vapi): idle expiry ends it.
    Http,
}

pub struct CallSession {
    pub call_id: String,
    pub transport: Transport,
    /// Domain time (ms) of the last request for this call; the idle sweeper reads it.
    last_activity: AtomicI64,
    /// HTTP calls have no socket to push on: their notifications wait here and ride on the next
    /// tool result of the call.
    parked: Mutex<Option<mpsc::Receiver<Notification>>>,
    pub tenant: Arc<Tenant>,
    pub caller: ParsedPhone,
    pub dialed: String,
    pub started_at: Timestamp,
    prefetch: Shared<BoxFuture<'static, Arc<CallerContext>>>,
    /// The point-of-sale read, started at ring beside the prefetch (its email fallback waits
    /// on the prefetch's answer).
    pos: Shared<BoxFuture<'static, Arc<PosContext>>>,
    /// The caller's context as re-read after the CRM said the record changed (inbound sync);
    /// tools read it in place of the prefetch. The write-back keeps the ring-time read as its
    /// watermark (see `finish_call`), so a rep's mid-call edit still counts as newer.
    refreshed: Mutex<Option<Arc<CallerContext>>>,
    state: Mutex<CallState>,
    /// Server-initiated messages for the transport to deliver (e.g. "context ready").
    pub notifications: mpsc::Sender<Notification>,
}

/// A server notification, transport-neutral.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    ContextReady {
        status: &'static str,
    },
    /// The caller's record changed in the CRM during the call (inbound sync): the fresh context.
    ContextChanged {
        context: Arc<CallerContext>,
    },
    /// The calendar reported a foreign booking over a slot this call holds or booked (inbound
    /// sync): the AI should offer another time (a hold) or tell the caller staff will call
    /// (a booking: a staff task was created).
    SlotTaken {
        hold_id: uuid::Uuid,
        start: jiff::Timestamp,
        booked: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("a call with this id is already connected")]
    DuplicateCall,
    /// The id belongs to a call already recorded (finished, or another tenant's): a call id is
    /// used once, so a new session can never attach to another call's rows.
    #[error("this call id has already been used")]
    CallIdTaken,
    /// A concurrent-call cap is reached: the caller gets a clear "busy", never a hang.
    #[error("{}", .0.message())]
    Busy(BusyScope),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl Core {
    /// Opens a call: records it durably, registers it, and spawns the caller prefetch at once.
    pub async fn open_call(
        self: &Arc<Self>,
        tenant: Arc<Tenant>,
        call_id: String,
        caller: ParsedPhone,
        dialed: String,
    ) -> Result<(Arc<CallSession>, mpsc::Receiver<Notification>), OpenError> {
        self.open_call_via(tenant, call_id, caller, dialed, Transport::Socket).await
    }

    /// Opens a call reached over HTTP: its notifications are parked on the session (see
    /// [`CallSession::take_notifications`]) and the idle sweeper watches it.
    pub async fn open_http_call(
        self: &Arc<Self>,
        tenant: Arc<Tenant>,
        call_id: String,
        caller: ParsedPhone,
        dialed: String,
    ) -> Result<Arc<CallSession>, OpenError> {
        let (session, rx) = self.open_call_via(tenant, call_id, caller, dialed, Transport::Http).await?;
        *session.parked.lock().expect("parked lock") = Some(rx);
        self.sessions.opened.notify_one();
        Ok(session)
    }

    async fn open_call_via(
        self: &Arc<Self>,
        tenant: Arc<Tenant>,
        call_id: String,
        caller: ParsedPhone,
        dialed: String,
        transport: Transport,
    ) -> Result<(Arc<CallSession>, mpsc::Receiver<Notification>), OpenError> {
        let now = self.clock.now();
        let caller_e164 = match &caller {
            ParsedPhone::Number(p) => Some(p.e164.clone()),
            _ => None,
        };
        let (tx, rx) = mpsc::channel(16);
        // Single flight: the prefetch runs in its own task; `Shared` lets every waiter (the
        // first get_caller_context, end_call) await the same result — never a second fetch.
        let core = self.clone();
        let t = tenant.clone();
        let c = caller.clone();
        let notify = tx.clone();
        let task = tokio::spawn(async move {
            let ctx = core.context.fetch(&t, &c).await;
            let _ = notify.try_send(Notification::ContextReady { status: ctx.status() });
            ctx
        });
        let prefetch = async move {
            task.await
                .unwrap_or_else(|e| Arc::new(CallerContext::Unavailable { reason: format!("prefetch failed: {e}") }))
        }
        .boxed()
        .shared();
        let pos = {
            let (core, t, c, crm) = (self.clone(), tenant.clone(), caller.clone(), prefetch.clone());
            let task = tokio::spawn(async move { core.context.fetch_pos(&t, &c, crm).await });
            async move {
                task.await
                    .unwrap_or_else(|e| Arc::new(PosContext::Unavailable { reason: format!("POS read failed: {e}") }))
            }
            .boxed()
            .shared()
        };
        let session = Arc::new(CallSession {
            call_id: call_id.clone(),
            transport,
            last_activity: AtomicI64::new(now.as_millisecond()),
            parked: Mutex::new(None),
            tenant: tenant.clone(),
            caller,
            dialed: dialed.clone(),
            started_at: now,
            prefetch,
            pos,
            refreshed: Mutex::new(None),
            state: Mutex::new(CallState::default()),
            notifications: tx,
        });
        self.sessions.insert(session.clone())?;
        match self.store.record_call_start(&call_id, tenant.id(), caller_e164.as_deref(), &dialed, now).await {
            Ok(true) => {}
            Ok(false) => {
                self.sessions.remove(&call_id);
                return Err(OpenError::CallIdTaken);
            }
            Err(e) => {
                self.sessions.remove(&call_id);
                return Err(e.into());
            }
        }
        self.metrics.open_calls.inc();
        Ok((session, rx))
    }

    /// Runs one tool call for a session.
    pub async fn call_tool(self: &Arc<Self>, session: &Arc<CallSession>, call: ToolCall) -> ToolResult {
        tools::dispatch(self, session, call).await
    }

    /// Ends a call: persists the write-back plan (one transaction) and wakes the worker. Safe to
    /// call twice; only the first call writes. Returns the number of steps planned, or `None` if
    /// the call had already ended.
    pub async fn finish_call(
        &self,
        session: &Arc<CallSession>,
        reason: EndReason,
        args: Option<crate::protocol::tools::EndCallArgs>,
    ) -> Result<Option<usize>, crate::store::StoreError> {
        let (bookings, holds, name, email, changes, escalations) = {
            let mut st = session.state.lock().expect("call state lock");
            if st.ended {
                return Ok(None);
            }
            st.ended = true;
            (
                st.bookings.clone(),
                std::mem::take(&mut st.holds),
                st.captured_name.clone(),
                st.captured_email.clone(),
                std::mem::take(&mut st.appointment_changes),
                std::mem::take(&mut st.escalations),
            )
        };
        // Holds die with the call; bookings stay.
        for (h, _) in holds {
            let _ = session.tenant_release(self, h).await;
        }
        let ctx = session.context().await;
        let now = self.clock.now();
        let args = args.unwrap_or_else(|| crate::protocol::tools::EndCallArgs {
            summary: "Call ended without a wrap-up from the assistant.".into(),
            ..Default::default()
        });
        let duration =
            args.duration_secs.unwrap_or_else(|| now.duration_since(session.started_at).as_secs().max(0) as u64);
        let outcome = CallOutcome {
            call_id: session.call_id.clone(),
            end_reason: reason,
            started_at: session.started_at,
            duration_secs: duration,
            caller_phone: match &session.caller {
                ParsedPhone::Number(p) => Some(p.e164.clone()),
                _ => None,
            },
            dialed: session.dialed.clone(),
            matched_contact_id: ctx.contact_id().map(str::to_owned),
            summary: args.summary,
            disposition: args.disposition,
            recording_url: args.recording_url,
            transcript_url: args.transcript_url,
            caller_name: args.caller_name.or(name),
            caller_email: args.caller_email.or(email),
            caller_zip: args.caller_zip,
            bookings,
            service_names: vec![],
            appointment_changes: changes,
            intent: args.intent,
            answers: args.answers,
            sentiment: args.sentiment,
            urgency: args.urgency,
            language: args.language,
            related_ticket_id: args.related_ticket_id,
            escalations,
            contact_owner_id: ctx.matched_contact().and_then(|c| c.owner_id.clone()),
            open_deal_ids: ctx.open_deal_ids(),
            read_watermark: ctx.matched_contact().and_then(|c| c.updated_at),
        };
        let rules = &session.tenant.config.writeback_rules;
        let steps = build_plan_with(&outcome, rules, session.tenant.config.default_region);
        let outcome_json = serde_json::to_value(&outcome).expect("outcome serializes");
        let (call_id, tenant_id, end) = (&session.call_id, session.tenant.id(), reason.as_str());
        // Shadow and review plans are kept out of the outbox (see writeback::settings::Mode).
        let written = match rules.mode {
            Mode::Auto => self.store.close_call_with_plan(call_id, tenant_id, end, &outcome_json, &steps, now).await,
            mode => {
                let review = mode == Mode::Review;
                self.store.close_call_with_held_plan(call_id, tenant_id, end, &outcome_json, &steps, review, now).await
            }
        };
        self.sessions.remove(&session.call_id);
        self.metrics.open_calls.dec();
        written?;
        crate::failpoint::hit(crate::failpoint::END_CALL_AFTER_COMMIT);
        if let ParsedPhone::Number(p) = &session.caller {
            // The write-back will change the record: the next call must not see a stale one,
            // whichever instance of a shared store takes it.
            self.context.invalidate(session.tenant.id(), &p.e164).await;
            // Beside the answer, not before it: end_call's latency stays one commit.
            let (store, tenant, e164) = (self.store.clone(), session.tenant.id().to_owned(), p.e164.clone());
            tokio::spawn(async move { store.publish(&tenant, crate::store::bus::What::Caller { e164 }).await });
        }
        self.worker.wake();
        Ok(Some(steps.len()))
    }
}

/// What a platform's end-of-call report did to the call's write-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportApplied {
    /// Merged into the call log step before it was written (an idempotent update of the written
    /// object is planned too, in case the step was being applied at that moment).
    MergedIntoPending,
    /// The call log was already written: an update of that CRM object was planned.
    UpdatePlanned,
    /// The call has no call log to merge into (nothing to write for it).
    NothingToMerge,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("unknown call")]
    UnknownCall,
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Core {
    /// Applies a voice platform's end-of-call report (Vapi) to a call, whatever happened first:
    /// a live call is finished with the report; a call already finished (end_call, dropped socket,
    /// idle expiry) gets the report merged into its one call log — into the pending step if it
    /// has not been written yet, else as an update of the written CRM object. A call the service
    /// never saw is opened and finished from the report. Never two call logs for one call.
    pub async fn apply_platform_report(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        call_id: &str,
        caller: ParsedPhone,
        dialed: String,
        report: &PlatformReport,
    ) -> Result<ReportApplied, ReportError> {
        match self.store.call_tenant(call_id).await? {
            Some(owner) if owner != tenant.id() => return Err(ReportError::UnknownCall),
            _ => {}
        }
        let args = || EndCallArgs {
            summary: report
                .summary
                .clone()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "Call ended without a wrap-up from the assistant.".into()),
            recording_url: report.recording_url.clone(),
            duration_secs: report.duration_secs,
            ..Default::default()
        };
        match self.sessions.get(call_id) {
            Some(s) if s.tenant.id() != tenant.id() => return Err(ReportError::UnknownCall),
            Some(s) => {
                self.finish_call(&s, EndReason::EndCall, Some(args())).await?;
            }
            None if self.store.call(tenant.id(), call_id).await?.is_none() => {
                let s = self.open_http_call(tenant.clone(), call_id.to_owned(), caller, dialed).await?;
                self.finish_call(&s, EndReason::EndCall, Some(args())).await?;
            }
            None => {}
        }
        let now = self.clock.now();
        let _ = self.store.set_call_report(call_id, tenant.id(), &report_json(report)).await;
        let steps = self.store.steps_for_call(tenant.id(), call_id).await?;
        let Some(step) = steps.iter().find(|s| s.kind == kind::CALL_LOG) else {
            return Ok(ReportApplied::NothingToMerge);
        };
        let Ok(mut log) = serde_json::from_value::<CallLog>(step.payload.clone()) else {
            return Ok(ReportApplied::NothingToMerge);
        };
        merge_report(&mut log, report);
        let payload = serde_json::to_value(&log).expect("call log serializes");
        if step.status == "dead" {
            return Ok(ReportApplied::NothingToMerge);
        }
        // Not written yet: the create carries the report. The worker may be applying the step at
        // this very moment with the old payload, so an update of the written object is planned
        // too (it runs after the create, idempotent): the report is never lost to that race.
        let merged = step.status == "pending" && self.store.update_pending_step_payload(step.id, &payload, now).await?;
        let n = steps.iter().filter(|s| s.kind == kind::CALL_LOG_UPDATE).count();
        self.store
            .append_step(
                call_id,
                tenant.id(),
                kind::CALL_LOG_UPDATE,
                &payload,
                Some(step.id),
                &format!("{call_id}:call_update:{n}"),
                now,
            )
            .await?;
        self.worker.wake();
        Ok(if merged { ReportApplied::MergedIntoPending } else { ReportApplied::UpdatePlanned })
    }
}

/// The report as kept on the call's saved outcome (for the operator), without the transcript.
fn report_json(r: &PlatformReport) -> serde_json::Value {
    serde_json::json!({
        "summary": r.summary,
        "recording_url": r.recording_url,
        "duration_secs": r.duration_secs,
        "evaluation": r.evaluation,
        "ended_reason": r.ended_reason,
        "has_transcript": r.transcript.is_some(),
    })
}

impl Core {
    /// Finishes HTTP calls that have been idle past `idle`, as abandoned (their write-back is
    /// planned like a dropped socket's). Woken by the injected clock, so tests drive it with the
    /// manual clock; on `stop` the HTTP calls still open are finished as disconnected.
    pub async fn run_idle_sweeper(self: Arc<Self>, idle: jiff::SignedDuration, stop: CancellationToken) {
        loop {
            let opened = self.sessions.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            let now = self.clock.now();
            let mut next: Option<Timestamp> = None;
            for s in self.sessions.http_calls() {
                let due = s.last_activity() + idle;
                if due <= now {
                    tracing::info!(call_id = %s.call_id, tenant = %s.tenant.id(), "HTTP call idle; finishing it as abandoned");
                    if let Err(e) = self.finish_call(&s, EndReason::Abandoned, None).await {
                        tracing::error!(call_id = %s.call_id, error = %e, "could not persist the write-back of an abandoned call");
                    }
                } else {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
            let sleeper = next.map(|at| self.clock.sleep_until(at));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = &mut opened => {},
                _ = async { match sleeper { Some(s) => s.await, None => std::future::pending().await } } => {},
            }
        }
        for s in self.sessions.http_calls() {
            if let Err(e) = self.finish_call(&s, EndReason::Disconnected, None).await {
                tracing::error!(call_id = %s.call_id, error = %e, "could not persist the write-back of an HTTP call at shutdown");
            }
        }
    }
}

impl CallSession {
    /// Records activity on the call now (domain time); pushes its idle deadline back.
    pub fn touch(&self, now: Timestamp) {
        self.last_activity.fetch_max(now.as_millisecond(), Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> Timestamp {
        Timestamp::from_millisecond(self.last_activity.load(Ordering::Relaxed)).unwrap_or(self.started_at)
    }

    /// Server notifications waiting for an HTTP call (empty for a socket call, whose transport
    /// delivers them as they happen).
    pub fn take_notifications(&self) -> Vec<Notification> {
        let mut parked = self.parked.lock().expect("parked lock");
        let mut out = Vec::new();
        if let Some(rx) = parked.as_mut() {
            while let Ok(n) = rx.try_recv() {
                out.push(n);
            }
        }
        out
    }

    /// The caller's context: the latest re-read after a CRM change, else the ring-time prefetch.
    pub async fn context(&self) -> Arc<CallerContext> {
        if let Some(ctx) = self.state.lock().expect("call state lock").rematched.clone() {
            return ctx;
        }
        if let Some(fresh) = self.refreshed.lock().expect("refreshed lock").clone() {
            return fresh;
        }
        self.prefetch.clone().await
    }

    /// The caller's point-of-sale history as read at ring (waits for it, within its budget).
    pub async fn pos(&self) -> Arc<PosContext> {
        self.pos.clone().await
    }

    /// The context as currently known without waiting: `None` while the prefetch is running.
    pub fn context_now(&self) -> Option<Arc<CallerContext>> {
        if let Some(ctx) = self.state.lock().expect("call state lock").rematched.clone() {
            return Some(ctx);
        }
        if let Some(fresh) = self.refreshed.lock().expect("refreshed lock").clone() {
            return Some(fresh);
        }
        self.prefetch.peek().cloned()
    }

    /// Replaces the context after a CRM change and pushes it to the call's transport. Returns
    /// `false` (and pushes nothing) when the fresh read equals what the call already has.
    /// A call re-matched by what the caller said (`get_caller_context` with a name or email) is
    /// left alone: the re-read is by phone and would undo the re-match.
    pub fn replace_context(&self, fresh: Arc<CallerContext>) -> bool {
        if self.state.lock().expect("call state lock").rematched.is_some() {
            return false;
        }
        if self.context_now().is_some_and(|current| *current == *fresh) {
            return false;
        }
        *self.refreshed.lock().expect("refreshed lock") = Some(fresh.clone());
        // A full queue means the transport is not reading; the tools still see the new context.
        let _ = self.notifications.try_send(Notification::ContextChanged { context: fresh });
        true
    }

    /// The caller's E.164 number, when not withheld.
    pub fn caller_e164(&self) -> Option<&str> {
        match &self.caller {
            ParsedPhone::Number(p) => Some(&p.e164),
            _ => None,
        }
    }

    /// Adds a booking confirmed after the fact (a pending booking) to the call's outcome, if the
    /// call has not ended yet; `false` when it has (the caller then appends a write-back step).
    pub fn add_booking_if_live(&self, booking: BookedSummary) -> bool {
        let mut st = self.state.lock().expect("call state lock");
        if st.ended {
            return false;
        }
        st.bookings.push(booking);
        true
    }

    /// Records an `escalate` made during the call; its task is planned with the call's write-back.
    pub fn record_escalation(&self, escalation: crate::writeback::plan::EscalationRecord) {
        self.state.lock().expect("call state lock").escalations.push(escalation);
    }

    pub fn is_ended(&self) -> bool {
        self.state.lock().expect("call state lock").ended
    }

    async fn tenant_release(&self, core: &Core, hold: Uuid) -> bool {
        core.booking.ledger.release(self.tenant.id(), hold, &self.call_id).await.is_ok()
    }
}
