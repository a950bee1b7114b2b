"""The replay source: channel events from a JSONL file, one JSON object a line.

Fields: ``event`` (``new`` by default, ``edit``, ``delete``), ``channel_id`` (marked integer),
``message_id`` (positive integer), ``date`` (ISO 8601 with offset; not needed for ``delete``),
``text``, and optional ``caption``, ``media_type``, ``edit_date``, ``grouped_id``,
``reply_to_msg_id`` (the id of the post of the same channel this one replies to).
A bad line is reported with its number and reason and skipped; it never stops the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tgstack.gateway.events import EVENT_KINDS, MessageEvent
from tgstack.models import InvalidMessage, MessageRecord

KNOWN_FIELDS = frozenset(
    {
        "event",
        "channel_id",
        "message_id",
        "date",
        "text",
        "caption",
        "media_type",
        "edit_date",
        "grouped_id",
        "reply_to_msg_id",
    }
)


@dataclass(frozen=True, slots=True)
class RejectedLine:
    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.reason}"


class ReplayFileError(OSError):
    """The replay file itself cannot be read."""


def _integer(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if value is None:
        raise InvalidMessage(f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"{name} must be an integer, got {value!r}")
    return value


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidMessage(f"{name} must be a string, got {type(value).__name__}")
    return value


def _timestamp(data: dict[str, Any], name: str, *, required: bool) -> datetime | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidMessage(f"{name} is missing")
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"{name} must be an ISO 8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidMessage(f"{name} is not ISO 8601: {value!r}") from None
    if parsed.tzinfo is None:
        raise InvalidMessage(f"{name} must include a UTC offset: {value!r}")
    return parsed


def event_from_json(data: object, *, source: str = "replay") -> MessageEvent:
    """Build an event from one decoded JSON line; InvalidMessage names the field at fault.

    ``source`` is stored with the record (``replay`` for files, ``spool`` for the spool source).
    """
    if not isinstance(data, dict):
        raise InvalidMessage("line is not a JSON object")
    kind = data.get("event", "new")
    if kind not in EVENT_KINDS:
        raise InvalidMessage(f"event must be one of new, edit, delete; got {kind!r}")
    channel_id = _integer(data, "channel_id")
    message_id = _integer(data, "message_id")
    if kind == "delete":
        return MessageEvent.delete(channel_id, (message_id,))
    grouped_id = data.get("grouped_id")
    if grouped_id is not None and (isinstance(grouped_id, bool) or not isinstance(grouped_id, int)):
        raise InvalidMessage(f"grouped_id must be an integer, got {grouped_id!r}")
    record = MessageRecord.create(
        channel_id,
        message_id,
        _timestamp(data, "date", required=True),
        text=_optional_text(data, "text"),
        caption=_optional_text(data, "caption"),
        media_type=_optional_text(data, "media_type"),
        edit_date=_timestamp(data, "edit_date", required=False),
        grouped_id=grouped_id,
        reply_to_msg_id=data.get("reply_to_msg_id"),
        source=source,
    )
    return MessageEvent.edit(record) if kind == "edit" else MessageEvent.new(record)


def parse_line(
    line: str | bytes, line_number: int, *, source: str = "replay"
) -> MessageEvent | RejectedLine | None:
    """One line → an event, a rejection with its reason, or None for a blank line."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return RejectedLine(line_number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    if not line.strip():
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return RejectedLine(line_number, f"invalid JSON ({exc.msg} at column {exc.colno})")
    try:
        return event_from_json(data, source=source)
    except InvalidMessage as exc:
        return RejectedLine(line_number, str(exc))


def read_events(path: Path) -> Iterator[MessageEvent | RejectedLine]:
    """Events and rejections in file order; ReplayFileError if the file cannot be read."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ReplayFileError(f"cannot read replay file {path}: {exc.strerror or exc}") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            parsed = parse_line(line, number)
            if parsed is not None:
                yield parsed
