"""Durable-first ingestion: micro-batch → PostgreSQL → (after commit) Redis and RabbitMQ.

A batch is committed to PostgreSQL before anything else sees it. While the database is
unavailable the batch is retried with backoff and nothing is acknowledged; the live gateway's
queue meanwhile holds a bounded number of events (tgstack.gateway.backpressure). Redis and RabbitMQ
come after the commit and may fail without loss: a message the broker did not confirm stays
unpublished in PostgreSQL and the outbox relay sends it later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from tgstack import metrics
from tgstack.gateway.backpressure import Overflow, StateDirError
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
            "event_rejected_by_database",
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
                log.warning("mark_published_failed", extra={"count": len(confirmed)})

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
                    "batch_retrying",
                    extra={
                        "reason": "database_unavailable",
                        "operation": operation,
                        "retry_in": round(delay, 2),
                        "error": str(exc),
                    },
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
    """Collects events from any thread into micro-batches (size and time bound) for a pipeline.

    Without a ``limit`` every event is queued (the replay reads its file no faster than it is
    committed anyway). With a ``limit`` (the live gateway) at most that many events wait in
    memory; beyond it the queue overflows into ``overflow`` (tgstack.gateway.backpressure): new
    posts are refused and their channels marked for backfill, edits and deletions spilled to
    disk and applied in order once the queue has drained, and ``on_drained`` is called then.
    """

    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        batch_size: int = 500,
        max_delay: float = 0.05,
        on_batch: Callable[[BatchStats], None] | None = None,
        limit: int | None = None,
        overflow: Overflow | None = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        if limit is not None and (limit < 1 or overflow is None):
            raise ValueError("a queue limit needs limit >= 1 and an overflow store")
        self.pipeline = pipeline
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.on_batch = on_batch
        self.limit = limit
        self.overflow = overflow
        self.on_drained = on_drained
        self.totals = BatchStats()
        self.failures = 0
        self._events: deque[MessageEvent] = deque()
        self._ready = threading.Condition()
        self._depth = 0  # events accepted into memory and not committed (queued or in hand)
        self._in_hand: list[MessageEvent] = []
        self._in_hand_spilled = False
        self._overflowing = overflow is not None and len(overflow.spill) > 0
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self.pipeline.is_stopping = self._abandon.is_set
        if limit is not None:
            metrics.GATEWAY_QUEUE_LIMIT.set(limit)
        self._show(0)

    def submit(self, event: MessageEvent) -> str:
        """Take an event: ``queued``, ``spilled`` (to disk, applied later) or ``refused`` (a
        new post while the queue overflows: its channel is marked for backfill)."""
        metrics.GATEWAY_EVENTS.labels(event.kind, _source(event)).inc()
        with self._ready:
            if self.limit is None or (not self._overflowing and self._depth < self.limit):
                outcome = self._queue(event)
            else:
                if not self._overflowing:
                    self._overflowing = True
                    log.warning(
                        "ingest_queue_full",
                        extra={"limit": self.limit, "new_posts": "refused", "changes": "spilled"},
                    )
                outcome = self._overflow(event)
            depth = self._depth
        self._show(depth)
        return outcome

    def _queue(self, event: MessageEvent) -> str:
        self._events.append(event)
        self._depth += 1
        self._ready.notify()
        return "queued"

    def _overflow(self, event: MessageEvent) -> str:
        assert self.overflow is not None
        metrics.GATEWAY_QUEUE_OVERFLOW.labels(event.kind).inc()
        if event.kind == "new":
            if self.overflow.marks.mark(event.channel_id, min(event.message_ids) - 1):
                log.warning(
                    "channel_marked_for_backfill",
                    extra={"channel_id": event.channel_id, "from_id": min(event.message_ids) - 1},
                )
            return "refused"
        try:
            self.overflow.spill.append(event)
        except StateDirError as exc:
            # Never drop an edit or a deletion: hold it in memory, beyond the limit.
            log.error("spill_failed", extra={"error": str(exc), "kept": "in_memory"})
            return self._queue(event)
        return "spilled"

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        """Events in memory not committed yet (the queue depth)."""
        return self._depth

    @property
    def overflowing(self) -> bool:
        return self._overflowing

    def has_room(self, events: int = 100) -> bool:
        """Whether ``events`` more (a history page, by default) fit in the queue now; an empty
        queue always has room, however small its limit."""
        depth = self._depth
        return not self._overflowing and (
            self.limit is None or depth == 0 or depth + events <= self.limit
        )

    def _show(self, depth: int) -> None:
        metrics.GATEWAY_QUEUE_DEPTH.set(depth)
        metrics.GATEWAY_PENDING_EVENTS.set(depth)

    def _next_batch(self) -> list[MessageEvent]:
        with self._ready:
            if not self._events and self._overflowing and self.overflow is not None:
                spilled = self.overflow.spill.read(self.batch_size)
                if spilled:  # everything queued before the spill is committed: apply it now
                    self._in_hand, self._in_hand_spilled = spilled, True
                    return spilled
            if not self._events:
                self._ready.wait(0.2)
                if not self._events:
                    return []
            batch = [self._events.popleft()]
            deadline = time.monotonic() + self.max_delay
            while len(batch) < self.batch_size:
                if self._events:
                    batch.append(self._events.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    break
                self._ready.wait(remaining)
            self._in_hand, self._in_hand_spilled = batch, False
            return batch

    def _run(self) -> None:
        while not (self._stop.is_set() and not self._events):
            batch = self._next_batch()
            if not batch:
                self._drained()
                continue
            stats = self._process_until_done(batch)
            if stats is None:
                return
            with self._ready:
                if self._in_hand_spilled:
                    assert self.overflow is not None
                    try:
                        self.overflow.spill.applied()
                    except OSError as exc:  # applied again after a restart: idempotent
                        log.error("spill_progress_save_failed", extra={"error": str(exc)})
                else:
                    self._depth -= len(batch)
                self._in_hand = []
                depth = self._depth
            self._show(depth)
            self._drained()
            self.totals.add(stats)
            if self.on_batch is not None:
                self.on_batch(stats)

    def _drained(self) -> None:
        """End the overflow once every queued and spilled event is committed."""
        with self._ready:
            if not self._overflowing or self._events or self._depth:
                return
            if self.overflow is not None and len(self.overflow.spill):
                return
            self._overflowing = False
        log.info("ingest_queue_drained")
        if self.on_drained is not None:
            self.on_drained()

    def _process_until_done(self, batch: list[MessageEvent]) -> BatchStats | None:
        """Process a batch, retrying on unexpected errors; None once abandoned at shutdown."""
        delay = self.pipeline.retry_initial
        while True:
            try:
                return self.pipeline.process_batch(batch)
            except Exception:
                if self._abandon.is_set():
                    log.error("shutdown_batch_abandoned", extra={"events": len(batch)})
                    return None
                self.failures += 1
                log.exception("batch_failed", extra={"retry_in": delay})
                time.sleep(delay)
                delay = min(delay * 2, self.pipeline.retry_max)

    def stop(self, timeout: float = 30.0) -> bool:
        """Flush what is queued, then stop. Returns False if it could not finish in time.

        Events still uncommitted after ``timeout`` (the database stayed down) are abandoned:
        with an overflow store, their edits and deletions go to the spill's head and their new
        posts become backfill marks (the next start applies and backfills them); without one,
        the Telegram source fetches them again by backfill on the next start.
        """
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(self.pipeline.retry_max + 1)
            self._keep_abandoned()
            return False
        if self.overflow is not None:
            self.overflow.spill.close()
        return True

    def _keep_abandoned(self) -> None:
        if self.overflow is None:
            return
        with self._ready:
            held = ([] if self._in_hand_spilled else list(self._in_hand)) + list(self._events)
            if self._in_hand_spilled:
                self.overflow.spill.unread()
            self._events.clear()
            self._in_hand = []
        self.overflow.marks.mark_all(held)
        changes = [event for event in held if event.kind != "new"]
        try:
            self.overflow.spill.prepend(changes)
        except OSError as exc:
            log.error("spill_failed_at_shutdown", extra={"error": str(exc), "events": len(changes)})
        self.overflow.spill.close()
        log.warning(
            "shutdown_uncommitted_kept",
            extra={"spilled": len(changes), "marked_posts": len(held) - len(changes)},
        )


def _source(event: MessageEvent) -> str:
    return event.record.source if event.record is not None else "live"
