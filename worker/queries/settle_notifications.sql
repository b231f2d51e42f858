WITH t AS (SELECT unnest($1::bigint[]) AS id),
     o AS (SELECT d.notification_id AS id, min(coalesce(d.next_attempt_at, $2)) AS next
           FROM notification_deliveries d
           WHERE d.notification_id = ANY($1) AND d.status IN ('pending', 'retrying', 'sending') GROUP BY 1)
UPDATE notifications n
SET status = CASE WHEN o.id IS NULL THEN 'done' ELSE n.status END, next_check_at = coalesce(o.next, n.next_check_at)
FROM t LEFT JOIN o ON o.id = t.id
WHERE n.id = t.id AND n.id = ANY($1) AND n.status IN ('pending', 'processing')
