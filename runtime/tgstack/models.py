"""Records that cross module boundaries: what the gateway stores and what consumers read back.

Also the records the database layer (``tgstack.db``) exchanges with the layers above it, so
that it imports none of them: ``StoredPost`` and ``Watermark`` for the gateway's catch-up,
``ProcessingResult`` (and its ``DEFAULT_LINK_WINDOW``) from the poller.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from tgstack.signals.model import EVENT_KINDS, Classification, Kind, Signal

# Telethon marks channel ids as -(10**12 + id); the bare id is below 10**12.
MARKED_CHANNEL_MIN = -(2 * 10**12) + 1
MARKED_CHANNEL_MAX = -(10**12) - 1
# Telegram message ids are positive 32-bit integers.
MESSAGE_ID_MAX = 2**31 - 1
# Telegram started in August 2013; anything earlier is a corrupt timestamp.
EARLIEST_TELEGRAM_DATE = datetime(2013, 8, 1, tzinfo=UTC)

MESSAGE_STATUSES = (
    "received",
    "retrying",
    "published",
    "queued",
    "failed",
    "reprocess_pending",
    "reprocessed",
    "deleted",
)
PROCESSING_STATES = ("pending", "processing", "processed", "ignored", "failed")

_CONTROL_CHARS = re.compile("[\x00]")
_SURROGATES = re.compile("[\ud800-\udfff]")


class InvalidMessage(ValueError):
    """A message field is missing, malformed or out of range; the text names the field."""


class MessageKey(NamedTuple):
    channel_id: int
    message_id: int


def validate_channel_id(value: object, *, field_name: str = "channel_id") -> int:
    """Return a marked channel id (-100…) or raise InvalidMessage naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value.strip())
        else:
            raise InvalidMessage(f"{field_name} must be an integer, got {value!r}")
    if not MARKED_CHANNEL_MIN <= value <= MARKED_CHANNEL_MAX:
        raise InvalidMessage(
            f"{field_name} must be a marked channel id (-100 followed by the channel id), "
            f"got {value}"
        )
    return value


def validate_message_id(value: object, *, field_name: str = "message_id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"{field_name} must be an integer, got {value!r}")
    if not 1 <= value <= MESSAGE_ID_MAX:
        raise InvalidMessage(f"{field_name} must be between 1 and {MESSAGE_ID_MAX}, got {value}")
    return value


def validate_reply_to(value: object) -> int | None:
    """The id of the post replied to: None, or a message id (InvalidMessage otherwise)."""
    if value is None:
        return None
    return validate_message_id(value, field_name="reply_to_msg_id")


def validate_telegram_date(value: object, *, field_name: str = "date") -> datetime:
    if not isinstance(value, datetime):
        raise InvalidMessage(f"{field_name} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidMessage(f"{field_name} must carry a UTC offset, got {value.isoformat()}")
    if value < EARLIEST_TELEGRAM_DATE:
        raise InvalidMessage(f"{field_name} is before Telegram existed: {value.isoformat()}")
    return value.astimezone(UTC)


def sanitize_text(text: str | None) -> tuple[str | None, str | None]:
    """Make text storable in PostgreSQL without losing it.

    NUL bytes and lone surrogates cannot be stored in a text column. They become U+FFFD and
    the original is returned base64-encoded (UTF-8 with surrogatepass) so nothing is lost.
    Returns (clean text, original as base64 or None when nothing changed).
    """
    if text is None:
        return None, None
    if not _CONTROL_CHARS.search(text) and not _SURROGATES.search(text):
        return text, None
    clean = _SURROGATES.sub("\ufffd", _CONTROL_CHARS.sub("\ufffd", text))
    original = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")
    return clean, original


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A channel post as the gateway stores it. Construct with ``MessageRecord.create``."""

    channel_id: int
    message_id: int
    telegram_date: datetime
    text: str | None = None
    caption: str | None = None
    media_type: str | None = None
    media_refs: Mapping[str, Any] | None = None
    thread_id: int | None = None
    # The post of the same channel this one replies to (Telegram's reply_to.reply_to_msg_id);
    # None when it is not a reply. A follow-up links to its signal by it (issue 16).
    reply_to_msg_id: int | None = None
    grouped_id: int | None = None
    edit_date: datetime | None = None
    source: str = "user_client"
    message_type: str = "text"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        channel_id: object,
        message_id: object,
        telegram_date: object,
        **fields: Any,
    ) -> MessageRecord:
        """Validate ids and date, sanitise text and caption, and build the record."""
        metadata = dict(fields.pop("metadata", None) or {})
        text, original_text = sanitize_text(fields.pop("text", None))
        caption, original_caption = sanitize_text(fields.pop("caption", None))
        if original_text is not None:
            metadata["original_text_b64"] = original_text
        if original_caption is not None:
            metadata["original_caption_b64"] = original_caption
        edit_date = fields.pop("edit_date", None)
        return cls(
            channel_id=validate_channel_id(channel_id),
            message_id=validate_message_id(message_id),
            telegram_date=validate_telegram_date(telegram_date),
            text=text,
            caption=caption,
            edit_date=None
            if edit_date is None
            else validate_telegram_date(edit_date, field_name="edit_date"),
            metadata=metadata,
            reply_to_msg_id=validate_reply_to(fields.pop("reply_to_msg_id", None)),
            **fields,
        )

    @property
    def key(self) -> MessageKey:
        return MessageKey(self.channel_id, self.message_id)

    @property
    def body(self) -> str:
        """The text a consumer parses: the message text, else the media caption."""
        return self.text if self.text else (self.caption or "")

    def with_changes(self, **changes: Any) -> MessageRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "message_id": self.message_id,
            "telegram_date": self.telegram_date.isoformat(),
            "text": self.text,
            "caption": self.caption,
            "media_type": self.media_type,
            "media_refs": dict(self.media_refs) if self.media_refs is not None else None,
            "thread_id": self.thread_id,
            "reply_to_msg_id": self.reply_to_msg_id,
            "grouped_id": self.grouped_id,
            "edit_date": self.edit_date.isoformat() if self.edit_date else None,
            "source": self.source,
            "message_type": self.message_type,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MessageRecord:
        edit_date = data.get("edit_date")
        return cls(
            channel_id=int(data["channel_id"]),
            message_id=int(data["message_id"]),
            telegram_date=datetime.fromisoformat(data["telegram_date"]),
            text=data.get("text"),
            caption=data.get("caption"),
            media_type=data.get("media_type"),
            media_refs=data.get("media_refs"),
            thread_id=data.get("thread_id"),
            reply_to_msg_id=validate_reply_to(data.get("reply_to_msg_id")),
            grouped_id=data.get("grouped_id"),
            edit_date=datetime.fromisoformat(edit_date) if edit_date else None,
            source=data.get("source", "user_client"),
            message_type=data.get("message_type", "text"),
            metadata=data.get("metadata") or {},
        )


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from storage (DB or cache) for a consumer."""

    record: MessageRecord
    status: str = "received"
    processing_state: str = "pending"

    @property
    def key(self) -> MessageKey:
        return self.record.key


# Read back by the database layer for the gateway ----------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredPost:
    """What reconciliation (``tgstack.gateway.reconcile``) needs of a stored post."""

    message_id: int
    edit_date: datetime | None
    text: str | None
    caption: str | None
    media_type: str | None
    media_refs: Mapping[str, Any] | None
    deleted: bool


@dataclass(frozen=True, slots=True)
class Watermark:
    """A channel's watermark as stored: every id in (floor, watermark] is stored or known
    absent; ``created`` when it was made just now (at the floor). The model of the holes
    above it is ``tgstack.gateway.watermark``."""

    floor: int
    watermark: int
    created: bool = False


# Made by the poller for the database layer ------------------------------------------------------

ResultState = Literal["processed", "ignored", "failed"]
# How far back a follow-up that names only its asset looks for its signal (sql/061; the
# setting TGSTACK_POLLER_SIGNAL_LINK_WINDOW_HOURS overrides it in the service).
DEFAULT_LINK_WINDOW = timedelta(days=14)


def _exact(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class ProcessingResult:
    """What the poller decided for one message (``tgstack.poller.processing``): the form
    ``tp_capital.apply_processing_results`` (sql/061) stores."""

    key: MessageKey
    state: ResultState
    signal: Signal | None = None
    error: str | None = None
    classification: Classification | None = None

    @property
    def kind(self) -> Kind | None:
        """The post's kind, or None for a failure."""
        return None if self.classification is None else self.classification.kind

    def to_json(self) -> dict[str, Any]:
        """The form tp_capital.apply_processing_results takes; prices as exact strings."""
        signal = None
        if self.signal is not None:
            signal = {
                name: str(value) if isinstance(value, Decimal) else value
                for name, value in (
                    ("asset", self.signal.asset),
                    ("signal_type", self.signal.signal_type),
                    ("buy_min", self.signal.buy_min),
                    ("buy_max", self.signal.buy_max),
                    ("target_1", self.signal.target_1),
                    ("target_2", self.signal.target_2),
                    ("target_final", self.signal.target_final),
                    ("stop", self.signal.stop),
                )
            }
        return {
            "channel_id": self.key.channel_id,
            "message_id": self.key.message_id,
            "state": self.state,
            "error": self.error,
            "signal": signal,
            "event": self._event_json(),
            "review": self._review_json(),
        }

    def _event_json(self) -> dict[str, Any] | None:
        found = self.classification
        if self.state != "processed" or found is None or found.kind not in EVENT_KINDS:
            return None
        stop = found.stop
        return {
            "kind": found.kind,
            "asset": found.asset,
            "target": None if found.target is None else str(found.target),
            "stop": _exact(stop) if isinstance(stop, Decimal) else None,
            "stop_ref": stop if isinstance(stop, str) else None,
            "result": found.result,
        }

    def _review_json(self) -> dict[str, Any] | None:
        found = self.classification
        if self.state != "processed" or found is None or found.kind != "needs_review":
            return None
        return {"asset": found.asset, "missing": list(found.missing)}
