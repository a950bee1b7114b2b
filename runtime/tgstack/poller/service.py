"""``tgstack poller --mode queue|poll|hybrid``: wiring, the run loops and graceful shutdown.

- ``queue``: consume the poller's RabbitMQ queue only.
- ``poll``: poll PostgreSQL (Redis recent window first) every ``poller_poll_interval_seconds``.
- ``hybrid``: the queue, plus a poll every ``poller_safety_poll_seconds`` (30 s) as the
  safety net for anything the queue never delivered (published while the poller was down,
  dead-lettered, or stored while RabbitMQ was down).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import asdict
from datetime import timedelta
from typing import Any, Literal

from tgstack.cache import MessageCache
from tgstack.config import Settings
from tgstack.db import Database, DatabaseUnavailable
from tgstack.health_server import HealthServer
from tgstack.poller.consumer import QueueConsumer
from tgstack.poller.worker import PollStats, SignalWorker
from tgstack.redis_client import redis_client_from

log = logging.getLogger("tgstack.poller")

Mode = Literal["queue", "poll", "hybrid"]
SHUTDOWN_GRACE_SECONDS = 30.0


def consumer_name(settings: Settings) -> str:
    """A name unique per process, so claims can be told apart: host:pid."""
    return f"{settings.poller_consumer}@{socket.gethostname()}:{os.getpid()}"


class PollerService:
    def __init__(self, settings: Settings, mode: Mode) -> None:
        self.settings = settings
        self.mode = mode
        self.stopping = threading.Event()
        self.totals = PollStats()
        self._lock = threading.Lock()
        self.database = Database(
            settings.require_database_url(),
            min_size=settings.database_pool_min,
            max_size=settings.database_pool_max,
            prepared_statements=settings.database_prepared_statements,
        )
        self.cache = (
            MessageCache(redis_client_from(settings), fallback=self.database)
            if settings.redis_configured
            else None
        )
        self.worker, self.poll_worker = (
            SignalWorker(
                self.database,
                consumer=consumer_name(settings) + suffix,
                cache=self.cache,
                channels=settings.channels,
                batch_size=settings.poller_batch_size,
                lease_seconds=settings.poller_lease_seconds,
                link_window=timedelta(hours=settings.poller_signal_link_window_hours),
            )
            # The queue and the poll loop claim under names of their own: a claim is renewed
            # by the same name (a redelivery), so one shared name let the safety poll take a
            # post the queue thread was processing and both apply it (marks = 2, seen in the
            # load test at 2,000 posts/s).
            for suffix in ("", "/poll")
        )
        self.consumer = (
            QueueConsumer(
                settings.require_amqp_url(),
                self.worker,
                consumer=settings.poller_consumer,
                transient_errors=(DatabaseUnavailable,),
                prefetch=settings.poller_prefetch,
                on_batch=self._add,
            )
            if mode in ("queue", "hybrid")
            else None
        )
        self.health = HealthServer(settings.poller_bind, settings.poller_port, self.check)

    def _add(self, stats: PollStats) -> None:
        with self._lock:
            self.totals.add(stats)

    def check(self) -> tuple[bool, dict[str, Any]]:
        database = self.database.ping()
        details: dict[str, Any] = {
            "mode": self.mode,
            "database": database,
            "totals": asdict(self.totals),
        }
        if self.cache is not None:
            details["redis"] = self.cache.stats().redis_error is None
        return database, details

    def poll_loop(self, interval: float) -> None:
        while not self.stopping.is_set():
            try:
                stats = self.poll_worker.drain()
                self._add(stats)
                if stats.claimed:
                    log.info("poll_round", extra=asdict(stats))
            except DatabaseUnavailable as exc:
                log.warning(
                    "poll_skipped", extra={"reason": "database_unavailable", "error": str(exc)}
                )
            except Exception:
                log.exception("poll_round_failed")
            self.stopping.wait(interval)

    def run(self) -> None:
        self.database.open(wait=False)
        self.health.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        threads: list[threading.Thread] = []
        if self.consumer is not None:
            self.consumer.stopping = self.stopping
            threads.append(threading.Thread(target=self.consumer.run, name="queue"))
        if self.mode in ("poll", "hybrid"):
            interval = (
                self.settings.poller_poll_interval_seconds
                if self.mode == "poll"
                else self.settings.poller_safety_poll_seconds
            )
            threads.append(threading.Thread(target=self.poll_loop, args=(interval,), name="poll"))
        for thread in threads:
            thread.start()
        log.info("poller_started", extra={"mode": self.mode, "consumer": self.worker.consumer})
        self.stopping.wait()
        log.info("poller_stopping")
        for thread in threads:
            thread.join(SHUTDOWN_GRACE_SECONDS)
        self.health.stop()
        if self.cache is not None:
            self.cache.close()
        self.database.close()
        log.info("poller_stopped", extra=asdict(self.totals))


def run_poller(settings: Settings, mode: Mode) -> None:
    PollerService(settings, mode).run()
