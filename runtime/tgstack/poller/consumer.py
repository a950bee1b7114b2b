"""The queue path: consume the poller's quorum queue, manual ack, prefetch 100 by default.

Prefetch bounds a batch. The reference stack used 10; measured here, claiming and applying a
batch costs 2.3 + 8.2 ms for 10 posts and 9.2 + 17.4 ms for 100 (about 920 against 3,350
posts/s for one poller), and at a low rate batches stay small anyway (``batch_wait``), so
the default is 100 (``TGSTACK_POLLER_PREFETCH``).

Deliveries are gathered into small batches (up to the prefetch count or ``batch_wait``, 2 ms:
at a high rate the buffer refills while a batch is processed, so batches grow by themselves;
at a low rate a post does not wait for company), claimed in PostgreSQL by key, processed, and
acknowledged after the results are committed. A delivery for a message already processed is
simply acknowledged (duplicates are harmless).

A claim skips rows another transaction has locked. Until ``sql/050_publish_outbox.sql`` the
gateway's ``mark_published`` locked the message row right after the broker confirmed it, so a
fresh delivery often arrived while its row was locked (seen as a 20 s p99 in the load test:
the post waited for the next safety poll); the publish state now has a table of its own, and
what still locks a fresh row is an edit being applied or a concurrent claim. Keys of a *fresh*
first delivery (published in the last ``FRESH_SECONDS``) that a claim skipped are claimed again
after ``reclaim_delays`` (2, 10, 50 ms); those Redis still lists in the channel's recent window
(so not finished by anyone) are tried again for up to 1.5 s more (``reclaim_pending_delays``),
which covers a machine too busy for the lock holder to finish quickly. Older or redelivered
deliveries are not retried (a backlog of deliveries for posts the safety poll already finished
would otherwise be slowed down by the waits); what is not claimable is held by another poller
or already finished, and is acknowledged.

Failures: while PostgreSQL is unavailable the batch is retried in place with backoff and
nothing is acknowledged (the broker redelivers it if we die). A delivery that fails for any
other reason is requeued after an exponential backoff and, on its third failure, rejected
into the dead-letter queue and marked failed in PostgreSQL with the error.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amqpstorm.channel import Channel
from amqpstorm.exception import AMQPError
from amqpstorm.message import Message
from amqpstorm.uri_connection import UriConnection

from tgstack import metrics
from tgstack.models import MessageKey, StoredMessage, validate_channel_id, validate_message_id
from tgstack.poller.processing import failed
from tgstack.poller.worker import PollStats, SignalWorker
from tgstack.queue import (
    DEAD_LETTER_QUEUE,
    consumer_queue_name,
    declare_topology,
    tune_connection,
)

log = logging.getLogger("tgstack.poller.queue")

PREFETCH = 100
FRESH_SECONDS = 2.0


class PoisonMessage(ValueError):
    """A delivery whose body cannot be understood."""


@dataclass(frozen=True)
class Delivery:
    message: Message
    event: str
    keys: tuple[MessageKey, ...]

    @property
    def fresh(self) -> bool:
        """A first delivery published moments ago (its row may still be locked by an edit or a
        concurrent claim)."""
        if self.message.redelivered:
            return False
        stamp = self.message.properties.get("timestamp")
        if not isinstance(stamp, datetime):
            return False
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return (datetime.now(UTC) - stamp).total_seconds() <= FRESH_SECONDS

    @property
    def attempts(self) -> int:
        """Deliveries so far, from the quorum queue's delivery counter."""
        headers = self.message.properties.get("headers") or {}
        return int(headers.get("x-delivery-count", 0) or 0) + 1


def parse_delivery(message: Message) -> Delivery:
    headers = message.properties.get("headers") or {}
    event = headers.get("event", "new")
    if isinstance(event, bytes):
        event = event.decode()
    try:
        body = json.loads(message.body or "")
        channel_id = validate_channel_id(body["channel_id"])
        if event == "delete":
            ids = tuple(validate_message_id(i) for i in body["message_ids"])
        else:
            ids = (validate_message_id(body["message_id"]),)
    except (ValueError, KeyError, TypeError) as exc:
        raise PoisonMessage(f"unreadable delivery: {exc}") from exc
    return Delivery(message, str(event), tuple(MessageKey(channel_id, i) for i in ids))


class QueueConsumer:
    def __init__(
        self,
        url: str,
        worker: SignalWorker,
        *,
        consumer: str = "tp-capital",
        transient_errors: tuple[type[BaseException], ...] = (),
        backoff_seconds: float = 0.5,
        max_attempts: int = 3,
        batch_wait: float = 0.002,
        reclaim_delays: tuple[float, ...] = (0.002, 0.01, 0.05),
        reclaim_pending_delays: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8),
        prefetch: int = PREFETCH,
        on_batch: Callable[[PollStats], None] | None = None,
    ) -> None:
        self.url = url
        self.worker = worker
        self.queue = consumer_queue_name(consumer)
        self.transient_errors = transient_errors
        self.backoff_seconds = backoff_seconds
        self.max_attempts = max_attempts
        self.batch_wait = batch_wait
        self.reclaim_delays = reclaim_delays
        self.reclaim_pending_delays = reclaim_pending_delays
        self.prefetch = prefetch
        self.on_batch = on_batch
        self.stopping = threading.Event()
        self._buffer: list[Message] = []
        self._connection: UriConnection | None = None
        self._channel: Channel | None = None

    # Connection ----------------------------------------------------------------------------

    def _connect(self) -> Channel:
        separator = "&" if "?" in self.url else "?"
        self._connection = UriConnection(f"{self.url}{separator}heartbeat=30&timeout=5")
        tune_connection(self._connection)  # acks and claims answered without Nagle's delay
        channel = self._connection.channel()
        declare_topology(channel)
        channel.basic.qos(self.prefetch)
        channel.basic.consume(self._buffer.append, self.queue, no_ack=False)
        self._channel = channel
        log.info("consuming", extra={"queue": self.queue, "prefetch": self.prefetch})
        return channel

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # the connection is being discarded
                log.debug("rabbitmq_close_failed", exc_info=True)

    def queue_depths(self) -> tuple[int, int]:
        """(ready in our queue, messages in the DLQ), also exported as gauges."""
        channel = self._channel
        if channel is None:
            return -1, -1
        ours = int(channel.queue.declare(self.queue, passive=True)["message_count"])
        dlq = int(channel.queue.declare(DEAD_LETTER_QUEUE, passive=True)["message_count"])
        metrics.POLLER_QUEUE_DEPTH.set(ours)
        metrics.POLLER_DLQ_DEPTH.set(dlq)
        return ours, dlq

    # Consuming -----------------------------------------------------------------------------

    def run(self) -> None:
        """Consume until ``stopping`` is set; reconnects with backoff when the broker drops."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                channel = self._connect()
                delay = 0.5
                self._consume(channel)
            except AMQPError as exc:
                log.warning("rabbitmq_unavailable", extra={"error": str(exc), "retry_in": delay})
                self._buffer.clear()  # unacked deliveries come back after reconnecting
                self.close()
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)
        self.close()

    def _consume(self, channel: Channel) -> None:
        last_depth_check = 0.0
        while not self.stopping.is_set():
            channel.process_data_events(to_tuple=False)
            if not self._buffer:
                time.sleep(0.002)
            else:
                deadline = time.monotonic() + self.batch_wait
                while len(self._buffer) < self.prefetch and time.monotonic() < deadline:
                    time.sleep(0.0005)
                    channel.process_data_events(to_tuple=False)
                batch, self._buffer[:] = list(self._buffer), []
                self.handle_batch(batch)
            if time.monotonic() - last_depth_check > 5:
                last_depth_check = time.monotonic()
                self.queue_depths()

    def handle_batch(self, messages: list[Message]) -> None:
        deliveries: list[Delivery] = []
        for message in messages:
            try:
                deliveries.append(parse_delivery(message))
            except PoisonMessage as exc:
                self._fail(message, None, str(exc))
        if not deliveries:
            return
        delay = self.backoff_seconds
        while True:
            try:
                stats = self._process(deliveries)
                break
            except self.transient_errors as exc:
                if self.stopping.is_set():
                    return  # unacked: the broker redelivers to whoever consumes next
                log.warning(
                    "batch_held",
                    extra={"reason": "database_unavailable", "error": str(exc), "retry_in": delay},
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception as exc:  # a per-message problem: retry each on its own
                log.warning("batch_failed_one_by_one", extra={"error": str(exc)})
                for delivery in deliveries:
                    self._process_alone(delivery)
                return
        self._ack_all(deliveries)
        metrics.POLLER_DELIVERIES.labels("acked").inc(len(deliveries))
        if self.on_batch is not None:
            self.on_batch(stats)

    def _ack_all(self, deliveries: list[Delivery]) -> None:
        """Acknowledge a batch with one ``basic.ack(multiple)`` frame.

        Batches are handled one after the other and every delivery of a batch is settled
        (acked, requeued or dead-lettered) before the next, so acknowledging up to the
        batch's highest tag settles exactly this batch.
        """
        tags = [d.message.delivery_tag for d in deliveries]
        if self._channel is None or any(tag is None for tag in tags):
            for delivery in deliveries:
                delivery.message.ack()
            return
        self._channel.basic.ack(delivery_tag=max(int(tag or 0) for tag in tags), multiple=True)

    def _process(self, deliveries: list[Delivery]) -> PollStats:
        news = [key for d in deliveries if d.event != "delete" for key in d.keys]
        fresh = {key for d in deliveries if d.event != "delete" and d.fresh for key in d.keys}
        stats = self.worker.process(self._claim(news, fresh))
        for delivery in deliveries:
            if delivery.event == "delete":
                key = delivery.keys[0]
                retired = self.worker.store.retire_signals_of_deleted(
                    key.channel_id,
                    [k.message_id for k in delivery.keys],
                    link_window=self.worker.link_window,
                )
                metrics.POLLER_SIGNALS_RETIRED.inc(retired)
        return stats

    def _claim(self, keys: list[MessageKey], fresh: set[MessageKey]) -> list[StoredMessage]:
        """Claim the keys, trying again (briefly) for fresh ones a locked row made it skip."""
        claimed = self.worker.claim_keys(keys)
        got = {message.key for message in claimed}
        if len(got) < len(keys):
            metrics.POLLER_DELIVERIES.labels("not_claimable").inc(len(set(keys) - got))
        missing = fresh - got
        for delay in self.reclaim_delays:
            if not missing or self.stopping.is_set():
                break
            time.sleep(delay)
            missing = self._claim_again(missing, claimed)
        # Still locked after the short waits (a busy machine): keep trying, longer, for the
        # posts Redis says are still pending (a post already finished leaves the window).
        cache = self.worker.cache
        for delay in self.reclaim_pending_delays if cache is not None else ():
            if not missing or self.stopping.is_set():
                break
            pending = cache.still_pending(sorted(missing)) if cache is not None else None
            if pending is None:
                break
            missing &= pending
            if not missing:
                break
            time.sleep(delay)
            missing = self._claim_again(missing, claimed)
        return claimed

    def _claim_again(
        self, missing: set[MessageKey], claimed: list[StoredMessage]
    ) -> set[MessageKey]:
        again = self.worker.claim_keys(sorted(missing))
        claimed += again
        metrics.POLLER_DELIVERIES.labels("reclaimed").inc(len(again))
        return missing - {message.key for message in again}

    def _process_alone(self, delivery: Delivery) -> None:
        try:
            self._process([delivery])
            delivery.message.ack()
            metrics.POLLER_DELIVERIES.labels("acked").inc()
        except Exception as exc:
            self._fail(delivery.message, delivery, f"{type(exc).__name__}: {exc}")

    def _fail(self, message: Message, delivery: Delivery | None, error: str) -> None:
        attempts = delivery.attempts if delivery else _attempts(message)
        if attempts < self.max_attempts:
            time.sleep(self.backoff_seconds * 2 ** (attempts - 1))
            message.nack(requeue=True)
            metrics.POLLER_DELIVERIES.labels("requeued").inc()
            log.warning("delivery_requeued", extra={"attempt": attempts, "error": error})
            return
        if delivery is not None:
            self._mark_failed(delivery, error)
        message.reject(requeue=False)
        metrics.POLLER_DELIVERIES.labels("dead_lettered").inc()
        log.error(
            "delivery_dead_lettered",
            extra={
                "attempts": attempts,
                "error": error,
                "message_id": message.properties.get("message_id"),
            },
        )

    def _mark_failed(self, delivery: Delivery, error: str) -> None:
        try:
            claimed = self.worker.claim_keys(list(delivery.keys))
            results = [failed(m.key, error) for m in claimed]
            if results:
                self.worker.store.apply_processing_results(
                    self.worker.consumer, results, self.worker.link_window
                )
        except Exception as exc:
            log.warning("dead_letter_mark_failed", extra={"error": str(exc)})


def _attempts(message: Message) -> int:
    headers: dict[str, Any] = message.properties.get("headers") or {}
    return int(headers.get("x-delivery-count", 0) or 0) + 1
