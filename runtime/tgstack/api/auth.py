"""Bearer-token authentication with two scopes: ``read`` and ``admin`` (admin may also read).

Each presented token is compared with *every* configured token using ``hmac.compare_digest``
over SHA-256 digests (fixed length, so neither the comparison time nor an early exit tells
which token, or how much of one, matched). Tokens are never logged; a request is identified
in logs and rate-limit keys by ``token_id``, a short digest prefix.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from tgstack.api.errors import ApiError

Scope = Literal["read", "admin"]
REALM = "tgstack"


@dataclass(frozen=True, slots=True)
class Principal:
    scope: Scope
    token_id: str  # first 12 hex digits of the token's SHA-256: safe to log


class TokenAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens."""

    def __init__(self, read_tokens: Iterable[str], admin_tokens: Iterable[str]) -> None:
        self._tokens: list[tuple[bytes, Scope]] = [
            (_digest(token), "read") for token in read_tokens
        ] + [(_digest(token), "admin") for token in admin_tokens]
        if not self._tokens:
            raise ValueError("no API token is configured")

    def authenticate(self, header: str | None) -> Principal:
        """The principal of a valid header; ApiError 401 (with WWW-Authenticate) otherwise."""
        if header is None or not header.strip():
            raise ApiError(
                401,
                "unauthorized",
                "missing bearer token: send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _invalid("the Authorization header must be: Bearer <token>")
        presented = _digest(token)
        scope: Scope | None = None
        for digest, granted in self._tokens:  # no early exit: constant work per token
            if hmac.compare_digest(presented, digest) and (scope is None or granted == "admin"):
                scope = granted
        if scope is None:
            raise _invalid("invalid bearer token")
        return Principal(scope=scope, token_id=presented.hex()[:12])


def require_admin(principal: Principal) -> None:
    if principal.scope != "admin":
        raise ApiError(
            403,
            "forbidden",
            "this endpoint needs an admin token",
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'},
        )


def _invalid(message: str) -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        message,
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
