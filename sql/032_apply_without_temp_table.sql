-- 032_apply_without_temp_table.sql — apply_processing_results in one statement.
--
-- 031 staged the results in a temporary table created (and dropped at commit) by every call:
-- catalog inserts and deletes that cost more than the work itself (8.2 ms for a batch of 10
-- posts against 2.3 ms for their claim, measured under load). The same steps now run as one
-- statement of data-modifying CTEs over the JSON array. The fence is unchanged: the messages
-- this consumer still holds are locked in key order, and PostgreSQL re-checks the claim on the
-- latest row version after waiting, so only one of two concurrent applies owns a message.
-- Rows come back in the order of p_results.

CREATE OR REPLACE FUNCTION tp_capital.apply_processing_results(
    p_consumer text, p_results jsonb)
RETURNS TABLE (channel_id bigint, message_id bigint, applied boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller CONSTANT text := 'apply_processing_results';
BEGIN
    IF p_consumer IS NULL OR p_consumer = '' THEN
        RAISE EXCEPTION '%: consumer must be named', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_results IS NULL OR jsonb_typeof(p_results) <> 'array' THEN
        RAISE EXCEPTION '%: results must be a JSON array', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_results) AS e(item)
                WHERE jsonb_typeof(e.item) <> 'object'
                   OR e.item ->> 'state' IS NULL
                   OR e.item ->> 'state' NOT IN ('processed', 'ignored', 'failed')) THEN
        RAISE EXCEPTION '%: every result needs state processed, ignored or failed', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    RETURN QUERY
    WITH results AS (
        SELECT r.channel_id, r.message_id, r.state, r.error,
               CASE WHEN jsonb_typeof(r.signal) = 'object' THEN r.signal END AS signal,
               e.ord
          FROM jsonb_array_elements(p_results) WITH ORDINALITY AS e(item, ord),
               jsonb_to_record(e.item)
               AS r(channel_id bigint, message_id bigint, state text, error text, signal jsonb)
    ), held AS MATERIALIZED (
        -- One key look-up per result, in key order (the lock order): a nested loop whatever
        -- the planner guesses of a just-claimed batch, which statistics never see.
        SELECT h.channel_id, h.message_id, h.telegram_date, h.raw_text
          FROM (SELECT DISTINCT r.channel_id, r.message_id FROM results r
                 ORDER BY r.channel_id, r.message_id) AS wanted
          CROSS JOIN LATERAL (
                SELECT m.channel_id, m.message_id, m.telegram_date,
                       coalesce(m.text, m.caption) AS raw_text
                  FROM telegram_gateway.message_keys k
                  JOIN telegram_gateway.messages m
                    ON m.channel_id = k.channel_id AND m.message_id = k.message_id
                   AND m.telegram_date = k.telegram_date
                 WHERE k.channel_id = wanted.channel_id AND k.message_id = wanted.message_id
                   AND m.processing_state = 'processing' AND m.claimed_by = p_consumer
                   FOR UPDATE OF m) AS h
    ), owned AS MATERIALIZED (
        SELECT r.channel_id, r.message_id, r.state, r.error, r.signal,
               h.telegram_date, h.raw_text
          FROM results r
          JOIN held h ON h.channel_id = r.channel_id AND h.message_id = r.message_id
    ), stored_signals AS (
        INSERT INTO tp_capital.signals AS s (
            channel_id, message_id, telegram_date, asset, signal_type, buy_min, buy_max,
            target_1, target_2, target_final, stop, raw_text, processed_by)
        SELECT o.channel_id, o.message_id, o.telegram_date,
               o.signal ->> 'asset', o.signal ->> 'signal_type',
               (o.signal ->> 'buy_min')::numeric, (o.signal ->> 'buy_max')::numeric,
               (o.signal ->> 'target_1')::numeric, (o.signal ->> 'target_2')::numeric,
               (o.signal ->> 'target_final')::numeric, (o.signal ->> 'stop')::numeric,
               coalesce(o.raw_text, ''), p_consumer
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
        RETURNING 1
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
    SELECT r.channel_id, r.message_id, h.channel_id IS NOT NULL
      FROM results r
      LEFT JOIN held h ON h.channel_id = r.channel_id AND h.message_id = r.message_id
     ORDER BY r.ord;
END
$$;
