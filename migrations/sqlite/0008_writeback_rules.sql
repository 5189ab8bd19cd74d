-- Write-back rules (issue 8, semantics): held plans for shadow and review modes, the value each
-- field write replaced (the undo's source), hybrid-field conflicts for review, and the objects a
-- call's write-back created.

-- A plan in shadow mode (shown, never written) or review mode (written once an operator approves).
-- Its steps enter the outbox only on approval.
CREATE TABLE held_plans (
    call_id     TEXT PRIMARY KEY REFERENCES calls (call_id),
    tenant      TEXT NOT NULL,
    mode        TEXT NOT NULL,      -- shadow | review
    steps       TEXT NOT NULL,      -- JSON array of the planned steps
    status      TEXT NOT NULL,      -- shadow | awaiting_review | approved | rejected
    decided_by  TEXT,
    decided_at  INTEGER,
    created_at  INTEGER NOT NULL
);
CREATE INDEX held_plans_tenant ON held_plans (tenant, status);

-- Every property value a write-back step set, with the value it replaced (NULL: was empty).
-- Recorded before the write is sent, so a retried step keeps the original "before".
CREATE TABLE field_writes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant       TEXT NOT NULL,
    call_id      TEXT NOT NULL,
    step_id      INTEGER NOT NULL,
    object_type  TEXT NOT NULL,     -- contact | deal
    object_id    TEXT NOT NULL,
    property     TEXT NOT NULL,
    before_value TEXT,
    after_value  TEXT NOT NULL,
    status       TEXT NOT NULL,     -- sending | written | rejected | ignored | undone | kept
    reason       TEXT,
    at           INTEGER NOT NULL,
    UNIQUE (step_id, object_id, property)
);
CREATE INDEX field_writes_call ON field_writes (tenant, call_id);

-- Hybrid fields the write-back did not write because a person edited them after its read.
CREATE TABLE field_conflicts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    step_id     INTEGER NOT NULL,
    object_id   TEXT NOT NULL,
    property    TEXT NOT NULL,
    ai_value    TEXT NOT NULL,
    crm_value   TEXT NOT NULL,
    edited_at   INTEGER NOT NULL,
    edited_by   TEXT,
    status      TEXT NOT NULL DEFAULT 'open', -- open | resolved
    at          INTEGER NOT NULL,
    UNIQUE (step_id, property)
);
CREATE INDEX field_conflicts_tenant ON field_conflicts (tenant, status);

-- Objects a call's write-back created (a matched contact is not one of them).
CREATE TABLE created_objects (
    object_type TEXT NOT NULL,      -- contact | call | meeting | note | task
    object_id   TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    step_id     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    undone_at   INTEGER,
    PRIMARY KEY (object_type, object_id)
);
CREATE INDEX created_objects_call ON created_objects (tenant, call_id);
