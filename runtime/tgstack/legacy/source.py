"""Reading the legacy table: one ``LegacyMessage`` per post, duplicates folded.

A post stored more than once (same mapped channel id and message id) is read once: the copy
that went furthest wins - deleted first, then one the consumer marked (``processed_by``), then
the most recently updated, then the oldest row id - and the ids of the other copies travel with
it. Rows whose channel id cannot be mapped come out of ``unmapped_rows``. Reads run in one
REPEATABLE READ, read-only transaction per connection, so every figure is of one snapshot; the
legacy database is never written here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from tgstack.legacy.mapping import LegacyMessage, Rejection, channel_key_sql

# The legacy table's schema in the old shared database (``--schema`` changes it).
DEFAULT_SCHEMA = "telegram_gateway"

_COLUMNS = (
    "id::text, channel_id, channel_key, message_id, thread_id, source, message_type, text,"
    " caption, media_type, media_refs, status, received_at, telegram_date, published_at,"
    " failed_at, queued_at, created_at, updated_at, deleted_at, metadata"
)

_FOLDED = """
WITH keyed AS (
    SELECT m.*, {key} AS channel_key FROM {schema}.messages m
), ranked AS (
    SELECT k.*,
           row_number() OVER (
               PARTITION BY k.channel_key, k.message_id
               ORDER BY (k.deleted_at IS NOT NULL OR k.status = 'deleted') DESC,
                        (coalesce(k.metadata ->> 'processed_by', '') <> '') DESC,
                        k.updated_at DESC NULLS LAST, k.created_at DESC NULLS LAST, k.id
           ) AS pick,
           count(*) OVER (PARTITION BY k.channel_key, k.message_id) AS copies,
           array_agg(k.id::text) OVER (PARTITION BY k.channel_key, k.message_id) AS all_ids
      FROM keyed k
     WHERE k.channel_key IS NOT NULL {channel_filter}
)
SELECT {columns}, copies, all_ids
  FROM ranked
 WHERE pick = 1
 ORDER BY channel_key, message_id
"""


def open_snapshot(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection in a REPEATABLE READ, read-only transaction, times in UTC."""
    conn = psycopg.connect(dsn, prepare_threshold=None, options="-c TimeZone=UTC")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def table_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(format('%%I.messages', %s::text)) IS NOT NULL", (schema,)
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class ChannelRows:
    """A mapped channel of the legacy table: its raw id spellings and row count."""

    channel_id: int
    raw_ids: tuple[str, ...]
    rows: int


def channels(conn: psycopg.Connection[Any], schema: str) -> list[ChannelRows]:
    query = sql.SQL(
        "SELECT channel_key, array_agg(DISTINCT channel_id ORDER BY channel_id), count(*)"
        " FROM (SELECT m.channel_id, {key} AS channel_key FROM {schema}.messages m) k"
        " WHERE channel_key IS NOT NULL GROUP BY channel_key ORDER BY channel_key"
    ).format(key=sql.SQL(channel_key_sql("m.channel_id")), schema=sql.Identifier(schema))
    return [
        ChannelRows(int(key), tuple(raw), int(count))
        for key, raw, count in conn.execute(query).fetchall()
    ]


def total_rows(conn: psycopg.Connection[Any], schema: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.messages").format(sql.Identifier(schema))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def iter_messages(
    conn: psycopg.Connection[Any],
    schema: str,
    *,
    channel_id: int | None = None,
    fetch: int = 2000,
) -> Iterator[LegacyMessage]:
    """Every legacy post (duplicates folded), ordered by mapped channel id and message id."""
    query = sql.SQL(_FOLDED).format(
        key=sql.SQL(channel_key_sql("m.channel_id")),
        schema=sql.Identifier(schema),
        columns=sql.SQL(_COLUMNS),
        channel_filter=sql.SQL("AND k.channel_key = {}").format(sql.Literal(channel_id))
        if channel_id is not None
        else sql.SQL(""),
    )
    with conn.cursor(name="tgstack_legacy_messages") as cur:
        cur.itersize = fetch
        cur.execute(query)
        for row in cur:
            (legacy_id, raw, key, message_id, thread_id, source, message_type, text, caption,
             media_type, media_refs, status, received_at, telegram_date, published_at,
             failed_at, queued_at, created_at, updated_at, deleted_at, metadata, copies,
             all_ids) = row  # fmt: skip
            yield LegacyMessage(
                legacy_id=legacy_id,
                channel_raw=raw,
                channel_id=int(key),
                message_id=int(message_id),
                thread_id=thread_id,
                source=source,
                message_type=message_type,
                text=text,
                caption=caption,
                media_type=media_type,
                media_refs=media_refs,
                status=status,
                received_at=received_at,
                telegram_date=telegram_date,
                published_at=published_at,
                failed_at=failed_at,
                queued_at=queued_at,
                created_at=created_at,
                updated_at=updated_at,
                deleted_at=deleted_at,
                metadata=metadata,
                copies=int(copies),
                copy_ids=tuple(sorted(i for i in all_ids if i != legacy_id)),
            )


def unmapped_rows(conn: psycopg.Connection[Any], schema: str) -> list[Rejection]:
    """Legacy rows whose channel id is no channel id, one rejection per row."""
    query = sql.SQL(
        "SELECT id::text, channel_id, message_id FROM {schema}.messages m"
        " WHERE {key} IS NULL ORDER BY channel_id, message_id, id"
    ).format(key=sql.SQL(channel_key_sql("m.channel_id")), schema=sql.Identifier(schema))
    return [
        Rejection((legacy_id,), raw, message_id, f"channel_id {raw!r} is not a channel id")
        for legacy_id, raw, message_id in conn.execute(query).fetchall()
    ]
