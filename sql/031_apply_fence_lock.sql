-- 031_apply_fence_lock.sql — apply_processing_results locks the messages it fences.
--
-- 010 read the claim (processing, claimed_by = consumer) without locking the rows, so two
-- applies of one message under the same consumer name, at the same time, could both pass the
-- fence and mark it twice (seen at 2,000 posts/s when the queue thread and the safety poll
-- shared a name). The fence now takes the row locks (in key order, so applies never deadlock)
-- and PostgreSQL re-checks the claim on the latest row version after waiting.

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

    CREATE TEMP TABLE IF NOT EXISTS pg_temp.tgstack_results (
        channel_id bigint, message_id bigint, telegram_date timestamptz, state text,
        error text, signal jsonb, raw_text text, owned boolean
    ) ON COMMIT DROP;
    TRUNCATE pg_temp.tgstack_results;

    INSERT INTO pg_temp.tgstack_results (channel_id, message_id, state, error, signal, owned)
    SELECT r.channel_id, r.message_id, r.state, r.error,
           CASE WHEN jsonb_typeof(r.signal) = 'object' THEN r.signal END, false
      FROM jsonb_to_recordset(p_results)
           AS r(channel_id bigint, message_id bigint, state text, error text, signal jsonb);

    IF EXISTS (SELECT 1 FROM pg_temp.tgstack_results t
                WHERE t.state IS NULL OR t.state NOT IN ('processed', 'ignored', 'failed')) THEN
        RAISE EXCEPTION '%: every result needs state processed, ignored or failed', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Fence: lock the messages this consumer still holds. FOR UPDATE waits for a concurrent
    -- apply of the same message and re-checks the claim on the row it committed, so only one
    -- of two applies can own a message.
    UPDATE pg_temp.tgstack_results t
       SET owned = true, telegram_date = held.telegram_date, raw_text = held.raw_text
      FROM (SELECT m.channel_id, m.message_id, m.telegram_date,
                   coalesce(m.text, m.caption) AS raw_text
              FROM telegram_gateway.message_keys k
              JOIN telegram_gateway.messages m
                ON m.channel_id = k.channel_id AND m.message_id = k.message_id
               AND m.telegram_date = k.telegram_date
             WHERE (k.channel_id, k.message_id) IN
                   (SELECT r.channel_id, r.message_id FROM pg_temp.tgstack_results r)
               AND m.processing_state = 'processing' AND m.claimed_by = p_consumer
             ORDER BY m.channel_id, m.message_id
               FOR UPDATE OF m) AS held
     WHERE held.channel_id = t.channel_id AND held.message_id = t.message_id;

    INSERT INTO tp_capital.signals AS s (
        channel_id, message_id, telegram_date, asset, signal_type, buy_min, buy_max,
        target_1, target_2, target_final, stop, raw_text, processed_by)
    SELECT t.channel_id, t.message_id, t.telegram_date,
           t.signal ->> 'asset', t.signal ->> 'signal_type',
           (t.signal ->> 'buy_min')::numeric, (t.signal ->> 'buy_max')::numeric,
           (t.signal ->> 'target_1')::numeric, (t.signal ->> 'target_2')::numeric,
           (t.signal ->> 'target_final')::numeric, (t.signal ->> 'stop')::numeric,
           coalesce(t.raw_text, ''), p_consumer
      FROM pg_temp.tgstack_results t
     WHERE t.owned AND t.signal IS NOT NULL AND t.state = 'processed'
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
            EXCLUDED.raw_text, NULL::timestamptz);

    -- A post edited into something that is not a signal retires the signal it had.
    UPDATE tp_capital.signals s
       SET retired_at = now()
      FROM pg_temp.tgstack_results t
     WHERE t.owned AND t.signal IS NULL AND t.state IN ('processed', 'ignored')
       AND s.channel_id = t.channel_id AND s.message_id = t.message_id
       AND s.retired_at IS NULL;

    UPDATE telegram_gateway.messages m
       SET processing_state = t.state,
           processed_at = now(),
           -- marks counts how often a consumer finished this message: 1 unless it was edited
           metadata = m.metadata || jsonb_build_object(
               'processed_by', p_consumer,
               'marks', coalesce((m.metadata ->> 'marks')::integer, 0) + 1),
           last_error = CASE WHEN t.state = 'failed' THEN t.error ELSE m.last_error END,
           claimed_by = NULL,
           claim_expires_at = NULL
      FROM pg_temp.tgstack_results t
     WHERE t.owned
       AND m.channel_id = t.channel_id AND m.message_id = t.message_id
       AND m.telegram_date = t.telegram_date;

    RETURN QUERY SELECT t.channel_id, t.message_id, t.owned FROM pg_temp.tgstack_results t;
END
$$;
