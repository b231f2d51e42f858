-- A person's data over time: erasure on request (see docs/data-retention.md).

-- One row per erased person: who asked, when, why, and the pseudonym that replaces their name
-- everywhere. Its presence is what makes a second erase a no-op.
CREATE TABLE person_erasures (
    user_id     bigint PRIMARY KEY REFERENCES users (id) ON DELETE RESTRICT,
    pseudonym   text NOT NULL UNIQUE CHECK (length(pseudonym) BETWEEN 1 AND 100),
    reason      text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    erased_by   text NOT NULL CHECK (length(erased_by) BETWEEN 1 AND 200),
    erased_at   timestamptz NOT NULL DEFAULT now(),
    -- Rows changed per table, for the record (counts only, nothing personal).
    summary     jsonb NOT NULL DEFAULT '{}'
);

-- An erased person's addresses and numbers stay suppressed, but only as keyed hashes
-- (`hmac-sha256:<64 hex digits>`, see core/src/suppressions.rs), under the reason `erased`.
ALTER TABLE suppressions DROP CONSTRAINT suppressions_reason_check;
ALTER TABLE suppressions ADD CONSTRAINT suppressions_reason_check CHECK (reason IN ('bounced', 'opted_out', 'erased'));
ALTER TABLE suppressions ADD CONSTRAINT suppressions_erased_hashed_check
    CHECK ((reason = 'erased') = (target ~ '^hmac-sha256:[0-9a-f]{64}$'));
-- The planner hashes its targets only when there is an erased entry at all.
CREATE INDEX suppressions_erased_idx ON suppressions (id) WHERE reason = 'erased';

-- HMAC-SHA256 (RFC 2104) split so that a query pays the XOR once: `hmac_sha256_pad(key, 54)` is
-- the inner padded key, `hmac_sha256_pad(key, 92)` the outer one; then
-- HMAC(key, m) = sha256(outer || sha256(inner || m)), with the built-in sha256(). Lets the
-- planner's suppression check hash the addresses it is about to send to in the same statement
-- that looks them up, with the key that never leaves the database (`signing_keys`).
CREATE FUNCTION hmac_sha256_pad(key bytea, pad integer) RETURNS bytea AS $$
DECLARE
    k bytea := CASE WHEN length(key) > 64 THEN sha256(key) ELSE key END;
    out bytea := '\x'::bytea;
BEGIN
    k := k || decode(repeat('00', 64 - length(k)), 'hex');
    out := k;
    FOR i IN 0..63 LOOP
        out := set_byte(out, i, get_byte(k, i) # pad);
    END LOOP;
    RETURN out;
END
$$ LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE;

-- An erased person's invoices are kept, their PDF drawn again with the pseudonym: the erasure
-- sets this, the invoice task re-renders the file and clears it.
ALTER TABLE invoices ADD COLUMN pdf_redraw_requested_at timestamptz;
CREATE INDEX invoices_pdf_redraw_idx ON invoices (id) WHERE pdf_redraw_requested_at IS NOT NULL;

-- `text` with each needle (matched case-insensitively, literally) replaced by `replacement`.
-- Used by the erasure to take a person's name, address, number and link secrets out of free
-- text written about them (notification bodies, calendar titles, other people's messages).
CREATE FUNCTION erase_needles(t text, needles text[], replacement text) RETURNS text AS $$
    SELECT CASE WHEN t IS NULL THEN NULL ELSE (
        WITH RECURSIVE r(i, s) AS (
            SELECT 0, t
            UNION ALL
            SELECT r.i + 1,
                   CASE WHEN coalesce(needles[r.i + 1], '') = '' THEN r.s
                   ELSE regexp_replace(
                       r.s,
                       -- literal match; whole words where the needle starts or ends with a word character
                       CASE WHEN needles[r.i + 1] ~ '^\w' THEN '\y' ELSE '' END
                       || regexp_replace(needles[r.i + 1], '([.\\+*?\[^\]$(){}=!<>|:\-#/&])', '\\\1', 'g')
                       || CASE WHEN needles[r.i + 1] ~ '\w$' THEN '\y' ELSE '' END,
                       replacement, 'gi') END
            FROM r WHERE r.i < coalesce(cardinality(needles), 0))
        SELECT s FROM r ORDER BY i DESC LIMIT 1
    ) END;
$$ LANGUAGE sql IMMUTABLE PARALLEL SAFE;

-- The same inside JSON: needles are matched in their JSON-escaped form, so the result is
-- still valid JSON.
CREATE FUNCTION erase_needles_jsonb(j jsonb, needles text[], replacement text) RETURNS jsonb AS $$
    SELECT CASE WHEN j IS NULL THEN NULL ELSE erase_needles(
        j::text,
        ARRAY(SELECT substr(to_json(n)::text, 2, length(to_json(n)::text) - 2) FROM unnest(needles) AS n),
        substr(to_json(replacement)::text, 2, length(to_json(replacement)::text) - 2))::jsonb END;
$$ LANGUAGE sql IMMUTABLE PARALLEL SAFE;
