-- PostgreSQL twin of migrations/sqlite/0005_identity_index.sql (ids and ms times are BIGINT; identity columns for AUTOINCREMENT).
-- The identity index (issue 6): per tenant, phone (E.164) and email (normalized) → CRM record id,
-- so a known caller is matched locally with no vendor search at ring time. Kept current from the
-- service's own writes (source 'writeback') and incremental pulls from the CRM (source 'crm').
CREATE TABLE identity_index (
    tenant     TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('phone', 'email')),
    value      TEXT    NOT NULL,
    record_id  TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, kind, value, record_id)
);
CREATE INDEX identity_index_record ON identity_index (tenant, record_id);

-- Where each tenant's incremental pull from its CRM stands: the newest modification time seen.
CREATE TABLE identity_sync (
    tenant      TEXT    NOT NULL,
    vendor      TEXT    NOT NULL,
    watermark   BIGINT,
    last_run_at BIGINT NOT NULL,
    records     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, vendor)
);
