"""tgstack.loadtest.locks against the real PostgreSQL: a lock wait it samples is as long as the
wait was, and a deadlock PostgreSQL breaks is counted once."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import errors as pg_errors

from tests.conftest import TestDatabase
from tgstack.loadtest.locks import LockWatch


def make_rows(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE lock_probe (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO lock_probe VALUES (1, 0), (2, 0)")


def test_a_held_row_lock_shows_as_a_wait_of_its_length(db: TestDatabase) -> None:
    make_rows(db.direct_dsn)
    watch = LockWatch(db.direct_dsn, interval=0.01, settle=0.0)
    with (
        psycopg.connect(db.direct_dsn) as holder,
        psycopg.connect(db.direct_dsn, autocommit=True) as waiter,
    ):
        holder.execute("UPDATE lock_probe SET n = 1 WHERE id = 1")
        watch.start()
        blocked = threading.Thread(
            target=waiter.execute, args=("UPDATE lock_probe SET n = 2 WHERE id = 1",)
        )
        blocked.start()
        time.sleep(0.5)
        holder.commit()
        blocked.join(10)
        figures = watch.finish()

    assert figures.deadlocks == 0
    assert figures.lock_waits_seen == 1
    assert 300 <= figures.longest_lock_wait_ms <= 1500
    assert figures.samples > 10


def test_a_deadlock_is_counted_once(db: TestDatabase) -> None:
    make_rows(db.direct_dsn)
    with psycopg.connect(db.superuser_dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{db.name}\" SET deadlock_timeout = '50ms'")
    watch = LockWatch(db.direct_dsn, interval=0.01, settle=2.0)
    watch.start()
    failures: list[BaseException] = []
    both_hold_one = threading.Barrier(2)

    def lock_in_order(first: int, second: int) -> None:
        with psycopg.connect(db.direct_dsn) as conn:
            try:
                conn.execute("UPDATE lock_probe SET n = n + 1 WHERE id = %s", (first,))
                both_hold_one.wait(10)
                conn.execute("UPDATE lock_probe SET n = n + 1 WHERE id = %s", (second,))
                conn.commit()
            except pg_errors.DeadlockDetected as exc:
                failures.append(exc)

    threads = [
        threading.Thread(target=lock_in_order, args=order) for order in ((1, 2), (2, 1))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    figures = watch.finish()  # the two sessions have ended: their statistics are in

    assert len(failures) == 1
    assert figures.deadlocks == 1


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_the_sampling_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        LockWatch("dbname=unused", interval=interval)
