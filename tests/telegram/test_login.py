"""Login, session reuse, dialogs and entity resolution through the wire."""

from __future__ import annotations

from pathlib import Path

import pytest
from telethon.tl.functions import InvokeWithoutUpdatesRequest
from telethon.tl.functions.channels import GetFullChannelRequest
from telethon.tl.functions.updates import GetStateRequest
from telethon.tl.functions.users import GetFullUserRequest
from telethon.tl.types import InputUserSelf, PeerChannel

from tgstack_testing.telegram.control import ControlClient

from .conftest import PHONE, ClientFactory, TelegramServerProcess

pytestmark = pytest.mark.anyio


async def test_login_writes_a_session_that_a_second_client_reuses_without_handshake(
    make_client: ClientFactory, control: ControlClient, tmp_path: Path
) -> None:
    session = tmp_path / "gateway.session"
    first = await make_client(session)
    me = await first.get_me()
    assert me.phone == PHONE.lstrip("+")
    await first.disconnect()
    handshakes = control.counters()["handshakes"]

    second = await make_client(session, login=False)

    assert await second.is_user_authorized()
    assert (await second.get_me()).id == me.id
    assert control.counters()["handshakes"] == handshakes


async def test_get_dialogs_lists_the_channels_the_account_is_in(
    make_client: ClientFactory, control: ControlClient
) -> None:
    mine = control.create_channel("Signals", "signals", [PHONE])
    control.create_channel("Elsewhere", "elsewhere", ["+15559999"])
    control.post(mine["id"], "first post")
    client = await make_client()

    dialogs = await client.get_dialogs()

    assert [(d.name, d.entity.id) for d in dialogs] == [("Signals", mine["id"])]
    assert dialogs[0].message.text == "first post"


async def test_peer_channel_needs_dialogs_first_on_a_fresh_session(
    make_client: ClientFactory, control: ControlClient
) -> None:
    channel = control.create_channel("Signals", "signals", [PHONE])
    client = await make_client()

    with pytest.raises(ValueError, match="Could not find the input entity"):
        await client.get_input_entity(PeerChannel(channel["id"]))
    await client.get_dialogs()
    entity = await client.get_input_entity(PeerChannel(channel["id"]))

    assert entity.channel_id == channel["id"]
    assert entity.access_hash != 0


async def test_access_hashes_differ_per_account_and_resolve_username_works(
    make_client: ClientFactory, control: ControlClient
) -> None:
    channel = control.create_channel("Signals", "signals", [PHONE, "+15550002"])
    alice = await make_client()
    bob = await make_client(phone="+15550002")

    a = await alice.get_input_entity("signals")
    b = await bob.get_input_entity("signals")

    assert a.channel_id == b.channel_id == channel["id"]
    assert a.access_hash != b.access_hash


async def test_server_restart_keeps_state_and_the_old_session_keeps_working(
    make_client: ClientFactory, control: ControlClient, tg_server: TelegramServerProcess,
    tmp_path: Path,
) -> None:
    channel = control.create_channel("Signals", "signals", [PHONE])
    control.post(channel["id"], "before restart")
    session = tmp_path / "gateway.session"
    client = await make_client(session)
    await client.get_dialogs()
    await client.disconnect()

    tg_server.restart()
    with tg_server.control() as after:
        after.post(channel["id"], "after restart")
        again = await make_client(session, login=False)
        texts = [m.text async for m in again.iter_messages(PeerChannel(channel["id"]))]
        assert after.counters()["handshakes"] == 0

    assert texts == ["after restart", "before restart"]


async def test_log_out_unbinds_the_key_and_wrappers_are_unwrapped(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    session = tmp_path / "gateway.session"
    client = await make_client(session)
    state = await client(InvokeWithoutUpdatesRequest(GetStateRequest()))
    assert state.pts >= 1

    assert await client.log_out()
    fresh = await make_client(login=False)
    assert not await fresh.is_user_authorized()


async def test_full_user_full_channel_and_messages_by_id(
    make_client: ClientFactory, control: ControlClient
) -> None:
    channel = control.create_channel("Signals", "signals", [PHONE])
    control.post(channel["id"], "one")
    control.post(channel["id"], "two")
    client = await make_client()
    peer = await client.get_input_entity("signals")

    full_user = await client(GetFullUserRequest(InputUserSelf()))
    full_channel = await client(GetFullChannelRequest(peer))
    by_id = await client.get_messages(peer, ids=[2, 99, 1])

    assert full_user.users[0].phone == PHONE.lstrip("+")
    assert full_channel.full_chat.pts == 3
    assert [m.text if m else None for m in by_id] == ["two", None, "one"]
