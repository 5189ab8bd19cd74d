//! The shared rate buckets of `connectors::rate` on Redis (`[rate_budgets] url = "redis://…"`):
//! the same buckets, refill and take as the PostgreSQL rows of `store/rate.rs`, as one Lua script
//! that Redis runs atomically — so N instances together admit what one would, and a take of an
//! account's bucket with its app-wide one is both or neither without a transaction.
//!
//! One hash per bucket (`level`, `lane`, `at`: the shared tokens — below zero after live requests
//! overdrew them —, the write-back lane's own tokens, and the domain-clock millisecond of the last
//! refill). Time is the caller's `now` (the injected clock), passed as an argument as the
//! PostgreSQL version binds it; a bucket's `at` never goes backwards, so instances whose clocks
//! differ a little never refill a bucket twice. Each written bucket gets a TTL of six windows: an
//! idle bucket is full again after at most two (one window of debt, then one to refill), and a
//! missing bucket starts full, so an expired key loses nothing.
//!
//! The script is sent by `redis::Script`: `EVALSHA` first, `SCRIPT LOAD` + `EVALSHA` again on
//! `NOSCRIPT` (a restarted or failed-over server has an empty script cache). It declares every
//! key it touches in `KEYS` (<https://redis.io/docs/latest/commands/eval/>), and an account's
//! bucket and its vendor's app-wide bucket share a hash tag (`{vendor}`), so the two also land in
//! one slot behind a cluster proxy.

use std::time::Duration;

use jiff::Timestamp;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::store::{RateBucket, RateLevels, RateTake};

/// Refills every bucket to `now`, then takes one token from each (all or none).
///
/// `KEYS`: the buckets. `ARGV`: now (ms), cost (0 live: always taken, the level may go down to
/// one window of debt; 1 write-back: taken only with a token in both the level and the lane of
/// every bucket, else nothing is written), window (ms), TTL (ms), then capacity and lane share per
/// bucket. Returns `{taken (1/0), level₁, lane₁, level₂, lane₂, …}`, the levels after the take —
/// or, nothing taken, refilled to `now`.
///
/// Numbers travel as strings both ways: Redis turns a Lua number it returns into an integer
/// reply, dropping the fraction ("Lua number -> RESP2 integer reply (the number is converted into
/// an integer)", <https://redis.io/docs/latest/develop/interact/programmability/lua-api/>), and
/// writes a number given to `redis.call` with too few digits to read back exactly; `%.17g`
/// round-trips a double.
const TAKE: &str = r"
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local function num(x) return string.format('%.17g', x) end
local level, lane, at, cap, share = {}, {}, {}, {}, {}
local ok = true
for i = 1, #KEYS do
  cap[i] = tonumber(ARGV[3 + 2 * i])
  share[i] = tonumber(ARGV[4 + 2 * i])
  local b = redis.call('HMGET', KEYS[i], 'level', 'lane', 'at')
  if b[1] and b[2] and b[3] then
    local last = tonumber(b[3])
    local elapsed = math.max(0, now - last)
    level[i] = math.min(cap[i], tonumber(b[1]) + elapsed * cap[i] / window)
    lane[i] = math.min(share[i], tonumber(b[2]) + elapsed * share[i] / window)
    at[i] = math.max(last, now)
  else
    level[i] = cap[i]
    lane[i] = share[i]
    at[i] = now
  end
  if cost > 0 and (level[i] < 1 or lane[i] < 1) then ok = false end
end
local out = {ok and '1' or '0'}
for i = 1, #KEYS do
  if ok then
    level[i] = math.max(level[i] - 1, -cap[i])
    lane[i] = lane[i] - cost
    redis.call('HSET', KEYS[i], 'level', num(level[i]), 'lane', num(lane[i]), 'at', num(at[i]))
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  out[#out + 1] = num(level[i])
  out[#out + 1] = num(lane[i])
end
return out
";

/// Idle buckets expire after this many windows (see the module docs).
const TTL_WINDOWS: f64 = 6.0;

/// Why a Redis take did not happen; the caller falls back to its own bucket.
#[derive(Debug, thiserror::Error)]
pub enum RedisRateError {
    #[error("redis rate budget: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis rate budget: no answer within {0:?}")]
    Timeout(Duration),
    #[error("redis rate budget: unexpected answer {0:?}")]
    Answer(Vec<String>),
}

/// The Redis behind the shared rate buckets: one multiplexed connection, reconnected in the
/// background when it drops (`redis::aio::ConnectionManager`).
#[derive(Clone)]
pub struct RedisBuckets {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
    timeout: Duration,
}

impl std::fmt::Debug for RedisBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBuckets").field("prefix", &self.prefix).field("timeout", &self.timeout).finish()
    }
}

/// `url` for a message: the password masked, also when the URL does not parse.
fn shown(url: &str) -> String {
    match (url::Url::parse(url), url.rsplit_once('@')) {
        (Ok(_), _) => crate::store::redact_url(url),
        (Err(_), Some((before, host))) => {
            format!("{}://***@{host}", before.split_once("://").map(|(s, _)| s).unwrap_or("?"))
        }
        (Err(_), None) => url.to_owned(),
    }
}

/// Checks a `[rate_budgets] url` without connecting: a `redis://` (or `unix://`) URL the client
/// can use. The error never repeats a password.
pub fn check_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !matches!(scheme, "redis" | "unix" | "redis+unix") {
        return Err(format!(
            "{:?} is not a Redis URL (redis://host:port/db or unix:///path; rediss:// is not supported by this build)",
            shown(url)
        ));
    }
    redis::Client::open(url).map(|_| ()).map_err(|e| format!("{:?} is not a usable Redis URL: {e}", shown(url)))
}

impl RedisBuckets {
    /// A handle on the Redis at `url`, its keys under `prefix`. Connects lazily (the first take),
    /// so a Redis that is down at start does not keep the service from starting: takes fall back
    /// until it answers. Every take gives up after `timeout` (connecting included). Must be called
    /// inside the Tokio runtime.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        check_url(url)?;
        let client = redis::Client::open(url).map_err(|e| format!("redis: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // No retry loop inside a take: a refused connection fails the take at once (it falls
            // back), and the next take tries to connect again.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| format!("redis: {e}"))?;
        Ok(Self { conn, prefix: prefix.to_owned(), script: redis::Script::new(TAKE), timeout })
    }

    /// The Redis key of a bucket key (`vendor|account` or `vendor|*`): the vendor as hash tag.
    pub(crate) fn redis_key(&self, bucket: &str) -> String {
        match bucket.split_once('|') {
            Some((vendor, rest)) => format!("{}rate:{{{vendor}}}|{rest}", self.prefix),
            None => format!("{}rate:{{{bucket}}}", self.prefix),
        }
    }

    /// Takes one token from every bucket at `now` (all or none), for the write-back lane when
    /// `writeback` — the contract of `Store::take_rate_token`.
    pub async fn take(
        &self,
        buckets: &[RateBucket],
        writeback: bool,
        window_ms: f64,
        now: Timestamp,
    ) -> Result<RateTake, RedisRateError> {
        let mut call = self.script.prepare_invoke();
        for b in buckets {
            call.key(self.redis_key(&b.key));
        }
        call.arg(now.as_millisecond()).arg(u8::from(writeback)).arg(window_ms).arg((window_ms * TTL_WINDOWS) as i64);
        for b in buckets {
            call.arg(b.capacity).arg(b.lane_share);
        }
        let mut conn = self.conn.clone();
        // The manager's own timeouts bound each request and connection attempt; this bounds the
        // whole take (a reload of the script included), so a live call never waits longer.
        let answer: Vec<String> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| RedisRateError::Timeout(self.timeout))??;
        let parse = |s: &String| s.parse::<f64>().ok();
        let levels: Option<Vec<RateLevels>> =
            answer.get(1..).filter(|rest| rest.len() == 2 * buckets.len()).and_then(|rest| {
                rest.chunks(2).map(|p| Some(RateLevels { level: parse(&p[0])?, lane: parse(&p[1])? })).collect()
            });
        match (answer.first().map(String::as_str), levels) {
            (Some("1"), Some(l)) => Ok(RateTake::Taken(l)),
            (Some("0"), Some(l)) => Ok(RateTake::Short(l)),
            _ => Err(RedisRateError::Answer(answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_is_not_redis_is_refused_without_its_password() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("unix:///run/redis.sock").is_ok());
        for bad in ["http://user:hunter2@cache:6379", "127.0.0.1:6379", "", "rediss://user:hunter2@cache:6380"] {
            let e = check_url(bad).expect_err(bad);
            assert!(e.contains("not a Redis URL") || e.contains("not a usable"), "{e}");
            assert!(!e.contains("hunter2"), "the password leaked: {e}");
        }
        let e = check_url("redis://user:hunter2@cache:notaport").unwrap_err();
        assert!(e.contains("not a usable Redis URL") && !e.contains("hunter2"), "{e}");
    }

    #[tokio::test]
    async fn keys_carry_the_prefix_and_the_vendor_as_hash_tag() {
        let r = RedisBuckets::open("redis://127.0.0.1:6379", "p:", Duration::from_millis(50)).unwrap();
        assert_eq!(r.redis_key("hubspot|acct-1"), "p:rate:{hubspot}|acct-1");
        assert_eq!(r.redis_key("hubspot|*"), "p:rate:{hubspot}|*");
    }
}
