-- The API host a connection talks to, when the vendor names it at authorization time.
-- Salesforce's token endpoint answers every code exchange and refresh with `instance_url` (the
-- org's My Domain host): the connector must call that host, and it may change (org migration), so
-- it is stored with the connection and replaced on every token answer that carries one.
CREATE TABLE connection_instances (
    connection_id TEXT PRIMARY KEY,  -- connections.id
    instance_url  TEXT NOT NULL,
    updated_at    INTEGER NOT NULL   -- ms since the Unix epoch
);
