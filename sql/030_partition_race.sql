-- 030_partition_race.sql — ensure_partitions safe for concurrent writers.
--
-- 003 re-checked with to_regclass after taking its advisory lock, but an advisory lock does not
-- make the backend read catalog invalidations, so to_regclass could still miss the partition
-- the lock holder had just created and committed: the second writer then failed with
-- "relation ... already exists" (seen with two bulk upserts of the same new month at once).
-- The re-check now reads pg_class with a fresh snapshot, and a partition created in between
-- anyway (by a caller that does not take the lock) counts as present.
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
            IF NOT EXISTS (SELECT 1
                             FROM pg_catalog.pg_class c
                             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = 'telegram_gateway' AND c.relname = v_name) THEN
                BEGIN
                    EXECUTE format(
                        'CREATE TABLE telegram_gateway.%I PARTITION OF telegram_gateway.messages '
                        'FOR VALUES FROM (%L) TO (%L)',
                        v_name,
                        to_char(v_month, 'YYYY-MM-DD HH24:MI:SS') || '+00',
                        to_char(v_month + INTERVAL '1 month', 'YYYY-MM-DD HH24:MI:SS') || '+00');
                    v_created := v_created + 1;
                EXCEPTION WHEN duplicate_table THEN
                    NULL;  -- created meanwhile by someone else: present is all we need
                END;
            END IF;
        END IF;
        v_month := v_month + INTERVAL '1 month';
    END LOOP;
    RETURN v_created;
END
$$;
