"""MTProto service behaviour seen from Telethon's own transport, crypto and handshake classes.

No TelegramClient here: the test speaks to the server with Telethon's connection, plain sender,
authenticator and MTProtoState, so it can send what a well-behaved client never would.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from telethon.network import authenticator
from telethon.network.connection import ConnectionTcpFull
from telethon.network.mtprotoplainsender import MTProtoPlainSender
from telethon.network.mtprotostate import MTProtoState
from telethon.tl.core import MessageContainer, RpcResult
from telethon.tl.functions import PingRequest
from telethon.tl.types import BadMsgNotification, BadServerSalt, NewSessionCreated, Pong, RpcError

from .conftest import TelegramServerProcess

pytestmark = pytest.mark.anyio
LOGGERS: Any = defaultdict(lambda: logging.getLogger("test_mtproto"))


class RawSession:
    """An authorised-key MTProto session whose msg_ids, seq_nos and salt the test chooses."""

    def __init__(self, connection: ConnectionTcpFull, state: MTProtoState) -> None:
        self.connection = connection
        self.state = state
        self.seq = 0

    def msg_id(self, seconds_ago: float = 0) -> int:
        now = time.time() - seconds_ago
        return (int(now) << 32) | (int((now % 1) * 2**30) << 2)

    def message(self, body: bytes, msg_id: int | None = None) -> bytes:
        self.seq += 1
        return struct.pack("<qii", msg_id or self.msg_id(), self.seq * 2 - 1, len(body)) + body

    async def send(self, body: bytes, msg_id: int | None = None) -> None:
        await self.connection.send(self.state.encrypt_message_data(self.message(body, msg_id)))

    async def send_container(self, bodies: list[bytes]) -> None:
        inner = b"".join(self.message(b) for b in bodies)
        head = struct.pack("<Ii", MessageContainer.CONSTRUCTOR_ID, len(bodies))
        container = head + inner
        data = struct.pack("<qii", self.msg_id(), self.seq * 2, len(container)) + container
        await self.connection.send(self.state.encrypt_message_data(data))

    async def receive(self, wanted: type, count: int = 1) -> list[Any]:
        """Objects of type `wanted` from the next packets (containers flattened)."""
        found: list[Any] = []

        async def collect() -> None:
            while len(found) < count:
                message = self.state.decrypt_message_data(await self.connection.recv())
                objects = message.obj.messages if isinstance(message.obj, MessageContainer) \
                    else [message]
                found.extend(m.obj for m in objects if isinstance(m.obj, wanted))

        await asyncio.wait_for(collect(), 10)
        return found


@pytest.fixture
async def raw(shared_tg_server: TelegramServerProcess) -> AsyncIterator[RawSession]:
    server = shared_tg_server
    connection = ConnectionTcpFull("127.0.0.1", server.port, server.dc_id, loggers=LOGGERS)
    await connection.connect(timeout=5)
    auth_key, _ = await authenticator.do_authentication(
        MTProtoPlainSender(connection, loggers=LOGGERS)
    )
    state = MTProtoState(auth_key, LOGGERS)
    try:
        yield RawSession(connection, state)
    finally:
        await connection.disconnect()


def ping(ping_id: int) -> bytes:
    return bytes(PingRequest(ping_id))


async def test_a_wrong_salt_gets_bad_server_salt_with_the_right_one(raw: RawSession) -> None:
    await raw.send(ping(1))
    (bad,) = await raw.receive(BadServerSalt)
    assert bad.error_code == 48

    raw.state.salt = bad.new_server_salt
    await raw.send(ping(2))
    (created,) = await raw.receive(NewSessionCreated)
    assert created.server_salt == bad.new_server_salt


@pytest.mark.parametrize(("seconds_ago", "nudge", "code"), [(0, 1, 18), (400, 0, 16), (-60, 0, 17)])
async def test_bad_msg_ids_get_bad_msg_notification(
    raw: RawSession, seconds_ago: float, nudge: int, code: int
) -> None:
    await raw.send(ping(1))
    raw.state.salt = (await raw.receive(BadServerSalt))[0].new_server_salt

    await raw.send(ping(2), msg_id=raw.msg_id(seconds_ago) + nudge)

    (bad,) = await raw.receive(BadMsgNotification)
    assert bad.error_code == code


async def test_pings_in_a_container_get_pongs_and_garbage_gets_an_rpc_error(
    raw: RawSession,
) -> None:
    await raw.send(ping(1))
    raw.state.salt = (await raw.receive(BadServerSalt))[0].new_server_salt

    await raw.send_container([ping(10), ping(11)])
    pongs = await raw.receive(Pong, count=2)
    await raw.send(b"\x01\x02\x03\x04" + bytes(8))
    (result,) = await raw.receive(RpcResult)

    assert sorted(p.ping_id for p in pongs) == [10, 11]
    assert isinstance(result.error, RpcError)
    assert result.error.error_message.startswith("INPUT_METHOD_INVALID")
