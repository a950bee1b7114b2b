"""Which posts are done, read back from PostgreSQL: the end-to-end clock of a load test.

Once a second the observer asks the database which of the posts still outstanding have been
finished by a poller (processing_state processed, ignored or failed) and takes each one's
timestamps from its row: ``telegram_date`` (sent), ``received_at`` (committed by the
gateway), ``published_at`` (confirmed by RabbitMQ; from ``message_outbox``) and
``processed_at`` (the poller's transaction that stored the signal and the mark). Latencies
are therefore measured, not estimated; the clocks are the load test's (sent) and
PostgreSQL's (the rest), the same clock when both run on one host.

Recent posts are found with one range query over the load-test channels' newest rows
(``idx_telegram_messages_analytics``); posts older than ``recent_window`` are looked up by key,
the oldest ``straggler_batch`` of them per round, so a run that falls behind does not turn the
observer into the heaviest client of the database. ``collect_all`` looks every outstanding
post up at the end. A post that went through Telegram is dated by the server in whole seconds,
up to a second before it was sent: ``date_resolution`` widens the range query by that much.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from tgstack.loadtest.posts import SentPost
from tgstack.models import MessageKey

DONE_STATES = ("processed", "ignored", "failed")

_COLUMNS = (
    "m.channel_id, m.message_id, extract(epoch FROM m.received_at)::float8,"
    " extract(epoch FROM coalesce(m.published_at, o.published_at))::float8,"
    " extract(epoch FROM m.processed_at)::float8,"
    " m.processing_state"
)
# The broker's confirmation is recorded in the outbox table (sql/050_publish_outbox.sql).
_OUTBOX = (
    " LEFT JOIN telegram_gateway.message_outbox o ON o.channel_id = m.channel_id"
    " AND o.message_id = m.message_id AND o.telegram_date = m.telegram_date"
)
_RECENT = (
    f"SELECT {_COLUMNS} FROM telegram_gateway.messages m{_OUTBOX}"
    " WHERE m.channel_id = ANY(%s) AND m.telegram_date >= %s"
    " AND m.processing_state IN ('processed', 'ignored', 'failed')"
)
_BY_KEY = (
    f"SELECT {_COLUMNS} FROM unnest(%s::bigint[], %s::bigint[]) AS u(channel_id, message_id)"
    " JOIN telegram_gateway.message_keys k"
    "   ON k.channel_id = u.channel_id AND k.message_id = u.message_id"
    " JOIN telegram_gateway.messages m"
    "   ON m.channel_id = k.channel_id AND m.message_id = k.message_id"
    "  AND m.telegram_date = k.telegram_date"
    f"{_OUTBOX}"
    " WHERE m.processing_state IN ('processed', 'ignored', 'failed')"
)


@dataclass(frozen=True, slots=True)
class DonePost:
    """A finished post and its timestamps (Unix seconds)."""

    key: MessageKey
    sent_at: float
    is_signal: bool
    received_at: float
    published_at: float | None
    processed_at: float
    state: str

    @property
    def latency(self) -> float:
        """End to end: sent → the poller's commit of its result (signal and mark)."""
        return self.processed_at - self.sent_at

    @property
    def ingest_latency(self) -> float:
        """Sent → committed in PostgreSQL by the gateway."""
        return self.received_at - self.sent_at


class Observer:
    def __init__(
        self,
        conninfo: str,
        channels: Sequence[int],
        *,
        recent_window: float = 3.0,
        straggler_batch: int = 1000,
        date_resolution: float = 0.0,
    ) -> None:
        self.channels = list(channels)
        self.recent_window = recent_window
        self.date_resolution = date_resolution
        self.straggler_batch = straggler_batch
        self._conninfo = conninfo
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()  # the incoming list (the sender's thread)
        self._state = threading.RLock()  # outstanding and done (progress and main threads)
        self._incoming: list[SentPost] = []
        self.outstanding: dict[MessageKey, SentPost] = {}
        self.done: list[DonePost] = []

    def open(self) -> None:
        self._conn = psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=None)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def add(self, posts: Iterable[SentPost]) -> None:
        """Posts just handed to the gateway (any thread)."""
        with self._lock:
            self._incoming.extend(posts)

    def _take_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for post in incoming:
            self.outstanding[post.key] = post

    def oldest_outstanding(self) -> float | None:
        with self._state:
            self._take_incoming()
            if not self.outstanding:
                return None
            return min(post.sent_at for post in self.outstanding.values())

    def poll(self, now: float | None = None) -> list[DonePost]:
        """One round: the posts found finished since the last round."""
        with self._state:
            return self._poll(now)

    def _poll(self, now: float | None) -> list[DonePost]:
        oldest = self.oldest_outstanding()
        if oldest is None:
            return []
        now = time.time() if now is None else now
        lower = max(oldest, now - self.recent_window) - 0.001
        dated_from = datetime.fromtimestamp(lower - self.date_resolution, UTC)
        rows = self._query(_RECENT, (self.channels, dated_from))
        stragglers = sorted(
            (p for p in self.outstanding.values() if p.sent_at < lower), key=lambda p: p.sent_at
        )
        rows += self._by_key([p.key for p in stragglers[: self.straggler_batch]])
        return self._finish(rows)

    def collect_all(self) -> list[DonePost]:
        """Look every outstanding post up by key (the final sweep)."""
        with self._state:
            self._take_incoming()
            found: list[DonePost] = []
            keys = list(self.outstanding)
            for start in range(0, len(keys), 5000):
                found += self._finish(self._by_key(keys[start : start + 5000]))
            return found

    def _by_key(self, keys: Sequence[MessageKey]) -> list[tuple[Any, ...]]:
        if not keys:
            return []
        return self._query(_BY_KEY, ([k.channel_id for k in keys], [k.message_id for k in keys]))

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self.open()
        assert self._conn is not None
        return self._conn.execute(sql, params).fetchall()

    def _finish(self, rows: Iterable[tuple[Any, ...]]) -> list[DonePost]:
        finished: list[DonePost] = []
        for channel_id, message_id, received, published, processed, state in rows:
            if processed is None:
                continue
            post = self.outstanding.pop(MessageKey(int(channel_id), int(message_id)), None)
            if post is None:
                continue
            finished.append(
                DonePost(
                    post.key,
                    post.sent_at,
                    post.is_signal,
                    float(received),
                    None if published is None else float(published),
                    float(processed),
                    str(state),
                )
            )
        self.done += finished
        return finished
