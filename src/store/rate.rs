//! The shared rate buckets of `connectors::rate` on PostgreSQL (migration `postgres/0016`): one
//! row per bucket, so every instance draws from the same tokens. A take refills the bucket to
//! `now` and takes a token in one conditional upsert — the row lock orders concurrent takes — so
//! N instances together admit what one would. Two buckets (an account's and its app-wide one)
//! are taken in one transaction: both or neither.

use jiff::Timestamp;
use sqlx::Row;

use super::{Backend, Store, StoreError, ms};

/// One bucket to draw from: its key, capacity (the limit per window) and the lane's share.
#[derive(Debug, Clone, PartialEq)]
pub struct RateBucket {
    pub key: String,
    pub capacity: f64,
    pub lane_share: f64,
}

/// A bucket's tokens: the shared level (below zero after live requests overdrew it) and the
/// write-back lane's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLevels {
    pub level: f64,
    pub lane: f64,
}

/// How a take went: every bucket's levels after it, or — nothing taken — every bucket's levels
/// now (refilled to `now`), from which the caller computes its wait.
#[derive(Debug, Clone, PartialEq)]
pub enum RateTake {
    Taken(Vec<RateLevels>),
    Short(Vec<RateLevels>),
}

/// Refilled to `$4` (ms; never backwards, instances' clocks may differ a little) at `$2`
/// (capacity) / `$3` (the lane's share) per `$6` ms.
const REFILLED_LEVEL: &str = "LEAST($2, b.level + GREATEST(0, $4 - b.at) * $2 / $6)";
const REFILLED_LANE: &str = "LEAST($3, b.lane + GREATEST(0, $4 - b.at) * $3 / $6)";

fn take_sql() -> String {
    // `$5`: 0 for a live request (always taken; the level may go below zero, down to one window
    // of debt), 1 for the write-back lane (taken only with a token in both the level and the lane;
    // otherwise the row is left as it was and nothing is returned). A new bucket starts full.
    format!(
        "INSERT INTO rate_buckets AS b (key, level, lane, at) VALUES ($1, $2 - 1, $3 - $5, $4)
         ON CONFLICT (key) DO UPDATE SET
             level = GREATEST({REFILLED_LEVEL} - 1, -$2),
             lane = {REFILLED_LANE} - $5,
             at = GREATEST(b.at, $4)
         WHERE $5 = 0 OR ({REFILLED_LEVEL} >= 1 AND {REFILLED_LANE} >= 1)
         RETURNING b.level, b.lane"
    )
}

impl Store {
    /// Takes one token from every bucket in `buckets` at `now` (all or none), for the write-back
    /// lane when `writeback`. PostgreSQL only: a single instance keeps its buckets in memory.
    pub async fn take_rate_token(
        &self,
        buckets: &[RateBucket],
        writeback: bool,
        window_ms: f64,
        now: Timestamp,
    ) -> Result<RateTake, StoreError> {
        if self.backend != Backend::Postgres {
            return Err(StoreError::Other("shared rate buckets need PostgreSQL".into()));
        }
        let sql = take_sql();
        let cost = if writeback { 1.0f64 } else { 0.0 };
        let take = |b: &RateBucket| {
            sqlx::query(&sql)
                .bind(b.key.clone())
                .bind(b.capacity)
                .bind(b.lane_share)
                .bind(ms(now))
                .bind(cost)
                .bind(window_ms)
        };
        let levels = |r: sqlx::any::AnyRow| -> Result<RateLevels, StoreError> {
            Ok(RateLevels { level: r.try_get("level")?, lane: r.try_get("lane")? })
        };
        if let [one] = buckets {
            // The common case: one statement, no transaction.
            if let Some(row) = take(one).fetch_optional(&self.pool).await? {
                return Ok(RateTake::Taken(vec![levels(row)?]));
            }
        } else {
            let mut tx = self.pool.begin().await?;
            let mut after = Vec::with_capacity(buckets.len());
            for b in buckets {
                match take(b).fetch_optional(&mut *tx).await? {
                    Some(row) => after.push(levels(row)?),
                    None => break,
                }
            }
            if after.len() == buckets.len() {
                tx.commit().await?;
                return Ok(RateTake::Taken(after));
            }
            tx.rollback().await?;
        }
        let mut now_levels = Vec::with_capacity(buckets.len());
        for b in buckets {
            // The same refill, with the window as `$5` (this query has no cost parameter).
            let row = sqlx::query(&format!(
                "SELECT {} AS level, {} AS lane FROM rate_buckets b WHERE key = $1",
                REFILLED_LEVEL.replace("$6", "$5"),
                REFILLED_LANE.replace("$6", "$5")
            ))
            .bind(b.key.clone())
            .bind(b.capacity)
            .bind(b.lane_share)
            .bind(ms(now))
            .bind(window_ms)
            .fetch_optional(&self.pool)
            .await?;
            now_levels.push(match row {
                Some(r) => levels(r)?,
                None => RateLevels { level: b.capacity, lane: b.lane_share },
            });
        }
        Ok(RateTake::Short(now_levels))
    }
}
