"""When the gateway must catch up: after its connection to Telegram came back, and after a
FloodWait stopped Telethon's own update loop from fetching what it missed.

Invariant: every reconnection of the client, and the end of every FloodWait met by Telethon's
own ``updates.getDifference`` / ``updates.getChannelDifference``, asks the gateway for a
catch-up round (``client.catch_up()`` plus a history backfill of every channel); each second of
such a wait is logged and counted once, like the waits the gateway's own requests meet.

Why these two seams (the ``TelegramClient`` itself is Telethon's, unpatched):

* Reconnects. Telethon reconnects on its own and then only calls ``get_me()``: posts made while
  the link was down arrive at the next gap-revealing update or the next backfill round.
  ``client.is_connected()`` cannot tell: it stays true for as long as Telethon keeps trying, a
  dropped link included. The client's ``connection`` argument takes the transport class to
  use; ours is Telethon's default transport (``ConnectionTcpFull``) reporting each
  ``connect()`` and ``disconnect()``, so the second successful ``connect()`` of a connection is
  a reconnect, and a connection between ``disconnect()`` and its next ``connect()`` is down.
* FloodWait on the update loop's getDifference. Telethon's update loop makes these requests
  itself and swallows their FloodWait (it logs the error's class name, not the wait, and
  gives up until the next gap or a 15-minute deadline), so the error never reaches our code
  and nothing fetches the difference again once the wait is over. ``client.catch_up()`` does
  not help: it only queues a request for the update loop and returns. Fetching the
  difference ourselves does not either: the update loop still makes its own requests and
  still swallows their waits. A log handler would be fragile and could not count seconds.
  What every request passes through, the update loop's included, is the client's public
  invocation method, ``client(request)``: ``GatewayClient.__call__`` looks at the error on
  its way out and raises it unchanged, so Telethon handles it as before; the gateway counts
  the wait, waits it out and then asks for the catch-up again. A FloodWait that Telethon
  raises itself for a request repeated within the wait counts only the seconds it adds.

Every other request of the client (the gateway's own: history pages, resolution, dialogs)
goes through the gateway's one FloodWait policy (tgstack.gateway.flood), which waits a FloodWait
out in place, a bounded number of times, and gates history reads.

Should a Telethon upgrade stop routing its own requests through ``client(request)``, the
FloodWait tests of tests/telegram/test_gateway.py and test_gateway_floods.py fail; they run
against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from telethon import TelegramClient, errors
from telethon.network.connection import ConnectionTcpFull
from telethon.tl.functions import updates

from tgstack.gateway.flood import (
    FloodPolicy,
    FloodWaitObserver,
    is_history,
    method_name,
    request_channel,
)

log = logging.getLogger("tgstack.gateway.catchup")

# The requests only Telethon's update loop makes (the gateway's own code never does).
UPDATE_LOOP_REQUESTS: dict[type, str] = {
    updates.GetDifferenceRequest: "updates.getDifference",
    updates.GetChannelDifferenceRequest: "updates.getChannelDifference",
}


class LinkWatch:
    """Collects the reasons to catch up and wakes whoever waits for them (one event loop)."""

    def __init__(
        self,
        on_flood_wait: FloodWaitObserver | None = None,
        on_link_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.on_flood_wait = on_flood_wait
        self.on_link_change = on_link_change
        self.reconnects = 0
        self._down: set[object] = set()  # connections dropped and not connected again
        self._reasons: set[str] = set()
        self._wake = asyncio.Event()
        self._flood_ends: dict[str, float] = {}  # method -> loop time its FloodWait ends
        self._retry: asyncio.TimerHandle | None = None
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
            log.info("telegram_reconnected", extra={"reconnects": self.reconnects})
            self.request_catch_up("reconnected")

    def disconnected(self, connection: object) -> None:
        if not self._closing and connection not in self._down:
            self._down.add(connection)
            log.warning("telegram_connection_lost")
            self._link_changed()

    def _link_changed(self) -> None:
        if self.on_link_change is not None:
            self.on_link_change(not self._down)

    def close(self) -> None:
        """The gateway is about to disconnect on purpose: no reconnect, no catch-up follows."""
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    # Reported by the client ------------------------------------------------------------------

    def update_loop_flood_wait(self, method: str, seconds: float) -> None:
        """Telethon's update loop met a FloodWait on ``method`` and gave up on it."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        ends = now + seconds
        previous = self._flood_ends.get(method, now)
        added = seconds if previous <= now else ends - previous
        if added <= 0:
            return  # a wait already counted, raised again for a repeated request
        self._flood_ends[method] = ends
        log.warning("telegram_flood_wait", extra={"seconds": seconds, "during": method})
        if self.on_flood_wait is not None:
            self.on_flood_wait(added, method)
        if self._closing:
            return
        if self._retry is not None:
            self._retry.cancel()
        self._retry = loop.call_at(max(self._flood_ends.values()), self._flood_over)

    def _flood_over(self) -> None:
        self._retry = None
        # Scheduled for the latest end (and moved when a wait grew): every wait is over.
        over = ", ".join(sorted(self._flood_ends))
        self._flood_ends.clear()
        self.request_catch_up(f"flood wait over on {over}")


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
    """The unpatched ``TelegramClient`` on a watched connection: the FloodWaits of its update
    loop's own requests are reported to ``watch``; every other request goes through ``flood``,
    the gateway's FloodWait policy."""

    def __init__(
        self, *args: Any, watch: LinkWatch, flood: FloodPolicy | None = None, **kwargs: Any
    ) -> None:
        self.watch = watch
        self.flood = flood or FloodPolicy(observer=watch.on_flood_wait)
        super().__init__(*args, connection=watched_connection(watch), **kwargs)

    async def __call__(
        self, request: Any, ordered: bool = False, flood_sleep_threshold: int | None = None
    ) -> Any:
        send = super().__call__
        method = UPDATE_LOOP_REQUESTS.get(type(request))
        if method is None:
            channel = request_channel(request)
            return await self.flood.call(
                method_name(request),
                lambda: send(request, ordered=ordered, flood_sleep_threshold=flood_sleep_threshold),
                history=is_history(request),
                context={"channel_id": channel} if channel is not None else None,
            )
        try:
            return await send(request, ordered=ordered, flood_sleep_threshold=flood_sleep_threshold)
        except errors.FloodWaitError as exc:
            self.watch.update_loop_flood_wait(method, exc.seconds)
            raise
