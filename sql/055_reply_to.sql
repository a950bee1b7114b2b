-- 055_reply_to.sql — the post a message replies to.
--
-- Channels answer their own signals: "Alvo 1 atingido ✅" posted as a reply to the signal. The
-- poller links such a follow-up to its signal by this id first (issue 16), so the gateway keeps
-- Telegram's reply_to.reply_to_msg_id of every post (NULL when the post is not a reply).

ALTER TABLE telegram_gateway.messages ADD COLUMN IF NOT EXISTS reply_to_msg_id bigint;

-- The insert of bulk_upsert_messages (004), as 050 left it (the outbox row written with each
-- stored message), now also storing the element's optional reply_to_msg_id. The gateway sends it
-- only for a reply (tgstack.db._message_json); an element without it stores NULL, as before.
-- (get_unprocessed_messages_optimized, claim_unprocessed_messages, claim_messages_by_key and
-- get_unpublished_messages return SETOF messages: they carry the new column as they are.)
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
                   received_at timestamptz, metadata jsonb, reply_to_msg_id bigint))
               WITH ORDINALITY AS r(channel_id, message_id, telegram_date, thread_id,
                   grouped_id, source, message_type, text, caption, media_type, media_refs,
                   edit_date, status, processing_state, received_at, metadata,
                   reply_to_msg_id, ord)
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
            processing_state, processed_at, received_at, metadata, reply_to_msg_id)
        SELECT i.channel_id, i.message_id, i.telegram_date, i.thread_id, i.grouped_id,
               coalesce(i.source, 'user_client'), coalesce(i.message_type, 'text'),
               i.text, i.caption, i.media_type, i.media_refs, i.edit_date,
               coalesce(i.status, 'received'), coalesce(i.processing_state, 'pending'),
               CASE WHEN i.processing_state IN ('processed', 'ignored', 'failed')
                    THEN now() END,
               coalesce(i.received_at, now()),
               coalesce(nullif(i.metadata, 'null'::jsonb), '{}'::jsonb),
               i.reply_to_msg_id
          FROM input i
          JOIN claimed c ON c.channel_id = i.channel_id AND c.message_id = i.message_id
         WHERE i.ord = i.first_ord
        RETURNING channel_id, message_id, telegram_date, received_at
    ), outboxed AS (
        -- A key claimed now is new: an outbox row left by a message retention removed (the
        -- same key stored again) starts over as unpublished.
        INSERT INTO telegram_gateway.message_outbox AS o
               (channel_id, message_id, telegram_date, received_at)
        SELECT s.channel_id, s.message_id, s.telegram_date, s.received_at
          FROM stored s
         ORDER BY s.channel_id, s.message_id
        ON CONFLICT (channel_id, message_id) DO UPDATE
           SET telegram_date = EXCLUDED.telegram_date, received_at = EXCLUDED.received_at,
               published_at = NULL, publish_attempts = 0
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
