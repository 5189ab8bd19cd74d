-- PostgreSQL only (issue 13): the rate budgets every instance draws from (src/connectors/rate.rs),
-- one row per bucket — a (vendor, account) budget or a vendor app's app-wide one — so N instances
-- together stay under the vendor's limit. Tokens refill on the domain clock; a take is one
-- conditional upsert (src/store/rate.rs). A single instance on SQLite keeps its buckets in memory.
CREATE TABLE rate_buckets (
    key   TEXT PRIMARY KEY,            -- 'vendor|account' or 'vendor|*'
    level DOUBLE PRECISION NOT NULL,   -- shared tokens; below zero after live requests overdrew it
    lane  DOUBLE PRECISION NOT NULL,   -- the write-back lane's own tokens
    at    BIGINT NOT NULL              -- ms (domain clock) of the last refill
);
