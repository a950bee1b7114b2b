-- 050_publish_outbox.sql — the gateway's publish state leaves the row the poller writes.
--
-- Until now the gateway recorded the broker's confirmation on the message row itself
-- (mark_batch_as_published, 003: status, published_at, publish_attempts), locking the rows in
-- the order of an UPDATE … FROM unnest() JOIN message_keys, while the poller's
-- apply_processing_results (031, 032) locks the same rows FOR UPDATE in key order. Both write a
-- post within milliseconds of each other (the poller gets it from RabbitMQ before the gateway
-- has marked it), so they deadlocked, and every deadlock froze both for deadlock_timeout (1 s:
-- the p95 of 1.4 s in issue 17). The poller's claim skips rows the mark holds as well (the
-- consumer's reclaim delays exist for that).
--
-- Measured with tests/integration/test_lock_contention.py (1,000 rounds: two gateway threads
-- mark overlapping three-quarter batches of 16 fresh posts in arrival order while two poller
-- threads apply their halves; lock_timeout 100 ms, deadlock_timeout 20 ms; a loaded 2-core
-- machine):
--
--   | variant                                   | deadlocks | waits > 100 ms | longest wait | waits seen |
--   |-------------------------------------------|-----------|----------------|--------------|------------|
--   | 003 as it was                             | 48        | 2              | 117 ms       | 1,403      |
--   | one lock order (mark locks in key order)  | 0         | 2 and 16       | 97, 114 ms   | ~2,400     |
--   | publish state in a table of its own       | 0         | 0              | 5-40 ms      | 30-180     |
--
-- (load average 3 to 7: another test suite shared the 2 cores.) One lock order ends the
-- deadlocks but not the waiting: the mark then queues behind every apply (and gateway marks
-- behind that mark), and the rounds took twice as long. With a table of its own nothing the
-- poller locks is written by the gateway: the remaining waits are between the two gateway
-- marks of the same posts (with one gateway thread the test saw no wait at all; in production
-- the live pipeline and the outbox relay), which lock the outbox rows in key order and cannot
-- deadlock. A mark writes one narrow outbox row instead of a new version of the wide message
-- row and its index entries (its cost was not measured separately here).
--
-- What changes:
--   * telegram_gateway.message_outbox: one row per stored message with its publish state
--     (published_at NULL = committed, not confirmed by the broker: the outbox proper, indexed
--     by received_at). Written in the same statement that stores the message
--     (insert_new_messages) or imports it (tgstack.legacy.importer), and backfilled here from
--     the rows stored before this migration (the messages table is locked in SHARE mode while
--     that runs, so no writer slips a row past the backfill).
--   * mark_batch_as_published updates only message_outbox, locking its rows in key order.
--     Marking again changes nothing; it returns how many messages it marked.
--   * messages.status, published_at and publish_attempts are no longer written by the
--     gateway: they keep what the legacy import carried (and upsert_message_status, an
--     operator's tool, still sets them). Readers take the publish time as
--     coalesce(messages.published_at, message_outbox.published_at) and the status as
--     telegram_gateway.publish_status(...) (both in the view message_publish_status).
--   * get_unpublished_messages and channel_health_summary read the outbox table; the partial
--     index idx_telegram_messages_outbox on messages (now every row would match it) is dropped.
--   * soft_delete_messages, the gateway's other batch write on message rows, locks them in key
--     order, the order of the poller's apply.
--   * cleanup_old_messages removes the outbox rows of messages it removed.

CREATE TABLE IF NOT EXISTS telegram_gateway.message_outbox (
    channel_id       bigint      NOT NULL,
    message_id       bigint      NOT NULL,
    telegram_date    timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    publish_attempts integer     NOT NULL DEFAULT 0,
    CONSTRAINT message_outbox_pkey PRIMARY KEY (channel_id, message_id)
);

COMMENT ON TABLE telegram_gateway.message_outbox IS
    'Publish state of each stored message, apart from the row the poller writes: '
    'published_at NULL means committed but not confirmed by RabbitMQ (the outbox relay '
    'republishes those).';

-- The outbox proper: committed, not confirmed, oldest first.
CREATE INDEX IF NOT EXISTS idx_message_outbox_unpublished
    ON telegram_gateway.message_outbox (received_at)
    WHERE published_at IS NULL;

-- Backfill from the messages stored so far, writers held off until this commits.
LOCK TABLE telegram_gateway.messages IN SHARE MODE;
INSERT INTO telegram_gateway.message_outbox (
    channel_id, message_id, telegram_date, received_at, published_at, publish_attempts)
SELECT m.channel_id, m.message_id, m.telegram_date, m.received_at, m.published_at,
       m.publish_attempts
  FROM telegram_gateway.message_keys k
  JOIN telegram_gateway.messages m
    ON m.channel_id = k.channel_id AND m.message_id = k.message_id
   AND m.telegram_date = k.telegram_date
ON CONFLICT (channel_id, message_id) DO NOTHING;

DROP INDEX IF EXISTS telegram_gateway.idx_telegram_messages_outbox;

-- The publish status of a message as readers should see it: what the legacy import carried on
-- the row, else what the gateway recorded in the outbox ('published' once the broker confirmed
-- it; a deleted message stays 'deleted'). Its publish time is
-- coalesce(messages.published_at, message_outbox.published_at).
CREATE OR REPLACE FUNCTION telegram_gateway.publish_status(
    p_status text, p_published_at timestamptz, p_outbox_published_at timestamptz)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN p_published_at IS NULL AND p_outbox_published_at IS NOT NULL
                     AND p_status <> 'deleted'
                THEN 'published' ELSE p_status END
$$;

CREATE OR REPLACE VIEW telegram_gateway.message_publish_status AS
SELECT m.channel_id, m.message_id, m.telegram_date,
       telegram_gateway.publish_status(m.status, m.published_at, o.published_at) AS status,
       coalesce(m.published_at, o.published_at) AS published_at,
       greatest(m.publish_attempts, coalesce(o.publish_attempts, 0)) AS publish_attempts
  FROM telegram_gateway.messages m
  LEFT JOIN telegram_gateway.message_outbox o
    ON o.channel_id = m.channel_id AND o.message_id = m.message_id
   AND o.telegram_date = m.telegram_date;

COMMENT ON VIEW telegram_gateway.message_publish_status IS
    'Publish status and time of each message: the legacy values on the row, else the '
    'outbox''s (telegram_gateway.message_outbox).';

-- The insert of bulk_upsert_messages (004), now also writing each stored message's outbox row.
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

-- Mark messages published (after the broker confirmed them): published_at set once and
-- publish_attempts counted, in the outbox only. The rows are locked in key order (one look-up
-- per key, in order), so two marks of overlapping batches never deadlock. Returns how many
-- messages were marked now; marking again changes nothing.
CREATE OR REPLACE FUNCTION telegram_gateway.mark_batch_as_published(
    p_channel_ids bigint[], p_message_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM telegram_gateway.assert_message_keys(
        p_channel_ids, p_message_ids, 'mark_batch_as_published');
    WITH locked AS MATERIALIZED (
        SELECT o.channel_id, o.message_id
          FROM (SELECT DISTINCT u.channel_id, u.message_id
                  FROM unnest(p_channel_ids, p_message_ids) AS u(channel_id, message_id)
                 ORDER BY u.channel_id, u.message_id) AS wanted
          CROSS JOIN LATERAL (
                SELECT o.channel_id, o.message_id
                  FROM telegram_gateway.message_outbox o
                 WHERE o.channel_id = wanted.channel_id AND o.message_id = wanted.message_id
                   AND o.published_at IS NULL
                   FOR UPDATE) AS o
    )
    UPDATE telegram_gateway.message_outbox o
       SET published_at = now(),
           publish_attempts = o.publish_attempts + 1
      FROM locked l
     WHERE o.channel_id = l.channel_id AND o.message_id = l.message_id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- The outbox: committed messages not published yet (and not deleted), received at least
-- p_min_age_seconds ago, oldest first. The relay republishes them, then marks them published.
CREATE OR REPLACE FUNCTION telegram_gateway.get_unpublished_messages(
    p_min_age_seconds double precision DEFAULT 30,
    p_limit integer DEFAULT 100)
RETURNS SETOF telegram_gateway.messages
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF p_min_age_seconds IS NULL OR p_min_age_seconds < 0 THEN
        RAISE EXCEPTION 'get_unpublished_messages: min age must be 0 or more seconds, got %',
            coalesce(p_min_age_seconds::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM telegram_gateway.assert_limit(p_limit, 'get_unpublished_messages');
    RETURN QUERY
    SELECT m.*
      FROM telegram_gateway.message_outbox o
      JOIN telegram_gateway.messages m
        ON m.channel_id = o.channel_id AND m.message_id = o.message_id
       AND m.telegram_date = o.telegram_date
     WHERE o.published_at IS NULL AND m.deleted_at IS NULL
       AND o.received_at <= now() - make_interval(secs => p_min_age_seconds)
     ORDER BY o.received_at
     LIMIT p_limit;
END
$$;

-- Set the publishing status of one message and the timestamp that goes with it on the row
-- (as 003 did), and for 'published' in the outbox too, so the relay does not publish it again.
-- An operator's tool: the gateway itself records confirmations with mark_batch_as_published.
CREATE OR REPLACE FUNCTION telegram_gateway.upsert_message_status(
    p_channel_id bigint, p_message_id bigint, p_status text)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller CONSTANT text := 'upsert_message_status';
    v_date timestamptz;
BEGIN
    PERFORM telegram_gateway.assert_channel_id(p_channel_id, v_caller);
    PERFORM telegram_gateway.assert_message_id(p_message_id, v_caller);
    IF p_status IS NULL OR p_status NOT IN ('received', 'retrying', 'published', 'queued',
            'failed', 'reprocess_pending', 'reprocessed', 'deleted') THEN
        RAISE EXCEPTION '%: unknown status %', v_caller, quote_nullable(p_status)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of received, retrying, published, queued, failed, '
                         'reprocess_pending, reprocessed, deleted.';
    END IF;
    SELECT k.telegram_date INTO v_date FROM telegram_gateway.message_keys k
     WHERE k.channel_id = p_channel_id AND k.message_id = p_message_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE telegram_gateway.messages m
       SET status = p_status,
           published_at = CASE WHEN p_status = 'published'
                               THEN coalesce(m.published_at, now()) ELSE m.published_at END,
           failed_at = CASE WHEN p_status = 'failed' THEN now() ELSE m.failed_at END,
           queued_at = CASE WHEN p_status = 'queued'
                            THEN coalesce(m.queued_at, now()) ELSE m.queued_at END,
           deleted_at = CASE WHEN p_status = 'deleted'
                             THEN coalesce(m.deleted_at, now()) ELSE m.deleted_at END,
           publish_attempts = m.publish_attempts
               + CASE WHEN p_status IN ('published', 'failed', 'retrying') THEN 1 ELSE 0 END
     WHERE m.channel_id = p_channel_id AND m.message_id = p_message_id
       AND m.telegram_date = v_date
       AND m.status <> p_status;
    IF p_status = 'published' THEN
        PERFORM telegram_gateway.mark_batch_as_published(
            ARRAY[p_channel_id], ARRAY[p_message_id]);
    END IF;
    RETURN true;
END
$$;

-- Soft-delete messages of one channel (Telegram delete events): deleted_at and status
-- 'deleted'. The rows are locked in key order first, the order of the poller's apply, so a
-- delete and an apply of the same posts wait for each other instead of deadlocking. Returns
-- how many were newly deleted; deleting again changes nothing.
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
    WITH locked AS MATERIALIZED (
        SELECT h.message_id, h.telegram_date
          FROM (SELECT DISTINCT u.message_id FROM unnest(p_message_ids) AS u(message_id)
                 ORDER BY u.message_id) AS wanted
          CROSS JOIN LATERAL (
                SELECT m.message_id, m.telegram_date
                  FROM telegram_gateway.message_keys k
                  JOIN telegram_gateway.messages m
                    ON m.channel_id = k.channel_id AND m.message_id = k.message_id
                   AND m.telegram_date = k.telegram_date
                 WHERE k.channel_id = p_channel_id AND k.message_id = wanted.message_id
                   AND m.deleted_at IS NULL
                   FOR UPDATE OF m) AS h
    )
    UPDATE telegram_gateway.messages m
       SET deleted_at = now(),
           status = 'deleted'
      FROM locked l
     WHERE m.channel_id = p_channel_id AND m.message_id = l.message_id
       AND m.telegram_date = l.telegram_date;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Outbox depth: committed, not deleted messages the broker has not confirmed.
CREATE OR REPLACE FUNCTION telegram_gateway.count_unpublished()
RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT count(*)
      FROM telegram_gateway.message_outbox o
      JOIN telegram_gateway.messages m
        ON m.channel_id = o.channel_id AND m.message_id = o.message_id
       AND m.telegram_date = o.telegram_date
     WHERE o.published_at IS NULL AND m.deleted_at IS NULL
$$;

-- cleanup_old_messages (003) with the outbox rows of the removed messages.
-- Delete messages older than days_old days, except pending and processing ones (a consumer
-- still owes them). Whole partitions below the cutoff without such rows (empty ones too) are
-- dropped instead of deleted row by row. Keys, outbox rows and edit history of
-- messages that are gone (also those dropped by a TimescaleDB retention policy) go as well.
-- Returns how many messages were removed.
CREATE OR REPLACE FUNCTION telegram_gateway.cleanup_old_messages(days_old integer)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_cutoff      timestamptz;
    v_partitioned boolean := telegram_gateway.uses_declarative_partitions();
    v_removed     bigint := 0;
    v_rows        bigint;
    v_owed        bigint;
    v_part        record;
BEGIN
    IF days_old IS NULL OR days_old < 1 THEN
        RAISE EXCEPTION 'cleanup_old_messages: days_old must be at least 1, got %',
            coalesce(days_old::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_cutoff := now() - make_interval(days => days_old);

    IF v_partitioned THEN
        FOR v_part IN
            SELECT p.partition FROM telegram_gateway.message_partitions() p
             WHERE p.range_end <= v_cutoff
        LOOP
            EXECUTE format(
                'SELECT count(*), '
                '       count(*) FILTER (WHERE processing_state IN (''pending'', ''processing'')) '
                '  FROM %s', v_part.partition)
               INTO v_rows, v_owed;
            IF v_owed = 0 THEN
                EXECUTE format('DROP TABLE %s', v_part.partition);
                v_removed := v_removed + v_rows;
            END IF;
        END LOOP;
    END IF;

    DELETE FROM telegram_gateway.messages m
     WHERE m.telegram_date < v_cutoff
       AND m.processing_state NOT IN ('pending', 'processing');
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    v_removed := v_removed + v_rows;

    DELETE FROM telegram_gateway.message_keys k
     WHERE k.telegram_date < v_cutoff
       AND NOT EXISTS (SELECT 1 FROM telegram_gateway.messages m
                        WHERE m.channel_id = k.channel_id AND m.message_id = k.message_id
                          AND m.telegram_date = k.telegram_date);
    DELETE FROM telegram_gateway.message_outbox o
     WHERE o.telegram_date < v_cutoff
       AND NOT EXISTS (SELECT 1 FROM telegram_gateway.message_keys k
                        WHERE k.channel_id = o.channel_id AND k.message_id = o.message_id);
    DELETE FROM telegram_gateway.message_edits e
     WHERE NOT EXISTS (SELECT 1 FROM telegram_gateway.message_keys k
                        WHERE k.channel_id = e.channel_id AND k.message_id = e.message_id);
    RETURN v_removed;
END
$$;

-- channel_health_summary (005) with the outbox read from message_outbox.
-- health: inactive (channel switched off) > backlog (a pending message received more than
-- 5 minutes ago) > unpublished (a committed message not published for more than 5 minutes: the
-- outbox relay is behind) > stale (no message for 24 hours) > ok.
CREATE OR REPLACE VIEW telegram_gateway.channel_health_summary AS
SELECT c.channel_id,
       c.title,
       c.username,
       c.is_active,
       cur.last_message_id,
       cur.last_message_date,
       cur.last_backfill_at,
       round(extract(epoch FROM now() - cur.last_message_date)::numeric, 3)
           AS seconds_since_last_message,
       s.pending_count,
       s.oldest_pending_date,
       s.messages_24h,
       s.failed_24h,
       outbox.unpublished_count,
       outbox.oldest_unpublished_at,
       CASE
           WHEN NOT c.is_active THEN 'inactive'
           WHEN backlog_age.oldest_pending_received_at < now() - INTERVAL '5 minutes'
               THEN 'backlog'
           WHEN outbox.oldest_unpublished_at < now() - INTERVAL '5 minutes' THEN 'unpublished'
           WHEN cur.last_message_date IS NULL
                OR cur.last_message_date < now() - INTERVAL '24 hours' THEN 'stale'
           ELSE 'ok'
       END AS health
  FROM telegram_gateway.channels c
  LEFT JOIN telegram_gateway.channel_cursors cur ON cur.channel_id = c.channel_id
  JOIN telegram_gateway.message_processing_stats s ON s.channel_id = c.channel_id
 CROSS JOIN LATERAL (
        SELECT min(m.received_at) AS oldest_pending_received_at
          FROM telegram_gateway.messages m
         WHERE m.channel_id = c.channel_id
           AND m.processing_state = 'pending' AND m.deleted_at IS NULL) backlog_age
 CROSS JOIN LATERAL (
        SELECT count(*) AS unpublished_count, min(o.received_at) AS oldest_unpublished_at
          FROM telegram_gateway.message_outbox o
          JOIN telegram_gateway.messages m
            ON m.channel_id = o.channel_id AND m.message_id = o.message_id
           AND m.telegram_date = o.telegram_date
         WHERE o.channel_id = c.channel_id
           AND o.published_at IS NULL AND m.deleted_at IS NULL) outbox;

COMMENT ON VIEW telegram_gateway.channel_health_summary IS
    'One row per channel with cursor, backlog, outbox and a health verdict: '
    'inactive > backlog (pending > 5 min) > unpublished (outbox > 5 min) > '
    'stale (no message for 24 h) > ok.';
