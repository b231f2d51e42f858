-- Status callbacks that arrive before the worker has recorded the provider's message id of
-- their send (the provider answered, the callback overtook the recorder). They are kept here,
-- append-only like delivery_receipts, and adopted (turned into a delivery_receipts row naming
-- the delivery, then applied) once a delivery with that message id exists: the reminder sweep
-- looks every few seconds. Written only by core/src/receipts.rs.
CREATE TABLE early_receipts (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel             text NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    provider_message_id text NOT NULL CHECK (length(provider_message_id) BETWEEN 1 AND 200),
    source              text NOT NULL CHECK (source IN ('sms_status', 'email_dsn')),
    status              text NOT NULL CHECK (status IN ('delivered', 'undelivered', 'note')),
    provider_status     text CHECK (length(provider_status) <= 100),
    error_code          text CHECK (length(error_code) <= 100),
    detail              text CHECK (length(detail) <= 2000),
    received_at         timestamptz NOT NULL DEFAULT now(),
    -- Set once adopted: the receipt it became.
    receipt_id          bigint REFERENCES delivery_receipts (id) ON DELETE SET NULL,
    adopted_at          timestamptz
);
CREATE INDEX early_receipts_waiting_idx ON early_receipts (channel, provider_message_id) WHERE adopted_at IS NULL;
