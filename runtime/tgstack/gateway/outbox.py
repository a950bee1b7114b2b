"""The outbox relay: publishes stored messages that RabbitMQ never confirmed.

PostgreSQL is the outbox: ``telegram_gateway.message_outbox`` holds each stored message's
publish state, written in the same statement that stores the message; a row with
``published_at IS NULL`` was committed but not confirmed by the broker. The relay sends such
messages (oldest first, once they are a few seconds old so it does not race the pipeline) and
marks them published. A message published twice is harmless: consumers dedupe by message id.

The publish state has a table of its own so that the gateway never writes the message row the
poller locks (``sql/050_publish_outbox.sql``: on that row the gateway's marks and the poller's
applies deadlocked, 48 times in 1,000 rounds of ``tests/integration/test_lock_contention.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tgstack import metrics
from tgstack.models import MessageKey, MessageRecord

log = logging.getLogger("tgstack.gateway.outbox")


class OutboxStore(Protocol):
    def fetch_unpublished(self, limit: int, min_age_seconds: float) -> list[MessageRecord]: ...
    def mark_published(self, keys: Sequence[MessageKey]) -> int: ...
    def count_unpublished(self) -> int: ...


class OutboxPublisher(Protocol):
    def publish_batch(self, records: Sequence[MessageRecord], event: str = "new") -> object: ...


@dataclass(frozen=True)
class RelayStats:
    published: int
    failed: int
    remaining: int


class OutboxRelay:
    def __init__(
        self,
        store: OutboxStore,
        publisher: OutboxPublisher,
        *,
        batch_size: int = 500,
        min_age_seconds: float = 5.0,
        interval_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.batch_size = batch_size
        self.min_age_seconds = min_age_seconds
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> RelayStats:
        """Publish unconfirmed rows until none is left or the broker fails."""
        published = failed = 0
        while not self._stop.is_set():
            records = self.store.fetch_unpublished(self.batch_size, self.min_age_seconds)
            if not records:
                break
            confirmed: list[MessageKey] = []
            if getattr(self.publisher.publish_batch(records), "published", False):
                confirmed = [record.key for record in records]
            else:
                failed += len(records)  # the broker is down: try again next round
            if confirmed:
                self.store.mark_published(confirmed)
                published += len(confirmed)
            metrics.GATEWAY_PUBLISH.labels("outbox", "ok").inc(len(confirmed))
            if failed or len(records) < self.batch_size:
                break
        metrics.GATEWAY_PUBLISH.labels("outbox", "failed").inc(failed)
        remaining = self.store.count_unpublished()
        metrics.GATEWAY_OUTBOX_DEPTH.set(remaining)
        if published or failed:
            log.info(
                "outbox_relay_round",
                extra={"published": published, "failed": failed, "remaining": remaining},
            )
        return RelayStats(published, failed, remaining)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.run_once()
            except Exception as exc:  # the DB may be down; the next round tries again
                log.warning("outbox_relay_round_failed", extra={"error": str(exc)})

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
