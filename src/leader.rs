//! Cluster singletons (issue 13): the periodic jobs whose every run reaches a vendor or a person
//! — identity pulls, the retention sweep, alerts, pending bookings, calendar subscriptions and
//! polling, the appointment outcome reader — run on one instance at a time when several share a PostgreSQL store.
//!
//! Each pass of such a job first takes or renews the job's lease (`store::job_lease`,
//! [`Store::try_lead`]) for this instance until `now + ttl` of the injected clock. Without it
//! the pass is skipped: counted in `callside_job_passes_skipped{job}`, with
//! `callside_job_leader{job}` at 0. A leader that dies stops renewing, and the first instance to
//! pass after the TTL takes the job over; a leader that lost its lease (paused past its TTL) finds
//! out at its next pass and stops. A graceful stop releases the leases at once ([`Jobs::release_all`]).
//!
//! A job's TTL is [`ttl_for`] its interval — three intervals, at least a minute — so a live
//! leader's renewal is never late, and a store error (no answer means no lease) skips the pass.
//! On SQLite one instance runs at a time, so it always leads and never touches the table: the
//! single-instance behaviour is the one before leases.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use jiff::SignedDuration;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::observe::Metrics;
use crate::store::{Backend, Store};

/// The cluster-wide jobs (ARCHITECTURE.md, "Periodic jobs on several instances").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    IdentityPull,
    Retention,
    Alerts,
    PendingBookings,
    CalendarSync,
    /// The appointment outcome reader (`crate::outcomes`).
    Outcomes,
}

impl Job {
    pub const ALL: [Job; 6] =
        [Job::IdentityPull, Job::Retention, Job::Alerts, Job::PendingBookings, Job::CalendarSync, Job::Outcomes];

    /// The job's row in `job_leases` and its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::IdentityPull => "identity_pull",
            Job::Retention => "retention",
            Job::Alerts => "alerts",
            Job::PendingBookings => "pending_bookings",
            Job::CalendarSync => "calendar_sync",
            Job::Outcomes => "outcomes",
        }
    }
}

/// A job's lease lasts three of its intervals, and at least this.
pub const MIN_TTL: SignedDuration = SignedDuration::from_secs(60);

/// The lease TTL of a job that passes every `interval`.
pub fn ttl_for(interval: SignedDuration) -> SignedDuration {
    (interval * 3).max(MIN_TTL)
}

/// How often a job that sleeps until its next piece of work (pending bookings, calendar
/// renewals) passes anyway on a shared store, to renew its lease or to try to take it over.
pub const RECHECK_EVERY: SignedDuration = SignedDuration::from_secs(30);

/// What this instance decided so far, per job (tests wait on its changes; never reset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobPasses {
    /// Passes run as the job's leader.
    pub led: BTreeMap<&'static str, u64>,
    /// Passes skipped because another instance leads (or the store did not answer).
    pub skipped: BTreeMap<&'static str, u64>,
}

impl JobPasses {
    pub fn led(&self, job: Job) -> u64 {
        self.led.get(job.as_str()).copied().unwrap_or(0)
    }

    pub fn skipped(&self, job: Job) -> u64 {
        self.skipped.get(job.as_str()).copied().unwrap_or(0)
    }
}

/// This instance's side of the job leases.
pub struct Jobs {
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Several instances may share the store (PostgreSQL): leases are taken.
    shared: bool,
    /// The jobs this instance believes it leads (released at a graceful stop).
    held: Mutex<BTreeSet<Job>>,
    passes: watch::Sender<JobPasses>,
}

impl Jobs {
    pub fn new(store: Store, clock: SharedClock, metrics: Arc<Metrics>) -> Arc<Jobs> {
        let shared = store.backend() == Backend::Postgres;
        Arc::new(Jobs {
            store,
            clock,
            metrics,
            shared,
            held: Mutex::default(),
            passes: watch::channel(JobPasses::default()).0,
        })
    }

    /// Whether this instance believes it leads `job` now (always on an unshared store).
    pub fn holds(&self, job: Job) -> bool {
        !self.shared || self.held.lock().unwrap_or_else(|e| e.into_inner()).contains(&job)
    }

    /// The gate of one job that passes every `interval`.
    pub fn gate(self: &Arc<Self>, job: Job, interval: SignedDuration) -> JobGate {
        JobGate { jobs: self.clone(), job, ttl: ttl_for(interval) }
    }

    /// Changes after every pass decided, led or skipped.
    pub fn passes(&self) -> watch::Receiver<JobPasses> {
        self.passes.subscribe()
    }

    /// Takes or renews `job`'s lease for this instance; whether this pass may run.
    async fn lead(&self, job: Job, ttl: SignedDuration) -> bool {
        let leads = if !self.shared {
            true
        } else {
            match self.store.try_lead(job.as_str(), self.store.instance_id(), self.clock.now(), ttl).await {
                Ok(l) => l,
                Err(e) => {
                    // No answer, no lease: another instance may be leading on a working connection.
                    tracing::warn!(job = job.as_str(), error = %e, "job lease not renewed; skipping this pass");
                    false
                }
            }
        };
        let was = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if leads { !held.insert(job) } else { held.remove(&job) }
        };
        if leads != was {
            tracing::info!(job = job.as_str(), leads, "job leadership changed");
        }
        self.metrics.set_job_leader(job.as_str(), leads);
        self.passes.send_modify(|p| {
            let counts = if leads { &mut p.led } else { &mut p.skipped };
            *counts.entry(job.as_str()).or_default() += 1;
        });
        leads
    }

    /// Gives up every lease this instance holds (a graceful stop), so another instance takes
    /// the jobs at its next pass instead of after their TTL. Errors are logged: the leases then
    /// run out.
    pub async fn release_all(&self) {
        let held: Vec<Job> =
            std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect();
        for job in held {
            let label = crate::observe::JobLabel { job: job.as_str().into() };
            self.metrics.job_leader.get_or_create(&label).set(0);
            if !self.shared {
                continue;
            }
            if let Err(e) = self.store.release_job(job.as_str(), self.store.instance_id()).await {
                tracing::warn!(job = job.as_str(), error = %e, "job lease not released; it runs out on its own");
            }
        }
    }
}

/// One job's pass gate: [`JobGate::lead`] at the start of every pass.
#[derive(Clone)]
pub struct JobGate {
    jobs: Arc<Jobs>,
    job: Job,
    ttl: SignedDuration,
}

impl JobGate {
    /// Whether this pass runs: the job's lease taken or renewed for this instance.
    pub async fn lead(&self) -> bool {
        self.jobs.lead(self.job, self.ttl).await
    }

    /// How often a job that otherwise sleeps until its next piece of work must pass anyway:
    /// `None` on SQLite (always the leader), else [`RECHECK_EVERY`] (well inside the TTL).
    pub fn recheck_every(&self) -> Option<SignedDuration> {
        self.jobs.shared.then_some(RECHECK_EVERY.min(self.ttl / 3))
    }
}

/// Whether a pass runs: always without a gate (a job started on its own, as in unit tests).
pub async fn leads(gate: Option<&JobGate>) -> bool {
    match gate {
        Some(g) => g.lead().await,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_ttl_comfortably_exceeds_its_interval() {
        assert_eq!(ttl_for(SignedDuration::from_secs(300)), SignedDuration::from_secs(900));
        assert_eq!(ttl_for(SignedDuration::from_secs(1)), MIN_TTL);
        for secs in [1, 10, 30, 60, 3600] {
            let interval = SignedDuration::from_secs(secs);
            assert!(ttl_for(interval) >= interval * 3, "{secs}");
        }
        let names: BTreeSet<_> = Job::ALL.iter().map(|j| j.as_str()).collect();
        assert_eq!(names.len(), Job::ALL.len(), "every job has its own lease row");
    }
}
