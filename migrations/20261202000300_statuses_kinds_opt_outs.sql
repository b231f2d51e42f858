-- Dashlight: the shared groundwork of the third round (docs/hearing-back.md, docs/own-page.md):
-- the two delivery statuses providers report after acceptance, the new kinds, the
-- per-kind email opt-outs that unsubscribe links and a person's own page both change, and the
-- read mark of a person's notification feed.

-- `delivered`: the provider confirmed it reached the handset or mailbox. `undelivered`:
-- accepted, then not delivered (carrier failure, bounce); listed and retried like `failed`.
ALTER TABLE notification_deliveries DROP CONSTRAINT notification_deliveries_status_check;
ALTER TABLE notification_deliveries ADD CONSTRAINT notification_deliveries_status_check CHECK (status IN (
    'pending', 'sending', 'sent', 'retrying', 'failed', 'dead', 'skipped', 'cancelled',
    'delivered', 'undelivered'));

-- New kinds: `access_link` (a person's page link, email only), `student_confirmed` (to the
-- instructor: the student replied C/YES), `rearrange_request` (to the instructor and the
-- school: the student replied R), `inbound_reply` (to the school: any other reply, forwarded).
ALTER TABLE notifications DROP CONSTRAINT notifications_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_type_check CHECK (type IN (
    'booking_confirmed', 'booking_alert', 'lesson_reminder', 'booking_cancelled',
    'booking_rescheduled', 'recurring_conflict', 'invoice_issued', 'daily_agenda',
    'lesson_report', 'new_message', 'test_reminder', 'package_low', 'crm_follow_up',
    'slot_offer', 'slot_taken',
    'access_link', 'student_confirmed', 'rearrange_request', 'inbound_reply'));

-- The person's feed: a notification is unread until they mark it read on their page.
ALTER TABLE notifications ADD COLUMN read_at timestamptz;
CREATE INDEX notifications_unread_idx ON notifications (user_id) WHERE read_at IS NULL;

-- One row per (person, kind) whose emails the person turned off: by an unsubscribe link
-- (RFC 8058 one-click or the confirmation page), on their own page, or through the
-- preferences API. Other channels of that kind go on.
CREATE TABLE email_opt_outs (
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind ~ '^[a-z_]{1,40}$'),
    -- Where it was turned off: 'unsubscribe_link', 'own_page', 'api'.
    source      text NOT NULL CHECK (source IN ('unsubscribe_link', 'own_page', 'api')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, kind)
);

-- What providers said about a message after accepting it: Twilio status callbacks, RFC 3464
-- bounces. Append-only, written by `dashlight_core::receipts` (the hooks); each receipt that
-- changes a delivery is applied by the worker's delivery recorder, the one writer of delivery
-- state, through a job that names it.
CREATE TABLE delivery_receipts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      bigint NOT NULL REFERENCES notification_deliveries (id) ON DELETE CASCADE,
    source           text NOT NULL CHECK (source IN ('sms_status', 'email_dsn')),
    -- `delivered` and `undelivered` move the delivery; `note` (a 4.x.x delay, an intermediate
    -- SMS status) is kept on record only.
    status           text NOT NULL CHECK (status IN ('delivered', 'undelivered', 'note')),
    -- The provider's own words: Twilio's MessageStatus, a DSN's Status (5.1.1).
    provider_status  text CHECK (length(provider_status) <= 100),
    error_code       text CHECK (length(error_code) <= 100),
    detail           text CHECK (length(detail) <= 2000),
    received_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_receipts_delivery_idx ON delivery_receipts (delivery_id, received_at);
-- Status callbacks find their delivery by the provider's message id.
CREATE INDEX notification_deliveries_provider_id_idx ON notification_deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Addresses and numbers nothing is sent to: hard bounces, STOP replies, Twilio 21610. Sends to
-- them are `skipped` (`suppressed` / `opted_out`). Operators list and lift them. Written by
-- `dashlight_core::suppressions` only.
CREATE TABLE suppressions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel      text NOT NULL CHECK (channel IN ('email', 'sms')),
    -- A lower-cased email address or an E.164 number.
    target       text NOT NULL CHECK (length(target) BETWEEN 1 AND 320),
    reason       text NOT NULL CHECK (reason IN ('bounced', 'opted_out')),
    -- The delivery that caused it, when one did.
    delivery_id  bigint REFERENCES notification_deliveries (id) ON DELETE SET NULL,
    detail       text CHECK (length(detail) <= 2000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, target)
);
