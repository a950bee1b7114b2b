"""The API's response cache in Redis: 200 answers of GET requests, for ``ttl`` seconds.

Keys: ``tgstack:api:v1:{scope}:{generation}:{sha256 of path + normalized query}``.
``tgstack:api:generation`` is a counter that every API write bumps (after its commit), and a
request reads it *before* it reads the database: an answer computed while a write happened is
stored under the old generation and never served again. So a write is visible at once to every
API process, without deleting keys; the old entries expire by themselves.

Redis is an accelerator: when it fails the request is served from PostgreSQL (the caller sees
``None``), the failure is counted (``tgstack_api_cache_total{result="error"}``) and Redis is
left alone for ``cooldown`` seconds. A bump that failed is remembered and done before the next
lookup; until it succeeds nothing is served from the cache.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import redis
from redis.exceptions import RedisError

from tgstack.metrics import API_CACHE

log = logging.getLogger(__name__)

PREFIX = "tgstack:api"
GENERATION_KEY = f"{PREFIX}:generation"
KEY_VERSION = "v1"


def cache_key(scope: str, generation: str, path: str, normalized_query: str) -> str:
    """The key of one answer; pure (see the module docstring for the layout)."""
    digest = hashlib.sha256(f"{path}?{normalized_query}".encode()).hexdigest()
    return f"{PREFIX}:{KEY_VERSION}:{scope}:{generation}:{digest}"


class ResponseCache:
    """Get/put answers and bump the generation; no Redis error ever reaches the caller."""

    def __init__(self, client: redis.Redis, *, ttl: int = 30, cooldown: float = 1.0) -> None:
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1 second, got {ttl!r}")
        self._client = client
        self._ttl = ttl
        self._cooldown = cooldown
        self._down_until = 0.0
        self._bump_pending = False
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        return self._client

    def generation(self) -> str | None:
        """The current generation, or None (Redis unusable: serve from the database)."""
        if not self._usable():
            return None
        try:
            if self._bump_pending:
                self._client.incr(GENERATION_KEY)
                with self._lock:
                    self._bump_pending = False
            value = self._client.get(GENERATION_KEY)
        except RedisError as exc:
            self._failed("generation", exc)
            return None
        if value is None:
            return "0"
        return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)

    def get(self, key: str) -> bytes | None:
        """The cached body (a hit), or None (a miss, or Redis failed)."""
        if not self._usable():
            return None
        try:
            value = self._client.get(key)
        except RedisError as exc:
            self._failed("get", exc)
            return None
        API_CACHE.labels("hit" if value is not None else "miss").inc()
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    def put(self, key: str, body: bytes) -> None:
        if not self._usable():
            return
        try:
            self._client.set(key, body, ex=self._ttl)
        except RedisError as exc:
            self._failed("put", exc)

    def invalidate(self) -> bool:
        """Bump the generation (after a committed write). False when Redis failed: the bump
        is then done before the next lookup, and nothing is served from the cache until then."""
        with self._lock:
            self._bump_pending = True
        if not self._usable():
            return False
        try:
            self._client.incr(GENERATION_KEY)
        except RedisError as exc:
            self._failed("invalidate", exc)
            return False
        with self._lock:
            self._bump_pending = False
        return True

    def ping(self) -> tuple[bool, str | None]:
        """(reachable, error) for /health; never raises."""
        try:
            self._client.ping()
        except RedisError as exc:
            return False, _describe(exc)
        return True, None

    def _usable(self) -> bool:
        if time.monotonic() >= self._down_until:
            return True
        API_CACHE.labels("error").inc()
        return False

    def _failed(self, operation: str, exc: RedisError) -> None:
        self._down_until = time.monotonic() + self._cooldown
        API_CACHE.labels("error").inc()
        log.warning(
            "api_cache_error",
            extra={"operation": operation, "error": _describe(exc), "cooldown_s": self._cooldown},
        )


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
