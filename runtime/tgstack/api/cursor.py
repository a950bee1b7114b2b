"""Opaque pagination cursors: the sort key of the last item of a page, base64url-encoded.

A cursor is ``base64url(JSON [version, kind, *key])`` without padding. Kinds:

* ``m`` — messages, key (telegram_date, channel_id, message_id), newest first;
* ``s`` — signals, key (signal date, channel_id, message_id), newest first;
* ``e`` — one signal's events, key (telegram_date, channel_id, message_id), in post order
  (oldest first, by telegram_date, message_id, channel_id);
* ``r`` — posts that need review, key (telegram_date, channel_id, message_id), newest first;
* ``c`` — channels, key (channel_id,), ascending.

Clients must treat cursors as opaque; the kind stops a cursor of one list from being used on
another. Decoding is strict and raises ``CursorError`` (the API's 400 naming ``cursor``).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Literal

from tgstack.models import InvalidMessage, validate_channel_id, validate_message_id

VERSION = 1
MAX_LENGTH = 512

DatedKind = Literal["m", "s", "e", "r"]
CursorKind = Literal["m", "s", "e", "r", "c"]
DatedKey = tuple[datetime, int, int]


class CursorError(ValueError):
    """Not a cursor this API issued for this list."""


def encode_dated(kind: DatedKind, when: datetime, channel_id: int, message_id: int) -> str:
    """The cursor after (when, channel_id, message_id) in a dated list."""
    stamp = when.astimezone(UTC).isoformat()
    return _encode([VERSION, kind, stamp, channel_id, message_id])


def encode_channel(channel_id: int) -> str:
    return _encode([VERSION, "c", channel_id])


def decode_dated(kind: DatedKind, cursor: str) -> DatedKey:
    items = _decode(cursor, kind, 5)
    stamp, channel_id, message_id = items[2], items[3], items[4]
    if not isinstance(stamp, str):
        raise CursorError("is malformed")
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        raise CursorError("is malformed") from None
    if when.tzinfo is None:
        raise CursorError("is malformed")
    return when, _channel(channel_id), _message(message_id)


def decode_channel(cursor: str) -> int:
    items = _decode(cursor, "c", 3)
    return _channel(items[2])


def _encode(items: list[object]) -> str:
    raw = json.dumps(items, separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(cursor: str, kind: CursorKind, length: int) -> list[object]:
    if not cursor or len(cursor) > MAX_LENGTH or not cursor.isascii():
        raise CursorError("is malformed")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        items = json.loads(raw)
    except (binascii.Error, ValueError):
        raise CursorError("is malformed") from None
    if not isinstance(items, list) or len(items) != length or items[0] != VERSION:
        raise CursorError("is malformed")
    if items[1] != kind:
        raise CursorError("belongs to another list")
    if _encode(items) != cursor:  # one spelling per cursor: no padding games, no whitespace
        raise CursorError("is malformed")
    return items


def _channel(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CursorError("is malformed")
    try:
        return validate_channel_id(value)
    except InvalidMessage:
        raise CursorError("is malformed") from None


def _message(value: object) -> int:
    try:
        return validate_message_id(value)
    except InvalidMessage:
        raise CursorError("is malformed") from None
