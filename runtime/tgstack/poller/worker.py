"""Claim → parse → store signals and marks in one transaction. Shared by both paths.

Every message is claimed before it is processed (a lease in PostgreSQL), and results are
applied fenced by that claim, so any number of pollers can run at once and each message is
processed exactly once; a crashed poller's claims expire and are taken over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from tgstack import metrics
from tgstack.models import DEFAULT_LINK_WINDOW, MessageKey, ProcessingResult, StoredMessage
from tgstack.poller.processing import decide

log = logging.getLogger("tgstack.poller")


class PollerStore(Protocol):
    """What the poller needs from PostgreSQL (tgstack.db.Database provides it)."""

    def claim_unprocessed(
        self,
        consumer: str,
        *,
        limit: int = ...,
        lease_seconds: int = ...,
        channel_id: int | None = ...,
    ) -> list[StoredMessage]: ...
    def claim_by_keys(
        self, consumer: str, keys: Sequence[MessageKey], lease_seconds: int = ...
    ) -> list[StoredMessage]: ...
    def apply_processing_results(
        self, consumer: str, results: Sequence[ProcessingResult], link_window: timedelta = ...
    ) -> list[tuple[MessageKey, bool]]: ...
    def release_expired_claims(self, max_attempts: int = ...) -> int: ...
    def retire_signals_of_deleted(
        self,
        channel_id: int | None = ...,
        message_ids: Sequence[int] | None = ...,
        link_window: timedelta = ...,
    ) -> int: ...
    def polling_lag_seconds(self) -> float: ...
    def unlinked_signal_events(self) -> int: ...


class RecentWindow(Protocol):
    """The Redis recent window (tgstack.cache.MessageCache provides it)."""

    def get_unprocessed(self, channel_id: int | None, limit: int) -> list[StoredMessage]: ...
    def mark_processed_many(self, done: Mapping[int, Sequence[int]]) -> int: ...
    def still_pending(self, keys: Sequence[MessageKey]) -> set[MessageKey] | None: ...


@dataclass
class PollStats:
    claimed: int = 0
    processed: int = 0
    ignored: int = 0
    failed: int = 0
    stale: int = 0
    signals: int = 0

    def add(self, other: PollStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class SignalWorker:
    def __init__(
        self,
        store: PollerStore,
        *,
        consumer: str,
        cache: RecentWindow | None = None,
        channels: Sequence[int] = (),
        batch_size: int = 100,
        lease_seconds: int = 60,
        max_attempts: int = 3,
        link_window: timedelta = DEFAULT_LINK_WINDOW,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.cache = cache
        self.channels = list(channels)
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.link_window = link_window

    def process(self, messages: Sequence[StoredMessage]) -> PollStats:
        """Decide each claimed message and apply the results in one transaction."""
        stats = PollStats(claimed=len(messages))
        if not messages:
            return stats
        results = [decide(message) for message in messages]
        outcome = dict(
            self.store.apply_processing_results(self.consumer, results, self.link_window)
        )
        done: dict[int, list[int]] = {}
        for result in results:
            if not outcome.get(result.key, False):
                stats.stale += 1  # our lease expired and someone else owns it now
                continue
            setattr(stats, result.state, getattr(stats, result.state) + 1)
            if result.signal is not None:
                stats.signals += 1
            if result.kind is not None:
                metrics.POLLER_POSTS_CLASSIFIED.labels(result.kind).inc()
            done.setdefault(result.key.channel_id, []).append(result.key.message_id)
        if self.cache is not None and done:
            self.cache.mark_processed_many(done)  # one Redis round trip for every channel
        _count(stats)
        return stats

    def claim_keys(self, keys: Sequence[MessageKey]) -> list[StoredMessage]:
        return self.store.claim_by_keys(self.consumer, keys, self.lease_seconds) if keys else []

    def poll_once(self) -> PollStats:
        """One poll: recent window first (per channel), then PostgreSQL for anything left."""
        started = time.perf_counter()
        self.store.release_expired_claims(self.max_attempts)
        claimed: list[StoredMessage] = []
        if self.cache is not None:
            for channel_id in self.channels:
                window = self.cache.get_unprocessed(channel_id, self.batch_size)
                claimed += self.claim_keys([m.key for m in window])
        if len(claimed) < self.batch_size:
            claimed += self.store.claim_unprocessed(
                self.consumer,
                limit=self.batch_size - len(claimed),
                lease_seconds=self.lease_seconds,
            )
        metrics.POLLER_POLL_SECONDS.observe(time.perf_counter() - started)
        stats = self.process(claimed)
        retired = self.store.retire_signals_of_deleted(link_window=self.link_window)
        if retired:
            metrics.POLLER_SIGNALS_RETIRED.inc(retired)
        metrics.POLLER_LAG_SECONDS.set(self.store.polling_lag_seconds())
        metrics.POLLER_EVENTS_UNLINKED.set(self.store.unlinked_signal_events())
        return stats

    def drain(self, deadline: float | None = None) -> PollStats:
        """Poll until nothing is pending (or the deadline passes); used by tests and tools.

        A poll that claimed less than a full batch has seen everything pending (the database
        claim asked for the rest and got fewer), so the drain ends there rather than with one
        more poll that can only find empty windows (it made 40 % of the Redis reads misses).
        """
        total = PollStats()
        while deadline is None or time.monotonic() < deadline:
            stats = self.poll_once()
            total.add(stats)
            if stats.claimed < self.batch_size:
                break
        return total


def _count(stats: PollStats) -> None:
    for state in ("processed", "ignored", "failed"):
        metrics.POLLER_MESSAGES.labels(state).inc(getattr(stats, state))
    metrics.POLLER_MESSAGES.labels("stale").inc(stats.stale)
    metrics.POLLER_SIGNALS.inc(stats.signals)
