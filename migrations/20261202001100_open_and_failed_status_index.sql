-- Issue 20: fewer index writes per notification (continues 20261202000900_leaner_indexes.sql).
--
-- `notification_deliveries_status_idx (status, updated_at)` held every delivery, and took an
-- entry on every insert and every update (a status change is never HOT): on the hot path a
-- delivery is inserted `sending` or `skipped` and updated to `sent`, so 2.7 entries per
-- notification. The lookups by status it serves are of the uncommon statuses: failures to list,
-- filter and retry (`failed`, `dead`, `undelivered`, the rollup's failures of a day by
-- `updated_at`), and open or cancelled ones an operator filters for. `sending` has its own index
-- (`notification_deliveries_sending_idx`); `sent`, `delivered` and `skipped` are most rows, and a
-- listing of them walks the primary key newest first. The index now holds only the uncommon
-- statuses, so a delivery sent at its first attempt never enters it.
DROP INDEX notification_deliveries_status_idx;
CREATE INDEX notification_deliveries_status_idx ON notification_deliveries (status, updated_at)
    WHERE status IN ('pending', 'retrying', 'failed', 'dead', 'undelivered', 'cancelled');
