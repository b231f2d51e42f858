-- Dashlight: confirmed lessons. A student confirms a lesson by the push reminder's Confirm
-- action, the confirm link of the reminder email, the button on their own page or an SMS `C`;
-- the first confirmation wins. Unconfirmed lessons escalate (an SMS nudge to the student, then an
-- alert to the instructor), and the rollup measures what confirmations say about no-shows.

-- By which path the student confirmed (NULL while not confirmed). Every confirmation before this
-- migration came from an SMS reply.
ALTER TABLE bookings ADD COLUMN student_confirmed_via text
    CHECK (student_confirmed_via IN ('sms', 'push', 'email', 'own_page'));
UPDATE bookings SET student_confirmed_via = 'sms' WHERE student_confirmed_at IS NOT NULL;
ALTER TABLE bookings ADD CONSTRAINT bookings_confirmed_via_with_time
    CHECK ((student_confirmed_at IS NULL) = (student_confirmed_via IS NULL));

-- New kinds: `confirm_nudge` (to the student: one SMS asking to reply C) and
-- `unconfirmed_lesson` (to the instructor: the student has not confirmed).
ALTER TABLE notifications DROP CONSTRAINT notifications_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_type_check CHECK (type IN (
    'booking_confirmed', 'booking_alert', 'lesson_reminder', 'booking_cancelled',
    'booking_rescheduled', 'recurring_conflict', 'invoice_issued', 'daily_agenda',
    'lesson_report', 'new_message', 'test_reminder', 'package_low', 'crm_follow_up',
    'slot_offer', 'slot_taken',
    'access_link', 'student_confirmed', 'rearrange_request', 'inbound_reply',
    'confirm_nudge', 'unconfirmed_lesson'));

-- Per local day of the lesson's start and per channel of its first sent reminder: what the
-- reminders achieved. Recomputed by the analytics rollup (`dashlight_core::analytics`), its one
-- writer.
CREATE TABLE confirmation_rollups (
    day                   date NOT NULL,
    channel               text NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    -- Lessons (bookings not cancelled) with at least one reminder sent.
    reminded              integer NOT NULL CHECK (reminded >= 0),
    -- Of those, confirmed by the student.
    confirmed             integer NOT NULL CHECK (confirmed >= 0 AND confirmed <= reminded),
    -- Median minutes from the first reminder's send to the confirmation (0 when confirmed first).
    confirm_minutes_p50   double precision,
    -- Lessons the instructor marked `no_show`, among the confirmed and the unconfirmed ones.
    no_shows_confirmed    integer NOT NULL CHECK (no_shows_confirmed >= 0),
    no_shows_unconfirmed  integer NOT NULL CHECK (no_shows_unconfirmed >= 0),
    computed_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, channel)
);

-- The call list and the escalations look for upcoming unconfirmed lessons.
CREATE INDEX bookings_unconfirmed_idx ON bookings (start_time)
    WHERE status = 'confirmed' AND student_confirmed_at IS NULL;
