"""The API's FastAPI dependencies: the services, auth and rate limit, the query string's shape,
the response cache and the JSON bodies.

The checks run in this order: the route's ``Gate`` (401, 429, 403, then unknown or repeated
parameters, a query string that is not UTF-8), FastAPI's validation of the path and query
models (400), a body dependency (415, 413, 400). All of them are ``async`` and do no I/O: the
only blocking work, the database and Redis, happens in the (sync) operation's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from fastapi import Depends, Request, Response
from pydantic import BaseModel

from tgstack.api import params as p
from tgstack.api.auth import Principal, TokenAuth, require_admin
from tgstack.api.cache import ResponseCache, cache_key
from tgstack.api.errors import ApiError, bad_parameter
from tgstack.api.queries import ApiStore
from tgstack.api.ratelimit import RateLimiter
from tgstack.api.responses import json_bytes, json_response
from tgstack.api.schemas import ChannelIdPath
from tgstack.metrics import API_RATE_LIMITED

log = logging.getLogger("tgstack.api")

MAX_QUERY_FIELDS = 32

Payload = Any
"""What an operation answers: JSON-serialisable (``responses.json_bytes``)."""


@dataclass(slots=True)
class Traffic:
    """Requests in progress, for the shutdown's report (``server``)."""

    in_flight: int = 0
    abandoned: int = 0  # cancelled by the server when the shutdown's grace ran out


@dataclass(frozen=True, slots=True)
class Services:
    """What the operations use; one per process, on ``app.state.services``."""

    store: ApiStore
    auth: TokenAuth
    limiter: RateLimiter
    cache: ResponseCache | None = None
    max_body_bytes: int = 16_384
    threads: int = 8
    traffic: Traffic = field(default_factory=Traffic)


def services_of(request: Request) -> Services:
    services: Services | None = request.app.state.services
    if services is None:
        raise RuntimeError("the application was built without services (document only)")
    return services


async def get_services(request: Request) -> Services:
    """The dependency (async: a sync one would cost a trip through the thread pool)."""
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


def note(request: Request, **values: object) -> None:
    """Record values for the request's log line (``api_request``)."""
    for key, value in values.items():
        setattr(request.state, key, value)


# Auth, rate limit and the query string: the gate of every operation ----------------------------

Access = Literal["public", "monitoring", "read", "admin"]


class Gate:
    """The route's first dependency: auth and rate limit (401, 429, 403), then the query
    string's shape (``check_query``). One dependency rather than several: FastAPI's cost per
    request grows with each one it solves.

    ``public``: anyone, within the rate limit of their address; ``monitoring``: anyone, as
    often as they like (monitoring must never be refused); ``read``: a read or admin token;
    ``admin``: an admin token. ``model``: the operation's query parameters (None: none)."""

    def __init__(self, access: Access, model: type[BaseModel] | None = None) -> None:
        self.access = access
        self.known = tuple(model.model_fields) if model is not None else ()

    async def __call__(self, request: Request) -> None:
        principal = _admit(request, self.access)
        request.state.principal = principal
        check_query(request, self.known)


def _admit(request: Request, access: Access) -> Principal | None:
    """Authenticate (unless public) and rate-limit; ApiError 401/429/403. A client that failed
    to authenticate is limited by its address, before it learns that it failed."""
    services = services_of(request)
    principal: Principal | None = None
    auth_error: ApiError | None = None
    if access in ("read", "admin"):
        try:
            principal = services.auth.authenticate(request.headers.get("authorization"))
        except ApiError as exc:
            auth_error = exc
    if access != "monitoring":
        client = request.client.host if request.client else "?"
        key = f"token:{principal.token_id}" if principal else f"addr:{client}"
        decision = services.limiter.take(key)
        if not decision.allowed:
            API_RATE_LIMITED.inc()
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests; retry in {decision.retry_after} s",
                headers={"Retry-After": str(decision.retry_after)},
            )
    if auth_error is not None:
        raise auth_error
    if principal is not None:
        note(request, token_id=principal.token_id)
        if access == "admin":
            require_admin(principal)
    return principal


def check_query(request: Request, known: tuple[str, ...]) -> None:
    """Refuse a query string FastAPI would read leniently: not UTF-8, malformed or over
    ``MAX_QUERY_FIELDS`` fields, a parameter the operation does not have (``known``), or one
    given more than once (FastAPI would take the last)."""
    raw: bytes = request.scope.get("query_string", b"")
    if not raw:
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_parameter", "the query string is not valid UTF-8") from None
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
        )
    except ValueError:
        raise ApiError(
            400, "bad_parameter", "the query string is malformed or has too many fields"
        ) from None
    seen: set[str] = set()
    for name, _ in pairs:
        if name not in known:
            listed = ", ".join(known) or "none"
            raise bad_parameter(name[:64], f"unknown parameter; known: {listed}")
        if name in seen:
            raise bad_parameter(name, "is given more than once")
        seen.add(name)


# The response cache ----------------------------------------------------------------------------


class CachedAnswers:
    """The Redis response cache for one request of one operation (``ResponseCache``).

    ``serve`` answers from the cache or computes, stores and answers (``X-Cache``: hit, miss,
    or bypass while Redis is unusable); ``invalidate`` bumps the generation after a write.
    Answers are cached per token scope. Called from the operation's thread (Redis is sync).
    """

    def __init__(
        self, request: Request, cache: ResponseCache | None, principal: Principal | None
    ) -> None:
        self._request = request
        self._cache = cache
        self._principal = principal
        route = request.scope.get("route")
        self._operation: str = getattr(route, "operation_id", None) or request.url.path

    def serve(
        self,
        params: BaseModel | Mapping[str, object],
        compute: Callable[[], Payload],
        *,
        path: Mapping[str, object] | None = None,
    ) -> Response:
        """The answer for these parsed parameters (and ``path`` values): cached or computed."""
        if self._cache is None or self._principal is None:
            return json_response(compute())
        generation = self._cache.generation()
        if generation is None:
            note(self._request, cache="bypass")
            return json_response(compute(), headers={"X-Cache": "bypass"})
        values = {**_values(params), **(path or {})}
        key = cache_key(self._principal.scope, generation, self._operation, _normalized(values))
        cached = self._cache.get(key)
        if cached is not None:
            note(self._request, cache="hit")
            return json_response(body=cached, headers={"X-Cache": "hit"})
        body = json_bytes(compute())
        note(self._request, cache="miss")
        self._cache.put(key, body)
        return json_response(body=body, headers={"X-Cache": "miss"})

    def invalidate(self) -> None:
        if self._cache is not None:
            self._cache.invalidate()


def _values(params: BaseModel | Mapping[str, object]) -> dict[str, object]:
    """The parsed parameters by name (the fields as they are: no serialiser in the way)."""
    if isinstance(params, BaseModel):
        return {name: getattr(params, name) for name in type(params).model_fields}
    return dict(params)


def _normalized(values: Mapping[str, object]) -> str:
    return json_bytes(sorted(values.items())).decode()


async def answers(request: Request) -> CachedAnswers:
    """The cache for this request, keyed by the scope of the token its ``Gate`` admitted."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return CachedAnswers(request, services_of(request).cache, principal)


Answers = Annotated[CachedAnswers, Depends(answers)]


# JSON bodies -----------------------------------------------------------------------------------


async def _json_body(request: Request) -> bytes:
    """The raw body of a JSON request: 415 unless application/json, 413 past the limit."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    limit = services_of(request).max_body_bytes
    raw_length = request.headers.get("content-length", "").strip()
    if raw_length and not raw_length.isdigit():
        raise ApiError(400, "bad_body", "Content-Length is not a number")
    if raw_length and int(raw_length) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes")


async def channel_create_body(request: Request) -> p.ChannelCreate:
    return p.channel_create(p.json_object(await _json_body(request)))


async def channel_update_body(request: Request, channel_id: ChannelIdPath) -> p.ChannelUpdate:
    # channel_id is declared here too: a bad path is reported before the body, as ever.
    return p.channel_update(p.json_object(await _json_body(request)))


ChannelCreateBody = Annotated[p.ChannelCreate, Depends(channel_create_body)]
ChannelUpdateBody = Annotated[p.ChannelUpdate, Depends(channel_update_body)]
