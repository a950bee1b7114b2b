"""Decoding the JSON that PostgreSQL sends (``jsonb`` and ``json`` columns): fast and exact.

Decoding each row's ``metadata`` with ``json.loads`` is the largest client-side cost of a
100-row poll. orjson decodes three to four times faster, but turns integers beyond 64 bits
into floats. So a document holding a run of 19 or more digits (an integer that might not fit,
or a long fraction) goes to ``json.loads``, as does anything orjson refuses (``1e400``); every
document decodes to exactly what ``json.loads`` gives.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads

__all__ = ["configure", "loads"]

# Every ASCII digit becomes "0" and every other byte a space: a long number is then a run of "0"s.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_NUMBER = b"0" * 19


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """``json.loads``, by orjson wherever that gives the same result."""
    if isinstance(data, str):
        data = data.encode()
    elif isinstance(data, memoryview):
        data = bytes(data)
    if _LONG_NUMBER not in data.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def configure(conn: psycopg.Connection[Any]) -> None:
    """Use ``loads`` for the JSON this connection fetches (a pool's ``configure`` callback)."""
    set_json_loads(loads, conn)
