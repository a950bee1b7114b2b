"""RabbitMQ topology and the confirmed publisher, against a real broker."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from amqpstorm.uri_connection import UriConnection

from tgstack.models import MessageRecord
from tgstack.queue import (
    DEAD_LETTER_QUEUE,
    EXCHANGE,
    MessagePublisher,
    consumer_queue_name,
    declare_topology,
)
from tgstack_testing.localstack import RabbitMQServer

CHANNEL = -1001649127710


def record(message_id: int) -> MessageRecord:
    return MessageRecord.create(
        CHANNEL, message_id, datetime(2026, 11, 1, 12, 0, tzinfo=UTC), text=f"post {message_id}"
    )


def queue_depth(url: str, queue: str) -> int:
    connection = UriConnection(url)
    try:
        result = connection.channel().queue.declare(queue, passive=True)
        return int(result["message_count"])
    finally:
        connection.close()


def test_topology_declaration_is_idempotent_and_creates_quorum_queues(amqp_url: str) -> None:
    connection = UriConnection(amqp_url)
    channel = connection.channel()
    declare_topology(channel, ["tp-capital"])
    declare_topology(channel, ["tp-capital"])  # same arguments again: no error
    channel.exchange.declare(EXCHANGE, exchange_type="topic", durable=True, passive=True)
    for name in (DEAD_LETTER_QUEUE, consumer_queue_name("tp-capital")):
        channel.queue.declare(name, passive=True)
    connection.close()


def test_published_message_is_persistent_with_id_and_headers(amqp_url: str) -> None:
    with MessagePublisher(amqp_url, source="replay") as publisher:
        outcome = publisher.publish(record(11))
    assert outcome.published
    assert outcome.attempts == 1
    connection = UriConnection(amqp_url)
    message = connection.channel().basic.get(consumer_queue_name("tp-capital"), no_ack=True)
    connection.close()
    assert message is not None
    assert message.properties["message_id"] == f"{CHANNEL}:11"
    assert message.properties["delivery_mode"] == 2
    headers = message.properties["headers"]
    assert headers["source"] == "replay"
    assert headers["channel_id"] == str(CHANNEL)
    assert message.method["routing_key"] == f"telegram.channel.{CHANNEL}"
    assert json.loads(message.body)["text"] == "post 11"


def test_unroutable_message_is_not_counted_as_published(amqp_url: str) -> None:
    with MessagePublisher(amqp_url, consumers=(), attempts=2, backoff_seconds=0.01) as publisher:
        outcome = publisher.publish(record(12))
    assert not outcome.published
    assert outcome.attempts == 2
    assert outcome.error is not None
    assert "NO_ROUTE" in outcome.error


def test_publisher_reports_failure_while_broker_is_down_and_recovers_after(
    own_rabbitmq: RabbitMQServer,
) -> None:
    url = own_rabbitmq.url()
    publisher = MessagePublisher(
        url, attempts=3, backoff_seconds=0.05, timeout=2, cooldown_seconds=1.0
    )
    assert publisher.publish(record(1)).published
    own_rabbitmq.stop()
    down = publisher.publish(record(2))
    assert not down.published
    assert down.attempts == 3
    started = time.monotonic()
    cooling = publisher.publish(record(4))
    assert not cooling.published
    assert cooling.attempts == 0  # fails fast while the broker is known to be down
    assert time.monotonic() - started < 0.1
    own_rabbitmq.start()
    time.sleep(1.0)
    assert publisher.publish(record(3)).published
    publisher.close()
    assert queue_depth(url, consumer_queue_name("tp-capital")) == 2
