-- 010_poller.sql — what the TP Capital poller needs to process each message exactly once.
--
-- A poller claims messages (a lease: processing_state 'processing', claimed_by, expiry), parses
-- them, and hands the results back in ONE call that stores the signals and marks the messages
-- in the same transaction. Results are fenced: only messages still claimed by that poller are
-- applied, so a worker whose lease expired (and whose messages another worker took over)
-- cannot mark or store anything twice. Idempotent: applying the same results again is a no-op.

ALTER TABLE tp_capital.signals ALTER COLUMN signal_type DROP NOT NULL;
ALTER TABLE tp_capital.signals ADD COLUMN IF NOT EXISTS processed_by text;

-- Claim specific messages (a queue delivery, the Redis recent window) for one consumer.
-- Takes pending messages, ones whose lease expired, and ones this consumer already holds (a
-- redelivery after a failure renews the lease); skips messages another consumer holds.
CREATE OR REPLACE FUNCTION telegram_gateway.claim_messages_by_key(
    p_consumer text,
    p_channel_ids bigint[],
    p_message_ids bigint[],
    p_lease_seconds integer DEFAULT 300)
RETURNS SETOF telegram_gateway.messages
LANGUAGE plpgsql
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
    WITH picked AS (
        SELECT m.channel_id, m.message_id, m.telegram_date
          FROM unnest(p_channel_ids, p_message_ids) AS u(channel_id, message_id)
          JOIN telegram_gateway.message_keys k
            ON k.channel_id = u.channel_id AND k.message_id = u.message_id
          JOIN telegram_gateway.messages m
            ON m.channel_id = k.channel_id AND m.message_id = k.message_id
           AND m.telegram_date = k.telegram_date
         WHERE m.deleted_at IS NULL
           AND (m.processing_state = 'pending'
                OR (m.processing_state = 'processing'
                    AND (m.claim_expires_at < now() OR m.claimed_by = p_consumer)))
           FOR UPDATE OF m SKIP LOCKED
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

-- Apply a poller's results atomically: store/update/retire signals and mark the messages.
-- p_results is a JSON array of objects:
--   {"channel_id": .., "message_id": .., "state": "processed"|"ignored"|"failed",
--    "error": text|null,
--    "signal": {"asset", "signal_type", "buy_min", "buy_max", "target_1", "target_2",
--               "target_final", "stop"} | null}
-- Prices travel as JSON strings holding exact decimals. Returns one row per result with
-- applied = false where the message is no longer claimed by p_consumer.
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

    -- Fence: lock the messages this consumer still holds.
    UPDATE pg_temp.tgstack_results t
       SET owned = true, telegram_date = m.telegram_date, raw_text = coalesce(m.text, m.caption)
      FROM telegram_gateway.message_keys k
      JOIN telegram_gateway.messages m
        ON m.channel_id = k.channel_id AND m.message_id = k.message_id
       AND m.telegram_date = k.telegram_date
     WHERE k.channel_id = t.channel_id AND k.message_id = t.message_id
       AND m.processing_state = 'processing' AND m.claimed_by = p_consumer;

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

-- Retire the signals of posts deleted from the channel (explicit keys), or of every deleted
-- post when called without keys. Returns how many signals were retired now.
CREATE OR REPLACE FUNCTION tp_capital.retire_signals_of_deleted(
    p_channel_id bigint DEFAULT NULL, p_message_ids bigint[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE tp_capital.signals s
       SET retired_at = now()
      FROM telegram_gateway.message_keys k
      JOIN telegram_gateway.messages m
        ON m.channel_id = k.channel_id AND m.message_id = k.message_id
       AND m.telegram_date = k.telegram_date
     WHERE s.channel_id = k.channel_id AND s.message_id = k.message_id
       AND s.retired_at IS NULL AND m.deleted_at IS NOT NULL
       AND (p_channel_id IS NULL OR s.channel_id = p_channel_id)
       AND (p_message_ids IS NULL OR s.message_id = ANY (p_message_ids));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

CREATE INDEX IF NOT EXISTS idx_signals_active_by_channel
    ON tp_capital.signals (channel_id, message_id) WHERE retired_at IS NULL;
