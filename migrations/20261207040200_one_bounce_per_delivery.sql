-- One bounce verdict per delivery: a later bounce for the same delivery (a replay with a byte
-- changed, say) is recorded as a duplicate and applies nothing. Rows from before that rule
-- that gave one delivery two verdicts keep the first; the later ones become duplicates.
UPDATE inbound_emails SET verdict = 'duplicate',
       detail = left('a later bounce for a delivery that had one: ' || coalesce(detail, ''), 2000)
WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY delivery_id ORDER BY id) AS n
        FROM inbound_emails WHERE delivery_id IS NOT NULL AND verdict IN ('bounced', 'failed')) ranked
    WHERE n > 1);

CREATE UNIQUE INDEX inbound_emails_one_bounce_per_delivery ON inbound_emails (delivery_id)
    WHERE verdict IN ('bounced', 'failed');
