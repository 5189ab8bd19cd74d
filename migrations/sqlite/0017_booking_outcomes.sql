-- Issue 12, item 4: what became of each appointment the service booked, read back from the CRM,
-- the calendar or the point of sale after it ended (src/outcomes.rs), or known at once when the
-- service cancelled it itself. Written once: a booking's outcome never changes after it is set.
ALTER TABLE bookings ADD COLUMN outcome TEXT;          -- attended | no_show | cancelled_late | cancelled | unknown
ALTER TABLE bookings ADD COLUMN outcome_source TEXT;   -- crm | calendar | pos | callside
ALTER TABLE bookings ADD COLUMN outcome_at INTEGER;    -- ms (domain clock) when it was recorded
ALTER TABLE bookings ADD COLUMN cancelled_at INTEGER;  -- ms (domain clock) when the service cancelled it
ALTER TABLE bookings ADD COLUMN outcome_checked_at INTEGER; -- ms (domain clock) the reader last asked and learnt nothing
CREATE INDEX bookings_outcome_due ON bookings (tenant, end_at) WHERE outcome IS NULL;
CREATE INDEX bookings_caller_email ON bookings (tenant, caller_email);
