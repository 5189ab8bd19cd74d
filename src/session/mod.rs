//! A call's lifetime: open (prefetch spawned at once), tool dispatch, hangup. The transport
//! (WebSocket today, MCP HTTP later) owns the connection; this module owns the call.

mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use jiff::Timestamp;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::booking::BookingService;
use crate::clock::SharedClock;
use crate::context::{CallerContext, ContextService};
use crate::identity::ParsedPhone;
use crate::observe::Metrics;
use crate::protocol::ToolResult;
use crate::protocol::tools::ToolCall;
use crate::store::Store;
use crate::tenant::{Tenant, Tenants};
use crate::writeback::plan::BookedSummary;
use crate::writeback::{CallOutcome, EndReason, WorkerHandle, build_plan};

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
}

/// Live calls on this instance, by call id.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Arc<CallSession>>>,
}

impl Sessions {
    pub fn get(&self, call_id: &str) -> Option<Arc<CallSession>> {
        self.live.lock().expect("sessions lock").get(call_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.live.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, s: Arc<CallSession>) -> bool {
        let mut live = self.live.lock().expect("sessions lock");
        if live.contains_key(&s.call_id) {
            return false;
        }
        live.insert(s.call_id.clone(), s);
        true
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
}

pub struct CallSession {
    pub call_id: String,
    pub tenant: Arc<Tenant>,
    pub caller: ParsedPhone,
    pub dialed: String,
    pub started_at: Timestamp,
    prefetch: Shared<BoxFuture<'static, Arc<CallerContext>>>,
    state: Mutex<CallState>,
    /// Server-initiated messages for the transport to deliver (e.g. "context ready").
    pub notifications: mpsc::Sender<Notification>,
}

/// A server notification, transport-neutral.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    ContextReady { status: &'static str },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("a call with this id is already connected")]
    DuplicateCall,
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
        let session = Arc::new(CallSession {
            call_id: call_id.clone(),
            tenant: tenant.clone(),
            caller,
            dialed: dialed.clone(),
            started_at: now,
            prefetch,
            state: Mutex::new(CallState::default()),
            notifications: tx,
        });
        if !self.sessions.insert(session.clone()) {
            return Err(OpenError::DuplicateCall);
        }
        if let Err(e) = self.store.record_call_start(&call_id, tenant.id(), caller_e164.as_deref(), &dialed, now).await
        {
            self.sessions.remove(&call_id);
            return Err(e.into());
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
        let (bookings, holds, name, email) = {
            let mut st = session.state.lock().expect("call state lock");
            if st.ended {
                return Ok(None);
            }
            st.ended = true;
            (st.bookings.clone(), std::mem::take(&mut st.holds), st.captured_name.clone(), st.captured_email.clone())
        };
        // Holds die with the call; bookings stay.
        for (h, _) in holds {
            let _ = session.tenant_release(self, h);
        }
        let ctx = session.prefetch.clone().await;
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
        };
        let steps = build_plan(&outcome);
        let outcome_json = serde_json::to_value(&outcome).expect("outcome serializes");
        let written = self
            .store
            .close_call_with_plan(&session.call_id, session.tenant.id(), reason.as_str(), &outcome_json, &steps, now)
            .await;
        self.sessions.remove(&session.call_id);
        self.metrics.open_calls.dec();
        written?;
        if let ParsedPhone::Number(p) = &session.caller {
            // The write-back will change the record: the next call must not see a stale one.
            self.context.invalidate(session.tenant.id(), &p.e164).await;
        }
        self.worker.wake();
        Ok(Some(steps.len()))
    }
}

impl CallSession {
    pub async fn context(&self) -> Arc<CallerContext> {
        self.prefetch.clone().await
    }

    pub fn is_ended(&self) -> bool {
        self.state.lock().expect("call state lock").ended
    }

    fn tenant_release(&self, core: &Core, hold: Uuid) -> bool {
        core.booking.ledger.release(self.tenant.id(), hold, &self.call_id).is_ok()
    }
}
