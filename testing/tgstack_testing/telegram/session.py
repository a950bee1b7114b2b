"""MTProto 2.0 encrypted messages: the server's half of encryption, sessions and service messages.

Inbound packets are ``auth_key_id + msg_key + AES-IGE(data)`` with key material taken at x=0;
outbound ones use x=8. Every inbound message is checked as Telegram does: msg_key must match
SHA256 of the plaintext, msg_id must be divisible by 4 and within -300/+30 s of our clock, content
messages must carry odd seq_no and service ones even. Server msg_ids grow strictly per
connection and end in 01 (answers) or 11 (everything else).
"""

from __future__ import annotations

import gzip
import os
import struct
import time
from collections import deque
from dataclasses import dataclass
from hashlib import sha256

from telethon.crypto import AES
from telethon.network.mtprotostate import MTProtoState
from telethon.tl.core import GzipPacked, MessageContainer
from telethon.tl.tlobject import TLObject
from telethon.tl.types import MsgsAck

RPC_RESULT_ID = 0xF35C6D01
MSG_TOO_OLD = 300
MSG_TOO_NEW = 30
# Telegram's bad_msg_notification codes.
BAD_MSG_ID_TOO_LOW = 16
BAD_MSG_ID_TOO_HIGH = 17
BAD_MSG_ID_NOT_DIV4 = 18
BAD_SEQ_EVEN_EXPECTED = 34
BAD_SEQ_ODD_EXPECTED = 35
BAD_SERVER_SALT = 48
MAX_CONTAINER_MESSAGES = 1000
MAX_CONTAINER_BYTES = 512 * 1024
GZIP_CONTAINER_OVER = 4096


class CryptoError(Exception):
    """An encrypted packet that cannot be authentic (bad length, bad msg_key, bad envelope)."""


@dataclass(frozen=True)
class Envelope:
    """The decrypted header of one client packet and the raw body of its message."""

    salt: int
    session_id: int
    msg_id: int
    seq_no: int
    body: bytes


@dataclass(frozen=True)
class Inbound:
    """One client message after unpacking containers: ids and the raw TL body (gzip removed)."""

    msg_id: int
    seq_no: int
    body: bytes

    @property
    def constructor(self) -> int:
        return int(struct.unpack_from("<I", self.body)[0]) if len(self.body) >= 4 else 0


def decrypt(auth_key: bytes, packet: bytes) -> Envelope:
    if len(packet) < 24 + 32 or (len(packet) - 24) % 16:
        raise CryptoError(f"encrypted packet of impossible length {len(packet)}")
    msg_key = packet[8:24]
    aes_key, aes_iv = MTProtoState._calc_key(auth_key, msg_key, True)
    plain = AES.decrypt_ige(packet[24:], aes_key, aes_iv)
    if sha256(auth_key[88:120] + plain).digest()[8:24] != msg_key:
        raise CryptoError("msg_key does not match the plaintext")
    salt, session_id, msg_id, seq_no, length = struct.unpack_from("<qqqii", plain)
    padding = len(plain) - 32 - length
    if length < 4 or length % 4 or not 12 <= padding <= 1024:
        raise CryptoError(f"message length {length} does not fit the packet")
    return Envelope(salt, session_id, msg_id, seq_no, plain[32 : 32 + length])


def encrypt(auth_key: bytes, auth_key_id: int, plain: bytes) -> bytes:
    padding = os.urandom(-(len(plain) + 12) % 16 + 12)
    msg_key = sha256(auth_key[96:128] + plain + padding).digest()[8:24]
    aes_key, aes_iv = MTProtoState._calc_key(auth_key, msg_key, False)
    encrypted: bytes = AES.encrypt_ige(plain + padding, aes_key, aes_iv)
    return struct.pack("<Q", auth_key_id) + msg_key + encrypted


def unpack(msg_id: int, seq_no: int, body: bytes) -> list[Inbound]:
    """Flatten a container into its messages and strip gzip_packed, keeping bodies raw."""
    constructor = struct.unpack_from("<I", body)[0] if len(body) >= 4 else 0
    if constructor == MessageContainer.CONSTRUCTOR_ID:
        (count,) = struct.unpack_from("<i", body, 4)
        messages: list[Inbound] = []
        offset = 8
        for _ in range(count):
            inner_id, inner_seq, length = struct.unpack_from("<qii", body, offset)
            offset += 16
            if length < 0 or offset + length > len(body):
                raise CryptoError("container message overruns the container")
            messages.extend(unpack(inner_id, inner_seq, body[offset : offset + length]))
            offset += length
        return messages
    if constructor == GzipPacked.CONSTRUCTOR_ID:
        from telethon.extensions import BinaryReader

        with BinaryReader(body[4:]) as reader:
            body = gzip.decompress(reader.tgread_bytes())
    return [Inbound(msg_id, seq_no, body)]


def msg_id_problem(msg_id: int, now: float) -> int | None:
    """The bad_msg_notification code for a client msg_id, or None when it is acceptable."""
    if msg_id % 4:
        return BAD_MSG_ID_NOT_DIV4
    sent = msg_id >> 32
    if sent < now - MSG_TOO_OLD:
        return BAD_MSG_ID_TOO_LOW
    if sent > now + MSG_TOO_NEW:
        return BAD_MSG_ID_TOO_HIGH
    return None


def seq_problem(message: Inbound) -> int | None:
    """Content-related messages carry odd seq_no; acks and containers even ones."""
    service = message.constructor == MsgsAck.CONSTRUCTOR_ID
    if service and message.seq_no % 2:
        return BAD_SEQ_EVEN_EXPECTED
    if not service and not message.seq_no % 2:
        return BAD_SEQ_ODD_EXPECTED
    return None


class MsgIdClock:
    """Strictly growing server msg_ids from the wall clock: ``unixtime << 32 | fraction``."""

    def __init__(self) -> None:
        self._last = 0

    def next(self, answer: bool) -> int:
        base = int(time.time() * 2**32) & ~3
        if base <= self._last:
            base = (self._last & ~3) + 4
        msg_id = base | (1 if answer else 3)
        self._last = msg_id
        return msg_id


class SessionState:
    """One client session (session_id under an auth key): seq numbers and seen msg_ids."""

    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.announced = False
        self._sequence = 0
        self._seen: deque[int] = deque(maxlen=2000)
        self._seen_set: set[int] = set()

    def seen_before(self, msg_id: int) -> bool:
        if msg_id in self._seen_set:
            return True
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(msg_id)
        self._seen_set.add(msg_id)
        return False

    def next_seq(self, content_related: bool) -> int:
        if content_related:
            self._sequence += 1
            return self._sequence * 2 - 1
        return self._sequence * 2


def rpc_result(req_msg_id: int, result: bytes) -> bytes:
    if len(result) > 512:
        packed = bytes(GzipPacked(result))
        if len(packed) < len(result):
            result = packed
    return struct.pack("<Iq", RPC_RESULT_ID, req_msg_id) + result


def pack_messages(
    session: SessionState, clock: MsgIdClock, salt: int, bodies: list[tuple[bytes, bool, bool]]
) -> list[bytes]:
    """Plaintexts (before padding) for the queued ``(body, content_related, answer)`` messages.

    Several messages go out in one container, split so no container grows beyond Telegram's
    limits.
    """
    plains: list[bytes] = []
    header = struct.pack("<qq", salt, session.session_id)
    for start in range(0, len(bodies), MAX_CONTAINER_MESSAGES):
        chunk = bodies[start : start + MAX_CONTAINER_MESSAGES]
        parts: list[bytes] = []
        size = 0
        for body, content_related, answer in chunk:
            msg_id = clock.next(answer)
            seq = session.next_seq(content_related)
            parts.append(struct.pack("<qii", msg_id, seq, len(body)) + body)
            size += len(body) + 16
            if size > MAX_CONTAINER_BYTES:
                plains.append(header + _container(parts, session, clock))
                parts, size = [], 0
        if parts:
            plains.append(header + _container(parts, session, clock))
    return plains


def _container(parts: list[bytes], session: SessionState, clock: MsgIdClock) -> bytes:
    if len(parts) == 1:
        return parts[0]
    body = struct.pack("<Ii", MessageContainer.CONSTRUCTOR_ID, len(parts)) + b"".join(parts)
    if len(body) > GZIP_CONTAINER_OVER:
        # Bursts of pushes compress tenfold; AES-IGE, not gzip, is the bottleneck.
        packed = gzip.compress(body, compresslevel=1)
        body = struct.pack("<I", GzipPacked.CONSTRUCTOR_ID) + TLObject.serialize_bytes(packed)
    return struct.pack("<qii", clock.next(False), session.next_seq(False), len(body)) + body
