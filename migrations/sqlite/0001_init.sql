-- Calls: one row per phone call, created at connect, closed by end_call or by a dropped socket.
CREATE TABLE calls (
    call_id      TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    caller       TEXT,              -- E.164 or NULL when withheld
    dialed       TEXT NOT NULL,
    started_at   INTEGER NOT NULL,  -- ms since the Unix epoch (domain clock)
    ended_at     INTEGER,
    end_reason   TEXT,              -- 'end_call' | 'disconnected'
    sync_status  TEXT NOT NULL DEFAULT 'open', -- open | pending | synced | failed
    outcome      TEXT               -- JSON of the outcome as saved
);
CREATE INDEX calls_tenant_started ON calls (tenant, started_at);

-- The outbox: the write-back plan of each call, one row per step.
CREATE TABLE steps (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id         TEXT NOT NULL REFERENCES calls (call_id),
    tenant          TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,   -- JSON
    depends_on      INTEGER REFERENCES steps (id),
    idempotency_key TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending', -- pending | done | dead
    attempts        INTEGER NOT NULL DEFAULT 0,
    first_attempt_at INTEGER,
    next_attempt_at INTEGER NOT NULL,
    external_id     TEXT,
    last_error      TEXT,
    updated_at      INTEGER NOT NULL,
    UNIQUE (call_id, seq)
);
CREATE INDEX steps_due ON steps (status, next_attempt_at);

-- Bookings made by the service; the idempotency key is derived from the hold.
CREATE TABLE bookings (
    idempotency_key TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    staff_id    TEXT NOT NULL,
    calendar_id TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    service_id  TEXT NOT NULL,
    start_at    INTEGER NOT NULL,
    end_at      INTEGER NOT NULL,
    status      TEXT NOT NULL,       -- confirmed | withdrawn
    created_at  INTEGER NOT NULL
);
CREATE INDEX bookings_call ON bookings (call_id);

-- Audit trail: every vendor write attempt and its result.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant   TEXT NOT NULL,
    call_id  TEXT,
    step_id  INTEGER,
    at       INTEGER NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL           -- JSON, personal data excluded
);
CREATE INDEX audit_call ON audit (call_id);
