-- 007_timescaledb.sql — TimescaleDB storage policies, only where the extension (TSL) is installed
-- (001_schema.sql made messages a hypertable then): compression of chunks older than 14 days
-- (segmented by channel), and a 90-day retention policy. Without TimescaleDB this does nothing:
-- retention is telegram_gateway.cleanup_old_messages(days), run by the maintenance timer.

DO $do$
DECLARE
    v_compressed boolean;
BEGIN
    IF NOT tgstack_meta.timescaledb_tsl_enabled() THEN
        -- Without TimescaleDB, or with its Apache-2 build (no policies): see 006.
        RAISE NOTICE 'TimescaleDB (TSL) is not available: compression and retention policies '
                     'skipped (cleanup_old_messages does retention)';
        RETURN;
    END IF;
    EXECUTE $q$
        SELECT coalesce(bool_or(compression_enabled), false)
          FROM timescaledb_information.hypertables
         WHERE hypertable_schema = 'telegram_gateway' AND hypertable_name = 'messages'
    $q$ INTO v_compressed;
    IF NOT v_compressed THEN
        EXECUTE $q$
            ALTER TABLE telegram_gateway.messages SET (
                timescaledb.compress,
                timescaledb.compress_segmentby = 'channel_id',
                timescaledb.compress_orderby = 'telegram_date DESC, message_id DESC')
        $q$;
    END IF;
    EXECUTE $q$
        SELECT add_compression_policy('telegram_gateway.messages', INTERVAL '14 days',
                                      if_not_exists => true)
    $q$;
    EXECUTE $q$
        SELECT add_retention_policy('telegram_gateway.messages', INTERVAL '90 days',
                                    if_not_exists => true)
    $q$;
END
$do$;
