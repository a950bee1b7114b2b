"""What a load test runs: the offered load, the pollers, where results go."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tgstack.models import validate_channel_id

PollerKind = Literal["process", "thread"]
PollerMode = Literal["queue", "poll", "hybrid"]

# Load-test posts go to channels of their own, far above any real channel id today
# (-100 followed by 9 999 999 000 + n), so a run against a deployed stack never touches
# a real channel's messages, cursors or signals and can be told apart (and cleaned up).
LOADTEST_CHANNEL_BASE = -1_009_999_999_000
MAX_CHANNELS = 999


def loadtest_channels(count: int) -> list[int]:
    """The marked ids of the first ``count`` load-test channels."""
    if not 1 <= count <= MAX_CHANNELS:
        raise ValueError(f"channels must be between 1 and {MAX_CHANNELS}, got {count}")
    return [validate_channel_id(LOADTEST_CHANNEL_BASE - n) for n in range(count)]


@dataclass
class LoadPlan:
    """One load-test run.

    ``rate`` posts per second for ``duration`` seconds; with ``rate`` None, ``count`` posts
    as fast as the pipeline takes them. ``pollers`` poller processes (or threads) are
    started for the run; 0 relies on pollers already running (a deployed stack). With
    ``abort_lag``, sending stops early once posts wait longer than that end to end (or the
    sender trails its schedule by that much): the rate is not sustainable, and a rate search
    need not wait for the whole backlog.
    """

    rate: float | None = 100.0
    duration: float = 30.0
    count: int | None = None
    channels: int = 3
    pollers: int = 2
    poller_kind: PollerKind = "process"
    mode: PollerMode = "hybrid"
    poll_interval: float | None = None
    signal_share: float = 0.3
    seed: int = 1
    batch_size: int | None = None
    batch_delay_ms: int | None = None
    prefetch: int | None = None
    warmup: float = 5.0
    drain_timeout: float = 60.0
    abort_lag: float | None = None
    label: str = "loadtest"
    out_dir: Path | None = None
    plot: bool = True
    progress: bool = True
    cleanup: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.rate is None and not self.count:
            raise ValueError("without a rate, give a count of posts to send")
        if self.duration <= 0 and self.count is None:
            raise ValueError(f"duration must be positive, got {self.duration}")
        if self.pollers < 0:
            raise ValueError(f"pollers must not be negative, got {self.pollers}")
        if not 0 <= self.signal_share <= 1:
            raise ValueError(f"signal share must be between 0 and 1, got {self.signal_share}")
        loadtest_channels(self.channels)

    @property
    def total_posts(self) -> int:
        """Posts the run sends: ``count`` when given, else rate × duration."""
        if self.count is not None:
            return self.count
        assert self.rate is not None
        return max(1, round(self.rate * self.duration))

    @property
    def channel_ids(self) -> list[int]:
        return loadtest_channels(self.channels)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir) if self.out_dir is not None else None
        data["total_posts"] = self.total_posts
        return data
