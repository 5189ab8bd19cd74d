//! The hold ledger: this instance's in-memory record of slots held by live calls and of
//! confirmed bookings, so two callers can never be offered — let alone booked into — the same
//! time. Single instance, one `std::sync::Mutex`; every operation is one short critical section
//! (no I/O, nothing awaited under the lock), which is what makes [`HoldLedger::try_hold`]
//! atomic.
//!
//! Semantics:
//! - Entries are kept per `(tenant, staff_id)`. A hold conflicts only with entries of the same
//!   tenant and staff member, when the *blocked* intervals (slot plus buffers) overlap as
//!   [`Interval::overlaps`] says: half-open, so `[9:00, 9:30)` and `[9:30, 10:00)` do not.
//! - A hold is live while `now < expires_at`; at exactly `expires_at` it is expired and frees
//!   its time.
//! - [`HoldLedger::confirm`] turns a hold into a booking: it never expires and keeps blocking
//!   until [`HoldLedger::remove_booking`] (or [`HoldLedger::prune_bookings_ended_before`]).
//!   Its id stays addressable: `get` and `confirm` (idempotent) answer `Ok`, `extend` is a
//!   no-op `Ok`, `release` answers `NotFound` (a booking is not released, it is removed), and
//!   `release_all_for_call` leaves it alone.
//! - Expired holds are purged in `try_hold` for the bucket being written (same critical section)
//!   and everywhere by `purge_expired`. Until purged, `get`/`extend`/`confirm` answer `Expired`;
//!   afterwards `NotFound`.
//! - Invariant: the entries of one `(tenant, staff)` bucket — live, expired-but-unpurged and
//!   confirmed alike — never overlap each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use crate::connectors::calendar::Interval;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: Uuid,
    pub tenant: String,
    pub staff_id: String,
    pub call_id: String,
    /// The appointment itself.
    pub slot: Interval,
    /// What the hold keeps free: the slot plus buffers (always covers `slot`).
    pub blocked: Interval,
    /// When the hold lapses unless extended or confirmed. Bookings keep the value they had when
    /// confirmed; it no longer matters for them.
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    pub tenant: String,
    pub staff_id: String,
    pub call_id: String,
    pub slot: Interval,
    /// Normally `schedule::blocked_interval(service, slot.start)`. If it does not cover `slot`,
    /// the ledger widens it to the smallest interval covering both.
    pub blocked: Interval,
    /// Must be positive.
    pub ttl: SignedDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("overlaps a live hold or booking")]
    Overlap,
    #[error("no such hold")]
    NotFound,
    #[error("hold belongs to another call")]
    NotOwner,
    #[error("hold expired")]
    Expired,
    /// The shared ledger's store did not answer (`booking::holds`); nothing was held or changed.
    #[error("the hold ledger is unavailable")]
    Unavailable,
}

#[derive(Debug)]
struct Entry {
    hold: Hold,
    confirmed: bool,
    /// The calendar reported a foreign busy event over this entry (inbound sync): the slot is
    /// taken at the provider, whatever the ledger says.
    flagged: bool,
}

impl Entry {
    /// Whether the entry blocks time at `now`.
    fn blocks_at(&self, now: Timestamp) -> bool {
        self.confirmed || now < self.hold.expires_at
    }

    fn expired_hold_at(&self, now: Timestamp) -> bool {
        !self.blocks_at(now)
    }
}

#[derive(Debug, Default)]
struct Tenant {
    /// Entries per staff member.
    staff: HashMap<String, Vec<Entry>>,
    /// Hold id → staff member, for lookups by id.
    index: HashMap<Uuid, String>,
}

impl Tenant {
    fn entry_mut(&mut self, hold_id: Uuid) -> Option<&mut Entry> {
        let staff = self.index.get(&hold_id)?;
        self.staff.get_mut(staff)?.iter_mut().find(|e| e.hold.id == hold_id)
    }

    /// Removes the entries of one staff member matching `remove`; returns how many.
    fn remove_where(&mut self, staff_id: &str, mut remove: impl FnMut(&Entry) -> bool) -> usize {
        let Some(entries) = self.staff.get_mut(staff_id) else {
            return 0;
        };
        let before = entries.len();
        let index = &mut self.index;
        entries.retain(|e| {
            let gone = remove(e);
            if gone {
                index.remove(&e.hold.id);
            }
            !gone
        });
        let removed = before - entries.len();
        if entries.is_empty() {
            self.staff.remove(staff_id);
        }
        removed
    }

    fn remove_everywhere(&mut self, mut remove: impl FnMut(&Entry) -> bool) -> usize {
        let staff: Vec<String> = self.staff.keys().cloned().collect();
        staff.iter().map(|s| self.remove_where(s, &mut remove)).sum()
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct HoldLedger {
    tenants: Mutex<HashMap<String, Tenant>>,
    /// TEST ONLY (`sandbox_options.unsafe_bypass_hold_ledger`): overlapping holds are admitted.
    unsafe_bypass: AtomicBool,
}

impl HoldLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// TEST ONLY: from now on overlapping holds are admitted and [`HoldLedger::busy`] reports
    /// nothing, so slots are offered as if no call held them (the invariant in the module docs no
    /// longer holds). Only the sandbox-only `sandbox_options.unsafe_bypass_hold_ledger` sets it,
    /// so the load test can show its overlap check catches double bookings.
    pub fn set_unsafe_bypass(&self, on: bool) {
        self.unsafe_bypass.store(on, Ordering::Relaxed);
    }

    pub fn unsafe_bypassed(&self) -> bool {
        self.unsafe_bypass.load(Ordering::Relaxed)
    }

    /// Unconfirmed holds still in the ledger (live or expired-but-unpurged), across tenants: zero
    /// once every call has ended, since a call's holds die with it.
    pub fn outstanding_holds(&self) -> usize {
        self.lock().values().flat_map(|t| t.staff.values()).flatten().filter(|e| !e.confirmed).count()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Tenant>> {
        // Critical sections never leave an entry half-written, so a panic elsewhere while the
        // lock was held does not make the data unusable.
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Atomically holds `req.blocked` for the call. Fails with `Overlap` iff it overlaps a live
    /// hold or a booking of the same tenant and staff member; expired holds of that staff member
    /// are purged first, in the same critical section. A non-positive `ttl` answers `Expired`.
    pub fn try_hold(&self, req: HoldRequest, now: Timestamp) -> Result<Hold, HoldError> {
        if req.ttl <= SignedDuration::ZERO {
            return Err(HoldError::Expired);
        }
        let expires_at = now.checked_add(req.ttl).unwrap_or(Timestamp::MAX);
        let blocked = Interval { start: req.blocked.start.min(req.slot.start), end: req.blocked.end.max(req.slot.end) };
        let mut tenants = self.lock();
        let tenant = tenants.entry(req.tenant.clone()).or_default();
        tenant.remove_where(&req.staff_id, |e| e.expired_hold_at(now));
        let conflict = tenant
            .staff
            .get(&req.staff_id)
            .is_some_and(|entries| entries.iter().any(|e| e.hold.blocked.overlaps(&blocked)));
        if conflict && !self.unsafe_bypass.load(Ordering::Relaxed) {
            return Err(HoldError::Overlap);
        }
        let hold = Hold {
            id: Uuid::new_v4(),
            tenant: req.tenant,
            staff_id: req.staff_id,
            call_id: req.call_id,
            slot: req.slot,
            blocked,
            expires_at,
        };
        tenant.index.insert(hold.id, hold.staff_id.clone());
        tenant.staff.entry(hold.staff_id.clone()).or_default().push(Entry {
            hold: hold.clone(),
            confirmed: false,
            flagged: false,
        });
        Ok(hold)
    }

    /// Releases the call's hold (whether or not it has expired) and returns it. A confirmed
    /// booking is not a hold: `NotFound` (use [`HoldLedger::remove_booking`]).
    pub fn release(&self, tenant: &str, hold_id: Uuid, call_id: &str) -> Result<Hold, HoldError> {
        let mut tenants = self.lock();
        let t = tenants.get_mut(tenant).ok_or(HoldError::NotFound)?;
        let entry = t.entry_mut(hold_id).ok_or(HoldError::NotFound)?;
        if entry.hold.call_id != call_id {
            return Err(HoldError::NotOwner);
        }
        if entry.confirmed {
            return Err(HoldError::NotFound);
        }
        let hold = entry.hold.clone();
        t.remove_where(&hold.staff_id, |e| e.hold.id == hold_id);
        Ok(hold)
    }

    /// The hold (or booking) with this id. `Expired` once `now >= expires_at` for a hold.
    pub fn get(&self, tenant: &str, hold_id: Uuid, now: Timestamp) -> Result<Hold, HoldError> {
        let mut tenants = self.lock();
        let entry = tenants.get_mut(tenant).and_then(|t| t.entry_mut(hold_id)).ok_or(HoldError::NotFound)?;
        if entry.expired_hold_at(now) {
            return Err(HoldError::Expired);
        }
        Ok(entry.hold.clone())
    }

    /// Moves a live hold's expiry to `until`. Never shortens a hold (an earlier `until` leaves it
    /// unchanged) and never revives an expired one. A booking answers `Ok` unchanged. No overlap
    /// check is needed: nothing overlapping can have been admitted while the hold was live.
    pub fn extend(
        &self,
        tenant: &str,
        hold_id: Uuid,
        call_id: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<Hold, HoldError> {
        let mut tenants = self.lock();
        let entry = tenants.get_mut(tenant).and_then(|t| t.entry_mut(hold_id)).ok_or(HoldError::NotFound)?;
        if entry.hold.call_id != call_id {
            return Err(HoldError::NotOwner);
        }
        if entry.expired_hold_at(now) {
            return Err(HoldError::Expired);
        }
        if !entry.confirmed && until > entry.hold.expires_at {
            entry.hold.expires_at = until;
        }
        Ok(entry.hold.clone())
    }

    /// Hands a live hold to another owner and keeps it until `until` (never shortened), in one
    /// critical section: a booking whose calendar was unreachable keeps its slot past the end of
    /// the call that made it (the new owner is the pending booking).
    pub fn transfer(
        &self,
        tenant: &str,
        hold_id: Uuid,
        from_call: &str,
        to_owner: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<Hold, HoldError> {
        let mut tenants = self.lock();
        let entry = tenants.get_mut(tenant).and_then(|t| t.entry_mut(hold_id)).ok_or(HoldError::NotFound)?;
        if entry.hold.call_id != from_call {
            return Err(HoldError::NotOwner);
        }
        if entry.confirmed || entry.expired_hold_at(now) {
            return Err(HoldError::Expired);
        }
        entry.hold.call_id = to_owner.to_owned();
        entry.hold.expires_at = entry.hold.expires_at.max(until);
        Ok(entry.hold.clone())
    }

    /// Turns the call's live hold into a booking that never expires. Idempotent: confirming a
    /// booking again answers `Ok`.
    pub fn confirm(&self, tenant: &str, hold_id: Uuid, call_id: &str, now: Timestamp) -> Result<Hold, HoldError> {
        let mut tenants = self.lock();
        let entry = tenants.get_mut(tenant).and_then(|t| t.entry_mut(hold_id)).ok_or(HoldError::NotFound)?;
        if entry.hold.call_id != call_id {
            return Err(HoldError::NotOwner);
        }
        if entry.expired_hold_at(now) {
            return Err(HoldError::Expired);
        }
        entry.confirmed = true;
        Ok(entry.hold.clone())
    }

    /// Frees a booking (cancel / reschedule) identified by its exact blocked interval. Returns
    /// whether one was removed. Holds are not touched.
    pub fn remove_booking(&self, tenant: &str, staff_id: &str, blocked: Interval) -> bool {
        let mut tenants = self.lock();
        let Some(t) = tenants.get_mut(tenant) else {
            return false;
        };
        let mut done = false;
        t.remove_where(staff_id, |e| {
            let hit = !done && e.confirmed && e.hold.blocked == blocked;
            done |= hit;
            hit
        }) > 0
    }

    /// Releases every hold (expired or not, bookings excluded) of the call; returns how many.
    pub fn release_all_for_call(&self, tenant: &str, call_id: &str) -> usize {
        let mut tenants = self.lock();
        let Some(t) = tenants.get_mut(tenant) else {
            return 0;
        };
        t.remove_everywhere(|e| !e.confirmed && e.hold.call_id == call_id)
    }

    /// Flags the staff member's live holds and bookings whose slot overlaps `taken` (a foreign
    /// busy event the calendar reported) and returns the ones flagged now: (hold, confirmed).
    /// An entry is flagged once, so a repeated report does not repeat the news.
    pub fn flag_overlapping(&self, tenant: &str, staff_id: &str, taken: Interval, now: Timestamp) -> Vec<(Hold, bool)> {
        let mut tenants = self.lock();
        let Some(entries) = tenants.get_mut(tenant).and_then(|t| t.staff.get_mut(staff_id)) else {
            return Vec::new();
        };
        entries
            .iter_mut()
            .filter(|e| !e.flagged && e.blocks_at(now) && e.hold.slot.overlaps(&taken))
            .map(|e| {
                e.flagged = true;
                (e.hold.clone(), e.confirmed)
            })
            .collect()
    }

    /// Whether a hold or booking was flagged by [`Self::flag_overlapping`].
    pub fn is_flagged(&self, tenant: &str, hold_id: Uuid) -> bool {
        self.lock().get_mut(tenant).and_then(|t| t.entry_mut(hold_id)).is_some_and(|e| e.flagged)
    }

    /// Blocked intervals of the staff member's live holds and bookings overlapping `window`,
    /// sorted (they never overlap each other).
    pub fn busy(&self, tenant: &str, staff_id: &str, window: Interval, now: Timestamp) -> Vec<Interval> {
        if self.unsafe_bypassed() {
            // TEST ONLY: slots are offered and held as if the ledger were empty.
            return Vec::new();
        }
        let tenants = self.lock();
        let mut out: Vec<Interval> = tenants
            .get(tenant)
            .and_then(|t| t.staff.get(staff_id))
            .into_iter()
            .flatten()
            .filter(|e| e.blocks_at(now) && e.hold.blocked.overlaps(&window))
            .map(|e| e.hold.blocked)
            .collect();
        drop(tenants);
        out.sort_unstable();
        out
    }

    /// Unexpired holds across all tenants, bookings excluded (for "no hold leaked" checks).
    pub fn live_holds(&self, now: Timestamp) -> usize {
        self.lock()
            .values()
            .flat_map(|t| t.staff.values().flatten())
            .filter(|e| !e.confirmed && now < e.hold.expires_at)
            .count()
    }

    /// Bookings across all tenants.
    pub fn bookings(&self) -> usize {
        self.lock().values().flat_map(|t| t.staff.values().flatten()).filter(|e| e.confirmed).count()
    }

    /// Drops every expired hold; returns how many.
    pub fn purge_expired(&self, now: Timestamp) -> usize {
        self.retain_tenants(|t| t.remove_everywhere(|e| e.expired_hold_at(now)))
    }

    /// Drops bookings whose blocked interval ended at or before `cutoff` (they can no longer
    /// conflict with anything bookable); returns how many. Bookings are otherwise kept forever,
    /// so a long-running instance should call this now and then.
    pub fn prune_bookings_ended_before(&self, cutoff: Timestamp) -> usize {
        self.retain_tenants(|t| t.remove_everywhere(|e| e.confirmed && e.hold.blocked.end <= cutoff))
    }

    fn retain_tenants(&self, mut f: impl FnMut(&mut Tenant) -> usize) -> usize {
        let mut tenants = self.lock();
        let mut n = 0;
        tenants.retain(|_, t| {
            n += f(t);
            !t.staff.is_empty()
        });
        n
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Barrier;

    use proptest::prelude::*;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// 2026-06-02 at `h:m` UTC.
    fn at(h: i64, m: i64) -> Timestamp {
        ts("2026-06-02T00:00:00Z") + SignedDuration::from_mins(h * 60 + m)
    }

    fn iv(a: Timestamp, b: Timestamp) -> Interval {
        Interval::new(a, b)
    }

    fn req(tenant: &str, staff: &str, call: &str, slot: Interval, blocked: Interval) -> HoldRequest {
        HoldRequest {
            tenant: tenant.into(),
            staff_id: staff.into(),
            call_id: call.into(),
            slot,
            blocked,
            ttl: SignedDuration::from_mins(5),
        }
    }

    /// A hold without buffers.
    fn plain(tenant: &str, staff: &str, call: &str, from: Timestamp, to: Timestamp) -> HoldRequest {
        req(tenant, staff, call, iv(from, to), iv(from, to))
    }

    fn now() -> Timestamp {
        at(8, 0)
    }

    #[test]
    fn overlap_conflicts_and_adjacency_does_not() {
        let l = HoldLedger::new();
        let h = l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        assert_eq!(h.expires_at, now() + SignedDuration::from_mins(5));
        assert_eq!(h.blocked, iv(at(9, 0), at(9, 30)));
        assert_eq!(l.try_hold(plain("t", "ann", "c2", at(9, 0), at(9, 30)), now()), Err(HoldError::Overlap));
        assert_eq!(l.try_hold(plain("t", "ann", "c2", at(9, 29), at(9, 45)), now()), Err(HoldError::Overlap));
        assert_eq!(l.try_hold(plain("t", "ann", "c2", at(8, 0), at(11, 0)), now()), Err(HoldError::Overlap));
        // Half-open: touching intervals are fine on both sides.
        l.try_hold(plain("t", "ann", "c2", at(9, 30), at(10, 0)), now()).unwrap();
        l.try_hold(plain("t", "ann", "c3", at(8, 30), at(9, 0)), now()).unwrap();
        // The same call cannot double-hold either.
        assert_eq!(l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()), Err(HoldError::Overlap));
        assert_eq!(l.live_holds(now()), 3);
        assert_eq!(l.busy("t", "ann", iv(at(0, 0), at(23, 0)), now()).len(), 3);
        assert_eq!(l.busy("t", "ann", iv(at(9, 30), at(9, 31)), now()), [iv(at(9, 30), at(10, 0))]);
    }

    #[test]
    fn buffers_are_part_of_the_blocked_interval() {
        let l = HoldLedger::new();
        // 10:00–10:30 with 15 minutes either side.
        l.try_hold(req("t", "ann", "c1", iv(at(10, 0), at(10, 30)), iv(at(9, 45), at(10, 45))), now()).unwrap();
        // A 9:15–9:45 slot does not overlap the slot itself but hits the buffer.
        let err = l.try_hold(req("t", "ann", "c2", iv(at(9, 15), at(9, 45)), iv(at(9, 10), at(9, 50))), now());
        assert_eq!(err, Err(HoldError::Overlap));
        // Without its own after-buffer it just fits.
        l.try_hold(req("t", "ann", "c2", iv(at(9, 15), at(9, 45)), iv(at(9, 0), at(9, 45))), now()).unwrap();
        // A blocked interval narrower than the slot is widened to cover it.
        let h = l.try_hold(req("t", "ann", "c3", iv(at(11, 0), at(11, 30)), iv(at(11, 0), at(11, 0))), now()).unwrap();
        assert_eq!(h.blocked, iv(at(11, 0), at(11, 30)));
    }

    #[test]
    fn ttl_expiry_frees_the_slot_at_exactly_expires_at() {
        let l = HoldLedger::new();
        let h = l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        let just_before = h.expires_at - SignedDuration::from_nanos(1);
        assert_eq!(l.try_hold(plain("t", "ann", "c2", at(9, 0), at(9, 30)), just_before), Err(HoldError::Overlap));
        assert_eq!(l.get("t", h.id, just_before).unwrap(), h);
        assert_eq!(l.live_holds(just_before), 1);
        assert_eq!(l.get("t", h.id, h.expires_at), Err(HoldError::Expired));
        assert_eq!(l.confirm("t", h.id, "c1", h.expires_at), Err(HoldError::Expired));
        assert_eq!(l.extend("t", h.id, "c1", at(12, 0), h.expires_at), Err(HoldError::Expired));
        assert_eq!(l.live_holds(h.expires_at), 0);
        assert!(l.busy("t", "ann", iv(at(0, 0), at(23, 0)), h.expires_at).is_empty());
        let h2 = l.try_hold(plain("t", "ann", "c2", at(9, 0), at(9, 30)), h.expires_at).unwrap();
        // The expired hold was purged by that try_hold.
        assert_eq!(l.get("t", h.id, h.expires_at), Err(HoldError::NotFound));
        assert_eq!(l.get("t", h2.id, h.expires_at).unwrap(), h2);
        // A non-positive TTL holds nothing.
        let mut r = plain("t", "ann", "c3", at(12, 0), at(12, 30));
        r.ttl = SignedDuration::ZERO;
        assert_eq!(l.try_hold(r, now()), Err(HoldError::Expired));
    }

    #[test]
    fn extend_moves_expiry_forward_only() {
        let l = HoldLedger::new();
        let h = l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        let later = now() + SignedDuration::from_mins(20);
        assert_eq!(l.extend("t", h.id, "c2", later, now()), Err(HoldError::NotOwner));
        assert_eq!(l.extend("t", h.id, "c1", later, now()).unwrap().expires_at, later);
        assert_eq!(l.extend("t", h.id, "c1", now(), now()).unwrap().expires_at, later, "never shortens");
        // Still held past the original TTL.
        let past_ttl = h.expires_at + SignedDuration::from_mins(1);
        assert_eq!(l.try_hold(plain("t", "ann", "c2", at(9, 0), at(9, 30)), past_ttl), Err(HoldError::Overlap));
        assert_eq!(l.extend("t", Uuid::new_v4(), "c1", later, now()), Err(HoldError::NotFound));
    }

    #[test]
    fn release_checks_the_owner() {
        let l = HoldLedger::new();
        let h = l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        assert_eq!(l.release("t", h.id, "c2"), Err(HoldError::NotOwner));
        assert_eq!(l.release("other", h.id, "c1"), Err(HoldError::NotFound));
        assert_eq!(l.release("t", h.id, "c1").unwrap(), h);
        assert_eq!(l.release("t", h.id, "c1"), Err(HoldError::NotFound));
        l.try_hold(plain("t", "ann", "c2", at(9, 0), at(9, 30)), now()).unwrap();
    }

    #[test]
    fn confirm_makes_a_permanent_booking() {
        let l = HoldLedger::new();
        let h = l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        assert_eq!(l.confirm("t", h.id, "c2", now()), Err(HoldError::NotOwner));
        assert_eq!(l.confirm("t", h.id, "c1", now()).unwrap(), h);
        assert_eq!(l.confirm("t", h.id, "c1", now()).unwrap(), h, "idempotent");
        let much_later = now() + SignedDuration::from_hours(24 * 30);
        assert_eq!(l.try_hold(plain("t", "ann", "c2", at(9, 15), at(9, 45)), much_later), Err(HoldError::Overlap));
        assert_eq!(l.get("t", h.id, much_later).unwrap(), h);
        assert_eq!(l.busy("t", "ann", iv(at(9, 0), at(9, 30)), much_later), [h.blocked]);
        assert_eq!(l.live_holds(now()), 0, "a booking is not a hold");
        assert_eq!(l.bookings(), 1);
        assert_eq!(l.purge_expired(much_later), 0);
        // Neither release nor release_all_for_call frees a booking.
        assert_eq!(l.release("t", h.id, "c1"), Err(HoldError::NotFound));
        assert_eq!(l.release_all_for_call("t", "c1"), 0);
        // remove_booking does, by exact blocked interval.
        assert!(!l.remove_booking("t", "ann", iv(at(9, 0), at(9, 31))));
        assert!(!l.remove_booking("t", "bob", h.blocked));
        assert!(l.remove_booking("t", "ann", h.blocked));
        assert!(!l.remove_booking("t", "ann", h.blocked));
        l.try_hold(plain("t", "ann", "c2", at(9, 15), at(9, 45)), much_later).unwrap();
    }

    #[test]
    fn remove_booking_leaves_holds_alone_and_pruning_drops_old_bookings() {
        let l = HoldLedger::new();
        let h = l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        assert!(!l.remove_booking("t", "ann", h.blocked), "a hold is not a booking");
        l.confirm("t", h.id, "c1", now()).unwrap();
        assert_eq!(l.prune_bookings_ended_before(at(9, 29)), 0);
        assert_eq!(l.prune_bookings_ended_before(at(9, 30)), 1);
        assert_eq!(l.bookings(), 0);
    }

    #[test]
    fn tenants_and_staff_are_isolated() {
        let l = HoldLedger::new();
        let h = l.try_hold(plain("t1", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        l.try_hold(plain("t1", "bob", "c2", at(9, 0), at(9, 30)), now()).unwrap();
        l.try_hold(plain("t2", "ann", "c3", at(9, 0), at(9, 30)), now()).unwrap();
        assert_eq!(l.get("t2", h.id, now()), Err(HoldError::NotFound));
        assert_eq!(l.confirm("t2", h.id, "c1", now()), Err(HoldError::NotFound));
        assert!(l.busy("t2", "bob", iv(at(0, 0), at(23, 0)), now()).is_empty());
        assert_eq!(l.live_holds(now()), 3);
    }

    #[test]
    fn a_transferred_hold_changes_owner_and_outlives_the_call() {
        let l = HoldLedger::new();
        let h = l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        let until = at(8, 50);
        assert_eq!(l.transfer("t", h.id, "c2", "pending:k", until, now()), Err(HoldError::NotOwner));
        let moved = l.transfer("t", h.id, "c1", "pending:k", until, now()).unwrap();
        assert_eq!(moved.call_id, "pending:k");
        assert_eq!(moved.expires_at, until);
        assert_eq!(l.release_all_for_call("t", "c1"), 0, "the call no longer owns it");
        let later = at(8, 49);
        assert_eq!(l.try_hold(plain("t", "ann", "c3", at(9, 0), at(9, 30)), later), Err(HoldError::Overlap));
        assert!(l.try_hold(plain("t", "ann", "c3", at(9, 0), at(9, 30)), until).is_ok(), "free at its new expiry");
    }

    #[test]
    fn release_all_for_call_and_purge() {
        let l = HoldLedger::new();
        l.try_hold(plain("t", "ann", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        l.try_hold(plain("t", "bob", "c1", at(9, 0), at(9, 30)), now()).unwrap();
        l.try_hold(plain("t", "bob", "c2", at(10, 0), at(10, 30)), now()).unwrap();
        l.try_hold(plain("u", "bob", "c1", at(10, 0), at(10, 30)), now()).unwrap();
        assert_eq!(l.release_all_for_call("t", "c1"), 2);
        assert_eq!(l.release_all_for_call("t", "c1"), 0);
        assert_eq!(l.live_holds(now()), 2);
        let later = now() + SignedDuration::from_mins(5);
        assert_eq!(l.live_holds(later), 0);
        assert_eq!(l.purge_expired(later), 2);
        assert_eq!(l.purge_expired(later), 0);
        assert!(l.lock().is_empty(), "empty tenants are dropped");
    }

    #[test]
    fn concurrent_holds_admit_exactly_one_per_slot() {
        let l = HoldLedger::new();
        let threads = 20;
        let per_thread = 50;
        let barrier = Barrier::new(threads);
        let wins: Vec<Hold> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (l, barrier) = (&l, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let mut won = Vec::new();
                        for i in 0..per_thread {
                            let k = ((t + i) % 10) as i64;
                            let start = at(9, 0) + SignedDuration::from_mins(30 * k);
                            let r = plain(
                                "t",
                                "ann",
                                &format!("call-{t}-{i}"),
                                start,
                                start + SignedDuration::from_mins(30),
                            );
                            match l.try_hold(r, now()) {
                                Ok(h) => won.push(h),
                                Err(e) => assert_eq!(e, HoldError::Overlap),
                            }
                        }
                        won
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(threads * per_thread, 1_000);
        assert_eq!(wins.len(), 10);
        let slots: HashSet<Interval> = wins.iter().map(|h| h.slot).collect();
        assert_eq!(slots.len(), 10);
        assert_eq!(l.live_holds(now()), 10);
    }

    // ---- property: a reference model, and no overlapping entries ever ----

    #[derive(Debug, Clone)]
    enum Op {
        Hold { tenant: usize, staff: usize, call: usize, start: i64, len: i64, before: i64, after: i64, ttl: i64 },
        Release { hold: usize, call: usize },
        Get { hold: usize },
        Extend { hold: usize, call: usize, by: i64 },
        Transfer { hold: usize, from: usize, to: usize, by: i64 },
        Confirm { hold: usize, call: usize },
        RemoveBooking { hold: usize },
        ReleaseAll { tenant: usize, call: usize },
        Purge,
        Advance { minutes: i64 },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..2, 0usize..2, 0usize..3, 0i64..40, 1i64..6, 0i64..2, 0i64..2, -1i64..8).prop_map(
                |(tenant, staff, call, start, len, before, after, ttl)| Op::Hold { tenant, staff, call, start, len, before, after, ttl }
            ),
            1 => (any::<usize>(), 0usize..3).prop_map(|(hold, call)| Op::Release { hold, call }),
            1 => any::<usize>().prop_map(|hold| Op::Get { hold }),
            1 => (any::<usize>(), 0usize..3, -2i64..6).prop_map(|(hold, call, by)| Op::Extend { hold, call, by }),
            1 => (any::<usize>(), 0usize..3, 0usize..3, -2i64..6).prop_map(|(hold, from, to, by)| Op::Transfer { hold, from, to, by }),
            2 => (any::<usize>(), 0usize..3).prop_map(|(hold, call)| Op::Confirm { hold, call }),
            1 => any::<usize>().prop_map(|hold| Op::RemoveBooking { hold }),
            1 => (0usize..2, 0usize..3).prop_map(|(tenant, call)| Op::ReleaseAll { tenant, call }),
            1 => Just(Op::Purge),
            2 => (0i64..4).prop_map(|minutes| Op::Advance { minutes }),
        ]
    }

    /// The same rules, written as plainly as possible.
    #[derive(Default)]
    struct Model {
        entries: Vec<(Hold, bool)>,
    }

    impl Model {
        fn live(e: &(Hold, bool), now: Timestamp) -> bool {
            e.1 || now < e.0.expires_at
        }

        fn find(&self, tenant: &str, id: Uuid) -> Option<usize> {
            self.entries.iter().position(|(h, _)| h.id == id && h.tenant == tenant)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn ledger_matches_model_and_never_overlaps(ops in prop::collection::vec(arb_op(), 1..60)) {
            let l = HoldLedger::new();
            let mut m = Model::default();
            let mut ids: Vec<(String, Uuid)> = Vec::new();
            let mut now = now();
            let tenants = ["t0", "t1"];
            let staff = ["ann", "bob"];
            let calls = ["c0", "c1", "c2"];
            let unit = SignedDuration::from_mins(15);
            for op in ops {
                let pick = |i: usize| ids.get(i % ids.len().max(1)).cloned();
                match op {
                    Op::Hold { tenant, staff: s, call, start, len, before, after, ttl } => {
                        let slot = iv(at(8, 0) + unit * start as i32, at(8, 0) + unit * (start + len) as i32);
                        let blocked = iv(slot.start - unit * before as i32, slot.end + unit * after as i32);
                        let mut r = req(tenants[tenant], staff[s], calls[call], slot, blocked);
                        r.ttl = SignedDuration::from_mins(ttl);
                        let got = l.try_hold(r, now);
                        // Model: purge the bucket's expired holds, then check overlap.
                        let expected = if ttl <= 0 {
                            Err(HoldError::Expired)
                        } else {
                            m.entries.retain(|e| Model::live(e, now) || e.0.tenant != tenants[tenant] || e.0.staff_id != staff[s]);
                            let clash = m.entries.iter().any(|(h, _)| {
                                h.tenant == tenants[tenant] && h.staff_id == staff[s] && h.blocked.overlaps(&blocked)
                            });
                            if clash { Err(HoldError::Overlap) } else { Ok(()) }
                        };
                        match (&got, expected) {
                            (Ok(h), Ok(())) => {
                                prop_assert_eq!(h.blocked, blocked);
                                prop_assert_eq!(h.expires_at, now + SignedDuration::from_mins(ttl));
                                ids.push((h.tenant.clone(), h.id));
                                m.entries.push((h.clone(), false));
                            }
                            (Err(a), Err(b)) => prop_assert_eq!(*a, b),
                            (a, b) => prop_assert!(false, "ledger {:?} vs model {:?}", a, b),
                        }
                    }
                    Op::Release { hold, call } => {
                        if let Some((tenant, id)) = pick(hold) {
                            let got = l.release(&tenant, id, calls[call]);
                            let expected = match m.find(&tenant, id) {
                                None => Err(HoldError::NotFound),
                                Some(i) if m.entries[i].0.call_id != calls[call] => Err(HoldError::NotOwner),
                                Some(i) if m.entries[i].1 => Err(HoldError::NotFound),
                                Some(i) => Ok(m.entries.remove(i).0),
                            };
                            prop_assert_eq!(got, expected);
                        }
                    }
                    Op::Get { hold } => {
                        if let Some((tenant, id)) = pick(hold) {
                            let expected = match m.find(&tenant, id) {
                                None => Err(HoldError::NotFound),
                                Some(i) if !Model::live(&m.entries[i], now) => Err(HoldError::Expired),
                                Some(i) => Ok(m.entries[i].0.clone()),
                            };
                            prop_assert_eq!(l.get(&tenant, id, now), expected);
                        }
                    }
                    Op::Extend { hold, call, by } => {
                        if let Some((tenant, id)) = pick(hold) {
                            let until = now + SignedDuration::from_mins(by);
                            let expected = match m.find(&tenant, id) {
                                None => Err(HoldError::NotFound),
                                Some(i) if m.entries[i].0.call_id != calls[call] => Err(HoldError::NotOwner),
                                Some(i) if !Model::live(&m.entries[i], now) => Err(HoldError::Expired),
                                Some(i) => {
                                    let e = &mut m.entries[i];
                                    if !e.1 && until > e.0.expires_at {
                                        e.0.expires_at = until;
                                    }
                                    Ok(e.0.clone())
                                }
                            };
                            prop_assert_eq!(l.extend(&tenant, id, calls[call], until, now), expected);
                        }
                    }
                    Op::Transfer { hold, from, to, by } => {
                        if let Some((tenant, id)) = pick(hold) {
                            let until = now + SignedDuration::from_mins(by);
                            let expected = match m.find(&tenant, id) {
                                None => Err(HoldError::NotFound),
                                Some(i) if m.entries[i].0.call_id != calls[from] => Err(HoldError::NotOwner),
                                Some(i) if m.entries[i].1 || !Model::live(&m.entries[i], now) => Err(HoldError::Expired),
                                Some(i) => {
                                    let e = &mut m.entries[i];
                                    e.0.call_id = calls[to].to_owned();
                                    e.0.expires_at = e.0.expires_at.max(until);
                                    Ok(e.0.clone())
                                }
                            };
                            prop_assert_eq!(l.transfer(&tenant, id, calls[from], calls[to], until, now), expected);
                        }
                    }
                    Op::Confirm { hold, call } => {
                        if let Some((tenant, id)) = pick(hold) {
                            let expected = match m.find(&tenant, id) {
                                None => Err(HoldError::NotFound),
                                Some(i) if m.entries[i].0.call_id != calls[call] => Err(HoldError::NotOwner),
                                Some(i) if !Model::live(&m.entries[i], now) => Err(HoldError::Expired),
                                Some(i) => {
                                    m.entries[i].1 = true;
                                    Ok(m.entries[i].0.clone())
                                }
                            };
                            prop_assert_eq!(l.confirm(&tenant, id, calls[call], now), expected);
                        }
                    }
                    Op::RemoveBooking { hold } => {
                        if let Some((tenant, id)) = pick(hold) {
                            // Aim at the interval this id had (whatever became of it).
                            let target = m.entries.iter().find(|(h, _)| h.id == id).map(|(h, _)| (h.staff_id.clone(), h.blocked));
                            if let Some((s, blocked)) = target {
                                let i = m.entries.iter().position(|(h, c)| *c && h.tenant == tenant && h.staff_id == s && h.blocked == blocked);
                                if let Some(i) = i {
                                    m.entries.remove(i);
                                }
                                prop_assert_eq!(l.remove_booking(&tenant, &s, blocked), i.is_some());
                            }
                        }
                    }
                    Op::ReleaseAll { tenant, call } => {
                        let before = m.entries.len();
                        m.entries.retain(|(h, c)| *c || h.tenant != tenants[tenant] || h.call_id != calls[call]);
                        prop_assert_eq!(l.release_all_for_call(tenants[tenant], calls[call]), before - m.entries.len());
                    }
                    Op::Purge => {
                        let before = m.entries.len();
                        m.entries.retain(|e| Model::live(e, now));
                        prop_assert_eq!(l.purge_expired(now), before - m.entries.len());
                    }
                    Op::Advance { minutes } => now += SignedDuration::from_mins(minutes),
                }

                // Invariants: every bucket's entries (live or not) are pairwise disjoint; the
                // live view agrees with the model.
                for t in l.lock().values() {
                    for entries in t.staff.values() {
                        for (i, a) in entries.iter().enumerate() {
                            for b in &entries[i + 1..] {
                                prop_assert!(!a.hold.blocked.overlaps(&b.hold.blocked), "{:?} overlaps {:?}", a.hold, b.hold);
                            }
                        }
                    }
                }
                let everything = iv(at(0, 0), at(23, 0));
                for tenant in tenants {
                    for s in staff {
                        let mut want: Vec<Interval> = m.entries.iter()
                            .filter(|e| e.0.tenant == tenant && e.0.staff_id == s && Model::live(e, now))
                            .map(|e| e.0.blocked)
                            .collect();
                        want.sort();
                        prop_assert_eq!(l.busy(tenant, s, everything, now), want);
                    }
                }
                prop_assert_eq!(l.live_holds(now), m.entries.iter().filter(|e| !e.1 && Model::live(e, now)).count());
            }
        }
    }
}
