-- Issue 13: cluster-wide periodic jobs (identity pulls, retention, alerts, pending bookings,
-- calendar subscriptions) run on one instance at a time. A job's leader holds its row until
-- `expires_at` and renews it at every pass; another instance takes the job once the leader stops
-- renewing (src/store/job_lease.rs, src/leader.rs).
CREATE TABLE job_leases (
    job        TEXT PRIMARY KEY,                    -- the job's name (`leader::Job`)
    holder     TEXT NOT NULL,                       -- the leading instance's id
    expires_at BIGINT NOT NULL                      -- ms (domain clock); free to take after
);
