"""TCP framing of MTProto packets: full, intermediate (plain and padded) and abridged.

The framing is chosen by the client and detected from the first bytes of the connection;
every later packet in both directions uses it. A packet that violates the framing (bad length,
bad CRC, bad sequence number) raises `FramingError` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import os
import struct
from zlib import crc32

ABRIDGED_TAG = b"\xef"
INTERMEDIATE_TAG = b"\xee\xee\xee\xee"
PADDED_TAG = b"\xdd\xdd\xdd\xdd"
MAX_PACKET = 16 * 1024 * 1024


class FramingError(Exception):
    """The peer sent bytes that are not a valid packet for its framing."""


class Framing:
    """One connection's framing: reads packets from the client and encodes packets to it."""

    name = "base"

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        raise NotImplementedError

    def encode(self, payload: bytes) -> bytes:
        raise NotImplementedError


class FullFraming(Framing):
    """length:int32 seq:int32 payload crc32:uint32, with per-direction sequence numbers."""

    name = "full"

    def __init__(self, first_length: bytes) -> None:
        self._pending_length: bytes | None = first_length
        self._recv_seq = 0
        self._send_seq = 0

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        if self._pending_length is not None:
            head, self._pending_length = self._pending_length, None
        else:
            head = await reader.readexactly(4)
        (length,) = struct.unpack("<i", head)
        if length < 12 or length > MAX_PACKET:
            raise FramingError(f"full framing: bad length {length}")
        rest = await reader.readexactly(length - 4)
        (seq,) = struct.unpack("<i", rest[:4])
        (checksum,) = struct.unpack("<I", rest[-4:])
        if crc32(head + rest[:-4]) != checksum:
            raise FramingError("full framing: bad CRC32")
        if seq != self._recv_seq:
            raise FramingError(f"full framing: sequence {seq}, expected {self._recv_seq}")
        self._recv_seq += 1
        return rest[4:-4]

    def encode(self, payload: bytes) -> bytes:
        data = struct.pack("<ii", len(payload) + 12, self._send_seq) + payload
        self._send_seq += 1
        return data + struct.pack("<I", crc32(data))


class IntermediateFraming(Framing):
    """length:int32 payload; the padded variant appends 0-3 random bytes to every packet."""

    def __init__(self, padded: bool) -> None:
        self._padded = padded
        self.name = "padded-intermediate" if padded else "intermediate"

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        (length,) = struct.unpack("<i", await reader.readexactly(4))
        if length <= 0 or length > MAX_PACKET:
            raise FramingError(f"intermediate framing: bad length {length}")
        data = await reader.readexactly(length)
        if self._padded:
            data = data[: len(data) - len(data) % 4]
        return data

    def encode(self, payload: bytes) -> bytes:
        if self._padded:
            payload += os.urandom(int.from_bytes(os.urandom(1), "little") % 4)
        return struct.pack("<i", len(payload)) + payload


class AbridgedFraming(Framing):
    """One length byte in 4-byte words (or 0x7f and three bytes) before the payload."""

    name = "abridged"

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        words = (await reader.readexactly(1))[0]
        if words >= 0x7F:
            words = int.from_bytes(await reader.readexactly(3), "little")
        if words == 0 or words * 4 > MAX_PACKET:
            raise FramingError(f"abridged framing: bad length {words * 4}")
        return await reader.readexactly(words * 4)

    def encode(self, payload: bytes) -> bytes:
        words = len(payload) // 4
        if words < 0x7F:
            return bytes([words]) + payload
        return b"\x7f" + words.to_bytes(3, "little") + payload


async def detect(reader: asyncio.StreamReader) -> Framing:
    """Read the framing tag (or, for full framing, the first length) and return the framing."""
    first = await reader.readexactly(1)
    if first == ABRIDGED_TAG:
        return AbridgedFraming()
    head = first + await reader.readexactly(3)
    if head == INTERMEDIATE_TAG:
        return IntermediateFraming(padded=False)
    if head == PADDED_TAG:
        return IntermediateFraming(padded=True)
    return FullFraming(head)


def transport_error(code: int) -> bytes:
    """The 4-byte payload Telegram sends instead of a message for a transport error (-404, -429)."""
    return struct.pack("<i", -abs(code))
