-- PostgreSQL twin of migrations/sqlite/0007_pending_bookings.sql (ids and ms times are BIGINT; identity columns for AUTOINCREMENT).
-- Bookings whose calendar was unreachable at book_slot (issue 7, item 7): recorded before the
-- caller is told "not confirmed yet", retried in the background with backoff, and either
-- confirmed (then recorded in `bookings` like any other) or escalated to a staff task in the CRM.
CREATE TABLE pending_bookings (
    idempotency_key TEXT PRIMARY KEY,    -- "<tenant>:<hold id>": the booking's key and event id source
    tenant          TEXT NOT NULL,
    call_id         TEXT NOT NULL,
    staff_id        TEXT NOT NULL,
    calendar_id     TEXT NOT NULL,
    event_id        TEXT NOT NULL,       -- derived from the key: a retried create cannot duplicate
    service_id      TEXT NOT NULL,
    start_at        BIGINT NOT NULL,
    end_at          BIGINT NOT NULL,
    blocked_start   BIGINT NOT NULL,    -- slot plus buffers, re-held in the ledger after a restart
    blocked_end     BIGINT NOT NULL,
    attendee        TEXT NOT NULL,       -- JSON: phone, name, email, notes (the event's content)
    status          TEXT NOT NULL,       -- pending | booked | confirmed | escalating | escalated
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    deadline_at     BIGINT NOT NULL,    -- not confirmed by then: staff task, hold released
    last_error      TEXT,
    task_id         TEXT,                -- the CRM task created on escalation
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX pending_bookings_due ON pending_bookings (status, next_attempt_at);
