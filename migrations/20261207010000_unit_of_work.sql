-- The unit of work: a notification job may carry many notifications, a finished notification job
-- is deleted at its acknowledgement, and a notification that cannot be planned, claimed or
-- recorded fails alone.

-- A notification the worker could not plan, claim or record ends `failed`, its reason in
-- `status_reason`; no other notification of its job or batch is held back by it.
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'processing', 'done', 'skipped', 'cancelled', 'failed'));

-- What was sent per minute is read from the deliveries now that finished jobs leave no row (the
-- dashboard's chart). A BRIN index: a few pages, and next to nothing to maintain per send, since
-- `sent_at` follows the order rows are written in.
CREATE INDEX notification_deliveries_sent_at_brin ON notification_deliveries USING brin (sent_at);
