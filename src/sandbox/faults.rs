//! Fault switches shared by the point-of-sale emulators (`square.rs`, `shopify.rs`): an outage,
//! added latency, the next N answers failing with a status, and a stall that holds every
//! request until released (a vendor that hangs: the context's time budget is what answers).
//! Each emulator renders the refusal in its vendor's own error shape.
//!
//! The older emulators each carry their own copy of down / fail-next / latency; this module is
//! where they should converge (ARCHITECTURE.md, known duplication).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// What the emulator should do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Pass,
    /// The vendor is down: the emulator answers its outage page.
    Down,
    /// An injected failure with this HTTP status.
    Fail(u16),
}

#[derive(Default)]
struct State {
    down: bool,
    latency: Duration,
    fail_next: Option<(u16, usize)>,
    /// Requests per path (faulted ones included: the vendor saw them).
    requests: BTreeMap<String, u64>,
}

/// A vendor that hangs: while on, every request waits unanswered until it is lifted. Shared by
/// the fault switches below and the HubSpot emulator (an instance killed mid-request, issue 13).
#[derive(Debug)]
pub struct Stall {
    stalled: watch::Sender<bool>,
    /// How many requests are being held by the stall right now.
    held: watch::Sender<usize>,
}

impl Default for Stall {
    fn default() -> Self {
        Self { stalled: watch::channel(false).0, held: watch::channel(0).0 }
    }
}

impl Stall {
    pub fn set(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }

    /// Changes whenever a request starts or stops being held (tests wait on it).
    pub fn held(&self) -> watch::Receiver<usize> {
        self.held.subscribe()
    }

    /// Returns at once unless stalled; else once the stall is lifted.
    pub async fn pass(&self) {
        let mut stalled = self.stalled.subscribe();
        if *stalled.borrow_and_update() {
            self.held.send_modify(|n| *n += 1);
            // Counted down even if the request is dropped while held (its client went away).
            struct Release<'a>(&'a watch::Sender<usize>);
            impl Drop for Release<'_> {
                fn drop(&mut self) {
                    self.0.send_modify(|n| *n -= 1);
                }
            }
            let _release = Release(&self.held);
            while *stalled.borrow_and_update() {
                if stalled.changed().await.is_err() {
                    break;
                }
            }
        }
    }
}

#[derive(Default)]
pub struct FaultSwitches {
    state: Mutex<State>,
    stall: Stall,
}

impl FaultSwitches {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request answers the vendor's outage while true.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Every answer is delayed this long.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The next `count` requests fail with `status`.
    pub fn fail_next(&self, status: u16, count: usize) {
        self.lock().fail_next = (count > 0).then_some((status, count));
    }

    /// While true every request waits, unanswered, until the stall is lifted.
    pub fn set_stalled(&self, stalled: bool) {
        self.stall.set(stalled);
    }

    /// Changes whenever a request starts or stops being held by the stall (tests wait on it).
    pub fn held(&self) -> watch::Receiver<usize> {
        self.stall.held()
    }

    /// Requests received in total.
    pub fn requests(&self) -> u64 {
        self.lock().requests.values().sum()
    }

    /// Requests received on one path.
    pub fn requests_to(&self, path: &str) -> u64 {
        self.lock().requests.get(path).copied().unwrap_or(0)
    }

    /// Counts the request, applies the stall and the latency, then decides.
    pub async fn admit(&self, path: &str) -> Admission {
        *self.lock().requests.entry(path.to_owned()).or_default() += 1;
        self.stall.pass().await;
        let latency = self.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut state = self.lock();
        if state.down {
            return Admission::Down;
        }
        if let Some((status, left)) = state.fail_next.as_mut() {
            let status = *status;
            *left -= 1;
            if *left == 0 {
                state.fail_next = None;
            }
            return Admission::Fail(status);
        }
        Admission::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn switches_count_fail_a_bounded_number_of_times_and_hold_until_released() {
        let f = Arc::new(FaultSwitches::default());
        f.fail_next(429, 2);
        assert_eq!(f.admit("/a").await, Admission::Fail(429));
        assert_eq!(f.admit("/a").await, Admission::Fail(429));
        assert_eq!(f.admit("/b").await, Admission::Pass);
        f.set_down(true);
        assert_eq!(f.admit("/b").await, Admission::Down);
        f.set_down(false);
        assert_eq!((f.requests(), f.requests_to("/a")), (4, 2));

        f.set_stalled(true);
        let mut held = f.held();
        let f2 = f.clone();
        let pending = tokio::spawn(async move { f2.admit("/c").await });
        while *held.borrow_and_update() == 0 {
            held.changed().await.unwrap();
        }
        assert!(!pending.is_finished());
        f.set_stalled(false);
        assert_eq!(pending.await.unwrap(), Admission::Pass);
    }
}
