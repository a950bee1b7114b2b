"""messages.getHistory paging through Telethon's iter_messages, against a model of the docs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telethon import TelegramClient
from telethon.sessions import MemorySession
from telethon.tl.functions.messages import GetHistoryRequest
from telethon.tl.types import InputPeerChannel

from tgstack_testing.telegram.control import ControlClient

from .conftest import PHONE, TEST_CODE, TelegramServerProcess

T = TypeVar("T")
POSTS = 160
DELETED = [3, 50, 51, 99, 100, 101, 150]


class LoopThread:
    """An event loop in a thread, so hypothesis (sync) can drive one async client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def history(
    tg_server: TelegramServerProcess, control: ControlClient
) -> Iterator[tuple[LoopThread, TelegramClient, InputPeerChannel, list[int]]]:
    channel = control.create_channel("Signals", "signals", [PHONE])
    control.post_many(channel["id"], POSTS, text="post {n}")
    control.delete(channel["id"], DELETED)
    ids = [i for i in range(1, POSTS + 1) if i not in DELETED]
    runner = LoopThread()

    async def connect() -> tuple[TelegramClient, InputPeerChannel]:
        session = MemorySession()
        session.set_dc(tg_server.dc_id, "127.0.0.1", tg_server.port)
        client = TelegramClient(session, 12345, "0123456789abcdef", receive_updates=False)
        await client.start(phone=PHONE, code_callback=lambda: TEST_CODE)
        await client.get_dialogs()
        return client, await client.get_input_entity(channel["id"])

    client, peer = runner.run(connect())
    try:
        yield runner, client, peer, ids
    finally:
        runner.run(_disconnect(client))
        runner.stop()


async def _disconnect(client: TelegramClient) -> None:
    await client.disconnect()


def iter_model(
    ids: list[int], *, limit: int | None, offset_id: int, min_id: int, max_id: int, reverse: bool
) -> list[int]:
    """What iter_messages yields: newest first (oldest first with reverse), ids strictly
    between min_id and max_id, older than offset_id (newer with reverse). Telethon folds
    offset_id and max_id into one bound with max(), so the larger of the two wins."""
    if reverse:
        low = max(offset_id, min_id)
        chosen = [i for i in ids if i > low and (not max_id or i < max_id)]
    else:
        high = max(offset_id, max_id)
        chosen = [i for i in reversed(ids) if i > min_id and (not high or i < high)]
    return chosen if limit is None else chosen[:limit]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.one_of(st.none(), st.integers(1, 200)),
    offset_id=st.one_of(st.just(0), st.integers(1, POSTS + 5)),
    min_id=st.one_of(st.just(0), st.integers(1, POSTS + 5)),
    max_id=st.one_of(st.just(0), st.integers(1, POSTS + 5)),
    reverse=st.booleans(),
)
def test_iter_messages_returns_exactly_the_documented_posts_in_order(
    history: tuple[LoopThread, TelegramClient, InputPeerChannel, list[int]],
    limit: int | None, offset_id: int, min_id: int, max_id: int, reverse: bool,
) -> None:
    runner, client, peer, ids = history

    async def fetch() -> list[int]:
        return [
            m.id
            async for m in client.iter_messages(
                peer, limit=limit, offset_id=offset_id, min_id=min_id, max_id=max_id,
                reverse=reverse,
            )
        ]

    expected = iter_model(ids, limit=limit, offset_id=offset_id, min_id=min_id, max_id=max_id,
                          reverse=reverse)
    assert runner.run(fetch()) == expected, (limit, offset_id, min_id, max_id, reverse)


def test_get_history_pages_as_the_offsets_document_describes(
    history: tuple[LoopThread, TelegramClient, InputPeerChannel, list[int]],
) -> None:
    runner, client, peer, ids = history
    newest_first = list(reversed(ids))

    def page(**kwargs: int) -> list[int]:
        request = GetHistoryRequest(peer=peer, offset_id=kwargs.get("offset_id", 0),
                                    offset_date=None, add_offset=kwargs.get("add_offset", 0),
                                    limit=kwargs.get("limit", 20), max_id=kwargs.get("max_id", 0),
                                    min_id=kwargs.get("min_id", 0), hash=0)
        return [m.id for m in runner.run(client(request)).messages]

    at = newest_first.index(80)
    # 20 older than 80; 20 newer than 80 (80 included: offsetFromID counts it); 20 around 80.
    assert page(offset_id=80) == newest_first[at + 1 : at + 21]
    assert page(offset_id=80, add_offset=-20) == newest_first[at + 1 - 20 : at + 1]
    assert page(offset_id=80, add_offset=-10) == newest_first[at + 1 - 10 : at + 11]
    # max_id/min_id apply after slicing: the window holds the 20 newest, the bounds cut it.
    assert page(min_id=145) == [i for i in newest_first[:20] if i > 145]
    assert page(max_id=150) == [i for i in newest_first[:20] if i < 150]
    assert page(limit=500) == newest_first[:100]
    assert runner.run(client(GetHistoryRequest(peer, 0, None, 0, 1, 0, 0, 0))).count == len(ids)
