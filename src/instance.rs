//! This instance among several on one store (issue 13): its heartbeat, recorded every
//! [`HEARTBEAT_EVERY`] of the injected clock, which also renews the leases on the outbox steps
//! its worker holds (`store::lease`), and the takeover of dead instances. An instance that stops
//! beating — killed, partitioned from the database — loses its steps to the other instances'
//! workers once their leases run out, and its open calls to whichever instance claims it first:
//! a live one, on its heartbeat every [`TAKEOVER_EVERY`], or one that starts
//! (`app::recover_open_calls`). The claim also prunes the dead instance's row.
//!
//! A draining instance (graceful shutdown, `app::Application::run`) keeps beating until its
//! outbox is flushed — the heartbeat is the last task it stops — so it is never taken over while
//! it finishes its calls.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::session::Core;
use crate::store::{CallRow, HEARTBEAT_EVERY, TAKEOVER_EVERY};

/// What this instance's takeover passes did so far (cumulative; the signal tests wait on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Takeovers {
    /// Passes finished (the claim made and what it took recovered).
    pub passes: u64,
    /// Dead instances claimed, and their rows pruned.
    pub instances: u64,
    /// Their open calls this instance closed as disconnected, each with its write-back plan.
    pub calls: u64,
}

/// Beats until `stop`; a failed beat is logged and tried again at the next one (the leases it
/// would have renewed have [`crate::store::LEASE`] to run, six beats). Takeover passes are due
/// every [`TAKEOVER_EVERY`] from `recovered_at` (start-up recovery, the first claim): each runs
/// after the first beat at or past its time, claims the dead instances and recovers their open
/// calls; a failed pass is tried again at the next beat. Progress goes to `Core::takeovers`.
pub fn spawn_heartbeat(core: Arc<Core>, recovered_at: jiff::Timestamp, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (store, clock) = (core.store.clone(), core.clock.clone());
        let mut next_pass = recovered_at + TAKEOVER_EVERY;
        // Calls claimed but not yet closed (a store error midway): they are this instance's now,
        // so no other claim will find them — retried at the next pass until closed.
        let mut backlog = Vec::new();
        loop {
            let now = clock.now();
            if let Err(e) = store.heartbeat(now).await {
                tracing::warn!(error = %e, "instance heartbeat not recorded; its step leases were not renewed");
            }
            // After the beat: this instance's own row is fresh before it judges the others'.
            if now >= next_pass {
                match take_over(&core, now, &mut backlog).await {
                    Ok((instances, calls)) => {
                        // A fixed cadence: a late beat does not push the next pass back.
                        while next_pass <= now {
                            next_pass += TAKEOVER_EVERY;
                        }
                        core.takeovers.send_modify(|t| {
                            t.passes += 1;
                            t.instances += instances;
                            t.calls += calls;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "taking over dead instances failed; tried again at the next beat")
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = clock.sleep_until(now + HEARTBEAT_EVERY) => {}
            }
        }
    })
}

/// One takeover pass: the claim, then the recovery of the calls it adopted (and of those a
/// failed pass left in `backlog`; closing one twice is harmless, the second close is refused).
/// Returns how many instances were claimed and how many calls this instance closed.
async fn take_over(core: &Arc<Core>, now: jiff::Timestamp, backlog: &mut Vec<CallRow>) -> anyhow::Result<(u64, u64)> {
    let taken = core.store.claim_dead_instances(now).await?;
    if !taken.instances.is_empty() {
        // Instance ids are UUIDs chosen at start: no personal data.
        tracing::warn!(instances = ?taken.instances, calls = taken.calls.len(), "took over instances that stopped beating");
    }
    backlog.extend(taken.calls);
    let closed = crate::app::recover_calls(core, backlog.clone()).await?;
    backlog.clear();
    Ok((taken.instances.len() as u64, closed as u64))
}
