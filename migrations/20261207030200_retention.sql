-- Retention purge (core/src/privacy/retention.rs): old rows are found by their time through
-- BRIN indexes, a few pages each and next to free to keep up to date on the send path (rows are
-- written in time order, which is what BRIN summarises).
CREATE INDEX notification_deliveries_created_brin ON notification_deliveries USING brin (created_at);
CREATE INDEX delivery_attempt_log_started_brin ON delivery_attempt_log USING brin (started_at);
CREATE INDEX delivery_receipts_received_brin ON delivery_receipts USING brin (received_at);
CREATE INDEX invoices_issued_brin ON invoices USING brin (issued_at);
CREATE INDEX payments_created_brin ON payments USING brin (created_at);
