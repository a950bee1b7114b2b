"""The DDL of the legacy ``telegram_gateway.messages`` table of the old shared database (port 5433).

This is the schema the migration reads (DESIGN.md, "Legacy schema to migrate from"): text
channel ids in the marked form, a uuid per row, the publishing status, ``processed_by`` inside
``metadata``, and monthly partitions on ``created_at``. Its unique key includes ``created_at``,
so the same post stored twice in different months (a re-ingest after a restart) is two rows:
the duplicates the import folds. Used to build the legacy database of tests and of the Molecule
``rollback`` scenario; production migrations only read an existing one (``tgstack.legacy``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

from tgstack.legacy.source import DEFAULT_SCHEMA
from tgstack.models import MESSAGE_STATUSES

_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}.messages (
    id            uuid        NOT NULL DEFAULT gen_random_uuid(),
    channel_id    text        NOT NULL,
    message_id    bigint      NOT NULL,
    thread_id     bigint,
    source        text        NOT NULL DEFAULT 'user_client',
    message_type  text        NOT NULL DEFAULT 'text',
    text          text,
    caption       text,
    media_type    text,
    media_refs    jsonb       DEFAULT '[]'::jsonb,
    status        text        NOT NULL DEFAULT 'received',
    received_at   timestamptz NOT NULL DEFAULT now(),
    telegram_date timestamptz,
    published_at  timestamptz,
    failed_at     timestamptz,
    queued_at     timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    metadata      jsonb       NOT NULL DEFAULT '{{}}'::jsonb,
    CONSTRAINT messages_source_check CHECK (source IN ('bot', 'user_client')),
    CONSTRAINT messages_status_check CHECK (status IN ({statuses})),
    CONSTRAINT messages_pkey PRIMARY KEY (id, created_at),
    CONSTRAINT messages_channel_message_created_key UNIQUE (channel_id, message_id, created_at)
) PARTITION BY RANGE (created_at)
"""

_INDEXES = (
    "CREATE INDEX IF NOT EXISTS idx_messages_channel_date"
    " ON {schema}.messages (channel_id, telegram_date DESC)",
    "CREATE INDEX IF NOT EXISTS idx_messages_status ON {schema}.messages (status)",
)


def _next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def _month_starts(first: date, last: date) -> list[date]:
    months = []
    current = date(first.year, first.month, 1)
    while current <= last:
        months.append(current)
        current = _next_month(current)
    return months


def legacy_schema_sql(
    *, schema: str = DEFAULT_SCHEMA, first_month: date, last_month: date
) -> list[str]:
    """The statements creating the legacy schema, table, monthly partitions from
    ``first_month`` to ``last_month``, a DEFAULT partition and the indexes (all idempotent)."""
    ident = sql.Identifier(schema)
    statuses = sql.SQL(", ").join(sql.Literal(s) for s in MESSAGE_STATUSES)
    statements: list[sql.Composable] = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident),
        sql.SQL(_TABLE).format(schema=ident, statuses=statuses),
    ]
    for month in _month_starts(first_month, last_month):
        following = _next_month(month)
        statements.append(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {}.messages"
                " FOR VALUES FROM ({}) TO ({})"
            ).format(
                sql.Identifier(schema, f"messages_{month:%Y_%m}"),
                ident,
                sql.Literal(datetime(month.year, month.month, 1, tzinfo=UTC).isoformat()),
                sql.Literal(datetime(following.year, following.month, 1, tzinfo=UTC).isoformat()),
            )
        )
    statements.append(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {}.messages DEFAULT").format(
            sql.Identifier(schema, "messages_default"), ident
        )
    )
    statements += [sql.SQL(statement).format(schema=ident) for statement in _INDEXES]
    return [statement.as_string(None) for statement in statements]


def create_legacy_schema(
    conn: psycopg.Connection[Any],
    *,
    schema: str = DEFAULT_SCHEMA,
    first_month: date,
    last_month: date,
) -> None:
    """Run ``legacy_schema_sql`` on ``conn`` (the caller commits)."""
    for statement in legacy_schema_sql(
        schema=schema, first_month=first_month, last_month=last_month
    ):
        conn.execute(statement.encode())
