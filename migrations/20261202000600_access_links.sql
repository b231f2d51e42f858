-- Issue 16: a page of one's own. Every user gets a secret link to their page (`/me/{token}`),
-- like the calendar feed's secret: random (two v4 UUIDs, 244 random bits, as 64 hex digits),
-- rotatable (core::access), compared in constant time after the lookup. It is kept as it is
-- (not hashed) because confirmation and reminder emails carry the link long after it was made,
-- exactly as the calendar feed's address is shown again; rotating it is the remedy for a leak.
-- The volatile default gives every existing user their own token when the column is added.
ALTER TABLE users ADD COLUMN access_token text NOT NULL UNIQUE
    DEFAULT replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')
    CHECK (length(access_token) = 64);
