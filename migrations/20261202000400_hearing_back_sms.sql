-- Dashlight: the SMS half of "Hearing back" (docs/hearing-back.md): a student's C/YES reply confirms a
-- lesson, every inbound SMS is kept, and the rollup counts what providers reported.

-- When the student confirmed the lesson by replying C or YES to its reminder (NULL: not yet).
ALTER TABLE bookings ADD COLUMN student_confirmed_at timestamptz;

-- Every SMS a person sent to the school's number, as the provider posted it to
-- `/hooks/sms/inbound` (kept whatever it said). Written by `dashlight_core::replies` only.
-- Not a `messages` row: those are between users of a thread; this is a number texting the
-- school, often about one lesson, possibly from no known user.
CREATE TABLE sms_replies (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The sender's number as the provider gave it (E.164).
    from_number     text NOT NULL CHECK (length(from_number) BETWEEN 1 AND 40),
    -- The user with that number, when one is known.
    user_id         bigint REFERENCES users (id) ON DELETE SET NULL,
    -- The lesson it is about: the sender's next reminded lesson, when there is one.
    booking_id      bigint REFERENCES bookings (id) ON DELETE SET NULL,
    body            text NOT NULL CHECK (length(body) <= 1600),
    -- What it was taken as.
    keyword         text NOT NULL CHECK (keyword IN ('stop', 'start', 'help', 'confirm', 'rearrange', 'other')),
    -- The provider's id of the inbound message (Twilio's MessageSid); a replayed post is kept once.
    provider_message_id text UNIQUE CHECK (length(provider_message_id) <= 100),
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sms_replies_booking_idx ON sms_replies (booking_id, received_at) WHERE booking_id IS NOT NULL;
CREATE INDEX sms_replies_user_idx ON sms_replies (user_id, received_at);

-- What providers reported per channel that day: {"sms": {"delivered": n, "undelivered": n,
-- "delivered_rate": x | null}, ...}, the rate being delivered / (delivered + undelivered).
ALTER TABLE daily_rollups ADD COLUMN receipts jsonb NOT NULL DEFAULT '{}';

-- Each user's phone number is looked up when they text the school.
CREATE INDEX IF NOT EXISTS users_phone_idx ON users (phone) WHERE phone IS NOT NULL;
