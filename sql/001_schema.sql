-- 001_schema.sql — schemas and tables of tgstack.
--
-- Every migration is idempotent: it can run again on a database that already has its objects
-- (the migrator runs each file once, recorded in tgstack_meta.schema_migrations, but a file
-- replayed by hand must not break anything either).
--
-- telegram_gateway.messages is keyed on (channel_id, message_id, telegram_date) and split by
-- the message's own immutable telegram_date: monthly declarative partitions on plain
-- PostgreSQL (created on demand by telegram_gateway.ensure_partitions), or a TimescaleDB
-- hypertable when the extension can be used. create_hypertable cannot take a table that is
-- already partitioned, so the DDL branches here, before the table exists.
--
-- A partitioned table cannot have a unique index without the partition key, so "one row per
-- (channel_id, message_id)" is enforced by telegram_gateway.message_keys, which every insert
-- goes through (see 004_upsert_helpers.sql).

CREATE SCHEMA IF NOT EXISTS tgstack_meta;
CREATE SCHEMA IF NOT EXISTS telegram_gateway;
CREATE SCHEMA IF NOT EXISTS tp_capital;

-- TimescaleDB is used when its package is installed on the server. Setting
-- `ALTER DATABASE ... SET tgstack.timescaledb = 'off'` before migrating forces the plain path.
CREATE OR REPLACE FUNCTION tgstack_meta.timescaledb_available()
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(current_setting('tgstack.timescaledb', true), 'auto') <> 'off'
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'timescaledb')
$$;

CREATE OR REPLACE FUNCTION tgstack_meta.timescaledb_enabled()
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb')
$$;

CREATE OR REPLACE FUNCTION tgstack_meta.touch_updated_at()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- Messages -------------------------------------------------------------------------------------

DO $do$
DECLARE
    -- Marked channel ids: -(10^12 + id), id below 10^12 (see tgstack.models).
    v_columns CONSTANT text := $cols$
        channel_id       bigint      NOT NULL
            CONSTRAINT messages_channel_id_check
            CHECK (channel_id BETWEEN -1999999999999 AND -1000000000001),
        message_id       bigint      NOT NULL
            CONSTRAINT messages_message_id_check CHECK (message_id BETWEEN 1 AND 2147483647),
        telegram_date    timestamptz NOT NULL,
        thread_id        bigint,
        grouped_id       bigint,
        source           text        NOT NULL DEFAULT 'user_client'
            CONSTRAINT messages_source_check CHECK (source <> ''),
        message_type     text        NOT NULL DEFAULT 'text',
        text             text,
        caption          text,
        media_type       text,
        media_refs       jsonb,
        edit_date        timestamptz,
        edit_count       integer     NOT NULL DEFAULT 0,
        status           text        NOT NULL DEFAULT 'received'
            CONSTRAINT messages_status_check CHECK (status IN (
                'received', 'retrying', 'published', 'queued', 'failed',
                'reprocess_pending', 'reprocessed', 'deleted')),
        processing_state text        NOT NULL DEFAULT 'pending'
            CONSTRAINT messages_processing_state_check CHECK (processing_state IN (
                'pending', 'processing', 'processed', 'ignored', 'failed')),
        claimed_by       text,
        claim_expires_at timestamptz,
        processed_at     timestamptz,
        process_attempts integer     NOT NULL DEFAULT 0,
        last_error       text,
        publish_attempts integer     NOT NULL DEFAULT 0,
        received_at      timestamptz NOT NULL DEFAULT now(),
        published_at     timestamptz,
        failed_at        timestamptz,
        queued_at        timestamptz,
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now(),
        deleted_at       timestamptz,
        metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb
            CONSTRAINT messages_metadata_check CHECK (jsonb_typeof(metadata) = 'object'),
        CONSTRAINT messages_pkey PRIMARY KEY (channel_id, message_id, telegram_date)
    $cols$;
BEGIN
    IF to_regclass('telegram_gateway.messages') IS NOT NULL THEN
        RETURN;
    END IF;
    IF tgstack_meta.timescaledb_available() THEN
        EXECUTE 'CREATE EXTENSION IF NOT EXISTS timescaledb';
        EXECUTE format('CREATE TABLE telegram_gateway.messages (%s)', v_columns);
        EXECUTE $ts$
            SELECT create_hypertable('telegram_gateway.messages', 'telegram_date',
                                     chunk_time_interval => INTERVAL '1 day')
        $ts$;
    ELSE
        EXECUTE format(
            'CREATE TABLE telegram_gateway.messages (%s) PARTITION BY RANGE (telegram_date)',
            v_columns);
    END IF;
END
$do$;

COMMENT ON TABLE telegram_gateway.messages IS
    'Channel posts, one row per (channel_id, message_id); partitioned (or a hypertable) on '
    'the immutable telegram_date. status is the publishing side (legacy values), '
    'processing_state the consumer side; metadata.processed_by names the consumer.';

CREATE OR REPLACE TRIGGER messages_touch_updated_at
    BEFORE UPDATE ON telegram_gateway.messages
    FOR EACH ROW EXECUTE FUNCTION tgstack_meta.touch_updated_at();

-- The dedup ledger: one row per message ever stored, whatever its telegram_date. Its primary
-- key serialises concurrent inserts of the same message and tells where (which partition)
-- the row lives, so updates by key touch one partition.
CREATE TABLE IF NOT EXISTS telegram_gateway.message_keys (
    channel_id    bigint      NOT NULL
        CONSTRAINT message_keys_channel_id_check
        CHECK (channel_id BETWEEN -1999999999999 AND -1000000000001),
    message_id    bigint      NOT NULL
        CONSTRAINT message_keys_message_id_check CHECK (message_id BETWEEN 1 AND 2147483647),
    telegram_date timestamptz NOT NULL
        CONSTRAINT message_keys_telegram_date_check
        CHECK (telegram_date >= '2013-08-01 00:00:00+00'),
    CONSTRAINT message_keys_pkey PRIMARY KEY (channel_id, message_id)
);

COMMENT ON TABLE telegram_gateway.message_keys IS
    'One row per stored message: enforces uniqueness of (channel_id, message_id) across '
    'partitions and maps a key to its telegram_date (partition).';

-- Edit history: the state a message had before each edit, idempotent per edit.
CREATE TABLE IF NOT EXISTS telegram_gateway.message_edits (
    channel_id         bigint      NOT NULL
        CONSTRAINT message_edits_channel_id_check
        CHECK (channel_id BETWEEN -1999999999999 AND -1000000000001),
    message_id         bigint      NOT NULL
        CONSTRAINT message_edits_message_id_check CHECK (message_id BETWEEN 1 AND 2147483647),
    edit_date          timestamptz NOT NULL,
    previous_edit_date timestamptz,
    previous_text      text,
    previous_caption   text,
    text               text,
    caption            text,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT message_edits_pkey PRIMARY KEY (channel_id, message_id, edit_date)
);

-- Channels and their backfill cursors --------------------------------------------------------

CREATE TABLE IF NOT EXISTS telegram_gateway.channels (
    channel_id bigint      NOT NULL
        CONSTRAINT channels_channel_id_check
        CHECK (channel_id BETWEEN -1999999999999 AND -1000000000001),
    title      text,
    username   text,
    is_active  boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channels_pkey PRIMARY KEY (channel_id)
);

CREATE OR REPLACE TRIGGER channels_touch_updated_at
    BEFORE UPDATE ON telegram_gateway.channels
    FOR EACH ROW EXECUTE FUNCTION tgstack_meta.touch_updated_at();

CREATE TABLE IF NOT EXISTS telegram_gateway.channel_cursors (
    channel_id        bigint      NOT NULL
        CONSTRAINT channel_cursors_channel_id_fkey
        REFERENCES telegram_gateway.channels (channel_id) ON DELETE CASCADE,
    last_message_id   bigint      NOT NULL DEFAULT 0
        CONSTRAINT channel_cursors_last_message_id_check CHECK (last_message_id >= 0),
    last_message_date timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    last_backfill_at  timestamptz,
    CONSTRAINT channel_cursors_pkey PRIMARY KEY (channel_id)
);

COMMENT ON TABLE telegram_gateway.channel_cursors IS
    'Highest message id stored per channel; the gateway backfills from here '
    '(iter_messages(min_id=last_message_id)).';

-- TP Capital signals -----------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS tp_capital.signals (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    channel_id    bigint      NOT NULL
        CONSTRAINT signals_channel_id_check
        CHECK (channel_id BETWEEN -1999999999999 AND -1000000000001),
    message_id    bigint      NOT NULL
        CONSTRAINT signals_message_id_check CHECK (message_id BETWEEN 1 AND 2147483647),
    telegram_date timestamptz,
    asset         text        NOT NULL CONSTRAINT signals_asset_check CHECK (asset <> ''),
    signal_type   text        NOT NULL
        CONSTRAINT signals_signal_type_check CHECK (signal_type <> ''),
    buy_min       numeric     CONSTRAINT signals_buy_min_check CHECK (buy_min > 0),
    buy_max       numeric     CONSTRAINT signals_buy_max_check CHECK (buy_max > 0),
    target_1      numeric     CONSTRAINT signals_target_1_check CHECK (target_1 > 0),
    target_2      numeric     CONSTRAINT signals_target_2_check CHECK (target_2 > 0),
    target_final  numeric     CONSTRAINT signals_target_final_check CHECK (target_final > 0),
    stop          numeric     CONSTRAINT signals_stop_check CHECK (stop > 0),
    raw_text      text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz,
    CONSTRAINT signals_pkey PRIMARY KEY (id),
    CONSTRAINT signals_source_message_key UNIQUE (channel_id, message_id),
    CONSTRAINT signals_buy_range_check CHECK (buy_min <= buy_max)
);

COMMENT ON TABLE tp_capital.signals IS
    'Trading signals parsed from channel posts; at most one per source message.';

CREATE OR REPLACE TRIGGER signals_touch_updated_at
    BEFORE UPDATE ON tp_capital.signals
    FOR EACH ROW EXECUTE FUNCTION tgstack_meta.touch_updated_at();
