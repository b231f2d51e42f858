-- Dashlight: the driving school's data model.
--
-- Source: the school's data model and the decisions described in docs/.
-- Conventions:
--   * ids are `bigint generated always as identity`;
--   * every state is a constrained text value (CHECK), listed where it is declared;
--   * money is integer minor units (`*_minor`, e.g. pence) with an ISO 4217 `currency`;
--   * times are `timestamptz`; wall-clock values (availability, series start) are `time`
--     interpreted in the owner's time zone, named next to them;
--   * `created_at`/`updated_at` everywhere a row changes; `set_updated_at()` keeps the latter;
--   * history is kept with soft states (cancelled, inactive, ended) rather than deletes.
-- apalis's own tables live in the `apalis` schema and are created by its own migrator.

CREATE EXTENSION IF NOT EXISTS btree_gist;  -- exclusion constraint on bookings

CREATE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- Is `tz` an IANA time-zone name Postgres knows? Used by CHECKs on every time-zone column.
CREATE FUNCTION is_valid_timezone(tz text) RETURNS boolean AS $$
    SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = tz);
$$ LANGUAGE sql STABLE;

------------------------------------------------------------------------------------------
-- SYSTEM CORE
------------------------------------------------------------------------------------------

CREATE TABLE users (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$' AND length(email) <= 254),
    role            text NOT NULL CHECK (role IN ('student', 'instructor', 'staff', 'admin')),
    first_name      text NOT NULL CHECK (length(first_name) BETWEEN 1 AND 100),
    last_name       text NOT NULL CHECK (length(last_name) BETWEEN 1 AND 100),
    -- E.164: a plus, a non-zero country digit, at most 15 digits in all.
    phone           text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    timezone        text NOT NULL DEFAULT 'Europe/London',
    -- Secret of the user's iCalendar feed (GET /calendar/{token}.ics); rotate by updating it.
    calendar_token  text NOT NULL UNIQUE DEFAULT replace(gen_random_uuid()::text, '-', ''),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- One account per address, whatever its case.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE user_preferences (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id              bigint NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    email_notifications  boolean NOT NULL DEFAULT true,
    sms_notifications    boolean NOT NULL DEFAULT true,
    push_notifications   boolean NOT NULL DEFAULT true,
    -- Quiet hours, in the user's own time zone; they may wrap midnight (22:00-07:00).
    quiet_hours_start    time,
    quiet_hours_end      time,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quiet_hours_both_or_neither
        CHECK ((quiet_hours_start IS NULL) = (quiet_hours_end IS NULL)),
    CONSTRAINT quiet_hours_not_empty CHECK (quiet_hours_start IS DISTINCT FROM quiet_hours_end OR quiet_hours_start IS NULL)
);
CREATE TRIGGER user_preferences_updated_at BEFORE UPDATE ON user_preferences FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE instructors (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id            bigint NOT NULL UNIQUE REFERENCES users (id) ON DELETE RESTRICT,
    license_number     text NOT NULL UNIQUE,
    hourly_rate_minor  bigint NOT NULL DEFAULT 0 CHECK (hourly_rate_minor >= 0),
    currency           char(3) NOT NULL DEFAULT 'GBP' CHECK (currency ~ '^[A-Z]{3}$'),
    bio                text,
    active             boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER instructors_updated_at BEFORE UPDATE ON instructors FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE students (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                bigint NOT NULL UNIQUE REFERENCES users (id) ON DELETE RESTRICT,
    license_type           text NOT NULL DEFAULT 'B',
    -- Booked driving tests; each drives test_reminder notifications 7 days and 1 day before.
    test_dates             timestamptz[] NOT NULL DEFAULT '{}',
    -- Decision 1: the usual instructor; any booking may still be with any instructor.
    current_instructor_id  bigint REFERENCES instructors (id) ON DELETE SET NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX students_current_instructor_idx ON students (current_instructor_id);
CREATE TRIGGER students_updated_at BEFORE UPDATE ON students FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- A Web Push subscription of one browser or phone.
CREATE TABLE user_devices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id       text NOT NULL CHECK (length(device_id) BETWEEN 1 AND 200),
    push_endpoint   text NOT NULL CHECK (push_endpoint ~ '^https?://'),
    p256dh          text NOT NULL,  -- base64url uncompressed P-256 public key (65 bytes)
    auth            text NOT NULL,  -- base64url 16-byte auth secret
    -- A push service answering 404/410 ends a subscription for good: active = false.
    active          boolean NOT NULL DEFAULT true,
    disabled_reason text,
    last_used_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, device_id)
);
CREATE INDEX user_devices_active_idx ON user_devices (user_id) WHERE active;
CREATE TRIGGER user_devices_updated_at BEFORE UPDATE ON user_devices FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------
-- CALENDAR & SCHEDULING (availability first: bookings are checked against it)
------------------------------------------------------------------------------------------

-- Weekly windows in the instructor's own time zone. day_of_week is ISO: 1 = Monday … 7 = Sunday.
CREATE TABLE instructor_availability (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instructor_id  bigint NOT NULL REFERENCES instructors (id) ON DELETE CASCADE,
    day_of_week    smallint NOT NULL CHECK (day_of_week BETWEEN 1 AND 7),
    start_time     time NOT NULL,
    end_time       time NOT NULL,
    is_available   boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time > start_time)
);
CREATE INDEX instructor_availability_instructor_idx ON instructor_availability (instructor_id, day_of_week);
CREATE TRIGGER instructor_availability_updated_at BEFORE UPDATE ON instructor_availability FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------
-- FINANCIAL: packages (decision 2)
------------------------------------------------------------------------------------------

CREATE TABLE lesson_packages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    lessons_included  integer NOT NULL CHECK (lessons_included > 0),
    price_minor       bigint NOT NULL CHECK (price_minor >= 0),
    currency          char(3) NOT NULL DEFAULT 'GBP' CHECK (currency ~ '^[A-Z]{3}$'),
    validity_days     integer NOT NULL CHECK (validity_days > 0),
    active            boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER lesson_packages_updated_at BEFORE UPDATE ON lesson_packages FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- A student's purchase of a package; bookings consume its lessons through booking_packages.
CREATE TABLE package_purchases (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    student_id         bigint NOT NULL REFERENCES students (id) ON DELETE RESTRICT,
    package_id         bigint NOT NULL REFERENCES lesson_packages (id) ON DELETE RESTRICT,
    lessons_total      integer NOT NULL CHECK (lessons_total > 0),
    lessons_remaining  integer NOT NULL,
    purchased_at       timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'used_up', 'expired', 'refunded')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (lessons_remaining BETWEEN 0 AND lessons_total)
);
CREATE INDEX package_purchases_student_idx ON package_purchases (student_id) WHERE status = 'active';
CREATE INDEX package_purchases_package_idx ON package_purchases (package_id);
CREATE TRIGGER package_purchases_updated_at BEFORE UPDATE ON package_purchases FOR EACH ROW EXECUTE FUNCTION set_updated_at();

------------------------------------------------------------------------------------------
-- BOOKING SYSTEM
------------------------------------------------------------------------------------------

-- Decision 5: a weekly recurring booking, expanded into bookings over a rolling horizon.
CREATE TABLE booking_series (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    student_id        bigint NOT NULL REFERENCES students (id) ON DELETE RESTRICT,
    instructor_id     bigint NOT NULL REFERENCES instructors (id) ON DELETE RESTRICT,
    weekdays          smallint[] NOT NULL CHECK (cardinality(weekdays) > 0 AND weekdays <@ ARRAY[1,2,3,4,5,6,7]::smallint[]),
    local_start_time  time NOT NULL,       -- wall-clock time in `timezone`, kept across DST
    duration_minutes  integer NOT NULL CHECK (duration_minutes BETWEEN 15 AND 600),
    timezone          text NOT NULL,
    pickup_location   text,
    starts_on         date NOT NULL,
    until_on          date,                -- inclusive; NULL = open-ended or bounded by count
    occurrence_count  integer CHECK (occurrence_count > 0),
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    ended_at          timestamptz,
    -- Last local date the expansion job has looked at; the next run starts after it.
    expanded_through  date,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (until_on IS NULL OR until_on >= starts_on)
);
CREATE INDEX booking_series_active_idx ON booking_series (id) WHERE status = 'active';
CREATE INDEX booking_series_student_idx ON booking_series (student_id);
CREATE INDEX booking_series_instructor_idx ON booking_series (instructor_id);
CREATE TRIGGER booking_series_updated_at BEFORE UPDATE ON booking_series FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE bookings (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    student_id         bigint NOT NULL REFERENCES students (id) ON DELETE RESTRICT,
    instructor_id      bigint NOT NULL REFERENCES instructors (id) ON DELETE RESTRICT,
    series_id          bigint REFERENCES booking_series (id) ON DELETE SET NULL,
    -- The local date (school time zone) the series expansion produced this booking for.
    series_occurrence  date,
    booking_date       date NOT NULL,      -- local date of start_time in the school's time zone
    start_time         timestamptz NOT NULL,
    end_time           timestamptz NOT NULL,
    status             text NOT NULL DEFAULT 'confirmed'
                       CHECK (status IN ('pending', 'confirmed', 'cancelled', 'completed', 'no_show')),
    pickup_location    text CHECK (length(pickup_location) <= 500),   -- decision 3
    dropoff_location   text CHECK (length(dropoff_location) <= 500),
    price_minor        bigint NOT NULL DEFAULT 0 CHECK (price_minor >= 0),
    currency           char(3) NOT NULL DEFAULT 'GBP' CHECK (currency ~ '^[A-Z]{3}$'),
    -- Raised on every reschedule: reminders and calendar SEQUENCE key on it.
    version            integer NOT NULL DEFAULT 1 CHECK (version > 0),
    cancel_reason      text,
    cancelled_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bookings_time_order CHECK (end_time > start_time),
    CONSTRAINT bookings_cancelled_has_time CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL)),
    -- The final judge against double booking: one instructor, two live bookings, overlapping
    -- times is impossible whatever code path writes them. Cancelled and no-show rows don't count.
    CONSTRAINT bookings_no_instructor_overlap EXCLUDE USING gist (
        instructor_id WITH =,
        tstzrange(start_time, end_time, '[)') WITH &&
    ) WHERE (status IN ('pending', 'confirmed', 'completed'))
);
-- One booking per series occurrence: makes the expansion job idempotent.
CREATE UNIQUE INDEX bookings_series_occurrence_key ON bookings (series_id, series_occurrence) WHERE series_id IS NOT NULL;
CREATE INDEX bookings_student_idx ON bookings (student_id, start_time);
CREATE INDEX bookings_instructor_start_idx ON bookings (instructor_id, start_time);
-- Hot path of the reminder sweep and daily agenda: live bookings by start time.
CREATE INDEX bookings_upcoming_idx ON bookings (start_time) WHERE status = 'confirmed';
CREATE TRIGGER bookings_updated_at BEFORE UPDATE ON bookings FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Links a booking to the package purchase whose lesson it consumed (seed: booking_packages).
CREATE TABLE booking_packages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id        bigint NOT NULL UNIQUE REFERENCES bookings (id) ON DELETE CASCADE,
    purchase_id       bigint NOT NULL REFERENCES package_purchases (id) ON DELETE RESTRICT,
    package_type      text NOT NULL,       -- the package's name when consumed
    lessons_included  integer NOT NULL CHECK (lessons_included > 0),
    -- Set when a cancelled booking gave its lesson back to the purchase.
    returned_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX booking_packages_purchase_idx ON booking_packages (purchase_id);

CREATE TABLE lessons (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id     bigint NOT NULL UNIQUE REFERENCES bookings (id) ON DELETE RESTRICT,
    instructor_id  bigint NOT NULL REFERENCES instructors (id) ON DELETE RESTRICT,
    student_id     bigint NOT NULL REFERENCES students (id) ON DELETE RESTRICT,
    lesson_notes   text,
    progress_data  jsonb NOT NULL DEFAULT '{}',
    attachments    text[] NOT NULL DEFAULT '{}',   -- decision 6: paths under the configured directory
    completed_at   timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lessons_instructor_idx ON lessons (instructor_id, completed_at);
CREATE INDEX lessons_student_idx ON lessons (student_id, completed_at);
CREATE TRIGGER lessons_updated_at BEFORE UPDATE ON lessons FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE lesson_progress (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lesson_id        bigint NOT NULL REFERENCES lessons (id) ON DELETE CASCADE,
    skill_category   text NOT NULL,
    progress_rating  smallint NOT NULL CHECK (progress_rating BETWEEN 1 AND 5),
    notes            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (lesson_id, skill_category)
);

------------------------------------------------------------------------------------------
-- FINANCIAL: payments and invoices
------------------------------------------------------------------------------------------

CREATE TABLE payments (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id    bigint REFERENCES bookings (id) ON DELETE SET NULL,
    student_id    bigint NOT NULL REFERENCES students (id) ON DELETE RESTRICT,
    purchase_id   bigint REFERENCES package_purchases (id) ON DELETE SET NULL,
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    currency      char(3) NOT NULL DEFAULT 'GBP' CHECK (currency ~ '^[A-Z]{3}$'),
    method        text NOT NULL CHECK (method IN ('card', 'cash', 'bank_transfer', 'other')),
    status        text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded')),
    provider_ref  text,
    paid_at       timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_booking_idx ON payments (booking_id);
CREATE INDEX payments_student_idx ON payments (student_id);
CREATE INDEX payments_purchase_idx ON payments (purchase_id);
CREATE INDEX payments_succeeded_idx ON payments (paid_at) WHERE status = 'succeeded';
CREATE TRIGGER payments_updated_at BEFORE UPDATE ON payments FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Gap-free invoice numbering: the counter row of a year is locked by the issuing transaction,
-- so concurrent issuers queue on it and a rolled-back issue gives its number back.
CREATE TABLE invoice_counters (
    year      integer PRIMARY KEY,
    last_seq  integer NOT NULL CHECK (last_seq >= 0)
);

CREATE TABLE invoices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id      bigint NOT NULL UNIQUE REFERENCES payments (id) ON DELETE RESTRICT,
    invoice_number  text NOT NULL UNIQUE,  -- INV-<year>-<seq, 6 digits>
    year            integer NOT NULL,
    seq             integer NOT NULL CHECK (seq > 0),
    net_minor       bigint NOT NULL,
    tax_minor       bigint NOT NULL,
    total_minor     bigint NOT NULL CHECK (total_minor = net_minor + tax_minor),
    currency        char(3) NOT NULL,
    pdf_path        text,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (year, seq)
);

------------------------------------------------------------------------------------------
-- COMMUNICATION LAYER
------------------------------------------------------------------------------------------

CREATE TABLE messages (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender_id     bigint NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    thread_id     uuid NOT NULL,
    content       text NOT NULL CHECK (length(content) BETWEEN 1 AND 10000),
    message_type  text NOT NULL DEFAULT 'text' CHECK (message_type IN ('text', 'system')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_thread_idx ON messages (thread_id, created_at);
CREATE INDEX messages_sender_idx ON messages (sender_id);

CREATE TABLE message_participants (
    message_id  bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    is_read     boolean NOT NULL DEFAULT false,
    read_at     timestamptz,
    PRIMARY KEY (message_id, user_id),
    CHECK (is_read = (read_at IS NOT NULL))
);
CREATE INDEX message_participants_unread_idx ON message_participants (user_id) WHERE NOT is_read;

-- The logical message: who, what kind, rendered from which data, for which event.
CREATE TABLE notifications (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- A user, or (for school-facing kinds such as recurring_conflict) only an address.
    user_id          bigint REFERENCES users (id) ON DELETE CASCADE,
    recipient_email  text,
    type             text NOT NULL CHECK (type IN (
                        'booking_confirmed', 'booking_alert', 'lesson_reminder', 'booking_cancelled',
                        'booking_rescheduled', 'recurring_conflict', 'invoice_issued', 'daily_agenda',
                        'lesson_report', 'new_message', 'test_reminder', 'package_low', 'crm_follow_up')),
    title            text NOT NULL,
    content          text NOT NULL,
    -- The channel list in order, and how it is used: 'all' of them or the 'first' that works.
    channels         text[] NOT NULL CHECK (cardinality(channels) > 0 AND channels <@ ARRAY['email', 'sms', 'push']),
    policy           text NOT NULL CHECK (policy IN ('all', 'first')),
    data             jsonb NOT NULL DEFAULT '{}',
    booking_id       bigint REFERENCES bookings (id) ON DELETE SET NULL,
    payment_id       bigint REFERENCES payments (id) ON DELETE SET NULL,
    message_id       bigint REFERENCES messages (id) ON DELETE SET NULL,
    -- The triggering event, e.g. 'lesson_reminder:42:24h:v1'. Enqueuing an event twice is a no-op.
    dedupe_key       text NOT NULL UNIQUE,
    -- When it should reach the recipient (reminders: lesson start minus offset).
    due_at           timestamptz NOT NULL DEFAULT now(),
    -- Deliver no later than this: a reminder is pointless once the lesson has started.
    expires_at       timestamptz,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'processing', 'done', 'skipped', 'cancelled')),
    -- When a worker is next expected to act on it (due time, then the next retry). The sweep
    -- re-enqueues pending/processing notifications whose next_check_at is well past.
    next_check_at    timestamptz NOT NULL DEFAULT now(),
    status_reason    text,
    priority         smallint NOT NULL DEFAULT 10,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (user_id IS NOT NULL OR recipient_email IS NOT NULL)
);
CREATE INDEX notifications_user_idx ON notifications (user_id, created_at);
CREATE INDEX notifications_booking_idx ON notifications (booking_id);
CREATE INDEX notifications_payment_idx ON notifications (payment_id);
CREATE INDEX notifications_message_idx ON notifications (message_id);
-- The sweep's safety net: open notifications by the time a worker should have acted on them.
CREATE INDEX notifications_open_check_idx ON notifications (next_check_at) WHERE status IN ('pending', 'processing');
CREATE TRIGGER notifications_updated_at BEFORE UPDATE ON notifications FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- One channel path of a notification (one per device for push). Owned by the worker's delivery module.
CREATE TABLE notification_deliveries (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id      bigint NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel              text NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    -- Where it goes: an address, an E.164 number, or a device's push endpoint.
    target               text NOT NULL DEFAULT '',
    device_id            bigint REFERENCES user_devices (id) ON DELETE SET NULL,
    status               text NOT NULL DEFAULT 'pending' CHECK (status IN (
                            'pending', 'sending', 'sent', 'retrying', 'failed', 'dead', 'skipped', 'cancelled')),
    attempts             integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts         integer NOT NULL DEFAULT 8 CHECK (max_attempts > 0),
    last_error           text,
    skip_reason          text,
    provider_message_id  text,
    next_attempt_at      timestamptz,
    -- Set when status becomes 'sending': the crash window starts here (see README).
    sending_since        timestamptz,
    sent_at              timestamptz,
    delivered_at         timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, channel, target)
);
CREATE INDEX notification_deliveries_status_idx ON notification_deliveries (status, updated_at);
CREATE INDEX notification_deliveries_device_idx ON notification_deliveries (device_id);
-- Deliveries stuck in 'sending' after a crash are found through this index.
CREATE INDEX notification_deliveries_sending_idx ON notification_deliveries (sending_since) WHERE status = 'sending';
CREATE TRIGGER notification_deliveries_updated_at BEFORE UPDATE ON notification_deliveries FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Every single attempt, kept for the operator's history.
CREATE TABLE delivery_attempts (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id          bigint NOT NULL REFERENCES notification_deliveries (id) ON DELETE CASCADE,
    attempt              integer NOT NULL CHECK (attempt > 0),
    job_id               text,        -- the apalis job that made the attempt
    worker               text,
    started_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz,
    outcome              text CHECK (outcome IN ('sent', 'transient', 'permanent', 'interrupted')),
    error                text,
    provider_message_id  text,
    retry_after_ms       bigint,
    UNIQUE (delivery_id, attempt)
);

------------------------------------------------------------------------------------------
-- CALENDAR
------------------------------------------------------------------------------------------

CREATE TABLE calendar_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    booking_id  bigint UNIQUE REFERENCES bookings (id) ON DELETE CASCADE,
    title       text NOT NULL,
    start_time  timestamptz NOT NULL,
    end_time    timestamptz NOT NULL,
    event_type  text NOT NULL CHECK (event_type IN ('lesson', 'driving_test', 'personal', 'blocked')),
    status      text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
    location    text,
    uid         text NOT NULL UNIQUE,      -- RFC 5545 UID, stable for the event's life
    sequence    integer NOT NULL DEFAULT 0, -- RFC 5545 SEQUENCE, raised on every change
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time > start_time)
);
CREATE INDEX calendar_events_owner_idx ON calendar_events (owner_id, start_time);
CREATE TRIGGER calendar_events_updated_at BEFORE UPDATE ON calendar_events FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE event_participants (
    event_id              bigint NOT NULL REFERENCES calendar_events (id) ON DELETE CASCADE,
    user_id               bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    participation_status  text NOT NULL DEFAULT 'accepted'
                          CHECK (participation_status IN ('needs_action', 'accepted', 'declined', 'tentative')),
    role                  text NOT NULL DEFAULT 'attendee' CHECK (role IN ('organizer', 'attendee')),
    PRIMARY KEY (event_id, user_id)
);
CREATE INDEX event_participants_user_idx ON event_participants (user_id);

------------------------------------------------------------------------------------------
-- CRM & ANALYTICS
------------------------------------------------------------------------------------------

CREATE TABLE crm_contacts (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id               bigint UNIQUE REFERENCES users (id) ON DELETE SET NULL,  -- NULL for a lead
    name                  text NOT NULL,
    email                 text,
    phone                 text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    contact_type          text NOT NULL DEFAULT 'lead' CHECK (contact_type IN ('lead', 'student', 'partner')),
    lead_status           text NOT NULL DEFAULT 'lead' CHECK (lead_status IN ('lead', 'active', 'passed', 'lapsed', 'lost')),
    lifetime_value_minor  bigint NOT NULL DEFAULT 0 CHECK (lifetime_value_minor >= 0),
    currency              char(3) NOT NULL DEFAULT 'GBP',
    source                text,
    last_interaction_at   timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_contacts_follow_up_idx ON crm_contacts (last_interaction_at) WHERE lead_status = 'lead';
CREATE TRIGGER crm_contacts_updated_at BEFORE UPDATE ON crm_contacts FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE crm_interactions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id        bigint NOT NULL REFERENCES crm_contacts (id) ON DELETE CASCADE,
    staff_user_id     bigint REFERENCES users (id) ON DELETE SET NULL,
    interaction_type  text NOT NULL CHECK (interaction_type IN ('call', 'email', 'sms', 'meeting', 'note')),
    interaction_date  timestamptz NOT NULL DEFAULT now(),
    notes             text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_interactions_contact_idx ON crm_interactions (contact_id, interaction_date);
CREATE INDEX crm_interactions_staff_idx ON crm_interactions (staff_user_id);

CREATE TABLE analytics_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint REFERENCES users (id) ON DELETE SET NULL,
    event_type   text NOT NULL,
    event_data   jsonb NOT NULL DEFAULT '{}',
    "timestamp"  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analytics_events_time_idx ON analytics_events ("timestamp");
CREATE INDEX analytics_events_user_idx ON analytics_events (user_id);

-- Daily figures per instructor and for the whole school (instructor_id NULL), recomputed idempotently.
CREATE TABLE daily_rollups (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    day                   date NOT NULL,
    instructor_id         bigint REFERENCES instructors (id) ON DELETE CASCADE,
    bookings_made         integer NOT NULL DEFAULT 0,
    lessons_completed     integer NOT NULL DEFAULT 0,
    cancellations         integer NOT NULL DEFAULT 0,
    no_shows              integer NOT NULL DEFAULT 0,
    revenue_minor         bigint NOT NULL DEFAULT 0,
    -- {"email": {"sent": n, "failed": n, "dead": n}, ...}
    deliveries            jsonb NOT NULL DEFAULT '{}',
    delivery_success_rate double precision,
    due_to_sent_p50_ms    double precision,
    due_to_sent_p95_ms    double precision,
    events                integer NOT NULL DEFAULT 0,
    computed_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (day, instructor_id)
);
CREATE INDEX daily_rollups_instructor_idx ON daily_rollups (instructor_id);

------------------------------------------------------------------------------------------
-- SKILL TRACKING
------------------------------------------------------------------------------------------

CREATE TABLE skill_categories (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    category_name  text NOT NULL UNIQUE,
    description    text NOT NULL DEFAULT '',
    skill_order    integer NOT NULL UNIQUE,
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE student_progress (
    student_id           bigint NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    skill_category_id    bigint NOT NULL REFERENCES skill_categories (id) ON DELETE RESTRICT,
    current_level        smallint NOT NULL DEFAULT 0 CHECK (current_level BETWEEN 0 AND 5),
    progress_percentage  smallint NOT NULL DEFAULT 0 CHECK (progress_percentage BETWEEN 0 AND 100),
    last_assessed        timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (student_id, skill_category_id)
);
CREATE INDEX student_progress_skill_idx ON student_progress (skill_category_id);

CREATE TABLE lesson_skill_progress (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lesson_id          bigint NOT NULL REFERENCES lessons (id) ON DELETE CASCADE,
    skill_category_id  bigint NOT NULL REFERENCES skill_categories (id) ON DELETE RESTRICT,
    skill_rating       smallint NOT NULL CHECK (skill_rating BETWEEN 1 AND 5),
    instructor_notes   text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (lesson_id, skill_category_id)
);
CREATE INDEX lesson_skill_progress_skill_idx ON lesson_skill_progress (skill_category_id);

-- The default syllabus, in teaching order; editable afterwards.
INSERT INTO skill_categories (category_name, description, skill_order) VALUES
    ('Cockpit drill and controls', 'Doors, seat, steering, seatbelt, mirrors; the controls and what they do', 1),
    ('Moving off and stopping', 'Safe, controlled starts and stops at the side of the road', 2),
    ('Mirrors and signals', 'Mirror-signal-manoeuvre routine, timing and use of signals', 3),
    ('Junctions', 'Emerging and turning at T-junctions and crossroads', 4),
    ('Roundabouts', 'Approach, lane choice, signalling and exit at roundabouts', 5),
    ('Meeting traffic and crossings', 'Passing parked cars, meeting oncoming traffic, pedestrian crossings', 6),
    ('Manoeuvres', 'Parallel parking, bay parking, pulling up on the right', 7),
    ('Emergency stop', 'Stopping quickly and under control', 8),
    ('Independent driving', 'Following signs or a sat-nav without step-by-step directions', 9),
    ('Dual carriageways', 'Joining, overtaking and leaving at higher speeds', 10),
    ('Night and adverse weather', 'Lights, visibility and stopping distances in poor conditions', 11),
    ('Test readiness', 'Mock test under examiner conditions', 12);

------------------------------------------------------------------------------------------
-- SCHEDULER
------------------------------------------------------------------------------------------

-- Each periodic tick is claimed once across all scheduler replicas: the first INSERT wins.
CREATE TABLE scheduler_ticks (
    job         text NOT NULL,
    tick_at     timestamptz NOT NULL,
    claimed_by  text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, tick_at)
);
