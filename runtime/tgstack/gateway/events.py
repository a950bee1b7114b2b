"""The one event type every source yields: a new post, an edit, or a deletion."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from tgstack.models import MessageRecord, validate_channel_id, validate_message_id

EventKind = Literal["new", "edit", "delete"]
EVENT_KINDS: tuple[EventKind, ...] = ("new", "edit", "delete")


@dataclass(frozen=True, slots=True)
class MessageEvent:
    kind: EventKind
    channel_id: int
    message_ids: tuple[int, ...]
    record: MessageRecord | None = None
    observed_at: float = field(default_factory=time.time)

    @classmethod
    def new(cls, record: MessageRecord, observed_at: float | None = None) -> MessageEvent:
        return cls(
            "new",
            record.channel_id,
            (record.message_id,),
            record,
            observed_at if observed_at is not None else time.time(),
        )

    @classmethod
    def edit(cls, record: MessageRecord, observed_at: float | None = None) -> MessageEvent:
        return cls(
            "edit",
            record.channel_id,
            (record.message_id,),
            record,
            observed_at if observed_at is not None else time.time(),
        )

    @classmethod
    def delete(
        cls, channel_id: int, message_ids: tuple[int, ...], observed_at: float | None = None
    ) -> MessageEvent:
        ids = tuple(validate_message_id(m) for m in message_ids)
        return cls(
            "delete",
            validate_channel_id(channel_id),
            ids,
            None,
            observed_at if observed_at is not None else time.time(),
        )
