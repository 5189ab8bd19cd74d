//! Job leases (issue 13): a cluster-wide periodic job (`crate::leader`) runs on the one instance
//! that holds its row in `job_leases` (migration 0018). A pass first calls [`Store::try_lead`]:
//! one upsert that takes the row when it is absent or expired, renews it when it is already the
//! caller's, and leaves it alone otherwise. On PostgreSQL two instances upserting the same job at
//! once are serialized on the row (the loser re-checks the `WHERE` against the winner's row, see
//! <https://www.postgresql.org/docs/current/sql-insert.html#SQL-ON-CONFLICT>), so exactly one of
//! them leads; on SQLite (one writer) the statement is atomic as it stands.
//!
//! Times are the domain clock's, in ms. A lease expires at exactly `expires_at`.

use jiff::{SignedDuration, Timestamp};
use sqlx::Row;

use super::{Store, StoreError, ms};

/// Who leads a job and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLease {
    pub holder: String,
    pub expires_at: Timestamp,
}

impl Store {
    /// Takes or renews `job`'s lease for `holder` until `now + ttl`: taken when no one holds it
    /// or the holder's lease ran out (`expires_at <= now`), renewed when `holder` holds it.
    /// Returns whether `holder` leads the job now.
    pub async fn try_lead(
        &self,
        job: &str,
        holder: &str,
        now: Timestamp,
        ttl: SignedDuration,
    ) -> Result<bool, StoreError> {
        if job.is_empty() || holder.is_empty() {
            return Err(StoreError::Other("a job lease needs a job name and a holder".into()));
        }
        if ttl <= SignedDuration::ZERO {
            return Err(StoreError::Other(format!("a job lease's ttl must be positive, not {ttl}")));
        }
        let led: Option<String> = sqlx::query_scalar(
            "INSERT INTO job_leases (job, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE job_leases.holder = excluded.holder OR job_leases.expires_at <= $4
             RETURNING holder",
        )
        .bind(job)
        .bind(holder)
        .bind(ms(now + ttl))
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(led.is_some())
    }

    /// Gives `job` up if `holder` leads it (a graceful stop: another instance takes it at its
    /// next pass instead of after the TTL). Returns whether a lease was released.
    pub async fn release_job(&self, job: &str, holder: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM job_leases WHERE job = $1 AND holder = $2")
            .bind(job)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// The job's lease as it stands (expired or not).
    pub async fn job_lease(&self, job: &str) -> Result<Option<JobLease>, StoreError> {
        let row = sqlx::query("SELECT holder, expires_at FROM job_leases WHERE job = $1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let at: i64 = r.try_get("expires_at")?;
            Ok(JobLease {
                holder: r.try_get("holder")?,
                expires_at: Timestamp::from_millisecond(at).unwrap_or(Timestamp::UNIX_EPOCH),
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        "2026-12-07T12:00:00Z".parse().unwrap()
    }

    const TTL: SignedDuration = SignedDuration::from_secs(90);

    /// Free → taken; held → refused to others and renewed for the holder; expired → taken over;
    /// released → free at once. Jobs are independent.
    async fn a_job_lease_is_taken_renewed_refused_and_taken_over_after_it_expires(s: &Store) {
        assert_eq!(s.job_lease("identity_pull").await.unwrap(), None);
        assert!(s.try_lead("identity_pull", "a", t0(), TTL).await.unwrap(), "free: taken");
        assert!(!s.try_lead("identity_pull", "b", t0(), TTL).await.unwrap(), "held by a");
        assert!(s.try_lead("retention", "b", t0(), TTL).await.unwrap(), "another job is another lease");
        let later = t0() + SignedDuration::from_secs(60);
        assert!(s.try_lead("identity_pull", "a", later, TTL).await.unwrap(), "renewed by its holder");
        let lease = s.job_lease("identity_pull").await.unwrap().unwrap();
        assert_eq!(lease, JobLease { holder: "a".into(), expires_at: later + TTL });
        // Just before the renewed lease runs out it still holds; at its end it is free.
        let end = later + TTL;
        assert!(!s.try_lead("identity_pull", "b", end - SignedDuration::from_millis(1), TTL).await.unwrap());
        assert!(s.try_lead("identity_pull", "b", end, TTL).await.unwrap(), "expired: taken over");
        assert!(!s.try_lead("identity_pull", "a", end, TTL).await.unwrap(), "the old leader stops");
        assert_eq!(s.job_lease("identity_pull").await.unwrap().unwrap().holder, "b");
        // Released only by its holder; then free for anyone at once.
        assert!(!s.release_job("identity_pull", "a").await.unwrap());
        assert!(s.release_job("identity_pull", "b").await.unwrap());
        assert_eq!(s.job_lease("identity_pull").await.unwrap(), None);
        assert!(s.try_lead("identity_pull", "a", end, TTL).await.unwrap());
    }

    /// Bad arguments are refused with a clear error and change nothing.
    async fn a_job_lease_refuses_an_empty_name_or_holder_and_a_non_positive_ttl(s: &Store) {
        let err = s.try_lead("", "a", t0(), TTL).await.unwrap_err().to_string();
        assert!(err.contains("job name"), "{err}");
        assert!(s.try_lead("alerts", "", t0(), TTL).await.is_err());
        let err = s.try_lead("alerts", "a", t0(), SignedDuration::ZERO).await.unwrap_err().to_string();
        assert!(err.contains("ttl"), "{err}");
        assert_eq!(s.job_lease("alerts").await.unwrap(), None, "nothing taken");
        assert!(s.try_lead("alerts", "a", t0(), TTL).await.unwrap(), "the store still works");
    }

    /// Many instances racing for one free job at the same instant: exactly one leads.
    async fn instances_racing_for_a_free_job_elect_exactly_one(s: &Store) {
        for round in 0..5 {
            let job = format!("race-{round}");
            let racers = (0..8).map(|i| {
                let (s, job) = (s.clone(), job.clone());
                tokio::spawn(async move { s.try_lead(&job, &format!("i{i}"), t0(), TTL).await.unwrap() })
            });
            let won: Vec<bool> = futures::future::join_all(racers).await.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}: {won:?}");
        }
    }

    both_backends!(
        a_job_lease_is_taken_renewed_refused_and_taken_over_after_it_expires,
        a_job_lease_refuses_an_empty_name_or_holder_and_a_non_positive_ttl,
        instances_racing_for_a_free_job_elect_exactly_one
    );
}
