-- Push devices: an endpoint longer than 1024 bytes is refused at registration; the rows that
-- came before that rule are switched off (no push service hands out such an endpoint, and it
-- cannot be a delivery's target: the unique key's index row would be too large), and the
-- schema keeps active devices within the rule. A person keeps at most 10 active devices: the
-- oldest beyond that are switched off too.
UPDATE user_devices SET active = false, disabled_reason = 'push endpoint longer than 1024 bytes'
WHERE active AND octet_length(push_endpoint) > 1024;

UPDATE user_devices SET active = false, disabled_reason = 'replaced by a newer device (at most 10 per person)'
WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY updated_at DESC, id DESC) AS n
        FROM user_devices WHERE active) ranked
    WHERE n > 10);

ALTER TABLE user_devices ADD CONSTRAINT user_devices_active_endpoint_length
    CHECK (NOT active OR octet_length(push_endpoint) <= 1024);
