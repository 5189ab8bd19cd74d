//! Rate budgets for the write-back lane, per connected account (tenant × vendor) and per vendor
//! app (a limit shared by every account, like a Google Cloud project's quota), so a backlog
//! drains at the provider's pace and never takes the whole limit: a share (`live_reserve_percent`)
//! of each budget is kept out of the write-back lane's reach, for the reads live calls make at
//! ring time. Those reads are not metered here — they are never delayed by callside — the
//! reservation holds because the write-back lane alone can never exceed `100 - reserve` percent.
//!
//! HubSpot allows an OAuth app 100 requests per 10 seconds per account
//! (<https://developers.hubspot.com/changelog/heads-up-new-and-improved-hubspot-api-limits>),
//! hence the default. A step makes several requests (search, create, associate), so a step is
//! charged [`REQUESTS_PER_STEP`] permits — an estimate on the safe side, not a count.
//!
//! Built on `governor` (GCRA). The worker waits for its permit before applying a step; while one
//! tenant's budget is exhausted the (sequential) worker waits on it, at most the time one step's
//! permits take to refill.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::WritebackSection;

/// Permits one step attempt costs.
pub const REQUESTS_PER_STEP: u32 = 3;

const WINDOW: Duration = Duration::from_secs(10);

type Keyed<C> = RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct RateBudgets<C: Clock = DefaultClock> {
    account: Keyed<C>,
    app: Option<Keyed<C>>,
}

/// The write-back lane's quota: `100 - reserve` percent of `per_window` requests per 10 s, as a
/// bucket that refills evenly and holds at most one window's worth.
fn lane_quota(per_window: u32, reserve_percent: u32) -> Quota {
    let share = (u64::from(per_window) * u64::from(100 - reserve_percent.min(90)) / 100).max(1) as u32;
    let share = NonZeroU32::new(share.max(REQUESTS_PER_STEP)).expect("positive");
    Quota::with_period(WINDOW / share.get()).expect("non-zero period").allow_burst(share)
}

impl RateBudgets<DefaultClock> {
    pub fn new(config: &WritebackSection) -> Self {
        Self::with_clock(config, &DefaultClock::default())
    }

    /// Waits until the write-back lane may apply one step for this tenant's account at `vendor`.
    pub async fn writeback_permit(&self, tenant: &str, vendor: &str) {
        let n = NonZeroU32::new(REQUESTS_PER_STEP).expect("positive");
        // `until_key_n_ready` fails only when n exceeds the burst, which `lane_quota` prevents.
        let _ = self.account.until_key_n_ready(&account_key(tenant, vendor), n).await;
        if let Some(app) = &self.app {
            let _ = app.until_key_n_ready(&vendor.to_owned(), n).await;
        }
    }
}

impl<C: Clock + Clone> RateBudgets<C> {
    pub fn with_clock(config: &WritebackSection, clock: &C) -> Self {
        let account = RateLimiter::new(
            lane_quota(config.account_requests_per_10s, config.live_reserve_percent),
            DefaultKeyedStateStore::default(),
            clock.clone(),
        );
        let app = (config.app_requests_per_10s > 0).then(|| {
            RateLimiter::new(
                lane_quota(config.app_requests_per_10s, config.live_reserve_percent),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            )
        });
        Self { account, app }
    }

    /// Takes one step's permits now if both budgets have them (no waiting).
    pub fn try_writeback_permit(&self, tenant: &str, vendor: &str) -> bool {
        let n = NonZeroU32::new(REQUESTS_PER_STEP).expect("positive");
        let key = account_key(tenant, vendor);
        if !matches!(self.account.check_key_n(&key, n), Ok(Ok(()))) {
            return false;
        }
        match &self.app {
            Some(app) => matches!(app.check_key_n(&vendor.to_owned(), n), Ok(Ok(()))),
            None => true,
        }
    }
}

fn account_key(tenant: &str, vendor: &str) -> String {
    format!("{tenant}:{vendor}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn config(account: u32, app: u32, reserve: u32) -> WritebackSection {
        WritebackSection {
            account_requests_per_10s: account,
            app_requests_per_10s: app,
            live_reserve_percent: reserve,
            ..WritebackSection::default()
        }
    }

    /// How many steps the write-back lane gets through right now.
    fn drain(b: &RateBudgets<FakeRelativeClock>, tenant: &str) -> u32 {
        let mut n = 0;
        while b.try_writeback_permit(tenant, "hubspot") {
            n += 1;
            assert!(n < 10_000, "the budget never ran out");
        }
        n
    }

    #[test]
    fn the_writeback_lane_never_takes_the_reserved_share_and_drains_at_the_limit() {
        let clock = FakeRelativeClock::default();
        // HubSpot's 100 per 10 s per account, 30 % kept for live calls.
        let b = RateBudgets::with_clock(&config(100, 0, 30), &clock);
        // A backlog exhausts the lane: 70 requests' worth, 3 per step → 23 steps, never more.
        let steps = drain(&b, "a");
        assert_eq!(steps, 70 / REQUESTS_PER_STEP);
        assert_eq!(drain(&b, "a"), 0, "exhausted until the bucket refills");
        // What is left of the account's 100 in this window is for live reads: at least the 30 %.
        assert!(100 - steps * REQUESTS_PER_STEP >= 30, "live calls keep their share");
        // Another account is not affected.
        assert_eq!(drain(&b, "b"), 70 / REQUESTS_PER_STEP);
        // The backlog drains at the limit: one window later, one window's share again.
        clock.advance(WINDOW);
        assert_eq!(drain(&b, "a"), 70 / REQUESTS_PER_STEP);
        // Half a window refills half the share, on top of the permit a 3-permit step left over.
        clock.advance(WINDOW / 2);
        assert_eq!(drain(&b, "a"), (35 + 70 % REQUESTS_PER_STEP) / REQUESTS_PER_STEP);
    }

    #[test]
    fn an_app_wide_budget_caps_every_account_together() {
        let clock = FakeRelativeClock::default();
        let b = RateBudgets::with_clock(&config(100, 60, 50), &clock);
        // The app's lane share is 30 requests = 10 steps, across accounts.
        let a = drain(&b, "a");
        let other = drain(&b, "b");
        assert_eq!(a + other, 10, "{a} + {other}");
    }
}
