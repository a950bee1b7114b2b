"""The gateway's FloodWait policy: in-place waits, bounded retries, counting, the history gate.

The client tests run the real ``GatewayClient`` and Telethon's real ``iter_messages``; only the
network boundary (``TelegramClient._call``) answers from a list, paged by the test server's own
pagination function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telethon import errors
from telethon.sessions import MemorySession
from telethon.tl import functions, types

from tests.telegram_fakes import BARE, CHANNEL, FakeTelegram, MemoryStore, message
from tgstack.gateway.catchup import GatewayClient, LinkWatch
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.flood import (
    FloodPolicy,
    FloodWaitExceeded,
    HistoryGate,
    TokenBucket,
    method_name,
)
from tgstack.gateway.telethon_source import BackfillPolicy, TelethonSource
from tgstack_testing.telegram.paging import history_window


def flood(seconds: int) -> errors.FloodWaitError:
    return errors.FloodWaitError(request=None, capture=seconds)


class Clock:
    """A fake monotonic clock whose sleep advances it (and records each sleep)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


def failing(errors_first: list[BaseException], result: str = "ok") -> Callable[[], Any]:
    calls: list[int] = []

    async def invoke() -> str:
        calls.append(1)
        if errors_first:
            raise errors_first.pop(0)
        return result

    invoke.calls = calls  # type: ignore[attr-defined]
    return invoke


# The token bucket ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 30),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_the_bucket_never_serves_more_than_its_burst_plus_its_rate_in_any_window(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst)
    now, served = 0.0, []
    for gap in gaps:
        now += gap
        served.append(now + bucket.take(now))
    served.sort()
    for first in range(len(served)):
        for last in range(first, len(served)):
            window = served[last] - served[first]
            assert last - first + 1 <= burst + rate * window + 1e-6


def test_the_bucket_serves_a_burst_at_once_then_one_token_per_interval() -> None:
    bucket = TokenBucket(rate=2, burst=3)
    assert [bucket.take(0) for _ in range(5)] == [0, 0, 0, 0.5, 1.0]
    assert bucket.take(10) == 0  # refilled, never beyond the burst
    assert [bucket.take(10) for _ in range(3)] == [0, 0, 0.5]


# The policy -------------------------------------------------------------------------------------


def test_a_flood_wait_is_waited_out_and_the_same_call_made_again() -> None:
    clock = Clock()
    counted: list[tuple[float, str]] = []
    policy = FloodPolicy(observer=lambda s, d: counted.append((s, d)), clock=clock,
                         sleep=clock.sleep)  # fmt: skip
    invoke = failing([flood(5), flood(70)])
    assert asyncio.run(policy.call("messages.getHistory", invoke)) == "ok"
    assert len(invoke.calls) == 3  # type: ignore[attr-defined]
    assert clock.sleeps == [5, 70]
    assert counted == [(5, "messages.getHistory"), (70, "messages.getHistory")]


def test_a_call_flooded_more_often_than_the_setting_allows_fails_naming_the_setting() -> None:
    clock = Clock()
    counted: list[float] = []
    policy = FloodPolicy(max_waits=2, observer=lambda s, d: counted.append(s), clock=clock,
                         sleep=clock.sleep)  # fmt: skip
    invoke = failing([flood(5), flood(6), flood(7), flood(8)])
    with pytest.raises(FloodWaitExceeded, match="TGSTACK_GATEWAY_FLOOD_MAX_WAITS=2") as caught:
        asyncio.run(policy.call("messages.getHistory", invoke))
    assert caught.value.method == "messages.getHistory"
    assert len(invoke.calls) == 3  # type: ignore[attr-defined]
    assert clock.sleeps == [5, 6]  # the third wait is not slept: the call is given up
    assert counted == [5, 6, 7]  # but every wait Telegram imposed is counted


def test_a_wait_raised_again_within_a_running_wait_counts_only_the_seconds_it_adds() -> None:
    clock = Clock()
    counted: list[float] = []
    policy = FloodPolicy(observer=lambda s, d: counted.append(s), clock=clock)
    policy.observe(60, "messages.getDialogs")
    clock.now += 20
    policy.observe(40, "messages.getDialogs")  # the same wait, 40 s left: nothing added
    policy.observe(50, "messages.getDialogs")  # 10 s more than the running wait
    policy.observe(5, "messages.getHistory")  # another method counts on its own
    clock.now += 100
    policy.observe(30, "messages.getDialogs")  # a new wait after the last one ended
    assert counted == [60, 10, 5, 30]


def test_history_calls_pass_the_gate_and_wait_while_a_history_flood_runs() -> None:
    clock = Clock()
    gate = HistoryGate(rate=1, burst=1, clock=clock, sleep=clock.sleep)
    policy = FloodPolicy(gate=gate, clock=clock, sleep=clock.sleep)

    async def scenario() -> None:
        await policy.call("messages.getHistory", failing([]), history=True)
        await policy.call("messages.getHistory", failing([flood(30)]), history=True)

    asyncio.run(scenario())
    # second call: a token after 1 s; its flood: 30 s in place; its retry: held to the flood's
    # end already, then one more token (refilled meanwhile)
    assert clock.sleeps == [1.0, 30]
    clock.sleeps.clear()
    gate.hold_until(clock.now + 12)
    asyncio.run(gate.acquire())
    assert clock.sleeps == [12]


def test_history_calls_wait_for_room_in_the_ingest_queue() -> None:
    clock = Clock()
    room = iter([False, False, True])
    gate = HistoryGate(rate=100, burst=100, room=lambda: next(room), clock=clock,
                       sleep=clock.sleep)  # fmt: skip
    asyncio.run(gate.acquire())
    assert clock.sleeps == [0.1, 0.1]


def test_method_names_are_the_tl_names() -> None:
    request = functions.messages.GetHistoryRequest(
        types.InputPeerChannel(BARE, 1), 0, None, 0, 100, 0, 0, 0
    )
    assert method_name(request) == "messages.getHistory"
    assert method_name(functions.channels.GetChannelsRequest([])) == "channels.getChannels"
    assert method_name(functions.InvokeWithLayerRequest(1, request)) == "invokeWithLayer"


# The client: Telethon's own paging through the policy ----------------------------------------


class PagedClient(GatewayClient):
    """GatewayClient whose network answers getHistory from a list of posts, with floods."""

    def __init__(self, ids: list[int], floods: dict[int, int], policy: FloodPolicy) -> None:
        super().__init__(MemorySession(), 1, "0" * 32, watch=LinkWatch(), flood=policy)
        self.ids_desc = sorted(ids, reverse=True)
        self.floods = floods  # history request number -> FLOOD_WAIT seconds
        self.requests: list[tuple[int, int, int]] = []

    async def _call(self, sender: Any, request: Any, ordered: bool = False,
                    flood_sleep_threshold: int | None = None) -> Any:  # fmt: skip
        assert isinstance(request, functions.messages.GetHistoryRequest)
        self.requests.append((request.offset_id, request.add_offset, request.min_id))
        seconds = self.floods.pop(len(self.requests), None)
        if seconds is not None:
            raise flood(seconds)
        page = history_window(
            self.ids_desc, [0] * len(self.ids_desc), offset_id=request.offset_id,
            add_offset=request.add_offset, limit=request.limit, max_id=request.max_id,
            min_id=request.min_id,
        )  # fmt: skip
        when = datetime(2026, 11, 2, tzinfo=UTC)
        return types.messages.ChannelMessages(
            pts=1, count=len(self.ids_desc), messages=[
                types.Message(id=i, peer_id=types.PeerChannel(BARE), date=when, message=f"{i}")
                for i in page
            ], chats=[], users=[], topics=[],
        )  # fmt: skip


async def read_history(client: PagedClient, min_id: int = 0) -> list[int]:
    entity = types.InputPeerChannel(BARE, 77)
    return [m.id async for m in client.iter_messages(entity, min_id=min_id, reverse=True,
                                                     wait_time=0)]  # fmt: skip


def test_a_flood_on_a_history_page_retries_that_page_and_paging_goes_on() -> None:
    clock = Clock()
    counted: list[tuple[float, str]] = []
    policy = FloodPolicy(observer=lambda s, d: counted.append((s, d)), sleep=clock.sleep)
    client = PagedClient(list(range(1, 251)), {2: 5}, policy)
    assert asyncio.run(read_history(client)) == list(range(1, 251))
    first, flooded, retried, *rest = client.requests
    assert flooded == retried  # the refused page is asked for again, as it was
    offsets = [request[0] for request in (first, flooded, *rest)]
    assert offsets == sorted(set(offsets))  # and paging goes on from there: no page twice
    assert clock.sleeps == [5]
    assert counted == [(5, "messages.getHistory")]


def test_a_history_page_flooded_beyond_the_limit_fails_the_read() -> None:
    clock = Clock()
    policy = FloodPolicy(max_waits=1, sleep=clock.sleep)
    client = PagedClient(list(range(1, 251)), {2: 5, 3: 5}, policy)
    with pytest.raises(FloodWaitExceeded, match=r"messages\.getHistory"):
        asyncio.run(read_history(client))
    assert clock.sleeps == [5]


# The source: a channel given up is retried next round, the others go on ------------------------


class FloodingHistory(FakeTelegram):
    """Every history request of the ``flooded`` channels has been flooded beyond the limit."""

    def __init__(self, history: list[types.Message], flooded: set[int]) -> None:
        super().__init__(history)
        self.flooded = flooded

    def _give_up(self, entity: Any) -> None:
        if entity.channel_id in self.flooded:
            raise FloodWaitExceeded("messages.getHistory", 70, 3, 3)

    async def iter_messages(self, entity: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self._give_up(entity)
        async for item in super().iter_messages(entity, *args, **kwargs):
            yield item

    async def get_messages(self, entity: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self._give_up(entity)
        return await super().get_messages(entity, *args, **kwargs)


def test_a_channel_whose_history_call_gives_up_does_not_stop_the_round() -> None:
    other_bare = BARE + 1
    other = -1_000_000_000_000 - other_bare
    fake = FloodingHistory([message(1), message(2)], flooded={other_bare})
    received: list[MessageEvent] = []
    store = MemoryStore()

    def sink(event: MessageEvent) -> None:
        received.append(event)
        store.commit(event)

    source = TelethonSource(fake, [other, CHANNEL], sink,  # type: ignore[arg-type]
                            store=store, policy=BackfillPolicy(settle_seconds=0.3))  # fmt: skip
    run: Callable[[Awaitable[Any]], Any] = asyncio.run
    run(source.start())
    assert run(source.backfill()) == 2
    assert [e.message_ids for e in received] == [(1,), (2,)]
    assert other not in store.marks  # given up before its watermark was set: next round
    assert store.marks[CHANNEL].watermark == 2
