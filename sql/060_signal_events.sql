-- 060_signal_events.sql — the life of a signal after its first post (issue 16).
--
-- Channels follow a signal up: a target reached, the stop moved, stopped out, closed, cancelled.
-- Each such post is one row of tp_capital.signal_events (one per post, like signals), linked to
-- the signal it follows by the post's reply_to_msg_id or else by channel and asset. The signal
-- carries what its events add up to: status, current_stop and result, re-derived from its
-- active events whenever one is stored, edited or retired (061).
--
-- A post that looks like a signal but cannot be completed (labels and a ticker, no price) is
-- a row of tp_capital.signal_reviews instead of nothing: listed by the API and by
-- `tgstack signals review`, retired when an edit completes it or the post is deleted.

ALTER TABLE tp_capital.signals
    ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'open',
    ADD COLUMN IF NOT EXISTS current_stop numeric,
    ADD COLUMN IF NOT EXISTS result text,
    ADD COLUMN IF NOT EXISTS status_changed_at timestamptz;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'signals_status_check') THEN
        ALTER TABLE tp_capital.signals
            ADD CONSTRAINT signals_status_check
                CHECK (status ~ '^(open|target_[1-9][0-9]*|stopped|closed|cancelled)$'),
            ADD CONSTRAINT signals_current_stop_check CHECK (current_stop > 0),
            ADD CONSTRAINT signals_result_check CHECK (result IN ('gain', 'loss', 'breakeven'));
    END IF;
END
$$;

-- Signals stored before this migration start where their post left them.
UPDATE tp_capital.signals SET current_stop = stop
 WHERE current_stop IS NULL AND stop IS NOT NULL;

COMMENT ON COLUMN tp_capital.signals.status IS
    'open, target_N (the highest target reached), stopped, closed or cancelled: derived from '
    'the signal''s active events in post order (tp_capital.derive_signal_status).';
COMMENT ON COLUMN tp_capital.signals.current_stop IS
    'The stop after the signal''s events: its own stop until a stop_moved event moves it.';

-- The asset link: the most recent open signal of a channel and asset.
CREATE INDEX IF NOT EXISTS idx_signals_channel_asset_date
    ON tp_capital.signals (channel_id, asset, telegram_date DESC) WHERE retired_at IS NULL;
-- The API's status filter, newest first.
CREATE INDEX IF NOT EXISTS idx_signals_status_date
    ON tp_capital.signals (status, (coalesce(telegram_date, created_at)) DESC, channel_id, message_id)
    WHERE retired_at IS NULL;

CREATE TABLE IF NOT EXISTS tp_capital.signal_events (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    channel_id      bigint      NOT NULL
        CONSTRAINT signal_events_channel_id_check
        CHECK (channel_id BETWEEN -1999999999999 AND -1000000000001),
    message_id      bigint      NOT NULL
        CONSTRAINT signal_events_message_id_check CHECK (message_id BETWEEN 1 AND 2147483647),
    telegram_date   timestamptz NOT NULL,
    kind            text        NOT NULL
        CONSTRAINT signal_events_kind_check
        CHECK (kind IN ('target_hit', 'stop_moved', 'stopped', 'closed', 'cancelled')),
    asset           text        CONSTRAINT signal_events_asset_check CHECK (asset <> ''),
    -- target_hit: 1, 2, … or final (NULL: the post did not say which; the next one)
    target          text
        CONSTRAINT signal_events_target_check CHECK (target ~ '^([1-9][0-9]*|final)$'),
    -- where the stop went: a price, or entry / target_N resolved against the signal
    stop            numeric     CONSTRAINT signal_events_stop_check CHECK (stop > 0),
    stop_ref        text
        CONSTRAINT signal_events_stop_ref_check
        CHECK (stop_ref ~ '^(entry|target_([1-9][0-9]*|final))$'),
    result          text
        CONSTRAINT signal_events_result_check CHECK (result IN ('gain', 'loss', 'breakeven')),
    reply_to_msg_id bigint,
    signal_id       bigint
        CONSTRAINT signal_events_signal_fkey
        REFERENCES tp_capital.signals (id) ON DELETE SET NULL,
    -- reply: the post replies to the signal (or to one of its events); asset: the most recent
    -- open signal of the channel and asset within the link window
    linked_by       text
        CONSTRAINT signal_events_linked_by_check CHECK (linked_by IN ('reply', 'asset')),
    raw_text        text        NOT NULL,
    processed_by    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz,
    CONSTRAINT signal_events_pkey PRIMARY KEY (id),
    CONSTRAINT signal_events_source_message_key UNIQUE (channel_id, message_id),
    CONSTRAINT signal_events_stop_one_check CHECK (stop IS NULL OR stop_ref IS NULL)
);

COMMENT ON TABLE tp_capital.signal_events IS
    'Follow-up posts of signals (target_hit, stop_moved, stopped, closed, cancelled), at most '
    'one per source message; signal_id NULL while no signal is found for it (linked later when '
    'its signal is stored). retired_at: the post was deleted or edited into something else.';

CREATE OR REPLACE TRIGGER signal_events_touch_updated_at
    BEFORE UPDATE ON tp_capital.signal_events
    FOR EACH ROW EXECUTE FUNCTION tgstack_meta.touch_updated_at();

-- A signal's events in post order (the derivation and GET /v1/signals/{id}/events, which can
-- list the retired ones too).
CREATE INDEX IF NOT EXISTS idx_signal_events_signal
    ON tp_capital.signal_events (signal_id, telegram_date, message_id);
-- The follow-ups replying to a post (linked again when that post's signal or follow-up is
-- stored), and those waiting for a signal of their asset.
CREATE INDEX IF NOT EXISTS idx_signal_events_reply
    ON tp_capital.signal_events (channel_id, reply_to_msg_id)
    WHERE retired_at IS NULL AND reply_to_msg_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_signal_events_unlinked_asset
    ON tp_capital.signal_events (channel_id, asset, telegram_date)
    WHERE signal_id IS NULL AND retired_at IS NULL;

CREATE TABLE IF NOT EXISTS tp_capital.signal_reviews (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    channel_id    bigint      NOT NULL
        CONSTRAINT signal_reviews_channel_id_check
        CHECK (channel_id BETWEEN -1999999999999 AND -1000000000001),
    message_id    bigint      NOT NULL
        CONSTRAINT signal_reviews_message_id_check CHECK (message_id BETWEEN 1 AND 2147483647),
    telegram_date timestamptz NOT NULL,
    asset         text        CONSTRAINT signal_reviews_asset_check CHECK (asset <> ''),
    -- what a signal lacks: entry, asset, …
    missing       text[]      NOT NULL DEFAULT '{}',
    raw_text      text        NOT NULL,
    processed_by  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz,
    CONSTRAINT signal_reviews_pkey PRIMARY KEY (id),
    CONSTRAINT signal_reviews_source_message_key UNIQUE (channel_id, message_id)
);

COMMENT ON TABLE tp_capital.signal_reviews IS
    'Posts that carry signal labels and a ticker but could not be completed (needs_review), '
    'at most one per source message; retired_at: an edit completed it, made it something '
    'else, or the post was deleted.';

CREATE OR REPLACE TRIGGER signal_reviews_touch_updated_at
    BEFORE UPDATE ON tp_capital.signal_reviews
    FOR EACH ROW EXECUTE FUNCTION tgstack_meta.touch_updated_at();

CREATE INDEX IF NOT EXISTS idx_signal_reviews_open
    ON tp_capital.signal_reviews ((telegram_date) DESC, channel_id, message_id)
    WHERE retired_at IS NULL;
