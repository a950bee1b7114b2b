"""One method per operation: turn validated parameters into store calls and JSON payloads.

``app`` has already matched the route, authenticated, rate-limited and parsed every path and
query parameter (``Call.params``); handlers parse cursors and bodies (their errors are 400s
naming the field), call ``ApiStore`` and shape the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from tgstack import __version__
from tgstack.api import cursor as cursors
from tgstack.api import params as p
from tgstack.api.auth import Principal
from tgstack.api.cache import ResponseCache
from tgstack.api.errors import ApiError, bad_parameter, not_found
from tgstack.api.queries import (
    ApiStore,
    EventQuery,
    MessageQuery,
    ReviewQuery,
    Row,
    SignalQuery,
    StoreConflict,
)


@dataclass(frozen=True, slots=True)
class Call:
    """A request as a handler sees it."""

    params: dict[str, Any]
    body: bytes = b""
    principal: Principal | None = None


@dataclass(slots=True)
class Answer:
    """A response: ``payload`` is serialised to JSON unless ``body`` is given."""

    status: int
    payload: Any = None
    body: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class Handlers:
    def __init__(
        self,
        store: ApiStore,
        cache: ResponseCache | None,
        openapi: Callable[[], bytes],
    ) -> None:
        self._store = store
        self._cache = cache
        self._openapi = openapi

    # Operations -------------------------------------------------------------------------------

    def health(self, call: Call) -> Answer:
        db_ok, db_error = self._store.ping()
        if self._cache is None:
            redis: dict[str, Any] = {"status": "disabled", "error": None}
        else:
            redis_ok, redis_error = self._cache.ping()
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
        return Answer(200 if db_ok else 503, payload)

    def metrics(self, call: Call) -> Answer:
        return Answer(200, body=generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)

    def openapi(self, call: Call) -> Answer:
        return Answer(200, body=self._openapi())

    def list_messages(self, call: Call) -> Answer:
        params = call.params
        _check_range(params)
        query = MessageQuery(
            channel_id=params.get("channel_id"),
            statuses=params.get("status", ()),
            processing_states=params.get("processing_state", ()),
            since=params.get("since"),
            until=params.get("until"),
            text=p.like_pattern(params["q"]) if "q" in params else None,
            include_deleted=params.get("include_deleted", False),
            after=_dated_cursor("m", params),
            limit=params.get("limit", p.DEFAULT_LIMIT),
        )
        rows = self._store.list_messages(query)
        return Answer(200, _page(rows, query.limit, _message, _message_cursor))

    def get_message(self, call: Call) -> Answer:
        channel, message = call.params["channel_id"], call.params["message_id"]
        row = self._store.get_message(channel, message)
        if row is None:
            raise not_found(f"no message {message} in channel {channel}")
        return Answer(200, _message(row))

    def list_channels(self, call: Call) -> Answer:
        params = call.params
        limit = params.get("limit", p.DEFAULT_LIMIT)
        after = None
        if "cursor" in params:
            try:
                after = cursors.decode_channel(params["cursor"])
            except cursors.CursorError as exc:
                raise bad_parameter("cursor", str(exc)) from None
        rows = self._store.list_channels(
            is_active=params.get("is_active"), after=after, limit=limit
        )
        return Answer(
            200, _page(rows, limit, _channel, lambda row: cursors.encode_channel(row["channel_id"]))
        )

    def get_channel(self, call: Call) -> Answer:
        channel = call.params["channel_id"]
        row = self._store.get_channel(channel)
        if row is None:
            raise not_found(f"no channel {channel}")
        return Answer(200, _channel(row))

    def create_channel(self, call: Call) -> Answer:
        body = p.channel_create(p.json_object(call.body))
        try:
            row = self._store.create_channel(
                body.channel_id, body.title, body.username, body.is_active
            )
        except StoreConflict:
            raise ApiError(
                409,
                "conflict",
                f"channel {body.channel_id} exists; change it with PATCH",
                field="channel_id",
            ) from None
        location = f"/v1/channels/{body.channel_id}"
        return Answer(201, _channel(row), headers={"Location": location})

    def update_channel(self, call: Call) -> Answer:
        channel = call.params["channel_id"]
        update = p.channel_update(p.json_object(call.body))
        row = self._store.update_channel(channel, dict(update.changes))
        if row is None:
            raise not_found(f"no channel {channel}")
        return Answer(200, _channel(row))

    def deactivate_channel(self, call: Call) -> Answer:
        channel = call.params["channel_id"]
        row = self._store.update_channel(channel, {"is_active": False})
        if row is None:
            raise not_found(f"no channel {channel}")
        return Answer(200, _channel(row))

    def list_signals(self, call: Call) -> Answer:
        params = call.params
        _check_range(params)
        query = SignalQuery(
            channel_id=params.get("channel_id"),
            asset=params.get("asset"),
            status=params.get("status"),
            since=params.get("since"),
            until=params.get("until"),
            include_retired=params.get("include_retired", False),
            after=_dated_cursor("s", params),
            limit=params.get("limit", p.DEFAULT_LIMIT),
        )
        rows = self._store.list_signals(query)
        return Answer(200, _page(rows, query.limit, _signal, _signal_cursor))

    def get_signal(self, call: Call) -> Answer:
        channel, message = call.params["channel_id"], call.params["message_id"]
        row = self._store.get_signal(channel, message)
        if row is None:
            raise not_found(f"no signal for message {message} in channel {channel}")
        return Answer(200, _signal(row))

    def list_signal_events(self, call: Call) -> Answer:
        params = call.params
        query = EventQuery(
            signal_id=params["id"],
            include_retired=params.get("include_retired", False),
            after=_dated_cursor("e", params),
            limit=params.get("limit", p.DEFAULT_LIMIT),
        )
        rows = self._store.list_signal_events(query)
        if rows is None:
            raise not_found(f"no signal with id {query.signal_id}")
        return Answer(200, _page(rows, query.limit, _event, _event_cursor))

    def list_signal_reviews(self, call: Call) -> Answer:
        params = call.params
        _check_range(params)
        query = ReviewQuery(
            channel_id=params.get("channel_id"),
            since=params.get("since"),
            until=params.get("until"),
            after=_dated_cursor("r", params),
            limit=params.get("limit", p.DEFAULT_LIMIT),
        )
        rows = self._store.list_signal_reviews(query)
        return Answer(200, _page(rows, query.limit, _review, _review_cursor))


# Shaping ----------------------------------------------------------------------------------------


def _check_range(params: dict[str, Any]) -> None:
    since, until = params.get("since"), params.get("until")
    if since is not None and until is not None and until <= since:
        raise bad_parameter("until", "must be later than since")


def _dated_cursor(kind: cursors.DatedKind, params: dict[str, Any]) -> cursors.DatedKey | None:
    if "cursor" not in params:
        return None
    try:
        return cursors.decode_dated(kind, params["cursor"])
    except cursors.CursorError as exc:
        raise bad_parameter("cursor", str(exc)) from None


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


def _message(row: Row) -> dict[str, Any]:
    return dict(row)


def _message_cursor(row: Row) -> str:
    return cursors.encode_dated("m", row["telegram_date"], row["channel_id"], row["message_id"])


def _channel(row: Row) -> dict[str, Any]:
    return dict(row)


def _signal(row: Row) -> dict[str, Any]:
    shaped = dict(row)
    shaped.pop("signal_date", None)
    return shaped


def _signal_cursor(row: Row) -> str:
    return cursors.encode_dated("s", row["signal_date"], row["channel_id"], row["message_id"])


def _event(row: Row) -> dict[str, Any]:
    return dict(row)


def _event_cursor(row: Row) -> str:
    return cursors.encode_dated("e", row["telegram_date"], row["channel_id"], row["message_id"])


def _review(row: Row) -> dict[str, Any]:
    return dict(row)


def _review_cursor(row: Row) -> str:
    return cursors.encode_dated("r", row["telegram_date"], row["channel_id"], row["message_id"])
