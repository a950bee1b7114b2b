"""The gateway's one FloodWait policy: how a Telegram request that met ``FLOOD_WAIT_X`` goes on.

Every request the gateway's own code makes (history pages, channel resolution, dialogs, …)
passes through ``FloodPolicy.call``: ``GatewayClient.__call__`` (tgstack.gateway.catchup) routes
each one here, so even the page requests Telethon's ``iter_messages`` makes internally are
covered. Telethon never sleeps a FloodWait itself (``flood_sleep_threshold=0``). Only the
requests of Telethon's own update loop (``updates.getDifference`` /
``updates.getChannelDifference``) are left to the ``LinkWatch``: Telethon must see their error.

Invariants:

* Every wait is logged (``telegram flood wait``: seconds, the TL method as ``during``, the
  channel when the request names one) and its seconds are counted once in
  ``tgstack_gateway_flood_wait_seconds_total``: a wait raised again for a request repeated
  within it (Telethon raises those itself) counts only the seconds it adds.
* A wait is absorbed where it happened: once it is over, the *same* request is sent again. A
  history iterator paging through a channel carries on from the page that was refused instead
  of starting over.
* A call waits out at most ``max_waits`` FloodWaits (``TGSTACK_GATEWAY_FLOOD_MAX_WAITS``); the
  next one fails it with ``FloodWaitExceeded``, which names the method and the setting. The
  backfill then moves on to the next channel and tries this one again next round, rather than
  asking again and again (Telegram lengthens the waits of an account that keeps asking).
* History requests (``HISTORY_REQUESTS``) pass one account-wide token bucket first
  (``TGSTACK_GATEWAY_HISTORY_RATE`` per second, bursts of ``TGSTACK_GATEWAY_HISTORY_BURST``),
  wait while a FloodWait on a history method is running (asking again would only be refused
  and lengthen it), and wait while the ingest queue has no room for a page (reading history
  faster than the database commits it would only fill the queue).

The rate's default, 2 requests/s with bursts of 20: Telegram publishes no limit and none can be
measured without a real account, so it is derived from two bounds. Telethon paces long history
reads at 1 request/s (``iter_messages``' ``wait_time`` is 1 s above 3,000 messages), which is
what the backfill did before this gate. An account follows at most about 500 channels, and the
backfill asks for each channel's newest page every round (``TGSTACK_GATEWAY_BACKFILL_INTERVAL_
SECONDS``, 300 s): 2/s fits 500 channels in 250 s, inside one round; the burst lets a catch-up of
a few channels start at once. A gate that is still too fast shows as FloodWaits, counted and
alerted on (``TelegramFloodWaitSustained``); lower the rate then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from telethon import errors, utils
from telethon.tl import functions, types

from tgstack.config import env_name

log = logging.getLogger("tgstack.gateway.flood")

T = TypeVar("T")

# The errors that carry a wait in seconds for the account (SLOW_MODE_WAIT is about sending).
FLOOD_ERRORS: tuple[type[errors.RPCError], ...] = (
    errors.FloodWaitError,
    errors.FloodPremiumWaitError,
)

# The requests that read channel history: gated by the account-wide token bucket.
HISTORY_REQUESTS: frozenset[type] = frozenset(
    {
        functions.messages.GetHistoryRequest,
        functions.messages.GetMessagesRequest,
        functions.channels.GetMessagesRequest,
        functions.messages.SearchRequest,
    }
)

DEFAULT_MAX_WAITS = 3
DEFAULT_HISTORY_RATE = 2.0
DEFAULT_HISTORY_BURST = 20
ROOM_POLL_SECONDS = 0.1


class FloodWaitObserver(Protocol):
    def __call__(self, seconds: float, during: str) -> None: ...


class FloodWaitExceeded(Exception):
    """A call met more FloodWaits in a row than the policy waits out; try it next round."""

    def __init__(self, method: str, seconds: float, waits: int, max_waits: int) -> None:
        self.method = method
        self.seconds = seconds
        self.waits = waits
        super().__init__(
            f"{method}: Telegram asked for a wait of {seconds:g} s again after {waits} waits "
            f"({env_name('gateway_flood_max_waits')}={max_waits}); the call is given up and "
            "tried again next backfill round"
        )


def method_name(request: object) -> str:
    """The TL name of a request, e.g. ``messages.getHistory`` (what the test server counts)."""
    if isinstance(request, list | tuple):
        return "+".join(method_name(item) for item in request)
    cls = type(request)
    module = cls.__module__.rsplit(".", 1)[-1]
    name = cls.__name__.removesuffix("Request")
    name = name[:1].lower() + name[1:]
    return name if module == "functions" else f"{module}.{name}"


def request_channel(request: object) -> int | None:
    """The marked id of the channel a request reads, when it names one."""
    for attribute in ("peer", "channel"):
        peer = getattr(request, attribute, None)
        if isinstance(peer, types.InputPeerChannel | types.InputChannel | types.PeerChannel):
            return int(utils.get_peer_id(types.PeerChannel(peer.channel_id)))
    return None


def is_history(request: object) -> bool:
    if isinstance(request, list | tuple):
        return any(is_history(item) for item in request)
    return type(request) in HISTORY_REQUESTS


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take`` reserves one and says how long to wait.

    Pure (time is passed in). Reservations queue: callers served at ``now + take(now)`` never
    exceed ``burst + rate × window`` in any window.
    """

    rate: float
    burst: float
    tokens: float = -1.0  # full at the first take
    stamp: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """Reserve a token; the seconds to wait before using it (0: now)."""
        elapsed = 0.0 if self.stamp is None else max(0.0, now - self.stamp)
        self.stamp = now if self.stamp is None else max(self.stamp, now)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate) - 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class HistoryGate:
    """The account's gate for history requests: a token bucket, held shut while a FloodWait on
    history runs and while the ingest queue has no room (``room``)."""

    def __init__(
        self,
        rate: float = DEFAULT_HISTORY_RATE,
        burst: int = DEFAULT_HISTORY_BURST,
        *,
        room: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.room = room
        self._clock = clock
        self._sleep = sleep
        self._held_until = 0.0
        self._waiting_for_room = False

    def hold_until(self, when: float) -> None:
        self._held_until = max(self._held_until, when)

    async def acquire(self) -> None:
        while (held := self._held_until - self._clock()) > 0:
            await self._sleep(held)
        while self.room is not None and not self.room():
            if not self._waiting_for_room:
                self._waiting_for_room = True
                log.info("history_reads_paused", extra={"reason": "ingest_queue_full"})
            await self._sleep(ROOM_POLL_SECONDS)
        if self._waiting_for_room:
            self._waiting_for_room = False
            log.info("history_reads_resumed")
        wait = self.bucket.take(self._clock())
        if wait > 0:
            await self._sleep(wait)


class FloodPolicy:
    """Counts, logs and waits out FloodWaits in place, a bounded number of times per call."""

    def __init__(
        self,
        *,
        max_waits: int = DEFAULT_MAX_WAITS,
        gate: HistoryGate | None = None,
        observer: FloodWaitObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_waits < 1:
            raise ValueError("max_waits must be at least 1")
        self.max_waits = max_waits
        self.gate = gate
        self.observer = observer
        self._clock = clock
        self._sleep = sleep
        self._ends: dict[str, float] = {}  # method -> clock time its latest FloodWait ends

    async def call(
        self,
        during: str,
        invoke: Callable[[], Awaitable[T]],
        *,
        history: bool = False,
        context: dict[str, Any] | None = None,
    ) -> T:
        """``invoke()`` until it returns, waiting out up to ``max_waits`` FloodWaits in place."""
        waits = 0
        while True:
            if history and self.gate is not None:
                await self.gate.acquire()
            try:
                return await invoke()
            except FLOOD_ERRORS as exc:
                seconds: float = getattr(exc, "seconds", 0) or 1  # FLOOD_WAIT_0: "retry now"
                self.observe(seconds, during, context)
                if history and self.gate is not None:
                    self.gate.hold_until(self._clock() + seconds)
                if waits >= self.max_waits:
                    extra = {"during": during, "waits": waits, "seconds": seconds}
                    log.error("flood_wait_limit_reached", extra=extra | (context or {}))
                    raise FloodWaitExceeded(during, seconds, waits, self.max_waits) from exc
                waits += 1
                await self._sleep(seconds)

    async def wait(self, seconds: float, during: str) -> None:
        """Count, log and sleep a wait that a caller handles itself (it restarts on its own)."""
        self.observe(seconds, during)
        await self._sleep(seconds)

    def observe(self, seconds: float, during: str, context: dict[str, Any] | None = None) -> float:
        """Log a wait and count the seconds it adds to the one known for ``during``."""
        now = self._clock()
        ends = now + seconds
        previous = self._ends.get(during, now)
        added = seconds if previous <= now else max(0.0, ends - previous)
        self._ends[during] = max(previous, ends)
        log.warning(
            "telegram_flood_wait",
            extra={"seconds": seconds, "during": during, "counted": added, **(context or {})},
        )
        if added > 0 and self.observer is not None:
            self.observer(added, during)
        return added
