//! Rate budgets: one token bucket per (vendor app, connected account) that every request to the
//! vendor draws one token from — live calls' reads and the write-back lane alike — charged per
//! real request at the connector's HTTP edge, on the injected clock.
//!
//! - **Live** requests (a tool call, the ring-time prefetch) never wait here: they take a token
//!   (the level may go below zero, so the write-back lane sees what they used) and go.
//! - **Write-back** requests (anything run inside [`writeback_lane`]: the outbox worker, the
//!   identity pull) need a token from the shared bucket *and* from the lane's own bucket, which
//!   holds `100 - live_reserve_percent` % of the limit and refills at that share of the rate. So the
//!   lane never takes more than its share of the account's budget, a draining backlog leaves the
//!   rest to calls in progress, and when live calls use more than their share the lane waits for
//!   them (the shared bucket is empty) instead of pushing the account into the vendor's 429s.
//!
//! A bucket refills evenly and holds at most one window's worth, so it admits at most its
//! capacity at once and its rate on average; a vendor that counts in fixed 10-second windows
//! (HubSpot's `X-HubSpot-RateLimit-Interval-Milliseconds: 10000`) sees at most the limit per window
//! once the bucket has been drained. An optional app-wide bucket (`[writeback]
//! app_requests_per_10s`: a Google Cloud project's quota is shared by every user) is drawn the same
//! way.
//!
//! Vendor defaults (requests per 10 s per account): HubSpot 100 — "100 / app" per account on Free
//! and Starter (190 on Professional and Enterprise; set `[crm] requests_per_10s` for those),
//! <https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>; Google
//! Calendar 100 — 600 requests per minute per user per project,
//! <https://developers.google.com/workspace/calendar/api/guides/quota>. Microsoft Graph and CalDAV
//! have no default (unmetered unless configured). The in-process sandbox and emulators on
//! loopback enforce no limit and are unmetered unless `requests_per_10s` is set explicitly.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

use crate::clock::SharedClock;

/// The vendor window every limit here is expressed in.
pub const WINDOW_SECS: f64 = 10.0;

/// How long takes skip a shared backend after it failed, on the injected clock.
pub const SHARED_RETRY: SignedDuration = SignedDuration::from_secs(1);

/// The vendor's documented default limit per account, requests per 10 s (0: none known).
pub fn vendor_default(vendor: &str) -> u32 {
    match vendor {
        "hubspot" | "google" => 100,
        _ => 0,
    }
}

/// Which lane a request belongs to; [`Lane::Live`] unless run inside [`writeback_lane`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Live,
    Writeback,
}

tokio::task_local! {
    static LANE: Lane;
}

/// Runs `f` in the write-back lane: every vendor request it makes is metered as write-back.
pub async fn writeback_lane<F: Future>(f: F) -> F::Output {
    LANE.scope(Lane::Writeback, f).await
}

/// The lane of the running task.
pub fn current_lane() -> Lane {
    LANE.try_with(|l| *l).unwrap_or(Lane::Live)
}

#[derive(Debug)]
struct Bucket {
    /// Shared tokens (capacity = the limit); below zero after live requests overdrew it.
    level: f64,
    /// The write-back lane's tokens (capacity = its share).
    lane: f64,
    at: Timestamp,
}

/// Requests sent per lane, for tests and `/metrics`-style inspection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub live: u64,
    pub writeback: u64,
}

/// One account's budget as it stands now, for the console and `/metrics` (looking does not draw).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BudgetView {
    pub vendor: String,
    pub account: String,
    /// Requests per 10 s the account allows (0: unmetered, and the rest is not meaningful).
    pub limit_per_10s: u32,
    /// Tokens left in the shared bucket (below zero: live calls overdrew it).
    pub remaining: f64,
    /// Tokens left in the write-back lane's own bucket.
    pub lane_remaining: f64,
    /// The write-back lane's sustained rate, requests per second.
    pub lane_per_sec: f64,
    /// Requests sent so far, per lane.
    pub sent_live: u64,
    pub sent_writeback: u64,
    /// HTTP 429 answers from this account's vendor.
    pub throttled: u64,
}

/// Every bucket of the process (they outlive a config reload: the vendor's count does too).
pub struct RateBudgets {
    clock: SharedClock,
    reserve_percent: u32,
    app_per_10s: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
    sent: Mutex<HashMap<String, Sent>>,
    /// Bumped each time a write-back request starts waiting for tokens: a signal tests wait on.
    waits: watch::Sender<u64>,
    /// 429 answers per account.
    throttled: Mutex<HashMap<String, u64>>,
    /// 429 answers per vendor, as exported on `/metrics` (set once by the application).
    throttled_metric: std::sync::OnceLock<ThrottledCounter>,
    /// The buckets every instance shares, on Redis (`connectors/rate_redis.rs`) or PostgreSQL
    /// (`store/rate.rs`); the in-memory ones then mirror the shared levels as of this instance's
    /// last take (for [`RateBudgets::view`]).
    shared: std::sync::OnceLock<Shared>,
    /// Takes the shared buckets did not serve (an error, no answer in time, or skipped while the
    /// backend is given [`SHARED_RETRY`] to recover), served by this instance's own buckets.
    fallbacks: std::sync::atomic::AtomicU64,
    /// Shared takes that failed; and whether the last one did (logged once per outage).
    shared_failures: std::sync::atomic::AtomicU64,
    degraded: std::sync::atomic::AtomicBool,
    /// After a failed shared take, takes before this time (the injected clock) skip the shared
    /// backend: a Redis that blackholes packets costs one timeout per [`SHARED_RETRY`], not one
    /// per vendor request.
    retry_shared_at: Mutex<Option<Timestamp>>,
    fallbacks_metric: std::sync::OnceLock<prometheus_client::metrics::counter::Counter>,
}

/// Where the shared buckets live.
#[derive(Debug)]
enum Shared {
    Postgres(crate::store::Store),
    Redis(super::rate_redis::RedisBuckets),
}

impl Shared {
    fn backend(&self) -> &'static str {
        match self {
            Shared::Postgres(_) => "postgresql",
            Shared::Redis(_) => "redis",
        }
    }
}

/// The `/metrics` family 429 answers are counted in.
pub type ThrottledCounter = prometheus_client::metrics::family::Family<
    crate::observe::VendorLabel,
    prometheus_client::metrics::counter::Counter,
>;

impl std::fmt::Debug for RateBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateBudgets").field("reserve_percent", &self.reserve_percent).finish_non_exhaustive()
    }
}

impl RateBudgets {
    /// `reserve_percent` of every budget is kept from the write-back lane (0–90);
    /// `app_per_10s` > 0 adds an app-wide bucket per vendor.
    pub fn new(clock: SharedClock, reserve_percent: u32, app_per_10s: u32) -> Arc<Self> {
        Arc::new(Self {
            clock,
            reserve_percent: reserve_percent.min(90),
            app_per_10s,
            buckets: Mutex::new(HashMap::new()),
            sent: Mutex::new(HashMap::new()),
            waits: watch::channel(0).0,
            throttled: Mutex::new(HashMap::new()),
            throttled_metric: std::sync::OnceLock::new(),
            shared: std::sync::OnceLock::new(),
            fallbacks: std::sync::atomic::AtomicU64::new(0),
            shared_failures: std::sync::atomic::AtomicU64::new(0),
            degraded: std::sync::atomic::AtomicBool::new(false),
            retry_shared_at: Mutex::new(None),
            fallbacks_metric: std::sync::OnceLock::new(),
        })
    }

    /// Draws every budget from the store's shared buckets (PostgreSQL: several instances stay
    /// under the vendor's limit together, not each). The first `share_through*` call wins.
    pub fn share_through(&self, store: crate::store::Store) {
        let _ = self.shared.set(Shared::Postgres(store));
    }

    /// Draws every budget from shared buckets on Redis (`[rate_budgets] url`), the recommended
    /// backend for several instances (BENCHMARKS.md). The first `share_through*` call wins.
    pub fn share_through_redis(&self, redis: super::rate_redis::RedisBuckets) {
        let _ = self.shared.set(Shared::Redis(redis));
    }

    /// Which shared backend the budgets are drawn from: `"redis"`, `"postgresql"`, or `None` (this
    /// instance's own buckets).
    pub fn shared_backend(&self) -> Option<&'static str> {
        self.shared.get().map(Shared::backend)
    }

    /// Takes served by this instance's own buckets because the shared backend failed.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shared takes that failed (each then waits [`SHARED_RETRY`] before the backend is tried again).
    pub fn shared_failures(&self) -> u64 {
        self.shared_failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts those fallbacks in this `/metrics` counter too (the first call wins).
    pub fn export_fallbacks(&self, counter: prometheus_client::metrics::counter::Counter) {
        let _ = self.fallbacks_metric.set(counter);
    }

    /// Counts 429 answers in this `/metrics` family too (the first call wins).
    pub fn export_throttled(&self, family: ThrottledCounter) {
        let _ = self.throttled_metric.set(family);
    }

    /// One account's budget at the injected clock's now, refilled as a request would see it.
    pub fn view(&self, vendor: &str, account: &str, per_10s: u32) -> BudgetView {
        let k = key(vendor, account);
        let sent = self.sent(vendor, account);
        let throttled = self.throttled.lock().unwrap_or_else(|p| p.into_inner()).get(&k).copied().unwrap_or(0);
        let (cap, share) = (f64::from(per_10s), self.lane_share(per_10s));
        let (remaining, lane_remaining) = match self.buckets.lock().unwrap_or_else(|p| p.into_inner()).get(&k) {
            Some(b) => {
                let elapsed = self.clock.now().duration_since(b.at).as_secs_f64().max(0.0);
                ((b.level + elapsed * cap / WINDOW_SECS).min(cap), (b.lane + elapsed * share / WINDOW_SECS).min(share))
            }
            None => (cap, share),
        };
        BudgetView {
            vendor: vendor.to_owned(),
            account: account.to_owned(),
            limit_per_10s: per_10s,
            remaining,
            lane_remaining: if per_10s == 0 { 0.0 } else { lane_remaining },
            lane_per_sec: if per_10s == 0 { 0.0 } else { share / WINDOW_SECS },
            sent_live: sent.live,
            sent_writeback: sent.writeback,
            throttled,
        }
    }

    /// The meter one connector charges its requests to. `per_10s` 0: unmetered.
    pub fn meter(self: &Arc<Self>, vendor: &str, account: &str, per_10s: u32) -> Meter {
        Meter { budgets: Some(self.clone()), vendor: vendor.to_owned(), account: account.to_owned(), per_10s }
    }

    /// Changes every time a write-back request starts waiting for tokens.
    pub fn waits(&self) -> watch::Receiver<u64> {
        self.waits.subscribe()
    }

    /// Requests charged so far to one account at one vendor, per lane.
    pub fn sent(&self, vendor: &str, account: &str) -> Sent {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).get(&key(vendor, account)).copied().unwrap_or_default()
    }

    fn lane_share(&self, limit: u32) -> f64 {
        (f64::from(limit) * f64::from(100 - self.reserve_percent) / 100.0).max(1.0)
    }

    /// [`RateBudgets::try_take`] against the shared buckets when there are some.
    ///
    /// Fails open: when the shared backend errs or does not answer in time (Redis: the
    /// `[rate_budgets] timeout_ms` bound, connecting included), the take falls back to this
    /// instance's own buckets — counted in [`RateBudgets::fallbacks`] and `/metrics`, logged once
    /// per outage — and so do the takes of the next [`SHARED_RETRY`], without trying the
    /// backend. Failing closed would turn a Redis or database outage into a product outage (no
    /// caller context, no booking: every vendor request refused); failing open keeps each
    /// instance under the limit on its own, so N instances send at most N times the budget until
    /// the backend is back, and the vendor's 429s, if any, are absorbed by the write-back retries.
    async fn take(&self, buckets: &[(String, u32)], lane: Lane, now: Timestamp) -> Option<SignedDuration> {
        let Some(shared) = self.shared.get() else {
            return self.try_take(buckets, lane, now);
        };
        let backing_off = self.retry_shared_at.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| now < at);
        if backing_off {
            return self.fall_back(buckets, lane, now);
        }
        let requested: Vec<crate::store::RateBucket> = buckets
            .iter()
            .map(|(k, limit)| crate::store::RateBucket {
                key: k.clone(),
                capacity: f64::from(*limit),
                lane_share: self.lane_share(*limit),
            })
            .collect();
        let writeback = lane == Lane::Writeback;
        let window_ms = WINDOW_SECS * 1000.0;
        let took = match shared {
            Shared::Postgres(store) => {
                store.take_rate_token(&requested, writeback, window_ms, now).await.map_err(|e| e.to_string())
            }
            Shared::Redis(redis) => redis.take(&requested, writeback, window_ms, now).await.map_err(|e| e.to_string()),
        };
        let take = match took {
            Ok(take) => {
                if self.degraded.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    tracing::info!(backend = shared.backend(), "shared rate budget answers again");
                }
                take
            }
            Err(e) => {
                self.shared_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *self.retry_shared_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + SHARED_RETRY);
                if !self.degraded.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        backend = shared.backend(),
                        error = %e,
                        "shared rate budget unavailable; this instance's own buckets are used until it answers"
                    );
                }
                return self.fall_back(buckets, lane, now);
            }
        };
        let (levels, taken) = match &take {
            crate::store::RateTake::Taken(l) => (l, true),
            crate::store::RateTake::Short(l) => (l, false),
        };
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = 0.0f64;
        for (b, l) in requested.iter().zip(levels) {
            all.insert(b.key.clone(), Bucket { level: l.level, lane: l.lane, at: now });
            wait = wait.max(short(l.level, b.capacity)).max(short(l.lane, b.lane_share));
        }
        if taken {
            return None;
        }
        Some(SignedDuration::from_secs_f64(wait.max(0.001)))
    }

    /// A take the shared backend did not serve: this instance's own buckets, counted.
    fn fall_back(&self, buckets: &[(String, u32)], lane: Lane, now: Timestamp) -> Option<SignedDuration> {
        self.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(counter) = self.fallbacks_metric.get() {
            counter.inc();
        }
        self.try_take(buckets, lane, now)
    }

    /// Takes one token for `lane`, or says how long until one is there (write-back only).
    fn try_take(&self, buckets: &[(String, u32)], lane: Lane, now: Timestamp) -> Option<SignedDuration> {
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = 0.0f64;
        for (k, limit) in buckets {
            let (cap, share) = (f64::from(*limit), self.lane_share(*limit));
            let b = all.entry(k.clone()).or_insert(Bucket { level: cap, lane: share, at: now });
            let elapsed = now.duration_since(b.at).as_secs_f64().max(0.0);
            b.level = (b.level + elapsed * cap / WINDOW_SECS).min(cap);
            b.lane = (b.lane + elapsed * share / WINDOW_SECS).min(share);
            b.at = now;
            if lane == Lane::Writeback {
                wait = wait.max(short(b.level, cap)).max(short(b.lane, share));
            }
        }
        if wait > 0.0 {
            // At least a millisecond, so a rounding error never spins.
            return Some(SignedDuration::from_secs_f64(wait.max(0.001)));
        }
        for (k, limit) in buckets {
            let b = all.get_mut(k).expect("inserted above");
            // A live overdraw is bounded: at most one window of debt.
            b.level = (b.level - 1.0).max(-f64::from(*limit));
            if lane == Lane::Writeback {
                b.lane -= 1.0;
            }
        }
        None
    }
}

/// Seconds until a bucket refilling at `rate` per window holds one token, from `have`.
fn short(have: f64, rate: f64) -> f64 {
    if have >= 1.0 { 0.0 } else { (1.0 - have) * WINDOW_SECS / rate }
}

fn key(vendor: &str, account: &str) -> String {
    format!("{vendor}|{account}")
}

/// What a connector holds: charges each of its requests to its account's bucket.
#[derive(Clone, Default)]
pub struct Meter {
    budgets: Option<Arc<RateBudgets>>,
    vendor: String,
    account: String,
    per_10s: u32,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").field("vendor", &self.vendor).field("per_10s", &self.per_10s).finish()
    }
}

impl Meter {
    /// A meter that charges nothing (tests, tools that talk to a vendor outside the service).
    pub fn unmetered() -> Self {
        Self::default()
    }

    fn buckets(&self, budgets: &RateBudgets) -> Vec<(String, u32)> {
        let mut buckets = Vec::with_capacity(2);
        if self.per_10s > 0 {
            buckets.push((key(&self.vendor, &self.account), self.per_10s));
        }
        if budgets.app_per_10s > 0 {
            buckets.push((format!("{}|*", self.vendor), budgets.app_per_10s));
        }
        buckets
    }

    /// [`Meter::try_acquire`] through the shared buckets when the budgets have some.
    pub async fn try_acquire_now(&self, lane: Lane) -> bool {
        let Some(budgets) = &self.budgets else { return true };
        let taken = budgets.take(&self.buckets(budgets), lane, budgets.clock.now()).await.is_none();
        if taken {
            self.count(budgets, lane);
        }
        taken
    }

    /// Takes a token for a request in `lane` only if one is there now (never waits). This
    /// instance's own buckets only: see [`Meter::try_acquire_now`].
    pub fn try_acquire(&self, lane: Lane) -> bool {
        let Some(budgets) = &self.budgets else { return true };
        let taken = budgets.try_take(&self.buckets(budgets), lane, budgets.clock.now()).is_none();
        if taken {
            self.count(budgets, lane);
        }
        taken
    }

    /// Records the status of a vendor's answer: a 429 is counted per account and per vendor.
    pub fn observe(&self, status: u16) {
        let Some(budgets) = &self.budgets else { return };
        if status != 429 {
            return;
        }
        *budgets
            .throttled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key(&self.vendor, &self.account))
            .or_default() += 1;
        if let Some(family) = budgets.throttled_metric.get() {
            family.get_or_create(&crate::observe::VendorLabel { vendor: self.vendor.clone() }).inc();
        }
    }

    fn count(&self, budgets: &RateBudgets, lane: Lane) {
        let mut sent = budgets.sent.lock().unwrap_or_else(|p| p.into_inner());
        let s = sent.entry(key(&self.vendor, &self.account)).or_default();
        match lane {
            Lane::Live => s.live += 1,
            Lane::Writeback => s.writeback += 1,
        }
    }

    /// Charges one request in the running task's lane: returns at once for a live request; a
    /// write-back request waits (on the injected clock) until both its buckets have a token.
    pub async fn acquire(&self) {
        let Some(budgets) = &self.budgets else { return };
        let lane = current_lane();
        let buckets = self.buckets(budgets);
        if !buckets.is_empty() {
            loop {
                let now = budgets.clock.now();
                match budgets.take(&buckets, lane, now).await {
                    None => break,
                    Some(wait) => {
                        budgets.waits.send_modify(|n| *n += 1);
                        budgets.clock.sleep_until(now + wait).await;
                    }
                }
            }
        }
        self.count(budgets, lane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::connectors::rate_redis::RedisBuckets;
    use crate::store::{RateBucket, RateLevels, RateTake};

    fn setup(reserve: u32) -> (Arc<ManualClock>, Arc<RateBudgets>) {
        let clock = Arc::new(ManualClock::new("2026-11-23T14:00:00Z".parse().unwrap()));
        let budgets = RateBudgets::new(clock.clone(), reserve, 0);
        (clock, budgets)
    }

    /// How many write-back requests go through without the clock moving.
    async fn drain(meter: &Meter) -> u32 {
        let mut n = 0;
        while meter.try_acquire(Lane::Writeback) {
            n += 1;
            assert!(n < 10_000, "the budget never ran out");
        }
        n
    }

    #[tokio::test]
    async fn the_writeback_lane_takes_at_most_its_share_and_drains_at_that_rate() {
        let (clock, budgets) = setup(30);
        let meter = budgets.meter("hubspot", "a", 100);
        assert_eq!(drain(&meter).await, 70, "70 % of HubSpot's 100 per 10 s");
        // The reserve is there for a live call at once: live requests never wait.
        for _ in 0..30 {
            meter.acquire().await;
        }
        assert_eq!(budgets.sent("hubspot", "a"), Sent { live: 30, writeback: 70 });
        // Another account is not affected.
        assert_eq!(drain(&budgets.meter("hubspot", "b", 100)).await, 70);
        // One window later the lane has its share again, never more.
        clock.advance(SignedDuration::from_secs(10));
        assert_eq!(drain(&meter).await, 70);
        clock.advance(SignedDuration::from_secs(5));
        assert_eq!(drain(&meter).await, 35, "half a window, half the share");
    }

    #[tokio::test]
    async fn live_reads_draw_the_same_bucket_and_the_lane_yields_to_them() {
        let (clock, budgets) = setup(30);
        let meter = budgets.meter("hubspot", "a", 100);
        // A busy minute of calls: 90 live reads in the window.
        for _ in 0..90 {
            meter.acquire().await;
        }
        assert_eq!(drain(&meter).await, 10, "the lane gets only what the calls left");
        // A waiting write-back request goes once the clock has refilled a token.
        let meter2 = meter.clone();
        let mut w = budgets.waits();
        let pending = tokio::spawn(async move { writeback_lane(meter2.acquire()).await });
        w.changed().await.unwrap();
        assert!(!pending.is_finished());
        clock.advance(SignedDuration::from_secs(1));
        pending.await.unwrap();
        assert_eq!(budgets.sent("hubspot", "a"), Sent { live: 90, writeback: 11 });
    }

    /// Two instances' handles on one shared backend (each its own connection pool / connection).
    enum Pair {
        Postgres(crate::store::Store, crate::store::Store),
        Redis(RedisBuckets, RedisBuckets),
    }

    impl Pair {
        async fn postgres(schema: &crate::store::testing::TestSchema) -> Pair {
            let open = || crate::store::Store::open(&schema.url);
            Pair::Postgres(open().await.unwrap(), open().await.unwrap())
        }

        /// Two handles on the test Redis (`CALLSIDE_TEST_REDIS_URL`), under a key prefix of this
        /// test's own so tests run in parallel. A Redis that does not answer fails the test.
        async fn redis() -> Pair {
            let url = test_redis_url();
            let mut probe =
                redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap_or_else(
                    |e| panic!("Redis for the tests is not answering at {url} ({e}); `.ci/run` starts it"),
                );
            let pong: String = redis::cmd("PING").query_async(&mut probe).await.unwrap();
            assert_eq!(pong, "PONG");
            let prefix = format!("callside-test:{}:", uuid::Uuid::new_v4());
            let open = || RedisBuckets::open(&url, &prefix, std::time::Duration::from_secs(5)).unwrap();
            Pair::Redis(open(), open())
        }

        /// Instance `i` (0 or 1) of the pair, on the test's clock.
        fn instance(&self, i: usize, clock: &Arc<ManualClock>, reserve: u32, app: u32) -> Arc<RateBudgets> {
            let budgets = RateBudgets::new(clock.clone(), reserve, app);
            match self {
                Pair::Postgres(a, b) => budgets.share_through(if i == 0 { a } else { b }.clone()),
                Pair::Redis(a, b) => budgets.share_through_redis(if i == 0 { a } else { b }.clone()),
            }
            budgets
        }

        /// One take straight from the backend, through instance `i`'s handle.
        async fn take(&self, i: usize, buckets: &[RateBucket], writeback: bool, now: Timestamp) -> RateTake {
            let window = WINDOW_SECS * 1000.0;
            match self {
                Pair::Postgres(a, b) => {
                    if i == 0 { a } else { b }.take_rate_token(buckets, writeback, window, now).await.unwrap()
                }
                Pair::Redis(a, b) => if i == 0 { a } else { b }.take(buckets, writeback, window, now).await.unwrap(),
            }
        }

        async fn close(self) {
            if let Pair::Postgres(a, b) = self {
                a.close().await;
                b.close().await;
            }
        }
    }

    fn test_redis_url() -> String {
        std::env::var("CALLSIDE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    /// Issue 13: two instances on one shared backend draw one budget between them. Racing
    /// write-back takes from both admit exactly the lane's share once; one instance's live reads
    /// overdraw the bucket the other's lane then waits on; the app-wide bucket is taken with the
    /// account's (both or neither).
    async fn instances_share_one_budget_and_together_stay_under_the_limit(pair: &Pair) {
        let clock = Arc::new(ManualClock::new("2026-11-23T14:00:00Z".parse().unwrap()));
        let (a, b) = (pair.instance(0, &clock, 30, 0), pair.instance(1, &clock, 30, 0));
        let (ma, mb) = (a.meter("hubspot", "acct", 100), b.meter("hubspot", "acct", 100));
        let racers: Vec<_> = (0..20)
            .map(|i| {
                let m = if i % 2 == 0 { ma.clone() } else { mb.clone() };
                tokio::spawn(async move {
                    let mut n = 0u32;
                    for _ in 0..10 {
                        n += u32::from(m.try_acquire_now(Lane::Writeback).await);
                    }
                    n
                })
            })
            .collect();
        let mut taken = 0;
        for r in racers {
            taken += r.await.unwrap();
        }
        assert_eq!(taken, 70, "both instances' lanes together: 70 % of 100, once");
        assert_eq!(a.sent("hubspot", "acct").writeback + b.sent("hubspot", "acct").writeback, 70);

        clock.advance(SignedDuration::from_secs(10));
        for _ in 0..90 {
            assert!(mb.try_acquire_now(Lane::Live).await, "live reads never wait");
        }
        let mut lane_a = 0;
        while ma.try_acquire_now(Lane::Writeback).await {
            lane_a += 1;
            assert!(lane_a < 1000);
        }
        assert_eq!(lane_a, 10, "A's lane gets what B's calls left");
        // A's view mirrors the shared bucket as of its last take.
        let view = a.view("hubspot", "acct", 100);
        assert!(view.remaining < 1.0, "{view:?}");
        // A waiting write-back request on A goes once the clock refills a token.
        let mut waits = a.waits();
        let pending = tokio::spawn(writeback_lane({
            let ma = ma.clone();
            async move { ma.acquire().await }
        }));
        waits.changed().await.unwrap();
        assert!(!pending.is_finished());
        clock.advance(SignedDuration::from_secs(1));
        pending.await.unwrap();

        // An app-wide bucket: an account with tokens left is still refused once the app's are
        // gone, and the account's token is not spent by the refusal.
        let (c, d) = (pair.instance(0, &clock, 0, 5), pair.instance(1, &clock, 0, 5));
        let (mc, md) = (c.meter("google", "x", 100), d.meter("google", "y", 100));
        let mut app_wide = 0;
        for i in 0..20 {
            let m = if i % 2 == 0 { &mc } else { &md };
            app_wide += u32::from(m.try_acquire_now(Lane::Writeback).await);
        }
        assert_eq!(app_wide, 5, "the app's 5 per 10 s across both accounts and instances");
        let x = RateBucket { key: key("google", "x"), capacity: 100.0, lane_share: 100.0 };
        let levels = match pair.take(0, &[x], false, Clock::now(&*clock)).await {
            RateTake::Taken(l) => l,
            short => panic!("a live take is never short: {short:?}"),
        };
        assert_eq!(levels[0].level, 100.0 - 3.0 - 1.0, "x spent 3 with the app's tokens, none on refusals");
        assert_eq!(a.fallbacks() + b.fallbacks() + c.fallbacks() + d.fallbacks(), 0, "every take was shared");
    }

    /// A bucket's refill never runs backwards: a take stamped earlier than the bucket's last one
    /// (an instance whose clock lags) refills nothing and leaves the stamp where it was, so the
    /// next take refills from the latest time seen, not twice.
    async fn a_lagging_clock_never_refills_a_bucket_twice(pair: &Pair) {
        let t0: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let bucket = [RateBucket { key: key("hubspot", "lag"), capacity: 100.0, lane_share: 70.0 }];
        let mut taken = 0;
        while let RateTake::Taken(_) = pair.take(taken % 2, &bucket, true, t0).await {
            taken += 1;
            assert!(taken < 1000);
        }
        assert_eq!(taken, 70);
        // Instance 1 is 5 s behind: nothing has refilled for it.
        let behind = pair.take(1, &bucket, true, t0 - SignedDuration::from_secs(5)).await;
        assert_eq!(behind, RateTake::Short(vec![RateLevels { level: 30.0, lane: 0.0 }]));
        // A live take from the lagging instance is stamped at the latest time seen (t0).
        assert!(matches!(pair.take(1, &bucket, false, t0 - SignedDuration::from_secs(5)).await, RateTake::Taken(_)));
        // One second after t0: one second's refill (7 lane tokens), not six seconds' worth.
        let mut after = 0;
        while let RateTake::Taken(_) = pair.take(0, &bucket, true, t0 + SignedDuration::from_secs(1)).await {
            after += 1;
            assert!(after < 1000);
        }
        assert_eq!(after, 7, "a tenth of the window: a tenth of the lane's 70");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgresql_instances_share_one_budget_and_together_stay_under_the_limit() {
        let schema = crate::store::testing::TestSchema::create().await.unwrap();
        let pair = Pair::postgres(&schema).await;
        instances_share_one_budget_and_together_stay_under_the_limit(&pair).await;
        a_lagging_clock_never_refills_a_bucket_twice(&pair).await;
        pair.close().await;
        schema.drop_now().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_redis_instances_share_one_budget_and_together_stay_under_the_limit() {
        let pair = Pair::redis().await;
        instances_share_one_budget_and_together_stay_under_the_limit(&pair).await;
        a_lagging_clock_never_refills_a_bucket_twice(&pair).await;
    }

    /// A restarted (or failed-over) Redis has an empty script cache: `EVALSHA` answers
    /// `NOSCRIPT`, and the take loads the script and runs it again.
    #[tokio::test]
    async fn on_redis_a_flushed_script_cache_is_reloaded() {
        let pair = Pair::redis().await;
        let clock = Arc::new(ManualClock::new("2026-11-23T14:00:00Z".parse().unwrap()));
        let budgets = pair.instance(0, &clock, 30, 0);
        let meter = budgets.meter("hubspot", "flush", 100);
        assert!(meter.try_acquire_now(Lane::Writeback).await);
        let mut conn =
            redis::Client::open(test_redis_url().as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
        assert!(meter.try_acquire_now(Lane::Writeback).await);
        assert_eq!(budgets.fallbacks(), 0, "served by Redis both times");
        assert_eq!(budgets.view("hubspot", "flush", 100).lane_remaining, 68.0);
    }

    /// Every bucket the script writes carries a TTL of six windows, so an idle account's keys
    /// leave Redis on their own (a missing bucket starts full, as an idle one would be).
    #[tokio::test]
    async fn on_redis_written_buckets_expire_when_idle() {
        let pair = Pair::redis().await;
        let Pair::Redis(handle, _) = &pair else { unreachable!() };
        let clock = Arc::new(ManualClock::new("2026-11-23T14:00:00Z".parse().unwrap()));
        let budgets = pair.instance(0, &clock, 30, 20);
        assert!(budgets.meter("google", "idle", 100).try_acquire_now(Lane::Live).await);
        let mut conn =
            redis::Client::open(test_redis_url().as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        for bucket in ["google|idle", "google|*"] {
            let ttl: i64 = redis::cmd("PTTL").arg(handle.redis_key(bucket)).query_async(&mut conn).await.unwrap();
            assert!(ttl > 0 && ttl <= 60_000, "{bucket}: PTTL {ttl}");
        }
    }

    /// Redis unreachable (a closed port): takes fail open to this instance's own buckets at once
    /// — a live request is never held up, the write-back lane is still held to its share locally —
    /// and every such take is counted.
    #[tokio::test]
    async fn an_unreachable_redis_fails_open_to_this_instances_own_buckets() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let redis =
            RedisBuckets::open(&format!("redis://127.0.0.1:{port}"), "down:", std::time::Duration::from_secs(5))
                .unwrap();
        let (_clock, budgets) = setup(30);
        budgets.share_through_redis(redis);
        assert_eq!(budgets.shared_backend(), Some("redis"));
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        budgets.export_fallbacks(counter.clone());
        let meter = budgets.meter("hubspot", "a", 100);
        assert!(meter.try_acquire_now(Lane::Live).await, "a live request goes");
        let mut lane = 0;
        while meter.try_acquire_now(Lane::Writeback).await {
            lane += 1;
            assert!(lane < 1000, "the local bucket never ran out");
        }
        assert_eq!(lane, 70, "the lane's share, from this instance's own bucket");
        assert_eq!(budgets.fallbacks(), 1 + 70 + 1);
        assert_eq!(counter.get(), 72);
        assert_eq!(budgets.shared_failures(), 1, "the clock did not move: Redis was tried once");
        assert_eq!(budgets.sent("hubspot", "a"), Sent { live: 1, writeback: 70 });
    }

    /// Redis accepts the connection and never answers (a blackholed host, a stalled server): the
    /// take gives up after the configured timeout and falls back; the takes of the next second
    /// (on the injected clock) skip Redis instead of each waiting out the timeout again, and the
    /// one after it tries again.
    #[tokio::test]
    async fn a_redis_that_never_answers_costs_one_timeout_per_retry_interval() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        // Accepts every connection and holds it open without reading or answering.
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let redis =
            RedisBuckets::open(&format!("redis://127.0.0.1:{port}"), "silent:", std::time::Duration::from_millis(50))
                .unwrap();
        let (clock, budgets) = setup(30);
        budgets.share_through_redis(redis);
        let meter = budgets.meter("hubspot", "a", 100);
        assert!(meter.try_acquire_now(Lane::Live).await, "a live request goes after the timeout");
        assert_eq!((budgets.shared_failures(), budgets.fallbacks()), (1, 1));
        for _ in 0..10 {
            assert!(meter.try_acquire_now(Lane::Live).await);
        }
        assert_eq!((budgets.shared_failures(), budgets.fallbacks()), (1, 11), "skipped, not waited for");
        clock.advance(SHARED_RETRY);
        assert!(meter.try_acquire_now(Lane::Live).await);
        assert_eq!((budgets.shared_failures(), budgets.fallbacks()), (2, 12), "tried again after a second");
        assert_eq!(budgets.sent("hubspot", "a").live, 12);
        holder.abort();
    }

    #[tokio::test]
    async fn an_app_wide_budget_caps_every_account_together_and_zero_is_unmetered() {
        let clock = Arc::new(ManualClock::new("2026-11-23T14:00:00Z".parse().unwrap()));
        let budgets = RateBudgets::new(clock.clone(), 50, 60);
        let a = drain(&budgets.meter("google", "a", 100)).await;
        let b = drain(&budgets.meter("google", "b", 100)).await;
        assert_eq!(a + b, 30, "half of the app's 60: {a} + {b}");
        // An unmetered account (a CalDAV server) still obeys the app-wide bucket only if one is
        // set; with none it never waits.
        let none = RateBudgets::new(clock.clone(), 30, 0);
        let free = none.meter("caldav", "a", 0);
        for _ in 0..1000 {
            writeback_lane(free.acquire()).await;
        }
        assert_eq!(none.sent("caldav", "a").writeback, 1000);
        assert_eq!(Clock::now(&*clock), "2026-11-23T14:00:00Z".parse::<Timestamp>().unwrap());
    }
}
