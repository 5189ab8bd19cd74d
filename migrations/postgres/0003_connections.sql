-- PostgreSQL twin of migrations/sqlite/0003_connections.sql (ids and ms times are BIGINT; identity columns for AUTOINCREMENT).
-- OAuth connections: one per (tenant, vendor). Tokens are AES-256-GCM ciphertexts (base64 of
-- nonce || ciphertext+tag) under the key named by key_id; plaintext tokens are never stored.
-- The row always holds the live tokens: every refresh writes the (possibly rotated) refresh
-- token back before the new access token is used, so a restart never reuses a retired one.
CREATE TABLE connections (
    id               TEXT PRIMARY KEY,  -- '<tenant>:<vendor>'
    tenant           TEXT NOT NULL,
    vendor           TEXT NOT NULL,
    status           TEXT NOT NULL,     -- active | revoked
    key_id           TEXT NOT NULL,
    access_token_ct  TEXT NOT NULL,
    refresh_token_ct TEXT NOT NULL,
    expires_at       BIGINT NOT NULL,  -- ms since the Unix epoch
    scopes           TEXT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (tenant, vendor)
);

-- Authorization requests in flight: the `state` sent to the vendor and the PKCE verifier
-- (encrypted), single use, short-lived.
CREATE TABLE oauth_states (
    state        TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    vendor       TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    verifier_ct  TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
