-- PostgreSQL twin of migrations/sqlite/0004_booking_caller.sql (ids and ms times are BIGINT; identity columns for AUTOINCREMENT).
-- Who each booking is for, so find_appointments can list a caller's upcoming appointments
-- without a vendor search, and when it was last moved.
ALTER TABLE bookings ADD COLUMN caller_phone TEXT;
ALTER TABLE bookings ADD COLUMN caller_email TEXT;
ALTER TABLE bookings ADD COLUMN updated_at BIGINT;
CREATE INDEX bookings_caller ON bookings (tenant, caller_phone, start_at);
