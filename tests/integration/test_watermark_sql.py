"""The watermark and the hole finder of sql/040_channel_watermarks.sql on a real PostgreSQL,
against the pure model of tgstack.gateway.watermark."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tgstack.db import Database, InvalidInput
from tgstack.gateway.watermark import contiguous_watermark, find_holes
from tgstack.models import MessageRecord, Watermark

CH = -1001649127710
NOW = datetime.now(UTC).replace(microsecond=0)


def post(message_id: int, channel_id: int = CH, **fields: Any) -> MessageRecord:
    fields.setdefault("text", f"post {message_id}")
    when = NOW - timedelta(minutes=10_000 - message_id)
    return MessageRecord.create(channel_id, message_id, when, **fields)


@pytest.fixture
def database(db: Any) -> Iterator[Database]:
    with Database(db.app_dsn, max_size=4) as database:
        yield database


def holes(database: Database, top: int, channel_id: int = CH, limit: int = 1000) -> list[Any]:
    return database.find_holes(channel_id, top, limit)


def test_an_empty_channel_has_no_hole_and_a_watermark_at_its_floor(database: Database) -> None:
    assert holes(database, 0) == []  # no watermark yet, nothing on Telegram
    assert database.init_watermark(CH, 0) == Watermark(0, 0, created=True)
    assert database.advance_watermark(CH, 0) == 0
    assert holes(database, 0) == []
    assert database.init_watermark(CH, 7) == Watermark(0, 0)  # a second floor changes nothing


def test_the_history_before_the_first_stored_post_is_a_hole_down_to_the_floor(
    database: Database,
) -> None:
    database.bulk_upsert([post(96), post(97)])  # live posts, stored before any backfill
    assert holes(database, 100) == [(1, 95), (98, 100)]  # no watermark: the whole history
    database.init_watermark(CH, 80)  # depth 20 below the newest id, 100
    assert holes(database, 100) == [(81, 95), (98, 100)]
    assert database.advance_watermark(CH, 100) == 80  # 81 is neither stored nor absent


def test_holes_between_stored_ids_and_absent_ids(database: Database) -> None:
    database.init_watermark(CH, 0)
    database.bulk_upsert([post(i) for i in (1, 2, 5, 6, 9)])
    assert database.advance_watermark(CH, 12) == 2
    assert holes(database, 12) == [(3, 4), (7, 8), (10, 12)]
    # 4 and 8 deleted, 12 a service message: known absent; 3, 7 and 10 still missing
    assert database.advance_watermark(CH, 12, [4, 8, 12]) == 2
    assert holes(database, 12) == [(3, 3), (7, 7), (10, 11)]
    assert holes(database, 12, limit=2) == [(3, 3), (7, 7)]
    database.bulk_upsert([post(3), post(7)])
    assert database.advance_watermark(CH, 12) == 9
    assert holes(database, 12) == [(10, 11)]
    database.bulk_upsert([post(10), post(11)])
    assert database.advance_watermark(CH, 12) == 12
    assert holes(database, 12) == []


def test_absent_ids_the_watermark_covers_are_pruned_and_it_never_moves_back(
    db: Any, database: Database
) -> None:
    database.init_watermark(CH, 0)
    database.bulk_upsert([post(1), post(3)])
    assert database.advance_watermark(CH, 5, [2, 4, 5]) == 5
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        left = conn.execute("SELECT count(*) FROM telegram_gateway.absent_messages").fetchone()
    assert left == (0,)
    assert database.advance_watermark(CH, 3) == 5  # a lower newest id moves nothing back
    assert database.advance_watermark(CH, 5, [2]) == 5  # replayed: no change
    assert database.watermarks() == {CH: Watermark(0, 5)}


def test_an_id_above_the_newest_may_not_be_recorded_absent(database: Database) -> None:
    database.init_watermark(CH, 0)
    with pytest.raises(InvalidInput, match="absent id 11 is not between 1 and the newest id 10"):
        database.advance_watermark(CH, 10, [3, 11])
    assert holes(database, 10) == [(1, 10)]  # the whole call was refused


def test_the_watermark_covers_only_committed_rows(db: Any, database: Database) -> None:
    database.init_watermark(CH, 0)
    database.bulk_upsert([post(1)])
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        with conn.transaction():  # a batch in flight: inserted, not committed yet
            row = {"channel_id": CH, "message_id": 2, "telegram_date": NOW.isoformat()}
            payload = json.dumps([row])
            conn.execute(
                "SELECT * FROM telegram_gateway.bulk_upsert_messages(%s::jsonb)", (payload,)
            )
            assert database.advance_watermark(CH, 3, [3]) == 1
        assert database.advance_watermark(CH, 3) == 3  # committed now


def test_stored_posts_reads_the_window_with_edits_and_deletions(database: Database) -> None:
    edited = NOW + timedelta(minutes=1)
    database.bulk_upsert([post(i) for i in range(1, 6)])
    assert database.apply_edit(post(3, text="post 3, edited", edit_date=edited))
    database.soft_delete(CH, [4])
    window = database.stored_posts(CH, 2, 4)
    assert sorted(window) == [3, 4]
    assert (window[3].text, window[3].edit_date, window[3].deleted) == (
        "post 3, edited",
        edited,
        False,
    )
    assert window[4].deleted


channel_ids = itertools.count(-1001000000001, -1)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    floor=st.integers(0, 30),
    stored=st.sets(st.integers(1, 80), max_size=40),
    absent=st.sets(st.integers(1, 80), max_size=20),
    top=st.integers(0, 80),
)
def test_the_sql_agrees_with_the_pure_model(
    database: Database, floor: int, stored: set[int], absent: set[int], top: int
) -> None:
    channel_id = next(channel_ids)  # a channel of its own per example
    if stored:
        database.bulk_upsert([post(i, channel_id) for i in sorted(stored)])
    database.init_watermark(channel_id, floor)
    recorded = sorted(i for i in absent if i <= top)
    moved = database.advance_watermark(channel_id, top, recorded)
    expected = contiguous_watermark(floor, stored | set(recorded), top)
    assert moved == expected
    model = find_holes(expected, stored | set(recorded), top)
    assert holes(database, top, channel_id) == [(h.first, h.last) for h in model]
