-- 003_functions.sql — partition management, input checks, polling, claims, processing marks,
-- publishing status and retention.
--
-- Errors raised here carry an SQLSTATE of class 22 (data exception) and a message that starts
-- with the function's name, so a caller can tell bad input from an unavailable database.
-- Functions that touch one message look its telegram_date up in message_keys first, so the
-- update reaches exactly one partition.

-- Input checks ---------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION telegram_gateway.assert_channel_id(p_channel_id bigint, p_caller text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_channel_id IS NULL THEN
        RAISE EXCEPTION '%: channel_id must not be null', p_caller
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_channel_id NOT BETWEEN -1999999999999 AND -1000000000001 THEN
        RAISE EXCEPTION '%: channel_id % is out of range', p_caller, p_channel_id
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'A channel id is marked: -100 followed by the channel id '
                         '(-1999999999999 .. -1000000000001).';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION telegram_gateway.assert_message_id(p_message_id bigint, p_caller text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_message_id IS NULL THEN
        RAISE EXCEPTION '%: message_id must not be null', p_caller
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_message_id NOT BETWEEN 1 AND 2147483647 THEN
        RAISE EXCEPTION '%: message_id % is out of range (1 .. 2147483647)', p_caller, p_message_id
            USING ERRCODE = 'numeric_value_out_of_range';
    END IF;
END
$$;

-- Checks two parallel key arrays: same length, every id in range.
CREATE OR REPLACE FUNCTION telegram_gateway.assert_message_keys(
    p_channel_ids bigint[], p_message_ids bigint[], p_caller text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_bad record;
BEGIN
    IF p_channel_ids IS NULL OR p_message_ids IS NULL THEN
        RAISE EXCEPTION '%: channel ids and message ids must not be null', p_caller
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(p_channel_ids) <> cardinality(p_message_ids) THEN
        RAISE EXCEPTION '%: % channel ids but % message ids', p_caller,
            cardinality(p_channel_ids), cardinality(p_message_ids)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT u.channel_id, u.message_id INTO v_bad
      FROM unnest(p_channel_ids, p_message_ids) AS u(channel_id, message_id)
     WHERE u.channel_id IS NULL OR u.message_id IS NULL
        OR u.channel_id NOT BETWEEN -1999999999999 AND -1000000000001
        OR u.message_id NOT BETWEEN 1 AND 2147483647
     LIMIT 1;
    IF FOUND THEN
        PERFORM telegram_gateway.assert_channel_id(v_bad.channel_id, p_caller);
        PERFORM telegram_gateway.assert_message_id(v_bad.message_id, p_caller);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION telegram_gateway.assert_limit(p_limit integer, p_caller text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION '%: limit must be between 1 and 10000, got %', p_caller,
            coalesce(p_limit::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- Partitions -----------------------------------------------------------------------------------

-- Whether messages is a declarative partitioned table (false for a TimescaleDB hypertable).
CREATE OR REPLACE FUNCTION telegram_gateway.uses_declarative_partitions()
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT relkind = 'p' FROM pg_catalog.pg_class
     WHERE oid = 'telegram_gateway.messages'::regclass
$$;

-- The partitions of messages with their ranges [range_start, range_end).
CREATE OR REPLACE FUNCTION telegram_gateway.message_partitions()
RETURNS TABLE (partition regclass, range_start timestamptz, range_end timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT c.oid::regclass,
           substring(b.bound FROM $re$FROM \('([^']+)'\)$re$)::timestamptz,
           substring(b.bound FROM $re$TO \('([^']+)'\)$re$)::timestamptz
      FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) b
     WHERE i.inhparent = 'telegram_gateway.messages'::regclass
       AND c.relispartition
     ORDER BY 2
$$;

-- Create the monthly partitions (UTC months) covering every month from p_from to p_to
-- inclusive; returns how many were created. A no-op on a TimescaleDB hypertable, which makes
-- its chunks itself. Concurrent callers are serialised by an advisory lock; the common case
-- (partition exists) takes no lock at all.
CREATE OR REPLACE FUNCTION telegram_gateway.ensure_partitions(p_from timestamptz, p_to timestamptz)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_month   timestamp;  -- month start, UTC wall clock
    v_last    timestamp;
    v_name    text;
    v_created integer := 0;
BEGIN
    IF p_from IS NULL OR p_to IS NULL OR p_from > p_to THEN
        RAISE EXCEPTION 'ensure_partitions: need p_from <= p_to, got % .. %', p_from, p_to
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT telegram_gateway.uses_declarative_partitions() THEN
        RETURN 0;
    END IF;
    v_month := date_trunc('month', p_from AT TIME ZONE 'UTC');
    v_last := date_trunc('month', p_to AT TIME ZONE 'UTC');
    IF v_last > v_month + INTERVAL '20 years' THEN
        RAISE EXCEPTION 'ensure_partitions: range % .. % spans more than 20 years', p_from, p_to
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WHILE v_month <= v_last LOOP
        v_name := 'messages_' || to_char(v_month, '"y"YYYY"m"MM');
        IF to_regclass('telegram_gateway.' || quote_ident(v_name)) IS NULL THEN
            PERFORM pg_advisory_xact_lock(hashtextextended('telegram_gateway.ensure_partitions', 0));
            IF to_regclass('telegram_gateway.' || quote_ident(v_name)) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE telegram_gateway.%I PARTITION OF telegram_gateway.messages '
                    'FOR VALUES FROM (%L) TO (%L)',
                    v_name,
                    to_char(v_month, 'YYYY-MM-DD HH24:MI:SS') || '+00',
                    to_char(v_month + INTERVAL '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
                v_created := v_created + 1;
            END IF;
        END IF;
        v_month := v_month + INTERVAL '1 month';
    END LOOP;
    RETURN v_created;
END
$$;

-- Polling --------------------------------------------------------------------------------------

-- The oldest pending, not deleted messages (of one channel, or of all), oldest first.
--
-- Each branch is an ordered Append of index scans on a small partial index (pending and not
-- deleted rows only) that stops after p_limit rows: idx_telegram_messages_polling_cover for
-- one channel, idx_telegram_messages_unprocessed for all. The plans are generic (planned once
-- per connection): a custom plan per call would spend more time planning the partitions than
-- running the query. The rows are read straight from the partitions: joining keys picked from
-- the index back to the table was measured slower (twice the planning, four times the
-- execution) for the same heap visits.
CREATE OR REPLACE FUNCTION telegram_gateway.get_unprocessed_messages_optimized(
    p_channel_id bigint DEFAULT NULL,
    p_limit integer DEFAULT 100)
RETURNS SETOF telegram_gateway.messages
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM telegram_gateway.assert_limit(p_limit, 'get_unprocessed_messages_optimized');
    IF p_channel_id IS NULL THEN
        RETURN QUERY
        SELECT m.*
          FROM telegram_gateway.messages m
         WHERE m.processing_state = 'pending' AND m.deleted_at IS NULL
         ORDER BY m.telegram_date, m.channel_id, m.message_id
         LIMIT p_limit;
    ELSE
        PERFORM telegram_gateway.assert_channel_id(p_channel_id,
                                                   'get_unprocessed_messages_optimized');
        RETURN QUERY
        SELECT m.*
          FROM telegram_gateway.messages m
         WHERE m.channel_id = p_channel_id
           AND m.processing_state = 'pending' AND m.deleted_at IS NULL
         ORDER BY m.telegram_date, m.message_id
         LIMIT p_limit;
    END IF;
END
$$;

-- The outbox: committed messages not published yet (and not deleted), received at least
-- p_min_age_seconds ago, oldest first. The relay republishes them, then marks them with
-- upsert_message_status(..., 'published').
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
      FROM telegram_gateway.messages m
     WHERE m.published_at IS NULL AND m.deleted_at IS NULL
       AND m.received_at <= now() - make_interval(secs => p_min_age_seconds)
     ORDER BY m.received_at
     LIMIT p_limit;
END
$$;

-- Claim up to p_limit pending messages for one consumer (several pollers never get the same
-- message: SKIP LOCKED), with a lease; release_expired_claims hands expired ones back.
CREATE OR REPLACE FUNCTION telegram_gateway.claim_unprocessed_messages(
    p_consumer text,
    p_limit integer DEFAULT 100,
    p_lease_seconds integer DEFAULT 300,
    p_channel_id bigint DEFAULT NULL)
RETURNS SETOF telegram_gateway.messages
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller CONSTANT text := 'claim_unprocessed_messages';
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
    PERFORM telegram_gateway.assert_limit(p_limit, v_caller);
    IF p_channel_id IS NOT NULL THEN
        PERFORM telegram_gateway.assert_channel_id(p_channel_id, v_caller);
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT u.channel_id, u.message_id, u.telegram_date
          FROM telegram_gateway.messages u
         WHERE u.processing_state = 'pending' AND u.deleted_at IS NULL
           AND (p_channel_id IS NULL OR u.channel_id = p_channel_id)
         ORDER BY u.telegram_date, u.channel_id, u.message_id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
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

-- Hand expired claims back (pending), or give up on a message (failed) after p_max_attempts.
CREATE OR REPLACE FUNCTION telegram_gateway.release_expired_claims(p_max_attempts integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_count integer;
BEGIN
    IF p_max_attempts IS NULL OR p_max_attempts < 1 THEN
        RAISE EXCEPTION 'release_expired_claims: max attempts must be at least 1, got %',
            coalesce(p_max_attempts::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE telegram_gateway.messages m
       SET processing_state = CASE WHEN m.process_attempts >= p_max_attempts
                                   THEN 'failed' ELSE 'pending' END,
           last_error = CASE WHEN m.process_attempts >= p_max_attempts
                             THEN format('claim by %s expired after %s attempts',
                                         m.claimed_by, m.process_attempts)
                             ELSE m.last_error END,
           processed_at = CASE WHEN m.process_attempts >= p_max_attempts
                               THEN now() ELSE m.processed_at END,
           claimed_by = NULL,
           claim_expires_at = NULL
     WHERE m.processing_state = 'processing' AND m.claim_expires_at < now();
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Processing marks -----------------------------------------------------------------------------

-- Mark messages processed (or ignored / failed) by a consumer. Idempotent: a message already
-- in that state for that consumer is left alone; returns how many rows changed.
CREATE OR REPLACE FUNCTION telegram_gateway.mark_batch_as_processed(
    p_channel_ids bigint[],
    p_message_ids bigint[],
    p_processed_by text,
    p_state text DEFAULT 'processed',
    p_error text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_caller CONSTANT text := 'mark_batch_as_processed';
    v_count integer;
BEGIN
    PERFORM telegram_gateway.assert_message_keys(p_channel_ids, p_message_ids, v_caller);
    IF p_processed_by IS NULL OR p_processed_by = '' THEN
        RAISE EXCEPTION '%: processed_by must name the consumer', v_caller
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_state IS NULL OR p_state NOT IN ('processed', 'ignored', 'failed') THEN
        RAISE EXCEPTION '%: unknown processing state %', v_caller, quote_nullable(p_state)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use processed, ignored or failed.';
    END IF;
    UPDATE telegram_gateway.messages m
       SET processing_state = p_state,
           processed_at = now(),
           metadata = m.metadata || jsonb_build_object('processed_by', p_processed_by),
           last_error = coalesce(p_error, m.last_error),
           claimed_by = NULL,
           claim_expires_at = NULL
      FROM unnest(p_channel_ids, p_message_ids) AS u(channel_id, message_id)
      JOIN telegram_gateway.message_keys k
        ON k.channel_id = u.channel_id AND k.message_id = u.message_id
     WHERE m.channel_id = k.channel_id AND m.message_id = k.message_id
       AND m.telegram_date = k.telegram_date
       AND (m.processing_state <> p_state
            OR (m.metadata ->> 'processed_by') IS DISTINCT FROM p_processed_by);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Publishing status ----------------------------------------------------------------------------

-- Set the publishing status of one message and the timestamp that goes with it
-- (published_at, failed_at, queued_at, deleted_at). Returns false when there is no such
-- message. Setting the status it already has changes nothing.
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
    RETURN true;
END
$$;

-- Mark messages published (after the broker confirmed them): status 'published' (a deleted
-- message keeps status 'deleted'), published_at set once, publish_attempts counted. Returns how
-- many rows changed; marking again changes nothing.
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
    UPDATE telegram_gateway.messages m
       SET status = CASE WHEN m.status = 'deleted' THEN m.status ELSE 'published' END,
           published_at = coalesce(m.published_at, now()),
           publish_attempts = m.publish_attempts + 1
      FROM unnest(p_channel_ids, p_message_ids) AS u(channel_id, message_id)
      JOIN telegram_gateway.message_keys k
        ON k.channel_id = u.channel_id AND k.message_id = u.message_id
     WHERE m.channel_id = k.channel_id AND m.message_id = k.message_id
       AND m.telegram_date = k.telegram_date
       AND (m.published_at IS NULL OR m.status NOT IN ('published', 'deleted'));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Retention ------------------------------------------------------------------------------------

-- Delete messages older than days_old days, except pending and processing ones (a consumer
-- still owes them). Whole partitions below the cutoff without such rows (empty ones too) are
-- dropped instead of deleted row by row. Keys and edit history of
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
    DELETE FROM telegram_gateway.message_edits e
     WHERE NOT EXISTS (SELECT 1 FROM telegram_gateway.message_keys k
                        WHERE k.channel_id = e.channel_id AND k.message_id = e.message_id);
    RETURN v_removed;
END
$$;
