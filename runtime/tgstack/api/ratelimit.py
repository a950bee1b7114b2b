"""Token-bucket rate limiting per client key (a token's id, else the client address).

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request
takes one. A refused request learns how many seconds until a token is back (``Retry-After``).
Buckets live in this process (several API processes each allow the rate); the map is bounded
by dropping the least recently used buckets, which only ever makes a limit more lenient.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: int  # whole seconds (>= 1) when refused, 0 when allowed
    remaining: int


class RateLimiter:
    """Thread-safe token buckets keyed by string."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, stamp
        self._lock = threading.Lock()

    def take(self, key: str) -> Decision:
        """Take one token from ``key``'s bucket if there is one."""
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - stamp) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        if allowed:
            return Decision(True, 0, int(tokens))
        return Decision(False, max(1, math.ceil((1.0 - tokens) / self.rate)), 0)
