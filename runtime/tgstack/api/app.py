"""The FastAPI application: the operations (``routes``), the error answers, and the outer layer
that counts, times and logs every request.

Every answer is JSON (``/metrics`` aside), every error ``{"error": {code, message, field}}``
with its status: FastAPI's own answers (404, 405, the 422 of a validation error) are replaced
by the API's (404, 405 with ``Allow``, 400 naming the parameter). An unexpected exception is
logged and answered 500 without details. Each request is counted
(``tgstack_api_requests_total``), timed (``tgstack_api_request_seconds``) and logged as one
``api_request`` event; tokens never appear in logs, only their id. HEAD is GET without the
body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tgstack import __version__
from tgstack.api import openapi
from tgstack.api.deps import Services, Traffic
from tgstack.api.errors import ApiError, bad_parameter
from tgstack.api.queries import StoreInvalid, StoreTimeout, StoreUnavailable
from tgstack.api.responses import error_response, json_bytes
from tgstack.api.routes import router
from tgstack.api.schemas import BAD_PARAMETER
from tgstack.metrics import API_DB_UNAVAILABLE, API_REQUEST_SECONDS, API_REQUESTS

log = logging.getLogger("tgstack.api")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_ALWAYS = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]


def create_app(services: Services | None = None) -> FastAPI:
    """The API over ``services`` (None: only to generate the OpenAPI document)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is not None:
            # The sync operations run in AnyIO's thread pool: as many threads as the database
            # pool has connections (TGSTACK_API_THREADS), as waitress had.
            anyio.to_thread.current_default_thread_limiter().total_tokens = services.threads
        yield

    app = FastAPI(
        title="tgstack Gateway API",
        version=__version__,
        openapi_url=None,  # served by the getOpenApi operation, rate-limited like the rest
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        lifespan=lifespan,
        # The operations themselves, in their order (routes tries them in that order).
        routes=list(router.routes),
    )
    app.state.services = services
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(StoreTimeout, _store_unavailable)
    app.add_exception_handler(StoreInvalid, _store_invalid)
    app.add_middleware(
        RequestLayer, traffic=services.traffic if services is not None else Traffic()
    )
    openapi.install(app)
    return app


# Error answers ----------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    API_DB_UNAVAILABLE.inc()
    log.warning("api_db_unavailable", extra={"error": str(exc)})
    message = (
        "the database did not answer in time"
        if isinstance(exc, StoreTimeout)
        else "the database is unavailable; retry later"
    )
    return error_response(ApiError(503, "unavailable", message, headers={"Retry-After": "5"}))


async def _store_invalid(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(400, "bad_parameter", str(exc)))


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 as the API's 400: the first fault, path before query, query parameters in
    the order the client gave them."""
    assert isinstance(exc, RequestValidationError)
    faults = list(exc.errors())
    order = [name for name, _ in request.query_params.multi_items()]
    faults.sort(key=lambda fault: _position(fault, order))
    return error_response(
        _as_api_error(faults[0]) if faults else ApiError(400, "bad_parameter", "invalid request")
    )


def _position(fault: dict[str, Any], order: list[str]) -> tuple[int, int]:
    loc = tuple(fault.get("loc", ()))
    where = loc[0] if loc else ""
    name = _field(fault)
    if where == "path":
        return (0, 0)
    index = order.index(name) if name in order else len(order)
    return (1, index)


def _field(fault: dict[str, Any]) -> str:
    ctx = fault.get("ctx") or {}
    if fault.get("type") == BAD_PARAMETER and ctx.get("field"):
        return str(ctx["field"])
    loc = tuple(fault.get("loc", ()))
    return str(loc[-1]) if len(loc) > 1 else ""


def _as_api_error(fault: dict[str, Any]) -> ApiError:
    ctx = fault.get("ctx") or {}
    if fault.get("type") == BAD_PARAMETER:
        return ApiError(400, "bad_parameter", str(ctx["message"]), field=ctx.get("field"))
    name = _field(fault)[:64] or "parameter"
    if fault.get("type") == "extra_forbidden":
        return bad_parameter(name, "unknown parameter")
    return bad_parameter(name, str(fault.get("msg", "is invalid")))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's routing answers: 404 (no such path) and 405 (not with this method)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = allowed_methods(request.app, request.scope)
        method = request.method[:16]
        return error_response(
            ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        )
    if exc.status_code == 404:
        return error_response(ApiError(404, "not_found", f"no endpoint {request.url.path[:200]}"))
    return error_response(ApiError(exc.status_code, "bad_parameter", str(exc.detail)))


def allowed_methods(app: FastAPI, scope: Scope) -> tuple[str, ...]:
    """The methods of the template that took a path (the first route that fits it, as the
    router tries them), HEAD wherever GET is."""
    template = _template(app, scope)
    methods: list[str] = []
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path_format == template:
            methods.extend(sorted(route.methods or ()))
    if "GET" in methods:
        methods.append("HEAD")
    return tuple(dict.fromkeys(methods))


def _template(app: FastAPI, scope: Scope) -> str | None:
    route = scope.get("route")
    if isinstance(route, APIRoute):
        return route.path_format
    for candidate in app.routes:
        match, _ = candidate.matches({**scope, "method": "GET"})
        if match is not Match.NONE and isinstance(candidate, APIRoute):
            return candidate.path_format
    return None


# The outer layer --------------------------------------------------------------------------------


class RequestLayer:
    """Pure ASGI middleware around the application: HEAD as GET without the body, the
    headers every answer carries, the 500 of an unexpected exception, and per request the
    metrics, the ``api_request`` log line and the count of requests in progress."""

    def __init__(self, app: ASGIApp, traffic: Traffic) -> None:
        self.app = app
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = str(scope["method"]).upper()
        inner: Scope = dict(scope)
        if method == "HEAD":
            inner["method"] = "GET"
        status = 500
        response_started = False

        async def send_answer(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                message = {**message, "headers": [*message.get("headers", []), *_ALWAYS]}
            elif message["type"] == "http.response.body" and method == "HEAD":
                message = {**message, "body": b""}
            await send(message)

        self.traffic.in_flight += 1
        try:
            await self.app(inner, receive, send_answer)
        except asyncio.CancelledError:
            self.traffic.abandoned += 1
            raise
        except Exception:
            route = _route_label(inner)
            log.exception("api_internal_error", extra={"method": method, "route": route})
            status = 500
            if not response_started:
                await _send_internal_error(send_answer)
        finally:
            self.traffic.in_flight -= 1
            elapsed = time.perf_counter() - started
            label = method if method in KNOWN_METHODS else "OTHER"
            route = _route_label(inner)
            API_REQUESTS.labels(route, label, str(status)).inc()
            API_REQUEST_SECONDS.labels(route, label).observe(elapsed)
            notes: dict[str, Any] = inner.get("state") or {}
            extra: dict[str, Any] = {k: notes[k] for k in ("token_id", "cache") if k in notes}
            client = scope.get("client")
            log.info(
                "api_request",
                extra={
                    "method": label,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": client[0] if client else None,
                    "route": route,
                    **extra,
                },
            )


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    return route.path_format if isinstance(route, APIRoute) else "unmatched"


async def _send_internal_error(send: Send) -> None:
    body = json_bytes(ApiError(500, "internal", "internal error; see the server log").payload())
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (for tests and tools: no server, no services)."""
    return create_app().openapi()
