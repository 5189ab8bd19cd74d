//! The outbox worker: applies due steps in dependency order, records every external id the
//! moment it is known, retries transient and rate-limited failures with exponential backoff and
//! jitter (next-attempt times from the injected clock), and dead-letters steps that cannot
//! succeed or whose retry window ran out.

use crate::sandbox::admin::IntegrationFault;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::plan::{ContactStep, kind};
use crate::clock::SharedClock;
use crate::config::WritebackSection;
use crate::connectors::ConnectorError;
use crate::connectors::crm::{
    AppointmentRecord, CallLog, ContactFields, CrmContact, NoteRecord, SecondaryPhoneOutcome,
};
use crate::failpoint;
use crate::identity::{self, ParsedPhone, Phone};
use crate::matching::{Outcome, resolve};
use crate::observe::{Metrics, StepLabels};
use crate::store::{AttemptResult, StepRow, Store, StoreError};
use crate::tenant::{Tenant, Tenants};

/// What the rest of the service holds to talk to the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    wake: Arc<Notify>,
    progress: watch::Receiver<u64>,
}

impl WorkerHandle {
    /// Tells the worker new steps were persisted.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A receiver that changes every time the worker records a step result: an explicit signal
    /// tests (and the console) wait on instead of sleeping.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.clone()
    }
}

pub struct Worker {
    store: Store,
    tenants: Arc<Tenants>,
    clock: SharedClock,
    config: WritebackSection,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    progress: watch::Sender<u64>,
    /// TEST ONLY (`[sandbox_options] integration_fault`): misbehave like a naive integration.
    fault: Option<IntegrationFault>,
}

/// How one step attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StepOutcome {
    Done,
    Retry {
        at: Timestamp,
    },
    Dead,
    /// The connection was revoked: kept aside until it is re-authorized.
    Parked,
    /// Another instance took the step over (this one's lease ran out): nothing recorded here.
    LeaseLost,
}

/// Steps claimed per pass. Small, so a worker never sits on a large batch that another instance
/// could be applying; each claimed step's lease is renewed by the heartbeat while it waits.
const CLAIM_BATCH: i64 = 16;

impl Worker {
    pub fn new(
        store: Store,
        tenants: Arc<Tenants>,
        clock: SharedClock,
        config: WritebackSection,
        metrics: Arc<Metrics>,
    ) -> (Worker, WorkerHandle) {
        let wake = Arc::new(Notify::new());
        let (progress, rx) = watch::channel(0);
        let handle = WorkerHandle { wake: wake.clone(), progress: rx };
        (Worker { store, tenants, clock, config, metrics, wake, progress, fault: None }, handle)
    }

    /// TEST ONLY: makes the worker misbehave as `fault` says (config validation refuses it
    /// outside the sandbox); `callside pilot` must catch each.
    pub fn with_integration_fault(mut self, fault: Option<IntegrationFault>) -> Self {
        self.fault = fault;
        self
    }

    /// Runs until `shutdown` fires, then makes one last pass over due steps (the flush) and stops.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Err(e) = self.run_once().await {
                tracing::error!(error = %e, "write-back pass failed; retrying shortly");
            }
            let next = self.store.next_due_at().await.ok().flatten();
            let sleeper = next.map(|at| self.clock.sleep_until(at));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut notified => {},
                _ = async { match sleeper { Some(s) => s.await, None => std::future::pending().await } } => {},
                // A slow safety tick in real time: a store error above must not stall the outbox.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {},
            }
        }
        if let Err(e) = self.run_once().await {
            tracing::warn!(error = %e, "final write-back flush failed; steps stay in the outbox");
        }
    }

    /// Applies every step due now, in passes, until none is due. Returns how many attempts ran.
    /// Public so tests drain the outbox deterministically.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let mut attempts = 0;
        let resumed = self.store.unpark_reauthorized(self.clock.now()).await?;
        if resumed > 0 {
            tracing::info!(steps = resumed, "write-back resumed after a connection was re-authorized");
        }
        let settled = self.store.dead_letter_blocked_steps(self.clock.now()).await?;
        if settled > 0 {
            tracing::warn!(calls = settled, "steps waiting on a dead-lettered step were dead-lettered");
            self.bump();
        }
        loop {
            // Claimed with a lease: another instance's worker never gets these (`store::lease`).
            let due = self.store.claim_steps(self.clock.now(), CLAIM_BATCH).await?;
            if due.is_empty() {
                break;
            }
            for (i, step) in due.iter().enumerate() {
                if i > 0 {
                    failpoint::hit(failpoint::WORKER_MID_BATCH);
                }
                self.attempt(step).await?;
                attempts += 1;
            }
        }
        if let Ok(n) = self.store.pending_step_count().await {
            self.metrics.writeback_backlog.set(n);
        }
        Ok(attempts)
    }

    async fn attempt(&self, step: &StepRow) -> Result<StepOutcome, StoreError> {
        let now = self.clock.now();
        let Some(tenant) = self.tenants.by_id(&step.tenant) else {
            let dead = AttemptResult::Dead { error: "tenant no longer configured".into() };
            if !self
                .store
                .record_attempt(step, &dead, &format!("crm.{}", step.kind), &json!({"result": "dead"}), now)
                .await?
            {
                return Ok(self.lease_lost(step));
            }
            self.bump();
            return Ok(StepOutcome::Dead);
        };
        // Every request the step makes is charged to the account's budget in the write-back lane,
        // which waits for tokens and leaves the live calls' share alone (`connectors::rate`).
        let result = crate::connectors::rate::writeback_lane(self.apply(&tenant, step)).await;
        failpoint::hit(failpoint::WORKER_AFTER_VENDOR);
        if let Err(ConnectorError::AuthRevoked(detail)) = &result {
            return self.park(&tenant, step, detail).await;
        }
        let (outcome, recorded) = match result {
            Ok(external_id) => (StepOutcome::Done, AttemptResult::Done { external_id }),
            // TEST ONLY: the failure is swallowed, as a naive integration does.
            Err(_) if self.fault == Some(IntegrationFault::SwallowWriteFailures) => {
                (StepOutcome::Done, AttemptResult::Done { external_id: None })
            }
            Err(err) => match self.next_attempt(step, &err, now) {
                Some(at) => (StepOutcome::Retry { at }, AttemptResult::Retry { next_at: at, error: err.to_string() }),
                None => (StepOutcome::Dead, AttemptResult::Dead { error: err.to_string() }),
            },
        };
        let label = match &outcome {
            StepOutcome::Done => "done",
            StepOutcome::Retry { .. } => "retry",
            StepOutcome::Dead => "dead",
            StepOutcome::Parked | StepOutcome::LeaseLost => "parked",
        };
        let kept = self
            .store
            .record_attempt(
                step,
                &recorded,
                &format!("crm.{}", step.kind),
                &json!({"vendor": tenant.crm.vendor(), "attempt": step.attempts + 1, "result": label}),
                self.clock.now(),
            )
            .await?;
        if !kept {
            return Ok(self.lease_lost(step));
        }
        self.metrics
            .writeback_steps
            .get_or_create(&StepLabels { kind: step.kind.clone(), outcome: label.into() })
            .inc();
        tracing::info!(call_id = %step.call_id, tenant = %step.tenant, step = %step.kind, result = label, "write-back step");
        self.bump();
        failpoint::hit(failpoint::WORKER_MID_PLAN);
        Ok(outcome)
    }

    /// The tenant's CRM grant was revoked: the step is parked (kept, not retried, not dead) and
    /// an alert is raised; it resumes when the connection is re-authorized (see `run_once`).
    async fn park(&self, tenant: &Tenant, step: &StepRow, detail: &str) -> Result<StepOutcome, StoreError> {
        let detail_json = json!({"vendor": tenant.crm.vendor(), "attempt": step.attempts + 1, "result": "parked"});
        if !self.store.park_step(step, detail, &detail_json, self.clock.now()).await? {
            return Ok(self.lease_lost(step));
        }
        self.metrics
            .writeback_steps
            .get_or_create(&StepLabels { kind: step.kind.clone(), outcome: "parked".into() })
            .inc();
        tracing::error!(
            alert = "crm_connection_revoked",
            call_id = %step.call_id,
            tenant = %step.tenant,
            step = %step.kind,
            "write-back parked: the tenant's CRM connection was revoked; re-authorize it (/v1/connect/{}/start) to resume",
            tenant.crm.vendor()
        );
        self.bump();
        failpoint::hit(failpoint::WORKER_MID_PLAN);
        Ok(StepOutcome::Parked)
    }

    /// This instance's lease on the step ran out and another instance took the step over while
    /// the attempt ran: its result is the new owner's to record (the vendor saw both attempts
    /// under one idempotency key, so nothing was applied twice).
    fn lease_lost(&self, step: &StepRow) -> StepOutcome {
        tracing::warn!(call_id = %step.call_id, tenant = %step.tenant, step = %step.kind,
            "write-back step taken over by another instance while this one applied it; its result is not recorded");
        self.bump();
        StepOutcome::LeaseLost
    }

    fn bump(&self) {
        self.progress.send_modify(|n| *n += 1);
    }

    /// When to try again, or `None` to dead-letter: exponential backoff from 1 s with full
    /// jitter, capped, never sooner than the vendor asked, inside the retry window.
    fn next_attempt(&self, step: &StepRow, err: &ConnectorError, now: Timestamp) -> Option<Timestamp> {
        if !err.is_retryable() {
            return None;
        }
        let first = step.first_attempt_at.and_then(|m| Timestamp::from_millisecond(m).ok()).unwrap_or(now);
        let window = SignedDuration::from_secs(self.config.retry_window_secs as i64);
        let exp = 1u64.checked_shl(step.attempts.clamp(0, 30) as u32).unwrap_or(u64::MAX);
        let cap = self.config.max_backoff_secs.max(1);
        let base_ms = exp.min(cap).saturating_mul(1000);
        let jittered = rand::rng().random_range(base_ms / 2..=base_ms);
        let mut delay = Duration::from_millis(jittered);
        if let ConnectorError::RateLimited { retry_after: Some(after), .. } = err {
            delay = delay.max(*after);
        }
        let at = now + SignedDuration::try_from(delay).unwrap_or(SignedDuration::from_secs(cap as i64));
        (at.duration_since(first) <= window).then_some(at)
    }

    /// Applies one step; returns the external id it produced.
    async fn apply(&self, tenant: &Tenant, step: &StepRow) -> Result<Option<String>, ConnectorError> {
        let bad_payload = |e: serde_json::Error| ConnectorError::Permanent(format!("step payload: {e}"));
        match step.kind.as_str() {
            kind::CONTACT => {
                let c: ContactStep = serde_json::from_value(step.payload.clone()).map_err(bad_payload)?;
                self.apply_contact(tenant, step, &c).await.map(Some)
            }
            kind::CALL_LOG => {
                let log: CallLog = serde_json::from_value(step.payload.clone()).map_err(bad_payload)?;
                let contact = step
                    .parent_external_id
                    .as_deref()
                    .ok_or_else(|| ConnectorError::Permanent("no contact id from the contact step".into()))?;
                tenant.crm.log_call(contact, &log, &step.idempotency_key).await.map(Some)
            }
            kind::CALL_LOG_UPDATE => {
                let log: CallLog = serde_json::from_value(step.payload.clone()).map_err(bad_payload)?;
                let call_object = step
                    .parent_external_id
                    .as_deref()
                    .ok_or_else(|| ConnectorError::Permanent("no call object id from the call_log step".into()))?;
                tenant.crm.update_call_log(call_object, &log).await.map(|()| Some(call_object.to_owned()))
            }
            kind::APPOINTMENT => {
                let appt: AppointmentRecord = serde_json::from_value(step.payload.clone()).map_err(bad_payload)?;
                let contact = step
                    .parent_external_id
                    .as_deref()
                    .ok_or_else(|| ConnectorError::Permanent("no contact id from the contact step".into()))?;
                tenant.crm.record_appointment(contact, &appt, &step.idempotency_key).await.map(Some)
            }
            other => match super::steps::apply(&self.store, &self.clock, tenant, step).await {
                Some(result) => result,
                None => Err(ConnectorError::Permanent(format!("unknown step kind {other}"))),
            },
        }
    }

    /// Resolves the caller to one contact — the one matched at ring time, or one found by phone
    /// now, or a new one created under the step's idempotency key — and writes the captured
    /// fields. On an existing contact only empty fields are filled: a rep's data is never
    /// overwritten by this step.
    async fn apply_contact(&self, tenant: &Tenant, step: &StepRow, c: &ContactStep) -> Result<String, ConnectorError> {
        // An id recorded by an earlier attempt wins: the contact already exists.
        if let Some(id) = &step.external_id {
            return Ok(id.clone());
        }
        let mut existing: Option<CrmContact> = None;
        let mut review = None;
        let mut learned = None;
        if let Some(id) = &c.known_contact_id {
            existing = Some(tenant.crm.read_context(id).await?.contact);
        } else {
            // Phone, then email, then name + postal code, index first (crate::matching).
            let name = match (&c.fields.first_name, &c.fields.last_name) {
                (Some(f), Some(l)) => Some(format!("{f} {l}")),
                (f, l) => f.clone().or(l.clone()),
            };
            let claims =
                resolve::claims(c.phone.as_deref(), tenant, name, c.fields.email.clone(), c.fields.zip.clone());
            // TEST ONLY: a naive create searches the vendor alone (no identity index).
            let naive = self.fault == Some(IntegrationFault::NaiveCreate);
            let index = (!naive).then_some(&self.store);
            let (decision, found) = resolve::resolve(tenant, index, &claims).await?;
            match decision.outcome {
                Outcome::Matched => {
                    existing = found.contacts.iter().find(|x| Some(&x.id) == decision.record_id.as_ref()).cloned()
                }
                Outcome::Ambiguous => {
                    review = resolve::review_task(&decision, &found.contacts, self.clock.now())
                        .map(|task| (task, decision.candidates.clone()))
                }
                Outcome::New => {}
            }
            if !naive {
                learned = Some((decision, claims));
            }
        }
        let id = match existing {
            Some(contact) => {
                let fill = fill_blanks(&contact, &c.fields);
                if fill != ContactFields::default() {
                    tenant.crm.update_contact(&contact.id, &fill).await?;
                }
                // A known caller on a number the record lacks (matched by email, or re-matched
                // mid-call): the number is added, never swapped in.
                if let Some(raw) = &c.phone
                    && let ParsedPhone::Number(p) = Phone::parse(raw, tenant.config.default_region)
                    && !contact.phones.iter().any(|s| identity::same_number(&p, s, tenant.config.default_region))
                    && let SecondaryPhoneOutcome::NoFreeSlot =
                        tenant.crm.add_secondary_phone(&contact.id, &p.e164).await?
                {
                    let note = NoteRecord {
                        body: format!("The caller also calls from {} (no free phone field to store it).", p.e164),
                        at: self.clock.now(),
                    };
                    tenant.crm.log_note(&contact.id, &note, &format!("{}:other-number", step.idempotency_key)).await?;
                }
                contact.id
            }
            None => {
                let id = tenant.crm.create_contact(&c.fields, &step.idempotency_key).await?;
                // Ambiguous: a new record, flagged where reps work (a task for the owner). Before
                // the id is recorded, so a failed flag is retried with the step (the create is
                // idempotent by its key and returns this contact again).
                if let Some((task, candidates)) = &review {
                    let task_id =
                        tenant.crm.create_task(&id, task, &format!("{}:review", step.idempotency_key)).await?;
                    let _ = self
                        .store
                        .record_created_object(&step.tenant, &step.call_id, step.id, "task", &task_id, self.clock.now())
                        .await;
                    // For the console's reconciliation list: record ids only, no personal data.
                    let _ = self
                        .store
                        .audit(
                            &step.tenant,
                            Some(&step.call_id),
                            Some(step.id),
                            "match.ambiguous",
                            &json!({"created": id, "candidates": candidates, "review_task": task_id}),
                            self.clock.now(),
                        )
                        .await;
                }
                // Recorded before anything else can fail, so a retry never creates a second one.
                let _ = self.store.record_external_id(step, &id).await;
                // For undo: this contact is the call's own creation (a matched one never is).
                let _ = self
                    .store
                    .record_created_object(&step.tenant, &step.call_id, step.id, "contact", &id, self.clock.now())
                    .await;
                id
            }
        };
        if let Some((decision, claims)) = &learned {
            resolve::remember(&self.store, tenant.id(), &id, decision, claims, self.clock.now()).await;
        }
        Ok(id)
    }
}

/// The captured fields that are empty on the existing record.
fn fill_blanks(contact: &CrmContact, captured: &ContactFields) -> ContactFields {
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
    ContactFields {
        first_name: captured.first_name.clone().filter(|_| blank(&contact.first_name)),
        last_name: captured.last_name.clone().filter(|_| blank(&contact.last_name)),
        email: captured.email.clone().filter(|_| blank(&contact.email)),
        phone: None,
        zip: captured.zip.clone().filter(|_| blank(&contact.zip)),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blank_fields_are_filled_on_an_existing_contact() {
        let contact = CrmContact { id: "1".into(), first_name: Some("Ana".into()), email: None, ..Default::default() };
        let captured = ContactFields {
            first_name: Some("Anna".into()),
            email: Some("ana@example.com".into()),
            source: Some("AI receptionist".into()),
            ..Default::default()
        };
        let fill = fill_blanks(&contact, &captured);
        assert_eq!(fill.first_name, None);
        assert_eq!(fill.email.as_deref(), Some("ana@example.com"));
        assert_eq!(fill.source, None);
    }
}
