-- Dashlight: filling cancelled slots (docs/gap-filling.md).
--
-- Students join a waitlist with preferred instructors and weekly windows in their own time
-- zone; a booking cancelled (or moved) early enough offers its freed slot to up to
-- GAP_FILL_MAX_OFFERS matching students, oldest waitlist entry first. Each offer is a
-- single-person link; the first to accept books the slot through the normal booking operation,
-- so the bookings exclusion constraint decides a race.

------------------------------------------------------------------------------------------
-- WAITLIST
------------------------------------------------------------------------------------------

-- One entry per student (PUT /api/students/{id}/waitlist replaces it). `joined_at` is the
-- queue position: set when the entry becomes active, kept while it stays active, so changing
-- one's preferences does not send a student to the back. Accepting an offer closes the entry
-- (active = false, closed_reason says why); a lesson booked any other way leaves it open.
CREATE TABLE waitlist_entries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    student_id      bigint NOT NULL UNIQUE REFERENCES students (id) ON DELETE CASCADE,
    -- Preferred instructors; empty = any instructor.
    instructor_ids  bigint[] NOT NULL DEFAULT '{}' CHECK (cardinality(instructor_ids) <= 50),
    active          boolean NOT NULL DEFAULT true,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    closed_reason   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT waitlist_closed_has_time CHECK (active OR closed_at IS NOT NULL)
);
-- The offer query: active entries, oldest first.
CREATE INDEX waitlist_entries_active_idx ON waitlist_entries (joined_at, id) WHERE active;
CREATE TRIGGER waitlist_entries_updated_at BEFORE UPDATE ON waitlist_entries FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- The weekly windows of an entry, in the student's own time zone (users.timezone). An entry
-- without windows takes any time.
CREATE TABLE waitlist_windows (
    entry_id     bigint NOT NULL REFERENCES waitlist_entries (id) ON DELETE CASCADE,
    day_of_week  smallint NOT NULL CHECK (day_of_week BETWEEN 1 AND 7),
    start_time   time NOT NULL,
    end_time     time NOT NULL,
    CONSTRAINT waitlist_windows_order CHECK (end_time > start_time),
    PRIMARY KEY (entry_id, day_of_week, start_time)
);

------------------------------------------------------------------------------------------
-- OFFERS
------------------------------------------------------------------------------------------

-- One offer of a freed slot to one student. The slot is the booking that freed it at the
-- version it had then (a reschedule frees the old times and raises the version). The link's
-- token is never stored: only its SHA-256, looked up by equality.
--
-- Status: open → accepted (this student got the slot), withdrawn (another did), expired (slot
-- start minus GAP_FILL_MIN_NOTICE passed; also computed at read time, the sweep marks it as a
-- net).
CREATE TABLE slot_offers (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id           bigint NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    booking_version      integer NOT NULL,
    instructor_id        bigint NOT NULL REFERENCES instructors (id) ON DELETE CASCADE,
    student_id           bigint NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    waitlist_entry_id    bigint REFERENCES waitlist_entries (id) ON DELETE SET NULL,
    start_time           timestamptz NOT NULL,
    end_time             timestamptz NOT NULL,
    -- The student's own pickup (that of their latest lesson), not the freed booking's.
    pickup_location      text CHECK (length(pickup_location) <= 500),
    token_sha256         bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    status               text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'accepted', 'withdrawn', 'expired')),
    -- When the cancellation or move freed the slot (minutes-to-fill count from here).
    freed_at             timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    opened_at            timestamptz,
    accepted_at          timestamptz,
    accepted_booking_id  bigint REFERENCES bookings (id) ON DELETE SET NULL,
    withdrawn_at         timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT slot_offers_time_order CHECK (end_time > start_time),
    CONSTRAINT slot_offers_accepted_has_booking CHECK ((status = 'accepted') = (accepted_at IS NOT NULL)),
    UNIQUE (booking_id, booking_version, student_id)
);
-- At most one acceptance per freed slot, whatever the code does.
CREATE UNIQUE INDEX slot_offers_one_acceptance ON slot_offers (booking_id, booking_version) WHERE status = 'accepted';
-- The expiry net: open offers by expiry.
CREATE INDEX slot_offers_open_expiry_idx ON slot_offers (expires_at) WHERE status = 'open';
CREATE INDEX slot_offers_student_idx ON slot_offers (student_id);
-- The rollup's range scans.
CREATE INDEX slot_offers_created_idx ON slot_offers (created_at);
CREATE INDEX slot_offers_accepted_idx ON slot_offers (accepted_at) WHERE accepted_at IS NOT NULL;
CREATE TRIGGER slot_offers_updated_at BEFORE UPDATE ON slot_offers FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------
-- NOTIFICATION KINDS AND ROLLUP FIGURES
------------------------------------------------------------------------------------------

ALTER TABLE notifications DROP CONSTRAINT notifications_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_type_check CHECK (type IN (
    'booking_confirmed', 'booking_alert', 'lesson_reminder', 'booking_cancelled',
    'booking_rescheduled', 'recurring_conflict', 'invoice_issued', 'daily_agenda',
    'lesson_report', 'new_message', 'test_reminder', 'package_low', 'crm_follow_up',
    'slot_offer', 'slot_taken'));

-- Freed slots offered that day, slots filled that day, and the median minutes from the
-- cancellation to the acceptance of the day's fills.
ALTER TABLE daily_rollups
    ADD COLUMN slots_offered integer NOT NULL DEFAULT 0,
    ADD COLUMN slots_filled integer NOT NULL DEFAULT 0,
    ADD COLUMN fill_minutes_p50 double precision;
