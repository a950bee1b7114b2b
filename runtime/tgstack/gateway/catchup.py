"""When the gateway must catch up: after its connection to Telegram came back.

Invariant: every reconnection of the client asks the gateway for a catch-up round
(``client.catch_up()`` plus a history backfill of every channel).

Why this seam (the ``TelegramClient`` itself is Telethon's, unpatched): Telethon reconnects
on its own and then only calls ``get_me()``, so posts made while the link was down arrive at
the next gap-revealing update or the next backfill round. ``client.is_connected()`` cannot
tell: it stays true for as long as Telethon keeps trying, a dropped link included. The
client's ``connection`` argument takes the transport class to use; ours is Telethon's default
transport (``ConnectionTcpFull``) reporting each ``connect()`` and ``disconnect()``, so the
second successful ``connect()`` of a connection is a reconnect, and a connection between
``disconnect()`` and its next ``connect()`` is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from telethon import TelegramClient
from telethon.network.connection import ConnectionTcpFull

log = logging.getLogger("tgstack.gateway.catchup")


class LinkWatch:
    """Collects the reasons to catch up and wakes whoever waits for them (one event loop)."""

    def __init__(
        self,
        on_link_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.on_link_change = on_link_change
        self.reconnects = 0
        self._down: set[object] = set()  # connections dropped and not connected again
        self._reasons: set[str] = set()
        self._wake = asyncio.Event()
        self._closing = False

    @property
    def down(self) -> bool:
        """A connection of the client dropped and has not come back yet."""
        return bool(self._down)

    def request_catch_up(self, reason: str) -> None:
        self._reasons.add(reason)
        self._wake.set()

    async def wait(self, timeout: float) -> set[str]:
        """Wait until a catch-up is asked for or ``timeout`` passes; returns the reasons
        (none on timeout) and forgets them."""
        if not self._reasons:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        reasons, self._reasons = self._reasons, set()
        self._wake.clear()
        return reasons

    # Reported by the connection --------------------------------------------------------------

    def connected(self, connection: object, again: bool) -> None:
        if connection in self._down:
            self._down.discard(connection)
            self._link_changed()
        if again:
            self.reconnects += 1
            log.info("telegram reconnected", extra={"reconnects": self.reconnects})
            self.request_catch_up("reconnected")

    def disconnected(self, connection: object) -> None:
        if not self._closing and connection not in self._down:
            self._down.add(connection)
            log.warning("telegram connection lost")
            self._link_changed()

    def _link_changed(self) -> None:
        if self.on_link_change is not None:
            self.on_link_change(not self._down)

    def close(self) -> None:
        """The gateway is about to disconnect on purpose: no reconnect, no catch-up follows."""
        self._closing = True


def watched_connection(watch: LinkWatch) -> type[ConnectionTcpFull]:
    """Telethon's default transport, reporting each connect and disconnect to ``watch``."""

    class WatchedConnection(ConnectionTcpFull):  # type: ignore[misc]
        _tgstack_connected_before = False

        async def connect(self, timeout: float | None = None, ssl: Any = None) -> None:
            await super().connect(timeout=timeout, ssl=ssl)
            watch.connected(self, again=self._tgstack_connected_before)
            self._tgstack_connected_before = True

        async def disconnect(self) -> None:
            if self._tgstack_connected_before:
                watch.disconnected(self)
            await super().disconnect()

    return WatchedConnection


class GatewayClient(TelegramClient):  # type: ignore[misc]
    """The unpatched ``TelegramClient`` on a connection that reports to ``watch``."""

    def __init__(self, *args: Any, watch: LinkWatch, **kwargs: Any) -> None:
        self.watch = watch
        super().__init__(*args, connection=watched_connection(watch), **kwargs)
