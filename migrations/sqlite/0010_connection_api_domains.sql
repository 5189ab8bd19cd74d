-- The API base a vendor assigned to a connection (Pipedrive's `api_domain`, returned with every
-- token answer: `https://<company>.pipedrive.com`). Kept beside the connection, not in it, so the
-- connections table stays vendor-neutral; written after each token answer that names one.
CREATE TABLE connection_api_domains (
    connection_id TEXT PRIMARY KEY,  -- connections.id
    api_domain    TEXT NOT NULL,
    updated_at    INTEGER NOT NULL   -- ms since the Unix epoch
);
