-- 063_apply_lookups_once.sql — the apply looks up each post's signal and follow-up once.
--
-- Measured with pg_stat_user_functions over 60 batches of 100 posts (30 signals, 10 follow-ups,
-- 60 ignored) on a database of 40,000 posts (the probe of docs/performance.md, "The apply's
-- CPU"): apply_processing_results called active_event_of 150 times and active_signal_of 130
-- times a batch, each a PL/pgSQL call with its own SET (16,800 calls, 16 % of the apply's
-- time), and derived the status of every signal it stored, 30 a batch, although a signal new
-- in the batch and not linked by a follow-up keeps the status it was inserted with (10 %).
--
-- Now the fence (step 1) reads, in the same statement, the signal each post had (any, and
-- whether it is active) and its active follow-up, by the unique keys; steps 3 to 5 use those
-- fields. Only the signals that existed before the batch, or that a follow-up was linked to or
-- from, are derived again. Same results (tests/integration/test_signal_lifecycle.py,
-- test_sql_functions.py, test_plan_stability.py).
--
-- Also a fix found by tests/integration/test_signal_lifecycle_settled.py: a follow-up retired
-- (its post deleted, or edited into something else) left the follow-ups replying to it linked
-- "by reply" through it; they are now re-linked, as a recomputation would link them.

DO $$
BEGIN
    IF to_regtype('tp_capital.post_key') IS NULL THEN
        CREATE TYPE tp_capital.post_key AS (channel_id bigint, message_id bigint);
    END IF;
    IF to_regtype('tp_capital.owned_post') IS NULL THEN
        CREATE TYPE tp_capital.owned_post AS (
            channel_id      bigint,
            message_id      bigint,
            telegram_date   timestamptz,
            state           text,
            error           text,
            signal          jsonb,
            event           jsonb,
            review          jsonb,
            reply_to_msg_id bigint,
            raw_text        text,
            prior_signal    bigint,   -- the signal row of the post before the batch, retired or not
            signal_active   boolean,  -- that signal was not retired
            active_event    bigint    -- the post's active follow-up before the batch
        );
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tp_capital.apply_processing_results(
    p_consumer text, p_results jsonb, p_link_window interval DEFAULT interval '14 days')
RETURNS TABLE (channel_id bigint, message_id bigint, applied boolean)
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    v_caller  CONSTANT text := 'apply_processing_results';
    v_owned   tp_capital.owned_post[];
    v_post    tp_capital.owned_post;
    v_stored  bigint[];
    v_updated bigint[];
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
    ), located AS MATERIALIZED (
        -- each result's row (message_keys holds its telegram_date), in key order: the lock order
        SELECT k.channel_id, k.message_id, k.telegram_date
          FROM (SELECT DISTINCT r.channel_id, r.message_id FROM results r) AS w
          JOIN telegram_gateway.message_keys k
            ON k.channel_id = w.channel_id AND k.message_id = w.message_id
         ORDER BY k.channel_id, k.message_id
    ), held AS MATERIALIZED (
        -- one look-up per row by its whole key, whatever the planner guesses of a just-claimed
        -- batch, which statistics never see; with it, the signal and the active follow-up the
        -- post had before this batch (LIMIT 1 keeps each a look-up by the unique key)
        SELECT h.channel_id, h.message_id, h.telegram_date, h.raw_text, h.reply_to_msg_id,
               ps.id AS prior_signal, (ps.retired_at IS NULL AND ps.id IS NOT NULL) AS signal_active,
               pe.id AS active_event
          FROM located l
          CROSS JOIN LATERAL (
                SELECT m.channel_id, m.message_id, m.telegram_date, m.reply_to_msg_id,
                       coalesce(m.text, m.caption) AS raw_text
                  FROM telegram_gateway.messages m
                 WHERE m.channel_id = l.channel_id AND m.message_id = l.message_id
                   AND m.telegram_date = l.telegram_date
                   AND (m.processing_state = 'processing' AND m.claimed_by = p_consumer) IS TRUE
                   FOR UPDATE OF m) AS h
          LEFT JOIN LATERAL (
                SELECT s.id, s.retired_at FROM tp_capital.signals s
                 WHERE s.channel_id = h.channel_id AND s.message_id = h.message_id
                 LIMIT 1) AS ps ON true
          LEFT JOIN LATERAL (
                SELECT e.id FROM tp_capital.signal_events e
                 WHERE e.channel_id = h.channel_id AND e.message_id = h.message_id
                   AND (e.retired_at IS NULL) IS TRUE
                 LIMIT 1) AS pe ON true
    )
    SELECT array_agg(ROW(r.channel_id, r.message_id, h.telegram_date, r.state, r.error,
                         r.signal, r.event, r.review, h.reply_to_msg_id, h.raw_text,
                         h.prior_signal, h.signal_active, h.active_event
                        )::tp_capital.owned_post
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
                OR o.signal_active OR o.active_event IS NOT NULL)));

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
                SELECT o.prior_signal FROM owned o
                 WHERE o.signal_active AND o.signal IS NULL
                   AND o.state IN ('processed', 'ignored')))
        RETURNING s.id
    )
    SELECT ARRAY(SELECT id FROM stored_signals),
           ARRAY(SELECT id FROM stored_signals
                  WHERE id = ANY (ARRAY(SELECT o.prior_signal FROM owned o))),
           ARRAY(SELECT id FROM retired_signals)
      INTO v_stored, v_updated, v_retired;

    -- 5. Follow-ups, in post order: each is linked seeing the signals of step 4 and the
    -- follow-ups before it.
    FOR v_post IN
        SELECT * FROM unnest(v_owned) AS o
         WHERE o.state IN ('processed', 'ignored')
           AND (o.event IS NOT NULL OR o.active_event IS NOT NULL)
         ORDER BY o.telegram_date, o.channel_id, o.message_id
    LOOP
        SELECT * INTO v_old FROM tp_capital.signal_events e
         WHERE e.channel_id = v_post.channel_id AND e.message_id = v_post.message_id;
        IF v_post.event IS NULL OR v_post.state <> 'processed' THEN
            -- edited into something that is not a follow-up: the replies to it lose their way
            -- to the signal through it
            UPDATE tp_capital.signal_events SET retired_at = now() WHERE id = v_old.id;
            v_touched := v_touched || v_old.signal_id
                || tp_capital.relink_replies(v_post.channel_id, v_post.message_id, p_link_window);
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
    -- A signal new in this batch keeps the status it was inserted with (open, its own stop)
    -- unless a follow-up links to it, and relinking returns the signals it links to: only the
    -- signals that were there before are derived again for their own sake.
    IF cardinality(v_stored) > 0 OR cardinality(v_retired) > 0 THEN
        v_touched := v_touched || v_updated
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

-- As 061 (and 062's sequential scans off), and a follow-up retired with its deleted post
-- re-links the follow-ups that reply to it.
CREATE OR REPLACE FUNCTION tp_capital.retire_signals_of_deleted(
    p_channel_id bigint DEFAULT NULL, p_message_ids bigint[] DEFAULT NULL,
    p_link_window interval DEFAULT interval '14 days')
RETURNS integer
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    v_channels bigint[];
    v_messages bigint[];
    v_signals  bigint[];
    v_touched  bigint[];
    v_ended    bigint[];
    v_events   tp_capital.post_key[];
    v_event    tp_capital.post_key;
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
        RETURNING e.channel_id, e.message_id, e.signal_id,
                  tp_capital.ends_signal(e.kind, e.target) AS ended
    )
    SELECT ARRAY(SELECT signal_id FROM retired WHERE signal_id IS NOT NULL),
           ARRAY(SELECT signal_id FROM retired WHERE signal_id IS NOT NULL AND ended),
           ARRAY(SELECT ROW(channel_id, message_id)::tp_capital.post_key FROM retired
                  ORDER BY channel_id, message_id)
      INTO v_touched, v_ended, v_events;

    -- a retired end re-opens its signal to the follow-ups of its asset after it (own statement:
    -- the re-link must see the retirement)
    v_touched := v_touched || tp_capital.relink_around_signals(v_ended, p_link_window);

    -- the replies to a retired follow-up no longer reach a signal through it
    FOREACH v_event IN ARRAY v_events
    LOOP
        v_touched := v_touched
            || tp_capital.relink_replies(v_event.channel_id, v_event.message_id, p_link_window);
    END LOOP;

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
