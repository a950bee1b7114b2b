"""Pushed updates through Telethon's own dispatch: live events, gaps, reconnects."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from telethon import TelegramClient, events
from telethon.tl import types

from tgstack_testing.telegram.control import ControlClient, ControlError

from .conftest import PHONE, ClientFactory

pytestmark = pytest.mark.anyio
WAIT = 15.0


class Recorder:
    """Collects Telethon events of one client, in arrival order."""

    def __init__(self, client: TelegramClient) -> None:
        self.items: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()
        client.add_event_handler(self._new, events.NewMessage())
        client.add_event_handler(self._edited, events.MessageEdited())
        client.add_event_handler(self._deleted, events.MessageDeleted())

    def _add(self, item: tuple[str, Any]) -> None:
        self.items.append(item)
        self.changed.set()

    async def _new(self, event: Any) -> None:
        self._add(("new", (event.message.id, event.message.text)))

    async def _edited(self, event: Any) -> None:
        self._add(("edit", (event.message.id, event.message.text)))

    async def _deleted(self, event: Any) -> None:
        self._add(("delete", (event.chat_id, sorted(event.deleted_ids))))

    async def wait_for(self, count: int) -> list[tuple[str, Any]]:
        async def enough() -> None:
            while len(self.items) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(enough(), WAIT)
        return self.items


async def listening(make_client: ClientFactory, control: ControlClient) -> tuple[
    TelegramClient, Recorder, int
]:
    channel = control.create_channel("Signals", "signals", [PHONE])
    control.post(channel["id"], "seed")
    client = await make_client()
    await client.get_dialogs()  # as the gateway must: learn channels, hashes and pts first
    return client, Recorder(client), channel["id"]


async def test_new_edited_and_deleted_posts_arrive_as_telethon_events(
    make_client: ClientFactory, control: ControlClient
) -> None:
    _, recorder, channel = await listening(make_client, control)

    control.post(channel, "BUY BTC 50000")
    await recorder.wait_for(1)
    control.edit(channel, 2, "BUY BTC 51000")
    await recorder.wait_for(2)
    control.delete(channel, [2])
    items = await recorder.wait_for(3)

    assert items == [
        ("new", (2, "BUY BTC 50000")),
        ("edit", (2, "BUY BTC 51000")),
        ("delete", (-1000000000000 - channel, [2])),
    ]


async def test_a_pts_gap_makes_telethon_fetch_the_channel_difference(
    make_client: ClientFactory, control: ControlClient
) -> None:
    _, recorder, channel = await listening(make_client, control)

    control.gap(channel, skip=3)
    for n in range(1, 5):
        control.post(channel, f"post {n}")
    items = await recorder.wait_for(4)

    assert sorted(items) == [("new", (n + 1, f"post {n}")) for n in range(1, 5)]
    assert control.counters()["requests"]["updates.getChannelDifference"] >= 1


async def test_updates_too_long_leads_to_the_missed_posts(
    make_client: ClientFactory, control: ControlClient
) -> None:
    _, recorder, channel = await listening(make_client, control)

    control.gap(channel, skip=2)
    control.post(channel, "missed 1")
    control.post(channel, "missed 2")
    control.updates_too_long(PHONE)
    items = await recorder.wait_for(2)

    assert items == [("new", (2, "missed 1")), ("new", (3, "missed 2"))]


async def test_a_dropped_connection_is_reconnected_and_later_posts_arrive(
    make_client: ClientFactory, control: ControlClient
) -> None:
    client, recorder, channel = await listening(make_client, control)
    before = control.counters()

    assert control.drop_connections() >= 1
    control.post(channel, "while reconnecting")
    # After reconnecting, Telethon makes one high-level call (get_me) to resume updates.
    for _ in range(100):
        after = control.counters()
        if after["requests"]["users.getUsers"] > before["requests"]["users.getUsers"]:
            break
        await asyncio.sleep(0.1)
    control.post(channel, "after reconnect")
    items = await recorder.wait_for(2)

    # The first post either arrived live or, if it was missed, through the pts gap it left.
    assert sorted(items) == [("new", (2, "while reconnecting")), ("new", (3, "after reconnect"))]
    assert after["connections_total"] > before["connections_total"]
    assert client.is_connected()


async def test_an_invisible_pts_bump_is_filled_by_get_channel_difference(
    make_client: ClientFactory, control: ControlClient
) -> None:
    _, recorder, channel = await listening(make_client, control)

    control.gap(channel, bump=5)
    control.post(channel, "after the bump")
    items = await recorder.wait_for(1)

    assert items == [("new", (2, "after the bump"))]
    assert control.counters()["requests"]["updates.getChannelDifference"] >= 1


async def test_only_members_receive_a_channels_posts(
    make_client: ClientFactory, control: ControlClient
) -> None:
    _, member, channel = await listening(make_client, control)
    outsider_client = await make_client(phone="+15550002")
    await outsider_client.get_dialogs()
    outsider = Recorder(outsider_client)

    control.post(channel, "members only")
    await member.wait_for(1)
    await asyncio.sleep(0.3)

    assert outsider.items == []


async def test_a_reply_carries_its_reply_header_live_by_id_and_in_the_history(
    make_client: ClientFactory, control: ControlClient
) -> None:
    client, _, channel = await listening(make_client, control)
    live: list[Any] = []
    arrived = asyncio.Event()

    async def on_new(event: Any) -> None:
        live.append(event.message)
        arrived.set()

    client.add_event_handler(on_new, events.NewMessage())
    reply = control.post(channel, "Alvo 1 atingido ✅", reply_to=1)
    await asyncio.wait_for(arrived.wait(), WAIT)
    peer = await client.get_input_entity(channel)
    by_id = await client.get_messages(peer, ids=[1, reply["id"]])  # channels.getMessages
    history = await client.get_messages(peer, limit=10)  # messages.getHistory

    def header(message: Any) -> tuple[type, int] | None:
        return None if message.reply_to is None else (
            type(message.reply_to), message.reply_to.reply_to_msg_id)

    replied = (types.MessageReplyHeader, 1)
    assert reply["reply_to"] == 1
    assert [(m.id, header(m)) for m in live] == [(reply["id"], replied)]
    assert [(m.id, header(m)) for m in by_id] == [(1, None), (reply["id"], replied)]
    assert [(m.id, header(m)) for m in history] == [(reply["id"], replied), (1, None)]


def test_a_reply_to_a_post_the_channel_does_not_have_is_refused(control: ControlClient) -> None:
    channel = control.create_channel("Signals", "signals", [PHONE])
    control.post(channel["id"], "seed")
    control.delete(channel["id"], [1])

    for missing in (1, 2):
        with pytest.raises(ControlError, match=f"has no message {missing} to reply to"):
            control.post(channel["id"], "orphan", reply_to=missing)
    assert control.channel(channel["id"])["last_msg_id"] == 1  # nothing was posted
