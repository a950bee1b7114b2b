"""Deadlocks and lock waits of one database while a load-test step runs.

Two figures per step:

* **deadlocks**: the change of ``pg_stat_database.deadlocks`` for the database between the
  start and the end of the step (every deadlock PostgreSQL detected and broke, whichever
  client it hit). A backend adds its deadlocks to the shared counter when it flushes its
  statistics: at exit, or when it goes idle at least a second after its last flush, else after
  10 s of idleness (PostgreSQL 15+). The end reading is therefore taken ``settle`` seconds
  (11 by default) after the step stopped; ``finish`` waits only for what is left of that
  after the caller's own end-of-step work (accounting), so the wait costs little.
* **longest lock wait**: a thread samples ``pg_locks`` every ``interval`` seconds and keeps the
  largest ``clock_timestamp() - waitstart`` of a lock not yet granted to a backend of this
  database (heavyweight locks only: row locks show as waits on the holder's transaction id or
  on the tuple; lightweight locks and buffer pins are not lock waits). ``waitstart`` is set by
  the waiting backend itself, so the figure is the wait's real length at the moment of the
  sample: it misses at most the last ``interval`` of a wait, and waits shorter than
  ``interval`` may go unseen (they are also the harmless ones). The count of distinct waits
  seen (by backend and wait start) goes with it.

The sampler uses its own connection (direct or through PgBouncer, one statement per sample)
and costs one catalog query per interval.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

log = logging.getLogger("tgstack.loadtest.locks")

DEADLOCKS_SQL = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
# Waits of this database's backends; transaction-id locks carry no database, hence the join.
LOCK_WAITS_SQL = (
    "SELECT l.pid, l.waitstart, extract(epoch FROM clock_timestamp() - l.waitstart)::float8"
    " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE NOT l.granted AND l.waitstart IS NOT NULL AND a.datname = current_database()"
)


@dataclass(frozen=True, slots=True)
class LockFigures:
    """What a step cost in deadlocks and lock waits."""

    deadlocks: int | None
    longest_lock_wait_ms: float
    lock_waits_seen: int
    samples: int
    sample_interval_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_deadlocks(conn: psycopg.Connection[Any]) -> int | None:
    """``pg_stat_database.deadlocks`` of the connection's database (None if not readable)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(DEADLOCKS_SQL).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def deadlocks_between(before: int | None, after: int | None) -> int | None:
    """The deadlocks of a step from two counter readings (None when either is missing; a
    counter reset in between counts from zero)."""
    if before is None or after is None:
        return None
    return after - before if after >= before else after


class LockWatch:
    """A step's deadlocks and longest lock wait: ``start()``, the step, ``finish()``."""

    def __init__(self, conninfo: str, *, interval: float = 0.01, settle: float = 11.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.conninfo = conninfo
        self.interval = interval
        self.settle = settle
        self._conn: psycopg.Connection[Any] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadlocks_before: int | None = None
        self._longest = 0.0
        self._waits: set[tuple[int, datetime]] = set()
        self._samples = 0
        self._errors = 0
        self._stopped_at: float | None = None

    def start(self) -> None:
        self._conn = psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None)
        self._deadlocks_before = read_deadlocks(self._conn)
        self._thread = threading.Thread(target=self._run, name="lock-watch", daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        """End the lock-wait sampling (the step is over); the deadlock reading comes later."""
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)

    def finish(self) -> LockFigures:
        """The step's figures: waits until ``settle`` seconds after ``stop_sampling`` (called
        now if it was not), then reads the deadlock counter again."""
        self.stop_sampling()
        assert self._stopped_at is not None
        after: int | None = None
        if self._conn is not None:
            time.sleep(max(0.0, self._stopped_at + self.settle - time.monotonic()))
            try:
                after = read_deadlocks(self._conn)
            finally:
                self._conn.close()
                self._conn = None
        return LockFigures(
            deadlocks=deadlocks_between(self._deadlocks_before, after),
            longest_lock_wait_ms=round(self._longest * 1000, 1),
            lock_waits_seen=len(self._waits),
            samples=self._samples,
            sample_interval_ms=round(self.interval * 1000, 1),
        )

    def __enter__(self) -> LockWatch:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_sampling()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def sample(self) -> None:
        """One look at the waiting locks (also called by the thread)."""
        assert self._conn is not None
        for pid, waitstart, seconds in self._conn.execute(LOCK_WAITS_SQL).fetchall():
            self._waits.add((int(pid), waitstart))
            self._longest = max(self._longest, float(seconds or 0.0))
        self._samples += 1

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.sample()
            except psycopg.Error as exc:  # a sampling hiccup must not end the step
                self._errors += 1
                if self._errors == 1:
                    log.warning("lock_sampling_failed", extra={"error": str(exc)})
