"""Durable-first ingestion: micro-batch → PostgreSQL → (after commit) Redis and RabbitMQ.

A batch is committed to PostgreSQL before anything else sees it. While the database is
unavailable the batch is retried with backoff and nothing is acknowledged. Redis and RabbitMQ
come after the commit and may fail without loss: a message the broker did not confirm stays
unpublished in PostgreSQL and the outbox relay sends it later.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from tgstack import metrics
from tgstack.gateway.events import MessageEvent
from tgstack.models import MessageKey, MessageRecord

log = logging.getLogger("tgstack.gateway.pipeline")

T = TypeVar("T")


class UpsertOutcome(Protocol):
    @property
    def inserted(self) -> Sequence[MessageKey]: ...


class MessageStore(Protocol):
    """What the pipeline needs from PostgreSQL (tgstack.db.Database provides it)."""

    def bulk_upsert(self, records: Sequence[MessageRecord]) -> UpsertOutcome: ...
    def message_exists(self, channel_id: int, message_id: int) -> bool: ...
    def apply_edit(self, record: MessageRecord) -> bool: ...
    def soft_delete(self, channel_id: int, message_ids: Sequence[int]) -> int: ...
    def mark_published(self, keys: Sequence[MessageKey]) -> int: ...


class HotCache(Protocol):
    """What the pipeline needs from Redis (tgstack.cache.MessageCache provides it)."""

    def cache_message(self, record: MessageRecord) -> bool: ...
    def cache_messages(self, records: Sequence[MessageRecord]) -> bool: ...
    def mark_processed(self, channel_id: int, message_ids: Sequence[int]) -> int: ...


class Publisher(Protocol):
    def publish(self, record: MessageRecord, event: str = "new") -> object: ...
    def publish_batch(self, records: Sequence[MessageRecord], event: str = "new") -> object: ...
    def publish_delete(self, channel_id: int, message_ids: Sequence[int]) -> object: ...


class StoreUnavailable(Exception):
    """Raised by a store when it cannot reach PostgreSQL (retry later)."""


@dataclass
class BatchStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    edits: int = 0
    deletes: int = 0
    published: int = 0
    unpublished: int = 0
    rejected: int = 0

    def add(self, other: BatchStats) -> None:
        for name in BatchStats.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _published(outcome: object) -> bool:
    return bool(getattr(outcome, "published", outcome))


@dataclass
class IngestPipeline:
    store: MessageStore
    cache: HotCache | None = None
    publisher: Publisher | None = None
    retry_initial: float = 0.2
    retry_max: float = 5.0
    is_stopping: Callable[[], bool] = field(default=lambda: False)
    transient_errors: tuple[type[BaseException], ...] = (StoreUnavailable,)
    invalid_errors: tuple[type[BaseException], ...] = (ValueError,)

    def process_batch(self, events: Sequence[MessageEvent]) -> BatchStats:
        """Commit a batch, then cache and publish what is new. Retries while the DB is down.

        Input the database refuses never stops the pipeline: the batch is split down to the
        offending event, which is counted as rejected and logged; the rest is stored.
        """
        stats = BatchStats(received=len(events))
        news = _unique_new_records(events)
        if news:
            stored = self._store_new(news, stats)
            stats.stored = len(stored)
            stats.duplicates = sum(1 for e in events if e.kind == "new") - len(stored)
            stats.duplicates -= stats.rejected
            self._observe_commit(events, stored)
            self._after_commit(stored, stats)
        for event in events:
            try:
                if event.kind == "edit" and event.record is not None:
                    self._apply_edit(event.record, stats)
                elif event.kind == "delete":
                    self._apply_delete(event, stats)
            except self.invalid_errors as exc:
                self._reject(event.kind, event.channel_id, event.message_ids, exc, stats)
        return stats

    def _store_new(
        self, records: Sequence[MessageRecord], stats: BatchStats
    ) -> list[MessageRecord]:
        try:
            outcome = self._retry_db("bulk_upsert", lambda: self.store.bulk_upsert(records))
        except self.invalid_errors as exc:
            if len(records) == 1:
                record = records[0]
                self._reject("new", record.channel_id, (record.message_id,), exc, stats)
                return []
            middle = len(records) // 2
            return self._store_new(records[:middle], stats) + self._store_new(
                records[middle:], stats
            )
        inserted = set(outcome.inserted)
        return [r for r in records if r.key in inserted]

    def _reject(
        self,
        kind: str,
        channel_id: int,
        message_ids: Sequence[int],
        exc: BaseException,
        stats: BatchStats,
    ) -> None:
        stats.rejected += 1
        metrics.GATEWAY_REJECTED.labels("database").inc()
        log.error(
            "event rejected by the database",
            extra={
                "kind": kind,
                "channel_id": channel_id,
                "message_ids": list(message_ids),
                "error": str(exc),
            },
        )

    def _after_commit(self, stored: Sequence[MessageRecord], stats: BatchStats) -> None:
        if self.cache is not None and stored:
            self.cache.cache_messages(stored)
        if self.publisher is None or not stored:
            stats.unpublished += len(stored)
            return
        outcome = self.publisher.publish_batch(stored)
        confirmed = [r.key for r in stored] if _published(outcome) else []
        stats.published += len(confirmed)
        stats.unpublished += len(stored) - len(confirmed)
        metrics.GATEWAY_PUBLISH.labels("pipeline", "ok").inc(len(confirmed))
        metrics.GATEWAY_PUBLISH.labels("pipeline", "failed").inc(len(stored) - len(confirmed))
        if confirmed:
            try:
                self.store.mark_published(confirmed)
            except self.transient_errors:
                # The relay will publish these again; consumers dedupe by message id.
                log.warning("could not mark batch published", extra={"count": len(confirmed)})

    def _apply_edit(self, record: MessageRecord, stats: BatchStats) -> None:
        if record.edit_date is None:
            # Sources without an edit time (some replay lines): the time we saw it. Replaying
            # the same text again is still a no-op, because unchanged text is not an edit.
            record = record.with_changes(edit_date=datetime.now(UTC))
        if not self._retry_db("apply_edit", lambda: self.store.apply_edit(record)):
            key = record.key
            if not self._retry_db("message_exists", lambda: self.store.message_exists(*key)):
                # An edit of a post we never stored (missed while down): store it as new.
                stored = self._store_new([record], stats)
                stats.stored += len(stored)
                metrics.GATEWAY_STORED.inc(len(stored))
                self._after_commit(stored, stats)
            return
        stats.edits += 1
        metrics.GATEWAY_EDITS.inc()
        if self.cache is not None:
            self.cache.cache_message(record)
        if self.publisher is not None:
            self.publisher.publish(record, event="edit")

    def _apply_delete(self, event: MessageEvent, stats: BatchStats) -> None:
        removed = self._retry_db(
            "soft_delete", lambda: self.store.soft_delete(event.channel_id, event.message_ids)
        )
        if not removed:
            return
        stats.deletes += removed
        metrics.GATEWAY_DELETES.inc(removed)
        if self.cache is not None:
            self.cache.mark_processed(event.channel_id, event.message_ids)
        if self.publisher is not None:
            self.publisher.publish_delete(event.channel_id, event.message_ids)

    def _observe_commit(
        self, events: Sequence[MessageEvent], stored: Sequence[MessageRecord]
    ) -> None:
        now = time.time()
        for event in events:
            if event.kind == "new":
                metrics.GATEWAY_INGEST_LATENCY.observe(max(0.0, now - event.observed_at))
        metrics.GATEWAY_STORED.inc(len(stored))
        metrics.GATEWAY_DUPLICATES.inc(sum(1 for e in events if e.kind == "new") - len(stored))
        metrics.GATEWAY_BATCH_SIZE.observe(len(events))
        newest: dict[int, float] = {}
        for record in stored:
            stamp = record.telegram_date.timestamp()
            newest[record.channel_id] = max(newest.get(record.channel_id, 0.0), stamp)
        for channel_id, stamp in newest.items():
            metrics.GATEWAY_LAST_MESSAGE.labels(str(channel_id)).set(stamp)

    def _retry_db(self, operation: str, call: Callable[[], T]) -> T:
        delay = self.retry_initial
        while True:
            try:
                return call()
            except self.transient_errors as exc:
                if self.is_stopping():
                    raise
                metrics.GATEWAY_DB_RETRIES.inc()
                log.warning(
                    "database unavailable, retrying batch",
                    extra={"operation": operation, "retry_in": round(delay, 2), "error": str(exc)},
                )
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max)


def _unique_new_records(events: Sequence[MessageEvent]) -> list[MessageRecord]:
    seen: set[MessageKey] = set()
    records: list[MessageRecord] = []
    for event in events:
        if event.kind == "new" and event.record is not None and event.record.key not in seen:
            seen.add(event.record.key)
            records.append(event.record)
    return records


class BatchingWorker:
    """Collects events from any thread into micro-batches (size and time bound) for a pipeline."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        batch_size: int = 500,
        max_delay: float = 0.05,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.on_batch = on_batch
        self.totals = BatchStats()
        self.failures = 0
        self._queue: queue.Queue[MessageEvent] = queue.Queue()
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self.pipeline.is_stopping = self._abandon.is_set

    def submit(self, event: MessageEvent) -> None:
        metrics.GATEWAY_EVENTS.labels(event.kind, _source(event)).inc()
        self._queue.put(event)
        metrics.GATEWAY_PENDING_EVENTS.set(self._queue.qsize())

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _next_batch(self) -> list[MessageEvent]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.max_delay
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=max(0.0, remaining))
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._next_batch()
            if not batch:
                continue
            stats = self._process_until_done(batch)
            if stats is None:
                return
            self.totals.add(stats)
            metrics.GATEWAY_PENDING_EVENTS.set(self._queue.qsize())
            if self.on_batch is not None:
                self.on_batch(stats)

    def _process_until_done(self, batch: list[MessageEvent]) -> BatchStats | None:
        """Process a batch, retrying on unexpected errors; None once abandoned at shutdown."""
        delay = self.pipeline.retry_initial
        while True:
            try:
                return self.pipeline.process_batch(batch)
            except Exception:
                if self._abandon.is_set():
                    log.error("shutdown: batch abandoned uncommitted", extra={"events": len(batch)})
                    return None
                self.failures += 1
                log.exception("batch failed; retrying", extra={"retry_in": delay})
                time.sleep(delay)
                delay = min(delay * 2, self.pipeline.retry_max)

    def stop(self, timeout: float = 30.0) -> bool:
        """Flush what is queued, then stop. Returns False if it could not finish in time.

        Events still uncommitted after ``timeout`` (the database stayed down) are abandoned;
        the Telegram source fetches them again by backfill on the next start.
        """
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(self.pipeline.retry_max + 1)
            return False
        return True


def _source(event: MessageEvent) -> str:
    return event.record.source if event.record is not None else "live"
