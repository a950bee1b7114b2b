"""The TCP server: accepts MTProto connections, routes packets, pushes updates, keeps counters.

Each connection detects its framing, then either runs the auth-key exchange (auth_key_id 0)
or handles encrypted messages for a known key. Invariants: a malformed packet only ever
closes its own connection; an unknown auth_key_id gets the transport error -404; answers to
the requests in one packet go out together (in a container when there are several), and
pushed updates reach every connection authorised as a member of the channel, in pts order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from telethon.errors import TypeNotFoundError
from telethon.extensions import BinaryReader
from telethon.tl import functions as fn
from telethon.tl import types as tl
from telethon.tl.tlobject import TLRequest

from .api import Api, RpcFailure
from .handshake import Handshake, HandshakeError, ServerKey
from .session import (
    BAD_SERVER_SALT,
    CryptoError,
    Envelope,
    Inbound,
    MsgIdClock,
    SessionState,
    decrypt,
    encrypt,
    msg_id_problem,
    pack_messages,
    rpc_result,
    seq_problem,
    unpack,
)
from .transport import Framing, FramingError, detect, transport_error
from .world import Account, AuthKeyRecord, Channel, Event, World

log = logging.getLogger("tgstack_testing.telegram")
SAVE_INTERVAL = 0.5
FIRST_BYTES_TIMEOUT = 10.0


@dataclass
class Flood:
    remaining: int
    seconds: int
    after: int = 0  # calls let through before the first FLOOD_WAIT


@dataclass
class Counters:
    connections_total: int = 0
    handshakes: int = 0
    pushes: int = 0
    requests: Counter[str] = field(default_factory=Counter)


class Server:
    """One fake Telegram DC: the world, the RSA key, the live connections and fault switches."""

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", port: int = 0, dc_id: int = 2):
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self.dc_id = dc_id
        state_dir.mkdir(parents=True, exist_ok=True)
        self.world = World.load(state_dir)
        self.key = ServerKey.load_or_create(state_dir)
        self.api = Api(self.world, self)
        self.connections: set[Connection] = set()
        self.counters = Counters()
        self.floods: dict[str, Flood] = {}
        self.skip_pushes: dict[int, int] = {}
        self._server: asyncio.Server | None = None
        self._saver: asyncio.Task[None] | None = None

    # Hooks for the API ----------------------------------------------------------------------

    def take_flood(self, method: str) -> int | None:
        for name in (method, method.rsplit(".", 1)[-1]):
            flood = self.floods.get(name.lower())
            if flood and flood.remaining > 0:
                if flood.after > 0:
                    flood.after -= 1
                    return None
                flood.remaining -= 1
                return flood.seconds
        return None

    def count_request(self, method: str) -> None:
        self.counters.requests[method] += 1

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._saver = asyncio.create_task(self._save_loop())

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        self.drop_connections()
        if self._saver:
            self._saver.cancel()
        self.world.save()

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            if self.world.dirty:
                self.world.save()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        self.counters.connections_total += 1
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)

    # fault switches and pushes --------------------------------------------------------------

    def drop_connections(self) -> int:
        dropped = list(self.connections)
        for connection in dropped:
            connection.close()
        return len(dropped)

    def publish(self, channel: Channel, event: Event) -> None:
        """Push one channel event to every authorised member connection (unless skipped)."""
        if self.skip_pushes.get(channel.id, 0) > 0:
            self.skip_pushes[channel.id] -= 1
            return
        for connection in self.connections:
            account = connection.account()
            if account is None or account.user_id not in channel.members:
                continue
            body = self.api.updates(channel, event, account)
            if body is not None:
                connection.push(body)
                self.counters.pushes += 1

    def push_too_long(self, user_id: int | None) -> int:
        sent = 0
        for connection in self.connections:
            account = connection.account()
            if account and (user_id is None or account.user_id == user_id):
                connection.push(bytes(tl.UpdatesTooLong()))
                sent += 1
        return sent


class Connection:
    """One client TCP connection: framing, the handshake or the encrypted sessions."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.framing: Framing | None = None
        self.record: AuthKeyRecord | None = None
        self.handshake = Handshake(server.key)
        self.clock = MsgIdClock()
        self.sessions: dict[int, SessionState] = {}
        self.session: SessionState | None = None
        self._outbox: list[tuple[bytes, bool, bool]] = []
        self._flush_scheduled = False
        self._disconnect_timer: asyncio.TimerHandle | None = None
        self._closed = False

    def account(self) -> Account | None:
        if self.record is None or self.record.user_id is None or self.session is None:
            return None
        return self.server.world.accounts.get(self.record.user_id)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.writer.transport.abort()

    async def run(self) -> None:
        try:
            self.framing = await asyncio.wait_for(detect(self.reader), FIRST_BYTES_TIMEOUT)
            while not self._closed:
                packet = await self.framing.read(self.reader)
                self._on_packet(packet)
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except (FramingError, CryptoError, HandshakeError, struct.error, ValueError) as error:
            log.info("closing connection after bad input: %s: %s", type(error).__name__, error)
        except Exception:
            # Whatever a client sends, only its own connection may suffer.
            log.exception("closing connection after an unexpected error")
        finally:
            if self._disconnect_timer:
                self._disconnect_timer.cancel()
            self.close()

    def _send_raw(self, payload: bytes) -> None:
        assert self.framing is not None
        if not self._closed:
            self.writer.write(self.framing.encode(payload))

    def _on_packet(self, packet: bytes) -> None:
        if len(packet) < 8:
            raise CryptoError(f"packet of {len(packet)} bytes")
        (key_id,) = struct.unpack_from("<Q", packet)
        if key_id == 0:
            self._on_plain(packet)
            return
        record = self.server.world.auth_key(key_id)
        if record is None:
            self._send_raw(transport_error(404))
            raise CryptoError(f"unknown auth_key_id {key_id}")
        self.record = record
        self._on_envelope(record, decrypt(record.key, packet))

    def _on_plain(self, packet: bytes) -> None:
        _, _, length = struct.unpack_from("<qqi", packet)
        try:
            with BinaryReader(packet[20 : 20 + length]) as reader:
                request = reader.tgread_object()
        except (TypeNotFoundError, BufferError) as error:
            raise HandshakeError(f"undecodable plain message: {error}") from error
        answer, new_key = self.handshake.handle(request)
        if new_key is not None:
            self.server.world.add_auth_key(new_key.key, new_key.salt)
            self.server.world.save()
            self.server.counters.handshakes += 1
        body = bytes(answer)
        self._send_raw(struct.pack("<qqi", 0, self.clock.next(True), len(body)) + body)

    # encrypted messages ---------------------------------------------------------------------

    def _on_envelope(self, record: AuthKeyRecord, envelope: Envelope) -> None:
        session = self.sessions.get(envelope.session_id)
        if session is None:
            session = self.sessions[envelope.session_id] = SessionState(envelope.session_id)
        self.session = session
        problem = msg_id_problem(envelope.msg_id, time.time())
        if problem is not None:
            self._queue(bytes(tl.BadMsgNotification(envelope.msg_id, envelope.seq_no, problem)))
            self._flush()
            return
        if envelope.salt != record.salt:
            self._queue(bytes(tl.BadServerSalt(envelope.msg_id, envelope.seq_no, BAD_SERVER_SALT,
                                               record.salt)))
            self._flush()
            return
        if not session.announced:
            session.announced = True
            record.sessions = [*record.sessions[-15:], envelope.session_id]
            self.server.world.dirty = True
            unique_id = struct.unpack("<q", os.urandom(8))[0]
            self._queue(bytes(tl.NewSessionCreated(envelope.msg_id, unique_id, record.salt)))
        acks = []
        for message in unpack(envelope.msg_id, envelope.seq_no, envelope.body):
            if session.seen_before(message.msg_id):
                continue
            problem = seq_problem(message)
            if problem is not None:
                self._queue(bytes(tl.BadMsgNotification(message.msg_id, message.seq_no, problem)))
                continue
            if message.seq_no % 2:
                acks.append(message.msg_id)
            self._on_message(record, message)
        if acks:
            self._queue(bytes(tl.MsgsAck(acks)), content_related=False)
        self._flush()

    def _on_message(self, record: AuthKeyRecord, message: Inbound) -> None:
        constructor = message.constructor
        if constructor == tl.MsgsAck.CONSTRUCTOR_ID:
            return
        try:
            with BinaryReader(message.body) as reader:
                obj = reader.tgread_object()
        except (TypeNotFoundError, BufferError, struct.error, ValueError):
            error = tl.RpcError(400, f"INPUT_METHOD_INVALID_{constructor}")
            self._queue(rpc_result(message.msg_id, bytes(error)), answer=True)
            return
        if isinstance(obj, (fn.PingRequest, fn.PingDelayDisconnectRequest)):
            self._queue(bytes(tl.Pong(message.msg_id, obj.ping_id)), answer=True)
            if isinstance(obj, fn.PingDelayDisconnectRequest):
                self._arm_disconnect(obj.disconnect_delay)
            return
        if isinstance(obj, fn.GetFutureSaltsRequest):
            now = int(time.time())
            salts = [tl.FutureSalt(now - 60, now + 3600, record.salt)]
            self._queue(bytes(tl.FutureSalts(message.msg_id, now, salts)), answer=True)
            return
        if isinstance(obj, fn.DestroySessionRequest):
            known = obj.session_id in self.sessions
            self.sessions.pop(obj.session_id, None)
            reply = tl.DestroySessionOk if known else tl.DestroySessionNone
            self._queue(bytes(reply(obj.session_id)), answer=True)
            return
        if not isinstance(obj, TLRequest):
            error = tl.RpcError(400, f"INPUT_METHOD_INVALID_{constructor}")
            self._queue(rpc_result(message.msg_id, bytes(error)), answer=True)
            return
        try:
            result = self.server.api.call(record, obj)
        except RpcFailure as failure:
            result = bytes(tl.RpcError(failure.code, failure.message))
        except Exception:
            log.exception("handler failed for %s", type(obj).__name__)
            result = bytes(tl.RpcError(500, "INTERNAL"))
        self._queue(rpc_result(message.msg_id, result), answer=True)

    def _arm_disconnect(self, delay: int) -> None:
        if self._disconnect_timer:
            self._disconnect_timer.cancel()
        self._disconnect_timer = asyncio.get_running_loop().call_later(delay, self.close)

    # outbound -------------------------------------------------------------------------------

    def _queue(self, body: bytes, *, content_related: bool = True, answer: bool = False) -> None:
        self._outbox.append((body, content_related, answer))

    def push(self, body: bytes) -> None:
        """Queue an update; pushes queued in the same loop iteration go out together."""
        self._queue(body)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox or self.session is None or self.record is None or self._closed:
            self._outbox.clear()
            return
        bodies, self._outbox = self._outbox, []
        for plain in pack_messages(self.session, self.clock, self.record.salt, bodies):
            self._send_raw(encrypt(self.record.key, self.record.key_id, plain))


async def serve(server: Server, stop: asyncio.Event) -> None:
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
        with contextlib.suppress(Exception):
            server.world.save()
