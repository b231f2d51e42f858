-- Dashlight: hearing back by email (docs/hearing-back.md): the secret that signs the VERP
-- addresses of bounces and the unsubscribe links, and the record of every message the inbound
-- email hook received.

-- The installation's signing secrets, one row per use, created here once and read by every
-- program at start-up (`dashlight_core::signing`). Random without pgcrypto: four version-4
-- UUIDs give 488 random bits, kept as 64 bytes. Rotating one (an UPDATE) invalidates every
-- link and VERP address signed with it, nothing else.
CREATE TABLE signing_keys (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z_]{1,40}$'),
    secret      bytea NOT NULL CHECK (length(secret) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO signing_keys (name, secret) VALUES ('links', decode(
    replace(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
    'hex'));

-- Every message posted to `/hooks/email/inbound`: what was made of it (the verdict), kept
-- whether it acted or was ignored, so an operator can see why a bounce did nothing. The body
-- itself is not kept, only its size, digest and first kilobyte. Written by
-- `dashlight_core::inbound_email` only.
CREATE TABLE inbound_emails (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- bounced: a 5.x.x DSN (delivery undelivered, address suppressed); failed: a DSN that gave
    -- up with a 4.x.x status (undelivered, not suppressed); delayed: a 4.x.x delay (a note);
    -- dsn_other: a DSN with no failure or delay; unsubscribed: a message to the mailto of
    -- List-Unsubscribe; duplicate: the same message again (nothing done twice); auto_reply,
    -- unsigned (no VERP token that verifies), unknown_delivery, unparseable, other: ignored.
    verdict      text NOT NULL CHECK (verdict IN ('bounced', 'failed', 'delayed', 'dsn_other', 'unsubscribed',
                                                  'duplicate', 'auto_reply', 'unsigned', 'unknown_delivery',
                                                  'unparseable', 'other')),
    size_bytes   integer NOT NULL CHECK (size_bytes >= 0),
    sha256       bytea NOT NULL CHECK (length(sha256) = 32),
    -- The first kilobyte, as text (for the operator; invalid UTF-8 replaced).
    head         text NOT NULL CHECK (length(head) <= 1024),
    delivery_id  bigint REFERENCES notification_deliveries (id) ON DELETE SET NULL,
    user_id      bigint REFERENCES users (id) ON DELETE SET NULL,
    detail       text CHECK (length(detail) <= 2000)
);
-- A message that acted acts once: the same bytes posted again (an MTA retrying after a timeout,
-- a replay) find this and are recorded as `duplicate`.
CREATE UNIQUE INDEX inbound_emails_acted_once ON inbound_emails (sha256)
    WHERE verdict IN ('bounced', 'failed', 'delayed', 'dsn_other', 'unsubscribed');
CREATE INDEX inbound_emails_received_idx ON inbound_emails (received_at);
