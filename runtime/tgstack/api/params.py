"""Parsing and validating request input: query parameters, path parameters, JSON bodies.

Pure functions. Each takes the raw text (or decoded JSON) and returns a typed value, or
raises ``ApiError`` 400 naming the parameter or field at fault. Nothing unvalidated reaches
the database: ids are range-checked, text is bounded and free of control characters.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tgstack.api.errors import bad_body, bad_parameter
from tgstack.models import (
    MESSAGE_STATUSES,
    PROCESSING_STATES,
    InvalidMessage,
    validate_channel_id,
    validate_message_id,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_QUERY_LENGTH = 200
MAX_TITLE_LENGTH = 255

_INTEGER = re.compile(r"-?[0-9]{1,20}")
_LIMIT = re.compile(r"[0-9]{1,4}")
_DATE_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?P<fraction>\.[0-9]{1,9})?(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_ASSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_SIGNAL_ID = re.compile(r"[1-9][0-9]{0,18}")
SIGNAL_ID_MAX = 2**63 - 1  # tp_capital.signals.id is a bigint identity
# A signal's status filter: a status of tp_capital.signals (sql/060_signal_events.sql), or
# ``target`` for any target_N.
SIGNAL_STATUS_PATTERN = r"^(open|target|target_[1-9][0-9]{0,5}|stopped|closed|cancelled)$"
_SIGNAL_STATUS = re.compile(SIGNAL_STATUS_PATTERN)
# Telegram usernames: 5-32 characters, a letter first, letters, digits and underscores.
USERNAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{3,30}[A-Za-z0-9]$"
_USERNAME = re.compile(USERNAME_PATTERN)
# Free text: no control characters, at least one non-space (the OpenAPI document says the same).
# The visible character is neither a space nor a control character: a bare \S there would let
# one control character through the schema that the parser refuses.
_CONTROL = r"\u0000-\u001f\u007f-\u009f"
VISIBLE_TEXT_PATTERN = rf"^[^{_CONTROL}]*[^\s{_CONTROL}][^{_CONTROL}]*$"
_VISIBLE_TEXT = re.compile(VISIBLE_TEXT_PATTERN)

Parser = Callable[[str, str], Any]
"""(parameter name, raw text) -> value; raises ApiError 400 naming the parameter."""


# Path and query parameters ---------------------------------------------------------------------


def channel_id(name: str, raw: str) -> int:
    if not _INTEGER.fullmatch(raw):
        raise bad_parameter(name, f"must be a marked channel id (an integer), got {raw[:40]!r}")
    try:
        return validate_channel_id(int(raw), field_name=name)
    except InvalidMessage as exc:
        raise bad_parameter(name, _without_prefix(str(exc), name)) from None


def message_id(name: str, raw: str) -> int:
    if not _INTEGER.fullmatch(raw):
        raise bad_parameter(name, f"must be a positive integer, got {raw[:40]!r}")
    try:
        return validate_message_id(int(raw), field_name=name)
    except InvalidMessage as exc:
        raise bad_parameter(name, _without_prefix(str(exc), name)) from None


def limit(name: str, raw: str) -> int:
    if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_parameter(name, f"must be an integer from 1 to {MAX_LIMIT}, got {raw[:40]!r}")
    return int(raw)


def timestamp(name: str, raw: str) -> datetime:
    """An RFC 3339 date-time (ISO 8601 with a UTC offset): ``2024-05-01T12:00:00Z``,
    ``2024-05-01T09:00:00.250-03:00``."""
    match = _DATE_TIME.fullmatch(raw)
    if match is None:
        raise bad_parameter(
            name,
            f"must be an ISO 8601 date-time with offset like 2024-05-01T12:00:00Z, "
            f"got {raw[:60]!r}",
        )
    fraction = (match["fraction"] or "")[:7].ljust(7, "0") if match["fraction"] else ""
    offset = "+00:00" if match["offset"] in ("Z", "z") else match["offset"]
    try:
        value = datetime.fromisoformat(f"{match['date']}T{match['time']}{fraction}{offset}")
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad_parameter(name, f"is not a valid date-time: {raw[:60]!r}") from None


def boolean(name: str, raw: str) -> bool:
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise bad_parameter(name, f"must be true or false, got {raw[:40]!r}")


def status_list(name: str, raw: str) -> tuple[str, ...]:
    return _choices(name, raw, MESSAGE_STATUSES)


def processing_state_list(name: str, raw: str) -> tuple[str, ...]:
    return _choices(name, raw, PROCESSING_STATES)


def search_text(name: str, raw: str) -> str:
    """Free text (1-200 characters, no control characters) for a case-insensitive search."""
    if len(raw) > MAX_QUERY_LENGTH:
        raise bad_parameter(name, f"must be at most {MAX_QUERY_LENGTH} characters")
    if _has_control(raw) or not _VISIBLE_TEXT.match(raw):
        raise bad_parameter(name, "must have a visible character and no control characters")
    return raw


def asset(name: str, raw: str) -> str:
    """A ticker such as PETR4 (letters, digits, '.', '_', '-'); compared upper-cased."""
    if not _ASSET.fullmatch(raw):
        raise bad_parameter(
            name, f"must be a ticker of 1-32 letters, digits, '.', '_' or '-', got {raw[:40]!r}"
        )
    return raw.upper()


def signal_id(name: str, raw: str) -> int:
    """A signal's ``id`` (a positive bigint, as GET /v1/signals lists it)."""
    if not _SIGNAL_ID.fullmatch(raw) or int(raw) > SIGNAL_ID_MAX:
        raise bad_parameter(
            name, f"must be a signal's id (a positive integer, as listed), got {raw[:40]!r}"
        )
    return int(raw)


def signal_status(name: str, raw: str) -> str:
    """One signal status: open, stopped, closed, cancelled, a target_N (the highest target
    reached), or ``target`` for any target_N."""
    if not _SIGNAL_STATUS.fullmatch(raw):
        raise bad_parameter(
            name,
            "must be one of open, target (any target reached), target_N (e.g. target_2), "
            f"stopped, closed, cancelled; got {raw[:40]!r}",
        )
    return raw


def cursor(name: str, raw: str) -> str:
    """Shape check only; the list's own decoder validates the content."""
    if not raw or len(raw) > 512:
        raise bad_parameter(name, "is malformed")
    return raw


def like_pattern(text: str) -> str:
    """An ILIKE pattern matching ``text`` anywhere, with ``%``, ``_`` and ``\\`` escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _choices(name: str, raw: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(part.strip() for part in raw.split(",")))
    for value in values:
        if value not in allowed:
            raise bad_parameter(
                name, f"unknown value {value[:40]!r}; use one or more of {', '.join(allowed)}"
            )
    return values


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


def _without_prefix(message: str, name: str) -> str:
    return message.removeprefix(f"{name} ")


# JSON bodies -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelCreate:
    channel_id: int
    title: str | None
    username: str | None
    is_active: bool


@dataclass(frozen=True, slots=True)
class ChannelUpdate:
    """Only the fields the client sent; a None value clears title/username."""

    changes: Mapping[str, Any]


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 (``field`` null) saying why not."""
    if not body.strip():
        raise bad_body(None, "the request body must be a JSON object, got an empty body")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise bad_body(None, "the request body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise bad_body(None, f"the request body is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise bad_body(None, f"the request body must be a JSON object, got {_json_type(data)}")
    return data


def channel_create(data: Mapping[str, Any]) -> ChannelCreate:
    _only(data, ("channel_id", "title", "username", "is_active"))
    if "channel_id" not in data:
        raise bad_body("channel_id", "is required")
    raw_id = data["channel_id"]
    if isinstance(raw_id, float) and raw_id.is_integer() and abs(raw_id) < 2**53:
        raw_id = int(raw_id)  # JSON Schema counts 1.0 as an integer; so does this API
    if isinstance(raw_id, bool) or not isinstance(raw_id, int):
        raise bad_body("channel_id", f"must be an integer, got {_json_type(raw_id)}")
    try:
        channel = validate_channel_id(raw_id, field_name="channel_id")
    except InvalidMessage as exc:
        raise bad_body("channel_id", _without_prefix(str(exc), "channel_id")) from None
    return ChannelCreate(
        channel_id=channel,
        title=_title(data.get("title")),
        username=_username(data.get("username")),
        is_active=_bool_field("is_active", data.get("is_active", True)),
    )


def channel_update(data: Mapping[str, Any]) -> ChannelUpdate:
    _only(data, ("title", "username", "is_active"))
    if not data:
        raise bad_body(None, "give at least one of title, username, is_active")
    changes: dict[str, Any] = {}
    if "title" in data:
        changes["title"] = _title(data["title"])
    if "username" in data:
        changes["username"] = _username(data["username"])
    if "is_active" in data:
        changes["is_active"] = _bool_field("is_active", data["is_active"])
    return ChannelUpdate(changes)


def _only(data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise bad_body(key[:64], f"unknown field; allowed: {', '.join(allowed)}")


def _title(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_body("title", f"must be a string or null, got {_json_type(value)}")
    if not value or len(value) > MAX_TITLE_LENGTH:
        raise bad_body("title", f"must be 1 to {MAX_TITLE_LENGTH} characters")
    if _has_control(value) or not _VISIBLE_TEXT.match(value):
        raise bad_body("title", "must have a visible character and no control characters")
    return value


def _username(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_body("username", f"must be a string or null, got {_json_type(value)}")
    if not _USERNAME.fullmatch(value):
        raise bad_body(
            "username",
            "must be a Telegram username: 5-32 letters, digits or underscores, "
            "starting with a letter (no @)",
        )
    return value


def _bool_field(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad_body(name, f"must be true or false, got {_json_type(value)}")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__
