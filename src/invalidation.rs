//! Cross-instance invalidation (issue 13): several instances on one PostgreSQL store each keep
//! caches in memory (caller contexts, staff busy time, upcoming bookings) and live calls; a
//! change one instance processes — a CRM webhook, a calendar change, a booking, a hangup whose
//! write-back will change the caller's record — must reach the others.
//!
//! The instance that processed the change applies it locally as before and publishes one small
//! message (`store::bus`: tenant + what went stale, ids only); each instance's listener task
//! ([`run`]) applies the others' messages with the same local functions the receiving instance
//! used, and skips its own. On SQLite there is one instance: nothing is published and [`run`] is
//! not started.
//!
//! Notifications are fire-and-forget: a listener that loses its connection reconnects (backing
//! off in real time, since it waits on the network) and then drops every cache it has, because it
//! cannot know what it missed. Live calls keep their context across such a gap (a re-read of every
//! live call would be a burst of CRM reads at the worst moment); they are refreshed by the next
//! change that concerns them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::inbound::Affected;
use crate::session::Core;
use crate::store::bus::{ALL_TENANTS, BusListener, Invalidation, What};

/// What the listener has done since start (tests wait on its changes; never reset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusProgress {
    /// Others' messages applied, by kind.
    pub crm: u64,
    pub callers: u64,
    pub staff_busy: u64,
    pub bookings: u64,
    /// Google pushes forwarded by another instance and applied here (this instance holds the
    /// channel), whatever their check's outcome.
    pub pushes: u64,
    /// This instance's own messages, skipped.
    pub own: u64,
    /// Messages for a tenant this instance does not serve, or of another schema's deployment.
    pub ignored: u64,
    /// Payloads that did not parse.
    pub malformed: u64,
    /// Times the listening connection was lost and opened again (every cache dropped each time).
    pub reconnects: u64,
    /// The server process of the current listening connection (0 before the first).
    pub listener_pid: i32,
}

/// The listener's progress, shared by the task and whoever watches it.
#[derive(Debug)]
pub struct Bus {
    progress: watch::Sender<BusProgress>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus { progress: watch::channel(BusProgress::default()).0 }
    }
}

impl Bus {
    pub fn progress(&self) -> watch::Receiver<BusProgress> {
        self.progress.subscribe()
    }

    fn bump(&self, f: impl FnOnce(&mut BusProgress)) {
        self.progress.send_modify(f);
    }
}

/// First wait before reconnecting a lost listener; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Applies the other instances' messages until `stop`. `listener` was connected (and listening)
/// before the instance started serving, so nothing published after that is missed while the
/// connection holds; `url` reopens it after a loss.
pub async fn run(core: Arc<Core>, mut listener: BusListener, url: String, stop: CancellationToken) {
    core.bus.bump(|p| p.listener_pid = listener.backend_pid());
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = listener.next() => next,
        };
        match next {
            Ok(Some(payload)) => receive(&core, &payload).await,
            Ok(None) | Err(_) => {
                if let Err(e) = &next {
                    tracing::warn!(error = %e, "the invalidation listener failed; reconnecting");
                } else {
                    tracing::warn!("the invalidation listener lost its connection; reconnecting");
                }
                let Some(back) = reconnect(&url, &stop).await else { return };
                listener = back;
                // Whatever was published while we were away is lost: nothing cached is trusted.
                forget_everything(&core).await;
                let pid = listener.backend_pid();
                core.bus.bump(|p| {
                    p.reconnects += 1;
                    p.listener_pid = pid;
                });
                tracing::info!("the invalidation listener is back; every cache was dropped");
            }
        }
    }
}

async fn reconnect(url: &str, stop: &CancellationToken) -> Option<BusListener> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match BusListener::connect(url).await {
            Ok(l) => return Some(l),
            Err(e) => tracing::warn!(error = %e, "reopening the invalidation listener"),
        }
        // Real time on purpose: this waits on the database's network, not on domain time.
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Drops every cache the bus keeps coherent.
async fn forget_everything(core: &Core) {
    core.context.invalidate_all();
    core.booking.forget_busy();
    core.store.forget_cached_bookings();
}

async fn receive(core: &Arc<Core>, payload: &str) {
    let message = match Invalidation::parse(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "an invalidation message could not be read");
            core.bus.bump(|p| p.malformed += 1);
            return;
        }
    };
    if message.scope != core.store.bus_scope() {
        core.bus.bump(|p| p.ignored += 1);
        return;
    }
    if message.from == core.store.instance_id() {
        core.bus.bump(|p| p.own += 1);
        return;
    }
    let kind = message.what.kind();
    let tenant = core.tenants.by_id(&message.tenant);
    match (message.what, tenant) {
        (What::Bookings, _) => {
            core.store.bookings_changed_elsewhere();
            core.bus.bump(|p| p.bookings += 1);
        }
        (What::GooglePush { channel_id, token, resource_id, state, message_number }, _) => {
            if core.calendar_sync.channel(&channel_id).is_none() {
                // Another follower's, or a channel no instance holds: the one holding it answers.
                core.bus.bump(|p| p.ignored += 1);
                return;
            }
            let core = core.clone();
            tokio::spawn(async move {
                let push = crate::inbound::google::Push {
                    channel_id: Some(&channel_id),
                    token: token.as_deref(),
                    resource_id: resource_id.as_deref(),
                    state: state.as_deref(),
                    message_number: message_number.as_deref(),
                };
                // Counted here like a push received directly (refusals included).
                let _ = crate::inbound::google::receive(&core, push).await;
                core.bus.bump(|p| p.pushes += 1);
            });
        }
        (_, None) => {
            // A tenant this instance does not serve (yet): nothing of it is cached here.
            if message.tenant != ALL_TENANTS {
                tracing::debug!(kind, "an invalidation for a tenant this instance does not serve");
            }
            core.bus.bump(|p| p.ignored += 1);
        }
        (What::Caller { e164 }, Some(t)) => {
            core.context.invalidate(t.id(), &e164).await;
            core.bus.bump(|p| p.callers += 1);
        }
        (What::StaffBusy { staff_id }, Some(t)) => {
            core.booking.drop_busy_here(t.id(), &staff_id).await;
            core.bus.bump(|p| p.staff_busy += 1);
        }
        (What::Contact { id }, Some(t)) => crm_change(core, t, Affected::Contact(id)),
        (What::Deal { id }, Some(t)) => crm_change(core, t, Affected::Deal(id)),
        (What::Matching { id }, Some(t)) => crm_change(core, t, Affected::Matching(id)),
        (What::Pulled { id, numbers }, Some(t)) => crm_change(core, t, Affected::Pulled { id, numbers }),
    }
}

/// A CRM change: re-reading live calls can take a CRM round trip each, so it runs beside the
/// listener (later messages are not held behind it); counted once applied.
fn crm_change(core: &Arc<Core>, tenant: Arc<crate::tenant::Tenant>, affected: Affected) {
    let core = core.clone();
    tokio::spawn(async move {
        crate::inbound::refresh_callers_here(&core, &tenant, &affected).await;
        core.bus.bump(|p| p.crm += 1);
    });
}

/// What a CRM change becomes on the bus.
pub(crate) fn what_of(affected: &Affected) -> What {
    match affected {
        Affected::Contact(id) => What::Contact { id: id.clone() },
        Affected::Deal(id) => What::Deal { id: id.clone() },
        Affected::Matching(id) => What::Matching { id: id.clone() },
        Affected::Pulled { id, numbers } => What::Pulled { id: id.clone(), numbers: numbers.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire form is small, flat and stable, and reads back as it was written.
    #[test]
    fn messages_round_trip_through_their_payload() {
        let m = Invalidation {
            scope: "public".into(),
            from: "i-1".into(),
            tenant: "demo".into(),
            what: What::StaffBusy { staff_id: "alex".into() },
        };
        let payload = m.payload().unwrap();
        assert_eq!(payload, r#"{"scope":"public","from":"i-1","tenant":"demo","what":"staff_busy","staff_id":"alex"}"#);
        assert_eq!(Invalidation::parse(&payload).unwrap(), m);
        let bookings = Invalidation { what: What::Bookings, ..m.clone() };
        assert_eq!(Invalidation::parse(&bookings.payload().unwrap()).unwrap(), bookings);
        for affected in [
            Affected::Contact("1".into()),
            Affected::Deal("2".into()),
            Affected::Matching("3".into()),
            Affected::Pulled { id: "4".into(), numbers: vec!["+14155550134".into()] },
        ] {
            let m = Invalidation { what: what_of(&affected), ..m.clone() };
            assert_eq!(Invalidation::parse(&m.payload().unwrap()).unwrap(), m);
        }
    }

    /// A payload past PostgreSQL's limit is refused before it is sent; a malformed one is
    /// refused on receipt without quoting it (it could hold a number).
    #[test]
    fn oversized_and_malformed_payloads_are_refused() {
        let huge = Invalidation {
            scope: "public".into(),
            from: "i-1".into(),
            tenant: "demo".into(),
            what: What::Contact { id: "9".repeat(8_000) },
        };
        let err = huge.payload().unwrap_err().to_string();
        assert!(err.contains("notification limit"), "{err}");
        for bad in [
            "",
            "not json",
            r#"{"scope":"public","from":"i","tenant":"demo","what":"unknown"}"#,
            r#"{"what":"bookings"}"#,
            r#"{"scope":"s","from":"f","tenant":"t","what":"caller"}"#,
        ] {
            let err = Invalidation::parse(bad).unwrap_err();
            assert!(!err.contains("+1415"), "{err}");
        }
        let err =
            Invalidation::parse(r#"{"scope":"s","from":"f","tenant":"t","what":"caller","e164":1415}"#).unwrap_err();
        assert!(!err.contains("1415"), "the payload is not quoted: {err}");
    }
}
