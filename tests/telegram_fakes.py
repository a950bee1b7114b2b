"""The Telegram network boundary for tests: real Telethon objects, a fake network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from telethon import errors
from telethon.tl import types

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
    ) -> None:
        self.history = history
        self.authorized = authorized
        self.auth_error = auth_error
        self.flood_once = flood_once
        self.handlers: list[tuple[Any, Any]] = []
        self._connected = True
        self._disconnected: asyncio.Future[None] | None = None
        self.iter_calls: list[dict[str, Any]] = []
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
        self, entity: Any, *, min_id: int, reverse: bool, wait_time: float
    ) -> AsyncIterator[types.Message]:
        self.iter_calls.append({"min_id": min_id, "reverse": reverse})
        if self.flood_once:
            seconds, self.flood_once = self.flood_once, 0
            raise errors.FloodWaitError(request=None, capture=seconds)
        for item in sorted(self.history, key=lambda m: m.id):
            if item.id > min_id:
                yield item
