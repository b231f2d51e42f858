-- Dashlight: what the school's everyday flows need (lessons, packages, calendar, messages).
--
-- The tables themselves landed with the school schema; this adds the one column the calendar
-- invitations need and the indexes that keep each flow's hot query index-driven.

------------------------------------------------------------------------------------------
-- CALENDAR
------------------------------------------------------------------------------------------

-- The ORGANIZER of the event's iCalendar invitations: the school's MAIL_FROM mailbox
-- (`Name <addr>`) when the event was created. RFC 5546 wants one organizer for the whole life of
-- an event, so a cancellation or a move names the same one even if MAIL_FROM changed since.
-- NULL on events created before this column: their invitations carry no ORGANIZER.
ALTER TABLE calendar_events ADD COLUMN organizer text;

------------------------------------------------------------------------------------------
-- PACKAGES
------------------------------------------------------------------------------------------

-- A booking consumes a lesson of the student's oldest active purchase with lessons left:
-- one index range scan, whatever the student's history of used-up packages.
CREATE INDEX package_purchases_consumable_idx ON package_purchases (student_id, purchased_at, id)
    WHERE status = 'active' AND lessons_remaining > 0;

------------------------------------------------------------------------------------------
-- MESSAGES
------------------------------------------------------------------------------------------

-- A user's threads (GET /api/users/{id}/messages): every message they take part in, read or
-- not. The primary key leads with message_id and the unread index holds only unread rows.
CREATE INDEX message_participants_user_idx ON message_participants (user_id, message_id);
