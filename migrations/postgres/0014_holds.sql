-- PostgreSQL only (issue 13): the hold ledger shared by every instance. One row per hold or
-- booking a live call made, keyed by (tenant, staff); the exclusion constraint makes two
-- instances unable to hold overlapping time for one staff member, whatever they race. Expired
-- holds are deleted by the transaction that inserts (the constraint cannot see the injected
-- clock). A single instance on SQLite keeps its ledger in memory (src/booking/ledger.rs).
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE holds (
    id            TEXT PRIMARY KEY,          -- the hold's UUID
    tenant        TEXT NOT NULL,
    staff_id      TEXT NOT NULL,
    call_id       TEXT NOT NULL,             -- the owner: a call, or a pending booking
    slot_start    BIGINT NOT NULL,           -- ms since the Unix epoch (domain clock)
    slot_end      BIGINT NOT NULL,
    blocked_start BIGINT NOT NULL,           -- slot plus buffers: what the hold keeps free
    blocked_end   BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    confirmed     BOOLEAN NOT NULL DEFAULT FALSE, -- a booking: never expires
    flagged       BOOLEAN NOT NULL DEFAULT FALSE, -- a foreign calendar event covers it (inbound sync)
    during        TSTZRANGE GENERATED ALWAYS AS
                      (tstzrange(to_timestamp(blocked_start / 1000.0), to_timestamp(blocked_end / 1000.0), '[)')) STORED,
    EXCLUDE USING gist (tenant WITH =, staff_id WITH =, during WITH &&)
);
CREATE INDEX holds_call ON holds (tenant, call_id);
CREATE INDEX holds_expiry ON holds (expires_at) WHERE NOT confirmed;
