"""The TP Capital poller against real PostgreSQL/PgBouncer, Redis and RabbitMQ.

Every signal is stored once and every post is marked once, whatever path found it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
import redis
from amqpstorm.message import Message
from amqpstorm.uri_connection import UriConnection

from tests.conftest import TestDatabase
from tgstack.cache import MessageCache
from tgstack.db import Database, DatabaseUnavailable
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.pipeline import IngestPipeline
from tgstack.gateway.synthetic import generate
from tgstack.models import MessageKey, MessageRecord, StoredMessage
from tgstack.poller.consumer import QueueConsumer
from tgstack.poller.worker import PollStats, SignalWorker
from tgstack.queue import DEAD_LETTER_QUEUE, MessagePublisher, consumer_queue_name
from tgstack.signals import classify, parse_signal
from tgstack_testing.localstack import DataStack, RabbitMQServer, RedisServer, free_port

CHANNEL = -1001649127710
WHEN = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SIGNAL = "🟢Swing Trade\nAtivo: PETR4\nCompra: 36,50 a 37,20\nAlvo 1: 39,00\nStop: 34,80"


@pytest.fixture
def database(db: TestDatabase) -> Iterator[Database]:
    with Database(db.app_dsn, max_size=8) as database:
        yield database


def store(
    database: Database,
    records: Sequence[MessageRecord],
    cache: MessageCache | None = None,
    publisher: MessagePublisher | None = None,
) -> None:
    pipeline = IngestPipeline(
        store=database, cache=cache, publisher=publisher, transient_errors=(DatabaseUnavailable,)
    )
    pipeline.process_batch([MessageEvent.new(r) for r in records])


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT processing_state, count(*) FROM telegram_gateway.messages GROUP BY 1"
        ).fetchall()
        signals = conn.execute("SELECT count(*) FROM tp_capital.signals").fetchone()
        marks = conn.execute(
            "SELECT count(*) FROM telegram_gateway.messages"
            " WHERE coalesce((metadata->>'marks')::int, 0) <> 1"
        ).fetchone()
    assert signals is not None
    assert marks is not None
    result = {state: int(n) for state, n in rows}
    result["signals"] = int(signals[0])
    result["not_marked_once"] = int(marks[0])
    return result


def expected_signals(records: Sequence[MessageRecord]) -> int:
    return sum(1 for r in records if parse_signal(r.body) is not None)


def test_poll_path_stores_each_signal_once_and_marks_each_post_once(
    db: TestDatabase, database: Database
) -> None:
    records = list(generate(400, seed=3))
    store(database, records)
    worker = SignalWorker(database, consumer="test-1", batch_size=50)
    first = worker.drain()
    again = worker.drain()
    signals = expected_signals(records)
    chatter = sum(1 for r in records if classify(r.body).kind == "chatter")
    assert first.claimed == 400
    # signals, follow-ups and posts to review are processed; chatter is ignored
    assert (first.processed, first.ignored, first.signals) == (400 - chatter, chatter, signals)
    assert again.claimed == 0
    assert counts(db.app_dsn) == {
        "processed": 400 - chatter,
        "ignored": chatter,
        "signals": signals,
        "not_marked_once": 0,
    }


def test_signal_prices_are_stored_as_exact_decimals(db: TestDatabase, database: Database) -> None:
    store(database, [MessageRecord.create(CHANNEL, 1, WHEN, text=SIGNAL)])
    SignalWorker(database, consumer="test-1").drain()
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT asset, signal_type, buy_min, buy_max, target_1, stop, retired_at"
            " FROM tp_capital.signals"
        ).fetchone()
    assert row == (
        "PETR4",
        "swing_trade",
        Decimal("36.50"),
        Decimal("37.20"),
        Decimal("39.00"),
        Decimal("34.80"),
        None,
    )


def test_redis_window_is_read_first_and_db_answers_when_redis_is_down(
    db: TestDatabase, database: Database, own_redis: RedisServer
) -> None:
    client = redis.Redis(port=own_redis.port, password=own_redis.password)
    cache = MessageCache(client, fallback=database)
    records = list(generate(60, channels=(CHANNEL,), seed=4))
    store(database, records[:30], cache=cache)
    worker = SignalWorker(
        database, consumer="test-1", cache=cache, channels=[CHANNEL], batch_size=100
    )
    before = cache.stats()
    assert worker.poll_once().claimed == 30
    assert cache.stats().hits > before.hits
    own_redis.stop()
    store(database, records[30:], cache=cache)  # the gateway cannot cache these
    assert worker.drain().claimed == 30
    assert counts(db.app_dsn)["not_marked_once"] == 0
    cache.close()


class RecordingWorker(SignalWorker):
    """Keeps every message it was handed to decide."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.handed: list[StoredMessage] = []

    def process(self, messages: Sequence[StoredMessage]) -> PollStats:
        self.handed.extend(messages)
        return super().process(messages)


@pytest.mark.parametrize("through_redis", [True, False], ids=["redis-window", "database"])
def test_the_poller_is_handed_a_follow_up_with_the_post_it_replies_to(
    database: Database, redis_client: redis.Redis, through_redis: bool
) -> None:
    cache = MessageCache(redis_client, fallback=database) if through_redis else None
    signal = MessageRecord.create(CHANNEL, 10, WHEN, text=SIGNAL)
    follow_up = MessageRecord.create(
        CHANNEL, 11, WHEN, text="Alvo 1 atingido ✅", reply_to_msg_id=10
    )
    store(database, [signal, follow_up], cache=cache)
    if cache is not None:
        window = cache.get_unprocessed(CHANNEL, 10)
        assert {m.key.message_id: m.record.reply_to_msg_id for m in window} == {10: None, 11: 10}
    worker = RecordingWorker(
        database, consumer="test-1", cache=cache, channels=[CHANNEL] if cache else []
    )

    assert worker.poll_once().claimed == 2

    assert {m.key.message_id: m.record.reply_to_msg_id for m in worker.handed} == {
        10: None,
        11: 10,
    }


def test_an_edit_updates_the_signal_and_a_delete_retires_it(
    db: TestDatabase, database: Database
) -> None:
    worker = SignalWorker(database, consumer="test-1")
    store(database, [MessageRecord.create(CHANNEL, 1, WHEN, text=SIGNAL)])
    worker.drain()
    edited = MessageRecord.create(
        CHANNEL, 1, WHEN, text=SIGNAL.replace("39,00", "40,00"), edit_date=WHEN.replace(minute=5)
    )
    assert database.apply_edit(edited)
    assert worker.drain().claimed == 1
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        target = conn.execute("SELECT target_1 FROM tp_capital.signals").fetchone()
    assert target == (Decimal("40.00"),)
    database.soft_delete(CHANNEL, [1])
    worker.poll_once()
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        retired = conn.execute("SELECT retired_at IS NOT NULL FROM tp_capital.signals").fetchone()
        total = conn.execute("SELECT count(*) FROM tp_capital.signals").fetchone()
    assert retired == (True,)
    assert total == (1,)


def test_edit_into_chatter_retires_the_signal(db: TestDatabase, database: Database) -> None:
    worker = SignalWorker(database, consumer="test-1")
    store(database, [MessageRecord.create(CHANNEL, 1, WHEN, text=SIGNAL)])
    worker.drain()
    database.apply_edit(
        MessageRecord.create(
            CHANNEL,
            1,
            WHEN,
            text="Bom dia, pessoal! Hoje sem operações.",
            edit_date=WHEN.replace(minute=9),
        )
    )
    stats = worker.drain()
    assert (stats.claimed, stats.ignored) == (1, 1)
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        row = conn.execute("SELECT retired_at IS NOT NULL FROM tp_capital.signals").fetchone()
    assert row == (True,)


def test_results_of_a_worker_whose_lease_expired_are_not_applied(
    db: TestDatabase, database: Database
) -> None:
    store(database, [MessageRecord.create(CHANNEL, 1, WHEN, text=SIGNAL)])
    slow = SignalWorker(database, consumer="slow", lease_seconds=5)
    claimed = database.claim_unprocessed("slow", limit=10, lease_seconds=1)
    assert len(claimed) == 1
    time.sleep(1.5)
    taker = SignalWorker(database, consumer="taker")
    assert taker.drain().processed == 1  # took over the expired claim
    late = slow.process(claimed)
    assert (late.stale, late.processed) == (1, 0)
    assert counts(db.app_dsn)["signals"] == 1
    assert counts(db.app_dsn)["not_marked_once"] == 0


def test_two_applies_of_one_claim_at_once_mark_the_message_once(
    db: TestDatabase, database: Database
) -> None:
    """The fence locks: a second apply waits for the first and then finds nothing to own."""
    record = MessageRecord.create(CHANNEL, 1, WHEN, text=SIGNAL)
    store(database, [record])
    assert len(database.claim_by_keys("twin", [record.key])) == 1
    payload = json.dumps(
        [
            {
                "channel_id": CHANNEL,
                "message_id": 1,
                "state": "processed",
                "signal": {"asset": "PETR4", "signal_type": "swing_trade", "buy_min": "36.50"},
            }
        ]
    )
    apply = "SELECT applied FROM tp_capital.apply_processing_results('twin', %s::jsonb)"
    second: list[object] = []
    with (
        psycopg.connect(db.direct_dsn) as first,
        psycopg.connect(db.direct_dsn, autocommit=True) as other,
    ):
        assert first.execute(apply, (payload,)).fetchall() == [(True,)]  # not committed yet

        def apply_again() -> None:
            try:
                second.extend(row[0] for row in other.execute(apply, (payload,)).fetchall())
            except psycopg.Error as exc:
                second.append(exc)

        waiter = threading.Thread(target=apply_again)
        waiter.start()
        time.sleep(0.5)
        assert second == []  # waiting for the first apply's row lock
        first.commit()
        waiter.join(10)

    assert second == [False]
    assert counts(db.app_dsn)["signals"] == 1
    assert counts(db.app_dsn)["not_marked_once"] == 0


def test_apply_answers_in_the_order_given_and_owns_only_what_the_consumer_holds(
    db: TestDatabase, database: Database
) -> None:
    records = [MessageRecord.create(CHANNEL, i, WHEN, text=SIGNAL) for i in (1, 2, 3)]
    store(database, records)
    assert len(database.claim_by_keys("mine", [records[0].key, records[2].key])) == 2
    payload = json.dumps(
        [{"channel_id": CHANNEL, "message_id": i, "state": "ignored"} for i in (3, 2, 1)]
    )
    apply = "SELECT * FROM tp_capital.apply_processing_results('mine', %s::jsonb)"

    with psycopg.connect(db.direct_dsn, autocommit=True) as conn:
        rows = conn.execute(apply, (payload,)).fetchall()
        again = conn.execute(apply, (payload,)).fetchall()

    assert rows == [(CHANNEL, 3, True), (CHANNEL, 2, False), (CHANNEL, 1, True)]
    assert again == [(CHANNEL, 3, False), (CHANNEL, 2, False), (CHANNEL, 1, False)]
    assert counts(db.app_dsn) == {
        "ignored": 2,
        "pending": 1,
        "signals": 0,
        "not_marked_once": 1,  # message 2, never finished
    }


@pytest.mark.parametrize(
    "results",
    [[42], [{"channel_id": CHANNEL, "message_id": 1}], [{"message_id": 1, "state": "done"}]],
)
def test_apply_refuses_a_result_without_a_known_state(db: TestDatabase, results: object) -> None:
    apply = "SELECT * FROM tp_capital.apply_processing_results('mine', %s::jsonb)"
    with (
        psycopg.connect(db.direct_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match="needs state"),
    ):
        conn.execute(apply, (json.dumps(results),))


def test_concurrent_pollers_process_each_message_exactly_once(
    db: TestDatabase, database: Database
) -> None:
    records = list(generate(2000, seed=9))
    store(database, records)
    totals: list[PollStats] = []
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            with Database(db.app_dsn, max_size=2) as own:
                totals.append(SignalWorker(own, consumer=name, batch_size=25).drain())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert sum(t.processed + t.ignored for t in totals) == 2000
    assert sum(1 for t in totals if t.claimed > 0) >= 2  # the work really was shared
    result = counts(db.app_dsn)
    assert result["signals"] == expected_signals(records)
    assert result["not_marked_once"] == 0


# The queue path ------------------------------------------------------------------------------


def consume_until(consumer: QueueConsumer, done: Callable[[], bool], timeout: float = 60) -> None:
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    consumer.stopping.set()
    thread.join(30)


def queue_depth(url: str, queue: str) -> int:
    connection = UriConnection(url)
    try:
        return int(connection.channel().queue.declare(queue, passive=True)["message_count"])
    finally:
        connection.close()


def test_queue_path_processes_published_posts_and_acks_duplicates(
    db: TestDatabase, database: Database, amqp_url: str
) -> None:
    records = list(generate(300, seed=5))
    with MessagePublisher(amqp_url) as publisher:
        store(database, records, publisher=publisher)
        for record in records[:50]:  # the outbox relay may publish twice: harmless
            publisher.publish(record)
    consumer = QueueConsumer(
        amqp_url, SignalWorker(database, consumer="q-1"), transient_errors=(DatabaseUnavailable,)
    )
    queue = consumer_queue_name("tp-capital")
    consume_until(
        consumer,
        lambda: queue_depth(amqp_url, queue) == 0 and counts(db.app_dsn).get("pending", 0) == 0,
    )
    result = counts(db.app_dsn)
    assert result.get("pending", 0) == 0
    assert result["signals"] == expected_signals(records)
    assert result["not_marked_once"] == 0
    assert queue_depth(amqp_url, queue) == 0


class FailingWorker(SignalWorker):
    """Fails every batch containing one chosen message (a bug or bad data, not an outage)."""

    def __init__(self, *args: object, poison: MessageKey, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.poison = poison

    def process(self, messages: Sequence[StoredMessage]) -> PollStats:
        if any(m.key == self.poison for m in messages):
            raise RuntimeError("cannot process this one")
        return super().process(messages)


def test_a_delivery_failing_three_times_goes_to_the_dlq_and_is_marked_failed(
    db: TestDatabase, database: Database, amqp_url: str
) -> None:
    records = list(generate(20, channels=(CHANNEL,), seed=6))
    poison = records[7].key
    with MessagePublisher(amqp_url) as publisher:
        store(database, records, publisher=publisher)
        connection = UriConnection(amqp_url)
        Message.create(connection.channel(), "not json", {"headers": {"event": "new"}}).publish(
            f"telegram.channel.{CHANNEL}", "telegram.messages"
        )
        connection.close()
    worker = FailingWorker(database, consumer="q-1", poison=poison)
    consumer = QueueConsumer(
        amqp_url, worker, backoff_seconds=0.05, transient_errors=(DatabaseUnavailable,)
    )
    consume_until(consumer, lambda: queue_depth(amqp_url, DEAD_LETTER_QUEUE) == 2)
    assert queue_depth(amqp_url, DEAD_LETTER_QUEUE) == 2  # the poison post + the bad body
    with psycopg.connect(db.app_dsn, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT processing_state, last_error FROM telegram_gateway.messages"
            " WHERE channel_id = %s AND message_id = %s",
            poison,
        ).fetchone()
        others = conn.execute(
            "SELECT count(*) FROM telegram_gateway.messages"
            " WHERE processing_state IN ('processed', 'ignored')"
        ).fetchone()
    assert row is not None
    assert row[0] == "failed"
    assert "cannot process this one" in row[1]
    assert others == (19,)
    dlq = UriConnection(amqp_url)
    bodies = []
    for _ in range(2):
        message = dlq.channel().basic.get(DEAD_LETTER_QUEUE, no_ack=True)
        assert message is not None
        bodies.append(message.body)
    dlq.close()
    assert "not json" in bodies
    assert any(json.loads(b)["message_id"] == poison.message_id for b in bodies if b != "not json")


# Many processes ------------------------------------------------------------------------------


def pending_or_claimed(dsn: str) -> int:
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        row = conn.execute(
            "SELECT count(*) FROM telegram_gateway.messages"
            " WHERE processing_state IN ('pending', 'processing')"
        ).fetchone()
    assert row is not None
    return int(row[0])


def start_pollers(count: int, db: TestDatabase, amqp_url: str) -> list[subprocess.Popen[bytes]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")}
    processes = []
    for _ in range(count):
        env = base | {
            "TGSTACK_DATABASE_URL": db.app_dsn,
            "TGSTACK_AMQP_URL": amqp_url,
            "TGSTACK_POLLER_PORT": str(free_port()),
            "TGSTACK_POLLER_LEASE_SECONDS": "5",
            "TGSTACK_POLLER_SAFETY_POLL_SECONDS": "1",
            "TGSTACK_LOG_LEVEL": "WARNING",
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "tgstack", "poller", "--mode", "hybrid"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return processes


@pytest.mark.slow
@pytest.mark.parametrize("kill_one", [False, True], ids=["all-alive", "one-killed-mid-run"])
def test_five_poller_processes_over_10000_queued_posts_store_each_signal_once(
    db: TestDatabase, database: Database, amqp_url: str, kill_one: bool
) -> None:
    records = list(generate(10_000, seed=11))
    with MessagePublisher(amqp_url) as publisher:
        for start in range(0, len(records), 500):
            store(database, records[start : start + 500], publisher=publisher)
    assert queue_depth(amqp_url, consumer_queue_name("tp-capital")) == 10_000
    pollers = start_pollers(5, db, amqp_url)
    try:
        if kill_one:
            deadline = time.monotonic() + 120
            while pending_or_claimed(db.app_dsn) > 7_000 and time.monotonic() < deadline:
                time.sleep(0.1)
            pollers[0].send_signal(signal.SIGKILL)  # mid-batch: holds claims and unacked posts
        deadline = time.monotonic() + 240
        while pending_or_claimed(db.app_dsn) > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for poller in pollers:
            if poller.poll() is None:
                poller.send_signal(signal.SIGTERM)
        for poller in pollers:
            poller.wait(60)
    assert [p.returncode for p in pollers[1:]] == [0, 0, 0, 0]  # graceful SIGTERM exits
    result = counts(db.app_dsn)
    assert result.get("pending", 0) == result.get("processing", 0) == 0
    assert result["signals"] == expected_signals(records)
    assert result["processed"] + result["ignored"] == 10_000
    assert result["not_marked_once"] == 0


# Outages during a run ------------------------------------------------------------------------


class PollLoop:
    """The hybrid safety net on a thread: poll every ``interval`` s, riding out DB outages."""

    def __init__(self, worker: SignalWorker, interval: float = 0.2) -> None:
        self.worker = worker
        self.interval = interval
        self.stopping = threading.Event()
        self.outages = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.worker.drain()
            except DatabaseUnavailable:
                self.outages += 1
            self.stopping.wait(self.interval)

    def __enter__(self) -> PollLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(60)


def postmaster_start(stack: DataStack) -> datetime:
    with psycopg.connect(stack.postgres.superuser_dsn()) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Wait until condition holds; a check that cannot reach the database counts as not yet."""

    def holds() -> bool:
        try:
            return condition()
        except psycopg.Error:
            return False

    deadline = time.monotonic() + timeout
    while not holds() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.slow
def test_rabbitmq_stopped_mid_run_loses_and_doubles_nothing(
    db: TestDatabase, database: Database, own_rabbitmq: RabbitMQServer
) -> None:
    url = own_rabbitmq.url()
    records = list(generate(3000, seed=13))
    with MessagePublisher(url) as publisher:
        for start in range(0, len(records), 500):
            store(database, records[start : start + 500], publisher=publisher)
    worker = SignalWorker(database, consumer="hybrid-1", batch_size=20)
    consumer = QueueConsumer(
        url, SignalWorker(database, consumer="hybrid-1"), transient_errors=(DatabaseUnavailable,)
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    wait_for(lambda: pending_or_claimed(db.app_dsn) < 2500, 60)
    own_rabbitmq.stop()  # mid-run: unacked deliveries are lost to this consumer
    with PollLoop(worker):
        wait_for(lambda: pending_or_claimed(db.app_dsn) == 0, 120)
        own_rabbitmq.start()  # the broker redelivers what was unacked: acked as duplicates
        wait_for(lambda: queue_depth(url, consumer_queue_name("tp-capital")) == 0, 60)
    consumer.stopping.set()
    thread.join(30)
    result = counts(db.app_dsn)
    assert result.get("pending", 0) == result.get("processing", 0) == 0
    assert result["signals"] == expected_signals(records)
    assert result["not_marked_once"] == 0
    assert queue_depth(url, consumer_queue_name("tp-capital")) == 0


@pytest.mark.slow
def test_database_restart_mid_run_loses_and_doubles_nothing(
    own_data_stack: DataStack,
) -> None:
    from tgstack.migrate import apply_migrations

    apply_migrations(own_data_stack.direct_dsn)
    dsn = own_data_stack.app_dsn
    records = list(generate(3000, seed=17))
    with Database(dsn, max_size=4, retry_attempts=2, retry_backoff=0.1) as database:
        store(database, records)
        started_before = postmaster_start(own_data_stack)
        with PollLoop(SignalWorker(database, consumer="poll-1", batch_size=20)):
            wait_for(lambda: pending_or_claimed(dsn) < 2000, 60)
            left_at_restart = pending_or_claimed(dsn)
            own_data_stack.postgres.restart()
            wait_for(lambda: pending_or_claimed(dsn) == 0, 120)
        # The server really restarted while work was left (PgBouncer may hide it from the
        # pool entirely when no query was in flight; when one was, the pool retried it).
        assert postmaster_start(own_data_stack) > started_before
        assert left_at_restart > 0
    result = counts(dsn)
    assert result.get("pending", 0) == result.get("processing", 0) == 0
    assert result["signals"] == expected_signals(records)
    assert result["not_marked_once"] == 0
