"""The Gateway API over real HTTP, against PostgreSQL (through PgBouncer) and Redis.

Each test gets a fresh migrated database, a flushed Redis and its own server on a free port.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis

from tests.conftest import TestDatabase
from tests.integration.test_api_support import (
    ADMIN_TOKEN,
    BASE_DATE,
    CHANNEL_A,
    CHANNEL_B,
    READ_TOKEN,
    Api,
    insert_signal,
    message,
    running_api,
    store_messages,
    walk,
)
from tgstack.api.app import openapi_document as document
from tgstack.db import Database
from tgstack.models import MessageKey

CHANNEL_C = -1009876543210


@pytest.fixture
def api(db: TestDatabase, redis_client: redis.Redis) -> Iterator[Api]:
    with running_api(db.app_dsn, redis_client=redis_client) as running:
        yield running


def _error(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body)
    assert response.header("Content-Type") == "application/json"
    error = response.json["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["field"] == field, error
    return dict(error)


def _metric(api: Api, name: str, **labels: str) -> float:
    text = api.get("/metrics", token=None).body.decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# Operations endpoints ---------------------------------------------------------------------------


def test_health_is_unauthenticated_and_reports_database_and_redis(api: Api) -> None:
    response = api.get("/health", token=None)
    assert response.status == 200
    assert response.json["status"] == "ok"
    assert response.json["database"] == {"status": "ok", "error": None}
    assert response.json["redis"] == {"status": "ok", "error": None}


def test_metrics_count_requests_by_route_method_and_status(api: Api) -> None:
    api.get("/v1/messages")
    api.get("/v1/messages/-1001649127710/1")
    response = api.get("/metrics", token=None)
    assert response.status == 200
    assert response.header("Content-Type").startswith("text/plain")
    text = response.body.decode()
    assert 'tgstack_api_requests_total{method="GET",route="/v1/messages",status="200"}' in text
    assert (
        'tgstack_api_requests_total{method="GET",'
        'route="/v1/messages/{channel_id}/{message_id}",status="404"}' in text
    )
    assert "tgstack_api_request_seconds_bucket" in text


def test_openapi_document_describes_every_endpoint(api: Api) -> None:
    response = api.get("/openapi.json", token=None)
    assert response.status == 200
    document = response.json
    assert document["openapi"] == "3.1.0"
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations == {
        ("/health", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/messages", "get"),
        ("/v1/messages/{channel_id}/{message_id}", "get"),
        ("/v1/channels", "get"),
        ("/v1/channels", "post"),
        ("/v1/channels/{channel_id}", "get"),
        ("/v1/channels/{channel_id}", "patch"),
        ("/v1/channels/{channel_id}", "delete"),
        ("/v1/signals", "get"),
        ("/v1/signals/{channel_id}/{message_id}", "get"),
        ("/v1/signals/{id}/events", "get"),
        ("/v1/signals/review", "get"),
    }
    listing = document["paths"]["/v1/messages"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "channel_id",
        "status",
        "processing_state",
        "since",
        "until",
        "q",
        "include_deleted",
        "cursor",
        "limit",
    }
    assert {"200", "400", "401", "429", "503"} <= set(listing["responses"])
    assert listing["security"] == [{"bearerAuth": []}]
    signals = document["paths"]["/v1/signals"]["get"]
    assert "status" in {p["name"] for p in signals["parameters"]}
    events = document["paths"]["/v1/signals/{id}/events"]["get"]
    assert {p["name"] for p in events["parameters"]} == {"id", "include_retired", "cursor", "limit"}
    assert {"200", "400", "404"} <= set(events["responses"])
    signal = document["components"]["schemas"]["Signal"]["properties"]
    assert {"id", "status", "current_stop", "result", "status_changed_at"} <= set(signal)
    create = document["paths"]["/v1/channels"]["post"]
    assert {"201", "400", "401", "403", "409", "413", "415"} <= set(create["responses"])


# Messages ---------------------------------------------------------------------------------------


def test_walking_every_page_lists_each_message_once_newest_first(
    api: Api, db: TestDatabase
) -> None:
    # Three channels; many messages share a telegram_date, so ties must be broken stably.
    records = [
        message(channel, mid, minutes=(mid // 3) * 7)
        for channel in (CHANNEL_A, CHANNEL_B, CHANNEL_C)
        for mid in range(1, 48)
    ]
    store_messages(db.app_dsn, records)
    expected = sorted(
        ((r.telegram_date, r.channel_id, r.message_id) for r in records), reverse=True
    )
    for limit in (1, 7, 50, 200):
        items = walk(api, f"/v1/messages?limit={limit}") if limit > 1 else None
        if items is None:  # limit=1 over 141 items: check the first pages only
            first = api.get("/v1/messages?limit=1").json
            assert len(first["data"]) == 1
            assert first["next_cursor"]
            continue
        keys = [(i["channel_id"], i["message_id"]) for i in items]
        assert keys == [(ch, mid) for _, ch, mid in expected]
    one_channel = walk(api, f"/v1/messages?channel_id={CHANNEL_B}&limit=10")
    assert [i["message_id"] for i in one_channel] == list(range(47, 0, -1))


def test_default_limit_is_50_and_the_maximum_200(api: Api, db: TestDatabase) -> None:
    store_messages(db.app_dsn, [message(CHANNEL_A, mid, mid) for mid in range(1, 251)])
    page = api.get("/v1/messages").json
    assert len(page["data"]) == 50
    assert page["limit"] == 50
    assert page["next_cursor"]
    page = api.get("/v1/messages?limit=200").json
    assert len(page["data"]) == 200
    last = api.get(f"/v1/messages?limit=200&cursor={page['next_cursor']}").json
    assert len(last["data"]) == 50
    assert last["next_cursor"] is None


def test_message_filters(api: Api, db: TestDatabase) -> None:
    store_messages(
        db.app_dsn,
        [
            message(CHANNEL_A, 1, 0, "🟢Swing Trade\nAtivo: PETR4\nCompra: 27,50"),
            message(CHANNEL_A, 2, 10, "bom dia a todos"),
            message(CHANNEL_A, 3, 20, "", caption="Gráfico de VALE3 100% ok_"),
            message(CHANNEL_B, 1, 30, "ativo: petr4 de novo"),
            message(CHANNEL_B, 2, 40, "apagada"),
        ],
    )
    with Database(db.app_dsn) as database:
        database.mark_processed([MessageKey(CHANNEL_A, 1)], "tp-capital")
        database.mark_processed([MessageKey(CHANNEL_A, 2)], "tp-capital", "ignored")
        database.update_status(CHANNEL_A, 3, "published")
        database.soft_delete(CHANNEL_B, [2])

    def keys(query: str) -> list[tuple[int, int]]:
        response = api.get(f"/v1/messages?{query}")
        assert response.status == 200, response.body
        return [(i["channel_id"], i["message_id"]) for i in response.json["data"]]

    assert keys(f"channel_id={CHANNEL_A}") == [(CHANNEL_A, 3), (CHANNEL_A, 2), (CHANNEL_A, 1)]
    assert keys("status=published") == [(CHANNEL_A, 3)]
    assert keys("status=published,received") == [
        (CHANNEL_B, 1),
        (CHANNEL_A, 3),
        (CHANNEL_A, 2),
        (CHANNEL_A, 1),
    ]
    assert keys("processing_state=ignored,processed") == [(CHANNEL_A, 2), (CHANNEL_A, 1)]
    assert keys("processing_state=pending") == [(CHANNEL_B, 1), (CHANNEL_A, 3)]
    since = (BASE_DATE + timedelta(minutes=10)).isoformat()
    until = (BASE_DATE + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    assert keys(f"since={since.replace('+', '%2B')}&until={until}") == [
        (CHANNEL_A, 3),
        (CHANNEL_A, 2),
    ]
    # The same instant written with another offset.
    assert keys("since=2024-05-01T09:30:00-03:00") == [(CHANNEL_B, 1)]
    assert keys("q=PETR4") == [(CHANNEL_B, 1), (CHANNEL_A, 1)]
    assert keys("q=vale3") == [(CHANNEL_A, 3)]  # caption, case-insensitive
    assert keys("q=100%25") == [(CHANNEL_A, 3)]  # % and _ match literally
    assert keys("q=ok_") == [(CHANNEL_A, 3)]
    assert keys("q=o%25k") == []
    assert keys("q=ativo&channel_id=-1001234567890") == [(CHANNEL_B, 1)]
    assert (CHANNEL_B, 2) not in keys("")
    assert keys("include_deleted=true&status=deleted") == [(CHANNEL_B, 2)]


def test_text_search_trigram_index_is_opt_in(db: TestDatabase) -> None:
    query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_telegram_messages_api_search'"
    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        assert conn.execute(query).fetchone() is None  # not by default: it slows ingest
        created = conn.execute("SELECT telegram_gateway.create_api_search_index()").fetchone()
        row = conn.execute(query).fetchone()
    assert created == (True,)
    assert row is not None
    assert "gin_trgm_ops" in row[0]


def test_one_message_and_404(api: Api, db: TestDatabase) -> None:
    store_messages(db.app_dsn, [message(CHANNEL_A, 42, 5, "olá", metadata={"k": "v"})])
    response = api.get(f"/v1/messages/{CHANNEL_A}/42")
    assert response.status == 200
    body = response.json
    assert body["text"] == "olá"
    assert body["metadata"] == {"k": "v"}
    assert body["telegram_date"] == "2024-05-01T12:05:00Z"
    error = _error(api.get(f"/v1/messages/{CHANNEL_A}/43"), 404)
    assert error["code"] == "not_found"


def test_a_message_shows_the_post_it_replies_to_as_its_schema_says(
    api: Api, db: TestDatabase
) -> None:
    store_messages(
        db.app_dsn,
        [
            message(CHANNEL_A, 42, 5, "🟢Swing Trade\nAtivo: PETR4"),
            message(CHANNEL_A, 43, 6, "Alvo 1 atingido ✅", reply_to_msg_id=42),
        ],
    )
    reply = api.get(f"/v1/messages/{CHANNEL_A}/43").json
    listed = api.get(f"/v1/messages?channel_id={CHANNEL_A}").json["data"]

    assert reply["reply_to_msg_id"] == 42
    assert {m["message_id"]: m["reply_to_msg_id"] for m in listed} == {42: None, 43: 42}
    message_schema = document()["components"]["schemas"]["Message"]
    assert message_schema["properties"]["reply_to_msg_id"]["type"] == ["integer", "null"]
    assert set(reply) == set(message_schema["properties"])


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/messages?channel_id=123", "channel_id"),
        ("/v1/messages?channel_id=abc", "channel_id"),
        ("/v1/messages?channel_id=-100123456789012345678", "channel_id"),
        ("/v1/messages?since=yesterday", "since"),
        ("/v1/messages?since=2024-05-01T12:00:00", "since"),  # no offset
        ("/v1/messages?until=2024-02-30T00:00:00Z", "until"),
        ("/v1/messages?since=2024-05-02T00:00:00Z&until=2024-05-01T00:00:00Z", "until"),
        ("/v1/messages?limit=0", "limit"),
        ("/v1/messages?limit=201", "limit"),
        ("/v1/messages?limit=-1", "limit"),
        ("/v1/messages?limit=ten", "limit"),
        ("/v1/messages?limit=", "limit"),
        ("/v1/messages?cursor=not-a-cursor", "cursor"),
        ("/v1/messages?cursor=WzEsImMiLC0xMDAxNjQ5MTI3NzEwXQ", "cursor"),  # a channels cursor
        ("/v1/messages?status=sent", "status"),
        ("/v1/messages?processing_state=done", "processing_state"),
        ("/v1/messages?q=", "q"),
        ("/v1/messages?q=%00", "q"),
        ("/v1/messages?include_deleted=yes", "include_deleted"),
        ("/v1/messages?limit=5&limit=6", "limit"),
        ("/v1/messages?chanel_id=-1001649127710", "chanel_id"),
        ("/v1/messages/abc/1", "channel_id"),
        ("/v1/messages/-1001649127710/0", "message_id"),
        ("/v1/messages/-1001649127710/99999999999", "message_id"),
        ("/v1/channels/12", "channel_id"),
        ("/v1/channels?cursor=Zm9v", "cursor"),
        ("/v1/channels?is_active=1", "is_active"),
        ("/v1/signals?asset=PETR4;DROP", "asset"),
        ("/v1/signals?include_retired=maybe", "include_retired"),
        ("/v1/signals/-1001649127710/x", "message_id"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(api: Api, path: str, field: str) -> None:
    error = _error(api.get(path), 400, field)
    assert error["code"] == "bad_parameter"
    assert error["message"].startswith(field)


def test_query_string_that_is_not_utf8_is_400(api: Api) -> None:
    error = _error(api.get("/v1/messages?q=%FF"), 400, None)
    assert error["code"] == "bad_parameter"


# Channels ---------------------------------------------------------------------------------------


def test_channels_list_and_get(api: Api, db: TestDatabase) -> None:
    store_messages(db.app_dsn, [message(CHANNEL_A, 7, 0), message(CHANNEL_B, 9, 0)])
    admin = {"token": ADMIN_TOKEN}
    created = api.request("POST", "/v1/channels", json_body={"channel_id": CHANNEL_C}, **admin)
    assert created.status == 201
    listed = walk(api, "/v1/channels?limit=1")
    assert [c["channel_id"] for c in listed] == sorted([CHANNEL_A, CHANNEL_B, CHANNEL_C])
    one = api.get(f"/v1/channels/{CHANNEL_A}").json
    assert one["last_message_id"] == 7
    assert one["is_active"] is True
    _error(api.get("/v1/channels/-1001111111111"), 404)


def test_admin_creates_updates_and_deactivates_a_channel(api: Api) -> None:
    admin = {"token": ADMIN_TOKEN}
    body = {"channel_id": CHANNEL_C, "title": "TP Capital", "username": "tpcapital"}
    created = api.request("POST", "/v1/channels", json_body=body, **admin)
    assert created.status == 201, created.body
    assert created.header("Location") == f"/v1/channels/{CHANNEL_C}"
    assert created.json["title"] == "TP Capital"
    assert created.json["is_active"] is True
    again = api.request("POST", "/v1/channels", json_body=body, **admin)
    assert _error(again, 409, "channel_id")["code"] == "conflict"

    patched = api.request(
        "PATCH", f"/v1/channels/{CHANNEL_C}", json_body={"title": "TP Capital VIP"}, **admin
    )
    assert patched.status == 200
    assert patched.json["title"] == "TP Capital VIP"
    assert patched.json["username"] == "tpcapital"
    cleared = api.request(
        "PATCH", f"/v1/channels/{CHANNEL_C}", json_body={"username": None}, **admin
    )
    assert cleared.json["username"] is None

    deleted = api.request("DELETE", f"/v1/channels/{CHANNEL_C}", **admin)
    assert deleted.status == 200
    assert deleted.json["is_active"] is False
    assert api.get(f"/v1/channels/{CHANNEL_C}").json["is_active"] is False  # soft
    inactive = api.get("/v1/channels?is_active=false").json["data"]
    assert [c["channel_id"] for c in inactive] == [CHANNEL_C]
    assert api.get("/v1/channels?is_active=true").json["data"] == []
    missing = -1001111111111
    _error(api.request("DELETE", f"/v1/channels/{missing}", **admin), 404)
    _error(api.request("PATCH", f"/v1/channels/{missing}", json_body={"title": "x"}, **admin), 404)


@pytest.mark.parametrize(
    ("method", "body", "field"),
    [
        ("POST", b"{not json", None),
        ("POST", b"", None),
        ("POST", b"[1, 2]", None),
        ("POST", b'"text"', None),
        ("POST", b"\xff\xfe", None),
        ("POST", b'{"channel_id": NaN}', None),
        ("POST", b"{}", "channel_id"),
        ("POST", b'{"channel_id": "-1001649127710"}', "channel_id"),
        ("POST", b'{"channel_id": 1649127710}', "channel_id"),
        ("POST", b'{"channel_id": -1001649127710.5}', "channel_id"),
        ("POST", b'{"channel_id": true}', "channel_id"),
        ("POST", b'{"channel_id": -1001649127710, "title": 5}', "title"),
        ("POST", b'{"channel_id": -1001649127710, "title": ""}', "title"),
        ("POST", b'{"channel_id": -1001649127710, "title": "a\\u0000b"}', "title"),
        ("POST", b'{"channel_id": -1001649127710, "title": "\\ud800"}', "title"),
        ("POST", b'{"channel_id": -1001649127710, "username": "@tp"}', "username"),
        ("POST", b'{"channel_id": -1001649127710, "is_active": "yes"}', "is_active"),
        ("POST", b'{"channel_id": -1001649127710, "owner": "me"}', "owner"),
        ("PATCH", b"{}", None),
        ("PATCH", b'{"is_active": null}', "is_active"),
        ("PATCH", b'{"channel_id": -1001234567890}', "channel_id"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    api: Api, method: str, body: bytes, field: str | None
) -> None:
    path = "/v1/channels" if method == "POST" else f"/v1/channels/{CHANNEL_A}"
    response = api.request(
        method, path, body=body, token=ADMIN_TOKEN, headers={"Content-Type": "application/json"}
    )
    assert _error(response, 400, field)["code"] == "bad_body"


def test_body_must_be_json_and_small(api: Api) -> None:
    text = api.request(
        "POST",
        "/v1/channels",
        body=b"channel_id=1",
        token=ADMIN_TOKEN,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert _error(text, 415)["code"] == "unsupported_media_type"
    huge = json.dumps({"channel_id": CHANNEL_A, "title": "x" * 20_000}).encode()
    response = api.request(
        "POST",
        "/v1/channels",
        body=huge,
        token=ADMIN_TOKEN,
        headers={"Content-Type": "application/json"},
    )
    assert _error(response, 413)["code"] == "body_too_large"


# Signals ----------------------------------------------------------------------------------------


def test_signals_list_filters_pages_and_one(api: Api, db: TestDatabase) -> None:
    for mid in range(1, 13):
        insert_signal(
            db.app_dsn,
            CHANNEL_A if mid % 2 else CHANNEL_B,
            mid,
            "PETR4" if mid % 3 else "VALE3",
            telegram_date=BASE_DATE + timedelta(hours=mid),
            retired=mid == 12,
        )
    listed = walk(api, "/v1/signals?limit=5")
    assert [s["message_id"] for s in listed] == list(range(11, 0, -1))  # 12 is retired
    assert listed[0]["buy_min"] == 27.5
    assert listed[0]["target_1"] == 30.1
    with_retired = walk(api, "/v1/signals?include_retired=true&limit=4")
    assert [s["message_id"] for s in with_retired] == list(range(12, 0, -1))
    vale = walk(api, "/v1/signals?asset=vale3")
    assert [s["message_id"] for s in vale] == [9, 6, 3]
    channel_a = walk(api, f"/v1/signals?channel_id={CHANNEL_A}&limit=2")
    assert [s["message_id"] for s in channel_a] == [11, 9, 7, 5, 3, 1]
    since = walk(api, "/v1/signals?since=2024-05-01T20:00:00Z&until=2024-05-01T22:00:00Z")
    assert [s["message_id"] for s in since] == [9, 8]

    one = api.get(f"/v1/signals/{CHANNEL_A}/3")
    assert one.status == 200
    assert one.json["asset"] == "VALE3"
    assert one.json["telegram_date"] == "2024-05-01T15:00:00Z"
    _error(api.get(f"/v1/signals/{CHANNEL_A}/2"), 404)


# Auth, routing, rate limiting ---------------------------------------------------------------------


def test_missing_or_wrong_token_is_401_with_www_authenticate(api: Api) -> None:
    missing = api.get("/v1/messages", token=None)
    assert _error(missing, 401)["code"] == "unauthorized"
    assert missing.header("WWW-Authenticate") == 'Bearer realm="tgstack"'
    wrong = api.get("/v1/messages", token=READ_TOKEN + "x")
    _error(wrong, 401)
    assert 'error="invalid_token"' in (wrong.header("WWW-Authenticate") or "")
    basic = api.get("/v1/messages", token=None, headers={"Authorization": "Basic dXNlcjpwdw=="})
    _error(basic, 401)
    assert api.get("/v1/messages", token=ADMIN_TOKEN).status == 200  # admin may read


def test_read_token_on_admin_endpoint_is_403(api: Api) -> None:
    for method, path, body in (
        ("POST", "/v1/channels", {"channel_id": CHANNEL_C}),
        ("PATCH", f"/v1/channels/{CHANNEL_A}", {"title": "x"}),
        ("DELETE", f"/v1/channels/{CHANNEL_A}", None),
    ):
        response = api.request(method, path, json_body=body, token=READ_TOKEN)
        assert _error(response, 403)["code"] == "forbidden"
    assert api.get(f"/v1/channels/{CHANNEL_C}").status == 404  # nothing was created


def test_unknown_path_is_404_and_wrong_method_405(api: Api) -> None:
    _error(api.get("/v1/nothing"), 404)
    _error(api.get("/v1/messages/"), 404)
    response = api.request("PUT", "/v1/messages")
    assert _error(response, 405)["code"] == "method_not_allowed"
    assert response.header("Allow") == "GET, HEAD"
    assert api.request("POST", f"/v1/channels/{CHANNEL_A}").header("Allow") == (
        "GET, PATCH, DELETE, HEAD"
    )
    head = api.request("HEAD", "/v1/messages")
    assert head.status == 200
    assert head.body == b""


def test_rate_limit_answers_429_with_retry_after(db: TestDatabase) -> None:
    with running_api(db.app_dsn, rate=0.2, burst=3) as api:
        statuses = [api.get("/v1/channels").status for _ in range(3)]
        assert statuses == [200, 200, 200]
        limited = api.get("/v1/channels")
        assert _error(limited, 429)["code"] == "rate_limited"
        assert int(limited.header("Retry-After") or "0") >= 1
        # Another token has its own bucket; monitoring is never limited.
        assert api.get("/v1/channels", token=ADMIN_TOKEN).status == 200
        assert all(api.get("/health", token=None).status == 200 for _ in range(5))
        assert all(api.get("/metrics", token=None).status == 200 for _ in range(5))
        # Unauthenticated clients are limited by address, before the token check.
        for _ in range(3):
            api.get("/v1/channels", token="nope-" * 5)
        assert api.get("/v1/channels", token=None).status == 429
        assert _metric(api, "tgstack_api_rate_limited_total") >= 2


# Response cache ---------------------------------------------------------------------------------


def test_second_identical_request_is_served_from_redis(
    api: Api, db: TestDatabase, redis_client: redis.Redis
) -> None:
    store_messages(db.app_dsn, [message(CHANNEL_A, mid, mid) for mid in range(1, 4)])
    hits_before = _metric(api, "tgstack_api_cache_total", result="hit")
    first = api.get("/v1/messages?limit=2&channel_id=-1001649127710")
    second = api.get("/v1/messages?channel_id=-1001649127710&limit=02")  # same query, normalized
    assert first.header("X-Cache") == "miss"
    assert second.header("X-Cache") == "hit"
    assert first.body == second.body
    assert _metric(api, "tgstack_api_cache_total", result="hit") == hits_before + 1
    keys = redis_client.keys("tgstack:api:v1:read:*")
    assert len(keys) == 1
    assert 0 < int(redis_client.ttl(keys[0])) <= 30
    # Another scope has its own entries.
    assert (
        api.get("/v1/messages?limit=2&channel_id=-1001649127710", token=ADMIN_TOKEN).header(
            "X-Cache"
        )
        == "miss"
    )


def test_channel_patch_invalidates_cached_answers(api: Api, db: TestDatabase) -> None:
    store_messages(db.app_dsn, [message(CHANNEL_A, 1, 0)])
    path = f"/v1/channels/{CHANNEL_A}"
    assert api.get(path).header("X-Cache") == "miss"
    cached = api.get(path)
    assert cached.header("X-Cache") == "hit"
    assert cached.json["title"] is None
    listed = api.get("/v1/channels")
    assert api.get("/v1/channels").header("X-Cache") == "hit"
    patched = api.request("PATCH", path, json_body={"title": "Renamed"}, token=ADMIN_TOKEN)
    assert patched.status == 200
    fresh = api.get(path)
    assert fresh.header("X-Cache") == "miss"
    assert fresh.json["title"] == "Renamed"
    relisted = api.get("/v1/channels")
    assert relisted.header("X-Cache") == "miss"
    assert relisted.body != listed.body
    assert relisted.json["data"][0]["title"] == "Renamed"
