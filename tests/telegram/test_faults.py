"""Telegram's rules and injected faults, as a real Telethon client meets them."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from zlib import crc32

import pytest
from telethon import errors
from telethon.network.connection import ConnectionTcpAbridged, ConnectionTcpIntermediate
from telethon.tl.functions.account import GetPasswordRequest
from telethon.tl.functions.channels import GetChannelsRequest
from telethon.tl.functions.messages import GetHistoryRequest
from telethon.tl.functions.users import GetUsersRequest
from telethon.tl.types import InputChannel, InputPeerChannel, InputUserSelf

from tgstack_testing.telegram.control import ControlClient

from .conftest import PHONE, ClientFactory, TelegramServerProcess

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("AUTH_KEY_UNREGISTERED", errors.AuthKeyUnregisteredError),
        ("SESSION_REVOKED", errors.SessionRevokedError),
    ],
)
async def test_a_revoked_key_fails_the_next_call(
    make_client: ClientFactory, control: ControlClient, reason: str, error: type[Exception]
) -> None:
    client = await make_client()
    assert await client(GetUsersRequest([InputUserSelf()]))

    control.revoke(phone=PHONE, reason=reason)

    with pytest.raises(error):
        await client(GetUsersRequest([InputUserSelf()]))


async def test_an_injected_flood_wait_raises_flood_wait_error_then_clears(
    make_client: ClientFactory, control: ControlClient
) -> None:
    channel = control.create_channel("Signals", "signals", [PHONE])
    control.post(channel["id"], "hello")
    client = await make_client(flood_sleep_threshold=0)
    await client.get_dialogs()

    control.flood("messages.getHistory", times=1, seconds=1)

    with pytest.raises(errors.FloodWaitError) as raised:
        await client.get_messages(channel["id"], limit=5)
    assert raised.value.seconds == 1
    await asyncio.sleep(1.1)  # Telethon itself refuses the same request until the wait is over
    assert [m.text for m in await client.get_messages(channel["id"], limit=5)] == ["hello"]


async def test_access_hash_zero_or_foreign_is_channel_invalid(
    make_client: ClientFactory, control: ControlClient
) -> None:
    channel = control.create_channel("Signals", "signals", [PHONE, "+15550002"])
    alice = await make_client()
    bob = await make_client(phone="+15550002")
    bobs_hash = (await bob.get_input_entity("signals")).access_hash

    for access_hash in (0, bobs_hash):
        with pytest.raises(errors.ChannelInvalidError):
            await alice(GetChannelsRequest([InputChannel(channel["id"], access_hash)]))
        with pytest.raises(errors.ChannelInvalidError):
            await alice(GetHistoryRequest(InputPeerChannel(channel["id"], access_hash),
                                          0, None, 0, 10, 0, 0, 0))


async def test_an_unknown_method_is_an_rpc_error_and_the_connection_survives(
    make_client: ClientFactory, control: ControlClient
) -> None:
    client = await make_client()
    connections = control.counters()["connections_total"]

    with pytest.raises(errors.MethodInvalidError) as raised:
        await client(GetPasswordRequest())
    assert raised.value.code == 400

    assert (await client.get_me()).phone == PHONE.lstrip("+")
    assert control.counters()["connections_total"] == connections


@pytest.mark.parametrize("connection", [ConnectionTcpAbridged, ConnectionTcpIntermediate])
async def test_abridged_and_intermediate_framing_work(
    make_client: ClientFactory, connection: type
) -> None:
    client = await make_client(connection=connection)

    assert (await client.get_me()).phone == PHONE.lstrip("+")


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def _full_packet(payload: bytes, seq: int = 0) -> bytes:
    data = struct.pack("<ii", len(payload) + 12, seq) + payload
    return data + struct.pack("<I", crc32(data))


async def test_malformed_bytes_close_only_their_connection(
    make_client: ClientFactory, tg_server: TelegramServerProcess
) -> None:
    client = await make_client()
    port = tg_server.port
    bad_crc = bytearray(_full_packet(os.urandom(40)))
    bad_crc[-1] ^= 0xFF
    garbage = [
        os.urandom(4096),
        b"\xef" + os.urandom(300),
        b"\xee\xee\xee\xee" + struct.pack("<i", -5),
        bytes(bad_crc),
        _full_packet(struct.pack("<qqi", 0, 0, 4) + b"\x01\x02\x03\x04"),
        _full_packet(struct.pack("<Q", 0x1234) + os.urandom(72)),
    ]
    answers = await asyncio.gather(*(asyncio.to_thread(_exchange, port, g) for g in garbage))

    # An unknown auth key gets Telegram's transport error -404 (full framing), then EOF.
    unknown_key_answer = answers[-1]
    assert unknown_key_answer[8:12] == struct.pack("<i", -404)
    assert tg_server.process is not None
    assert tg_server.process.poll() is None
    assert (await client.get_me()).phone == PHONE.lstrip("+")
