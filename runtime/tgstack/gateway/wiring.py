"""What a gateway is built from: settings → store, cache, publisher → pipeline and relay.

``components`` opens the database pool, the Redis cache and the RabbitMQ publisher a gateway
needs (cache and publisher only when configured) and closes them on the way out;
``build_pipeline`` and ``build_relay`` put the ingest pipeline and the outbox relay on top.
Every source uses them: the Telethon service and replay (``tgstack.gateway.service``), the
spool (``tgstack.gateway.spool``) and the load test's in-process sender.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from tgstack.cache import MessageCache
from tgstack.config import Settings
from tgstack.db import Database, DatabaseUnavailable
from tgstack.gateway.outbox import OutboxRelay
from tgstack.gateway.pipeline import IngestPipeline
from tgstack.queue import MessagePublisher
from tgstack.redis_client import redis_client_from


@dataclass
class Components:
    """The open connections of one gateway process."""

    database: Database
    cache: MessageCache | None
    publisher: MessagePublisher | None

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self.cache is not None:
            self.cache.close()
        self.database.close()


@contextlib.contextmanager
def components(settings: Settings, *, source: str) -> Iterator[Components]:
    """Open what ``settings`` configure; ``source`` labels the publisher's messages."""
    database = Database(
        settings.require_database_url(),
        min_size=settings.database_pool_min,
        max_size=settings.database_pool_max,
        prepared_statements=settings.database_prepared_statements,
    )
    database.open()
    cache = None
    if settings.redis_configured:
        cache = MessageCache(redis_client_from(settings), fallback=database)
    publisher = None
    if settings.amqp_url is not None:
        publisher = MessagePublisher(settings.require_amqp_url(), source=source)
    parts = Components(database, cache, publisher)
    try:
        yield parts
    finally:
        parts.close()


def build_pipeline(parts: Components) -> IngestPipeline:
    """The ingest pipeline over ``parts``; a database outage is transient (retried)."""
    return IngestPipeline(
        store=parts.database,
        cache=parts.cache,
        publisher=parts.publisher,
        transient_errors=(DatabaseUnavailable,),
    )


def build_relay(parts: Components, settings: Settings) -> OutboxRelay | None:
    """The outbox relay of a long-running gateway (none without RabbitMQ)."""
    if parts.publisher is None:
        return None
    return OutboxRelay(
        parts.database, parts.publisher, interval_seconds=settings.gateway_outbox_interval_seconds
    )
