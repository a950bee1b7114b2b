"""The SQL functions and views of sql/, called as the runtime calls them: through PgBouncer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tgstack.db import MESSAGE_EXISTS_SQL
from tgstack.models import MESSAGE_STATUSES, PROCESSING_STATES

CH = -1001649127710
CH2 = -1001649127711
NOW = datetime.now(UTC).replace(microsecond=0)
Conn = psycopg.Connection[tuple[Any, ...]]


def msg(
    message_id: int, *, channel_id: int = CH, date: datetime | None = None, **extra: Any
) -> dict[str, Any]:
    at = date or NOW - timedelta(hours=1) + timedelta(seconds=message_id)
    return {
        "channel_id": channel_id,
        "message_id": message_id,
        "telegram_date": at.isoformat(),
        "text": f"post {message_id}",
        **extra,
    }


def upsert(conn: Conn, messages: list[dict[str, Any]]) -> list[tuple[int, int, bool]]:
    return conn.execute(
        "SELECT * FROM telegram_gateway.bulk_upsert_messages(%s::jsonb)",
        (json.dumps(messages),),
    ).fetchall()


def value(conn: Conn, query: str, *params: Any) -> Any:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


def count_messages(conn: Conn) -> int:
    return int(value(conn, "SELECT count(*) FROM telegram_gateway.messages"))


def poll(conn: Conn, channel_id: int | None = None, limit: int = 100) -> list[tuple[int, int]]:
    return conn.execute(
        "SELECT channel_id, message_id FROM"
        " telegram_gateway.get_unprocessed_messages_optimized(%s, %s)",
        (channel_id, limit),
    ).fetchall()


def mark(
    conn: Conn, keys: list[tuple[int, int]], by: str = "tp-capital", state: str = "processed"
) -> int:
    return int(
        value(
            conn,
            "SELECT telegram_gateway.mark_batch_as_processed(%s::bigint[], %s::bigint[], %s, %s)",
            [k[0] for k in keys],
            [k[1] for k in keys],
            by,
            state,
        )
    )


def row(conn: Conn, message_id: int, columns: str, channel_id: int = CH) -> tuple[Any, ...]:
    found = conn.execute(
        f"SELECT {columns} FROM telegram_gateway.messages"
        " WHERE channel_id = %s AND message_id = %s",
        (channel_id, message_id),
    ).fetchone()
    assert found is not None
    return found


@pytest.fixture
def conn(db: Any) -> Iterator[Conn]:
    """The application role through PgBouncer (transaction pooling), like the runtime."""
    with psycopg.connect(db.app_dsn, autocommit=True, prepare_threshold=None) as connection:
        yield connection


@pytest.fixture
def admin(db: Any) -> Iterator[Conn]:
    """A superuser straight to PostgreSQL, for arranging rows the API cannot (old claims...)."""
    with psycopg.connect(db.superuser_dsn, autocommit=True) as connection:
        yield connection


# bulk_upsert_messages -------------------------------------------------------------------------


def test_bulk_upsert_reports_each_element_in_input_order(conn: Conn) -> None:
    result = upsert(conn, [msg(2), msg(1, channel_id=CH2), msg(3)])

    assert result == [(CH, 2, True), (CH2, 1, True), (CH, 3, True)]
    assert count_messages(conn) == 3


def test_bulk_upsert_twice_stores_each_message_once(conn: Conn) -> None:
    batch = [msg(1), msg(2)]
    upsert(conn, batch)

    again = upsert(conn, [*batch, msg(3)])

    assert again == [(CH, 1, False), (CH, 2, False), (CH, 3, True)]
    assert count_messages(conn) == 3


def test_duplicate_with_a_different_telegram_date_is_not_stored_again(conn: Conn) -> None:
    upsert(conn, [msg(1, date=NOW - timedelta(days=40))])

    result = upsert(conn, [msg(1, date=NOW, text="replayed with another date")])

    assert result == [(CH, 1, False)]
    assert count_messages(conn) == 1
    assert row(conn, 1, "text") == ("post 1",)


def test_repeats_within_one_batch_store_the_first_occurrence(conn: Conn) -> None:
    result = upsert(conn, [msg(1, text="first"), msg(1, text="second", date=NOW)])

    assert result == [(CH, 1, True), (CH, 1, False)]
    assert row(conn, 1, "text") == ("first",)


def test_concurrent_upserts_of_one_message_with_different_dates_store_one_row(
    db: Any, conn: Conn
) -> None:
    outcome: list[Any] = []
    with psycopg.connect(db.direct_dsn) as holder:  # a transaction left open
        holder.execute(
            "SELECT * FROM telegram_gateway.bulk_upsert_messages(%s::jsonb)",
            (json.dumps([msg(5, date=NOW - timedelta(days=3))]),),
        )
        racer = threading.Thread(target=lambda: outcome.append(upsert(conn, [msg(5, date=NOW)])))
        racer.start()
        time.sleep(0.5)
        assert racer.is_alive(), "the second inserter must wait for the first to finish"
        holder.commit()
    racer.join(10)

    assert outcome == [[(CH, 5, False)]]
    assert count_messages(conn) == 1


def test_bulk_upsert_creates_monthly_partitions_on_demand(conn: Conn) -> None:
    upsert(
        conn,
        [
            msg(1, date=datetime(2024, 1, 31, 23, 59, tzinfo=UTC)),
            msg(2, date=datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
        ],
    )

    partitions = conn.execute(
        "SELECT partition::text, range_start, range_end"
        " FROM telegram_gateway.message_partitions() ORDER BY range_start"
    ).fetchall()
    assert [p[0] for p in partitions] == [
        "telegram_gateway.messages_y2024m01",
        "telegram_gateway.messages_y2024m03",
    ]
    assert partitions[0][1] == datetime(2024, 1, 1, tzinfo=UTC)
    assert partitions[0][2] == datetime(2024, 2, 1, tzinfo=UTC)


def test_ensure_partitions_creates_each_month_once(conn: Conn) -> None:
    ensure = "SELECT telegram_gateway.ensure_partitions(%s, %s)"
    start, end = datetime(2025, 11, 15, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)

    assert value(conn, ensure, start, end) == 4  # Nov, Dec, Jan, Feb
    assert value(conn, ensure, start, end) == 0
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="more than 20 years"):
        conn.execute(ensure, (start, start + timedelta(days=366 * 21)))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_from <= p_to"):
        conn.execute(ensure, (end, start))


def test_a_writer_waiting_for_a_partition_another_creates_finds_it_created(db: Any) -> None:
    """Two writers of the same new month: the one that waited sees the partition, no error."""
    ensure = "SELECT telegram_gateway.ensure_partitions(%s, %s)"
    month = datetime(2023, 3, 10, tzinfo=UTC)
    outcome: list[object] = []
    with (
        psycopg.connect(db.direct_dsn) as first,
        psycopg.connect(db.direct_dsn, autocommit=True) as second,
    ):
        assert value(first, ensure, month, month) == 1  # created, lock held, not committed

        def wait_for_the_lock() -> None:
            try:
                outcome.append(value(second, ensure, month, month))
            except psycopg.Error as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait_for_the_lock)
        waiter.start()
        time.sleep(0.5)  # the waiter is blocked on the advisory lock
        assert outcome == []
        first.commit()
        waiter.join(10)

    assert outcome == [0]


def test_partition_bounds_are_utc_months_whatever_the_session_time_zone(db: Any) -> None:
    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'America/Sao_Paulo'")
        upsert(conn, [msg(1, date=datetime(2024, 6, 30, 23, 30, tzinfo=UTC))])
        bounds = conn.execute(
            "SELECT range_start AT TIME ZONE 'UTC' FROM telegram_gateway.message_partitions()"
        ).fetchall()
    assert bounds == [(datetime(2024, 6, 1),)]


def test_bulk_upsert_registers_channels_and_only_advances_cursors(conn: Conn) -> None:
    upsert(conn, [msg(10), msg(12, channel_id=CH2)])
    upsert(conn, [msg(4)])  # an older message backfilled later

    cursors = conn.execute(
        "SELECT channel_id, last_message_id FROM"
        " telegram_gateway.channel_cursors ORDER BY channel_id"
    ).fetchall()
    channels = conn.execute(
        "SELECT channel_id, is_active FROM telegram_gateway.channels ORDER BY channel_id"
    ).fetchall()
    assert cursors == [(CH2, 12), (CH, 10)]
    assert channels == [(CH2, True), (CH, True)]


def test_duplicates_do_not_move_the_cursor_date(conn: Conn) -> None:
    upsert(conn, [msg(1, date=NOW - timedelta(days=1))])
    upsert(conn, [msg(1, date=NOW + timedelta(days=5))])

    assert value(conn, "SELECT last_message_date FROM telegram_gateway.channel_cursors") == (
        NOW - timedelta(days=1)
    )


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        ({"channel_id": 1649127710}, r"messages\[1\]: channel_id 1649127710 is out of range"),
        ({"channel_id": -1649127710}, r"messages\[1\]: channel_id -1649127710 is out of range"),
        ({"message_id": 0}, r"messages\[1\]: message_id 0 is out of range"),
        ({"message_id": 2**31}, r"messages\[1\]: message_id 2147483648 is out of range"),
    ],
)
def test_bulk_upsert_rejects_out_of_range_ids_naming_the_element(
    conn: Conn, bad: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=pattern):
        upsert(conn, [msg(1), {**msg(2), **bad}])
    assert count_messages(conn) == 0


@pytest.mark.parametrize(
    ("bad", "error", "pattern"),
    [
        ({"status": "sent"}, psycopg.errors.InvalidParameterValue, "unknown status 'sent'"),
        (
            {"processing_state": "done"},
            psycopg.errors.InvalidParameterValue,
            "unknown processing state 'done'",
        ),
        (
            {"metadata": [1, 2]},
            psycopg.errors.InvalidParameterValue,
            "metadata must be a JSON object, got array",
        ),
        (
            {"telegram_date": None},
            psycopg.errors.NullValueNotAllowed,
            "telegram_date must not be null",
        ),
        (
            {"telegram_date": "2012-01-01T00:00:00+00:00"},
            psycopg.errors.DatetimeFieldOverflow,
            "before Telegram existed",
        ),
    ],
)
def test_bulk_upsert_rejects_invalid_fields_with_clear_errors(
    conn: Conn, bad: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        upsert(conn, [{**msg(1), **bad}])
    assert count_messages(conn) == 0


def test_bulk_upsert_rejects_anything_but_an_array(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"expected a JSON array"):
        conn.execute("SELECT * FROM telegram_gateway.bulk_upsert_messages('{}'::jsonb)")
    empty = conn.execute("SELECT * FROM telegram_gateway.bulk_upsert_messages('[]')")
    assert empty.fetchall() == []


def test_every_model_status_and_state_is_accepted(conn: Conn) -> None:
    batch = [msg(i + 1, status=status) for i, status in enumerate(MESSAGE_STATUSES)]
    batch += [msg(100 + i, processing_state=state) for i, state in enumerate(PROCESSING_STATES)]

    assert all(inserted for _, _, inserted in upsert(conn, batch))
    assert {r[0] for r in conn.execute("SELECT status FROM telegram_gateway.messages")} == set(
        MESSAGE_STATUSES
    )


def test_legacy_rows_can_be_imported_already_processed(conn: Conn) -> None:
    upsert(
        conn, [msg(1, processing_state="processed", metadata={"processed_by": "legacy"}), msg(2)]
    )

    assert poll(conn) == [(CH, 2)]
    assert row(conn, 1, "processed_at IS NOT NULL, metadata->>'processed_by'") == (True, "legacy")


# Polling and claims ---------------------------------------------------------------------------


def test_polling_returns_pending_messages_oldest_first(conn: Conn) -> None:
    upsert(
        conn,
        [
            msg(3, date=NOW - timedelta(minutes=1)),
            msg(9, channel_id=CH2, date=NOW - timedelta(minutes=5)),
            msg(1, date=NOW - timedelta(minutes=3)),
            msg(2, date=NOW - timedelta(days=35)),
        ],
    )

    assert poll(conn) == [(CH, 2), (CH2, 9), (CH, 1), (CH, 3)]
    assert poll(conn, CH) == [(CH, 2), (CH, 1), (CH, 3)]
    assert poll(conn, CH, limit=2) == [(CH, 2), (CH, 1)]
    assert poll(conn, CH2) == [(CH2, 9)]


def test_polling_skips_processed_and_deleted_messages(conn: Conn) -> None:
    upsert(conn, [msg(1), msg(2), msg(3), msg(4)])
    mark(conn, [(CH, 1)])
    mark(conn, [(CH, 2)], state="ignored")
    conn.execute("SELECT telegram_gateway.soft_delete_messages(%s, %s::bigint[])", (CH, [3]))

    assert poll(conn) == [(CH, 4)]


@pytest.mark.parametrize("limit", [0, -1, 10_001])
def test_polling_rejects_a_limit_out_of_range(conn: Conn, limit: int) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"limit must be between"):
        poll(conn, None, limit)


def test_polling_rejects_an_unmarked_channel_id(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=r"channel_id 42"):
        poll(conn, 42)


def test_claims_hand_each_message_to_one_consumer(conn: Conn) -> None:
    upsert(conn, [msg(i) for i in range(1, 6)])
    claim = (
        "SELECT message_id, claimed_by, processing_state, process_attempts FROM"
        " telegram_gateway.claim_unprocessed_messages(%s, %s, 60)"
    )

    first = conn.execute(claim, ("poller-a", 3)).fetchall()
    second = conn.execute(claim, ("poller-b", 10)).fetchall()

    assert first == [(i, "poller-a", "processing", 1) for i in (1, 2, 3)]
    assert second == [(i, "poller-b", "processing", 1) for i in (4, 5)]
    assert poll(conn) == []


def test_expired_claims_return_to_pending_then_fail_after_max_attempts(
    conn: Conn, admin: Conn
) -> None:
    upsert(conn, [msg(1)])
    release = "SELECT telegram_gateway.release_expired_claims(2)"
    expire = (
        "UPDATE telegram_gateway.messages SET claim_expires_at = now() - interval '1 s'"
        " WHERE processing_state = 'processing'"
    )

    conn.execute("SELECT telegram_gateway.claim_unprocessed_messages('p', 10, 60)")
    assert value(conn, release) == 0  # lease still running
    admin.execute(expire)
    assert value(conn, release) == 1
    assert poll(conn) == [(CH, 1)]

    conn.execute("SELECT telegram_gateway.claim_unprocessed_messages('p', 10, 60)")
    admin.execute(expire)
    assert value(conn, release) == 1
    assert row(conn, 1, "processing_state, claimed_by, last_error") == (
        "failed",
        None,
        "claim by p expired after 2 attempts",
    )


# Processing marks -----------------------------------------------------------------------------


def test_mark_batch_as_processed_is_idempotent(conn: Conn) -> None:
    upsert(conn, [msg(1), msg(2), msg(3)])

    first = mark(conn, [(CH, 1), (CH, 2), (CH, 99)])
    again = mark(conn, [(CH, 1), (CH, 2)])

    assert (first, again) == (2, 0)
    assert row(
        conn, 1, "processing_state, metadata->>'processed_by', processed_at IS NOT NULL"
    ) == ("processed", "tp-capital", True)
    assert poll(conn) == [(CH, 3)]


def test_mark_batch_as_processed_keeps_other_metadata(conn: Conn) -> None:
    upsert(conn, [msg(1, metadata={"views": 10})])
    mark(conn, [(CH, 1)], state="ignored")

    assert row(conn, 1, "metadata") == ({"views": 10, "processed_by": "tp-capital"},)


def test_mark_batch_as_processed_rejects_bad_input(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"unknown processing state"):
        mark(conn, [(CH, 1)], state="done")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"processed_by"):
        mark(conn, [(CH, 1)], by="")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"2 channel ids but 1"):
        conn.execute(
            "SELECT telegram_gateway.mark_batch_as_processed("
            "ARRAY[%s, %s]::bigint[], ARRAY[1]::bigint[], 'x')",
            (CH, CH),
        )
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=r"message_id 0"):
        mark(conn, [(CH, 0)])


# Publishing status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "column"),
    [
        ("published", "published_at"),
        ("failed", "failed_at"),
        ("queued", "queued_at"),
        ("deleted", "deleted_at"),
    ],
)
def test_upsert_message_status_sets_the_matching_timestamp(
    conn: Conn, status: str, column: str
) -> None:
    upsert(conn, [msg(1)])

    changed = value(conn, "SELECT telegram_gateway.upsert_message_status(%s, 1, %s)", CH, status)

    assert changed is True
    assert row(conn, 1, f"status, {column} IS NOT NULL") == (status, True)


def test_setting_the_same_status_again_changes_nothing(conn: Conn) -> None:
    upsert(conn, [msg(1)])
    set_status = "SELECT telegram_gateway.upsert_message_status(%s, 1, 'published')"
    value(conn, set_status, CH)
    first = row(conn, 1, "published_at, updated_at, publish_attempts")

    assert value(conn, set_status, CH) is True
    assert row(conn, 1, "published_at, updated_at, publish_attempts") == first
    assert first[2] == 1


def test_upsert_message_status_of_a_missing_message_is_false(conn: Conn) -> None:
    assert (
        value(conn, "SELECT telegram_gateway.upsert_message_status(%s, 5, 'queued')", CH) is False
    )


def test_upsert_message_status_rejects_unknown_status_and_bad_ids(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"unknown status 'sent'"):
        conn.execute("SELECT telegram_gateway.upsert_message_status(%s, 1, 'sent')", (CH,))
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=r"channel_id 5"):
        conn.execute("SELECT telegram_gateway.upsert_message_status(5, 1, 'queued')")
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=r"message_id -3"):
        conn.execute("SELECT telegram_gateway.upsert_message_status(%s, -3, 'queued')", (CH,))


def test_mark_batch_as_published_is_idempotent_and_leaves_deleted_alone(conn: Conn) -> None:
    upsert(conn, [msg(1), msg(2), msg(3)])
    conn.execute("SELECT telegram_gateway.soft_delete_messages(%s, ARRAY[3]::bigint[])", (CH,))
    publish = (
        "SELECT telegram_gateway.mark_batch_as_published("
        "ARRAY[%s, %s, %s]::bigint[], ARRAY[1, 2, 3]::bigint[])"
    )

    assert value(conn, publish, CH, CH, CH) == 3
    assert value(conn, publish, CH, CH, CH) == 0
    statuses = conn.execute(
        "SELECT message_id, status, published_at IS NOT NULL, publish_attempts FROM"
        " telegram_gateway.message_publish_status ORDER BY 1"
    ).fetchall()
    assert statuses == [
        (1, "published", True, 1),
        (2, "published", True, 1),
        (3, "deleted", True, 1),
    ]


def test_mark_batch_as_published_leaves_the_message_row_to_the_poller(conn: Conn) -> None:
    """The publish state lives in message_outbox (sql/050): marking writes no message row, so
    it never waits for (or deadlocks with) the poller's claim and apply on that row."""
    upsert(conn, [msg(1), msg(2)])
    row_versions = "SELECT message_id, xmin::text FROM telegram_gateway.messages ORDER BY 1"
    before = conn.execute(row_versions).fetchall()

    value(
        conn,
        "SELECT telegram_gateway.mark_batch_as_published(%s::bigint[], %s::bigint[])",
        [CH, CH],
        [2, 1],
    )

    assert conn.execute(row_versions).fetchall() == before
    published = conn.execute(
        "SELECT message_id FROM telegram_gateway.message_outbox"
        " WHERE published_at IS NOT NULL ORDER BY 1"
    ).fetchall()
    assert published == [(1,), (2,)]


def test_outbox_lists_unpublished_messages_past_a_minimum_age(conn: Conn) -> None:
    upsert(
        conn,
        [
            msg(1, received_at=(NOW - timedelta(minutes=5)).isoformat()),
            msg(2, received_at=(NOW - timedelta(minutes=4)).isoformat()),
            msg(3),
        ],
    )
    value(conn, "SELECT telegram_gateway.upsert_message_status(%s, 2, 'published')", CH)
    outbox = "SELECT message_id FROM telegram_gateway.get_unpublished_messages(%s, 100)"

    assert conn.execute(outbox, (60,)).fetchall() == [(1,)]
    assert conn.execute(outbox, (0,)).fetchall() == [(1,), (3,)]


# Edits and deletes ----------------------------------------------------------------------------


def edit(conn: Conn, message_id: int, at: datetime, text: str, **extra: Any) -> bool:
    return bool(
        value(
            conn,
            "SELECT telegram_gateway.apply_message_edit(%s, %s, %s, %s, p_metadata => %s::jsonb)",
            CH,
            message_id,
            at,
            text,
            json.dumps(extra.get("metadata", {})),
        )
    )


def test_an_edit_updates_the_message_and_keeps_the_previous_text(conn: Conn) -> None:
    upsert(conn, [msg(1, text="Compra: 10,00")])

    applied = edit(conn, 1, NOW, "Compra: 10,50")

    assert applied
    assert row(conn, 1, "text, edit_date, edit_count") == ("Compra: 10,50", NOW, 1)
    history = conn.execute(
        "SELECT edit_date, previous_text, text FROM telegram_gateway.message_edits"
    ).fetchall()
    assert history == [(NOW, "Compra: 10,00", "Compra: 10,50")]


def test_replaying_the_same_or_an_older_edit_changes_nothing(conn: Conn) -> None:
    upsert(conn, [msg(1, text="v1")])
    edit(conn, 1, NOW, "v2")

    assert not edit(conn, 1, NOW, "v2")
    assert not edit(conn, 1, NOW - timedelta(minutes=1), "v1.5")
    assert row(conn, 1, "text, edit_count") == ("v2", 1)
    assert value(conn, "SELECT count(*) FROM telegram_gateway.message_edits") == 1


def test_an_edit_that_changes_no_content_changes_nothing(conn: Conn) -> None:
    upsert(conn, [msg(1, text="same")])

    assert not edit(conn, 1, NOW, "same", metadata={"views": 5})
    assert row(conn, 1, "edit_date, edit_count, metadata") == (None, 0, {})
    assert value(conn, "SELECT count(*) FROM telegram_gateway.message_edits") == 0


def test_an_edit_of_an_unknown_message_is_not_applied(conn: Conn) -> None:
    assert not edit(conn, 77, NOW, "nothing to edit")


def test_an_edit_drops_the_old_sanitising_note_and_keeps_the_consumer_mark(conn: Conn) -> None:
    upsert(conn, [msg(1, metadata={"original_text_b64": "AAA=", "views": 1})])
    mark(conn, [(CH, 1)])

    edit(conn, 1, NOW, "clean now", metadata={"views": 2, "processed_by": "intruder"})

    assert row(conn, 1, "metadata") == ({"views": 2, "processed_by": "tp-capital"},)


def test_soft_delete_marks_messages_once(conn: Conn) -> None:
    upsert(conn, [msg(1), msg(2)])
    delete = "SELECT telegram_gateway.soft_delete_messages(%s, %s::bigint[])"

    assert value(conn, delete, CH, [1, 2, 3]) == 2
    assert value(conn, delete, CH, [1, 2]) == 0
    assert row(conn, 1, "status, deleted_at IS NOT NULL") == ("deleted", True)
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match=r"message_id 0"):
        conn.execute(delete, (CH, [0]))


# Retention ------------------------------------------------------------------------------------


def test_cleanup_removes_old_finished_messages_only(conn: Conn) -> None:
    old = NOW - timedelta(days=60)
    upsert(conn, [msg(1, date=old), msg(2, date=old), msg(3, date=old), msg(4, date=old), msg(5)])
    mark(conn, [(CH, 1), (CH, 5)])
    mark(conn, [(CH, 2)], state="failed")
    conn.execute("SELECT telegram_gateway.claim_unprocessed_messages('p', 1, 60, %s)", (CH,))
    # 3 is now processing (oldest pending), 4 stays pending

    removed = value(conn, "SELECT telegram_gateway.cleanup_old_messages(30)")

    left = conn.execute(
        "SELECT message_id, processing_state FROM telegram_gateway.messages ORDER BY 1"
    ).fetchall()
    assert removed == 2
    assert left == [(3, "processing"), (4, "pending"), (5, "processed")]
    keys = conn.execute("SELECT message_id FROM telegram_gateway.message_keys ORDER BY 1")
    assert keys.fetchall() == [(3,), (4,), (5,)]
    outbox = conn.execute("SELECT message_id FROM telegram_gateway.message_outbox ORDER BY 1")
    assert outbox.fetchall() == [(3,), (4,), (5,)]


def test_cleanup_drops_old_partitions_that_hold_only_finished_messages(conn: Conn) -> None:
    upsert(
        conn,
        [
            msg(1, date=datetime(2024, 1, 10, tzinfo=UTC)),
            msg(2, date=datetime(2024, 2, 10, tzinfo=UTC)),
            msg(3, date=datetime(2024, 2, 11, tzinfo=UTC)),
            msg(4),
        ],
    )
    # (an edit sends a message back to pending, so it comes before the consumer's mark)
    edit(conn, 1, datetime(2024, 1, 11, tzinfo=UTC), "edited")
    mark(conn, [(CH, 1), (CH, 2)])

    removed = value(conn, "SELECT telegram_gateway.cleanup_old_messages(30)")

    partitions = [
        p
        for (p,) in conn.execute(
            "SELECT partition::text FROM telegram_gateway.message_partitions()"
        )
    ]
    assert removed == 2
    assert "telegram_gateway.messages_y2024m01" not in partitions
    assert "telegram_gateway.messages_y2024m02" in partitions  # message 3 is still pending
    assert value(conn, "SELECT count(*) FROM telegram_gateway.message_edits") == 0


@pytest.mark.parametrize("days", [-1, 0])
def test_cleanup_rejects_less_than_one_day(conn: Conn, days: int) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"at least 1"):
        conn.execute("SELECT telegram_gateway.cleanup_old_messages(%s)", (days,))


# Views and aggregates -------------------------------------------------------------------------


def test_message_processing_stats_counts_backlog_and_recent_throughput(conn: Conn) -> None:
    upsert(
        conn,
        [
            msg(1),
            msg(2),
            msg(3),
            msg(4),
            msg(5, date=NOW - timedelta(days=3)),
            msg(6, channel_id=CH2),
        ],
    )
    mark(conn, [(CH, 1), (CH, 2)])
    mark(conn, [(CH, 3)], state="failed")

    stats = conn.execute(
        "SELECT channel_id, pending_count, oldest_pending_date, processing_count,"
        " messages_24h, processed_24h, failed_24h FROM telegram_gateway.message_processing_stats"
        " ORDER BY channel_id"
    ).fetchall()

    assert stats == [  # CH2 sorts first: -1001649127711 < -1001649127710
        (CH2, 1, NOW - timedelta(hours=1) + timedelta(seconds=6), 0, 1, 0, 0),
        (CH, 2, NOW - timedelta(days=3), 0, 4, 2, 1),
    ]


def test_channel_health_summary_gives_a_verdict_per_channel(conn: Conn, admin: Conn) -> None:
    ch3, ch4 = -1001000000003, -1001000000004
    upsert(
        conn,
        [
            msg(1),
            msg(1, channel_id=CH2),
            msg(1, channel_id=ch3),
            msg(1, channel_id=ch4, date=NOW - timedelta(days=3)),
        ],
    )
    publish = "SELECT telegram_gateway.mark_batch_as_published(%s::bigint[], %s::bigint[])"
    value(conn, publish, [CH, CH2, ch4], [1, 1, 1])
    mark(conn, [(CH, 1), (ch4, 1)])
    admin.execute(
        "UPDATE telegram_gateway.messages SET received_at = now() - interval '1 hour'"
        " WHERE channel_id IN (%s, %s)",
        (CH2, ch3),
    )
    admin.execute(
        "UPDATE telegram_gateway.channels SET is_active = false WHERE channel_id = %s", (ch3,)
    )
    mark(conn, [(ch3, 1)])  # inactive wins over its unpublished message

    health: dict[int, str] = dict(
        conn.execute(
            "SELECT channel_id, health FROM telegram_gateway.channel_health_summary"
        ).fetchall()
    )

    assert health == {CH: "ok", CH2: "backlog", ch3: "inactive", ch4: "stale"}


def test_channel_health_flags_an_outbox_that_is_behind(conn: Conn, admin: Conn) -> None:
    upsert(conn, [msg(1)])
    mark(conn, [(CH, 1)])
    for table in ("messages", "message_outbox"):  # the outbox keeps its own copy
        admin.execute(
            f"UPDATE telegram_gateway.{table} SET received_at = now() - interval '10 min'"
        )

    summary = conn.execute(
        "SELECT health, unpublished_count FROM telegram_gateway.channel_health_summary"
    ).fetchall()
    assert summary == [("unpublished", 1)]


def test_performance_metrics_realtime_reports_database_and_table_figures(conn: Conn) -> None:
    upsert(conn, [msg(1), msg(2), msg(3)])
    mark(conn, [(CH, 1)])

    metrics = {
        (m, o): v
        for m, o, v in conn.execute(
            "SELECT metric, object, value FROM telegram_gateway.performance_metrics_realtime"
        )
    }

    assert metrics[("pending_messages", "telegram_gateway.messages")] == 2
    assert metrics[("connections_total", value(conn, "SELECT current_database()"))] >= 1
    assert 0 <= metrics[("cache_hit_ratio", value(conn, "SELECT current_database()"))] <= 1
    assert metrics[("table_total_bytes", "telegram_gateway.messages")] > 0
    assert ("table_live_rows", "telegram_gateway.message_keys") in metrics


def test_refresh_aggregates_fills_hourly_and_daily_views(conn: Conn) -> None:
    day = datetime(2024, 5, 1, tzinfo=UTC)
    upsert(
        conn,
        [
            msg(1, date=day + timedelta(hours=1, minutes=5)),
            msg(2, date=day + timedelta(hours=1, minutes=50), media_type="photo"),
            msg(3, date=day + timedelta(hours=7)),
            msg(4, channel_id=CH2, date=day + timedelta(hours=7)),
        ],
    )
    hourly = (
        "SELECT bucket, channel_id, message_count, media_count"
        " FROM telegram_gateway.messages_hourly ORDER BY 1, 2"
    )

    assert conn.execute(hourly).fetchall() == []  # not refreshed yet
    conn.execute("SELECT telegram_gateway.refresh_aggregates()")
    first = conn.execute(hourly).fetchall()
    upsert(conn, [msg(5, date=day + timedelta(hours=7, minutes=30))])
    conn.execute("SELECT telegram_gateway.refresh_aggregates()")

    assert first == [
        (day + timedelta(hours=1), CH, 2, 1),
        (day + timedelta(hours=7), CH2, 1, 0),
        (day + timedelta(hours=7), CH, 1, 0),
    ]
    assert conn.execute(hourly).fetchall()[-1] == (day + timedelta(hours=7), CH, 2, 0)
    assert conn.execute(
        "SELECT bucket, channel_id, message_count FROM telegram_gateway.messages_daily ORDER BY 2"
    ).fetchall() == [(day, CH2, 1), (day, CH, 4)]


# Plans ----------------------------------------------------------------------------------------


@pytest.fixture
def loaded(db: Any, conn: Conn, admin: Conn) -> Conn:
    """~40,000 messages over 20 channels and 3 months, the newest 10 % pending, analysed."""
    channels = [CH - n for n in range(20)]
    for batch in range(40):
        start = NOW - timedelta(days=80)
        upsert(
            conn,
            [
                msg(
                    batch * 50 + i // 20 + 1,
                    channel_id=channels[i % 20],
                    date=start + timedelta(minutes=3 * (batch * 1000 + i)),
                    text="Ativo: PETR4 " * 20,
                )
                for i in range(1000)
            ],
        )
    admin.execute(
        "UPDATE telegram_gateway.messages SET processing_state = 'processed'"
        " WHERE telegram_date < (SELECT percentile_disc(0.9) WITHIN GROUP"
        " (ORDER BY telegram_date) FROM telegram_gateway.messages)"
    )
    admin.execute("VACUUM (ANALYZE) telegram_gateway.messages")
    admin.execute("VACUUM (ANALYZE) telegram_gateway.message_keys")
    return admin


def plans_of(conn: Conn, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Run a query with auto_explain on; the JSON plans of every statement it ran."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_format = json;"
        " SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on;"
        " SET auto_explain.log_level = notice"
    )
    conn.execute(query, params).fetchall()
    conn.execute("SET auto_explain.log_min_duration = -1")
    return [json.loads(n[n.index("{") :])["Plan"] for n in notices if "{" in n]


def scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from scans(child)


def parent_index(conn: Conn, index: str) -> str:
    """The partitioned index a partition's index belongs to (itself if it has none)."""
    found = conn.execute(
        "SELECT coalesce((SELECT inhparent::regclass::text FROM pg_inherits"
        " WHERE inhrelid = to_regclass(%s)), %s)",
        (f"telegram_gateway.{index}", index),
    ).fetchone()
    assert found is not None
    return str(found[0]).removeprefix("telegram_gateway.")


def message_scans(conn: Conn, plans: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(node type, partitioned index, rows found) of every scan of a messages partition."""
    return [
        (
            node["Node Type"],
            parent_index(conn, node.get("Index Name", "")),
            int(node.get("Actual Rows", 0)),
        )
        for plan in plans
        for node in scans(plan)
        if node.get("Relation Name", "").startswith("messages")
    ]


POLLING_INDEXES = {"idx_telegram_messages_polling_cover", "idx_telegram_messages_unprocessed"}


def test_polling_one_channel_uses_the_polling_index(loaded: Conn) -> None:
    # big enough that reading the partitions whole is not an option the planner would take
    assert (
        value(
            loaded,
            "SELECT sum(relpages) FROM pg_class WHERE relkind = 'r' AND relname LIKE 'messages_y%'",
        )
        > 500
    )
    plans = plans_of(
        loaded,
        "SELECT * FROM telegram_gateway.get_unprocessed_messages_optimized(%s, 100)",
        (CH - 3,),
    )

    used = message_scans(loaded, plans)
    # Partitions without pending rows have both partial indexes empty, and either may probe
    # them; the rows themselves come from the per-channel index, and nothing reads a table.
    assert {index for _, index, found in used if found} == {"idx_telegram_messages_polling_cover"}
    assert sum(found for _, _, found in used) == 100
    assert {index for _, index, _ in used} <= POLLING_INDEXES
    assert {node for node, _, _ in used} == {"Index Scan"}


def test_polling_all_channels_uses_the_unprocessed_index(loaded: Conn) -> None:
    plans = plans_of(
        loaded, "SELECT * FROM telegram_gateway.get_unprocessed_messages_optimized(NULL, 100)", ()
    )

    used = message_scans(loaded, plans)
    assert {index for _, index, found in used if found} == {"idx_telegram_messages_unprocessed"}
    assert sum(found for _, _, found in used) == 100
    assert {index for _, index, _ in used} <= POLLING_INDEXES
    assert {node for node, _, _ in used} == {"Index Scan"}


def test_dedup_check_probes_the_message_keys_primary_key(loaded: Conn) -> None:
    assert value(loaded, "SELECT reltuples FROM pg_class WHERE relname = 'message_keys'") > 30_000
    plan = loaded.execute("EXPLAIN (FORMAT JSON) " + MESSAGE_EXISTS_SQL, (CH, 123)).fetchone()
    assert plan is not None
    nodes = list(scans(plan[0][0]["Plan"]))

    probes = [n for n in nodes if n.get("Relation Name") == "message_keys"]
    assert [(n["Node Type"], n["Index Name"]) for n in probes] == [
        ("Index Only Scan", "message_keys_pkey")
    ]
