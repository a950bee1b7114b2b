"""The operations: one sync FastAPI endpoint each, with typed parameters and its contract.

Each declares its path, operationId, the dependencies that admit the request (see ``deps``),
its parameters (``schemas``), its success model and its documented errors; FastAPI runs it in
its thread pool. Reads answer through the response cache (``Answers``), writes invalidate
it. List cursors arrive decoded (``schemas``: a cursor of another list is a 400).

Templates overlap: ``/v1/signals/{id}/events`` also fits ``/v1/signals/{channel_id}/
{message_id}``. FastAPI tries the routes in the order they are registered, so the template
with a literal segment where the other has a parameter is registered first: the literal wins,
as OpenAPI asks. ``app.allowed_methods`` gives a 405 the methods of that template only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel

from tgstack import __version__
from tgstack.api import cursor as cursors
from tgstack.api import params as p
from tgstack.api import schemas as s
from tgstack.api.deps import Answers, ChannelCreateBody, ChannelUpdateBody, Gate, ServicesDep
from tgstack.api.errors import ApiError, not_found
from tgstack.api.openapi import document_bytes
from tgstack.api.queries import (
    EventQuery,
    MessageQuery,
    ReviewQuery,
    Row,
    SignalQuery,
    StoreConflict,
)
from tgstack.api.responses import json_response

router = APIRouter()

_ERROR_TEXT = {
    400: "A parameter or the body is invalid; error.field names it.",
    401: "Missing or invalid bearer token.",
    403: "The token may not do this (an admin token is needed).",
    404: "No such resource.",
    405: "The path exists but not with this method.",
    409: "The resource exists already.",
    413: "The request body is too large.",
    415: "The request body is not application/json.",
    429: "Too many requests from this token or address; retry after Retry-After seconds.",
    503: "The database is unavailable (or, for /health, unreachable).",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    403: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    405: {"Allow": {"schema": {"type": "string"}, "required": True}},
    429: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}},
    503: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}
X_CACHE = {
    "X-Cache": {
        "description": "hit (from Redis), miss (from PostgreSQL, now cached) or bypass "
        "(Redis unusable: from PostgreSQL).",
        "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]},
    }
}
_COMMON = (401, 429, 503)


def errors(*statuses: int, cached: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of an operation: its errors (``Error`` bodies, with their headers)
    and, for a cached read, the success answer's ``X-Cache`` header."""
    responses: dict[int | str, dict[str, Any]] = {}
    if cached:
        responses[200] = {"headers": X_CACHE}
    for status in sorted(statuses):
        response: dict[str, Any] = {"model": s.Error, "description": _ERROR_TEXT[status]}
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        responses[status] = response
    return responses


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The requestBody of an operation whose body a dependency reads (``deps``)."""
    reference = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}
    }


_PUBLIC: dict[str, Any] = {"security": []}
# Operations that need a token (scheme: components.securitySchemes.bearerAuth, openapi.py).
_BEARER: dict[str, Any] = {"security": [{"bearerAuth": []}]}

# Operations -------------------------------------------------------------------------------------


@router.get(
    "/health",
    operation_id="getHealth",
    summary="Liveness and dependencies",
    tags=["operations"],
    response_model=s.Health,
    responses={503: {"model": s.Health, "description": _ERROR_TEXT[503]}},
    dependencies=[Depends(Gate("monitoring"))],
    openapi_extra=_PUBLIC,
)
def get_health(services: ServicesDep) -> Response:
    db_ok, db_error = services.store.ping()
    if services.cache is None:
        redis: dict[str, Any] = {"status": "disabled", "error": None}
    else:
        redis_ok, redis_error = services.cache.ping()
        redis = {"status": "ok" if redis_ok else "down", "error": redis_error}
    if not db_ok:
        status = "down"
    elif redis["status"] == "down":
        status = "degraded"
    else:
        status = "ok"
    payload = {
        "status": status,
        "version": __version__,
        "database": {"status": "ok" if db_ok else "down", "error": db_error},
        "redis": redis,
    }
    return json_response(payload, status=200 if db_ok else 503)


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    tags=["operations"],
    response_class=PlainTextResponse,
    dependencies=[Depends(Gate("monitoring"))],
    openapi_extra=_PUBLIC,
)
def get_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/openapi.json",
    operation_id="getOpenApi",
    summary="This OpenAPI document",
    tags=["operations"],
    response_model=s.OpenApiDocument,
    responses=errors(429),
    dependencies=[Depends(Gate("public"))],
    openapi_extra=_PUBLIC,
)
def get_openapi(request: Request) -> Response:
    return json_response(body=document_bytes(request.app))


@router.get(
    "/v1/messages",
    operation_id="listMessages",
    summary="List messages, newest first",
    tags=["messages"],
    response_model=s.MessagePage,
    responses=errors(400, *_COMMON, cached=True),
    dependencies=[Depends(Gate("read", s.MessageListQuery))],
    openapi_extra=_BEARER,
)
def list_messages(
    query: Annotated[s.MessageListQuery, Query()], services: ServicesDep, cache: Answers
) -> Response:
    def compute() -> dict[str, Any]:
        search = MessageQuery(
            channel_id=query.channel_id,
            statuses=query.status.values if query.status else (),
            processing_states=query.processing_state.values if query.processing_state else (),
            since=query.since,
            until=query.until,
            text=p.like_pattern(query.q) if query.q is not None else None,
            include_deleted=query.include_deleted,
            after=query.cursor.key if query.cursor else None,
            limit=query.limit,
        )
        rows = services.store.list_messages(search)
        return _page(rows, query.limit, dict, _message_cursor)

    return cache.serve(query, compute)


@router.get(
    "/v1/messages/{channel_id}/{message_id}",
    operation_id="getMessage",
    summary="One message",
    tags=["messages"],
    response_model=s.Message,
    responses=errors(400, *_COMMON, 404, cached=True),
    dependencies=[Depends(Gate("read"))],
    openapi_extra=_BEARER,
)
def get_message(
    channel_id: s.ChannelIdPath,
    message_id: s.MessageIdPath,
    services: ServicesDep,
    cache: Answers,
) -> Response:
    def compute() -> dict[str, Any]:
        row = services.store.get_message(channel_id, message_id)
        if row is None:
            raise not_found(f"no message {message_id} in channel {channel_id}")
        return row

    return cache.serve({"channel_id": channel_id, "message_id": message_id}, compute)


@router.get(
    "/v1/channels",
    operation_id="listChannels",
    summary="List channels by id",
    tags=["channels"],
    response_model=s.ChannelPage,
    responses=errors(400, *_COMMON, cached=True),
    dependencies=[Depends(Gate("read", s.ChannelListQuery))],
    openapi_extra=_BEARER,
)
def list_channels(
    query: Annotated[s.ChannelListQuery, Query()], services: ServicesDep, cache: Answers
) -> Response:
    def compute() -> dict[str, Any]:
        rows = services.store.list_channels(
            is_active=query.is_active, after=query.cursor, limit=query.limit
        )
        return _page(rows, query.limit, dict, lambda row: cursors.encode_channel(row["channel_id"]))

    return cache.serve(query, compute)


@router.post(
    "/v1/channels",
    operation_id="createChannel",
    summary="Register a channel (admin)",
    tags=["channels"],
    status_code=201,
    response_model=s.Channel,
    responses={
        201: {"headers": {"Location": {"schema": {"type": "string"}, "required": True}}},
        **errors(400, *_COMMON, 403, 409, 413, 415),
    },
    dependencies=[Depends(Gate("admin"))],
    openapi_extra={**_BEARER, **_json_body(s.ChannelCreate)},
)
def create_channel(body: ChannelCreateBody, services: ServicesDep, cache: Answers) -> Response:
    try:
        row = services.store.create_channel(
            body.channel_id, body.title, body.username, body.is_active
        )
    except StoreConflict:
        raise ApiError(
            409,
            "conflict",
            f"channel {body.channel_id} exists; change it with PATCH",
            field="channel_id",
        ) from None
    cache.invalidate()
    location = f"/v1/channels/{body.channel_id}"
    return json_response(row, status=201, headers={"Location": location})


@router.get(
    "/v1/channels/{channel_id}",
    operation_id="getChannel",
    summary="One channel",
    tags=["channels"],
    response_model=s.Channel,
    responses=errors(400, *_COMMON, 404, cached=True),
    dependencies=[Depends(Gate("read"))],
    openapi_extra=_BEARER,
)
def get_channel(channel_id: s.ChannelIdPath, services: ServicesDep, cache: Answers) -> Response:
    def compute() -> dict[str, Any]:
        row = services.store.get_channel(channel_id)
        if row is None:
            raise not_found(f"no channel {channel_id}")
        return row

    return cache.serve({"channel_id": channel_id}, compute)


@router.patch(
    "/v1/channels/{channel_id}",
    operation_id="updateChannel",
    summary="Change title, username or is_active (admin)",
    tags=["channels"],
    response_model=s.Channel,
    responses=errors(400, *_COMMON, 403, 404, 413, 415),
    dependencies=[Depends(Gate("admin"))],
    openapi_extra={**_BEARER, **_json_body(s.ChannelUpdate)},
)
def update_channel(
    channel_id: s.ChannelIdPath,
    update: ChannelUpdateBody,
    services: ServicesDep,
    cache: Answers,
) -> Response:
    row = services.store.update_channel(channel_id, dict(update.changes))
    if row is None:
        raise not_found(f"no channel {channel_id}")
    cache.invalidate()
    return json_response(row)


@router.delete(
    "/v1/channels/{channel_id}",
    operation_id="deactivateChannel",
    summary="Deactivate a channel (admin; soft: is_active=false)",
    tags=["channels"],
    response_model=s.Channel,
    responses=errors(400, *_COMMON, 403, 404),
    dependencies=[Depends(Gate("admin"))],
    openapi_extra=_BEARER,
)
def deactivate_channel(
    channel_id: s.ChannelIdPath, services: ServicesDep, cache: Answers
) -> Response:
    row = services.store.update_channel(channel_id, {"is_active": False})
    if row is None:
        raise not_found(f"no channel {channel_id}")
    cache.invalidate()
    return json_response(row)


@router.get(
    "/v1/signals",
    operation_id="listSignals",
    summary="List trading signals, newest first",
    tags=["signals"],
    response_model=s.SignalPage,
    responses=errors(400, *_COMMON, cached=True),
    dependencies=[Depends(Gate("read", s.SignalListQuery))],
    openapi_extra=_BEARER,
)
def list_signals(
    query: Annotated[s.SignalListQuery, Query()], services: ServicesDep, cache: Answers
) -> Response:
    def compute() -> dict[str, Any]:
        search = SignalQuery(
            channel_id=query.channel_id,
            asset=query.asset,
            status=query.status,
            since=query.since,
            until=query.until,
            include_retired=query.include_retired,
            after=query.cursor.key if query.cursor else None,
            limit=query.limit,
        )
        rows = services.store.list_signals(search)
        return _page(rows, query.limit, _signal, _signal_cursor)

    return cache.serve(query, compute)


# Registered before /v1/signals/{channel_id}/{message_id}, which also fits its paths.
@router.get(
    "/v1/signals/{id}/events",
    operation_id="listSignalEvents",
    summary="A signal's follow-up posts, in post order",
    tags=["signals"],
    response_model=s.SignalEventPage,
    responses=errors(400, *_COMMON, 404, cached=True),
    dependencies=[Depends(Gate("read", s.SignalEventListQuery))],
    openapi_extra=_BEARER,
)
def list_signal_events(
    id: s.SignalIdPath,
    query: Annotated[s.SignalEventListQuery, Query()],
    services: ServicesDep,
    cache: Answers,
) -> Response:
    def compute() -> dict[str, Any]:
        search = EventQuery(
            signal_id=id,
            include_retired=query.include_retired,
            after=query.cursor.key if query.cursor else None,
            limit=query.limit,
        )
        rows = services.store.list_signal_events(search)
        if rows is None:
            raise not_found(f"no signal with id {id}")
        return _page(rows, query.limit, dict, _event_cursor)

    return cache.serve(query, compute, path={"id": id})


@router.get(
    "/v1/signals/{channel_id}/{message_id}",
    operation_id="getSignal",
    summary="The signal of one post",
    tags=["signals"],
    response_model=s.Signal,
    responses=errors(400, *_COMMON, 404, cached=True),
    dependencies=[Depends(Gate("read"))],
    openapi_extra=_BEARER,
)
def get_signal(
    channel_id: s.ChannelIdPath,
    message_id: s.MessageIdPath,
    services: ServicesDep,
    cache: Answers,
) -> Response:
    def compute() -> dict[str, Any]:
        row = services.store.get_signal(channel_id, message_id)
        if row is None:
            raise not_found(f"no signal for message {message_id} in channel {channel_id}")
        return _signal(row)

    return cache.serve({"channel_id": channel_id, "message_id": message_id}, compute)


@router.get(
    "/v1/signals/review",
    operation_id="listSignalReviews",
    summary="Posts that look like a signal but could not be read, newest first",
    tags=["signals"],
    response_model=s.SignalReviewPage,
    responses=errors(400, *_COMMON, cached=True),
    dependencies=[Depends(Gate("read", s.ReviewListQuery))],
    openapi_extra=_BEARER,
)
def list_signal_reviews(
    query: Annotated[s.ReviewListQuery, Query()], services: ServicesDep, cache: Answers
) -> Response:
    def compute() -> dict[str, Any]:
        search = ReviewQuery(
            channel_id=query.channel_id,
            since=query.since,
            until=query.until,
            after=query.cursor.key if query.cursor else None,
            limit=query.limit,
        )
        rows = services.store.list_signal_reviews(search)
        return _page(rows, query.limit, dict, _review_cursor)

    return cache.serve(query, compute)


# Shaping ----------------------------------------------------------------------------------------


def _page(
    rows: list[Row],
    limit: int,
    shape: Callable[[Row], dict[str, Any]],
    next_cursor: Callable[[Row], str],
) -> dict[str, Any]:
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [shape(row) for row in rows],
        "next_cursor": next_cursor(rows[-1]) if more and rows else None,
        "limit": limit,
    }


def _message_cursor(row: Row) -> str:
    return cursors.encode_dated("m", row["telegram_date"], row["channel_id"], row["message_id"])


def _signal(row: Row) -> dict[str, Any]:
    shaped = dict(row)
    shaped.pop("signal_date", None)
    return shaped


def _signal_cursor(row: Row) -> str:
    return cursors.encode_dated("s", row["signal_date"], row["channel_id"], row["message_id"])


def _event_cursor(row: Row) -> str:
    return cursors.encode_dated("e", row["telegram_date"], row["channel_id"], row["message_id"])


def _review_cursor(row: Row) -> str:
    return cursors.encode_dated("r", row["telegram_date"], row["channel_id"], row["message_id"])
