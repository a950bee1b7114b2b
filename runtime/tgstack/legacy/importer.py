"""Import the legacy table into the new schema, idempotently.

Posts are read from the legacy database (``source``), mapped (``mapping``) and written in
batches: COPY into a session temp table, then one statement that claims each key in
``message_keys`` (``ON CONFLICT DO NOTHING``), inserts the claimed rows into ``messages`` with
their legacy timestamps, registers channels and advances the channel cursors (never back).
Each batch commits on its own; a post already stored - by an earlier import, or by the new
gateway - is left as it is, so running the import again imports nothing new. The target DSN
must reach PostgreSQL directly (a temp table needs one session: not PgBouncer in transaction
mode).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tgstack.legacy import source
from tgstack.legacy.mapping import IMPORT_COLUMNS, ImportRow, Rejection, map_message
from tgstack.legacy.source import DEFAULT_SCHEMA

Progress = Callable[[int, int], None]

_STAGE = "tgstack_legacy_import"

_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
    LIKE telegram_gateway.messages INCLUDING DEFAULTS
)
"""

_COLUMNS = ", ".join(IMPORT_COLUMNS)
_SELECTED = ", ".join(f"i.{name}" for name in IMPORT_COLUMNS)

_WRITE = f"""
WITH claimed AS (
    INSERT INTO telegram_gateway.message_keys AS k (channel_id, message_id, telegram_date)
    SELECT i.channel_id, i.message_id, i.telegram_date
      FROM pg_temp.{_STAGE} i
     ORDER BY i.channel_id, i.message_id
    ON CONFLICT (channel_id, message_id) DO NOTHING
    RETURNING k.channel_id, k.message_id
), stored AS (
    INSERT INTO telegram_gateway.messages ({_COLUMNS})
    SELECT {_SELECTED}
      FROM pg_temp.{_STAGE} i
      JOIN claimed c ON c.channel_id = i.channel_id AND c.message_id = i.message_id
    RETURNING channel_id, message_id, telegram_date, received_at, published_at, publish_attempts
), outboxed AS (
    -- the publish state the gateway reads (sql/050): unpublished rows go to the outbox relay
    INSERT INTO telegram_gateway.message_outbox
           (channel_id, message_id, telegram_date, received_at, published_at, publish_attempts)
    SELECT s.channel_id, s.message_id, s.telegram_date, s.received_at, s.published_at,
           s.publish_attempts
      FROM stored s
     ORDER BY s.channel_id, s.message_id
    ON CONFLICT (channel_id, message_id) DO NOTHING
    RETURNING 1
), known_channels AS (
    INSERT INTO telegram_gateway.channels (channel_id)
    SELECT DISTINCT i.channel_id FROM pg_temp.{_STAGE} i ORDER BY 1
    ON CONFLICT (channel_id) DO NOTHING
    RETURNING 1
), cursors AS (
    INSERT INTO telegram_gateway.channel_cursors AS cc
           (channel_id, last_message_id, last_message_date)
    SELECT s.channel_id, max(s.message_id), max(s.telegram_date)
      FROM stored s
     GROUP BY s.channel_id
     ORDER BY s.channel_id
    ON CONFLICT (channel_id) DO UPDATE
       SET last_message_id = GREATEST(cc.last_message_id, EXCLUDED.last_message_id),
           last_message_date = GREATEST(cc.last_message_date, EXCLUDED.last_message_date),
           updated_at = now()
     WHERE EXCLUDED.last_message_id > cc.last_message_id
        OR cc.last_message_date IS NULL
        OR EXCLUDED.last_message_date > cc.last_message_date
    RETURNING 1
)
SELECT s.channel_id, count(*) FROM stored s GROUP BY s.channel_id
"""


class LegacyImportError(RuntimeError):
    """The import cannot run (no legacy table, no new schema); the message says which."""


@dataclass
class ChannelImport:
    """What the import did for one channel."""

    raw_ids: tuple[str, ...] = ()
    legacy_rows: int = 0
    messages: int = 0
    imported: int = 0
    already_present: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "legacy_channel_ids": list(self.raw_ids),
            "legacy_rows": self.legacy_rows,
            "messages": self.messages,
            "imported": self.imported,
            "already_present": self.already_present,
            "rejected": self.rejected,
        }


@dataclass
class ImportSummary:
    """Figures of one import run; ``rejections`` lists every legacy row left out and why."""

    schema: str
    legacy_rows: int = 0
    messages: int = 0
    duplicates: int = 0
    imported: int = 0
    already_present: int = 0
    rejected_rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    processing_states: Counter[str] = field(default_factory=Counter)
    channels: dict[int, ChannelImport] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "legacy_rows": self.legacy_rows,
            "messages": self.messages,
            "duplicates": self.duplicates,
            "imported": self.imported,
            "already_present": self.already_present,
            "rejected_rows": self.rejected_rows,
            "statuses": dict(sorted(self.statuses.items())),
            "processing_states": dict(sorted(self.processing_states.items())),
            "channels": {str(k): v.as_dict() for k, v in sorted(self.channels.items())},
            "rejections": [r.as_dict() for r in self.rejections],
            "seconds": round(self.seconds, 3),
        }


def _copy_batch(conn: psycopg.Connection[Any], rows: Sequence[ImportRow]) -> None:
    conn.execute(f"TRUNCATE pg_temp.{_STAGE}")
    with conn.cursor() as cur:
        copy_sql = f"COPY pg_temp.{_STAGE} ({_COLUMNS}) FROM STDIN"
        with cur.copy(copy_sql) as copy:
            for row in rows:
                values = list(row.values())
                media = IMPORT_COLUMNS.index("media_refs")
                values[media] = None if values[media] is None else Jsonb(values[media])
                values[-1] = Jsonb(values[-1])
                copy.write_row(values)


def _write_batch(conn: psycopg.Connection[Any], rows: Sequence[ImportRow]) -> dict[int, int]:
    """Store one batch in one transaction; returns the rows inserted per channel."""
    with conn.transaction():
        _copy_batch(conn, rows)
        first = min(r.telegram_date for r in rows)
        last = max(r.telegram_date for r in rows)
        conn.execute("SELECT telegram_gateway.ensure_partitions(%s, %s)", (first, last))
        return {int(ch): int(n) for ch, n in conn.execute(_WRITE).fetchall()}


def _batches(rows: Iterable[ImportRow], size: int) -> Iterable[list[ImportRow]]:
    batch: list[ImportRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_target(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute(
        "SELECT to_regclass('telegram_gateway.messages') IS NOT NULL"
        " AND to_regclass('telegram_gateway.message_keys') IS NOT NULL"
    ).fetchone()
    if not (row and row[0]):
        raise LegacyImportError(
            "the target database has no telegram_gateway.messages: run `tgstack migrate` first"
        )


def import_legacy(
    source_dsn: str,
    target_dsn: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    batch_size: int = 2000,
    progress: Progress | None = None,
) -> ImportSummary:
    """Copy every legacy post not yet stored into the new schema; see the module docstring."""
    started = time.monotonic()
    summary = ImportSummary(schema=schema)
    with (
        source.open_snapshot(source_dsn) as legacy,
        psycopg.connect(
            target_dsn, prepare_threshold=None, autocommit=True, options="-c TimeZone=UTC"
        ) as target,
    ):
        if not source.table_exists(legacy, schema):
            raise LegacyImportError(f"the legacy database has no table {schema}.messages")
        _check_target(target)
        target.execute(_CREATE_STAGE)
        summary.legacy_rows = source.total_rows(legacy, schema)
        for ch in source.channels(legacy, schema):
            summary.channels[ch.channel_id] = ChannelImport(raw_ids=ch.raw_ids, legacy_rows=ch.rows)

        def mapped() -> Iterable[ImportRow]:
            for message in source.iter_messages(legacy, schema):
                summary.messages += 1
                summary.duplicates += message.copies - 1
                channel = summary.channels[message.channel_id]
                channel.messages += 1
                result = map_message(message)
                if isinstance(result, Rejection):
                    summary.rejections.append(result)
                    summary.rejected_rows += len(result.legacy_ids)
                    channel.rejected += len(result.legacy_ids)
                    continue
                summary.statuses[result.status] += 1
                summary.processing_states[result.processing_state] += 1
                yield result

        for batch in _batches(mapped(), batch_size):
            inserted = _write_batch(target, batch)
            per_channel = Counter(row.channel_id for row in batch)
            for channel_id, count in per_channel.items():
                done = inserted.get(channel_id, 0)
                summary.channels[channel_id].imported += done
                summary.channels[channel_id].already_present += count - done
                summary.imported += done
                summary.already_present += count - done
            if progress is not None:
                progress(summary.imported, summary.already_present)

        for rejection in source.unmapped_rows(legacy, schema):
            summary.rejections.append(rejection)
            summary.rejected_rows += 1
        legacy.rollback()
    summary.seconds = time.monotonic() - started
    return summary
