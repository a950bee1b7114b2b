-- 002_indexes.sql — indexes of telegram_gateway.messages and friends.
--
-- Indexes on the partitioned parent are created on every partition, present and future.
-- Predicates of the partial indexes are spelled exactly as the queries in 003/004 spell them,
-- so the planner can match them.

-- Polling across all channels, oldest first: the unprocessed rows only (a few percent of the
-- table), keyed in the order the poller reads them.
CREATE INDEX IF NOT EXISTS idx_telegram_messages_unprocessed
    ON telegram_gateway.messages (telegram_date, channel_id, message_id)
    WHERE processing_state = 'pending' AND deleted_at IS NULL;

-- Polling one channel, oldest first. It covers everything the polling query filters and sorts
-- on (channel, date, id in the key; pending and not deleted in the predicate), so the scan
-- visits the heap only for the rows it returns. Message text is deliberately not INCLUDEd: a
-- long post would exceed the btree tuple size limit (~2.7 kB) and make its insert fail.
CREATE INDEX IF NOT EXISTS idx_telegram_messages_polling_cover
    ON telegram_gateway.messages (channel_id, telegram_date, message_id)
    WHERE processing_state = 'pending' AND deleted_at IS NULL;

-- Claims whose lease ran out (release_expired_claims).
CREATE INDEX IF NOT EXISTS idx_telegram_messages_processing
    ON telegram_gateway.messages (claim_expires_at)
    WHERE processing_state = 'processing';

-- Containment queries on metadata (metadata @> '{"key": ...}').
CREATE INDEX IF NOT EXISTS idx_telegram_messages_metadata
    ON telegram_gateway.messages USING gin (metadata jsonb_path_ops);

-- "What did consumer X process" (legacy metadata->>'processed_by' lookups).
CREATE INDEX IF NOT EXISTS idx_telegram_messages_processed_by
    ON telegram_gateway.messages ((metadata ->> 'processed_by'), processed_at)
    WHERE (metadata ->> 'processed_by') IS NOT NULL;

-- Per-channel time ranges, newest first: channel pages (API), health and stats views. Kept to
-- the two key columns: every index costs each insert (the bulk upsert spends a third of its
-- time maintaining indexes), and the state columns would double this one's width.
CREATE INDEX IF NOT EXISTS idx_telegram_messages_analytics
    ON telegram_gateway.messages (channel_id, telegram_date DESC);

-- The outbox: committed rows not yet published to RabbitMQ, oldest first.
CREATE INDEX IF NOT EXISTS idx_telegram_messages_outbox
    ON telegram_gateway.messages (received_at)
    WHERE published_at IS NULL AND deleted_at IS NULL;

-- Signals by asset, newest first (API).
CREATE INDEX IF NOT EXISTS idx_tp_capital_signals_asset
    ON tp_capital.signals (asset, created_at DESC);
