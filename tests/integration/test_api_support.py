"""Helpers for the API tests: a real server on a free port, an HTTP client, test data.

(Named test_api_* so it belongs with them; it holds no tests itself.)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis

from tgstack.api.app import create_app
from tgstack.api.auth import TokenAuth
from tgstack.api.cache import ResponseCache
from tgstack.api.deps import Services
from tgstack.api.queries import ApiStore
from tgstack.api.ratelimit import RateLimiter
from tgstack.api.server import ApiServer
from tgstack.db import Database
from tgstack.models import MessageRecord
from tgstack_testing.localstack import wait_until

READ_TOKEN = "read-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
CHANNEL_A = -1001649127710
CHANNEL_B = -1001234567890
BASE_DATE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DEFAULT = "<the client's token>"  # token= sentinel: send the client's own token


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Api:
    """A running API server and a client for it."""

    host: str
    port: int
    services: Services
    server: ApiServer
    token: str | None = READ_TOKEN
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = DEFAULT,
        body: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        sent: dict[str, str] = dict(self.extra_headers)
        chosen = self.token if token is DEFAULT else token
        if chosen is not None:
            sent["Authorization"] = f"Bearer {chosen}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=sent)
            raw = conn.getresponse()
            data = raw.read()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)


@contextlib.contextmanager
def running_api(
    dsn: str,
    *,
    redis_client: redis.Redis | None = None,
    rate: float = 10_000.0,
    burst: int = 10_000,
    cache_ttl: int = 30,
    threads: int = 4,
    max_body_bytes: int = 16_384,
    statement_timeout_ms: int = 5_000,
) -> Iterator[Api]:
    store = ApiStore(dsn, min_size=1, max_size=threads, statement_timeout_ms=statement_timeout_ms)
    store.open()
    cache = ResponseCache(redis_client, ttl=cache_ttl) if redis_client is not None else None
    services = Services(
        store=store,
        auth=TokenAuth([READ_TOKEN], [ADMIN_TOKEN]),
        limiter=RateLimiter(rate, burst),
        cache=cache,
        max_body_bytes=max_body_bytes,
        threads=threads,
    )
    server = ApiServer(create_app(services), "127.0.0.1", 0, grace=5)
    thread = threading.Thread(target=server.serve_forever, name="api-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "the API to start")
        yield Api("127.0.0.1", server.port, services, server)
    finally:
        server.shutdown()
        thread.join(10)
        store.close()


def message(
    channel_id: int,
    message_id: int,
    minutes: float = 0,
    text: str | None = None,
    **fields: Any,
) -> MessageRecord:
    return MessageRecord.create(
        channel_id,
        message_id,
        BASE_DATE + timedelta(minutes=minutes),
        text=text if text is not None else f"post {message_id} of {channel_id}",
        **fields,
    )


def store_messages(dsn: str, records: list[MessageRecord]) -> None:
    with Database(dsn, min_size=1, max_size=2) as database:
        database.bulk_upsert(records)


def insert_signal(
    dsn: str,
    channel_id: int,
    message_id: int,
    asset: str,
    *,
    telegram_date: datetime | None = None,
    buy_min: str = "27.50",
    buy_max: str = "28.00",
    retired: bool = False,
    status: str = "open",
    current_stop: str | None = None,
    result: str | None = None,
    status_changed_at: datetime | None = None,
) -> int:
    """Store a signal row as the poller would; its id."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute(
            "INSERT INTO tp_capital.signals (channel_id, message_id, telegram_date, asset,"
            " signal_type, buy_min, buy_max, target_1, stop, raw_text, retired_at,"
            " status, current_stop, result, status_changed_at)"
            " VALUES (%s, %s, %s, %s, 'Swing Trade', %s, %s, 30.10, 26.00, %s,"
            " CASE WHEN %s THEN now() END, %s, %s, %s, %s) RETURNING id",
            (
                channel_id,
                message_id,
                telegram_date,
                asset,
                buy_min,
                buy_max,
                f"Ativo: {asset}\nCompra: {buy_min} a {buy_max}",
                retired,
                status,
                current_stop,
                result,
                status_changed_at,
            ),
        ).fetchone()
    assert row is not None
    return int(row[0])


def insert_event(
    dsn: str,
    signal_id: int | None,
    channel_id: int,
    message_id: int,
    kind: str,
    *,
    telegram_date: datetime,
    asset: str | None = "PETR4",
    linked_by: str | None = "reply",
    retired: bool = False,
    **fields: Any,
) -> int:
    """Store a follow-up post (tp_capital.signal_events) as the poller would; its id.
    ``fields``: target, stop, stop_ref, result, reply_to_msg_id, raw_text."""
    columns = {
        "signal_id": signal_id,
        "channel_id": channel_id,
        "message_id": message_id,
        "kind": kind,
        "telegram_date": telegram_date,
        "asset": asset,
        "linked_by": linked_by if signal_id is not None else None,
        "raw_text": f"{asset} {kind}",
        **fields,
    }
    names = ", ".join(columns)
    values = ", ".join(["%s"] * len(columns))
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute(
            f"INSERT INTO tp_capital.signal_events ({names}, retired_at)"
            f" VALUES ({values}, CASE WHEN %s THEN now() END) RETURNING id",
            (*columns.values(), retired),
        ).fetchone()
    assert row is not None
    return int(row[0])


def insert_review(
    dsn: str,
    channel_id: int,
    message_id: int,
    *,
    telegram_date: datetime,
    asset: str | None = "PETR4",
    missing: tuple[str, ...] = ("entry",),
    raw_text: str | None = None,
    retired: bool = False,
) -> int:
    """Store a post that needs review (tp_capital.signal_reviews) as the poller would; its id."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute(
            "INSERT INTO tp_capital.signal_reviews (channel_id, message_id, telegram_date, asset,"
            " missing, raw_text, retired_at) VALUES (%s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s THEN now() END) RETURNING id",
            (
                channel_id,
                message_id,
                telegram_date,
                asset,
                list(missing),
                raw_text if raw_text is not None else f"🟢Swing Trade\nAtivo: {asset}\nAlvo: 30",
                retired,
            ),
        ).fetchone()
    assert row is not None
    return int(row[0])


def walk(api: Api, path: str) -> list[dict[str, Any]]:
    """Every item of a list endpoint, following next_cursor."""
    items: list[dict[str, Any]] = []
    separator = "&" if "?" in path else "?"
    url = path
    for _ in range(1000):
        response = api.get(url)
        assert response.status == 200, response.body
        page = response.json
        items.extend(page["data"])
        if page["next_cursor"] is None:
            return items
        url = f"{path}{separator}cursor={page['next_cursor']}"
    raise AssertionError("pagination did not end")
