-- Issue 20: fewer index writes per notification.
--
-- An update that is not HOT adds an entry to every index whose predicate the new row meets, and
-- none of the hot path's updates is HOT: a job's fetch and acknowledgement change `status` and
-- `lock_by`, a notification's and a delivery's status change `status`, which partial indexes
-- name. So every index on these tables costs a write per insert and per update, whether or not
-- a query ever looks the row up through it. Five of them held every row while only a few rows
-- are ever found through them; they now hold only those rows. Every lookup they served still
-- finds its rows (an equality on a column implies it is not null; the rescue of a dead worker's
-- jobs names the held statuses).
--
-- apalis.jobs (apalis-postgres's own indexes; core::queue owns the table's statements):
-- 1. `idx_apalis_jobs_lock_by (lock_by)` held every job ever locked (a finished job keeps its
--    `lock_by`), but jobs are looked up by holder only while held: the rescue of a dead worker's
--    jobs (ours in core::queue and apalis's `reenqueue_orphaned` / `reenqueue_abandoned`, all
--    `status = 'Running' OR status = 'Queued'`). Acknowledgements find their jobs by primary key.
-- 2. `idx_jobs_idempotency_key UNIQUE (job_type, idempotency_key)` held every job, though only a
--    job with a key can conflict (NULLs never do); the enqueue's `ON CONFLICT` names the same
--    predicate.
-- Per job: 11 index entries → 6; WAL per job 1,483 → 1,131 bytes, server time of the three
-- statements over 20,000 jobs 711–771 → 552–555 ms (BENCHMARKS.md, session 4).
DROP INDEX apalis.idx_apalis_jobs_lock_by;
CREATE INDEX idx_apalis_jobs_lock_by ON apalis.jobs (lock_by) WHERE status = 'Running' OR status = 'Queued';

DROP INDEX apalis.idx_jobs_idempotency_key;
CREATE UNIQUE INDEX idx_jobs_idempotency_key ON apalis.jobs (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- notifications: a notification is about a payment or a message only for those kinds; reports
-- and invoices have no booking. The foreign keys' checks and every query look these up by value.
DROP INDEX notifications_booking_idx;
CREATE INDEX notifications_booking_idx ON notifications (booking_id) WHERE booking_id IS NOT NULL;
DROP INDEX notifications_payment_idx;
CREATE INDEX notifications_payment_idx ON notifications (payment_id) WHERE payment_id IS NOT NULL;
DROP INDEX notifications_message_idx;
CREATE INDEX notifications_message_idx ON notifications (message_id) WHERE message_id IS NOT NULL;

-- notification_deliveries: only push deliveries name a device.
DROP INDEX notification_deliveries_device_idx;
CREATE INDEX notification_deliveries_device_idx ON notification_deliveries (device_id) WHERE device_id IS NOT NULL;
