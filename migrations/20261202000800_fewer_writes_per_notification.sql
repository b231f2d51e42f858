-- Issue 20: fewer row writes per notification.
--
-- 1. The attempt record of a send is written once, when its result is recorded, instead of
--    inserted at the claim and updated at the record. What the claim's attempt row carried for
--    the crash window (who is sending, for which job, since when) is on the delivery while it is
--    `sending`: `sending_since` (already there), `claimed_by` and `claim_job_id`. A delivery a
--    dead worker left `sending` gets its attempt recorded `interrupted` from these.
ALTER TABLE notification_deliveries
    ADD COLUMN claimed_by   text,   -- the worker sending it (while `sending`)
    ADD COLUMN claim_job_id text;   -- the job it is being sent for (while `sending`)

-- Deliveries claimed by an older worker carry their in-flight attempt row instead; copy what it
-- says so the recovery of those finds them the same way.
UPDATE notification_deliveries d SET claimed_by = a.worker, claim_job_id = a.job_id
FROM delivery_attempts a
WHERE d.status = 'sending' AND a.delivery_id = d.id AND a.attempt = d.attempts AND a.outcome IS NULL;

-- 2. The per-delivery analytics events (`notification_sent`, `notification_failed`) are no
--    longer written one row per delivery: they follow from the deliveries themselves. This view
--    gives them in the shape of `analytics_events` for whoever queries them; the daily rollup
--    counts them from the deliveries (worker/src/periodic/rollup.rs).
CREATE VIEW delivery_events AS
SELECT n.user_id,
       CASE WHEN d.status = 'sent' THEN 'notification_sent' ELSE 'notification_failed' END AS event_type,
       jsonb_build_object('notification_id', n.id, 'delivery_id', d.id, 'kind', n.type, 'channel', d.channel) AS event_data,
       CASE WHEN d.status = 'sent' THEN d.sent_at ELSE d.updated_at END AS "timestamp"
FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
WHERE d.status IN ('sent', 'failed', 'dead');

-- 3. A device's last use is no longer written on every send (it was a row update per push):
--    it is the last `sent_at` of its deliveries.
COMMENT ON COLUMN user_devices.last_used_at IS
    'No longer maintained by the worker (issue 20); a device''s last use is max(sent_at) of its sent deliveries, see the view device_last_use.';
CREATE VIEW device_last_use AS
SELECT device_id, max(sent_at) AS last_used_at
FROM notification_deliveries WHERE status = 'sent' AND device_id IS NOT NULL GROUP BY device_id;
