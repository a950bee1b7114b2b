"""The API's error: an HTTP status plus the JSON body ``{"error": {code, message, field}}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error answer. ``field`` names the parameter or body field at fault, if one is."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers: dict[str, str] = dict(headers or {})

    def payload(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


def bad_parameter(field: str, message: str) -> ApiError:
    """400 for a query or path parameter; the message starts with the parameter's name."""
    return ApiError(400, "bad_parameter", f"{field}: {message}", field=field)


def bad_body(field: str | None, message: str) -> ApiError:
    """400 for a request body (``field`` None: the body as a whole)."""
    text = f"{field}: {message}" if field else message
    return ApiError(400, "bad_body", text, field=field)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, headers={"Retry-After": "5"})
