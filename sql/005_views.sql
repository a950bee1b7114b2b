-- 005_views.sql — monitoring views (postgres-exporter queries and the API read these).
--
-- Backlog figures (pending, processing) are all-time and come from the partial indexes;
-- throughput figures cover messages posted in the last 24 hours, so they touch only the
-- newest partition(s).

CREATE OR REPLACE VIEW telegram_gateway.message_processing_stats AS
SELECT c.channel_id,
       backlog.pending_count,
       backlog.oldest_pending_date,
       claims.processing_count,
       claims.expired_claims,
       recent.messages_24h,
       recent.processed_24h,
       recent.ignored_24h,
       recent.failed_24h,
       recent.avg_processing_seconds_24h,
       recent.last_processed_at
  FROM telegram_gateway.channels c
 CROSS JOIN LATERAL (
        SELECT count(*) AS pending_count, min(m.telegram_date) AS oldest_pending_date
          FROM telegram_gateway.messages m
         WHERE m.channel_id = c.channel_id
           AND m.processing_state = 'pending' AND m.deleted_at IS NULL) backlog
 CROSS JOIN LATERAL (
        SELECT count(*) AS processing_count,
               count(*) FILTER (WHERE m.claim_expires_at < now()) AS expired_claims
          FROM telegram_gateway.messages m
         WHERE m.channel_id = c.channel_id AND m.processing_state = 'processing') claims
 CROSS JOIN LATERAL (
        SELECT count(*) AS messages_24h,
               count(*) FILTER (WHERE m.processing_state = 'processed') AS processed_24h,
               count(*) FILTER (WHERE m.processing_state = 'ignored') AS ignored_24h,
               count(*) FILTER (WHERE m.processing_state = 'failed') AS failed_24h,
               round(avg(extract(epoch FROM m.processed_at - m.received_at))
                     FILTER (WHERE m.processed_at IS NOT NULL), 3) AS avg_processing_seconds_24h,
               max(m.processed_at) AS last_processed_at
          FROM telegram_gateway.messages m
         WHERE m.channel_id = c.channel_id
           AND m.telegram_date >= now() - INTERVAL '24 hours') recent;

COMMENT ON VIEW telegram_gateway.message_processing_stats IS
    'Per channel: consumer backlog (pending, processing, expired claims; all time) and '
    'throughput of messages posted in the last 24 hours.';

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
        SELECT count(*) AS unpublished_count, min(m.received_at) AS oldest_unpublished_at
          FROM telegram_gateway.messages m
         WHERE m.channel_id = c.channel_id
           AND m.published_at IS NULL AND m.deleted_at IS NULL) outbox;

COMMENT ON VIEW telegram_gateway.channel_health_summary IS
    'One row per channel with cursor, backlog, outbox and a health verdict: '
    'inactive > backlog (pending > 5 min) > unpublished (outbox > 5 min) > '
    'stale (no message for 24 h) > ok.';

-- Key/value metrics of the database and of the tgstack tables (partitions summed into their
-- parent), for postgres-exporter custom queries and dashboards. Only what plain PostgreSQL 15
-- has (pg_stat_statements needs a preload library, so it is not relied on).
CREATE OR REPLACE VIEW telegram_gateway.performance_metrics_realtime AS
WITH db AS (
    SELECT d.* FROM pg_catalog.pg_stat_database d WHERE d.datname = current_database()
), sessions AS (
    SELECT a.state, a.xact_start, a.wait_event_type
      FROM pg_catalog.pg_stat_activity a
     WHERE a.datname = current_database() AND a.backend_type = 'client backend'
), tables AS (
    SELECT coalesce(pg_catalog.pg_partition_root(t.relid), t.relid)::regclass::text AS name,
           sum(t.seq_scan)::numeric AS seq_scans,
           sum(coalesce(t.idx_scan, 0))::numeric AS index_scans,
           sum(t.n_live_tup)::numeric AS live_rows,
           sum(t.n_dead_tup)::numeric AS dead_rows,
           sum(pg_catalog.pg_total_relation_size(t.relid))::numeric AS total_bytes
      FROM pg_catalog.pg_stat_user_tables t
     WHERE t.schemaname IN ('telegram_gateway', 'tp_capital')
     GROUP BY 1
), pending AS (
    SELECT count(*)::numeric AS pending_count,
           coalesce(extract(epoch FROM now() - min(m.received_at)), 0)::numeric
               AS oldest_pending_seconds
      FROM telegram_gateway.messages m
     WHERE m.processing_state = 'pending' AND m.deleted_at IS NULL
)
SELECT 'cache_hit_ratio'::text AS metric, current_database()::text AS object,
       round(db.blks_hit::numeric / nullif(db.blks_hit + db.blks_read, 0), 4) AS value
  FROM db
UNION ALL
SELECT 'transactions_committed', current_database(), db.xact_commit::numeric FROM db
UNION ALL
SELECT 'transactions_rolled_back', current_database(), db.xact_rollback::numeric FROM db
UNION ALL
SELECT 'deadlocks', current_database(), db.deadlocks::numeric FROM db
UNION ALL
SELECT 'temp_bytes', current_database(), db.temp_bytes::numeric FROM db
UNION ALL
SELECT 'connections_total', current_database(), count(*)::numeric FROM sessions
UNION ALL
SELECT 'connections_active', current_database(),
       count(*) FILTER (WHERE sessions.state = 'active')::numeric FROM sessions
UNION ALL
SELECT 'connections_idle_in_transaction', current_database(),
       count(*) FILTER (WHERE sessions.state LIKE 'idle in transaction%')::numeric FROM sessions
UNION ALL
SELECT 'connections_waiting_on_locks', current_database(),
       count(*) FILTER (WHERE sessions.wait_event_type = 'Lock')::numeric FROM sessions
UNION ALL
SELECT 'longest_transaction_seconds', current_database(),
       round(coalesce(max(extract(epoch FROM now() - sessions.xact_start)), 0)::numeric, 3)
  FROM sessions
UNION ALL
SELECT 'pending_messages', 'telegram_gateway.messages', pending.pending_count FROM pending
UNION ALL
SELECT 'oldest_pending_seconds', 'telegram_gateway.messages',
       round(pending.oldest_pending_seconds, 3) FROM pending
UNION ALL
SELECT 'table_seq_scans', tables.name, tables.seq_scans FROM tables
UNION ALL
SELECT 'table_index_scans', tables.name, tables.index_scans FROM tables
UNION ALL
SELECT 'table_live_rows', tables.name, tables.live_rows FROM tables
UNION ALL
SELECT 'table_dead_rows', tables.name, tables.dead_rows FROM tables
UNION ALL
SELECT 'table_total_bytes', tables.name, tables.total_bytes FROM tables;

COMMENT ON VIEW telegram_gateway.performance_metrics_realtime IS
    'Metric name, object (database or table) and value: cache hit ratio, transactions, '
    'connections, longest transaction, consumer backlog, per-table scans/rows/size.';
