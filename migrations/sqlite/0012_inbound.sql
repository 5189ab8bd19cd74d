-- Inbound sync (issue 12): deliveries of vendors' change notifications already accepted, so a
-- replayed request (same signature) is refused and a redelivered event (same event id) is applied
-- once. Keys are vendor-scoped: `sig:<signature>` for a request, `event:<portal>:<id>` for an event.
CREATE TABLE inbound_deliveries (
    vendor TEXT NOT NULL,
    delivery_key TEXT NOT NULL,
    tenant TEXT,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (vendor, delivery_key)
);
