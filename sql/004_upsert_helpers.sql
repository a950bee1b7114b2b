-- 004_upsert_helpers.sql — writing messages: bulk insert-if-absent, edits, soft deletes,
-- channel cursors.

-- One element's outcome in a bulk upsert.
DO $do$
BEGIN
    IF to_regtype('telegram_gateway.upsert_outcome') IS NULL THEN
        CREATE TYPE telegram_gateway.upsert_outcome AS (
            channel_id bigint, message_id bigint, inserted boolean);
    END IF;
END
$do$;

-- Insert every message of p_messages (a JSON array of objects) that is not stored yet.
--
-- Each element needs channel_id, message_id and telegram_date (ISO 8601 with offset); optional:
-- thread_id, grouped_id, source, message_type, text, caption, media_type, media_refs,
-- edit_date, status, processing_state, received_at, metadata (an object). A message counts as
-- stored when its (channel_id, message_id) is, whatever its telegram_date: the key is claimed in
-- message_keys first (its primary key makes concurrent inserters of the same message wait for
-- each other), and only claimed keys are inserted into messages. Unknown channels are
-- registered, and channel cursors advanced to the newest message inserted (never moved back).
--
-- Returns one row per input element, in input order: inserted is true for the element that
-- was stored, false for a message stored before or repeated earlier in the same batch.
--
-- Fast path: the batch is parsed once and inserted; the table constraints check it. Only when
-- a constraint fails (a bad element, or no partition yet for a month) does the slow path run:
-- say which element is bad and why, or create the missing partitions and insert again.
CREATE OR REPLACE FUNCTION telegram_gateway.bulk_upsert_messages(p_messages jsonb)
RETURNS TABLE (channel_id bigint, message_id bigint, inserted boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller CONSTANT text := 'bulk_upsert_messages';
    v_attempt integer;
    v_result  telegram_gateway.upsert_outcome[];
BEGIN
    IF p_messages IS NULL OR jsonb_typeof(p_messages) <> 'array' THEN
        RAISE EXCEPTION '%: expected a JSON array of messages, got %', v_caller,
            coalesce(jsonb_typeof(p_messages), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_array_length(p_messages) = 0 THEN
        RETURN;
    END IF;
    FOR v_attempt IN 1..2 LOOP
        BEGIN
            v_result := telegram_gateway.insert_new_messages(p_messages);
            EXIT;
        EXCEPTION WHEN check_violation OR not_null_violation THEN
            IF v_attempt = 2 THEN
                RAISE;
            END IF;
            PERFORM telegram_gateway.explain_bad_messages(p_messages, v_caller);
            PERFORM telegram_gateway.ensure_partitions(m, m)
               FROM (SELECT DISTINCT date_trunc('month', r.telegram_date, 'UTC') AS m
                       FROM jsonb_to_recordset(p_messages) AS r(telegram_date timestamptz)) months;
        END;
    END LOOP;
    RETURN QUERY SELECT o.channel_id, o.message_id, o.inserted FROM unnest(v_result) AS o;
END
$$;

-- The insert itself (see bulk_upsert_messages): one statement, outcome in input order.
--
-- The planner estimates jsonb_to_recordset at 100 rows and the filtered CTE scans at 1, so it
-- would join the batch to its claimed keys with nested loops (1000 x 1000 comparisons for a
-- batch of 1000: 90 % of the call, measured); hash joins are what this batch work wants.
CREATE OR REPLACE FUNCTION telegram_gateway.insert_new_messages(p_messages jsonb)
RETURNS telegram_gateway.upsert_outcome[]
LANGUAGE sql
SET enable_nestloop = off
AS $$
    WITH input AS (
        SELECT r.*, min(r.ord) OVER (PARTITION BY r.channel_id, r.message_id) AS first_ord
          FROM ROWS FROM (jsonb_to_recordset(p_messages) AS (
                   channel_id bigint, message_id bigint, telegram_date timestamptz,
                   thread_id bigint, grouped_id bigint, source text, message_type text,
                   text text, caption text, media_type text, media_refs jsonb,
                   edit_date timestamptz, status text, processing_state text,
                   received_at timestamptz, metadata jsonb))
               WITH ORDINALITY AS r(channel_id, message_id, telegram_date, thread_id,
                   grouped_id, source, message_type, text, caption, media_type, media_refs,
                   edit_date, status, processing_state, received_at, metadata, ord)
    ), claimed AS (
        INSERT INTO telegram_gateway.message_keys AS k (channel_id, message_id, telegram_date)
        SELECT i.channel_id, i.message_id, i.telegram_date
          FROM input i
         WHERE i.ord = i.first_ord
         ORDER BY i.channel_id, i.message_id
        ON CONFLICT (channel_id, message_id) DO NOTHING
        RETURNING k.channel_id, k.message_id
    ), stored AS (
        INSERT INTO telegram_gateway.messages (
            channel_id, message_id, telegram_date, thread_id, grouped_id, source,
            message_type, text, caption, media_type, media_refs, edit_date, status,
            processing_state, processed_at, received_at, metadata)
        SELECT i.channel_id, i.message_id, i.telegram_date, i.thread_id, i.grouped_id,
               coalesce(i.source, 'user_client'), coalesce(i.message_type, 'text'),
               i.text, i.caption, i.media_type, i.media_refs, i.edit_date,
               coalesce(i.status, 'received'), coalesce(i.processing_state, 'pending'),
               CASE WHEN i.processing_state IN ('processed', 'ignored', 'failed')
                    THEN now() END,
               coalesce(i.received_at, now()),
               coalesce(nullif(i.metadata, 'null'::jsonb), '{}'::jsonb)
          FROM input i
          JOIN claimed c ON c.channel_id = i.channel_id AND c.message_id = i.message_id
         WHERE i.ord = i.first_ord
        RETURNING 1
    ), known_channels AS (
        INSERT INTO telegram_gateway.channels (channel_id)
        SELECT DISTINCT i.channel_id FROM input i ORDER BY 1
        ON CONFLICT (channel_id) DO NOTHING
        RETURNING 1
    ), cursors AS (
        INSERT INTO telegram_gateway.channel_cursors AS cc
               (channel_id, last_message_id, last_message_date)
        SELECT i.channel_id, max(i.message_id), max(i.telegram_date)
          FROM input i
          JOIN claimed c ON c.channel_id = i.channel_id AND c.message_id = i.message_id
         WHERE i.ord = i.first_ord
         GROUP BY i.channel_id
         ORDER BY i.channel_id
        ON CONFLICT (channel_id) DO UPDATE
           SET last_message_id = GREATEST(cc.last_message_id, EXCLUDED.last_message_id),
               last_message_date = GREATEST(cc.last_message_date, EXCLUDED.last_message_date),
               updated_at = now()
         WHERE EXCLUDED.last_message_id > cc.last_message_id
            OR cc.last_message_date IS NULL
            OR EXCLUDED.last_message_date > cc.last_message_date
        RETURNING 1
    )
    SELECT array_agg(
               ROW(i.channel_id, i.message_id, c.channel_id IS NOT NULL AND i.ord = i.first_ord)
                   ::telegram_gateway.upsert_outcome
               ORDER BY i.ord)
      FROM input i
      LEFT JOIN claimed c ON c.channel_id = i.channel_id AND c.message_id = i.message_id
$$;

-- Raise the error that says which element of a bulk upsert is bad and why; return quietly when
-- every element is fine.
CREATE OR REPLACE FUNCTION telegram_gateway.explain_bad_messages(p_messages jsonb, p_caller text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v record;
    v_where text;
BEGIN
    FOR v IN
        SELECT * FROM ROWS FROM (jsonb_to_recordset(p_messages) AS (
                   channel_id bigint, message_id bigint, telegram_date timestamptz,
                   status text, processing_state text, metadata jsonb))
             WITH ORDINALITY AS r(channel_id, message_id, telegram_date, status,
                                  processing_state, metadata, ord)
    LOOP
        v_where := format('%s: messages[%s]', p_caller, v.ord - 1);
        PERFORM telegram_gateway.assert_channel_id(v.channel_id, v_where);
        PERFORM telegram_gateway.assert_message_id(v.message_id, v_where);
        IF v.telegram_date IS NULL THEN
            RAISE EXCEPTION '%: telegram_date must not be null', v_where
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
        IF v.telegram_date < '2013-08-01 00:00:00+00' THEN
            RAISE EXCEPTION '%: telegram_date % is before Telegram existed', v_where,
                v.telegram_date
                USING ERRCODE = 'datetime_field_overflow';
        END IF;
        IF v.status NOT IN ('received', 'retrying', 'published', 'queued', 'failed',
                            'reprocess_pending', 'reprocessed', 'deleted') THEN
            RAISE EXCEPTION '%: unknown status %', v_where, quote_literal(v.status)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF v.processing_state NOT IN ('pending', 'processing', 'processed', 'ignored',
                                      'failed') THEN
            RAISE EXCEPTION '%: unknown processing state %', v_where,
                quote_literal(v.processing_state)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(v.metadata) NOT IN ('object', 'null') THEN
            RAISE EXCEPTION '%: metadata must be a JSON object, got %', v_where,
                jsonb_typeof(v.metadata)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
END
$$;

-- Apply an edit: the row takes the new text/caption (media only when given), the state before
-- the edit goes to message_edits. An edit that is not newer than the last one applied (a replay
-- or an out-of-order older edit), or that changes no content (text, caption, media), changes
-- nothing. An applied edit sends the message back to the poller (pending, claim voided), which
-- updates or retires its signal. Returns whether the edit was applied; false also when the
-- message is not stored.
CREATE OR REPLACE FUNCTION telegram_gateway.apply_message_edit(
    p_channel_id bigint,
    p_message_id bigint,
    p_edit_date timestamptz,
    p_text text,
    p_caption text DEFAULT NULL,
    p_media_type text DEFAULT NULL,
    p_media_refs jsonb DEFAULT NULL,
    p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller CONSTANT text := 'apply_message_edit';
    v_row record;
BEGIN
    PERFORM telegram_gateway.assert_channel_id(p_channel_id, v_caller);
    PERFORM telegram_gateway.assert_message_id(p_message_id, v_caller);
    IF p_edit_date IS NULL THEN
        RAISE EXCEPTION '%: edit_date must not be null', v_caller
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        RAISE EXCEPTION '%: metadata must be a JSON object, got %', v_caller,
            jsonb_typeof(p_metadata)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT m.telegram_date, m.edit_date, m.text, m.caption, m.media_type, m.media_refs
      INTO v_row
      FROM telegram_gateway.message_keys k
      JOIN telegram_gateway.messages m
        ON m.channel_id = k.channel_id AND m.message_id = k.message_id
       AND m.telegram_date = k.telegram_date
     WHERE k.channel_id = p_channel_id AND k.message_id = p_message_id
       FOR UPDATE OF m;
    IF NOT FOUND OR p_edit_date <= v_row.edit_date THEN
        RETURN false;
    END IF;
    -- Telegram also sends edits for markup or reactions: unchanged content is not an edit.
    IF v_row.text IS NOT DISTINCT FROM p_text AND v_row.caption IS NOT DISTINCT FROM p_caption
       AND (p_media_type IS NULL OR p_media_type IS NOT DISTINCT FROM v_row.media_type)
       AND (p_media_refs IS NULL OR p_media_refs IS NOT DISTINCT FROM v_row.media_refs) THEN
        RETURN false;
    END IF;

    INSERT INTO telegram_gateway.message_edits (
        channel_id, message_id, edit_date, previous_edit_date, previous_text, previous_caption,
        text, caption)
    VALUES (p_channel_id, p_message_id, p_edit_date, v_row.edit_date, v_row.text,
            v_row.caption, p_text, p_caption)
    ON CONFLICT (channel_id, message_id, edit_date) DO NOTHING;

    UPDATE telegram_gateway.messages m
       SET text = p_text,
           caption = p_caption,
           media_type = coalesce(p_media_type, m.media_type),
           media_refs = coalesce(p_media_refs, m.media_refs),
           edit_date = p_edit_date,
           edit_count = m.edit_count + 1,
           -- the new content must be parsed again: back to pending, any claim voided (fencing)
           processing_state = 'pending',
           claimed_by = NULL,
           claim_expires_at = NULL,
           -- the previous text's sanitising note no longer applies; the consumer's mark stays
           metadata = (m.metadata - 'original_text_b64' - 'original_caption_b64')
                      || (coalesce(p_metadata, '{}'::jsonb) - 'processed_by')
     WHERE m.channel_id = p_channel_id AND m.message_id = p_message_id
       AND m.telegram_date = v_row.telegram_date;
    RETURN true;
END
$$;

-- Soft-delete messages of one channel (Telegram delete events): deleted_at and status
-- 'deleted'. Returns how many were newly deleted; deleting again changes nothing.
CREATE OR REPLACE FUNCTION telegram_gateway.soft_delete_messages(
    p_channel_id bigint, p_message_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller CONSTANT text := 'soft_delete_messages';
    v_count integer;
BEGIN
    PERFORM telegram_gateway.assert_channel_id(p_channel_id, v_caller);
    IF p_message_ids IS NULL THEN
        RAISE EXCEPTION '%: message ids must not be null', v_caller
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM telegram_gateway.assert_message_keys(
        array_fill(p_channel_id, ARRAY[cardinality(p_message_ids)]), p_message_ids, v_caller);
    UPDATE telegram_gateway.messages m
       SET deleted_at = now(),
           status = 'deleted'
      FROM unnest(p_message_ids) AS u(message_id)
      JOIN telegram_gateway.message_keys k
        ON k.channel_id = p_channel_id AND k.message_id = u.message_id
     WHERE m.channel_id = k.channel_id AND m.message_id = k.message_id
       AND m.telegram_date = k.telegram_date
       AND m.deleted_at IS NULL;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Record that the gateway backfilled a channel now (registering the channel if new).
CREATE OR REPLACE FUNCTION telegram_gateway.mark_channel_backfilled(p_channel_id bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM telegram_gateway.assert_channel_id(p_channel_id, 'mark_channel_backfilled');
    INSERT INTO telegram_gateway.channels (channel_id) VALUES (p_channel_id)
    ON CONFLICT (channel_id) DO NOTHING;
    INSERT INTO telegram_gateway.channel_cursors AS cc (channel_id, last_backfill_at)
    VALUES (p_channel_id, now())
    ON CONFLICT (channel_id) DO UPDATE SET last_backfill_at = now(), updated_at = now();
END
$$;
