-- Deleting a delivery (the retention purge, docs/data-retention.md) makes Postgres look up every
-- row that refers to it, once per deleted delivery. `suppressions.delivery_id` had no index and
-- `inbound_emails.delivery_id` only a partial one (one bounce per delivery) that the lookup
-- cannot use, so each deleted delivery read both tables whole: a purge statement of 250
-- deliveries read them 500 times. With these indexes a lookup is an index probe.
CREATE INDEX suppressions_delivery_idx ON suppressions (delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX inbound_emails_delivery_idx ON inbound_emails (delivery_id) WHERE delivery_id IS NOT NULL;
