-- PostgreSQL twin of migrations/sqlite/0012_inbound.sql (ids and ms times are BIGINT; identity columns for AUTOINCREMENT).
-- Inbound sync (issue 12): deliveries of vendors' change notifications already accepted, so a
-- replayed request (same signature) is refused and a redelivered event (same event id) is applied
-- once. Keys are vendor-scoped: `sig:<signature>` for a request, `event:<portal>:<id>` for an event.
CREATE TABLE inbound_deliveries (
    vendor TEXT NOT NULL,
    delivery_key TEXT NOT NULL,
    tenant TEXT,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (vendor, delivery_key)
);
