-- Issue 13: outbox steps are claimed with a lease, calls remember the instance that opened them,
-- and every instance leaves a heartbeat. On SQLite one instance runs at a time, so the lease only
-- guards against this instance's own stale results and recovery closes every other run's calls;
-- the PostgreSQL twin is where several instances share them.
ALTER TABLE steps ADD COLUMN lease_owner TEXT;      -- the instance id holding the step
ALTER TABLE steps ADD COLUMN lease_until INTEGER;   -- ms (domain clock); claimable by anyone after
ALTER TABLE calls ADD COLUMN instance_id TEXT;      -- the instance holding the call's socket

CREATE TABLE instances (
    id           TEXT PRIMARY KEY,                  -- a UUID chosen at start
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL                   -- ms (domain clock), renewed while alive
);
