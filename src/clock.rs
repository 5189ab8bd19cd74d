//! Domain time. Every piece of domain code reads "now" from a [`Clock`]; production uses the
//! system clock and tests drive a [`ManualClock`], so retries, hold expiry and slot windows are
//! tested without sleeping.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::watch;

/// A source of domain time that can also wait until a domain instant.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Completes once `now() >= deadline`. For the system clock this is a timer; for the manual
    /// clock it completes when a test advances time past the deadline.
    fn sleep_until(&self, deadline: Timestamp) -> futures::future::BoxFuture<'static, ()>;
}

pub type SharedClock = Arc<dyn Clock>;

/// Wall-clock time.
#[derive(Debug, Default, Clone)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, deadline: Timestamp) -> futures::future::BoxFuture<'static, ()> {
        let remaining = deadline.duration_since(Timestamp::now());
        let wait = Duration::try_from(remaining).unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that only moves when told to. Waiters are woken through a watch channel, so a test
/// that advances time wakes every sleeper whose deadline passed, deterministically.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<Timestamp>>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        let (tx, _rx) = watch::channel(start);
        Self { now: Arc::new(tx) }
    }

    pub fn set(&self, to: Timestamp) {
        self.now.send_replace(to);
    }

    pub fn advance(&self, by: jiff::SignedDuration) {
        self.now.send_modify(|now| *now = now.checked_add(by).expect("clock overflow"));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: Timestamp) -> futures::future::BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first, then every change. The sender lives as
            // long as the clock; if it is dropped the sleeper simply completes.
            let _ = rx.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_advanced_past_deadline() {
        let start: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        let deadline = start + jiff::SignedDuration::from_secs(60);
        let mut sleeper = tokio::spawn(clock.sleep_until(deadline));
        clock.advance(jiff::SignedDuration::from_secs(30));
        // Not yet due: the sleeper must still be pending after the runtime had a chance to run it.
        tokio::task::yield_now().await;
        assert!(futures::poll!(&mut sleeper).is_pending());
        clock.advance(jiff::SignedDuration::from_secs(30));
        sleeper.await.unwrap();
        assert_eq!(clock.now(), deadline);
    }
}
