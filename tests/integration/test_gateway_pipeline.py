"""The gateway pipeline end to end against real PostgreSQL/PgBouncer, Redis and RabbitMQ.

Nothing is lost and nothing is stored twice, whatever is down: replay twice, RabbitMQ down,
Redis down, the database down mid-run, and a restart with posts made while it was down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from amqpstorm.uri_connection import UriConnection
from telethon import events
from telethon.tl import types

from tests.conftest import TestDatabase
from tests.telegram_fakes import BARE, CHANNEL, FakeTelegram, message
from tgstack.config import Settings
from tgstack.db import Database, DatabaseUnavailable
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.pipeline import BatchingWorker, IngestPipeline
from tgstack.gateway.service import flush_outbox, run_replay
from tgstack.gateway.synthetic import generate, to_jsonl_line
from tgstack.gateway.telethon_source import BackfillPolicy, TelethonSource, record_from_message
from tgstack.gateway.wiring import build_pipeline, components
from tgstack.models import MessageRecord
from tgstack.queue import consumer_queue_name
from tgstack_testing.localstack import DataStack, RabbitMQServer, RedisServer, wait_until


def settings_for(
    database_url: str,
    *,
    redis: RedisServer | None = None,
    amqp_url: str | None = None,
    batch_size: int = 200,
) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "gateway_batch_size": batch_size,
        "gateway_batch_delay_ms": 20,
    }
    if redis is not None:
        values["redis_url"] = f"redis://:{redis.password}@127.0.0.1:{redis.port}/0"
    if amqp_url is not None:
        values["amqp_url"] = amqp_url
    return Settings(**values)  # type: ignore[arg-type]


def write_replay(path: Path, count: int, **kwargs: object) -> Path:
    path.write_text("".join(to_jsonl_line(r) + "\n" for r in generate(count, **kwargs)))  # type: ignore[arg-type]
    return path


def stored_counts(dsn: str) -> tuple[int, int]:
    """(rows, distinct (channel, message) keys) in telegram_gateway.messages."""
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (channel_id, message_id))"
            " FROM telegram_gateway.messages"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def unpublished(dsn: str) -> int:
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT count(*) FROM telegram_gateway.message_outbox WHERE published_at IS NULL"
        ).fetchone()
    assert row is not None
    return int(row[0])


def queue_depth(amqp_url: str) -> int:
    connection = UriConnection(amqp_url)
    try:
        result = connection.channel().queue.declare(consumer_queue_name("tp-capital"), passive=True)
        return int(result["message_count"])
    finally:
        connection.close()


def test_replaying_a_file_twice_stores_each_message_once(
    db: TestDatabase, redis_server: RedisServer, amqp_url: str, tmp_path: Path
) -> None:
    path = write_replay(tmp_path / "posts.jsonl", 1000)
    settings = settings_for(db.app_dsn, redis=redis_server, amqp_url=amqp_url)
    first = run_replay(settings, path)
    second = run_replay(settings, path)
    assert (first.read, first.stored, first.duplicates, first.published) == (1000, 1000, 0, 1000)
    assert (second.read, second.stored, second.duplicates, second.published) == (1000, 0, 1000, 0)
    assert stored_counts(db.app_dsn) == (1000, 1000)
    assert queue_depth(amqp_url) == 1000
    assert unpublished(db.app_dsn) == 0


def test_replay_reports_bad_lines_and_stores_the_rest(db: TestDatabase, tmp_path: Path) -> None:
    good = [to_jsonl_line(r) for r in generate(3)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([good[0], "{broken", good[1], '{"channel_id": 5}', good[2]]) + "\n")
    summary = run_replay(settings_for(db.app_dsn), path)
    assert (summary.read, summary.stored, summary.rejected) == (5, 3, 2)
    assert summary.rejections[0].startswith("line 2: invalid JSON")
    assert summary.rejections[1].startswith("line 4: message_id is missing")


def test_replay_with_rabbitmq_down_stores_everything_and_the_outbox_publishes_it_later(
    db: TestDatabase, own_rabbitmq: RabbitMQServer, tmp_path: Path
) -> None:
    amqp_url = own_rabbitmq.url()
    own_rabbitmq.stop()
    path = write_replay(tmp_path / "posts.jsonl", 500)
    settings = settings_for(db.app_dsn, amqp_url=amqp_url)
    summary = run_replay(settings, path)
    assert (summary.stored, summary.published, summary.unpublished) == (500, 0, 500)
    assert unpublished(db.app_dsn) == 500
    own_rabbitmq.start()
    result = flush_outbox(settings)
    assert result == {"published": 500, "failed": 0, "remaining": 0}
    assert unpublished(db.app_dsn) == 0
    assert queue_depth(amqp_url) == 500
    assert flush_outbox(settings) == {"published": 0, "failed": 0, "remaining": 0}


def test_replay_with_redis_down_loses_nothing(
    db: TestDatabase, own_redis: RedisServer, tmp_path: Path
) -> None:
    own_redis.stop()
    path = write_replay(tmp_path / "posts.jsonl", 500)
    summary = run_replay(settings_for(db.app_dsn, redis=own_redis), path)
    assert summary.stored == 500
    assert stored_counts(db.app_dsn) == (500, 500)


def test_database_down_mid_run_is_retried_and_every_message_is_stored_once(
    own_data_stack: DataStack, tmp_path: Path
) -> None:
    from tgstack.migrate import apply_migrations

    apply_migrations(own_data_stack.direct_dsn)
    settings = settings_for(own_data_stack.app_dsn, batch_size=50)
    with components(settings, source="replay") as parts:
        worker = BatchingWorker(build_pipeline(parts), batch_size=50, max_delay=0.01)
        worker.start()
        records = list(generate(600))
        for record in records[:300]:
            worker.submit(MessageEvent.new(record))
        deadline = time.monotonic() + 30
        while worker.totals.stored < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        own_data_stack.postgres.stop()
        for record in records[300:]:
            worker.submit(MessageEvent.new(record))
        time.sleep(3)
        assert worker.totals.stored == 300  # nothing acknowledged while the DB is down
        own_data_stack.postgres.start()
        assert worker.stop(timeout=60)
        assert worker.totals.stored == 600
        assert worker.totals.duplicates == 0
    assert stored_counts(own_data_stack.app_dsn) == (600, 600)


@pytest.fixture
def database(db: TestDatabase) -> Iterator[Database]:
    with Database(db.app_dsn) as database:
        yield database


def test_telethon_events_flow_through_the_pipeline_into_postgres(
    db: TestDatabase, database: Database
) -> None:
    worker = BatchingWorker(build_pipeline_for(database), batch_size=10, max_delay=0.01)
    worker.start()
    source = TelethonSource(
        FakeTelegram([]),
        [CHANNEL],
        worker.submit,  # type: ignore[arg-type]
        store=database,
    )
    asyncio.run(source.start())
    edited = message(2, "edited", edit_date=datetime(2026, 11, 2, 12, 5, tzinfo=UTC))
    for handler, event in [
        (source.on_new_message, events.NewMessage.Event(message(1, "one"))),
        (source.on_new_message, events.NewMessage.Event(message(2, "two"))),
        (source.on_new_message, events.NewMessage.Event(message(2, "two"))),  # duplicate
        (source.on_message_edited, events.MessageEdited.Event(edited)),
        (source.on_message_deleted, events.MessageDeleted.Event([1], peer=types.PeerChannel(BARE))),
    ]:
        asyncio.run(handler(event))  # type: ignore[operator]
    assert worker.stop(timeout=30)
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT message_id, text, deleted_at IS NOT NULL FROM telegram_gateway.messages"
            " ORDER BY message_id"
        ).fetchall()
        history = conn.execute(
            "SELECT message_id, previous_text FROM telegram_gateway.message_edits"
        ).fetchall()
    assert rows == [(1, "one", True), (2, "edited", False)]
    assert history == [(2, "two")]
    assert (worker.totals.stored, worker.totals.duplicates) == (2, 1)


def build_pipeline_for(database: Database) -> IngestPipeline:
    return IngestPipeline(store=database, transient_errors=(DatabaseUnavailable,))


def test_restart_backfill_stores_exactly_the_posts_made_while_down(
    db: TestDatabase, database: Database
) -> None:
    history = [message(i, f"post {i}") for i in range(1, 81)]
    worker = BatchingWorker(build_pipeline_for(database), batch_size=20, max_delay=0.01)
    worker.start()
    for item in history[:50]:  # seen live before the "crash"
        worker.submit(MessageEvent.new(_record(item)))
    assert worker.stop(timeout=30)
    assert database.channel_cursors() == {CHANNEL: 50}

    restarted = BatchingWorker(build_pipeline_for(database), batch_size=20, max_delay=0.01)
    restarted.start()
    source = TelethonSource(
        FakeTelegram(history),
        [CHANNEL],
        restarted.submit,  # type: ignore[arg-type]
        store=database,
        policy=BackfillPolicy(),
    )
    asyncio.run(source.start())
    fetched = asyncio.run(source.backfill())
    assert restarted.stop(timeout=30)
    assert fetched == 30
    assert (restarted.totals.stored, restarted.totals.duplicates) == (30, 0)
    assert stored_counts(db.app_dsn) == (80, 80)
    assert database.channel_cursors() == {CHANNEL: 80}
    assert database.watermarks()[CHANNEL].watermark == 80


def test_a_live_post_stored_before_a_hole_does_not_hide_it_from_the_backfill(
    db: TestDatabase, database: Database
) -> None:
    history = [message(i, f"post {i}") for i in range(1, 41)]
    worker = BatchingWorker(build_pipeline_for(database), batch_size=20, max_delay=0.01)
    worker.start()
    source = TelethonSource(
        FakeTelegram(history[:10]),
        [CHANNEL],
        worker.submit,  # type: ignore[arg-type]
        store=database,
        policy=BackfillPolicy(),
    )
    asyncio.run(source.start())
    assert asyncio.run(source.backfill()) == 10
    # 11..39 were never pushed (a gap); the live post 40 was, and is stored above the hole
    worker.submit(MessageEvent.new(_record(history[39])))
    wait_until(lambda: database.channel_cursors() == {CHANNEL: 40}, 30, "the live post")
    source = TelethonSource(
        FakeTelegram(history),
        [CHANNEL],
        worker.submit,  # type: ignore[arg-type]
        store=database,
        policy=BackfillPolicy(),
    )
    asyncio.run(source.start())
    assert asyncio.run(source.backfill()) == 29
    assert worker.stop(timeout=30)
    assert stored_counts(db.app_dsn) == (40, 40)
    assert database.watermarks()[CHANNEL].watermark == 40


def _record(item: types.Message) -> MessageRecord:
    return record_from_message(item)


def test_replay_rate_limit_is_respected(db: TestDatabase, tmp_path: Path) -> None:
    path = write_replay(tmp_path / "posts.jsonl", 50, interval=timedelta(seconds=1))
    started = time.monotonic()
    summary = run_replay(settings_for(db.app_dsn), path, rate=100)
    elapsed = time.monotonic() - started
    assert summary.stored == 50
    assert elapsed >= 0.45  # 50 events at 100/s cannot finish in less than ~0.5 s


def test_a_record_the_database_refuses_is_rejected_and_the_rest_of_the_batch_stored(
    db: TestDatabase, database: Database
) -> None:
    good = list(generate(9))
    # Bypasses MessageRecord.create's validation, as a buggy source might.
    bad = MessageRecord(channel_id=42, message_id=1, telegram_date=good[0].telegram_date)
    pipeline = build_pipeline_for(database)
    events = [MessageEvent.new(r) for r in good[:4]] + [MessageEvent("new", 42, (1,), bad)]
    events += [MessageEvent.new(r) for r in good[4:]]
    stats = pipeline.process_batch(events)
    assert (stats.stored, stats.rejected, stats.duplicates) == (9, 1, 0)
    assert stored_counts(db.app_dsn) == (9, 9)


def test_an_edit_of_a_post_never_stored_stores_it(db: TestDatabase, database: Database) -> None:
    edited = message(7, "late text", edit_date=datetime(2026, 11, 2, 12, 5, tzinfo=UTC))
    stats = build_pipeline_for(database).process_batch([MessageEvent.edit(_record(edited))])
    assert stats.stored == 1
    assert stored_counts(db.app_dsn) == (1, 1)


def test_replayed_edit_without_edit_date_is_applied_once(db: TestDatabase, tmp_path: Path) -> None:
    post = '{"channel_id": %d, "message_id": 3, "date": "2026-11-02T09:00:00Z", "text": "%s"}'
    edit = post.replace('{"channel_id"', '{"event": "edit", "channel_id"')
    path = tmp_path / "edits.jsonl"
    path.write_text("\n".join([post % (CHANNEL, "v1"), edit % (CHANNEL, "v2")]) + "\n")
    settings = settings_for(db.app_dsn)
    first = run_replay(settings, path)
    second = run_replay(settings, path)
    assert (first.stored, first.edits) == (1, 1)
    assert (second.stored, second.edits) == (0, 0)
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        text = conn.execute("SELECT text FROM telegram_gateway.messages").fetchone()
        edits = conn.execute("SELECT count(*) FROM telegram_gateway.message_edits").fetchone()
    assert text == ("v2",)
    assert edits == (1,)
