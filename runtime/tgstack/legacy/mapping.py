"""Legacy row → new row: pure functions, no I/O.

The legacy table keeps the marked channel id as text (``"-1001649127710"``, sometimes the bare
id ``"1649127710"`` or padded with blanks), one publishing ``status``, and the consumer's mark
``processed_by`` inside ``metadata``. The new schema keys messages on a bigint channel id and
splits the publishing side (``status``, same values) from the consumer side
(``processing_state``). Mapping rules:

- channel id: the marked form as is, a bare positive id marked (``-(10**12 + id)``); anything
  else (``@name``, a basic-group id, empty) is rejected with its reason.
- message id 1..2**31-1, else rejected. ``telegram_date`` falls back to ``received_at`` then
  ``created_at`` (noted in ``metadata.legacy.telegram_date_from``); before Telegram existed is
  rejected. Unknown status rejected.
- ``deleted`` (status or ``deleted_at``): status ``deleted``, ``deleted_at`` kept (or
  ``updated_at``), processing ``ignored`` unless it was processed.
- processing state: ``reprocess_pending`` → ``pending`` (the consumer must see it again);
  ``processed_by`` present or status ``reprocessed`` → ``processed`` (``processed_at`` from
  ``metadata.processed_at``, else ``updated_at``); otherwise ``pending``.
- A message the consumer already finished and that has no ``published_at`` gets one
  (``queued_at``, else ``updated_at``; ``metadata.legacy.published_at_filled``), so the outbox
  relay does not publish history again. Pending messages stay unpublished: the relay publishes
  them and the poller processes them on the new stack.
- ``metadata`` is kept (``processed_by`` included) plus ``metadata.legacy``: the legacy row id,
  raw channel id and status, and the ids of the other copies when the post was stored twice.

The content checksum (``content_digest``) covers what identifies a post and never changes on
the new stack except through an edit: message id, telegram date, text and caption.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tgstack.models import (
    EARLIEST_TELEGRAM_DATE,
    MARKED_CHANNEL_MAX,
    MARKED_CHANNEL_MIN,
    MESSAGE_ID_MAX,
    MESSAGE_STATUSES,
)

BARE_CHANNEL_MAX = 10**12 - 1
_INTEGER = re.compile(r"-?[0-9]{1,13}")


def channel_key_sql(column: str) -> str:
    """SQL twin of ``parse_legacy_channel_id`` over ``column`` (a trusted column reference).

    The source query folds duplicates on the mapped id, so the legacy side computes it; tests
    check both agree.
    """
    trimmed = f"btrim({column}, E' \\t\\r\\n')"
    return (
        f"(SELECT CASE WHEN v BETWEEN {MARKED_CHANNEL_MIN} AND {MARKED_CHANNEL_MAX} THEN v"
        f" WHEN v BETWEEN 1 AND {BARE_CHANNEL_MAX} THEN -(1000000000000 + v) END"
        f" FROM (SELECT CASE WHEN {trimmed} ~ '^-?[0-9]{{1,13}}$'"
        f" THEN {trimmed}::bigint END AS v) AS parsed)"
    )


def parse_legacy_channel_id(raw: str | None) -> int | None:
    """The marked bigint channel id of a legacy text id, or None when it is not one."""
    if raw is None:
        return None
    text = raw.strip(" \t\r\n")
    if not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    if MARKED_CHANNEL_MIN <= value <= MARKED_CHANNEL_MAX:
        return value
    if 1 <= value <= BARE_CHANNEL_MAX:
        return -(10**12 + value)
    return None


def legacy_channel_text(channel_id: int) -> str:
    """The legacy text form of a marked channel id (what the old gateway stored)."""
    return str(channel_id)


@dataclass(frozen=True, slots=True)
class LegacyMessage:
    """One legacy post: the copy chosen among its duplicates, with the mapped channel id."""

    legacy_id: str
    channel_raw: str
    channel_id: int
    message_id: int
    thread_id: int | None
    source: str | None
    message_type: str | None
    text: str | None
    caption: str | None
    media_type: str | None
    media_refs: Any
    status: str | None
    received_at: datetime | None
    telegram_date: datetime | None
    published_at: datetime | None
    failed_at: datetime | None
    queued_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    deleted_at: datetime | None
    metadata: Any
    copies: int = 1
    copy_ids: tuple[str, ...] = ()


# Columns of telegram_gateway.messages the import writes, in ImportRow order.
IMPORT_COLUMNS = (
    "channel_id",
    "message_id",
    "telegram_date",
    "thread_id",
    "source",
    "message_type",
    "text",
    "caption",
    "media_type",
    "media_refs",
    "status",
    "processing_state",
    "processed_at",
    "received_at",
    "published_at",
    "failed_at",
    "queued_at",
    "created_at",
    "updated_at",
    "deleted_at",
    "metadata",
)


@dataclass(frozen=True, slots=True)
class ImportRow:
    """A row of the new ``telegram_gateway.messages``, as the import writes it."""

    channel_id: int
    message_id: int
    telegram_date: datetime
    thread_id: int | None
    source: str
    message_type: str
    text: str | None
    caption: str | None
    media_type: str | None
    media_refs: Any
    status: str
    processing_state: str
    processed_at: datetime | None
    received_at: datetime
    published_at: datetime | None
    failed_at: datetime | None
    queued_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    metadata: dict[str, Any]

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in IMPORT_COLUMNS)

    @property
    def digest(self) -> bytes:
        return content_digest(self.message_id, self.telegram_date, self.text, self.caption)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A legacy post that cannot be imported, with every legacy row id it covers."""

    legacy_ids: tuple[str, ...]
    channel_raw: str | None
    message_id: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "legacy_ids": list(self.legacy_ids),
            "channel_id": self.channel_raw,
            "message_id": self.message_id,
            "reason": self.reason,
        }


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def processed_by(metadata: Any) -> str | None:
    """The consumer that finished a legacy message (``metadata.processed_by``), if any."""
    if isinstance(metadata, Mapping):
        value = metadata.get("processed_by")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def map_message(msg: LegacyMessage) -> ImportRow | Rejection:
    """Map one legacy post to its new row, or say why it cannot be imported."""
    ids = (msg.legacy_id, *msg.copy_ids)

    def reject(reason: str) -> Rejection:
        return Rejection(ids, msg.channel_raw, msg.message_id, reason)

    if not 1 <= msg.message_id <= MESSAGE_ID_MAX:
        return reject(f"message_id must be between 1 and {MESSAGE_ID_MAX}, got {msg.message_id}")
    status = (msg.status or "").strip()
    if status not in MESSAGE_STATUSES:
        return reject(f"unknown status {msg.status!r}")

    legacy: dict[str, Any] = {"id": msg.legacy_id, "channel_id": msg.channel_raw, "status": status}
    telegram_date = _telegram_date(msg, legacy)
    if isinstance(telegram_date, str):
        return reject(telegram_date)

    created_at = msg.created_at or msg.received_at or telegram_date
    updated_at = msg.updated_at or created_at
    deleted = status == "deleted" or msg.deleted_at is not None
    if deleted:
        status = "deleted"
    processing_state, processed_at = _processing(msg, status, updated_at, deleted=deleted)
    published_at = msg.published_at
    if published_at is None and processing_state in ("processed", "ignored"):
        published_at = msg.queued_at or updated_at
        legacy["published_at_filled"] = True

    return ImportRow(
        channel_id=msg.channel_id,
        message_id=msg.message_id,
        telegram_date=telegram_date,
        thread_id=msg.thread_id,
        source=(msg.source or "").strip() or "user_client",
        message_type=(msg.message_type or "").strip() or "text",
        text=msg.text,
        caption=msg.caption,
        media_type=msg.media_type,
        media_refs=msg.media_refs,
        status=status,
        processing_state=processing_state,
        processed_at=processed_at,
        received_at=msg.received_at or created_at,
        published_at=published_at,
        failed_at=msg.failed_at,
        queued_at=msg.queued_at,
        created_at=created_at,
        updated_at=updated_at,
        deleted_at=(msg.deleted_at or updated_at) if deleted else None,
        metadata=_metadata(msg, legacy),
    )


def _telegram_date(msg: LegacyMessage, legacy: dict[str, Any]) -> datetime | str:
    """The post's Telegram date (else its received_at or created_at, noted in ``legacy``), or
    why it has none Telegram could have given it."""
    telegram_date = msg.telegram_date
    if telegram_date is None:
        for name in ("received_at", "created_at"):
            fallback = getattr(msg, name)
            if fallback is not None:
                telegram_date, legacy["telegram_date_from"] = fallback, name
                break
    if telegram_date is None:
        return "no telegram_date, received_at or created_at"
    parsed = _parse_time(telegram_date)
    assert parsed is not None
    if parsed < EARLIEST_TELEGRAM_DATE:
        return f"telegram_date {parsed.isoformat()} is before Telegram existed"
    return parsed


def _processing(
    msg: LegacyMessage, status: str, updated_at: datetime, *, deleted: bool
) -> tuple[str, datetime | None]:
    """The new row's processing state and when it was processed, from the legacy status and
    ``metadata.processed_by``."""
    if status == "reprocess_pending":
        return "pending", None
    if processed_by(msg.metadata) is not None or status == "reprocessed":
        source_meta = msg.metadata if isinstance(msg.metadata, Mapping) else {}
        return "processed", _parse_time(source_meta.get("processed_at")) or updated_at
    if deleted:
        return "ignored", None
    return "pending", None


def _metadata(msg: LegacyMessage, legacy: dict[str, Any]) -> dict[str, Any]:
    """The legacy metadata, with what the import kept of the legacy row under ``legacy``."""
    if msg.copies > 1:
        legacy["copies"] = msg.copies
        legacy["copy_ids"] = sorted(msg.copy_ids)
    if isinstance(msg.metadata, Mapping):
        metadata: dict[str, Any] = dict(msg.metadata)
    elif msg.metadata is None:
        metadata = {}
    else:
        metadata = {"legacy_metadata": msg.metadata}
    metadata["legacy"] = legacy
    return metadata


def _field(value: str | None) -> bytes:
    # None and "" differ: a NUL prefix marks a present value (text cannot hold NUL).
    return b"-" if value is None else b"\x00" + value.encode("utf-8", "surrogatepass")


def content_digest(
    message_id: int, telegram_date: datetime, text: str | None, caption: str | None
) -> bytes:
    """sha256 of what identifies a post's content: id, date (UTC, microseconds), text, caption."""
    when = telegram_date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    digest = hashlib.sha256()
    for part in (str(message_id).encode(), when.encode(), _field(text), _field(caption)):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class ChannelChecksum:
    """Rolling checksum of one channel's posts, fed in message-id order."""

    __slots__ = ("_hash", "count")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, digest: bytes) -> None:
        self._hash.update(digest)
        self.count += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def metadata_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
