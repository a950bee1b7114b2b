"""Fill a legacy table with realistic rows: what the old gateway left behind after months.

Deterministic for a seed. Posts (signals and chatter in Portuguese, some photos with captions)
spread over the channels and over ``days`` days, every legacy status, ``processed_by`` in the
metadata of what the consumer finished, and the flaws the import must cope with: posts stored
twice in different months (the created_at partitioning let them in), channel ids written as the
bare id or padded with blanks, a missing telegram_date, rows whose channel id is a bot
username, and a message id of 0. Used by the integration tests and the Molecule ``rollback``
scenario (``tgstack legacy seed``).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tgstack.gateway.synthetic import post_text
from tgstack.legacy.source import DEFAULT_SCHEMA
from tgstack_testing.legacy.schema import create_legacy_schema, legacy_schema_sql

DEFAULT_LEGACY_CHANNELS = (
    -1001649127710,
    -1001744113331,
    -1001412345678,
    -1001598765432,
    -1001287654321,
)
# Status shares of a legacy table (the old gateway published most posts).
STATUS_WEIGHTS = {
    "published": 46,
    "reprocessed": 8,
    "queued": 6,
    "received": 9,
    "retrying": 4,
    "failed": 5,
    "reprocess_pending": 4,
    "deleted": 5,
}
CONSUMERS = ("tp-capital", "tp-capital-worker-2")
BOT_CHANNELS = ("@tp_capital_bot", "tp-capital-alerts", "")

_COLUMNS = (
    "id",
    "channel_id",
    "message_id",
    "thread_id",
    "source",
    "message_type",
    "text",
    "caption",
    "media_type",
    "media_refs",
    "status",
    "received_at",
    "telegram_date",
    "published_at",
    "failed_at",
    "queued_at",
    "created_at",
    "updated_at",
    "deleted_at",
    "metadata",
)


@dataclass
class SeedSummary:
    rows: int = 0
    posts: int = 0
    duplicates: int = 0
    bare_channel_ids: int = 0
    padded_channel_ids: int = 0
    null_telegram_dates: int = 0
    unmapped_rows: int = 0
    bad_message_ids: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "posts": self.posts,
            "duplicates": self.duplicates,
            "bare_channel_ids": self.bare_channel_ids,
            "padded_channel_ids": self.padded_channel_ids,
            "null_telegram_dates": self.null_telegram_dates,
            "unmapped_rows": self.unmapped_rows,
            "bad_message_ids": self.bad_message_ids,
            "statuses": dict(sorted(self.statuses.items())),
            "channels": dict(sorted(self.channels.items())),
            "seconds": round(self.seconds, 3),
        }


def _uuid(rng: random.Random) -> str:
    value = rng.getrandbits(128)
    value = (value & ~(0xF << 76)) | (4 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _row(
    rng: random.Random,
    *,
    channel_text: str,
    message_id: int,
    when: datetime,
    status: str,
    created_at: datetime,
) -> dict[str, Any]:
    received_at = created_at - timedelta(milliseconds=rng.randint(5, 400))
    updated_at = created_at + timedelta(seconds=rng.randint(0, 900))
    photo = rng.random() < 0.15
    body = post_text(rng, 0.35)
    metadata: dict[str, Any] = {"views": rng.randint(50, 25_000), "forwards": rng.randint(0, 90)}
    row: dict[str, Any] = {
        "id": _uuid(rng),
        "channel_id": channel_text,
        "message_id": message_id,
        "thread_id": rng.randint(1, 40) if rng.random() < 0.05 else None,
        "source": "bot" if rng.random() < 0.1 else "user_client",
        "message_type": "photo" if photo else "text",
        "text": None if photo else body,
        "caption": body if photo else None,
        "media_type": "photo" if photo else None,
        "media_refs": [{"type": "photo", "file_unique_id": f"AQAD{rng.getrandbits(48):012x}"}]
        if photo
        else [],
        "status": status,
        "received_at": received_at,
        "telegram_date": when,
        "published_at": None,
        "failed_at": None,
        "queued_at": None,
        "created_at": created_at,
        "updated_at": updated_at,
        "deleted_at": None,
        "metadata": metadata,
    }
    if status in ("published", "reprocessed", "reprocess_pending", "deleted"):
        row["published_at"] = created_at + timedelta(milliseconds=rng.randint(2, 300))
    if status == "queued":
        row["queued_at"] = created_at + timedelta(milliseconds=rng.randint(2, 300))
    if status in ("failed", "retrying"):
        row["failed_at"] = created_at + timedelta(seconds=rng.randint(1, 30))
    if status == "deleted":
        row["deleted_at"] = updated_at
    finished = status in ("published", "reprocessed", "reprocess_pending") or (
        status == "deleted" and rng.random() < 0.5
    )
    if finished and (status != "published" or rng.random() < 0.9):
        metadata["processed_by"] = rng.choice(CONSUMERS)
        metadata["processed_at"] = (updated_at - timedelta(seconds=1)).isoformat()
    return row


def generate_rows(
    posts: int,
    *,
    channels: Sequence[int] = DEFAULT_LEGACY_CHANNELS,
    seed: int = 1,
    start: datetime | None = None,
    days: int = 120,
) -> tuple[list[dict[str, Any]], SeedSummary]:
    """The legacy rows of ``posts`` posts (plus duplicates and flawed rows), and their figures."""
    rng = random.Random(seed)  # noqa: S311 - test data
    summary = SeedSummary(posts=posts)
    first = start or datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
    step = timedelta(days=days) / max(posts, 1)
    next_id = {ch: rng.randint(1_000, 90_000) for ch in channels}
    statuses = list(STATUS_WEIGHTS)
    weights = list(STATUS_WEIGHTS.values())
    rows: list[dict[str, Any]] = []
    for index in range(posts):
        channel = channels[rng.randrange(len(channels))] if index >= len(statuses) else channels[0]
        message_id = next_id[channel]
        next_id[channel] += rng.choice((1, 1, 1, 2))
        when = first + step * index
        # Every status at least once, then by weight.
        status = statuses[index] if index < len(statuses) else rng.choices(statuses, weights)[0]
        channel_text = str(channel)
        roll = rng.random()
        if roll < 0.03:
            channel_text = str(-channel - 10**12)  # the bare channel id
            summary.bare_channel_ids += 1
        elif roll < 0.04:
            channel_text = f" {channel} "
            summary.padded_channel_ids += 1
        created_at = when + timedelta(milliseconds=rng.randint(30, 2500))
        row = _row(
            rng,
            channel_text=channel_text,
            message_id=message_id,
            when=when,
            status=status,
            created_at=created_at,
        )
        if rng.random() < 0.004:
            row["telegram_date"] = None
            summary.null_telegram_dates += 1
        rows.append(row)
        if rng.random() < 0.015:
            # Re-ingested weeks later after a gateway restart: another row, another partition.
            copy = _row(
                rng,
                channel_text=str(channel),
                message_id=message_id,
                when=when,
                status=rng.choice(("received", "published", "failed")),
                created_at=created_at + timedelta(days=rng.randint(31, 45)),
            )
            copy["text"], copy["caption"] = row["text"], row["caption"]
            copy["message_type"], copy["media_type"] = row["message_type"], row["media_type"]
            copy["media_refs"] = row["media_refs"]
            rows.append(copy)
            summary.duplicates += 1
    bad = max(3, posts // 2000)
    for index in range(bad):
        when = first + step * rng.randrange(max(posts, 1))
        row = _row(
            rng,
            channel_text=BOT_CHANNELS[index % len(BOT_CHANNELS)],
            message_id=index + 1,
            when=when,
            status="received",
            created_at=when + timedelta(seconds=1),
        )
        rows.append(row)
        summary.unmapped_rows += 1
    when = first + step
    zero = _row(
        rng,
        channel_text=str(channels[-1]),
        message_id=0,
        when=when,
        status="failed",
        created_at=when + timedelta(seconds=1),
    )
    rows.append(zero)
    summary.bad_message_ids = 1
    for row in rows:
        summary.statuses[row["status"]] += 1
        summary.channels[row["channel_id"]] += 1
    summary.rows = len(rows)
    return rows, summary


def _copy_text(value: Any) -> str:
    """One field of COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        text = value.isoformat()
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    else:
        text = str(value)
    return (
        text.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def seed_sql(
    posts: int,
    *,
    channels: Sequence[int] = DEFAULT_LEGACY_CHANNELS,
    seed: int = 1,
    schema: str = DEFAULT_SCHEMA,
    start: datetime | None = None,
    days: int = 120,
) -> tuple[Iterator[str], SeedSummary]:
    """The same rows as a psql script (schema DDL, then COPY): for a server the caller cannot
    reach, fed to ``psql -v ON_ERROR_STOP=1`` there. Lines end with a newline."""
    rows, summary = generate_rows(posts, channels=channels, seed=seed, start=start, days=days)
    created = [r["created_at"] for r in rows]

    def lines() -> Iterator[str]:
        yield "BEGIN;\n"
        for statement in legacy_schema_sql(
            schema=schema, first_month=min(created).date(), last_month=max(created).date()
        ):
            yield statement + ";\n"
        table = sql.Identifier(schema, "messages").as_string(None)
        yield f"COPY {table} ({', '.join(_COLUMNS)}) FROM STDIN;\n"
        for row in rows:
            yield "\t".join(_copy_text(row[name]) for name in _COLUMNS) + "\n"
        yield "\\.\n"
        yield "COMMIT;\n"

    return lines(), summary


def seed_legacy(
    dsn: str,
    posts: int,
    *,
    channels: Sequence[int] = DEFAULT_LEGACY_CHANNELS,
    seed: int = 1,
    schema: str = DEFAULT_SCHEMA,
    start: datetime | None = None,
    days: int = 120,
) -> SeedSummary:
    """Create the legacy schema when missing and COPY the generated rows into it."""
    started = time.monotonic()
    rows, summary = generate_rows(posts, channels=channels, seed=seed, start=start, days=days)
    created = [r["created_at"] for r in rows]
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        create_legacy_schema(
            conn, schema=schema, first_month=min(created).date(), last_month=max(created).date()
        )
        copy_sql = sql.SQL("COPY {}.messages ({}) FROM STDIN").format(
            sql.Identifier(schema), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
        )
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for row in rows:
                values = [row[name] for name in _COLUMNS]
                values[_COLUMNS.index("media_refs")] = Jsonb(row["media_refs"])
                values[_COLUMNS.index("metadata")] = Jsonb(row["metadata"])
                copy.write_row(values)
        conn.commit()
    summary.seconds = time.monotonic() - started
    return summary
