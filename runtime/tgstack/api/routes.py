"""The route table: every operation, its parameters and their parsers, in one place.

The application dispatches with it and the OpenAPI document is generated from it, so the two
cannot drift apart. A handler is named by string (a method of ``handlers.Handlers``).

Templates may overlap: ``/v1/signals/{id}/events`` also fits ``/v1/signals/{channel_id}/
{message_id}`` (with message_id ``events``). ``match`` resolves that the way OpenAPI asks
(concrete before templated): of the templates that fit a path, the one with a literal segment
where the others have a parameter, leftmost first, wins; the path's methods are those of that
template only. Two templates that fit the same paths with literals in the same places would be
ambiguous; a unit test keeps the table free of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from tgstack.api import params as p
from tgstack.models import (
    MARKED_CHANNEL_MAX,
    MARKED_CHANNEL_MIN,
    MESSAGE_ID_MAX,
    MESSAGE_STATUSES,
    PROCESSING_STATES,
)

Access = Literal["public", "read", "admin"]
Where = Literal["path", "query"]

CHANNEL_ID_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "minimum": MARKED_CHANNEL_MIN,
    "maximum": MARKED_CHANNEL_MAX,
    "description": "A marked channel id: -100 followed by the channel id.",
    "examples": [-1001649127710],
}
MESSAGE_ID_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MESSAGE_ID_MAX}
DATE_TIME_SCHEMA: dict[str, Any] = {"type": "string", "format": "date-time"}
SIGNAL_ID_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "maximum": p.SIGNAL_ID_MAX,
    "description": "A signal's id, as GET /v1/signals lists it.",
}
SIGNAL_STATUS_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": p.SIGNAL_STATUS_PATTERN,
    "description": "open, target_N (the highest target reached), stopped, closed or cancelled; "
    "as a filter also target: any target_N.",
}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: Where
    parse: p.Parser
    schema: dict[str, Any]
    description: str

    @property
    def required(self) -> bool:
        return self.where == "path"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    operation_id: str
    summary: str
    tag: str
    access: Access
    handler: str
    params: tuple[Param, ...] = ()
    body: str | None = None  # components/schemas name of the JSON request body
    response: str | None = None  # components/schemas name of the success body
    success: int = 200
    errors: tuple[int, ...] = ()
    cached: bool = False
    media_type: str = "application/json"
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template)
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    @property
    def specificity(self) -> tuple[bool, ...]:
        """Per path segment, True for a literal: the larger tuple wins where templates overlap."""
        return tuple(not segment.startswith("{") for segment in self.template.split("/"))

    def param(self, name: str, where: Where) -> Param | None:
        for param in self.params:
            if param.name == name and param.where == where:
                return param
        return None


def _path_channel(description: str = "Marked channel id.") -> Param:
    return Param("channel_id", "path", p.channel_id, CHANNEL_ID_SCHEMA, description)


_PATH_MESSAGE = Param("message_id", "path", p.message_id, MESSAGE_ID_SCHEMA, "Message id.")
_LIMIT = Param(
    "limit",
    "query",
    p.limit,
    {"type": "integer", "minimum": 1, "maximum": p.MAX_LIMIT, "default": p.DEFAULT_LIMIT},
    "Page size.",
)
_CURSOR = Param(
    "cursor",
    "query",
    p.cursor,
    {"type": "string", "minLength": 1, "maxLength": 512},
    "Opaque cursor from a previous page's next_cursor.",
)
_QUERY_CHANNEL = Param("channel_id", "query", p.channel_id, CHANNEL_ID_SCHEMA, "Only this channel.")
_SINCE = Param(
    "since", "query", p.timestamp, DATE_TIME_SCHEMA, "Posted at or after (ISO 8601 with offset)."
)
_UNTIL = Param(
    "until", "query", p.timestamp, DATE_TIME_SCHEMA, "Posted before (ISO 8601 with offset)."
)


def _include_retired(description: str) -> Param:
    return Param(
        "include_retired", "query", p.boolean, {"type": "boolean", "default": False}, description
    )


def _choice_list(values: tuple[str, ...]) -> dict[str, Any]:
    alternatives = "|".join(values)
    return {
        "type": "string",
        "pattern": f"^({alternatives})(,({alternatives}))*$",
        "description": f"One or more of {', '.join(values)}, comma separated.",
    }


_COMMON = (401, 429, 503)

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/health",
        "getHealth",
        "Liveness and dependencies",
        "operations",
        "public",
        "health",
        response="Health",
        errors=(503,),
    ),
    Route(
        "GET",
        "/metrics",
        "getMetrics",
        "Prometheus metrics",
        "operations",
        "public",
        "metrics",
        media_type="text/plain",
    ),
    Route(
        "GET",
        "/openapi.json",
        "getOpenApi",
        "This OpenAPI document",
        "operations",
        "public",
        "openapi",
        response="OpenApiDocument",
        errors=(429,),
    ),
    Route(
        "GET",
        "/v1/messages",
        "listMessages",
        "List messages, newest first",
        "messages",
        "read",
        "list_messages",
        params=(
            _QUERY_CHANNEL,
            Param(
                "status",
                "query",
                p.status_list,
                _choice_list(MESSAGE_STATUSES),
                "Publishing status(es).",
            ),
            Param(
                "processing_state",
                "query",
                p.processing_state_list,
                _choice_list(PROCESSING_STATES),
                "Consumer processing state(s).",
            ),
            _SINCE,
            _UNTIL,
            Param(
                "q",
                "query",
                p.search_text,
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": p.MAX_QUERY_LENGTH,
                    "pattern": p.VISIBLE_TEXT_PATTERN,
                },
                "Case-insensitive text search in text and caption.",
            ),
            Param(
                "include_deleted",
                "query",
                p.boolean,
                {"type": "boolean", "default": False},
                "Also list soft-deleted messages.",
            ),
            _CURSOR,
            _LIMIT,
        ),
        response="MessagePage",
        errors=(400, *_COMMON),
        cached=True,
    ),
    Route(
        "GET",
        "/v1/messages/{channel_id}/{message_id}",
        "getMessage",
        "One message",
        "messages",
        "read",
        "get_message",
        params=(_path_channel(), _PATH_MESSAGE),
        response="Message",
        errors=(400, *_COMMON, 404),
        cached=True,
    ),
    Route(
        "GET",
        "/v1/channels",
        "listChannels",
        "List channels by id",
        "channels",
        "read",
        "list_channels",
        params=(
            Param(
                "is_active",
                "query",
                p.boolean,
                {"type": "boolean"},
                "Only active (true) or inactive (false) channels.",
            ),
            _CURSOR,
            _LIMIT,
        ),
        response="ChannelPage",
        errors=(400, *_COMMON),
        cached=True,
    ),
    Route(
        "POST",
        "/v1/channels",
        "createChannel",
        "Register a channel (admin)",
        "channels",
        "admin",
        "create_channel",
        body="ChannelCreate",
        response="Channel",
        success=201,
        errors=(400, *_COMMON, 403, 409, 413, 415),
    ),
    Route(
        "GET",
        "/v1/channels/{channel_id}",
        "getChannel",
        "One channel",
        "channels",
        "read",
        "get_channel",
        params=(_path_channel(),),
        response="Channel",
        errors=(400, *_COMMON, 404),
        cached=True,
    ),
    Route(
        "PATCH",
        "/v1/channels/{channel_id}",
        "updateChannel",
        "Change title, username or is_active (admin)",
        "channels",
        "admin",
        "update_channel",
        params=(_path_channel(),),
        body="ChannelUpdate",
        response="Channel",
        errors=(400, *_COMMON, 403, 404, 413, 415),
    ),
    Route(
        "DELETE",
        "/v1/channels/{channel_id}",
        "deactivateChannel",
        "Deactivate a channel (admin; soft: is_active=false)",
        "channels",
        "admin",
        "deactivate_channel",
        params=(_path_channel(),),
        response="Channel",
        errors=(400, *_COMMON, 403, 404),
    ),
    Route(
        "GET",
        "/v1/signals",
        "listSignals",
        "List trading signals, newest first",
        "signals",
        "read",
        "list_signals",
        params=(
            _QUERY_CHANNEL,
            Param(
                "asset",
                "query",
                p.asset,
                {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"},
                "Ticker (case-insensitive), e.g. PETR4.",
            ),
            Param(
                "status",
                "query",
                p.signal_status,
                SIGNAL_STATUS_SCHEMA,
                "Only signals in this status: open, stopped, closed, cancelled, target_N, or "
                "target for any target_N.",
            ),
            _SINCE,
            _UNTIL,
            _include_retired("Also list signals whose post was deleted."),
            _CURSOR,
            _LIMIT,
        ),
        response="SignalPage",
        errors=(400, *_COMMON),
        cached=True,
    ),
    Route(
        "GET",
        "/v1/signals/{channel_id}/{message_id}",
        "getSignal",
        "The signal of one post",
        "signals",
        "read",
        "get_signal",
        params=(_path_channel(), _PATH_MESSAGE),
        response="Signal",
        errors=(400, *_COMMON, 404),
        cached=True,
    ),
    Route(
        "GET",
        "/v1/signals/{id}/events",
        "listSignalEvents",
        "A signal's follow-up posts, in post order",
        "signals",
        "read",
        "list_signal_events",
        params=(
            Param("id", "path", p.signal_id, SIGNAL_ID_SCHEMA, "The signal's id."),
            _include_retired("Also list events whose post was deleted or edited away."),
            _CURSOR,
            _LIMIT,
        ),
        response="SignalEventPage",
        errors=(400, *_COMMON, 404),
        cached=True,
    ),
    Route(
        "GET",
        "/v1/signals/review",
        "listSignalReviews",
        "Posts that look like a signal but could not be read, newest first",
        "signals",
        "read",
        "list_signal_reviews",
        params=(_QUERY_CHANNEL, _SINCE, _UNTIL, _CURSOR, _LIMIT),
        response="SignalReviewPage",
        errors=(400, *_COMMON),
        cached=True,
    ),
)


@dataclass(frozen=True, slots=True)
class Match:
    route: Route | None  # None: the path exists, the method does not (405)
    path_values: dict[str, str]
    allowed: tuple[str, ...]
    template: str


def match(method: str, path: str) -> Match | None:
    """The route for (method, path); ``Match(route=None)`` for a known path with another
    method; None for an unknown path. Where templates overlap, the most specific one decides
    (``Route.specificity``)."""
    fitting = [route for route in ROUTES if route.pattern.match(path)]
    if not fitting:
        return None
    best = max(route.specificity for route in fitting)
    allowed: list[str] = []
    template = ""
    found: tuple[Route, dict[str, str]] | None = None
    for route in fitting:
        if route.specificity != best:
            continue
        allowed.append(route.method)
        template = route.template
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            hit = route.pattern.match(path)
            assert hit is not None
            found = (route, hit.groupdict())
    if "GET" in allowed:
        allowed.append("HEAD")
    if found is None:
        return Match(None, {}, tuple(allowed), template)
    return Match(found[0], found[1], tuple(allowed), template)
