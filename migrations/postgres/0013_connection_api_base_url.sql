-- PostgreSQL twin of migrations/sqlite/0013_connection_api_base_url.sql (ids and ms times are BIGINT; identity columns for AUTOINCREMENT).
-- The API base URL a vendor assigned to a connection in its token answer, stored with the
-- connection's tokens: Salesforce's `instance_url` (the org's My Domain host) and Pipedrive's
-- `api_domain` (`https://<company>.pipedrive.com`). Every code exchange and refresh may name it
-- again (an org migrated to another instance), so each token answer that carries one replaces
-- it; an answer without one keeps the stored value. NULL: the vendor assigns none (HubSpot) and
-- the tenant's configured base URL is used.
ALTER TABLE connections ADD COLUMN api_base_url TEXT;
