"""tgstack.db.Database against real PostgreSQL behind PgBouncer (transaction pooling)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from tgstack.db import (
    Database,
    DatabaseError,
    DatabaseUnavailable,
    IdleCheck,
    InvalidInput,
    UpsertResult,
)
from tgstack.migrate import apply_migrations
from tgstack.models import MessageKey, MessageRecord
from tgstack_testing.localstack import DataStack, free_port

CH = -1001649127710
CH2 = -1001649127711
NOW = datetime.now(UTC).replace(microsecond=0)


def record(
    message_id: int, *, channel_id: int = CH, minutes_ago: float | None = None, **fields: Any
) -> MessageRecord:
    ago = 60 - message_id if minutes_ago is None else minutes_ago
    fields.setdefault("text", f"🟢Swing Trade\nAtivo: PETR4\nCompra: {message_id},50")
    return MessageRecord.create(channel_id, message_id, NOW - timedelta(minutes=ago), **fields)


def sample(name: str, operation: str) -> float:
    return REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0


@pytest.fixture
def database(db: Any) -> Iterator[Database]:
    with Database(db.app_dsn, max_size=4) as database:
        yield database


# Writing --------------------------------------------------------------------------------------


def test_bulk_upsert_twice_stores_each_message_once(database: Database) -> None:
    batch = [record(1), record(2), record(1, channel_id=CH2)]

    first = database.bulk_upsert(batch)
    second = database.bulk_upsert([*batch, record(3)])

    assert first == UpsertResult(
        inserted=(MessageKey(CH, 1), MessageKey(CH, 2), MessageKey(CH2, 1)), duplicates=()
    )
    assert second.inserted == (MessageKey(CH, 3),)
    assert second.duplicates == (MessageKey(CH, 1), MessageKey(CH, 2), MessageKey(CH2, 1))
    assert len(database.fetch_unprocessed(None, 100)) == 4


def test_a_message_replayed_with_another_date_is_a_duplicate(database: Database) -> None:
    database.bulk_upsert([record(7, minutes_ago=3000)])

    result = database.bulk_upsert([record(7, minutes_ago=1)])

    assert result.duplicates == (MessageKey(CH, 7),)
    assert [m.key for m in database.fetch_unprocessed(CH, 10)] == [MessageKey(CH, 7)]


def test_bulk_upsert_writes_large_inputs_in_batches(db: Any) -> None:
    records = [record(i, minutes_ago=i) for i in range(1, 11)]
    with Database(db.app_dsn, batch_size=3) as database:
        result = database.bulk_upsert([*records, record(4)])

        assert result.inserted == tuple(r.key for r in records)
        assert result.duplicates == (MessageKey(CH, 4),)
        assert len(database.fetch_unprocessed(CH, 100)) == 10


def test_parallel_batches_keep_input_order_and_store_repeats_once(db: Any) -> None:
    # 40 messages over four months, in batches of 5 written four at a time; every message is
    # repeated in a later batch, so concurrent transactions meet the same keys and months.
    records = [record(i, minutes_ago=i * 1440) for i in range(1, 41)]
    repeats = [record(i, minutes_ago=i * 1440) for i in range(40, 0, -1)]
    with Database(db.app_dsn, batch_size=5, write_parallelism=4, max_size=4) as database:
        result = database.bulk_upsert([*records, *repeats])
        again = database.bulk_upsert(records)

        assert result.inserted == tuple(r.key for r in records)
        assert result.duplicates == tuple(r.key for r in repeats)
        assert again.inserted == ()
        assert len(database.fetch_unprocessed(CH, 1000)) == 40


def test_an_empty_bulk_upsert_does_nothing(database: Database) -> None:
    assert database.bulk_upsert([]) == UpsertResult((), ())


def test_fetch_unprocessed_reads_back_every_field_oldest_first(database: Database) -> None:
    edited = NOW - timedelta(minutes=1)
    media = record(
        2,
        minutes_ago=5,
        text=None,
        caption="Ativo: VALE3",
        media_type="photo",
        media_refs={"photo_id": 42},
        thread_id=9,
        reply_to_msg_id=1,
        grouped_id=77,
        edit_date=edited,
        source="bot",
        message_type="photo",
        metadata={"views": 3},
    )
    database.bulk_upsert([media, record(1, minutes_ago=10)])

    first, second = database.fetch_unprocessed(CH, 10)

    assert first.record == record(1, minutes_ago=10)
    assert second.record == media
    assert second.record.telegram_date.tzinfo == UTC
    assert (second.status, second.processing_state) == ("received", "pending")


def test_a_reply_keeps_reply_to_msg_id_in_the_row_and_in_every_read_of_it(
    db: Any, database: Database
) -> None:
    signal, plain = record(1, minutes_ago=10), record(3, minutes_ago=6)
    reply = record(2, minutes_ago=8, text="Alvo 1 atingido ✅", reply_to_msg_id=1)
    database.bulk_upsert([signal, reply, plain])

    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        stored = conn.execute(
            "SELECT message_id, reply_to_msg_id FROM telegram_gateway.messages"
            " WHERE channel_id = %s ORDER BY message_id",
            (CH,),
        ).fetchall()
    assert stored == [(1, None), (2, 1), (3, None)]

    def replies(messages: list[MessageRecord]) -> dict[int, int | None]:
        return {m.message_id: m.reply_to_msg_id for m in messages}

    expected = {1: None, 2: 1, 3: None}
    assert replies([m.record for m in database.fetch_unprocessed(CH, 10)]) == expected
    assert replies(database.fetch_unpublished(10, min_age_seconds=0)) == expected
    by_key = database.claim_by_keys("poller-a", [reply.key])
    assert [m.record for m in by_key] == [reply]
    claimed = database.claim_unprocessed("poller-b", limit=10)
    assert replies([m.record for m in claimed]) == {1: None, 3: None}


def test_metadata_comes_back_exactly_even_with_numbers_beyond_64_bits(database: Database) -> None:
    metadata = {
        "views": 123456789012345678901234567890,
        "ratio": 0.1,
        "forwards": 7,
        "nested": {"ids": [-9223372036854775809, 2**63, 1]},
    }
    database.bulk_upsert([record(1, metadata=metadata)])

    (stored,) = database.fetch_unprocessed(CH, 10)

    assert stored.record.metadata == metadata
    assert stored.record.metadata["views"] == 123456789012345678901234567890
    assert isinstance(stored.record.metadata["views"], int)


def test_fetch_unprocessed_of_one_channel_and_with_a_limit(database: Database) -> None:
    database.bulk_upsert([record(1), record(2), record(3), record(1, channel_id=CH2)])

    assert [m.key for m in database.fetch_unprocessed(CH2, 10)] == [MessageKey(CH2, 1)]
    assert [m.key.message_id for m in database.fetch_unprocessed(CH, 2)] == [1, 2]


def test_text_with_nul_bytes_and_lone_surrogates_is_stored_clean_with_the_original(
    database: Database,
) -> None:
    raw = "Compra: 10\x00,50 \ud83d fim"
    database.bulk_upsert([record(1, text=raw)])

    (stored,) = database.fetch_unprocessed(CH, 1)

    assert stored.record.text == "Compra: 10\ufffd,50 \ufffd fim"
    original = base64.b64decode(stored.record.metadata["original_text_b64"])
    assert original.decode("utf-8", "surrogatepass") == raw


def test_records_built_without_create_are_sanitised_too(database: Database) -> None:
    unchecked = MessageRecord(CH, 1, NOW, caption="bad\x00caption")

    assert database.bulk_upsert([unchecked]).inserted == (MessageKey(CH, 1),)
    (stored,) = database.fetch_unprocessed(CH, 1)
    assert stored.record.caption == "bad\ufffdcaption"
    assert "original_caption_b64" in stored.record.metadata


def test_update_status_sets_the_status_and_reports_unknown_messages(database: Database) -> None:
    database.bulk_upsert([record(1)])

    assert database.update_status(CH, 1, "published") is True
    assert database.update_status(CH, 99, "published") is False
    assert database.count_unpublished() == 0


def test_mark_published_clears_the_outbox(database: Database, db: Any) -> None:
    database.bulk_upsert([record(1), record(2), record(3)])
    with psycopg.connect(db.superuser_dsn, autocommit=True) as admin:
        for table in ("messages", "message_outbox"):  # the outbox keeps its own copy
            admin.execute(
                f"UPDATE telegram_gateway.{table} SET received_at = now() - interval '5 minutes'"
            )

    waiting = database.fetch_unpublished(limit=10, min_age_seconds=60)
    changed = database.mark_published([MessageKey(CH, 1), MessageKey(CH, 2)])

    assert [r.key.message_id for r in waiting] == [1, 2, 3]
    assert changed == 2
    assert database.mark_published([MessageKey(CH, 1)]) == 0
    assert database.count_unpublished() == 1
    assert [r.key.message_id for r in database.fetch_unpublished(10, 60)] == [3]
    assert database.fetch_unpublished(10, 3600) == []


def test_apply_edit_keeps_history_and_ignores_replays(database: Database, db: Any) -> None:
    database.bulk_upsert([record(1, text="Compra: 10,00")])
    edit = record(1, text="Compra: 10,50", edit_date=NOW)

    assert database.apply_edit(edit) is True
    assert database.apply_edit(edit) is False
    assert database.apply_edit(record(2, edit_date=NOW)) is False
    (stored,) = database.fetch_unprocessed(CH, 1)
    assert (stored.record.text, stored.record.edit_date) == ("Compra: 10,50", NOW)
    with psycopg.connect(db.direct_dsn) as conn:
        history = conn.execute("SELECT previous_text FROM telegram_gateway.message_edits")
        assert history.fetchall() == [("Compra: 10,00",)]


def test_apply_edit_needs_an_edit_date(database: Database) -> None:
    with pytest.raises(InvalidInput, match=r"^apply_edit: .* has no edit_date"):
        database.apply_edit(record(1))


def test_soft_delete_hides_messages_from_polling(database: Database) -> None:
    database.bulk_upsert([record(1), record(2)])

    assert database.soft_delete(CH, [1, 5]) == 1
    assert database.soft_delete(CH, [1]) == 0
    assert database.soft_delete(CH, []) == 0
    assert [m.key.message_id for m in database.fetch_unprocessed(CH, 10)] == [2]


def test_channel_cursors_and_backfill_marks(database: Database, db: Any) -> None:
    database.bulk_upsert([record(5), record(3), record(8, channel_id=CH2)])
    database.mark_backfilled(CH)

    assert database.channel_cursors() == {CH: 5, CH2: 8}
    with psycopg.connect(db.direct_dsn) as conn:
        marked = conn.execute(
            "SELECT channel_id FROM telegram_gateway.channel_cursors"
            " WHERE last_backfill_at IS NOT NULL"
        ).fetchall()
    assert marked == [(CH,)]


# Consumer side --------------------------------------------------------------------------------


def test_mark_processed_removes_messages_from_polling_and_is_idempotent(
    database: Database,
) -> None:
    database.bulk_upsert([record(1), record(2), record(3)])
    keys = [MessageKey(CH, 1), MessageKey(CH, 2)]

    assert database.mark_processed(keys, "tp-capital") == 2
    assert database.mark_processed(keys, "tp-capital") == 0
    assert database.mark_processed([MessageKey(CH, 3)], "tp-capital", "ignored") == 1
    assert database.mark_processed([], "tp-capital") == 0
    assert database.fetch_unprocessed(None, 10) == []


def test_mark_processed_records_a_failure(database: Database, db: Any) -> None:
    database.bulk_upsert([record(1)])

    database.mark_processed([MessageKey(CH, 1)], "tp-capital", "failed", error="no asset")

    with psycopg.connect(db.direct_dsn) as conn:
        found = conn.execute(
            "SELECT processing_state, last_error, metadata->>'processed_by'"
            " FROM telegram_gateway.messages"
        ).fetchall()
    assert found == [("failed", "no asset", "tp-capital")]


def test_claims_split_work_between_consumers(database: Database) -> None:
    database.bulk_upsert([record(i, minutes_ago=10 - i) for i in range(1, 5)])

    mine = database.claim_unprocessed("poller-a", limit=3, lease_seconds=60)
    theirs = database.claim_unprocessed("poller-b", limit=3, lease_seconds=60)

    assert [m.key.message_id for m in mine] == [1, 2, 3]
    assert [m.key.message_id for m in theirs] == [4]
    assert {m.processing_state for m in mine + theirs} == {"processing"}
    assert database.release_expired_claims() == 0


def test_message_exists_is_the_dedup_check(database: Database) -> None:
    database.bulk_upsert([record(1)])

    assert database.message_exists(CH, 1) is True
    assert database.message_exists(CH, 2) is False
    assert database.message_exists(CH2, 1) is False


# Maintenance ----------------------------------------------------------------------------------


def test_cleanup_old_removes_only_finished_old_messages(database: Database) -> None:
    database.bulk_upsert(
        [record(1, minutes_ago=60 * 24 * 50), record(2, minutes_ago=60 * 24 * 50), record(3)]
    )
    database.mark_processed([MessageKey(CH, 1), MessageKey(CH, 3)], "tp-capital")

    assert database.cleanup_old(30) == 1
    assert database.message_exists(CH, 1) is False
    assert database.message_exists(CH, 2) is True
    with pytest.raises(InvalidInput, match=r"^cleanup_old: .*days_old must be at least 1"):
        database.cleanup_old(-1)


def test_refresh_aggregates_updates_the_hourly_view(database: Database, db: Any) -> None:
    database.bulk_upsert([record(1), record(2)])

    database.refresh_aggregates()

    with psycopg.connect(db.direct_dsn) as conn:
        total = conn.execute("SELECT sum(message_count) FROM telegram_gateway.messages_hourly")
        assert total.fetchone() == (2,)


# Errors, metrics, connections -----------------------------------------------------------------


def test_rejected_input_raises_invalid_input_naming_the_operation(database: Database) -> None:
    errors_before = sample("tgstack_db_errors_total", "update_status")

    with pytest.raises(
        InvalidInput,
        match=r"^update_status: upsert_message_status: unknown "
        "status 'sent'",
    ):
        database.update_status(CH, 1, "sent")
    with pytest.raises(InvalidInput, match=r"^fetch_unprocessed: .*channel_id 12 is out of range"):
        database.fetch_unprocessed(12, 10)
    with pytest.raises(InvalidInput, match=r"^bulk_upsert: .*messages\[0\]: message_id"):
        database.bulk_upsert([MessageRecord(CH, 0, NOW)])

    assert sample("tgstack_db_errors_total", "update_status") == errors_before + 1
    assert issubclass(InvalidInput, ValueError)


def test_every_operation_is_timed(database: Database) -> None:
    before = sample("tgstack_db_operation_seconds_count", "message_exists")

    database.message_exists(CH, 1)
    database.message_exists(CH, 2)

    assert sample("tgstack_db_operation_seconds_count", "message_exists") == before + 2


def test_ping_tells_whether_the_database_answers(database: Database) -> None:
    unreachable = Database(
        f"host=127.0.0.1 port={free_port()} dbname=x user=x password=x connect_timeout=1",
        min_size=0,
        timeout=0.5,
    )
    unreachable.open(wait=False)
    try:
        assert database.ping() is True
        assert unreachable.ping(timeout=0.5) is False
    finally:
        unreachable.close()


def test_an_unreachable_database_fails_after_bounded_retries(db: Any) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=x password=x connect_timeout=1"
    database = Database(dsn, min_size=0, timeout=0.3, retry_attempts=3, retry_backoff=0.05)
    database.open(wait=False)
    retries_before = sample("tgstack_db_retries_total", "message_exists")
    errors_before = sample("tgstack_db_errors_total", "message_exists")
    started = time.monotonic()
    try:
        with pytest.raises(
            DatabaseUnavailable, match=r"^message_exists: database unavailable after 3 attempt"
        ):
            database.message_exists(CH, 1)
    finally:
        database.close()

    assert time.monotonic() - started < 5
    assert sample("tgstack_db_retries_total", "message_exists") == retries_before + 2
    assert sample("tgstack_db_errors_total", "message_exists") == errors_before + 1


def test_opening_against_an_unreachable_database_fails_fast() -> None:
    database = Database(f"host=127.0.0.1 port={free_port()} dbname=x user=x connect_timeout=1")
    with pytest.raises(DatabaseUnavailable, match=r"^open: no connection within 1.0s"):
        database.open(timeout=1.0)
    database.close()


def test_a_closed_database_says_so(db: Any) -> None:
    with Database(db.app_dsn) as database:
        assert database.ping()
    with pytest.raises(DatabaseError, match=r"^message_exists: the pool is not open"):
        database.message_exists(CH, 1)


def test_many_threads_share_the_pool_through_pgbouncer(database: Database) -> None:
    database.bulk_upsert([record(i, minutes_ago=i) for i in range(1, 21)])

    def work(n: int) -> tuple[bool, int]:
        exists = database.message_exists(CH, n % 20 + 1)
        return exists, len(database.fetch_unprocessed(CH, 5))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(200)))

    assert results == [(True, 5)] * 200


# Checking pooled connections ------------------------------------------------------------------


def test_a_connection_returned_a_moment_ago_is_handed_out_unchecked(db: Any) -> None:
    check = IdleCheck(after=60)
    conn = psycopg.connect(db.app_dsn, autocommit=True)
    check.returned(conn)
    conn.close()  # broken, but the check does not look

    check(conn)


def test_a_connection_idle_for_longer_than_the_bound_is_checked(db: Any) -> None:
    check = IdleCheck(after=0.05)
    conn = psycopg.connect(db.app_dsn, autocommit=True)
    check.returned(conn)
    check(conn)  # open and answering
    conn.close()
    time.sleep(0.1)

    with pytest.raises(psycopg.OperationalError):
        check(conn)


def test_a_connection_never_returned_is_checked(db: Any) -> None:
    conn = psycopg.connect(db.app_dsn, autocommit=True)
    conn.close()

    with pytest.raises(psycopg.OperationalError):
        IdleCheck(after=60)(conn)


def test_a_negative_idle_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="check_after_idle"):
        IdleCheck(after=-1)


# Deadlocks --------------------------------------------------------------------------------------

_TOUCH = (
    "UPDATE telegram_gateway.messages SET publish_attempts = publish_attempts"
    " WHERE channel_id = %s AND message_id = %s"
)


def _lock_waiters(superuser_dsn: str, dbname: str) -> int:
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (dbname,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_an_operation_rolled_back_by_a_deadlock_is_retried_without_checking_the_pool(
    database: Database, db: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    database.bulk_upsert([record(1), record(2)])
    pool_checks: list[float] = []
    real_check = database._pool.check

    def counted_check() -> None:
        pool_checks.append(time.monotonic())
        real_check()

    monkeypatch.setattr(database._pool, "check", counted_check)
    retries_before = sample("tgstack_db_retries_total", "deadlock_probe")

    def one_then_two(conn: psycopg.Connection[Any]) -> str:
        with conn.transaction():
            conn.execute(_TOUCH, (CH, 1))
            conn.execute(_TOUCH, (CH, 2))
        return "both updated"

    # Another session holds row 2 and, once the operation holds row 1 and waits for row 2, asks
    # for row 1. Its deadlock_timeout is long, so the operation's backend (1 s) finds the cycle
    # and is the one rolled back; the other session then commits and the retry goes through.
    with psycopg.connect(db.superuser_dsn) as other, ThreadPoolExecutor(1) as runner:
        other.execute("SET LOCAL deadlock_timeout = '20s'")
        other.execute(_TOUCH, (CH, 2))
        outcome = runner.submit(database._run, "deadlock_probe", one_then_two)
        deadline = time.monotonic() + 10
        while _lock_waiters(db.superuser_dsn, db.name) == 0:
            assert time.monotonic() < deadline, "the operation never waited for row 2"
            time.sleep(0.02)
        other.execute(_TOUCH, (CH, 1))
        other.commit()
        assert outcome.result(timeout=30) == "both updated"

    assert sample("tgstack_db_retries_total", "deadlock_probe") == retries_before + 1
    (retry,) = [r for r in caplog.records if r.getMessage() == "database_retry"]
    assert (retry.operation, retry.attempt, retry.reason) == ("deadlock_probe", 1, "rolled_back")
    assert retry.error.startswith("deadlock detected")
    assert pool_checks == []


@pytest.mark.slow
def test_after_pgbouncer_restarts_one_retry_gets_past_every_recently_used_connection(
    own_data_stack: DataStack,
) -> None:
    apply_migrations(own_data_stack.direct_dsn)
    with Database(
        own_data_stack.app_dsn, min_size=4, max_size=4, retry_attempts=3, check_after_idle=3600
    ) as database:
        database.bulk_upsert([record(1)])
        for _ in range(4):  # the pool hands connections out in turn: each is now fresh
            assert database.message_exists(CH, 1)
        retries_before = sample("tgstack_db_retries_total", "message_exists")

        own_data_stack.pgbouncer.stop()
        own_data_stack.pgbouncer.start()

        # Four broken connections, none checked on checkout, three attempts: only the check
        # of the whole pool after the first failure gets the call through.
        assert database.message_exists(CH, 1) is True
        assert sample("tgstack_db_retries_total", "message_exists") == retries_before + 1


# PostgreSQL restarts behind PgBouncer ---------------------------------------------------------


@pytest.fixture
def restartable(own_data_stack: DataStack) -> Iterator[tuple[DataStack, Database]]:
    apply_migrations(own_data_stack.direct_dsn)
    # A short pool timeout so that waiting for a connection gives up and retries (counted).
    with Database(
        own_data_stack.app_dsn, max_size=2, timeout=0.5, retry_attempts=8, retry_backoff=0.2
    ) as database:
        yield own_data_stack, database


@pytest.mark.slow
def test_the_pool_recovers_after_postgresql_restarts(
    restartable: tuple[DataStack, Database],
) -> None:
    stack, database = restartable
    database.bulk_upsert([record(1)])

    stack.postgres.restart()
    started = time.monotonic()
    result = database.bulk_upsert([record(2)])

    assert result.inserted == (MessageKey(CH, 2),)
    assert time.monotonic() - started < 15
    assert database.message_exists(CH, 1)


@pytest.mark.slow
def test_an_operation_during_a_postgresql_outage_succeeds_once_it_is_back(
    restartable: tuple[DataStack, Database],
) -> None:
    stack, database = restartable
    database.bulk_upsert([record(1)])
    errors_before = sample("tgstack_db_errors_total", "message_exists")
    stack.postgres.stop()
    restarter = threading.Timer(1.5, stack.postgres.start)
    restarter.start()
    started = time.monotonic()
    try:
        # PgBouncer either holds the query until the server is back or refuses it at once
        # ("server login has been failing"), which the bounded retries absorb.
        assert database.message_exists(CH, 1) is True
    finally:
        restarter.join()

    assert 1.0 < time.monotonic() - started < 30
    assert sample("tgstack_db_errors_total", "message_exists") == errors_before


@pytest.mark.slow
def test_an_operation_while_pgbouncer_restarts_is_retried_until_it_is_back(
    restartable: tuple[DataStack, Database],
) -> None:
    stack, database = restartable
    database.bulk_upsert([record(1)])
    retries_before = sample("tgstack_db_retries_total", "message_exists")
    stack.pgbouncer.stop()
    restarter = threading.Timer(1.5, stack.pgbouncer.start)
    restarter.start()
    started = time.monotonic()
    try:
        assert database.message_exists(CH, 1) is True
    finally:
        restarter.join()

    assert 1.0 < time.monotonic() - started < 30
    assert sample("tgstack_db_retries_total", "message_exists") > retries_before
