-- Issue 13: outbox steps are claimed with a lease (`FOR UPDATE SKIP LOCKED`, src/store/lease.rs)
-- so every instance's worker takes different steps and a dead instance's steps are taken over once
-- its lease runs out; calls remember the instance that opened them, and every instance leaves a
-- heartbeat, so start-up recovery closes only the calls of instances that stopped beating.
ALTER TABLE steps ADD COLUMN lease_owner TEXT;      -- the instance id holding the step
ALTER TABLE steps ADD COLUMN lease_until BIGINT;    -- ms (domain clock); claimable by anyone after
ALTER TABLE calls ADD COLUMN instance_id TEXT;      -- the instance holding the call's socket

CREATE TABLE instances (
    id           TEXT PRIMARY KEY,                  -- a UUID chosen at start
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL                    -- ms (domain clock), renewed while alive
);
CREATE INDEX steps_lease ON steps (lease_owner) WHERE lease_owner IS NOT NULL;
