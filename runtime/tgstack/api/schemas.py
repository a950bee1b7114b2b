"""The API's Pydantic models: query parameters, path parameters, bodies and responses.

FastAPI builds the OpenAPI document from these. Every parameter is parsed by the pure parsers
of ``params`` (``PlainValidator``), so a refused value is a ``bad_parameter`` error with the
same message as ever; ``WithJsonSchema`` states what the document promises about it (the
parsers and the documented patterns are kept in agreement by the unit tests). Query models
forbid unknown parameters (``extra="forbid"``).

Response models describe the JSON the operations send; the operations serialise database
rows themselves (``responses.json_bytes``), the models are the contract the schemathesis run
checks every answer against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tgstack.api import cursor as cursors
from tgstack.api import params as p
from tgstack.api.errors import ApiError, bad_parameter
from tgstack.models import (
    MARKED_CHANNEL_MAX,
    MARKED_CHANNEL_MIN,
    MESSAGE_ID_MAX,
    MESSAGE_STATUSES,
    PROCESSING_STATES,
)

BAD_PARAMETER = "bad_parameter"
"""The pydantic error type a parser's refusal becomes (``ctx``: message, field)."""

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
SIGNAL_STATUS_FILTER_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": p.SIGNAL_STATUS_PATTERN,
    "description": "open, target_N (the highest target reached), stopped, closed or cancelled; "
    "as a filter also target: any target_N.",
}


@dataclass(frozen=True, slots=True)
class Choices:
    """One or more values of a comma-separated filter (deduplicated, in the order given).

    A class of its own rather than a tuple: FastAPI reads a sequence-typed query parameter as
    a repeatable one, and these are single comma-separated parameters."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class After:
    """Where a dated list's page starts: the decoded cursor, the sort key (date, channel_id,
    message_id) of the previous page's last item. A class for the reason ``Choices`` is one."""

    key: cursors.DatedKey


def parsed(parse: p.Parser, name: str | None = None) -> PlainValidator:
    """A validator running ``parse`` on the raw text; its refusal becomes ``bad_parameter``.

    ``name`` is the parameter's name where pydantic does not know it (path parameters); a
    value that is not text is a default, already parsed."""

    def validate(value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        field = name or info.field_name or "parameter"
        try:
            return parse(field, value)
        except ApiError as exc:
            raise PydanticCustomError(
                BAD_PARAMETER, "{message}", {"message": exc.message, "field": exc.field}
            ) from None

    return PlainValidator(validate)


def _choices(parse: Callable[[str, str], tuple[str, ...]]) -> p.Parser:
    return lambda name, raw: Choices(parse(name, raw))


def _choice_list(values: tuple[str, ...]) -> dict[str, Any]:
    alternatives = "|".join(values)
    return {
        "type": "string",
        "pattern": f"^({alternatives})(,({alternatives}))*$",
        "description": f"One or more of {', '.join(values)}, comma separated.",
    }


def _nullable(schema: dict[str, Any], **extra: Any) -> WithJsonSchema:
    kind = schema["type"]
    return WithJsonSchema({**schema, "type": [kind, "null"], **extra})


# Parameter types ---------------------------------------------------------------------------------

ChannelIdQuery = Annotated[int | None, parsed(p.channel_id), WithJsonSchema(CHANNEL_ID_SCHEMA)]
Limit = Annotated[
    int,
    parsed(p.limit),
    WithJsonSchema(
        {"type": "integer", "minimum": 1, "maximum": p.MAX_LIMIT, "default": p.DEFAULT_LIMIT}
    ),
]


def _dated_cursor(kind: cursors.DatedKind) -> p.Parser:
    def parse(name: str, raw: str) -> After:
        try:
            return After(cursors.decode_dated(kind, p.cursor(name, raw)))
        except cursors.CursorError as exc:
            raise bad_parameter(name, str(exc)) from None

    return parse


def _channel_cursor(name: str, raw: str) -> int:
    try:
        return cursors.decode_channel(p.cursor(name, raw))
    except cursors.CursorError as exc:
        raise bad_parameter(name, str(exc)) from None


# A cursor is parsed into the key it stands for; its list's kind is checked (cursor.py).
_CURSOR = WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 512})
MessageCursor = Annotated[After | None, parsed(_dated_cursor("m")), _CURSOR]
SignalCursor = Annotated[After | None, parsed(_dated_cursor("s")), _CURSOR]
EventCursor = Annotated[After | None, parsed(_dated_cursor("e")), _CURSOR]
ReviewCursor = Annotated[After | None, parsed(_dated_cursor("r")), _CURSOR]
ChannelCursor = Annotated[int | None, parsed(_channel_cursor), _CURSOR]
Timestamp = Annotated[datetime | None, parsed(p.timestamp), WithJsonSchema(DATE_TIME_SCHEMA)]
Flag = Annotated[bool, parsed(p.boolean), WithJsonSchema({"type": "boolean", "default": False})]
OptionalFlag = Annotated[bool | None, parsed(p.boolean), WithJsonSchema({"type": "boolean"})]

ChannelIdPath = Annotated[
    int,
    parsed(p.channel_id, "channel_id"),
    WithJsonSchema(CHANNEL_ID_SCHEMA),
    Path(description="Marked channel id."),
]
MessageIdPath = Annotated[
    int,
    parsed(p.message_id, "message_id"),
    WithJsonSchema(MESSAGE_ID_SCHEMA),
    Path(description="Message id."),
]
SignalIdPath = Annotated[
    int,
    parsed(p.signal_id, "id"),
    WithJsonSchema(SIGNAL_ID_SCHEMA),
    Path(description="The signal's id."),
]

_CURSOR_TEXT = "Opaque cursor from a previous page's next_cursor."


class QueryModel(BaseModel):
    """Query parameters: unknown ones are refused, nothing is coerced beyond the parsers."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_SINCE = "Posted at or after (ISO 8601 with offset)."
_UNTIL = "Posted before (ISO 8601 with offset)."


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise PydanticCustomError(
            BAD_PARAMETER,
            "{message}",
            {"message": "until: must be later than since", "field": "until"},
        )


class MessageListQuery(QueryModel):
    channel_id: ChannelIdQuery = Field(None, description="Only this channel.")
    status: Annotated[
        Choices | None,
        parsed(_choices(p.status_list)),
        WithJsonSchema(_choice_list(MESSAGE_STATUSES)),
    ] = Field(None, description="Publishing status(es).")
    processing_state: Annotated[
        Choices | None,
        parsed(_choices(p.processing_state_list)),
        WithJsonSchema(_choice_list(PROCESSING_STATES)),
    ] = Field(None, description="Consumer processing state(s).")
    since: Timestamp = Field(None, description=_SINCE)
    until: Timestamp = Field(None, description=_UNTIL)
    q: Annotated[
        str | None,
        parsed(p.search_text),
        WithJsonSchema(
            {
                "type": "string",
                "minLength": 1,
                "maxLength": p.MAX_QUERY_LENGTH,
                "pattern": p.VISIBLE_TEXT_PATTERN,
            }
        ),
    ] = Field(None, description="Case-insensitive text search in text and caption.")
    include_deleted: Flag = Field(False, description="Also list soft-deleted messages.")
    cursor: MessageCursor = Field(None, description=_CURSOR_TEXT)
    limit: Limit = Field(p.DEFAULT_LIMIT, description="Page size.")

    @model_validator(mode="after")
    def _until_after_since(self) -> MessageListQuery:
        _check_range(self.since, self.until)
        return self


class ChannelListQuery(QueryModel):
    is_active: OptionalFlag = Field(
        None, description="Only active (true) or inactive (false) channels."
    )
    cursor: ChannelCursor = Field(None, description=_CURSOR_TEXT)
    limit: Limit = Field(p.DEFAULT_LIMIT, description="Page size.")


class SignalListQuery(QueryModel):
    channel_id: ChannelIdQuery = Field(None, description="Only this channel.")
    asset: Annotated[
        str | None,
        parsed(p.asset),
        WithJsonSchema({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"}),
    ] = Field(None, description="Ticker (case-insensitive), e.g. PETR4.")
    status: Annotated[
        str | None, parsed(p.signal_status), WithJsonSchema(SIGNAL_STATUS_FILTER_SCHEMA)
    ] = Field(
        None,
        description="Only signals in this status: open, stopped, closed, cancelled, target_N, "
        "or target for any target_N.",
    )
    since: Timestamp = Field(None, description=_SINCE)
    until: Timestamp = Field(None, description=_UNTIL)
    include_retired: Flag = Field(False, description="Also list signals whose post was deleted.")
    cursor: SignalCursor = Field(None, description=_CURSOR_TEXT)
    limit: Limit = Field(p.DEFAULT_LIMIT, description="Page size.")

    @model_validator(mode="after")
    def _until_after_since(self) -> SignalListQuery:
        _check_range(self.since, self.until)
        return self


class SignalEventListQuery(QueryModel):
    include_retired: Flag = Field(
        False, description="Also list events whose post was deleted or edited away."
    )
    cursor: EventCursor = Field(None, description=_CURSOR_TEXT)
    limit: Limit = Field(p.DEFAULT_LIMIT, description="Page size.")


class ReviewListQuery(QueryModel):
    channel_id: ChannelIdQuery = Field(None, description="Only this channel.")
    since: Timestamp = Field(None, description=_SINCE)
    until: Timestamp = Field(None, description=_UNTIL)
    cursor: ReviewCursor = Field(None, description=_CURSOR_TEXT)
    limit: Limit = Field(p.DEFAULT_LIMIT, description="Page size.")

    @model_validator(mode="after")
    def _until_after_since(self) -> ReviewListQuery:
        _check_range(self.since, self.until)
        return self


# Bodies (validated by params.channel_create / channel_update, documented here) -------------------

_TITLE = WithJsonSchema(
    {
        "type": ["string", "null"],
        "minLength": 1,
        "maxLength": p.MAX_TITLE_LENGTH,
        "pattern": p.VISIBLE_TEXT_PATTERN,
    }
)
_USERNAME = WithJsonSchema({"type": ["string", "null"], "pattern": p.USERNAME_PATTERN})


class ChannelCreate(BaseModel):
    """A channel to register (admin)."""

    model_config = ConfigDict(extra="forbid")

    channel_id: Annotated[int, WithJsonSchema(CHANNEL_ID_SCHEMA)]
    title: Annotated[str | None, _TITLE] = None
    username: Annotated[str | None, _USERNAME] = None
    is_active: bool = True


class ChannelUpdate(BaseModel):
    """The fields to change (admin): at least one; null clears title or username."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    title: Annotated[str | None, _TITLE] = None
    username: Annotated[str | None, _USERNAME] = None
    is_active: Annotated[bool | None, WithJsonSchema({"type": "boolean"})] = None


# Responses -------------------------------------------------------------------------------------

NullableText = Annotated[str | None, WithJsonSchema({"type": ["string", "null"]})]
NullableDate = Annotated[datetime | None, _nullable(DATE_TIME_SCHEMA)]
NullableInt = Annotated[int | None, WithJsonSchema({"type": ["integer", "null"]})]
DateTime = Annotated[datetime, WithJsonSchema(DATE_TIME_SCHEMA)]
ChannelId = Annotated[int, WithJsonSchema(CHANNEL_ID_SCHEMA)]
MessageId = Annotated[int, WithJsonSchema(MESSAGE_ID_SCHEMA)]
Price = Annotated[float | None, WithJsonSchema({"type": ["number", "null"], "exclusiveMinimum": 0})]
Result = Annotated[
    str | None,
    WithJsonSchema({"type": ["string", "null"], "enum": ["gain", "loss", "breakeven", None]}),
]
_NEXT_CURSOR = WithJsonSchema(
    {
        "type": ["string", "null"],
        "description": "Pass as cursor for the next page; null on the last page.",
    }
)
PageLimit = Annotated[int, Field(ge=1, le=p.MAX_LIMIT)]


class Answer(BaseModel):
    """A response body: every field present, nothing else."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Answer):
    code: Literal[
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
    ]
    message: str
    field: Annotated[
        str | None,
        WithJsonSchema(
            {
                "type": ["string", "null"],
                "description": "The parameter or body field at fault, if one is.",
            }
        ),
    ]


class Error(Answer):
    """Every error: {"error": {code, message, field}}."""

    error: ErrorDetail


class Message(Answer):
    """A channel post as stored."""

    channel_id: ChannelId
    message_id: MessageId
    telegram_date: DateTime
    thread_id: NullableInt
    reply_to_msg_id: Annotated[
        int | None,
        WithJsonSchema(
            {
                "type": ["integer", "null"],
                "description": "The post of the same channel this one replies to; null when "
                "it is not a reply.",
            }
        ),
    ]
    grouped_id: NullableInt
    source: str
    message_type: str
    text: NullableText
    caption: NullableText
    media_type: NullableText
    media_refs: Annotated[dict[str, Any] | None, WithJsonSchema({"type": ["object", "null"]})]
    edit_date: NullableDate
    edit_count: Annotated[int, Field(ge=0)]
    status: Annotated[str, WithJsonSchema({"type": "string", "enum": list(MESSAGE_STATUSES)})]
    processing_state: Annotated[
        str, WithJsonSchema({"type": "string", "enum": list(PROCESSING_STATES)})
    ]
    processed_at: NullableDate
    last_error: NullableText
    received_at: DateTime
    published_at: NullableDate
    deleted_at: NullableDate
    metadata: Annotated[
        dict[str, Any],
        WithJsonSchema({"type": "object", "description": "processed_by and gateway notes."}),
    ]


class MessagePage(Answer):
    data: list[Message]
    next_cursor: Annotated[str | None, _NEXT_CURSOR]
    limit: PageLimit


class Channel(Answer):
    """A channel and its backfill cursor."""

    channel_id: ChannelId
    title: NullableText
    username: NullableText
    is_active: bool
    created_at: DateTime
    updated_at: DateTime
    last_message_id: Annotated[
        int | None, WithJsonSchema({"type": ["integer", "null"], "minimum": 0})
    ]
    last_message_date: NullableDate
    last_backfill_at: NullableDate


class ChannelPage(Answer):
    data: list[Channel]
    next_cursor: Annotated[str | None, _NEXT_CURSOR]
    limit: PageLimit


class Signal(Answer):
    """A trading signal parsed from a channel post (prices are JSON numbers) and where its
    follow-up posts took it."""

    id: int
    channel_id: ChannelId
    message_id: MessageId
    telegram_date: NullableDate
    asset: str
    signal_type: str
    buy_min: Price
    buy_max: Price
    target_1: Price
    target_2: Price
    target_final: Price
    stop: Price
    raw_text: str
    status: Annotated[
        str,
        WithJsonSchema(
            {
                "type": "string",
                "pattern": "^(open|target_[1-9][0-9]*|stopped|closed|cancelled)$",
                "description": "open, target_N (the highest target reached), stopped, closed "
                "or cancelled, derived from the signal's active events in post order.",
            }
        ),
    ]
    current_stop: Annotated[
        float | None,
        WithJsonSchema(
            {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "description": "The stop after the signal's events: its own until one moves it.",
            }
        ),
    ]
    result: Result
    status_changed_at: Annotated[
        datetime | None,
        _nullable(
            DATE_TIME_SCHEMA,
            description="When status last changed (null: open since it was stored).",
        ),
    ]
    created_at: DateTime
    updated_at: DateTime
    retired_at: NullableDate


class SignalPage(Answer):
    data: list[Signal]
    next_cursor: Annotated[str | None, _NEXT_CURSOR]
    limit: PageLimit


class SignalEvent(Answer):
    """A follow-up post of a signal: a target reached, the stop moved, stopped out, closed or
    cancelled."""

    id: Annotated[int, Field(ge=1)]
    channel_id: ChannelId
    message_id: MessageId
    telegram_date: DateTime
    kind: Literal["target_hit", "stop_moved", "stopped", "closed", "cancelled"]
    asset: NullableText
    target: Annotated[
        str | None,
        WithJsonSchema(
            {
                "type": ["string", "null"],
                "pattern": "^([1-9][0-9]*|final)$",
                "description": "target_hit: 1, 2, … or final; null when the post did not say.",
            }
        ),
    ]
    stop: Annotated[
        float | None,
        WithJsonSchema(
            {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "description": "stop_moved: the new stop, when a price.",
            }
        ),
    ]
    stop_ref: Annotated[
        str | None,
        WithJsonSchema(
            {
                "type": ["string", "null"],
                "pattern": "^(entry|target_([1-9][0-9]*|final))$",
                "description": "stop_moved: entry or target_N, when the stop moved to one.",
            }
        ),
    ]
    result: Result
    linked_by: Annotated[
        str,
        WithJsonSchema(
            {
                "type": "string",
                "enum": ["reply", "asset"],
                "description": "reply: the post replies to the signal or one of its events; "
                "asset: the channel's most recent open signal of that asset.",
            }
        ),
    ]
    raw_text: str
    retired_at: Annotated[
        datetime | None,
        _nullable(
            DATE_TIME_SCHEMA,
            description="Set when the post was deleted or edited into something else; such "
            "events count no more (listed with include_retired=true).",
        ),
    ]


class SignalEventPage(Answer):
    data: list[SignalEvent]
    next_cursor: Annotated[str | None, _NEXT_CURSOR]
    limit: PageLimit


class SignalReview(Answer):
    """A post with signal labels and a ticker that could not be read as a signal."""

    id: Annotated[int, Field(ge=1)]
    channel_id: ChannelId
    message_id: MessageId
    telegram_date: DateTime
    asset: NullableText
    missing: Annotated[list[str], Field(description="What a signal lacks, e.g. entry.")]
    raw_text: str


class SignalReviewPage(Answer):
    data: list[SignalReview]
    next_cursor: Annotated[str | None, _NEXT_CURSOR]
    limit: PageLimit


class HealthDatabase(Answer):
    """PostgreSQL through PgBouncer."""

    status: Literal["ok", "down"]
    error: NullableText


class HealthRedis(Answer):
    """The response cache (down = degraded: answers come from the database)."""

    status: Literal["ok", "down", "disabled"]
    error: NullableText


class Health(Answer):
    """ok, degraded (Redis down) or down (database unreachable: HTTP 503)."""

    status: Literal["ok", "degraded", "down"]
    version: str
    database: HealthDatabase
    redis: HealthRedis


class OpenApiDocument(RootModel[dict[str, Any]]):
    """This document."""
