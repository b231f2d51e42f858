-- Issue 20: a delivery's successful attempt is kept on the delivery's own row.
--
-- Nearly every delivery is sent at its first attempt, and that attempt's record repeated what the
-- delivery row already says once it is recorded `sent`: who sent it (`claimed_by`), for which job
-- (`claim_job_id`), from when (`sending_since`) to when (`sent_at`), and the provider's id. It was
-- one more row (and two index entries, and a foreign-key check) per notification. Now:
--
-- * `delivery_attempt_log` (the old table, renamed) holds the attempts that did not succeed
--   (`transient`, `permanent`, `interrupted`), and a successful one that is not kept on its row
--   (a result that came after the attempt was recorded `interrupted`, or one moved off its row
--   when an operator retries an `undelivered` delivery).
-- * A delivery recorded `sent` by the worker that claimed it keeps its attempt on its row:
--   `attempt_id` is set (from the log's own id sequence, so attempt ids stay unique), and
--   `sending_since`, `claimed_by` and `claim_job_id` stay as the attempt's start, worker and job.
--   The attempt's number is `attempts`.
-- * The view `delivery_attempts` is every attempt, in the old table's shape: what the API,
--   the dashboard and the tests read. Only the worker's recorder writes attempts
--   (worker/src/delivery/record.rs).
ALTER TABLE delivery_attempts RENAME TO delivery_attempt_log;
ALTER SEQUENCE delivery_attempts_id_seq RENAME TO delivery_attempt_log_id_seq;
ALTER INDEX delivery_attempts_pkey RENAME TO delivery_attempt_log_pkey;
ALTER INDEX delivery_attempts_delivery_id_attempt_key RENAME TO delivery_attempt_log_delivery_id_attempt_key;

ALTER TABLE notification_deliveries
    ADD COLUMN attempt_id bigint,   -- the successful attempt kept on this row (see above)
    ADD CONSTRAINT notification_deliveries_kept_attempt_check CHECK (
        attempt_id IS NULL
        OR (status IN ('sent', 'delivered', 'undelivered') AND attempts > 0 AND sending_since IS NOT NULL AND sent_at IS NOT NULL));

CREATE VIEW delivery_attempts AS
SELECT id, delivery_id, attempt, job_id, worker, started_at, finished_at, outcome, error, provider_message_id, retry_after_ms
FROM delivery_attempt_log
UNION ALL
SELECT d.attempt_id, d.id, d.attempts, d.claim_job_id, d.claimed_by, d.sending_since, d.sent_at, 'sent', NULL::text,
       d.provider_message_id, NULL::bigint
FROM notification_deliveries d
WHERE d.attempt_id IS NOT NULL;
