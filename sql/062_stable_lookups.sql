-- 062_stable_lookups.sql — a poller's look-ups by key stay look-ups as the tables grow.
--
-- PL/pgSQL caches a generic plan per statement after five calls and keeps it until the table
-- is analysed again. Planned on a fresh database (empty signals, signal_events and month
-- partition), every index costs about the same, so the cached plans scanned where a key was
-- at hand: lock_signal_channels' EXISTS tests became hashed sub-plans over every active signal
-- and follow-up, the retired-signal look-up read its channel through the partial asset index
-- (4,372 rows per post), and the claim read a bitmap of the month's pending and processing
-- indexes (25,959 + 19,766 entries for 100 keys). Each stored post made the next batch dearer,
-- and a poller that fell behind (more pending rows) fell further: at 2,000 posts/s on a fresh
-- stack the pollers dropped to about 500 posts/s within 20 s (docs/performance.md, "Plans
-- cached on an empty database"; tests/integration/test_plan_stability.py reads 4.3 million
-- rows for one batch of 100 posts before this file).
--
-- The look-ups are now written so that the key's own index is the only one that can answer
-- them, whatever the statistics or the cached plan say:
--   * active_signal_of / active_event_of read a post's row by its unique key alone (the
--     retired test is made on the row, so no partial index on retired_at can match) with
--     sequential scans off;
--   * the claim and the apply's fence go from each key to its row through LATERAL look-ups,
--     and test the row's state as one boolean (an OR of states would let the planner answer
--     it from the indexes of every pending or claimed row);
--   * relink_around_signal reads its three kinds of follow-up by three indexed queries instead
--     of one OR over the channel's follow-ups.

-- The active (not retired) signal stored for a post, or NULL.
CREATE OR REPLACE FUNCTION tp_capital.active_signal_of(p_channel_id bigint, p_message_id bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
DECLARE
    v_id      bigint;
    v_retired timestamptz;
BEGIN
    SELECT s.id, s.retired_at INTO v_id, v_retired
      FROM tp_capital.signals s
     WHERE s.channel_id = p_channel_id AND s.message_id = p_message_id;
    RETURN CASE WHEN v_retired IS NULL THEN v_id END;
END
$$;

-- The active (not retired) follow-up stored for a post, or NULL.
CREATE OR REPLACE FUNCTION tp_capital.active_event_of(p_channel_id bigint, p_message_id bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
DECLARE
    v_id      bigint;
    v_retired timestamptz;
BEGIN
    SELECT e.id, e.retired_at INTO v_id, v_retired
      FROM tp_capital.signal_events e
     WHERE e.channel_id = p_channel_id AND e.message_id = p_message_id;
    RETURN CASE WHEN v_retired IS NULL THEN v_id END;
END
$$;

-- The follow-ups of a channel and asset in post order (relink_around_signal's third kind).
CREATE INDEX IF NOT EXISTS idx_signal_events_asset_date
    ON tp_capital.signal_events (channel_id, asset, telegram_date)
    WHERE retired_at IS NULL AND asset IS NOT NULL;

-- As 061, the follow-ups read by three indexed queries: those replying to the signal's post
-- (idx_signal_events_reply), those linked to it (idx_signal_events_signal) and those of its
-- channel and asset within the window after it (idx_signal_events_asset_date).
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
        SELECT u.id
          FROM (SELECT e.id, e.telegram_date, e.message_id
                  FROM tp_capital.signal_events e
                 WHERE e.channel_id = v_signal.channel_id
                   AND e.reply_to_msg_id = v_signal.message_id
                   AND e.retired_at IS NULL AND e.linked_by IS DISTINCT FROM 'reply'
                UNION
                SELECT e.id, e.telegram_date, e.message_id
                  FROM tp_capital.signal_events e
                 WHERE e.signal_id = p_signal_id AND e.retired_at IS NULL
                UNION
                SELECT e.id, e.telegram_date, e.message_id
                  FROM tp_capital.signal_events e
                 WHERE e.channel_id = v_signal.channel_id AND e.asset = v_signal.asset
                   AND e.retired_at IS NULL AND e.asset IS NOT NULL
                   AND e.telegram_date >= v_signal.telegram_date
                   AND e.telegram_date <= v_signal.telegram_date + p_link_window
                   AND e.linked_by IS DISTINCT FROM 'reply') AS u
         ORDER BY u.telegram_date, u.message_id
    LOOP
        v_touched := v_touched || tp_capital.relink_signal_event(v_event, p_link_window);
    END LOOP;
    RETURN v_touched;
END
$$;

-- As 010, each key looked up on its own (message_keys, then the message row) and its state
-- tested as one boolean.
CREATE OR REPLACE FUNCTION telegram_gateway.claim_messages_by_key(
    p_consumer text,
    p_channel_ids bigint[],
    p_message_ids bigint[],
    p_lease_seconds integer DEFAULT 300)
RETURNS SETOF telegram_gateway.messages
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    v_caller CONSTANT text := 'claim_messages_by_key';
BEGIN
    IF p_consumer IS NULL OR p_consumer = '' THEN
        RAISE EXCEPTION '%: consumer must be named', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_lease_seconds IS NULL OR p_lease_seconds < 1 THEN
        RAISE EXCEPTION '%: lease must be at least 1 second, got %', v_caller,
            coalesce(p_lease_seconds::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM telegram_gateway.assert_message_keys(p_channel_ids, p_message_ids, v_caller);
    RETURN QUERY
    WITH located AS MATERIALIZED (
        -- each key's row (message_keys holds its telegram_date), in key order: the lock order
        SELECT k.channel_id, k.message_id, k.telegram_date
          FROM (SELECT DISTINCT u.channel_id, u.message_id
                  FROM unnest(p_channel_ids, p_message_ids) AS u(channel_id, message_id)) AS w
          JOIN telegram_gateway.message_keys k
            ON k.channel_id = w.channel_id AND k.message_id = w.message_id
         ORDER BY k.channel_id, k.message_id
    ), picked AS (
        SELECT m.channel_id, m.message_id, m.telegram_date
          FROM located l
         CROSS JOIN LATERAL (
                SELECT m.channel_id, m.message_id, m.telegram_date
                  FROM telegram_gateway.messages m
                 WHERE m.channel_id = l.channel_id AND m.message_id = l.message_id
                   AND m.telegram_date = l.telegram_date
                   AND (m.deleted_at IS NULL
                        AND (m.processing_state = 'pending'
                             OR (m.processing_state = 'processing'
                                 AND (m.claim_expires_at < now() OR m.claimed_by = p_consumer))))
                       IS TRUE
                   FOR UPDATE OF m SKIP LOCKED) AS m
    ), claimed AS (
        UPDATE telegram_gateway.messages m
           SET processing_state = 'processing',
               claimed_by = p_consumer,
               claim_expires_at = now() + make_interval(secs => p_lease_seconds),
               process_attempts = m.process_attempts + 1
          FROM picked p
         WHERE m.channel_id = p.channel_id AND m.message_id = p.message_id
           AND m.telegram_date = p.telegram_date
        RETURNING m.*
    )
    SELECT * FROM claimed c ORDER BY c.telegram_date, c.channel_id, c.message_id;
END
$$;

-- As 061, its look-ups by key through active_signal_of / active_event_of and its fence's state
-- test as one boolean.
CREATE OR REPLACE FUNCTION tp_capital.apply_processing_results(
    p_consumer text, p_results jsonb, p_link_window interval DEFAULT interval '14 days')
RETURNS TABLE (channel_id bigint, message_id bigint, applied boolean)
LANGUAGE plpgsql
SET enable_seqscan = off
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
    ), located AS MATERIALIZED (
        -- each result's row (message_keys holds its telegram_date), in key order: the lock order
        SELECT k.channel_id, k.message_id, k.telegram_date
          FROM (SELECT DISTINCT r.channel_id, r.message_id FROM results r) AS w
          JOIN telegram_gateway.message_keys k
            ON k.channel_id = w.channel_id AND k.message_id = w.message_id
         ORDER BY k.channel_id, k.message_id
    ), held AS MATERIALIZED (
        -- one look-up per row by its whole key, whatever the planner guesses of a just-claimed
        -- batch, which statistics never see
        SELECT h.channel_id, h.message_id, h.telegram_date, h.raw_text, h.reply_to_msg_id
          FROM located l
          CROSS JOIN LATERAL (
                SELECT m.channel_id, m.message_id, m.telegram_date, m.reply_to_msg_id,
                       coalesce(m.text, m.caption) AS raw_text
                  FROM telegram_gateway.messages m
                 WHERE m.channel_id = l.channel_id AND m.message_id = l.message_id
                   AND m.telegram_date = l.telegram_date
                   AND (m.processing_state = 'processing' AND m.claimed_by = p_consumer) IS TRUE
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
                OR tp_capital.active_signal_of(o.channel_id, o.message_id) IS NOT NULL
                OR tp_capital.active_event_of(o.channel_id, o.message_id) IS NOT NULL)));

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
                SELECT tp_capital.active_signal_of(o.channel_id, o.message_id)
                  FROM owned o
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
                OR tp_capital.active_event_of(o.channel_id, o.message_id) IS NOT NULL)
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

-- The other functions that write a batch by key: a sequential scan is never their plan.
ALTER FUNCTION telegram_gateway.bulk_upsert_messages(jsonb) SET enable_seqscan = off;
ALTER FUNCTION telegram_gateway.mark_batch_as_published(bigint[], bigint[])
    SET enable_seqscan = off;
ALTER FUNCTION tp_capital.retire_signals_of_deleted(bigint, bigint[], interval)
    SET enable_seqscan = off;
