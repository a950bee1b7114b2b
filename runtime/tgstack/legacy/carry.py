"""Carry posts the new stack stored after the cutover back into the legacy table (rollback).

Between a migration and its rollback the new gateway stores posts the legacy table never saw.
A rollback that only restored the pre-migration dump would lose them, so this copies every post
of the new schema whose (channel, message id) the legacy table lacks into the legacy table, in
its format: the marked channel id as text, the publishing status as is, ``processed_by`` in
``metadata`` (the poller writes it there), ``source`` folded to the legacy ``bot`` /
``user_client``, and ``metadata.tgstack`` = ``{"carried_back_from": <migration id>, "source":
<new source>, "processing_state": <state>}`` so the rows are recognisable (and left out of the
legacy fingerprint the rollback compares). One transaction; running it again carries nothing.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tgstack.legacy import source
from tgstack.legacy.mapping import channel_key_sql, legacy_channel_text
from tgstack.legacy.source import DEFAULT_SCHEMA

_NEW_COLUMNS = (
    "channel_id, message_id, telegram_date, thread_id, source, message_type, text, caption,"
    " media_type, media_refs, status, processing_state, received_at, published_at, failed_at,"
    " queued_at, updated_at, deleted_at, metadata"
)
_LEGACY_COLUMNS = (
    "channel_id, message_id, thread_id, source, message_type, text, caption, media_type,"
    " media_refs, status, received_at, telegram_date, published_at, failed_at, queued_at,"
    " created_at, updated_at, deleted_at, metadata"
)


class CarryError(RuntimeError):
    """The carry-back cannot run; the message says why."""


def _legacy_keys(conn: psycopg.Connection[Any], schema: str) -> dict[int, set[int]]:
    query = sql.SQL(
        "SELECT DISTINCT {key}, m.message_id FROM {schema}.messages m WHERE {key} IS NOT NULL"
    ).format(key=sql.SQL(channel_key_sql("m.channel_id")), schema=sql.Identifier(schema))
    keys: dict[int, set[int]] = defaultdict(set)
    with conn.cursor(name="tgstack_legacy_keys") as cur:
        cur.itersize = 10000
        cur.execute(query)
        for channel_id, message_id in cur:
            keys[int(channel_id)].add(int(message_id))
    return keys


# The publish status and time as the gateway recorded them (in the outbox, sql/050) unless the
# row carries legacy ones.
_NEW_EXPRESSIONS = {
    "status": "telegram_gateway.publish_status(m.status, m.published_at, o.published_at)",
    "published_at": "coalesce(m.published_at, o.published_at)",
}
_NEW_SELECT = ", ".join(
    _NEW_EXPRESSIONS.get(name.strip(), f"m.{name.strip()}") for name in _NEW_COLUMNS.split(",")
)


def _new_rows(conn: psycopg.Connection[Any]) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name="tgstack_carry_rows") as cur:
        cur.itersize = 5000
        cur.execute(
            f"SELECT {_NEW_SELECT} FROM telegram_gateway.messages m"
            " LEFT JOIN telegram_gateway.message_outbox o ON o.channel_id = m.channel_id"
            " AND o.message_id = m.message_id AND o.telegram_date = m.telegram_date"
            " ORDER BY m.channel_id, m.message_id"
        )
        yield from cur


def _legacy_values(row: tuple[Any, ...], migration_id: str) -> list[Any]:
    (channel_id, message_id, telegram_date, thread_id, src, message_type, text, caption,
     media_type, media_refs, status, processing_state, received_at, published_at, failed_at,
     queued_at, updated_at, deleted_at, metadata) = row  # fmt: skip
    meta = dict(metadata or {})
    meta["tgstack"] = {
        "carried_back_from": migration_id,
        "source": src,
        "processing_state": processing_state,
    }
    return [
        legacy_channel_text(int(channel_id)),
        message_id,
        thread_id,
        "bot" if src == "bot" else "user_client",
        message_type,
        text,
        caption,
        media_type,
        None if media_refs is None else Jsonb(media_refs),
        status,
        received_at,
        telegram_date,
        published_at,
        failed_at,
        queued_at,
        received_at,
        updated_at,
        deleted_at,
        Jsonb(meta),
    ]


def carry_back(
    new_dsn: str,
    legacy_dsn: str,
    *,
    migration_id: str,
    schema: str = DEFAULT_SCHEMA,
) -> dict[str, Any]:
    """Copy posts missing from the legacy table into it; returns the figures per channel."""
    if not migration_id:
        raise CarryError("a migration id is needed to mark the carried rows")
    started = time.monotonic()
    carried: Counter[int] = Counter()
    scanned = 0
    with (
        psycopg.connect(legacy_dsn, prepare_threshold=None, options="-c TimeZone=UTC") as legacy,
        source.open_snapshot(new_dsn) as new,
    ):
        if not source.table_exists(legacy, schema):
            raise CarryError(f"the legacy database has no table {schema}.messages")
        keys = _legacy_keys(legacy, schema)
        copy_sql = sql.SQL("COPY {}.messages ({}) FROM STDIN").format(
            sql.Identifier(schema), sql.SQL(_LEGACY_COLUMNS)
        )
        with legacy.cursor() as cur, cur.copy(copy_sql) as copy:
            for row in _new_rows(new):
                scanned += 1
                channel_id, message_id = int(row[0]), int(row[1])
                if message_id in keys.get(channel_id, ()):
                    continue
                copy.write_row(_legacy_values(row, migration_id))
                carried[channel_id] += 1
        legacy.commit()
        new.rollback()
    return {
        "schema": schema,
        "migration_id": migration_id,
        "scanned": scanned,
        "carried_back": sum(carried.values()),
        "channels": {str(k): v for k, v in sorted(carried.items())},
        "seconds": round(time.monotonic() - started, 3),
    }
