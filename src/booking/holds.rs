//! The seam between the booking code and where holds live: [`Holds::Memory`], this instance's
//! [`HoldLedger`] (the single-instance default, on SQLite), or [`Holds::Shared`], the `holds`
//! table every instance on one PostgreSQL store shares (`store/holds.rs`; its exclusion
//! constraint keeps two instances from holding overlapping time). Both answer with the same
//! semantics (see `ledger.rs`); a store failure on the shared ledger is `HoldError::Unavailable`
//! (logged here), which the caller hears like any hold that could not be taken.

use std::sync::atomic::{AtomicBool, Ordering};

use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::ledger::{Hold, HoldError, HoldLedger, HoldRequest};
use crate::connectors::calendar::Interval;
use crate::store::{HoldRow, Store, StoreError, ms};

pub enum Holds {
    Memory(HoldLedger),
    Shared { store: Store, unsafe_bypass: AtomicBool },
}

fn ts(v: i64) -> Timestamp {
    Timestamp::from_millisecond(v).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn to_hold(r: HoldRow) -> Result<Hold, HoldError> {
    Ok(Hold {
        id: Uuid::parse_str(&r.id).map_err(|_| HoldError::NotFound)?,
        tenant: r.tenant,
        staff_id: r.staff_id,
        call_id: r.call_id,
        slot: Interval::new(ts(r.slot_start), ts(r.slot_end)),
        blocked: Interval::new(ts(r.blocked_start), ts(r.blocked_end)),
        expires_at: ts(r.expires_at),
    })
}

fn unavailable(e: StoreError) -> HoldError {
    tracing::error!(error = %e, "the shared hold ledger is unavailable");
    HoldError::Unavailable
}

impl Holds {
    /// In memory for SQLite (one instance), shared in the store for PostgreSQL.
    pub fn for_store(store: &Store) -> Holds {
        match store.backend() {
            crate::store::Backend::Sqlite => Holds::Memory(HoldLedger::new()),
            crate::store::Backend::Postgres => {
                Holds::Shared { store: store.clone(), unsafe_bypass: AtomicBool::new(false) }
            }
        }
    }

    /// TEST ONLY (see [`HoldLedger::set_unsafe_bypass`]). On the shared ledger only the offer side
    /// is bypassed: the table's constraint still refuses an overlapping hold.
    pub fn set_unsafe_bypass(&self, on: bool) {
        match self {
            Holds::Memory(l) => l.set_unsafe_bypass(on),
            Holds::Shared { unsafe_bypass, .. } => unsafe_bypass.store(on, Ordering::Relaxed),
        }
    }

    pub fn unsafe_bypassed(&self) -> bool {
        match self {
            Holds::Memory(l) => l.unsafe_bypassed(),
            Holds::Shared { unsafe_bypass, .. } => unsafe_bypass.load(Ordering::Relaxed),
        }
    }

    pub async fn try_hold(&self, req: HoldRequest, now: Timestamp) -> Result<Hold, HoldError> {
        match self {
            Holds::Memory(l) => l.try_hold(req, now),
            Holds::Shared { store, .. } => Self::try_hold_shared(store, req, now).await,
        }
    }

    async fn try_hold_shared(store: &Store, req: HoldRequest, now: Timestamp) -> Result<Hold, HoldError> {
        if req.ttl <= SignedDuration::ZERO {
            return Err(HoldError::Expired);
        }
        let expires_at = now.checked_add(req.ttl).unwrap_or(Timestamp::MAX);
        let blocked = Interval { start: req.blocked.start.min(req.slot.start), end: req.blocked.end.max(req.slot.end) };
        let hold = Hold {
            id: Uuid::new_v4(),
            tenant: req.tenant,
            staff_id: req.staff_id,
            call_id: req.call_id,
            slot: req.slot,
            blocked,
            expires_at,
        };
        let row = HoldRow {
            id: hold.id.to_string(),
            tenant: hold.tenant.clone(),
            staff_id: hold.staff_id.clone(),
            call_id: hold.call_id.clone(),
            slot_start: ms(hold.slot.start),
            slot_end: ms(hold.slot.end),
            blocked_start: ms(blocked.start),
            blocked_end: ms(blocked.end),
            expires_at: ms(expires_at),
            confirmed: false,
        };
        match store.insert_hold(&row, ms(now)).await.map_err(unavailable)? {
            true => Ok(hold),
            false => Err(HoldError::Overlap),
        }
    }

    /// Why a conditional statement on a shared hold touched nothing: the row as it is now.
    async fn refused(store: &Store, tenant: &str, id: Uuid, owner: &str) -> HoldError {
        match store.hold(tenant, &id.to_string()).await {
            Err(e) => unavailable(e),
            Ok(None) => HoldError::NotFound,
            Ok(Some(r)) if r.call_id != owner => HoldError::NotOwner,
            Ok(Some(_)) => HoldError::Expired,
        }
    }

    pub async fn release(&self, tenant: &str, hold_id: Uuid, call_id: &str) -> Result<Hold, HoldError> {
        match self {
            Holds::Memory(l) => l.release(tenant, hold_id, call_id),
            Holds::Shared { store, .. } => {
                match store.release_hold(tenant, &hold_id.to_string(), call_id).await.map_err(unavailable)? {
                    Some(r) => to_hold(r),
                    // A booking is not released: NotFound, as in memory.
                    None => match Self::refused(store, tenant, hold_id, call_id).await {
                        HoldError::Expired => Err(HoldError::NotFound),
                        e => Err(e),
                    },
                }
            }
        }
    }

    pub async fn get(&self, tenant: &str, hold_id: Uuid, now: Timestamp) -> Result<Hold, HoldError> {
        match self {
            Holds::Memory(l) => l.get(tenant, hold_id, now),
            Holds::Shared { store, .. } => match store.hold(tenant, &hold_id.to_string()).await.map_err(unavailable)? {
                None => Err(HoldError::NotFound),
                Some(r) if !r.confirmed && ms(now) >= r.expires_at => Err(HoldError::Expired),
                Some(r) => to_hold(r),
            },
        }
    }

    pub async fn transfer(
        &self,
        tenant: &str,
        hold_id: Uuid,
        from_call: &str,
        to_owner: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<Hold, HoldError> {
        match self {
            Holds::Memory(l) => l.transfer(tenant, hold_id, from_call, to_owner, until, now),
            Holds::Shared { store, .. } => {
                let id = hold_id.to_string();
                let moved = store.transfer_hold(tenant, &id, from_call, to_owner, ms(until), ms(now)).await;
                match moved.map_err(unavailable)? {
                    Some(r) => to_hold(r),
                    None => Err(Self::refused(store, tenant, hold_id, from_call).await),
                }
            }
        }
    }

    pub async fn confirm(&self, tenant: &str, hold_id: Uuid, call_id: &str, now: Timestamp) -> Result<Hold, HoldError> {
        match self {
            Holds::Memory(l) => l.confirm(tenant, hold_id, call_id, now),
            Holds::Shared { store, .. } => {
                let confirmed = store.confirm_hold(tenant, &hold_id.to_string(), call_id, ms(now)).await;
                match confirmed.map_err(unavailable)? {
                    Some(r) => to_hold(r),
                    None => Err(Self::refused(store, tenant, hold_id, call_id).await),
                }
            }
        }
    }

    /// Frees a booking's blocked time; `Ok(false)` when no booking blocks exactly that time. A
    /// store failure is `Unavailable` (the time is still blocked), never taken for "not there".
    pub async fn remove_booking(&self, tenant: &str, staff_id: &str, blocked: Interval) -> Result<bool, HoldError> {
        match self {
            Holds::Memory(l) => Ok(l.remove_booking(tenant, staff_id, blocked)),
            Holds::Shared { store, .. } => {
                store.remove_booked_hold(tenant, staff_id, (ms(blocked.start), ms(blocked.end))).await.map_err(|e| {
                    tracing::error!(tenant, staff_id, blocked_start = %blocked.start, blocked_end = %blocked.end, error = %e,
                        "removing a booking from the shared hold ledger failed; its time stays blocked");
                    HoldError::Unavailable
                })
            }
        }
    }

    pub async fn release_all_for_call(&self, tenant: &str, call_id: &str) -> usize {
        match self {
            Holds::Memory(l) => l.release_all_for_call(tenant, call_id),
            Holds::Shared { store, .. } => {
                store.release_owner_holds(tenant, call_id).await.map_err(unavailable).unwrap_or(0) as usize
            }
        }
    }

    pub async fn busy(
        &self,
        tenant: &str,
        staff_id: &str,
        window: Interval,
        now: Timestamp,
    ) -> Result<Vec<Interval>, HoldError> {
        match self {
            Holds::Memory(l) => Ok(l.busy(tenant, staff_id, window, now)),
            Holds::Shared { unsafe_bypass, .. } if unsafe_bypass.load(Ordering::Relaxed) => Ok(Vec::new()),
            Holds::Shared { store, .. } => {
                let rows = store
                    .held_intervals(tenant, staff_id, (ms(window.start), ms(window.end)), ms(now))
                    .await
                    .map_err(unavailable)?;
                Ok(rows.into_iter().map(|(s, e)| Interval::new(ts(s), ts(e))).collect())
            }
        }
    }

    /// See [`HoldLedger::flag_overlapping`]: (hold, confirmed) for each entry flagged now.
    pub async fn flag_overlapping(
        &self,
        tenant: &str,
        staff_id: &str,
        taken: Interval,
        now: Timestamp,
    ) -> Vec<(Hold, bool)> {
        match self {
            Holds::Memory(l) => l.flag_overlapping(tenant, staff_id, taken, now),
            Holds::Shared { store, .. } => store
                .flag_overlapping_holds(tenant, staff_id, (ms(taken.start), ms(taken.end)), ms(now))
                .await
                .map_err(unavailable)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| {
                    let confirmed = r.confirmed;
                    to_hold(r).ok().map(|h| (h, confirmed))
                })
                .collect(),
        }
    }

    pub async fn is_flagged(&self, tenant: &str, hold_id: Uuid) -> bool {
        match self {
            Holds::Memory(l) => l.is_flagged(tenant, hold_id),
            Holds::Shared { store, .. } => {
                store.hold_flagged(tenant, &hold_id.to_string()).await.map_err(unavailable).unwrap_or(false)
            }
        }
    }

    /// Unconfirmed holds (live or expired-but-unpurged) across tenants.
    /// Holds still outstanding. A store that fails is `Unavailable`, never "none": the load
    /// test's "no hold leaked" check reads this, and a zero in place of an error would pass it.
    pub async fn outstanding_holds(&self) -> Result<usize, HoldError> {
        match self {
            Holds::Memory(l) => Ok(l.outstanding_holds()),
            Holds::Shared { store, .. } => {
                store.hold_counts(0).await.map_err(unavailable).map(|c| c.outstanding as usize)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TestSchema;

    /// Freeing a booking's time on the shared ledger tells a miss (no booking blocks that time)
    /// from a store that failed: the failure is `Unavailable`, so a reschedule stops before it
    /// changes anything instead of counting the old time as busy.
    #[tokio::test]
    async fn a_store_failure_freeing_a_booking_is_unavailable_not_a_miss() {
        let schema = TestSchema::create().await.expect("the machine's PostgreSQL answers");
        let store = Store::open(&schema.url).await.unwrap();
        let holds = Holds::for_store(&store);
        let now: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let start = now + SignedDuration::from_hours(24);
        let slot = Interval::new(start, start + SignedDuration::from_mins(30));
        let request = HoldRequest {
            tenant: "demo".into(),
            staff_id: "alex".into(),
            call_id: "c1".into(),
            slot,
            blocked: slot,
            ttl: SignedDuration::from_mins(5),
        };
        let hold = holds.try_hold(request, now).await.unwrap();
        holds.confirm("demo", hold.id, "c1", now).await.unwrap();
        let elsewhere = Interval::new(slot.start, slot.end + SignedDuration::from_mins(1));
        assert_eq!(holds.remove_booking("demo", "alex", elsewhere).await, Ok(false), "no booking blocks that time");

        assert_eq!(holds.outstanding_holds().await, Ok(0), "the confirmed hold is a booking, not outstanding");

        store.close().await;
        assert_eq!(holds.remove_booking("demo", "alex", slot).await, Err(HoldError::Unavailable));
        // Nor is a failed count "none left" (the load test's leak check reads it).
        assert_eq!(holds.outstanding_holds().await, Err(HoldError::Unavailable));
        schema.drop_now().await.unwrap();
    }
}
