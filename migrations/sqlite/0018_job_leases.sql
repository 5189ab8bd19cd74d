-- Issue 13: cluster-wide periodic jobs run on one instance at a time (src/store/job_lease.rs,
-- src/leader.rs). On SQLite one instance runs at a time and always leads (the table is kept for
-- the store contract); the PostgreSQL twin is where several instances compete for it.
CREATE TABLE job_leases (
    job        TEXT PRIMARY KEY,                    -- the job's name (`leader::Job`)
    holder     TEXT NOT NULL,                       -- the leading instance's id
    expires_at INTEGER NOT NULL                     -- ms (domain clock); free to take after
);
