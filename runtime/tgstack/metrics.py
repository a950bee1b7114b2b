"""Prometheus metric definitions shared by every tgstack process.

Alerts and dashboards use these names; change them only together with `roles/` and `grafana/`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_OPERATIONS = Counter(
    "tgstack_cache_operations_total",
    "Redis cache operations by operation and result (hit, miss, ok, error).",
    ["operation", "result"],
)
CACHE_FALLBACKS = Counter(
    "tgstack_cache_fallbacks_total",
    "Reads answered by PostgreSQL because Redis missed or failed.",
    ["operation", "reason"],
)
DB_OPERATION_SECONDS = Histogram(
    "tgstack_db_operation_seconds",
    "Time spent in database operations.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_ERRORS = Counter(
    "tgstack_db_errors_total",
    "Database operations that failed, by operation.",
    ["operation"],
)

# Gateway -----------------------------------------------------------------------------------

GATEWAY_EVENTS = Counter(
    "tgstack_gateway_events_total",
    "Channel events received by the gateway, by kind (new, edit, delete) and source.",
    ["kind", "source"],
)
GATEWAY_STORED = Counter(
    "tgstack_gateway_messages_stored_total", "New messages committed to PostgreSQL."
)
GATEWAY_DUPLICATES = Counter(
    "tgstack_gateway_duplicates_total", "New-message events for posts already stored."
)
GATEWAY_EDITS = Counter(
    "tgstack_gateway_edits_applied_total", "Edits that changed a stored message."
)
GATEWAY_DELETES = Counter(
    "tgstack_gateway_deletes_applied_total", "Messages soft-deleted by a delete event."
)
GATEWAY_REJECTED = Counter(
    "tgstack_gateway_rejected_total", "Input events rejected as invalid, by source.", ["source"]
)
GATEWAY_PUBLISH = Counter(
    "tgstack_gateway_publish_total",
    "RabbitMQ publish results (ok, failed) by path (pipeline, outbox).",
    ["path", "result"],
)
GATEWAY_OUTBOX_DEPTH = Gauge(
    "tgstack_gateway_outbox_depth", "Stored messages not yet confirmed by RabbitMQ."
)
GATEWAY_DB_RETRIES = Counter(
    "tgstack_gateway_db_retries_total", "Batches retried because PostgreSQL was unavailable."
)
GATEWAY_PENDING_EVENTS = Gauge(
    "tgstack_gateway_pending_events", "Events received but not yet committed."
)
GATEWAY_QUEUE_DEPTH = Gauge(
    "tgstack_gateway_queue_depth",
    "Live events held in memory and not yet committed (bounded by tgstack_gateway_queue_limit).",
)
GATEWAY_QUEUE_LIMIT = Gauge(
    "tgstack_gateway_queue_limit", "The live queue's bound (TGSTACK_GATEWAY_QUEUE_LIMIT)."
)
GATEWAY_QUEUE_OVERFLOW = Counter(
    "tgstack_gateway_queue_overflow_total",
    "Events met by a full live queue, by kind: new posts refused (their channel is backfilled"
    " later), edits and deletions spilled to disk (applied later).",
    ["kind"],
)
GATEWAY_SPILLED_EVENTS = Gauge(
    "tgstack_gateway_spilled_events", "Edits and deletions spilled to disk, not yet applied."
)
GATEWAY_BACKFILL_PENDING_CHANNELS = Gauge(
    "tgstack_gateway_backfill_pending_channels",
    "Channels whose posts the full queue refused, waiting for their backfill.",
)
GATEWAY_BACKFILL = Counter(
    "tgstack_gateway_backfill_messages_total", "Posts fetched by gap backfill.", ["channel_id"]
)
GATEWAY_RECONCILED = Counter(
    "tgstack_gateway_reconciled_total",
    "Repairs a reconciliation sent to the pipeline, by kind: edit (an edit missed), delete "
    "(a post Telegram no longer returns), missing (a post never stored).",
    ["kind"],
)
GATEWAY_WATERMARK_LAG = Gauge(
    "tgstack_gateway_watermark_lag_ids",
    "Ids between a channel's newest post and its watermark (every id up to it stored or known"
    " absent) after the last backfill round; stays above 0 only while holes remain.",
    ["channel_id"],
)
GATEWAY_FLOOD_WAIT_SECONDS = Counter(
    "tgstack_gateway_flood_wait_seconds_total", "Seconds spent waiting out Telegram FloodWait."
)
GATEWAY_ACCOUNT = Gauge(
    "tgstack_gateway_account_info",
    "1 for the Telegram account this gateway signs in as (one gateway per account).",
    ["account"],
)
GATEWAY_CONNECTED = Gauge(
    "tgstack_gateway_telegram_connected", "1 while the Telegram client is connected."
)
GATEWAY_LAST_MESSAGE = Gauge(
    "tgstack_gateway_last_message_timestamp_seconds",
    "Unix time of the newest stored post per channel (message age = time() - this).",
    ["channel_id"],
)
GATEWAY_INGEST_LATENCY = Histogram(
    "tgstack_gateway_ingest_latency_seconds",
    "From the gateway seeing an event to its commit in PostgreSQL.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GATEWAY_BATCH_SIZE = Histogram(
    "tgstack_gateway_batch_size",
    "Events per committed micro-batch.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
DB_RETRIES = Counter(
    "tgstack_db_retries_total",
    "Database operations retried after losing their connection, by operation.",
    ["operation"],
)

# Gateway API -------------------------------------------------------------------------------

API_REQUESTS = Counter(
    "tgstack_api_requests_total",
    "API requests by route template, method and status code.",
    ["route", "method", "status"],
)
API_REQUEST_SECONDS = Histogram(
    "tgstack_api_request_seconds",
    "API request latency by route template and method.",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_CACHE = Counter(
    "tgstack_api_cache_total",
    "API response cache lookups by result (hit, miss, error = Redis unusable, served from DB).",
    ["result"],
)
API_RATE_LIMITED = Counter(
    "tgstack_api_rate_limited_total", "API requests refused with 429 by the rate limiter."
)
API_DB_UNAVAILABLE = Counter(
    "tgstack_api_db_unavailable_total", "API requests answered 503 because PostgreSQL failed."
)

# Poller (TP Capital) -----------------------------------------------------------------------

POLLER_MESSAGES = Counter(
    "tgstack_poller_messages_total",
    "Messages finished by the poller, by result (processed, ignored, failed, stale).",
    ["result"],
)
POLLER_SIGNALS = Counter("tgstack_poller_signals_total", "Signals stored or updated.")
POLLER_POSTS_CLASSIFIED = Counter(
    "tgstack_poller_posts_classified_total",
    "Posts the poller finished, by what they are: signal, a follow-up kind (target_hit,"
    " stop_moved, stopped, closed, cancelled), needs_review or chatter.",
    ["kind"],
)
POLLER_EVENTS_UNLINKED = Gauge(
    "tgstack_poller_signal_events_unlinked",
    "Follow-ups of the last 24 hours stored without a signal to link them to, as last seen.",
)
POLLER_SIGNALS_RETIRED = Counter(
    "tgstack_poller_signals_retired_total", "Signals retired because their post was deleted."
)
POLLER_LAG_SECONDS = Gauge(
    "tgstack_poller_lag_seconds", "Age of the oldest message not processed yet (0 when none)."
)
POLLER_POLL_SECONDS = Histogram(
    "tgstack_poller_poll_query_seconds",
    "Time to find and claim a batch of pending messages.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1),
)
POLLER_DELIVERIES = Counter(
    "tgstack_poller_queue_deliveries_total",
    "RabbitMQ deliveries by outcome (acked, requeued, dead_lettered; per key: not_claimable"
    " at first try, reclaimed after a wait for a row lock).",
    ["outcome"],
)
POLLER_QUEUE_DEPTH = Gauge(
    "tgstack_poller_queue_depth", "Messages ready in the poller's queue, as last seen."
)
POLLER_DLQ_DEPTH = Gauge(
    "tgstack_poller_dlq_depth", "Messages in the dead-letter queue, as last seen."
)
