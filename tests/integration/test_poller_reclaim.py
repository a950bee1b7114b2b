"""A delivery that arrives while its row is still locked by another transaction (an edit being
applied; before sql/050, the gateway's mark_published too) is claimed once the lock goes,
instead of waiting for the next safety poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import redis

from tests.conftest import TestDatabase
from tgstack.cache import MessageCache
from tgstack.db import Database, DatabaseUnavailable
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.pipeline import IngestPipeline
from tgstack.models import MessageRecord
from tgstack.poller.consumer import QueueConsumer
from tgstack.poller.worker import SignalWorker
from tgstack.queue import MessagePublisher

CHANNEL = -1001649127710
SIGNAL = "🟢Swing Trade\nAtivo: PETR4\nCompra: 36,50 a 37,20\nAlvo 1: 39,00\nStop: 34,80"


@pytest.fixture
def database(db: TestDatabase) -> Iterator[Database]:
    with Database(db.app_dsn, max_size=4) as database:
        yield database


def state_of(dsn: str, message_id: int) -> tuple[str, object]:
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT processing_state, metadata ->> 'marks' FROM telegram_gateway.messages"
            " WHERE channel_id = %s AND message_id = %s",
            (CHANNEL, message_id),
        ).fetchone()
    assert row is not None
    return str(row[0]), row[1]


def test_a_fresh_delivery_of_a_locked_row_is_claimed_when_the_lock_goes(
    db: TestDatabase, database: Database, redis_client: redis.Redis, amqp_url: str
) -> None:
    cache = MessageCache(redis_client, fallback=database)
    record = MessageRecord.create(CHANNEL, 7, datetime.now(UTC), text=SIGNAL)
    with MessagePublisher(amqp_url) as publisher:
        pipeline = IngestPipeline(
            store=database,
            cache=cache,
            publisher=publisher,
            transient_errors=(DatabaseUnavailable,),
        )
        assert pipeline.process_batch([MessageEvent.new(record)]).published == 1
    consumer = QueueConsumer(
        amqp_url,
        SignalWorker(database, consumer="q-1", cache=cache),
        transient_errors=(DatabaseUnavailable,),
    )
    with psycopg.connect(db.superuser_dsn) as locker:
        locker.execute(  # what an edit holds for a moment
            "SELECT 1 FROM telegram_gateway.messages WHERE channel_id = %s AND message_id = %s"
            " FOR UPDATE",
            (CHANNEL, 7),
        )
        thread = threading.Thread(target=consumer.run, daemon=True)
        thread.start()
        time.sleep(0.4)  # longer than the short re-claims (62 ms in all)
        assert state_of(db.app_dsn, 7)[0] == "pending"
        locker.rollback()
    try:
        deadline = time.monotonic() + 10  # no safety poll runs here: without the fix, never
        while state_of(db.app_dsn, 7)[0] == "pending" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        consumer.stopping.set()
        thread.join(30)
    assert state_of(db.app_dsn, 7) == ("processed", "1")
