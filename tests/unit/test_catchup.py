"""The LinkWatch's bookkeeping: when it asks for a catch-up and how it counts update-loop waits.

Over the wire (real Telethon, real server) this is proven by tests/telegram/test_gateway.py;
here the edge cases that test cannot pin down: repeated waits, several methods, shutdown.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tgstack.gateway.catchup import LinkWatch

DIFF = "updates.getDifference"
CHANNEL_DIFF = "updates.getChannelDifference"


def watch_recording() -> tuple[LinkWatch, list[tuple[float, str]], list[bool]]:
    waits: list[tuple[float, str]] = []
    links: list[bool] = []
    watch = LinkWatch(
        on_flood_wait=lambda seconds, during: waits.append((seconds, during)),
        on_link_change=links.append,
    )
    return watch, waits, links


def test_only_a_second_connect_of_a_connection_asks_for_a_catch_up() -> None:
    async def scenario() -> list[set[str]]:
        watch, _, links = watch_recording()
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
    watch, _, links = watch_recording()
    watch.close()
    watch.disconnected(object())
    assert not watch.down
    assert links == []


def test_a_wait_raised_again_for_a_repeated_request_counts_only_the_seconds_it_adds() -> None:
    async def scenario() -> list[tuple[float, str]]:
        watch, waits, _ = watch_recording()
        watch.update_loop_flood_wait(DIFF, 60)
        watch.update_loop_flood_wait(DIFF, 59)  # Telethon refusing the repeat itself
        watch.update_loop_flood_wait(CHANNEL_DIFF, 30)  # another method, a wait of its own
        watch.update_loop_flood_wait(DIFF, 62)  # the server made it longer
        watch.close()
        return waits

    waits = asyncio.run(scenario())
    assert [during for _, during in waits] == [DIFF, CHANNEL_DIFF, DIFF]
    assert [seconds for seconds, _ in waits] == [60, 30, pytest.approx(2, abs=0.5)]


def test_the_catch_up_is_asked_for_once_every_update_loop_wait_is_over() -> None:
    async def scenario() -> tuple[set[str], float, set[str]]:
        watch, _, _ = watch_recording()
        started = time.monotonic()
        watch.update_loop_flood_wait(CHANNEL_DIFF, 0.2)
        watch.update_loop_flood_wait(DIFF, 0.4)
        reasons = await watch.wait(10)
        elapsed = time.monotonic() - started
        return reasons, elapsed, await watch.wait(0.5)

    reasons, elapsed, after = asyncio.run(scenario())
    assert reasons == {f"flood wait over on {CHANNEL_DIFF}, {DIFF}"}
    assert elapsed >= 0.4 - 0.01  # asyncio may fire a timer one clock tick early
    assert after == set()
