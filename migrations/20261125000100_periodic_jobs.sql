-- Dashlight: what the periodic jobs (worker/src/periodic/) need to stay index-driven.
--
-- Every due-scan of a periodic job reads an index whose size follows the work that is due, not
-- the history: the invoice scan reads only succeeded payments without an invoice, the test-
-- reminder scan only students with a test still ahead, the rollup only the rows of its days.

------------------------------------------------------------------------------------------
-- INVOICES
------------------------------------------------------------------------------------------

-- Set by the invoice job in the transaction that issues the payment's invoice. The partial index
-- below then holds exactly the payments waiting for one, so the scan stays small however many
-- payments have ever been invoiced. Owned by the invoice job (worker/src/periodic/invoices.rs).
ALTER TABLE payments ADD COLUMN invoiced_at timestamptz;
UPDATE payments p SET invoiced_at = i.issued_at FROM invoices i WHERE i.payment_id = p.id;
CREATE INDEX payments_uninvoiced_idx ON payments (id) WHERE status = 'succeeded' AND invoiced_at IS NULL;

------------------------------------------------------------------------------------------
-- DRIVING-TEST REMINDERS
------------------------------------------------------------------------------------------

-- The latest of a student's booked tests (NULL when none). Immutable, so it can be indexed:
-- students with a test still ahead are an index range scan.
CREATE FUNCTION latest_test_date(dates timestamptz[]) RETURNS timestamptz AS $$
    SELECT max(d) FROM unnest(dates) AS d;
$$ LANGUAGE sql IMMUTABLE PARALLEL SAFE;
CREATE INDEX students_latest_test_idx ON students (latest_test_date(test_dates));

-- Open test reminders by recipient: a student whose dates were all removed still has theirs
-- cancelled.
CREATE INDEX notifications_open_test_reminder_idx ON notifications (user_id)
    WHERE type = 'test_reminder' AND status IN ('pending', 'processing');

------------------------------------------------------------------------------------------
-- DAILY ROLLUPS: each figure of a day is a range scan on the time it happened
------------------------------------------------------------------------------------------

CREATE INDEX bookings_created_idx ON bookings (created_at);
CREATE INDEX bookings_cancelled_idx ON bookings (cancelled_at) WHERE cancelled_at IS NOT NULL;
CREATE INDEX bookings_no_show_idx ON bookings (start_time) WHERE status = 'no_show';
CREATE INDEX lessons_completed_idx ON lessons (completed_at);
CREATE INDEX notification_deliveries_sent_idx ON notification_deliveries (sent_at) WHERE status = 'sent';

------------------------------------------------------------------------------------------
-- JOB PRUNING: finished jobs by the time they finished (apalis ships no such index)
------------------------------------------------------------------------------------------

CREATE INDEX IF NOT EXISTS dashlight_jobs_done_idx ON apalis.jobs (done_at) WHERE status = 'Done';
