-- 006_aggregates.sql — hourly and daily message counts per channel.
--
-- With TimescaleDB: continuous aggregates with refresh policies. Without it: plain
-- materialized views of the same names and columns, with unique indexes so that
-- telegram_gateway.refresh_aggregates() can refresh them CONCURRENTLY (readers never block).
-- TimescaleDB-only statements live in EXECUTE strings so this file is valid SQL everywhere.
-- Continuous aggregates (like compression and retention policies, 007) are TimescaleDB's TSL
-- features: its Apache-2 build (Debian's package, the offline testbed) has hypertables but
-- refuses them, so there the plain materialized views are used as without TimescaleDB.

CREATE OR REPLACE FUNCTION tgstack_meta.timescaledb_tsl_enabled()
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT tgstack_meta.timescaledb_enabled()
       AND coalesce(current_setting('timescaledb.license', true), 'apache') <> 'apache'
$$;

DO $do$
DECLARE
    -- {bucket} is replaced by the bucketing expression of each path.
    v_select CONSTANT text := $sel$
        SELECT {bucket} AS bucket,
               channel_id,
               count(*) AS message_count,
               sum(CASE WHEN media_type IS NOT NULL THEN 1 ELSE 0 END) AS media_count,
               sum(CASE WHEN edit_count > 0 THEN 1 ELSE 0 END) AS edited_count,
               sum(CASE WHEN deleted_at IS NOT NULL THEN 1 ELSE 0 END) AS deleted_count,
               min(message_id) AS first_message_id,
               max(message_id) AS last_message_id
          FROM telegram_gateway.messages
         GROUP BY {bucket}, channel_id
    $sel$;
    v_view record;
BEGIN
    FOR v_view IN
        SELECT * FROM (VALUES ('messages_hourly', 'hour', INTERVAL '3 days', INTERVAL '1 hour',
                               INTERVAL '30 minutes'),
                              ('messages_daily', 'day', INTERVAL '35 days', INTERVAL '1 day',
                               INTERVAL '6 hours'))
                   AS v(name, unit, start_offset, end_offset, schedule)
    LOOP
        CONTINUE WHEN to_regclass('telegram_gateway.' || v_view.name) IS NOT NULL;
        IF tgstack_meta.timescaledb_tsl_enabled() THEN
            EXECUTE format(
                'CREATE MATERIALIZED VIEW telegram_gateway.%I WITH (timescaledb.continuous) AS %s '
                'WITH NO DATA',
                v_view.name,
                replace(v_select, '{bucket}',
                        format('time_bucket(INTERVAL %L, telegram_date)', '1 ' || v_view.unit)));
            EXECUTE format(
                'SELECT add_continuous_aggregate_policy(%L, start_offset => %L::interval, '
                'end_offset => %L::interval, schedule_interval => %L::interval, '
                'if_not_exists => true)',
                'telegram_gateway.' || v_view.name, v_view.start_offset, v_view.end_offset,
                v_view.schedule);
        ELSE
            EXECUTE format(
                'CREATE MATERIALIZED VIEW telegram_gateway.%I AS %s WITH DATA',
                v_view.name,
                replace(v_select, '{bucket}',
                        format('date_trunc(%L, telegram_date, %L)', v_view.unit, 'UTC')));
            EXECUTE format(
                'CREATE UNIQUE INDEX %I ON telegram_gateway.%I (bucket, channel_id)',
                v_view.name || '_bucket_channel_key', v_view.name);
        END IF;
    END LOOP;
END
$do$;

COMMENT ON MATERIALIZED VIEW telegram_gateway.messages_hourly IS
    'Messages per channel and UTC hour (TimescaleDB continuous aggregate, or a plain '
    'materialized view refreshed by telegram_gateway.refresh_aggregates()).';
COMMENT ON MATERIALIZED VIEW telegram_gateway.messages_daily IS
    'Messages per channel and UTC day (TimescaleDB continuous aggregate, or a plain '
    'materialized view refreshed by telegram_gateway.refresh_aggregates()).';

-- Refresh the plain materialized views. With TimescaleDB (TSL) the refresh policies do this
-- (refresh_continuous_aggregate cannot run inside a function's transaction), so it does nothing.
CREATE OR REPLACE FUNCTION telegram_gateway.refresh_aggregates()
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF tgstack_meta.timescaledb_tsl_enabled() THEN
        RETURN;
    END IF;
    EXECUTE 'REFRESH MATERIALIZED VIEW CONCURRENTLY telegram_gateway.messages_hourly';
    EXECUTE 'REFRESH MATERIALIZED VIEW CONCURRENTLY telegram_gateway.messages_daily';
END
$$;
