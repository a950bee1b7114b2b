-- 040_channel_watermarks.sql — the contiguous watermark of each channel, the ids known absent,
-- and the hole finder.
--
-- The highest stored id (channel_cursors.last_message_id) is no safe place to resume a backfill:
-- a live post stored before a hole is filled moves it past the hole, and so does a crash in the
-- middle of a backfill, and the hole is never filled. The watermark is what is safe:
--
--   every message id of the channel in (floor_id, watermark] is stored (message_keys) or known
--   absent (absent_messages: deleted, a service message, an id Telegram does not return).
--
-- Ids at or below floor_id are older than the backfill depth configured when the channel was
-- first backfilled (TGSTACK_GATEWAY_BACKFILL_DEPTH) and are never fetched.
--
-- Only the backfill moves the watermark, through advance_channel_watermark, which computes it
-- from what is committed when it runs (in one statement, so one transaction): it can never
-- cover a row that is not committed, whenever the gateway is killed. It never moves back.
-- An id may be recorded absent only if it is not above the newest id Telegram has shown for
-- the channel (ids only grow, so such an id will never be a post; an id above it may be the next
-- post's): the caller passes that newest id and absent ids above it are refused. Absent ids
-- the watermark covers are pruned: the watermark says the same.

CREATE TABLE IF NOT EXISTS telegram_gateway.channel_watermarks (
    channel_id bigint      NOT NULL
        CONSTRAINT channel_watermarks_channel_id_fkey
        REFERENCES telegram_gateway.channels (channel_id) ON DELETE CASCADE,
    floor_id   bigint      NOT NULL
        CONSTRAINT channel_watermarks_floor_id_check CHECK (floor_id >= 0),
    watermark  bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channel_watermarks_pkey PRIMARY KEY (channel_id),
    CONSTRAINT channel_watermarks_watermark_check CHECK (watermark >= floor_id)
);

COMMENT ON TABLE telegram_gateway.channel_watermarks IS
    'Per channel: every message id in (floor_id, watermark] is stored or known absent. '
    'Advanced only by the gateway''s backfill (advance_channel_watermark), never moved back.';

CREATE TABLE IF NOT EXISTS telegram_gateway.absent_messages (
    channel_id  bigint      NOT NULL
        CONSTRAINT absent_messages_channel_id_fkey
        REFERENCES telegram_gateway.channels (channel_id) ON DELETE CASCADE,
    message_id  bigint      NOT NULL
        CONSTRAINT absent_messages_message_id_check CHECK (message_id BETWEEN 1 AND 2147483647),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT absent_messages_pkey PRIMARY KEY (channel_id, message_id)
);

COMMENT ON TABLE telegram_gateway.absent_messages IS
    'Message ids above a channel''s watermark that Telegram does not return as a post (deleted, '
    'service messages, ids it skips); pruned once the watermark covers them.';

-- The channel's watermark, created at p_floor when it has none (and the channel registered).
-- Returns the floor, the watermark and whether it was created now; a second call with another
-- floor changes nothing.
CREATE OR REPLACE FUNCTION telegram_gateway.init_channel_watermark(
    p_channel_id bigint, p_floor bigint)
RETURNS TABLE (floor_id bigint, watermark bigint, created boolean)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_caller CONSTANT text := 'init_channel_watermark';
BEGIN
    PERFORM telegram_gateway.assert_channel_id(p_channel_id, v_caller);
    IF p_floor IS NULL OR p_floor < 0 THEN
        RAISE EXCEPTION '%: the floor must be an id >= 0, got %', v_caller,
            coalesce(p_floor::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO telegram_gateway.channels (channel_id) VALUES (p_channel_id)
    ON CONFLICT (channel_id) DO NOTHING;
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO telegram_gateway.channel_watermarks AS w (channel_id, floor_id, watermark)
        VALUES (p_channel_id, p_floor, p_floor)
        ON CONFLICT (channel_id) DO NOTHING
        RETURNING w.floor_id, w.watermark
    )
    SELECT i.floor_id, i.watermark, true FROM inserted i
    UNION ALL
    SELECT w.floor_id, w.watermark, false
      FROM telegram_gateway.channel_watermarks w
     WHERE w.channel_id = p_channel_id AND NOT EXISTS (SELECT 1 FROM inserted);
END
$$;

-- Record p_absent as known absent and move the watermark up over every id, from the current
-- watermark on, that is stored or known absent, without passing p_top (the newest id Telegram
-- has shown for the channel). Returns the watermark. Absent ids above p_top are refused;
-- those the watermark already covers are ignored. Calling it again changes nothing.
--
-- The new watermark is the end of the run of consecutive known ids right above the current
-- one: over the known ids in order, id - dense_rank() equals the current watermark exactly
-- along that run (it only grows, by the size of each gap).
CREATE OR REPLACE FUNCTION telegram_gateway.advance_channel_watermark(
    p_channel_id bigint, p_top bigint, p_absent bigint[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller CONSTANT text := 'advance_channel_watermark';
    v_watermark bigint;
    v_new       bigint;
    v_bad       bigint;
BEGIN
    PERFORM telegram_gateway.assert_channel_id(p_channel_id, v_caller);
    IF p_top IS NULL OR p_top < 0 THEN
        RAISE EXCEPTION '%: the newest id must be >= 0, got %', v_caller,
            coalesce(p_top::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT a INTO v_bad FROM unnest(coalesce(p_absent, '{}')) a
     WHERE a IS NULL OR a < 1 OR a > p_top LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: absent id % is not between 1 and the newest id %', v_caller,
            coalesce(v_bad::text, 'NULL'), p_top
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'An id above the newest one Telegram has shown may still be posted.';
    END IF;

    SELECT w.watermark INTO v_watermark
      FROM telegram_gateway.channel_watermarks w
     WHERE w.channel_id = p_channel_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: channel % has no watermark yet (init_channel_watermark)', v_caller,
            p_channel_id
            USING ERRCODE = 'no_data_found';
    END IF;

    INSERT INTO telegram_gateway.absent_messages (channel_id, message_id)
    SELECT DISTINCT p_channel_id, a FROM unnest(p_absent) a
     WHERE a > v_watermark
     ORDER BY 2
    ON CONFLICT (channel_id, message_id) DO NOTHING;

    SELECT coalesce(max(r.id), v_watermark) INTO v_new
      FROM (SELECT known.id, dense_rank() OVER (ORDER BY known.id) AS rank
              FROM (SELECT k.message_id AS id
                      FROM telegram_gateway.message_keys k
                     WHERE k.channel_id = p_channel_id
                       AND k.message_id > v_watermark AND k.message_id <= p_top
                    UNION ALL
                    SELECT a.message_id
                      FROM telegram_gateway.absent_messages a
                     WHERE a.channel_id = p_channel_id
                       AND a.message_id > v_watermark AND a.message_id <= p_top) known) r
     WHERE r.id = v_watermark + r.rank;

    IF v_new > v_watermark THEN
        UPDATE telegram_gateway.channel_watermarks
           SET watermark = v_new, updated_at = now()
         WHERE channel_id = p_channel_id;
        DELETE FROM telegram_gateway.absent_messages
         WHERE channel_id = p_channel_id AND message_id <= v_new;
    END IF;
    RETURN v_new;
END
$$;

-- The holes of a channel up to p_top (the newest id Telegram has shown): the ranges of ids above
-- its watermark (0 without one) that are neither stored nor known absent, oldest first, at most
-- p_limit of them. Before the first stored post, the hole runs down to the watermark, which
-- starts at the floor.
CREATE OR REPLACE FUNCTION telegram_gateway.find_message_holes(
    p_channel_id bigint, p_top bigint, p_limit integer DEFAULT 1000)
RETURNS TABLE (first_id bigint, last_id bigint)
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
DECLARE
    v_caller CONSTANT text := 'find_message_holes';
    v_watermark bigint;
BEGIN
    PERFORM telegram_gateway.assert_channel_id(p_channel_id, v_caller);
    PERFORM telegram_gateway.assert_limit(p_limit, v_caller);
    IF p_top IS NULL OR p_top < 0 THEN
        RAISE EXCEPTION '%: the newest id must be >= 0, got %', v_caller,
            coalesce(p_top::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT coalesce(max(w.watermark), 0) INTO v_watermark
      FROM telegram_gateway.channel_watermarks w
     WHERE w.channel_id = p_channel_id;
    IF p_top <= v_watermark THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH known AS (
        SELECT v_watermark AS id
        UNION ALL
        SELECT k.message_id
          FROM telegram_gateway.message_keys k
         WHERE k.channel_id = p_channel_id
           AND k.message_id > v_watermark AND k.message_id <= p_top
        UNION ALL
        SELECT a.message_id
          FROM telegram_gateway.absent_messages a
         WHERE a.channel_id = p_channel_id
           AND a.message_id > v_watermark AND a.message_id <= p_top
        UNION ALL
        SELECT p_top + 1
    ), edges AS (
        SELECT known.id, lead(known.id) OVER (ORDER BY known.id) AS next_id FROM known
    )
    SELECT e.id + 1, e.next_id - 1
      FROM edges e
     WHERE e.next_id > e.id + 1
     ORDER BY e.id
     LIMIT p_limit;
END
$$;
