"""The OpenAPI 3.1 document of the API, generated from the route table (``routes.ROUTES``).

Every operation with its parameters (schemas, descriptions), request body, success response,
each error response (``Error`` schema, with ``WWW-Authenticate``/``Retry-After``/``Allow``
headers where they apply) and its security requirement.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from tgstack import __version__
from tgstack.api import params as p
from tgstack.api.routes import (
    CHANNEL_ID_SCHEMA,
    DATE_TIME_SCHEMA,
    MESSAGE_ID_SCHEMA,
    ROUTES,
    Route,
)
from tgstack.models import MESSAGE_STATUSES, PROCESSING_STATES

_STRING_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}
_DATE_OR_NULL: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
_INT_OR_NULL: dict[str, Any] = {"type": ["integer", "null"]}
_PRICE: dict[str, Any] = {"type": ["number", "null"], "exclusiveMinimum": 0}
_RESULT: dict[str, Any] = {
    "type": ["string", "null"],
    "enum": ["gain", "loss", "breakeven", None],
}
# What the database allows (sql/060_signal_events.sql), unbounded N included.
_STATUS: dict[str, Any] = {
    "type": "string",
    "pattern": "^(open|target_[1-9][0-9]*|stopped|closed|cancelled)$",
    "description": "open, target_N (the highest target reached), stopped, closed or cancelled, "
    "derived from the signal's active events in post order.",
}

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


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data", "next_cursor", "limit"],
        "additionalProperties": False,
        "properties": {
            "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "Pass as cursor for the next page; null on the last page.",
            },
            "limit": {"type": "integer", "minimum": 1, "maximum": p.MAX_LIMIT},
        },
    }


def _object(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": list(properties),
        "additionalProperties": False,
        "properties": properties,
    }


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "field"],
                "additionalProperties": False,
                "properties": {
                    "code": {
                        "type": "string",
                        "enum": [
                            "bad_parameter",
                            "bad_body",
                            "unauthorized",
                            "forbidden",
                            "not_found",
                            "method_not_allowed",
                            "conflict",
                            "body_too_large",
                            "unsupported_media_type",
                            "rate_limited",
                            "unavailable",
                            "internal",
                        ],
                    },
                    "message": {"type": "string"},
                    "field": {
                        "type": ["string", "null"],
                        "description": "The parameter or body field at fault, if one is.",
                    },
                },
            }
        },
    },
    "Message": _object(
        {
            "channel_id": CHANNEL_ID_SCHEMA,
            "message_id": MESSAGE_ID_SCHEMA,
            "telegram_date": DATE_TIME_SCHEMA,
            "thread_id": _INT_OR_NULL,
            "reply_to_msg_id": {
                **_INT_OR_NULL,
                "description": "The post of the same channel this one replies to; null when "
                "it is not a reply.",
            },
            "grouped_id": _INT_OR_NULL,
            "source": {"type": "string"},
            "message_type": {"type": "string"},
            "text": _STRING_OR_NULL,
            "caption": _STRING_OR_NULL,
            "media_type": _STRING_OR_NULL,
            "media_refs": {"type": ["object", "null"]},
            "edit_date": _DATE_OR_NULL,
            "edit_count": {"type": "integer", "minimum": 0},
            "status": {"type": "string", "enum": list(MESSAGE_STATUSES)},
            "processing_state": {"type": "string", "enum": list(PROCESSING_STATES)},
            "processed_at": _DATE_OR_NULL,
            "last_error": _STRING_OR_NULL,
            "received_at": DATE_TIME_SCHEMA,
            "published_at": _DATE_OR_NULL,
            "deleted_at": _DATE_OR_NULL,
            "metadata": {"type": "object", "description": "processed_by and gateway notes."},
        },
        "A channel post as stored.",
    ),
    "MessagePage": _page("Message"),
    "Channel": _object(
        {
            "channel_id": CHANNEL_ID_SCHEMA,
            "title": _STRING_OR_NULL,
            "username": _STRING_OR_NULL,
            "is_active": {"type": "boolean"},
            "created_at": DATE_TIME_SCHEMA,
            "updated_at": DATE_TIME_SCHEMA,
            "last_message_id": {"type": ["integer", "null"], "minimum": 0},
            "last_message_date": _DATE_OR_NULL,
            "last_backfill_at": _DATE_OR_NULL,
        },
        "A channel and its backfill cursor.",
    ),
    "ChannelPage": _page("Channel"),
    "ChannelCreate": {
        "type": "object",
        "required": ["channel_id"],
        "additionalProperties": False,
        "properties": {
            "channel_id": CHANNEL_ID_SCHEMA,
            "title": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": p.MAX_TITLE_LENGTH,
                "pattern": p.VISIBLE_TEXT_PATTERN,
            },
            "username": {"type": ["string", "null"], "pattern": p.USERNAME_PATTERN},
            "is_active": {"type": "boolean", "default": True},
        },
    },
    "ChannelUpdate": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "title": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": p.MAX_TITLE_LENGTH,
                "pattern": p.VISIBLE_TEXT_PATTERN,
            },
            "username": {"type": ["string", "null"], "pattern": p.USERNAME_PATTERN},
            "is_active": {"type": "boolean"},
        },
    },
    "Signal": _object(
        {
            "id": {"type": "integer"},
            "channel_id": CHANNEL_ID_SCHEMA,
            "message_id": MESSAGE_ID_SCHEMA,
            "telegram_date": _DATE_OR_NULL,
            "asset": {"type": "string"},
            "signal_type": {"type": "string"},
            "buy_min": _PRICE,
            "buy_max": _PRICE,
            "target_1": _PRICE,
            "target_2": _PRICE,
            "target_final": _PRICE,
            "stop": _PRICE,
            "raw_text": {"type": "string"},
            "status": _STATUS,
            "current_stop": {
                **_PRICE,
                "description": "The stop after the signal's events: its own until one moves it.",
            },
            "result": _RESULT,
            "status_changed_at": {
                **_DATE_OR_NULL,
                "description": "When status last changed (null: open since it was stored).",
            },
            "created_at": DATE_TIME_SCHEMA,
            "updated_at": DATE_TIME_SCHEMA,
            "retired_at": _DATE_OR_NULL,
        },
        "A trading signal parsed from a channel post (prices are JSON numbers) and where its "
        "follow-up posts took it.",
    ),
    "SignalPage": _page("Signal"),
    "SignalEvent": _object(
        {
            "id": {"type": "integer", "minimum": 1},
            "channel_id": CHANNEL_ID_SCHEMA,
            "message_id": MESSAGE_ID_SCHEMA,
            "telegram_date": DATE_TIME_SCHEMA,
            "kind": {
                "type": "string",
                "enum": ["target_hit", "stop_moved", "stopped", "closed", "cancelled"],
            },
            "asset": _STRING_OR_NULL,
            "target": {
                "type": ["string", "null"],
                "pattern": "^([1-9][0-9]*|final)$",
                "description": "target_hit: 1, 2, … or final; null when the post did not say.",
            },
            "stop": {**_PRICE, "description": "stop_moved: the new stop, when a price."},
            "stop_ref": {
                "type": ["string", "null"],
                "pattern": "^(entry|target_([1-9][0-9]*|final))$",
                "description": "stop_moved: entry or target_N, when the stop moved to one.",
            },
            "result": _RESULT,
            "linked_by": {
                "type": "string",
                "enum": ["reply", "asset"],
                "description": "reply: the post replies to the signal or one of its events; "
                "asset: the channel's most recent open signal of that asset.",
            },
            "raw_text": {"type": "string"},
            "retired_at": {
                **_DATE_OR_NULL,
                "description": "Set when the post was deleted or edited into something else; "
                "such events count no more (listed with include_retired=true).",
            },
        },
        "A follow-up post of a signal: a target reached, the stop moved, stopped out, closed "
        "or cancelled.",
    ),
    "SignalEventPage": _page("SignalEvent"),
    "SignalReview": _object(
        {
            "id": {"type": "integer", "minimum": 1},
            "channel_id": CHANNEL_ID_SCHEMA,
            "message_id": MESSAGE_ID_SCHEMA,
            "telegram_date": DATE_TIME_SCHEMA,
            "asset": _STRING_OR_NULL,
            "missing": {
                "type": "array",
                "items": {"type": "string"},
                "description": "What a signal lacks, e.g. entry.",
            },
            "raw_text": {"type": "string"},
        },
        "A post with signal labels and a ticker that could not be read as a signal.",
    ),
    "SignalReviewPage": _page("SignalReview"),
    "Health": _object(
        {
            "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
            "version": {"type": "string"},
            "database": _object(
                {"status": {"type": "string", "enum": ["ok", "down"]}, "error": _STRING_OR_NULL},
                "PostgreSQL through PgBouncer.",
            ),
            "redis": _object(
                {
                    "status": {"type": "string", "enum": ["ok", "down", "disabled"]},
                    "error": _STRING_OR_NULL,
                },
                "The response cache (down = degraded: answers come from the database).",
            ),
        },
        "ok, degraded (Redis down) or down (database unreachable: HTTP 503).",
    ),
    "OpenApiDocument": {"type": "object", "description": "This document."},
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    403: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    405: {"Allow": {"schema": {"type": "string"}, "required": True}},
    429: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "required": True}},
    503: {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}
_X_CACHE = {
    "X-Cache": {
        "description": "hit (from Redis), miss (from PostgreSQL, now cached) or bypass "
        "(Redis unusable: from PostgreSQL).",
        "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]},
    }
}


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERROR_TEXT[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "security": [] if route.access == "public" else [{"bearerAuth": []}],
    }
    if route.params:
        operation["parameters"] = [
            {
                "name": param.name,
                "in": param.where,
                "required": param.required,
                "description": param.description,
                "schema": param.schema,
            }
            for param in route.params
        ]
    if route.body:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{route.body}"}}
            },
        }
    success: dict[str, Any] = {"description": "Success."}
    if route.media_type == "application/json":
        schema = {"$ref": f"#/components/schemas/{route.response}"} if route.response else {}
        success["content"] = {"application/json": {"schema": schema}}
    else:
        success["content"] = {route.media_type: {"schema": {"type": "string"}}}
    if route.cached:
        success["headers"] = _X_CACHE
    if route.success == 201:
        success["headers"] = {"Location": {"schema": {"type": "string"}, "required": True}}
    responses: dict[str, Any] = {str(route.success): success}
    statuses = set(route.errors)
    if route.access == "admin":
        statuses.add(403)
    for status in sorted(statuses):
        if route.operation_id == "getHealth" and status == 503:
            responses["503"] = {
                "description": _ERROR_TEXT[503],
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                },
            }
        else:
            responses[str(status)] = _error_response(status)
    operation["responses"] = responses
    return operation


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tgstack Gateway API",
            "version": __version__,
            "description": (
                "Read API over Telegram channel messages, channels and TP Capital signals "
                "(with their follow-up events and the posts that need review). "
                "Authenticate with Authorization: Bearer <token>; write operations need an "
                'admin token. Errors are JSON: {"error": {"code", "message", "field"}}. '
                "Lists are newest first (channels: by id; a signal's events: in post order) "
                "with opaque cursors. Where two path templates fit a path, a literal segment "
                "wins over a parameter: /v1/signals/{id}/events and /v1/signals/review are "
                "never read as /v1/signals/{channel_id}/{message_id}. GET answers are "
                "cached in Redis for up to 30 s and invalidated by every write made through "
                "this API."
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "messages"},
            {"name": "channels"},
            {"name": "signals"},
            {"name": "operations"},
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
            },
        },
    }


@cache
def document_bytes() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()
