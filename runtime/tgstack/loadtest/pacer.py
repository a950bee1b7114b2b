"""Keeps an offered rate: how many posts are due now, in small ticks."""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """Posts due at ``rate`` per second since ``start()``, up to ``total``.

    ``due()`` says how many more may be sent now; ``wait()`` sleeps until the next one is due
    (at most ``tick`` seconds). With ``rate`` None every post is due at once. ``behind`` is how
    far the sender trails the schedule, in seconds, as last seen.
    """

    def __init__(
        self,
        rate: float | None,
        total: int,
        *,
        tick: float = 0.002,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.total = total
        self.tick = tick
        self._clock = clock
        self._sleep = sleep
        self.started = 0.0
        self.sent = 0
        self.behind = 0.0

    def start(self) -> None:
        self.started = self._clock()

    def elapsed(self) -> float:
        return self._clock() - self.started

    def due(self) -> int:
        if self.rate is None:
            return self.total - self.sent
        scheduled = min(self.total, int(self.elapsed() * self.rate) + 1)
        owed = max(0, scheduled - self.sent)
        self.behind = max(0.0, owed - 1) / self.rate
        return owed

    def record(self, count: int) -> None:
        self.sent += count

    @property
    def done(self) -> bool:
        return self.sent >= self.total

    def wait(self) -> None:
        if self.rate is None or self.done:
            return
        next_at = self.started + self.sent / self.rate
        delay = next_at - self._clock()
        if delay > 0:
            self._sleep(min(delay, self.tick))
