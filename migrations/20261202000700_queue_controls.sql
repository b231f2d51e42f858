-- Dashlight: operating the queues (docs/operating.md).

-- A paused queue (no worker fetches from it) or channel (its sends wait as `pending`), one row
-- while paused. Written only by dashlight_core::controls; read by the queue driver's fetch and
-- by the delivery recorder when it claims sends. Survives restarts; shared by every worker.
CREATE TABLE queue_pauses (
    scope      text NOT NULL CHECK (scope IN ('queue', 'channel')),
    name       text NOT NULL,
    paused_by  text NOT NULL CHECK (length(paused_by) BETWEEN 1 AND 200),
    paused_at  timestamptz NOT NULL DEFAULT now(),
    reason     text CHECK (length(reason) <= 500),
    PRIMARY KEY (scope, name),
    CHECK (scope <> 'channel' OR name IN ('email', 'sms', 'push'))
);

-- Every pause and resume, who and when: the operators' record.
CREATE TABLE queue_control_events (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope   text NOT NULL CHECK (scope IN ('queue', 'channel')),
    name    text NOT NULL,
    action  text NOT NULL CHECK (action IN ('pause', 'resume')),
    actor   text NOT NULL,
    reason  text,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_control_events_at_idx ON queue_control_events (at DESC);

-- The shared send budget of each channel (a token bucket; SMS_RATE_LIMIT & co. give the rate,
-- each worker's limiter takes tokens from here in batches) and a provider's hold: a 429 with
-- Retry-After stops that channel's sends in every worker until `held_until`. Written only by
-- the worker's limiter (worker/src/limits.rs).
CREATE TABLE channel_budgets (
    channel      text PRIMARY KEY CHECK (channel IN ('email', 'sms', 'push')),
    tokens       double precision NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    refilled_at  timestamptz NOT NULL DEFAULT now(),
    held_until   timestamptz,
    held_reason  text
);
INSERT INTO channel_budgets (channel) VALUES ('email'), ('sms'), ('push');

-- Why a `pending` delivery waits (its channel is paused); cleared when it is claimed. Written
-- only by the delivery recorder.
ALTER TABLE notification_deliveries ADD COLUMN hold_reason text;
-- A channel's resume finds what its pause held through this index.
CREATE INDEX notification_deliveries_held_idx ON notification_deliveries (channel, notification_id)
    WHERE hold_reason IS NOT NULL AND status IN ('pending', 'retrying');

-- Takes up to `p_want` tokens of `p_channel`'s budget at `p_rate` per second (bucket of
-- `p_burst`), atomically for every worker: returns how many were granted and, when fewer, how
-- long until the next one (or until a provider's hold ends). `p_rate` NULL: no limit, only the
-- hold applies (read without a lock).
CREATE FUNCTION take_send_tokens(p_channel text, p_rate double precision, p_burst double precision, p_want integer,
                                 OUT granted integer, OUT wait_s double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t      timestamptz := clock_timestamp();
    b      channel_budgets;
    avail  double precision;
BEGIN
    IF p_rate IS NULL THEN
        SELECT * INTO b FROM channel_budgets WHERE channel = p_channel;
    ELSE
        SELECT * INTO b FROM channel_budgets WHERE channel = p_channel FOR UPDATE;
    END IF;
    IF b.held_until IS NOT NULL AND b.held_until > t THEN
        granted := 0;
        wait_s := extract(epoch FROM b.held_until - t);
        RETURN;
    END IF;
    IF p_rate IS NULL THEN
        granted := p_want;
        wait_s := 0;
        RETURN;
    END IF;
    avail := least(p_burst, b.tokens + p_rate * greatest(extract(epoch FROM t - b.refilled_at), 0));
    granted := least(floor(avail)::integer, p_want);
    UPDATE channel_budgets SET tokens = avail - granted, refilled_at = t WHERE channel = p_channel;
    wait_s := CASE WHEN granted < p_want THEN (1 - (avail - granted)) / p_rate ELSE 0 END;
END
$$;
