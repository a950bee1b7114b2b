"""The signal lifecycle in the Gateway API: a signal's status, its follow-up events, the posts
that need review (issue 16), over real HTTP against PostgreSQL (through PgBouncer) and Redis.

The rows are inserted with SQL, as the poller stores them (sql/060_signal_events.sql).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis

from tests.conftest import TestDatabase
from tests.integration.test_api_support import (
    BASE_DATE,
    CHANNEL_A,
    CHANNEL_B,
    Api,
    insert_event,
    insert_review,
    insert_signal,
    running_api,
    walk,
)
from tgstack.api import cursor as cursors
from tgstack.api.queries import (
    EventQuery,
    ReviewQuery,
    SignalQuery,
    signal_events_statement,
    signal_reviews_statement,
    signals_statement,
)

EVENT_FIELDS = {
    "id",
    "channel_id",
    "message_id",
    "telegram_date",
    "kind",
    "asset",
    "target",
    "stop",
    "stop_ref",
    "result",
    "linked_by",
    "raw_text",
    "retired_at",
}
REVIEW_FIELDS = {"id", "channel_id", "message_id", "telegram_date", "asset", "missing", "raw_text"}


@pytest.fixture
def api(db: TestDatabase, redis_client: redis.Redis) -> Iterator[Api]:
    with running_api(db.app_dsn, redis_client=redis_client) as running:
        yield running


def _at(hours: float) -> datetime:
    return BASE_DATE + timedelta(hours=hours)


def _ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["message_id"] for item in items]


def _error(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status == status, (response.status, response.body)
    error = response.json["error"]
    assert error["field"] == field, error
    return dict(error)


# Signals: status, current_stop, result -----------------------------------------------------------


def test_signals_show_their_id_status_current_stop_and_result(api: Api, db: TestDatabase) -> None:
    reached = insert_signal(
        db.app_dsn,
        CHANNEL_A,
        1,
        "PETR4",
        telegram_date=_at(1),
        status="target_1",
        current_stop="27.50",
        status_changed_at=_at(2),
    )
    stopped = insert_signal(
        db.app_dsn,
        CHANNEL_A,
        2,
        "VALE3",
        telegram_date=_at(3),
        status="stopped",
        current_stop="26.00",
        result="loss",
        status_changed_at=_at(4),
    )
    fresh = insert_signal(db.app_dsn, CHANNEL_B, 3, "ITUB4", telegram_date=_at(5))

    one = api.get(f"/v1/signals/{CHANNEL_A}/1").json
    assert one["id"] == reached
    assert (one["status"], one["current_stop"], one["result"]) == ("target_1", 27.5, None)
    assert one["status_changed_at"] == "2024-05-01T14:00:00Z"
    listed = {s["id"]: s for s in api.get("/v1/signals").json["data"]}
    assert listed[stopped]["status"] == "stopped"
    assert listed[stopped]["result"] == "loss"
    assert listed[stopped]["current_stop"] == 26.0
    assert {key: listed[fresh][key] for key in ("status", "current_stop", "result")} == {
        "status": "open",
        "current_stop": None,
        "result": None,
    }
    assert listed[fresh]["status_changed_at"] is None


def test_status_filter_takes_one_status_a_target_or_any_target(api: Api, db: TestDatabase) -> None:
    statuses = {
        1: "open",
        2: "target_1",
        3: "target_2",
        4: "target_10",
        5: "stopped",
        6: "closed",
        7: "cancelled",
        8: "open",
        9: "target_1",  # retired
    }
    for mid, status in statuses.items():
        insert_signal(
            db.app_dsn,
            CHANNEL_B if mid == 8 else CHANNEL_A,
            mid,
            "PETR4",
            telegram_date=_at(mid),
            status=status,
            retired=mid == 9,
        )

    def listed(query: str) -> list[int]:
        return _ids(walk(api, f"/v1/signals?{query}"))

    assert listed("status=open") == [8, 1]
    assert listed(f"status=open&channel_id={CHANNEL_A}") == [1]
    assert listed("status=target_1") == [2]  # not target_10: a status, not a prefix
    assert listed("status=target_1&include_retired=true") == [9, 2]
    assert listed("status=target_10") == [4]
    assert listed("status=target") == [4, 3, 2]
    assert listed("status=target&include_retired=true") == [9, 4, 3, 2]
    assert listed("status=target_3") == []
    assert listed("status=stopped") == [5]
    assert listed("status=closed") == [6]
    assert listed("status=cancelled") == [7]
    assert listed("status=open&asset=vale3") == []
    assert listed("status=target&since=2024-05-01T14:30:00Z&until=2024-05-01T16:00:00Z") == [3]


def test_status_filter_walks_every_page_once_in_order(api: Api, db: TestDatabase) -> None:
    # Four signals share each date, across two channels: ties broken by channel, then message.
    rows: list[tuple[datetime, int, int, str, bool]] = []
    cycle = ("open", "target_1", "target_2", "closed", "open", "stopped", "target_3")
    for mid in range(1, 71):
        channel = CHANNEL_A if mid % 2 else CHANNEL_B
        when = _at(mid // 4)
        status = cycle[mid % len(cycle)]
        retired = mid % 11 == 0
        insert_signal(
            db.app_dsn, channel, mid, "PETR4", telegram_date=when, status=status, retired=retired
        )
        rows.append((when, channel, mid, status, retired))

    def expected(wanted: str, include_retired: bool = False) -> list[int]:
        kept = [
            (when, channel, mid)
            for when, channel, mid, status, retired in rows
            if (status == wanted or (wanted == "target" and status.startswith("target_")))
            and (include_retired or not retired)
        ]
        return [mid for _, _, mid in sorted(kept, reverse=True)]

    for status in ("open", "target", "target_2", "closed"):
        full = expected(status)
        assert len(full) >= 8, status
        for limit in (1, 3, 50):
            assert _ids(walk(api, f"/v1/signals?status={status}&limit={limit}")) == full
    assert _ids(walk(api, "/v1/signals?status=open&include_retired=true&limit=4")) == expected(
        "open", include_retired=True
    )


# A signal's events -------------------------------------------------------------------------------


def test_events_of_a_signal_in_post_order_and_retired_ones_on_request(
    api: Api, db: TestDatabase
) -> None:
    signal = insert_signal(db.app_dsn, CHANNEL_A, 10, "PETR4", telegram_date=_at(0))
    other = insert_signal(db.app_dsn, CHANNEL_A, 20, "VALE3", telegram_date=_at(0.5))
    dsn = db.app_dsn
    insert_event(dsn, signal, CHANNEL_A, 11, "target_hit", telegram_date=_at(1), target="1")
    insert_event(
        dsn, signal, CHANNEL_A, 13, "stop_moved", telegram_date=_at(2), stop="28.10"
    )  # same date as 12, later message: after it
    insert_event(
        dsn,
        signal,
        CHANNEL_A,
        12,
        "stop_moved",
        telegram_date=_at(2),
        stop_ref="entry",
        linked_by="asset",
    )
    insert_event(
        dsn, signal, CHANNEL_A, 14, "target_hit", telegram_date=_at(3), target="2", retired=True
    )
    insert_event(dsn, signal, CHANNEL_A, 15, "closed", telegram_date=_at(4), result="gain")
    insert_event(dsn, other, CHANNEL_A, 21, "stopped", telegram_date=_at(1), asset="VALE3")
    insert_event(dsn, None, CHANNEL_A, 30, "target_hit", telegram_date=_at(1))  # unlinked

    page = api.get(f"/v1/signals/{signal}/events").json
    assert page["next_cursor"] is None
    assert page["limit"] == 50
    events = page["data"]
    assert _ids(events) == [11, 12, 13, 15]
    assert all(set(event) == EVENT_FIELDS for event in events)
    by_message = {event["message_id"]: event for event in events}
    assert by_message[11]["kind"] == "target_hit"
    assert by_message[11]["target"] == "1"
    assert by_message[11]["linked_by"] == "reply"
    assert (by_message[12]["stop"], by_message[12]["stop_ref"]) == (None, "entry")
    assert by_message[12]["linked_by"] == "asset"
    assert (by_message[13]["stop"], by_message[13]["stop_ref"]) == (28.1, None)
    assert by_message[15]["result"] == "gain"
    assert by_message[15]["telegram_date"] == "2024-05-01T16:00:00Z"
    assert by_message[15]["raw_text"] == "PETR4 closed"
    assert all(event["retired_at"] is None for event in events)
    assert all(event["channel_id"] == CHANNEL_A for event in events)

    with_retired = api.get(f"/v1/signals/{signal}/events?include_retired=true").json["data"]
    assert _ids(with_retired) == [11, 12, 13, 14, 15]
    assert with_retired[3]["retired_at"] is not None
    assert _ids(walk(api, f"/v1/signals/{signal}/events?limit=1")) == [11, 12, 13, 15]
    assert _ids(walk(api, f"/v1/signals/{signal}/events?include_retired=true&limit=2")) == [
        11,
        12,
        13,
        14,
        15,
    ]
    assert _ids(api.get(f"/v1/signals/{other}/events").json["data"]) == [21]


def test_a_signal_without_events_is_an_empty_list_and_an_unknown_id_404(
    api: Api, db: TestDatabase
) -> None:
    quiet = insert_signal(db.app_dsn, CHANNEL_A, 1, "PETR4", telegram_date=_at(0))
    assert api.get(f"/v1/signals/{quiet}/events").json == {
        "data": [],
        "next_cursor": None,
        "limit": 50,
    }
    missing = quiet + 1000
    error = _error(api.get(f"/v1/signals/{missing}/events"), 404)
    assert error["code"] == "not_found"
    assert str(missing) in error["message"]
    _error(api.get(f"/v1/signals/{missing}/events?include_retired=true"), 404)


def test_a_retired_signal_still_lists_its_events(api: Api, db: TestDatabase) -> None:
    gone = insert_signal(db.app_dsn, CHANNEL_A, 1, "PETR4", telegram_date=_at(0), retired=True)
    insert_event(db.app_dsn, gone, CHANNEL_A, 2, "stopped", telegram_date=_at(1), result="loss")
    assert api.get("/v1/signals").json["data"] == []
    assert _ids(api.get(f"/v1/signals/{gone}/events").json["data"]) == [2]


def test_event_pages_walk_many_events_once_in_post_order(api: Api, db: TestDatabase) -> None:
    signal = insert_signal(db.app_dsn, CHANNEL_A, 1, "PETR4", telegram_date=_at(0))
    posted: list[tuple[datetime, int, bool]] = []
    for mid in range(2, 40):
        when = _at(1 + (mid * 7 % 5))  # five dates, messages interleaved across them
        retired = mid % 6 == 0
        insert_event(
            db.app_dsn, signal, CHANNEL_A, mid, "stop_moved", telegram_date=when,
            stop=f"{20 + mid}.5", retired=retired,
        )  # fmt: skip
        posted.append((when, mid, retired))
    active = [mid for when, mid, retired in sorted(posted) if not retired]
    everything = [mid for _, mid, _ in sorted(posted)]
    for limit in (1, 4, 200):
        assert _ids(walk(api, f"/v1/signals/{signal}/events?limit={limit}")) == active
    assert _ids(walk(api, f"/v1/signals/{signal}/events?include_retired=true&limit=5")) == (
        everything
    )


# Posts that need review --------------------------------------------------------------------------


def test_reviews_are_open_ones_newest_first_with_filters_and_pages(
    api: Api, db: TestDatabase
) -> None:
    stored: list[tuple[datetime, int, int, bool]] = []
    for mid in range(1, 41):
        channel = CHANNEL_A if mid % 3 else CHANNEL_B
        when = _at(mid // 3)  # three posts share each date
        retired = mid % 7 == 0
        insert_review(
            db.app_dsn,
            channel,
            mid,
            telegram_date=when,
            asset=None if mid == 5 else f"PETR{mid % 9 + 1}",
            missing=("entry", "asset") if mid == 5 else ("entry",),
            retired=retired,
        )
        stored.append((when, channel, mid, retired))

    def expected(keep: Any = lambda when, channel: True) -> list[int]:
        kept = [(w, c, m) for w, c, m, retired in stored if not retired and keep(w, c)]
        return [mid for _, _, mid in sorted(kept, reverse=True)]

    first = api.get("/v1/signals/review?limit=3").json
    assert [set(item) for item in first["data"]] == [REVIEW_FIELDS] * 3
    assert first["next_cursor"]
    for limit in (1, 7, 200):
        assert _ids(walk(api, f"/v1/signals/review?limit={limit}")) == expected()
    assert _ids(walk(api, f"/v1/signals/review?channel_id={CHANNEL_B}&limit=4")) == expected(
        lambda when, channel: channel == CHANNEL_B
    )
    since, until = _at(4), _at(8)
    assert _ids(
        walk(api, "/v1/signals/review?since=2024-05-01T16:00:00Z&until=2024-05-01T20:00:00Z")
    ) == expected(lambda when, channel: since <= when < until)

    five = next(item for item in walk(api, "/v1/signals/review") if item["message_id"] == 5)
    assert five["asset"] is None
    assert five["missing"] == ["entry", "asset"]
    assert five["channel_id"] == CHANNEL_A
    assert five["telegram_date"] == "2024-05-01T13:00:00Z"
    assert five["raw_text"].startswith("🟢Swing Trade")


def test_no_review_is_an_empty_page(api: Api, db: TestDatabase) -> None:
    insert_review(db.app_dsn, CHANNEL_A, 1, telegram_date=_at(0), retired=True)
    assert api.get("/v1/signals/review").json == {"data": [], "next_cursor": None, "limit": 50}


# Routing and bad input ---------------------------------------------------------------------------


def test_the_new_paths_never_reach_the_one_signal_route(api: Api, db: TestDatabase) -> None:
    signal = insert_signal(db.app_dsn, CHANNEL_A, 7, "PETR4", telegram_date=_at(0))
    insert_review(db.app_dsn, CHANNEL_A, 8, telegram_date=_at(1))
    assert api.get(f"/v1/signals/{signal}/events").status == 200
    assert _ids(api.get("/v1/signals/review").json["data"]) == [8]
    assert api.get(f"/v1/signals/{CHANNEL_A}/7").json["id"] == signal
    wrong = api.request("POST", f"/v1/signals/{signal}/events")
    assert _error(wrong, 405)["code"] == "method_not_allowed"
    assert wrong.header("Allow") == "GET, HEAD"


_SIGNALS_CURSOR = cursors.encode_dated("s", BASE_DATE, CHANNEL_A, 5)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/signals?status=pending", "status"),
        ("/v1/signals?status=target_0", "status"),
        ("/v1/signals?status=target_final", "status"),
        ("/v1/signals?status=open,closed", "status"),
        ("/v1/signals?status=", "status"),
        ("/v1/signals?status=OPEN", "status"),
        ("/v1/signals/0/events", "id"),
        ("/v1/signals/abc/events", "id"),
        ("/v1/signals/-1001649127710/events", "id"),
        ("/v1/signals/99999999999999999999/events", "id"),
        ("/v1/signals/review/events", "id"),
        ("/v1/signals/1/events?include_retired=1", "include_retired"),
        ("/v1/signals/1/events?limit=0", "limit"),
        (f"/v1/signals/1/events?cursor={_SIGNALS_CURSOR}", "cursor"),
        ("/v1/signals/1/events?status=open", "status"),
        ("/v1/signals/review?channel_id=5", "channel_id"),
        ("/v1/signals/review?since=yesterday", "since"),
        ("/v1/signals/review?since=2024-05-02T00:00:00Z&until=2024-05-01T00:00:00Z", "until"),
        ("/v1/signals/review?limit=201", "limit"),
        ("/v1/signals/review?include_retired=true", "include_retired"),
        (f"/v1/signals/review?cursor={_SIGNALS_CURSOR}", "cursor"),
    ],
)
def test_bad_parameters_of_the_lifecycle_endpoints_are_400_naming_the_field(
    api: Api, path: str, field: str
) -> None:
    error = _error(api.get(path), 400, field)
    assert error["code"] == "bad_parameter"
    assert error["message"].startswith(field)


def test_a_bad_status_says_which_values_are_allowed(api: Api) -> None:
    message = _error(api.get("/v1/signals?status=won"), 400, "status")["message"]
    assert message == (
        "status: must be one of open, target (any target reached), target_N (e.g. target_2), "
        "stopped, closed, cancelled; got 'won'"
    )


# The plans: the lists read their indexes ---------------------------------------------------------


def _plan_nodes(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> list[dict]:
    row = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
    assert row is not None
    found: list[dict[str, Any]] = []
    pending = [row[0][0]["Plan"]]
    while pending:
        node = pending.pop()
        found.append(node)
        pending.extend(node.get("Plans", []))
    return found


def _shape(nodes: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    types = {node["Node Type"] for node in nodes}
    return types, {node["Index Name"] for node in nodes if "Index Name" in node}


def test_the_lifecycle_lists_read_their_indexes(db: TestDatabase) -> None:
    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        # 30,000 signals, 1 in 50 open; 60,000 events; 30,000 reviews, most of them retired.
        conn.execute(
            "INSERT INTO tp_capital.signals (channel_id, message_id, telegram_date, asset,"
            " signal_type, buy_min, buy_max, raw_text, status)"
            " SELECT -1001649127710 - (n % 7), n, timestamptz '2024-01-01' + n * interval '1 min',"
            " 'PETR4', 'Swing Trade', 10, 11, 'x',"
            " CASE WHEN n % 50 = 0 THEN 'open' WHEN n % 3 = 0 THEN 'stopped' ELSE 'closed' END"
            " FROM generate_series(1, 30000) n"
        )
        conn.execute(
            "INSERT INTO tp_capital.signal_events (channel_id, message_id, telegram_date, kind,"
            " signal_id, linked_by, raw_text)"
            " SELECT s.channel_id, s.message_id + 1000000 * k, s.telegram_date + k * interval '1h',"
            " 'target_hit', s.id, 'reply', 'x'"
            " FROM tp_capital.signals s, generate_series(1, 2) k"
        )
        conn.execute(
            "INSERT INTO tp_capital.signal_reviews (channel_id, message_id, telegram_date,"
            " raw_text, retired_at)"
            " SELECT -1001649127710 - (n % 7), n, timestamptz '2024-01-01' + n * interval '1 min',"
            " 'x', CASE WHEN n % 20 <> 0 THEN now() END FROM generate_series(1, 30000) n"
        )
        conn.execute("ANALYZE tp_capital.signals, tp_capital.signal_events")
        conn.execute("ANALYZE tp_capital.signal_reviews")
        middle = (datetime.fromisoformat("2024-01-11T00:00:00+00:00"), -1001649127710, 1)
        signal_id = conn.execute("SELECT min(id) FROM tp_capital.signals").fetchone()

        for after in (None, middle):
            types, indexes = _shape(
                _plan_nodes(conn, *signals_statement(SignalQuery(status="open", after=after)))
            )
            assert "idx_signals_status_date" in indexes, (after, indexes)
            assert {"Seq Scan", "Sort", "Bitmap Heap Scan"}.isdisjoint(types), types

            types, indexes = _shape(
                _plan_nodes(conn, *signal_reviews_statement(ReviewQuery(after=after)))
            )
            assert indexes == {"idx_signal_reviews_open"}, indexes
            assert {"Seq Scan", "Sort"}.isdisjoint(types), types

        assert signal_id is not None
        types, indexes = _shape(
            _plan_nodes(conn, *signal_events_statement(EventQuery(signal_id=signal_id[0])))
        )
        assert indexes == {"signals_pkey", "idx_signal_events_signal"}, indexes
        assert "Seq Scan" not in types
