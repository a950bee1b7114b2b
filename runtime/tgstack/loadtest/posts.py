"""The posts a load test sends: synthetic signals and chatter, dated when they are sent.

In process, a post's ``telegram_date`` is the wall-clock time it is handed to the gateway, to
the microsecond: PostgreSQL stores it with the row, so the end-to-end latency of a post is
``processed_at - telegram_date`` read back from the database, not an estimate. Through the
wire, the Telegram server numbers and dates the posts (``draft`` gives only channel and text)
and its publish time is the post's sent time (``tgstack.loadtest.wire``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tgstack.gateway.synthetic import CHATTER, signal_text
from tgstack.models import MessageKey, MessageRecord


@dataclass(frozen=True, slots=True)
class Draft:
    """A post not sent yet: its channel and text (the server gives it an id)."""

    channel: int
    is_signal: bool
    text: str


@dataclass(frozen=True, slots=True)
class SentPost:
    key: MessageKey
    sent_at: float  # Unix time, the post's telegram_date
    is_signal: bool


class PostFactory:
    """Round-robin over the channels, message ids increasing from ``first_ids``."""

    def __init__(
        self,
        channels: Sequence[int],
        first_ids: Mapping[int, int],
        *,
        signal_share: float = 0.3,
        seed: int = 1,
    ) -> None:
        if not channels:
            raise ValueError("a load test needs at least one channel")
        self.channels = list(channels)
        self.next_id = {channel: int(first_ids.get(channel, 1)) for channel in self.channels}
        self.first_ids = dict(self.next_id)
        self.signal_share = signal_share
        self._rng = random.Random(seed)  # noqa: S311 - test data, not cryptography
        self._index = 0
        self._prepared: deque[tuple[bool, str]] = deque()

    def prepare(self, count: int) -> None:
        """Write the texts of the next ``count`` posts now, so that sending them costs the
        load generator as little CPU as possible (it shares the machine with the stack)."""
        self._prepared.extend(self._text() for _ in range(count))

    def _text(self) -> tuple[bool, str]:
        is_signal = self._rng.random() < self.signal_share
        return is_signal, signal_text(self._rng) if is_signal else self._rng.choice(CHATTER)

    def draft(self) -> Draft:
        """The next post's channel and text, without an id (ids are the server's, then)."""
        channel = self.channels[self._index % len(self.channels)]
        self._index += 1
        is_signal, text = self._prepared.popleft() if self._prepared else self._text()
        return Draft(channel, is_signal, text)

    def make(self) -> tuple[MessageRecord, SentPost]:
        """The next post with the next id of its channel, dated now."""
        draft = self.draft()
        message_id = self.next_id[draft.channel]
        self.next_id[draft.channel] = message_id + 1
        now = datetime.now(UTC)
        record = MessageRecord.create(
            draft.channel, message_id, now, text=draft.text, source="loadtest"
        )
        return record, SentPost(record.key, now.timestamp(), draft.is_signal)

    @property
    def sent(self) -> int:
        return self._index

    def id_ranges(self) -> dict[int, tuple[int, int]]:
        """Per channel, the first and last message id sent (channels with none left out)."""
        return {
            channel: (self.first_ids[channel], self.next_id[channel] - 1)
            for channel in self.channels
            if self.next_id[channel] > self.first_ids[channel]
        }
