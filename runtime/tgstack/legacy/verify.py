"""Compare the legacy table with the new schema, and fingerprint the legacy table.

``verify_migration``: per mapped channel, every importable legacy post must be in the new
schema with the same content (message id, telegram date, text, caption - the text before any
edit made on the new stack). It reports counts (legacy rows, posts, duplicates folded,
rejected, found, missing, differing) and one checksum per side over the channel's posts in
message-id order; a channel is good when nothing is missing or differs and the checksums are
equal. Posts the new stack stored itself (after the cutover) are counted, not compared.

``fingerprint``: per raw channel id of the legacy table, the row count and an md5 over every
column of every row (``row::text`` in id order, times in UTC) - what the rollback compares
before and after, to prove the legacy data intact. Rows the rollback carried back from the new
stack (``metadata.tgstack.carried_back_from`` = that migration's id) can be left out.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from tgstack.legacy import source
from tgstack.legacy.mapping import ChannelChecksum, Rejection, content_digest, map_message
from tgstack.legacy.source import DEFAULT_SCHEMA

SAMPLE = 20

_NEW_ROWS = """
SELECT m.message_id, m.telegram_date,
       CASE WHEN m.edit_count > 0 THEN e.previous_text ELSE m.text END,
       CASE WHEN m.edit_count > 0 THEN e.previous_caption ELSE m.caption END
  FROM telegram_gateway.messages m
  LEFT JOIN LATERAL (
        SELECT x.previous_text, x.previous_caption
          FROM telegram_gateway.message_edits x
         WHERE x.channel_id = m.channel_id AND x.message_id = m.message_id
         ORDER BY x.edit_date
         LIMIT 1) e ON m.edit_count > 0
 WHERE m.channel_id = %s
 ORDER BY m.message_id
"""


@dataclass
class ChannelVerification:
    channel_id: int
    raw_ids: tuple[str, ...]
    legacy_rows: int = 0
    messages: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejected_messages: int = 0
    found: int = 0
    missing: int = 0
    differing: int = 0
    new_only: int = 0
    legacy_checksum: str = ""
    new_checksum: str = ""
    missing_sample: list[int] = field(default_factory=list)
    differing_sample: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0 and self.differing == 0 and self.legacy_checksum == self.new_checksum
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "legacy_channel_ids": list(self.raw_ids),
            "legacy_rows": self.legacy_rows,
            "messages": self.messages,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "expected": self.messages - self.rejected_messages,
            "found": self.found,
            "missing": self.missing,
            "differing": self.differing,
            "new_only": self.new_only,
            "legacy_checksum": self.legacy_checksum,
            "new_checksum": self.new_checksum,
            "missing_sample": self.missing_sample,
            "differing_sample": self.differing_sample,
            "ok": self.ok,
        }


@dataclass
class Verification:
    schema: str
    channels: list[ChannelVerification] = field(default_factory=list)
    unmapped: list[Rejection] = field(default_factory=list)
    legacy_rows: int = 0

    @property
    def rejected_rows(self) -> int:
        return sum(c.rejected for c in self.channels) + len(self.unmapped)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.channels)

    def totals(self) -> dict[str, int]:
        keys = ("legacy_rows", "messages", "duplicates", "found", "missing", "differing")
        totals = {k: sum(getattr(c, k) for c in self.channels) for k in keys}
        totals["legacy_rows"] = self.legacy_rows
        totals["rejected_rows"] = self.rejected_rows
        totals["new_only"] = sum(c.new_only for c in self.channels)
        return totals

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "ok": self.ok,
            "totals": self.totals(),
            "channels": [c.as_dict() for c in self.channels],
            "unmapped": [r.as_dict() for r in self.unmapped],
        }


def _new_rows(
    conn: psycopg.Connection[Any], channel_id: int
) -> Iterator[tuple[int, datetime, str | None, str | None]]:
    with conn.cursor(name="tgstack_new_messages") as cur:
        cur.itersize = 5000
        cur.execute(_NEW_ROWS, (channel_id,))
        for message_id, when, text, caption in cur:
            yield int(message_id), when, text, caption


def _verify_channel(
    legacy: psycopg.Connection[Any],
    target: psycopg.Connection[Any],
    schema: str,
    channel: source.ChannelRows,
) -> ChannelVerification:
    result = ChannelVerification(channel.channel_id, channel.raw_ids, legacy_rows=channel.rows)
    legacy_sum, new_sum = ChannelChecksum(), ChannelChecksum()
    new_iter = _new_rows(target, channel.channel_id)
    pending = next(new_iter, None)
    for message in source.iter_messages(legacy, schema, channel_id=channel.channel_id):
        result.messages += 1
        result.duplicates += message.copies - 1
        mapped = map_message(message)
        if isinstance(mapped, Rejection):
            result.rejected += len(mapped.legacy_ids)
            result.rejected_messages += 1
            continue
        digest = mapped.digest
        legacy_sum.add(digest)
        while pending is not None and pending[0] < mapped.message_id:
            result.new_only += 1
            pending = next(new_iter, None)
        if pending is None or pending[0] != mapped.message_id:
            result.missing += 1
            if len(result.missing_sample) < SAMPLE:
                result.missing_sample.append(mapped.message_id)
            continue
        found = content_digest(*pending)
        new_sum.add(found)
        result.found += 1
        if found != digest:
            result.differing += 1
            if len(result.differing_sample) < SAMPLE:
                result.differing_sample.append(mapped.message_id)
        pending = next(new_iter, None)
    while pending is not None:
        result.new_only += 1
        pending = next(new_iter, None)
    result.legacy_checksum = legacy_sum.hexdigest()
    result.new_checksum = new_sum.hexdigest()
    return result


def verify_migration(
    source_dsn: str, target_dsn: str, *, schema: str = DEFAULT_SCHEMA
) -> Verification:
    """Compare every legacy channel with the new schema; see the module docstring."""
    verification = Verification(schema=schema)
    with (
        source.open_snapshot(source_dsn) as legacy,
        source.open_snapshot(target_dsn) as target,
    ):
        verification.legacy_rows = source.total_rows(legacy, schema)
        for channel in source.channels(legacy, schema):
            verification.channels.append(_verify_channel(legacy, target, schema, channel))
        verification.unmapped = source.unmapped_rows(legacy, schema)
    return verification


def _carried_by(migration: str) -> sql.Composable:
    marker = "(m.metadata -> 'tgstack' ->> 'carried_back_from')"
    return sql.SQL(marker + " IS NOT DISTINCT FROM {}").format(sql.Literal(migration))


def fingerprint(
    dsn: str, *, schema: str = DEFAULT_SCHEMA, exclude_carried_from: str | None = None
) -> dict[str, Any]:
    """Row counts and checksums of the legacy table per raw channel id (see the docstring).

    ``exclude_carried_from`` leaves out the rows a rollback of that migration carried back.
    """
    where: sql.Composable = sql.SQL("")
    carried: sql.Composable = sql.SQL("false")
    if exclude_carried_from is not None:
        carried = _carried_by(exclude_carried_from)
        where = sql.SQL("WHERE NOT {}").format(carried)
    ident = sql.Identifier(schema)
    query = sql.SQL(
        "SELECT m.channel_id, count(*), md5(string_agg(m::text, E'\\n' ORDER BY m.id,"
        " m.created_at)) FROM {schema}.messages m {where} GROUP BY m.channel_id"
        ' ORDER BY m.channel_id COLLATE "C"'
    ).format(schema=ident, where=where)
    statuses_query = sql.SQL(
        "SELECT m.status, count(*) FROM {schema}.messages m {where} GROUP BY 1"
    ).format(schema=ident, where=where)
    carried_query = sql.SQL("SELECT count(*) FROM {schema}.messages m WHERE {carried}").format(
        schema=ident, carried=carried
    )
    with source.open_snapshot(dsn) as conn:
        if not source.table_exists(conn, schema):
            return {"schema": schema, "exists": False, "rows": 0, "channels": {}, "checksum": ""}
        rows = conn.execute(query).fetchall()
        statuses = Counter({str(s): int(n) for s, n in conn.execute(statuses_query).fetchall()})
        carried_row = conn.execute(carried_query).fetchone()
    overall = hashlib.sha256()
    channels: dict[str, dict[str, Any]] = {}
    for raw, count, checksum in rows:
        channels[str(raw)] = {"rows": int(count), "checksum": str(checksum)}
        overall.update(f"{raw}\x1f{count}\x1f{checksum}\n".encode())
    return {
        "schema": schema,
        "exists": True,
        "rows": sum(c["rows"] for c in channels.values()),
        "carried_back_rows": int(carried_row[0]) if carried_row else 0,
        "excluding_carried_from": exclude_carried_from,
        "statuses": dict(sorted(statuses.items())),
        "channels": channels,
        "checksum": overall.hexdigest(),
    }
