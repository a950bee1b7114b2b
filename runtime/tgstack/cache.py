"""The Redis hot cache and dedup index in front of PostgreSQL.

PostgreSQL is the source of truth; Redis is an accelerator that may vanish at any moment.

* **Write contract.** Call ``cache_message`` only after the row is committed in PostgreSQL.
  Redis therefore never holds a message PostgreSQL lacks: a dedup marker means "stored",
  and a message in the recent window can always be read back from the database.
* **Degradation.** No Redis error (connection refused, timeout, READONLY from a demoted
  master, any ResponseError) reaches the caller. Reads fall back to the ``fallback`` store
  (the database); writes return False / 0. Each error is counted
  (``tgstack_cache_operations_total{result="error"}``) and logged on one line. After an
  error, Redis is left alone for ``cooldown`` seconds so a dead server costs no latency.
  Errors of the fallback itself (the database) are not Redis errors and do propagate.

Key names, TTLs and data structures: ``tgstack.keys`` and docs/redis-schema.md.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import redis
from redis.exceptions import RedisError

from tgstack import keys
from tgstack.metrics import CACHE_FALLBACKS, CACHE_OPERATIONS
from tgstack.models import MessageKey, MessageRecord, StoredMessage
from tgstack.redis_client import close_redis_client

logger = logging.getLogger(__name__)

DEFAULT_COOLDOWN = 1.0
_SCAN_CHUNK = 1000


class MessageSource(Protocol):
    """What the cache falls back to: the PostgreSQL ``Database`` provides exactly this."""

    def message_exists(self, channel_id: int, message_id: int) -> bool: ...

    def fetch_unprocessed(self, channel_id: int | None, limit: int) -> list[StoredMessage]: ...


@dataclass(frozen=True, slots=True)
class CacheStats:
    """This cache instance's counters, plus what Redis reports (None when unreachable)."""

    hits: int
    misses: int
    errors: int
    fallbacks: int
    hit_rate: float | None  # hits / (hits + misses) of get_unprocessed; None before any read
    keyspace_hits: int | None = None
    keyspace_misses: int | None = None
    used_memory: int | None = None
    role: str | None = None
    redis_error: str | None = None


class MessageCache:
    """Message bodies, per-channel unprocessed windows and dedup markers in Redis.

    The cache owns ``client`` (``close()`` closes it). ``hot_ttl`` and ``dedup_ttl`` are in
    seconds; ``clock`` returns Unix time in seconds and only decides what
    ``cleanup_expired`` considers old.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        fallback: MessageSource | None = None,
        hot_ttl: int = keys.HOT_CACHE_TTL,
        dedup_ttl: int = keys.DEDUP_TTL,
        clock: Callable[[], float] = time.time,
        cooldown: float = DEFAULT_COOLDOWN,
    ) -> None:
        for name, ttl in (("hot_ttl", hot_ttl), ("dedup_ttl", dedup_ttl)):
            if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
                raise ValueError(f"{name} must be a positive number of seconds, got {ttl!r}")
        if cooldown < 0:
            raise ValueError(f"cooldown must not be negative, got {cooldown!r}")
        self._client = client
        self._fallback = fallback
        self._hot_ttl = hot_ttl
        self._dedup_ttl = dedup_ttl
        self._clock = clock
        self._cooldown = cooldown
        self._down_until = 0.0
        self._failing = False
        self._lock = threading.Lock()
        self._hits = self._misses = self._errors = self._fallbacks = 0

    @property
    def client(self) -> redis.Redis:
        """The Redis client; the cache owns it (``close()`` closes it)."""
        return self._client

    # -- writes ---------------------------------------------------------------------------

    def cache_message(self, record: MessageRecord) -> bool:
        """Cache a message committed in PostgreSQL: body, recent window, dedup marker.

        One pipeline (one round trip, no MULTI). True when Redis took it, False when Redis
        failed (the database path covers the message). Invalid ids raise InvalidMessage.
        """
        return self.cache_messages([record])

    def cache_messages(self, records: Sequence[MessageRecord]) -> bool:
        """``cache_message`` for a batch, in one pipeline (one round trip for all of them)."""
        if not records:
            return True
        if not self._redis_usable("cache_message"):
            return False
        windows: dict[int, dict[str, int]] = {}
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for record in records:
                    self._queue_cache_commands(pipe, record, windows)
                # One ZADD and one EXPIRE per channel, not per message.
                for channel_id, members in windows.items():
                    recent = keys.recent_key(channel_id)
                    pipe.zadd(recent, members)
                    pipe.expire(recent, self._hot_ttl)
                pipe.execute()
        except RedisError as exc:
            self._failed("cache_message", exc)
            return False
        self._succeeded("cache_message", "ok")
        return True

    def _queue_cache_commands(
        self, pipe: Any, record: MessageRecord, windows: dict[int, dict[str, int]]
    ) -> None:
        ch, mid = record.channel_id, record.message_id
        body = json.dumps(record.to_dict(), separators=(",", ":"))
        pipe.set(keys.message_key(ch, mid), body, ex=self._hot_ttl)
        pipe.set(keys.dedup_key(ch, mid), b"1", ex=self._dedup_ttl)
        member = keys.recent_member(mid)
        windows.setdefault(ch, {})[member] = keys.score_ms(record.telegram_date)

    def mark_processed(self, channel_id: int, message_ids: Iterable[int]) -> int:
        """Drop processed messages from the channel's window and their bodies, in one pipeline.

        Returns how many were still in the window (0 on a repeat call, or if Redis failed:
        the processed state itself lives in PostgreSQL). Dedup markers stay.
        """
        ids = list(message_ids)
        recent = keys.recent_key(channel_id)
        members = [keys.recent_member(mid) for mid in ids]
        bodies = [keys.message_key(channel_id, mid) for mid in ids]
        if not ids or not self._redis_usable("mark_processed"):
            return 0
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.zrem(recent, *members)
                pipe.delete(*bodies)
                removed, _ = pipe.execute()
        except RedisError as exc:
            self._failed("mark_processed", exc)
            return 0
        self._succeeded("mark_processed", "ok")
        return int(removed)

    def mark_processed_many(self, done: Mapping[int, Iterable[int]]) -> int:
        """``mark_processed`` for several channels in one pipeline (one round trip)."""
        batches = [(channel, list(ids)) for channel, ids in done.items()]
        batches = [(channel, ids) for channel, ids in batches if ids]
        if not batches or not self._redis_usable("mark_processed"):
            return 0
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for channel_id, ids in batches:
                    pipe.zrem(keys.recent_key(channel_id), *map(keys.recent_member, ids))
                    pipe.delete(*(keys.message_key(channel_id, mid) for mid in ids))
                replies = pipe.execute()
        except RedisError as exc:
            self._failed("mark_processed", exc)
            return 0
        self._succeeded("mark_processed", "ok")
        return sum(int(removed) for removed in replies[::2])

    def still_pending(self, wanted: Sequence[MessageKey]) -> set[MessageKey] | None:
        """The keys still in their channel's recent window (not marked processed yet), in one
        pipeline; None when Redis cannot say."""
        if not wanted or not self._redis_usable("still_pending"):
            return None if wanted else set()
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for key in wanted:
                    pipe.zscore(
                        keys.recent_key(key.channel_id),
                        keys.recent_member(key.message_id),
                    )
                scores = pipe.execute()
        except RedisError as exc:
            self._failed("still_pending", exc)
            return None
        self._succeeded("still_pending", "ok")
        return {key for key, score in zip(wanted, scores, strict=True) if score is not None}

    def cleanup_expired(self, channel_id: int) -> int:
        """Remove window entries older than the hot TTL (by message time) and entries whose
        body has expired. Returns how many were removed (0 if Redis failed)."""
        recent = keys.recent_key(channel_id)
        cutoff_ms = int((self._clock() - self._hot_ttl) * 1000)
        if not self._redis_usable("cleanup_expired"):
            return 0
        try:
            removed = int(self._client.zremrangebyscore(recent, "-inf", f"({cutoff_ms}"))
            orphans: list[bytes | str] = []
            start = 0
            while chunk := self._members(recent, start, start + _SCAN_CHUNK - 1):
                listed = [(member, _member_id(member)) for member in chunk]
                with self._client.pipeline(transaction=False) as pipe:
                    for _, mid in listed:
                        if mid is not None:
                            pipe.exists(keys.message_key(channel_id, mid))
                    exists = iter(pipe.execute())
                orphans += [m for m, mid in listed if mid is None or not next(exists)]
                start += len(chunk)
            for i in range(0, len(orphans), _SCAN_CHUNK):
                removed += int(self._client.zrem(recent, *orphans[i : i + _SCAN_CHUNK]))
        except RedisError as exc:
            self._failed("cleanup_expired", exc)
            return 0
        self._succeeded("cleanup_expired", "ok")
        return removed

    # -- reads ----------------------------------------------------------------------------

    def is_duplicate(self, channel_id: int, message_id: int) -> bool:
        """Has this message been stored recently? One EXISTS on its dedup marker.

        True is definitive (the marker is set only after the commit). False means "not seen
        in the last dedup TTL": the database's insert-if-absent stays the final guard. When
        Redis fails the fallback answers; with no fallback the answer is False.
        """
        dedup = keys.dedup_key(channel_id, message_id)
        if self._redis_usable("is_duplicate"):
            try:
                found = bool(self._client.exists(dedup))
            except RedisError as exc:
                self._failed("is_duplicate", exc)
            else:
                self._succeeded("is_duplicate", "ok")
                return found
        if self._fallback is None:
            return False
        self._count_fallback("is_duplicate", "error")
        return self._fallback.message_exists(channel_id, message_id)

    def get_unprocessed(self, channel_id: int | None, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` unprocessed messages of a channel, oldest first.

        From the recent window when every listed body is still cached (a hit); otherwise
        (empty window, an expired body, Redis failing, or ``channel_id`` None = all channels)
        from the fallback. With no fallback: whatever Redis had, or [] when it failed.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        if channel_id is None:
            return self._read_fallback(None, limit, "all_channels", [])
        recent = keys.recent_key(channel_id)
        if not self._redis_usable("get_unprocessed"):
            return self._read_fallback(channel_id, limit, "error", [])
        try:
            members = self._members(recent, 0, limit - 1)
            ids = [mid for mid in map(_member_id, members) if mid is not None]
            names = [keys.message_key(channel_id, mid) for mid in ids]
            bodies = self._client.mget(names) if names else []
        except RedisError as exc:
            self._failed("get_unprocessed", exc)
            return self._read_fallback(channel_id, limit, "error", [])
        found = [msg for msg in map(_decode, bodies) if msg is not None]
        if members and len(found) == len(members):
            self._succeeded("get_unprocessed", "hit")
            return found
        self._succeeded("get_unprocessed", "miss")
        return self._read_fallback(channel_id, limit, "expired" if members else "empty", found)

    # -- status ---------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Counters of this instance and Redis INFO figures. Never raises; while cooling
        down after a Redis error it does not ask Redis (``redis_error`` says so)."""
        with self._lock:
            hits, misses, errors, fallbacks = (
                self._hits,
                self._misses,
                self._errors,
                self._fallbacks,
            )
        counters: dict[str, Any] = {
            "hits": hits,
            "misses": misses,
            "errors": errors,
            "fallbacks": fallbacks,
            "hit_rate": hits / (hits + misses) if hits + misses else None,
        }
        if time.monotonic() < self._down_until:
            return CacheStats(**counters, redis_error="cooling down after a Redis error")
        try:
            info = self._client.info()
        except Exception as exc:  # a health probe: report, never raise
            return CacheStats(**counters, redis_error=_describe(exc))
        return CacheStats(
            **counters,
            keyspace_hits=_int_or_none(info.get("keyspace_hits")),
            keyspace_misses=_int_or_none(info.get("keyspace_misses")),
            used_memory=_int_or_none(info.get("used_memory")),
            role=str(info["role"]) if "role" in info else None,
        )

    def close(self) -> None:
        try:
            close_redis_client(self._client)
        except (RedisError, OSError) as exc:
            logger.debug("redis_cache_close_error", extra={"error": _describe(exc)})

    # -- bookkeeping ----------------------------------------------------------------------

    def _members(self, recent: str, start: int, end: int) -> list[bytes | str]:
        return cast("list[bytes | str]", self._client.zrange(recent, start, end))

    def _redis_usable(self, operation: str) -> bool:
        """False (and counted as an error) while cooling down after a Redis error."""
        if time.monotonic() >= self._down_until:
            return True
        self._count(operation, "error")
        return False

    def _failed(self, operation: str, exc: RedisError) -> None:
        self._down_until = time.monotonic() + self._cooldown
        self._failing = True
        self._count(operation, "error")
        logger.warning(
            "redis_cache_error",
            extra={"operation": operation, "error": _describe(exc), "cooldown_s": self._cooldown},
        )

    def _succeeded(self, operation: str, result: str) -> None:
        if self._failing:
            self._failing = False
            logger.info("redis_cache_recovered", extra={"operation": operation})
        self._count(operation, result)

    def _count(self, operation: str, result: str) -> None:
        CACHE_OPERATIONS.labels(operation=operation, result=result).inc()
        with self._lock:
            if result == "hit":
                self._hits += 1
            elif result == "miss":
                self._misses += 1
            elif result == "error":
                self._errors += 1

    def _count_fallback(self, operation: str, reason: str) -> None:
        CACHE_FALLBACKS.labels(operation=operation, reason=reason).inc()
        with self._lock:
            self._fallbacks += 1

    def _read_fallback(
        self, channel_id: int | None, limit: int, reason: str, cached: list[StoredMessage]
    ) -> list[StoredMessage]:
        if self._fallback is None:
            return cached
        self._count_fallback("get_unprocessed", reason)
        return self._fallback.fetch_unprocessed(channel_id, limit)


def _member_id(member: bytes | str) -> int | None:
    try:
        return keys.parse_recent_member(member)
    except ValueError:
        return None


def _decode(body: bytes | str | None) -> StoredMessage | None:
    """A cached body as a pending message; None when missing or unreadable."""
    if body is None:
        return None
    try:
        return StoredMessage(MessageRecord.from_dict(json.loads(body)))
    except (ValueError, KeyError, TypeError):
        return None


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, short; redis-py messages carry no credentials."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
