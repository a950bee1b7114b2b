-- 020_api.sql — what the Gateway API (tgstack api) reads with: the text it searches, and
-- indexes for its newest-first keyset pagination and its text search.
--
-- Idempotent: CREATE OR REPLACE / IF NOT EXISTS throughout; the trigram index is created only
-- where pg_trgm can be (it is a trusted extension from PostgreSQL 13: the database owner may
-- create it); without it the search still works, by scanning.

-- The text the API's `q` parameter searches: text and caption in one string (a newline
-- between them, which a search string cannot contain, so no match spans the two). SQL,
-- IMMUTABLE and one expression: the planner inlines it, so the API's query and the index
-- below use the very same expression.
CREATE OR REPLACE FUNCTION telegram_gateway.message_search_text(p_text text, p_caption text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(p_text, '') || E'\n' || coalesce(p_caption, '')
$$;

COMMENT ON FUNCTION telegram_gateway.message_search_text(text, text) IS
    'Text and caption of a message as one searchable string (API text search, trigram index).';

-- All channels, newest first: GET /v1/messages orders by (telegram_date, channel_id,
-- message_id) DESC and pages with a row comparison on the same three columns. A btree is read
-- backwards, so one ascending index serves it; per partition, an ordered Append keeps the
-- scan to the newest rows. (One channel's pages use idx_telegram_messages_analytics.)
CREATE INDEX IF NOT EXISTS idx_telegram_messages_api_recent
    ON telegram_gateway.messages (telegram_date, channel_id, message_id);

-- Signals, newest first by the post's date (created_at when the date is unknown).
CREATE INDEX IF NOT EXISTS idx_tp_capital_signals_api_recent
    ON tp_capital.signals ((coalesce(telegram_date, created_at)), channel_id, message_id);

-- Case-insensitive substring search (ILIKE '%...%') over text and caption. A trigram GIN index
-- makes it an index scan, but it costs every insert dearly (measured here: bulk upsert about
-- three times slower with it), so it is opt-in: run
--   SELECT telegram_gateway.create_api_search_index();
-- or set `ALTER DATABASE … SET tgstack.api_search_index = 'on'` before migrating. Without it
-- `q` scans the rows its other filters (channel, time range) leave.
CREATE OR REPLACE FUNCTION telegram_gateway.create_api_search_index()
RETURNS boolean
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'pg_trgm') THEN
        RAISE NOTICE 'pg_trgm is not installed: API text search runs without an index';
        RETURN false;
    END IF;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'not allowed to create pg_trgm here: API text search runs without an index';
        RETURN false;
    END;
    -- The operator class lives in the extension's schema, which need not be on search_path.
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS idx_telegram_messages_api_search'
        ' ON telegram_gateway.messages USING gin'
        ' ((telegram_gateway.message_search_text(text, caption)) %I.gin_trgm_ops)',
        (SELECT n.nspname FROM pg_catalog.pg_extension e
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname = 'pg_trgm'));
    RETURN true;
END
$fn$;

DO $do$
BEGIN
    IF coalesce(current_setting('tgstack.api_search_index', true), 'off') = 'on' THEN
        PERFORM telegram_gateway.create_api_search_index();
    END IF;
END
$do$;
