"""The Telegram network boundary for tests: real Telethon objects, a fake network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from telethon import errors
from telethon.tl import types

from tgstack.gateway.events import MessageEvent
from tgstack.gateway.watermark import contiguous_watermark, find_holes
from tgstack.models import MessageRecord, StoredPost, Watermark

BARE = 1649127710
CHANNEL = -1001649127710
WHEN = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def message(message_id: int, text: str = "post", **kwargs: Any) -> types.Message:
    return types.Message(
        id=message_id, peer_id=types.PeerChannel(BARE), date=WHEN, message=text, **kwargs
    )


class FakeTelegram:
    """The Telegram network boundary: a stand-in for TelegramClient's network calls."""

    def __init__(
        self,
        history: list[types.Message | types.MessageService],
        *,
        authorized: bool = True,
        auth_error: BaseException | None = None,
        flood_once: int = 0,
        flood_after: int | None = None,
    ) -> None:
        self.history = history
        self.authorized = authorized
        self.auth_error = auth_error
        self.flood_once = flood_once
        self.flood_after = flood_after
        self.handlers: list[tuple[Any, Any]] = []
        self._connected = True
        self._disconnected: asyncio.Future[None] | None = None
        self.iter_calls: list[dict[str, Any]] = []
        self.ids_calls: list[list[int]] = []
        self.catch_up_calls = 0

    async def connect(self) -> None:
        return None

    async def is_user_authorized(self) -> bool:
        if self.auth_error is not None:
            raise self.auth_error
        return self.authorized

    async def get_input_entity(self, peer: types.PeerChannel) -> types.InputPeerChannel:
        return types.InputPeerChannel(peer.channel_id, access_hash=77)

    def add_event_handler(self, callback: Any, event: Any) -> None:
        self.handlers.append((callback, event))

    def is_connected(self) -> bool:
        return self._connected

    @property
    def disconnected(self) -> asyncio.Future[None]:
        if self._disconnected is None:
            self._disconnected = asyncio.get_running_loop().create_future()
        return self._disconnected

    async def run_until_disconnected(self) -> None:
        await self.disconnected

    async def disconnect(self) -> None:
        self._connected = False
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    async def catch_up(self) -> None:
        self.catch_up_calls += 1

    async def iter_messages(
        self,
        entity: Any,
        limit: int | None = None,
        *,
        min_id: int = 0,
        max_id: int = 0,
        reverse: bool = False,
        wait_time: float | None = None,
    ) -> AsyncIterator[types.Message | types.MessageService]:
        """Telethon's history iteration: ids in (min_id, max_id), newest first unless reverse;
        ``flood_once`` fails the next iteration at its start, ``flood_after`` the next one
        after that many messages."""
        self.iter_calls.append({"min_id": min_id, "max_id": max_id, "reverse": reverse})
        if self.flood_once:
            seconds, self.flood_once = self.flood_once, 0
            raise errors.FloodWaitError(request=None, capture=seconds)
        given = 0
        for item in sorted(self.history, key=lambda m: m.id, reverse=not reverse):
            if item.id <= min_id or (max_id and item.id >= max_id):
                continue
            if self.flood_after is not None and given == self.flood_after:
                self.flood_after = None
                raise errors.FloodWaitError(request=None, capture=1)
            yield item
            given += 1
            if limit is not None and given >= limit:
                return

    async def get_messages(
        self, entity: Any, limit: int | None = None, *, ids: list[int] | None = None
    ) -> list[types.Message | types.MessageService | None]:
        """By ids (channels.getMessages: None for an id without a message), or the newest
        ``limit`` messages."""
        if ids is not None:
            self.ids_calls.append(list(ids))
            by_id = {m.id: m for m in self.history}
            return [by_id.get(i) for i in ids]
        return sorted(self.history, key=lambda m: m.id, reverse=True)[:limit]


class MemoryStore:
    """The backfill's store in memory, on the pure model of tgstack.gateway.watermark (the SQL
    twin is tested against the same model); ``commit`` is a sink that stores at once."""

    def __init__(self) -> None:
        self.posts: dict[int, dict[int, MessageRecord]] = {}
        self.deleted: set[tuple[int, int]] = set()
        self.absent: dict[int, set[int]] = {}
        self.marks: dict[int, Watermark] = {}
        self.backfilled: list[int] = []

    def commit(self, event: MessageEvent) -> None:
        posts = self.posts.setdefault(event.channel_id, {})
        if event.kind == "new" and event.record is not None:
            posts.setdefault(event.record.message_id, event.record)
        elif event.kind == "edit" and event.record is not None:
            # As the pipeline does: a newer edit replaces, an edit of a post not stored stores it.
            before = posts.get(event.record.message_id)
            edited = event.record.edit_date
            if (
                before is None
                or before.edit_date is None
                or (edited is not None and edited > before.edit_date)
            ):
                posts[event.record.message_id] = event.record
        elif event.kind == "delete":
            self.deleted.update((event.channel_id, i) for i in event.message_ids if i in posts)

    def init_watermark(self, channel_id: int, floor: int) -> Watermark:
        if channel_id in self.marks:
            return self.marks[channel_id]
        self.marks[channel_id] = Watermark(floor, floor)
        return Watermark(floor, floor, created=True)

    def _known(self, channel_id: int) -> set[int]:
        return set(self.posts.get(channel_id, {})) | self.absent.get(channel_id, set())

    def advance_watermark(self, channel_id: int, top: int, absent: Sequence[int] = ()) -> int:
        assert all(1 <= i <= top for i in absent), (absent, top)
        mark = self.marks[channel_id]
        self.absent.setdefault(channel_id, set()).update(i for i in absent if i > mark.watermark)
        moved = contiguous_watermark(mark.watermark, self._known(channel_id), top)
        self.marks[channel_id] = Watermark(mark.floor, moved)
        self.absent[channel_id] = {i for i in self.absent[channel_id] if i > moved}
        return moved

    def find_holes(self, channel_id: int, top: int, limit: int = 1000) -> list[tuple[int, int]]:
        mark = self.marks.get(channel_id, Watermark(0, 0)).watermark
        holes = find_holes(mark, self._known(channel_id), top, limit)
        return [(hole.first, hole.last) for hole in holes]

    def stored_posts(self, channel_id: int, after: int, last: int) -> dict[int, StoredPost]:
        return {
            i: StoredPost(
                i,
                r.edit_date,
                r.text,
                r.caption,
                r.media_type,
                r.media_refs,
                (channel_id, i) in self.deleted,
            )
            for i, r in self.posts.get(channel_id, {}).items()
            if after < i <= last
        }

    def mark_backfilled(self, channel_id: int) -> None:
        self.backfilled.append(channel_id)
