"""RabbitMQ topology and the confirmed publisher (amqpstorm).

Topology (declared idempotently by every process that connects):
  exchange ``telegram.messages`` (topic, durable), routing key ``telegram.channel.{id}``;
  dead-letter exchange ``telegram.messages.dlx`` (fanout) → quorum queue ``telegram.messages.dlq``
  (24 h message TTL, bounded length); one quorum queue per consumer, bound to
  ``telegram.channel.*`` and dead-lettering into the DLX.

Publishing is confirmed and ``mandatory``: a message counts as published only when the broker
has taken responsibility for it and routed it to at least one queue. Batches are published in
one AMQP transaction (``tx.select`` / ``tx.commit``): the commit-ok is the confirmation for the
whole batch, and a ``basic.return`` (unroutable) fails the batch. amqpstorm waits for every
synchronous reply by polling every 10 ms, so per-message publisher confirms would cap a channel
near 100 messages/s; one commit per batch pays that wait once.

Latency: amqpstorm leaves Nagle's algorithm on, and a publish is several small writes (method,
header, body frames, then tx.commit): with the broker's delayed ACK, every commit waited ~40 ms
(measured: tx.commit p50 51 ms → 10.6 ms with TCP_NODELAY → 1.4 ms when the reply is also
polled every millisecond). ``tune_connection`` sets TCP_NODELAY on every connection we open,
and ``IDLE_WAIT`` shortens amqpstorm's polling: for synchronous replies, and in
``Channel.process_data_events``, which sleeps that long whenever nothing has arrived (so a
consumer picked each delivery up 10 ms late, and again for its batch).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import amqpstorm.channel
import amqpstorm.rpc
from amqpstorm.channel import Channel
from amqpstorm.exception import AMQPError
from amqpstorm.uri_connection import UriConnection
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from tgstack.models import MessageRecord

EXCHANGE = "telegram.messages"
DEAD_LETTER_EXCHANGE = "telegram.messages.dlx"
DEAD_LETTER_QUEUE = "telegram.messages.dlq"
CHANNEL_BINDING = "telegram.channel.*"
DLQ_MESSAGE_TTL_MS = 24 * 3600 * 1000
DLQ_MAX_LENGTH = 100_000
DEFAULT_CONSUMER_QUEUES = ("tp-capital",)

log = logging.getLogger("tgstack.queue")

BODY_FRAME_MAX = 131072 - 8
"""Largest body frame payload: RabbitMQ's default frame_max less the frame overhead."""
WRITE_CHUNK = 100
"""Messages whose frames go to the socket in one write."""

IDLE_WAIT = 0.001
"""Seconds between amqpstorm's checks for a reply or a delivery (its default is 0.01)."""
amqpstorm.rpc.IDLE_WAIT = IDLE_WAIT  # type: ignore[attr-defined]
amqpstorm.channel.IDLE_WAIT = IDLE_WAIT  # type: ignore[attr-defined]


def tune_connection(connection: UriConnection) -> None:
    """Turn Nagle's algorithm off on an open connection (see the module docstring)."""
    sock = getattr(getattr(connection, "_io", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # not TCP (a test double) or already closed
            log.debug("tcp_nodelay_failed", extra={"error": str(exc)})


class QueueError(RuntimeError):
    """RabbitMQ could not be reached or refused an operation."""


def routing_key(channel_id: int) -> str:
    return f"telegram.channel.{channel_id}"


def consumer_queue_name(consumer: str) -> str:
    return f"telegram.consumer.{consumer}"


def message_id(record: MessageRecord) -> str:
    return f"{record.channel_id}:{record.message_id}"


def declare_topology(channel: Channel, consumers: Iterable[str] = DEFAULT_CONSUMER_QUEUES) -> None:
    """Declare exchanges, the DLQ and the consumer queues; a no-op when they already exist."""
    channel.exchange.declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange.declare(DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue.declare(
        DEAD_LETTER_QUEUE,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-message-ttl": DLQ_MESSAGE_TTL_MS,
            "x-max-length": DLQ_MAX_LENGTH,
        },
    )
    channel.queue.bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, routing_key="#")
    for consumer in consumers:
        name = consumer_queue_name(consumer)
        channel.queue.declare(
            name,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE},
        )
        channel.queue.bind(name, EXCHANGE, routing_key=CHANNEL_BINDING)


def encode_record(record: MessageRecord) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class PublishOutcome:
    published: bool
    attempts: int
    error: str | None = None


class MessagePublisher:
    """Publishes stored messages with confirms, retrying with backoff, reconnecting as needed.

    ``publish`` never raises for broker trouble: it returns an outcome, and a message that was
    not confirmed stays unpublished in PostgreSQL for the outbox relay to send later.
    """

    def __init__(
        self,
        url: str,
        *,
        source: str = "gateway",
        consumers: Iterable[str] = DEFAULT_CONSUMER_QUEUES,
        attempts: int = 3,
        backoff_seconds: float = 0.2,
        timeout: float = 5.0,
        cooldown_seconds: float = 5.0,
    ) -> None:
        self._url = url
        self._source = source
        self._consumers = tuple(consumers)
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._timeout = timeout
        self._cooldown = cooldown_seconds
        self._down_until = 0.0
        self._connection: UriConnection | None = None
        self._channel: Channel | None = None
        self._lock = threading.Lock()

    def _ensure_channel(self) -> Channel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._close_quietly()
        separator = "&" if "?" in self._url else "?"
        connection = UriConnection(
            f"{self._url}{separator}timeout={self._timeout:g}&heartbeat=30", lazy=True
        )
        connection.open()
        tune_connection(connection)
        channel = connection.channel()
        declare_topology(channel, self._consumers)
        channel.tx.select()
        self._connection, self._channel = connection, channel
        log.info("rabbitmq_connected", extra={"exchange": EXCHANGE})
        return channel

    def connect(self) -> None:
        """Connect and declare the topology now; raises QueueError when that fails."""
        with self._lock:
            try:
                self._ensure_channel()
            except AMQPError as exc:
                self._close_quietly()
                raise QueueError(f"cannot connect to RabbitMQ: {exc}") from exc

    def publish(self, record: MessageRecord, event: str = "new") -> PublishOutcome:
        """Publish a stored post (``new``) or its edited version (``edit``)."""
        return self.publish_batch([record], event)

    def publish_batch(self, records: Sequence[MessageRecord], event: str = "new") -> PublishOutcome:
        """Publish posts in one transaction: all of them are confirmed, or none is."""
        items = [
            (
                record.channel_id,
                encode_record(record),
                message_id(record) if event == "new" else f"{message_id(record)}:{event}",
            )
            for record in records
        ]
        return self._publish(items, event)

    def publish_delete(self, channel_id: int, message_ids: Sequence[int]) -> PublishOutcome:
        body = json.dumps(
            {"event": "delete", "channel_id": channel_id, "message_ids": list(message_ids)}
        )
        ident = f"{channel_id}:{','.join(map(str, message_ids))}:delete"
        return self._publish([(channel_id, body, ident)], "delete")

    def _publish(self, items: Sequence[tuple[int, str, str]], event: str) -> PublishOutcome:
        if not items:
            return PublishOutcome(True, 0)
        if time.monotonic() < self._down_until:
            # The broker just failed every attempt: fail fast instead of stalling each caller.
            return PublishOutcome(False, 0, "broker unavailable (cooling down)")
        error = "not attempted"
        for attempt in range(1, self._attempts + 1):
            try:
                with self._lock:
                    self._publish_once(items, event)
                return PublishOutcome(True, attempt)
            except (AMQPError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._close_quietly()
            if attempt < self._attempts:
                time.sleep(self._backoff * 2 ** (attempt - 1))
        self._down_until = time.monotonic() + self._cooldown
        log.warning("publish_failed", extra={"messages": len(items), "error": error})
        return PublishOutcome(False, self._attempts, error)

    def _publish_once(self, items: Sequence[tuple[int, str, str]], event: str) -> None:
        """Write the batch's frames in a few socket writes, then commit the transaction.

        amqpstorm's ``Message.publish`` marshals and writes each message on its own (and
        validates and copies its properties): 560 µs a message in the ingest benchmark, the
        largest cost of the gateway. The frames are the same (basic.publish, content header,
        body), built with pamqp as amqpstorm does and written ``WRITE_CHUNK`` messages at once.
        """
        channel = self._ensure_channel()
        now = datetime.now(UTC)
        frames: list[Any] = []
        for number, (channel_id, body, ident) in enumerate(items, start=1):
            properties = commands.Basic.Properties(
                message_id=ident,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                timestamp=now,
                headers={"source": self._source, "channel_id": str(channel_id), "event": event},
            )
            payload = body.encode("utf-8")
            frames.append(
                commands.Basic.Publish(
                    exchange=EXCHANGE, routing_key=routing_key(channel_id), mandatory=True
                )
            )
            frames.append(ContentHeader(body_size=len(payload), properties=properties))
            frames.extend(
                ContentBody(payload[start : start + BODY_FRAME_MAX])
                for start in range(0, len(payload), BODY_FRAME_MAX)
            )
            if number % WRITE_CHUNK == 0:
                channel.write_frames(frames)
                frames = []
        if frames:
            channel.write_frames(frames)
        channel.tx.commit()
        # A basic.return (unroutable) arrives before commit-ok; it fails the whole batch.
        channel.check_for_exceptions()

    def _close_quietly(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                log.debug("rabbitmq_close_failed", exc_info=True)

    @property
    def connected(self) -> bool:
        return self._channel is not None and self._channel.is_open

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    def __enter__(self) -> MessagePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
