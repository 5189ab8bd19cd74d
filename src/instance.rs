//! This instance among several on one store (issue 13): its heartbeat, recorded every
//! [`HEARTBEAT_EVERY`] of the injected clock, which also renews the leases on the outbox steps
//! its worker holds (`store::lease`). An instance that stops beating — killed, partitioned from
//! the database — loses its steps to the other instances' workers once their leases run out, and
//! its open calls to the next instance that starts (`app::recover_open_calls`).

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{HEARTBEAT_EVERY, Store};

/// Beats until `stop`; a failed beat is logged and tried again at the next one (the leases it
/// would have renewed have [`crate::store::LEASE`] to run, six beats).
pub fn spawn_heartbeat(store: Store, clock: SharedClock, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = clock.now();
            if let Err(e) = store.heartbeat(now).await {
                tracing::warn!(error = %e, "instance heartbeat not recorded; its step leases were not renewed");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = clock.sleep_until(now + HEARTBEAT_EVERY) => {}
            }
        }
    })
}
