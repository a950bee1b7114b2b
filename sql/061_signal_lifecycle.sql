-- 061_signal_lifecycle.sql — follow-ups linked to their signal, and the status they add up to.
--
-- apply_processing_results (032) gains two kinds of result besides a signal: an `event` (a
-- follow-up post: target_hit, stop_moved, stopped, closed, cancelled) and a `review` (a post
-- that looks like a signal but cannot be completed). In one transaction, fenced by the claim as
-- before, it now:
--
--   1. locks the messages this consumer holds, in key order (unchanged);
--   2. stores or retires their reviews and marks them: rows of these posts only;
--   3. takes a transaction advisory lock per channel whose signals or events the batch writes,
--      in channel order. Linking reads other posts' rows (the most recent open signal of an
--      asset, the post a reply points to) and re-derives signals other posts made, so two
--      pollers must not interleave on one channel: each then sees the other's committed rows.
--      Every writer of signals and events takes these locks before writing either, and none
--      takes a message lock after them, so they add no deadlock to the message locks;
--   4. stores or retires the signals of the batch;
--   5. stores or retires the follow-ups, in post order, each linked by link_signal_event(): by
--      the post it replies to (a signal, or another follow-up of one), else by channel and
--      asset to the most recent signal still open at the follow-up's time within
--      p_link_window; the replies waiting for a post stored now are linked after it;
--   6. re-links the follow-ups a stored or retired signal concerns (a follow-up processed
--      before its signal waits unlinked, or linked to an older signal by asset, until then);
--   7. re-derives every signal whose events changed (derive_signal_status).
--
-- A batch of chatter only (no signal or event, nothing active at its keys) skips 3, 5, 6 and
-- 7; its cost is the two key look-ups of step 3's test.
--
-- Replays are safe: every write is an upsert on (channel_id, message_id) that changes nothing
-- when nothing differs, and the derivation writes a signal only when its result differs.

DROP FUNCTION IF EXISTS tp_capital.apply_processing_results(text, jsonb);

DO $$
BEGIN
    IF to_regtype('tp_capital.applied_post') IS NULL THEN
        CREATE TYPE tp_capital.applied_post AS (
            channel_id      bigint,
            message_id      bigint,
            telegram_date   timestamptz,
            state           text,
            error           text,
            signal          jsonb,
            event           jsonb,
            review          jsonb,
            reply_to_msg_id bigint,
            raw_text        text
        );
    END IF;
END
$$;

-- The advisory lock key of a channel's signal lifecycle.
CREATE OR REPLACE FUNCTION tp_capital.signal_lock_key(p_channel_id bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT hashtextextended('tp_capital.signal_lifecycle/' || p_channel_id, 0) $$;

-- Lock the lifecycle of these channels for the rest of the transaction, in channel order.
CREATE OR REPLACE FUNCTION tp_capital.lock_signal_channels(p_channel_ids bigint[])
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_channel bigint;
BEGIN
    FOR v_channel IN SELECT DISTINCT c FROM unnest(p_channel_ids) AS c WHERE c IS NOT NULL ORDER BY c
    LOOP
        PERFORM pg_advisory_xact_lock(tp_capital.signal_lock_key(v_channel));
    END LOOP;
END
$$;

-- Whether a follow-up ends its signal: stopped, closed, cancelled or the final target reached.
CREATE OR REPLACE FUNCTION tp_capital.ends_signal(p_kind text, p_target text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(p_kind IN ('stopped', 'closed', 'cancelled')
                    OR (p_kind = 'target_hit' AND p_target = 'final'), false)
$$;

-- Which signal a follow-up belongs to, and how it was found (no row: none yet).
CREATE OR REPLACE FUNCTION tp_capital.link_signal_event(
    p_channel_id bigint, p_message_id bigint, p_telegram_date timestamptz, p_asset text,
    p_reply_to_msg_id bigint, p_link_window interval)
RETURNS TABLE (signal_id bigint, linked_by text)
LANGUAGE sql STABLE
AS $$
    -- a reply to a signal's post stays with it, even once it is retired
    (SELECT s.id, 'reply'
       FROM tp_capital.signals s
      WHERE p_reply_to_msg_id IS NOT NULL
        AND s.channel_id = p_channel_id AND s.message_id = p_reply_to_msg_id)
    UNION ALL
    -- a reply to another follow-up ("stop na entrada" under "alvo 1 atingido")
    (SELECT e.signal_id, 'reply'
       FROM tp_capital.signal_events e
      WHERE p_reply_to_msg_id IS NOT NULL
        AND e.channel_id = p_channel_id AND e.message_id = p_reply_to_msg_id
        AND e.retired_at IS NULL AND e.signal_id IS NOT NULL)
    UNION ALL
    (SELECT s.id, 'asset'
       FROM tp_capital.signals s
      WHERE p_asset IS NOT NULL
        AND s.channel_id = p_channel_id AND s.asset = p_asset AND s.retired_at IS NULL
        AND NOT EXISTS (SELECT 1 FROM tp_capital.signals r
                         WHERE p_reply_to_msg_id IS NOT NULL AND r.channel_id = p_channel_id
                           AND r.message_id = p_reply_to_msg_id)
        AND s.telegram_date >= p_telegram_date - p_link_window
        AND (s.telegram_date, s.message_id) < (p_telegram_date, p_message_id)
        -- open at the follow-up's time: no earlier follow-up ended it
        AND NOT EXISTS (
              SELECT 1 FROM tp_capital.signal_events t
               WHERE t.signal_id = s.id AND t.retired_at IS NULL
                 AND tp_capital.ends_signal(t.kind, t.target)
                 AND (t.telegram_date, t.message_id) < (p_telegram_date, p_message_id))
      ORDER BY s.telegram_date DESC, s.message_id DESC
      LIMIT 1)
    LIMIT 1
$$;

-- A stop level of a follow-up as a price of its signal: entry is the middle of the entry range
-- (without the 16 decimal places numeric division gives: 36.85, not 36.8500000000000000).
CREATE OR REPLACE FUNCTION tp_capital.resolve_stop(
    p_stop numeric, p_stop_ref text, p_signal tp_capital.signals)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN p_stop IS NOT NULL THEN p_stop
        WHEN p_stop_ref = 'entry' THEN trim_scale((p_signal.buy_min + p_signal.buy_max) / 2)
        WHEN p_stop_ref = 'target_1' THEN p_signal.target_1
        WHEN p_stop_ref = 'target_2' THEN p_signal.target_2
        WHEN p_stop_ref = 'target_final' THEN p_signal.target_final
    END
$$;

-- Re-derive a signal's status, current stop and result from its active follow-ups in post
-- order; writes the signal only when something differs. The first follow-up that ends the
-- signal (stopped, closed, cancelled, the final target) ends the derivation: later ones are
-- kept but change nothing. A target reached only raises the status (a late "alvo 1" after
-- "alvo 2" leaves target_2); a target_hit that names no target is the next one.
CREATE OR REPLACE FUNCTION tp_capital.derive_signal_status(p_signal_id bigint)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_signal  tp_capital.signals;
    v_event   record;
    v_status  text := 'open';
    v_stop    numeric;
    v_result  text;
    v_changed timestamptz;
    v_level   integer := 0;
    v_target  integer;
BEGIN
    SELECT * INTO v_signal FROM tp_capital.signals WHERE id = p_signal_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    v_stop := v_signal.stop;
    FOR v_event IN
        SELECT e.kind, e.target, e.stop, e.stop_ref, e.result, e.telegram_date
          FROM tp_capital.signal_events e
         WHERE e.signal_id = p_signal_id AND e.retired_at IS NULL
         ORDER BY e.telegram_date, e.message_id
    LOOP
        v_changed := v_event.telegram_date;
        v_stop := coalesce(tp_capital.resolve_stop(v_event.stop, v_event.stop_ref, v_signal),
                           v_stop);
        CASE v_event.kind
            WHEN 'target_hit' THEN
                IF v_event.target = 'final' THEN
                    v_status := 'closed';
                    v_result := coalesce(v_event.result, 'gain');
                    EXIT;
                END IF;
                v_target := coalesce(v_event.target::integer, v_level + 1);
                IF v_target > v_level THEN
                    v_level := v_target;
                    v_status := 'target_' || v_target;
                END IF;
            WHEN 'stop_moved' THEN
                NULL;
            WHEN 'stopped' THEN
                v_status := 'stopped';
                v_result := v_event.result;
                EXIT;
            WHEN 'closed' THEN
                v_status := 'closed';
                v_result := v_event.result;
                EXIT;
            WHEN 'cancelled' THEN
                v_status := 'cancelled';
                v_result := NULL;
                EXIT;
        END CASE;
    END LOOP;
    UPDATE tp_capital.signals s
       SET status = v_status, current_stop = v_stop, result = v_result,
           status_changed_at = v_changed
     WHERE s.id = p_signal_id
       AND (s.status, s.current_stop, s.result, s.status_changed_at)
           IS DISTINCT FROM (v_status, v_stop, v_result, v_changed);
    RETURN FOUND;
END
$$;

-- Re-link the follow-ups replying to a post whose signal or follow-up was just stored or
-- re-linked (a reply processed before the post it answers waits until then); a reply chain is
-- followed down, each reply once its parent has its signal. Returns the signals changed.
CREATE OR REPLACE FUNCTION tp_capital.relink_replies(
    p_channel_id bigint, p_message_id bigint, p_link_window interval)
RETURNS bigint[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_event   bigint;
    v_touched bigint[] := '{}';
BEGIN
    FOR v_event IN
        SELECT e.id FROM tp_capital.signal_events e
         WHERE e.channel_id = p_channel_id AND e.reply_to_msg_id = p_message_id
           AND e.retired_at IS NULL
         ORDER BY e.telegram_date, e.message_id
    LOOP
        v_touched := v_touched || tp_capital.relink_signal_event(v_event, p_link_window);
    END LOOP;
    RETURN v_touched;
END
$$;

-- Link, re-link or unlink one follow-up; returns the signals whose events changed.
CREATE OR REPLACE FUNCTION tp_capital.relink_signal_event(p_event_id bigint, p_link_window interval)
RETURNS bigint[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_event  tp_capital.signal_events;
    v_signal bigint;
    v_by     text;
BEGIN
    SELECT * INTO v_event FROM tp_capital.signal_events WHERE id = p_event_id;
    IF NOT FOUND OR v_event.retired_at IS NOT NULL THEN
        RETURN '{}';
    END IF;
    SELECT l.signal_id, l.linked_by INTO v_signal, v_by
      FROM tp_capital.link_signal_event(v_event.channel_id, v_event.message_id,
                                        v_event.telegram_date, v_event.asset,
                                        v_event.reply_to_msg_id, p_link_window) AS l;
    IF v_signal IS NOT DISTINCT FROM v_event.signal_id
       AND v_by IS NOT DISTINCT FROM v_event.linked_by THEN
        RETURN '{}';
    END IF;
    UPDATE tp_capital.signal_events SET signal_id = v_signal, linked_by = v_by
     WHERE id = p_event_id;
    RETURN array_remove(ARRAY[v_event.signal_id, v_signal], NULL)
        || tp_capital.relink_replies(v_event.channel_id, v_event.message_id, p_link_window);
END
$$;

-- Re-link the follow-ups a signal's arrival, edit or retirement concerns: those replying to
-- its post, and those of its channel and asset posted within the window after it that are
-- not linked by a reply; plus those linked to it by an asset it no longer has. Post order, so
-- each sees the ends the earlier ones made. Returns the signals whose events changed.
CREATE OR REPLACE FUNCTION tp_capital.relink_around_signal(p_signal_id bigint, p_link_window interval)
RETURNS bigint[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_signal  tp_capital.signals;
    v_event   bigint;
    v_touched bigint[] := '{}';
BEGIN
    SELECT * INTO v_signal FROM tp_capital.signals WHERE id = p_signal_id;
    IF NOT FOUND THEN
        RETURN '{}';
    END IF;
    FOR v_event IN
        SELECT e.id
          FROM tp_capital.signal_events e
         WHERE e.channel_id = v_signal.channel_id AND e.retired_at IS NULL
           AND ((e.reply_to_msg_id = v_signal.message_id
                 AND e.linked_by IS DISTINCT FROM 'reply')
                OR (e.signal_id = p_signal_id)
                OR (e.asset = v_signal.asset AND e.linked_by IS DISTINCT FROM 'reply'
                    AND e.telegram_date >= v_signal.telegram_date
                    AND e.telegram_date <= v_signal.telegram_date + p_link_window))
         ORDER BY e.telegram_date, e.message_id
    LOOP
        v_touched := v_touched || tp_capital.relink_signal_event(v_event, p_link_window);
    END LOOP;
    RETURN v_touched;
END
$$;

-- relink_around_signal for several signals, one after the other in id order.
CREATE OR REPLACE FUNCTION tp_capital.relink_around_signals(p_signal_ids bigint[], p_link_window interval)
RETURNS bigint[]
LANGUAGE plpgsql
AS $$
DECLARE
    v_signal  bigint;
    v_touched bigint[] := '{}';
BEGIN
    FOR v_signal IN SELECT DISTINCT s FROM unnest(p_signal_ids) AS s WHERE s IS NOT NULL ORDER BY s
    LOOP
        v_touched := v_touched || tp_capital.relink_around_signal(v_signal, p_link_window);
    END LOOP;
    RETURN v_touched;
END
$$;

CREATE OR REPLACE FUNCTION tp_capital.apply_processing_results(
    p_consumer text, p_results jsonb, p_link_window interval DEFAULT interval '14 days')
RETURNS TABLE (channel_id bigint, message_id bigint, applied boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller  CONSTANT text := 'apply_processing_results';
    v_owned   tp_capital.applied_post[];
    v_post    tp_capital.applied_post;
    v_stored  bigint[];
    v_retired bigint[];
    v_touched bigint[] := '{}';
    v_old     tp_capital.signal_events;
    v_signal  bigint;
    v_by      text;
    v_id      bigint;
    v_marked  integer;
BEGIN
    IF p_consumer IS NULL OR p_consumer = '' THEN
        RAISE EXCEPTION '%: consumer must be named', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_results IS NULL OR jsonb_typeof(p_results) <> 'array' THEN
        RAISE EXCEPTION '%: results must be a JSON array', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_link_window IS NULL OR p_link_window <= interval '0' THEN
        RAISE EXCEPTION '%: the link window must be positive', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_results) AS e(item)
                WHERE jsonb_typeof(e.item) <> 'object'
                   OR e.item ->> 'state' IS NULL
                   OR e.item ->> 'state' NOT IN ('processed', 'ignored', 'failed')) THEN
        RAISE EXCEPTION '%: every result needs state processed, ignored or failed', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. The fence: the messages this consumer still holds, locked in key order.
    WITH results AS (
        SELECT r.channel_id, r.message_id, r.state, r.error,
               CASE WHEN jsonb_typeof(r.signal) = 'object' THEN r.signal END AS signal,
               CASE WHEN jsonb_typeof(r.event) = 'object' THEN r.event END AS event,
               CASE WHEN jsonb_typeof(r.review) = 'object' THEN r.review END AS review
          FROM jsonb_array_elements(p_results) AS e(item),
               jsonb_to_record(e.item)
               AS r(channel_id bigint, message_id bigint, state text, error text,
                    signal jsonb, event jsonb, review jsonb)
    ), held AS MATERIALIZED (
        -- One key look-up per result, in key order (the lock order): a nested loop whatever
        -- the planner guesses of a just-claimed batch, which statistics never see.
        SELECT h.channel_id, h.message_id, h.telegram_date, h.raw_text, h.reply_to_msg_id
          FROM (SELECT DISTINCT r.channel_id, r.message_id FROM results r
                 ORDER BY r.channel_id, r.message_id) AS wanted
          CROSS JOIN LATERAL (
                SELECT m.channel_id, m.message_id, m.telegram_date, m.reply_to_msg_id,
                       coalesce(m.text, m.caption) AS raw_text
                  FROM telegram_gateway.message_keys k
                  JOIN telegram_gateway.messages m
                    ON m.channel_id = k.channel_id AND m.message_id = k.message_id
                   AND m.telegram_date = k.telegram_date
                 WHERE k.channel_id = wanted.channel_id AND k.message_id = wanted.message_id
                   AND m.processing_state = 'processing' AND m.claimed_by = p_consumer
                   FOR UPDATE OF m) AS h
    )
    SELECT array_agg(ROW(r.channel_id, r.message_id, h.telegram_date, r.state, r.error,
                         r.signal, r.event, r.review, h.reply_to_msg_id, h.raw_text
                        )::tp_capital.applied_post
                     ORDER BY h.telegram_date, r.channel_id, r.message_id)
      INTO v_owned
      FROM results r
      JOIN held h ON h.channel_id = r.channel_id AND h.message_id = r.message_id;

    IF v_owned IS NULL THEN
        RETURN QUERY
        SELECT (e.item ->> 'channel_id')::bigint, (e.item ->> 'message_id')::bigint, false
          FROM jsonb_array_elements(p_results) WITH ORDINALITY AS e(item, ord)
         ORDER BY e.ord;
        RETURN;
    END IF;

    -- 2. Reviews and the marks: rows of the posts this consumer holds, nobody else's.
    WITH owned AS (
        SELECT * FROM unnest(v_owned)
    ), stored_reviews AS (
        INSERT INTO tp_capital.signal_reviews AS v (
            channel_id, message_id, telegram_date, asset, missing, raw_text, processed_by)
        SELECT o.channel_id, o.message_id, o.telegram_date,
               nullif(o.review ->> 'asset', ''),
               coalesce(ARRAY(SELECT jsonb_array_elements_text(
                                  CASE WHEN jsonb_typeof(o.review -> 'missing') = 'array'
                                       THEN o.review -> 'missing' ELSE '[]' END)), '{}'),
               coalesce(o.raw_text, ''), p_consumer
          FROM owned o
         WHERE o.review IS NOT NULL AND o.state = 'processed'
        ON CONFLICT ON CONSTRAINT signal_reviews_source_message_key DO UPDATE
           SET asset = EXCLUDED.asset, missing = EXCLUDED.missing,
               raw_text = EXCLUDED.raw_text, processed_by = EXCLUDED.processed_by,
               retired_at = NULL
         WHERE (v.asset, v.missing, v.raw_text, v.retired_at)
               IS DISTINCT FROM (EXCLUDED.asset, EXCLUDED.missing, EXCLUDED.raw_text,
                                 NULL::timestamptz)
        RETURNING 1
    ), retired_reviews AS (
        UPDATE tp_capital.signal_reviews v
           SET retired_at = now()
          FROM owned o
         WHERE v.channel_id = o.channel_id AND v.message_id = o.message_id
           AND v.retired_at IS NULL
           AND o.review IS NULL AND o.state IN ('processed', 'ignored')
        RETURNING 1
    ), marked AS (
        UPDATE telegram_gateway.messages m
           SET processing_state = o.state,
               processed_at = now(),
               -- marks counts how often a consumer finished this message: 1 unless edited
               metadata = m.metadata || jsonb_build_object(
                   'processed_by', p_consumer,
                   'marks', coalesce((m.metadata ->> 'marks')::integer, 0) + 1),
               last_error = CASE WHEN o.state = 'failed' THEN o.error ELSE m.last_error END,
               claimed_by = NULL,
               claim_expires_at = NULL
          FROM owned o
         WHERE m.channel_id = o.channel_id AND m.message_id = o.message_id
           AND m.telegram_date = o.telegram_date
        RETURNING 1
    )
    SELECT count(*) INTO v_marked FROM marked;

    -- 3. The lifecycle locks of the channels whose signals or events this batch writes.
    PERFORM tp_capital.lock_signal_channels(ARRAY(
        SELECT o.channel_id FROM unnest(v_owned) AS o
         WHERE o.state <> 'failed'
           AND (o.signal IS NOT NULL OR o.event IS NOT NULL
                OR EXISTS (SELECT 1 FROM tp_capital.signals s
                            WHERE s.channel_id = o.channel_id AND s.message_id = o.message_id
                              AND s.retired_at IS NULL)
                OR EXISTS (SELECT 1 FROM tp_capital.signal_events e
                            WHERE e.channel_id = o.channel_id AND e.message_id = o.message_id
                              AND e.retired_at IS NULL))));

    -- 4. Signals.
    WITH owned AS (
        SELECT * FROM unnest(v_owned)
    ), stored_signals AS (
        INSERT INTO tp_capital.signals AS s (
            channel_id, message_id, telegram_date, asset, signal_type, buy_min, buy_max,
            target_1, target_2, target_final, stop, raw_text, processed_by, current_stop)
        SELECT o.channel_id, o.message_id, o.telegram_date,
               o.signal ->> 'asset', o.signal ->> 'signal_type',
               (o.signal ->> 'buy_min')::numeric, (o.signal ->> 'buy_max')::numeric,
               (o.signal ->> 'target_1')::numeric, (o.signal ->> 'target_2')::numeric,
               (o.signal ->> 'target_final')::numeric, (o.signal ->> 'stop')::numeric,
               coalesce(o.raw_text, ''), p_consumer, (o.signal ->> 'stop')::numeric
          FROM owned o
         WHERE o.signal IS NOT NULL AND o.state = 'processed'
        ON CONFLICT ON CONSTRAINT signals_source_message_key DO UPDATE
           SET asset = EXCLUDED.asset, signal_type = EXCLUDED.signal_type,
               buy_min = EXCLUDED.buy_min, buy_max = EXCLUDED.buy_max,
               target_1 = EXCLUDED.target_1, target_2 = EXCLUDED.target_2,
               target_final = EXCLUDED.target_final, stop = EXCLUDED.stop,
               raw_text = EXCLUDED.raw_text, processed_by = EXCLUDED.processed_by,
               retired_at = NULL
         WHERE (s.asset, s.signal_type, s.buy_min, s.buy_max, s.target_1, s.target_2,
                s.target_final, s.stop, s.raw_text, s.retired_at)
               IS DISTINCT FROM
               (EXCLUDED.asset, EXCLUDED.signal_type, EXCLUDED.buy_min, EXCLUDED.buy_max,
                EXCLUDED.target_1, EXCLUDED.target_2, EXCLUDED.target_final, EXCLUDED.stop,
                EXCLUDED.raw_text, NULL::timestamptz)
        RETURNING s.id
    ), retired_signals AS (
        -- A post edited into something that is not a signal retires the signal it had.
        UPDATE tp_capital.signals s
           SET retired_at = now()
         WHERE s.id = ANY (ARRAY(
                SELECT active.id
                  FROM owned o
                 CROSS JOIN LATERAL (
                        -- LIMIT keeps this a look-up per result (the key is unique anyway)
                        SELECT a.id FROM tp_capital.signals a
                         WHERE a.channel_id = o.channel_id AND a.message_id = o.message_id
                           AND a.retired_at IS NULL
                         LIMIT 1) AS active
                 WHERE o.signal IS NULL AND o.state IN ('processed', 'ignored')))
        RETURNING s.id
    )
    SELECT ARRAY(SELECT id FROM stored_signals), ARRAY(SELECT id FROM retired_signals)
      INTO v_stored, v_retired;

    -- 5. Follow-ups, in post order: each is linked seeing the signals of step 4 and the
    -- follow-ups before it.
    FOR v_post IN
        SELECT * FROM unnest(v_owned) AS o
         WHERE o.state IN ('processed', 'ignored')
           AND (o.event IS NOT NULL
                OR EXISTS (SELECT 1 FROM tp_capital.signal_events e
                            WHERE e.channel_id = o.channel_id AND e.message_id = o.message_id
                              AND e.retired_at IS NULL))
         ORDER BY o.telegram_date, o.channel_id, o.message_id
    LOOP
        SELECT * INTO v_old FROM tp_capital.signal_events e
         WHERE e.channel_id = v_post.channel_id AND e.message_id = v_post.message_id;
        IF v_post.event IS NULL OR v_post.state <> 'processed' THEN
            -- edited into something that is not a follow-up
            UPDATE tp_capital.signal_events SET retired_at = now() WHERE id = v_old.id;
            v_touched := v_touched || v_old.signal_id;
            IF tp_capital.ends_signal(v_old.kind, v_old.target) THEN
                v_touched := v_touched
                    || tp_capital.relink_around_signal(v_old.signal_id, p_link_window);
            END IF;
            CONTINUE;
        END IF;
        v_signal := NULL;
        v_by := NULL;
        SELECT l.signal_id, l.linked_by INTO v_signal, v_by
          FROM tp_capital.link_signal_event(
                 v_post.channel_id, v_post.message_id, v_post.telegram_date,
                 nullif(v_post.event ->> 'asset', ''), v_post.reply_to_msg_id,
                 p_link_window) AS l;
        INSERT INTO tp_capital.signal_events AS e (
            channel_id, message_id, telegram_date, kind, asset, target, stop, stop_ref,
            result, reply_to_msg_id, signal_id, linked_by, raw_text, processed_by)
        VALUES (v_post.channel_id, v_post.message_id, v_post.telegram_date,
                v_post.event ->> 'kind', nullif(v_post.event ->> 'asset', ''),
                v_post.event ->> 'target', (v_post.event ->> 'stop')::numeric,
                v_post.event ->> 'stop_ref', v_post.event ->> 'result',
                v_post.reply_to_msg_id, v_signal, v_by, coalesce(v_post.raw_text, ''),
                p_consumer)
        ON CONFLICT ON CONSTRAINT signal_events_source_message_key DO UPDATE
           SET telegram_date = EXCLUDED.telegram_date, kind = EXCLUDED.kind,
               asset = EXCLUDED.asset, target = EXCLUDED.target, stop = EXCLUDED.stop,
               stop_ref = EXCLUDED.stop_ref, result = EXCLUDED.result,
               reply_to_msg_id = EXCLUDED.reply_to_msg_id, signal_id = EXCLUDED.signal_id,
               linked_by = EXCLUDED.linked_by, raw_text = EXCLUDED.raw_text,
               processed_by = EXCLUDED.processed_by, retired_at = NULL
         WHERE (e.telegram_date, e.kind, e.asset, e.target, e.stop, e.stop_ref, e.result,
                e.reply_to_msg_id, e.signal_id, e.linked_by, e.raw_text, e.retired_at)
               IS DISTINCT FROM
               (EXCLUDED.telegram_date, EXCLUDED.kind, EXCLUDED.asset, EXCLUDED.target,
                EXCLUDED.stop, EXCLUDED.stop_ref, EXCLUDED.result, EXCLUDED.reply_to_msg_id,
                EXCLUDED.signal_id, EXCLUDED.linked_by, EXCLUDED.raw_text, NULL::timestamptz)
        RETURNING e.id INTO v_id;
        IF v_id IS NOT NULL THEN
            v_touched := v_touched || v_old.signal_id || v_signal
                || tp_capital.relink_replies(v_post.channel_id, v_post.message_id, p_link_window);
            -- a follow-up that ends a signal (or no longer does) changes what later follow-ups
            -- of its asset link to
            IF tp_capital.ends_signal(v_post.event ->> 'kind', v_post.event ->> 'target')
               OR tp_capital.ends_signal(v_old.kind, v_old.target) THEN
                v_touched := v_touched
                    || tp_capital.relink_around_signal(v_signal, p_link_window)
                    || tp_capital.relink_around_signal(v_old.signal_id, p_link_window);
            END IF;
        END IF;
        v_id := NULL;
    END LOOP;

    -- 6. Follow-ups that waited for a signal stored (or changed) now, or linked to one retired.
    IF cardinality(v_stored) > 0 OR cardinality(v_retired) > 0 THEN
        v_touched := v_touched || v_stored
            || tp_capital.relink_around_signals(v_stored || v_retired, p_link_window);
    END IF;

    -- 7. What the follow-ups add up to.
    PERFORM tp_capital.derive_signal_status(t)
       FROM (SELECT DISTINCT t FROM unnest(v_touched) AS t WHERE t IS NOT NULL ORDER BY t) AS d(t);

    RETURN QUERY
    SELECT (e.item ->> 'channel_id')::bigint, (e.item ->> 'message_id')::bigint,
           o.channel_id IS NOT NULL
      FROM jsonb_array_elements(p_results) WITH ORDINALITY AS e(item, ord)
      LEFT JOIN unnest(v_owned) AS o
        ON o.channel_id = (e.item ->> 'channel_id')::bigint
       AND o.message_id = (e.item ->> 'message_id')::bigint
     ORDER BY e.ord;
END
$$;

DROP FUNCTION IF EXISTS tp_capital.retire_signals_of_deleted(bigint, bigint[]);

-- Retire the signals, follow-ups and reviews of posts deleted from the channel (explicit keys,
-- or every deleted post when called without keys), re-link what the retired signals concerned
-- and re-derive the signals whose follow-ups changed. Returns how many signals were retired.
-- With keys (the queue's delete deliveries) it looks up those posts only; without, it checks the
-- active rows of the three tables against their posts (the safety poll), as 010 did for signals.
CREATE OR REPLACE FUNCTION tp_capital.retire_signals_of_deleted(
    p_channel_id bigint DEFAULT NULL, p_message_ids bigint[] DEFAULT NULL,
    p_link_window interval DEFAULT interval '14 days')
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_channels bigint[];
    v_messages bigint[];
    v_signals  bigint[];
    v_touched  bigint[];
    v_ended    bigint[];
BEGIN
    IF p_message_ids IS NOT NULL THEN
        SELECT array_agg(k.channel_id), array_agg(k.message_id) INTO v_channels, v_messages
          FROM (SELECT DISTINCT i.id FROM unnest(p_message_ids) AS i(id)) AS i
          JOIN telegram_gateway.message_keys k
            ON k.channel_id = p_channel_id AND k.message_id = i.id
          JOIN telegram_gateway.messages m
            ON m.channel_id = k.channel_id AND m.message_id = k.message_id
           AND m.telegram_date = k.telegram_date
         WHERE m.deleted_at IS NOT NULL;
    ELSE
        SELECT array_agg(x.channel_id), array_agg(x.message_id) INTO v_channels, v_messages
          FROM (SELECT s.channel_id, s.message_id FROM tp_capital.signals s
                 WHERE s.retired_at IS NULL
                UNION
                SELECT e.channel_id, e.message_id FROM tp_capital.signal_events e
                 WHERE e.retired_at IS NULL
                UNION
                SELECT v.channel_id, v.message_id FROM tp_capital.signal_reviews v
                 WHERE v.retired_at IS NULL) AS x
          JOIN telegram_gateway.message_keys k
            ON k.channel_id = x.channel_id AND k.message_id = x.message_id
          JOIN telegram_gateway.messages m
            ON m.channel_id = k.channel_id AND m.message_id = k.message_id
           AND m.telegram_date = k.telegram_date
         WHERE m.deleted_at IS NOT NULL
           AND (p_channel_id IS NULL OR x.channel_id = p_channel_id);
    END IF;
    IF v_channels IS NULL THEN
        RETURN 0;
    END IF;

    PERFORM tp_capital.lock_signal_channels(v_channels);

    WITH retired AS (
        UPDATE tp_capital.signals s
           SET retired_at = now()
          FROM unnest(v_channels, v_messages) AS d(channel_id, message_id)
         WHERE s.channel_id = d.channel_id AND s.message_id = d.message_id
           AND s.retired_at IS NULL
        RETURNING s.id
    )
    SELECT ARRAY(SELECT id FROM retired) INTO v_signals;

    WITH retired AS (
        UPDATE tp_capital.signal_events e
           SET retired_at = now()
          FROM unnest(v_channels, v_messages) AS d(channel_id, message_id)
         WHERE e.channel_id = d.channel_id AND e.message_id = d.message_id
           AND e.retired_at IS NULL
        RETURNING e.signal_id, tp_capital.ends_signal(e.kind, e.target) AS ended
    )
    SELECT ARRAY(SELECT signal_id FROM retired WHERE signal_id IS NOT NULL),
           ARRAY(SELECT signal_id FROM retired WHERE signal_id IS NOT NULL AND ended)
      INTO v_touched, v_ended;

    -- a retired end re-opens its signal to the follow-ups of its asset after it (own statement:
    -- the re-link must see the retirement)
    v_touched := v_touched || tp_capital.relink_around_signals(v_ended, p_link_window);

    UPDATE tp_capital.signal_reviews v
       SET retired_at = now()
      FROM unnest(v_channels, v_messages) AS d(channel_id, message_id)
     WHERE v.channel_id = d.channel_id AND v.message_id = d.message_id
       AND v.retired_at IS NULL;

    v_touched := v_touched || tp_capital.relink_around_signals(v_signals, p_link_window);

    PERFORM tp_capital.derive_signal_status(t)
       FROM (SELECT DISTINCT t FROM unnest(v_touched) AS t WHERE t IS NOT NULL ORDER BY t) AS d(t);
    RETURN cardinality(v_signals);
END
$$;
