"""The Redis key schema: key names, the recent-window member format and the TTLs.

Pure functions, no I/O. Every builder validates its ids with the rules of ``models`` and
raises ``models.InvalidMessage`` (``InvalidKey`` for a malformed key string), so a bad id
never reaches Redis as a key. See docs/redis-schema.md.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

from tgstack.models import (
    MESSAGE_ID_MAX,
    InvalidMessage,
    validate_channel_id,
    validate_message_id,
)

MSG_PREFIX = "telegram:msg"
DEDUP_PREFIX = "telegram:dedup"
CHANNEL_PREFIX = "telegram:channel"
RECENT_SUFFIX = "recent"

HOT_CACHE_TTL = 3600
"""Seconds a message body (and a channel's recent window) lives after its last write."""
DEDUP_TTL = 7200
"""Seconds a dedup marker lives; longer than the hot cache so late duplicates are caught."""

# Members of the recent ZSET are message ids zero-padded to this width, so that members
# sharing a score (Telegram dates have one-second resolution) sort in message-id order.
MEMBER_WIDTH = len(str(MESSAGE_ID_MAX))

KeyKind = Literal["msg", "dedup", "recent"]

_CHANNEL = r"(-[1-9][0-9]*)"
_MESSAGE = r"([1-9][0-9]*)"
_MSG_RE = re.compile(rf"{MSG_PREFIX}:{_CHANNEL}:{_MESSAGE}")
_DEDUP_RE = re.compile(rf"{DEDUP_PREFIX}:{_CHANNEL}:{_MESSAGE}")
_RECENT_RE = re.compile(rf"{CHANNEL_PREFIX}:{_CHANNEL}:{RECENT_SUFFIX}")
_MEMBER_RE = re.compile(rf"[0-9]{{{MEMBER_WIDTH}}}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidKey(InvalidMessage):
    """A string is not a key (or recent-window member) of this schema."""


class ParsedKey(NamedTuple):
    kind: KeyKind
    channel_id: int
    message_id: int | None  # None for the per-channel recent window


def message_key(channel_id: int, message_id: int) -> str:
    """``telegram:msg:{ch}:{id}`` — the message body as JSON (STRING, EX HOT_CACHE_TTL)."""
    return f"{MSG_PREFIX}:{validate_channel_id(channel_id)}:{validate_message_id(message_id)}"


def dedup_key(channel_id: int, message_id: int) -> str:
    """``telegram:dedup:{ch}:{id}`` — "this message is stored" marker (STRING, EX DEDUP_TTL)."""
    return f"{DEDUP_PREFIX}:{validate_channel_id(channel_id)}:{validate_message_id(message_id)}"


def recent_key(channel_id: int) -> str:
    """``telegram:channel:{ch}:recent`` — unprocessed window (ZSET, score = message time ms)."""
    return f"{CHANNEL_PREFIX}:{validate_channel_id(channel_id)}:{RECENT_SUFFIX}"


def recent_member(message_id: int) -> str:
    """The ZSET member for a message: its id, zero-padded so ties sort by id."""
    return str(validate_message_id(message_id)).zfill(MEMBER_WIDTH)


def parse_recent_member(member: str | bytes) -> int:
    text = member.decode("ascii", "replace") if isinstance(member, bytes) else member
    if not _MEMBER_RE.fullmatch(text):
        raise InvalidKey(f"not a recent-window member: {text!r}")
    return validate_message_id(int(text))


def score_ms(moment: datetime) -> int:
    """The recent-window score of a message: its Telegram date in Unix milliseconds."""
    if moment.tzinfo is None:
        raise InvalidMessage(f"date must carry a UTC offset, got {moment.isoformat()}")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def parse_key(key: str | bytes) -> ParsedKey:
    """Split a key built by this module back into its parts; raise InvalidKey otherwise.

    Only the canonical spelling is accepted (no leading zeros or plus signs), so
    ``message_key(*parse_key(k)[1:]) == k`` for every message key ``k``.
    """
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if match := _MSG_RE.fullmatch(text):
        kind: KeyKind = "msg"
    elif match := _DEDUP_RE.fullmatch(text):
        kind = "dedup"
    elif match := _RECENT_RE.fullmatch(text):
        kind = "recent"
    else:
        raise InvalidKey(f"not a tgstack Redis key: {text[:200]!r}")
    try:
        channel_id = validate_channel_id(int(match.group(1)))
        message_id = None if kind == "recent" else validate_message_id(int(match.group(2)))
    except InvalidMessage as exc:
        raise InvalidKey(f"{exc} in key {text[:200]!r}") from exc
    return ParsedKey(kind, channel_id, message_id)
