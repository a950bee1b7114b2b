"""The WSGI application: route, authenticate, rate-limit, parse, serve from cache or handler.

Every answer is JSON (``/metrics`` aside), every error ``{"error": {code, message, field}}``
with its status; an unexpected exception is logged and answered 500 without details. Each
request is counted (``tgstack_api_requests_total``), timed (``tgstack_api_request_seconds``)
and logged as one ``api_request`` event; tokens never appear in logs, only their id.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from tgstack.api import openapi, routes
from tgstack.api.auth import Principal, TokenAuth, require_admin
from tgstack.api.cache import ResponseCache, cache_key
from tgstack.api.errors import ApiError, bad_parameter
from tgstack.api.handlers import Answer, Call, Handlers
from tgstack.api.queries import ApiStore, StoreInvalid, StoreTimeout, StoreUnavailable
from tgstack.api.ratelimit import RateLimiter
from tgstack.metrics import (
    API_DB_UNAVAILABLE,
    API_RATE_LIMITED,
    API_REQUEST_SECONDS,
    API_REQUESTS,
)

log = logging.getLogger("tgstack.api")

StartResponse = Callable[..., Any]
Environ = dict[str, Any]

MAX_QUERY_FIELDS = 32
# Routes anyone may call as often as they like: monitoring must never be refused.
UNLIMITED = frozenset({"getHealth", "getMetrics"})
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ApiApp:
    """The Gateway API as a WSGI callable (thread-safe; one instance per process)."""

    def __init__(
        self,
        *,
        store: ApiStore,
        auth: TokenAuth,
        limiter: RateLimiter,
        cache: ResponseCache | None = None,
        max_body_bytes: int = 16_384,
    ) -> None:
        self._store = store
        self._auth = auth
        self._limiter = limiter
        self._cache = cache
        self._max_body = max_body_bytes
        self._handlers = Handlers(store, cache, openapi.document_bytes)
        self._in_flight = 0
        self._lock = threading.Condition()

    @property
    def store(self) -> ApiStore:
        return self._store

    @property
    def cache(self) -> ResponseCache | None:
        return self._cache

    # Draining, for a graceful shutdown --------------------------------------------------------

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being handled; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    # WSGI ------------------------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        with self._lock:
            self._in_flight += 1
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        meta: dict[str, Any] = {"route": "unmatched"}
        answer: Answer | None = None
        try:
            try:
                path = _text(environ.get("PATH_INFO", "") or "/", "path")
                answer = self._handle(environ, method, path, meta)
            except ApiError as exc:
                answer = _error(exc)
            except (StoreUnavailable, StoreTimeout) as exc:
                API_DB_UNAVAILABLE.inc()
                log.warning("api_db_unavailable", extra={"error": str(exc)})
                message = (
                    "the database did not answer in time"
                    if isinstance(exc, StoreTimeout)
                    else "the database is unavailable; retry later"
                )
                answer = _error(ApiError(503, "unavailable", message, headers={"Retry-After": "5"}))
            except StoreInvalid as exc:
                answer = _error(ApiError(400, "bad_parameter", str(exc)))
            except Exception:
                log.exception("api_internal_error", extra={"method": method, **meta})
                answer = _error(ApiError(500, "internal", "internal error; see the server log"))
            body = _body(answer)
            headers = _headers(answer, body)
            start_response(f"{answer.status} {_REASONS.get(answer.status, 'Status')}", headers)
            return [] if method == "HEAD" else [body]
        finally:
            elapsed = time.perf_counter() - started
            method_label = method if method in KNOWN_METHODS else "OTHER"
            code = str(answer.status) if answer is not None else "500"
            API_REQUESTS.labels(meta["route"], method_label, code).inc()
            API_REQUEST_SECONDS.labels(meta["route"], method_label).observe(elapsed)
            log.info(
                "api_request",
                extra={
                    "method": method_label,
                    "status": int(code),
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": environ.get("REMOTE_ADDR"),
                    **meta,
                },
            )
            with self._lock:
                self._in_flight -= 1
                if not self._in_flight:
                    self._lock.notify_all()

    # The pipeline ------------------------------------------------------------------------------

    def _handle(self, environ: Environ, method: str, path: str, meta: dict[str, Any]) -> Answer:
        found = routes.match(method, path)
        if found is None:
            raise ApiError(404, "not_found", f"no endpoint {path[:200]}")
        meta["route"] = found.template
        if found.route is None:
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method[:16]} is not allowed here; use {', '.join(found.allowed)}",
                headers={"Allow": ", ".join(found.allowed)},
            )
        route = found.route
        principal = self._admit(route, environ, meta)
        params = self._params(route, found.path_values, environ)
        body = self._body(environ) if route.body else b""
        call = Call(params=params, body=body, principal=principal)
        handler: Callable[[Call], Answer] = getattr(self._handlers, route.handler)
        if route.cached and self._cache is not None and principal is not None:
            answer = self._cached(route, call, principal, handler, meta)
        else:
            answer = handler(call)
        if route.method not in ("GET", "HEAD") and answer.status < 300 and self._cache:
            self._cache.invalidate()
        return answer

    def _admit(
        self, route: routes.Route, environ: Environ, meta: dict[str, Any]
    ) -> Principal | None:
        """Authenticate (unless public) and rate-limit; raise 401/403/429."""
        principal: Principal | None = None
        auth_error: ApiError | None = None
        if route.access != "public":
            try:
                principal = self._auth.authenticate(environ.get("HTTP_AUTHORIZATION"))
            except ApiError as exc:
                auth_error = exc
        if route.operation_id not in UNLIMITED:
            key = (
                f"token:{principal.token_id}"
                if principal
                else f"addr:{environ.get('REMOTE_ADDR', '?')}"
            )
            decision = self._limiter.take(key)
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
            meta["token_id"] = principal.token_id
            if route.access == "admin":
                require_admin(principal)
        return principal

    def _params(
        self, route: routes.Route, path_values: dict[str, str], environ: Environ
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, raw in path_values.items():
            param = route.param(name, "path")
            assert param is not None
            values[name] = param.parse(name, _text(raw, name))
        query = _text(environ.get("QUERY_STRING", ""), "query string")
        try:
            pairs = parse_qsl(
                query, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
            )
        except ValueError:
            raise ApiError(
                400, "bad_parameter", "the query string is malformed or has too many fields"
            ) from None
        seen: set[str] = set()
        for name, raw in pairs:
            param = route.param(name, "query")
            if param is None:
                known = ", ".join(p.name for p in route.params if p.where == "query") or "none"
                raise bad_parameter(name[:64], f"unknown parameter; known: {known}")
            if name in seen:
                raise bad_parameter(name, "is given more than once")
            seen.add(name)
            values[name] = param.parse(name, raw)
        return values

    def _body(self, environ: Environ) -> bytes:
        content_type = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(
                415,
                "unsupported_media_type",
                "send the body as application/json",
                field=None,
            )
        raw_length = str(environ.get("CONTENT_LENGTH") or "0").strip()
        if not raw_length.isdigit():
            raise ApiError(400, "bad_body", "Content-Length is not a number")
        if int(raw_length) > self._max_body:
            raise _too_large(self._max_body)
        stream = environ["wsgi.input"]
        body: bytes = stream.read(min(int(raw_length), self._max_body + 1))
        if len(body) > self._max_body:
            raise _too_large(self._max_body)
        return body

    def _cached(
        self,
        route: routes.Route,
        call: Call,
        principal: Principal,
        handler: Callable[[Call], Answer],
        meta: dict[str, Any],
    ) -> Answer:
        assert self._cache is not None
        generation = self._cache.generation()
        if generation is None:
            meta["cache"] = "bypass"
            answer = handler(call)
            answer.headers["X-Cache"] = "bypass"
            return answer
        key = cache_key(principal.scope, generation, route.operation_id, _normalized(call.params))
        cached = self._cache.get(key)
        if cached is not None:
            meta["cache"] = "hit"
            return Answer(200, body=cached, headers={"X-Cache": "hit"})
        answer = handler(call)
        meta["cache"] = "miss"
        answer.headers["X-Cache"] = "miss"
        if answer.status == 200:
            self._cache.put(key, _body(answer))
        return answer


# Helpers ----------------------------------------------------------------------------------------


def _text(raw: str, what: str) -> str:
    """WSGI hands over bytes as latin-1 text; the API speaks UTF-8."""
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise ApiError(400, "bad_parameter", f"the {what} is not valid UTF-8") from None


def _normalized(params: dict[str, Any]) -> str:
    return json.dumps(sorted(params.items()), default=_json_default, separators=(",", ":"))


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes")


def _error(exc: ApiError) -> Answer:
    return Answer(exc.status, exc.payload(), headers=dict(exc.headers))


def _body(answer: Answer) -> bytes:
    if answer.body is None:
        answer.body = json.dumps(
            answer.payload, default=_json_default, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
    return answer.body


def _headers(answer: Answer, body: bytes) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", answer.content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    headers.extend(answer.headers.items())
    return headers


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
