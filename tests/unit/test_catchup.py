"""The LinkWatch's bookkeeping: when it asks for a catch-up.

Over the wire (real Telethon, real server) this is proven by tests/telegram/test_gateway.py;
here the edge cases that test cannot pin down: the first connect, shutdown.
"""

from __future__ import annotations

import asyncio

from tgstack.gateway.catchup import LinkWatch


def watch_recording() -> tuple[LinkWatch, list[bool]]:
    links: list[bool] = []
    return LinkWatch(on_link_change=links.append), links


def test_only_a_second_connect_of_a_connection_asks_for_a_catch_up() -> None:
    async def scenario() -> list[set[str]]:
        watch, links = watch_recording()
        connection = object()
        watch.connected(connection, again=False)
        first = await watch.wait(0.01)
        watch.disconnected(connection)
        assert watch.down
        watch.connected(connection, again=True)
        assert not watch.down
        assert links == [False, True]
        return [first, await watch.wait(0.01), await watch.wait(0.01)]

    assert asyncio.run(scenario()) == [set(), {"reconnected"}, set()]


def test_a_disconnect_on_purpose_is_not_a_lost_link() -> None:
    watch, links = watch_recording()
    watch.close()
    watch.disconnected(object())
    assert not watch.down
    assert links == []

