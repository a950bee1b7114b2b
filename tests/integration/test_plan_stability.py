"""A poller's claim and apply cost what their batch holds, whatever the plan cache remembers.

PL/pgSQL caches a generic plan per statement after five calls and keeps it until the table is
analysed again, so a poller connection that started on a fresh database (empty ``signals``,
``signal_events`` and month partition) keeps the plans made for empty tables. Where such a
plan scans (the month's pending index, every active signal of a channel, every follow-up), its
cost grows with every stored post, and a pipeline that falls behind (more pending rows) slows
down further: at 2,000 posts/s the pollers fell to about 500 posts/s within 20 s
(docs/performance.md, "Plans cached on an empty database").

The test reproduces that connection: it warms the plan cache on near-empty tables, stores
tens of thousands of posts, signals and follow-ups, then stores, claims and applies one batch
and counts the rows that read (``pg_stat_user_tables``). A batch
of 100 posts must read a few rows per post, not the tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.conftest import TestDatabase

CHANNEL = -1001649127710
CONSUMER = "plan-stability"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
BATCH = 100
# rows read per post of the batch, over every table: the claim and the apply look up a post's
# key, its message row, its signal and follow-up (a handful of index tuples each); a plan that
# scans reads thousands
ROWS_READ_PER_POST = 20
SIGNAL = {
    "asset": "PETR4",
    "signal_type": "Swing Trade",
    "buy_min": "36.50",
    "buy_max": "37.20",
    "target_1": "39.00",
    "target_2": "41.00",
    "target_final": None,
    "stop": "34.80",
}


@pytest.fixture
def conn(db: TestDatabase) -> Iterator[psycopg.Connection[Any]]:
    # one server connection throughout (not PgBouncer's pool): its plan cache is the subject
    with psycopg.connect(db.direct_dsn, autocommit=True) as connection:
        yield connection


def _posts(first_id: int, count: int, start: datetime) -> list[dict[str, Any]]:
    return [
        {
            "channel_id": CHANNEL,
            "message_id": first_id + n,
            "telegram_date": (start + timedelta(milliseconds=10 * n)).isoformat(),
            "text": f"post {first_id + n}",
        }
        for n in range(count)
    ]


def _result(message_id: int) -> dict[str, Any]:
    """A signal, a follow-up without an asset (it waits unlinked) or chatter, by id."""
    result: dict[str, Any] = {"channel_id": CHANNEL, "message_id": message_id, "error": None}
    match message_id % 10:
        case 0 | 1 | 2:
            result |= {"state": "processed", "signal": SIGNAL, "event": None, "review": None}
        case 3:
            result |= {
                "state": "processed",
                "signal": None,
                "event": {"kind": "target_hit", "target": "1"},
                "review": None,
            }
        case _:
            result |= {"state": "ignored", "signal": None, "event": None, "review": None}
    return result


def _store_claim_apply(conn: psycopg.Connection[Any], first_id: int, count: int) -> None:
    posts = _posts(first_id, count, T0 + timedelta(seconds=first_id / 100))
    conn.execute("SELECT telegram_gateway.bulk_upsert_messages(%s::jsonb)", (json.dumps(posts),))
    ids = [post["message_id"] for post in posts]
    claimed = conn.execute(
        "SELECT count(*) FROM telegram_gateway.claim_messages_by_key(%s, %s, %s, 300)",
        (CONSUMER, [CHANNEL] * len(ids), ids),
    ).fetchone()
    assert claimed == (count,)
    applied = conn.execute(
        "SELECT count(*) FILTER (WHERE applied)"
        " FROM tp_capital.apply_processing_results(%s, %s::jsonb, interval '14 days')",
        (CONSUMER, json.dumps([_result(message_id) for message_id in ids])),
    ).fetchone()
    assert applied == (count,)


def _fill(conn: psycopg.Connection[Any], first_id: int, count: int) -> None:
    """Posts already finished, as a day of a busy channel leaves them; a tenth still pending."""
    for start in range(first_id, first_id + count, 5_000):
        posts = _posts(start, 5_000, T0 + timedelta(seconds=start / 100))
        conn.execute(
            "SELECT telegram_gateway.bulk_upsert_messages(%s::jsonb)", (json.dumps(posts),)
        )
    conn.execute(
        "UPDATE telegram_gateway.messages SET processing_state = 'processed',"
        " processed_at = now() WHERE channel_id = %s AND message_id BETWEEN %s AND %s"
        " AND message_id %% 10 <> 9",
        (CHANNEL, first_id, first_id + count - 1),
    )
    conn.execute(
        "INSERT INTO tp_capital.signals (channel_id, message_id, telegram_date, asset,"
        " signal_type, buy_min, buy_max, target_1, stop, current_stop, raw_text)"
        " SELECT channel_id, message_id, telegram_date, 'PETR4', 'Swing Trade', 36.5, 37.2, 39,"
        " 34.8, 34.8, 'signal' FROM telegram_gateway.messages"
        " WHERE channel_id = %s AND message_id BETWEEN %s AND %s AND message_id %% 10 < 3",
        (CHANNEL, first_id, first_id + count - 1),
    )
    conn.execute(
        "INSERT INTO tp_capital.signal_events (channel_id, message_id, telegram_date, kind,"
        " target, raw_text)"
        " SELECT channel_id, message_id, telegram_date, 'target_hit', '1', 'alvo 1'"
        " FROM telegram_gateway.messages"
        " WHERE channel_id = %s AND message_id BETWEEN %s AND %s AND message_id %% 10 = 3",
        (CHANNEL, first_id, first_id + count - 1),
    )


def _rows_read(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows read so far from each table of the schema (sequential and index fetches).

    The session's pending counters are flushed first (a session flushes at most once a second
    otherwise) and the snapshot of the statistics is dropped, so the figures are current.
    """
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the end of a transaction flushes
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
        " FROM pg_stat_user_tables WHERE schemaname IN ('telegram_gateway', 'tp_capital')"
    ).fetchall()
    return {name: int(read) for name, read in rows}


def test_a_batch_reads_rows_of_its_posts_after_the_tables_grew_under_cached_plans(
    conn: psycopg.Connection[Any],
) -> None:
    for round_number in range(8):  # past the five custom plans: the generic ones are cached
        _store_claim_apply(conn, 1_000 + 10 * round_number, 10)
    _fill(conn, 100_000, 40_000)

    before = _rows_read(conn)
    _store_claim_apply(conn, 200_000, BATCH)
    after = _rows_read(conn)

    read = {name: after[name] - before.get(name, 0) for name in after}
    assert sum(read.values()) <= ROWS_READ_PER_POST * BATCH, {
        name: rows for name, rows in read.items() if rows
    }
