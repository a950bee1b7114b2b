"""Framing round trips (pure) and channel difference answers through the wire."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from telethon.tl.functions.updates import GetChannelDifferenceRequest
from telethon.tl.types import ChannelMessagesFilterEmpty, InputChannel
from telethon.tl.types.updates import (
    ChannelDifference,
    ChannelDifferenceEmpty,
    ChannelDifferenceTooLong,
)

from tgstack_testing.telegram.control import ControlClient
from tgstack_testing.telegram.transport import (
    AbridgedFraming,
    Framing,
    FullFraming,
    IntermediateFraming,
    detect,
)

from .conftest import PHONE, ClientFactory

TAGS = {"abridged": b"\xef", "intermediate": b"\xee" * 4, "padded": b"\xdd" * 4, "full": b""}


def _client_side(kind: str) -> Framing:
    """A framing that encodes as the client does (full framing starts at sequence 0)."""
    if kind == "abridged":
        return AbridgedFraming()
    if kind == "full":
        return FullFraming(b"")
    return IntermediateFraming(padded=kind == "padded")


@given(
    kind=st.sampled_from(sorted(TAGS)),
    payloads=st.lists(st.binary(min_size=1, max_size=600).map(lambda b: b * 4), min_size=1,
                      max_size=5),
)
def test_every_framing_is_detected_and_round_trips(kind: str, payloads: list[bytes]) -> None:
    writer = _client_side(kind)
    stream = TAGS[kind] + b"".join(writer.encode(p) for p in payloads)

    async def read_all() -> list[bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(stream)
        reader.feed_eof()
        framing = await detect(reader)
        return [await framing.read(reader) for _ in payloads]

    assert asyncio.run(read_all()) == payloads


@pytest.mark.anyio
async def test_channel_difference_is_empty_full_or_too_long_by_pts_gap(
    make_client: ClientFactory, control: ControlClient
) -> None:
    channel = control.create_channel("Signals", "signals", [PHONE])["id"]
    control.post(channel, "seed")
    client = await make_client(receive_updates=False)
    dialog = (await client.get_dialogs())[0]
    peer = await client.get_input_entity(channel)
    pts = dialog.dialog.pts

    def diff(pts: int) -> GetChannelDifferenceRequest:
        return GetChannelDifferenceRequest(InputChannel(peer.channel_id, peer.access_hash),
                                           ChannelMessagesFilterEmpty(), pts, 100)

    assert isinstance(await client(diff(pts)), ChannelDifferenceEmpty)
    control.post(channel, "one")
    control.edit(channel, 1, "seed, edited")
    control.delete(channel, [2])
    small = await client(diff(pts))
    assert isinstance(small, ChannelDifference)
    assert small.pts == pts + 3
    assert [type(u).__name__ for u in small.other_updates] == [
        "UpdateEditChannelMessage", "UpdateDeleteChannelMessages"]
    control.post_many(channel, 120)
    too_long = await client(diff(pts))
    assert isinstance(too_long, ChannelDifferenceTooLong)
    assert too_long.dialog.pts == pts + 3 + 120
