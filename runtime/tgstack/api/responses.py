"""JSON answers: payloads to bytes (orjson), error bodies, the response object.

Dates are RFC 3339 in UTC with ``Z``, decimals JSON numbers, text UTF-8; a payload orjson
cannot write (an integer beyond 64 bits in a jsonb document) goes through ``json.dumps``,
which writes the same JSON for everything else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from fastapi import Response

from tgstack.api.errors import ApiError

JSON = "application/json"
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def json_bytes(payload: Any) -> bytes:
    try:
        return orjson.dumps(payload, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(
            payload, default=_default, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")


def json_response(
    payload: Any = None,
    *,
    status: int = 200,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON answer of ``payload`` (or of the ready ``body``)."""
    content = body if body is not None else json_bytes(payload)
    return Response(content=content, status_code=status, headers=headers, media_type=JSON)


def error_response(exc: ApiError) -> Response:
    return json_response(exc.payload(), status=exc.status, headers=exc.headers)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        return {name: getattr(value, name) for name in value.__dataclass_fields__}
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
