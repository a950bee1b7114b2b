"""The gateway's publish marks and the poller's applies on the same messages at the same time.

In production the poller gets a post from RabbitMQ before the gateway has recorded the
broker's confirmation, so ``telegram_gateway.mark_batch_as_published`` (gateway) and
``tp_capital.apply_processing_results`` (poller) run on the same posts within milliseconds.
Here both run, from several threads, on overlapping batches of fresh posts, round after round,
against the real PostgreSQL; the batches list the posts in arrival order (channels
interleaved), which is not their key order.

What counts, measured by PostgreSQL itself:

* deadlocks: ``DeadlockDetected`` raised to our clients, and the change of
  ``pg_stat_database.deadlocks`` over the run. ``deadlock_timeout`` is lowered to 20 ms for the
  test database so a deadlock costs the run 20 ms instead of a second.
* lock waits over ``WAIT_THRESHOLD``: ``lock_timeout`` is set to it for the test database, so a
  statement that waits longer for any lock fails with ``LockNotAvailable`` and is counted.
  A sampler (``tgstack.loadtest.locks.LockWatch``) also reports the longest wait it saw.

A failed statement is retried after its round (as the runtime would), and at the end every
post must be published and processed exactly once: nothing lost, nothing done twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from tests.conftest import TestDatabase
from tgstack.loadtest.locks import LockFigures, LockWatch, deadlocks_between, read_deadlocks

CHANNELS = (-1001000000001, -1001000000002, -1001000000003, -1001000000004)
POSTS_PER_CHANNEL = 4
ROUNDS = 1000
WAIT_THRESHOLD_MS = 100
SIGNAL_TEXT = "🟢Swing Trade\nAtivo: PETR4\nCompra: 36,50\nAlvo 1: 39,00\nStop: 34,80"
START = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

Key = tuple[int, int]
Connection = psycopg.Connection[Any]

MARK_PUBLISHED = "SELECT telegram_gateway.mark_batch_as_published(%s::bigint[], %s::bigint[])"
CLAIM = (
    "SELECT channel_id, message_id FROM telegram_gateway.claim_messages_by_key"
    "(%s, %s::bigint[], %s::bigint[], 300)"
)
APPLY = "SELECT count(*) FILTER (WHERE applied) FROM tp_capital.apply_processing_results(%s, %s)"
UPSERT = "SELECT count(*) FILTER (WHERE inserted) FROM telegram_gateway.bulk_upsert_messages(%s)"


@dataclass
class Tally:
    """What the workers met, over the whole run."""

    deadlocks: int = 0
    long_waits: int = 0
    published: int = 0
    applied: int = 0
    retries: list[Callable[[Connection], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, amount: int) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + amount)

    def failed(self, exc: psycopg.Error, retry: Callable[[Connection], None]) -> bool:
        """Count a statement PostgreSQL rolled back for a deadlock or a long lock wait and keep
        it to retry; False for any other error."""
        with self.lock:
            if isinstance(exc, pg_errors.DeadlockDetected):
                self.deadlocks += 1
            elif isinstance(exc, pg_errors.LockNotAvailable):
                self.long_waits += 1
            else:
                return False
            self.retries.append(retry)
            return True


def round_keys(round_no: int) -> list[Key]:
    """The round's posts in arrival order: the channels take turns."""
    return [
        (channel, round_no * POSTS_PER_CHANNEL + n + 1)
        for n in range(POSTS_PER_CHANNEL)
        for channel in CHANNELS
    ]


def posts_json(round_no: int, keys: list[Key]) -> str:
    first = START + timedelta(seconds=round_no)
    return json.dumps(
        [
            {
                "channel_id": channel,
                "message_id": message_id,
                "telegram_date": (first + timedelta(milliseconds=i)).isoformat(),
                "text": SIGNAL_TEXT if message_id % 3 == 0 else f"chatter {message_id}",
            }
            for i, (channel, message_id) in enumerate(keys)
        ]
    )


SIGNAL = {
    "asset": "PETR4",
    "signal_type": "swing_trade",
    "buy_min": "36.50",
    "buy_max": "36.50",
    "target_1": "39.00",
    "target_2": None,
    "target_final": None,
    "stop": "34.80",
}


def result(key: Key) -> dict[str, Any]:
    """What the poller decided for a post: every third one is a signal."""
    channel, message_id = key
    is_signal = message_id % 3 == 0
    return {
        "channel_id": channel,
        "message_id": message_id,
        "state": "processed" if is_signal else "ignored",
        "error": None,
        "signal": SIGNAL if is_signal else None,
    }


def results_json(keys: list[Key]) -> str:
    return json.dumps([result(key) for key in keys])


def mark_published(conn: Connection, keys: list[Key], tally: Tally) -> None:
    row = conn.execute(MARK_PUBLISHED, ([c for c, _ in keys], [m for _, m in keys])).fetchone()
    tally.add("published", int(row[0]) if row else 0)


def apply(conn: Connection, consumer: str, keys: list[Key], tally: Tally) -> None:
    row = conn.execute(APPLY, (consumer, results_json(keys))).fetchone()
    tally.add("applied", int(row[0]) if row else 0)


def claim(conn: Connection, consumer: str, keys: list[Key]) -> list[Key]:
    rows = conn.execute(CLAIM, (consumer, [c for c, _ in keys], [m for _, m in keys])).fetchall()
    return [(int(c), int(m)) for c, m in rows]


class Workers:
    """Two gateway threads marking and two poller threads applying, in lock step by round."""

    def __init__(self, dsn: str, tally: Tally) -> None:
        self.dsn = dsn
        self.tally = tally
        self.go = threading.Barrier(5)
        self.done = threading.Barrier(5)
        self.jobs: dict[str, Callable[[Connection], None]] = {}
        self.stopping = False
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, args=(name,), name=name, daemon=True)
            for name in ("gateway-0", "gateway-1", "poller-0", "poller-1")
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def run_round(self, jobs: dict[str, Callable[[Connection], None]]) -> None:
        self.jobs = jobs
        self.go.wait(timeout=30)
        self.done.wait(timeout=30)

    def stop(self) -> None:
        self.stopping = True
        self.go.wait(timeout=30)
        for thread in self.threads:
            thread.join(30)

    def _run(self, name: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                self.go.wait(timeout=30)
                if self.stopping:
                    return
                job = self.jobs.get(name)
                if job is not None:
                    try:
                        job(conn)
                    except Exception as exc:  # reported by the test, not lost in a thread
                        if not (isinstance(exc, psycopg.Error) and self.tally.failed(exc, job)):
                            self.errors.append(exc)
                self.done.wait(timeout=30)


def round_jobs(
    setup: Connection, round_no: int, tally: Tally
) -> dict[str, Callable[[Connection], None]]:
    """Store the round's posts, let each poller claim half of them, and hand out the work:
    gateway-0 marks the first three quarters, gateway-1 the last three quarters (half of the
    posts in both), each poller applies what it claimed."""
    keys = round_keys(round_no)
    setup.execute(UPSERT, (posts_json(round_no, keys),))
    held = {p: claim(setup, f"poller-{p}", keys[p::2]) for p in (0, 1)}
    quarter = len(keys) // 4
    first, second = keys[: 3 * quarter], keys[quarter:]
    return {
        "gateway-0": lambda conn: mark_published(conn, first, tally),
        "gateway-1": lambda conn: mark_published(conn, second, tally),
        "poller-0": lambda conn: apply(conn, "poller-0", held[0], tally),
        "poller-1": lambda conn: apply(conn, "poller-1", held[1], tally),
    }


@pytest.fixture
def contended_db(db: TestDatabase) -> TestDatabase:
    """The test database with a 20 ms deadlock_timeout and the wait threshold as
    lock_timeout, for every session opened from now on."""
    with psycopg.connect(db.superuser_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{db.name}\" SET deadlock_timeout = '20ms'")
        conn.execute(f"ALTER DATABASE \"{db.name}\" SET lock_timeout = '{WAIT_THRESHOLD_MS}ms'")
    return db


def deadlock_counter_settled(conn: Connection, before: int | None, floor: int) -> int | None:
    """The deadlocks counted since ``before``, once the exited workers' statistics are in
    (at least ``floor``, what the clients saw), or after 12 s."""
    deadline = time.monotonic() + 12
    while True:
        counted = deadlocks_between(before, read_deadlocks(conn))
        if counted is None or counted >= floor or time.monotonic() > deadline:
            return counted
        time.sleep(0.2)


def test_publish_marks_and_applies_on_overlapping_batches_never_deadlock_nor_wait_long(
    contended_db: TestDatabase,
) -> None:
    tally = Tally()
    workers = Workers(contended_db.direct_dsn, tally)
    watch = LockWatch(contended_db.direct_dsn, interval=0.005, settle=0.0)
    started = time.monotonic()
    with psycopg.connect(contended_db.direct_dsn, autocommit=True) as setup:
        before = read_deadlocks(setup)
        workers.start()
        watch.start()
        try:
            for round_no in range(ROUNDS):
                workers.run_round(round_jobs(setup, round_no, tally))
                for retry in tally.retries:
                    retry(setup)
                tally.retries.clear()
        finally:
            workers.stop()
            waits: LockFigures = watch.finish()
        seconds = time.monotonic() - started
        deadlocks_counted = deadlock_counter_settled(setup, before, tally.deadlocks)
        finished = setup.execute(
            "SELECT count(*) FILTER (WHERE processing_state IN ('processed', 'ignored')"
            " AND metadata ->> 'marks' = '1'),"
            " (SELECT count(*) FROM telegram_gateway.get_unpublished_messages(0, 10000))"
            " FROM telegram_gateway.messages"
        ).fetchone()
        signals = setup.execute("SELECT count(*) FROM tp_capital.signals").fetchone()
    assert not workers.errors
    posts = ROUNDS * len(CHANNELS) * POSTS_PER_CHANNEL
    report = (
        f"{ROUNDS} rounds in {seconds:.1f} s: {tally.deadlocks} deadlocks caught, "
        f"pg_stat_database.deadlocks +{deadlocks_counted}, {tally.long_waits} lock waits over "
        f"{WAIT_THRESHOLD_MS} ms; sampled: longest wait {waits.longest_lock_wait_ms} ms, "
        f"{waits.lock_waits_seen} waits seen in {waits.samples} samples"
    )
    print(report)
    assert (tally.deadlocks, deadlocks_counted, tally.long_waits) == (0, 0, 0), report
    # Nothing lost, nothing done twice: each post published once, finished and marked once.
    assert tally.published == posts, report
    assert tally.applied == posts, report
    assert finished == (posts, 0), report
    assert signals is not None
    assert signals[0] == sum(1 for r in range(ROUNDS) for _, m in round_keys(r) if m % 3 == 0)
